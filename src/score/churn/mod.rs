//! The churn early-warning model: trained at score time on the customer base's own
//! history, from every signal of the three exports.
//!
//! Labels come from the data: with `H = scoring.churn_holdout_days`, the validation cut-off
//! is `c1 = as_of - H` and the training cut-off `c2 = as_of - 2H`. The stage chain that
//! builds [`FEATURES_STAGE`] (staging, `fct_customer`, `customer_model_input` with its own
//! BG/NBD fit) is re-run as of each cut-off in a scratch session, so the features are the
//! same SQL as the ones scored. A customer is labelled churned when they bought nothing in
//! the `H` days after the cut-off.
//!
//! Both learners adjust the purchase model rather than replace it ([`activity`]): they
//! start from each buyer's modified BG/NBD `logit(p_alive)` and move it by the signals
//! (tickets, CSAT, e-mail engagement, returns, spend trend, ...), fitted to the labels
//! through `P(no purchase) = 1 - pi (1 - s)` (a lapsed buyer never buys; an active one
//! stays silent with the purchase model's probability `s`). So one fit gives both
//! published columns: `churn_risk = 1 - pi` (lapsed for good) and `p_no_purchase_90d`.
//!
//! L2-regularised logistic regression and gradient-boosted trees are fitted on the
//! training snapshot (c2, labels up to c1). The validation snapshot (c1, labels up to
//! as_of) is split in two fixed halves by customer id: on the selection half the learner
//! with the higher AUC wins if it beats the fair baseline there, the purchase model's own
//! probability of the same label (the modified BG/NBD's P(no purchase in H), feature
//! `p_no_purchase`); on the calibration half Platt scaling of `pi` is fitted; the deployed
//! model's calibration (Brier, reliability bins) is then measured on the selection half.
//! The deployed model is exactly the one selected and calibrated (no refit). Otherwise, or
//! with too little history, both columns stay the purchase model's and the manifest says
//! why.
//!
//! The result is the table [`PREDICTIONS_TABLE`] (customer_id, churn_risk, p_no_purchase,
//! churn_reasons, churn_model) that `customer_scores` joins.

pub mod activity;
pub mod features;
pub mod gbt;
mod linalg;
pub mod logistic;
pub mod platt;
pub mod report;
mod scorer;
mod slices;
pub mod treeshap;

pub use report::{ChurnError, ChurnReport, LearnerScore};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::{Days, NaiveDate};
use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;

use self::activity::Anchor;
use self::features::{Encoding, FeatureRows, NUMERIC, P_NO_PURCHASE};
use super::ScoringSettings;
use super::backtest;
use super::models::{self, MODEL_INPUT_STAGE};
use super::report::ModelReport;
use crate::storage::Layout;
use crate::transform::{Project, Provided, dag};

/// The stage holding the model's features; the churn step runs as soon as it is built.
pub const FEATURES_STAGE: &str = "churn_features";
/// The table the churn step registers: one row per scored buyer.
pub const PREDICTIONS_TABLE: &str = "churn_predictions";
/// The orders the labels are counted from: those with `is_purchase` (not cancelled or
/// returned in full, docs/returns.md).
const ORDERS_STAGE: &str = "int_orders";
/// Fewest customers in the training and in the validation snapshot.
pub const MIN_CUSTOMERS: usize = 100;
/// Fewest customers of each class (churned, purchased) in either snapshot.
pub const MIN_CLASS: usize = 20;
/// L2 penalty of the logistic regression (standardised features, summed log-likelihood).
const LOGISTIC_LAMBDA: f64 = 1.0;
/// The baseline's name in the validation scores: the modified BG/NBD's P(no purchase).
pub const BASELINE: &str = "mbgnbd_p_no_purchase";
/// Churn reasons shown per customer at most.
pub const MAX_REASONS: usize = 3;

/// Logistic function.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// A fitted learner.
enum Learner {
    Logistic(logistic::Logistic),
    Gbt(gbt::Gbt),
}

