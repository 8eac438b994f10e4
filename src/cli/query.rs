//! `patron query`: one SELECT over the published tables as a run left them (time travel).
//!
//! Every table is registered at the Delta version the chosen run committed (by default
//! the latest succeeded run), so the answer is a consistent set even while another run is
//! publishing. Only SELECT (and WITH ... SELECT) statements run; anything that would write
//! or change the session is refused.

use std::path::PathBuf;

use clap::Args;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use serde_json::{Map, Value};

use super::{CliError, OutputFormat, warehouse_of};
use crate::publish::{read, runs};
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
    /// Pipeline file whose warehouse to read.
    #[arg(long, default_value = "pipelines/default.toml")]
    pub pipeline: PathBuf,
    /// Warehouse folder or object store URL such as s3://bucket/prefix (overrides the pipeline's `run.warehouse`).
    #[arg(long)]
    pub warehouse: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// The run whose tables a read-only command looks at: `run_id` (which must have
/// succeeded), else the latest succeeded run of any pipeline.
pub fn chosen_run<'a>(
    records: &'a [runs::RunRecord],
    run_id: Option<&str>,
    warehouse: &crate::warehouse::Warehouse,
) -> Result<&'a runs::RunRecord, CliError> {
    match run_id {
        Some(id) => {
            let r = records
                .iter()
                .find(|r| r.run_id == id)
                .ok_or_else(|| CliError::usage(format!("no run `{id}` in {warehouse}")))?;
            if r.outcome != crate::names::OUTCOME_SUCCEEDED {
                return Err(CliError::usage(format!(
                    "run `{id}` {}: it published nothing to read",
                    r.outcome
                )));
            }
            Ok(r)
        }
        None => runs::latest_succeeded(records, None)
            .ok_or_else(|| CliError::failed(format!("no succeeded run recorded in {warehouse}"))),
    }
}

/// The rows of a query as JSON objects (column name to value); `what` prefixes errors.
pub async fn json_rows(ctx: &SessionContext, sql: &str, what: &str) -> Result<Vec<Map<String, Value>>, CliError> {
    let failed = |e: String| CliError::failed(format!("{what}: {e}"));
    let batches = ctx
        .sql(sql)
        .await
        .map_err(|e| failed(e.to_string()))?
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<_> = batches.iter().collect();
    writer.write_batches(&refs).map_err(|e| failed(e.to_string()))?;
    writer.finish().map_err(|e| failed(e.to_string()))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| failed(e.to_string()))
}

/// A JSON row's value as text (`""` for NULL or missing).
pub fn cell_text(row: &Map<String, Value>, key: &str) -> String {
    match row.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A JSON row's value as a count (0 for NULL, missing or not a count).
pub fn cell_u64(row: &Map<String, Value>, key: &str) -> u64 {
    row.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Registers the tables of the chosen run and prints the result of the SELECT.
pub async fn run(args: QueryArgs) -> Result<(), CliError> {
    let warehouse = warehouse_of(&args.pipeline, args.warehouse)?;
    let records = runs::read_all(&warehouse)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    let record = chosen_run(&records, args.as_of_run.as_deref(), &warehouse)?;
    let ctx = SessionContext::new();
    read::register_run(&ctx, &warehouse, record)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
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
        .map_err(|e| CliError::usage(format!("only a SELECT can run here: {e}")))?;
    let batches = df.collect().await.map_err(|e| CliError::failed(e.to_string()))?;
    match args.format {
        OutputFormat::Text => {
            let text =
                arrow::util::pretty::pretty_format_batches(&batches).map_err(|e| CliError::failed(e.to_string()))?;
            println!("{text}");
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(std::io::stdout());
            let refs: Vec<_> = batches.iter().collect();
            writer
                .write_batches(&refs)
                .and_then(|_| writer.finish())
                .map_err(|e| CliError::failed(e.to_string()))?;
        }
    }
    eprintln!("(tables as published by run {})", record.run_id);
    Ok(())
}
