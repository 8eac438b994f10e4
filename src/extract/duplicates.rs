//! Duplicate primary keys: rows of one source whose declared `primaryKey` repeats another
//! row of the same source (within the run's raw table, carried-over rows included).
//!
//! Duplicates are kept in the raw table, not quarantined: exports re-send rows (a
//! corrected line, an overlapping daily file), and staging keeps the copy loaded last
//! (latest file, then latest line). So that nothing disappears unseen, every superseded
//! copy is listed in the `duplicates` table (source, key, its file and line, the file and
//! line of the copy that stays current, and whether the two are identical), and the
//! manifest counts them per source (`duplicate_rows`, `duplicate_rows_changed`).
//! Text key values are compared without leading and trailing spaces, as staging's `TRIM`
//! compares them; the bundled staging stages take the rows to rank from this table.

use std::path::Path;
use std::sync::Arc;

use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::SourceMetrics;
use crate::config::SourcePlan;
use crate::config::schema::FieldKind;
use crate::names::{self, SOURCE_FILE_COLUMN, SOURCE_LINE_COLUMN, duplicates as d};
use crate::quote::{ident, literal};
use crate::storage::ParquetSink;

/// Name the kept keys of the source being checked are registered under.
const SEEN_KEYS_TABLE: &str = "__patron_seen_keys";

/// Schema of the duplicates table.
pub fn duplicates_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(d::RUN_ID, DataType::Utf8, false),
        Field::new(d::SOURCE, DataType::Utf8, false),
        Field::new(d::KEY, DataType::Utf8, false),
        Field::new(d::FILE, DataType::Utf8, false),
        Field::new(d::LINE, DataType::Int64, false),
        Field::new(d::KEPT_FILE, DataType::Utf8, false),
        Field::new(d::KEPT_LINE, DataType::Int64, false),
        Field::new(d::IDENTICAL, DataType::Boolean, false),
    ]))
}

/// Where the keys that may repeat come from.
#[derive(Debug, Clone, Copy)]
pub enum Candidates<'a> {
    /// A table of the keys extract's filter kept ([`crate::key_filter::SeenKeys`]): every repeated key and a
    /// few others.
    Kept(&'a str),
    /// Every key of the raw table, grouped: for a Ballista engine, whose executors cannot
    /// read a table held in this process (or a source extract did not filter).
    AllRows,
}

/// Key column `key` of `source` as the duplicate scan compares it, read from the table
/// aliased `prefix` (`"r."`, or `""`): text keys trimmed, as the key filter hashes them, so
/// `" E1"` and `"E1"` are copies of one key.
pub(crate) fn compared_key(source: &SourcePlan, prefix: &str, key: &str) -> String {
    let text = source
        .schema
        .fields
        .iter()
        .any(|f| f.name == key && matches!(f.kind, FieldKind::String));
    if text {
        format!("TRIM({prefix}{})", ident(key))
    } else {
        format!("{prefix}{}", ident(key))
    }
}

