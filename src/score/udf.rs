//! The fitted models as SQL scalar functions, registered on the run's session after the
//! fit, so scoring stages (and any stage a data engineer adds) can call them:
//!
//! | function | returns |
//! |---|---|
//! | `bgnbd_p_alive(x, t_x, t_cal)` | BG/NBD probability the customer is still active (1 when x = 0) |
//! | `mbgnbd_p_alive(x, t_x, t_cal)` | modified BG/NBD probability the customer is still active (below 1 for one-time buyers too): `p_alive`, and `churn_risk` = 1 - it |
//! | `mbgnbd_p_no_purchase(t, x, t_x, t_cal)` | modified BG/NBD probability of no purchase in the next `t` time units |
//! | `bgnbd_expected_purchases(t, x, t_x, t_cal)` | expected purchases in the next `t` time units |
//! | `bgnbd_discounted_purchases(x, t_x, t_cal, horizon_months, monthly_discount)` | sum over months k of (E[X(k)] - E[X(k-1)]) / (1 + d)^k |
//! | `gg_expected_order_value(x, mean_repeat_spend)` | Gamma-Gamma expected value of a future purchase |
//!
//! Time is in the model's unit (`scoring.time_unit_days`, weeks by default). Arguments are
//! cast to double; a NULL argument, or inputs that are not a valid history (t_x > t_cal,
//! negative values), give NULL, never NaN.
//!
//! When a model fell back ([`super::fallback`]), the same functions compute with its
//! stand-in: without BG/NBD, `bgnbd_p_alive` is 1 and expected purchases come from the NBD
//! parameters; without the modified BG/NBD, its two functions compute with the purchase
//! model (BG/NBD, or the NBD stand-in, whose customers never drop out); without Gamma-Gamma, `gg_expected_order_value` is the customer's own mean
//! repeat spend (NULL without one: the SQL stage then takes their average order value).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Float64Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;

use super::bgnbd::{self, BgNbdParams};
use super::fallback::NbdParams;
use super::gamma_gamma::{self, GammaGammaParams};
use super::mbgnbd::{self, MbgNbdParams};

/// The purchase model the SQL functions compute with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Purchases {
    /// BG/NBD as fitted.
    BgNbd(BgNbdParams),
    /// Its NBD stand-in, when BG/NBD fell back.
    Nbd(NbdParams),
}

/// The models the SQL functions compute with: the fits, or their stand-ins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Models {
    /// BG/NBD, or its stand-in.
    pub purchases: Purchases,
    /// Gamma-Gamma; `None` when it fell back to own mean spend.
    pub gamma_gamma: Option<GammaGammaParams>,
    /// The modified BG/NBD (activity: P(alive), P(no purchase)); `None` when it could not
    /// be fitted, and the purchase model answers instead.
    pub activity: Option<MbgNbdParams>,
}

impl Models {
    /// BG/NBD alone (no spend or activity model).
    pub fn bgnbd(params: BgNbdParams) -> Models {
        Models {
            purchases: Purchases::BgNbd(params),
            gamma_gamma: None,
            activity: None,
        }
    }
}

/// Names of the model functions, for dependency discovery in stages.
pub const MODEL_FUNCTIONS: [&str; 6] = [
    "bgnbd_p_alive",
    "bgnbd_expected_purchases",
    "bgnbd_discounted_purchases",
    "gg_expected_order_value",
    "mbgnbd_p_alive",
    "mbgnbd_p_no_purchase",
];

/// Each model function: name, computation, number of arguments.
const FUNCTIONS: [(&str, Kind, usize); 6] = [
    (MODEL_FUNCTIONS[0], Kind::PAlive, 3),
    (MODEL_FUNCTIONS[1], Kind::ExpectedPurchases, 4),
    (MODEL_FUNCTIONS[2], Kind::DiscountedPurchases, 5),
    (MODEL_FUNCTIONS[3], Kind::ExpectedOrderValue, 2),
    (MODEL_FUNCTIONS[4], Kind::ActivePAlive, 3),
    (MODEL_FUNCTIONS[5], Kind::NoPurchase, 4),
];

