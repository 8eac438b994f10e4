//! Tests of the MBG/NBD model: against the Python `lifetimes` package's
//! `ModifiedBetaGeoFitter` on the CDNOW sample (reference values written by
//! tests/reference/mbgnbd_lifetimes.py), against the literal formulas, and
//! against Monte Carlo simulation of the model's story.

use super::super::bgnbd::{self, BgNbdParams};
use super::super::special::ln_gamma;
use super::super::test_support::{
    FitOutcome, SimulatedCustomer, assert_gradient_matches, assert_same_maximum, calibration, read_cdnow,
    same_verdicts, simulate_with_holdout,
};
use super::*;

/// Per-customer reference values (`x,t_x,T,p_alive,expected_39,p_no_purchase_13,
/// p_no_purchase_13_ll`), in the order of the CDNOW summary.
const REFERENCE_CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/mbgnbd_cdnow.csv");
/// lifetimes' fit and unconditional values.
const REFERENCE_FIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/mbgnbd_cdnow_fit.json");

/// lifetimes' CDNOW estimates, rounded: the parameters most tests use.
fn cdnow_params() -> MbgNbdParams {
    MbgNbdParams::new(0.525, 6.183, 0.891, 1.614).unwrap()
}

fn reference_fit() -> serde_json::Value {
    let text = std::fs::read_to_string(REFERENCE_FIT).unwrap_or_else(|e| panic!("cannot read {REFERENCE_FIT}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{REFERENCE_FIT}: {e}"))
}

