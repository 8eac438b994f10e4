//! The fitted models as SQL scalar functions, registered on the run's session after the
//! fit, so scoring stages (and any stage a data engineer adds) can call them:
//!
//! | function | returns |
//! |---|---|
//! | `bgnbd_p_alive(x, t_x, t_cal)` | probability the customer is still active (1 when x = 0) |
//! | `bgnbd_expected_purchases(t, x, t_x, t_cal)` | expected purchases in the next `t` time units |
//! | `bgnbd_discounted_purchases(x, t_x, t_cal, horizon_months, monthly_discount)` | sum over months k of (E[X(k)] - E[X(k-1)]) / (1 + d)^k |
//! | `gg_expected_order_value(x, mean_repeat_spend)` | Gamma-Gamma expected value of a future purchase |
//!
//! Time is in the model's unit (`scoring.time_unit_days`, weeks by default). Arguments are
//! cast to double; a NULL argument, or inputs that are not a valid history (t_x > t_cal,
//! negative values), give NULL, never NaN.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Float64Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;

use super::bgnbd::{self, BgNbdParams};
use super::gamma_gamma::{self, GammaGammaParams};

/// Names of the model functions, for dependency discovery in stages.
pub const MODEL_FUNCTIONS: [&str; 4] = [
    "bgnbd_p_alive",
    "bgnbd_expected_purchases",
    "bgnbd_discounted_purchases",
    "gg_expected_order_value",
];

/// Each model function: name, computation, number of arguments.
const FUNCTIONS: [(&str, Kind, usize); 4] = [
    (MODEL_FUNCTIONS[0], Kind::PAlive, 3),
    (MODEL_FUNCTIONS[1], Kind::ExpectedPurchases, 4),
    (MODEL_FUNCTIONS[2], Kind::DiscountedPurchases, 5),
    (MODEL_FUNCTIONS[3], Kind::ExpectedOrderValue, 2),
];

/// Which model computation a function performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    PAlive,
    ExpectedPurchases,
    DiscountedPurchases,
    ExpectedOrderValue,
}

/// One model function with the fitted parameters it carries.
#[derive(Debug)]
struct ModelFunction {
    name: &'static str,
    kind: Kind,
    bgnbd: Option<BgNbdParams>,
    gamma_gamma: Option<GammaGammaParams>,
    month_in_units: f64,
    signature: Signature,
}

impl ModelFunction {
    fn params_bits(&self) -> Vec<u64> {
        let mut bits = vec![self.month_in_units];
        if let Some(p) = &self.bgnbd {
            bits.extend([p.r, p.alpha, p.a, p.b]);
        }
        if let Some(g) = &self.gamma_gamma {
            bits.extend([g.p, g.q, g.gamma]);
        }
        bits.into_iter().map(f64::to_bits).collect()
    }

    /// The function of one row; `None` where the result is undefined.
    fn eval(&self, v: &[f64]) -> Option<f64> {
        let Some(p) = &self.bgnbd else {
            // No BG/NBD fit: the data do not identify it (typically nobody made a repeat
            // purchase; then x = 0 for everyone, alive by definition, and the likelihood's
            // limit is a zero purchase rate). p_alive of a repeat buyer stays unknown.
            return match self.kind {
                Kind::PAlive => (v[0] == 0.0).then_some(1.0),
                Kind::ExpectedPurchases | Kind::DiscountedPurchases => Some(0.0),
                Kind::ExpectedOrderValue => self.gamma_gamma.as_ref().and_then(|g| g.population_mean().ok()),
            };
        };
        let out = match self.kind {
            Kind::PAlive if is_new(v[0], v[1], v[2]) => Some(1.0),
            Kind::PAlive => bgnbd::p_alive(p, v[0], v[1], v[2]).ok(),
            Kind::ExpectedPurchases => expected(p, v[0], v[1], v[2], v[3]),
            Kind::DiscountedPurchases => discounted_purchases(p, v[0], v[1], v[2], v[3], v[4], self.month_in_units),
            Kind::ExpectedOrderValue => {
                let g = self.gamma_gamma.as_ref()?;
                if v[0] > 0.0 && v[1].is_finite() && v[1] > 0.0 {
                    gamma_gamma::expected_order_value(g, v[0], v[1]).ok()
                } else {
                    g.population_mean().ok()
                }
            }
        };
        out.filter(|x| x.is_finite())
    }
}

