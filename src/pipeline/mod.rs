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

mod error;

pub use error::RunError;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use datafusion::arrow::datatypes::Schema;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use tokio_util::sync::CancellationToken;

use crate::config::{AsOf, Plan};
use crate::engine::cluster_store::{self, ClusterStaging};
use crate::engine::{build_context, register};
use crate::extract::{self, SourceMetrics};
use crate::failpoint;
use crate::names::{
    self, CHURN_SNAPSHOTS_DIR, DUPLICATES_DIR, PHASE_DUPLICATES, PHASE_EXTRACT, PHASE_PUBLISH, PHASE_TESTS,
    PHASE_TRANSFORM, PORTABLE_DIR, TABLES_DIR,
};
use crate::progress::Progress;
use crate::publish::lock::{LockTiming, WarehouseLock};
use crate::publish::manifest::{PublishedTable, RunSettings};
use crate::publish::read::{self, PublishedVersion};
use crate::publish::runs::{self, RunRecord};
use crate::publish::{self, Outcome, PublishError, RunManifest, TableFormat, commit};
use crate::score::bgnbd::BgNbdParams;
use crate::score::churn;
use crate::score::models::{self, MODEL_PARAMS_TABLE, ModelMetrics};
use crate::score::step::ScoreRun;
use crate::transform::checks::{self, TestOutcome};
use crate::transform::lineage::LineageGraph;
use crate::transform::spec::Materialized;
use crate::transform::{self, StageInputs, TransformError, runner, select};
use crate::warehouse::Warehouse;

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

    /// The run's row of the `runs` table: succeeded unless `error`; a failed run names no
    /// carried table.
    fn record(&self, plan: &Plan, started_at: DateTime<Utc>, finished_at: &str, error: Option<&RunError>) -> RunRecord {
        let published = error.is_none();
        RunRecord {
            run_id: self.run_id.clone(),
            pipeline: plan.name.clone(),
            started_at: started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            finished_at: finished_at.to_string(),
            outcome: if published {
                names::OUTCOME_SUCCEEDED
            } else {
                names::OUTCOME_FAILED
            }
            .into(),
            error: error.map(|e| e.to_string()),
            as_of: self.as_of.map(|d| d.to_string()),
            config_hash: plan.config_hash.clone(),
            patron_version: env!("CARGO_PKG_VERSION").to_string(),
            format: plan.publish.format.as_str().into(),
            table_rows: self
                .tables
                .iter()
                .map(|t| (t.location.clone(), t.rows))
                .chain(
                    self.carried
                        .iter()
                        .filter(|_| published)
                        .map(|(l, rows, _)| (l.clone(), *rows)),
                )
                .collect(),
            table_versions: self
                .tables
                .iter()
                .filter_map(|t| t.version.map(|v| (t.location.clone(), v)))
                .chain(
                    self.carried
                        .iter()
                        .filter(|_| published)
                        .filter_map(|(l, _, v)| v.map(|v| (l.clone(), v))),
                )
                .collect(),
        }
    }

    /// The run manifest; `timing` is (start, end as RFC 3339, duration in ms).
    fn into_manifest(
        self,
        plan: &Plan,
        (started_at, finished_at, duration_ms): (DateTime<Utc>, String, u64),
        error: Option<&RunError>,
        lock_taken_over: Option<String>,
    ) -> RunManifest {
        RunManifest {
            run_id: self.run_id.clone(),
            pipeline: plan.name.clone(),
            pipeline_file: plan.pipeline_file.to_string_lossy().into_owned(),
            patron_version: env!("CARGO_PKG_VERSION").to_string(),
            config_hash: plan.config_hash.clone(),
            started_at: started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            finished_at,
            duration_ms,
            as_of: self.as_of.map(|d| d.to_string()),
            as_of_source: match plan.as_of {
                AsOf::Latest => "latest".into(),
                AsOf::Date(_) => "config".into(),
            },
            outcome: if error.is_none() {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            },
            error: error.map(|e| e.to_string()),
            failed_phase: error.map(|e| e.phase().to_string()),
            rows_quarantined: self.extract.iter().map(|m| m.rows_quarantined).sum(),
            extract: self.extract,
            stages: self.stages,
            tests: self.tests,
            models: self.models,
            tables: self.tables,
            settings: RunSettings {
                scoring: plan.scoring.clone(),
                engine: plan.engine.clone(),
            },
            staging: error
                .is_some()
                .then(|| self.staging.to_string_lossy().into_owned())
                .filter(|_| self.staging.exists()),
            format: plan.publish.format.as_str().into(),
            lock_taken_over,
            phase_ms: self.phase_ms,
        }
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
    let mut tables = plan.source_tables();
    tables.extend([names::QUARANTINE_TABLE.to_string(), names::DUPLICATES_TABLE.to_string()]);
    tables
}

