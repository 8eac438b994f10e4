//! SQL stages as a data engineer adds them: new files are picked up and ordered by what
//! they read; broken stages are reported with their file (and line, where known).

use crate::support::*;

#[tokio::test]
async fn a_new_stage_file_is_picked_up_and_ordered_after_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let p = scratch_project(dir.path());
    // Named to sort first, but reads a table built last.
    std::fs::write(
        dir.path().join("sql/marts/a_champion_revenue.sql"),
        "SELECT s.rfm_segment, COUNT(*) AS customers, SUM(f.revenue) AS revenue\n\
         FROM customer_scores AS s JOIN fct_customer AS f USING (customer_id)\n\
         GROUP BY s.rfm_segment ORDER BY s.rfm_segment",
    )
    .unwrap();
    // The run's duplicates (and quarantine) are tables stages can read, like raw tables.
    std::fs::write(
        dir.path().join("sql/marts/dq_issues.sql"),
        "SELECT 'duplicates' AS kind, COUNT(*) AS n FROM duplicates\n\
         UNION ALL SELECT 'quarantine' AS kind, COUNT(*) AS n FROM quarantine",
    )
    .unwrap();
    let out = run_pipeline(dir.path(), &p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let manifest = latest_manifest(&dir.path().join("wh"));
    let ctx = warehouse_session(&dir.path().join("wh")).await;
    let staged = scalar(&ctx, "SELECT n FROM dq_issues WHERE kind = 'duplicates'").await;
    let published = scalar(&ctx, "SELECT COUNT(*) FROM duplicates").await;
    assert!(published > 0.0, "the fixtures repeat some keys");
    assert_eq!(staged, published);
    let order: Vec<&str> = manifest["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let pos = |n: &str| {
        order
            .iter()
            .position(|s| *s == n)
            .unwrap_or_else(|| panic!("{n} not run: {order:?}"))
    };
    assert!(pos("a_champion_revenue") > pos("customer_scores"), "{order:?}");
    assert!(
        pos("customer_scores") > pos("fct_customer") && pos("fct_customer") > pos("stg_sales"),
        "{order:?}"
    );
    let ctx = warehouse_session(&dir.path().join("wh")).await;
    let total = scalar(&ctx, "SELECT SUM(revenue) FROM a_champion_revenue").await;
    let fct = scalar(&ctx, "SELECT SUM(revenue) FROM fct_customer").await;
    assert!((total - fct).abs() < 1e-6 * fct);
}

#[test]
fn a_cycle_exits_2_naming_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = scratch_project(dir.path());
    std::fs::write(dir.path().join("sql/marts/loop_a.sql"), "SELECT * FROM loop_b").unwrap();
    std::fs::write(dir.path().join("sql/marts/loop_b.sql"), "SELECT * FROM loop_a").unwrap();
    let out = run_pipeline(dir.path(), &p, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cycle") && err.contains("loop_a.sql") && err.contains("loop_b.sql"),
        "{err}"
    );
}

#[test]
fn an_unknown_table_exits_2_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let p = scratch_project(dir.path());
    std::fs::write(dir.path().join("sql/marts/typo.sql"), "SELECT * FROM fct_customers").unwrap();
    let out = run_pipeline(dir.path(), &p, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.sql") && err.contains("did you mean `fct_customer`"),
        "{err}"
    );
}

#[test]
fn a_sql_error_names_the_stage_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = scratch_project(dir.path());
    std::fs::write(
        dir.path().join("sql/marts/broken.sql"),
        "SELECT customer_id,\n       no_such_column\nFROM fct_customer",
    )
    .unwrap();
    let out = run_pipeline(dir.path(), &p, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.sql") && err.contains("no_such_column"), "{err}");
    assert!(err.contains("line 2"), "the offending line is shown: {err}");
}

#[test]
fn a_stage_that_is_not_a_select_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = scratch_project(dir.path());
    std::fs::write(dir.path().join("sql/marts/ddl.sql"), "CREATE TABLE x AS SELECT 1").unwrap();
    let out = run_pipeline(dir.path(), &p, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ddl.sql"));
}

