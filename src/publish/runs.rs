//! The `runs` table: one row per run (failed runs too), appended as the last commit of a
//! run, holding the Delta version each table was published at. It is what makes a set of
//! tables consistent: a reader takes the latest `succeeded` row and reads every table at
//! the version that row names, so a run that crashed between two table commits, or that
//! is still publishing, is never half visible. (Delta commits one table at a time; there
//! is no multi-table transaction, so the runs row is the commit point of a whole run.)

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::prelude::SessionContext;
use deltalake::protocol::SaveMode;
use serde::Serialize;

use super::{PublishError, delta};
use crate::names::{OUTCOME_SUCCEEDED, RUNS_TABLE, RUNS_TABLE_DIR};
use crate::warehouse::Warehouse;

/// One run as recorded in the `runs` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End, RFC 3339 UTC.
    pub finished_at: String,
    /// `succeeded`, `failed` or `skipped` (never started: the lock was held, or a
    /// scheduled slot overlapped a run or was missed); see [`crate::names`].
    pub outcome: String,
    /// The error of a failed run.
    pub error: Option<String>,
    /// The as-of date, when known.
    pub as_of: Option<String>,
    /// Hash of the pipeline file, schemas and SQL.
    pub config_hash: String,
    /// patron version.
    pub patron_version: String,
    /// Table format published: `delta` or `parquet`.
    pub format: String,
    /// Rows per published table.
    pub table_rows: BTreeMap<String, u64>,
    /// Delta version per published table (empty for the Parquet format or a failed run
    /// that committed nothing).
    pub table_versions: BTreeMap<String, u64>,
}

fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("started_at", ts.clone(), false),
        Field::new("finished_at", ts, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("as_of", DataType::Date32, true),
        Field::new("config_hash", DataType::Utf8, false),
        Field::new("patron_version", DataType::Utf8, false),
        Field::new("format", DataType::Utf8, false),
        Field::new("table_rows", DataType::Utf8, false),
        Field::new("table_versions", DataType::Utf8, false),
    ]))
}

fn micros(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| format!("{text}: {e}"))
}

fn to_batch(r: &RunRecord) -> Result<RecordBatch, String> {
    let as_of = r
        .as_of
        .as_deref()
        .map(|d| {
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map(|d| (d - chrono::NaiveDate::default()).num_days() as i32)
                .map_err(|e| format!("{d}: {e}"))
        })
        .transpose()?;
    let text = |s: &str| Arc::new(StringArray::from(vec![s])) as ArrayRef;
    let json = |v: String| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let ts = |s: &str| -> Result<ArrayRef, String> {
        Ok(Arc::new(
            TimestampMicrosecondArray::from(vec![micros(s)?]).with_timezone("UTC"),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&r.run_id),
        text(&r.pipeline),
        ts(&r.started_at)?,
        ts(&r.finished_at)?,
        text(&r.outcome),
        Arc::new(StringArray::from(vec![r.error.clone()])),
        Arc::new(Date32Array::from(vec![as_of])),
        text(&r.config_hash),
        text(&r.patron_version),
        text(&r.format),
        json(serde_json::to_string(&r.table_rows).map_err(|e| e.to_string())?),
        json(serde_json::to_string(&r.table_versions).map_err(|e| e.to_string())?),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| e.to_string())
}

/// Appends one run to the `runs` table of `warehouse` (creating it on the first run).
/// Returns the version of the `runs` table holding the row.
pub async fn append(warehouse: &Warehouse, record: &RunRecord) -> Result<u64, PublishError> {
    let path = warehouse.describe(RUNS_TABLE_DIR);
    let batch = to_batch(record).map_err(|message| PublishError::Delta {
        table: RUNS_TABLE.into(),
        path: path.clone(),
        message,
    })?;
    let table = delta::open(warehouse, RUNS_TABLE, RUNS_TABLE_DIR).await?;
    let written = table
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .with_table_name(RUNS_TABLE)
        .await
        .map_err(|e| PublishError::Delta {
            table: RUNS_TABLE.into(),
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(written.version().unwrap_or(0))
}

/// Every run recorded in the `runs` table of `warehouse`, oldest first; empty when there
/// is no table yet.
pub async fn read_all(warehouse: &Warehouse) -> Result<Vec<RunRecord>, PublishError> {
    let path = warehouse.describe(RUNS_TABLE_DIR);
    if !delta::is_delta_table(warehouse, RUNS_TABLE_DIR).await? {
        return Ok(Vec::new());
    }
    let bad = |message: String| PublishError::Delta {
        table: RUNS_TABLE.into(),
        path: path.clone(),
        message,
    };
    let ctx = SessionContext::new();
    delta::register(&ctx, RUNS_TABLE, warehouse, RUNS_TABLE_DIR, None).await?;
    let batches = ctx
        .sql(&format!(
            "SELECT run_id, pipeline, CAST(started_at AS BIGINT) AS started_us, CAST(finished_at AS BIGINT) AS finished_us, \
             outcome, error, CAST(as_of AS VARCHAR) AS as_of_text, config_hash, patron_version, format, table_rows, \
             table_versions FROM {RUNS_TABLE} ORDER BY started_us, run_id"
        ))
        .await
        .map_err(|e| bad(e.to_string()))?
        .collect()
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for b in batches {
        let strings = |i: usize| -> Result<StringArray, String> {
            let c = cast(b.column(i), &DataType::Utf8).map_err(|e| e.to_string())?;
            c.as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| "not a string column".to_string())
        };
        let ints = |i: usize| -> Result<Int64Array, String> {
            let c = cast(b.column(i), &DataType::Int64).map_err(|e| e.to_string())?;
            c.as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| "not an integer column".to_string())
        };
        let cols: Vec<StringArray> = [0, 1, 4, 5, 6, 7, 8, 9, 10, 11]
            .iter()
            .map(|&i| strings(i))
            .collect::<Result<_, _>>()
            .map_err(bad)?;
        let (started, finished) = (ints(2).map_err(bad)?, ints(3).map_err(bad)?);
        let opt = |a: &StringArray, r: usize| (!a.is_null(r)).then(|| a.value(r).to_string());
        let stamp = |a: &Int64Array, r: usize| {
            chrono::DateTime::from_timestamp_micros(a.value(r))
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default()
        };
        for r in 0..b.num_rows() {
            out.push(RunRecord {
                run_id: cols[0].value(r).to_string(),
                pipeline: cols[1].value(r).to_string(),
                started_at: stamp(&started, r),
                finished_at: stamp(&finished, r),
                outcome: cols[2].value(r).to_string(),
                error: opt(&cols[3], r),
                as_of: opt(&cols[4], r),
                config_hash: cols[5].value(r).to_string(),
                patron_version: cols[6].value(r).to_string(),
                format: cols[7].value(r).to_string(),
                table_rows: serde_json::from_str(cols[8].value(r)).map_err(|e| bad(e.to_string()))?,
                table_versions: serde_json::from_str(cols[9].value(r)).map_err(|e| bad(e.to_string()))?,
            });
        }
    }
    Ok(out)
}

/// The latest succeeded run (optionally of one pipeline).
pub fn latest_succeeded<'a>(runs: &'a [RunRecord], pipeline: Option<&str>) -> Option<&'a RunRecord> {
    runs.iter()
        .rev()
        .find(|r| r.outcome == OUTCOME_SUCCEEDED && pipeline.is_none_or(|p| r.pipeline == p))
}

