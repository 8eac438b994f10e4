//! The model's view of the `churn_features` stage: which columns are features, how the
//! categorical channel is one-hot encoded, and how a feature value is written in a churn
//! reason (`complaints_recent=2`, `gap_vs_rhythm=3.1x`). The column names are the reason
//! codes, so a code always means the column of the same name.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, Expr, ScalarUDF, Volatility, cast as cast_expr, col, create_udf};
use datafusion::prelude::DataFrame;
use datafusion::scalar::ScalarValue;

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

/// On which side of the training mean a feature's value can be a reason for churn risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    /// Above the mean (`recency_days`, `complaints_recent`).
    Higher,
    /// Below the mean (`avg_csat`, `open_rate_recent`).
    Lower,
    /// Either side (no direction a person would read into it: `tenure_days`).
    Either,
}

impl Risk {
    /// Whether `value` is on the risky side of `mean`.
    pub fn allows(self, value: f64, mean: f64) -> bool {
        match self {
            Risk::Higher => value > mean,
            Risk::Lower => value < mean,
            Risk::Either => true,
        }
    }
}

/// The numeric feature columns of `churn_features`, in model order, with their reason
/// format and risk direction (a feature is shown as a reason only when the model credits
/// it with raising the risk *and* the customer's value lies on its risky side: no
/// `recency_days` reason for a customer who bought yesterday).
pub const NUMERIC: [(&str, Format, Risk); 20] = [
    ("p_alive", Format::Decimal, Risk::Lower),
    ("p_no_purchase", Format::Decimal, Risk::Higher),
    ("log_expected_purchases", Format::Signed, Risk::Lower),
    ("recency_days", Format::Count, Risk::Higher),
    ("gap_vs_rhythm", Format::Times, Risk::Higher),
    ("frequency", Format::Count, Risk::Lower),
    ("repeat_buyer", Format::Count, Risk::Lower),
    ("spend_trend", Format::Signed, Risk::Lower),
    ("return_rate", Format::Decimal, Risk::Higher),
    ("tickets_recent", Format::Count, Risk::Higher),
    ("complaints_recent", Format::Count, Risk::Higher),
    ("open_complaints", Format::Count, Risk::Higher),
    ("avg_csat", Format::Decimal, Risk::Lower),
    ("csat_drop", Format::Signed, Risk::Lower),
    ("open_rate_recent", Format::Decimal, Risk::Lower),
    ("open_trend", Format::Signed, Risk::Lower),
    ("click_trend", Format::Signed, Risk::Lower),
    ("unsubscribed", Format::Count, Risk::Higher),
    ("days_since_touch", Format::Count, Risk::Higher),
    ("tenure_days", Format::Count, Risk::Either),
];

/// The categorical feature column (one-hot encoded over the training vocabulary).
pub const CHANNEL: &str = "channel";

/// Index of `p_alive` in [`NUMERIC`]: the learners start from it ([`super::activity`]).
pub const P_ALIVE: usize = 0;

/// Index of `p_no_purchase` in [`NUMERIC`]: the purchase model's own probability of the
/// label (no purchase in the window), the baseline the learners must beat.
pub const P_NO_PURCHASE: usize = 1;

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

/// Feature `i` of a column as the learners see it: NULL and non-finite values are 0 (the
/// SQL fills every feature; this only guards a customised stage).
pub fn clean(column: &Float64Array, i: usize) -> f64 {
    if column.is_valid(i) && column.value(i).is_finite() {
        column.value(i)
    } else {
        0.0
    }
}

/// At most `customers` rows of a `churn_features` result to learn from: the buyers whose
/// id has the smallest MD5, then in id order (the stage's own order). A fixed hash, so the
/// same buyers are picked in every snapshot they are in and in every run; when there are
/// no more than `customers` rows, all of them, unchanged. The pick is a top-k: its memory
/// is that of `customers` rows, whatever the size of the customer base.
pub fn sample(df: DataFrame, customers: usize) -> datafusion::error::Result<DataFrame> {
    by_hash(df)?
        .limit(0, Some(customers))?
        .sort(vec![col("customer_id").sort(true, false)])
}

/// `df` in the order [`sample`] picks from: by the MD5 of `customer_id`, NULL ids last.
pub fn by_hash(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    use datafusion::functions::crypto::expr_fn::md5;
    df.sort(vec![
        md5(cast_expr(col("customer_id"), DataType::Utf8)).sort(true, false),
    ])
}

/// The pick of [`sample`] made from a stream of ids, here rather than in a query (a
/// snapshot draws it from every buyer): the `customers` ids with the smallest MD5. MD5 in
/// lowercase hex, as [`by_hash`] compares it, orders as the digest's bytes, so this is the
/// same pick. Like the query's top-k, it holds `customers` ids at most, whatever the number
/// pushed.
#[derive(Debug)]
pub struct SmallestHashes {
    /// The ids kept so far, the largest digest on top.
    kept: std::collections::BinaryHeap<([u8; 16], String)>,
    customers: usize,
    seen: usize,
}

