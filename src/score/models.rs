//! The model step of a run: read the per-customer model input table (built by the SQL
//! stage [`MODEL_INPUT_STAGE`]), fit BG/NBD and the modified BG/NBD on grouped (x, t_x, T)
//! triples and Gamma-Gamma on repeat buyers, register the fitted models as SQL functions and as the
//! `model_params` table, and return what the manifest reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, StringArray, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::bgnbd::{self, BgNbdFit, RfSummary};
use super::fallback::{self, Fallback};
use super::gamma_gamma::{self, GammaGammaFit, SpendSummary};
use super::mbgnbd::{self, MbgNbdFit};
use super::report::ModelReport;
use super::udf::{Models, Purchases};
use super::{ScoringSettings, udf};

/// The stage whose result feeds the model fit: one row per buyer with `x`, `t_x`, `t_cal`
/// (in `scoring.time_unit_days`) and `mean_repeat_spend`.
pub const MODEL_INPUT_STAGE: &str = "customer_model_input";
/// The table holding the fitted parameters, available to stages after the fit.
pub const MODEL_PARAMS_TABLE: &str = "model_params";

/// Model step failures.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Reading the model input table failed.
    #[error("reading `{table}` for the model fit: {message}")]
    Input {
        /// The table.
        table: String,
        /// What went wrong.
        message: String,
    },
    /// The churn model step failed.
    #[error(transparent)]
    Churn(#[from] super::churn::report::ChurnError),
    /// `[scoring] require_models` is set and a model fell back.
    #[error("{0}; `[scoring] require_models = true` makes this fail the run")]
    ModelsRequired(Fallback),
    /// Model parameters were rejected.
    #[error(transparent)]
    Model(#[from] super::error::ModelError),
    /// A model table could not be registered with the query engine.
    #[error("registering `{table}`: {source}")]
    Register {
        /// The table.
        table: String,
        /// The engine's error.
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },
    /// A model table could not be written to the staging folder.
    #[error("table `{table}`: {source}")]
    Write {
        /// The table.
        table: String,
        /// Why.
        #[source]
        source: Box<crate::transform::runner::MaterializeError>,
    },
}

/// What the model step did.
#[derive(Debug, Clone, Serialize)]
pub struct ModelMetrics {
    /// Identifies the fitted models: a hash of the parameters and patron version.
    pub model_version: String,
    /// Time unit of x, t_x and T, in days.
    pub time_unit_days: f64,
    /// BG/NBD fit; `None` when the data cannot identify it (see `bgnbd_fallback`).
    pub bgnbd: Option<ModelReport>,
    /// What stands in for BG/NBD, and why, when it could not be fitted.
    pub bgnbd_fallback: Option<Fallback>,
    /// The NBD parameters standing in for BG/NBD (fitted, or pooled), when it fell back.
    pub nbd: Option<ModelReport>,
    /// Modified BG/NBD fit (`p_alive`, `churn_risk`, `p_no_purchase_90d`); `None` when the
    /// data cannot identify it (see `mbgnbd_fallback`).
    pub mbgnbd: Option<ModelReport>,
    /// What stands in for the modified BG/NBD (the purchase model), and why.
    pub mbgnbd_fallback: Option<Fallback>,
    /// Gamma-Gamma fit; `None` when it could not be fitted (see `gamma_gamma_fallback`).
    pub gamma_gamma: Option<ModelReport>,
    /// What stands in for Gamma-Gamma, and why, when it could not be fitted.
    pub gamma_gamma_fallback: Option<Fallback>,
    /// Weighted Pearson correlation of frequency and mean repeat spend among repeat
    /// buyers; Gamma-Gamma assumes they are independent, so far from 0 is a warning.
    pub frequency_spend_correlation: Option<f64>,
    /// The churn early-warning model (set once `churn_features` is built); `None` when the
    /// run has no such stage.
    pub churn: Option<super::churn::report::ChurnReport>,
}

fn float_column(batch: &RecordBatch, name: &str, table: &str) -> Result<Float64Array, ScoreError> {
    let err = |message: String| ScoreError::Input {
        table: table.to_string(),
        message,
    };
    let col: &ArrayRef = batch
        .column_by_name(name)
        .ok_or_else(|| err(format!("column `{name}` is missing")))?;
    let cast = cast(col, &DataType::Float64).map_err(|e| err(format!("column `{name}`: {e}")))?;
    cast.as_any()
        .downcast_ref::<Float64Array>()
        .cloned()
        .ok_or_else(|| err(format!("column `{name}` is not numeric")))
}

/// The values of the numeric columns `names` in every row of `batches` (no NULLs).
fn float_rows<const N: usize>(
    batches: &[RecordBatch],
    names: [&str; N],
    table: &str,
) -> Result<Vec<[f64; N]>, ScoreError> {
    let mut rows = Vec::new();
    for batch in batches {
        let columns = names
            .iter()
            .map(|n| float_column(batch, n, table))
            .collect::<Result<Vec<_>, _>>()?;
        rows.extend((0..batch.num_rows()).map(|i| std::array::from_fn(|c| columns[c].value(i))));
    }
    Ok(rows)
}

/// Runs `sql` and collects its rows.
async fn collect(ctx: &SessionContext, sql: &str, table: &str) -> Result<Vec<RecordBatch>, ScoreError> {
    let err = |e: datafusion::error::DataFusionError| ScoreError::Input {
        table: table.to_string(),
        message: e.to_string(),
    };
    ctx.sql(sql).await.map_err(err)?.collect().await.map_err(err)
}

/// The model inputs, aggregated where the data is (on the cluster, with Ballista): only
/// the distinct BG/NBD triples `(x, t_x, T)` and the distinct repeat-buyer `(x, mean
/// spend)` pairs reach this process, each with its number of customers (the likelihoods
/// weight by it), in a fixed order. Also the number of customers.
async fn read_inputs(
    ctx: &SessionContext,
    table: &str,
) -> Result<(Vec<RfSummary>, Vec<SpendSummary>, u64), ScoreError> {
    let err = |message: String| ScoreError::Input {
        table: table.to_string(),
        message,
    };
    let counts = collect(
        ctx,
        &format!(
            "SELECT COUNT(*) AS customers, \
             SUM(CASE WHEN x IS NULL OR t_x IS NULL OR t_cal IS NULL THEN 1 ELSE 0 END) AS missing, \
             MIN(CASE WHEN x IS NULL OR t_x IS NULL OR t_cal IS NULL THEN CAST(customer_id AS VARCHAR) END) AS example \
             FROM {table}"
        ),
        table,
    )
    .await?;
    let first = counts.first().filter(|b| b.num_rows() == 1);
    let count = |name: &str| -> Result<u64, ScoreError> {
        let Some(batch) = first else { return Ok(0) };
        let c = float_column(batch, name, table)?;
        Ok(if c.is_null(0) { 0 } else { c.value(0) as u64 })
    };
    let (customers, missing) = (count("customers")?, count("missing")?);
    if missing > 0 {
        let example = first
            .and_then(|b| b.column_by_name("example"))
            .and_then(|c| cast(c, &DataType::Utf8).ok())
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<datafusion::arrow::array::StringArray>()
                    .map(|a| a.value(0).to_string())
            })
            .unwrap_or_default();
        return Err(err(format!(
            "{missing} row(s) with NULL x, t_x or t_cal (e.g. customer_id {example}): they must not be NULL"
        )));
    }
    // A first purchase on the as-of day (T = 0) has likelihood 1 whatever the parameters,
    // so such customers carry no information for the fit.
    let triples = collect(
        ctx,
        &format!(
            "SELECT CAST(x AS DOUBLE) AS x, CAST(t_x AS DOUBLE) AS t_x, CAST(t_cal AS DOUBLE) AS t_cal, \
             CAST(COUNT(*) AS DOUBLE) AS n FROM {table} WHERE t_cal > 0 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ),
        table,
    )
    .await?;
    let grouped = float_rows(&triples, ["x", "t_x", "t_cal", "n"], table)?
        .into_iter()
        .map(|[x, t_x, t_cal, weight]| RfSummary { x, t_x, t_cal, weight })
        .collect();
    let pairs = collect(
        ctx,
        &format!(
            "SELECT CAST(x AS DOUBLE) AS x, CAST(mean_repeat_spend AS DOUBLE) AS m, CAST(COUNT(*) AS DOUBLE) AS n \
             FROM {table} WHERE t_cal > 0 AND x > 0 AND mean_repeat_spend > 0 GROUP BY 1, 2 ORDER BY 1, 2"
        ),
        table,
    )
    .await?;
    let spend = float_rows(&pairs, ["x", "m", "n"], table)?
        .into_iter()
        .map(|[x, mean_spend, weight]| SpendSummary { x, mean_spend, weight })
        .collect();
    Ok((grouped, spend, customers))
}

