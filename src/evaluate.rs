//! The backtest of the purchase and churn models behind `patron evaluate` (docs/scoring.md). The real
//! pipeline runs as of a calibration end (the end of the data minus the holdout) into a
//! scratch warehouse `<warehouse>/evaluations/<evaluation_id>/`; each of that run's buyers
//! gets the BG/NBD expected purchases over the holdout, which are compared with the
//! purchase days actually made after the calibration end, as found in the same run's
//! extracted sales. The result is the table `tables/evaluation` and the report
//! `evaluation.json` in the scratch warehouse; the published tables of the warehouse itself
//! are never touched.
//!
//! This module owns the I/O of the backtest (runs, Parquet, SQL, the report); the math is
//! in [`crate::score::backtest`]. The command line (`patron evaluate`) only parses the
//! arguments into [`EvaluateOptions`], calls [`evaluate`] and prints the report.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Days, NaiveDate, SecondsFormat, Utc};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use serde::Serialize;

use crate::config::{AsOf, ConfigError, Overrides, Plan};
use crate::names::TABLES_DIR;
use crate::pipeline::{self, RunFailure, RunReport};
use crate::progress::Progress;
use crate::score::backtest::{self, HoldoutSpec};
use crate::score::bgnbd::BgNbdParams;
use crate::score::churn::BASELINE;
use crate::score::error::ModelError;
use crate::score::models::MODEL_INPUT_STAGE;
use crate::score::truth::{self, Truth, TruthError, TruthEvaluation};
use crate::storage::{ParquetSink, WriteError};

/// Folder under the warehouse holding one scratch warehouse per evaluation.
pub const EVALUATIONS_DIR: &str = "evaluations";
/// The evaluation table (one row per calibration buyer), under the scratch `tables/`.
pub const EVALUATION_TABLE: &str = "evaluation";
/// The evaluation report, in the scratch warehouse.
pub const EVALUATION_REPORT: &str = "evaluation.json";
/// The source whose orders are the purchases the models predict.
pub const SALES_SOURCE: &str = "sales";
/// The scores table holding `churn_risk`.
const SCORES_TABLE: &str = "customer_scores";
/// The table holding the purchase model's own `p_no_purchase` (the fair baseline).
const VALUES_TABLE: &str = "customer_values";
/// The orders table the holdout purchases are counted from (`is_purchase`).
const ORDERS_TABLE: &str = "int_orders";
/// The short-term churn column, reported against the truth when a run has it.
const P_NO_PURCHASE: &str = "p_no_purchase_90d";
/// The end-of-data run's warehouse, inside the evaluation's scratch warehouse.
pub const END_OF_DATA_DIR: &str = "end-of-data";

/// What to evaluate: the arguments of `patron evaluate`.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// Pipeline file.
    pub pipeline: PathBuf,
    /// Holdout length before the end of the data.
    pub holdout: HoldoutSpec,
    /// End of the data (default: the pipeline's `run.as_of`).
    pub as_of: Option<AsOf>,
    /// Warehouse folder (overrides `run.warehouse`); unless `out` is given, the evaluation
    /// goes to `<warehouse>/evaluations/<evaluation_id>/`.
    pub warehouse: Option<String>,
    /// The folder the evaluation goes to instead: a new or empty folder.
    pub out: Option<PathBuf>,
    /// The true state of each customer (`truth_customers.csv` of `patron generate`).
    pub truth: Option<PathBuf>,
}