impl SmallestHashes {
    /// An empty pick of at most `customers` ids.
    pub fn new(customers: usize) -> Self {
        SmallestHashes {
            kept: std::collections::BinaryHeap::with_capacity(customers.min(1 << 20)),
            customers,
            seen: 0,
        }
    }

    /// Offers one id.
    pub fn push(&mut self, id: &str) {
        use md5::{Digest, Md5};
        self.seen += 1;
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&Md5::digest(id.as_bytes()));
        if self.kept.len() < self.customers {
            self.kept.push((digest, id.to_string()));
        } else if self.kept.peek().is_some_and(|(top, _)| digest < *top) {
            self.kept.pop();
            self.kept.push((digest, id.to_string()));
        }
    }

    /// How many ids were offered.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// The picked ids, smallest digest first.
    pub fn into_ids(self) -> Vec<String> {
        self.kept.into_sorted_vec().into_iter().map(|(_, id)| id).collect()
    }
}

/// Name of the function [`in_sample`] calls, registered in a snapshot's session only.
pub const IN_SAMPLE_FUNCTION: &str = "__patron_churn_in_sample";

/// The predicate "`customer_id` is one of `ids`", for a snapshot that computes its
/// features for a sample only (see `docs/scoring.md`, "Snapshots"). It is a plain
/// immutable function of the id, so DataFusion pushes it below sorts, aggregates grouped
/// by the id and equi-joins on it, down to the scans; a NULL id is not in the sample.
/// Register `udf` in the session that runs the returned expression.
pub fn in_sample(ids: HashSet<String>) -> (ScalarUDF, Expr) {
    let ids = Arc::new(ids);
    let member = move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let [arg] = args else {
            return datafusion::common::exec_err!("{IN_SAMPLE_FUNCTION} takes one argument");
        };
        let values = arg.to_array(1)?;
        let values = cast(&values, &DataType::Utf8)?;
        let values = values.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("text cast to Utf8 is not a StringArray".into())
        })?;
        let kept: BooleanArray = values
            .iter()
            .map(|v| Some(v.is_some_and(|v| ids.contains(v))))
            .collect();
        Ok(match arg {
            ColumnarValue::Scalar(_) => ColumnarValue::Scalar(ScalarValue::try_from_array(&kept, 0)?),
            ColumnarValue::Array(_) => ColumnarValue::Array(Arc::new(kept)),
        })
    };
    let udf = create_udf(
        IN_SAMPLE_FUNCTION,
        vec![DataType::Utf8],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(member),
    );
    let predicate = udf.call(vec![cast_expr(col("customer_id"), DataType::Utf8)]);
    (udf, predicate)
}

/// Reads a `churn_features` result. NULL numeric values are read as 0 (the SQL fills
/// every feature; this only guards a customised stage).
pub async fn read(df: DataFrame, table: &str) -> Result<FeatureRows, ChurnError> {
    let err = |message: String| ChurnError::Input {
        table: table.to_string(),
        message,
    };
    let task = df.task_ctx();
    let plan = df.create_physical_plan().await.map_err(|e| err(e.to_string()))?;
    let batches = datafusion::physical_plan::collect(Arc::clone(&plan), Arc::new(task))
        .await
        .map_err(|e| err(e.to_string()))?;
    crate::transform::runner::log_executed_plan(table, plan.as_ref());
    drop(plan);
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
            .map(|(name, _, _)| column(name, &DataType::Float64))
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
            rows.values.push(numeric.iter().map(|c| clean(c, i)).collect());
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
    /// Training mean of each [`NUMERIC`] feature: the pivot of its [`Risk`] side.
    pub means: Vec<f64>,
}

impl Encoding {
    /// The vocabulary and feature means of `rows`.
    pub fn of(rows: &FeatureRows) -> Self {
        let channels: BTreeSet<&String> = rows.channel.iter().collect();
        let n = rows.values.len().max(1) as f64;
        let means = (0..NUMERIC.len())
            .map(|j| rows.values.iter().map(|v| v[j]).sum::<f64>() / n)
            .collect();
        Encoding {
            channels: channels.into_iter().cloned().collect(),
            means,
        }
    }

    /// Model column names: the numeric features, then `channel=<name>`.
    pub fn columns(&self) -> Vec<String> {
        NUMERIC
            .iter()
            .map(|(n, _, _)| n.to_string())
            .chain(self.channels.iter().map(|c| format!("{CHANNEL}={c}")))
            .collect()
    }

    /// Encodes every row.
    pub fn encode(&self, rows: &FeatureRows) -> Vec<Vec<f64>> {
        rows.values
            .iter()
            .zip(&rows.channel)
            .map(|(v, ch)| {
                let mut out = Vec::with_capacity(v.len() + self.channels.len());
                self.encode_row(v, ch, &mut out);
                out
            })
            .collect()
    }