/// A fit's statistics: log-likelihood, iterations, convergence.
type FitStats = (f64, usize, bool);

/// The report of one fitted model: its parameters by name and the fit's statistics.
fn fit_report(
    model: &str,
    params: &[(&str, f64)],
    stats: FitStats,
    ms: u64,
    customers: u64,
    distinct: u64,
) -> ModelReport {
    let (log_likelihood, iterations, converged) = stats;
    ModelReport {
        model: model.into(),
        params: params.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
        log_likelihood,
        iterations: iterations as u64,
        converged,
        fit_ms: ms,
        customers,
        distinct_inputs: distinct,
    }
}

fn bgnbd_report(fit: &BgNbdFit, ms: u64, customers: u64, distinct: u64) -> ModelReport {
    let p = &fit.params;
    let params = [("r", p.r), ("alpha", p.alpha), ("a", p.a), ("b", p.b)];
    fit_report(
        "bgnbd",
        &params,
        (fit.log_likelihood, fit.iterations, fit.converged),
        ms,
        customers,
        distinct,
    )
}

fn mbgnbd_report(fit: &MbgNbdFit, ms: u64, customers: u64, distinct: u64) -> ModelReport {
    let p = &fit.params;
    let params = [("r", p.r), ("alpha", p.alpha), ("a", p.a), ("b", p.b)];
    fit_report(
        "mbgnbd",
        &params,
        (fit.log_likelihood, fit.iterations, fit.converged),
        ms,
        customers,
        distinct,
    )
}

