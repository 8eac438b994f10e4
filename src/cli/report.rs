//! `patron report`: writes the HTML report of the latest succeeded run (see
//! [`crate::report`]; its data from [`crate::report::data::gather`]).

use std::path::PathBuf;

use clap::Args;

use super::{CliError, ReadArgs, write_output};
use crate::names::REPORT_KEY;
use crate::report::{data, render};

/// Arguments of `patron report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output file (default `<warehouse>/report.html`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The warehouse to read.
    #[command(flatten)]
    pub read: ReadArgs,
}

/// Writes the report and prints its path.
pub async fn run(args: ReportArgs) -> Result<(), CliError> {
    let warehouse = args.read.open()?;
    let data = data::gather(&warehouse).await?;
    let written = write_output(args.out.as_deref(), &warehouse, REPORT_KEY, render(&data)).await?;
    outln!("{written}");
    Ok(())
}
