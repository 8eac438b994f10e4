//! Degenerate data: the models cannot be fitted, the run still succeeds with a clear
//! message in the manifest and sensible scores, never NaN.

use crate::support::*;

fn sales(rows: &[(&str, &str, &str)]) -> String {
    let mut text = format!("{SALES_HEADER}\n");
    for (i, (customer, ts, price)) in rows.iter().enumerate() {
        text.push_str(&format!("O{i},1,{customer},{ts},web,books,1,{price},,,EUR,\n"));
    }
    text
}

async fn run_and_check(rows: &[(&str, &str, &str)], as_of: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let p = project_with_exports(dir.path(), &sales(rows), None, None);
    let wh = dir.path().join("wh");
    let out = run_pipeline(dir.path(), &p, &["--as-of", as_of]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
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
    latest_manifest(&wh)
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
    let why = m["models"]["bgnbd_skipped"].as_str().unwrap();
    assert!(why.contains("repeat purchase"), "{why}");
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
        m["models"]["bgnbd"].is_null() && m["models"]["bgnbd_skipped"].is_string(),
        "{}",
        m["models"]
    );
}

#[tokio::test]
async fn a_single_repeat_buyer_gives_a_clear_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        ("a", "2025-01-02", "10"),
        ("a", "2025-02-03", "20"),
        ("a", "2025-03-04", "30"),
    ];
    let p = project_with_exports(dir.path(), &sales(&rows), None, None);
    let wh = dir.path().join("wh");
    let out = run_pipeline(dir.path(), &p, &["--as-of", "2025-06-30"]);
    // One customer cannot identify four parameters: either the fit is skipped with a reason
    // or the run fails naming the model; never a silent nonsense fit.
    match out.status.code() {
        Some(0) => {
            let m = latest_manifest(&wh);
            assert!(m["models"]["bgnbd_skipped"].is_string(), "{}", m["models"]);
        }
        Some(1) => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("BG/NBD"), "{err}");
        }
        other => panic!("unexpected exit {other:?}: {}", text(&out)),
    }
}