/// Which model computation a function performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    PAlive,
    ExpectedPurchases,
    DiscountedPurchases,
    ExpectedOrderValue,
    ActivePAlive,
    NoPurchase,
}

/// One model function with the fitted parameters it carries.
#[derive(Debug)]
struct ModelFunction {
    name: &'static str,
    kind: Kind,
    models: Models,
    month_in_units: f64,
    signature: Signature,
}

impl ModelFunction {
    /// Every number the function computes with, in a fixed order (equality, hashing and
    /// the wire format).
    fn floats(&self) -> Vec<f64> {
        let m = &self.models;
        let mut floats = vec![self.month_in_units];
        match &m.purchases {
            Purchases::BgNbd(p) => floats.extend([p.r, p.alpha, p.a, p.b]),
            Purchases::Nbd(n) => floats.extend([n.r, n.alpha]),
        }
        if let Some(g) = &m.gamma_gamma {
            floats.extend([g.p, g.q, g.gamma]);
        }
        if let Some(a) = &m.activity {
            floats.extend([a.r, a.alpha, a.a, a.b]);
        }
        floats
    }

    fn params_bits(&self) -> Vec<u64> {
        self.floats().into_iter().map(f64::to_bits).collect()
    }

    /// The function of one row; `None` where the result is undefined.
    fn eval(&self, v: &[f64]) -> Option<f64> {
        let m = &self.models;
        let out = match (self.kind, &m.purchases) {
            (Kind::ActivePAlive, _) if m.activity.is_some() => {
                let a = m.activity.as_ref()?;
                valid_history(v[0], v[1], v[2]).then(|| mbgnbd::p_alive(a, v[0], v[1], v[2]).ok())?
            }
            (Kind::NoPurchase, _) if m.activity.is_some() => {
                let a = m.activity.as_ref()?;
                (valid_history(v[1], v[2], v[3]) && v[0] >= 0.0)
                    .then(|| mbgnbd::p_no_purchase(a, v[0], v[1], v[2], v[3]).ok())?
            }
            (Kind::NoPurchase, Purchases::BgNbd(p)) => (valid_history(v[1], v[2], v[3]) && v[0] >= 0.0)
                .then(|| bgnbd::p_no_purchase(p, v[0], v[1], v[2], v[3]).ok())?,
            // NBD: alive for sure, so no purchase in t has probability ((alpha+T)/(alpha+T+t))^(r+x).
            (Kind::NoPurchase, Purchases::Nbd(n)) => (valid_history(v[1], v[2], v[3]) && v[0] >= 0.0)
                .then(|| ((n.alpha + v[3]) / (n.alpha + v[3] + v[0])).powf(n.r + v[1])),
            (Kind::PAlive | Kind::ActivePAlive, _) if is_new(v[0], v[1], v[2]) => Some(1.0),
            (Kind::PAlive | Kind::ActivePAlive, Purchases::BgNbd(p)) => bgnbd::p_alive(p, v[0], v[1], v[2]).ok(),
            // NBD: nobody drops out.
            (Kind::PAlive | Kind::ActivePAlive, Purchases::Nbd(_)) => valid_history(v[0], v[1], v[2]).then_some(1.0),
            (Kind::ExpectedPurchases, Purchases::BgNbd(p)) => expected(p, v[0], v[1], v[2], v[3]),
            (Kind::ExpectedPurchases, Purchases::Nbd(n)) => {
                (valid_history(v[1], v[2], v[3]) && v[0] >= 0.0).then(|| n.expected_purchases(v[0], v[1], v[3]))
            }
            (Kind::DiscountedPurchases, Purchases::BgNbd(p)) => {
                discounted(|t| expected(p, t, v[0], v[1], v[2]), v[3], v[4], self.month_in_units)
            }
            (Kind::DiscountedPurchases, Purchases::Nbd(n)) => discounted(
                |t| valid_history(v[0], v[1], v[2]).then(|| n.expected_purchases(t, v[0], v[2])),
                v[3],
                v[4],
                self.month_in_units,
            ),
            (Kind::ExpectedOrderValue, _) => {
                let own = v[0] > 0.0 && v[1].is_finite() && v[1] > 0.0;
                match &m.gamma_gamma {
                    Some(g) if own => gamma_gamma::expected_order_value(g, v[0], v[1]).ok(),
                    Some(g) => g.population_mean().ok(),
                    // Own mean spend; without repeat spend, NULL: the SQL stage uses the
                    // customer's own average order value.
                    None => own.then_some(v[1]),
                }
            }
        };
        out.filter(|x| x.is_finite())
    }
}