impl Learner {
    fn name(&self) -> &'static str {
        match self {
            Learner::Logistic(_) => "logistic",
            Learner::Gbt(_) => "gbt",
        }
    }

    /// The adjustment of the logit of P(alive) for an encoded row.
    fn logit(&self, row: &[f64]) -> f64 {
        match self {
            Learner::Logistic(m) => m.logit(row),
            Learner::Gbt(m) => m.logit(row),
        }
    }

    /// [`Learner::logit`] of each encoded row of `x` (row after row, `features` columns
    /// each), and each column's move of it (row after row).
    fn score_rows(&self, x: &[f64], features: usize) -> (Vec<f64>, Vec<f64>) {
        match self {
            Learner::Logistic(m) => {
                let rows = x.chunks_exact(features.max(1));
                let logits = rows.clone().map(|row| m.logit(row)).collect();
                (logits, rows.flat_map(|row| m.contributions(row)).collect())
            }
            Learner::Gbt(m) => m.score_rows(x, features),
        }
    }

    fn fit(kind: &str, x: &[Vec<f64>], anchors: &[Anchor], y: &[bool]) -> Result<Learner, ChurnError> {
        Ok(match kind {
            "logistic" => Learner::Logistic(logistic::fit(x, anchors, y, LOGISTIC_LAMBDA)?),
            _ => Learner::Gbt(gbt::fit(x, anchors, y, gbt::GbtSettings::default())?),
        })
    }
}

/// Schema of [`PREDICTIONS_TABLE`].
pub fn predictions_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("churn_risk", DataType::Float64, false),
        Field::new("p_no_purchase", DataType::Float64, false),
        Field::new("churn_reasons", DataType::Utf8, false),
        Field::new("churn_model", DataType::Utf8, false),
    ]))
}

/// How the as-of-cut-off snapshots run.
#[derive(Debug, Clone, Copy)]
pub struct Snapshots<'a> {
    /// Folder for the snapshots' tables (removed after each snapshot).
    pub scratch: &'a Path,
    /// Stages of a wave that run at once (`engine.stage_parallelism`).
    pub parallel: usize,
}

/// How a snapshot runs the stages of [`FEATURES_STAGE`]'s chain (see [`Chain::plan`]).
struct Chain {
    /// When `sampled`, the stages [`MODEL_INPUT_STAGE`] reads, in order: registered as
    /// views, so that they are computed inside its query (their sums are exact, so the
    /// order their rows arrive in does not matter) and not written out.
    upstream: Vec<crate::transform::Stage>,
    /// The stages run next, in waves of stages that do not depend on each other (see
    /// [`dag::waves`]), each written to the snapshot's folder: every stage of the chain
    /// but [`FEATURES_STAGE`], or when `sampled`, [`MODEL_INPUT_STAGE`] alone (the purchase
    /// models' refit needs every buyer).
    waves: Vec<Vec<crate::transform::Stage>>,
    /// When `sampled`, the rest of the chain but [`FEATURES_STAGE`], in order: registered as
    /// views, so that the sample's filter on [`FEATURES_STAGE`] reaches into them.
    deferred: Vec<crate::transform::Stage>,
    /// [`FEATURES_STAGE`].
    features: crate::transform::Stage,
    /// Whether the features are computed for the sample of buyers only.
    sampled: bool,
    /// Stages of a wave that run at once.
    parallel: usize,
}

impl Chain {
    /// The snapshot plan. With `sampled` (the caller's choice: more buyers than the
    /// sample, a local engine), the features are computed for the learners' sample only,
    /// provided the chain holds [`MODEL_INPUT_STAGE`]; otherwise every stage runs whole.
    /// `None` without [`FEATURES_STAGE`].
    fn plan(project: &Project, provided: &Provided, order: &[String], sampled: bool, parallel: usize) -> Option<Chain> {
        let names = chain(project, provided, order, FEATURES_STAGE);
        let features = project.stages.get(FEATURES_STAGE)?.clone();
        let sampled = sampled && names.iter().any(|n| n == MODEL_INPUT_STAGE);
        let stage = |n: &String| project.stages.get(n).cloned();
        // Sampled: what the model input reads is views, the model input is written, and the
        // rest waits for the sample. Otherwise every stage is written.
        let (upstream, written) = if sampled {
            let mut upstream = chain(project, provided, order, MODEL_INPUT_STAGE);
            upstream.retain(|n| n != MODEL_INPUT_STAGE);
            (upstream, vec![MODEL_INPUT_STAGE.to_string()])
        } else {
            (Vec::new(), names.clone())
        };
        let waves = dag::waves(project, provided, &written)
            .into_iter()
            .map(|wave| {
                wave.iter()
                    .filter(|n| *n != FEATURES_STAGE)
                    .filter_map(stage)
                    .collect::<Vec<_>>()
            })
            .filter(|wave| !wave.is_empty())
            .collect();
        let deferred = names
            .iter()
            .filter(|n| !upstream.contains(n) && !written.contains(n) && *n != FEATURES_STAGE)
            .filter_map(stage)
            .collect();
        Some(Chain {
            upstream: upstream.iter().filter_map(stage).collect(),
            waves,
            deferred,
            features,
            sampled,
            parallel,
        })
    }
}

