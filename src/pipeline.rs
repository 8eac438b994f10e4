//! One run, start to end: take the warehouse lock, extract every source, run the SQL
//! stages in dependency order, publish the tables, append the run to the `runs` table and
//! write the run manifest. The runs row and the manifest are written for failed runs too,
//! from the metrics gathered up to the failure.
//!
//! Nothing reaches the warehouse before every stage succeeded: the phases write into the
//! run's staging folder, and publish then commits one table at a time. A publish that
//! fails part-way restores the tables it already committed to their previous versions;
//! one that is killed part-way leaves newer versions of some tables that no `succeeded`
//! runs row names, so readers who follow the `runs` table still get a consistent set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{AsOf, Plan};
use crate::engine::build_context;
use crate::engine::cluster_store::{self, ClusterStaging};
use crate::error::RunError;
use crate::extract::incremental;
use crate::extract::{self, SourceMetrics};
use crate::failpoint;
use crate::names::{
    self, CHURN_SNAPSHOTS_DIR, DOWNLOAD_DIR, DUPLICATES_DIR, PHASE_DUPLICATES, PHASE_EXTRACT, PHASE_PUBLISH,
    PHASE_TESTS, PHASE_TRANSFORM, PORTABLE_DIR, QUARANTINE_DIR, RAW_DIR, TABLES_DIR,
};
use crate::progress::Progress;
use crate::publish::lock::{LockTiming, WarehouseLock};
use crate::publish::manifest::{PublishedTable, RunSettings};
use crate::publish::read::{self, PublishedVersion};
use crate::publish::runs::{self, RunRecord};
use crate::publish::{self, Outcome, PublishError, RunManifest, TableFormat, delta};
use crate::score::bgnbd::BgNbdParams;
use crate::score::churn;
use crate::score::models::{self, MODEL_INPUT_STAGE, MODEL_PARAMS_TABLE, ModelMetrics, fit_and_register};
use crate::storage::Layout;
use crate::transform::checks::{self, TestOutcome};
use crate::transform::lineage::LineageGraph;
use crate::transform::spec::Materialized;
use crate::transform::{self, Stage, TransformError, runner, select};
use crate::warehouse::{Warehouse, WarehouseError};

/// The result of a successful run.
#[derive(Debug)]
pub struct RunReport {
    /// The manifest as written.
    pub manifest: RunManifest,
    /// Where it was written (path or URL).
    pub manifest_path: String,
    /// Delta data files deleted by version retention after the run.
    pub vacuumed_files: usize,
}

/// A failed run: the error, and where its manifest was written (if it could be).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RunFailure {
    /// Why the run stopped.
    pub error: RunError,
    /// The failed run's manifest, when it could be written.
    pub manifest_path: Option<String>,
}

/// A new run id: UTC start time (sortable) plus a random suffix (unique).
pub fn new_run_id(started: DateTime<Utc>) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", started.format("%Y%m%dT%H%M%S%.3fZ"), &suffix[..8])
}

/// What a run has gathered so far; becomes the manifest.
struct RunState {
    run_id: String,
    staging: PathBuf,
    /// The copy of the staged files a cluster reads, for a warehouse in an object store
    /// on a Ballista engine (deleted when the run ends).
    cluster: Option<Arc<ClusterStaging>>,
    as_of: Option<NaiveDate>,
    extract: Vec<SourceMetrics>,
    stages: Vec<runner::StageMetrics>,
    models: Option<ModelMetrics>,
    tests: Vec<TestOutcome>,
    tables: Vec<PublishedTable>,
    /// Tables a partial run (`--select`) did not rebuild: (location, rows, Delta version)
    /// as the last succeeded run published them.
    carried: Vec<(String, u64, Option<u64>)>,
    /// Wall time of each phase that ran (see [`RunManifest::phase_ms`]).
    phase_ms: BTreeMap<String, u64>,
}

impl RunState {
    /// Records the wall time of `phase`, which started at `since`.
    fn phase_done(&mut self, phase: &str, since: Instant) {
        self.phase_ms
            .insert(phase.to_string(), since.elapsed().as_millis() as u64);
    }
}

/// How a run is started and stopped from outside.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The run id to use (the scheduler picks it, to find the run afterwards); default: a
    /// new one.
    pub run_id: Option<String>,
    /// Cancelled (on SIGTERM/SIGINT) to abort the run: before publishing the run stops
    /// at once; during a Delta publish it stops before the next table commit and restores
    /// the tables it committed. Either way it is recorded as failed and releases the lock.
    pub cancel: CancellationToken,
}

/// The tables a run registers before its stages, which stages may read: every source's
/// raw table, the run's quarantine and its duplicates.
pub fn external_tables(plan: &Plan) -> BTreeSet<String> {
    plan.sources
        .iter()
        .map(|s| names::raw_table(&s.name))
        .chain([names::QUARANTINE_TABLE.to_string(), names::DUPLICATES_TABLE.to_string()])
        .collect()
}

/// Runs the plan once.
pub async fn run(plan: &Plan, progress: &Progress) -> Result<RunReport, RunFailure> {
    run_with(plan, progress, &RunOptions::default()).await
}

