//! `patron evaluate`: the backtest through the real binary on the bundled fixtures. The
//! figures are checked against counts made here straight from the extracted sales, the
//! evaluation table against itself and the calibration run, and the warehouse the
//! evaluation sits in is checked to be untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{Days, NaiveDate};
use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};

use crate::support::*;

/// The single evaluation folder under `warehouse/evaluations/`.
fn only_evaluation(warehouse: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(warehouse.join("evaluations"))
        .expect("evaluations folder exists")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn date(report: &serde_json::Value, key: &str) -> NaiveDate {
    let text = report[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` missing: {report}"));
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

/// SHA-256 of every file under `dir` (skipping `evaluations/`), by relative path.
fn hash_tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if entry.file_name() != "evaluations" {
                    walk(root, &path, out);
                }
            } else {
                let hash = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), hash);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

async fn register(ctx: &SessionContext, name: &str, path: &Path) {
    patron::publish::read::register_table(ctx, name, &patron::warehouse::Warehouse::local(path), "")
        .await
        .unwrap_or_else(|e| panic!("register {name} ({}): {e}", path.display()));
}

/// Purchase days (distinct customer and order date, ids normalised) strictly after
/// `calibration_end` and up to `end`, of customers who bought on or before
/// `calibration_end`: counted straight from an extracted sales table `raw`, with the rule
/// of docs/returns.md written out again here: lines count towards `refund_of` when set; an
/// order is a purchase when it sold something (quantity > 0, not cancelled) and was not
/// taken back in full; its day is that of its first sold line.
async fn holdout_purchase_days(ctx: &SessionContext, raw: &str, calibration_end: NaiveDate, end: NaiveDate) -> f64 {
    scalar(
        ctx,
        &format!(
            "WITH lines AS ( \
                SELECT DISTINCT UPPER(TRIM(customer_id)) AS c, \
                    COALESCE(NULLIF(TRIM(refund_of), ''), TRIM(order_id)) AS o, TRIM(order_id) AS id, line_no, \
                    order_ts, quantity, COALESCE(status, 'completed') AS s, \
                    quantity * unit_price - SIGNUM(CAST(quantity AS DOUBLE)) * COALESCE(discount, 0.0) AS v \
                FROM {raw}), \
             orders AS ( \
                SELECT c, o, \
                    MIN(CASE WHEN quantity > 0 AND s <> 'cancelled' THEN CAST(order_ts AS DATE) END) AS d, \
                    SUM(CASE WHEN quantity > 0 AND s <> 'cancelled' THEN v ELSE 0 END) AS sold, \
                    SUM(CASE WHEN s = 'cancelled' THEN 0 WHEN quantity < 0 THEN -v \
                             WHEN s IN ('returned', 'refunded') THEN v ELSE 0 END) AS back \
                FROM lines GROUP BY c, o), \
             days AS (SELECT DISTINCT c, d FROM orders \
                WHERE d IS NOT NULL AND (back = 0 OR back < sold * (1 - 1e-9))) \
             SELECT COUNT(*) FROM days \
             WHERE d > DATE '{calibration_end}' AND d <= DATE '{end}' \
             AND c IN (SELECT c FROM days WHERE d <= DATE '{calibration_end}')"
        ),
    )
    .await
}

/// Checks the evaluation table against itself and the report; returns a session with
/// `evaluation` and the calibration run's tables registered.
async fn check_table(eval_dir: &Path, report: &serde_json::Value) -> SessionContext {
    let ctx = SessionContext::new();
    register(
        &ctx,
        "evaluation",
        &eval_dir.join("tables/evaluation/part-00000.parquet"),
    )
    .await;
    register(&ctx, "model_input", &eval_dir.join("tables/customer_model_input")).await;
    register(&ctx, "scores", &eval_dir.join("tables/customer_scores")).await;
    register(&ctx, "calibration_raw_sales", &eval_dir.join("raw/sales")).await;

    // One row per calibration buyer.
    let rows = scalar(&ctx, "SELECT COUNT(*) FROM evaluation").await;
    assert!(rows > 0.0);
    assert_eq!(rows, scalar(&ctx, "SELECT COUNT(*) FROM model_input").await);
    assert_eq!(
        rows,
        scalar(&ctx, "SELECT COUNT(DISTINCT customer_id) FROM evaluation").await
    );
    assert_eq!(
        rows,
        scalar(
            &ctx,
            "SELECT COUNT(*) FROM evaluation JOIN model_input USING (customer_id)"
        )
        .await
    );
    assert_eq!(rows as u64, report["customers"].as_u64().unwrap());

    // Columns agree with each other, with the calibration run and with the report.
    let bad = scalar(
        &ctx,
        "SELECT COUNT(*) FROM evaluation WHERE abs_error IS NULL \
         OR ABS(abs_error - ABS(predicted_purchases - actual_purchases)) > 1e-12 \
         OR purchased_in_holdout <> (actual_purchases > 0) OR predicted_purchases < 0 OR actual_purchases < 0",
    )
    .await;
    assert_eq!(bad, 0.0, "inconsistent evaluation rows");
    let churn_mismatch = scalar(
        &ctx,
        "SELECT COUNT(*) FROM evaluation AS e JOIN scores AS s USING (customer_id) \
         WHERE e.p_no_purchase_90d IS DISTINCT FROM s.p_no_purchase_90d",
    )
    .await;
    assert_eq!(churn_mismatch, 0.0, "p_no_purchase_90d is the calibration run's");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
    let sum_actual = scalar(&ctx, "SELECT SUM(actual_purchases) FROM evaluation").await;
    assert_eq!(sum_actual as u64, report["total_actual"].as_u64().unwrap());
    let sum_predicted = scalar(&ctx, "SELECT SUM(predicted_purchases) FROM evaluation").await;
    assert!(close(sum_predicted, report["total_predicted"].as_f64().unwrap()));
    let mae = scalar(&ctx, "SELECT AVG(abs_error) FROM evaluation").await;
    assert!(
        close(mae, report["mae"].as_f64().unwrap()),
        "{mae} vs {}",
        report["mae"]
    );

    // The AUC by its definition, over every (no purchase, purchase) pair, ties 1/2.
    let pairwise = scalar(
        &ctx,
        "SELECT AVG(CASE WHEN p.p_no_purchase_90d > n.p_no_purchase_90d THEN 1.0 \
         WHEN p.p_no_purchase_90d = n.p_no_purchase_90d THEN 0.5 ELSE 0.0 END) \
         FROM evaluation AS p CROSS JOIN evaluation AS n \
         WHERE NOT p.purchased_in_holdout AND n.purchased_in_holdout \
         AND p.p_no_purchase_90d IS NOT NULL AND n.p_no_purchase_90d IS NOT NULL",
    )
    .await;
    let auc = report["auc"].as_f64().expect("auc is defined on the fixtures");
    assert!((0.0..=1.0).contains(&auc), "{auc}");
    assert!((auc - pairwise).abs() < 1e-9, "rank AUC {auc} vs pairwise {pairwise}");
    ctx
}

/// The `--truth` part of the report: every buyer of the end-of-data run is known to the
/// truth file, the dropped-out count equals the file's own, and the purchase model's
/// `1 - p_alive` ranks the truly dropped out better than chance.
fn check_truth(report: &serde_json::Value, file: &Path, stdout: &str) {
    let t = &report["truth"];
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let dropped_col = header.iter().position(|h| *h == "dropped_out").unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let dropped = rows.iter().filter(|r| r[dropped_col] == "true").count() as u64;
    // The fixtures end on the window's last day: every dropout happened before its end.
    assert_eq!(t["as_of"], report["end"]);
    assert_eq!(t["unknown_customers"], 0, "{t}");
    assert_eq!(
        t["customers"].as_u64(),
        Some(rows.len() as u64),
        "every simulated buyer is scored: {t}"
    );
    assert_eq!(t["dropped_out"].as_u64(), Some(dropped), "{t}");
    let scores: Vec<&str> = t["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["score"].as_str().unwrap())
        .collect();
    assert!(scores.starts_with(&["churn_risk", "1 - p_alive"]), "{scores:?}");
    for s in t["scores"].as_array().unwrap() {
        assert_eq!(s["customers"].as_u64(), Some(rows.len() as u64), "{s}");
        let brier = s["brier"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&brier), "{s}");
    }
    let p_alive_auc = t["scores"][1]["auc"].as_f64().unwrap();
    assert!(
        p_alive_auc > 0.6,
        "AUC of 1 - p_alive for the true dropouts: {p_alive_auc}"
    );
    assert!(stdout.contains("truly dropped out"), "{stdout}");
}

#[tokio::test]
async fn evaluate_on_fixtures_backtests_the_models_without_touching_the_warehouse() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    run_default(&wh);
    let before = hash_tree(&wh);
    assert!(
        before
            .keys()
            .any(|p| p.starts_with("tables/customer_scores") && p.extension().is_some_and(|e| e == "parquet"))
    );

    let truth_file = repo().join("fixtures/truth_customers.csv");
    let out = patron(
        &repo(),
        &[
            "evaluate",
            "--warehouse",
            wh.to_str().unwrap(),
            "--truth",
            truth_file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("MAE") && stdout.contains("AUC"), "{stdout}");
    check_truth(
        &read_json(&only_evaluation(&wh).join("evaluation.json")),
        &truth_file,
        &stdout,
    );

    // The published tables, raw data, quarantine and manifests are byte for byte the same.
    assert_eq!(hash_tree(&wh), before, "evaluate changed the warehouse");

    let eval_dir = only_evaluation(&wh);
    let report = read_json(&eval_dir.join("evaluation.json"));
    assert!(stdout.contains(report["evaluation_id"].as_str().unwrap()), "{stdout}");

    // End = the latest event date (what `patron run` took), calibration end 90 days before.
    let end = date(&report, "end");
    let calibration_end = date(&report, "calibration_end");
    assert_eq!(report["end"], latest_manifest(&wh)["as_of"]);
    assert_eq!(report["end_source"], "latest event date");
    assert_eq!(report["holdout_days"], 90);
    assert_eq!(calibration_end, end - Days::new(90));
    let calibration =
        read_json(&eval_dir.join(format!("runs/{}.json", report["calibration_run_id"].as_str().unwrap())));
    assert_eq!(calibration["as_of"], report["calibration_end"]);
    assert_eq!(calibration["outcome"], "succeeded");
    assert_eq!(report["bgnbd_params"], calibration["models"]["bgnbd"]["params"]);

    let ctx = check_table(&eval_dir, &report).await;

    // Actual holdout purchases reconcile with a count from the main run's extracted sales.
    register(&ctx, "raw_sales", &wh.join("raw/sales")).await;
    let expected = holdout_purchase_days(&ctx, "raw_sales", calibration_end, end).await;
    assert!(expected > 0.0);
    assert_eq!(report["total_actual"].as_u64().unwrap(), expected as u64);

    // The model predicts the holdout total within 25% (1.04 on the fixtures).
    let ratio = report["ratio"].as_f64().unwrap();
    assert!((0.8..=1.25).contains(&ratio), "predicted / actual = {ratio}");

    // The generator makes churn real, so the short-term score ranks well above chance,
    // over all buyers and among repeat buyers, and so do the expected purchases.
    let overall = report["auc"].as_f64().unwrap();
    assert!(overall > 0.75, "AUC of p_no_purchase_90d {overall}");
    let repeat = report["auc_repeat_buyers"].as_f64().unwrap();
    assert!(repeat > 0.6, "AUC of p_no_purchase_90d among repeat buyers {repeat}");
    let by_prediction = report["auc_predicted_purchases"].as_f64().unwrap();
    assert!(by_prediction > 0.6, "AUC of expected purchases {by_prediction}");
    let one_time = scalar(&ctx, "SELECT COUNT(*) FROM evaluation WHERE x = 0").await;
    assert_eq!(report["one_time_buyers"].as_u64().unwrap(), one_time as u64);
}

#[tokio::test]
async fn evaluate_with_an_end_date_and_weeks_publishes_nothing_in_the_warehouse() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let ev = dir.path().join("evaluation");
    let out = patron(
        &repo(),
        &[
            "evaluate",
            "--as-of",
            "2025-09-30",
            "--holdout",
            "12w",
            "--warehouse",
            wh.to_str().unwrap(),
            "--out",
            ev.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // `--out` names the evaluation's own folder: nothing at all goes into the warehouse.
    assert!(!wh.exists(), "the evaluation wrote into the warehouse");
    let eval_dir = ev.clone();
    let report = read_json(&eval_dir.join("evaluation.json"));
    assert_eq!(report["end"], "2025-09-30");
    assert_eq!(report["end_source"], "--as-of");
    // The end-of-data run (as of the given day) tells which holdout orders are purchases.
    assert!(report["end_run_id"].is_string(), "{report}");
    assert!(eval_dir.join("end-of-data/tables/int_orders").is_dir());
    assert_eq!(report["holdout_days"], 84);
    assert_eq!(report["calibration_end"], "2025-07-08");

    let ctx = check_table(&eval_dir, &report).await;
    // The calibration run extracted every row, also those after the end: only purchase
    // days up to the end count.
    let expected = holdout_purchase_days(
        &ctx,
        "calibration_raw_sales",
        date(&report, "calibration_end"),
        date(&report, "end"),
    )
    .await;
    assert!(expected > 0.0);
    assert_eq!(report["total_actual"].as_u64().unwrap(), expected as u64);
}

#[test]
fn a_bad_holdout_exits_2_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    for bad in ["0", "0d", "0m", "abc", "-3w", "1.5m", "90x"] {
        let holdout = format!("--holdout={bad}");
        let out = patron(&repo(), &["evaluate", &holdout, "--warehouse", wh.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--holdout") && err.contains(bad), "{bad}: {err}");
    }
    assert!(!wh.exists(), "nothing written");
    // An `--out` folder that holds something already is refused before anything runs.
    let used = dir.path().join("used");
    std::fs::create_dir_all(&used).unwrap();
    std::fs::write(used.join("keep.txt"), "x").unwrap();
    let out = patron(&repo(), &["evaluate", "--out", used.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--out") && err.contains("is not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&used).unwrap().count(), 1, "nothing written");
    // So is an `--out` that names a file.
    let file = used.join("keep.txt");
    let out = patron(&repo(), &["evaluate", "--out", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--out") && err.contains("is a file"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "x",
        "the file is left as it was"
    );
}

#[test]
fn a_pipeline_without_a_sales_source_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = scratch_project(dir.path());
    let text_before = std::fs::read_to_string(&p).unwrap();
    assert!(text_before.contains("name = \"sales\""));
    std::fs::write(&p, text_before.replace("name = \"sales\"", "name = \"orders\"")).unwrap();
    let wh = dir.path().join("wh");
    let out = patron(
        dir.path(),
        &[
            "evaluate",
            "--pipeline",
            p.to_str().unwrap(),
            "--warehouse",
            wh.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no source named `sales`") && err.contains("default.toml") && err.contains("orders"),
        "{err}"
    );
    assert!(!wh.exists(), "nothing written");
}