/// The stages `target` needs, itself included, in `order`.
fn chain(project: &Project, provided: &Provided, order: &[String], target: &str) -> Vec<String> {
    let mut needed = BTreeSet::from([target.to_string()]);
    let mut todo = vec![target.to_string()];
    while let Some(name) = todo.pop() {
        if let Some(stage) = project.stages.get(&name) {
            for dep in dag::dependencies(project, provided, stage) {
                if needed.insert(dep.to_string()) {
                    todo.push(dep.to_string());
                }
            }
        }
    }
    order.iter().filter(|n| needed.contains(*n)).cloned().collect()
}

/// A scratch session for a snapshot: it shares the run's registered tables (extracted
/// tables, seeds, stages built so far), engine settings and memory pool.
async fn scratch_session(ctx: &SessionContext) -> Result<SessionContext, ChurnError> {
    let snap = crate::engine::scratch_context(ctx);
    let state = ctx.state();
    let options = state.config_options();
    let schema = state
        .catalog_list()
        .catalog(&options.catalog.default_catalog)
        .and_then(|c| c.schema(&options.catalog.default_schema))
        .ok_or_else(|| ChurnError::Input {
            table: "(session)".into(),
            message: "the run's session has no default schema".into(),
        })?;
    for name in schema.table_names() {
        if let Some(table) = schema.table(&name).await.map_err(input_err(&name))? {
            snap.register_table(name.as_str(), table).map_err(input_err(&name))?;
        }
    }
    Ok(snap)
}

fn input_err(table: &str) -> impl Fn(datafusion::error::DataFusionError) -> ChurnError {
    let table = table.to_string();
    move |e| ChurnError::Input {
        table: table.clone(),
        message: e.to_string(),
    }
}

/// The feature rows as of `day`: the stage chain re-run in the scratch session `snap`
/// (see [`scratch_session`]), BG/NBD fitted as of `day` too. Each stage's result is written
/// to Parquet under `scratch/<day>` (not held in memory: at a million customers the chain's
/// tables are gigabytes) and read from there by the next stages; the folder is removed
/// afterwards. Each stage's time is logged.
async fn snapshot(
    snap: SessionContext,
    chain: &Chain,
    settings: &ScoringSettings,
    day: NaiveDate,
    scratch: &Path,
) -> Result<FeatureRows, ChurnError> {
    let folder = scratch.join(day.to_string());
    let rows = snapshot_into(&snap, chain, settings, day, &folder).await;
    drop(snap);
    if let Err(e) = std::fs::remove_dir_all(&folder)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(folder = %folder.display(), error = %e, "cannot remove a churn snapshot's scratch folder");
    }
    rows
}

/// Runs `stage` as of `day` in the snapshot session and writes its table under `folder`
/// (a view is registered as a view instead).
async fn snapshot_stage(
    snap: &SessionContext,
    stage: &crate::transform::Stage,
    params: &HashMap<String, ScalarValue>,
    folder: &Path,
    day: NaiveDate,
) -> Result<(), ChurnError> {
    if stage.spec.materialized == crate::transform::spec::Materialized::View {
        // Computed on read, as in the run itself (a source's current view, read once).
        return register_snapshot_view(snap, stage, params).await;
    }
    let started = Instant::now();
    let df = stage_query(snap, stage, params).await?;
    crate::transform::runner::materialize(snap, &stage.name, df, folder, &Layout::default())
        .await
        .map_err(|e| ChurnError::Input {
            table: stage.name.clone(),
            message: e.to_string(),
        })?;
    tracing::info!(%day, stage = %stage.name, ms = started.elapsed().as_millis() as u64, "churn snapshot stage done");
    Ok(())
}

/// Registers `stage` as a view of the snapshot session, with the snapshot's parameters.
async fn register_snapshot_view(
    snap: &SessionContext,
    stage: &crate::transform::Stage,
    params: &HashMap<String, ScalarValue>,
) -> Result<(), ChurnError> {
    let df = stage_query(snap, stage, params).await?;
    crate::transform::runner::register_view(snap, &stage.name, df).map_err(input_err(&stage.name))
}

/// `stage`'s query in the snapshot session, with the snapshot's parameters.
async fn stage_query(
    snap: &SessionContext,
    stage: &crate::transform::Stage,
    params: &HashMap<String, ScalarValue>,
) -> Result<datafusion::prelude::DataFrame, ChurnError> {
    snap.sql(&stage.sql)
        .await
        .and_then(|df| df.with_param_values(params.clone()))
        .map_err(input_err(&stage.name))
}

