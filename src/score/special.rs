//! Special functions needed by the customer-scoring models: the log-gamma and
//! log-beta functions used by every likelihood, and the Gauss hypergeometric
//! function 2F1 that appears in the BG/NBD expectations (Fader, Hardie and Lee
//! 2005, "Counting your customers the easy way", eqs. 7 and 10). The
//! implementations follow Abramowitz and Stegun, *Handbook of Mathematical
//! Functions* (1964), ch. 6 and 15; `ln_gamma` uses the Lanczos (1964)
//! approximation with g = 7, n = 9 (Godfrey's coefficients), good to about
//! 1e-15 relative.
//!
//! `hyp2f1` evaluates the hypergeometric series directly for `0 <= z < 1`
//! (after an Euler transformation when that speeds up convergence), maps
//! `z < 0` into `(0, 1)` with the Pfaff transformation, and returns a
//! [`ModelError::Hypergeometric`] instead of a number whenever the series
//! cannot be summed to full precision (z too close to 1, `z >= 1`, a pole in
//! `c`, overflow, or cancellation).

use super::error::ModelError;
use std::f64::consts::PI;

/// Lanczos parameter g.
const LANCZOS_G: f64 = 7.0;
/// Lanczos series coefficients for g = 7, n = 9.
const LANCZOS_COEF: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];
/// ln(sqrt(2 pi)).
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// Largest number of series terms `hyp2f1` sums before giving up.
pub const HYP2F1_MAX_TERMS: usize = 2_000_000;

/// If the largest series term exceeds the sum by this factor, too many digits
/// have cancelled and `hyp2f1` reports an error instead of a value.
const CANCELLATION_LIMIT: f64 = 1e8;

/// `sin(pi * x)` with the argument reduced exactly first, so that large `|x|`
/// does not lose precision in the product `pi * x`.
fn sin_pi(x: f64) -> f64 {
    let r = x % 2.0; // exact in floating point
    (PI * r).sin()
}

/// Natural logarithm of the absolute value of the gamma function, `ln|Γ(x)|`.
///
/// Uses the Lanczos approximation for `x >= 0.5` and the reflection formula
/// `Γ(x) Γ(1 - x) = π / sin(π x)` below that. Accurate to roughly 1e-15
/// relative (1e-15 absolute near the zeros at 1 and 2). Returns `+inf` at the
/// poles `x = 0, -1, -2, ...` and `NaN` for `NaN`.
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x == f64::INFINITY {
        return f64::INFINITY;
    }
    if x <= 0.0 && x == x.floor() {
        return f64::INFINITY;
    }
    if x < 0.5 {
        // Reflection, A&S 6.1.17.
        let s = sin_pi(x).abs();
        return (PI / s).ln() - ln_gamma(1.0 - x);
    }
    let y = x - 1.0;
    let t = y + LANCZOS_G + 0.5;
    let mut series = LANCZOS_COEF[0];
    for (i, c) in LANCZOS_COEF.iter().enumerate().skip(1) {
        series += c / (y + i as f64);
    }
    LN_SQRT_2PI + (y + 0.5) * t.ln() - t + series.ln()
}

