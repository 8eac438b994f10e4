//! Scoring: the settings and thresholds every score uses (`[scoring]` in the pipeline file)
//! and how they reach the scoring SQL stages as named parameters (`$as_of`, `$margin_rate`,
//! ...). Rule-based scores live in `sql/scoring/`; the probabilistic models are added here.

pub mod bgnbd;
pub mod error;
pub mod gamma_gamma;
pub mod optimize;
pub mod special;
#[cfg(test)]
mod test_support;

use std::collections::HashMap;

use chrono::{DateTime, Days, NaiveDate};
use datafusion::scalar::ScalarValue;
use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// How the RFM monetary value of a customer is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Monetary {
    /// Total revenue to date.
    Total,
    /// Revenue per purchase day.
    Average,
}

/// Scoring settings; each field's default is the one in DOMAIN.md.
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
    /// Window for "recent" spend (last N days vs the N days before).
    pub recent_window_days: u32,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        ScoringSettings {
            monetary: Monetary::Total,
            margin_rate: 0.30,
            value_tier_a_share: 0.80,
            value_tier_b_share: 0.95,
            recent_window_days: 90,
        }
    }
}

impl ScoringSettings {
    /// Records out-of-range values under `scoring.*`.
    pub fn validate(&self, problems: &mut Problems) {
        problems.check_range("scoring.margin_rate", self.margin_rate, 0.0, 1.0);
        problems.check_range(
            "scoring.value_tier_a_share",
            self.value_tier_a_share,
            0.0,
            1.0,
        );
        problems.check_range(
            "scoring.value_tier_b_share",
            self.value_tier_b_share,
            0.0,
            1.0,
        );
        if self.value_tier_b_share < self.value_tier_a_share {
            problems.push(
                "scoring.value_tier_b_share",
                format!(
                    "{} must not be below value_tier_a_share ({})",
                    self.value_tier_b_share, self.value_tier_a_share
                ),
            );
        }
        if self.recent_window_days == 0 {
            problems.push("scoring.recent_window_days", "must be at least 1");
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
    /// | `$margin_rate`, `$value_tier_a_share`, `$value_tier_b_share` | double | settings |
    /// | `$monetary_average` | boolean | RFM monetary is average (else total) spend |
    pub fn sql_params(&self, as_of: NaiveDate) -> HashMap<String, ScalarValue> {
        let end = as_of + Days::new(1);
        let micros = |d: NaiveDate| {
            d.and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp_micros())
        };
        let window = Days::new(u64::from(self.recent_window_days));
        let epoch_days = (as_of - DateTime::UNIX_EPOCH.date_naive()).num_days() as i32;
        let ts = |d: NaiveDate| ScalarValue::TimestampMicrosecond(micros(d), None);
        HashMap::from([
            ("as_of".to_string(), ScalarValue::Date32(Some(epoch_days))),
            ("as_of_end".to_string(), ts(end)),
            ("recent_start".to_string(), ts(end - window)),
            ("prior_start".to_string(), ts(end - window - window)),
            (
                "margin_rate".to_string(),
                ScalarValue::Float64(Some(self.margin_rate)),
            ),
            (
                "value_tier_a_share".to_string(),
                ScalarValue::Float64(Some(self.value_tier_a_share)),
            ),
            (
                "value_tier_b_share".to_string(),
                ScalarValue::Float64(Some(self.value_tier_b_share)),
            ),
            (
                "monetary_average".to_string(),
                ScalarValue::Boolean(Some(self.monetary == Monetary::Average)),
            ),
        ])
    }
}
