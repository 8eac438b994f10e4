//! One source of truth for the names BI dashboards, SQL stages and tests depend on:
//! warehouse folders, system columns added by extract, and the tables patron registers.

/// Folder under the warehouse holding the extracted exports as Parquet, one folder a source.
pub const RAW_DIR: &str = "raw";
/// Folder under a run's staging folder holding the downloads of remote input files.
pub const DOWNLOAD_DIR: &str = "downloads";
/// Folder under the warehouse holding rejected rows, one folder a source.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Folder under the warehouse holding the published tables, one folder a table.
pub const TABLES_DIR: &str = "tables";
/// Folder under the warehouse holding one JSON manifest per run.
pub const RUNS_DIR: &str = "runs";
/// Folder under the warehouse holding each run's work in progress; never read by BI.
pub const STAGING_DIR: &str = "_staging";
/// Folder under a run's staging folder holding tables patron keeps in memory or reads
/// through Delta, written to Parquet so the executors of a Ballista cluster can read them.
pub const PORTABLE_DIR: &str = "portable";
/// Folder of a run's staging area where the churn step writes its as-of-cut-off
/// snapshots of the stage chain (removed when each snapshot is read).
pub const CHURN_SNAPSHOTS_DIR: &str = "churn_snapshots";
/// Folder under the warehouse holding the `runs` Delta table (one row per run).
pub const RUNS_TABLE_DIR: &str = "runs/table";
/// SQL name of the table of runs.
pub const RUNS_TABLE: &str = "runs";
/// Name of the file inside [`RUNS_DIR`] that always holds the latest successful manifest.
pub const LATEST_MANIFEST: &str = "latest.json";

/// Where `patron docs` writes its catalog in the warehouse (unless `--out`).
pub const DOCS_KEY: &str = "docs/index.html";

/// Where `patron report` writes its page in the warehouse (unless `--out`).
pub const REPORT_KEY: &str = "report.html";

/// `runs.outcome` of a run that published its tables.
pub const OUTCOME_SUCCEEDED: &str = "succeeded";
/// `runs.outcome` of a run that stopped with an error (or was aborted); nothing published.
pub const OUTCOME_FAILED: &str = "failed";
/// `runs.outcome` of a run that never started: another run held the warehouse lock, its
/// schedule slot overlapped a run still going, or its slot was missed.
pub const OUTCOME_SKIPPED: &str = "skipped";

/// Where `patron schedule` serves `/healthz` and `/metrics` unless told otherwise.
pub const DEFAULT_HEALTH_ADDR: &str = "127.0.0.1:9750";

/// Column added to every extracted row: the file it came from.
pub const SOURCE_FILE_COLUMN: &str = "_source_file";
/// Column added to every extracted row: the 1-based line (CSV/NDJSON) or row (Parquet).
pub const SOURCE_LINE_COLUMN: &str = "_source_line";

/// Prefix of the SQL table name under which an extracted source is visible to stages:
/// the source `sales` is the table `raw_sales`.
pub const RAW_TABLE_PREFIX: &str = "raw_";
/// Table with every quarantined row of the run, all sources together.
pub const QUARANTINE_TABLE: &str = "quarantine";

/// The SQL table name of the published table in `relative` (a warehouse-relative folder
/// such as `tables/fct_customer`, `raw/sales` or `quarantine/sales`).
pub fn published_table_name(relative: &str) -> String {
    match relative.split_once('/') {
        Some((RAW_DIR, source)) => raw_table(source),
        Some((QUARANTINE_DIR, source)) => format!("{QUARANTINE_TABLE}_{source}"),
        Some((_, name)) => name.to_string(),
        None => relative.to_string(),
    }
}

/// The SQL table name of an extracted source.
pub fn raw_table(source: &str) -> String {
    format!("{RAW_TABLE_PREFIX}{source}")
}

/// The view of a source's raw table as of the as-of day, one row per primary key:
/// `raw_<source>_current` (see `extract::current`).
pub fn current_table(source: &str) -> String {
    format!("{RAW_TABLE_PREFIX}{source}_current")
}

/// Folder under the warehouse (and a run's staging folder) holding the duplicates table.
pub const DUPLICATES_DIR: &str = "duplicates";
/// Table listing every extracted row whose primary key repeats another row of its source
/// (one row per superseded copy), all sources together.
pub const DUPLICATES_TABLE: &str = "duplicates";

/// Columns of the duplicates table, in order.
pub mod duplicates {
    /// Run that found the duplicate.
    pub const RUN_ID: &str = "run_id";
    /// Source name from the pipeline file.
    pub const SOURCE: &str = "source";
    /// The primary key, as `column=value, ...`.
    pub const KEY: &str = "key";
    /// File of the superseded copy.
    pub const FILE: &str = "file";
    /// Line (or row) of the superseded copy.
    pub const LINE: &str = "line";
    /// File of the copy that stays current (the last in file, then line order).
    pub const KEPT_FILE: &str = "kept_file";
    /// Line of the copy that stays current.
    pub const KEPT_LINE: &str = "kept_line";
    /// True when the superseded copy has the same values as the current one.
    pub const IDENTICAL: &str = "identical";
}

/// Columns of the quarantine table, in order.
pub mod quarantine {
    /// Run that rejected the row.
    pub const RUN_ID: &str = "run_id";
    /// Source name from the pipeline file.
    pub const SOURCE: &str = "source";
    /// File the row came from.
    pub const FILE: &str = "file";
    /// 1-based line (CSV/NDJSON) or row number (Parquet).
    pub const LINE: &str = "line";
    /// Declared column that failed; empty when the row as a whole failed.
    pub const COLUMN: &str = "column_name";
    /// The offending value as read.
    pub const RAW_VALUE: &str = "raw_value";
    /// Why the value or row was rejected.
    pub const REASON: &str = "reason";
    /// The whole record as read, so nothing is lost.
    pub const RAW_RECORD: &str = "raw_record";
}

/// Phase of a run: extract (reading, validating and writing raw tables).
pub const PHASE_EXTRACT: &str = "extract";
/// Phase of a run: the duplicate-key scan over the raw tables.
pub const PHASE_DUPLICATES: &str = "duplicates";
/// Phase of a run: the SQL stages, with the model fits and churn training between them.
pub const PHASE_TRANSFORM: &str = "transform";
/// Phase of a run: data tests (failed data tests are reported as this phase).
pub const PHASE_TESTS: &str = "test";
/// Phase of a run: publishing the staged tables into the warehouse.
pub const PHASE_PUBLISH: &str = "publish";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_folder_maps_to_the_sql_name_stages_and_queries_use() {
        assert_eq!(published_table_name("tables/fct_customer"), "fct_customer");
        assert_eq!(published_table_name("raw/sales"), "raw_sales");
        assert_eq!(published_table_name("quarantine/sales"), "quarantine_sales");
    }
}
