//! `patron runs`: the history of runs in a warehouse, from its `runs` table.

use clap::Args;

use super::{CliError, OutputFormat, ReadArgs};
use crate::publish::runs;

/// Arguments of `patron runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// The warehouse to read.
    #[command(flatten)]
    pub read: ReadArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// Prints every recorded run, oldest first.
pub async fn run(args: RunsArgs) -> Result<(), CliError> {
    let warehouse = args.read.open()?;
    let records = runs::read_all(&warehouse).await?;
    match args.format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&records)?),
        OutputFormat::Text => {
            if records.is_empty() {
                outln!("no runs recorded in {warehouse}");
                return Ok(());
            }
            outln!(
                "{:<32} {:<12} {:<24} {:<9} {:<10} {:>6}  error",
                "run_id",
                "pipeline",
                "started_at",
                "outcome",
                "as_of",
                "tables"
            );
            for r in &records {
                let error: String = r.error.as_deref().unwrap_or("").chars().take(80).collect();
                outln!(
                    "{:<32} {:<12} {:<24} {:<9} {:<10} {:>6}  {}",
                    r.run_id,
                    r.pipeline,
                    r.started_at,
                    r.outcome,
                    r.as_of.as_deref().unwrap_or("-"),
                    r.table_versions.len().max(r.table_rows.len()),
                    error.replace('\n', " ")
                );
            }
        }
    }
    Ok(())
}
