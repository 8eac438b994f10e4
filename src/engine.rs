//! The one place that builds the DataFusion [`SessionContext`] a run executes on: memory
//! limit, spill folder, parallelism. Stages never create their own context.

use std::path::Path;
use std::sync::Arc;

use datafusion::error::Result as DfResult;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// Query engine settings (`[engine]` in the pipeline file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Memory the query engine may use before it spills to disk, in MiB.
    pub memory_limit_mb: u64,
    /// Parallel partitions per query; 0 means the number of cores (one when `deterministic`).
    pub target_partitions: usize,
    /// Bit-identical results run after run: every query runs on one partition. With more,
    /// floating-point sums and averages add up in the order partitions happen to finish,
    /// so scores can differ in the last digits between two runs on the same inputs.
    pub deterministic: bool,
    /// Rows per Arrow batch, for the engine and for extract.
    pub batch_size: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            memory_limit_mb: 4096,
            target_partitions: 0,
            deterministic: true,
            batch_size: 8192,
        }
    }
}

impl EngineSettings {
    /// Records out-of-range values under `engine.*`.
    pub fn validate(&self, problems: &mut Problems) {
        if self.memory_limit_mb < 64 {
            problems.push(
                "engine.memory_limit_mb",
                format!("{} is below the minimum of 64", self.memory_limit_mb),
            );
        }
        if self.deterministic && self.target_partitions > 1 {
            problems.push(
                "engine.target_partitions",
                format!(
                    "{} partitions make results vary between runs; set `engine.deterministic = false` to allow it",
                    self.target_partitions
                ),
            );
        }
        if !(1..=1_048_576).contains(&self.batch_size) {
            problems.push(
                "engine.batch_size",
                format!("{} must be between 1 and 1048576", self.batch_size),
            );
        }
    }
}

/// Builds the session for a run; `spill_dir` holds operator spill files.
pub fn build_context(settings: &EngineSettings, spill_dir: &Path) -> DfResult<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit((settings.memory_limit_mb as usize) * 1024 * 1024, 1.0)
        .with_temp_file_path(spill_dir)
        .build_arc()?;
    let mut config = SessionConfig::new()
        .with_batch_size(settings.batch_size)
        .with_information_schema(true);
    // Keep token positions so planning errors can point at the line of the stage file.
    config.options_mut().sql_parser.collect_spans = true;
    if settings.deterministic {
        config = config.with_target_partitions(1);
    } else if settings.target_partitions > 0 {
        config = config.with_target_partitions(settings.target_partitions);
    }
    Ok(SessionContext::new_with_config_rt(config, Arc::clone(&runtime)))
}
