//! The one place that builds the DataFusion [`SessionContext`] a run executes on: memory
//! limit, spill folder, parallelism, and where queries execute (in this process, or on an
//! Apache DataFusion Ballista cluster). Stages never create their own context.

pub mod ballista;
pub mod cluster_store;
pub mod codec;
pub mod memory;
pub mod merge_join;
pub mod partitioned;
pub mod prefetch;
pub mod register;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::common::config::SpillCompression;
use datafusion::error::Result as DfResult;
use datafusion::execution::memory_pool::TrackConsumersPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};

use crate::problems::Problems;
use cluster_store::ClusterStaging;

/// The scheduler port when a `df://` address names none (Ballista's default).
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// Where a run's queries execute (`engine.engine`, `patron run --engine`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Engine {
    /// DataFusion in the patron process (`local`).
    #[default]
    Local,
    /// A Ballista scheduler and executor started inside the patron process (`standalone`):
    /// the distributed code path without a cluster.
    Standalone,
    /// A Ballista cluster: its scheduler's address (`df://host:port`).
    Remote {
        /// Scheduler host name or IP address.
        host: String,
        /// Scheduler gRPC port.
        port: u16,
    },
}

impl Engine {
    /// True when queries leave this process's DataFusion (any Ballista engine).
    pub fn is_distributed(&self) -> bool {
        !matches!(self, Engine::Local)
    }
}

impl FromStr for Engine {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        match text {
            "local" => return Ok(Engine::Local),
            "standalone" => return Ok(Engine::Standalone),
            _ => {}
        }
        let usage = || format!("`{text}`: expected `local`, `standalone` or `df://HOST:PORT`");
        let address = text.strip_prefix("df://").ok_or_else(usage)?.trim_end_matches('/');
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("`{text}`: `{port}` is not a port number"))?,
            ),
            None => (address, DEFAULT_SCHEDULER_PORT),
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#']) || port == 0 {
            return Err(usage());
        }
        Ok(Engine::Remote {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Local => write!(f, "local"),
            Engine::Standalone => write!(f, "standalone"),
            Engine::Remote { host, port } => write!(f, "df://{host}:{port}"),
        }
    }
}

impl TryFrom<String> for Engine {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Engine> for String {
    fn from(engine: Engine) -> String {
        engine.to_string()
    }
}

/// Default `engine.job_timeout_secs`: six hours, longer than any one query of a nightly
/// load should take, short enough that a stuck cluster does not hold the run for a day.
pub const DEFAULT_JOB_TIMEOUT_SECS: u64 = 6 * 3600;

/// Memory limit per stage run side by side when `engine.stage_parallelism` is 0 (auto).
/// Stages side by side share one pool: the sorts of one can take the spilling operators'
/// share another's sort needs before it spills, and under 64 MiB four concurrent staging
/// stages failed that way. Under 2 GiB stages run one at a time unless configured otherwise.
pub const MB_PER_PARALLEL_STAGE: u64 = 1024;

/// Smallest `engine.memory_limit_mb`: below it the batches of one operator alone do not
/// fit, so nothing could run even by spilling.
pub const MIN_MEMORY_LIMIT_MB: u64 = 64;

/// Query engine settings (`[engine]` in the pipeline file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Where queries execute: `local`, `standalone` or `df://HOST:PORT` (a Ballista
    /// scheduler). `patron run --engine` overrides it.
    pub engine: Engine,
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
    /// SQL stages that may run at the same time when none depends on another; 0 means one
    /// per core, but at most one per [`MB_PER_PARALLEL_STAGE`] of `memory_limit_mb`. Each
    /// stage is a query of its own, so results do not depend on it; 1 runs one stage at a
    /// time (the least memory at once). Above 1, the churn model's two snapshots also run
    /// side by side.
    pub stage_parallelism: usize,
    /// On a Ballista engine, seconds one query (a job) may take, from submission to its
    /// last result row, before it is cancelled on the scheduler and the run fails; 0 for
    /// no limit. A job otherwise waits for ever when no executor is left to run it.
    pub job_timeout_secs: u64,
    /// DataFusion settings by their own keys (`[engine.options]`, e.g.
    /// `"datafusion.optimizer.prefer_hash_join" = "true"`), applied after patron's own, so
    /// any of them can be tuned without a patron release.
    pub options: BTreeMap<String, String>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            engine: Engine::Local,
            memory_limit_mb: 4096,
            target_partitions: 0,
            deterministic: true,
            batch_size: 8192,
            stage_parallelism: 0,
            job_timeout_secs: DEFAULT_JOB_TIMEOUT_SECS,
            options: BTreeMap::new(),
        }
    }
}

