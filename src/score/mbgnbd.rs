//! The modified BG/NBD model (MBG/NBD) of repeat purchasing from Batislam,
//! Denizel and Filiztekin (2007), "Empirical validation and comparison of
//! models for customer base analysis", *International Journal of Research in
//! Marketing* 24(3), 201-209 (BDF below), with the conditional expectation as
//! corrected by Wagner and Hoppe (2008), "Erratum on the MBG/NBD model",
//! *IJRM* 25(3), 225-226 (WH below). This module owns the model's parameters,
//! the per-customer log-likelihood (evaluated in log space), maximum-likelihood
//! fitting on recency/frequency summaries, and the per-customer scores:
//! probability of being alive, conditional expected purchases, probability of
//! no purchase in a coming period, and the expected purchases of a new customer.
//!
//! The story is that of BG/NBD ([`super::bgnbd`]; Fader, Hardie and Lee 2005,
//! FHL): while active, a customer buys as a Poisson process with rate
//! `λ ~ Gamma(r, α)`, and becomes inactive with probability `p ~ Beta(a, b)`
//! right after a purchase. The one change is that the first purchase (at time
//! 0) counts too: a customer can drop out right after it, so a customer with
//! no repeat purchase is not certainly alive (in BG/NBD they are), and the
//! model can explain one-time buyers by early dropout as well as by low
//! purchase rates.
//! A customer is summarised as for BG/NBD ([`RfSummary`]): `x` repeat purchases,
//! `t_x` the time of the last one (0 when `x = 0`), and `T` the time from the
//! first purchase to the end of calibration, in one consistent time unit; the
//! scale parameter `alpha` is in that unit.
//!
//! # Likelihood and posterior
//!
//! A customer with `x` repeat purchases, the last at `t_x`, either was still
//! alive at `T` (they survived `x + 1` dropout chances and made no purchase in
//! `(t_x, T]`) or dropped out right after the purchase at `t_x` (they survived
//! `x` chances and failed the next). With `λ` and `p` integrated out (BDF):
//!
//! `L = B(a, b+x+1)/B(a, b) Γ(r+x) α^r / (Γ(r) (α+T)^(r+x))
//!    + B(a+1, b+x)/B(a, b) Γ(r+x) α^r / (Γ(r) (α+t_x)^(r+x))`
//!
//! for every `x >= 0` (for `x = 0` the second term is `a/(a+b)`, dropout right
//! after the first purchase), against BG/NBD's FHL eq. 6, whose second term is
//! absent for `x = 0` and whose beta functions have `b+x`, `a+1, b+x-1`.
//!
//! Given the history and that the customer is alive at `T`, the likelihood
//! factor is `λ^x e^(-λT) (1-p)^(x+1)`, so `λ` and `p` are independent a
//! posteriori: `λ ~ Gamma(r+x, α+T)` and `p ~ Beta(a, b+x+1)`. From `T` on an
//! alive customer follows the BG/NBD story (dropout only after purchases), so
//! every prediction for an alive customer is BG/NBD's unconditional one with
//! `(r+x, α+T, a, b+x+1)`: the same algebra as BG/NBD with `b` replaced by
//! `b+1`. For the expected purchases this is WH's corrected conditional
//! expectation, in the form the `lifetimes` package implements.

pub use super::bgnbd::{RfSummary, group_summaries};
use super::bgnbd::{
    Validated, check_interior, logistic_complement, no_purchase_given_odds, softplus, time_index, validate_horizon,
    validate_observation, validated,
};
use super::distinct::DistinctValues;
use super::error::ModelError;
use super::optimize::{MinimizeOptions, minimize_with_gradient};
use super::special::{NeumaierSum, hyp2f1, ln_rising, ln_rising_dv, sum_arrays_in_parts};

const MODEL: &str = "MBG/NBD";