async fn snapshot_into(
    snap: &SessionContext,
    chain: &Chain,
    settings: &ScoringSettings,
    day: NaiveDate,
    folder: &Path,
) -> Result<FeatureRows, ChurnError> {
    let started = Instant::now();
    let params = settings.sql_params(day);
    for stage in &chain.upstream {
        register_snapshot_view(snap, stage, &params).await?;
    }
    for wave in &chain.waves {
        // The stages of a wave depend on none of each other: up to `parallel` at once, each
        // a task of its own on the runtime's worker threads.
        let names: Vec<&str> = wave.iter().map(|s| s.name.as_str()).collect();
        let results = crate::engine::run_side_by_side(&names, chain.parallel, |i| {
            let (snap, stage, params, folder) = (snap.clone(), wave[i].clone(), params.clone(), folder.to_path_buf());
            async move { snapshot_stage(&snap, &stage, &params, &folder, day).await }
        })
        .await;
        for (result, stage) in results.into_iter().zip(wave) {
            result.map_err(|e| ChurnError::Input {
                table: stage.name.clone(),
                message: format!("the stage task stopped: {e}"),
            })??;
        }
        if wave.iter().any(|s| s.name == MODEL_INPUT_STAGE) {
            let fit_started = Instant::now();
            models::fit_and_register(snap, settings)
                .await
                .map_err(|e| ChurnError::SnapshotFit {
                    day,
                    message: e.to_string(),
                })?;
            tracing::info!(%day, ms = fit_started.elapsed().as_millis() as u64, "churn snapshot purchase models fitted");
        }
    }
    let mut filter = None;
    if chain.sampled {
        if let Some(ids) = draw_sample(snap, settings.churn_training_customers).await? {
            tracing::info!(%day, customers = ids.len(), "churn snapshot features computed for the sample only");
            let (udf, predicate) = features::in_sample(ids);
            snap.register_udf(udf);
            filter = Some(predicate);
        }
        for stage in &chain.deferred {
            register_snapshot_view(snap, stage, &params).await?;
        }
    }
    let stage = &chain.features;
    let stage_started = Instant::now();
    let df = stage_query(snap, stage, &params).await?;
    let sampled = filter.is_some();
    let df = match filter {
        Some(predicate) => df.filter(predicate),
        None => Ok(df),
    }
    .and_then(|df| features::sample(df, settings.churn_training_customers))
    .map_err(input_err(&stage.name))?;
    let df = if sampled {
        let (df, slices) = slices::share_scans(snap, df, features::IN_SAMPLE_FUNCTION, &folder.join("slices")).await?;
        for (table, rows) in &slices {
            tracing::info!(%day, %table, rows, "churn snapshot reads one slice of the sample's rows");
        }
        df
    } else {
        df
    };
    let rows = features::read(df, &format!("{FEATURES_STAGE} as of {day}")).await?;
    tracing::info!(%day, stage = %stage.name, ms = stage_started.elapsed().as_millis() as u64, "churn snapshot stage done");
    tracing::info!(%day, ms = started.elapsed().as_millis() as u64, "churn snapshot done");
    Ok(rows)
}

/// The rows of the run's [`MODEL_INPUT_STAGE`] (its buyers); 0 without the stage.
async fn buyers(ctx: &SessionContext) -> Result<usize, ChurnError> {
    match ctx.table(MODEL_INPUT_STAGE).await {
        Ok(df) => df.count().await.map_err(input_err(MODEL_INPUT_STAGE)),
        Err(_) => Ok(0),
    }
}

/// The learners' sample as of a snapshot, drawn from its [`MODEL_INPUT_STAGE`] (its
/// buyers) as [`features::sample`] picks: the `customers` ids with the smallest hash;
/// `None` when there are no more buyers than that.
async fn draw_sample(snap: &SessionContext, customers: usize) -> Result<Option<HashSet<String>>, ChurnError> {
    use datafusion::logical_expr::col;
    let df = snap
        .table(MODEL_INPUT_STAGE)
        .await
        .and_then(|df| df.select(vec![col("customer_id")]))
        .and_then(|df| df.filter(col("customer_id").is_not_null()))
        .map_err(input_err(MODEL_INPUT_STAGE))?;
    let mut pick = features::SmallestHashes::new(customers);
    for_each_id(df, MODEL_INPUT_STAGE, |id| pick.push(id)).await?;
    if pick.seen() <= customers {
        return Ok(None);
    }
    Ok(Some(pick.into_ids().into_iter().collect()))
}