#[tokio::test]
async fn run_select_rebuilds_only_the_selected_stages_and_records_a_complete_set() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    let wh = dir.path().join("wh");
    let out = run_pipeline(dir.path(), &pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = delta_versions(&wh);

    // A new mart; run only it. Its inputs are read as the last run published them.
    std::fs::write(
        dir.path().join("sql/marts/segment_revenue.sql"),
        "SELECT s.rfm_segment, COUNT(*) AS customers, SUM(f.revenue) AS revenue\n\
         FROM customer_scores AS s JOIN fct_customer AS f USING (customer_id)\n\
         GROUP BY s.rfm_segment ORDER BY s.rfm_segment\n",
    )
    .unwrap();
    let out = run_pipeline(dir.path(), &pipeline, &["--select", "segment_revenue"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let manifest = latest_manifest(&wh);
    let stages: Vec<&str> = manifest["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["segment_revenue"], "only the selected stage ran");
    let after = delta_versions(&wh);
    for location in ["tables/fct_customer", "tables/customer_scores", "tables/model_params"] {
        assert_eq!(before[location], after[location], "{location} was not rebuilt");
    }
    // The run's row in `runs` names a complete, consistent set: the carried tables at the
    // versions the previous run published, plus the new one.
    let records = runs(&wh).await;
    let last = records.last().unwrap();
    assert_eq!(last.outcome, "succeeded");
    for location in ["tables/fct_customer", "tables/customer_scores", "tables/model_params"] {
        assert_eq!(
            last.table_versions.get(location).map(|v| *v as i64),
            before[location],
            "{location} in {last:?}"
        );
    }
    assert!(last.table_versions.contains_key("tables/segment_revenue"), "{last:?}");
    let ctx = warehouse_session(&wh).await;
    let total = scalar(&ctx, "SELECT sum(revenue) FROM segment_revenue").await;
    let expected = scalar(&ctx, "SELECT sum(revenue) FROM fct_customer").await;
    assert!(
        (total - expected).abs() < 1e-6 * expected.abs().max(1.0),
        "{total} vs {expected}"
    );

    // A stage rebuilt alone from its inputs as published (read back sorted by customer_id,
    // so they are merge-joined) comes out as the full run built it.
    let scores = "SELECT * FROM customer_scores ORDER BY customer_id";
    let full = rows(&ctx, scores).await;
    let out = run_pipeline(dir.path(), &pipeline, &["--select", "customer_scores"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rebuilt = rows(&warehouse_session(&wh).await, scores).await;
    assert_eq!(rebuilt.len(), 2000);
    assert!(
        rebuilt == full,
        "customer_scores rebuilt alone differs from the full run's"
    );

    // On a warehouse where the inputs were never published, the selection must include them.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let out = run_pipeline(&fresh, &pipeline, &["--select", "segment_revenue"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not selected"), "{}", text(&out));
    let out = run_pipeline(&fresh, &pipeline, &["--select", "+segment_revenue"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // An unknown stage is a usage error with a suggestion.
    let out = run_pipeline(dir.path(), &pipeline, &["--select", "segment_revenu"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("segment_revenue"), "{}", text(&out));
}

#[tokio::test]
async fn a_partitioned_stage_is_published_as_a_delta_table_partitioned_by_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scratch_project(dir.path());
    std::fs::write(
        dir.path().join("sql/marts/channel_lines.sql"),
        "-- @partition_by: channel\n\
         SELECT channel, order_id, line_no, revenue FROM stg_sales ORDER BY order_id, line_no\n",
    )
    .unwrap();
    let wh = dir.path().join("wh");
    for _ in 0..2 {
        let out = run_pipeline(dir.path(), &pipeline, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let table = wh.join("tables/channel_lines");
    let partitions: Vec<String> = std::fs::read_dir(&table)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("channel="))
        .collect();
    let ctx = warehouse_session(&wh).await;
    let channels = scalar(&ctx, "SELECT count(DISTINCT channel) FROM stg_sales").await as usize;
    assert!(channels >= 2 && partitions.len() == channels, "{partitions:?}");
    let log = std::fs::read_to_string(table.join("_delta_log/00000000000000000000.json")).unwrap();
    assert!(log.contains(r#""partitionColumns":["channel"]"#), "{log}");
    assert_eq!(
        scalar(&ctx, "SELECT count(*) FROM channel_lines").await,
        scalar(&ctx, "SELECT count(*) FROM stg_sales").await
    );
}
