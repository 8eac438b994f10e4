//! Degenerate data, the exports a new or unusual shop really has: the models cannot be
//! fitted, the run still loads and scores every buyer (never NULL or NaN), and the
//! manifest, `model_params` and the run summary say which model fell back to what, and why.

use crate::support::*;

fn sales<S: AsRef<str>>(rows: &[(S, S, S)]) -> String {
    let mut text = format!("{SALES_HEADER}\n");
    for (i, (customer, ts, price)) in rows.iter().enumerate() {
        let (customer, ts, price) = (customer.as_ref(), ts.as_ref(), price.as_ref());
        text.push_str(&format!("O{i},1,{customer},{ts},web,books,1,{price},,,EUR,\n"));
    }
    text
}

async fn run_and_check<S: AsRef<str>>(rows: &[(S, S, S)], as_of: &str) -> serde_json::Value {
    run_and_summarise(rows, as_of).await.0
}

/// Runs the pipeline on `rows`, checks every buyer is scored with no NULL or NaN score, and
/// that the summary warns exactly when a model fell back; the manifest and the summary.
async fn run_and_summarise<S: AsRef<str>>(rows: &[(S, S, S)], as_of: &str) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = project_with_exports(dir.path(), &sales(rows), None, None);
    let wh = dir.path().join("wh");
    let out = run_pipeline(dir.path(), &p, &["--as-of", as_of]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let ctx = warehouse_session(&wh).await;
    let customers = scalar(&ctx, "SELECT COUNT(DISTINCT customer_id) FROM fct_customer").await;
    assert_eq!(scalar(&ctx, "SELECT COUNT(*) FROM customer_scores").await, customers);
    for c in [
        "p_alive",
        "churn_risk",
        "expected_purchases_90d",
        "expected_purchases_365d",
        "expected_order_value",
        "clv",
        "potential_value",
    ] {
        let bad = scalar(
            &ctx,
            &format!("SELECT COUNT(*) FROM customer_scores WHERE {c} IS NULL OR isnan({c})"),
        )
        .await;
        assert_eq!(bad, 0.0, "{c} is NULL or NaN");
    }
    let m = latest_manifest(&wh);
    let mut fell_back = false;
    for model in ["bgnbd", "gamma_gamma"] {
        let fallback = &m["models"][format!("{model}_fallback")];
        assert_eq!(
            m["models"][model].is_null(),
            fallback.is_object(),
            "{model}: either fitted or a recorded fallback: {}",
            m["models"]
        );
        fell_back |= fallback.is_object();
    }
    assert_eq!(
        summary.contains("warning: scored with model fallbacks"),
        fell_back,
        "{summary}"
    );
    // model_params names the stand-in with its reason.
    if fell_back {
        let notes = scalar(
            &ctx,
            "SELECT COUNT(*) FROM model_params WHERE note LIKE '%fell back to%'",
        )
        .await;
        assert!(notes > 0.0, "model_params has no fallback note");
    }
    (m, summary)
}

#[tokio::test]
async fn no_repeat_buyers_skip_bgnbd_with_a_reason() {
    let m = run_and_check(
        &[
            ("a", "2025-01-02", "10"),
            ("b", "2025-02-03", "20"),
            ("c", "2025-03-04", "30"),
        ],
        "2025-06-30",
    )
    .await;
    assert!(m["models"]["bgnbd"].is_null());
    let why = m["models"]["bgnbd_fallback"]["reason"].as_str().unwrap();
    assert!(why.contains("repeat purchase"), "{why}");
    assert_eq!(m["models"]["bgnbd_fallback"]["method"], "pooled_rate");
    assert!(m["models"]["gamma_gamma"].is_null());
}

#[tokio::test]
async fn everyone_buying_on_the_as_of_day_is_handled() {
    let m = run_and_check(
        &[("a", "2025-06-30T10:00:00Z", "10"), ("b", "2025-06-30T11:00:00Z", "20")],
        "2025-06-30",
    )
    .await;
    assert!(
        m["models"]["bgnbd"].is_null() && m["models"]["bgnbd_fallback"].is_object(),
        "{}",
        m["models"]
    );
}

#[tokio::test]
async fn a_single_repeat_buyer_is_scored_with_a_fallback() {
    let (m, _) = run_and_summarise(
        &[
            ("a", "2025-01-02", "10"),
            ("a", "2025-02-03", "20"),
            ("a", "2025-03-04", "30"),
        ],
        "2025-06-30",
    )
    .await;
    assert!(m["models"]["bgnbd_fallback"].is_object(), "{}", m["models"]);
}

