//! Scoring: the settings and thresholds every score uses (`[scoring]` in the pipeline file)
//! and how they reach the scoring SQL stages as named parameters (`$as_of`, `$margin_rate`,
//! ...). Rule-based scores live in `sql/scoring/`; the probabilistic models are added here.

use std::collections::HashMap;

use chrono::NaiveDate;
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
        problems.check_range("scoring.value_tier_a_share", self.value_tier_a_share, 0.0, 1.0);
        problems.check_range("scoring.value_tier_b_share", self.value_tier_b_share, 0.0, 1.0);
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

    /// The named SQL parameters stages can use, e.g. `WHERE order_ts < $as_of_end`.
    ///
    /// `$as_of` is the as-of date; `$as_of_end` the first instant after it (exclusive bound).
    pub fn sql_params(&self, as_of: NaiveDate) -> HashMap<String, ScalarValue> {
        let end = as_of
            .succ_opt()
            .unwrap_or(as_of)
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_micros());
        let days = (as_of - NaiveDate::default()).num_days() as i32;
        HashMap::from([
            ("as_of".to_string(), ScalarValue::Date32(Some(days))),
            ("as_of_end".to_string(), ScalarValue::TimestampMicrosecond(end, None)),
            ("margin_rate".to_string(), ScalarValue::Float64(Some(self.margin_rate))),
            ("value_tier_a_share".to_string(), ScalarValue::Float64(Some(self.value_tier_a_share))),
            ("value_tier_b_share".to_string(), ScalarValue::Float64(Some(self.value_tier_b_share))),
            ("recent_window_days".to_string(), ScalarValue::Int64(Some(i64::from(self.recent_window_days)))),
            ("monetary_average".to_string(), ScalarValue::Boolean(Some(self.monetary == Monetary::Average))),
        ])
    }
}
