//! `patron report`: writes the HTML report of the latest succeeded run (see
//! [`crate::report`]), reading only the tables at the versions that run committed and its
//! manifest.

use std::path::PathBuf;

use clap::Args;
use datafusion::prelude::SessionContext;
use serde_json::{Map, Value};

use super::query::{cell_text, cell_u64, chosen_run, json_rows};
use super::{CliError, quarantine, warehouse_of};
use crate::names::REPORT_KEY;
use crate::publish::{read, runs};
use crate::report::svg::Point;
use crate::report::{ReportData, SAMPLE_LIMIT, Segment, queries, render};

/// Arguments of `patron report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output file (default `<warehouse>/report.html`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Pipeline file whose warehouse to read.
    #[arg(long, default_value = "pipelines/default.toml")]
    pub pipeline: PathBuf,
    /// Warehouse folder or object store URL such as s3://bucket/prefix (overrides the pipeline's `run.warehouse`).
    #[arg(long)]
    pub warehouse: Option<String>,
}

fn float(row: &Map<String, Value>, key: &str) -> f64 {
    row.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn segments(rows: &[Map<String, Value>]) -> Vec<Segment> {
    rows.iter()
        .map(|r| Segment {
            label: cell_text(r, "label"),
            customers: cell_u64(r, "customers"),
            value: float(r, if r.contains_key("clv") { "clv" } else { "historical" }),
            potential: r.get("potential").and_then(Value::as_f64).unwrap_or(0.0),
        })
        .collect()
}

/// Writes the report and prints its path.
pub async fn run(args: ReportArgs) -> Result<(), CliError> {
    let warehouse = warehouse_of(&args.pipeline, args.warehouse)?;
    let records = runs::read_all(&warehouse)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    let record = chosen_run(&records, None, &warehouse)?;
    let manifest = read::run_manifest(&warehouse, &record.run_id)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    let ctx = SessionContext::new();
    let tables = read::register_run(&ctx, &warehouse, record)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    let what = "report";
    let q = |sql: String| {
        let ctx = &ctx;
        async move { json_rows(ctx, &sql, what).await }
    };
    let values = |rows: Vec<Map<String, Value>>| rows.iter().map(|r| float(r, "v")).collect::<Vec<_>>();
    let segment = |column: &str| queries::SEGMENT.replace("{column}", column);
    let mut data = ReportData {
        customers: q(queries::CUSTOMERS.into())
            .await?
            .first()
            .map_or(0, |r| cell_u64(r, "customers")),
        segments: Vec::new(),
        lifecycle: segments(&q(segment(queries::LIFECYCLE_COLUMN)).await?),
        clv: values(q(queries::CLV.into()).await?),
        churn_risk: values(q(queries::CHURN_RISK.into()).await?),
        quadrants: segments(&q(queries::QUADRANTS.into()).await?),
        sample: q(queries::SAMPLE.replace("{limit}", &SAMPLE_LIMIT.to_string()))
            .await?
            .iter()
            .map(|r| Point {
                id: cell_text(r, "customer_id"),
                x: float(r, "historical_value"),
                y: float(r, "potential_value"),
            })
            .collect(),
        quarantine: quarantine::summarise(&ctx, &tables, record, None, None, 0).await?,
        manifest,
    };
    for column in queries::SEGMENT_COLUMNS {
        data.segments
            .push((column.to_string(), segments(&q(segment(column)).await?)));
    }
    let written = super::write_output(args.out.as_deref(), &warehouse, REPORT_KEY, render(&data)).await?;
    println!("{written}");
    Ok(())
}