/// A runs row for a run that did no work: `skipped` (the lock was held, a slot overlapped
/// or was missed) or `failed` (killed before it could record itself), with the reason.
pub fn bare_record(plan: &Plan, run_id: &str, at: DateTime<Utc>, outcome: &str, why: &str) -> RunRecord {
    let stamp = at.to_rfc3339_opts(SecondsFormat::Millis, true);
    RunRecord {
        run_id: run_id.to_string(),
        pipeline: plan.name.clone(),
        started_at: stamp.clone(),
        finished_at: stamp,
        outcome: outcome.into(),
        error: Some(why.to_string()),
        as_of: None,
        config_hash: plan.config_hash.clone(),
        patron_version: env!("CARGO_PKG_VERSION").to_string(),
        format: plan.publish.format.as_str().into(),
        table_rows: BTreeMap::new(),
        table_versions: BTreeMap::new(),
    }
}

/// Runs the plan once, with a given run id and a cancellation token.
pub async fn run_with(plan: &Plan, progress: &Progress, options: &RunOptions) -> Result<RunReport, RunFailure> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let run_id = options.run_id.clone().unwrap_or_else(|| new_run_id(started_at));
    let timing = LockTiming::from_timeout_secs(plan.publish.lock_timeout_secs);
    let lock = match WarehouseLock::acquire(&plan.warehouse, &run_id, timing) {
        Ok(lock) => lock,
        Err(e) => {
            let error = RunError::Publish(e.into());
            if error.is_locked() {
                // Recorded so that a skipped cron run is visible in the history. The runs
                // table takes concurrent appends (Delta commits are atomic), so this does
                // not need the lock; a failure to record is only logged.
                let record = bare_record(plan, &run_id, started_at, names::OUTCOME_SKIPPED, &error.to_string());
                if let Err(e) = runs::append(&plan.warehouse, &record).await {
                    tracing::warn!(error = %e, "the skipped run could not be recorded in the runs table");
                }
            }
            return Err(RunFailure {
                error,
                manifest_path: None,
            });
        }
    };
    let lock_taken_over = lock.taken_over().map(|o| {
        format!(
            "run {} on {} (pid {}), last heartbeat {}",
            o.run_id, o.host, o.pid, o.heartbeat
        )
    });
    failpoint::hit("run.after_lock");
    remove_crashed_staging(&plan.warehouse).await;
    let staging = plan.warehouse.staging_root().join(&run_id);
    let cluster = plan
        .engine
        .engine
        .is_distributed()
        .then(|| ClusterStaging::new(&plan.warehouse, &run_id, &staging).map(Arc::new))
        .flatten();
    let mut state = RunState {
        staging,
        cluster,
        run_id,
        as_of: None,
        extract: Vec::new(),
        stages: Vec::new(),
        models: None,
        tests: Vec::new(),
        tables: Vec::new(),
        carried: Vec::new(),
        phase_ms: BTreeMap::new(),
    };
    tracing::info!(run_id = %state.run_id, pipeline = %plan.name, "run started");
    let mut result = execute(plan, &mut state, progress, &lock, &options.cancel).await;
    if let Some(cluster) = &state.cluster {
        match cluster.remove().await {
            Ok(n) => tracing::debug!(files = n, "removed the cluster's copy of the staged files"),
            Err(e) => tracing::warn!(error = %e, "cannot remove the cluster's copy of the staged files"),
        }
    }

    // The runs row is the commit point of the whole run: appended last, failed runs too.
    progress.phase("recording the run");
    let finished_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let published = result.is_ok();
    let record = RunRecord {
        run_id: state.run_id.clone(),
        pipeline: plan.name.clone(),
        started_at: started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        finished_at: finished_at.clone(),
        outcome: if published {
            names::OUTCOME_SUCCEEDED
        } else {
            names::OUTCOME_FAILED
        }
        .into(),
        error: result.as_ref().err().map(|e| e.to_string()),
        as_of: state.as_of.map(|d| d.to_string()),
        config_hash: plan.config_hash.clone(),
        patron_version: env!("CARGO_PKG_VERSION").to_string(),
        format: plan.publish.format.as_str().into(),
        table_rows: state
            .tables
            .iter()
            .map(|t| (t.location.clone(), t.rows))
            .chain(
                state
                    .carried
                    .iter()
                    .filter(|_| published)
                    .map(|(l, rows, _)| (l.clone(), *rows)),
            )
            .collect(),
        table_versions: state
            .tables
            .iter()
            .filter_map(|t| t.version.map(|v| (t.location.clone(), v)))
            .chain(
                state
                    .carried
                    .iter()
                    .filter(|_| published)
                    .filter_map(|(l, _, v)| v.map(|v| (l.clone(), v))),
            )
            .collect(),
    };
    failpoint::hit("publish.before_runs_append");
    let appended = match lock.check() {
        Ok(()) => runs::append(&plan.warehouse, &record).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = appended {
        if result.is_ok() {
            result = Err(e.into());
        } else {
            tracing::error!(error = %e, "the failed run could not be recorded in the runs table");
        }
    }

    if matches!(result, Err(RunError::Aborted { .. })) {
        // Nothing to inspect in an aborted run's half-done work (unlike a failed one).
        if let Err(e) = publish::remove_staging(&state.staging) {
            tracing::warn!(error = %e, "cannot remove the aborted run's staging folder");
        }
    }

    progress.phase("writing the run manifest");
    let manifest = RunManifest {
        run_id: state.run_id.clone(),
        pipeline: plan.name.clone(),
        pipeline_file: plan.pipeline_file.to_string_lossy().into_owned(),
        patron_version: env!("CARGO_PKG_VERSION").to_string(),
        config_hash: plan.config_hash.clone(),
        started_at: started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        finished_at,
        duration_ms: clock.elapsed().as_millis() as u64,
        as_of: state.as_of.map(|d| d.to_string()),
        as_of_source: match plan.as_of {
            AsOf::Latest => "latest".into(),
            AsOf::Date(_) => "config".into(),
        },
        outcome: if result.is_ok() {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        },
        error: result.as_ref().err().map(|e| e.to_string()),
        failed_phase: result.as_ref().err().map(|e| e.phase().to_string()),
        rows_quarantined: state.extract.iter().map(|m| m.rows_quarantined).sum(),
        extract: state.extract,
        stages: state.stages,
        tests: state.tests,
        models: state.models,
        tables: state.tables,
        settings: RunSettings {
            scoring: plan.scoring.clone(),
            engine: plan.engine.clone(),
        },
        staging: result
            .is_err()
            .then(|| state.staging.to_string_lossy().into_owned())
            .filter(|_| state.staging.exists()),
        format: plan.publish.format.as_str().into(),
        lock_taken_over,
        phase_ms: state.phase_ms,
    };
    failpoint::hit("publish.before_manifest");
    let written = publish::write_manifest(&plan.warehouse, &manifest).await;
    let mut vacuumed_files = 0;
    if result.is_ok() && plan.publish.format == TableFormat::Delta && plan.publish.retain_versions > 0 {
        progress.phase("vacuum: dropping old table versions");
        failpoint::hit("publish.before_vacuum");
        vacuumed_files = retain_versions(&plan.warehouse, &manifest.tables, plan.publish.retain_versions).await;
    }
    progress.finish();
    lock.release();
    match (result, written) {
        (Ok(()), Ok(manifest_path)) => {
            tracing::info!(run_id = %manifest.run_id, ms = manifest.duration_ms, "run succeeded");
            Ok(RunReport {
                manifest,
                manifest_path,
                vacuumed_files,
            })
        }
        (Ok(()), Err(e)) => Err(RunFailure {
            error: e.into(),
            manifest_path: None,
        }),
        (Err(error), written) => Err(RunFailure {
            error,
            manifest_path: written.ok(),
        }),
    }
}

