//! Reliable publish: Delta tables committed whole, reruns that overwrite instead of
//! duplicating, a failed write that leaves the previous tables in place, the warehouse
//! lock, the runs history, time travel, retention and the plain Parquet option.

use patron::extract::LocalInput;
use patron::warehouse::Warehouse;
use std::path::Path;

use crate::crash::{assert_same_tables, consistent_snapshot, table_rows};
use crate::support::*;

/// Replaces `key = ...` lines of the pipeline's `[publish]` section with `settings`.
pub fn with_publish_settings(pipeline: &Path, settings: &str) {
    let text = std::fs::read_to_string(pipeline).unwrap();
    let (head, section) = text.split_once("[publish]").expect("a [publish] section");
    let mut section = section.to_string();
    for setting in settings.lines() {
        let key = setting.split('=').next().unwrap().trim();
        let line = section
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("{key} in [publish]"))
            .to_string();
        section = section.replacen(&line, setting, 1);
    }
    std::fs::write(pipeline, format!("{head}[publish]{section}")).unwrap();
}

fn parquet_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .count()
}

#[tokio::test]
async fn a_rerun_overwrites_every_table_with_identical_content_and_new_versions() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    let wh = dir.path().join("wh");
    let first = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let versions_1 = delta_versions(&wh);
    let snapshot_1 = consistent_snapshot(&wh, None).await;
    let second = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    let versions_2 = delta_versions(&wh);
    let snapshot_2 = consistent_snapshot(&wh, None).await;

    assert_same_tables(&snapshot_2, &snapshot_1, "a rerun on the same inputs");
    for (table, rows) in &snapshot_1 {
        assert!(!rows.is_empty(), "{table} has rows");
        // Overwrite, not append: the latest version holds one copy.
        assert_eq!(table_rows(&wh.join(table), None).await.len(), rows.len(), "{table}");
    }
    for (table, v) in &versions_1 {
        let v = v.unwrap_or_else(|| panic!("{table} is a Delta table"));
        assert_eq!(versions_2[table], Some(v + 1), "{table}: one commit per run");
    }
    let recorded = runs(&wh).await;
    assert_eq!(recorded.len(), 2);
    assert!(recorded.iter().all(|r| r.outcome == "succeeded"));
    assert_eq!(recorded[0].config_hash, recorded[1].config_hash);
    assert_eq!(recorded[0].table_rows, recorded[1].table_rows);
    assert_eq!(
        recorded[1].table_versions["tables/customer_scores"],
        recorded[0].table_versions["tables/customer_scores"] + 1
    );
    // The manifest records each table's version.
    let manifest = latest_manifest(&wh);
    let scores = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "customer_scores")
        .unwrap();
    assert_eq!(
        scores["version"].as_u64(),
        Some(recorded[1].table_versions["tables/customer_scores"])
    );
}

#[tokio::test]
async fn a_full_disk_during_publish_fails_the_run_and_leaves_the_previous_tables_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    let wh = dir.path().join("wh");
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before: std::collections::BTreeMap<String, Vec<String>> = {
        let mut m = std::collections::BTreeMap::new();
        for (location, _) in published_tables(&wh) {
            m.insert(location.clone(), table_rows(&wh.join(&location), None).await);
        }
        m
    };

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_patron"))
        .args([
            "run",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--out",
            wh.to_str().unwrap(),
        ])
        .env("PATRON_FAILPOINT", "publish.write_error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no space left on device") && err.contains("tables/stg_"),
        "{err}"
    );

    // The raw tables were committed before the failure and are restored: the latest
    // version of every table shows the previous run's rows.
    for (location, rows) in &before {
        assert_eq!(&table_rows(&wh.join(location), None).await, rows, "{location}");
    }
    let recorded = runs(&wh).await;
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].outcome, "failed");
    assert!(recorded[1].error.as_deref().unwrap_or("").contains("no space left"));
    assert!(recorded[1].table_versions.is_empty(), "a failed run names no versions");
    let failed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(wh.join("runs").join(format!("{}.json", recorded[1].run_id))).unwrap(),
    )
    .unwrap();
    assert_eq!(failed["failed_phase"], "publish");
    assert!(!wh.join("_lock.json").exists(), "the failed run released the lock");
}