/// Natural logarithm of the beta function,
/// `ln B(a, b) = ln Γ(a) + ln Γ(b) - ln Γ(a + b)`, for `a, b > 0`.
///
/// Returns `NaN` if either argument is not positive (the models only ever
/// need positive arguments; callers validate their parameters first).
pub fn ln_beta(a: f64, b: f64) -> f64 {
    if !(a > 0.0 && b > 0.0) {
        return f64::NAN;
    }
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// Log of the rising factorial (Pochhammer symbol),
/// `ln (v)_x = ln Γ(v + x) - ln Γ(v)`, for `v > 0`, `x >= 0`.
///
/// Computed without subtracting two large `ln Γ` values: as `sum ln(v + k)`
/// for whole `x <= 32`, through the difference of Stirling series
/// (A&S 6.1.41, truncated after the `z^-5` term, error < 1e-17) for
/// `v >= 100`, and as the plain difference otherwise (where both terms are
/// moderate). Exactly 0 for `x = 0`. Returns `NaN` for invalid arguments.
pub fn ln_rising(v: f64, x: f64) -> f64 {
    if !(v > 0.0 && x >= 0.0 && v.is_finite() && x.is_finite()) {
        return f64::NAN;
    }
    if x == 0.0 {
        return 0.0;
    }
    if x == x.floor() && x <= 32.0 {
        let mut total = 0.0;
        let mut k = 0.0;
        while k < x {
            total += (v + k).ln();
            k += 1.0;
        }
        return total;
    }
    if v >= 100.0 {
        let stirling_tail = |z: f64| 1.0 / (12.0 * z) - 1.0 / (360.0 * z.powi(3)) + 1.0 / (1260.0 * z.powi(5));
        return x * v.ln() + (v + x - 0.5) * (x / v).ln_1p() - x + stirling_tail(v + x) - stirling_tail(v);
    }
    ln_gamma(v + x) - ln_gamma(v)
}

/// The digamma function `ψ(x) = d/dx ln Γ(x)` for `x > 0`.
///
/// Shifts the argument up to at least 10 with `ψ(x) = ψ(x + 1) - 1/x` and
/// then sums the asymptotic series A&S 6.3.18 through the `x^-14` term
/// (truncation error below 1e-17 there). Absolute accuracy about 1e-15.
/// Returns `NaN` for `x <= 0` or `NaN`, `+inf` for `+inf`.
pub fn digamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x == f64::INFINITY {
        return x;
    }
    let mut x = x;
    let mut shift = 0.0;
    while x < 10.0 {
        shift -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    // Bernoulli terms B_2k / (2k x^2k), k = 1..7.
    let series = f
        * (1.0 / 12.0
            - f * (1.0 / 120.0
                - f * (1.0 / 252.0 - f * (1.0 / 240.0 - f * (1.0 / 132.0 - f * (691.0 / 32_760.0 - f / 12.0))))));
    shift + x.ln() - 0.5 / x - series
}

/// Derivative in `v` of the log rising factorial [`ln_rising`]`(v, x)`, i.e.
/// `ψ(v + x) - ψ(v)`, for `v > 0`, `x >= 0`.
///
/// Follows the branches of [`ln_rising`], so that it is the derivative of
/// exactly the function evaluated there: `sum 1/(v + k)` for whole
/// `x <= 32`, the derivative of the Stirling-series difference for
/// `v >= 100` (no cancellation for huge `v`), and the digamma difference
/// otherwise. Exactly 0 for `x = 0`. Returns `NaN` for invalid arguments.
pub fn ln_rising_dv(v: f64, x: f64) -> f64 {
    if !(v > 0.0 && x >= 0.0 && v.is_finite() && x.is_finite()) {
        return f64::NAN;
    }
    if x == 0.0 {
        return 0.0;
    }
    if x == x.floor() && x <= 32.0 {
        let mut total = 0.0;
        let mut k = 0.0;
        while k < x {
            total += 1.0 / (v + k);
            k += 1.0;
        }
        return total;
    }
    if v >= 100.0 {
        // d/dz of the Stirling tail 1/(12z) - 1/(360z^3) + 1/(1260z^5).
        let tail_dz = |z: f64| {
            let f = 1.0 / (z * z);
            f * (-1.0 / 12.0 + f * (1.0 / 120.0 - f / 252.0))
        };
        return (x / v).ln_1p() + 0.5 * x / (v * (v + x)) + tail_dz(v + x) - tail_dz(v);
    }
    digamma(v + x) - digamma(v)
}

/// `Some(n)` if `v` is an exactly representable non-positive integer `-n`.
fn non_positive_integer(v: f64) -> Option<u64> {
    if v <= 0.0 && v == v.floor() && v > -(u64::MAX as f64) {
        Some((-v) as u64)
    } else {
        None
    }
}

/// Gauss hypergeometric function `2F1(a, b; c; z)` for real arguments.
///
/// Domain: any finite `a`, `b`, `c` with `c` not a pole (`c = 0, -1, -2, ...`
/// unless the series terminates first), and `z < 1`. When `a` or `b` is a
/// non-positive integer the function is a polynomial and any finite `z` is
/// accepted.
///
/// Method (A&S 15.1.1, 15.3.3, 15.3.5):
/// * `0 <= z < 1`: the defining power series, summed until a rigorous bound
///   on the remaining tail is below machine precision. For `z > 0.5` with
///   `c - a - b < 0` the Euler transformation
///   `2F1(a,b;c;z) = (1-z)^(c-a-b) 2F1(c-a, c-b; c; z)` is applied first so
///   that the terms decay polynomially as well as geometrically.
/// * `z < 0`: the Pfaff transformation
///   `2F1(a,b;c;z) = (1-z)^(-a) 2F1(a, c-b; c; z/(z-1))` maps the argument into
///   `(0, 1)`, where the series has no alternating signs.
///
/// # Errors
///
/// [`ModelError::Hypergeometric`] when an argument is not finite, `z >= 1`
/// (and the series does not terminate), `c` is a pole, the series needs more
/// than [`HYP2F1_MAX_TERMS`] terms (the effective argument is within roughly
/// 1e-5 of 1), the result overflows, or cancellation between terms of
/// opposite sign would leave fewer than about 8 correct digits.
///
/// Values are remembered per thread (see [`HYP2F1_MEMO_ENTRIES`]): scoring a customer
/// base asks for the same arguments again and again (they depend on a customer's repeat
/// purchases and age, not on who the customer is), and a remembered value is the one
/// computed, so results do not depend on what was asked before.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Result<f64, ModelError> {
    let key = [a.to_bits(), b.to_bits(), c.to_bits(), z.to_bits()];
    if let Some(v) = HYP2F1_MEMO.with_borrow(|memo| memo.get(&key).copied()) {
        return Ok(v);
    }
    let v = hyp2f1_computed(a, b, c, z)?;
    HYP2F1_MEMO.with_borrow_mut(|memo| {
        if memo.len() >= HYP2F1_MEMO_ENTRIES {
            memo.clear();
        }
        memo.insert(key, v);
    });
    Ok(v)
}

