//! Scoring with the trained churn model as a query: the model is a scalar function over
//! the feature columns, so the as-of features stream through it batch by batch and the
//! predictions are written to Parquet, never held in memory whole (at 20M buyers they
//! would be gigabytes).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Float64Builder, StringArray, StringBuilder, StructArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast as cast_expr, col,
    lit,
};
use datafusion::prelude::DataFrame;

use super::activity::Anchor;
use super::features::{CHANNEL, Encoding, NUMERIC, clean};
use super::{Learner, reasons, sigmoid};

/// The fitted model, its one-hot encoding and Platt map.
pub(super) struct Model {
    pub learner: Learner,
    pub encoding: Encoding,
    /// Platt scaling of the adjusted P(alive): `pi = sigmoid(a * eta + b)`.
    pub platt: (f64, f64),
}

/// One buyer's scores.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Scored {
    /// `1 - pi`: the probability that the buyer has lapsed for good.
    pub churn_risk: f64,
    /// `1 - pi (1 - s)`: no purchase in the label window.
    pub p_no_purchase: f64,
    /// The signals that raise the risk, as reason codes.
    pub reasons: String,
}

impl Model {
    /// Calibrated scores and reason codes of buyers: `values` holds their [`NUMERIC`]
    /// features one buyer after another, `channels` their channels. The learner scores
    /// the rows together ([`Learner::score_rows`]); each buyer's scores depend on that
    /// buyer alone.
    fn score_rows(&self, values: &[f64], channels: &[&str]) -> Vec<Scored> {
        let k = NUMERIC.len();
        let mut encoded = Vec::with_capacity(channels.len() * (k + self.encoding.channels.len()));
        let mut row = Vec::new();
        for (v, channel) in values.chunks_exact(k).zip(channels) {
            self.encoding.encode_row(v, channel, &mut row);
            encoded.extend_from_slice(&row);
        }
        let width = row.len();
        let (logits, contributions) = self.learner.score_rows(&encoded, width);
        let (a, b) = self.platt;
        values
            .chunks_exact(k)
            .zip(channels)
            .zip(logits)
            .zip(contributions.chunks_exact(width.max(1)))
            .map(|(((v, channel), logit), moves)| {
                let anchor = Anchor::of(v);
                let eta = a * (anchor.offset + logit) + b;
                // Reasons explain the risk: a move down of P(alive)'s logit is a move up of the risk's.
                let towards_churn: Vec<f64> = moves.iter().map(|c| -c).collect();
                Scored {
                    churn_risk: 1.0 - sigmoid(eta),
                    p_no_purchase: anchor.no_purchase(eta),
                    reasons: reasons(&towards_churn, v, &self.encoding.means, channel),
                }
            })
            .collect()
    }
}

/// Name of the scoring function inside the predictions query.
const FUNCTION: &str = "churn_score";

/// Fewest rows of a batch worth a scoring thread of their own (a buyer takes tens of
/// microseconds: the boosted trees' Shapley values for the reasons).
const MIN_ROWS_PER_THREAD: usize = 512;

/// `churn_score(<NUMERIC features as double>..., channel)`: a struct of `churn_risk`,
/// `p_no_purchase` and `churn_reasons`.
struct ScoreFunction {
    model: Arc<Model>,
    signature: Signature,
    /// Cores a batch is shared out between (looked up once, not per batch).
    cores: usize,
}

impl std::fmt::Debug for ScoreFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoreFunction")
            .field("learner", &self.model.learner.name())
            .finish()
    }
}

impl PartialEq for ScoreFunction {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.model, &other.model)
    }
}

impl Eq for ScoreFunction {}

impl Hash for ScoreFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.model), state);
    }
}

fn output_fields() -> Fields {
    Fields::from(vec![
        Field::new("churn_risk", DataType::Float64, false),
        Field::new("p_no_purchase", DataType::Float64, false),
        Field::new("churn_reasons", DataType::Utf8, false),
    ])
}