#[tokio::test]
async fn a_second_run_exits_4_while_a_live_run_holds_the_lock_and_takes_over_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    let wh = dir.path().join("wh");
    std::fs::create_dir_all(&wh).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let lock = |heartbeat_ms: i64| {
        serde_json::json!({
            "run_id": "20260101T000000.000Z-holder00",
            "host": host,
            "pid": std::process::id(),
            "started": "2026-01-01T00:00:00.000Z",
            "heartbeat": "2026-01-01T00:00:00.000Z",
            "heartbeat_unix_ms": heartbeat_ms,
        })
        .to_string()
    };
    // This test process is alive and its heartbeat fresh: the lock is held.
    std::fs::write(wh.join("_lock.json"), lock(now_ms)).unwrap();
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another run holds the warehouse lock") && err.contains("holder00"),
        "{err}"
    );
    // A locked-out run publishes nothing but is recorded as skipped, naming the holder.
    let recorded = runs(&wh).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].outcome, "skipped");
    assert!(recorded[0].error.as_deref().unwrap_or_default().contains("holder00"));
    assert!(recorded[0].table_versions.is_empty());
    assert!(!wh.join("tables").exists(), "nothing was published");

    // A heartbeat older than the timeout (60 s by default) is stale: taken over.
    std::fs::write(wh.join("_lock.json"), lock(now_ms - 10 * 60_000)).unwrap();
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("took over a stale warehouse lock: run 20260101T000000.000Z-holder00")
    );
    assert!(!wh.join("_lock.json").exists());
    let outcomes: Vec<String> = runs(&wh).await.into_iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, ["skipped", "succeeded"]);
}