/// The newest commit number in the `runs` table's log, read from the file names only
/// (no log replay): a cheap way to notice that a run was recorded since the last look.
pub async fn committed_version(warehouse: &Warehouse) -> Option<u64> {
    warehouse
        .files(&format!("{RUNS_TABLE_DIR}/{}", delta::DELTA_LOG_DIR))
        .await
        .ok()?
        .iter()
        .filter_map(|name| name.strip_suffix(".json")?.parse::<u64>().ok())
        .max()
}

/// Why no run's tables can be read.
#[derive(Debug, thiserror::Error)]
pub enum ChooseRunError {
    /// The run asked for is not recorded.
    #[error("no run `{run_id}` in {warehouse}")]
    Unknown {
        /// The run asked for.
        run_id: String,
        /// The warehouse.
        warehouse: String,
    },
    /// The run asked for did not succeed, so it published nothing.
    #[error("run `{run_id}` {outcome}: it published nothing to read")]
    NotSucceeded {
        /// The run asked for.
        run_id: String,
        /// Its outcome.
        outcome: String,
    },
    /// No run succeeded yet.
    #[error("no succeeded run recorded in {warehouse}")]
    NoneSucceeded {
        /// The warehouse.
        warehouse: String,
    },
}

/// The run whose tables a read-only command looks at: `run_id` (which must have
/// succeeded), else the latest succeeded run of any pipeline.
pub fn chosen_run<'a>(
    records: &'a [RunRecord],
    run_id: Option<&str>,
    warehouse: &Warehouse,
) -> Result<&'a RunRecord, ChooseRunError> {
    match run_id {
        Some(id) => {
            let r = records
                .iter()
                .find(|r| r.run_id == id)
                .ok_or_else(|| ChooseRunError::Unknown {
                    run_id: id.to_string(),
                    warehouse: warehouse.to_string(),
                })?;
            if r.outcome != OUTCOME_SUCCEEDED {
                return Err(ChooseRunError::NotSucceeded {
                    run_id: id.to_string(),
                    outcome: r.outcome.clone(),
                });
            }
            Ok(r)
        }
        None => latest_succeeded(records, None).ok_or_else(|| ChooseRunError::NoneSucceeded {
            warehouse: warehouse.to_string(),
        }),
    }
}
