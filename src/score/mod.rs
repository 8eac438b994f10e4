//! Scoring: the settings and thresholds every score uses (`[scoring]` in the pipeline file)
//! and how they reach the scoring SQL stages as named parameters (`$as_of`, `$margin_rate`,
//! ...). Rule-based scores live in `sql/scoring/`; the probabilistic models are added here.

pub mod backtest;
pub mod bgnbd;
pub mod churn;
pub mod distinct;
pub mod error;
pub mod fallback;
pub mod gamma_gamma;
pub mod mbgnbd;
pub mod optimize;
pub mod report;
pub mod special;
pub mod step;
#[cfg(test)]
mod test_support;
pub mod truth;

pub mod models;
pub mod udf;

use std::collections::HashMap;

use chrono::{DateTime, Days, NaiveDate};
use datafusion::scalar::ScalarValue;
use serde::{Deserialize, Serialize};

use crate::problems::Problems;

/// How the RFM monetary value of a customer is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Monetary {
    /// Total revenue to date.
    Total,
    /// Revenue per purchase day.
    Average,
}

/// Default of [`ScoringSettings::churn_training_customers`]: enough for the learners'
/// 20-odd features, and the snapshots' rows stay a few tens of MB at any size.
pub const CHURN_TRAINING_CUSTOMERS: usize = 250_000;
/// Most buyers per cut-off the churn learners may be given (their rows are held in memory).
pub const MAX_CHURN_TRAINING_CUSTOMERS: usize = 10_000_000;

/// Scoring settings; each field's default is the one in docs/scoring.md. Every field reaches the
/// scoring SQL as the named parameter `$<field>` (see [`ScoringSettings::sql_params`]) and is
/// written to the run manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringSettings {
    /// RFM monetary: total or average spend.
    pub monetary: Monetary,
    /// Gross margin share used for lines without a unit cost.
    pub margin_rate: f64,
    /// Value tier A holds the customers making up this first share of historical value.
    pub value_tier_a_share: f64,
    /// Value tiers A and B together hold this share; C holds the rest.
    pub value_tier_b_share: f64,
    /// Window for "recent" spend (last N days vs the N days before); a single-order
    /// customer within it is in `exploration`.
    pub recent_window_days: u32,
    /// Time unit of the BG/NBD inputs x, t_x, T, in days (7 = weeks).
    pub time_unit_days: f64,
    /// Churn risk at or above this is band `medium`.
    pub churn_band_medium: f64,
    /// Churn risk at or above this is band `high`.
    pub churn_band_high: f64,
    /// Churn risk above this puts the customer in lifecycle stage `churned`.
    pub churned_threshold: f64,
    /// CLV horizon in months.
    pub clv_horizon_months: u32,
    /// Monthly discount rate of the CLV.
    pub clv_monthly_discount: f64,
    /// Wallet headroom: this quantile of current value among peers (same acquisition
    /// channel and cohort) is what the customer could reach.
    pub potential_quantile: f64,
    /// Two-by-two segmentations split each axis at this quantile (0.5 = median).
    pub segment_split_quantile: f64,
    /// Average CSAT at or above this is "satisfied".
    pub satisfied_csat: f64,
    /// Average CSAT below this is a churn reason (`low_csat`).
    pub low_csat: f64,
    /// Attitude score (0-1) at or above this is "high" (Dick and Basu).
    pub loyalty_attitude_high: f64,
    /// Repeat-patronage score (0-1) at or above this is "high" (Dick and Basu).
    pub loyalty_repeat_high: f64,
    /// Loyalty score (0-100) at or above this counts as loyal (Jones and Sasser).
    pub loyalty_score_high: f64,
    /// High repeat with more than this share of discounted orders is `incentive` loyalty.
    pub incentive_discount_share: f64,
    /// A gap since the last order longer than this many times the customer's own mean
    /// time between purchase days is a long gap (`decline`, churn reason `long_gap`).
    pub long_gap_factor: f64,
    /// Recent-window spend below this share of the prior window's is "spend falling".
    pub spend_falling_ratio: f64,
    /// A return rate (revenue returned or refunded / revenue sold) at or above this is a
    /// churn reason (`high_return_rate`); see docs/returns.md.
    pub high_return_rate: f64,
    /// Churn model: the label window in days. The model is trained on features as of
    /// `as_of - churn_holdout_days` labelled by "no purchase in the following
    /// churn_holdout_days", and its learner is chosen on the window before that.
    pub churn_holdout_days: u32,
    /// Churn model: at most this many buyers per cut-off to learn from (a fixed pick by
    /// hashed customer id, see [`churn::features::sample`]); every buyer is scored.
    pub churn_training_customers: usize,
    /// Churn model: when the buyers outnumber `churn_training_customers`, a cut-off
    /// snapshot computes the features of the sample only (the stages after
    /// `customer_model_input` are filtered down to its buyers; the purchase models are
    /// still refitted on every buyer). The features are the same as with `false`, which
    /// computes them for every buyer and then picks the sample; see docs/scoring.md,
    /// "Snapshots".
    pub churn_sampled_snapshots: bool,
    /// Fail the run (exit 1) when BG/NBD or Gamma-Gamma cannot be fitted, instead of
    /// scoring with their documented fallbacks ([`fallback`]).
    pub require_models: bool,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        ScoringSettings {
            monetary: Monetary::Total,
            margin_rate: 0.30,
            value_tier_a_share: 0.80,
            value_tier_b_share: 0.95,
            recent_window_days: 90,
            time_unit_days: 7.0,
            churn_band_medium: 0.3,
            churn_band_high: 0.7,
            churned_threshold: 0.9,
            clv_horizon_months: 12,
            clv_monthly_discount: 0.01,
            potential_quantile: 0.9,
            segment_split_quantile: 0.5,
            satisfied_csat: 4.0,
            low_csat: 3.0,
            loyalty_attitude_high: 0.5,
            loyalty_repeat_high: 0.5,
            loyalty_score_high: 50.0,
            incentive_discount_share: 0.5,
            long_gap_factor: 2.0,
            spend_falling_ratio: 0.75,
            high_return_rate: 0.25,
            churn_holdout_days: 90,
            churn_training_customers: CHURN_TRAINING_CUSTOMERS,
            churn_sampled_snapshots: true,
            require_models: false,
        }
    }
}

