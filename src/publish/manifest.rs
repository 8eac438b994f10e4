//! The run manifest: one JSON document per run under `runs/<run_id>.json` saying what ran,
//! on what, with what result. It is assembled from the metrics each phase returns, so it
//! cannot drift from what actually happened.

use std::collections::BTreeMap;

use serde::Serialize;

use super::PublishError;
use crate::engine::EngineSettings;
use crate::extract::SourceMetrics;
use crate::names::{LATEST_MANIFEST, RUNS_DIR};
use crate::score::ScoringSettings;
use crate::score::models::ModelMetrics;
use crate::transform::checks::TestOutcome;
use crate::transform::runner::StageMetrics;
use crate::warehouse::{Warehouse, WarehouseError};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every phase succeeded and the tables were published.
    Succeeded,
    /// The run stopped with an error; nothing of it was published.
    Failed,
}

/// A table the run published.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedTable {
    /// Table name.
    pub name: String,
    /// Kind: `raw`, `quarantine` or `table` (a SQL stage).
    pub kind: String,
    /// Folder in the warehouse.
    pub path: String,
    /// Folder relative to the warehouse (`tables/fct_customer`, `raw/sales`): the key of
    /// the table in the `runs` table.
    pub location: String,
    /// The Delta version this run committed (`None` for the Parquet format).
    pub version: Option<u64>,
    /// Rows.
    pub rows: u64,
    /// Bytes of Parquet.
    pub bytes: u64,
}

/// Settings the run used, so a result can be reproduced and explained.
#[derive(Debug, Clone, Serialize)]
pub struct RunSettings {
    /// Scoring thresholds.
    pub scoring: ScoringSettings,
    /// Engine limits.
    pub engine: EngineSettings,
}

/// Everything about one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunManifest {
    /// Sortable unique id: UTC start time plus a random suffix.
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline file.
    pub pipeline_file: String,
    /// patron version.
    pub patron_version: String,
    /// Hash of the pipeline file, schemas and SQL files.
    pub config_hash: String,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End, RFC 3339 UTC.
    pub finished_at: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The as-of date used (`None` if the run failed before it was known).
    pub as_of: Option<String>,
    /// Where the as-of date came from: `latest` (the data) or `config`.
    pub as_of_source: String,
    /// How the run ended.
    pub outcome: Outcome,
    /// The error, for a failed run.
    pub error: Option<String>,
    /// The phase that failed, for a failed run.
    pub failed_phase: Option<String>,
    /// Per source and file: bytes, rows read, loaded and quarantined.
    pub extract: Vec<SourceMetrics>,
    /// Rows quarantined over all sources.
    pub rows_quarantined: u64,
    /// Per stage, in execution order.
    pub stages: Vec<StageMetrics>,
    /// Every data test run, with failures.
    pub tests: Vec<TestOutcome>,
    /// The fitted models (parameters, log-likelihood, iterations, convergence, fit time).
    pub models: Option<ModelMetrics>,
    /// Tables published.
    pub tables: Vec<PublishedTable>,
    /// Settings used.
    pub settings: RunSettings,
    /// The failed run's staging folder, kept for inspection.
    pub staging: Option<String>,
    /// Table format published: `delta` or `parquet`.
    pub format: String,
    /// The stale lock this run took over (its run id and why it was stale), if any.
    pub lock_taken_over: Option<String>,
    /// Wall time of each phase that ran, in ms, by name: `extract` (reading, validating
    /// and writing the raw tables of all sources, which run in parallel), `duplicates` (the
    /// duplicate-key scan), `transform` (the SQL stages with the model fits and churn
    /// training between them), `test` (the singular data tests) and `publish`.
    pub phase_ms: BTreeMap<String, u64>,
}

/// Writes `runs/<run_id>.json` (and `runs/latest.json` for a successful run), each whole
/// (a local file through a temporary file and a rename, an object in one put), so a reader
/// never sees half a manifest. Returns where the run's manifest is.
pub async fn write_manifest(warehouse: &Warehouse, manifest: &RunManifest) -> Result<String, PublishError> {
    let key = super::read::manifest_key(&manifest.run_id);
    let text = serde_json::to_string_pretty(manifest).map_err(|e| WarehouseError {
        location: warehouse.describe(&key),
        message: e.to_string(),
    })?;
    warehouse.put(&key, text.clone()).await?;
    if manifest.outcome == Outcome::Succeeded {
        warehouse.put(&format!("{RUNS_DIR}/{LATEST_MANIFEST}"), text).await?;
    }
    Ok(warehouse.describe(&key))
}
