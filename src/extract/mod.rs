//! Extract: every source's files are read as text, typed and checked against the declared
//! schema, and written as Parquet into the run's staging area: good rows to
//! `raw/<source>/`, rejected rows to `quarantine/<source>/` with file, line, column, raw
//! value and reason. Nothing is dropped: every data line of every file is either loaded or
//! quarantined, and the counts per file are in the returned [`SourceMetrics`].

pub mod codec;
pub mod current;
pub mod duplicates;
pub mod fuzz;
pub mod incremental;
pub mod input;
mod parallel;
pub mod reader;
pub mod run;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::config::{Format, SourcePlan};
use crate::names::quarantine as q;
use crate::storage::{Layout, ParquetSink, RowGroupSink, WriteError};
pub use input::{InputFile, LocalInput, fetch_inputs, list_inputs};
use reader::{CsvReader, ExportReader, NdjsonReader, ParquetReader, Reject};
pub use run::{SourcesRun, list_all, run_sources};

/// Extract failures. Bad rows are not errors (they are quarantined); these are.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The location matched no file. A configuration problem (exit code 2).
    #[error("source `{source_name}`: no input file matches {location}")]
    NoInputFiles {
        /// Source name.
        source_name: String,
        /// The path or glob.
        location: String,
    },
    /// The glob pattern is malformed (exit code 2).
    #[error("source `{source_name}`: bad location pattern {location}: {message}")]
    BadPattern {
        /// Source name.
        source_name: String,
        /// The pattern.
        location: String,
        /// Why it is malformed.
        message: String,
    },
    /// The object store holding the location could not be set up or listed.
    #[error("source `{source_name}`: cannot list {location}: {message}")]
    Store {
        /// Source name.
        source_name: String,
        /// The URL or URL pattern.
        location: String,
        /// What the store said (after retries).
        message: String,
    },
    /// Downloading a listed object failed (after retries).
    #[error("downloading {file}: {message}")]
    Download {
        /// The object's URL.
        file: String,
        /// What the store said.
        message: String,
    },
    /// A listed input file is gone: deleted or moved while the run was going.
    #[error("input file {file} disappeared during the run (deleted or moved after it was listed)")]
    Vanished {
        /// The file's path or URL.
        file: String,
    },
    /// A file could not be read.
    #[error("reading {file}: {source}")]
    Io {
        /// The file's path or URL.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is unreadable as a whole (corrupt Parquet or compressed data, duplicate
    /// header names...).
    #[error("{file}, line {line}: {message}")]
    BadFile {
        /// The file's path or URL.
        file: String,
        /// Line (or row) where reading stopped; 0 when unknown.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A thread of extract could not start or stopped unexpectedly.
    #[error("source `{source_name}`: {message}")]
    Worker {
        /// Source name.
        source_name: String,
        /// What happened.
        message: String,
    },
    /// Writing the extracted Parquet failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// More rows were rejected than the source's error budget allows.
    #[error(
        "source `{source_name}`: {rejected} of {read} rows rejected ({:.2}%), over the error budget of {:.2}%; see the quarantine at {quarantine}",
        100.0 * *rejected as f64 / (*read).max(1) as f64, 100.0 * budget
    )]
    ErrorBudgetExceeded {
        /// Source name.
        source_name: String,
        /// Rows rejected.
        rejected: u64,
        /// Rows read.
        read: u64,
        /// The budget, a share of rows.
        budget: f64,
        /// Where the rejected rows were written.
        quarantine: PathBuf,
    },
    /// The incremental extract could not carry the unchanged files' rows over from the
    /// previous run.
    #[error(
        "source `{source_name}`: carrying the unchanged files over from run {previous_run}: {message}; rerun with --full-refresh"
    )]
    CarryOver {
        /// Source name.
        source_name: String,
        /// The run whose tables the rows come from.
        previous_run: String,
        /// What went wrong.
        message: String,
    },
    /// A task of extract stopped before finishing (it panicked or was cancelled).
    #[error("{task}: the task stopped: {source}")]
    Task {
        /// The task: `extract of source `sales``, `key filter of source `sales``.
        task: String,
        /// The runtime's report.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl ExtractError {
    /// True when the user must fix the configuration or inputs, rather than the data.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            ExtractError::NoInputFiles { .. } | ExtractError::BadPattern { .. }
        )
    }
}