/// Parameters of the MBG/NBD model (BDF): purchase-rate heterogeneity
/// `λ ~ Gamma(shape r, rate alpha)` and dropout-probability heterogeneity
/// `p ~ Beta(a, b)`, as in BG/NBD. All four must be finite and positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MbgNbdParams {
    /// Shape of the gamma distribution of purchase rates.
    pub r: f64,
    /// Rate (inverse scale) of the gamma distribution of purchase rates, in
    /// the time unit of the data.
    pub alpha: f64,
    /// First shape parameter of the beta distribution of dropout probabilities.
    pub a: f64,
    /// Second shape parameter of the beta distribution of dropout probabilities.
    pub b: f64,
}

impl MbgNbdParams {
    /// Build a validated parameter set.
    ///
    /// # Errors
    /// [`ModelError::InvalidParameter`] naming the first parameter that is not
    /// finite and positive.
    pub fn new(r: f64, alpha: f64, a: f64, b: f64) -> Result<Self, ModelError> {
        let p = Self { r, alpha, a, b };
        p.validate()?;
        Ok(p)
    }

    /// Check that every parameter is finite and strictly positive.
    ///
    /// # Errors
    /// [`ModelError::InvalidParameter`] naming the first offending parameter.
    pub fn validate(&self) -> Result<(), ModelError> {
        for (name, value) in [("r", self.r), ("alpha", self.alpha), ("a", self.a), ("b", self.b)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(ModelError::InvalidParameter {
                    model: MODEL,
                    name,
                    value,
                    requirement: "must be finite and > 0",
                });
            }
        }
        Ok(())
    }
}

/// Result of a maximum-likelihood fit of the MBG/NBD model.
#[derive(Debug, Clone, PartialEq)]
pub struct MbgNbdFit {
    /// Maximum-likelihood estimates.
    pub params: MbgNbdParams,
    /// Weighted total log-likelihood at `params` (the module's `L`, summed over customers).
    pub log_likelihood: f64,
    /// Optimiser iterations spent (BFGS, plus Nelder-Mead and Newton polish
    /// when the derivative-free fallback ran).
    pub iterations: usize,
    /// Log-likelihood evaluations spent (each with its gradient on the BFGS path).
    pub evaluations: usize,
    /// Whether the optimiser certified the maximum (see [`super::optimize::Minimum::converged`]).
    pub converged: bool,
    /// Customers the model was fitted on: the total weight of the rows.
    pub customers: f64,
}

/// Options for [`fit_mbgnbd_with`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MbgNbdFitOptions {
    /// Starting point; when `None` one is derived from the data
    /// (`r = a = b = 1`, `alpha` from the mean observed purchase rate).
    pub initial: Option<MbgNbdParams>,
    /// Optimiser settings.
    pub minimize: MinimizeOptions,
    /// When `true` a fit that does not meet the convergence criterion is an
    /// error ([`ModelError::NotConverged`]); when `false` it is returned with
    /// `converged == false`.
    pub require_convergence: bool,
}

impl MbgNbdFitOptions {
    /// Default optimiser settings, data-derived start, convergence required.
    pub fn strict() -> Self {
        Self {
            require_convergence: true,
            ..Self::default()
        }
    }
}

/// The recency the model uses: `t_x`, or 0 for a customer without repeat
/// purchases (their last purchase is the first, at time 0).
fn recency(x: f64, t_x: f64) -> f64 {
    if x == 0.0 { 0.0 } else { t_x }
}

/// Number of parameters; gradients are with respect to `(ln r, ln α, ln a, ln b)`.
const PARAMS: usize = 4;

