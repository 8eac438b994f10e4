//! The run manifest: one JSON document per run under `runs/<run_id>.json` saying what ran,
//! on what, with what result. It is assembled from the metrics each phase returns, so it
//! cannot drift from what actually happened.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::PublishError;
use crate::engine::EngineSettings;
use crate::extract::SourceMetrics;
use crate::names::{LATEST_MANIFEST, RUNS_DIR};
use crate::score::ScoringSettings;
use crate::score::models::ModelMetrics;
use crate::transform::checks::TestOutcome;
use crate::transform::runner::StageMetrics;

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
}

/// Writes `runs/<run_id>.json` (and `runs/latest.json` for a successful run) through a
/// temporary file and a rename, so a reader never sees half a manifest.
pub fn write_manifest(warehouse: &Path, manifest: &RunManifest) -> Result<PathBuf, PublishError> {
    let dir = warehouse.join(RUNS_DIR);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PublishError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let text = serde_json::to_string_pretty(manifest).map_err(|e| PublishError::Io {
        path: dir.clone(),
        source: std::io::Error::other(e),
    })?;
    let path = dir.join(format!("{}.json", manifest.run_id));
    let mut targets = vec![path.clone()];
    if manifest.outcome == Outcome::Succeeded {
        targets.push(dir.join(LATEST_MANIFEST));
    }
    for target in targets {
        let tmp = target.with_extension("json.tmp");
        std::fs::write(&tmp, &text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io(&target))?;
    }
    Ok(path)
}