impl ScoringSettings {
    /// Records out-of-range values under `scoring.*`.
    pub fn validate(&self, problems: &mut Problems) {
        let shares = [
            ("margin_rate", self.margin_rate),
            ("value_tier_a_share", self.value_tier_a_share),
            ("value_tier_b_share", self.value_tier_b_share),
            ("churn_band_medium", self.churn_band_medium),
            ("churn_band_high", self.churn_band_high),
            ("churned_threshold", self.churned_threshold),
            ("clv_monthly_discount", self.clv_monthly_discount),
            ("potential_quantile", self.potential_quantile),
            ("segment_split_quantile", self.segment_split_quantile),
            ("loyalty_attitude_high", self.loyalty_attitude_high),
            ("loyalty_repeat_high", self.loyalty_repeat_high),
            ("incentive_discount_share", self.incentive_discount_share),
            ("spend_falling_ratio", self.spend_falling_ratio),
            ("high_return_rate", self.high_return_rate),
        ];
        for (key, value) in shares {
            problems.check_range(&format!("scoring.{key}"), value, 0.0, 1.0);
        }
        problems.check_range("scoring.time_unit_days", self.time_unit_days, 1.0 / 24.0, 366.0);
        problems.check_range("scoring.satisfied_csat", self.satisfied_csat, 1.0, 5.0);
        problems.check_range("scoring.low_csat", self.low_csat, 1.0, 5.0);
        problems.check_range("scoring.loyalty_score_high", self.loyalty_score_high, 0.0, 100.0);
        problems.check_range("scoring.long_gap_factor", self.long_gap_factor, 1.0, 100.0);
        problems.check_range(
            "scoring.clv_horizon_months",
            f64::from(self.clv_horizon_months),
            1.0,
            240.0,
        );
        let ordered = [
            (
                "value_tier_b_share",
                self.value_tier_b_share,
                "value_tier_a_share",
                self.value_tier_a_share,
            ),
            (
                "churn_band_high",
                self.churn_band_high,
                "churn_band_medium",
                self.churn_band_medium,
            ),
        ];
        for (key, value, below_key, below) in ordered {
            if value < below {
                problems.push(
                    format!("scoring.{key}"),
                    format!("{value} must not be below {below_key} ({below})"),
                );
            }
        }
        if self.recent_window_days == 0 {
            problems.push("scoring.recent_window_days", "must be at least 1");
        }
        if !(churn::MIN_CUSTOMERS..=MAX_CHURN_TRAINING_CUSTOMERS).contains(&self.churn_training_customers) {
            problems.push(
                "scoring.churn_training_customers",
                format!("must be {} to {MAX_CHURN_TRAINING_CUSTOMERS}", churn::MIN_CUSTOMERS),
            );
        }
        if self.churn_holdout_days == 0 || self.churn_holdout_days > crate::score::backtest::MAX_HOLDOUT_DAYS {
            problems.push(
                "scoring.churn_holdout_days",
                format!("must be 1 to {} days", crate::score::backtest::MAX_HOLDOUT_DAYS),
            );
        }
    }

    /// The named SQL parameters stages can use, e.g. `WHERE order_ts < $as_of_end`:
    ///
    /// | name | type | meaning |
    /// |---|---|---|
    /// | `$as_of` | date | the as-of day |
    /// | `$as_of_end` | timestamp | first instant after the as-of day (exclusive bound) |
    /// | `$recent_start` | timestamp | start of the recent spend window |
    /// | `$prior_start` | timestamp | start of the window before it |
    /// | `$monetary_average` | boolean | RFM monetary is average (else total) spend |
    /// | `$<setting>` | double | every numeric setting above, e.g. `$churn_band_high` |
    pub fn sql_params(&self, as_of: NaiveDate) -> HashMap<String, ScalarValue> {
        let end = as_of + Days::new(1);
        let micros = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_micros());
        let window = Days::new(u64::from(self.recent_window_days));
        let epoch_days = (as_of - DateTime::UNIX_EPOCH.date_naive()).num_days() as i32;
        let ts = |d: NaiveDate| ScalarValue::TimestampMicrosecond(micros(d), None);
        let mut params = HashMap::from([
            ("as_of".to_string(), ScalarValue::Date32(Some(epoch_days))),
            ("as_of_end".to_string(), ts(end)),
            ("recent_start".to_string(), ts(end - window)),
            ("prior_start".to_string(), ts(end - window - window)),
            (
                "monetary_average".to_string(),
                ScalarValue::Boolean(Some(self.monetary == Monetary::Average)),
            ),
        ]);
        // Every numeric setting as `$<name>` (double), straight from the serialised settings
        // so a new setting cannot be forgotten here.
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(self) {
            for (name, value) in map {
                if let Some(v) = value.as_f64() {
                    params.insert(name, ScalarValue::Float64(Some(v)));
                }
            }
        }
        params
    }
}