/// A purchase history the models accept: `0 <= t_x <= t_cal`, `x >= 0`.
fn valid_history(x: f64, t_x: f64, t_cal: f64) -> bool {
    x >= 0.0 && t_x >= 0.0 && t_x <= t_cal
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
/// the discounted CLV in docs/scoring.md (multiply by expected order value and margin).
pub fn discounted_purchases(
    params: &BgNbdParams,
    x: f64,
    t_x: f64,
    t_cal: f64,
    horizon_months: f64,
    monthly_discount: f64,
    month_in_units: f64,
) -> Option<f64> {
    discounted(
        |t| expected(params, t, x, t_x, t_cal),
        horizon_months,
        monthly_discount,
        month_in_units,
    )
}

/// Sum over months k of the horizon of (E[X(k)] - E[X(k-1)]) / (1 + d)^k, where
/// `cumulative(t)` is E[X(t)].
fn discounted(
    cumulative: impl Fn(f64) -> Option<f64>,
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
        let now = cumulative(f64::from(k) * month_in_units)?;
        total += (now - previous) / (1.0 + monthly_discount).powi(k as i32);
        previous = now;
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

/// Registers the model functions computing with `models` on `ctx`.
///
/// `time_unit_days` is the model's time unit (7 = weeks); it sets how many units a month is.
pub fn register(ctx: &SessionContext, models: Models, time_unit_days: f64) {
    let month_in_units = 365.25 / 12.0 / time_unit_days;
    for (name, kind, arity) in FUNCTIONS {
        ctx.register_udf(model_function(name, kind, arity, models, month_in_units));
    }
}

/// Format version of [`encode_model_function`]'s bytes.
const WIRE_VERSION: u8 = 3;

/// The fitted parameters of a model function as bytes, so a distributed engine can ship
/// the function inside a query plan to processes that never ran the fit; `None` for any
/// other function.
pub fn encode_model_function(udf: &ScalarUDF) -> Option<Vec<u8>> {
    let f = udf.inner().downcast_ref::<ModelFunction>()?;
    let mut out = vec![
        WIRE_VERSION,
        f.kind as u8,
        u8::from(matches!(f.models.purchases, Purchases::BgNbd(_))),
        u8::from(f.models.gamma_gamma.is_some()),
        u8::from(f.models.activity.is_some()),
    ];
    for v in f.floats() {
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
        let (head, rest) = buf.split_at_checked(5).ok_or_else(|| bad("truncated header"))?;
        if head[0] != WIRE_VERSION {
            return Err(bad(&format!(
                "format version {} (this patron reads {WIRE_VERSION})",
                head[0]
            )));
        }
        let (has_bgnbd, has_gg, has_activity) = (head[2] == 1, head[3] == 1, head[4] == 1);
        let expected =
            1 + if has_bgnbd { 4 } else { 2 } + if has_gg { 3 } else { 0 } + if has_activity { 4 } else { 0 };
        if rest.len() != expected * 8 || head[1] != kind as u8 {
            return Err(bad("unexpected length or kind"));
        }
        let mut floats = rest
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        let mut next = || floats.next().ok_or_else(|| bad("truncated parameters"));
        let month_in_units = next()?;
        let purchases = if has_bgnbd {
            Purchases::BgNbd(BgNbdParams::new(next()?, next()?, next()?, next()?).map_err(|e| bad(&e.to_string()))?)
        } else {
            Purchases::Nbd(NbdParams {
                r: next()?,
                alpha: next()?,
            })
        };
        let gamma_gamma = if has_gg {
            Some(GammaGammaParams::new(next()?, next()?, next()?).map_err(|e| bad(&e.to_string()))?)
        } else {
            None
        };
        let activity = if has_activity {
            Some(MbgNbdParams::new(next()?, next()?, next()?, next()?).map_err(|e| bad(&e.to_string()))?)
        } else {
            None
        };
        let models = Models {
            purchases,
            gamma_gamma,
            activity,
        };
        Ok(model_function(fn_name, kind, arity, models, month_in_units))
    })())
}