/// A customer whose first purchase is on the as-of day: nothing observed yet (T = 0).
fn is_new(x: f64, t_x: f64, t_cal: f64) -> bool {
    x == 0.0 && t_x == 0.0 && t_cal == 0.0
}

/// Expected purchases in the next `t` given the history (see [`bgnbd::predict_purchases`]).
fn expected(params: &BgNbdParams, t: f64, x: f64, t_x: f64, t_cal: f64) -> Option<f64> {
    bgnbd::predict_purchases(params, t, x, t_x, t_cal).ok()
}

/// Expected purchases in each month of the horizon, discounted: the purchase-count part of
/// the discounted CLV in DOMAIN.md (multiply by expected order value and margin).
pub fn discounted_purchases(
    params: &BgNbdParams,
    x: f64,
    t_x: f64,
    t_cal: f64,
    horizon_months: f64,
    monthly_discount: f64,
    month_in_units: f64,
) -> Option<f64> {
    if !((0.0..=1200.0).contains(&horizon_months) && monthly_discount > -1.0) {
        return None;
    }
    let mut total = 0.0;
    let mut previous = 0.0;
    for k in 1..=(horizon_months as u32) {
        let cumulative = expected(params, f64::from(k) * month_in_units, x, t_x, t_cal)?;
        total += (cumulative - previous) / (1.0 + monthly_discount).powi(k as i32);
        previous = cumulative;
    }
    Some(total)
}

impl PartialEq for ModelFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.params_bits() == other.params_bits()
    }
}

impl Eq for ModelFunction {}

impl Hash for ModelFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.params_bits().hash(state);
    }
}