/// The customers of `rows` with a purchase in the `days` days after `day` (up to the
/// as-of day). The query's ids stream past; only those of `rows` are kept.
async fn purchased_after(
    ctx: &SessionContext,
    settings: &ScoringSettings,
    day: NaiveDate,
    days: u32,
    rows: &FeatureRows,
) -> Result<HashSet<String>, ChurnError> {
    let bound = |d: NaiveDate| settings.sql_params(d).remove("as_of_end").unwrap_or(ScalarValue::Null);
    let until = day.checked_add_days(Days::new(u64::from(days))).unwrap_or(day);
    let params = HashMap::from([("after".to_string(), bound(day)), ("until".to_string(), bound(until))]);
    let sql = format!(
        "SELECT DISTINCT customer_id FROM {ORDERS_STAGE} \
         WHERE is_purchase AND order_ts >= $after AND order_ts < $until AND customer_id IS NOT NULL"
    );
    let df = ctx
        .sql(&sql)
        .await
        .and_then(|df| df.with_param_values(params))
        .map_err(input_err(ORDERS_STAGE))?;
    let wanted: HashSet<&str> = rows.ids.iter().map(String::as_str).collect();
    let mut out = HashSet::new();
    for_each_id(df, ORDERS_STAGE, |id| {
        if wanted.contains(id) {
            out.insert(id.to_string());
        }
    })
    .await?;
    Ok(out)
}

/// Streams `df` (read from `table`) and calls `f` with each non-NULL value of its first
/// column as text: the customer ids of a query, without holding its result.
async fn for_each_id(df: DataFrame, table: &str, mut f: impl FnMut(&str)) -> Result<(), ChurnError> {
    let err = input_err(table);
    let mut stream = df.execute_stream().await.map_err(&err)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(&err)?;
        let ids = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8).map_err(|e| err(e.into()))?;
        let ids = ids
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| ChurnError::Input {
                table: table.to_string(),
                message: "customer_id is not text".into(),
            })?;
        ids.iter().flatten().for_each(&mut f);
    }
    Ok(())
}

/// "No purchase after the cut-off" for every row.
fn labels(rows: &FeatureRows, purchased: &HashSet<String>) -> Vec<bool> {
    rows.ids.iter().map(|id| !purchased.contains(id)).collect()
}

fn churn_rate(y: &[bool]) -> Option<f64> {
    (!y.is_empty()).then(|| y.iter().filter(|v| **v).count() as f64 / y.len() as f64)
}

/// Why a labelled snapshot is too small to learn from, if it is.
fn too_small(what: &str, day: NaiveDate, y: &[bool]) -> Option<String> {
    let churned = y.iter().filter(|v| **v).count();
    let stayed = y.len() - churned;
    if y.len() < MIN_CUSTOMERS || churned < MIN_CLASS || stayed < MIN_CLASS {
        Some(format!(
            "the {what} snapshot as of {day} has {} buyers ({churned} churned, {stayed} purchased); \
             the churn model needs at least {MIN_CUSTOMERS} and {MIN_CLASS} of each class",
            y.len()
        ))
    } else {
        None
    }
}

/// The contributions that raise the churn risk (lower P(alive)) as reason codes, largest
/// first (one-hot channel columns count as the channel). `contributions` are moves of the
/// churn logit, `-` those of the logit of P(alive). A numeric feature is a reason only
/// when its value is also on its risky side of the training mean (`means`, see
/// [`features::Risk`]): a tree's path credit can point either way, a reason must not.
fn reasons(contributions: &[f64], values: &[f64], means: &[f64], channel: &str) -> String {
    let n = NUMERIC.len();
    let channel_total: f64 = contributions[n..].iter().sum();
    // Only the chosen few are formatted (and ties, to order them by their text): this runs
    // once per scored buyer.
    let text = |j: usize| {
        if j == n {
            format!("{}={channel}", features::CHANNEL)
        } else {
            features::reason(j, values[j])
        }
    };
    let mut parts: Vec<(f64, usize)> = contributions[..n]
        .iter()
        .copied()
        .chain(std::iter::once(channel_total))
        .enumerate()
        .map(|(j, c)| (c, j))
        .filter(|(c, j)| *c > 1e-6 && (*j == n || NUMERIC[*j].2.allows(values[*j], means[*j])))
        .collect();
    parts.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| text(a.1).cmp(&text(b.1))));
    parts
        .into_iter()
        .take(MAX_REASONS)
        .map(|(_, j)| text(j))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the churn step after [`FEATURES_STAGE`] was built on `ctx` as of `as_of`:
