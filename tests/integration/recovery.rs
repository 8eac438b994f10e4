//! Parameter recovery: customers simulated by `patron generate` from known modified BG/NBD
//! and Gamma-Gamma parameters, run through `patron run`, give those parameters back within
//! their sampling error.

use chrono::{DateTime, NaiveDate};

use crate::support::*;

/// Simulated customer ids (buyers are about 88% of them, the rest prospects and
/// service-only). 60,000: generate + run take about 50 s in the dev profile on an idle 2-core
/// machine (75 s under load).
const CUSTOMERS: &str = "60000";
/// Fixed, and not one of the seeds the tolerances below were measured on.
const SEED: &str = "42";

/// How far each estimate may fall from the truth, from the spread of the estimates.
///
/// Measured once while writing this test (dev build, `patron generate --customers 60000
/// --clean --no-returns --seed 1..=10`, `patron run --as-of 2025-12-31`, the last day of
/// the window; the generator's purchases follow the modified BG/NBD):
///
/// | parameter | truth  | mean of 10 fits | sd of the fits | mean - truth       |
/// |-----------|--------|-----------------|----------------|--------------------|
/// | r         | 0.243  | 0.2536          | 0.0040         | +0.0106 (8.4 se)   |
/// | alpha     | 4.414  | 4.6689          | 0.0766         | +0.255  (10.5 se)  |
/// | a         | 0.793  | 0.7794          | 0.0213         | -0.014  (2.0 se)   |
/// | b         | 2.426  | 2.2492          | 0.1119         | -0.177  (5.0 se)   |
/// | p         | 6.25   | 6.0344          | 0.1586         | -0.216  (4.3 se)   |
/// | q         | 3.74   | 3.7619          | 0.0427         | +0.022  (1.6 se)   |
/// | gamma     | 15.44  | 16.2209         | 0.4706         | +0.78   (5.2 se)   |
/// | p gamma / (q - 1), the mean order value | 35.219 | 35.421 | 0.132 | +0.20 (4.8 se) |
///
/// (se = sd / sqrt(10), the standard error of the mean.) The test allows 4 sd around the
/// truth plus `shift`, the systematic shift of the estimate where it exceeds 3 se. The
/// pipeline counts purchase days (same-day purchases are one, FHL 2005) on whole days while
/// the generator simulates continuous time; for BG/NBD a continuous-time refit of the same
/// customers showed that this explains the shift of alpha (about 5%: the fastest buyers'
/// same-day repeats vanish). Under the modified BG/NBD a merged repeat also hides a
/// survived dropout chance, which moves E[p] = a / (a + b) up (0.258 against 0.246), and
/// merged purchase days add two orders' spend into one, which moves Gamma-Gamma's p and
/// gamma along the ridge they trade off on; we have not confirmed these two by a
/// continuous-time refit. The mean order value, which is what the scores use, stays within
/// 0.6% of the truth, and is allowed 4 sd without a shift.
const EXPECTED_SPREAD: [Spread; 7] = [
    Spread::new("mbgnbd", "r", 0.0106, 0.0040),
    Spread::new("mbgnbd", "alpha", 0.255, 0.0766),
    Spread::new("mbgnbd", "a", 0.0, 0.0213),
    Spread::new("mbgnbd", "b", -0.177, 0.1119),
    Spread::new("gamma_gamma", "p", -0.216, 0.1586),
    Spread::new("gamma_gamma", "q", 0.0, 0.0427),
    Spread::new("gamma_gamma", "gamma", 0.78, 0.4706),
];
/// Standard deviation of the fitted mean order value p gamma / (q - 1) over the same fits;
/// far better determined than p and gamma, which trade off against each other.
const ORDER_VALUE_SD: f64 = 0.132;
/// Standard deviations allowed.
const SDS: f64 = 4.0;

/// The measured behaviour of one estimate.
struct Spread {
    model: &'static str,
    name: &'static str,
    /// Systematic shift of the estimate from the truth.
    shift: f64,
    /// Standard deviation of the estimate over seeds.
    sd: f64,
}