/// Most values [`hyp2f1`] remembers per thread (about 12 MB at most); when full, it
/// starts over. At 1.8M buyers the BG/NBD expectations (12 months of discounted purchases
/// plus two horizons per buyer) asked for about 25M values of far fewer distinct arguments.
pub const HYP2F1_MEMO_ENTRIES: usize = 1 << 18;

thread_local! {
    /// [`hyp2f1`]'s remembered values, by the bits of `(a, b, c, z)`.
    static HYP2F1_MEMO: std::cell::RefCell<std::collections::HashMap<[u64; 4], f64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// [`hyp2f1`] without the memo.
fn hyp2f1_computed(a: f64, b: f64, c: f64, z: f64) -> Result<f64, ModelError> {
    let fail = |reason: String| ModelError::Hypergeometric { a, b, c, z, reason };
    if !(a.is_finite() && b.is_finite() && c.is_finite() && z.is_finite()) {
        return Err(fail("all arguments must be finite".into()));
    }
    // Terminating series: a or b is a non-positive integer -> polynomial in z.
    let terminating = match (non_positive_integer(a), non_positive_integer(b)) {
        (Some(m), Some(n)) => Some(m.min(n)),
        (Some(m), None) => Some(m),
        (None, Some(n)) => Some(n),
        (None, None) => None,
    };
    if let Some(c_pole) = non_positive_integer(c) {
        // (c)_n vanishes at n = -c + 1; fine only if the series stops first.
        match terminating {
            Some(deg) if deg <= c_pole => {}
            _ => {
                return Err(fail(format!(
                    "c = {c} is a non-positive integer (a pole of 2F1) and the series does not terminate before it"
                )));
            }
        }
    }
    if z == 0.0 || terminating == Some(0) {
        return Ok(1.0);
    }
    if terminating.is_some() {
        return series(a, b, c, z).map_err(fail);
    }
    if z >= 1.0 {
        return Err(fail(
            "z must be < 1: the series diverges there and no continuation to z >= 1 is implemented".into(),
        ));
    }
    if z < 0.0 {
        // Pfaff transformation, A&S 15.3.4. Choose the form whose new series
        // terminates if there is one; otherwise the first form.
        let w = z / (z - 1.0);
        let ln_one_minus_z = (-z).ln_1p();
        let (exponent, f) = if non_positive_integer(c - a).is_some() {
            (-b, unit_interval(c - a, b, c, w))
        } else {
            (-a, unit_interval(a, c - b, c, w))
        };
        let f = f.map_err(fail)?;
        return scale_by_exp(exponent * ln_one_minus_z, f).map_err(fail);
    }
    unit_interval(a, b, c, z).map_err(fail)
}

/// 2F1 for `0 < z < 1`, using the Euler transformation when it helps.
fn unit_interval(a: f64, b: f64, c: f64, z: f64) -> Result<f64, String> {
    if z >= 1.0 {
        return Err(format!(
            "transformed argument {z} is not below 1 (z too close to -infinity)"
        ));
    }
    let s = c - a - b;
    let euler_terminates = non_positive_integer(c - a).is_some() || non_positive_integer(c - b).is_some();
    if euler_terminates || (z > 0.5 && s < 0.0) {
        // Euler transformation, A&S 15.3.3.
        let f = series(c - a, c - b, c, z)?;
        return scale_by_exp(s * (-z).ln_1p(), f);
    }
    series(a, b, c, z)
}

/// `exp(log_scale) * f`, computed through logarithms so that a huge factor
/// times a tiny one does not overflow in between.
fn scale_by_exp(log_scale: f64, f: f64) -> Result<f64, String> {
    if f == 0.0 {
        return Ok(0.0);
    }
    let v = f.signum() * (log_scale + f.abs().ln()).exp();
    if v.is_finite() {
        Ok(v)
    } else {
        Err("result overflows f64".into())
    }
}

/// Sum the defining series `sum_n (a)_n (b)_n / ((c)_n n!) z^n`.
///
/// Stops when the tail bound `|t| rho / (1 - rho)` is below machine
/// precision relative to the sum, where `rho` bounds every later term ratio
/// (the factors `(a+m)/(m+1)` and `(b+m)/(c+m)` are monotone in `m` and tend
/// to 1, so their supremum is at the current `m` or is 1).
fn series(a: f64, b: f64, c: f64, z: f64) -> Result<f64, String> {
    let mut sum = NeumaierSum::default();
    sum.add(1.0);
    let mut term = 1.0_f64;
    let mut max_abs_term = 1.0_f64;
    for n in 0..HYP2F1_MAX_TERMS {
        let nf = n as f64;
        term *= (a + nf) * (b + nf) / ((c + nf) * (nf + 1.0)) * z;
        if term == 0.0 {
            // Terminated (polynomial) or underflowed below any contribution.
            return check_cancellation(sum.value(), max_abs_term);
        }
        sum.add(term);
        let total = sum.value();
        if !total.is_finite() || !term.is_finite() {
            return Err(format!("series overflows f64 at term {}", n + 1));
        }
        max_abs_term = max_abs_term.max(term.abs());
        let m = nf + 1.0; // index of the next ratio
        if c + m > 0.0 {
            let rho = z.abs() * ((a + m).abs() / (m + 1.0)).max(1.0) * ((b + m).abs() / (c + m)).max(1.0);
            if rho < 1.0 && term.abs() * rho / (1.0 - rho) <= f64::EPSILON * total.abs() {
                return check_cancellation(total, max_abs_term);
            }
        }
    }
    Err(format!(
        "series did not converge within {HYP2F1_MAX_TERMS} terms (argument too close to 1)"
    ))
}

fn check_cancellation(sum: f64, max_abs_term: f64) -> Result<f64, String> {
    if max_abs_term > CANCELLATION_LIMIT * sum.abs() {
        Err(format!(
            "cancellation: largest term {max_abs_term:e} vs. sum {sum:e}, result would be inaccurate"
        ))
    } else {
        Ok(sum)
    }
}

/// Neumaier's compensated summation (Neumaier 1974): adds many terms of
/// mixed magnitude with an error that does not grow with their number. Used
/// for the likelihood totals, so that they stay accurate where the optimiser
/// compares nearly equal values (line searches, finite-difference Hessians).
#[derive(Debug, Default, Clone, Copy)]
pub struct NeumaierSum {
    sum: f64,
    compensation: f64,
}

impl NeumaierSum {
    /// Add one term.
    pub fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if self.sum.abs() >= v.abs() {
            self.compensation += (self.sum - t) + v;
        } else {
            self.compensation += (v - t) + self.sum;
        }
        self.sum = t;
    }

    /// The compensated total.
    pub fn value(&self) -> f64 {
        self.sum + self.compensation
    }
}