impl EngineSettings {
    /// How many independent stages run at once: `stage_parallelism`, or for 0 one per core
    /// and per [`MB_PER_PARALLEL_STAGE`] of the memory limit, at least one.
    pub fn stage_parallelism(&self) -> usize {
        match self.stage_parallelism {
            0 => {
                let cores = cores();
                let by_memory = (self.memory_limit_mb / MB_PER_PARALLEL_STAGE) as usize;
                cores.min(by_memory).max(1)
            }
            n => n,
        }
    }

    /// Records out-of-range values under `engine.*`.
    pub fn validate(&self, problems: &mut Problems) {
        if self.memory_limit_mb < MIN_MEMORY_LIMIT_MB {
            problems.push(
                "engine.memory_limit_mb",
                format!("{} is below the minimum of {MIN_MEMORY_LIMIT_MB}", self.memory_limit_mb),
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
        let mut config = SessionConfig::new();
        for (key, value) in &self.options {
            if let Err(e) = config.options_mut().set(key, value) {
                problems.push(format!("engine.options.\"{key}\""), first_line(&e.to_string()));
            }
        }
        if !(1..=1_048_576).contains(&self.batch_size) {
            problems.push(
                "engine.batch_size",
                format!("{} must be between 1 and 1048576", self.batch_size),
            );
        }
    }
}

/// The first line of a message (DataFusion's configuration errors carry a backtrace
/// hint on later lines).
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_string()
}

/// Builds the session for a run; `spill_dir` holds operator spill files. For a Ballista
/// engine the session plans locally and executes on the cluster (see [`ballista`]); with
/// `cluster`, the files its queries read are copied to the warehouse's object store and
/// the executors are told how to reach it (see [`cluster_store`]).
pub async fn build_context(
    settings: &EngineSettings,
    spill_dir: &Path,
    cluster: Option<Arc<ClusterStaging>>,
) -> DfResult<SessionContext> {
    let limit_bytes = (settings.memory_limit_mb as usize) * 1024 * 1024;
    // DataFusion's usual pool (tracking the top consumers for error messages), but with
    // room kept for operators that cannot spill (see [`memory`]).
    let pool = TrackConsumersPool::new(
        memory::HeadroomPool::new(limit_bytes),
        NonZeroUsize::new(5).expect("5 is not zero"),
    );
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(pool))
        .with_temp_file_path(spill_dir)
        .with_max_spill_merge_fan_in(memory::spill_merge_fan_in(limit_bytes))
        .build_arc()?;
    let mut config = SessionConfig::new()
        .with_batch_size(settings.batch_size)
        .with_information_schema(true);
    // Keep token positions so planning errors can point at the line of the stage file.
    config.options_mut().sql_parser.collect_spans = true;
    // What a sort keeps back for merging its spill files: DataFusion's 10 MiB default
    // leaves a small limit nothing to sort with, so it scales with the limit.
    let execution = &mut config.options_mut().execution;
    execution.sort_spill_reservation_bytes = execution.sort_spill_reservation_bytes.min(limit_bytes / 16);
    // Parquet strings read as plain Utf8, not string views: a sort or aggregate accounts a
    // view batch at the size of every page buffer it points into, so one 1024-row batch
    // asked the pool for 53 MB and no sort fitted a small limit. Plain strings are
    // accounted by what they hold, and the memory limit bounds what it says.
    execution.parquet.schema_force_view_types = false;
    // Spill files in LZ4 frames: at 10M sales lines `stg_marketing` spilled 761 MB instead
    // of 2.2 GB in the same time (18.3 s against 17.6 s), which bounds the disk a large run
    // needs beside its memory.
    execution.spill_compression = SpillCompression::Lz4Frame;
    if settings.deterministic {
        config = config.with_target_partitions(1);
    } else if settings.target_partitions > 0 {
        config = config.with_target_partitions(settings.target_partitions);
    }
    for (key, value) in &settings.options {
        config.options_mut().set(key, value)?;
    }
    if let Some(staging) = cluster.filter(|_| settings.engine.is_distributed()) {
        staging.register_store(&runtime)?;
        config = config
            .with_option_extension(staging.store_options().clone())
            .with_extension(staging);
    }
    if settings.engine.is_distributed() {
        let job_timeout = (settings.job_timeout_secs > 0).then(|| Duration::from_secs(settings.job_timeout_secs));
        return ballista::context(&settings.engine, config, runtime, job_timeout).await;
    }
    Ok(SessionContext::new_with_state(local_state(config, runtime)))
}