fn number(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn params_from(v: &serde_json::Value) -> MbgNbdParams {
    MbgNbdParams::new(number(v, "r"), number(v, "alpha"), number(v, "a"), number(v, "b")).unwrap()
}

/// One row of [`REFERENCE_CSV`].
#[derive(Debug, Clone, Copy)]
struct ReferenceRow {
    x: f64,
    t_x: f64,
    t_cal: f64,
    p_alive: f64,
    expected_39: f64,
    p_no_purchase_13: f64,
    p_no_purchase_13_ll: f64,
}

fn reference_rows() -> Vec<ReferenceRow> {
    let text = std::fs::read_to_string(REFERENCE_CSV).unwrap_or_else(|e| panic!("cannot read {REFERENCE_CSV}: {e}"));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("x,t_x,T,p_alive,expected_39,p_no_purchase_13,p_no_purchase_13_ll")
    );
    lines
        .map(|line| {
            let v: Vec<f64> = line
                .split(',')
                .map(|f| f.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")))
                .collect();
            assert_eq!(v.len(), 7, "{line:?}");
            ReferenceRow {
                x: v[0],
                t_x: v[1],
                t_cal: v[2],
                p_alive: v[3],
                expected_39: v[4],
                p_no_purchase_13: v[5],
                p_no_purchase_13_ll: v[6],
            }
        })
        .collect()
}

/// Every CDNOW customer as its own row, as lifetimes is given them.
fn cdnow_customers() -> Vec<RfSummary> {
    read_cdnow()
        .iter()
        .map(|c| RfSummary {
            x: c.x,
            t_x: c.t_x,
            t_cal: c.t_cal,
            weight: 1.0,
        })
        .collect()
}

fn cdnow_summaries() -> Vec<RfSummary> {
    group_summaries(read_cdnow().iter().map(|c| (c.x, c.t_x, c.t_cal)))
}

fn relative(got: f64, want: f64) -> f64 {
    if got == want { 0.0 } else { ((got - want) / want).abs() }
}

fn as_array(p: &MbgNbdParams) -> [f64; 4] {
    [p.r, p.alpha, p.a, p.b]
}

/// The fit on the 2,357 CDNOW customers (one row each, as lifetimes fits them) finds
/// lifetimes' maximum. Two references: lifetimes' own fit with its defaults (BFGS,
/// tol = 1e-7), within 1e-5 relative (its own distance from the maximum is ~7e-7),
/// and that likelihood maximised to full precision by Newton's method in the script,
/// within 1e-6 relative (our optimiser's certificate: a Newton step below 1e-6 in
/// the log-parameters). Log-likelihoods within 1e-6.
#[test]
fn cdnow_fit_matches_lifetimes() {
    let reference = reference_fit();
    let lifetimes = params_from(&reference["params"]);
    let tight = params_from(&reference["tight_params"]);
    let started = std::time::Instant::now();
    let fit = fit_mbgnbd(&cdnow_customers()).expect("CDNOW fit");
    let elapsed = started.elapsed();
    let grouped_started = std::time::Instant::now();
    let grouped = fit_mbgnbd(&cdnow_summaries()).expect("grouped CDNOW fit");
    let grouped_elapsed = grouped_started.elapsed();
    println!(
        "MBG/NBD CDNOW fit: {:?} ({} iterations, {} evaluations; {:?} and {} iterations on {} grouped rows), LL {} vs lifetimes {}",
        elapsed,
        fit.iterations,
        fit.evaluations,
        grouped_elapsed,
        grouped.iterations,
        cdnow_summaries().len(),
        fit.log_likelihood,
        number(&reference, "log_likelihood"),
    );
    assert!(fit.converged);
    assert_eq!(fit.customers, 2357.0);
    assert_eq!(grouped.customers, 2357.0);
    let names = ["r", "alpha", "a", "b"];
    for (i, name) in names.iter().enumerate() {
        let got = as_array(&fit.params)[i];
        let (want, exact) = (as_array(&lifetimes)[i], as_array(&tight)[i]);
        println!(
            "  {name}: {got} vs lifetimes {want} (rel {:.1e}), full-precision maximum {exact} (rel {:.1e})",
            relative(got, want),
            relative(got, exact)
        );
        assert!(relative(got, want) < 1e-5, "{name} = {got}, lifetimes {want}");
        assert!(relative(got, exact) < 1e-6, "{name} = {got}, maximum {exact}");
        assert!(
            relative(as_array(&grouped.params)[i], got) < 1e-6,
            "{grouped:?} vs {fit:?}"
        );
    }
    for key in ["log_likelihood", "tight_log_likelihood"] {
        let want = number(&reference, key);
        assert!(
            (fit.log_likelihood - want).abs() < 1e-6,
            "LL {} vs {key} {want}",
            fit.log_likelihood
        );
    }
    assert!((grouped.log_likelihood - fit.log_likelihood).abs() < 1e-8 * fit.log_likelihood.abs());
    // MBG/NBD fits CDNOW slightly better than BG/NBD (LL -9582.43, same parameter count).
    assert!(fit.log_likelihood > -9_582.43, "{}", fit.log_likelihood);
}

/// The likelihood itself, with lifetimes' parameters, equals lifetimes' (its negative
/// log-likelihood evaluated in weeks by the reference script), and the per-customer
/// function sums to the grouped total.
#[test]
fn likelihood_matches_lifetimes() {
    let reference = reference_fit();
    for (params, key) in [("params", "log_likelihood"), ("tight_params", "tight_log_likelihood")] {
        let p = params_from(&reference[params]);
        let want = number(&reference, key);
        let total = total_log_likelihood(&p, &cdnow_customers()).unwrap();
        assert!((total - want).abs() <= 1e-10 * want.abs(), "{total} vs {want}");
        let grouped = total_log_likelihood(&p, &cdnow_summaries()).unwrap();
        assert!((grouped - want).abs() <= 1e-10 * want.abs(), "{grouped} vs {want}");
        let mut sum = NeumaierSum::default();
        for c in read_cdnow() {
            sum.add(log_likelihood(&p, c.x, c.t_x, c.t_cal).unwrap());
        }
        assert!(
            (sum.value() - want).abs() <= 1e-10 * want.abs(),
            "{} vs {want}",
            sum.value()
        );
    }
}

/// With lifetimes' parameters, every CDNOW customer's P(alive), expected purchases in
/// 39 weeks and probability of no purchase in 13 weeks equal lifetimes' to 1e-10
/// relative (the brief asks 1e-6; what remains is rounding in two implementations of
/// the same closed forms and of 2F1). The reference p_no_purchase is computed two ways
/// by the script (the formula with lifetimes' P(alive), and the ratio of lifetimes'
/// likelihoods); ours matches both.
#[test]
fn per_customer_scores_match_lifetimes() {
    let p = params_from(&reference_fit()["params"]);
    let rows = reference_rows();
    let cdnow = read_cdnow();
    assert_eq!(rows.len(), cdnow.len());
    let mut worst = [(0.0_f64, 0_usize); 4];
    for (i, (row, c)) in rows.iter().zip(&cdnow).enumerate() {
        assert_eq!((row.x, row.t_x, row.t_cal), (c.x, c.t_x, c.t_cal), "row {i}");
        let alive = p_alive(&p, row.x, row.t_x, row.t_cal).unwrap();
        let expected = expected_purchases(&p, 39.0, row.x, row.t_x, row.t_cal).unwrap();
        let silent = p_no_purchase(&p, 13.0, row.x, row.t_x, row.t_cal).unwrap();
        let diffs = [
            relative(alive, row.p_alive),
            relative(expected, row.expected_39),
            relative(silent, row.p_no_purchase_13),
            relative(silent, row.p_no_purchase_13_ll),
        ];
        for (w, d) in worst.iter_mut().zip(diffs) {
            if d > w.0 {
                *w = (d, i);
            }
        }
    }
    println!(
        "max relative differences to lifetimes over {} customers: p_alive {:.2e} (row {}), \
         expected_39 {:.2e} (row {}), p_no_purchase_13 {:.2e} (row {}), vs likelihood ratio {:.2e} (row {})",
        rows.len(),
        worst[0].0,
        worst[0].1,
        worst[1].0,
        worst[1].1,
        worst[2].0,
        worst[2].1,
        worst[3].0,
        worst[3].1
    );
    for (name, (d, i)) in ["p_alive", "expected_39", "p_no_purchase_13", "p_no_purchase_13_ll"]
        .iter()
        .zip(worst)
    {
        assert!(d < 1e-10, "{name}: relative difference {d:e} in row {i}: {:?}", rows[i]);
    }
}

/// The new customer: E[X(t)] equals lifetimes' `expected_number_of_purchases_up_to_time`,
/// and p_no_purchase of a customer seen only at their first purchase (T -> 0) equals
/// lifetimes' unconditional `probability_of_n_purchases_up_to_time(t, 0)`.
#[test]
fn unconditional_values_match_lifetimes() {
    let reference = reference_fit();
    let p = params_from(&reference["params"]);
    let checks = reference["unconditional"].as_array().expect("unconditional");
    assert_eq!(checks.len(), 3);
    for check in checks {
        let t = number(check, "t");
        let e = expected_purchases_unconditional(&p, t).unwrap();
        let want = number(check, "expected_purchases");
        assert!(relative(e, want) < 1e-10, "E[X({t})] = {e} vs lifetimes {want}");
        let q = p_no_purchase(&p, t, 0.0, 0.0, 1e-12).unwrap();
        let want = number(check, "p_no_purchase");
        assert!(relative(q, want) < 1e-10, "P(X({t}) = 0) = {q} vs lifetimes {want}");
        // E[X(t)] is the x = t_x = T = 0 case of the conditional expectation.
        let conditional = expected_purchases(&p, t, 0.0, 0.0, 1e-12).unwrap();
        assert!(relative(conditional, e) < 1e-10, "{conditional} vs {e}");
    }
    assert_eq!(expected_purchases_unconditional(&p, 0.0).unwrap(), 0.0);
}

/// Beyond CDNOW (x <= 29, 39 weeks): heavy buyers (x up to 900) and horizons up to 5,000
/// weeks, against the closed forms in 50-digit arithmetic (mpmath, written by the
/// reference script), to 1e-11 relative; lifetimes' scipy 2F1 agrees there too.
#[test]
fn heavy_buyers_and_long_horizons_match_high_precision() {
    let reference = reference_fit();
    let p = params_from(&reference["params"]);
    let cases = reference["high_precision"].as_array().expect("high_precision");
    assert_eq!(cases.len(), 8);
    for c in cases {
        let (x, t_x, t_cal, t) = (number(c, "x"), number(c, "t_x"), number(c, "T"), number(c, "t"));
        for (name, got, want, tol) in [
            (
                "p_alive",
                p_alive(&p, x, t_x, t_cal).unwrap(),
                number(c, "p_alive"),
                1e-13,
            ),
            (
                "expected_purchases",
                expected_purchases(&p, t, x, t_x, t_cal).unwrap(),
                number(c, "expected_purchases"),
                1e-11,
            ),
            (
                "p_no_purchase",
                p_no_purchase(&p, t, x, t_x, t_cal).unwrap(),
                number(c, "p_no_purchase"),
                1e-13,
            ),
            (
                "lifetimes' expected_purchases",
                number(c, "lifetimes_expected_purchases"),
                number(c, "expected_purchases"),
                1e-10,
            ),
        ] {
            assert!(
                relative(got, want) < tol,
                "{name}({x}, {t_x}, {t_cal}, t = {t}) = {got} vs {want}: {:.1e}",
                relative(got, want)
            );
        }
    }
}

/// The likelihood against its definition with gamma functions, for a repeat buyer
/// and for x = 0 (where, unlike BG/NBD, the dropout term a/(a+b) is present and t_x
/// is ignored).
#[test]
fn likelihood_matches_direct_formula() {
    let p = MbgNbdParams::new(0.7, 3.0, 1.3, 2.2).unwrap();
    let g = |v: f64| ln_gamma(v).exp();
    let beta = |u: f64, v: f64| g(u) * g(v) / g(u + v);
    for (x, t_x, t_cal) in [(3.0_f64, 12.5_f64, 30.0_f64), (1.0, 0.0, 4.0), (7.0, 30.0, 30.0)] {
        let common = g(p.r + x) * p.alpha.powf(p.r) / g(p.r);
        let l = beta(p.a, p.b + x + 1.0) / beta(p.a, p.b) * common / (p.alpha + t_cal).powf(p.r + x)
            + beta(p.a + 1.0, p.b + x) / beta(p.a, p.b) * common / (p.alpha + t_x).powf(p.r + x);
        let got = log_likelihood(&p, x, t_x, t_cal).unwrap();
        assert!(
            (got - l.ln()).abs() < 1e-12,
            "({x}, {t_x}, {t_cal}): {got} vs {}",
            l.ln()
        );
    }
    let t_cal: f64 = 30.0;
    let want0 = (p.b / (p.a + p.b) * (p.alpha / (p.alpha + t_cal)).powf(p.r) + p.a / (p.a + p.b)).ln();
    for t_x in [0.0, 17.0] {
        let got0 = log_likelihood(&p, 0.0, t_x, t_cal).unwrap();
        assert!((got0 - want0).abs() < 1e-14, "{got0} vs {want0}");
    }
    // Gamma functions of large arguments stay in logs.
    let ll = log_likelihood(&cdnow_params(), 400.0, 38.0, 38.86).unwrap();
    assert!(ll.is_finite(), "{ll}");
}

/// The analytic gradient against finite differences of the value, at the CDNOW
/// estimates and at extreme points (huge and tiny parameters, heavy buyers where
/// ln_rising switches branches).
#[test]
fn gradient_matches_central_differences() {
    let mut data = cdnow_summaries();
    data.extend(
        [(45.0, 30.0, 38.0), (120.0, 37.5, 38.0), (33.0, 2.0, 20.0)].map(|(x, t_x, t_cal)| RfSummary {
            x,
            t_x,
            t_cal,
            weight: 2.0,
        }),
    );
    let prepared = Prepared::new(&data).unwrap();
    for (r, alpha, a, b) in [
        (0.525, 6.183, 0.891, 1.614),
        (1.0, 1.0, 1.0, 1.0),
        (1e-3, 1e3, 50.0, 1e6),
        (30.0, 0.05, 1e-3, 1e-2),
        (0.5, 10.0, 2.0, 3e9),
        (150.0, 400.0, 120.0, 0.3),
    ] {
        let theta = [r, alpha, a, b].map(f64::ln);
        assert_gradient_matches(
            theta,
            prepared.evaluate(&from_log(&theta)),
            |t| prepared.evaluate(&from_log(t)).0,
            &format!("params ({r}, {alpha}, {a}, {b})"),
        );
    }
}

#[test]
fn p_alive_definition() {
    let p = cdnow_params();
    // x = 0: below 1, 1 / (1 + a/b ((α+T)/α)^r), and b/(a+b) at T -> 0.
    let t_cal = 38.86;
    let got = p_alive(&p, 0.0, 0.0, t_cal).unwrap();
    let want = 1.0 / (1.0 + p.a / p.b * ((p.alpha + t_cal) / p.alpha).powf(p.r));
    assert!((got - want).abs() < 1e-15 && got < 1.0, "{got} vs {want}");
    let new = p_alive(&p, 0.0, 0.0, 1e-12).unwrap();
    assert!((new - p.b / (p.a + p.b)).abs() < 1e-12, "{new}");
    // First seen on the as-of day (T = 0): defined, exactly b/(a+b), and the probability of
    // no purchase in t is that of having dropped out plus alive-and-silent.
    let today = p_alive(&p, 0.0, 0.0, 0.0).unwrap();
    assert!((today - p.b / (p.a + p.b)).abs() < 1e-15, "{today}");
    let silent = p_no_purchase(&p, 13.0, 0.0, 0.0, 0.0).unwrap();
    let want = (1.0 - today) + today * (p.alpha / (p.alpha + 13.0)).powf(p.r);
    assert!((silent - want).abs() < 1e-15, "{silent} vs {want}");
    // A history with purchases still needs T > 0.
    assert!(p_alive(&p, 1.0, 0.0, 0.0).is_err());
    // t_x is ignored for x = 0.
    assert_eq!(p_alive(&p, 0.0, 20.0, t_cal).unwrap(), got);
    // Purchase right at T: odds a/(b+x), so P = (b+x)/(a+b+x).
    let at_end = p_alive(&p, 3.0, t_cal, t_cal).unwrap();
    let want = (p.b + 3.0) / (p.a + p.b + 3.0);
    assert!((at_end - want).abs() < 1e-15);
    // Longer silence -> lower P(alive); extreme silence underflows to 0, not NaN.
    assert!(p_alive(&p, 3.0, 1.0, t_cal).unwrap() < at_end);
    let extreme = p_alive(&p, 5000.0, 0.0, 1e6).unwrap();
    assert!((0.0..1e-300).contains(&extreme));
    // For repeat buyers P(alive) is BG/NBD's with b + 1 (both survived x + 1 chances ...
    // of which BG/NBD counts x: b + x - 1 there is b + x here).
    let shifted = BgNbdParams::new(p.r, p.alpha, p.a, p.b + 1.0).unwrap();
    for (x, t_x) in [(1.0, 2.0), (4.0, 30.0), (12.0, 38.0)] {
        let m = p_alive(&p, x, t_x, t_cal).unwrap();
        let b = bgnbd::p_alive(&shifted, x, t_x, t_cal).unwrap();
        assert!((m - b).abs() < 1e-15, "{x}: {m} vs {b}");
    }
}

/// The Euler-transformed evaluation equals the conditional expectation written with
/// the original 2F1 (WH), including x = 0 and a heavier buyer, and for repeat buyers
/// equals BG/NBD's eq. 10 with b + 1.
#[test]
fn conditional_expectation_equals_literal_formula() {
    let p = cdnow_params();
    let shifted = BgNbdParams::new(p.r, p.alpha, p.a, p.b + 1.0).unwrap();
    for &(t, x, t_x, t_cal) in &[
        (39.0, 2.0, 30.43, 38.86),
        (10.0, 0.0, 0.0, 20.0),
        (52.0, 7.0, 35.0, 37.0),
        (300.0, 1.0, 1.0, 5.0),
    ] {
        let (r, alpha, a, b) = (p.r, p.alpha, p.a, p.b);
        let z = t / (alpha + t_cal + t);
        let f = hyp2f1(r + x, b + x + 1.0, a + b + x, z).unwrap();
        let num = (a + b + x) / (a - 1.0) * (1.0 - ((alpha + t_cal) / (alpha + t_cal + t)).powf(r + x) * f);
        let den = 1.0 + a / (b + x) * ((alpha + t_cal) / (alpha + t_x)).powf(r + x);
        let want = num / den;
        let got = expected_purchases(&p, t, x, t_x, t_cal).unwrap();
        assert!((got - want).abs() <= 1e-11 * want.abs(), "{x}: {got} vs {want}");
        if x > 0.0 {
            let bg = bgnbd::expected_purchases(&shifted, t, x, t_x, t_cal).unwrap();
            assert!((got - bg).abs() <= 1e-12 * bg, "{x}: {got} vs BG/NBD(b+1) {bg}");
        }
    }
}

/// Heavy buyer: the literal 2F1 grows like (1-z)^(-(r+x+1-a)) and would overflow; the
/// transformed form stays finite and below the expectation of an always-alive
/// customer of the same history, (r+x)/(α+T) t.
#[test]
fn heavy_buyer_does_not_overflow() {
    let p = cdnow_params();
    let (x, t_x, t_cal, t) = (900.0, 38.0, 38.86, 500.0);
    let e = expected_purchases(&p, t, x, t_x, t_cal).unwrap();
    assert!(e.is_finite() && e > 0.0);
    assert!(e < (p.r + x) / (p.alpha + t_cal) * t, "{e}");
    // Bought right at T: alive with probability (b+x)/(a+b+x), and an alive heavy
    // buyer is all but certain to buy within t, so p_no_purchase is about 1 - P(alive).
    let (t_x, t) = (t_cal, 13.0);
    let q = p_no_purchase(&p, t, x, t_x, t_cal).unwrap();
    let dead = p.a / (p.a + p.b + x);
    assert!(relative(q, dead) < 1e-12, "{q} vs {dead}");
    let e = expected_purchases(&p, t, x, t_x, t_cal).unwrap();
    assert!(e.is_finite() && e < (p.r + x) / (p.alpha + t_cal) * t, "{e}");
}

#[test]
fn expectations_are_continuous_across_a_equals_one() {
    let base = MbgNbdParams::new(0.5, 5.0, 1.0, 2.0).unwrap();
    let at = |a: f64| {
        let p = MbgNbdParams { a, ..base };
        (
            expected_purchases(&p, 26.0, 3.0, 20.0, 30.0).unwrap(),
            expected_purchases_unconditional(&p, 26.0).unwrap(),
        )
    };
    let (c_lo, u_lo) = at(1.0 - 1e-3);
    let (c_mid, u_mid) = at(1.0);
    let (c_hi, u_hi) = at(1.0 + 1e-3);
    assert!(((c_lo + c_hi) / 2.0 - c_mid).abs() < 1e-6 * c_mid);
    assert!(((u_lo + u_hi) / 2.0 - u_mid).abs() < 1e-6 * u_mid);
}

/// p_no_purchase is the likelihood ratio L(x, t_x, T+t) / L(x, t_x, T), 1 at t = 0,
/// falls with t towards 1 - P(alive), and for x = 0 lies above BG/NBD's (which has
/// every one-time buyer alive).
#[test]
fn p_no_purchase_properties() {
    let p = cdnow_params();
    for c in read_cdnow().iter().step_by(7) {
        let got = p_no_purchase(&p, 13.0, c.x, c.t_x, c.t_cal).unwrap();
        let ratio = (log_likelihood(&p, c.x, c.t_x, c.t_cal + 13.0).unwrap()
            - log_likelihood(&p, c.x, c.t_x, c.t_cal).unwrap())
        .exp();
        assert!((got - ratio).abs() <= 1e-12 * ratio, "{c:?}: {got} vs {ratio}");
    }
    for (x, t_x) in [(0.0, 0.0), (3.0, 12.0)] {
        let t_cal = 38.86;
        assert_eq!(p_no_purchase(&p, 0.0, x, t_x, t_cal).unwrap(), 1.0);
        let mut last = 1.0;
        for t in [1.0, 13.0, 52.0, 520.0, 1e40] {
            let q = p_no_purchase(&p, t, x, t_x, t_cal).unwrap();
            assert!(q < last, "{t}: {q}");
            last = q;
        }
        let dead = 1.0 - p_alive(&p, x, t_x, t_cal).unwrap();
        assert!((last - dead).abs() < 1e-15, "{last} vs {dead}");
    }
    let bg = BgNbdParams::new(p.r, p.alpha, p.a, p.b).unwrap();
    let (m, b) = (
        p_no_purchase(&p, 13.0, 0.0, 0.0, 38.86).unwrap(),
        bgnbd::p_no_purchase(&bg, 13.0, 0.0, 0.0, 38.86).unwrap(),
    );
    assert!(m > b, "{m} vs {b}");
}

/// Monte Carlo: 100,000 customers simulated from the MBG/NBD story (dropout possible
/// right after the first purchase) with lifetimes' CDNOW estimates, calibration periods
/// of 26 to 39 weeks and a 13-week holdout. In every group of similar histories
/// (x in 0, 1, 2, 3-5, 6+ by recency quarter) the number who bought nothing in the
/// holdout agrees with the sum of p_no_purchase within 4 standard errors, and so do
/// the number alive at T with the sum of P(alive) and the holdout purchases with the
/// sum of the conditional expectations (an independent check of WH's formula). The
/// BG/NBD formulas (one-time buyers all alive) are rejected by the same check.
#[test]
fn p_no_purchase_matches_simulation() {
    let truth = cdnow_params();
    let h = 13.0;
    let sims = simulate_with_holdout(as_array(&truth), true, 100_000, (26.0, 39.0), h, 2007);
    let bought_nothing = |c: &SimulatedCustomer| f64::from(u8::from(c.holdout_purchases == 0.0));
    let checks = [
        (
            "p_no_purchase",
            calibration(
                &sims,
                |c| p_no_purchase(&truth, h, c.x, c.t_x, c.t_cal).unwrap(),
                bought_nothing,
            ),
        ),
        (
            "p_alive",
            calibration(
                &sims,
                |c| p_alive(&truth, c.x, c.t_x, c.t_cal).unwrap(),
                |c| f64::from(u8::from(c.alive)),
            ),
        ),
        (
            "expected_purchases",
            calibration(
                &sims,
                |c| expected_purchases(&truth, h, c.x, c.t_x, c.t_cal).unwrap(),
                |c| c.holdout_purchases,
            ),
        ),
    ];
    for (name, groups) in &checks {
        assert!(groups.len() >= 12, "{name}: {groups:?}");
        let worst = groups.iter().map(|g| g.2.abs()).fold(0.0, f64::max);
        println!("{name}: {} groups, largest |z| {worst:.2}", groups.len());
        for &(group, n, z) in groups {
            assert!(
                z.abs() < 4.0,
                "{name}: group {group:?} ({n} customers): z = {z}; {groups:?}"
            );
        }
    }
    // The check has power: BG/NBD's formula with the same parameters (x = 0 alive)
    // is far off for the one-time buyers.
    let bg = BgNbdParams::new(truth.r, truth.alpha, truth.a, truth.b).unwrap();
    let wrong = calibration(
        &sims,
        |c| bgnbd::p_no_purchase(&bg, h, c.x, c.t_x, c.t_cal).unwrap(),
        bought_nothing,
    );
    let one_time = wrong.iter().find(|g| g.0 == (0, 0)).expect("x = 0 group");
    assert!(one_time.2.abs() > 20.0, "{wrong:?}");
}

/// 20,000 simulated customers, calibration periods of 26 to 78 weeks: the fit recovers
/// the truth within sampling error, and the likelihood-ratio statistic of the MLE
/// against the truth is plausible for 4 degrees of freedom (below the 99.9% quantile
/// 18.47), which a likelihood that mis-states the simulated story would not be.
#[test]
fn recovers_simulated_parameters() {
    let truth = MbgNbdParams::new(0.8, 6.0, 0.7, 2.5).unwrap();
    let data = group_summaries(
        simulate_with_holdout(as_array(&truth), true, 20_000, (26.0, 78.0), 0.0, 20_070_301)
            .iter()
            .map(|c| (c.x, c.t_x, c.t_cal)),
    );
    let fit = fit_mbgnbd(&data).unwrap();
    assert!(fit.converged);
    let p = fit.params;
    for (name, got, want, tol) in [
        ("r", p.r, truth.r, 0.06),
        ("alpha", p.alpha, truth.alpha, 0.08),
        ("a", p.a, truth.a, 0.25),
        ("b", p.b, truth.b, 0.35),
    ] {
        assert!(
            relative(got, want) < tol,
            "{name}: fitted {got}, truth {want} (fit {fit:?})"
        );
    }
    let lr = 2.0 * (fit.log_likelihood - total_log_likelihood(&truth, &data).unwrap());
    assert!((0.0..18.47).contains(&lr), "LR statistic {lr}");
}

fn outcome(fit: MbgNbdFit) -> FitOutcome {
    FitOutcome {
        params: as_array(&fit.params).to_vec(),
        log_likelihood: fit.log_likelihood,
        iterations: fit.iterations,
        converged: fit.converged,
    }
}

/// Fit options that run only the derivative-free Nelder-Mead/Newton path.
fn derivative_free() -> MbgNbdFitOptions {
    MbgNbdFitOptions {
        minimize: MinimizeOptions {
            max_quasi_newton_iterations: 0,
            ..MinimizeOptions::default()
        },
        ..MbgNbdFitOptions::strict()
    }
}

/// BFGS on the analytic gradient and the derivative-free path find the same maximum
/// on CDNOW, BFGS in a small fraction of the iterations.
#[test]
fn quasi_newton_fit_equals_derivative_free_fit() {
    let data = cdnow_summaries();
    assert_same_maximum(
        &outcome(fit_mbgnbd(&data).unwrap()),
        &outcome(fit_mbgnbd_with(&data, &derivative_free()).unwrap()),
    );
}

/// Bad inputs and degenerate data sets are typed errors naming the value, never panics.
#[test]
fn invalid_inputs_are_errors() {
    let p = cdnow_params();
    assert_eq!(
        log_likelihood(&p, 2.0, 40.0, 38.86).unwrap_err().to_string(),
        "MBG/NBD: invalid t_x = 40: must satisfy 0 <= t_x <= T = 38.86"
    );
    for (x, t_x, t_cal, name) in [
        (-1.0, 0.0, 1.0, "x"),
        (1.5, 0.0, 1.0, "x"),
        (f64::NAN, 0.0, 1.0, "x"),
        (f64::INFINITY, 0.0, 1.0, "x"),
        (1.0, 0.5, 0.0, "T"),
        (1.0, 0.5, f64::NAN, "T"),
        (1.0, 0.5, f64::INFINITY, "T"),
        (1.0, f64::NAN, 1.0, "t_x"),
        (1.0, -0.5, 1.0, "t_x"),
    ] {
        let is = |r: Result<f64, ModelError>| matches!(r, Err(ModelError::InvalidInput { name: n, .. }) if n == name);
        assert!(is(log_likelihood(&p, x, t_x, t_cal)), "({x}, {t_x}, {t_cal})");
        assert!(is(p_alive(&p, x, t_x, t_cal)));
        assert!(is(expected_purchases(&p, 10.0, x, t_x, t_cal)));
        assert!(is(p_no_purchase(&p, 10.0, x, t_x, t_cal)));
        let row = [RfSummary {
            x,
            t_x,
            t_cal,
            weight: 1.0,
        }];
        assert!(
            matches!(fit_mbgnbd(&row), Err(ModelError::InvalidInput { row: Some(0), .. })),
            "({x}, {t_x}, {t_cal})"
        );
    }
    for t in [-1.0, f64::NAN, f64::INFINITY] {
        for r in [
            expected_purchases(&p, t, 1.0, 0.5, 1.0),
            p_no_purchase(&p, t, 1.0, 0.5, 1.0),
            expected_purchases_unconditional(&p, t),
        ] {
            assert!(
                matches!(r, Err(ModelError::InvalidInput { name: "t", .. })),
                "{t}: {r:?}"
            );
        }
    }
    for bad in [
        MbgNbdParams { alpha: -1.0, ..p },
        MbgNbdParams { r: 0.0, ..p },
        MbgNbdParams { a: f64::NAN, ..p },
        MbgNbdParams { b: f64::INFINITY, ..p },
    ] {
        assert!(matches!(
            p_alive(&bad, 1.0, 0.5, 1.0),
            Err(ModelError::InvalidParameter { .. })
        ));
        assert!(matches!(
            p_no_purchase(&bad, 1.0, 1.0, 0.5, 1.0),
            Err(ModelError::InvalidParameter { .. })
        ));
        assert!(matches!(
            MbgNbdParams::new(bad.r, bad.alpha, bad.a, bad.b),
            Err(ModelError::InvalidParameter { .. })
        ));
        let start = MbgNbdFitOptions {
            initial: Some(bad),
            ..MbgNbdFitOptions::strict()
        };
        assert!(matches!(
            fit_mbgnbd_with(&cdnow_summaries(), &start),
            Err(ModelError::InvalidParameter { .. })
        ));
    }
    assert_eq!(
        p_alive(&MbgNbdParams { alpha: -1.0, ..p }, 1.0, 0.5, 1.0)
            .unwrap_err()
            .to_string(),
        "MBG/NBD: invalid parameter alpha = -1: must be finite and > 0"
    );
    // Data sets.
    let row = |x: f64, t_x: f64, t_cal: f64, weight: f64| RfSummary { x, t_x, t_cal, weight };
    let e = fit_mbgnbd(&[row(1.0, 1.0, 2.0, 1.0), row(1.0, 3.0, 2.0, 1.0)]).unwrap_err();
    assert!(e.to_string().contains("in row 1"), "{e}");
    assert!(matches!(fit_mbgnbd(&[]), Err(ModelError::EmptyData { .. })));
    assert!(matches!(
        total_log_likelihood(&p, &[]),
        Err(ModelError::EmptyData { .. })
    ));
    assert!(matches!(
        fit_mbgnbd(&[row(1.0, 1.0, 2.0, 0.0)]),
        Err(ModelError::EmptyData { .. })
    ));
    for w in [-2.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            fit_mbgnbd(&[row(1.0, 1.0, 2.0, 1.0), row(1.0, 1.0, 2.0, w)]),
            Err(ModelError::InvalidInput {
                name: "weight",
                row: Some(1),
                ..
            })
        ));
    }
}

