//! Gathers what the report shows: the latest succeeded run's manifest, the queries of
//! [`super::queries`] on its tables at the versions it committed, and its quarantine.

use datafusion::prelude::SessionContext;
use serde_json::{Map, Value};

use super::svg::Point;
use super::{ReportData, SAMPLE_LIMIT, Segment, queries};
use crate::publish::PublishError;
use crate::publish::quarantine::{self, QuarantineError};
use crate::publish::read::{self, QueryError, cell_text, cell_u64, json_rows};
use crate::publish::runs::{self, ChooseRunError, chosen_run};
use crate::warehouse::Warehouse;

/// Why the report's data could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the runs, the manifest or a table failed.
    #[error("{0}")]
    Publish(#[from] PublishError),
    /// No succeeded run to report on.
    #[error("{0}")]
    ChooseRun(#[from] ChooseRunError),
    /// A query failed.
    #[error("{0}")]
    Query(#[from] QueryError),
    /// The quarantine summary failed.
    #[error("{0}")]
    Quarantine(#[from] QuarantineError),
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

/// Everything the report shows of the latest succeeded run of `warehouse`, reading only
/// the tables at the versions that run committed and its manifest.
pub async fn gather(warehouse: &Warehouse) -> Result<ReportData, ReportError> {
    let records = runs::read_all(warehouse).await?;
    let record = chosen_run(&records, None, warehouse)?;
    let manifest = read::run_manifest(warehouse, &record.run_id).await?;
    let ctx = SessionContext::new();
    let tables = read::register_run(&ctx, warehouse, record).await?;
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
    Ok(data)
}
