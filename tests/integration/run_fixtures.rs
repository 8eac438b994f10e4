//! The default pipeline on the bundled fixtures, checked against the exports themselves
//! and against the generator's truth file.

use crate::support::*;

const TABLES: [&str; 13] = [
    "stg_sales",
    "stg_service",
    "stg_marketing",
    "int_orders",
    "fct_customer",
    "customer_model_input",
    "model_params",
    "churn_features",
    "customer_values",
    "customer_ranks",
    "customer_scores",
    "customer_scores_history",
    "segment_migration",
];

#[tokio::test]
async fn run_on_fixtures_publishes_every_table_and_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let out = run_default(&wh);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("succeeded"),
        "{}",
        text(&out)
    );

    for t in TABLES {
        assert!(delta_version(&wh.join("tables").join(t)).is_some(), "table {t} missing");
    }
    for s in ["sales", "service", "marketing"] {
        assert!(
            delta_version(&wh.join("raw").join(s)).is_some() && delta_version(&wh.join("quarantine").join(s)).is_some(),
            "{s} raw/quarantine missing"
        );
    }
    assert!(
        !wh.join("_staging")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "staging left behind"
    );

    let ctx = warehouse_session(&wh).await;

    // One row per distinct normalised customer id found in the three exports.
    let distinct = scalar(
        &ctx,
        "SELECT COUNT(*) FROM (SELECT UPPER(TRIM(customer_id)) FROM raw_sales UNION SELECT UPPER(TRIM(customer_id)) FROM raw_service UNION SELECT UPPER(TRIM(customer_id)) FROM raw_marketing)",
    )
    .await;
    let rows = scalar(&ctx, "SELECT COUNT(*) FROM fct_customer").await;
    let unique = scalar(&ctx, "SELECT COUNT(DISTINCT customer_id) FROM fct_customer").await;
    assert_eq!(rows, distinct);
    assert_eq!(unique, rows);
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("fixtures/truth.json")).unwrap()).unwrap();
    assert_eq!(
        rows as u64,
        truth["report"]["customers"].as_u64().unwrap(),
        "every simulated customer appears once"
    );
    assert_eq!(scalar(&ctx, "SELECT COUNT(*) FROM customer_scores").await, rows);

    // Revenue reconciles: computed straight from the extracted export (one copy per order
    // line, net of returns as docs/returns.md says: a cancelled line or a line returned
    // whole brings nothing, a negative line gives its value and discount back) equals the
    // customer fact total.
    let raw_revenue = scalar(
        &ctx,
        "SELECT SUM(CASE \
            WHEN status = 'cancelled' OR (quantity >= 0 AND status IN ('returned', 'refunded')) THEN 0 \
            WHEN quantity < 0 THEN quantity * unit_price + COALESCE(discount, 0) \
            ELSE quantity * unit_price - COALESCE(discount, 0) END) \
         FROM (SELECT DISTINCT TRIM(order_id) AS o, line_no, quantity, unit_price, discount, status FROM raw_sales)",
    )
    .await;
    // What came back equals the generator's own count, to the cent.
    let returned = scalar(&ctx, "SELECT SUM(returned_revenue) FROM fct_customer").await;
    let truth_returned = truth["report"]["returned_revenue_cents"].as_f64().unwrap() / 100.0;
    assert!(truth_returned > 0.0);
    assert!(
        (returned - truth_returned).abs() < 0.005,
        "{returned} vs {truth_returned}"
    );
    assert_eq!(
        scalar(&ctx, "SELECT SUM(orders) FROM fct_customer").await,
        truth["report"]["orders"].as_f64().unwrap(),
        "the purchases are the simulated ones: cancelled and fully returned orders are not"
    );
    let fct_revenue = scalar(&ctx, "SELECT SUM(revenue) FROM fct_customer").await;
    assert!(raw_revenue > 0.0);
    assert!(
        (raw_revenue - fct_revenue).abs() <= 1e-9 * raw_revenue,
        "{raw_revenue} vs {fct_revenue}"
    );
    let margin = scalar(&ctx, "SELECT SUM(revenue - cost - gross_margin) FROM fct_customer").await;
    assert!(margin.abs() < 1e-6);

    // Nothing lost: every data line of every file is loaded or quarantined, quarantined
    // rows match what the generator injected, and each has a reason.
    let manifest = latest_manifest(&wh);
    assert_eq!(manifest["outcome"], "succeeded");
    // The wall time of each phase: within the run's, and each covering its parts.
    let ms = |v: &serde_json::Value| v.as_u64().unwrap();
    let phases = manifest["phase_ms"].as_object().unwrap();
    let phase_names: Vec<&str> = phases.keys().map(String::as_str).collect();
    assert_eq!(phase_names, ["duplicates", "extract", "publish", "test", "transform"]);
    assert!(
        phases.values().map(ms).sum::<u64>() <= ms(&manifest["duration_ms"]),
        "{phases:?}"
    );
    let slowest_source = manifest["extract"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| ms(&s["duration_ms"]));
    assert!(slowest_source.max().unwrap() <= ms(&phases["extract"]), "{phases:?}");
    // Stages of a wave run side by side, so each fits in the transform phase, not their sum.
    for stage in manifest["stages"].as_array().unwrap() {
        assert!(
            ms(&stage["duration_ms"]) <= ms(&phases["transform"]),
            "{stage}, {phases:?}"
        );
    }
    for source in manifest["extract"].as_array().unwrap() {
        let name = source["source"].as_str().unwrap();
        let read = source["rows_read"].as_u64().unwrap();
        let loaded = source["rows_loaded"].as_u64().unwrap();
        let quarantined = source["rows_quarantined"].as_u64().unwrap();
        assert_eq!(read, loaded + quarantined, "{name}");
        let lines: u64 = source["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| data_lines(std::path::Path::new(f["path"].as_str().unwrap())))
            .sum();
        assert_eq!(read, lines, "{name}: rows read vs data lines in the files");
        let injected = truth["report"][name]["bad_rows"].as_u64().unwrap();
        assert!(injected > 0, "fixtures carry bad rows for {name}");
        assert_eq!(quarantined, injected, "{name}: quarantined vs injected bad rows");
        let q_rows = scalar(
            &ctx,
            &format!("SELECT COUNT(DISTINCT line || file) FROM quarantine_{name}"),
        )
        .await;
        assert_eq!(q_rows as u64, quarantined, "{name}");
        let no_reason = scalar(
            &ctx,
            &format!("SELECT COUNT(*) FROM quarantine_{name} WHERE reason IS NULL OR reason = '' OR line = 0"),
        )
        .await;
        assert_eq!(no_reason, 0.0, "{name}: every quarantined row has a line and a reason");
        let valid = truth["report"][name]["valid_rows"].as_u64().unwrap();
        let staged = manifest["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == format!("stg_{name}"))
            .unwrap();
        assert_eq!(
            staged["rows"].as_u64().unwrap(),
            valid,
            "{name}: staging keeps one copy of each valid row"
        );
        // Duplicate keys are kept in raw and listed, never dropped unseen: the generator's
        // injected copies are exact repeats, each superseded by the copy after it.
        let injected_dups = truth["report"][name]["duplicate_rows"].as_u64().unwrap();
        assert!(injected_dups > 0, "fixtures carry duplicates for {name}");
        assert_eq!(source["duplicate_rows"].as_u64().unwrap(), injected_dups, "{name}");
        assert_eq!(source["duplicate_rows_changed"].as_u64().unwrap(), 0, "{name}");
        let listed = scalar(
            &ctx,
            &format!("SELECT COUNT(*) FROM duplicates WHERE source = '{name}' AND identical AND kept_line = line + 1 AND kept_file = file"),
        )
        .await;
        assert_eq!(listed as u64, injected_dups, "{name}: duplicates table");
        assert_eq!(
            loaded - valid,
            injected_dups,
            "{name}: loaded = valid + duplicate copies"
        );
    }
    // The published tables, and each source's generated current view (computed, not stored).
    let mut listed: Vec<&str> = manifest["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<&str> = TABLES
        .iter()
        .copied()
        .chain(["raw_sales_current", "raw_service_current", "raw_marketing_current"])
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    for view in ["raw_sales_current", "raw_service_current", "raw_marketing_current"] {
        let stage = manifest["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == view)
            .unwrap();
        assert_eq!(stage["materialized"], "view", "{stage}");
        assert_eq!(stage["layer"], "sources", "{stage}");
    }
    for key in [
        "run_id",
        "started_at",
        "finished_at",
        "patron_version",
        "config_hash",
        "as_of",
    ] {
        assert!(manifest[key].is_string(), "manifest.{key}");
    }
}

#[tokio::test]
async fn rfm_and_value_tier_follow_the_domain_rules() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    run_default(&wh);
    let ctx = warehouse_session(&wh).await;
    // A prospect is loyal in attitude only on evidence (CSAT, opens, referrals), never for
    // want of complaints: 261 of the 262 fixture prospects are `none`.
    let unfounded = scalar(
        &ctx,
        "SELECT COUNT(*) FROM customer_scores AS s JOIN fct_customer AS f USING (customer_id) \
         WHERE s.rfm_segment = 'prospect' AND s.loyalty_type <> 'none' \
         AND f.csat_responses = 0 AND f.marketing_opens = 0 AND f.referrals_made = 0",
    )
    .await;
    assert_eq!(unfounded, 0.0, "prospects typed loyal without any evidence");
    // Scores are 1..5 and equal values always get equal scores.
    for (score, value) in [
        ("r_score", "recency_days"),
        ("f_score", "frequency"),
        ("m_score", "monetary"),
    ] {
        let bad = scalar(
            &ctx,
            &format!("SELECT COUNT(*) FROM customer_scores WHERE {score} NOT BETWEEN 1 AND 5"),
        )
        .await;
        assert_eq!(bad, 0.0, "{score}");
        let ties = scalar(&ctx, &format!("SELECT COUNT(*) FROM (SELECT {value} FROM customer_scores WHERE {score} IS NOT NULL GROUP BY {value} HAVING COUNT(DISTINCT {score}) > 1)")).await;
        assert_eq!(ties, 0.0, "{score}: tied values with different scores");
    }
    // Every F score occurs, although 53% of the buyers bought on one day only (a plain
    // quintile of frequency left F2 empty): one-time buyers are F1, repeat buyers F2-F5.
    assert_eq!(
        ints(
            &ctx,
            "SELECT DISTINCT f_score FROM customer_scores WHERE f_score IS NOT NULL ORDER BY 1"
        )
        .await,
        vec![1, 2, 3, 4, 5]
    );
    let f1 = scalar(
        &ctx,
        "SELECT COUNT(*) FROM customer_scores WHERE (frequency = 1) <> (f_score = 1)",
    )
    .await;
    assert_eq!(f1, 0.0, "F1 is exactly the one-time buyers");
    // Recency is reversed: the most recent buyers score 5.
    let r5 = scalar(&ctx, "SELECT MAX(recency_days) FROM customer_scores WHERE r_score = 5").await;
    let r1 = scalar(&ctx, "SELECT MIN(recency_days) FROM customer_scores WHERE r_score = 1").await;
    assert!(r5 < r1);
    // The R-F map: 55 and 54 are champions, 11 hibernating, 51 new customers.
    for (r, f, seg) in [
        (5, 5, "champions"),
        (5, 4, "champions"),
        (1, 1, "hibernating"),
        (5, 1, "new_customers"),
    ] {
        let wrong = scalar(
            &ctx,
            &format!(
                "SELECT COUNT(*) FROM customer_scores WHERE r_score = {r} AND f_score = {f} AND rfm_segment <> '{seg}'"
            ),
        )
        .await;
        assert_eq!(wrong, 0.0, "{r}{f}");
    }
    let unmapped = scalar(&ctx, "SELECT COUNT(*) FROM customer_scores WHERE rfm_segment IS NULL").await;
    assert_eq!(unmapped, 0.0);
    // Pareto: tier A customers hold at least 80% of the value and the B/C cut is at 95%.
    let total = scalar(
        &ctx,
        "SELECT SUM(historical_value) FROM customer_scores WHERE historical_value > 0",
    )
    .await;
    let a = scalar(
        &ctx,
        "SELECT SUM(historical_value) FROM customer_scores WHERE value_tier = 'A'",
    )
    .await;
    let ab = scalar(
        &ctx,
        "SELECT SUM(historical_value) FROM customer_scores WHERE value_tier IN ('A', 'B')",
    )
    .await;
    let a_min = scalar(
        &ctx,
        "SELECT MIN(historical_value) FROM customer_scores WHERE value_tier = 'A'",
    )
    .await;
    let b_max = scalar(
        &ctx,
        "SELECT MAX(historical_value) FROM customer_scores WHERE value_tier = 'B'",
    )
    .await;
    assert!(a >= 0.8 * total && a - a_min < 0.8 * total, "A share {}", a / total);
    assert!(ab >= 0.95 * total, "A+B share {}", ab / total);
    assert!(b_max <= a_min);
    let a_count = scalar(&ctx, "SELECT COUNT(*) FROM customer_scores WHERE value_tier = 'A'").await;
    let buyers = scalar(&ctx, "SELECT COUNT(*) FROM customer_scores WHERE frequency > 0").await;
    assert!(
        a_count < 0.6 * buyers,
        "Pareto: a minority of buyers holds 80% of value"
    );
}

#[tokio::test]
async fn an_earlier_as_of_date_ignores_later_events() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let out = patron(
        &repo(),
        &["run", "--as-of", "2024-06-30", "--out", wh.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ctx = warehouse_session(&wh).await;
    let late = scalar(
        &ctx,
        "SELECT COUNT(*) FROM stg_sales WHERE order_ts >= TIMESTAMP '2024-07-01 00:00:00'",
    )
    .await;
    assert_eq!(late, 0.0);
    let late = scalar(
        &ctx,
        "SELECT COUNT(*) FROM fct_customer WHERE last_order_at >= TIMESTAMP '2024-07-01 00:00:00'",
    )
    .await;
    assert_eq!(late, 0.0);
    let min_recency = scalar(&ctx, "SELECT MIN(recency_days) FROM customer_scores").await;
    assert!(min_recency >= 0.0);
    let as_of = scalar(
        &ctx,
        "SELECT COUNT(*) FROM customer_scores WHERE as_of <> DATE '2024-06-30'",
    )
    .await;
    assert_eq!(as_of, 0.0);
    assert_eq!(latest_manifest(&wh)["as_of"], "2024-06-30");
}

/// Every score column of docs/scoring.md, in the published order.
const SCORE_COLUMNS: [&str; 31] = [
    "customer_id",
    "as_of",
    "recency_days",
    "frequency",
    "monetary",
    "r_score",
    "f_score",
    "m_score",
    "rfm_segment",
    "p_alive",
    "churn_risk",
    "churn_model",
    "churn_band",
    "churn_reasons",
    "p_no_purchase_90d",
    "expected_purchases_90d",
    "expected_purchases_365d",
    "expected_order_value",
    "historical_value",
    "current_value",
    "potential_value",
    "clv",
    "value_tier",
    "portfolio_quadrant",
    "economic_segment",
    "investment_class",
    "loyalty_score",
    "loyalty_type",
    "satisfaction_loyalty",
    "lifecycle_stage",
    "model_version",
];

#[tokio::test]
async fn model_scores_are_complete_and_within_their_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    run_default(&wh);
    let ctx = warehouse_session(&wh).await;
    let schema = ctx.table("customer_scores").await.unwrap().schema().clone();
    for c in SCORE_COLUMNS {
        assert!(
            schema.field_with_unqualified_name(c).is_ok(),
            "customer_scores lacks {c}"
        );
    }
    // Buyers have every column; prospects only lack the purchase-model columns.
    for c in SCORE_COLUMNS {
        let prospect_may_lack = [
            "recency_days",
            "r_score",
            "f_score",
            "m_score",
            "p_alive",
            "churn_risk",
            "churn_model",
            "churn_band",
            "p_no_purchase_90d",
            "expected_purchases_90d",
            "expected_purchases_365d",
            "expected_order_value",
        ];
        let filter = if prospect_may_lack.contains(&c) {
            "frequency > 0"
        } else {
            "true"
        };
        let nulls = scalar(
            &ctx,
            &format!("SELECT COUNT(*) FROM customer_scores WHERE {filter} AND {c} IS NULL"),
        )
        .await;
        assert_eq!(nulls, 0.0, "{c} has NULLs");
    }
    let checks = [
        ("p_alive in [0, 1]", "p_alive < 0 OR p_alive > 1 OR isnan(p_alive)"),
        (
            "churn_risk a probability",
            "churn_risk < 0 OR churn_risk > 1 OR isnan(churn_risk)",
        ),
        (
            "churn_risk = 1 - p_alive when the purchase model answers alone",
            "churn_model = 'mbgnbd' AND abs(churn_risk - (1 - p_alive)) > 1e-12",
        ),
        (
            "a lapsed buyer does not buy: p_no_purchase_90d >= churn_risk",
            "p_no_purchase_90d < churn_risk - 1e-9 OR p_no_purchase_90d > 1 OR isnan(p_no_purchase_90d)",
        ),
        (
            "one churn model for every buyer",
            "churn_model IS NOT NULL AND churn_model <> (SELECT MIN(churn_model) FROM customer_scores)",
        ),
        (
            "one-time buyers may have lapsed: 0 < p_alive < 1",
            "frequency = 1 AND (p_alive <= 0 OR p_alive >= 1)",
        ),
        (
            "expected purchases non-negative",
            "expected_purchases_90d < 0 OR isnan(expected_purchases_90d)",
        ),
        (
            "expected purchases grow with the horizon",
            "expected_purchases_365d < expected_purchases_90d",
        ),
        ("clv non-negative", "clv < 0 OR isnan(clv) OR clv <> current_value"),
        (
            "potential non-negative",
            "potential_value < 0 OR isnan(potential_value)",
        ),
        ("loyalty score 0-100", "loyalty_score < 0 OR loyalty_score > 100"),
        (
            "churn band follows the thresholds",
            "(churn_risk >= 0.7 AND churn_band <> 'high') OR (churn_risk < 0.3 AND churn_band <> 'low')",
        ),
        ("churned above 0.9", "churn_risk > 0.9 AND lifecycle_stage <> 'churned'"),
        (
            "prospects are prospects",
            "frequency = 0 AND (lifecycle_stage <> 'prospect' OR rfm_segment <> 'prospect')",
        ),
        (
            "unknown without CSAT only",
            "satisfaction_loyalty = 'unknown' AND customer_id IN (SELECT customer_id FROM fct_customer WHERE csat_responses > 0)",
        ),
    ];
    for (what, bad_rows) in checks {
        let n = scalar(&ctx, &format!("SELECT COUNT(*) FROM customer_scores WHERE {bad_rows}")).await;
        assert_eq!(n, 0.0, "{what}");
    }
    // Every category of each segmentation is reachable on the fixtures.
    for (col, values) in [
        ("churn_band", &["low", "medium", "high"][..]),
        (
            "portfolio_quadrant",
            &["invest", "cultivate", "maintain", "abandon"][..],
        ),
        (
            "economic_segment",
            &["value", "potential_value", "sub_value", "low_value"][..],
        ),
        ("investment_class", &["loyal", "repeat", "ordinary", "expected"][..]),
        (
            "lifecycle_stage",
            &[
                "exploration",
                "formation",
                "stability",
                "decline",
                "churned",
                "prospect",
            ][..],
        ),
        ("value_tier", &["A", "B", "C"][..]),
    ] {
        for v in values {
            let n = scalar(
                &ctx,
                &format!("SELECT COUNT(*) FROM customer_scores WHERE {col} = '{v}'"),
            )
            .await;
            assert!(n > 0.0, "no customer has {col} = {v}");
        }
    }
    // The fitted parameters are in model_params and the manifest, and agree.
    let manifest = latest_manifest(&wh);
    let models = &manifest["models"];
    assert_eq!(models["bgnbd"]["converged"], true);
    let r = models["bgnbd"]["params"]["r"].as_f64().unwrap();
    let r_table = scalar(
        &ctx,
        "SELECT value FROM model_params WHERE model = 'bgnbd' AND parameter = 'r'",
    )
    .await;
    assert_eq!(r, r_table);
    assert_eq!(
        scalar(
            &ctx,
            "SELECT COUNT(*) FROM model_params WHERE model IN ('bgnbd', 'gamma_gamma')"
        )
        .await,
        7.0
    );
    // The modified BG/NBD beside BG/NBD, in the table and the manifest.
    assert_eq!(models["mbgnbd"]["converged"], true);
    let a = models["mbgnbd"]["params"]["a"].as_f64().unwrap();
    let a_table = scalar(
        &ctx,
        "SELECT value FROM model_params WHERE model = 'mbgnbd' AND parameter = 'a'",
    )
    .await;
    assert_eq!(a, a_table);
    // On the fixtures (2,000 customers) the churn model does not beat the purchase model
    // on its own label, so the run keeps it and says why, in the manifest and the table.
    let churn = &models["churn"];
    assert_eq!(churn["model"], "mbgnbd", "{churn}");
    let reason = churn["fallback_reason"].as_str().unwrap();
    assert!(reason.contains("does not beat the purchase model's own"), "{reason}");
    let note = rows(
        &ctx,
        "SELECT note FROM model_params WHERE model = 'churn_mbgnbd' AND parameter = 'fallback'",
    )
    .await;
    assert_eq!(note, [reason.to_string()]);
    let learners: Vec<&str> = churn["validation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["learner"].as_str().unwrap())
        .collect();
    assert_eq!(learners, ["mbgnbd_p_no_purchase", "logistic", "gbt"]);
    let version = models["model_version"].as_str().unwrap();
    let other = scalar(
        &ctx,
        &format!("SELECT COUNT(*) FROM customer_scores WHERE model_version <> '{version}'"),
    )
    .await;
    assert_eq!(other, 0.0);
    assert!(models["frequency_spend_correlation"].is_number());
}