/// Extreme but valid inputs and parameters: every score is an error or a number in its
/// range (probabilities in [0, 1], expectations >= 0), never a panic or a NaN.
#[test]
fn extreme_inputs_give_numbers_or_errors() {
    let extremes = [1e-300, 1e-8, 1.0, 1e8, 1e300];
    let mut scored = 0;
    for &r in &extremes {
        for &alpha in &extremes {
            for (a, b) in [(1e-300, 1e300), (1.0, 1.0), (1e300, 1e-300), (0.891, 1.614)] {
                let p = MbgNbdParams::new(r, alpha, a, b).unwrap();
                for (x, t_x, t_cal) in [
                    (0.0, 0.0, 1e-300),
                    (0.0, 0.0, 1e300),
                    (1e300, 1e300, 1e300),
                    (1e6, 1e-300, 1e300),
                    (3.0, 1.0, 1.0),
                ] {
                    for t in [0.0, 1e-300, 13.0, 1e300] {
                        let probabilities = [p_alive(&p, x, t_x, t_cal), p_no_purchase(&p, t, x, t_x, t_cal)];
                        for v in probabilities.into_iter().flatten() {
                            assert!((0.0..=1.0).contains(&v), "{p:?} ({x}, {t_x}, {t_cal}, {t}): {v}");
                            scored += 1;
                        }
                        if let Ok(e) = expected_purchases(&p, t, x, t_x, t_cal) {
                            assert!(e >= 0.0, "{p:?} ({x}, {t_x}, {t_cal}, {t}): {e}");
                        }
                        if let Ok(e) = expected_purchases_unconditional(&p, t) {
                            assert!(e >= 0.0, "{p:?} {t}: {e}");
                        }
                    }
                    if let Ok(ll) = log_likelihood(&p, x, t_x, t_cal) {
                        assert!(!ll.is_nan(), "{p:?} ({x}, {t_x}, {t_cal})");
                    }
                }
            }
        }
    }
    assert!(scored > 1000, "{scored}");
    // A fit on data with extreme values ends in a fit or an error.
    let data = group_summaries([(1e300, 1e300, 1e300), (0.0, 0.0, 1e-300), (2.0, 1.0, 3.0)]);
    let _ = fit_mbgnbd(&data);
}