/// The session state of a local engine: DataFusion's defaults, with
/// [`merge_join::MergeSortedJoins`] among the physical optimizer rules and
/// [`prefetch::PrefetchJoinInputs`] after them.
pub(crate) fn local_state(
    config: SessionConfig,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> SessionState {
    let mut rules = PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == merge_join::RUNS_BEFORE)
        .unwrap_or(rules.len());
    rules.insert(at, Arc::new(merge_join::MergeSortedJoins));
    rules.push(Arc::new(prefetch::PrefetchJoinInputs));
    SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        .build()
}

/// The cores this process may use (std's count, which follows the cgroup's CPU quota), at
/// least 1. It reads the cgroup files on each call: look it up once per piece of work, not
/// per row or batch.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// A session that executes where `ctx` does (same engine, settings, functions) but starts
/// with no tables: for re-running stages on other parameters without touching the run's.
pub fn scratch_context(ctx: &SessionContext) -> SessionContext {
    let state = ctx.state();
    let config = state.config().clone().with_create_default_catalog_and_schema(true);
    let state = SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
        .build();
    SessionContext::new_with_state(state)
}

/// Runs independent jobs, one per name (the stages of a wave), up to `parallel` at once, each as a
/// tokio task of its own so that they use a core each, and returns their results in order
/// (a task that panicked gives its `JoinError`). Side by side, stages share one memory pool
/// ([`memory::HeadroomPool`]), first come, first served among the operators that spill: one
/// stage's sorts can hold what another needs. So a job that failed for lack of memory while
/// others ran beside it runs again, alone; on its own it spills as it would have.
pub async fn run_side_by_side<T, E, Fut>(
    names: &[&str],
    parallel: usize,
    job: impl Fn(usize) -> Fut,
) -> Vec<Result<Result<T, E>, tokio::task::JoinError>>
where
    T: Send + 'static,
    E: fmt::Display + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    use futures::StreamExt;
    let (count, parallel) = (names.len(), parallel.max(1));
    let spawned = (0..count).map(|i| tokio::spawn(job(i)));
    let mut results: Vec<_> = futures::stream::iter(spawned).buffered(parallel).collect().await;
    if parallel == 1 || count == 1 {
        return results;
    }
    for (i, result) in results.iter_mut().enumerate() {
        if matches!(result, Ok(Err(e)) if is_out_of_memory(e)) {
            tracing::warn!(
                stage = names[i],
                "out of memory while running beside other stages; running it again on its own"
            );
            *result = tokio::spawn(job(i)).await;
        }
    }
    results
}

/// True for DataFusion's "Resources exhausted" (the memory pool refused an allocation),
/// wherever it sits in an error's message.
pub fn is_out_of_memory(error: &impl fmt::Display) -> bool {
    error.to_string().contains("Resources exhausted")
}

