//! The churn early-warning model through the real binary: on generated data (where
//! unhappy, disengaged customers churn more) the combined model must beat BG/NBD p_alive
//! alone on a time-based holdout it never saw; and `patron explain` shows one customer's
//! card from the published tables.

use patron::warehouse::Warehouse;
use std::path::Path;

use crate::support::*;

fn only_report(warehouse: &Path) -> serde_json::Value {
    let dirs: Vec<_> = std::fs::read_dir(warehouse.join("evaluations"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let text = std::fs::read_to_string(dirs[0].join("evaluation.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn metric(entry: &serde_json::Value, key: &str) -> f64 {
    entry[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` missing: {entry}"))
}

#[test]
fn combined_churn_model_beats_bgnbd_alone_on_a_time_based_holdout() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = generated_pipeline(dir.path(), "3000", "7");
    let wh = dir.path().join("wh");
    let out = patron(
        dir.path(),
        &[
            "evaluate",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--holdout",
            "90d",
            "--out",
            wh.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("precision@10%") && stdout.contains("calibration"),
        "{stdout}"
    );
    let report = only_report(&wh);
    let comparison = report["churn_comparison"].as_array().expect("churn_comparison");
    let by = |score: &str| {
        comparison
            .iter()
            .find(|c| c["score"] == score)
            .unwrap_or_else(|| panic!("no `{score}` in {comparison:?}"))
            .clone()
    };
    let (bgnbd, model) = (by("bgnbd_p_alive"), by("churn_risk"));
    assert_ne!(model["model"], "bgnbd", "the calibration run fell back: {report}");
    assert_eq!(bgnbd["customers"], model["customers"]);
    assert!(metric(&model, "customers") > 1000.0);

    // Ranking: clearly better than purchase timing alone.
    let (auc_b, auc_m) = (metric(&bgnbd, "auc"), metric(&model, "auc"));
    assert!(auc_m > auc_b + 0.10, "combined AUC {auc_m} vs BG/NBD {auc_b}");
    assert!(auc_m > 0.75, "combined AUC {auc_m}");
    // As a probability: better Brier, and a precision at the top at least the base rate.
    assert!(metric(&model, "brier") < metric(&bgnbd, "brier"));
    assert!(metric(&model, "precision_at_top_10pct") >= metric(&model, "churn_rate"));
    // Calibrated: the customer-weighted gap between mean score and observed churn is small.
    let bins = model["calibration"].as_array().unwrap();
    let n: f64 = bins.iter().map(|b| metric(b, "customers")).sum();
    let gap: f64 = bins
        .iter()
        .map(|b| metric(b, "customers") * (metric(b, "mean_predicted") - metric(b, "observed_rate")).abs())
        .sum::<f64>()
        / n;
    assert!(gap < 0.08, "calibration gap {gap}: {bins:?}");
    assert_eq!(n, metric(&model, "customers"));
}

#[tokio::test]
async fn explain_shows_one_customers_card_from_the_published_tables() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    run_default(&wh);
    let manifest = latest_manifest(&wh);
    let churn = &manifest["models"]["churn"];
    let learner = churn["model"].as_str().unwrap().to_string();
    assert!(["logistic", "gbt"].contains(&learner.as_str()), "{churn}");
    assert_eq!(
        churn["validation"].as_array().unwrap().len(),
        3,
        "baseline and two learners"
    );

    // A repeat buyer with tickets and marketing events.
    let ctx = warehouse_session(&wh).await;
    let id = rows(
        &ctx,
        "SELECT s.customer_id FROM customer_scores s JOIN fct_customer f ON f.customer_id = s.customer_id \
         WHERE f.purchase_days > 2 AND f.tickets > 0 AND f.marketing_sent > 0 AND s.churn_reasons <> '' \
         ORDER BY s.customer_id LIMIT 1",
    )
    .await
    .remove(0);
    let expected_reasons = rows(
        &ctx,
        &format!("SELECT churn_reasons FROM customer_scores WHERE customer_id = '{id}'"),
    )
    .await
    .remove(0);
    let risk = scalar(
        &ctx,
        &format!("SELECT churn_risk FROM customer_scores WHERE customer_id = '{id}'"),
    )
    .await;
    let orders = scalar(
        &ctx,
        &format!("SELECT CAST(orders AS DOUBLE) FROM fct_customer WHERE customer_id = '{id}'"),
    )
    .await;

    // Lower case with spaces: normalised like the staging stages do.
    let asked = format!(" {} ", id.to_lowercase());
    let out = patron(
        &repo(),
        &[
            "explain",
            &asked,
            "--format",
            "json",
            "--warehouse",
            wh.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let card: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(card["customer_id"], id.as_str());
    assert_eq!(card["facts"]["customer_id"], id.as_str());
    assert_eq!(card["churn"]["model"], learner.as_str());
    assert!((card["churn"]["risk"].as_f64().unwrap() - risk).abs() < 1e-12);
    let reasons: Vec<String> = card["churn"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.join(","), expected_reasons);
    assert!(reasons.iter().all(|r| r.contains('=')), "{reasons:?}");
    assert_eq!(card["churn"]["features"]["customer_id"], id.as_str());
    // Every score says what produced it; the churn risk names the chosen learner.
    let scores = card["scores"].as_object().unwrap();
    assert!(scores.len() > 20);
    for (name, score) in scores {
        assert!(score["produced_by"].as_str().is_some_and(|s| !s.is_empty()), "{name}");
    }
    let produced = scores["churn_risk"]["produced_by"].as_str().unwrap();
    assert!(
        produced.contains(&learner) && produced.contains("validation_auc"),
        "{produced}"
    );
    assert!(
        scores["p_alive"]["produced_by"]
            .as_str()
            .unwrap()
            .contains("BG/NBD (a=")
    );
    // Recent orders: the customer's own, latest first, at most 10.
    let shown = card["orders"].as_array().unwrap();
    assert_eq!(shown.len() as f64, orders.min(10.0));
    let times: Vec<&str> = shown.iter().map(|o| o["order_ts"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(!card["tickets"].as_array().unwrap().is_empty());
    assert!(!card["marketing_events"].as_array().unwrap().is_empty());

    // Text card.
    let out = patron(&repo(), &["explain", &id, "--warehouse", wh.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let card_text = String::from_utf8_lossy(&out.stdout);
    assert!(card_text.contains(&format!("customer {id}")), "{card_text}");
    assert!(
        card_text.contains("churn risk") && card_text.contains(&reasons[0]),
        "{card_text}"
    );
    assert!(
        card_text.contains("orders (") && card_text.contains("tickets ("),
        "{card_text}"
    );

    // An unknown customer is a usage error naming it.
    let out = patron(&repo(), &["explain", "NOBODY", "--warehouse", wh.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`NOBODY`"),
        "{}",
        text(&out)
    );
}

/// `row_groups_pruned_<what>=N total → M matched` of an EXPLAIN ANALYZE text, as (N, M).
fn pruned(plan: &str, what: &str) -> (u64, u64) {
    let key = format!("row_groups_pruned_{what}=");
    let after = plan.split(&key).nth(1).unwrap_or_else(|| panic!("no {key} in {plan}"));
    let mut numbers = after
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u64>().unwrap());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

#[tokio::test]
async fn explain_queries_prune_row_groups_of_the_customer_clustered_tables() {
    // Small row groups so the fixtures' tables have many; the layout is what a large
    // warehouse gets with the default size.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    let config = std::fs::read_to_string(&pipeline).unwrap();
    assert!(config.contains("[publish]\n"));
    std::fs::write(
        &pipeline,
        config.replace("[publish]\n", "[publish]\nrow_group_rows = 200\n"),
    )
    .unwrap();
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let wh = dir.path().join("wh");
    let manifest = latest_manifest(&wh);
    let clustered: Vec<&str> = manifest["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["cluster_by"] == serde_json::json!(["customer_id"]))
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let tables = [
        "customer_scores",
        "fct_customer",
        "churn_features",
        "stg_sales",
        "stg_service",
        "stg_marketing",
    ];
    for t in tables {
        assert!(clustered.contains(&t), "{t} not clustered: {clustered:?}");
    }

    // A buyer in the middle of the id range, with tickets and marketing events.
    let ctx = warehouse_session(&wh).await;
    let ids = rows(
        &ctx,
        "SELECT f.customer_id FROM fct_customer f WHERE f.orders > 0 AND f.tickets > 0 AND f.marketing_sent > 0 \
         ORDER BY f.customer_id",
    )
    .await;
    let id = ids[ids.len() / 2].clone();
    let explain = patron::cli::explain::session();
    patron::cli::explain::register(&explain, &Warehouse::local(&wh))
        .await
        .unwrap();
    let mut bloom_pruned = 0;
    for t in tables {
        let sql = format!("EXPLAIN ANALYZE {}", patron::cli::explain::lookup(t));
        let plan: String = patron::cli::explain::query(&explain, sql.clone(), &id)
            .await
            .unwrap()
            .iter()
            .filter_map(|r| r.get("plan").and_then(|p| p.as_str()).map(str::to_string))
            .collect();
        // The scan kept at most the two row groups the customer's rows can straddle.
        let (total, matched) = pruned(&plan, "statistics");
        assert!(total >= 3, "{t}: {total} row groups: {plan}");
        assert!(
            (1..=2).contains(&matched),
            "{t}: {matched} of {total} row groups read: {plan}"
        );
        // An id that sorts right after the customer's but is nowhere: where the statistics
        // keep a row group for it, the bloom filter drops it.
        let absent = format!("{id}_");
        let plan: String = patron::cli::explain::query(&explain, sql, &absent)
            .await
            .unwrap()
            .iter()
            .filter_map(|r| r.get("plan").and_then(|p| p.as_str()).map(str::to_string))
            .collect();
        let (_, kept) = pruned(&plan, "statistics");
        let (checked, passed) = pruned(&plan, "bloom_filter");
        assert!(checked == kept && passed == 0, "{t}: {plan}");
        bloom_pruned += checked;
    }
    assert!(
        bloom_pruned > 0,
        "no table had a row group for the bloom filters to drop"
    );
    // The card itself reads the same tables.
    let card = patron::cli::explain::card(&Warehouse::local(&wh), &id).await.unwrap();
    assert_eq!(card["customer_id"], id.as_str());
    assert!(!card["orders"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_cluster_by_stage_must_order_by_its_cluster_columns() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    std::fs::write(
        dir.path().join("sql/marts/by_revenue.sql"),
        "-- @cluster_by: customer_id\nSELECT customer_id, revenue FROM fct_customer ORDER BY revenue, customer_id\n",
    )
    .unwrap();
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("by_revenue") && err.contains("@cluster_by: customer_id") && err.contains("ORDER BY customer_id"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn too_little_history_falls_back_to_bgnbd_and_says_why() {
    // Six months of data: the training cut-off (as_of - 180 days) has almost no buyers.
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let out = patron(
        &repo(),
        &["run", "--as-of", "2023-07-01", "--out", wh.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let manifest = latest_manifest(&wh);
    let churn = &manifest["models"]["churn"];
    assert_eq!(churn["model"], "bgnbd");
    let reason = churn["fallback_reason"].as_str().expect("a fallback reason");
    assert!(reason.contains("training snapshot as of 2023-01-02"), "{reason}");
    assert!(reason.contains("needs at least 100"), "{reason}");

    let ctx = warehouse_session(&wh).await;
    let note = rows(
        &ctx,
        "SELECT note FROM model_params WHERE model = 'churn_bgnbd' AND parameter = 'fallback'",
    )
    .await;
    assert_eq!(note, [reason.to_string()]);
    // (So early, BG/NBD itself may not be identified: then repeat buyers have no p_alive
    // and no churn_risk, as before the churn model.)
    let buyers = scalar(
        &ctx,
        "SELECT COUNT(*) FROM customer_scores WHERE frequency > 0 AND p_alive IS NOT NULL",
    )
    .await;
    assert!(buyers > 100.0);
    let unscored = scalar(
        &ctx,
        "SELECT COUNT(*) FROM customer_scores WHERE p_alive IS NULL AND (churn_risk IS NOT NULL OR churn_model IS NOT NULL)",
    )
    .await;
    assert_eq!(unscored, 0.0);
    let fallback = scalar(
        &ctx,
        "SELECT COUNT(*) FROM customer_scores WHERE churn_model = 'bgnbd' \
         AND abs(churn_risk - (1 - p_alive)) < 1e-12",
    )
    .await;
    assert_eq!(fallback, buyers, "every buyer scored by 1 - p_alive");
}

/// The learners see a fixed sample of buyers per cut-off (`scoring.churn_training_customers`);
/// every buyer is still scored, by the model, through the predictions query.
#[tokio::test]
async fn the_learners_train_on_a_sample_and_every_buyer_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = generated_pipeline(dir.path(), "3000", "7");
    let pipeline = with_setting(
        &pipeline,
        "scoring",
        "churn_training_customers",
        toml::Value::Integer(400),
    );
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let wh = dir.path().join("wh");
    let churn = latest_manifest(&wh)["models"]["churn"].clone();
    let learner = churn["model"].as_str().unwrap().to_string();
    assert!(["logistic", "gbt"].contains(&learner.as_str()), "{churn}");
    assert_eq!(churn["training_customers"], 400, "{churn}");
    assert_eq!(churn["validation_customers"], 400, "{churn}");

    let ctx = warehouse_session(&wh).await;
    let buyers = scalar(&ctx, "SELECT CAST(COUNT(*) AS DOUBLE) FROM churn_features").await;
    assert!(buyers > 1500.0, "{buyers} buyers");
    assert_eq!(churn["scored_customers"].as_f64(), Some(buyers), "{churn}");
    let by_model = scalar(
        &ctx,
        &format!(
            "SELECT CAST(COUNT(*) AS DOUBLE) FROM customer_scores WHERE churn_model = '{learner}' \
             AND churn_risk > 0 AND churn_risk < 1"
        ),
    )
    .await;
    assert_eq!(by_model, buyers, "every buyer has the model's risk");
}
