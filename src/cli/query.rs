//! `patron query`: one SELECT over the published tables as a run left them (time travel).
//!
//! Every table is registered at the Delta version the chosen run committed (by default
//! the latest succeeded run), so the answer is a consistent set even while another run is
//! publishing. Only SELECT (and WITH ... SELECT) statements run; anything that would write
//! or change the session is refused.

use clap::Args;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;

use super::{CliError, OutputFormat, ReadArgs};
use crate::publish::read;
use crate::publish::runs::{self, chosen_run};
use crate::serve::dashboards;

/// Arguments of `patron query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SELECT to run, e.g. "SELECT rfm_segment, count(*) FROM customer_scores GROUP BY 1".
    #[arg(required_unless_present = "dashboard")]
    pub sql: Option<String>,
    /// Run one of the supported dashboard queries instead (docs/guide.md, "Dashboard queries"):
    /// churn_risk_by_segment, clv_distribution, value_tiers, top_customers,
    /// churn_risk_trend, segment_migration_matrix.
    #[arg(long, conflicts_with = "sql")]
    pub dashboard: Option<String>,
    /// Read the tables as this run published them (default: the latest succeeded run).
    #[arg(long)]
    pub as_of_run: Option<String>,
    /// The warehouse to read.
    #[command(flatten)]
    pub read: ReadArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// Registers the tables of the chosen run and prints the result of the SELECT.
pub async fn run(args: QueryArgs) -> Result<(), CliError> {
    let warehouse = args.read.open()?;
    let records = runs::read_all(&warehouse).await?;
    let record = chosen_run(&records, args.as_of_run.as_deref(), &warehouse)?;
    let ctx = SessionContext::new();
    read::register_run(&ctx, &warehouse, record).await?;
    let sql = match (&args.sql, &args.dashboard) {
        (_, Some(name)) => dashboards::dashboard(name).map(|d| d.sql.to_string()).ok_or_else(|| {
            let known: Vec<&str> = dashboards::DASHBOARDS.iter().map(|d| d.name).collect();
            CliError::usage(format!("no dashboard query `{name}` (known: {})", known.join(", ")))
        })?,
        (Some(sql), None) => sql.clone(),
        (None, None) => return Err(CliError::usage("give a SELECT or --dashboard NAME")),
    };
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(&sql, options)
        .await
        .map_err(CliError::NotASelect)?;
    let batches = df.collect().await?;
    match args.format {
        OutputFormat::Text => outln!("{}", arrow::util::pretty::pretty_format_batches(&batches)?),
        OutputFormat::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(super::Out);
            let refs: Vec<_> = batches.iter().collect();
            writer.write_batches(&refs).and_then(|_| writer.finish())?;
        }
    }
    eprintln!("(tables as published by run {})", record.run_id);
    Ok(())
}
