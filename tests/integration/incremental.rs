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
        // Every row, not a sum: the incremental table holds the carried rows in a file of
        // their own, and a floating-point sum over two files may differ in its last bit.
        "SELECT * FROM raw_sales ORDER BY _source_file, _source_line",
        "SELECT * FROM fct_customer ORDER BY customer_id",
        "SELECT line, column_name, reason FROM quarantine_sales ORDER BY file, line, column_name",
        // Copies of a key among the carried rows are found too: the fixtures repeat keys
        // within each file, and the 2024 file is carried.
        "SELECT source, key, file, line, kept_file, kept_line, identical FROM duplicates ORDER BY source, file, line",
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

/// A copy of the project whose sales source reads `dir/landing/*.csv`, with an incremental
/// stage added under `sql/marts/`. Returns the pipeline path.
fn project_with_incremental_stage(dir: &Path) -> PathBuf {
    let pipeline = scratch_project(dir);
    std::fs::create_dir_all(dir.join("landing")).unwrap();
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        &format!("\"{}/fixtures/sales/*.csv\"", repo().display()),
        &format!("\"{}/landing/*.csv\"", dir.display()),
    );
    std::fs::write(&pipeline, text).unwrap();
    std::fs::write(
        dir.join("sql/marts/order_lines.sql"),
        "-- @description: Order lines with their amount, merged run by run.\n\
         -- @materialized: incremental\n\
         -- @unique_key: order_id, line_no\n\
         -- @incremental_column: order_ts\n\
         SELECT order_id, line_no, customer_id, order_ts, revenue\n\
         FROM stg_sales\n\
         WHERE NOT $is_incremental OR order_ts > $watermark\n",
    )
    .unwrap();
    pipeline
}

fn stage_metrics(warehouse: &Path, name: &str) -> serde_json::Value {
    latest_manifest(warehouse)["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in the manifest"))
        .clone()
}

#[tokio::test]
async fn an_incremental_stage_touches_only_new_rows_and_equals_a_full_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = project_with_incremental_stage(dir.path());
    let wh = dir.path().join("wh");
    let run = |extra: &[&str]| {
        let out = run_pipeline(dir.path(), &pipeline, extra);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    };
    land(dir.path(), "2023");
    run(&[]);
    let first = stage_metrics(&wh, "order_lines");
    let n1 = first["rows"].as_u64().unwrap();
    assert_eq!(first["materialized"], "incremental");
    assert_eq!(
        first["rows_new"].as_u64(),
        Some(n1),
        "the first run processes every row"
    );
    assert_eq!(
        count(&wh, "SELECT count(*) FROM stg_sales").await as u64,
        n1,
        "one row per staged order line"
    );

    // The next day's file: the stage's query selects only lines after the watermark.
    land(dir.path(), "2024");
    run(&[]);
    let second = stage_metrics(&wh, "order_lines");
    let new_lines = count(
        &wh,
        "SELECT count(*) FROM stg_sales WHERE order_ts > (SELECT max(order_ts) FROM stg_sales WHERE order_ts < TIMESTAMP '2024-01-01T00:00:00Z')",
    )
    .await as u64;
    assert!(new_lines > 0);
    assert_eq!(second["rows_new"].as_u64(), Some(new_lines), "{second}");
    assert!(new_lines < second["rows"].as_u64().unwrap());
    assert_eq!(second["rows"].as_u64().unwrap(), n1 + new_lines);
    let sql = "SELECT * FROM order_lines ORDER BY order_id, line_no";
    let incremental = rows(&warehouse_session(&wh).await, sql).await;

    // A full refresh rebuilds the table from scratch: the same rows.
    run(&["--full-refresh"]);
    let full = stage_metrics(&wh, "order_lines");
    assert_eq!(full["rows_new"], full["rows"], "{full}");
    assert_eq!(rows(&warehouse_session(&wh).await, sql).await, incremental);
}

#[test]
fn an_incremental_stage_without_a_unique_key_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = project_with_incremental_stage(dir.path());
    let file = dir.path().join("sql/marts/order_lines.sql");
    let sql = std::fs::read_to_string(&file)
        .unwrap()
        .replace("-- @unique_key: order_id, line_no\n", "");
    std::fs::write(&file, sql).unwrap();
    land(dir.path(), "2023");
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("order_lines.sql") && text(&out).contains("unique_key"),
        "{}",
        text(&out)
    );
}