fn gamma_gamma_report(fit: &GammaGammaFit, ms: u64, customers: u64, distinct: u64) -> ModelReport {
    let p = &fit.params;
    let params = [("p", p.p), ("q", p.q), ("gamma", p.gamma)];
    fit_report(
        "gamma_gamma",
        &params,
        (fit.log_likelihood, fit.iterations, fit.converged),
        ms,
        customers,
        distinct,
    )
}

/// Fits the models on `MODEL_INPUT_STAGE`, registers the SQL functions and the
/// `model_params` table on `ctx`, and returns the metrics.
pub async fn fit_and_register(ctx: &SessionContext, settings: &ScoringSettings) -> Result<ModelMetrics, ScoreError> {
    let table = MODEL_INPUT_STAGE;
    let (triples, spend, customers) = read_inputs(ctx, table).await?;
    let started = Instant::now();
    let fitted = bgnbd::fit_bgnbd(&triples).and_then(fallback::reject_nbd_limit);
    let (purchases, bgnbd_report, nbd_report, bgnbd_fallback) = match fitted {
        Ok(fit) => {
            let report = bgnbd_report(
                &fit,
                started.elapsed().as_millis() as u64,
                customers,
                triples.len() as u64,
            );
            (Purchases::BgNbd(fit.params), Some(report), None, None)
        }
        Err(e) => {
            let reason = e.to_string();
            let started = Instant::now();
            let (params, method, reason, fit) = match fallback::fit_nbd(&triples) {
                Ok(fit) => (fit.params, "nbd", reason, Some(fit)),
                Err(nbd_error) => (
                    fallback::pooled(&triples),
                    "pooled_rate",
                    format!("{reason}; NBD: {nbd_error}"),
                    None,
                ),
            };
            let report = ModelReport {
                model: "nbd".into(),
                params: BTreeMap::from([("r".into(), params.r), ("alpha".into(), params.alpha)]),
                log_likelihood: fit.as_ref().map_or(0.0, |f| f.log_likelihood),
                iterations: fit.as_ref().map_or(0, |f| f.iterations as u64),
                converged: fit.as_ref().is_some_and(|f| f.converged),
                fit_ms: started.elapsed().as_millis() as u64,
                customers,
                distinct_inputs: triples.len() as u64,
            };
            let fallback = Fallback {
                model: "BG/NBD",
                method,
                reason,
            };
            tracing::warn!(table, "{fallback}");
            (Purchases::Nbd(params), None, Some(report), Some(fallback))
        }
    };
    let started = Instant::now();
    let (activity, mbgnbd_report, mbgnbd_fallback) = match mbgnbd::fit_mbgnbd(&triples) {
        Ok(fit) => {
            let report = mbgnbd_report(
                &fit,
                started.elapsed().as_millis() as u64,
                customers,
                triples.len() as u64,
            );
            (Some(fit.params), Some(report), None)
        }
        Err(e) => {
            let fallback = Fallback {
                model: "modified BG/NBD",
                method: if matches!(purchases, Purchases::BgNbd(_)) {
                    "bgnbd"
                } else {
                    "nbd"
                },
                reason: e.to_string(),
            };
            tracing::warn!(table, "{fallback}");
            (None, None, Some(fallback))
        }
    };
    let spend_customers = spend.iter().map(|s| s.weight).sum::<f64>() as u64;
    let gg_fit = if spend_customers < 3 {
        Err(format!(
            "{spend_customers} repeat buyers with spend; at least 3 are needed"
        ))
    } else {
        let started = Instant::now();
        gamma_gamma::fit_gamma_gamma(&spend)
            .map(|fit| (started.elapsed().as_millis() as u64, fit))
            .map_err(|e| e.to_string())
    };
    let (gg, gg_report, gg_fallback, correlation) = match gg_fit {
        Err(reason) => {
            let fallback = Fallback {
                model: "Gamma-Gamma",
                method: "own_mean_spend",
                reason,
            };
            tracing::warn!(table, "{fallback}");
            (None, None, Some(fallback), None)
        }
        Ok((ms, fit)) => {
            let report = gamma_gamma_report(&fit, ms, spend_customers, spend.len() as u64);
            let xs: Vec<f64> = spend.iter().map(|s| s.x).collect();
            let ms: Vec<f64> = spend.iter().map(|s| s.mean_spend).collect();
            let ws: Vec<f64> = spend.iter().map(|s| s.weight).collect();
            let corr = gamma_gamma::pearson_correlation(&xs, &ms, &ws)
                .ok()
                .filter(|c| c.is_finite());
            if let Some(c) = corr
                && c.abs() > 0.3
            {
                tracing::warn!(
                    correlation = c,
                    "frequency and spend are correlated; Gamma-Gamma assumes independence"
                );
            }
            (Some(fit.params), Some(report), None, corr)
        }
    };
    if settings.require_models
        && let Some(f) = bgnbd_fallback
            .as_ref()
            .or(mbgnbd_fallback.as_ref())
            .or(gg_fallback.as_ref())
    {
        return Err(ScoreError::ModelsRequired(f.clone()));
    }

    let mut hasher = Sha256::new();
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    for report in bgnbd_report
        .iter()
        .chain(nbd_report.as_ref())
        .chain(mbgnbd_report.as_ref())
        .chain(gg_report.as_ref())
    {
        for (k, v) in &report.params {
            hasher.update(k.as_bytes());
            hasher.update(v.to_bits().to_le_bytes());
        }
    }
    let model_version = hex::encode(&hasher.finalize()[..6]);

    let models = Models {
        purchases,
        gamma_gamma: gg,
        activity,
    };
    udf::register(ctx, models, settings.time_unit_days);
    let metrics = ModelMetrics {
        model_version,
        time_unit_days: settings.time_unit_days,
        bgnbd: bgnbd_report,
        bgnbd_fallback,
        nbd: nbd_report,
        mbgnbd: mbgnbd_report,
        mbgnbd_fallback,
        gamma_gamma: gg_report,
        gamma_gamma_fallback: gg_fallback,
        frequency_spend_correlation: correlation,
        churn: None,
    };
    register_params_table(ctx, &metrics).map_err(|e| ScoreError::Input {
        table: MODEL_PARAMS_TABLE.into(),
        message: e.to_string(),
    })?;
    tracing::info!(model_version = %metrics.model_version, "models fitted");
    Ok(metrics)
}