fn staging_io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes the staging folders of runs that left no manifest (killed mid-run); a failed
/// run's staging folder is kept for inspection. Called with the warehouse lock held, so no
/// other run is writing into its staging folder.
async fn remove_crashed_staging(warehouse: &Warehouse) {
    match cluster_store::remove_abandoned(warehouse).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            files = n,
            "removed a crashed run's copy of its staged files from the store"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot remove a crashed run's copy of its staged files"),
    }
    let Ok(entries) = std::fs::read_dir(warehouse.staging_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        // When the manifest cannot be looked up, keep the folder.
        if !warehouse.exists(&read::manifest_key(&id)).await.unwrap_or(true) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(run_id = %id, "removed the staging folder of a crashed run"),
                Err(e) => tracing::warn!(run_id = %id, error = %e, "cannot remove a crashed run's staging folder"),
            }
        }
    }
}

/// Vacuums every published Delta table, keeping the versions named by the `retain`
/// latest succeeded runs in the `runs` table (and the latest succeeded run of every
/// pipeline; this run is the latest). Failures are logged: the run itself has succeeded
/// and is recorded.
async fn retain_versions(warehouse: &Warehouse, tables: &[PublishedTable], retain: u64) -> usize {
    let records = match runs::read_all(warehouse).await {
        Ok(r) => r,
        Err(e) => {
            // Without the history, what to keep is unknown: delete nothing.
            tracing::warn!(error = %e, "runs table unreadable; vacuum skipped");
            return 0;
        }
    };
    let succeeded: Vec<&RunRecord> = records
        .iter()
        .filter(|r| r.outcome == names::OUTCOME_SUCCEEDED)
        .collect();
    let mut kept: Vec<&RunRecord> = succeeded.iter().rev().take(retain as usize).copied().collect();
    let pipelines: BTreeSet<&str> = succeeded.iter().map(|r| r.pipeline.as_str()).collect();
    kept.extend(
        pipelines
            .into_iter()
            .filter_map(|p| runs::latest_succeeded(&records, Some(p))),
    );
    let mut deleted = 0;
    for t in tables {
        let keep: Vec<u64> = kept
            .iter()
            .filter_map(|r| r.table_versions.get(&t.location).copied())
            .chain(t.version)
            .collect();
        match delta::vacuum(warehouse, &t.name, &t.location, &keep).await {
            Ok(n) => deleted += n,
            Err(e) => tracing::warn!(table = %t.name, error = %e, "vacuum failed"),
        }
    }
    deleted
}

