//! Incremental loads: a source with `incremental = true` reads only new or changed files
//! and carries the other rows over from the last run, with exact counts and no duplicates;
//! `--full-refresh` and a from-scratch run give the same tables.

use std::path::{Path, PathBuf};

use crate::support::*;

/// A pipeline whose sales source reads `dir/landing/*.csv` incrementally.
fn incremental_pipeline(dir: &Path) -> PathBuf {
    let landing = dir.join("landing");
    std::fs::create_dir_all(&landing).unwrap();
    let path = write_pipeline(dir, &[("sales", format!("{}/*.csv", landing.display()))]);
    let mut doc: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let sources = doc.get_mut("sources").and_then(|s| s.as_array_mut()).unwrap();
    let sales = sources
        .iter_mut()
        .filter_map(|s| s.as_table_mut())
        .find(|s| s.get("name").and_then(|n| n.as_str()) == Some("sales"))
        .unwrap();
    sales.insert("incremental".into(), true.into());
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

fn land(dir: &Path, year: &str) {
    std::fs::copy(
        repo().join(format!("fixtures/sales/sales_{year}.csv")),
        dir.join(format!("landing/sales_{year}.csv")),
    )
    .unwrap();
}

fn sales_metrics(warehouse: &Path) -> serde_json::Value {
    let manifest = latest_manifest(warehouse);
    manifest["extract"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["source"] == "sales")
        .unwrap()
        .clone()
}

fn reused_files(m: &serde_json::Value) -> Vec<(String, bool)> {
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let path = f["path"].as_str().unwrap();
            let name = path.rsplit('/').next().unwrap().to_string();
            (name, f["reused"].as_bool().unwrap())
        })
        .collect()
}

async fn count(warehouse: &Path, sql: &str) -> f64 {
    scalar(&warehouse_session(warehouse).await, sql).await
}

const DUPLICATES: &str =
    "SELECT count(*) FROM (SELECT _source_file, _source_line FROM raw_sales GROUP BY 1, 2 HAVING count(*) > 1)";

#[tokio::test]
async fn day_one_day_two_and_a_rerun_load_each_file_once_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = incremental_pipeline(dir.path());
    let wh = dir.path().join("wh");
    let run = |extra: &[&str]| {
        let out = run_pipeline(dir.path(), &pipeline, extra);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        out
    };

    // Day 1: one file.
    land(dir.path(), "2023");
    run(&[]);
    let day1 = sales_metrics(&wh);
    assert_eq!(reused_files(&day1), [("sales_2023.csv".to_string(), false)]);
    let day1_loaded = day1["rows_loaded"].as_u64().unwrap();
    let day1_quarantined = count(&wh, "SELECT count(*) FROM quarantine_sales").await;
    assert!(day1_loaded > 0 && day1_quarantined > 0.0);

    // Day 2: a second file arrives; the first is not read again.
    land(dir.path(), "2024");
    run(&[]);
    let day2 = sales_metrics(&wh);
    assert_eq!(
        reused_files(&day2),
        [
            ("sales_2023.csv".to_string(), true),
            ("sales_2024.csv".to_string(), false)
        ]
    );
    assert_eq!(day2["rows_reused"].as_u64().unwrap(), day1_loaded);
    let day2_loaded = day2["rows_loaded"].as_u64().unwrap();
    let fresh_2024 = day2["files"][1]["rows_loaded"].as_u64().unwrap();
    assert_eq!(day2_loaded, day1_loaded + fresh_2024);
    assert_eq!(count(&wh, "SELECT count(*) FROM raw_sales").await as u64, day2_loaded);
    assert_eq!(count(&wh, DUPLICATES).await, 0.0);

    // Rerun of day 2: nothing new, nothing read, the same rows.
    run(&[]);
    let rerun = sales_metrics(&wh);
    assert!(reused_files(&rerun).iter().all(|(_, reused)| *reused), "{rerun}");
    assert_eq!(rerun["rows_loaded"].as_u64().unwrap(), day2_loaded);
    assert_eq!(count(&wh, "SELECT count(*) FROM raw_sales").await as u64, day2_loaded);
    assert_eq!(count(&wh, DUPLICATES).await, 0.0);
    let quarantined_day2 = count(&wh, "SELECT count(*) FROM quarantine_sales").await;

    // A changed file replaces its earlier rows: drop the 2023 file's last line.
    let f2023 = dir.path().join("landing/sales_2023.csv");
    let text2023 = std::fs::read_to_string(&f2023).unwrap();
    let trimmed = text2023.trim_end_matches('\n');
    let cut = trimmed.rfind('\n').unwrap();
    std::fs::write(&f2023, format!("{}\n", &trimmed[..cut])).unwrap();
    run(&[]);
    let changed = sales_metrics(&wh);
    assert_eq!(
        reused_files(&changed),
        [
            ("sales_2023.csv".to_string(), false),
            ("sales_2024.csv".to_string(), true)
        ]
    );
    let changed_read = changed["rows_read"].as_u64().unwrap();
    assert_eq!(changed_read, rerun["rows_read"].as_u64().unwrap() - 1, "{changed}");
    assert_eq!(count(&wh, DUPLICATES).await, 0.0);

    // The incremental result equals a full refresh and a from-scratch non-incremental run.
    let tables = [
        "SELECT count(*) AS n, sum(quantity * unit_price) AS revenue FROM raw_sales",
        "SELECT * FROM fct_customer ORDER BY customer_id",
        "SELECT line, column_name, reason FROM quarantine_sales ORDER BY file, line, column_name",
    ];
    let mut incremental = Vec::new();
    let ctx = warehouse_session(&wh).await;
    for sql in tables {
        incremental.push(rows(&ctx, sql).await);
    }
    assert!(count(&wh, "SELECT count(*) FROM quarantine_sales").await <= quarantined_day2);
    run(&["--full-refresh"]);
    let refreshed = sales_metrics(&wh);
    assert!(
        reused_files(&refreshed).iter().all(|(_, reused)| !*reused),
        "{refreshed}"
    );
    let ctx = warehouse_session(&wh).await;
    for (sql, expected) in tables.iter().zip(&incremental) {
        assert_eq!(&rows(&ctx, sql).await, expected, "full refresh differs: {sql}");
    }
    let scratch = dir.path().join("scratch");
    let plain = write_pipeline(
        &scratch_dir(dir.path()),
        &[("sales", format!("{}/landing/*.csv", dir.path().display()))],
    );
    let out = patron(
        dir.path(),
        &[
            "run",
            "--pipeline",
            plain.to_str().unwrap(),
            "--out",
            scratch.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ctx = warehouse_session(&scratch).await;
    for (sql, expected) in tables.iter().zip(&incremental) {
        assert_eq!(&rows(&ctx, sql).await, expected, "from-scratch run differs: {sql}");
    }
}

fn scratch_dir(dir: &Path) -> PathBuf {
    let d = dir.join("plain");
    std::fs::create_dir_all(&d).unwrap();
    d
}