/// What happened to one input file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileMetrics {
    /// The file's path or URL.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// ETag or modification time when listed: with `path` and `bytes`, what an incremental
    /// load compares to decide whether the file changed.
    #[serde(default)]
    pub version: String,
    /// True when the rows were carried over from an earlier run (incremental load), not
    /// read in this one.
    #[serde(default)]
    pub reused: bool,
    /// Latest datetime value in the file's loaded rows, UTC microseconds.
    #[serde(default)]
    pub max_timestamp_micros: Option<i64>,
    /// Data rows read (records after the header, including rejected ones).
    pub rows_read: u64,
    /// Rows loaded into the raw table.
    pub rows_loaded: u64,
    /// Rows rejected to the quarantine.
    pub rows_quarantined: u64,
    /// Declared columns the file lacks.
    pub missing_columns: Vec<String>,
    /// Columns the file has that are not declared (ignored).
    pub extra_columns: Vec<String>,
}

/// What extract did for one source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceMetrics {
    /// Source name.
    pub source: String,
    /// Per file, in the order read (sorted by path).
    pub files: Vec<FileMetrics>,
    /// Sum of `rows_read`.
    pub rows_read: u64,
    /// Sum of `rows_loaded`.
    pub rows_loaded: u64,
    /// Sum of `rows_quarantined`.
    pub rows_quarantined: u64,
    /// Quarantine entries (a row can have several bad values).
    pub quarantine_entries: u64,
    /// Loaded rows whose primary key repeats a row loaded later (file, then line order):
    /// kept in the raw table, superseded in staging, listed in the `duplicates` table.
    pub duplicate_rows: u64,
    /// Of `duplicate_rows`, those whose values differ from the copy that stays current.
    pub duplicate_rows_changed: u64,
    /// Files whose rows were carried over from an earlier run (incremental load).
    pub files_reused: u64,
    /// Rows carried over from an earlier run; included in `rows_loaded`.
    pub rows_reused: u64,
    /// Hash of the schema and read settings; a change makes an incremental load full.
    pub read_settings_hash: String,
    /// Latest datetime value in the loaded rows, RFC 3339.
    pub max_timestamp: Option<String>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Parquet files with the loaded rows.
    #[serde(skip)]
    pub raw_files: Vec<PathBuf>,
    /// Parquet files with the rejected rows.
    #[serde(skip)]
    pub quarantine_files: Vec<PathBuf>,
    /// `max_timestamp` as UTC microseconds.
    #[serde(skip)]
    pub max_timestamp_micros: Option<i64>,
    /// The loaded keys that may repeat (with a primary key): what finding duplicates
    /// starts from. Taken once used.
    #[serde(skip)]
    pub seen_keys: Option<crate::key_filter::SeenKeys>,
}

/// Schema of the quarantine table.
pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(q::RUN_ID, DataType::Utf8, false),
        Field::new(q::SOURCE, DataType::Utf8, false),
        Field::new(q::FILE, DataType::Utf8, false),
        Field::new(q::LINE, DataType::Int64, false),
        Field::new(q::COLUMN, DataType::Utf8, false),
        Field::new(q::RAW_VALUE, DataType::Utf8, true),
        Field::new(q::REASON, DataType::Utf8, false),
        Field::new(q::RAW_RECORD, DataType::Utf8, false),
    ]))
}

fn quarantine_batch(schema: &SchemaRef, run_id: &str, source: &str, file: &str, rejects: &[Reject]) -> RecordBatch {
    let n = rejects.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id; n])),
        Arc::new(StringArray::from(vec![source; n])),
        Arc::new(StringArray::from(vec![file; n])),
        Arc::new(Int64Array::from_iter_values(
            rejects.iter().map(|r| validate::line_value(r.line)),
        )),
        Arc::new(StringArray::from_iter_values(rejects.iter().map(|r| r.column.as_str()))),
        Arc::new(StringArray::from_iter(rejects.iter().map(|r| r.raw_value.as_deref()))),
        Arc::new(StringArray::from_iter_values(rejects.iter().map(|r| r.reason.as_str()))),
        Arc::new(StringArray::from_iter_values(
            rejects.iter().map(|r| r.raw_record.as_str()),
        )),
    ];
    RecordBatch::try_new(Arc::clone(schema), columns).unwrap_or_else(|_| RecordBatch::new_empty(Arc::clone(schema)))
}

fn open_reader(
    source: &SourcePlan,
    file: &LocalInput,
    batch_size: usize,
) -> Result<Box<dyn ExportReader>, ExtractError> {
    let name = file.name.as_str();
    Ok(match source.format {
        Format::Csv => Box::new(CsvReader::new(
            input::open_text(source, file)?,
            name,
            &source.schema,
            source.delimiter,
            batch_size,
        )?),
        Format::Ndjson => Box::new(NdjsonReader::new(
            input::open_text(source, file)?,
            name,
            &source.schema,
            batch_size,
        )),
        Format::Parquet => {
            let mut f = reader::open(&file.path, name)?;
            if let Ok(Some(codec)) = input::codec_of(source.compression, name, &mut f) {
                return Err(ExtractError::BadFile {
                    file: file.name.clone(),
                    line: 0,
                    message: format!(
                        "a {codec:?}-compressed Parquet file: Parquet compresses its own pages, store it uncompressed"
                    ),
                });
            }
            Box::new(ParquetReader::open(&file.path, name, &source.schema, batch_size)?)
        }
    })
}