/// Writes the registered `model_params` table into the staging tables folder (and registers
/// the written file in its place); returns (file, rows, bytes).
async fn write_model_params(ctx: &SessionContext, tables_dir: &Path) -> Result<(PathBuf, u64, u64), RunError> {
    // Held in memory by the fit: written here, then read from the file by later stages
    // (which a Ballista cluster's executors can do too).
    runner::materialize_here(ctx, MODEL_PARAMS_TABLE, tables_dir)
        .await
        .map_err(RunError::materialize(MODEL_PARAMS_TABLE))
}

/// What a stage of a wave needs from the run, shared by the stage tasks.
struct StageInputs {
    plan: Plan,
    /// The runs table, for the previous version of an incremental stage.
    history: Vec<RunRecord>,
    params: HashMap<String, ScalarValue>,
    tables_dir: PathBuf,
}

/// Runs one stage of a wave and its data tests; returns its metrics and test outcomes.
async fn run_one_stage(
    ctx: &SessionContext,
    inputs: &StageInputs,
    stage: &Stage,
) -> Result<(runner::StageMetrics, Vec<TestOutcome>), RunError> {
    let StageInputs {
        plan,
        history,
        params,
        tables_dir,
    } = inputs;
    let name = &stage.name;
    failpoint::hit_with(|| format!("transform.before.{name}"));
    let previous = match stage.spec.materialized {
        Materialized::Incremental => {
            PublishedVersion::latest(&plan.warehouse, history, &plan.name, &format!("{TABLES_DIR}/{name}")).await
        }
        _ => None,
    };
    let m = runner::run_stage(
        ctx,
        stage,
        params,
        tables_dir,
        previous.as_ref(),
        plan.publish.row_group_rows,
    )
    .await?;
    let tests = checks::run_tests(ctx, &stage.spec.tests, params).await?;
    failpoint::hit_with(|| format!("transform.after.{name}"));
    Ok((m, tests))
}

/// Registers table `name` as the last succeeded run published it and records it as carried
/// into this run; false when no succeeded run published it. `cluster_by`: the columns the
/// table is sorted by (a stage's `-- @cluster_by`).
async fn carry_published(
    ctx: &SessionContext,
    plan: &Plan,
    history: &[RunRecord],
    state: &mut RunState,
    name: &str,
    cluster_by: &[String],
) -> Result<bool, RunError> {
    let location = format!("{TABLES_DIR}/{name}");
    let Some(p) = PublishedVersion::latest(&plan.warehouse, history, &plan.name, &location).await else {
        return Ok(false);
    };
    p.register_clustered(ctx, name, cluster_by).await?;
    runner::make_portable(ctx, name, &state.staging.join(PORTABLE_DIR))
        .await
        .map_err(RunError::materialize(name))?;
    let rows = runs::latest_succeeded(history, Some(&plan.name))
        .and_then(|r| r.table_rows.get(&location).copied())
        .unwrap_or(0);
    state.carried.push((location, rows, p.version));
    Ok(true)
}

async fn execute(
    plan: &Plan,
    state: &mut RunState,
    progress: &Progress,
    lock: &WarehouseLock,
    cancel: &CancellationToken,
) -> Result<(), RunError> {
    let targets = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(RunError::Aborted { phase: "before publishing" }),
        prepared = prepare(plan, state, progress) => prepared?,
    };
    if cancel.is_cancelled() {
        return Err(RunError::Aborted {
            phase: "before publishing",
        });
    }
    let publishing = Instant::now();
    match plan.publish.format {
        TableFormat::Delta => publish_delta(plan, state, &targets, lock, cancel).await?,
        TableFormat::Parquet => {
            // Folder swaps cannot be rolled back: once started, the publish finishes.
            let retired = state.staging.join("retired");
            for t in &targets {
                lock.check().map_err(PublishError::from)?;
                let (_, bytes) = folder_stats(&t.staged, t.rows);
                // Checked when the plan loads: the parquet format needs a local warehouse.
                let target = plan.warehouse.local_path(&t.location).ok_or_else(|| {
                    PublishError::Store(WarehouseError {
                        location: plan.warehouse.describe(&t.location),
                        message: "the parquet format needs a local warehouse".into(),
                    })
                })?;
                failpoint::hit_with(|| format!("publish.before_commit.{}", t.name));
                publish::swap_in(&t.staged, &target, &retired.join(&t.location))?;
                failpoint::hit_with(|| format!("publish.after_commit.{}", t.name));
                state.tables.push(PublishedTable {
                    name: t.name.clone(),
                    kind: t.kind.clone(),
                    path: target.to_string_lossy().into_owned(),
                    location: t.location.clone(),
                    version: None,
                    rows: t.rows,
                    bytes,
                });
            }
        }
    }
    state.phase_done(PHASE_PUBLISH, publishing);
    publish::remove_staging(&state.staging)?;
    Ok(())
}