/// Why an evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The pipeline file or a schema is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The pipeline has no source the purchases can be counted from.
    #[error(
        "{pipeline}: no source named `{SALES_SOURCE}`; evaluate counts holdout purchases from it (sources: {found})"
    )]
    NoSalesSource {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The sources it does declare, comma-separated.
        found: String,
    },
    /// The holdout reaches back before the first representable date.
    #[error("a holdout of {holdout} days before {end} is out of the calendar")]
    HoldoutOutOfRange {
        /// Holdout days.
        holdout: u32,
        /// End of the data.
        end: NaiveDate,
    },
    /// A date has no timestamp (far outside the calendar the engine handles).
    #[error("{date} is outside the dates timestamps can hold")]
    DateOutOfRange {
        /// The date.
        date: NaiveDate,
    },
    /// One of the pipeline runs failed.
    #[error("{what} failed: {failure}{}", failure.manifest_path.as_ref().map(|p| format!("\nmanifest: {p}")).unwrap_or_default())]
    Run {
        /// Which run: the end-of-data or the calibration run.
        what: String,
        /// The failure, with its manifest (boxed: a run error is large).
        failure: Box<RunFailure>,
    },
    /// A successful run reported something unusable (no as-of date, no fitted model).
    #[error("run {run_id} ({manifest}): {message}")]
    Manifest {
        /// The run.
        run_id: String,
        /// Its manifest file.
        manifest: String,
        /// What is missing or wrong.
        message: String,
    },
    /// Reading a table of the calibration run failed.
    #[error("reading `{table}` ({path}): {message}")]
    Table {
        /// The table.
        table: String,
        /// Its Parquet folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The model could not predict a customer's holdout purchases.
    #[error("predicting holdout purchases of customer `{customer_id}` from `{table}`: {source}")]
    Prediction {
        /// The customer.
        customer_id: String,
        /// The model input table.
        table: String,
        /// The model's error (boxed: it is large).
        source: Box<ModelError>,
    },
    /// The `--truth` file cannot be used.
    #[error(transparent)]
    Truth(#[from] TruthError),
    /// Writing the evaluation table failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Writing the report (or another file) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The evaluation report: written as `evaluation.json`, the manifest of the evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationReport {
    /// Sortable unique id of the evaluation (also its folder name).
    pub evaluation_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline file.
    pub pipeline_file: String,
    /// patron version.
    pub patron_version: String,
    /// When the evaluation finished, RFC 3339 UTC.
    pub created_at: String,
    /// The scratch warehouse of the evaluation.
    pub warehouse: String,
    /// End of the data (last day of the holdout).
    pub end: String,
    /// Where the end came from: `--as-of`, `run.as_of` or `latest event date`.
    pub end_source: String,
    /// The run that found the latest event date, when the end was not given.
    pub end_run_id: Option<String>,
    /// Last day of the calibration window: the models know nothing after it.
    pub calibration_end: String,
    /// The pipeline run as of the calibration end.
    pub calibration_run_id: String,
    /// The holdout as given, e.g. `90d`.
    pub holdout: String,
    /// Holdout length in days: `end - calibration_end`.
    pub holdout_days: u32,
    /// The models' time unit in days (`scoring.time_unit_days`).
    pub time_unit_days: f64,
    /// Holdout length in the models' time unit.
    pub holdout_units: f64,
    /// Calibration buyers evaluated (rows of the calibration run's `customer_model_input`).
    pub customers: u64,
    /// Per-customer mean absolute error of predicted vs actual purchases.
    pub mae: Option<f64>,
    /// Predicted purchases, all customers.
    pub total_predicted: f64,
    /// Actual purchase days in the holdout, all customers.
    pub total_actual: u64,
    /// `total_predicted / total_actual`; `None` when nobody purchased.
    pub ratio: Option<f64>,
    /// Customers with a purchase in the holdout.
    pub purchased_in_holdout: u64,
    /// Customers without one (the positives of the AUC).
    pub no_purchase_in_holdout: u64,
    /// Customers with a p_no_purchase_90d, on whom the AUC is computed.
    pub auc_customers: u64,
    /// AUC of p_no_purchase_90d for "no purchase in the holdout" (ties 1/2); `None` when
    /// undefined.
    pub auc: Option<f64>,
    /// Why the AUC is `None`, when it is.
    pub auc_note: Option<String>,
    /// The same AUC among repeat buyers (x > 0) only.
    pub auc_repeat_buyers: Option<f64>,
    /// Repeat buyers with a p_no_purchase_90d, on whom `auc_repeat_buyers` is computed.
    pub auc_repeat_buyers_customers: u64,
    /// AUC of the predicted purchases, reversed (fewer expected purchases = riskier), for
    /// "no purchase in the holdout": the same model's ranking without the x = 0 convention.
    pub auc_predicted_purchases: Option<f64>,
    /// Calibration buyers with one purchase day only (x = 0).
    pub one_time_buyers: u64,
    /// One-time buyers who purchased in the holdout.
    pub one_time_buyers_purchased: u64,
    /// The short-term churn scores compared on the holdout, over the same customers: the
    /// modified BG/NBD's own P(no purchase), the fair baseline, and the run's
    /// `p_no_purchase_90d` (the churn model's, or the baseline again when the calibration
    /// run kept the purchase model).
    pub churn_comparison: Vec<ChurnScoreEvaluation>,
    /// Model version of the calibration fit.
    pub model_version: String,
    /// Fitted BG/NBD parameters of the calibration run; `None` when it was not fitted.
    pub bgnbd_params: Option<BTreeMap<String, f64>>,
    /// What stood in for BG/NBD (the predictions are its), and why, when it could not be
    /// fitted.
    pub bgnbd_fallback: Option<String>,
    /// The end-of-data run's churn scores against the true dropped-out state (`--truth`).
    pub truth: Option<TruthEvaluation>,
    /// The evaluation table's Parquet file.
    pub table: String,
}

/// One churn score on the holdout: ranking, top-decile precision, probability accuracy.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnScoreEvaluation {
    /// `mbgnbd_p_no_purchase` (the purchase model's own) or `p_no_purchase_90d` (the run's).
    pub score: String,
    /// The model behind it: `mbgnbd`, `logistic` or `gbt`.
    pub model: String,
    /// Customers compared.
    pub customers: u64,
    /// Share of them without a purchase in the holdout.
    pub churn_rate: Option<f64>,
    /// AUC for "no purchase in the holdout".
    pub auc: Option<f64>,
    /// Share without a purchase among the top 10% by score.
    pub precision_at_top_10pct: Option<f64>,
    /// Brier score of the score read as a probability of no purchase in the holdout.
    pub brier: Option<f64>,
    /// Mean score vs observed churn in ten equal-width bins of the score.
    pub calibration: Vec<backtest::CalibrationBin>,
}