/// Parameter-only pieces of the log-likelihood, shared by all customers.
///
/// The log-likelihood of one customer (the module's `L`) is written as
/// `K_x - (r+x) ℓ(T) + softplus(u)` with `ℓ(v) = ln(1 + v/α)`,
/// `K_x = ln (r)_x - x ln α + ln (b)_(x+1) - ln (a+b)_(x+1)` and
/// `u = ln a - ln(b+x) + (r+x) (ℓ(T) - ℓ(t_x))` (`t_x = 0` for `x = 0`): the
/// first term of `L` is `exp(K_x - (r+x) ℓ(T))` (`r ln α` cancels exactly, and
/// `B(a, b+x+1)/B(a, b) = (b)_(x+1)/(a+b)_(x+1)`), the second is `e^u` times
/// the first (`B(a+1, b+x)/B(a, b+x+1) = a/(b+x)`). `softplus(u)`'s
/// derivative `s = 1/(1 + e^-u)` is the posterior probability that the
/// customer dropped out at their last purchase, `1 -` [`p_alive`].
struct LlConstants {
    r: f64,
    alpha: f64,
    a: f64,
    b: f64,
    ln_alpha: f64,
    ln_a: f64,
}

/// The terms of one distinct `x` (see [`LlConstants`]), with their
/// derivatives in the log-parameters.
#[derive(Debug, Clone, Copy)]
struct XTerms {
    /// `r + x`.
    rx: f64,
    /// `K_x`.
    k: f64,
    /// `ln a - ln(b + x)`.
    c: f64,
    /// Gradient of `K_x`.
    dk: [f64; PARAMS],
    /// Gradient of `c` (`r` and `α` do not enter it).
    dc: [f64; PARAMS],
}

/// `ℓ(v) = ln(1 + v/α)` and `q(v) = v/(α + v) = -α dℓ/dα` of one distinct time `v`.
#[derive(Debug, Clone, Copy)]
struct TimeTerms {
    ell: f64,
    q: f64,
}

impl LlConstants {
    fn new(p: &MbgNbdParams) -> Self {
        Self {
            r: p.r,
            alpha: p.alpha,
            a: p.a,
            b: p.b,
            ln_alpha: p.alpha.ln(),
            ln_a: p.a.ln(),
        }
    }

    /// Terms that depend only on `x`.
    ///
    /// The gamma-function ratios are log rising factorials, exact for small
    /// whole `x` and free of cancellation for huge `b` (see [`ln_rising`]);
    /// their derivatives are [`ln_rising_dv`], `ψ(v+x) - ψ(v)`.
    fn x_terms(&self, x: f64) -> XTerms {
        let (r, a, b) = (self.r, self.a, self.b);
        let n = x + 1.0;
        let k = ln_rising(r, x) - x * self.ln_alpha + ln_rising(b, n) - ln_rising(a + b, n);
        let psi_ab = ln_rising_dv(a + b, n);
        let dk = [
            r * ln_rising_dv(r, x),
            -x,
            -a * psi_ab,
            b * (ln_rising_dv(b, n) - psi_ab),
        ];
        XTerms {
            rx: r + x,
            k,
            c: self.ln_a - (b + x).ln(),
            dk,
            dc: [0.0, 0.0, 1.0, -b / (b + x)],
        }
    }

    /// `ℓ(v)` is `ln_1p(v/α)` (exact for small `v/α`), or `ln(α+v) - ln α`
    /// when `v/α` overflows, so that it is finite for every valid input.
    fn time_terms(&self, v: f64) -> TimeTerms {
        let ratio = v / self.alpha;
        let ell = if ratio.is_finite() {
            ratio.ln_1p()
        } else {
            (self.alpha + v).ln() - self.ln_alpha
        };
        TimeTerms {
            ell,
            q: v / (self.alpha + v),
        }
    }

    /// Log-likelihood of one customer (see [`LlConstants`]).
    fn customer(&self, x: f64, t_x: f64, t_cal: f64) -> f64 {
        let xt = self.x_terms(x);
        xt.k + time_part(&xt, self.time_terms(t_cal), self.time_terms(recency(x, t_x))).0
    }
}

/// The part of a customer's log-likelihood that depends on the times,
/// `-(r+x) ℓ(T) + softplus(u)`, and the dropout probability `s`.
fn time_part(xt: &XTerms, age: TimeTerms, last: TimeTerms) -> (f64, f64) {
    let (sp, s) = softplus(xt.c + xt.rx * (age.ell - last.ell));
    (sp - xt.rx * age.ell, s)
}

