//! Incremental loads: a source with `incremental = true` loads only the files that are new
//! or changed since the pipeline's latest succeeded run, and carries every other loaded
//! row over from that run's published raw and quarantine tables.
//!
//! The ledger is the previous run itself: its manifest lists each loaded file with its size
//! and version (ETag or modification time), and the `runs` table names the table versions
//! it published. A file whose name, size and version are unchanged is not read again; a
//! changed file is read again and its earlier rows are replaced, never duplicated; a file
//! no longer listed keeps its rows (it was loaded; `--full-refresh` reloads exactly what
//! is there now). Rows are carried by file, so a late-arriving file with old timestamps is
//! loaded like any other. A changed schema, format, compression or encoding reloads
//! everything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::{FileMetrics, InputFile, SourceMetrics};
use crate::config::SourcePlan;
use crate::names::{self, QUARANTINE_DIR, RAW_DIR};
use crate::publish::read::PublishedVersion;
use crate::publish::runs;
use crate::quote::{ident, literal};
use crate::storage::ParquetSink;
use crate::warehouse::Warehouse;

/// What the previous succeeded run loaded for one source, and where its rows are.
#[derive(Debug, Clone)]
pub struct PreviousLoad {
    /// The run that published them.
    pub run_id: String,
    /// Its files, by name.
    pub files: Vec<FileMetrics>,
    raw: PublishedVersion,
    quarantine: PublishedVersion,
}

/// Hash of everything that decides how a source's files are read: a change reloads all.
pub fn read_settings_hash(source: &SourcePlan) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(std::fs::read(&source.schema_file).unwrap_or_default());
    h.update(format!(
        "{:?}|{:?}|{}|{}",
        source.format,
        source.compression,
        source.encoding.name(),
        source.delimiter
    ));
    hex::encode(h.finalize())
}

/// The previous load of `source` by pipeline `pipeline`, when there is one to build on:
/// a succeeded run that published the source's raw table with the same read settings.
/// Anything unreadable means "no previous load" (a full load), logged.
pub async fn previous_load(warehouse: &Warehouse, pipeline: &str, source: &SourcePlan) -> Option<PreviousLoad> {
    let records = match runs::read_all(warehouse).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, source = %source.name, "no runs history: full load");
            return None;
        }
    };
    let raw = PublishedVersion::latest(warehouse, &records, pipeline, &format!("{RAW_DIR}/{}", source.name)).await?;
    let quarantine = PublishedVersion::latest(
        warehouse,
        &records,
        pipeline,
        &format!("{QUARANTINE_DIR}/{}", source.name),
    )
    .await?;
    let manifest = crate::publish::read::run_manifest(warehouse, &raw.run_id).await.ok()?;
    let metrics = manifest
        .get("extract")?
        .as_array()?
        .iter()
        .find(|m| m.get("source").and_then(|s| s.as_str()) == Some(source.name.as_str()))?;
    let hash = metrics.get("read_settings_hash").and_then(|h| h.as_str());
    if hash != Some(read_settings_hash(source).as_str()) {
        tracing::info!(source = %source.name, "read settings changed since the last run: full load");
        return None;
    }
    let files: Vec<FileMetrics> = serde_json::from_value(metrics.get("files")?.clone()).ok()?;
    Some(PreviousLoad {
        run_id: raw.run_id.clone(),
        files,
        raw,
        quarantine,
    })
}