/// Compares the purchase model's own P(no purchase) and the run's `p_no_purchase_90d`
/// over the customers that have both.
fn churn_comparison(totals: &Totals, churn_model: &str) -> Vec<ChurnScoreEvaluation> {
    let keep: Vec<usize> = (0..totals.actual.len())
        .filter(|&i| totals.baseline[i].is_some() && totals.p_no_purchase[i].is_some())
        .collect();
    let positive: Vec<bool> = keep.iter().map(|&i| totals.actual[i] == 0.0).collect();
    let churn_rate = (!keep.is_empty()).then(|| positive.iter().filter(|p| **p).count() as f64 / keep.len() as f64);
    let baseline: Vec<f64> = keep.iter().filter_map(|&i| totals.baseline[i]).collect();
    let model: Vec<f64> = keep.iter().filter_map(|&i| totals.p_no_purchase[i]).collect();
    [(BASELINE, "mbgnbd", baseline), (P_NO_PURCHASE, churn_model, model)]
        .into_iter()
        .map(|(score, model, values)| ChurnScoreEvaluation {
            score: score.to_string(),
            model: model.to_string(),
            customers: keep.len() as u64,
            churn_rate,
            auc: backtest::auc(&values, &positive),
            precision_at_top_10pct: backtest::precision_at_top(&values, &positive, backtest::TOP_SHARE),
            brier: backtest::brier(&values, &positive),
            calibration: backtest::calibration_table(&values, &positive, backtest::CALIBRATION_BINS),
        })
        .collect()
}