/// Log-likelihood of one customer's `(x, t_x, T)` under `params`, `ln L` with
///
/// `L = B(a, b+x+1)/B(a, b) Γ(r+x) α^r / (Γ(r) (α+T)^(r+x))
///    + B(a+1, b+x)/B(a, b) Γ(r+x) α^r / (Γ(r) (α+t_x)^(r+x))`
///
/// (BDF; see the module documentation), computed in log space. Unlike
/// BG/NBD both terms are present for `x = 0`, where `t_x` is taken as 0 and
/// `L = b/(a+b) (α/(α+T))^r + a/(a+b)`.
///
/// # Errors
/// [`ModelError::InvalidParameter`] / [`ModelError::InvalidInput`] for
/// invalid parameters or an observation violating `x >= 0` (whole),
/// `0 <= t_x <= T`, `T > 0`.
pub fn log_likelihood(params: &MbgNbdParams, x: f64, t_x: f64, t_cal: f64) -> Result<f64, ModelError> {
    params.validate()?;
    validate_observation(MODEL, x, t_x, t_cal, None)?;
    Ok(LlConstants::new(params).customer(x, t_x, t_cal))
}

/// Weighted total log-likelihood of a data set, `sum_i weight_i * ln L_i`.
///
/// # Errors
/// As [`log_likelihood`], plus [`ModelError::InvalidInput`] for a negative
/// or non-finite weight (with the row index) and [`ModelError::EmptyData`]
/// when the total weight is zero.
pub fn total_log_likelihood(params: &MbgNbdParams, data: &[RfSummary]) -> Result<f64, ModelError> {
    params.validate()?;
    let prepared = Prepared::new(data)?;
    Ok(prepared.evaluate(params).0)
}

/// Customers with one distinct `x`.
struct XGroup {
    x: f64,
    /// `(index of t_x, index of T, weight)`, indices into [`Prepared::times`];
    /// `t_x` is 0 for `x = 0`.
    rows: Vec<(u32, u32, f64)>,
}

/// Validated data arranged so that every parameter-dependent term is computed
/// once per distinct value rather than once per customer: the gamma-function
/// terms per distinct `x`, the logarithms per distinct time (`t_x` and `T`
/// are at day granularity in practice, so there are a few thousand at most).
struct Prepared {
    /// Distinct values of `t_x` and `T`, in first-seen order.
    times: Vec<f64>,
    /// Ordered by `x`; rows in input order.
    groups: Vec<XGroup>,
    /// Number of summed rows (entries of every group).
    rows: usize,
    total_weight: f64,
    /// Weighted sums used for the starting point.
    sum_wx: f64,
    sum_wt: f64,
}

impl Prepared {
    fn new(data: &[RfSummary]) -> Result<Self, ModelError> {
        let Validated {
            rows,
            total_weight,
            sum_wx,
            sum_wt,
        } = validated(MODEL, data)?;
        let mut times = DistinctValues::default();
        let mut index = |v: f64| time_index(MODEL, &mut times, v);
        let mut groups: Vec<XGroup> = Vec::new();
        for s in &rows {
            let row = (index(recency(s.x, s.t_x))?, index(s.t_cal)?, s.weight);
            match groups.last_mut() {
                Some(g) if g.x == s.x => g.rows.push(row),
                _ => groups.push(XGroup {
                    x: s.x,
                    rows: vec![row],
                }),
            }
        }
        Ok(Self {
            times: times.values().to_vec(),
            groups,
            rows: rows.len(),
            total_weight,
            sum_wx,
            sum_wt,
        })
    }

    /// The weighted total log-likelihood and its gradient with respect to
    /// `(ln r, ln α, ln a, ln b)`.
    fn evaluate(&self, params: &MbgNbdParams) -> (f64, [f64; PARAMS]) {
        let k = LlConstants::new(params);
        let times: Vec<TimeTerms> = self.times.iter().map(|&v| k.time_terms(v)).collect();
        let [ll, g0, g1, g2, g3] = sum_arrays_in_parts(self.rows, |part, parts| self.partial(&k, &times, part, parts));
        (ll, [g0, g1, g2, g3])
    }

