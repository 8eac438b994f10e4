//! Score history and segment migration: runs on two as-of days keep both days' scores in
//! `customer_scores_history` (one Delta partition each); `segment_migration` compares
//! the later day with the earlier one; rerunning a day replaces its rows and changes
//! nothing else.

use std::path::Path;

use chrono::{Days, NaiveDate};

use crate::support::*;

fn run_as_of(warehouse: &Path, as_of: &str) {
    let out = patron(
        &repo(),
        &["run", "--out", warehouse.to_str().unwrap(), "--as-of", as_of],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// The data files of the latest `customer_scores_history` in the partition of `day`.
async fn day_files(warehouse: &Path, day: &str) -> Vec<std::path::PathBuf> {
    let table = warehouse.join("tables/customer_scores_history");
    let mut files: Vec<_> =
        patron::publish::delta::local_files(&patron::warehouse::Warehouse::local(&table), "history", "", None)
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .filter(|f| f.to_string_lossy().contains(&format!("as_of={day}")))
            .collect();
    files.sort();
    files
}

/// The manifest's entry of the history stage.
fn history_stage(warehouse: &Path) -> serde_json::Value {
    latest_manifest(warehouse)["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "customer_scores_history")
        .unwrap()
        .clone()
}

async fn count(warehouse: &Path, sql: &str) -> i64 {
    let ctx = warehouse_session(warehouse).await;
    scalar(&ctx, sql).await as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn history_keeps_every_as_of_day_and_migration_compares_with_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    run_default(&wh);
    let latest: NaiveDate = latest_manifest(&wh)["as_of"].as_str().unwrap().parse().unwrap();
    let first = latest.checked_sub_days(Days::new(60)).unwrap().to_string();
    let second = latest.checked_sub_days(Days::new(30)).unwrap().to_string();
    // A fresh warehouse for the two days, in order.
    let wh = dir.path().join("wh2");
    run_as_of(&wh, &first);
    let first_customers = count(&wh, "SELECT COUNT(*) FROM customer_scores").await;
    let only_new = count(
        &wh,
        "SELECT COUNT(*) FROM segment_migration WHERE movement <> 'new' OR from_as_of IS NOT NULL",
    )
    .await;
    assert_eq!(only_new, 0, "the first as-of day has nothing to compare with");
    let first_files = day_files(&wh, &first).await;
    assert!(!first_files.is_empty());
    run_as_of(&wh, &second);
    let second_customers = count(&wh, "SELECT COUNT(*) FROM customer_scores").await;
    assert!(second_customers >= first_customers);
    // The second day's run wrote its own partition only: the first day's files are the same.
    assert_eq!(day_files(&wh, &first).await, first_files);
    let stage = history_stage(&wh);
    assert_eq!(stage["replaces_partitions"], true, "{stage}");
    assert_eq!(stage["rows_new"], second_customers, "{stage}");
    assert_eq!(stage["rows"], first_customers + second_customers, "{stage}");

    let ctx = warehouse_session(&wh).await;
    let days = rows(
        &ctx,
        "SELECT CAST(as_of AS VARCHAR) AS day, COUNT(*) FROM customer_scores_history GROUP BY as_of ORDER BY as_of",
    )
    .await;
    assert_eq!(
        days,
        vec![
            format!("{first}|{first_customers}"),
            format!("{second}|{second_customers}")
        ]
    );
    // One Delta partition folder per as-of day.
    let mut partitions: Vec<String> = std::fs::read_dir(wh.join("tables/customer_scores_history"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("as_of="))
        .collect();
    partitions.sort();
    assert_eq!(partitions, vec![format!("as_of={first}"), format!("as_of={second}")]);
    // The history's later day is exactly this run's customer_scores.
    let differs = scalar(
        &ctx,
        &format!(
            "SELECT COUNT(*) FROM (SELECT customer_id, rfm_segment, clv, churn_risk FROM customer_scores \
             EXCEPT SELECT customer_id, rfm_segment, clv, churn_risk FROM customer_scores_history \
             WHERE as_of = DATE '{second}')"
        ),
    )
    .await;
    assert_eq!(differs, 0.0);

    // Migration, checked against the two partitions joined here independently.
    let from_days = rows(
        &ctx,
        "SELECT DISTINCT CAST(from_as_of AS VARCHAR) AS day FROM segment_migration",
    )
    .await;
    assert_eq!(from_days, vec![first.clone()]);
    let segmentations = ints(
        &ctx,
        "SELECT SUM(customers) FROM segment_migration GROUP BY segmentation ORDER BY segmentation",
    )
    .await;
    assert_eq!(segmentations.len(), 9);
    let both = format!(
        "(SELECT customer_id FROM customer_scores_history WHERE as_of = DATE '{first}') \
         UNION (SELECT customer_id FROM customer_scores_history WHERE as_of = DATE '{second}')"
    );
    let everyone = scalar(&ctx, &format!("SELECT COUNT(*) FROM ({both})")).await as i64;
    assert!(
        segmentations.iter().all(|n| *n == everyone),
        "{segmentations:?} vs {everyone}"
    );
    let pairs = format!(
        "SELECT p.rfm_segment AS f, c.rfm_segment AS t, COUNT(*) AS n \
         FROM (SELECT * FROM customer_scores_history WHERE as_of = DATE '{first}') p \
         JOIN (SELECT * FROM customer_scores_history WHERE as_of = DATE '{second}') c USING (customer_id) \
         GROUP BY 1, 2 ORDER BY 1, 2"
    );
    let expected = rows(&ctx, &pairs).await;
    let published = rows(
        &ctx,
        "SELECT from_segment, to_segment, customers FROM segment_migration \
         WHERE segmentation = 'rfm_segment' AND movement IN ('stayed', 'moved') ORDER BY 1, 2",
    )
    .await;
    assert_eq!(published, expected);
    let moved = scalar(
        &ctx,
        "SELECT COUNT(*) FROM segment_migration WHERE movement = 'moved' AND from_segment = to_segment",
    )
    .await;
    assert_eq!(moved, 0.0);
    let new = count(
        &wh,
        "SELECT COALESCE(SUM(customers), 0) FROM segment_migration WHERE segmentation = 'rfm_segment' AND movement = 'new'",
    )
    .await;
    assert_eq!(
        new,
        everyone - first_customers,
        "new = scored now but not on the first day"
    );

    // Rerunning the second day replaces its rows: same history, same migration.
    let history =
        "SELECT CAST(as_of AS VARCHAR), customer_id, rfm_segment, clv FROM customer_scores_history ORDER BY 1, 2";
    let migration = "SELECT * FROM segment_migration ORDER BY segmentation, from_segment, to_segment";
    let (h1, m1) = (rows(&ctx, history).await, rows(&ctx, migration).await);
    let second_files = day_files(&wh, &second).await;
    run_as_of(&wh, &second);
    let ctx = warehouse_session(&wh).await;
    assert_eq!(rows(&ctx, history).await, h1);
    assert_eq!(rows(&ctx, migration).await, m1);
    // The rerun replaced the second day's files and left the first day's alone.
    assert_eq!(day_files(&wh, &first).await, first_files);
    let replaced = day_files(&wh, &second).await;
    assert!(
        !replaced.is_empty() && replaced.iter().all(|f| !second_files.contains(f)),
        "{replaced:?} vs {second_files:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_scores_column_keeps_the_older_days_with_null_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = scratch_project(dir.path());
    let wh = dir.path().join("wh");
    let out = run_pipeline(dir.path(), &p, &["--as-of", "2024-06-30"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first = count(&wh, "SELECT COUNT(*) FROM customer_scores_history").await;
    // customer_scores gains a column, as a new release of the scoring SQL would.
    let scores = dir.path().join("sql/scoring/customer_scores.sql");
    let sql = std::fs::read_to_string(&scores).unwrap();
    assert_eq!(sql.matches("    s.model_version\n").count(), 1, "{sql}");
    std::fs::write(
        &scores,
        sql.replace(
            "    s.model_version\n",
            "    s.model_version,\n    1 AS score_release\n",
        ),
    )
    .unwrap();
    let out = run_pipeline(dir.path(), &p, &["--as-of", "2024-07-31"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ctx = warehouse_session(&wh).await;
    let days = rows(
        &ctx,
        "SELECT CAST(as_of AS VARCHAR) AS day, COUNT(*), COUNT(score_release) FROM customer_scores_history \
         GROUP BY as_of ORDER BY as_of",
    )
    .await;
    let second = count(&wh, "SELECT COUNT(*) FROM customer_scores").await;
    assert_eq!(
        days,
        vec![format!("2024-06-30|{first}|0"), format!("2024-07-31|{second}|{second}")]
    );
}

/// A customer whose rows are gone from the exports (deleted at the source) is `gone` in
/// every segmentation, from the segment and with the clv of the previous day; the others
/// stay or move, and every customer of either day is counted once per segmentation.
#[tokio::test(flavor = "multi_thread")]
async fn a_customer_missing_from_the_exports_is_gone_from_their_previous_segment() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = |path: &str| std::fs::read_to_string(repo().join("fixtures").join(path)).unwrap();
    let mut sales = fixture("sales/sales_2023.csv");
    for year in ["2024", "2025"] {
        sales.extend(
            fixture(&format!("sales/sales_{year}.csv"))
                .lines()
                .skip(1)
                .map(|l| format!("{l}\n")),
        );
    }
    let (service, marketing) = (fixture("service/tickets.csv"), fixture("marketing/events.ndjson"));
    let p = project_with_exports(dir.path(), &sales, Some(&service), Some(&marketing));
    let wh = dir.path().join("wh");
    let out = run_pipeline(dir.path(), &p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ctx = warehouse_session(&wh).await;
    let as_of = latest_manifest(&wh)["as_of"].as_str().unwrap().to_string();
    let everyone = count(&wh, "SELECT COUNT(*) FROM customer_scores").await;
    let leaver = rows(
        &ctx,
        // segment_migration sums clv exactly, to the millionth (docs/scoring.md, "Exact money").
        "SELECT rfm_segment, value_tier, CAST(CAST(clv AS DECIMAL(38, 6)) AS DOUBLE) FROM customer_scores \
         WHERE customer_id = 'C0000001'",
    )
    .await;
    assert_eq!(leaver.len(), 1, "{leaver:?}");

    // C0000001 is deleted from every export, in any spelling of the id (the exports hold
    // messy ones like " c0000001 "); the next day's run no longer sees them.
    let without = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.to_ascii_uppercase().contains("C0000001"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    std::fs::write(dir.path().join("exports/sales.csv"), without(&sales)).unwrap();
    std::fs::write(dir.path().join("exports/marketing.ndjson"), without(&marketing)).unwrap();
    let next_day = (as_of.parse::<NaiveDate>().unwrap() + Days::new(1)).to_string();
    let out = run_pipeline(dir.path(), &p, &["--as-of", &next_day]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ctx = warehouse_session(&wh).await;
    let gone = rows(
        &ctx,
        "SELECT segmentation, CAST(from_as_of AS VARCHAR), from_segment, to_segment, customers, clv, previous_clv \
         FROM segment_migration WHERE movement = 'gone' ORDER BY segmentation",
    )
    .await;
    assert_eq!(gone.len(), 9, "one gone row per segmentation: {gone:?}");
    let fields: Vec<&str> = leaver[0].split('|').collect();
    let (rfm, tier, clv) = (fields[0], fields[1], fields[2]);
    assert!(
        gone.contains(&format!("rfm_segment|{as_of}|{rfm}||1|0.0|{clv}")),
        "{gone:?}"
    );
    assert!(
        gone.contains(&format!("value_tier|{as_of}|{tier}||1|0.0|{clv}")),
        "{gone:?}"
    );
    let per_segmentation = rows(
        &ctx,
        "SELECT DISTINCT SUM(customers) FROM segment_migration GROUP BY segmentation",
    )
    .await;
    assert_eq!(
        per_segmentation,
        vec![everyone.to_string()],
        "each customer once per segmentation"
    );
    let kept = count(
        &wh,
        "SELECT SUM(customers) FROM segment_migration WHERE segmentation = 'rfm_segment' AND movement IN ('stayed', 'moved')",
    )
    .await;
    assert_eq!(kept, everyone - 1);

    // Rerunning the first day, C0000001 still gone, replaces that day's rows with the rerun's
    // (a merge on the key would have kept the leaver's old row); the next day is untouched.
    let history = "SELECT CAST(as_of AS VARCHAR) AS day, COUNT(*), COUNT(CASE WHEN customer_id = 'C0000001' THEN 1 END) \
                   FROM customer_scores_history GROUP BY as_of ORDER BY as_of";
    assert_eq!(
        rows(&ctx, history).await,
        vec![
            format!("{as_of}|{everyone}|1"),
            format!("{next_day}|{}|0", everyone - 1)
        ]
    );
    let out = run_pipeline(dir.path(), &p, &["--as-of", &as_of]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rerun = count(&wh, "SELECT COUNT(*) FROM customer_scores").await;
    assert_eq!(rerun, everyone - 1);
    let ctx = warehouse_session(&wh).await;
    assert_eq!(
        rows(&ctx, history).await,
        vec![format!("{as_of}|{rerun}|0"), format!("{next_day}|{}|0", everyone - 1)]
    );
}