/// True when `ctx` executes its queries on Ballista (built by [`build_context`] for a
/// distributed engine).
pub fn is_distributed(ctx: &SessionContext) -> bool {
    ballista::is_ballista(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_parse_and_print_back() {
        for (text, engine) in [
            ("local", Engine::Local),
            ("standalone", Engine::Standalone),
            (
                "df://scheduler:50051",
                Engine::Remote {
                    host: "scheduler".into(),
                    port: 50051,
                },
            ),
        ] {
            assert_eq!(text.parse::<Engine>().unwrap(), engine);
            assert_eq!(engine.to_string(), text);
        }
        let default_port: Engine = "df://10.1.2.3".parse().unwrap();
        assert_eq!(
            default_port.to_string(),
            format!("df://10.1.2.3:{DEFAULT_SCHEDULER_PORT}")
        );
        for bad in [
            "spark://x:1",
            "df://",
            "df://:50050",
            "df://h:99999",
            "df://h:0",
            "df://u@h:1",
            "remote",
        ] {
            assert!(bad.parse::<Engine>().is_err(), "{bad}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_that_ran_out_of_memory_side_by_side_run_again_alone() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let attempts: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
        // Job 1 runs out of memory on its first attempt, job 3 fails for another reason.
        let job = |parallel: usize| {
            let attempts = Arc::clone(&attempts);
            async move {
                crate::engine::run_side_by_side(&["a", "b", "c", "d"], parallel, |i| {
                    let attempts = Arc::clone(&attempts);
                    async move {
                        let n = attempts[i].fetch_add(1, Ordering::SeqCst);
                        match (i, n) {
                            (1, 0) => Err("stage `b`: Resources exhausted: Failed to allocate".to_string()),
                            (3, _) => Err("stage `d`: no such column".to_string()),
                            _ => Ok(i * 10),
                        }
                    }
                })
                .await
                .into_iter()
                .map(|r| r.expect("no task panicked"))
                .collect::<Vec<_>>()
            }
        };
        let results = job(2).await;
        assert_eq!(results[0], Ok(0));
        assert_eq!(results[1], Ok(10), "rerun alone after running out of memory");
        assert_eq!(results[2], Ok(20));
        assert!(
            results[3].as_ref().unwrap_err().contains("no such column"),
            "other errors stand"
        );
        let counts: Vec<usize> = attempts.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        assert_eq!(counts, vec![1, 2, 1, 1]);

        // One at a time, an out-of-memory failure is final.
        for a in attempts.iter() {
            a.store(0, Ordering::SeqCst);
        }
        let results = job(1).await;
        assert!(results[1].as_ref().unwrap_err().contains("Resources exhausted"));
        assert_eq!(attempts[1].load(Ordering::SeqCst), 1);
    }

    #[test]
    fn stage_parallelism_defaults_to_the_cores_within_memory_and_job_timeout_to_six_hours() {
        let default = EngineSettings::default();
        assert_eq!(default.stage_parallelism(), cores().min(4));
        let tight = EngineSettings {
            memory_limit_mb: 64,
            ..EngineSettings::default()
        };
        assert_eq!(tight.stage_parallelism(), 1, "one stage at a time under 1 GiB");
        assert_eq!(default.job_timeout_secs, 6 * 3600);
        let set: EngineSettings = toml::from_str("stage_parallelism = 3\njob_timeout_secs = 0").unwrap();
        assert_eq!(set.stage_parallelism(), 3);
        assert_eq!(set.job_timeout_secs, 0);
    }

    #[test]
    fn the_engine_key_reads_from_the_pipeline_file() {
        let s: EngineSettings = toml::from_str("engine = \"df://127.0.0.1:5000\"").unwrap();
        assert!(s.engine.is_distributed());
        assert!(!EngineSettings::default().engine.is_distributed());
        let err = toml::from_str::<EngineSettings>("engine = \"yarn\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("df://HOST:PORT"), "{err}");
    }
}
