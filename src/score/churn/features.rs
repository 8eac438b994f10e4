//! The model's view of the `churn_features` stage: which columns are features, how the
//! categorical channel is one-hot encoded, and how a feature value is written in a churn
//! reason (`complaints_recent=2`, `gap_vs_rhythm=3.1x`). The column names are the reason
//! codes, so a code always means the column of the same name.

use std::collections::BTreeSet;

use datafusion::arrow::array::{Array, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::DataFrame;

use super::ChurnError;

/// How a feature's value is written in a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Whole number: `complaints_recent=2`.
    Count,
    /// Multiple: `gap_vs_rhythm=3.1x`.
    Times,
    /// Signed, up to two decimals: `csat_drop=-2`, `open_trend=-0.35`.
    Signed,
    /// Up to two decimals: `p_alive=0.31`.
    Decimal,
}

/// The numeric feature columns of `churn_features`, in model order, with their format.
pub const NUMERIC: [(&str, Format); 18] = [
    ("p_alive", Format::Decimal),
    ("log_expected_purchases", Format::Signed),
    ("recency_days", Format::Count),
    ("gap_vs_rhythm", Format::Times),
    ("frequency", Format::Count),
    ("repeat_buyer", Format::Count),
    ("spend_trend", Format::Signed),
    ("tickets_recent", Format::Count),
    ("complaints_recent", Format::Count),
    ("open_complaints", Format::Count),
    ("avg_csat", Format::Decimal),
    ("csat_drop", Format::Signed),
    ("open_rate_recent", Format::Decimal),
    ("open_trend", Format::Signed),
    ("click_trend", Format::Signed),
    ("unsubscribed", Format::Count),
    ("days_since_touch", Format::Count),
    ("tenure_days", Format::Count),
];

/// The categorical feature column (one-hot encoded over the training vocabulary).
pub const CHANNEL: &str = "channel";

/// Index of `p_alive` in [`NUMERIC`]: the BG/NBD baseline reads it.
pub const P_ALIVE: usize = 0;

/// The feature rows of one snapshot, sorted by customer id.
#[derive(Debug, Clone, Default)]
pub struct FeatureRows {
    /// Customer ids.
    pub ids: Vec<String>,
    /// Numeric features per row, in [`NUMERIC`] order.
    pub values: Vec<Vec<f64>>,
    /// Acquisition channel per row.
    pub channel: Vec<String>,
}

