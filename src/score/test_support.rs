//! Test-only helpers shared by the model tests: the location and a std-only
//! reader of the CDNOW calibration summary used throughout Fader, Hardie and
//! Lee (2005), "Counting your customers the easy way" and "RFM and CLV: using
//! iso-value curves".

/// Path of the CDNOW summary (columns `ID,x,t_x,T,zbar`, time in weeks). The
/// only place the location is spelled.
pub const CDNOW_SUMMARY_CSV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/cdnow/cdnow_customers_summary_with_transactions.csv"
);

/// One customer of the CDNOW summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CdnowCustomer {
    /// Repeat purchases in the 39-week calibration period.
    pub x: f64,
    /// Week of the last purchase (recency).
    pub t_x: f64,
    /// Weeks from first purchase to the end of calibration (age).
    pub t_cal: f64,
    /// Mean repeat-transaction value in dollars (0 when x = 0).
    pub zbar: f64,
}

/// Read the CDNOW summary, locating the columns by header name.
pub fn read_cdnow() -> Vec<CdnowCustomer> {
    let text =
        std::fs::read_to_string(CDNOW_SUMMARY_CSV).unwrap_or_else(|e| panic!("cannot read {CDNOW_SUMMARY_CSV}: {e}"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("CDNOW file is empty")
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("column {name} missing from header {header:?}"))
    };
    let (ix, itx, it, iz) = (col("x"), col("t_x"), col("T"), col("zbar"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let num = |i: usize| -> f64 {
                fields[i]
                    .parse()
                    .unwrap_or_else(|e| panic!("bad number {:?} in {line:?}: {e}", fields[i]))
            };
            CdnowCustomer {
                x: num(ix),
                t_x: num(itx),
                t_cal: num(it),
                zbar: num(iz),
            }
        })
        .collect()
}

#[test]
fn cdnow_file_has_the_published_shape() {
    // FHL 2005: 2,357 customers, 1,411 of whom made no repeat purchase.
    let rows = read_cdnow();
    assert_eq!(rows.len(), 2357);
    assert_eq!(rows.iter().filter(|c| c.x == 0.0).count(), 1411);
}

/// Asserts that `gradient`, the analytic gradient of `f` at `theta` (log-parameters),
/// matches a five-point finite difference in every coordinate: truncation error O(h^4),
/// with h large enough that rounding in the value (whose pieces are far larger than the
/// total at extreme points) stays negligible. `label` names the point in a failure.
pub fn assert_gradient_matches<const N: usize>(
    theta: [f64; N],
    (value, gradient): (f64, [f64; N]),
    f: impl Fn(&[f64; N]) -> f64,
    label: &str,
) {
    let h = 1e-3;
    for i in 0..N {
        let at = |step: f64| {
            let mut t = theta;
            t[i] += step;
            f(&t)
        };
        let fd = (8.0 * (at(h) - at(-h)) - (at(2.0 * h) - at(-2.0 * h))) / (12.0 * h);
        assert!(
            (gradient[i] - fd).abs() <= 1e-6 * fd.abs() + 1e-9 * value.abs(),
            "{label}, d/dln[{i}]: analytic {} vs finite difference {fd}",
            gradient[i]
        );
    }
}

/// A fit in a form both models share, to compare the optimiser's two paths.
#[derive(Debug)]
pub struct FitOutcome {
    /// The parameters, in the model's own order.
    pub params: Vec<f64>,
    /// Log-likelihood at them.
    pub log_likelihood: f64,
    /// Optimiser iterations spent.
    pub iterations: usize,
    /// Whether the optimiser's criterion was met.
    pub converged: bool,
}

/// Largest relative difference between two parameter vectors (relative to `b`).
fn max_relative_difference(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(u, v)| ((u - v) / v).abs()).fold(0.0, f64::max)
}

/// Asserts that BFGS (`fast`) and the derivative-free path (`slow`) found the same maximum
/// (parameters to 1e-6, log-likelihood to 1e-10 relative), BFGS in under a fifth of the
/// iterations.
pub fn assert_same_maximum(fast: &FitOutcome, slow: &FitOutcome) {
    assert!(fast.converged && slow.converged, "{fast:?} vs {slow:?}");
    let diff = max_relative_difference(&fast.params, &slow.params);
    assert!(diff < 1e-6, "{diff:e}: {fast:?} vs {slow:?}");
    assert!((fast.log_likelihood - slow.log_likelihood).abs() <= 1e-10 * slow.log_likelihood.abs());
    assert!(fast.iterations * 5 < slow.iterations, "{fast:?} vs {slow:?}");
}

/// Fits every case on both paths and asserts the same verdict (a fit, `Degenerate`,
/// `NotConverged` or another error), and for two fits the same log-likelihood (1e-9
/// relative) and parameters (1e-5); returns how many cases got each verdict.
pub fn same_verdicts<D: std::fmt::Debug>(
    cases: &[D],
    fast: impl Fn(&D) -> Result<FitOutcome, super::error::ModelError>,
    slow: impl Fn(&D) -> Result<FitOutcome, super::error::ModelError>,
) -> std::collections::BTreeMap<&'static str, usize> {
    use super::error::ModelError;
    let kind = |r: &Result<FitOutcome, ModelError>| match r {
        Ok(_) => "fit",
        Err(ModelError::Degenerate { .. }) => "degenerate",
        Err(ModelError::NotConverged { .. }) => "not converged",
        Err(_) => "other error",
    };
    let mut verdicts = std::collections::BTreeMap::new();
    for data in cases {
        let (fast, slow) = (fast(data), slow(data));
        assert_eq!(kind(&fast), kind(&slow), "{data:?}: {fast:?} vs {slow:?}");
        *verdicts.entry(kind(&fast)).or_default() += 1;
        if let (Ok(f), Ok(s)) = (&fast, &slow) {
            assert!((f.log_likelihood - s.log_likelihood).abs() <= 1e-9 * s.log_likelihood.abs());
            let diff = max_relative_difference(&f.params, &s.params);
            assert!(diff < 1e-5, "{diff:e}: {f:?} vs {s:?}");
        }
    }
    verdicts
}