/// Above this many rows a likelihood is evaluated on all cores.
pub const PARALLEL_ROWS: usize = 100_000;

/// Sums `part(i, parts)` over `i` in `0..parts`, where `parts` is 1 below
/// [`PARALLEL_ROWS`] rows and the number of cores (at most 8) above, one thread a part.
/// Partial sums are added in part order, so the result does not depend on scheduling.
pub fn sum_in_parts(rows: usize, part: impl Fn(usize, usize) -> f64 + Sync) -> f64 {
    let [total] = sum_arrays_in_parts(rows, |i, parts| [part(i, parts)]);
    total
}

/// [`sum_in_parts`] for parts that return several sums at once (e.g. a
/// log-likelihood and its gradient): element-wise compensated totals, added in
/// part order.
pub fn sum_arrays_in_parts<const N: usize>(rows: usize, part: impl Fn(usize, usize) -> [f64; N] + Sync) -> [f64; N] {
    let parts = if rows < PARALLEL_ROWS {
        1
    } else {
        crate::engine::cores().min(8)
    };
    if parts == 1 {
        return part(0, 1);
    }
    let part = &part;
    let partials: Vec<[f64; N]> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..parts).map(|i| scope.spawn(move || part(i, parts))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or([f64::NAN; N])).collect()
    });
    let mut totals = [NeumaierSum::default(); N];
    for p in partials {
        for (total, v) in totals.iter_mut().zip(p) {
            total.add(v);
        }
    }
    totals.map(|t| t.value())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_rel(got: f64, want: f64, tol: f64, what: &str) {
        let err = (got - want).abs() / want.abs().max(1e-300);
        assert!(
            err <= tol,
            "{what}: got {got:.17e}, want {want:.17e}, rel err {err:e} > {tol:e}"
        );
    }

    #[test]
    fn ln_gamma_known_values() {
        // Γ(1) = Γ(2) = 1 (zeros of ln Γ; absolute accuracy matters here).
        assert!(ln_gamma(1.0).abs() < 1e-15);
        assert!(ln_gamma(2.0).abs() < 1e-15);
        // Γ(1/2) = sqrt(pi).
        assert_rel(ln_gamma(0.5), 0.5 * PI.ln(), 1e-14, "lnΓ(1/2)");
        // Γ(-1/2) = -2 sqrt(pi)  (A&S 6.1.17 reflection), |Γ| = 2 sqrt(pi).
        assert_rel(ln_gamma(-0.5), (2.0 * PI.sqrt()).ln(), 1e-14, "lnΓ(-1/2)");
        // Γ(10) = 9! = 362880.
        assert_rel(ln_gamma(10.0), 362_880.0_f64.ln(), 1e-14, "lnΓ(10)");
        // Γ(n + 1/2) = (2n)! sqrt(pi) / (4^n n!) with n = 5: 945 sqrt(pi) / 32.
        assert_rel(ln_gamma(5.5), (945.0 * PI.sqrt() / 32.0).ln(), 1e-14, "lnΓ(5.5)");
        // Reference values from CPython math.lgamma (correctly rounded libm).
        assert_rel(ln_gamma(100.0), 359.134_205_369_575_4, 1e-14, "lnΓ(100)");
        assert_rel(ln_gamma(1e-5), 11.512_919_692_895_824, 1e-13, "lnΓ(1e-5)");
        // Poles.
        assert_eq!(ln_gamma(0.0), f64::INFINITY);
        assert_eq!(ln_gamma(-3.0), f64::INFINITY);
    }

    #[test]
    fn ln_gamma_satisfies_recurrence() {
        // Γ(x + 1) = x Γ(x), so ln Γ(x + 1) - ln Γ(x) = ln x.
        for &x in &[0.013, 0.25, 0.7, 1.3, 2.9, 7.77, 33.3, 250.5, 1e4] {
            let lhs = ln_gamma(x + 1.0) - ln_gamma(x);
            let scale = ln_gamma(x + 1.0).abs().max(1.0);
            assert!(
                (lhs - x.ln()).abs() <= 1e-13 * scale,
                "recurrence at x = {x}: {lhs} vs {}",
                x.ln()
            );
        }
    }

    #[test]
    fn ln_beta_known_values() {
        // B(1, b) = 1/b; B(2, 3) = 1!2!/4! = 1/12; B(1/2, 1/2) = pi.
        assert_rel(ln_beta(1.0, 4.0), (0.25_f64).ln(), 1e-14, "lnB(1,4)");
        assert_rel(ln_beta(2.0, 3.0), (1.0_f64 / 12.0).ln(), 1e-14, "lnB(2,3)");
        assert_rel(ln_beta(0.5, 0.5), PI.ln(), 1e-14, "lnB(1/2,1/2)");
        assert!(ln_beta(0.0, 1.0).is_nan());
    }

    #[test]
    fn ln_rising_branches_agree() {
        // (v)_n = v (v+1) ... (v+n-1); (1)_n = n!.
        assert_eq!(ln_rising(3.7, 0.0), 0.0);
        assert_rel(ln_rising(1.0, 5.0), 120.0_f64.ln(), 1e-15, "(1)_5");
        // Stirling branch (x > 32 or non-integer, v >= 100) vs. direct sums.
        let v = 1234.5;
        let direct: f64 = (0..40).map(|k| (v + k as f64).ln()).sum();
        assert_rel(ln_rising(v, 40.0), direct, 1e-14, "v=1234.5, x=40");
        // Non-integer x: agree with the ln Γ difference where that is accurate.
        assert_rel(
            ln_rising(150.0, 3.25),
            ln_gamma(153.25) - ln_gamma(150.0),
            1e-12,
            "x=3.25",
        );
        assert_rel(ln_rising(2.5, 3.25), ln_gamma(5.75) - ln_gamma(2.5), 1e-14, "v=2.5");
        // Huge v: ln (v)_x = x ln v + x (x - 1) / (2 v) + O(v^-2), no cancellation garbage.
        let v = 3e12;
        assert_rel(
            ln_rising(v, 40.5),
            40.5 * v.ln() + 40.5 * 39.5 / (2.0 * v),
            1e-15,
            "huge v",
        );
        assert!(ln_rising(-1.0, 2.0).is_nan());
    }

    #[test]
    fn digamma_known_values_and_recurrence() {
        // ψ(1) = -γ (Euler's constant), ψ(1/2) = -γ - 2 ln 2 (A&S 6.3.2, 6.3.3).
        let euler = 0.577_215_664_901_532_9;
        assert!((digamma(1.0) + euler).abs() < 1e-15, "{}", digamma(1.0));
        assert!((digamma(0.5) + euler + 2.0 * 2.0_f64.ln()).abs() < 1e-15);
        // ψ(n) = H_{n-1} - γ for whole n.
        let h: f64 = (1..40).map(|k| 1.0 / k as f64).sum();
        assert_rel(digamma(40.0), h - euler, 1e-15, "ψ(40)");
        // ψ(x + 1) - ψ(x) = 1/x, across the shift boundary at 10.
        for &x in &[1e-8, 0.013, 0.7, 4.4, 9.5, 10.0, 12.3, 1e3, 1e9] {
            let lhs = digamma(x + 1.0) - digamma(x);
            assert!(
                (lhs - 1.0 / x).abs() <= 4e-16 * digamma(x).abs().max(1.0 / x),
                "x = {x}: {lhs}"
            );
        }
        // Derivative of ln Γ (central difference, error ~1e-9 relative).
        for &x in &[0.3, 2.5, 17.0, 640.0] {
            let h = 1e-5 * x;
            let fd = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!((digamma(x) - fd).abs() < 1e-8 * fd.abs().max(1.0), "x = {x}");
        }
        assert!(digamma(0.0).is_nan() && digamma(-1.5).is_nan());
    }

    #[test]
    fn ln_rising_dv_is_the_derivative_of_ln_rising_on_every_branch() {
        // (v, x) on each branch of ln_rising: whole x <= 32, v >= 100 (Stirling), lnΓ difference,
        // and huge v where differences of ln Γ or ψ values would cancel.
        for &(v, x) in &[
            (0.243, 3.0),
            (2.4, 32.0),
            (150.0, 40.0),
            (150.0, 3.25),
            (2.5, 3.25),
            (0.7, 500.0),
            (3e12, 40.5),
            (1e-6, 7.0),
        ] {
            let h = 1e-5 * v;
            let fd = (ln_rising(v + h, x) - ln_rising(v - h, x)) / (2.0 * h);
            let got = ln_rising_dv(v, x);
            assert!(
                (got - fd).abs() <= 1e-7 * fd.abs() + 1e-12,
                "v = {v}, x = {x}: {got} vs {fd}"
            );
            // ψ(v + x) - ψ(v) where that difference is accurate.
            if v < 1e6 {
                let want = digamma(v + x) - digamma(v);
                assert!((got - want).abs() <= 1e-13 * want.abs().max(1.0), "v = {v}, x = {x}");
            }
        }
        // Huge v: ψ(v + x) - ψ(v) ≈ x / v.
        assert_rel(ln_rising_dv(3e12, 40.5), 40.5 / 3e12, 1e-10, "huge v");
        assert_eq!(ln_rising_dv(3.0, 0.0), 0.0);
        assert!(ln_rising_dv(-1.0, 2.0).is_nan());
    }

    #[test]
    fn neumaier_sum_keeps_small_terms() {
        let mut s = NeumaierSum::default();
        for v in [1e16, 1.0, -1e16, 1.0] {
            s.add(v);
        }
        assert_eq!(s.value(), 2.0);
    }

    #[test]
    fn hyp2f1_log_identity() {
        // A&S 15.1.3: 2F1(1, 1; 2; z) = -ln(1 - z) / z, valid for all z < 1.
        for &z in &[0.3_f64, -0.3, 0.7, 0.95, 0.999, -0.7, -5.0, -100.0, -1e4] {
            let want = -(-z).ln_1p() / z;
            assert_rel(hyp2f1(1.0, 1.0, 2.0, z).unwrap(), want, 1e-13, &format!("z={z}"));
        }
    }

    #[test]
    fn hyp2f1_binomial_identity() {
        // A&S 15.1.8: 2F1(a, b; b; z) = (1 - z)^(-a).
        for &(a, b, z) in &[
            (0.7, 2.3, 0.4_f64),
            (0.7, 2.3, -3.0),
            (2.5, 0.4, 0.9),
            (-0.3, 1.7, 0.8),
            (3.1, 5.0, -0.45),
        ] {
            let want = (1.0 - z).powf(-a);
            assert_rel(hyp2f1(a, b, b, z).unwrap(), want, 1e-13, &format!("{a},{b},{z}"));
        }
    }

    #[test]
    fn hyp2f1_inverse_trig_identities() {
        // A&S 15.1.6: 2F1(1/2, 1/2; 3/2; x^2) = arcsin(x) / x.
        let x: f64 = 0.5;
        assert_rel(hyp2f1(0.5, 0.5, 1.5, x * x).unwrap(), x.asin() / x, 1e-14, "asin");
        // A&S 15.1.5: 2F1(1/2, 1; 3/2; -x^2) = arctan(x) / x (z = -4 uses Pfaff).
        let x: f64 = 2.0;
        assert_rel(hyp2f1(0.5, 1.0, 1.5, -x * x).unwrap(), x.atan() / x, 1e-14, "atan");
        // A&S 15.1.4: 2F1(1/2, 1; 3/2; x^2) = artanh(x) / x (z = 0.81 > 0.5).
        let x: f64 = 0.9;
        assert_rel(hyp2f1(0.5, 1.0, 1.5, x * x).unwrap(), x.atanh() / x, 1e-14, "atanh");
    }

    #[test]
    fn hyp2f1_polynomial_case() {
        // Terminating series: 2F1(-2, b; c; z) = 1 - 2bz/c + b(b+1)z^2/(c(c+1)),
        // valid for every z, including z >= 1.
        let (b, c) = (1.5, 2.5);
        for &z in &[-10.0, 0.3, 3.0] {
            let want = 1.0 - 2.0 * b * z / c + b * (b + 1.0) * z * z / (c * (c + 1.0));
            assert_rel(hyp2f1(-2.0, b, c, z).unwrap(), want, 1e-14, &format!("z={z}"));
        }
        // c = -3 is allowed when the series stops (a = -2) before the pole.
        let want = 1.0 - 2.0 * b * 0.5 / -3.0 + b * (b + 1.0) * 0.25 / (-3.0 * -2.0);
        assert_rel(hyp2f1(-2.0, b, -3.0, 0.5).unwrap(), want, 1e-14, "c=-3");
    }

    #[test]
    fn hyp2f1_gauss_contiguous_check_near_one() {
        // Euler (A&S 15.3.3) must agree with the direct series, here with
        // c - a - b < 0 so the implementation transforms internally:
        // 2F1(a,b;c;z) = (1-z)^(c-a-b) 2F1(c-a, c-b; c; z).
        let (a, b, c, z) = (2.3, 3.2, 1.7, 0.93);
        let direct = hyp2f1(a, b, c, z).unwrap();
        let transformed = (1.0 - z).powf(c - a - b) * hyp2f1(c - a, c - b, c, z).unwrap();
        assert_rel(direct, transformed, 1e-12, "Euler");
        // Reference from mpmath.hyp2f1(2.3, 3.2, 1.7, 0.93) at 30 digits.
        assert_rel(direct, 36_071.680_594_745_295, 1e-11, "mpmath");
    }

    #[test]
    fn hyp2f1_bgnbd_shaped_arguments() {
        // Arguments of the shape used by FHL eq. 10 with the CDNOW estimates
        // (r = 0.243, a = 0.793, b = 2.426, x = 2, alpha + T + t = 82.274):
        // references from mpmath.hyp2f1 at 30 digits.
        let z = 39.0 / (4.414 + 38.86 + 39.0);
        assert_rel(
            hyp2f1(2.243, 4.426, 3.219, z).unwrap(),
            7.624_157_498_382_97,
            1e-12,
            "eq10 form",
        );
        assert_rel(
            hyp2f1(1.976, -0.207, 3.219, z).unwrap(),
            0.929_398_174_378_400_6,
            1e-12,
            "Euler form",
        );
    }

    #[test]
    fn hyp2f1_remembers_exactly_the_computed_value() {
        // BG/NBD-shaped arguments, each asked twice, more than the memo holds: the first
        // answer, the remembered one and the one after the memo starts over are the
        // computed value, bit for bit.
        let args = |i: usize| {
            (
                2.243,
                4.426,
                3.219 + (i % 7) as f64,
                (i as f64 + 0.5) / (HYP2F1_MEMO_ENTRIES as f64 + 10.0),
            )
        };
        for i in (0..HYP2F1_MEMO_ENTRIES + 10)
            .step_by(997)
            .chain([3, 3, HYP2F1_MEMO_ENTRIES + 5])
        {
            let (a, b, c, z) = args(i);
            let computed = hyp2f1_computed(a, b, c, z).unwrap().to_bits();
            assert_eq!(hyp2f1(a, b, c, z).unwrap().to_bits(), computed, "{i}");
            assert_eq!(hyp2f1(a, b, c, z).unwrap().to_bits(), computed, "{i}, again");
        }
        for i in 0..HYP2F1_MEMO_ENTRIES + 2 {
            let (a, b, c, z) = args(i);
            hyp2f1(a, b, c, z).unwrap();
        }
        HYP2F1_MEMO.with_borrow(|memo| assert!(memo.len() <= HYP2F1_MEMO_ENTRIES));
        // An error is not remembered as a value.
        for _ in 0..2 {
            assert!(hyp2f1(1.0, 1.0, 2.0, 1.0).is_err());
        }
    }

    #[test]
    fn hyp2f1_rejects_bad_arguments() {
        assert!(matches!(
            hyp2f1(1.0, 1.0, 2.0, 1.0),
            Err(ModelError::Hypergeometric { .. })
        ));
        assert!(hyp2f1(1.0, 1.0, 2.0, 1.5).is_err());
        assert!(hyp2f1(1.0, 1.0, -2.0, 0.3).is_err());
        assert!(hyp2f1(f64::NAN, 1.0, 2.0, 0.3).is_err());
        // Too close to 1 for the series: error, not a silently truncated sum.
        let e = hyp2f1(1.0, 1.0, 2.0, 1.0 - 1e-9).unwrap_err();
        assert!(e.to_string().contains("did not converge"), "{e}");
        // z -> -infinity maps to w = 1 after Pfaff.
        assert!(hyp2f1(1.0, 1.0, 2.0, -1e300).is_err());
        // Message names the function and arguments.
        let msg = hyp2f1(1.0, 1.0, 2.0, 2.0).unwrap_err().to_string();
        assert!(msg.starts_with("hyp2f1(a = 1, b = 1; c = 2; z = 2)"), "{msg}");
    }

    #[test]
    fn hyp2f1_detects_cancellation() {
        // 2F1(-60, 1; 1; z) = (1 - z)^60 via a terminating alternating sum; at
        // z = 2 the terms reach C(60,30) 2^30 ~ 1e26 but the value is 1.
        assert!(hyp2f1(-60.0, 1.0, 1.0, 2.0).is_err());
    }
}