/// Runs the backtest `options` describe; returns the report and where it was written.
pub async fn evaluate(options: &EvaluateOptions) -> Result<(EvaluationReport, PathBuf), EvaluateError> {
    let overrides = Overrides {
        as_of: options.as_of,
        warehouse: options.warehouse.clone(),
        ..Overrides::default()
    };
    let plan = Plan::load(&options.pipeline, &overrides)?;
    if !plan.sources.iter().any(|s| s.name == SALES_SOURCE) {
        return Err(EvaluateError::NoSalesSource {
            pipeline: options.pipeline.clone(),
            found: plan
                .sources
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let truth = options.truth.as_deref().map(Truth::read).transpose()?;
    let evaluation_id = pipeline::new_run_id(Utc::now());
    let invalid = |key: &str, message: String| {
        EvaluateError::Config(crate::config::ConfigError::Invalid {
            path: options.pipeline.clone(),
            problems: vec![crate::config::Problem {
                key: key.into(),
                message,
            }],
        })
    };
    let scratch = match (&options.out, plan.warehouse.local_dir()) {
        (Some(out), _) => {
            // A folder holding something else (an earlier evaluation's runs) would become
            // part of this one's history; a file there would fail the first scratch run.
            if out.exists() && !out.is_dir() {
                return Err(invalid(
                    "--out",
                    format!("{} is a file, not a folder; give a new or empty folder", out.display()),
                ));
            }
            if std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
                return Err(invalid(
                    "--out",
                    format!("{} is not empty; give a new or empty folder", out.display()),
                ));
            }
            out.clone()
        }
        (None, Some(warehouse_dir)) => warehouse_dir.join(EVALUATIONS_DIR).join(&evaluation_id),
        (None, None) => {
            return Err(invalid(
                "--warehouse",
                format!(
                    "`patron evaluate` runs its scratch runs in a local folder; {} is an object store (or give --out DIR)",
                    plan.warehouse
                ),
            ));
        }
    };
    tracing::info!(%evaluation_id, scratch = %scratch.display(), "evaluation started");

    // The end-of-data run (into its own folder of the scratch warehouse): its `int_orders`
    // says which orders of the holdout are purchases, netted of returns as every run nets
    // them; with `latest`, its as-of date is the end of the data.
    let end_dir = scratch.join(END_OF_DATA_DIR);
    let (end_as_of, end_source) = match plan.as_of {
        AsOf::Date(d) => (
            AsOf::Date(d),
            if options.as_of.is_some() {
                "--as-of"
            } else {
                "run.as_of"
            },
        ),
        AsOf::Latest => (AsOf::Latest, "latest event date"),
    };
    let end_report = run_pipeline(
        &options.pipeline,
        end_as_of,
        &end_dir,
        &format!("end-of-data run (as of {end_as_of})"),
    )
    .await?;
    let end = match plan.as_of {
        AsOf::Date(d) => d,
        AsOf::Latest => manifest_date(&end_report)?,
    };
    let end_run_id = Some(end_report.manifest.run_id);
    let calibration_end =
        end.checked_sub_days(Days::new(u64::from(options.holdout.days)))
            .ok_or(EvaluateError::HoldoutOutOfRange {
                holdout: options.holdout.days,
                end,
            })?;

    let calibration = run_pipeline(
        &options.pipeline,
        AsOf::Date(calibration_end),
        &scratch,
        &format!("calibration run (as of {calibration_end}, holdout {})", options.holdout),
    )
    .await?;
    let manifest_err = |message: String| EvaluateError::Manifest {
        run_id: calibration.manifest.run_id.clone(),
        manifest: calibration.manifest_path.clone(),
        message,
    };
    let models = calibration
        .manifest
        .models
        .as_ref()
        .ok_or_else(|| manifest_err("no fitted models in the manifest".into()))?;
    // No BG/NBD fit (the data had no repeat purchases): predictions are 0, as in the scores.
    let params = match &models.bgnbd {
        Some(fit) => {
            let param = |name: &str| {
                fit.params.get(name).copied().ok_or_else(|| {
                    manifest_err(format!("BG/NBD parameter `{name}` missing from `models.bgnbd.params`"))
                })
            };
            let params = BgNbdParams::new(param("r")?, param("alpha")?, param("a")?, param("b")?)
                .map_err(|e| manifest_err(format!("`models.bgnbd.params`: {e}")))?;
            Some(params)
        }
        None => None,
    };
    let time_unit_days = models.time_unit_days;
    let holdout_units = f64::from(options.holdout.days) / time_unit_days;

    let table_path = scratch
        .join(TABLES_DIR)
        .join(EVALUATION_TABLE)
        .join("part-00000.parquet");
    let bounds = Bounds {
        after: day_end(&plan, calibration_end)?,
        until: day_end(&plan, end)?,
    };
    let totals = evaluate_customers(&scratch, &end_dir, params.as_ref(), holdout_units, &bounds, &table_path).await?;
    let truth = match &truth {
        Some(t) => Some(against_truth(&end_dir, t, end).await?),
        None => None,
    };

    let (auc, auc_customers, auc_note) = churn_auc(&totals, |_| true);
    let (auc_repeat_buyers, auc_repeat_buyers_customers, _) = churn_auc(&totals, |i| totals.repeat[i]);
    let negated: Vec<f64> = totals.predicted.iter().map(|p| -p).collect();
    let no_purchase: Vec<bool> = totals.actual.iter().map(|a| *a == 0.0).collect();
    let auc_predicted_purchases = backtest::auc(&negated, &no_purchase);
    let total_predicted: f64 = totals.predicted.iter().sum();
    let total_actual: u64 = totals.actual.iter().map(|a| *a as u64).sum();
    let purchased = totals.actual.iter().filter(|a| **a > 0.0).count() as u64;
    let customers = totals.predicted.len() as u64;
    let one_time = |i: usize| !totals.repeat[i];
    let one_time_buyers = (0..totals.repeat.len()).filter(|i| one_time(*i)).count() as u64;
    let one_time_buyers_purchased = (0..totals.repeat.len())
        .filter(|i| one_time(*i) && totals.actual[*i] > 0.0)
        .count() as u64;
    let report = EvaluationReport {
        evaluation_id,
        pipeline: plan.name.clone(),
        pipeline_file: plan.pipeline_file.to_string_lossy().into_owned(),
        patron_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        warehouse: scratch.to_string_lossy().into_owned(),
        end: end.to_string(),
        end_source: end_source.to_string(),
        end_run_id,
        calibration_end: calibration_end.to_string(),
        calibration_run_id: calibration.manifest.run_id.clone(),
        holdout: options.holdout.text.clone(),
        holdout_days: options.holdout.days,
        time_unit_days,
        holdout_units,
        customers,
        mae: backtest::mae(&totals.predicted, &totals.actual),
        total_predicted,
        total_actual,
        ratio: (total_actual > 0).then(|| total_predicted / total_actual as f64),
        purchased_in_holdout: purchased,
        no_purchase_in_holdout: customers - purchased,
        auc_customers,
        auc,
        auc_note,
        auc_repeat_buyers,
        auc_repeat_buyers_customers,
        auc_predicted_purchases,
        one_time_buyers,
        one_time_buyers_purchased,
        churn_comparison: churn_comparison(&totals, models.churn.as_ref().map_or("mbgnbd", |c| c.model.as_str())),
        model_version: models.model_version.clone(),
        bgnbd_params: models.bgnbd.as_ref().map(|fit| fit.params.clone()),
        bgnbd_fallback: models.bgnbd_fallback.as_ref().map(ToString::to_string),
        truth,
        table: table_path.to_string_lossy().into_owned(),
    };
    let report_path = scratch.join(EVALUATION_REPORT);
    write_report(&report_path, &report)?;
    tracing::info!(evaluation_id = %report.evaluation_id, "evaluation written");
    Ok((report, report_path))
}

/// One pipeline run of the evaluation, as of `as_of`, into the scratch warehouse.
async fn run_pipeline(
    pipeline_file: &Path,
    as_of: AsOf,
    scratch: &Path,
    what: &str,
) -> Result<RunReport, EvaluateError> {
    let overrides = Overrides {
        as_of: Some(as_of),
        warehouse: Some(scratch.to_string_lossy().into_owned()),
        ..Overrides::default()
    };
    let plan = Plan::load(pipeline_file, &overrides)?;
    let progress = Progress::for_stderr();
    progress.phase(what.to_string());
    pipeline::run(&plan, &progress)
        .await
        .map_err(|failure| EvaluateError::Run {
            what: what.to_string(),
            failure: Box::new(failure),
        })
}

fn manifest_date(report: &RunReport) -> Result<NaiveDate, EvaluateError> {
    let err = |message: String| EvaluateError::Manifest {
        run_id: report.manifest.run_id.clone(),
        manifest: report.manifest_path.clone(),
        message,
    };
    let text = report
        .manifest
        .as_of
        .as_deref()
        .ok_or_else(|| err("no `as_of` date".into()))?;
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|e| err(format!("`as_of` = `{text}`: {e}")))
}

/// The first instant after `day`, as the `$as_of_end` parameter the stages use.
fn day_end(plan: &Plan, day: NaiveDate) -> Result<ScalarValue, EvaluateError> {
    match plan.scoring.sql_params(day).remove("as_of_end") {
        Some(v @ ScalarValue::TimestampMicrosecond(Some(_), _)) => Ok(v),
        _ => Err(EvaluateError::DateOutOfRange { date: day }),
    }
}

/// The holdout as exclusive instants: purchases at or after `after` and before `until`.
struct Bounds {
    after: ScalarValue,
    until: ScalarValue,
}

/// What the per-customer pass gathers for the report.
struct Totals {
    predicted: Vec<f64>,
    actual: Vec<f64>,
    /// The run's `p_no_purchase_90d`.
    p_no_purchase: Vec<Option<f64>>,
    /// The purchase model's own P(no purchase in the churn window): the fair baseline.
    baseline: Vec<Option<f64>>,
    /// x > 0.
    repeat: Vec<bool>,
}

/// AUC of p_no_purchase_90d for "no purchase in the holdout" over the customers `keep`
/// selects that have one; with their number, and why the AUC is undefined when it is.
fn churn_auc(totals: &Totals, keep: impl Fn(usize) -> bool) -> (Option<f64>, u64, Option<String>) {
    let (mut scores, mut positive) = (Vec::new(), Vec::new());
    for (i, risk) in totals.p_no_purchase.iter().enumerate() {
        if let Some(r) = risk
            && keep(i)
        {
            scores.push(*r);
            positive.push(totals.actual[i] == 0.0);
        }
    }
    let auc = backtest::auc(&scores, &positive);
    let note = match auc {
        Some(_) => None,
        None if scores.is_empty() => Some("no customer has a p_no_purchase_90d".to_string()),
        None if positive.iter().all(|p| *p) => {
            Some("every customer went without a purchase in the holdout: one class only".to_string())
        }
        None if positive.iter().all(|p| !*p) => {
            Some("every customer purchased in the holdout: one class only".to_string())
        }
        None => Some("p_no_purchase_90d has non-finite values".to_string()),
    };
    (auc, scores.len() as u64, note)
}

/// Per calibration buyer: history, churn_risk and holdout purchase days. Purchase days are
/// counted as `customer_model_input` counts them (distinct order dates of purchases), from
/// the end-of-data run's `int_orders`, strictly after the calibration end: an order
/// cancelled or returned in full is not a purchase (docs/returns.md).
const EVALUATION_SQL: &str = "
WITH holdout AS (
    SELECT customer_id, COUNT(DISTINCT order_date) AS purchase_days
    FROM int_orders
    WHERE is_purchase AND order_ts >= $after AND order_ts < $until
    GROUP BY customer_id
)
SELECT
    m.customer_id,
    m.x,
    m.t_x,
    m.t_cal,
    s.p_no_purchase_90d,
    v.p_no_purchase AS mbgnbd_p_no_purchase,
    COALESCE(h.purchase_days, 0) AS actual_purchases
FROM customer_model_input AS m
LEFT JOIN customer_scores AS s ON s.customer_id = m.customer_id
LEFT JOIN customer_values AS v ON v.customer_id = m.customer_id
LEFT JOIN holdout AS h ON h.customer_id = m.customer_id
ORDER BY m.customer_id
";

/// The evaluation table's columns.
fn evaluation_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("x", DataType::Float64, false),
        Field::new("t_x", DataType::Float64, false),
        Field::new("t_cal", DataType::Float64, false),
        Field::new("predicted_purchases", DataType::Float64, false),
        Field::new("actual_purchases", DataType::Int64, false),
        Field::new("abs_error", DataType::Float64, false),
        Field::new("p_no_purchase_90d", DataType::Float64, true),
        Field::new("mbgnbd_p_no_purchase", DataType::Float64, true),
        Field::new("purchased_in_holdout", DataType::Boolean, false),
    ]))
}