/// One customer simulated by [`simulate_with_holdout`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatedCustomer {
    /// Repeat purchases in the calibration period.
    pub x: f64,
    /// Time of the last of them (0 when there is none).
    pub t_x: f64,
    /// Length of the calibration period (time from the first purchase).
    pub t_cal: f64,
    /// Whether the customer was still active at `t_cal`.
    pub alive: bool,
    /// Purchases in the holdout period `(t_cal, t_cal + holdout]`.
    pub holdout_purchases: f64,
}

/// Simulates customers of the BG/NBD story (Fader, Hardie and Lee 2005, section 3), or
/// with `dropout_at_first_purchase` of the MBG/NBD story (Batislam, Denizel and Filiztekin
/// 2007), with parameters `[r, alpha, a, b]`: `λ ~ Gamma(r, rate alpha)`, `p ~ Beta(a, b)`,
/// purchases at the events of a Poisson process of rate `λ`, dropout with probability `p`
/// right after every repeat purchase (and, for MBG/NBD, right after the first, at time 0).
/// Each customer's calibration period has a length drawn uniformly from `t_cal`, followed
/// by a holdout of length `holdout`.
pub fn simulate_with_holdout(
    [r, alpha, a, b]: [f64; 4],
    dropout_at_first_purchase: bool,
    n: usize,
    t_cal: (f64, f64),
    holdout: f64,
    seed: u64,
) -> Vec<SimulatedCustomer> {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Beta, Distribution, Exp, Gamma};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let rates = Gamma::new(r, 1.0 / alpha).expect("gamma parameters");
    let dropout = Beta::new(a, b).expect("beta parameters");
    (0..n)
        .map(|_| {
            let t_cal = rng.gen_range(t_cal.0..=t_cal.1);
            let lambda: f64 = rates.sample(&mut rng);
            let p: f64 = dropout.sample(&mut rng);
            let wait = Exp::new(lambda.max(f64::MIN_POSITIVE)).expect("exponential rate");
            let mut dropped_at = (dropout_at_first_purchase && rng.r#gen::<f64>() < p).then_some(0.0);
            let (mut t, mut x, mut t_x, mut holdout_purchases) = (0.0, 0.0, 0.0, 0.0);
            while dropped_at.is_none() {
                t += wait.sample(&mut rng);
                if t > t_cal + holdout {
                    break;
                }
                if t <= t_cal {
                    x += 1.0;
                    t_x = t;
                } else {
                    holdout_purchases += 1.0;
                }
                if rng.r#gen::<f64>() < p {
                    dropped_at = Some(t);
                }
            }
            SimulatedCustomer {
                x,
                t_x,
                t_cal,
                alive: dropped_at.is_none_or(|d| d > t_cal),
                holdout_purchases,
            }
        })
        .collect()
}

/// Groups of similar histories: `x` in 0, 1, 2, 3-5 and 6 or more, and for `x > 0` the
/// recency `t_x / T` in quarters.
pub fn history_group(c: &SimulatedCustomer) -> (u8, u8) {
    let x = match c.x as u32 {
        0 => 0,
        1 => 1,
        2 => 2,
        3..=5 => 3,
        _ => 4,
    };
    let recency = if c.x == 0.0 {
        0
    } else {
        ((4.0 * c.t_x / c.t_cal) as u8).min(3)
    };
    (x, recency)
}

/// Calibration of a conditional prediction against simulated outcomes: for every
/// [`history_group`] of at least 500 customers, and for all customers (group
/// `(u8::MAX, u8::MAX)`), the number of customers and the standardised residual sum
/// `z = Σ(o - p) / sqrt(Σ(o - p)²)` of the outcomes `o` and predictions `p`. When `p` is
/// the expectation of `o` given the history, every `z` is approximately standard normal,
/// since the groups are defined by the histories alone.
pub fn calibration(
    customers: &[SimulatedCustomer],
    predicted: impl Fn(&SimulatedCustomer) -> f64,
    observed: impl Fn(&SimulatedCustomer) -> f64,
) -> Vec<((u8, u8), usize, f64)> {
    let mut sums: std::collections::BTreeMap<(u8, u8), (usize, f64, f64)> = std::collections::BTreeMap::new();
    for c in customers {
        let residual = observed(c) - predicted(c);
        for key in [history_group(c), (u8::MAX, u8::MAX)] {
            let s = sums.entry(key).or_default();
            s.0 += 1;
            s.1 += residual;
            s.2 += residual * residual;
        }
    }
    sums.into_iter()
        .filter(|(_, (n, _, _))| *n >= 500)
        // All residuals 0 (a prediction that is certain and right, e.g. BG/NBD's P(alive) = 1
        // for x = 0) is perfect calibration.
        .map(|(key, (n, sum, squares))| (key, n, if squares == 0.0 { 0.0 } else { sum / squares.sqrt() }))
        .collect()
}