    /// Log-likelihood and gradient of slice `part` of `parts` of every x
    /// group. Customers' terms are summed whole, with compensated summation;
    /// the gradient's per-group sums are plain and their totals compensated.
    fn partial(&self, k: &LlConstants, times: &[TimeTerms], part: usize, parts: usize) -> [f64; 1 + PARAMS] {
        let mut total = NeumaierSum::default();
        let mut grad = [NeumaierSum::default(); PARAMS];
        for group in &self.groups {
            let n = group.rows.len();
            let (from, to) = (n * part / parts, n * (part + 1) / parts);
            if from == to {
                continue;
            }
            let xt = k.x_terms(group.x);
            // Weighted sums over the slice: Σw, Σw ℓ(T), Σw s (ℓ(T) - ℓ(t_x)), Σw q(T),
            // Σw s (q(T) - q(t_x)), Σw s.
            let (mut sw, mut s_ell, mut s_dell, mut s_q, mut s_dq, mut s_s) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
            for &(last, age, w) in &group.rows[from..to] {
                let (age, last) = (times[age as usize], times[last as usize]);
                let (v, s) = time_part(&xt, age, last);
                total.add(w * (xt.k + v));
                let ws = w * s;
                sw += w;
                s_ell += w * age.ell;
                s_dell += ws * (age.ell - last.ell);
                s_q += w * age.q;
                s_dq += ws * (age.q - last.q);
                s_s += ws;
            }
            let direct = [k.r * (s_dell - s_ell), xt.rx * (s_q - s_dq), 0.0, 0.0];
            for (i, g) in grad.iter_mut().enumerate() {
                g.add(xt.dk[i] * sw + xt.dc[i] * s_s + direct[i]);
            }
        }
        let [g0, g1, g2, g3] = grad.map(|g| g.value());
        [total.value(), g0, g1, g2, g3]
    }

    /// Data-derived start: r = a = b = 1 and alpha = r / (observed rate).
    fn default_start(&self) -> MbgNbdParams {
        let rate = self.sum_wx / self.sum_wt;
        let alpha = if rate > 0.0 {
            1.0 / rate
        } else {
            self.sum_wt / self.total_weight
        };
        MbgNbdParams {
            r: 1.0,
            alpha,
            a: 1.0,
            b: 1.0,
        }
    }
}

fn from_log(theta: &[f64]) -> MbgNbdParams {
    MbgNbdParams {
        r: theta[0].exp(),
        alpha: theta[1].exp(),
        a: theta[2].exp(),
        b: theta[3].exp(),
    }
}

/// Fit the MBG/NBD model by maximum likelihood with default options,
/// requiring convergence.
///
/// Parameters are optimised as `ln r, ln alpha, ln a, ln b` with the
/// analytic gradient (see [`super::optimize::minimize_with_gradient`]), as
/// for BG/NBD.
///
/// # Errors
/// [`ModelError::InvalidInput`] for an invalid row (with its index),
/// [`ModelError::EmptyData`] when the total weight is zero,
/// [`ModelError::Degenerate`] when no customer made a repeat purchase or a
/// parameter runs off to the boundary, [`ModelError::NonFiniteObjective`] if
/// the likelihood cannot be evaluated, [`ModelError::NotConverged`] if the
/// optimiser does not converge.
pub fn fit_mbgnbd(data: &[RfSummary]) -> Result<MbgNbdFit, ModelError> {
    fit_mbgnbd_with(data, &MbgNbdFitOptions::strict())
}