/// Reads the calibration run's tables, predicts and counts per customer, streams the
/// evaluation table to `out`, and returns the columns the report needs.
async fn evaluate_customers(
    scratch: &Path,
    end_dir: &Path,
    params: Option<&BgNbdParams>,
    holdout_units: f64,
    bounds: &Bounds,
    out: &Path,
) -> Result<Totals, EvaluateError> {
    let ctx = SessionContext::new();
    let inputs = [
        (
            MODEL_INPUT_STAGE.to_string(),
            scratch.join(TABLES_DIR).join(MODEL_INPUT_STAGE),
        ),
        (SCORES_TABLE.to_string(), scratch.join(TABLES_DIR).join(SCORES_TABLE)),
        (VALUES_TABLE.to_string(), scratch.join(TABLES_DIR).join(VALUES_TABLE)),
        (ORDERS_TABLE.to_string(), end_dir.join(TABLES_DIR).join(ORDERS_TABLE)),
    ];
    for (table, path) in &inputs {
        let root = if path.starts_with(end_dir) { end_dir } else { scratch };
        let warehouse = crate::warehouse::Warehouse::local(root);
        let location = path.strip_prefix(root).unwrap_or(path).to_string_lossy();
        crate::publish::read::register_table(&ctx, table, &warehouse, &location)
            .await
            .map_err(|e| EvaluateError::Table {
                table: table.clone(),
                path: path.clone(),
                message: e.to_string(),
            })?;
    }
    let (table, path) = &inputs[0];
    let query_err = |message: String| EvaluateError::Table {
        table: table.clone(),
        path: path.clone(),
        message: format!(
            "joined with `{SCORES_TABLE}`, `{VALUES_TABLE}` and the end-of-data `{ORDERS_TABLE}`: {message}"
        ),
    };
    let params_sql = HashMap::from([
        ("after".to_string(), bounds.after.clone()),
        ("until".to_string(), bounds.until.clone()),
    ]);
    let df = ctx
        .sql(EVALUATION_SQL)
        .await
        .and_then(|df| df.with_param_values(params_sql))
        .map_err(|e| query_err(e.to_string()))?;
    let mut stream = df.execute_stream().await.map_err(|e| query_err(e.to_string()))?;

    let schema = evaluation_schema();
    let mut sink = ParquetSink::create(out, Arc::clone(&schema))?;
    let mut totals = Totals {
        predicted: Vec::new(),
        actual: Vec::new(),
        p_no_purchase: Vec::new(),
        baseline: Vec::new(),
        repeat: Vec::new(),
    };
    let mut row = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| query_err(e.to_string()))?;
        let column = |name: &str, to: &DataType| -> Result<ArrayRef, EvaluateError> {
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| query_err(format!("column `{name}` is missing")))?;
            cast(col, to).map_err(|e| query_err(format!("column `{name}`: {e}")))
        };
        let ids = column("customer_id", &DataType::Utf8)?;
        let ids = downcast::<StringArray>(&ids, "customer_id", &query_err)?;
        let floats = ["x", "t_x", "t_cal", "p_no_purchase_90d", "mbgnbd_p_no_purchase"]
            .iter()
            .map(|name| column(name, &DataType::Float64))
            .collect::<Result<Vec<_>, _>>()?;
        let x = downcast::<Float64Array>(&floats[0], "x", &query_err)?;
        let t_x = downcast::<Float64Array>(&floats[1], "t_x", &query_err)?;
        let t_cal = downcast::<Float64Array>(&floats[2], "t_cal", &query_err)?;
        let churn = downcast::<Float64Array>(&floats[3], "p_no_purchase_90d", &query_err)?;
        let baseline = downcast::<Float64Array>(&floats[4], "mbgnbd_p_no_purchase", &query_err)?;
        let actual = column("actual_purchases", &DataType::Int64)?;
        let actual = downcast::<Int64Array>(&actual, "actual_purchases", &query_err)?;

        let n = batch.num_rows();
        let mut predicted = Vec::with_capacity(n);
        for i in 0..n {
            row += 1;
            if x.is_null(i) || t_x.is_null(i) || t_cal.is_null(i) || actual.is_null(i) {
                return Err(query_err(format!("row {row}: x, t_x and t_cal must not be NULL")));
            }
            let customer = || {
                if ids.is_null(i) {
                    "NULL".to_string()
                } else {
                    ids.value(i).to_string()
                }
            };
            let p = backtest::predicted_purchases(params, holdout_units, x.value(i), t_x.value(i), t_cal.value(i))
                .map_err(|source| EvaluateError::Prediction {
                    customer_id: customer(),
                    table: MODEL_INPUT_STAGE.to_string(),
                    source: Box::new(source),
                })?;
            let a = actual.value(i) as f64;
            predicted.push(p);
            totals.predicted.push(p);
            totals.actual.push(a);
            totals.p_no_purchase.push(churn.is_valid(i).then(|| churn.value(i)));
            totals.baseline.push(baseline.is_valid(i).then(|| baseline.value(i)));
            totals.repeat.push(x.value(i) > 0.0);
        }
        let abs_error: Float64Array = predicted
            .iter()
            .zip(actual.values())
            .map(|(p, a)| Some((p - *a as f64).abs()))
            .collect();
        let purchased: BooleanArray = actual.values().iter().map(|a| Some(*a > 0)).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids.clone()),
            Arc::new(x.clone()),
            Arc::new(t_x.clone()),
            Arc::new(t_cal.clone()),
            Arc::new(Float64Array::from(predicted)),
            Arc::new(actual.clone()),
            Arc::new(abs_error),
            Arc::new(churn.clone()),
            Arc::new(baseline.clone()),
            Arc::new(purchased),
        ];
        let out_batch = RecordBatch::try_new(Arc::clone(&schema), columns).map_err(|e| WriteError {
            path: out.to_path_buf(),
            message: e.to_string(),
        })?;
        sink.write(&out_batch)?;
    }
    sink.close()?;
    Ok(totals)
}