/// trains and picks the model (or falls back), registers [`PREDICTIONS_TABLE`], and
/// returns the report.
pub async fn fit_and_register(
    ctx: &SessionContext,
    project: &Project,
    provided: &Provided,
    order: &[String],
    settings: &ScoringSettings,
    as_of: NaiveDate,
    snapshots: Snapshots<'_>,
) -> Result<ChurnReport, ChurnError> {
    let Snapshots { scratch, parallel } = snapshots;
    let started = Instant::now();
    let h = settings.churn_holdout_days;
    let back = |d: NaiveDate| d.checked_sub_days(Days::new(u64::from(h))).unwrap_or(NaiveDate::MIN);
    let (c1, c2) = (back(as_of), back(back(as_of)));
    let mut report = ChurnReport {
        model: "mbgnbd".into(),
        fallback_reason: None,
        holdout_days: h,
        training_cutoff: c2.to_string(),
        validation_cutoff: c1.to_string(),
        training_customers: 0,
        training_churn_rate: None,
        validation_customers: 0,
        validation_churn_rate: None,
        selection_customers: 0,
        calibration_customers: 0,
        validation: Vec::new(),
        platt_a: None,
        platt_b: None,
        calibrated_brier: None,
        calibration: Vec::new(),
        fit: None,
        scored_customers: 0,
    };
    // The run's own buyers foretell whether a snapshot's will outnumber the sample.
    let sampled = settings.churn_sampled_snapshots
        && !crate::engine::is_distributed(ctx)
        && buyers(ctx).await? > settings.churn_training_customers;
    let chain = Chain::plan(project, provided, order, sampled, parallel).ok_or_else(|| ChurnError::Input {
        table: FEATURES_STAGE.into(),
        message: "the stage is not in the run".into(),
    })?;
    let outcome = train(ctx, &chain, settings, (c1, c2), scratch, &mut report).await?;
    match outcome {
        Err(reason) => {
            tracing::warn!(%reason, "churn model not used: p_no_purchase_90d is the purchase model's");
            report.fallback_reason = Some(reason);
            report.model = "mbgnbd".into();
            register_empty(ctx).map_err(input_err(PREDICTIONS_TABLE))?;
        }
        Ok(model) => {
            report.model = model.learner.name().to_string();
            report.scored_customers = score(ctx, Arc::new(model), scratch).await?;
        }
    }
    if let Some(fit) = report.fit.as_mut() {
        fit.fit_ms = started.elapsed().as_millis() as u64;
    }
    tracing::info!(model = %report.model, ms = started.elapsed().as_millis() as u64, "churn model done");
    Ok(report)
}

/// The trained model; or why there is none.
type Trained = Result<scorer::Model, String>;

/// Registers an empty [`PREDICTIONS_TABLE`]: every buyer's `churn_risk` is then BG/NBD's.
fn register_empty(ctx: &SessionContext) -> datafusion::error::Result<()> {
    let schema = predictions_schema();
    ctx.deregister_table(PREDICTIONS_TABLE)?;
    ctx.register_table(
        PREDICTIONS_TABLE,
        Arc::new(MemTable::try_new(
            Arc::clone(&schema),
            vec![vec![RecordBatch::new_empty(schema)]],
        )?),
    )?;
    Ok(())
}

/// Scores the as-of [`FEATURES_STAGE`] with `model`: the rows stream through the model (a
/// local query, also under a distributed engine: the model lives in this process) into
/// `scratch/churn_predictions/`, registered as [`PREDICTIONS_TABLE`]. Returns the rows
/// scored.
async fn score(ctx: &SessionContext, model: Arc<scorer::Model>, scratch: &Path) -> Result<u64, ChurnError> {
    let err = input_err(PREDICTIONS_TABLE);
    let features = ctx
        .table_provider(FEATURES_STAGE)
        .await
        .map_err(input_err(FEATURES_STAGE))?;
    let here = SessionContext::new_with_config_rt(ctx.copied_config(), ctx.runtime_env());
    let df = here.read_table(features).map_err(input_err(FEATURES_STAGE))?;
    let df = scorer::predictions(df, model).map_err(&err)?;
    let written = crate::transform::runner::materialize(ctx, PREDICTIONS_TABLE, df, scratch, &Layout::default())
        .await
        .map_err(|e| ChurnError::Input {
            table: PREDICTIONS_TABLE.into(),
            message: e.to_string(),
        })?;
    Ok(written.rows)
}