/// Fit the MBG/NBD model by maximum likelihood with explicit options.
///
/// # Errors
/// As [`fit_mbgnbd`]; [`ModelError::NotConverged`] only when
/// `options.require_convergence` is set.
pub fn fit_mbgnbd_with(data: &[RfSummary], options: &MbgNbdFitOptions) -> Result<MbgNbdFit, ModelError> {
    let prepared = Prepared::new(data)?;
    if prepared.sum_wx == 0.0 {
        // Everyone's likelihood b/(a+b) (α/(α+T))^r + a/(a+b) rises towards 1
        // as a/(a+b) -> 1: "all dropped out at once" is the unattained supremum.
        return Err(ModelError::Degenerate {
            model: MODEL,
            reason:
                "no customer has a repeat purchase (all x = 0), so the purchase rate and dropout are not identified"
                    .into(),
        });
    }
    let start = match options.initial {
        Some(p) => {
            p.validate()?;
            p
        }
        None => prepared.default_start(),
    };
    let theta0 = [start.r.ln(), start.alpha.ln(), start.a.ln(), start.b.ln()];
    let objective = |theta: &[f64], gradient: &mut [f64]| {
        let (ll, g) = prepared.evaluate(&from_log(theta));
        for (out, v) in gradient.iter_mut().zip(g) {
            *out = -v;
        }
        -ll
    };
    let m = minimize_with_gradient(objective, &theta0, &options.minimize);
    let params = from_log(&m.params);
    if !m.value.is_finite() || params.validate().is_err() {
        return Err(ModelError::NonFiniteObjective {
            model: MODEL,
            at: format!(
                "r = {}, alpha = {}, a = {}, b = {} (best point after {} iterations)",
                params.r, params.alpha, params.a, params.b, m.iterations
            ),
        });
    }
    check_interior(MODEL, &["r", "alpha", "a", "b"], &m.params)?;
    let log_likelihood = -m.value;
    if options.require_convergence && !m.converged {
        return Err(ModelError::NotConverged {
            model: MODEL,
            iterations: m.iterations,
            log_likelihood,
        });
    }
    Ok(MbgNbdFit {
        params,
        log_likelihood,
        iterations: m.iterations,
        evaluations: m.evaluations,
        converged: m.converged,
        customers: prepared.total_weight,
    })
}

/// The checks of a customer's state for the predictions: those of a fitted
/// observation, except that a customer first seen on the as-of day (`x = t_x = T = 0`,
/// nothing observed after the first purchase) is valid. Unlike BG/NBD, the model says
/// something about them: they may have dropped out at that first purchase.
fn validate_state(x: f64, t_x: f64, t_cal: f64) -> Result<(), ModelError> {
    if x == 0.0 && t_x == 0.0 && t_cal == 0.0 {
        return Ok(());
    }
    validate_observation(MODEL, x, t_x, t_cal, None)
}

/// Log of the odds that a customer has dropped out, `ln[a/(b+x)] +
/// (r+x) ln[(α+T)/(α+t_x)]` (`t_x = 0` for `x = 0`): the ratio of the second
/// term of `L` to the first.
///
/// Every piece is finite for valid inputs, so the sum is never `inf - inf`:
/// the logarithms are taken separately (`a/(b+x)` can underflow), and
/// `ln[(α+T)/(α+t_x)]` is `ln_1p` of `(T-t_x)/(α+t_x)` (exact near 1) unless
/// that ratio overflows.
fn log_dropout_odds(p: &MbgNbdParams, x: f64, t_x: f64, t_cal: f64) -> f64 {
    let t_x = recency(x, t_x);
    let ratio = (t_cal - t_x) / (p.alpha + t_x);
    let ln_ratio = if ratio.is_finite() {
        ratio.ln_1p()
    } else {
        (p.alpha + t_cal).ln() - (p.alpha + t_x).ln()
    };
    p.a.ln() - (p.b + x).ln() + (p.r + x) * ln_ratio
}