#[tokio::test]
async fn runs_lists_the_history_and_query_reads_the_tables_as_a_run_left_them() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    let wh = dir.path().join("wh");
    let w = wh.to_str().unwrap();
    let first = run_pipeline(dir.path(), &pipeline, &["--as-of", "2024-06-30"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let second = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));

    let out = patron(dir.path(), &["runs", "--warehouse", w, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["as_of"], "2024-06-30");
    assert_eq!(listed[1]["outcome"], "succeeded");
    let first_id = listed[0]["run_id"].as_str().unwrap();
    let out = patron(dir.path(), &["runs", "--warehouse", w]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(first_id),
        "{}",
        text(&out)
    );

    let count = |extra: &[&str]| {
        let mut args = vec!["query", "--warehouse", w, "--format", "json"];
        args.extend_from_slice(extra);
        args.push("SELECT COUNT(*) AS n FROM fct_customer");
        let out = patron(dir.path(), &args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        row["n"].as_i64().unwrap()
    };
    let latest = count(&[]);
    let then = count(&["--as-of-run", first_id]);
    let ctx = warehouse_session(&wh).await;
    assert_eq!(latest as f64, scalar(&ctx, "SELECT COUNT(*) FROM fct_customer").await);
    assert!(
        then < latest,
        "fewer customers were known on 2024-06-30: {then} vs {latest}"
    );

    for statement in [
        "DROP TABLE fct_customer",
        "INSERT INTO fct_customer SELECT * FROM fct_customer",
        "CREATE TABLE x AS SELECT 1",
    ] {
        let out = patron(dir.path(), &["query", "--warehouse", w, statement]);
        assert_eq!(out.status.code(), Some(2), "{statement}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("only a SELECT"),
            "{}",
            text(&out)
        );
    }
    let out = patron(
        dir.path(),
        &["query", "--warehouse", w, "--as-of-run", "nope", "SELECT 1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn retention_vacuums_old_versions_but_keeps_the_latest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    with_publish_settings(&pipeline, "retain_versions = 1");
    let wh = dir.path().join("wh");
    for _ in 0..3 {
        let out = run_pipeline(dir.path(), &pipeline, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let table = wh.join("tables/customer_scores");
    assert_eq!(parquet_files(&table), 1, "only the latest run's file is left");
    let latest = consistent_snapshot(&wh, None).await;
    assert!(!latest["tables/customer_scores"].is_empty());
    let recorded = runs(&wh).await;
    // The first run's files are gone: reading it fails instead of returning wrong rows.
    let ctx = datafusion::prelude::SessionContext::new();
    let v0 = recorded[0].table_versions["tables/customer_scores"];
    patron::publish::delta::register(&ctx, "old", &Warehouse::local(&table), "", Some(v0))
        .await
        .unwrap();
    assert!(ctx.sql("SELECT * FROM old").await.unwrap().collect().await.is_err());
}

#[tokio::test]
async fn the_parquet_format_swaps_plain_folders_and_still_records_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    with_publish_settings(&pipeline, "format = \"parquet\"");
    let wh = dir.path().join("wh");
    for _ in 0..2 {
        let out = run_pipeline(dir.path(), &pipeline, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    assert!(wh.join("tables/customer_scores/part-00000.parquet").is_file());
    assert!(!wh.join("tables/customer_scores/_delta_log").exists());
    let recorded = runs(&wh).await;
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].format, "parquet");
    assert!(recorded[1].table_versions.is_empty());
    let out = patron(
        dir.path(),
        &[
            "query",
            "--warehouse",
            wh.to_str().unwrap(),
            "--format",
            "json",
            "SELECT COUNT(*) AS n FROM customer_scores",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        row["n"].as_u64(),
        Some(recorded[1].table_rows["tables/customer_scores"])
    );
}

#[test]
fn an_unknown_publish_setting_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    with_publish_settings(&pipeline, "format = \"csv\"\nlock_timeout_secs = 1");
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn an_input_file_deleted_after_listing_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    let plan = patron::config::Plan::load(&pipeline, &Default::default()).unwrap();
    let sales = &plan.sources[0];
    let first = glob::glob(&sales.location).unwrap().next().unwrap().unwrap();
    // A copy of the first file, listed, then deleted before extract reads it.
    let copy = dir.path().join("sales_copy.csv");
    std::fs::copy(&first, &copy).unwrap();
    let files = [LocalInput::local(&first).unwrap(), LocalInput::local(&copy).unwrap()];
    std::fs::remove_file(&copy).unwrap();
    let out = dir.path().join("out");
    let (raw, q) = (out.join("raw"), out.join("q"));
    let err = patron::extract::extract_source(sales, &files, "run", &raw, &q, 8192, 2).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("sales_copy.csv") && message.contains("disappeared"),
        "{message}"
    );
}

/// An independent reader: the Python `deltalake` package (installed by `.ci/run`) follows
/// the runs table as docs/operations.md tells BI tools to, and must see what patron published.
#[tokio::test]
async fn an_independent_delta_reader_follows_the_runs_table_to_the_published_rows() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    let wh = dir.path().join("wh");
    for _ in 0..2 {
        let out = run_pipeline(dir.path(), &pipeline, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let script = r#"
import json, sys
from deltalake import DeltaTable
wh = sys.argv[1]
runs = DeltaTable(wh + "/runs/table").to_pyarrow_table().to_pylist()
run = sorted((r for r in runs if r["outcome"] == "succeeded"), key=lambda r: r["finished_at"])[-1]
out = {"run_id": run["run_id"], "rows": {}}
for location, version in json.loads(run["table_versions"]).items():
    out["rows"][location] = DeltaTable(wh + "/" + location, version=version).to_pyarrow_table().num_rows
print(json.dumps(out), flush=True)
# Skip interpreter teardown: the deltalake/pyarrow native thread pools can abort there
# ("terminate called without an active exception") after all the work is done and printed.
import os
os._exit(0)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, wh.to_str().unwrap()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the Python deltalake package reads the warehouse (install it with `python3 -m pip install deltalake==1.6.6 pyarrow`, as .ci/run does): {}",
        text(&out)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let recorded = runs(&wh).await;
    let last = recorded.last().unwrap();
    assert_eq!(seen["run_id"], last.run_id.as_str());
    let rows = seen["rows"].as_object().unwrap();
    assert_eq!(rows.len(), last.table_rows.len());
    for (location, n) in &last.table_rows {
        assert_eq!(rows[location].as_u64(), Some(*n), "{location}");
    }
}

#[tokio::test]
async fn of_two_overlapping_runs_one_publishes_and_the_other_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    let wh = dir.path().join("wh");
    let first = std::process::Command::new(env!("CARGO_BIN_EXE_patron"))
        .args([
            "run",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--out",
            wh.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !wh.join("_lock.json").exists() {
        assert!(std::time::Instant::now() < deadline, "the first run takes the lock");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let second = run_pipeline(dir.path(), &pipeline, &[]);
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(second.status.code(), Some(4), "{}", text(&second));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another run holds the warehouse lock"));
    // The first run published; the second is recorded as skipped (it never started).
    let mut outcomes: Vec<String> = runs(&wh).await.into_iter().map(|r| r.outcome).collect();
    outcomes.sort();
    assert_eq!(outcomes, ["skipped", "succeeded"]);
}

#[tokio::test]
async fn retention_also_removes_data_files_no_commit_names() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    with_publish_settings(&pipeline, "retain_versions = 1");
    let wh = dir.path().join("wh");
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // What a run killed half-way through writing a table leaves: a file no commit names.
    let table = wh.join("tables/fct_customer");
    let stray = table.join("part-00000-left-by-a-killed-run.snappy.parquet");
    let any = std::fs::read_dir(&table)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    std::fs::copy(any.path(), &stray).unwrap();
    let before = table_rows(&table, None).await;
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!stray.exists(), "the stray file is vacuumed");
    assert_eq!(parquet_files(&table), 1);
    assert_eq!(table_rows(&table, None).await, before);
}