/// Reads a `churn_features` result. NULL numeric values are read as 0 (the SQL fills
/// every feature; this only guards a customised stage).
pub async fn read(df: DataFrame, table: &str) -> Result<FeatureRows, ChurnError> {
    let err = |message: String| ChurnError::Input {
        table: table.to_string(),
        message,
    };
    let batches = df.collect().await.map_err(|e| err(e.to_string()))?;
    let mut rows = FeatureRows::default();
    for batch in batches {
        let column = |name: &str, to: &DataType| {
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| err(format!("column `{name}` is missing")))?;
            cast(col, to).map_err(|e| err(format!("column `{name}`: {e}")))
        };
        let ids = column("customer_id", &DataType::Utf8)?;
        let ids = ids
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| err("customer_id is not text".into()))?;
        let channel = column(CHANNEL, &DataType::Utf8)?;
        let channel = channel
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| err("channel is not text".into()))?;
        let numeric = NUMERIC
            .iter()
            .map(|(name, _)| column(name, &DataType::Float64))
            .collect::<Result<Vec<_>, _>>()?;
        let numeric: Vec<&Float64Array> = numeric
            .iter()
            .map(|c| c.as_any().downcast_ref::<Float64Array>())
            .collect::<Option<_>>()
            .ok_or_else(|| err("a feature column is not numeric".into()))?;
        for i in 0..batch.num_rows() {
            if ids.is_null(i) {
                return Err(err(format!("row {}: customer_id is NULL", rows.ids.len() + 1)));
            }
            rows.ids.push(ids.value(i).to_string());
            rows.channel.push(if channel.is_null(i) {
                String::new()
            } else {
                channel.value(i).to_string()
            });
            rows.values.push(
                numeric
                    .iter()
                    .map(|c| {
                        if c.is_valid(i) && c.value(i).is_finite() {
                            c.value(i)
                        } else {
                            0.0
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// The encoding of rows into model columns: the numeric features, then one indicator per
/// channel of the training rows (a channel not seen in training has all indicators 0).
#[derive(Debug, Clone)]
pub struct Encoding {
    /// Channels seen in training, sorted.
    pub channels: Vec<String>,
}

impl Encoding {
    /// The vocabulary of `rows`.
    pub fn of(rows: &FeatureRows) -> Self {
        let channels: BTreeSet<&String> = rows.channel.iter().collect();
        Encoding {
            channels: channels.into_iter().cloned().collect(),
        }
    }

    /// Model column names: the numeric features, then `channel=<name>`.
    pub fn columns(&self) -> Vec<String> {
        NUMERIC
            .iter()
            .map(|(n, _)| n.to_string())
            .chain(self.channels.iter().map(|c| format!("{CHANNEL}={c}")))
            .collect()
    }

    /// Encodes every row.
    pub fn encode(&self, rows: &FeatureRows) -> Vec<Vec<f64>> {
        rows.values
            .iter()
            .zip(&rows.channel)
            .map(|(v, ch)| {
                let mut out = v.clone();
                out.extend(self.channels.iter().map(|c| if c == ch { 1.0 } else { 0.0 }));
                out
            })
            .collect()
    }
}

/// A number with at most `decimals` decimals, trailing zeros dropped (`2`, `0.35`).
fn trimmed(v: f64, decimals: usize) -> String {
    let text = format!("{v:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    if text == "-0" { "0".into() } else { text }
}

/// A reason code: `<column>=<value>` in the column's format.
pub fn reason(feature: usize, value: f64) -> String {
    let (name, format) = NUMERIC[feature];
    let shown = match format {
        Format::Count => trimmed(value.round(), 0),
        Format::Times => format!("{}x", trimmed(value, 1)),
        Format::Signed => {
            let t = trimmed(value, 2);
            if value > 0.0 && t != "0" { format!("+{t}") } else { t }
        }
        Format::Decimal => trimmed(value, 2),
    };
    format!("{name}={shown}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_short_and_readable() {
        let idx = |n: &str| NUMERIC.iter().position(|(c, _)| *c == n).unwrap();
        assert_eq!(reason(idx("complaints_recent"), 2.0), "complaints_recent=2");
        assert_eq!(reason(idx("csat_drop"), -2.0), "csat_drop=-2");
        assert_eq!(reason(idx("open_trend"), 0.354), "open_trend=+0.35");
        assert_eq!(reason(idx("gap_vs_rhythm"), 3.12), "gap_vs_rhythm=3.1x");
        assert_eq!(reason(idx("p_alive"), 0.3), "p_alive=0.3");
        assert_eq!(reason(idx("spend_trend"), -0.0001), "spend_trend=0");
    }

    #[test]
    fn one_hot_uses_the_training_vocabulary() {
        let rows = FeatureRows {
            ids: vec!["A".into(), "B".into()],
            values: vec![vec![0.0; NUMERIC.len()]; 2],
            channel: vec!["web".into(), "app".into()],
        };
        let enc = Encoding::of(&rows);
        assert_eq!(enc.channels, ["app", "web"]);
        let other = FeatureRows {
            channel: vec!["store".into(), "web".into()],
            ..rows.clone()
        };
        let x = enc.encode(&other);
        assert_eq!(&x[0][NUMERIC.len()..], &[0.0, 0.0]);
        assert_eq!(&x[1][NUMERIC.len()..], &[0.0, 1.0]);
        assert_eq!(enc.columns().last().unwrap(), "channel=web");
    }
}