/// Probability that a customer with history `(x, t_x, T)` is still active at
/// `T` (BDF, appendix):
///
/// `1 / (1 + a/(b+x) ((α+T)/(α+t_x))^(r+x))`,
///
/// the first term of `L` over `L`. Unlike BG/NBD this is below 1 for a
/// customer without repeat purchases: `1 / (1 + a/b ((α+T)/α)^r)`, which is
/// `b/(a+b)` (surviving the dropout chance at the first purchase) at `T = 0`
/// and falls as `T` grows without a purchase.
///
/// A customer whose first purchase is on the as-of day (`x = t_x = T = 0`) is
/// defined here too: `b/(a+b)`.
///
/// # Errors
/// Invalid parameters or observation, as for [`log_likelihood`].
pub fn p_alive(params: &MbgNbdParams, x: f64, t_x: f64, t_cal: f64) -> Result<f64, ModelError> {
    params.validate()?;
    validate_state(x, t_x, t_cal)?;
    Ok(logistic_complement(log_dropout_odds(params, x, t_x, t_cal)))
}

/// Half-width of the window around `a = 1` in which the expectations are
/// interpolated instead of evaluated (the closed form is 0/0 at `a = 1`).
const A_NEAR_ONE: f64 = 1e-5;

/// Expected purchases in the next `t` of a customer alive now, with
/// `x` repeat purchases so far and `alpha_plus_age = α + T`:
///
/// `(a+b+x)/(a-1) [1 - ((α+T)/(α+T+t))^(r+x) 2F1(r+x, b+x+1; a+b+x; z)]`,
/// `z = t/(α+T+t)`,
///
/// which is FHL eq. 7 (BG/NBD's `E[X(t)]`) with the posterior parameters
/// `(r+x, α+T, a, b+x+1)` of the module documentation (WH).
///
/// Evaluated through the Euler transformation (A&S 15.3.3),
/// `(1-z)^(r+x) 2F1(r+x, b+x+1; a+b+x; z) = (1-z)^(a-1) 2F1(a+b-r, a-1; a+b+x; z)`,
/// whose series has bounded terms even for heavy buyers (large `x`), where the
/// untransformed 2F1 overflows although the product is tame. The removable
/// singularity at `a = 1` is bridged by linear interpolation between
/// `a = 1 ± A_NEAR_ONE` (error ~1e-10 relative). Rounding below 0 (for
/// values next to 0) is clamped to 0; a value that overflows (only at
/// absurd parameters, e.g. a mean purchase rate `r/α` beyond 1e300) is
/// [`ModelError::Undefined`].
fn alive_expectation(p: &MbgNbdParams, x: f64, alpha_plus_age: f64, t: f64) -> Result<f64, ModelError> {
    if t == 0.0 {
        return Ok(0.0);
    }
    let z = t / (alpha_plus_age + t);
    let ln_one_minus_z = -(t / alpha_plus_age).ln_1p();
    let at = |a: f64| -> Result<f64, ModelError> {
        let c = a + p.b + x;
        let f = hyp2f1(a + p.b - p.r, a - 1.0, c, z)?;
        let one_minus = if f > 0.0 {
            -((a - 1.0) * ln_one_minus_z + f.ln()).exp_m1()
        } else {
            1.0 - ((a - 1.0) * ln_one_minus_z).exp() * f
        };
        Ok(c / (a - 1.0) * one_minus)
    };
    let e = if (p.a - 1.0).abs() < A_NEAR_ONE {
        let (lo, hi) = (1.0 - A_NEAR_ONE, 1.0 + A_NEAR_ONE);
        let (e_lo, e_hi) = (at(lo)?, at(hi)?);
        e_lo + (p.a - lo) / (hi - lo) * (e_hi - e_lo)
    } else {
        at(p.a)?
    };
    if !e.is_finite() {
        return Err(ModelError::Undefined {
            context: "MBG/NBD expected purchases",
            reason: format!(
                "the expectation is not a finite f64 for r = {}, alpha = {}, a = {}, b = {}, x = {x}, alpha + T = {alpha_plus_age}, t = {t}",
                p.r, p.alpha, p.a, p.b
            ),
        });
    }
    // An expected count: rounding in a value next to 0 must not make it negative.
    Ok(e.max(0.0))
}

