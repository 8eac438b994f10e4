//! What a run rejected, as `patron quarantine` and `patron report` show it: the quarantine
//! grouped by source, column and reason pattern, the superseded copies per source, and
//! sample entries.

use serde::Serialize;
use serde_json::{Map, Value};

/// One group of the summary.
#[derive(Debug, Serialize)]
pub struct Group {
    /// Source name.
    pub source: String,
    /// Declared column (empty: the row as a whole).
    pub column: String,
    /// The reason with its numbers replaced by `<n>`, so that values group together.
    pub reason: String,
    /// Rejected rows (a row counts once per column it failed in).
    pub rows: u64,
    /// Quarantine entries.
    pub entries: u64,
}

/// Duplicate keys of one source.
#[derive(Debug, Serialize)]
pub struct Duplicates {
    /// Source name.
    pub source: String,
    /// Superseded copies (kept in raw, left out by staging).
    pub rows: u64,
    /// Of those, copies whose values differ from the current one.
    pub changed: u64,
}

/// The whole answer: one run's rejections.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The run.
    pub run_id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// When it finished.
    pub finished_at: String,
    /// Distinct rejected rows (file and line) matching the filters.
    pub rows: u64,
    /// Quarantine entries matching the filters.
    pub entries: u64,
    /// Groups by source, column and reason pattern, most rows first.
    pub summary: Vec<Group>,
    /// Superseded copies per source.
    pub duplicates: Vec<Duplicates>,
    /// Up to `--limit` entries, ordered by source, file, line, column.
    pub samples: Vec<Map<String, Value>>,
}
