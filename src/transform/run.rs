//! The transform phase of a run, one wave at a time: [`plan_waves`] decides which stages of
//! each wave run now and which are read as published (a partial run), and [`run_wave`]
//! runs a wave's stages side by side, each with its data tests.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

use crate::names::TABLES_DIR;
use crate::publish::read::PublishedVersion;
use crate::publish::runs::RunRecord;
use crate::warehouse::Warehouse;

use super::checks::{self, TestOutcome};
use super::runner::{self, StageMetrics};
use super::spec::Materialized;
use super::{Project, Provided, Stage, TransformError};

/// One wave of the run: stages that depend on none of each other.
#[derive(Debug, Default)]
pub struct Wave<'p> {
    /// The stages to run now, in execution order.
    pub run: Vec<&'p Stage>,
    /// Stored stages a partial run (`--select`) does not rebuild: read as the last
    /// succeeded run published them.
    pub carry: Vec<&'p Stage>,
    /// The stages whose outputs later stages (and the model steps) can use once the wave
    /// is done: every stage run, and every carried stage that a chosen stage needs.
    pub ready: Vec<&'p str>,
}

impl Wave<'_> {
    /// True when a chosen stage reads `stage` (carried): it must have been published.
    pub fn needs(&self, stage: &str) -> bool {
        self.ready.contains(&stage)
    }
}

/// Cuts `order` into waves and decides per stage: a stage runs when it is `chosen`, or it
/// is a view a chosen stage `needs`; an unchosen stored stage is carried; an unchosen view
/// nobody needs is left out.
pub fn plan_waves<'p>(
    project: &'p Project,
    provided: &Provided,
    order: &[String],
    chosen: &BTreeSet<String>,
    needed: &BTreeSet<String>,
) -> Vec<Wave<'p>> {
    super::waves(project, provided, order)
        .iter()
        .map(|names| {
            let mut wave = Wave::default();
            for name in names {
                let Some(stage) = project.stages.get(name) else {
                    continue;
                };
                let runs_now =
                    chosen.contains(name) || (stage.spec.materialized == Materialized::View && needed.contains(name));
                if runs_now {
                    wave.run.push(stage);
                } else if stage.spec.materialized.is_stored() {
                    wave.carry.push(stage);
                } else {
                    continue;
                }
                if runs_now || needed.contains(name) {
                    wave.ready.push(stage.name.as_str());
                }
            }
            wave
        })
        .collect()
}

/// What every stage of a run reads besides its SQL, shared by the stage tasks.
#[derive(Debug)]
pub struct StageInputs {
    /// The warehouse, for the previous version of an incremental stage.
    pub warehouse: Warehouse,
    /// The pipeline's name (its runs in the `runs` table).
    pub pipeline: String,
    /// The runs table, for the previous version of an incremental stage.
    pub history: Vec<RunRecord>,
    /// The SQL parameters (`$as_of`, ...).
    pub params: HashMap<String, ScalarValue>,
    /// Where stored stages are written.
    pub tables_dir: PathBuf,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// The run publishes Delta tables (an `insert_overwrite` stage may then write only its
    /// new partitions).
    pub delta_publish: bool,
}

/// Runs the stages of one wave, up to `parallel` at once, each a query of its own on a
/// task of its own (so they use a core each), with its data tests. Results come in the
/// wave's order, and the first failure in that order is the error.
pub async fn run_wave(
    ctx: &SessionContext,
    inputs: &Arc<StageInputs>,
    stages: &[&Stage],
    parallel: usize,
) -> Result<Vec<(StageMetrics, Vec<TestOutcome>)>, TransformError> {
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    let results = crate::engine::run_side_by_side(&names, parallel, |i| {
        let (ctx, inputs, stage) = (ctx.clone(), Arc::clone(inputs), stages[i].clone());
        async move { run_one_stage(&ctx, &inputs, &stage).await }
    })
    .await;
    results
        .into_iter()
        .zip(stages)
        .map(|(result, stage)| {
            result.map_err(|join| TransformError::Task {
                stage: stage.name.clone(),
                source: join,
            })?
        })
        .collect()
}