/// The plan's stages: every stage and seed under its SQL folder, and every source's
/// generated `raw_<source>_current` view (see [`extract::current`]).
pub fn project(plan: &Plan) -> Result<transform::Project, TransformError> {
    let mut project = transform::discover(&plan.sql_dir)?;
    for source in &plan.sources {
        project.add_generated(
            &names::current_table(&source.name),
            extract::current::CURRENT_LAYER,
            &source.schema_file,
            extract::current::current_sql(source),
            extract::current::current_description(source),
        )?;
    }
    Ok(project)
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
    let record = state.record(plan, started_at, &finished_at, result.as_ref().err());
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
    let timing = (started_at, finished_at, clock.elapsed().as_millis() as u64);
    let manifest = state.into_manifest(plan, timing, result.as_ref().err(), lock_taken_over);
    failpoint::hit("publish.before_manifest");
    let written = publish::write_manifest(&plan.warehouse, &manifest).await;
    let mut vacuumed_files = 0;
    if result.is_ok() && plan.publish.format == TableFormat::Delta && plan.publish.retain_versions > 0 {
        progress.phase("vacuum: dropping old table versions");
        failpoint::hit("publish.before_vacuum");
        vacuumed_files = commit::retain_versions(&plan.warehouse, &manifest.tables, plan.publish.retain_versions).await;
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

/// Prepares the run (every phase before publish), then commits its tables.
async fn execute(
    plan: &Plan,
    state: &mut RunState,
    progress: &Progress,
    lock: &WarehouseLock,
    cancel: &CancellationToken,
) -> Result<(), RunError> {
    let aborted = || RunError::Aborted {
        phase: "before publishing",
    };
    let targets = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(aborted()),
        prepared = prepare(plan, state, progress) => prepared?,
    };
    if cancel.is_cancelled() {
        return Err(aborted());
    }
    let publishing = Instant::now();
    let how = commit::Commit {
        warehouse: &plan.warehouse,
        format: plan.publish.format,
        row_group_rows: plan.publish.row_group_rows,
        run_id: &state.run_id,
        staging: &state.staging,
        lock,
        cancel,
    };
    state.tables = commit::commit(&how, &targets).await.map_err(|e| match e {
        PublishError::Cancelled => RunError::Aborted {
            phase: "while publishing",
        },
        e => e.into(),
    })?;
    state.phase_done(PHASE_PUBLISH, publishing);
    publish::remove_staging(&state.staging)?;
    Ok(())
}

/// Everything before the publish: extract, the session, the duplicate scan, the stage
/// waves with the model steps after the waves that feed them, and the data tests. Returns
/// the staged tables to publish.
async fn prepare(plan: &Plan, state: &mut RunState, progress: &Progress) -> Result<Vec<commit::Target>, RunError> {
    // Every input and every stage file is checked before the (long) extract: a missing
    // file or a stage that does not resolve is a configuration error.
    let inputs = extract::list_all(&plan.sources, &plan.storage).await?;
    let project = project(plan)?;
    let provided = crate::score::step::providers();
    let order = transform::execution_order(&project, &external_tables(plan), &provided)?;
    let chosen = if plan.selection.is_all() {
        project.stages.keys().cloned().collect()
    } else {
        select::select(&project, &provided, &plan.selection.select, &plan.selection.exclude)?
    };
    if chosen.is_empty() && !plan.selection.is_all() {
        return Err(RunError::Transform(TransformError::EmptySelection));
    }
    std::fs::create_dir_all(&state.staging).map_err(staging_io(&state.staging))?;

    progress.phase(format!("extract: {} sources", plan.sources.len()));
    let extracting = Instant::now();
    let sources = extract::SourcesRun {
        sources: &plan.sources,
        warehouse: &plan.warehouse,
        pipeline: &plan.name,
        full_refresh: plan.full_refresh,
        staging: &state.staging,
        run_id: &state.run_id,
        batch_size: plan.engine.batch_size,
    };
    state.extract = extract::run_sources(&sources, inputs).await?;
    state.phase_done(PHASE_EXTRACT, extracting);
    let as_of = resolve_as_of(plan.as_of, &state.extract)?;
    state.as_of = Some(as_of);
    tracing::info!(%as_of, "as-of date");

    let ctx = open_session(plan, state, &project).await?;
    progress.phase("extract: duplicate keys");
    let scanning = Instant::now();
    let duplicate_rows = scan_duplicates(&ctx, plan, state).await?;
    state.phase_done(PHASE_DUPLICATES, scanning);
    // Extract's readers and key filters are freed: the stages start without them.
    crate::engine::memory::release_free_memory();

    let transforming = Instant::now();
    let params = plan.scoring.sql_params(as_of);
    let partial = chosen.len() < project.stages.len();
    // Incremental stages merge into what the last succeeded run published; a partial run
    // reads the stages it does not rebuild from there.
    let any_incremental = project
        .stages
        .values()
        .any(|s| s.spec.materialized == Materialized::Incremental);
    let history = if (any_incremental && !plan.full_refresh) || partial {
        runs::read_all(&plan.warehouse).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let needed = transform::upstream(&project, &provided, &chosen);
    let parallel = plan.engine.stage_parallelism();
    let inputs = Arc::new(StageInputs {
        warehouse: plan.warehouse.clone(),
        pipeline: plan.name.clone(),
        history: history.clone(),
        params: params.clone(),
        tables_dir: state.staging.join(TABLES_DIR),
        row_group_rows: plan.publish.row_group_rows,
        delta_publish: plan.publish.format == TableFormat::Delta,
    });
    let scoring = ScoreRun {
        settings: &plan.scoring,
        project: &project,
        provided: &provided,
        order: &order,
        as_of,
        tables_dir: state.staging.join(TABLES_DIR),
        portable_dir: state.staging.join(PORTABLE_DIR),
        snapshots_dir: state.staging.join(CHURN_SNAPSHOTS_DIR),
        parallel,
    };
    let mut done = 0;
    for wave in transform::plan_waves(&project, &provided, &order, &chosen, &needed) {
        for stage in &wave.carry {
            // Not selected: read as the last succeeded run published it, and name that
            // version again in this run's `runs` row, so the row still lists a complete set.
            let cluster_by = match stage.spec.materialized {
                Materialized::Table => stage.spec.cluster_by.as_slice(),
                _ => &[],
            };
            let carried = carry_published(&ctx, plan, &history, state, &stage.name, cluster_by).await?;
            if !carried && wave.needs(&stage.name) {
                return Err(RunError::Transform(TransformError::NotPublished {
                    stage: stage.name.clone(),
                }));
            }
        }
        if !wave.run.is_empty() {
            done += wave.run.len();
            let names: Vec<&str> = wave.run.iter().map(|s| s.name.as_str()).collect();
            progress.phase(format!("transform: {} ({done}/{})", names.join(", "), order.len()));
        }
        for (m, tests) in transform::run_wave(&ctx, &inputs, &wave.run, parallel).await? {
            state.stages.push(m);
            state.tests.extend(tests);
        }
        // As dbt's `build` skips what sits downstream of a failed test: the run fails here,
        // on the rows the test names, rather than in a later stage on what they cause.
        fail_on_blocking_tests(state)?;
        scoring
            .after_wave(&ctx, &wave.ready, &mut state.models, &mut state.stages, progress)
            .await?;
    }
    if partial && state.models.is_none() {
        // The model was not refitted: its parameters stay as last published.
        carry_published(&ctx, plan, &history, state, MODEL_PARAMS_TABLE, &[]).await?;
    }
    state.phase_done(PHASE_TRANSFORM, transforming);

    progress.phase("data tests");
    let testing = Instant::now();
    run_singular_tests(&ctx, &project, &params, state).await?;
    state.phase_done(PHASE_TESTS, testing);

    // Every stage succeeded: now the tables go into the warehouse.
    progress.phase("publish");
    failpoint::hit("publish.start");
    Ok(commit::targets(
        &state.staging,
        &state.extract,
        duplicate_rows,
        &state.stages,
    ))
}

/// The as-of day: the configured one, or the day of the latest event timestamp extracted.
fn resolve_as_of(as_of: AsOf, extracted: &[SourceMetrics]) -> Result<NaiveDate, RunError> {
    match as_of {
        AsOf::Date(d) => Ok(d),
        AsOf::Latest => extracted
            .iter()
            .filter_map(|m| m.max_timestamp_micros)
            .max()
            .and_then(DateTime::from_timestamp_micros)
            .map(|t| t.date_naive())
            .ok_or(RunError::NoAsOf),
    }
}

/// The run's query session, with every source's raw table, the quarantine and the seeds
/// registered.
async fn open_session(plan: &Plan, state: &RunState, project: &transform::Project) -> Result<SessionContext, RunError> {
    let spill = state.staging.join("spill");
    std::fs::create_dir_all(&spill).map_err(staging_io(&spill))?;
    let ctx = build_context(&plan.engine, &spill, state.cluster.clone())
        .await
        .map_err(RunError::engine("building the session"))?;
    for m in &state.extract {
        let table = names::raw_table(&m.source);
        register::register_parquet_files(&ctx, &table, &m.raw_files)
            .await
            .map_err(RunError::engine(format!("registering `{table}`")))?;
    }
    let quarantine_files: Vec<PathBuf> = state
        .extract
        .iter()
        .flat_map(|m| m.quarantine_files.iter().cloned())
        .collect();
    register::register_parquet_files(&ctx, names::QUARANTINE_TABLE, &quarantine_files)
        .await
        .map_err(RunError::engine(format!("registering `{}`", names::QUARANTINE_TABLE)))?;
    runner::register_seeds(&ctx, project.seeds.values()).await?;
    Ok(ctx)
}

/// Finds the superseded copies of every key into the `duplicates` table, and registers it
/// (stages and data tests can read it, like the quarantine); returns its rows.
async fn scan_duplicates(ctx: &SessionContext, plan: &Plan, state: &mut RunState) -> Result<u64, RunError> {
    let file = state.staging.join(DUPLICATES_DIR).join("part-00000.parquet");
    let rows = extract::duplicates::find_duplicates(ctx, &plan.sources, &mut state.extract, &state.run_id, &file)
        .await
        .map_err(RunError::Duplicates)?;
    register::register_parquet(ctx, names::DUPLICATES_TABLE, &file)
        .await
        .map_err(RunError::engine(format!("registering `{}`", names::DUPLICATES_TABLE)))?;
    Ok(rows)
}

/// Runs the singular data tests (`tests/*.sql` of the project); fails the run when a test
/// of severity `error` (here or a stage's) failed, and logs those of severity `warn`.
async fn run_singular_tests(
    ctx: &SessionContext,
    project: &transform::Project,
    params: &HashMap<String, ScalarValue>,
    state: &mut RunState,
) -> Result<(), RunError> {
    state
        .tests
        .extend(checks::run_tests(ctx, &project.singular_tests, params).await?);
    fail_on_blocking_tests(state)?;
    let warned = state.tests.iter().filter(|t| !t.passed()).count();
    if warned > 0 {
        tracing::warn!(
            "{warned} data test(s) of severity warn failed:\n{}",
            checks::describe_failures(&state.tests)
        );
    }
    Ok(())
}

/// [`RunError::DataTests`] when a data test of severity `error` has failed so far.
fn fail_on_blocking_tests(state: &RunState) -> Result<(), RunError> {
    let failed = state.tests.iter().filter(|t| t.blocks()).count();
    if failed > 0 {
        return Err(RunError::DataTests {
            failed,
            report: checks::describe_failures(&state.tests),
        });
    }
    Ok(())
}

/// Plans every stage of `plan` against empty tables (no data is read) and returns the
/// project, the execution order and the column lineage graph.
pub async fn lineage_graph(plan: &Plan) -> Result<(transform::Project, Vec<String>, LineageGraph), RunError> {
    let project = project(plan)?;
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
    let order = transform::execution_order(&project, &external, &crate::score::step::providers())?;
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
