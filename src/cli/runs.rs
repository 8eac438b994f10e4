//! `patron runs`: the history of runs in a warehouse, from its `runs` table.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, OutputFormat, warehouse_of};
use crate::publish::runs;

/// Arguments of `patron runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
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

/// Prints every recorded run, oldest first.
pub async fn run(args: RunsArgs) -> Result<(), CliError> {
    let warehouse = warehouse_of(&args.pipeline, args.warehouse)?;
    let records = runs::read_all(&warehouse)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    match args.format {
        OutputFormat::Json => {
            let text = serde_json::to_string_pretty(&records).map_err(|e| CliError::failed(e.to_string()))?;
            println!("{text}");
        }
        OutputFormat::Text => {
            if records.is_empty() {
                println!("no runs recorded in {warehouse}");
                return Ok(());
            }
            println!(
                "{:<32} {:<12} {:<24} {:<9} {:<10} {:>6}  error",
                "run_id", "pipeline", "started_at", "outcome", "as_of", "tables"
            );
            for r in &records {
                let error: String = r.error.as_deref().unwrap_or("").chars().take(80).collect();
                println!(
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