/// Everything before the publish: returns the staged tables to publish.
async fn prepare(plan: &Plan, state: &mut RunState, progress: &Progress) -> Result<Vec<Target>, RunError> {
    // Resolve every input before reading any: a missing file is a configuration error.
    let mut inputs = Vec::with_capacity(plan.sources.len());
    for source in &plan.sources {
        inputs.push(extract::list_inputs(source, &plan.storage).await?);
    }
    // Stage files are checked before the (long) extract too.
    let project = transform::discover(&plan.sql_dir)?;
    let external = external_tables(plan);
    let provided = models::providers();
    let order = transform::execution_order(&project, &external, &provided)?;
    let chosen = if plan.selection.is_all() {
        project.stages.keys().cloned().collect()
    } else {
        select::select(&project, &provided, &plan.selection.select, &plan.selection.exclude)?
    };
    if chosen.is_empty() && !plan.selection.is_all() {
        return Err(RunError::Transform(TransformError::EmptySelection));
    }

    std::fs::create_dir_all(&state.staging).map_err(staging_io(&state.staging))?;
    let raw_dir = state.staging.join(RAW_DIR);
    let quarantine_dir = state.staging.join(QUARANTINE_DIR);
    let tables_dir = state.staging.join(TABLES_DIR);

    // Extract: remote files downloaded into staging, then sources in parallel, each on a
    // blocking thread.
    progress.phase(format!("extract: {} sources", plan.sources.len()));
    let extracting = Instant::now();
    let mut local = Vec::with_capacity(inputs.len());
    let mut carry = Vec::with_capacity(inputs.len());
    for (source, files) in plan.sources.iter().zip(inputs) {
        let previous = if source.incremental && !plan.full_refresh {
            incremental::previous_load(&plan.warehouse, &plan.name, source).await
        } else {
            None
        };
        let (to_read, carried) = match &previous {
            Some(p) => incremental::split(files, p),
            None => (files, Vec::new()),
        };
        let dir = state.staging.join(DOWNLOAD_DIR).join(&source.name);
        local.push(extract::fetch_inputs(to_read, &dir).await?);
        carry.push(previous.map(|p| (p, carried)));
    }
    let mut tasks = Vec::with_capacity(plan.sources.len());
    for (source, files) in plan.sources.iter().zip(local) {
        let (source, run_id, raw, quarantine) = (
            source.clone(),
            state.run_id.clone(),
            raw_dir.clone(),
            quarantine_dir.clone(),
        );
        let batch_size = plan.engine.batch_size;
        tasks.push(tokio::task::spawn_blocking(move || {
            let threads = extract::default_threads();
            extract::extract_source(&source, &files, &run_id, &raw, &quarantine, batch_size, threads)
        }));
    }
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(m)) => state.extract.push(m),
            Ok(Err(e)) => {
                first_error.get_or_insert(RunError::Extract(e));
            }
            Err(join) => {
                first_error.get_or_insert(RunError::Task {
                    task: "extract".into(),
                    source: join,
                });
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    for ((source, m), carry) in plan.sources.iter().zip(state.extract.iter_mut()).zip(carry) {
        let Some((previous, carried)) = carry.filter(|(_, c)| !c.is_empty()) else {
            continue;
        };
        let raw_file = raw_dir.join(&source.name).join("part-00001.parquet");
        let q_file = quarantine_dir.join(&source.name).join("part-00001.parquet");
        let raw_schema = extract::validate::raw_schema(&source.schema);
        let copied = incremental::carry_over(
            &previous,
            &carried,
            &raw_file,
            &raw_schema,
            &q_file,
            &extract::quarantine_schema(),
        )
        .await
        .map_err(|message| RunError::CarryOver {
            name: source.name.clone(),
            previous_run: previous.run_id.clone(),
            message,
        })?;
        let expected: u64 = carried.iter().map(|f| f.rows_loaded).sum();
        if copied.0 != expected {
            return Err(RunError::CarryOver {
                name: source.name.clone(),
                previous_run: previous.run_id.clone(),
                message: format!(
                    "that run recorded {expected} rows for the unchanged files but its raw table holds {}",
                    copied.0
                ),
            });
        }
        if let Some(mut seen) = m.seen_keys.take() {
            // The carried rows' keys join the filter, so copies across runs are found too.
            let file = raw_file.clone();
            let added = tokio::task::spawn_blocking(move || seen.add_parquet(&file).map(|()| seen)).await;
            m.seen_keys = Some(
                added
                    .map_err(|join| RunError::Task {
                        task: format!("key filter of source `{}`", source.name),
                        source: join,
                    })?
                    .map_err(|message| RunError::CarryOver {
                        name: source.name.clone(),
                        previous_run: previous.run_id.clone(),
                        message,
                    })?,
            );
        }
        incremental::merge_carried(m, carried, raw_file, q_file, copied);
    }
    for (source, m) in plan.sources.iter().zip(&state.extract) {
        extract::check_error_budget(source, m)?;
    }
    state.phase_done(PHASE_EXTRACT, extracting);

    let as_of = match plan.as_of {
        AsOf::Date(d) => d,
        AsOf::Latest => state
            .extract
            .iter()
            .filter_map(|m| m.max_timestamp_micros)
            .max()
            .and_then(DateTime::from_timestamp_micros)
            .map(|t| t.date_naive())
            .ok_or(RunError::NoAsOf)?,
    };
    state.as_of = Some(as_of);
    tracing::info!(%as_of, "as-of date");

    // Transform: one session, raw tables and seeds registered, stages in order.
    let spill = state.staging.join("spill");
    std::fs::create_dir_all(&spill).map_err(staging_io(&spill))?;
    let ctx = build_context(&plan.engine, &spill, state.cluster.clone())
        .await
        .map_err(RunError::engine("building the session"))?;
    for m in &state.extract {
        let table = names::raw_table(&m.source);
        runner::register_parquet_files(&ctx, &table, &m.raw_files)
            .await
            .map_err(RunError::engine(format!("registering `{table}`")))?;
    }
    let quarantine_files: Vec<PathBuf> = state
        .extract
        .iter()
        .flat_map(|m| m.quarantine_files.iter().cloned())
        .collect();
    runner::register_parquet_files(&ctx, names::QUARANTINE_TABLE, &quarantine_files)
        .await
        .map_err(RunError::engine(format!("registering `{}`", names::QUARANTINE_TABLE)))?;
    runner::register_seeds(&ctx, project.seeds.values()).await?;
    progress.phase("extract: duplicate keys");
    let scanning = Instant::now();
    let duplicates_dir = state.staging.join(DUPLICATES_DIR);
    let duplicate_rows = extract::duplicates::find_duplicates(
        &ctx,
        &plan.sources,
        &mut state.extract,
        &state.run_id,
        &duplicates_dir.join("part-00000.parquet"),
    )
    .await
    .map_err(RunError::Duplicates)?;
    // Stages (and data tests) can read this run's duplicates, like its quarantine.
    runner::register_parquet(
        &ctx,
        names::DUPLICATES_TABLE,
        &duplicates_dir.join("part-00000.parquet"),
    )
    .await
    .map_err(RunError::engine(format!("registering `{}`", names::DUPLICATES_TABLE)))?;
    state.phase_done(PHASE_DUPLICATES, scanning);
    // Extract's readers and key filters are freed: the stages start without them.
    crate::engine::memory::release_free_memory();
    let params = plan.scoring.sql_params(as_of);
    // Incremental stages merge into what the last succeeded run published.
    let any_incremental = project
        .stages
        .values()
        .any(|s| s.spec.materialized == Materialized::Incremental);
    let partial = chosen.len() < project.stages.len();
    let history = if (any_incremental && !plan.full_refresh) || partial {
        runs::read_all(&plan.warehouse).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let needed = transform::upstream(&project, &models::providers(), &chosen);
    let transforming = Instant::now();
    let parallel = plan.engine.stage_parallelism();
    // What every stage task reads: stages of a wave run as tasks of their own, on the
    // runtime's worker threads, so they use a core each.
    let inputs = Arc::new(StageInputs {
        plan: plan.clone(),
        history: history.clone(),
        params: params.clone(),
        tables_dir: tables_dir.clone(),
    });
    let mut done = 0;
    for wave in transform::waves(&project, &provided, &order) {
        // The wave's stages to run now; the others are read as published, or not needed.
        // `ready` are those whose outputs later stages can use, for the model steps below.
        let mut to_run = Vec::new();
        let mut ready = Vec::new();
        for name in &wave {
            let Some(stage) = project.stages.get(name) else {
                continue;
            };
            let runs_now =
                chosen.contains(name) || (stage.spec.materialized == Materialized::View && needed.contains(name));
            if runs_now {
                to_run.push(stage);
            } else if stage.spec.materialized.is_stored() {
                // Not selected: read as the last succeeded run published it, and name that
                // version again in this run's `runs` row, so the row still lists a complete set.
                let cluster_by = match stage.spec.materialized {
                    Materialized::Table => stage.spec.cluster_by.as_slice(),
                    _ => &[],
                };
                if !carry_published(&ctx, plan, &history, state, name, cluster_by).await? {
                    if needed.contains(name) {
                        return Err(RunError::Transform(TransformError::NotPublished {
                            stage: name.clone(),
                        }));
                    }
                    continue;
                }
            } else {
                continue;
            }
            if runs_now || needed.contains(name) {
                ready.push(name.as_str());
            }
        }
        // The wave's stages depend on none of each other: up to `parallel` run at once,
        // each a query of its own. Results are taken in the wave's order, and the first
        // failure in that order is the run's error.
        let names: Vec<&str> = to_run.iter().map(|s| s.name.as_str()).collect();
        if !names.is_empty() {
            done += names.len();
            progress.phase(format!("transform: {} ({done}/{})", names.join(", "), order.len()));
        }
        let results = crate::engine::run_side_by_side(&names, parallel, |i| {
            let (ctx, inputs, stage) = (ctx.clone(), Arc::clone(&inputs), to_run[i].clone());
            async move { run_one_stage(&ctx, &inputs, &stage).await }
        })
        .await;
        for (result, stage) in results.into_iter().zip(&to_run) {
            let (m, tests) = result.map_err(|join| RunError::Task {
                task: format!("stage `{}`", stage.name),
                source: join,
            })??;
            state.stages.push(m);
            state.tests.extend(tests);
        }
        for name in ready {
            if name == MODEL_INPUT_STAGE {
                progress.phase("score: fitting BG/NBD and Gamma-Gamma");
                failpoint::hit("score.before_fit");
                let models = fit_and_register(&ctx, &plan.scoring).await?;
                state.models = Some(models);
                failpoint::hit("score.after_fit");
                let started = Instant::now();
                let (output, rows, bytes) = write_model_params(&ctx, &tables_dir).await?;
                state.stages.push(runner::StageMetrics {
                    name: MODEL_PARAMS_TABLE.into(),
                    file: String::new(),
                    layer: "models".into(),
                    rows,
                    bytes,
                    duration_ms: started.elapsed().as_millis() as u64,
                    materialized: Materialized::Table,
                    rows_new: None,
                    partition_by: Vec::new(),
                    cluster_by: Vec::new(),
                    spilled_bytes: 0,
                    output,
                });
            }
            if name == churn::FEATURES_STAGE {
                progress.phase("score: training the churn model");
                let started = Instant::now();
                let report = churn::fit_and_register(
                    &ctx,
                    &project,
                    &provided,
                    &order,
                    &plan.scoring,
                    as_of,
                    churn::Snapshots {
                        scratch: &state.staging.join(CHURN_SNAPSHOTS_DIR),
                        parallel,
                    },
                )
                .await
                .map_err(models::ScoreError::from)?;
                runner::make_portable(&ctx, churn::PREDICTIONS_TABLE, &state.staging.join(PORTABLE_DIR))
                    .await
                    .map_err(RunError::materialize(churn::PREDICTIONS_TABLE))?;
                // model_params gains the churn model's rows: registered and written again.
                if let Some(m) = state.models.as_mut() {
                    m.churn = Some(report);
                    models::register_params_table(&ctx, m)
                        .map_err(RunError::engine(format!("registering `{MODEL_PARAMS_TABLE}`")))?;
                    let (output, rows, bytes) = write_model_params(&ctx, &tables_dir).await?;
                    if let Some(stage) = state.stages.iter_mut().find(|s| s.name == MODEL_PARAMS_TABLE) {
                        stage.rows = rows;
                        stage.bytes = bytes;
                        stage.output = output;
                        stage.duration_ms += started.elapsed().as_millis() as u64;
                    }
                }
            }
        }
    }
    if partial && state.models.is_none() {
        // The model was not refitted: its parameters stay as last published.
        carry_published(&ctx, plan, &history, state, MODEL_PARAMS_TABLE, &[]).await?;
    }

    state.phase_done(PHASE_TRANSFORM, transforming);
    progress.phase("data tests");
    let testing = Instant::now();
    state
        .tests
        .extend(checks::run_tests(&ctx, &project.singular_tests, &params).await?);
    let failed = state.tests.iter().filter(|t| t.blocks()).count();
    if failed > 0 {
        return Err(RunError::DataTests {
            failed,
            report: checks::describe_failures(&state.tests),
        });
    }
    let warned = state.tests.iter().filter(|t| !t.passed()).count();
    if warned > 0 {
        tracing::warn!(
            "{warned} data test(s) of severity warn failed:\n{}",
            checks::describe_failures(&state.tests)
        );
    }

    state.phase_done(PHASE_TESTS, testing);
    // Publish: every stage succeeded; now the tables go into the warehouse.
    progress.phase("publish");
    failpoint::hit("publish.start");
    let mut targets = Vec::new();
    for m in &state.extract {
        for (kind, dir) in [(RAW_DIR, &raw_dir), (QUARANTINE_DIR, &quarantine_dir)] {
            let rows = if kind == RAW_DIR {
                m.rows_loaded
            } else {
                m.quarantine_entries
            };
            let name = if kind == RAW_DIR {
                names::raw_table(&m.source)
            } else {
                format!("{}_{}", names::QUARANTINE_TABLE, m.source)
            };
            targets.push(Target {
                name,
                kind: kind.to_string(),
                location: format!("{kind}/{}", m.source),
                staged: dir.join(&m.source),
                rows,
                partition_by: Vec::new(),
                cluster_by: Vec::new(),
            });
        }
    }
    targets.push(Target {
        name: names::DUPLICATES_TABLE.into(),
        kind: DUPLICATES_DIR.into(),
        location: DUPLICATES_DIR.into(),
        staged: duplicates_dir,
        rows: duplicate_rows,
        partition_by: Vec::new(),
        cluster_by: Vec::new(),
    });
    for m in state.stages.iter().filter(|m| m.materialized.is_stored()) {
        targets.push(Target {
            name: m.name.clone(),
            kind: "table".into(),
            location: format!("{TABLES_DIR}/{}", m.name),
            staged: tables_dir.join(&m.name),
            rows: m.rows,
            partition_by: m.partition_by.clone(),
            cluster_by: m.cluster_by.clone(),
        });
    }
    Ok(targets)
}

/// Plans every stage of `plan` against empty tables (no data is read) and returns the
/// project, the execution order and the column lineage graph.
pub async fn lineage_graph(plan: &Plan) -> Result<(transform::Project, Vec<String>, LineageGraph), RunError> {
    let project = transform::discover(&plan.sql_dir)?;
    let mut inputs: BTreeMap<String, Arc<Schema>> = plan
        .sources
        .iter()
        .map(|s| (names::raw_table(&s.name), extract::validate::raw_schema(&s.schema)))
        .collect();
    inputs.insert(names::QUARANTINE_TABLE.into(), extract::quarantine_schema());
    inputs.insert(names::DUPLICATES_TABLE.into(), extract::duplicates::duplicates_schema());
    inputs.insert(MODEL_PARAMS_TABLE.into(), models::model_params_schema());
    inputs.insert(churn::PREDICTIONS_TABLE.into(), churn::predictions_schema());
    let external: BTreeSet<String> = inputs
        .keys()
        .filter(|k| k.as_str() != MODEL_PARAMS_TABLE && k.as_str() != churn::PREDICTIONS_TABLE)
        .cloned()
        .collect();
    let order = transform::execution_order(&project, &external, &models::providers())?;
    let ctx = SessionContext::new();
    runner::register_seeds(&ctx, project.seeds.values()).await?;
    // Planning only needs the functions to exist; any valid parameters do.
    let params = BgNbdParams::new(1.0, 1.0, 1.0, 1.0).map_err(models::ScoreError::from)?;
    crate::score::udf::register(
        &ctx,
        crate::score::udf::Models::bgnbd(params),
        plan.scoring.time_unit_days,
    );
    let as_of = match plan.as_of {
        AsOf::Date(d) => d,
        AsOf::Latest => Utc::now().date_naive(),
    };
    let graph = LineageGraph::build(&ctx, &project, &order, &inputs, &plan.scoring.sql_params(as_of)).await?;
    Ok((project, order, graph))
}

/// A staged table on its way into the warehouse.
struct Target {
    name: String,
    kind: String,
    location: String,
    staged: PathBuf,
    rows: u64,
    partition_by: Vec<String>,
    /// The stage's `@cluster_by` columns (sorted first; bloom filters).
    cluster_by: Vec<String>,
}

/// Commits every staged table to its Delta table, one overwrite commit each. On a failure
/// the tables already committed by this run are restored to their previous versions (when
/// this run still holds the lock), so the latest version of every table is the previous
/// run's again.
async fn publish_delta(
    plan: &Plan,
    state: &mut RunState,
    targets: &[Target],
    lock: &WarehouseLock,
    cancel: &CancellationToken,
) -> Result<(), RunError> {
    let ctx = delta::publish_session();
    let mut committed: Vec<(String, String, Option<u64>)> = Vec::new();
    for t in targets {
        let path = plan.warehouse.describe(&t.location);
        failpoint::hit_with(|| format!("publish.before_commit.{}", t.name));
        if cancel.is_cancelled() {
            if !committed.is_empty() && lock.check().is_ok() {
                rollback(&plan.warehouse, &committed).await;
            }
            state.tables.clear();
            return Err(RunError::Aborted {
                phase: "while publishing",
            });
        }
        let attempt = async {
            lock.check()?;
            if t.kind == "table" {
                failpoint::error("publish.write_error").map_err(|source| PublishError::Io {
                    path: PathBuf::from(&path),
                    source,
                })?;
            }
            let layout = Layout {
                row_group_rows: plan.publish.row_group_rows,
                cluster_by: t.cluster_by.clone(),
            };
            let target = delta::CommitTarget {
                warehouse: &plan.warehouse,
                location: &t.location,
                run_id: &state.run_id,
                partition_by: &t.partition_by,
                layout: &layout,
            };
            delta::overwrite_from_parquet(&ctx, &t.name, &t.staged, &target).await
        };
        match attempt.await {
            Ok(commit) => {
                let (_, bytes) = folder_stats(&t.staged, t.rows);
                committed.push((t.name.clone(), t.location.clone(), commit.previous));
                state.tables.push(PublishedTable {
                    name: t.name.clone(),
                    kind: t.kind.clone(),
                    path: path.clone(),
                    location: t.location.clone(),
                    version: Some(commit.version),
                    rows: t.rows,
                    bytes,
                });
            }
            Err(error) => {
                if !committed.is_empty() && lock.check().is_ok() {
                    rollback(&plan.warehouse, &committed).await;
                }
                state.tables.clear();
                return Err(error.into());
            }
        }
        failpoint::hit_with(|| format!("publish.after_commit.{}", t.name));
    }
    Ok(())
}

/// Restores each table committed by a failed publish to the version before it.
async fn rollback(warehouse: &Warehouse, committed: &[(String, String, Option<u64>)]) {
    for (name, location, previous) in committed.iter().rev() {
        let Some(previous) = previous else {
            // A table this run created: there is nothing older to show, and no succeeded
            // run names it.
            continue;
        };
        match delta::restore(warehouse, name, location, *previous).await {
            Ok(v) => tracing::warn!(table = %name, restored = previous, version = v, "publish failed: table restored"),
            Err(e) => tracing::error!(table = %name, error = %e, "publish failed and the table could not be restored"),
        }
    }
}

fn folder_stats(dir: &Path, rows: u64) -> (u64, u64) {
    let bytes = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    (rows, bytes)
}