impl ScalarUDFImpl for ScoreFunction {
    fn name(&self) -> &str {
        FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Struct(output_fields()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args.args.iter().map(|a| a.to_array(n)).collect::<DfResult<_>>()?;
        let internal = |what: &str| DataFusionError::Internal(format!("{FUNCTION}: {what}"));
        let (channel, numeric) = arrays.split_last().ok_or_else(|| internal("no arguments"))?;
        let numeric: Vec<&Float64Array> = numeric
            .iter()
            .map(|c| c.as_any().downcast_ref::<Float64Array>())
            .collect::<Option<_>>()
            .ok_or_else(|| internal("a feature argument is not double"))?;
        let channel = channel
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| internal("the channel argument is not text"))?;
        // Each row's scores depend on that row alone: the batch is cut into one slice per
        // core, scored side by side and put back in order, so the result is the same on
        // any number of cores.
        let score_rows = |rows: std::ops::Range<usize>| -> Vec<Scored> {
            let mut values = Vec::with_capacity(rows.len() * numeric.len());
            let mut channels = Vec::with_capacity(rows.len());
            for i in rows {
                values.extend(numeric.iter().map(|c| clean(c, i)));
                channels.push(if channel.is_null(i) { "" } else { channel.value(i) });
            }
            self.model.score_rows(&values, &channels)
        };
        let slices = self.cores.min(n.div_ceil(MIN_ROWS_PER_THREAD)).max(1);
        let per_slice = n.div_ceil(slices);
        let scored: Vec<Vec<Scored>> = if slices == 1 {
            vec![score_rows(0..n)]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..slices)
                    .map(|k| {
                        let rows = k * per_slice..((k + 1) * per_slice).min(n);
                        scope.spawn(move || score_rows(rows))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().map_err(|_| internal("a scoring thread panicked")))
                    .collect::<DfResult<_>>()
            })?
        };
        let mut risks = Float64Builder::with_capacity(n);
        let mut silent = Float64Builder::with_capacity(n);
        let mut texts = StringBuilder::with_capacity(n, n * 48);
        for scored in scored.into_iter().flatten() {
            risks.append_value(scored.churn_risk);
            silent.append_value(scored.p_no_purchase);
            texts.append_value(scored.reasons);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(risks.finish()),
            Arc::new(silent.finish()),
            Arc::new(texts.finish()),
        ];
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(
            output_fields(),
            columns,
            None,
        )?)))
    }
}

/// The predictions query over `features` (the as-of [`super::FEATURES_STAGE`] rows):
/// `customer_id, churn_risk, p_no_purchase, churn_reasons, churn_model`, in the features'
/// order.
pub(super) fn predictions(features: DataFrame, model: Arc<Model>) -> DfResult<DataFrame> {
    let name = model.learner.name();
    let mut args: Vec<Expr> = NUMERIC
        .iter()
        .map(|(c, _, _)| cast_expr(col(*c), DataType::Float64))
        .collect();
    args.push(cast_expr(col(CHANNEL), DataType::Utf8));
    let mut types = vec![DataType::Float64; NUMERIC.len()];
    types.push(DataType::Utf8);
    let function = ScalarUDF::new_from_impl(ScoreFunction {
        model,
        signature: Signature::exact(types, Volatility::Immutable),
        cores: crate::engine::cores(),
    });
    features
        .select(vec![
            cast_expr(col("customer_id"), DataType::Utf8).alias("customer_id"),
            function.call(args).alias("score"),
        ])?
        .select(vec![
            col("customer_id"),
            get_field(col("score"), "churn_risk").alias("churn_risk"),
            get_field(col("score"), "p_no_purchase").alias("p_no_purchase"),
            get_field(col("score"), "churn_reasons").alias("churn_reasons"),
            lit(name).alias("churn_model"),
        ])
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float64Type;

    use super::super::features::{self, test_table};
    use super::*;

    #[tokio::test]
    async fn the_query_scores_every_row_as_the_model_does_in_memory() {
        // More rows than one scoring thread takes: on two or more cores the batch is split.
        let n = 3 * MIN_ROWS_PER_THREAD;
        let rows = features::read(test_table(n, |i| i), "test").await.unwrap();
        let encoding = Encoding::of(&rows);
        let x = encoding.encode(&rows);
        let y: Vec<bool> = (0..n).map(|i| (i * 13) % 7 < 3).collect();
        let anchors: Vec<Anchor> = rows.values.iter().map(|v| Anchor::of(v)).collect();
        for kind in ["logistic", "gbt"] {
            let model = Arc::new(Model {
                learner: Learner::fit(kind, &x, &anchors, &y).unwrap(),
                encoding: encoding.clone(),
                platt: (0.8, -0.3),
            });
            let batches = predictions(test_table(n, |i| i), Arc::clone(&model))
                .unwrap()
                .collect()
                .await
                .unwrap();
            let mut seen = 0;
            for b in &batches {
                let ids = b.column(0).as_string::<i32>();
                let risks = b.column(1).as_primitive::<Float64Type>();
                let silent = b.column(2).as_primitive::<Float64Type>();
                let why = b.column(3).as_string::<i32>();
                let names = b.column(4).as_string::<i32>();
                for r in 0..b.num_rows() {
                    let i = seen + r;
                    // Scored alone, as the query scores it among the others.
                    let scored = model.score_rows(&rows.values[i], &[rows.channel[i].as_str()]).remove(0);
                    assert_eq!(ids.value(r), rows.ids[i]);
                    assert_eq!(risks.value(r), scored.churn_risk, "{kind}, row {i}");
                    assert_eq!(silent.value(r), scored.p_no_purchase, "{kind}, row {i}");
                    // The two columns agree: lapsed buyers never buy.
                    assert!(scored.p_no_purchase >= scored.churn_risk - 1e-12, "{kind}, row {i}");
                    assert_eq!(why.value(r), scored.reasons, "{kind}, row {i}");
                    assert_eq!(names.value(r), kind);
                }
                seen += b.num_rows();
            }
            assert_eq!(seen, n);
        }
    }
}