/// Day `d` (0-based) of 2025 as an ISO date.
fn day(d: u32) -> String {
    let date = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap() + chrono::Duration::days(i64::from(d));
    date.format("%Y-%m-%d").to_string()
}

type Rows = Vec<(String, String, String)>;

/// `customers` customers each buying every `every` days from day `start + i % 7` while
/// before day `until`, at `price` (with `spread` added per customer index, cycled).
fn rhythm(customers: u32, every: u32, until: u32, price: f64, spread: f64) -> Rows {
    let mut rows = Vec::new();
    for c in 0..customers {
        let mut d = c % 7;
        while d < until {
            let p = price + spread * f64::from(c % 5);
            rows.push((format!("c{c}"), day(d), format!("{p:.2}")));
            d += every;
        }
    }
    rows
}

/// Small shops of every awkward shape (issue: a load never fails because a model cannot
/// fit): each loads, scores every buyer without NULL or NaN, and says which model fell back.
#[tokio::test]
async fn small_and_lopsided_shops_all_load_and_score_every_buyer() {
    let as_of = "2025-06-30";
    let mut cases: Vec<(&str, Rows)> = vec![
        ("one order", vec![("a".into(), day(40), "10".into())]),
        ("one customer, many orders", rhythm(1, 9, 170, 20.0, 0.0)),
        (
            "every customer a one-time buyer",
            (0..20)
                .map(|c| (format!("c{c}"), day(c * 7), format!("{}", 5 + c)))
                .collect(),
        ),
        ("everyone the same price", {
            let mut r = rhythm(30, 17, 170, 9.99, 0.0);
            r.retain(|(c, d, _)| !(c.ends_with('3') && d.as_str() > "2025-03-01"));
            r
        }),
        (
            "subscription: 60 customers paying 9.99 every 4 weeks",
            rhythm(60, 28, 180, 9.99, 0.0),
        ),
        ("B2B: 50 customers ordering every week", rhythm(50, 7, 180, 120.0, 15.0)),
        ("all purchases on the as-of day", {
            (0..6)
                .map(|c| (format!("c{c}"), format!("{as_of}T0{c}:00:00Z"), "12".into()))
                .collect()
        }),
        ("one huge customer and many tiny ones", {
            let mut r = rhythm(1, 2, 180, 5000.0, 0.0);
            r.extend((0..30).map(|c| (format!("t{c}"), day(c * 5), "1.00".into())));
            r
        }),
    ];
    for n in [2u32, 3, 5, 10] {
        let mut rows = Vec::new();
        for c in 0..n {
            for k in 0..=(c % 3) {
                rows.push((
                    format!("c{c}"),
                    day(10 + c * 11 + k * 23),
                    format!("{}", 10 + c * 3 + k),
                ));
            }
        }
        cases.push((
            ["2 customers", "3 customers", "5 customers", "10 customers"]
                [[2, 3, 5, 10].iter().position(|x| *x == n).unwrap()],
            rows,
        ));
    }
    let mut outcomes = Vec::new();
    for (name, rows) in &cases {
        eprintln!("case: {name}");
        let (m, _) = run_and_summarise(rows, as_of).await;
        let method = |model: &str| {
            m["models"][format!("{model}_fallback")]["method"]
                .as_str()
                .unwrap_or("fitted")
                .to_string()
        };
        outcomes.push(format!(
            "{name}: BG/NBD {}, Gamma-Gamma {}",
            method("bgnbd"),
            method("gamma_gamma")
        ));
    }
    eprintln!("{}", outcomes.join("\n"));
}

/// `[scoring] require_models = true`: a model that falls back fails the run (exit 1) naming it.
#[tokio::test]
async fn require_models_makes_a_fallback_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [("a", "2025-01-02", "10"), ("b", "2025-02-03", "20")];
    let p = project_with_exports(dir.path(), &sales(&rows), None, None);
    let pipeline = std::fs::read_to_string(&p).unwrap();
    assert!(
        pipeline.contains("require_models = false"),
        "the default pipeline lists the setting"
    );
    std::fs::write(&p, pipeline.replace("require_models = false", "require_models = true")).unwrap();
    let out = run_pipeline(dir.path(), &p, &["--as-of", "2025-06-30"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("BG/NBD fell back") && err.contains("require_models"),
        "{err}"
    );
}