impl Spread {
    const fn new(model: &'static str, name: &'static str, shift: f64, sd: f64) -> Self {
        Spread { model, name, shift, sd }
    }
}

#[test]
fn fitted_parameters_recover_the_simulated_truth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let generated = dir.path().join("generated");
    let out = patron(
        dir.path(),
        &[
            "generate",
            "--customers",
            CUSTOMERS,
            "--seed",
            SEED,
            "--clean",
            // Partial returns lower order values below the Gamma-Gamma draws.
            "--no-returns",
            "--out",
            generated.to_str().expect("UTF-8 temp path"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let truth_file = generated.join("truth.json");
    let truth: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&truth_file).unwrap_or_else(|e| panic!("cannot read {}: {e}", truth_file.display())),
    )
    .expect("truth.json is JSON");
    assert_eq!(
        truth["time_unit"], "weeks",
        "truth parameters are per week, as the pipeline's default"
    );

    // The window ends (exclusive) at midnight UTC; the last simulated day is the as-of day,
    // so T runs to the window end.
    let end = truth["window"]["end"].as_str().expect("truth.json has window.end");
    let end = DateTime::parse_from_rfc3339(end).unwrap_or_else(|e| panic!("window.end {end:?}: {e}"));
    assert_eq!(end.time(), chrono::NaiveTime::MIN, "the window ends at midnight: {end}");
    let as_of: NaiveDate = end.date_naive().pred_opt().expect("a day before the window end");

    let pipeline = write_pipeline(
        dir.path(),
        &[
            ("sales", format!("{}/sales/*.csv", generated.display())),
            ("service", format!("{}/service/*.csv", generated.display())),
            ("marketing", format!("{}/marketing/*.ndjson", generated.display())),
        ],
    );
    let wh = dir.path().join("wh");
    let as_of_text = as_of.format("%Y-%m-%d").to_string();
    let out = patron(
        dir.path(),
        &[
            "run",
            "--pipeline",
            pipeline.to_str().expect("UTF-8 temp path"),
            "--as-of",
            &as_of_text,
            "--out",
            wh.to_str().expect("UTF-8 temp path"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let manifest = latest_manifest(&wh);
    let models = &manifest["models"];
    assert_eq!(
        models["time_unit_days"].as_f64(),
        Some(7.0),
        "fitted per week, as the truth"
    );
    assert_eq!(
        models["mbgnbd"]["customers"], truth["report"]["buyers"],
        "the modified BG/NBD is fitted on every simulated buyer"
    );
    let fitted = |model: &str, name: &str| {
        assert_eq!(models[model]["converged"], true, "{model}: {}", models[model]);
        models[model]["params"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("manifest has no models.{model}.params.{name}"))
    };
    let true_value = |name: &str| {
        truth["true_parameters"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("truth.json has no true_parameters.{name}"))
    };
    let mut misses = Vec::new();
    for s in EXPECTED_SPREAD {
        let (got, want) = (fitted(s.model, s.name), true_value(s.name) + s.shift);
        let line = format!(
            "{} {}: fitted {got:.4}, truth {:.4} + shift {}, allowed +-{:.4}",
            s.model,
            s.name,
            true_value(s.name),
            s.shift,
            SDS * s.sd
        );
        eprintln!("{line}");
        if (got - want).abs() > SDS * s.sd {
            misses.push(line);
        }
    }
    let order_value = fitted("gamma_gamma", "p") * fitted("gamma_gamma", "gamma") / (fitted("gamma_gamma", "q") - 1.0);
    let true_order_value = truth["expected_order_value"]
        .as_f64()
        .expect("truth.json has expected_order_value");
    let line = format!(
        "mean order value p gamma / (q - 1): fitted {order_value:.3}, truth {true_order_value:.3}, allowed +-{:.3}",
        SDS * ORDER_VALUE_SD
    );
    eprintln!("{line}");
    if (order_value - true_order_value).abs() > SDS * ORDER_VALUE_SD {
        misses.push(line);
    }
    assert!(misses.is_empty(), "estimates off the truth:\n{}", misses.join("\n"));
}
