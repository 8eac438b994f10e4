//! One customer's card (`patron explain CUSTOMER_ID`) from the published tables only:
//! facts (`fct_customer`), every score and segment of `customer_scores` with the rule or
//! model that produced it (model parameters from `model_params`), the churn model's
//! reasons and features (`churn_features`), and the latest orders, tickets and marketing
//! events (the staged tables). Every query filters on `customer_id`, and the tables it
//! reads are clustered by it (`-- @cluster_by: customer_id`: sorted, row groups of
//! `publish.row_group_rows`, page index, bloom filter), so the Parquet scans skip the row
//! groups and pages whose statistics cannot hold the customer and read a sliver of each
//! table however large the warehouse ([`session`] turns filter pushdown on). The command line prints the [`card`].

use std::collections::{BTreeSet, HashMap};

use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::{WriterBuilder, writer::JsonArray};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use serde_json::{Map, Value, json};

use crate::names::TABLES_DIR;
use crate::publish::PublishError;
use crate::publish::read::register_table;
use crate::score::churn::FEATURES_STAGE;
use crate::score::models::MODEL_PARAMS_TABLE;
use crate::warehouse::{Warehouse, WarehouseError};

/// Orders, tickets and marketing events shown at most, latest first.
pub const RECENT_ROWS: usize = 10;

