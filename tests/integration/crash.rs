//! Crash safety: the process is killed (`abort`, like `SIGKILL`) at every failpoint in
//! turn, on the same warehouse, and after each crash the published tables must be whole:
//! every table readable with the row counts of the clean run, a reader following the
//! `runs` table gets exactly the clean run's content, the crashed run is never recorded
//! as succeeded unless it got past its runs append (the commit point of a run), and the
//! lock it left behind is taken over by the next run. A final rerun must match the clean
//! run exactly.

use patron::warehouse::Warehouse;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use datafusion::prelude::{SessionConfig, SessionContext};
use patron::failpoint::CRASH_POINTS;

use crate::support::*;

/// Columns that differ between two runs on the same inputs by design: the run id stamped
/// on quarantined rows and the model fit's wall time.
pub const VOLATILE_COLUMNS: [&str; 2] = ["run_id", "fit_ms"];

/// Every table of the run the `runs` table names as the latest succeeded (or of `run_id`),
/// read at the recorded versions: location -> rows as text, in stored order.
pub async fn consistent_snapshot(warehouse: &Path, run_id: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let records = runs(warehouse).await;
    let record = match run_id {
        Some(id) => records.iter().find(|r| r.run_id == id).expect("run recorded"),
        None => patron::publish::runs::latest_succeeded(&records, None).expect("a succeeded run"),
    };
    let mut out = BTreeMap::new();
    for (location, version) in &record.table_versions {
        out.insert(
            location.clone(),
            table_rows(&warehouse.join(location), Some(*version)).await,
        );
    }
    out
}

/// The rows of one Delta table (at `version`, else the latest), volatile columns left out.
pub async fn table_rows(path: &Path, version: Option<u64>) -> Vec<String> {
    // One partition: rows come back in the order they were written.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    patron::publish::delta::register(&ctx, "t", &Warehouse::local(path), "", version)
        .await
        .unwrap_or_else(|e| panic!("{} at {version:?}: {e}", path.display()));
    let columns: Vec<String> = ctx
        .table("t")
        .await
        .unwrap()
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !VOLATILE_COLUMNS.contains(&n.as_str()))
        .map(|n| format!("\"{n}\""))
        .collect();
    rows(&ctx, &format!("SELECT {} FROM t", columns.join(", "))).await
}

/// Asserts two snapshots hold the same tables with the same rows in the same order,
/// naming the first table and row that differ.
pub fn assert_same_tables(got: &BTreeMap<String, Vec<String>>, want: &BTreeMap<String, Vec<String>>, context: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "tables, {context}"
    );
    for (table, rows) in want {
        let other = &got[table];
        if let Some(i) = (0..rows.len().max(other.len())).find(|&i| rows.get(i) != other.get(i)) {
            panic!(
                "{table}: {} rows vs {} expected; first difference at row {i}:\n got  {:?}\n want {:?}\n({context})",
                other.len(),
                rows.len(),
                other.get(i),
                rows.get(i)
            );
        }
    }
}

fn run_with_failpoint(dir: &Path, pipeline: &Path, failpoint: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patron"));
    cmd.args(["run", "--pipeline", pipeline.to_str().unwrap(), "--out"])
        .arg(dir.join("wh"))
        .current_dir(dir)
        .env("RUST_LOG", "patron=warn");
    match failpoint {
        Some(f) => cmd.env(patron::failpoint::ENV, f),
        None => cmd.env_remove(patron::failpoint::ENV),
    };
    cmd.output().expect("patron starts")
}

/// Index of the first failpoint at or after which a crashed run counts as recorded.
fn recorded_from() -> usize {
    CRASH_POINTS
        .iter()
        .position(|p| *p == "publish.before_runs_append")
        .expect("runs append point listed")
        + 1
}

/// Index of `publish.start`: no table is committed at or before it.
fn first_publish_point() -> usize {
    CRASH_POINTS
        .iter()
        .position(|p| *p == "publish.start")
        .expect("publish.start listed")
}

/// Warehouse folder of a published table's SQL name.
fn location_of(table: &str) -> String {
    if let Some(source) = table.strip_prefix("raw_") {
        format!("raw/{source}")
    } else if let Some(source) = table.strip_prefix("quarantine_") {
        format!("quarantine/{source}")
    } else {
        format!("tables/{table}")
    }
}