/// Trains on snapshots of `stages` (the chain upstream of [`FEATURES_STAGE`]) as of the
/// cut-offs.
async fn train(
    ctx: &SessionContext,
    chain: &Chain,
    settings: &ScoringSettings,
    (c1, c2): (NaiveDate, NaiveDate),
    scratch: &Path,
    report: &mut ChurnReport,
) -> Result<Trained, ChurnError> {
    let h = settings.churn_holdout_days;
    // The two snapshots run side by side when stages may (`engine.stage_parallelism`): a
    // snapshot's queries run on one partition each, so one snapshot alone keeps about one
    // core busy. They share the engine's memory pool, where every sort and aggregation is
    // capped ([`crate::engine::memory`]). The training snapshot's outcome is looked at
    // first, as when they ran one after the other.
    let (training, validation) = if chain.parallel > 1 {
        let (training, validation) = futures::join!(
            async { snapshot(scratch_session(ctx).await?, chain, settings, c2, scratch).await },
            async { snapshot(scratch_session(ctx).await?, chain, settings, c1, scratch).await },
        );
        (training, Some(validation))
    } else {
        (
            snapshot(scratch_session(ctx).await?, chain, settings, c2, scratch).await,
            None,
        )
    };
    let training = match training {
        Err(e @ ChurnError::SnapshotFit { .. }) => return Ok(Err(e.to_string())),
        other => other?,
    };
    let y_train = labels(&training, &purchased_after(ctx, settings, c2, h, &training).await?);
    report.training_customers = y_train.len() as u64;
    report.training_churn_rate = churn_rate(&y_train);
    if let Some(why) = too_small("training", c2, &y_train) {
        return Ok(Err(why));
    }
    let validation = match validation {
        Some(validation) => validation,
        None => snapshot(scratch_session(ctx).await?, chain, settings, c1, scratch).await,
    };
    let validation = match validation {
        Err(e @ ChurnError::SnapshotFit { .. }) => return Ok(Err(e.to_string())),
        other => other?,
    };
    let y_valid = labels(&validation, &purchased_after(ctx, settings, c1, h, &validation).await?);
    report.validation_customers = y_valid.len() as u64;
    report.validation_churn_rate = churn_rate(&y_valid);
    if let Some(why) = too_small("validation", c1, &y_valid) {
        return Ok(Err(why));
    }

    // Selection and calibration see different buyers: a fixed half each, by id.
    let (select, calibrate): (Vec<usize>, Vec<usize>) =
        (0..validation.ids.len()).partition(|&i| selects(&validation.ids[i]));
    report.selection_customers = select.len() as u64;
    report.calibration_customers = calibrate.len() as u64;
    let pick = |v: &[f64], rows: &[usize]| -> Vec<f64> { rows.iter().map(|&i| v[i]).collect() };
    let picked = |rows: &[usize]| -> Vec<bool> { rows.iter().map(|&i| y_valid[i]).collect() };
    let (y_select, y_calibrate) = (picked(&select), picked(&calibrate));
    if let Some(why) = too_small("selection half of the validation", c1, &y_select)
        .or_else(|| too_small("calibration half of the validation", c1, &y_calibrate))
    {
        return Ok(Err(why));
    }

    // The fair baseline: the purchase model's own probability of the same label.
    let baseline: Vec<f64> = validation.values.iter().map(|v| v[P_NO_PURCHASE]).collect();
    let baseline = pick(&baseline, &select);
    let baseline_auc = backtest::auc(&baseline, &y_select);
    report.validation.push(LearnerScore {
        learner: BASELINE.into(),
        auc: baseline_auc,
        brier: backtest::brier(&baseline, &y_select),
    });
    let anchors_train: Vec<Anchor> = training.values.iter().map(|v| Anchor::of(v)).collect();
    let anchors_valid: Vec<Anchor> = validation.values.iter().map(|v| Anchor::of(v)).collect();
    let encoding = Encoding::of(&training);
    let (x_train, x_valid) = (encoding.encode(&training), encoding.encode(&validation));
    let mut best: Option<(f64, Learner, Vec<f64>)> = None;
    for kind in ["logistic", "gbt"] {
        let fit_started = Instant::now();
        let learner = Learner::fit(kind, &x_train, &anchors_train, &y_train)?;
        tracing::info!(
            learner = kind,
            ms = fit_started.elapsed().as_millis() as u64,
            "churn learner fitted"
        );
        // eta (logit of the adjusted P(alive)) of every validation buyer.
        let etas: Vec<f64> = x_valid
            .iter()
            .zip(&anchors_valid)
            .map(|(r, a)| a.offset + learner.logit(r))
            .collect();
        let q: Vec<f64> = select.iter().map(|&i| anchors_valid[i].no_purchase(etas[i])).collect();
        let auc = backtest::auc(&q, &y_select);
        report.validation.push(LearnerScore {
            learner: kind.into(),
            auc,
            brier: backtest::brier(&q, &y_select),
        });
        if let Some(a) = auc
            && best.as_ref().is_none_or(|(b, _, _)| a > *b)
        {
            best = Some((a, learner, etas));
        }
    }
    let Some((auc, learner, etas)) = best else {
        return Ok(Err("no learner has a validation AUC".into()));
    };
    let kind = learner.name();
    if let Some(base) = baseline_auc
        && auc <= base
    {
        return Ok(Err(format!(
            "the best learner ({kind}, AUC {auc:.3}) does not beat the purchase model's own \
             P(no purchase) (AUC {base:.3}) on the window after {c1}"
        )));
    }
    // Platt scaling on the calibration half, which chose nothing.
    let calibration_anchors: Vec<Anchor> = calibrate.iter().map(|&i| anchors_valid[i]).collect();
    let (a, b) = platt::fit(&pick(&etas, &calibrate), &calibration_anchors, &y_calibrate);
    report.platt_a = Some(a);
    report.platt_b = Some(b);
    // The deployed model's calibration, on the selection half (Platt never saw it).
    let calibrated: Vec<f64> = select
        .iter()
        .map(|&i| anchors_valid[i].no_purchase(a * etas[i] + b))
        .collect();
    report.calibrated_brier = backtest::brier(&calibrated, &y_select);
    report.calibration = backtest::calibration_table(&calibrated, &y_select, backtest::CALIBRATION_BINS);

    let mut params = BTreeMap::from([
        ("platt_a".to_string(), a),
        ("platt_b".to_string(), b),
        ("validation_auc".to_string(), auc),
    ]);
    if let Some(base) = baseline_auc {
        params.insert("baseline_auc".into(), base);
    }
    if let Some(brier) = report.calibrated_brier {
        params.insert("calibrated_brier".into(), brier);
    }
    let (log_likelihood, iterations, converged) = match &learner {
        Learner::Logistic(m) => {
            params.insert("intercept".into(), m.intercept);
            for (name, c) in encoding.columns().iter().zip(&m.coef) {
                params.insert(format!("coef:{name}"), *c);
            }
            (m.log_likelihood, m.iterations, m.converged)
        }
        Learner::Gbt(m) => {
            params.insert("trees".into(), m.trees() as f64);
            params.insert("expected_logit".into(), m.expected_logit());
            (m.log_likelihood, m.trees() as u64, true)
        }
    };
    report.fit = Some(ModelReport {
        model: format!("churn_{kind}"),
        params,
        log_likelihood,
        iterations,
        converged,
        fit_ms: 0,
        customers: y_train.len() as u64,
        distinct_inputs: x_train.len() as u64,
    });
    // The deployed model is the one selected and calibrated (trained as of c2), not a
    // refit: the Platt map belongs to exactly this model.
    Ok(Ok(scorer::Model {
        learner,
        encoding,
        platt: (a, b),
    }))
}