/// Expected number of purchases in `(T, T + t]` for a customer with history
/// `(x, t_x, T)`, `E[Y(t) | x, t_x, T]` (BDF as corrected by WH):
///
/// `(a+b+x)/(a-1) [1 - ((α+T)/(α+T+t))^(r+x) 2F1(r+x, b+x+1; a+b+x; t/(α+T+t))]
///  / [1 + a/(b+x) ((α+T)/(α+t_x))^(r+x)]`,
///
/// i.e. [`p_alive`] times the expected purchases of an alive customer (see
/// the module documentation); a customer who has dropped out buys nothing.
///
/// # Errors
/// Invalid parameters, observation or horizon (`t` finite, `>= 0`), a
/// [`ModelError::Hypergeometric`] failure (only for `t` many orders of
/// magnitude beyond `α + T`), or [`ModelError::Undefined`] when the value
/// overflows (absurd parameters).
pub fn expected_purchases(params: &MbgNbdParams, t: f64, x: f64, t_x: f64, t_cal: f64) -> Result<f64, ModelError> {
    params.validate()?;
    validate_observation(MODEL, x, t_x, t_cal, None)?;
    validate_horizon(MODEL, t)?;
    let alive = logistic_complement(log_dropout_odds(params, x, t_x, t_cal));
    if alive == 0.0 {
        // Certainly dropped out: no purchases, whatever an alive customer would make.
        return Ok(0.0);
    }
    Ok(alive * alive_expectation(params, x, params.alpha + t_cal, t)?)
}

/// Expected number of repeat purchases `E[X(t)]` in the first `t` time units
/// of a newly acquired customer (BDF):
/// `b/(a-1) [1 - (α/(α+t))^r 2F1(r, b+1; a+b; t/(α+t))]`,
/// the `x = t_x = T = 0` case of [`expected_purchases`] (alive with
/// probability `b/(a+b)` after the first purchase).
///
/// # Errors
/// Invalid parameters or horizon, a [`ModelError::Hypergeometric`] failure
/// for astronomically long horizons, or [`ModelError::Undefined`] when the
/// value overflows (absurd parameters).
pub fn expected_purchases_unconditional(params: &MbgNbdParams, t: f64) -> Result<f64, ModelError> {
    params.validate()?;
    validate_horizon(MODEL, t)?;
    Ok(params.b / (params.a + params.b) * alive_expectation(params, 0.0, params.alpha, t)?)
}

/// Probability that a customer with history `(x, t_x, T)` makes no purchase in
/// `(T, T + t]`:
///
/// `1 - P(alive) + P(alive) ((α+T)/(α+T+t))^(r+x)`.
///
/// Derivation: a customer who has dropped out (probability `1 - P(alive)`,
/// [`p_alive`]) makes no purchase. One who is alive at `T` can drop out only
/// right after a purchase, so they make none in `(T, T+t]` exactly when their
/// Poisson process has no event there, with probability `e^(-λt)`; given the
/// history and being alive, `λ ~ Gamma(r+x, α+T)` (module documentation), and
/// `E[e^(-λt)] = ((α+T)/(α+T+t))^(r+x)`, the gamma's Laplace transform. The
/// same expression is the likelihood ratio `L(x, t_x, T+t) / L(x, t_x, T)`:
/// the likelihood of a history is the probability of its purchases and of
/// none after `t_x` until `T`, so extending the silence to `T + t` and
/// dividing conditions on the history.
///
/// # Errors
/// Invalid parameters, observation or horizon (`t` finite, `>= 0`).
pub fn p_no_purchase(params: &MbgNbdParams, t: f64, x: f64, t_x: f64, t_cal: f64) -> Result<f64, ModelError> {
    params.validate()?;
    validate_state(x, t_x, t_cal)?;
    validate_horizon(MODEL, t)?;
    if t == 0.0 {
        return Ok(1.0);
    }
    let odds = log_dropout_odds(params, x, t_x, t_cal);
    Ok(no_purchase_given_odds(params.r, params.alpha, odds, t, x, t_cal))
}

#[cfg(test)]
mod tests;