/// Splits the listed files into those to read and the previous files whose rows carry
/// over (unchanged, or no longer listed).
pub fn split(listed: Vec<InputFile>, previous: &PreviousLoad) -> (Vec<InputFile>, Vec<FileMetrics>) {
    let listed_names: BTreeSet<String> = listed.iter().map(|f| f.name.clone()).collect();
    let unchanged = |f: &InputFile| {
        previous
            .files
            .iter()
            .any(|p| p.path == f.name && p.bytes == f.size && p.version == f.version)
    };
    let (keep_listed, to_read): (Vec<InputFile>, Vec<InputFile>) = listed.into_iter().partition(unchanged);
    let kept_names: BTreeSet<&str> = keep_listed.iter().map(|f| f.name.as_str()).collect();
    let carried = previous
        .files
        .iter()
        .filter(|p| kept_names.contains(p.path.as_str()) || !listed_names.contains(&p.path))
        .cloned()
        .map(|mut p| {
            p.reused = true;
            p
        })
        .collect();
    (to_read, carried)
}

/// Copies the carried files' rows from the previous run's published tables into
/// `raw_out` and `quarantine_out`; returns (raw rows, quarantine entries) copied.
pub async fn carry_over(
    previous: &PreviousLoad,
    carried: &[FileMetrics],
    raw_out: &Path,
    raw_schema: &SchemaRef,
    quarantine_out: &Path,
    quarantine_schema: &SchemaRef,
) -> Result<(u64, u64), String> {
    let list = if carried.is_empty() {
        "NULL".to_string()
    } else {
        carried.iter().map(|f| literal(&f.path)).collect::<Vec<_>>().join(", ")
    };
    let raw = copy_rows(
        &previous.raw,
        &format!("{} IN ({list})", ident(names::SOURCE_FILE_COLUMN)),
        raw_out,
        raw_schema,
    )
    .await?;
    let quarantine = copy_rows(
        &previous.quarantine,
        &format!("{} IN ({list})", ident(names::quarantine::FILE)),
        quarantine_out,
        quarantine_schema,
    )
    .await?;
    Ok((raw, quarantine))
}

async fn copy_rows(table: &PublishedVersion, filter: &str, out: &Path, schema: &SchemaRef) -> Result<u64, String> {
    let ctx = SessionContext::new();
    let what = |e: &dyn std::fmt::Display| format!("reading the previous load in {}: {e}", table.path);
    table.register(&ctx, "previous").await.map_err(|e| what(&e))?;
    let columns: Vec<String> = schema.fields().iter().map(|f| ident(f.name())).collect();
    let sql = format!("SELECT {} FROM previous WHERE {filter}", columns.join(", "));
    let mut stream = ctx
        .sql(&sql)
        .await
        .map_err(|e| what(&e))?
        .execute_stream()
        .await
        .map_err(|e| what(&e))?;
    let mut sink = ParquetSink::create(out, Arc::clone(schema)).map_err(|e| what(&e))?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| what(&e))?;
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| what(&e))?;
        let batch = RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| what(&e))?;
        rows += batch.num_rows() as u64;
        sink.write(&batch).map_err(|e| what(&e))?;
    }
    sink.close().map_err(|e| what(&e))?;
    Ok(rows)
}

/// Adds the carried files to a source's metrics: their rows count in the totals, and the
/// carried Parquet files join the raw and quarantine tables.
pub fn merge_carried(
    m: &mut SourceMetrics,
    carried: Vec<FileMetrics>,
    raw_file: PathBuf,
    quarantine_file: PathBuf,
    copied: (u64, u64),
) {
    m.rows_reused = carried.iter().map(|f| f.rows_loaded).sum();
    m.files_reused = carried.len() as u64;
    for f in &carried {
        m.rows_read += f.rows_read;
        m.rows_loaded += f.rows_loaded;
        m.rows_quarantined += f.rows_quarantined;
        if let Some(t) = f.max_timestamp_micros {
            m.max_timestamp_micros = Some(m.max_timestamp_micros.map_or(t, |x| x.max(t)));
        }
    }
    m.quarantine_entries += copied.1;
    m.max_timestamp = m
        .max_timestamp_micros
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    m.files.extend(carried);
    m.files.sort_by(|a, b| a.path.cmp(&b.path));
    m.raw_files.push(raw_file);
    m.quarantine_files.push(quarantine_file);
}