fn model_function(name: &'static str, kind: Kind, arity: usize, models: Models, month_in_units: f64) -> ScalarUDF {
    ScalarUDF::new_from_impl(ModelFunction {
        name,
        kind,
        models,
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
        register(
            &ctx,
            Models {
                gamma_gamma: Some(gg),
                ..Models::bgnbd(cdnow())
            },
            7.0,
        );
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
        let fitted = Models {
            gamma_gamma: Some(gg),
            ..Models::bgnbd(cdnow())
        };
        let fallen_back = Models {
            purchases: Purchases::Nbd(NbdParams { r: 0.5, alpha: 8.0 }),
            gamma_gamma: None,
            activity: None,
        };
        let with_activity = Models {
            activity: Some(MbgNbdParams::new(0.525, 6.183, 0.891, 1.614).unwrap()),
            ..fitted
        };
        for models in [fitted, fallen_back, with_activity] {
            let here = SessionContext::new();
            register(&here, models, 7.0);
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
                       bgnbd_discounted_purchases(2, 30.43, 38.86, 12, 0.01), gg_expected_order_value(2, 30.0), \
                       gg_expected_order_value(0, 0), mbgnbd_p_alive(0, 0, 30), mbgnbd_p_no_purchase(13, 2, 30.43, 38.86)";
            let row = |ctx: SessionContext| async move {
                let b = ctx.sql(sql).await.unwrap().collect().await.unwrap().remove(0);
                (0..7)
                    .map(|i| b.column(i).as_any().downcast_ref::<Float64Array>().unwrap().value(0))
                    .collect::<Vec<_>>()
            };
            let (a, b) = (row(here).await, row(there).await);
            assert_eq!(a, b);
            match models.activity {
                // The modified BG/NBD lets a one-time buyer be gone.
                Some(p) => {
                    assert!(a[5] < 1.0, "{a:?}");
                    assert_eq!(a[5], mbgnbd::p_alive(&p, 0.0, 0.0, 30.0).unwrap());
                    assert_eq!(a[6], mbgnbd::p_no_purchase(&p, 13.0, 2.0, 30.43, 38.86).unwrap());
                }
                // Without it, the purchase model answers: BG/NBD keeps one-time buyers alive.
                None => assert_eq!(a[5], 1.0, "{a:?}"),
            }
            assert!(a[6] > 0.0 && a[6] < 1.0, "{a:?}");
            if models == fallen_back {
                // NBD: alive; (r + x) / (alpha + T) * t; own mean spend, else NULL (read as 0).
                assert_eq!(a[0], 1.0);
                assert!((a[6] - (46.86f64 / 59.86).powf(2.5)).abs() < 1e-12, "{a:?}");
                assert!((a[1] - (0.5 + 2.0) / (8.0 + 38.86) * 39.0).abs() < 1e-12, "{a:?}");
                assert_eq!((a[3], a[4]), (30.0, 0.0));
            }
            assert!(a[..4].iter().all(|v| v.is_finite() && *v > 0.0), "{a:?}");
        }
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