/// One chain of crashes on one warehouse; returns the wall time of each crash run.
async fn crash_chain(points: Vec<(usize, &'static str)>) -> Vec<(String, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    // Retention on, so the vacuum failpoint is reached too.
    crate::publish::with_publish_settings(&pipeline, "retain_versions = 2");
    let wh = dir.path().join("wh");
    let clean = run_with_failpoint(dir.path(), &pipeline, None);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    let baseline = consistent_snapshot(&wh, None).await;
    assert!(
        baseline.len() >= 13,
        "every table is in the runs row: {:?}",
        baseline.keys()
    );
    let counts: BTreeMap<String, usize> = baseline.iter().map(|(k, v)| (k.clone(), v.len())).collect();

    let mut timings = Vec::new();
    let mut previous_crashed: Option<String> = None;
    for (index, point) in points {
        let runs_before = runs(&wh).await.len();
        let versions_before = delta_versions(&wh);
        let started = Instant::now();
        let out = run_with_failpoint(dir.path(), &pipeline, Some(point));
        timings.push((point.to_string(), started.elapsed().as_secs_f64()));
        let ctx = format!("failpoint {point}:\n{}", text(&out));
        assert_eq!(out.status.signal(), Some(6), "the process aborted at {ctx}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("failpoint {point}")),
            "{ctx}"
        );
        if let Some(crashed) = &previous_crashed {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("took over a stale warehouse lock"),
                "the lock left by {crashed} is taken over: {ctx}"
            );
        }

        // The killed run left its lock behind, naming itself.
        let lock: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(wh.join("_lock.json")).expect("lock left behind"))
                .unwrap_or_else(|e| panic!("lock readable: {e}; {ctx}"));
        let crashed_run = lock["run_id"].as_str().unwrap().to_string();

        // Every table readable at its latest version, with the clean run's row counts
        // (same inputs: a crash after some commits leaves newer but equal versions).
        for (location, n) in &counts {
            let got = table_rows(&wh.join(location), None).await.len();
            assert_eq!(got, *n, "{location} after {ctx}");
        }

        // No partial version: before publishing starts no table has a new version; a crash
        // right after a table commit leaves that table one version newer (what a reader
        // of the latest version sees), while the runs table still names the old one.
        let versions_after = delta_versions(&wh);
        if index <= first_publish_point() {
            assert_eq!(versions_after, versions_before, "no new version after {ctx}");
        }
        if let Some(table) = point.strip_prefix("publish.after_commit.") {
            let location = location_of(table);
            assert!(
                versions_after[&location] > versions_before[&location],
                "{location} has its new version after {ctx}"
            );
        }

        // The runs table: the crashed run is recorded only past its commit point.
        let after = runs(&wh).await;
        let crashed_rows: Vec<_> = after.iter().filter(|r| r.run_id == crashed_run).collect();
        if index < recorded_from() {
            assert_eq!(after.len(), runs_before, "no runs row for {ctx}");
            assert!(crashed_rows.is_empty(), "{ctx}");
        } else {
            assert_eq!(crashed_rows.len(), 1, "{ctx}");
            assert_eq!(crashed_rows[0].outcome, "succeeded", "{ctx}");
        }
        // And following it gives exactly the clean run's tables.
        assert_same_tables(
            &consistent_snapshot(&wh, None).await,
            &baseline,
            &format!("consistent read after {ctx}"),
        );
        previous_crashed = Some(crashed_run);
    }

    // The rerun takes over the last lock, succeeds, and matches the clean run exactly.
    let rerun = run_with_failpoint(dir.path(), &pipeline, None);
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun));
    assert!(String::from_utf8_lossy(&rerun.stdout).contains("took over a stale warehouse lock"));
    assert!(!wh.join("_lock.json").exists(), "a finished run releases its lock");
    let last = runs(&wh).await.pop().unwrap();
    assert_eq!(last.outcome, "succeeded");
    assert_same_tables(
        &consistent_snapshot(&wh, Some(&last.run_id)).await,
        &baseline,
        "the final rerun",
    );
    for (location, rows) in &baseline {
        assert_eq!(&table_rows(&wh.join(location), None).await, rows, "{location} latest");
    }
    let staging = wh.join("_staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "crashed runs' staging folders are cleaned up: {left:?}"
    );
    timings
}

#[test]
fn a_crash_at_any_failpoint_leaves_consistent_readable_tables_and_a_rerun_matches_a_clean_run() {
    assert!(CRASH_POINTS.len() >= 20, "at least 20 failpoints");
    let started = Instant::now();
    // Two chains (every other failpoint) on two warehouses, in parallel threads.
    let chains: Vec<Vec<(usize, &'static str)>> = (0..2)
        .map(|c| {
            CRASH_POINTS
                .iter()
                .copied()
                .enumerate()
                .filter(|(i, _)| i % 2 == c)
                .collect()
        })
        .collect();
    let handles: Vec<_> = chains
        .into_iter()
        .map(|chain| {
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(crash_chain(chain))
            })
        })
        .collect();
    let mut timings = Vec::new();
    for h in handles {
        match h.join() {
            Ok(t) => timings.extend(t),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    let total: f64 = timings.iter().map(|(_, s)| s).sum();
    eprintln!(
        "crash test: {} failpoints, {:.1}s in crashed runs, {:.1}s wall",
        timings.len(),
        total,
        started.elapsed().as_secs_f64()
    );
}