/// `model_params`: one row per model parameter, with the fit's statistics beside it.
/// Schema of the `model_params` table.
pub fn model_params_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("model_version", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("parameter", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("log_likelihood", DataType::Float64, false),
        Field::new("iterations", DataType::UInt64, false),
        Field::new("converged", DataType::Boolean, false),
        Field::new("fit_ms", DataType::UInt64, false),
        Field::new("customers", DataType::UInt64, false),
        Field::new("note", DataType::Utf8, true),
    ]))
}

/// Registers (or replaces) `model_params` on `ctx` from the metrics: one row per
/// parameter of BG/NBD, Gamma-Gamma and the churn model. A BG/NBD fallback is the rows of
/// the `nbd` parameters standing in, a Gamma-Gamma fallback one row `gamma_gamma` /
/// `fallback`, a churn fallback one row `churn_mbgnbd` / `fallback`, each with what fell
/// back and why in `note`.
pub fn register_params_table(ctx: &SessionContext, m: &ModelMetrics) -> datafusion::error::Result<()> {
    let schema = model_params_schema();
    // A model that fell back is one `fallback` row with what stood in and why in `note`.
    let fallback = |model: &str, customers: u64, note: &str| {
        fit_report(model, &[("fallback", 1.0)], (0.0, 0, false), 0, customers, 0).with_note(note)
    };
    let churn_fallback = m.churn.as_ref().and_then(|c| {
        c.fallback_reason
            .as_ref()
            .map(|reason| fallback("churn_mbgnbd", c.training_customers, reason))
    });
    let churn_fit = m.churn.as_ref().and_then(|c| c.fit.clone()).map(|r| (r, None));
    let nbd = m
        .nbd
        .clone()
        .map(|r| (r, m.bgnbd_fallback.as_ref().map(ToString::to_string)));
    let spend_fallback = m
        .gamma_gamma_fallback
        .as_ref()
        .map(|f| fallback("gamma_gamma", 0, &f.to_string()));
    let activity_fallback = m
        .mbgnbd_fallback
        .as_ref()
        .map(|f| fallback("mbgnbd", 0, &f.to_string()));
    let reports: Vec<(ModelReport, Option<String>)> = m
        .bgnbd
        .iter()
        .chain(m.mbgnbd.as_ref())
        .chain(m.gamma_gamma.as_ref())
        .map(|r| (r.clone(), None))
        .chain(nbd)
        .chain(spend_fallback)
        .chain(activity_fallback)
        .chain(churn_fit)
        .chain(churn_fallback)
        .collect();
    let rows: Vec<(&ModelReport, &String, f64, Option<&str>)> = reports
        .iter()
        .flat_map(|(r, note)| r.params.iter().map(move |(k, v)| (r, k, *v, note.as_deref())))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![m.model_version.as_str(); rows.len()])),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.model.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.as_str()))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.0.log_likelihood))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0.iterations))),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.0.converged)))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0.fit_ms))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0.customers))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.3))),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    ctx.deregister_table(MODEL_PARAMS_TABLE)?;
    ctx.register_table(
        MODEL_PARAMS_TABLE,
        Arc::new(MemTable::try_new(schema, vec![vec![batch]])?),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    /// customer_id, x, t_x, t_cal, mean_repeat_spend.
    type Row<'a> = (&'a str, Option<f64>, f64, f64, Option<f64>);

    fn input(rows: &[Row]) -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("x", DataType::Float64, true),
            Field::new("t_x", DataType::Float64, false),
            Field::new("t_cal", DataType::Float64, false),
            Field::new("mean_repeat_spend", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.4))),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new();
        ctx.register_batch("input", batch).unwrap();
        ctx
    }

    #[tokio::test]
    async fn inputs_arrive_grouped_with_customer_counts_in_a_fixed_order() {
        let ctx = input(&[
            ("C3", Some(2.0), 10.0, 30.0, Some(5.0)),
            ("C1", Some(0.0), 0.0, 30.0, None),
            ("C2", Some(2.0), 10.0, 30.0, Some(5.0)),
            ("C4", Some(0.0), 0.0, 30.0, None),
            ("C5", Some(1.0), 4.0, 20.0, Some(7.5)),
            ("C6", Some(0.0), 0.0, 0.0, None), // first purchase on the as-of day
        ]);
        let (triples, spend, customers) = read_inputs(&ctx, "input").await.unwrap();
        assert_eq!(customers, 6);
        let t: Vec<(f64, f64, f64, f64)> = triples.iter().map(|r| (r.x, r.t_x, r.t_cal, r.weight)).collect();
        assert_eq!(
            t,
            [(0.0, 0.0, 30.0, 2.0), (1.0, 4.0, 20.0, 1.0), (2.0, 10.0, 30.0, 2.0)]
        );
        let s: Vec<(f64, f64, f64)> = spend.iter().map(|r| (r.x, r.mean_spend, r.weight)).collect();
        assert_eq!(s, [(1.0, 7.5, 1.0), (2.0, 5.0, 2.0)]);
    }

    #[tokio::test]
    async fn a_null_input_is_an_error_naming_a_customer() {
        let ctx = input(&[("C1", Some(1.0), 2.0, 9.0, Some(3.0)), ("C9", None, 2.0, 9.0, None)]);
        let err = read_inputs(&ctx, "input").await.unwrap_err().to_string();
        assert!(
            err.contains("1 row(s)") && err.contains("C9") && err.contains("input"),
            "{err}"
        );
    }
}