    /// Encodes one row (`values` in [`NUMERIC`] order, its channel) into `out`, replacing
    /// what it held.
    pub fn encode_row(&self, values: &[f64], channel: &str, out: &mut Vec<f64>) {
        out.clear();
        out.extend_from_slice(values);
        out.extend(self.channels.iter().map(|c| if c == channel { 1.0 } else { 0.0 }));
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
    let (name, format, _) = NUMERIC[feature];
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

/// A `churn_features`-shaped table of `n` rows for tests: ids `c00000`, ... in the order
/// given by `order`, feature `j` of row `i` = `(i * 7 + j) % 11` (NULL for row 3's first
/// feature), channel `web`/`app`/`shop` by `i % 3` (NULL for row 5).
#[cfg(test)]
pub(super) fn test_table(n: usize, order: impl Fn(usize) -> usize) -> datafusion::prelude::DataFrame {
    use datafusion::arrow::array::ArrayRef;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    let rows: Vec<usize> = (0..n).map(order).collect();
    let mut fields = vec![Field::new("customer_id", DataType::Utf8, true)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
        rows.iter().map(|i| format!("c{i:05}")),
    ))];
    for (j, (name, _, _)) in NUMERIC.iter().enumerate() {
        fields.push(Field::new(*name, DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from_iter(
            rows.iter()
                .map(|&i| (i != 3 || j != 0).then_some(((i * 7 + j) % 11) as f64)),
        )));
    }
    fields.push(Field::new(CHANNEL, DataType::Utf8, true));
    columns.push(Arc::new(StringArray::from_iter(
        rows.iter().map(|&i| (i != 5).then_some(["web", "app", "shop"][i % 3])),
    )));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("a valid test batch");
    datafusion::prelude::SessionContext::new()
        .read_batch(batch)
        .expect("the test batch reads")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ids(df: DataFrame) -> Vec<String> {
        read(df, "test").await.unwrap().ids
    }

    #[tokio::test]
    async fn the_training_sample_is_a_fixed_pick_by_hashed_id_in_id_order() {
        let n = 1000;
        let shuffled = |i: usize| (i * 389) % n;
        let all = ids(sample(test_table(n, |i| i), n).unwrap()).await;
        let expected: Vec<String> = (0..n).map(|i| format!("c{i:05}")).collect();
        assert_eq!(all, expected, "no more rows than the sample size: all, in id order");

        let small = ids(sample(test_table(n, |i| i), 100).unwrap()).await;
        assert_eq!(small.len(), 100);
        assert!(small.windows(2).all(|w| w[0] < w[1]), "in id order");
        assert_ne!(small, expected[..100], "not the first ids: a pick by hash");
        assert_eq!(
            ids(sample(test_table(n, shuffled), 100).unwrap()).await,
            small,
            "the input order does not change the pick"
        );
        let smaller = ids(sample(test_table(n, shuffled), 40).unwrap()).await;
        assert!(
            smaller.iter().all(|id| small.contains(id)),
            "a smaller sample is part of a larger one (the same buyers across snapshots)"
        );
    }

    #[tokio::test]
    async fn smallest_hashes_pick_as_the_query_does() {
        let n = 1000;
        let all = ids(sample(test_table(n, |i| i), n).unwrap()).await;
        for k in [1, 40, 100, 999, 1000, 2000] {
            let mut pick = SmallestHashes::new(k);
            for id in &all {
                pick.push(id);
            }
            assert_eq!(pick.seen(), n);
            let mut picked = pick.into_ids();
            assert_eq!(picked.len(), k.min(n));
            picked.sort();
            assert_eq!(picked, ids(sample(test_table(n, |i| i), k).unwrap()).await, "k = {k}");
        }
    }

    #[tokio::test]
    async fn the_sample_filter_keeps_its_ids_and_no_null() {
        use datafusion::arrow::array::ArrayRef;
        use datafusion::arrow::record_batch::RecordBatch;

        let ctx = datafusion::prelude::SessionContext::new();
        let (udf, predicate) = in_sample(HashSet::from(["c7".to_string(), "c3".into(), "nobody".into()]));
        ctx.register_udf(udf);
        let column: ArrayRef = Arc::new(StringArray::from(vec![
            Some("c7"),
            None,
            Some("c3"),
            Some("c4"),
            Some("C7"),
        ]));
        let batch = RecordBatch::try_from_iter(vec![("customer_id", column)]).unwrap();
        let kept = ctx
            .read_batch(batch)
            .unwrap()
            .filter(predicate)
            .unwrap()
            .collect()
            .await
            .unwrap();
        let kept: Vec<String> = kept
            .iter()
            .flat_map(|b| {
                let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                ids.iter().map(|id| id.unwrap().to_string()).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            kept,
            ["c7", "c3"],
            "the sample's ids, in their order; ids compared exactly"
        );
        // A NULL id is not in the sample (false, not NULL), which lets DataFusion carry the
        // filter across the equi-joins of LEFT JOINs to the other side.
        let null = ctx
            .sql(&format!("SELECT {IN_SAMPLE_FUNCTION}(CAST(NULL AS VARCHAR)) AS kept"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let null = null[0].column(0).as_any().downcast_ref::<BooleanArray>().unwrap();
        assert!(null.is_valid(0) && !null.value(0));
    }

    #[test]
    fn reasons_are_short_and_readable() {
        let idx = |n: &str| NUMERIC.iter().position(|(c, _, _)| *c == n).unwrap();
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