/// Why a customer's card could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The customer id is empty (exit code 2).
    #[error("the customer id is empty")]
    EmptyId,
    /// No such customer in `customer_scores` (exit code 2).
    #[error("customer `{customer_id}` is not in customer_scores of {warehouse}")]
    UnknownCustomer {
        /// The customer id, normalised.
        customer_id: String,
        /// The warehouse.
        warehouse: String,
    },
    /// A table the card needs was never published.
    #[error("{warehouse} has no published table `{table}` (run `patron run` first)")]
    MissingTable {
        /// The warehouse.
        warehouse: String,
        /// The table.
        table: String,
    },
    /// Listing the published tables failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// Registering a published table failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A query failed.
    #[error(transparent)]
    Query(#[from] DataFusionError),
    /// Turning rows into JSON failed.
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    /// Decoding the rows' JSON failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Which rule or model produced each column of `customer_scores` (see docs/scoring.md and the
/// comments in customer_scores.sql). `{bgnbd}`, `{mbgnbd}`, `{gamma_gamma}` and `{churn}` are
/// replaced by the fitted models' descriptions.
const PRODUCED_BY: [(&str, &str); 28] = [
    ("recency_days", "days since the last order"),
    ("frequency", "distinct purchase days"),
    ("monetary", "RFM monetary (scoring.monetary: total or average spend)"),
    ("r_score", "RFM: 1 + floor(5 x percent rank of recency, reversed)"),
    (
        "f_score",
        "RFM: 1 for one purchase day, else 2 + floor(4 x percent rank of frequency among repeat buyers)",
    ),
    ("m_score", "RFM: 1 + floor(5 x percent rank of monetary)"),
    ("rfm_segment", "RFM R-F map (seeds/rfm_segments.csv)"),
    ("p_alive", "{mbgnbd}"),
    ("churn_risk", "1 - P(alive): {churn}"),
    (
        "p_no_purchase_90d",
        "P(no purchase in scoring.churn_holdout_days): {churn}",
    ),
    ("churn_model", "{churn}"),
    (
        "churn_band",
        "churn_risk vs scoring.churn_band_medium / churn_band_high",
    ),
    ("churn_reasons", "{churn}"),
    ("expected_purchases_90d", "{bgnbd}"),
    ("expected_purchases_365d", "{bgnbd}"),
    ("expected_order_value", "{gamma_gamma}"),
    ("historical_value", "gross margin to date"),
    ("current_value", "discounted CLV: {bgnbd} x {gamma_gamma} x margin"),
    ("potential_value", "wallet headroom among peers + referral value"),
    ("clv", "= current_value"),
    (
        "value_tier",
        "ABC Pareto on historical value (scoring.value_tier_a_share / b_share)",
    ),
    ("portfolio_quadrant", "two-by-two: historical x potential value"),
    ("economic_segment", "two-by-two: current x potential value"),
    ("investment_class", "two-by-two: cost to serve x gross margin"),
    (
        "loyalty_score",
        "Dick and Basu: 100 x (attitude + repeat patronage) / 2",
    ),
    ("loyalty_type", "Dick and Basu: attitude x repeat patronage"),
    ("satisfaction_loyalty", "Jones and Sasser: CSAT x loyalty score"),
    (
        "lifecycle_stage",
        "lifecycle rules: churn_risk > scoring.churned_threshold, long gap, spend trend",
    ),
];

/// Tables explain needs; [`FEATURES_STAGE`] and [`MODEL_PARAMS_TABLE`] are optional.
const REQUIRED_TABLES: [&str; 5] = [
    "customer_scores",
    "fct_customer",
    "stg_sales",
    "stg_service",
    "stg_marketing",
];

/// The session explain reads with: Parquet filter pushdown (with the page index and bloom
/// filters, DataFusion's defaults) so a scan decodes only the rows of the pages that can
/// hold the customer.
pub fn session() -> SessionContext {
    let mut config = SessionConfig::new();
    let parquet = &mut config.options_mut().execution.parquet;
    parquet.pushdown_filters = true;
    parquet.reorder_filters = true;
    parquet.enable_page_index = true;
    parquet.bloom_filter_on_read = true;
    SessionContext::new_with_config(config)
}

/// Registers the published tables explain reads on `ctx`; an error naming the first
/// required one that is missing.
/// Returns the names registered.
pub async fn register(ctx: &SessionContext, warehouse: &Warehouse) -> Result<BTreeSet<String>, ExplainError> {
    let published: BTreeSet<String> = warehouse.folders(TABLES_DIR).await?.into_iter().collect();
    let mut registered = BTreeSet::new();
    for table in REQUIRED_TABLES.iter().chain(&[FEATURES_STAGE, MODEL_PARAMS_TABLE]) {
        if !published.contains(*table) {
            if REQUIRED_TABLES.contains(table) {
                return Err(ExplainError::MissingTable {
                    warehouse: warehouse.to_string(),
                    table: table.to_string(),
                });
            }
            continue;
        }
        register_table(ctx, table, warehouse, &format!("{TABLES_DIR}/{table}")).await?;
        registered.insert(table.to_string());
    }
    Ok(registered)
}

/// The query explain runs on `table` (`$id` is the customer id): the whole row of
/// `customer_scores`, `fct_customer` and [`FEATURES_STAGE`], the latest orders, tickets and
/// marketing events of the staged tables.
pub fn lookup(table: &str) -> String {
    match table {
        "stg_sales" => format!(
            "SELECT order_id, MIN(order_ts) AS order_ts, MIN(channel) AS channel, COUNT(*) AS lines, \
             SUM(revenue) AS revenue, SUM(discount) AS discount FROM stg_sales WHERE customer_id = $id \
             GROUP BY order_id ORDER BY order_ts DESC, order_id DESC LIMIT {RECENT_ROWS}"
        ),
        "stg_service" => format!(
            "SELECT ticket_id, opened_at, closed_at, category, status, csat FROM stg_service \
             WHERE customer_id = $id ORDER BY opened_at DESC, ticket_id DESC LIMIT {RECENT_ROWS}"
        ),
        "stg_marketing" => format!(
            "SELECT event_ts, campaign, channel, event_type FROM stg_marketing WHERE customer_id = $id \
             ORDER BY event_ts DESC, event_id DESC LIMIT {RECENT_ROWS}"
        ),
        other => format!("SELECT * FROM {other} WHERE customer_id = $id"),
    }
}

/// The customer's card as JSON: `customer_id`, `facts`, `scores` (each `{value,
/// produced_by}`), `churn` (`risk`, `band`, `model`, `reasons`, `features`), `orders`,
/// `tickets`, `marketing_events`.
pub async fn card(warehouse: &Warehouse, customer_id: &str) -> Result<Value, ExplainError> {
    let id = customer_id.trim().to_uppercase();
    if id.is_empty() {
        return Err(ExplainError::EmptyId);
    }
    let ctx = session();
    let registered = register(&ctx, warehouse).await?;
    let has = |t: &str| registered.contains(t);
    let one = |sql: String| query(&ctx, sql, &id);

    let scores = one(lookup("customer_scores")).await?;
    let Some(scores) = scores.into_iter().next() else {
        return Err(ExplainError::UnknownCustomer {
            customer_id: id,
            warehouse: warehouse.to_string(),
        });
    };
    let facts = one(lookup("fct_customer"))
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    let features = if has(FEATURES_STAGE) {
        one(lookup(FEATURES_STAGE)).await?.into_iter().next()
    } else {
        None
    };
    let params = if has(MODEL_PARAMS_TABLE) {
        query(
            &ctx,
            format!("SELECT model, parameter, value, note FROM {MODEL_PARAMS_TABLE} ORDER BY model, parameter"),
            &id,
        )
        .await?
    } else {
        Vec::new()
    };
    let models = describe_models(&params, scores.get("churn_model").and_then(Value::as_str));
    let orders = one(lookup("stg_sales")).await?;
    let tickets = one(lookup("stg_service")).await?;
    let events = one(lookup("stg_marketing")).await?;

    let mut score_card = Map::new();
    for (column, value) in &scores {
        if column == "customer_id" || column == "as_of" || column == "model_version" {
            continue;
        }
        let produced_by = PRODUCED_BY
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, how)| fill(how, &models))
            .unwrap_or_else(|| "see customer_scores.sql".to_string());
        score_card.insert(column.clone(), json!({ "value": value, "produced_by": produced_by }));
    }
    let reasons: Vec<&str> = scores
        .get("churn_reasons")
        .and_then(Value::as_str)
        .map(|r| r.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    Ok(json!({
        "customer_id": id,
        "as_of": scores.get("as_of"),
        "model_version": scores.get("model_version"),
        "facts": facts,
        "scores": score_card,
        "churn": {
            "risk": scores.get("churn_risk"),
            "band": scores.get("churn_band"),
            "model": scores.get("churn_model"),
            "produced_by": models.get("churn"),
            "reasons": reasons,
            "features": features,
        },
        "orders": orders,
        "tickets": tickets,
        "marketing_events": events,
    }))
}

