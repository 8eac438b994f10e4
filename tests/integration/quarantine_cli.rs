//! `patron quarantine`: what the latest succeeded run rejected, grouped and sampled,
//! checked against the run's manifest and the published quarantine tables.

use crate::support::*;

fn quarantine(wh: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["quarantine", "--warehouse", wh.to_str().unwrap()];
    args.extend_from_slice(extra);
    patron(&repo(), &args)
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

#[tokio::test]
async fn quarantine_command_summarises_and_samples_the_latest_run() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");

    // Before any run there is nothing to show: exit 1, saying why.
    std::fs::create_dir_all(&wh).unwrap();
    let none = quarantine(&wh, &[]);
    assert_eq!(none.status.code(), Some(1), "{}", text(&none));

    run_default(&wh);
    let manifest = latest_manifest(&wh);
    let all = json(&quarantine(&wh, &["--format", "json", "--limit", "1000"]));
    assert_eq!(all["run_id"], manifest["run_id"]);
    let expected_rows: u64 = manifest["extract"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows_quarantined"].as_u64().unwrap())
        .sum();
    let expected_entries: u64 = manifest["extract"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["quarantine_entries"].as_u64().unwrap())
        .sum();
    assert!(expected_rows > 0);
    assert_eq!(all["rows"].as_u64().unwrap(), expected_rows);
    assert_eq!(all["entries"].as_u64().unwrap(), expected_entries);
    let summary = all["summary"].as_array().unwrap();
    let grouped: u64 = summary.iter().map(|g| g["entries"].as_u64().unwrap()).sum();
    assert_eq!(grouped, expected_entries, "every entry is in one group");
    assert!(
        summary.iter().any(|g| g["source"] == "sales"
            && g["column"] == "unit_price"
            && g["reason"] == "<n> is below the minimum <n>"),
        "values are grouped by reason pattern: {summary:?}"
    );
    let samples = all["samples"].as_array().unwrap();
    assert_eq!(samples.len() as u64, expected_entries.min(1000));
    for s in samples {
        assert!(s["file"].as_str().unwrap().ends_with(".csv") || s["file"].as_str().unwrap().ends_with(".ndjson"));
        assert!(s["line"].as_u64().unwrap() > 1, "{s}");
        assert!(!s["reason"].as_str().unwrap().is_empty());
    }
    // The duplicates the fixtures carry are reported with them.
    let dups = all["duplicates"].as_array().unwrap();
    let sales_dups = manifest["extract"][0]["duplicate_rows"].as_u64().unwrap();
    assert!(
        dups.iter()
            .any(|d| d["source"] == "sales" && d["rows"].as_u64() == Some(sales_dups))
    );

    // Filters: one source, a reason text (case-insensitive), a limit.
    let sales = json(&quarantine(
        &wh,
        &[
            "--format",
            "json",
            "--source",
            "sales",
            "--reason",
            "BELOW THE MINIMUM",
            "--limit",
            "3",
        ],
    ));
    let ctx = warehouse_session(&wh).await;
    let below = scalar(
        &ctx,
        "SELECT COUNT(*) FROM quarantine_sales WHERE reason LIKE '%below the minimum%'",
    )
    .await;
    assert!(below > 0.0);
    assert_eq!(sales["entries"].as_u64().unwrap(), below as u64);
    assert_eq!(sales["samples"].as_array().unwrap().len(), 3.min(below as usize));
    assert!(
        sales["summary"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["source"] == "sales")
    );

    // Text: the summary header and sample lines with file:line, column and raw value.
    let out = quarantine(&wh, &["--source", "sales", "--limit", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{} rows rejected", manifest["extract"][0]["rows_quarantined"])),
        "{stdout}"
    );
    assert!(stdout.contains("first 2 of"), "{stdout}");
    assert!(stdout.contains("fixtures/sales/sales_"), "{stdout}");
    assert!(stdout.contains("duplicate primary keys"), "{stdout}");

    // An unknown source is a usage error naming the ones there are.
    let bad = quarantine(&wh, &["--source", "nope"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("marketing, sales, service"),
        "{}",
        text(&bad)
    );
}