/// The end-of-data run's churn scores of every buyer against the truth as of `end`:
/// `churn_risk`, the purchase model's `1 - p_alive`, and `p_no_purchase_90d` when the run
/// has that column.
async fn against_truth(end_dir: &Path, truth: &Truth, end: NaiveDate) -> Result<TruthEvaluation, EvaluateError> {
    let ctx = SessionContext::new();
    let path = end_dir.join(TABLES_DIR).join(SCORES_TABLE);
    let table_err = |message: String| EvaluateError::Table {
        table: SCORES_TABLE.to_string(),
        path: path.clone(),
        message,
    };
    let warehouse = crate::warehouse::Warehouse::local(end_dir);
    let location = format!("{TABLES_DIR}/{SCORES_TABLE}");
    crate::publish::read::register_table(&ctx, SCORES_TABLE, &warehouse, &location)
        .await
        .map_err(|e| table_err(e.to_string()))?;
    let df = ctx.table(SCORES_TABLE).await.map_err(|e| table_err(e.to_string()))?;
    let mut columns = vec!["churn_risk", "p_alive"];
    if df.schema().field_with_unqualified_name(P_NO_PURCHASE).is_ok() {
        columns.push(P_NO_PURCHASE);
    }
    let sql = format!(
        "SELECT customer_id, {} FROM {SCORES_TABLE} WHERE p_alive IS NOT NULL ORDER BY customer_id",
        columns.join(", ")
    );
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(|e| table_err(e.to_string()))?
        .collect()
        .await
        .map_err(|e| table_err(e.to_string()))?;
    let mut ids = Vec::new();
    let mut values: Vec<Vec<Option<f64>>> = vec![Vec::new(); columns.len()];
    for batch in &batches {
        let id = cast(batch.column(0), &DataType::Utf8).map_err(|e| table_err(e.to_string()))?;
        let id = downcast::<StringArray>(&id, "customer_id", &table_err)?;
        ids.extend((0..id.len()).map(|i| id.value(i).to_string()));
        for (c, name) in columns.iter().enumerate() {
            let col = cast(batch.column(c + 1), &DataType::Float64).map_err(|e| table_err(e.to_string()))?;
            let col = downcast::<Float64Array>(&col, name, &table_err)?;
            values[c].extend(col.iter());
        }
    }
    let mut scores: Vec<(&str, Vec<Option<f64>>)> = Vec::new();
    for (name, v) in columns.iter().zip(values) {
        if *name == "p_alive" {
            scores.push(("1 - p_alive", v.into_iter().map(|p| p.map(|p| 1.0 - p)).collect()));
        } else {
            scores.push((name, v));
        }
    }
    Ok(truth::evaluate(truth, end, &ids, &scores))
}

fn downcast<'a, T: 'static>(
    array: &'a ArrayRef,
    name: &str,
    err: &impl Fn(String) -> EvaluateError,
) -> Result<&'a T, EvaluateError> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| err(format!("column `{name}` has an unexpected type")))
}

/// Writes the report through a temporary file and a rename, like the run manifest.
fn write_report(path: &Path, report: &EvaluationReport) -> Result<(), EvaluateError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EvaluateError::Io { path, source }
    };
    let text = serde_json::to_string_pretty(report).map_err(|e| EvaluateError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}