/// One-line descriptions of the fitted models from `model_params`.
fn describe_models(params: &[Map<String, Value>], churn_model: Option<&str>) -> HashMap<&'static str, String> {
    let of = |model: &str| -> Vec<(String, f64)> {
        params
            .iter()
            .filter(|r| r.get("model").and_then(Value::as_str) == Some(model))
            .filter_map(|r| Some((r.get("parameter")?.as_str()?.to_string(), r.get("value")?.as_f64()?)))
            .collect()
    };
    let list = |model: &str, keep: &dyn Fn(&str) -> bool| {
        of(model)
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = HashMap::new();
    out.insert("bgnbd", format!("BG/NBD ({})", list("bgnbd", &|_| true)));
    out.insert("mbgnbd", format!("modified BG/NBD ({})", list("mbgnbd", &|_| true)));
    out.insert(
        "gamma_gamma",
        format!("Gamma-Gamma ({})", list("gamma_gamma", &|_| true)),
    );
    let churn = match churn_model {
        Some(m @ ("logistic" | "gbt")) => format!(
            "modified BG/NBD adjusted by the churn model `{m}`, Platt-calibrated ({})",
            list(&format!("churn_{m}"), &|k| !k.starts_with("coef:"))
        ),
        _ => {
            let note = params
                .iter()
                .find(|r| r.get("model").and_then(Value::as_str) == Some("churn_mbgnbd"))
                .and_then(|r| r.get("note").and_then(Value::as_str))
                .map(|n| format!("; the churn model is not used: {n}"))
                .unwrap_or_default();
            format!("modified BG/NBD{note}")
        }
    };
    out.insert("churn", churn);
    out
}

fn fill(template: &str, models: &HashMap<&'static str, String>) -> String {
    let mut text = template.to_string();
    for (key, description) in models {
        text = text.replace(&format!("{{{key}}}"), description);
    }
    text
}

/// Runs `sql` with `$id` bound and returns its rows as JSON objects (NULLs kept).
pub async fn query(ctx: &SessionContext, sql: String, id: &str) -> Result<Vec<Map<String, Value>>, ExplainError> {
    let params = HashMap::from([("id".to_string(), ScalarValue::Utf8(Some(id.to_string())))]);
    let batches: Vec<RecordBatch> = ctx
        .sql(&sql)
        .await
        .and_then(|df| df.with_param_values(params))?
        .collect()
        .await?;
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, JsonArray>(Vec::new());
    for batch in &batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_slice(&bytes)?)
}