/// The query listing the superseded copies of `source`'s rows in its raw table: the rows
/// whose key is among `candidates` are ranked by key, and the copies after the first are
/// listed. Null key values count as equal, as in staging's `PARTITION BY`; text keys are
/// compared trimmed.
pub fn duplicates_sql(source: &SourcePlan, run_id: &str, candidates: Candidates) -> Option<String> {
    let key = &source.schema.primary_key;
    if key.is_empty() {
        return None;
    }
    let table = ident(&names::raw_table(&source.name));
    let key_cols: Vec<String> = key.iter().map(|k| ident(k)).collect();
    let key_values: Vec<String> = key.iter().map(|k| compared_key(source, "", k)).collect();
    let key_list = key_values.join(", ");
    let join_on: Vec<String> = key
        .iter()
        .zip(&key_cols)
        .map(|(k, c)| format!("({} IS NOT DISTINCT FROM k.{c})", compared_key(source, "r.", k)))
        .collect();
    let distinct_keys: Vec<String> = key_values
        .iter()
        .zip(&key_cols)
        .map(|(v, c)| format!("{v} AS {c}"))
        .collect();
    let distinct_keys = distinct_keys.join(", ");
    let window = format!(
        "OVER (PARTITION BY {key_list} ORDER BY {f} DESC, {l} DESC)",
        f = ident(SOURCE_FILE_COLUMN),
        l = ident(SOURCE_LINE_COLUMN)
    );
    let columns: Vec<String> = source.schema.fields.iter().map(|f| ident(&f.name)).collect();
    let kept_values: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("FIRST_VALUE({c}) {window} AS \"__kept_{i}\""))
        .collect();
    let same: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("({c} IS NOT DISTINCT FROM \"__kept_{i}\")"))
        .collect();
    let key_text: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let sep = if i == 0 { "" } else { ", " };
            format!(
                "{}, COALESCE(CAST({} AS VARCHAR), 'NULL')",
                literal(&format!("{sep}{k}=")),
                ident(k)
            )
        })
        .collect();
    // A hash join holds its first side in memory: locally that is `repeated` (the keys
    // that may repeat), so the source's rows stream past it; with the source first, 8.5M
    // marketing events did not fit a 1 GiB pool. On Ballista 55 the source must come first:
    // with `repeated` first its scheduler re-plans the join after the first stage, fails an
    // internal assertion ("Cannot swap HashJoinExec with dynamic filter") and leaves the
    // job hanging.
    let join_on = join_on.join(" AND ");
    let (repeated, copies) = match candidates {
        Candidates::Kept(kept) => (
            format!("SELECT DISTINCT {distinct_keys} FROM {}", ident(kept)),
            format!("SELECT r.* FROM repeated k JOIN {table} r ON {join_on}"),
        ),
        Candidates::AllRows => (
            format!("SELECT {distinct_keys} FROM {table} GROUP BY {key_list} HAVING COUNT(*) > 1"),
            format!("SELECT r.* FROM {table} r JOIN repeated k ON {join_on}"),
        ),
    };
    Some(format!(
        "WITH repeated AS ({repeated}), \
         copies AS ({copies}), \
         ranked AS (SELECT *, ROW_NUMBER() {window} AS \"__copy\", \
                    FIRST_VALUE({f}) {window} AS \"__kept_file\", FIRST_VALUE({l}) {window} AS \"__kept_line\", \
                    {kept_values} FROM copies) \
         SELECT {run} AS {c_run}, {src} AS {c_src}, concat({key_text}) AS {c_key}, {f} AS {c_file}, {l} AS {c_line}, \
                \"__kept_file\" AS {c_kfile}, \"__kept_line\" AS {c_kline}, ({same}) AS {c_same} \
         FROM ranked WHERE \"__copy\" > 1 ORDER BY {f}, {l}",
        f = ident(SOURCE_FILE_COLUMN),
        l = ident(SOURCE_LINE_COLUMN),
        kept_values = kept_values.join(", "),
        run = literal(run_id),
        src = literal(&source.name),
        key_text = key_text.join(", "),
        same = same.join(" AND "),
        c_run = ident(d::RUN_ID),
        c_src = ident(d::SOURCE),
        c_key = ident(d::KEY),
        c_file = ident(d::FILE),
        c_line = ident(d::LINE),
        c_kfile = ident(d::KEPT_FILE),
        c_kline = ident(d::KEPT_LINE),
        c_same = ident(d::IDENTICAL),
    ))
}

/// Finds the duplicate primary keys of every source whose raw table is registered on
/// `ctx` (as `raw_<source>`), writes them to `out` (one Parquet file, empty when there are
/// none) and counts them into each source's metrics. Returns the rows written.
pub async fn find_duplicates(
    ctx: &SessionContext,
    sources: &[SourcePlan],
    metrics: &mut [SourceMetrics],
    run_id: &str,
    out: &Path,
) -> Result<u64, String> {
    let schema = duplicates_schema();
    let mut sink = ParquetSink::create(out, Arc::clone(&schema)).map_err(|e| e.to_string())?;
    let mut total = 0u64;
    let distributed = crate::engine::is_distributed(ctx);
    for (source, m) in sources.iter().zip(metrics.iter_mut()) {
        let failed = |e: datafusion::error::DataFusionError| format!("source `{}`: duplicate keys: {e}", source.name);
        let candidates = match m.seen_keys.take().filter(|_| !distributed) {
            Some(seen) => {
                tracing::debug!(source = %source.name, ?seen, "keys that may repeat");
                let schema = Arc::clone(seen.schema());
                let kept = seen.into_kept();
                if kept.is_empty() {
                    // No key may repeat.
                    continue;
                }
                let table = MemTable::try_new(schema, vec![kept]).map_err(failed)?;
                ctx.register_table(SEEN_KEYS_TABLE, Arc::new(table)).map_err(failed)?;
                Candidates::Kept(SEEN_KEYS_TABLE)
            }
            None => Candidates::AllRows,
        };
        let Some(sql) = duplicates_sql(source, run_id, candidates) else {
            continue;
        };
        let stream = match ctx.sql(&sql).await {
            Ok(frame) => frame.execute_stream().await,
            Err(e) => Err(e),
        };
        if let Candidates::Kept(table) = candidates {
            // The plan holds the table; the name is free for the next source.
            ctx.deregister_table(table).map_err(failed)?;
        }
        let mut stream = stream.map_err(failed)?;
        let (mut rows, mut identical) = (0u64, 0u64);
        while let Some(batch) = stream.next().await {
            let batch = conform(&batch.map_err(failed)?, &schema).map_err(|e| failed(e.into()))?;
            let same = batch
                .column(schema.fields().len() - 1)
                .as_any()
                .downcast_ref::<arrow::array::BooleanArray>()
                .map_or(0, |b| b.true_count());
            rows += batch.num_rows() as u64;
            identical += same as u64;
            sink.write(&batch).map_err(|e| e.to_string())?;
        }
        m.duplicate_rows = rows;
        m.duplicate_rows_changed = rows - identical;
        if rows > 0 {
            tracing::info!(source = %source.name, rows, changed = rows - identical, "duplicate primary keys");
        }
        total += rows;
    }
    sink.close().map_err(|e| e.to_string())?;
    Ok(total)
}

/// `batch` with the column types of `schema` (DataFusion may hand out string views).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}