/// Runs one stage and its data tests; returns its metrics and test outcomes.
async fn run_one_stage(
    ctx: &SessionContext,
    inputs: &StageInputs,
    stage: &Stage,
) -> Result<(StageMetrics, Vec<TestOutcome>), TransformError> {
    let name = &stage.name;
    crate::failpoint::hit_with(|| format!("transform.before.{name}"));
    let previous = match stage.spec.materialized {
        Materialized::Incremental => {
            let location = format!("{TABLES_DIR}/{name}");
            PublishedVersion::latest(&inputs.warehouse, &inputs.history, &inputs.pipeline, &location).await
        }
        _ => None,
    };
    let m = runner::run_stage(
        ctx,
        stage,
        &inputs.params,
        &inputs.tables_dir,
        previous.as_ref(),
        inputs.row_group_rows,
        inputs.delta_publish,
    )
    .await?;
    let tests = if m.replaces_partitions {
        // The previous partitions passed when they were written: the tests that look at one
        // row at a time (or at a key within a partition) run on this run's rows only.
        let new_rows = runner::new_rows_table(name);
        let tests: Vec<_> = stage
            .spec
            .tests
            .iter()
            .map(|t| checks::on_rows_of(t, &new_rows, &stage.spec.partition_by))
            .collect();
        let outcomes = checks::run_tests(ctx, &tests, &inputs.params).await;
        ctx.deregister_table(new_rows.as_str())
            .map_err(|e| TransformError::Sql {
                stage: name.clone(),
                path: stage.path.clone(),
                message: e.to_string(),
            })?;
        let mut outcomes = outcomes?;
        // Reported as the stage's own tests: its table, and the query that reproduces a
        // failure on it.
        for (o, test) in outcomes.iter_mut().zip(&stage.spec.tests) {
            o.table.clone_from(&test.table);
            o.query = checks::failing_rows_sql(test);
        }
        outcomes
    } else {
        checks::run_tests(ctx, &stage.spec.tests, &inputs.params).await?
    };
    crate::failpoint::hit_with(|| format!("transform.after.{name}"));
    Ok((m, tests))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project of `a -> b (view) -> c`, `a -> d`, all tables but `b`.
    fn project(dir: &std::path::Path) -> Project {
        let stages = [
            ("a", "-- @materialized: table\nSELECT 1 AS x"),
            ("b", "-- @materialized: view\nSELECT x FROM a"),
            ("c", "-- @materialized: table\nSELECT x FROM b"),
            ("d", "-- @materialized: table\nSELECT x FROM a"),
        ];
        for (name, sql) in stages {
            std::fs::write(dir.join(format!("{name}.sql")), sql).unwrap();
        }
        super::super::discover(dir).unwrap()
    }

    fn names<'a>(stages: &[&'a Stage]) -> Vec<&'a str> {
        stages.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_partial_run_carries_unchosen_tables_and_runs_the_views_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(dir.path());
        let provided = Provided::new();
        let order = super::super::execution_order(&project, &BTreeSet::new(), &provided).unwrap();
        let chosen: BTreeSet<String> = ["c".to_string()].into();
        let needed = super::super::upstream(&project, &provided, &chosen);
        let waves = plan_waves(&project, &provided, &order, &chosen, &needed);
        let run: Vec<Vec<&str>> = waves.iter().map(|w| names(&w.run)).collect();
        let carry: Vec<Vec<&str>> = waves.iter().map(|w| names(&w.carry)).collect();
        assert_eq!(run, [vec![], vec!["b"], vec!["c"]]);
        assert_eq!(carry, [vec!["a"], vec!["d"], vec![]]);
        // `a` is read by the chosen `c` (through `b`): it must be published; `d` need not.
        assert!(waves[0].needs("a"));
        assert!(!waves[1].needs("d"));
        assert_eq!(waves[1].ready, ["b"]);

        let all: BTreeSet<String> = project.stages.keys().cloned().collect();
        let waves = plan_waves(&project, &provided, &order, &all, &all);
        assert!(waves.iter().all(|w| w.carry.is_empty()));
        assert_eq!(waves.iter().map(|w| w.run.len()).sum::<usize>(), 4);
    }
}