/// Threads extract uses for a source unless told otherwise: the machine's cores.
pub fn default_threads() -> usize {
    crate::engine::cores()
}

/// Extracts one source into `raw_dir/<source>/` and `quarantine_dir/<source>/`, on
/// `threads` threads (1: all on the calling thread; see [`parallel`]). The rows, their
/// order (file, then line), the metrics and the error returned do not depend on `threads`.
///
/// Synchronous and CPU bound; call it from a blocking task.
pub fn extract_source(
    source: &SourcePlan,
    files: &[LocalInput],
    run_id: &str,
    raw_dir: &Path,
    quarantine_dir: &Path,
    batch_size: usize,
    threads: usize,
) -> Result<SourceMetrics, ExtractError> {
    let dirs = (raw_dir, quarantine_dir);
    extract_with(source, files, run_id, dirs, batch_size, threads, &raw_layout(source))
}

/// How a source's raw table is laid out: the default, with its key and event time columns
/// written without a dictionary (their values rarely repeat).
fn raw_layout(source: &SourcePlan) -> Layout {
    let schema = &source.schema;
    Layout {
        plain: schema.primary_key.iter().chain(&schema.event_time).cloned().collect(),
        ..Layout::default()
    }
}

/// [`extract_source`] with the raw table laid out as `layout`.
fn extract_with(
    source: &SourcePlan,
    files: &[LocalInput],
    run_id: &str,
    (raw_dir, quarantine_dir): (&Path, &Path),
    batch_size: usize,
    threads: usize,
    layout: &Layout,
) -> Result<SourceMetrics, ExtractError> {
    let started = Instant::now();
    crate::failpoint::hit_with(|| format!("extract.{}.start", source.name));
    let raw_schema = validate::raw_schema(&source.schema);
    let q_schema = quarantine_schema();
    let raw_path = raw_dir.join(&source.name).join("part-00000.parquet");
    let quarantine_path = quarantine_dir.join(&source.name).join("part-00000.parquet");
    let raw_sink = RowGroupSink::create(&raw_path, Arc::clone(&raw_schema), layout)?;
    let q_sink = ParquetSink::create(&quarantine_path, Arc::clone(&q_schema))?;
    let extraction = parallel::Extraction {
        source,
        files,
        run_id,
        raw_schema: &raw_schema,
        q_schema: &q_schema,
        batch_size,
        key: crate::key_filter::KeyColumns::new(&raw_schema, &source.schema.primary_key),
    };
    let extracted = parallel::run(&extraction, threads, raw_sink, q_sink)?;
    crate::failpoint::hit_with(|| format!("extract.{}.end", source.name));
    let metrics = extracted.files;
    let max_ts = extracted.max_ts;
    let sum = |f: fn(&FileMetrics) -> u64| metrics.iter().map(f).sum::<u64>();
    let result = SourceMetrics {
        source: source.name.clone(),
        rows_read: sum(|m| m.rows_read),
        rows_loaded: sum(|m| m.rows_loaded),
        rows_quarantined: sum(|m| m.rows_quarantined),
        quarantine_entries: extracted.entries,
        duplicate_rows: 0,
        duplicate_rows_changed: 0,
        files: metrics,
        files_reused: 0,
        rows_reused: 0,
        read_settings_hash: incremental::read_settings_hash(source),
        max_timestamp: max_ts
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        duration_ms: started.elapsed().as_millis() as u64,
        raw_files: vec![raw_path],
        quarantine_files: vec![quarantine_path.clone()],
        max_timestamp_micros: max_ts,
        seen_keys: extracted.seen,
    };
    tracing::info!(
        source = %result.source,
        rows_read = result.rows_read,
        rows_loaded = result.rows_loaded,
        rows_quarantined = result.rows_quarantined,
        threads,
        "extracted"
    );
    Ok(result)
}

/// Fails when the source rejected more of the rows read in this run (carried-over files
/// aside) than its error budget allows.
pub fn check_error_budget(source: &SourcePlan, m: &SourceMetrics) -> Result<(), ExtractError> {
    let fresh = m.files.iter().filter(|f| !f.reused);
    let (read, rejected) = fresh.fold((0, 0), |(r, q), f| (r + f.rows_read, q + f.rows_quarantined));
    if rejected as f64 > source.error_budget * read as f64 {
        return Err(ExtractError::ErrorBudgetExceeded {
            source_name: source.name.clone(),
            rejected,
            read,
            budget: source.error_budget,
            quarantine: m.quarantine_files.first().cloned().unwrap_or_default(),
        });
    }
    Ok(())
}
