//! The scoring step of a run: the probabilistic models, fitted as soon as the stage they
//! read is built, and registered for the stages after it. BG/NBD, the modified BG/NBD and
//! Gamma-Gamma fit once [`MODEL_INPUT_STAGE`] is ready (their parameters become the
//! `model_params` table and the model SQL functions); the churn model trains once
//! [`churn::FEATURES_STAGE`] is ready (its predictions become [`churn::PREDICTIONS_TABLE`],
//! and `model_params` gains its rows).

use std::path::PathBuf;
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;

use crate::progress::Progress;
use crate::transform::runner::{self, MaterializeError, StageMetrics};
use crate::transform::spec::Materialized;
use crate::transform::{Project, Provided};

use super::ScoringSettings;
use super::churn;
use super::models::{self, MODEL_INPUT_STAGE, MODEL_PARAMS_TABLE, ModelMetrics, ScoreError};

/// What the model step provides to later stages: every model function and the
/// `model_params` table, each available once [`MODEL_INPUT_STAGE`] has run.
pub fn providers() -> crate::transform::Provided {
    super::udf::MODEL_FUNCTIONS
        .iter()
        .chain(&[MODEL_PARAMS_TABLE])
        .map(|name| (name.to_string(), MODEL_INPUT_STAGE.to_string()))
        .chain([(churn::PREDICTIONS_TABLE.to_string(), churn::FEATURES_STAGE.to_string())])
        .collect()
}

/// What the scoring step of one run reads and where it writes.
#[derive(Debug)]
pub struct ScoreRun<'a> {
    /// The scoring settings.
    pub settings: &'a ScoringSettings,
    /// The stages (the churn model re-runs its features' chain as of earlier days).
    pub project: &'a Project,
    /// Tables and functions provided by the model steps.
    pub provided: &'a Provided,
    /// The execution order of the stages.
    pub order: &'a [String],
    /// The run's as-of day.
    pub as_of: NaiveDate,
    /// Where stored tables are written (`model_params`).
    pub tables_dir: PathBuf,
    /// Where tables held in memory are written for a cluster to read.
    pub portable_dir: PathBuf,
    /// Scratch folder of the churn model's snapshots.
    pub snapshots_dir: PathBuf,
    /// Stages run side by side in a snapshot.
    pub parallel: usize,
}

impl ScoreRun<'_> {
    /// Runs the model steps whose input is among `ready` (the stages of a wave just
    /// built), in that order: `models` receives the fitted models, and `stages` (the run's
    /// stage list) the `model_params` table, listed after the stage the models read.
    pub async fn after_wave(
        &self,
        ctx: &SessionContext,
        ready: &[&str],
        models: &mut Option<ModelMetrics>,
        stages: &mut Vec<StageMetrics>,
        progress: &Progress,
    ) -> Result<(), ScoreError> {
        for &name in ready {
            if name == MODEL_INPUT_STAGE {
                progress.phase("score: fitting BG/NBD and Gamma-Gamma");
                crate::failpoint::hit("score.before_fit");
                *models = Some(models::fit_and_register(ctx, self.settings).await?);
                crate::failpoint::hit("score.after_fit");
                let started = Instant::now();
                let (output, rows, bytes) = self.write_model_params(ctx).await?;
                stages.push(StageMetrics {
                    name: MODEL_PARAMS_TABLE.into(),
                    file: String::new(),
                    layer: "models".into(),
                    rows,
                    bytes,
                    duration_ms: started.elapsed().as_millis() as u64,
                    materialized: Materialized::Table,
                    rows_new: None,
                    partition_by: Vec::new(),
                    replaces_partitions: false,
                    cluster_by: Vec::new(),
                    spilled_bytes: 0,
                    output,
                });
            }
            if name == churn::FEATURES_STAGE {
                self.train_churn(ctx, models, stages, progress).await?;
            }
        }
        Ok(())
    }

    /// Trains the churn model, registers its predictions (written for a cluster), and
    /// adds its rows to `model_params`.
    async fn train_churn(
        &self,
        ctx: &SessionContext,
        models: &mut Option<ModelMetrics>,
        stages: &mut [StageMetrics],
        progress: &Progress,
    ) -> Result<(), ScoreError> {
        progress.phase("score: training the churn model");
        let started = Instant::now();
        let snapshots = churn::Snapshots {
            scratch: &self.snapshots_dir,
            parallel: self.parallel,
        };
        let report = churn::fit_and_register(
            ctx,
            self.project,
            self.provided,
            self.order,
            self.settings,
            self.as_of,
            snapshots,
        )
        .await?;
        runner::make_portable(ctx, churn::PREDICTIONS_TABLE, &self.portable_dir)
            .await
            .map_err(written(churn::PREDICTIONS_TABLE))?;
        // model_params gains the churn model's rows: registered and written again.
        if let Some(m) = models.as_mut() {
            m.churn = Some(report);
            models::register_params_table(ctx, m).map_err(|source| ScoreError::Register {
                table: MODEL_PARAMS_TABLE.into(),
                source: Box::new(source),
            })?;
            let (output, rows, bytes) = self.write_model_params(ctx).await?;
            if let Some(stage) = stages.iter_mut().find(|s| s.name == MODEL_PARAMS_TABLE) {
                stage.rows = rows;
                stage.bytes = bytes;
                stage.output = output;
                stage.duration_ms += started.elapsed().as_millis() as u64;
            }
        }
        Ok(())
    }

    /// Writes the registered `model_params` table into the staging tables folder (and
    /// registers the written file in its place); returns (file, rows, bytes).
    async fn write_model_params(&self, ctx: &SessionContext) -> Result<(PathBuf, u64, u64), ScoreError> {
        // Held in memory by the fit: written here, then read from the file by later stages
        // (which a Ballista cluster's executors can do too).
        runner::materialize_here(ctx, MODEL_PARAMS_TABLE, &self.tables_dir)
            .await
            .map_err(written(MODEL_PARAMS_TABLE))
    }
}

/// A write error of `table`.
fn written(table: &str) -> impl FnOnce(MaterializeError) -> ScoreError + '_ {
    move |source| ScoreError::Write {
        table: table.into(),
        source: Box::new(source),
    }
}