#[test]
fn degenerate_data_is_rejected() {
    // Nobody bought again: "everyone dropped out at the first purchase" is the
    // unattained supremum of the likelihood.
    let no_repeats: Vec<RfSummary> = (1..50)
        .map(|i| RfSummary {
            x: 0.0,
            t_x: 0.0,
            t_cal: i as f64,
            weight: 1.0,
        })
        .collect();
    let e = fit_mbgnbd(&no_repeats).unwrap_err();
    assert!(matches!(e, ModelError::Degenerate { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("MBG/NBD: maximum-likelihood estimate does not exist"),
        "{e}"
    );
    // The likelihood itself is finite there, even at extreme parameters.
    let extreme = MbgNbdParams::new(1e-40, 1e28, 2e5, 3e12).unwrap();
    let ll = total_log_likelihood(&extreme, &no_repeats).unwrap();
    assert!(ll.is_finite() && ll <= 0.0, "{ll}");
    // Non-convergence is reported (strict) or flagged (lenient).
    let opts = MbgNbdFitOptions {
        minimize: MinimizeOptions {
            max_quasi_newton_iterations: 3,
            max_nelder_mead_iterations: 5,
            max_newton_iterations: 0,
            max_restarts: 0,
            ..MinimizeOptions::default()
        },
        ..MbgNbdFitOptions::strict()
    };
    let e = fit_mbgnbd_with(&cdnow_summaries(), &opts).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("MBG/NBD fit did not converge after 8 iterations (last log-likelihood -"),
        "{e}"
    );
    let lenient = MbgNbdFitOptions {
        require_convergence: false,
        ..opts
    };
    let fit = fit_mbgnbd_with(&cdnow_summaries(), &lenient).unwrap();
    assert!(!fit.converged);
}

/// Tiny and degenerate data sets (boundary optima, flat likelihoods): no panic, and
/// the default path reaches the same verdict as the derivative-free path (the same
/// error variant, or fits with the same likelihood).
#[test]
fn degenerate_data_gets_the_same_verdict_on_both_paths() {
    let truth = MbgNbdParams::new(0.8, 6.0, 0.7, 2.5).unwrap();
    let mut cases: Vec<Vec<RfSummary>> = Vec::new();
    for n in [1, 2, 3, 5, 8, 13, 30] {
        for seed in 0..6 {
            let sims = simulate_with_holdout(as_array(&truth), true, n, (26.0, 78.0), 0.0, seed);
            cases.push(group_summaries(sims.iter().map(|c| (c.x, c.t_x, c.t_cal))));
        }
    }
    // Nobody seems to have dropped out: everyone bought at the end.
    cases.push(group_summaries((1..40).map(|i| ((i % 5 + 1) as f64, 30.0, 30.0))));
    // A single repeat buyer, alone and with a one-time buyer.
    cases.push(group_summaries([(2.0, 5.0, 20.0)]));
    cases.push(group_summaries([(2.0, 5.0, 20.0), (0.0, 0.0, 20.0)]));
    // Everyone dropped out right after one repeat purchase.
    cases.push(group_summaries((1..40).map(|i| (1.0, 0.1, 30.0 + i as f64))));
    let verdicts = same_verdicts(
        &cases,
        |data| fit_mbgnbd(data).map(outcome),
        |data| fit_mbgnbd_with(data, &derivative_free()).map(outcome),
    );
    println!("verdicts: {verdicts:?}");
    assert!(verdicts.get("fit").copied().unwrap_or(0) >= 2, "{verdicts:?}");
    assert!(
        verdicts.get("degenerate").copied().unwrap_or(0) + verdicts.get("not converged").copied().unwrap_or(0) >= 2,
        "{verdicts:?}"
    );
}