impl ScalarUDFImpl for ModelFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let columns: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n).and_then(|arr| Ok(cast(&arr, &DataType::Float64)?)))
            .collect::<DfResult<_>>()?;
        let floats: Vec<&Float64Array> = columns
            .iter()
            .map(|c| c.as_any().downcast_ref::<Float64Array>())
            .collect::<Option<_>>()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("cast to Float64 failed".into()))?;
        let mut out = Float64Builder::with_capacity(n);
        let mut row = vec![0.0; floats.len()];
        for i in 0..n {
            if floats.iter().any(|c| c.is_null(i)) {
                out.append_null();
                continue;
            }
            for (slot, c) in row.iter_mut().zip(&floats) {
                *slot = c.value(i);
            }
            out.append_option(self.eval(&row));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Registers the model functions with the fitted parameters on `ctx`; `bgnbd` is `None`
/// when the data had no repeat purchase to fit it on.
///
/// `time_unit_days` is the model's time unit (7 = weeks); it sets how many units a month is.
pub fn register(
    ctx: &SessionContext,
    bgnbd: Option<BgNbdParams>,
    gamma_gamma: Option<GammaGammaParams>,
    time_unit_days: f64,
) {
    let month_in_units = 365.25 / 12.0 / time_unit_days;
    for (name, kind, arity) in FUNCTIONS {
        ctx.register_udf(model_function(name, kind, arity, bgnbd, gamma_gamma, month_in_units));
    }
}

/// Format version of [`encode_model_function`]'s bytes.
const WIRE_VERSION: u8 = 1;

/// The fitted parameters of a model function as bytes, so a distributed engine can ship
/// the function inside a query plan to processes that never ran the fit; `None` for any
/// other function.
pub fn encode_model_function(udf: &ScalarUDF) -> Option<Vec<u8>> {
    let f = udf.inner().downcast_ref::<ModelFunction>()?;
    let mut out = vec![
        WIRE_VERSION,
        f.kind as u8,
        u8::from(f.bgnbd.is_some()),
        u8::from(f.gamma_gamma.is_some()),
    ];
    let mut floats = vec![f.month_in_units];
    if let Some(p) = &f.bgnbd {
        floats.extend([p.r, p.alpha, p.a, p.b]);
    }
    if let Some(g) = &f.gamma_gamma {
        floats.extend([g.p, g.q, g.gamma]);
    }
    for v in floats {
        out.extend(v.to_le_bytes());
    }
    Some(out)
}

/// Rebuilds a model function from [`encode_model_function`]'s bytes; `None` when `name`
/// is not a model function or `buf` is empty (then the receiver's registry applies).
pub fn decode_model_function(name: &str, buf: &[u8]) -> Option<DfResult<ScalarUDF>> {
    let (fn_name, kind, arity) = FUNCTIONS.iter().copied().find(|(n, _, _)| *n == name)?;
    if buf.is_empty() {
        return None;
    }
    let bad = |why: &str| {
        datafusion::error::DataFusionError::Plan(format!("model function {name}: {why} in the shipped parameters"))
    };
    Some((|| {
        let (head, rest) = buf.split_at_checked(4).ok_or_else(|| bad("truncated header"))?;
        if head[0] != WIRE_VERSION {
            return Err(bad(&format!(
                "format version {} (this patron reads {WIRE_VERSION})",
                head[0]
            )));
        }
        let (has_bgnbd, has_gg) = (head[2] == 1, head[3] == 1);
        let expected = 1 + if has_bgnbd { 4 } else { 0 } + if has_gg { 3 } else { 0 };
        if rest.len() != expected * 8 || head[1] != kind as u8 {
            return Err(bad("unexpected length or kind"));
        }
        let mut floats = rest
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        let mut next = || floats.next().ok_or_else(|| bad("truncated parameters"));
        let month_in_units = next()?;
        let bgnbd = if has_bgnbd {
            Some(BgNbdParams::new(next()?, next()?, next()?, next()?).map_err(|e| bad(&e.to_string()))?)
        } else {
            None
        };
        let gamma_gamma = if has_gg {
            Some(GammaGammaParams::new(next()?, next()?, next()?).map_err(|e| bad(&e.to_string()))?)
        } else {
            None
        };
        Ok(model_function(fn_name, kind, arity, bgnbd, gamma_gamma, month_in_units))
    })())
}

fn model_function(
    name: &'static str,
    kind: Kind,
    arity: usize,
    bgnbd: Option<BgNbdParams>,
    gamma_gamma: Option<GammaGammaParams>,
    month_in_units: f64,
) -> ScalarUDF {
    ScalarUDF::new_from_impl(ModelFunction {
        name,
        kind,
        bgnbd,
        gamma_gamma,
        month_in_units,
        signature: Signature::uniform(arity, vec![DataType::Float64], Volatility::Immutable),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdnow() -> BgNbdParams {
        // Published CDNOW estimates (Fader, Hardie and Lee 2005).
        BgNbdParams::new(0.243, 4.414, 0.793, 2.426).unwrap()
    }

    #[tokio::test]
    async fn sql_functions_match_the_model_code() {
        let ctx = SessionContext::new();
        let gg = GammaGammaParams::new(6.25, 3.74, 15.44).unwrap();
        register(&ctx, Some(cdnow()), Some(gg), 7.0);
        let df = ctx
            .sql(
                "SELECT bgnbd_expected_purchases(39, 2, 30.43, 38.86) AS e, bgnbd_p_alive(0, 0, 10) AS p0, \
                 bgnbd_p_alive(2, 40, 38.86) AS bad, gg_expected_order_value(0, NULL) AS n, \
                 gg_expected_order_value(0, 0) AS pop, bgnbd_discounted_purchases(2, 30.43, 38.86, 12, 0.0) AS d0, \
                 bgnbd_expected_purchases(12 * 365.25 / 12 / 7, 2, 30.43, 38.86) AS e12",
            )
            .await
            .unwrap();
        let batch = df.collect().await.unwrap().remove(0);
        let col = |i: usize| batch.column(i).as_any().downcast_ref::<Float64Array>().unwrap().clone();
        // FHL 2005: a customer with x = 2, t_x = 30.43, T = 38.86 expects 1.226 purchases in 39 weeks.
        assert!((col(0).value(0) - 1.226).abs() < 1e-3, "{}", col(0).value(0));
        assert_eq!(col(1).value(0), 1.0);
        assert!(col(2).is_null(0), "t_x > T is not a history");
        assert!(col(3).is_null(0), "NULL in, NULL out");
        assert!(
            (col(4).value(0) - 6.25 * 15.44 / 2.74).abs() < 1e-9,
            "population mean p*gamma/(q-1)"
        );
        // Without discounting the monthly increments add up to the 12-month expectation.
        assert!((col(5).value(0) - col(6).value(0)).abs() < 1e-9);
    }

    #[tokio::test]
    async fn shipped_model_functions_compute_what_the_fitted_ones_do() {
        let gg = GammaGammaParams::new(6.25, 3.74, 15.44).unwrap();
        let here = SessionContext::new();
        register(&here, Some(cdnow()), Some(gg), 7.0);
        let there = SessionContext::new();
        for name in MODEL_FUNCTIONS {
            let udf = datafusion::execution::FunctionRegistry::udf(&here, name).unwrap();
            let bytes = encode_model_function(&udf).expect("a model function encodes");
            there.register_udf(decode_model_function(name, &bytes).unwrap().unwrap());
            assert!(
                decode_model_function(name, &bytes[..bytes.len() - 1]).unwrap().is_err(),
                "truncated"
            );
        }
        assert!(
            decode_model_function("bgnbd_p_alive", &[]).is_none(),
            "empty: the registry's"
        );
        assert!(decode_model_function("abs", &[1]).is_none(), "not a model function");
        let sql = "SELECT bgnbd_p_alive(2, 30.43, 38.86), bgnbd_expected_purchases(39, 2, 30.43, 38.86), \
                   bgnbd_discounted_purchases(2, 30.43, 38.86, 12, 0.01), gg_expected_order_value(2, 30.0)";
        let row = |ctx: SessionContext| async move {
            let b = ctx.sql(sql).await.unwrap().collect().await.unwrap().remove(0);
            (0..4)
                .map(|i| b.column(i).as_any().downcast_ref::<Float64Array>().unwrap().value(0))
                .collect::<Vec<_>>()
        };
        let (a, b) = (row(here).await, row(there).await);
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.is_finite() && *v > 0.0), "{a:?}");
    }

    #[test]
    fn discounting_lowers_value_and_horizon_raises_it() {
        let p = cdnow();
        let m = 365.25 / 12.0 / 7.0;
        let d12 = discounted_purchases(&p, 3.0, 20.0, 30.0, 12.0, 0.01, m).unwrap();
        let u12 = discounted_purchases(&p, 3.0, 20.0, 30.0, 12.0, 0.0, m).unwrap();
        let d24 = discounted_purchases(&p, 3.0, 20.0, 30.0, 24.0, 0.01, m).unwrap();
        assert!(d12 < u12 && d24 > d12 && d12 > 0.0);
    }

    #[test]
    fn a_customer_first_seen_on_the_as_of_day_is_alive_with_the_new_customer_expectation() {
        let p = cdnow();
        assert_eq!(
            expected(&p, 39.0, 0.0, 0.0, 0.0),
            bgnbd::expected_purchases_unconditional(&p, 39.0).ok()
        );
        // The conditional expectation tends to it as T shrinks.
        let near = expected(&p, 39.0, 0.0, 0.0, 1e-9).unwrap();
        assert!((near - expected(&p, 39.0, 0.0, 0.0, 0.0).unwrap()).abs() < 1e-6);
    }
}