/// Whether a validation buyer is in the selection half (the other half calibrates): a
/// fixed split by a hash of the id, the same run after run.
fn selects(id: &str) -> bool {
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % 2 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_rank_positive_contributions_and_merge_channels() {
        let rows = FeatureRows {
            ids: vec!["A".into()],
            values: vec![(0..NUMERIC.len()).map(|j| j as f64).collect()],
            channel: vec!["web".into()],
        };
        let at = |name: &str| NUMERIC.iter().position(|(n, _, _)| *n == name).unwrap();
        // Every value above its mean: "higher is riskier" features can be reasons.
        let means = vec![-1.0; NUMERIC.len()];
        let mut c = vec![0.0; NUMERIC.len() + 2];
        c[at("complaints_recent")] = 0.9;
        c[at("gap_vs_rhythm")] = 0.4;
        c[at("p_alive")] = -2.0; // lowers risk: not a reason
        c[NUMERIC.len()] = 0.3;
        c[NUMERIC.len() + 1] = 0.3; // channel total 0.6
        assert_eq!(
            reasons(&c, &rows.values[0], &means, &rows.channel[0]),
            format!(
                "complaints_recent={},channel=web,gap_vs_rhythm={}x",
                at("complaints_recent"),
                at("gap_vs_rhythm")
            )
        );
        assert_eq!(
            reasons(&vec![0.0; NUMERIC.len() + 2], &rows.values[0], &means, &rows.channel[0]),
            ""
        );
        // Credited with raising the risk, but on the healthy side of the mean: no reason
        // (a recent buyer's recency, a good open rate).
        let mut c = vec![0.0; NUMERIC.len() + 2];
        c[at("recency_days")] = 0.8;
        c[at("open_rate_recent")] = 0.7;
        c[at("complaints_recent")] = 0.1;
        let mut means = vec![0.0; NUMERIC.len()];
        means[at("recency_days")] = 1e6;
        means[at("open_rate_recent")] = -1.0;
        assert_eq!(
            reasons(&c, &rows.values[0], &means, &rows.channel[0]),
            format!("complaints_recent={}", at("complaints_recent"))
        );
    }
}
