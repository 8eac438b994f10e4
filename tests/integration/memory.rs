//! Bounded memory: the default pipeline under a tiny engine memory limit spills to disk
//! and publishes exactly what it publishes with the default limit. Both runs let four
//! stages run side by side: under 64 MiB staging stages then run out of memory (one sort
//! holds what another needs to merge) and run again one at a time, which must not change a
//! row either.

use std::path::Path;

use crate::crash::{assert_same_tables, consistent_snapshot};
use crate::support::*;

/// The pipeline at `pipeline` with `engine.<key>` set, written next to it.
fn with_engine(pipeline: &Path, key: &str, value: i64) -> std::path::PathBuf {
    with_setting(pipeline, "engine", key, toml::Value::Integer(value))
}

/// Bytes spilled per stage in the latest manifest of `warehouse`, stages that spilled only.
fn spilled(warehouse: &Path) -> Vec<(String, u64)> {
    latest_manifest(warehouse)["stages"]
        .as_array()
        .expect("stages listed")
        .iter()
        .filter_map(|s| {
            let bytes = s["spilled_bytes"].as_u64()?;
            Some((s["name"].as_str()?.to_string(), bytes))
        })
        .filter(|(_, b)| *b > 0)
        .collect()
}

#[tokio::test]
async fn under_a_64_mib_limit_the_pipeline_spills_and_publishes_the_same_tables() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = generated_pipeline(dir.path(), "20000", "11");
    // Each run in its own folder: `run_pipeline` publishes into `<folder>/wh`.
    let run = |folder: &str, pipeline: &Path| {
        let folder = dir.path().join(folder);
        std::fs::create_dir_all(&folder).unwrap();
        let out = run_pipeline(&folder, pipeline, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        folder.join("wh")
    };
    let roomy = run("roomy", &with_engine(&pipeline, "stage_parallelism", 4));
    assert_eq!(spilled(&roomy), vec![], "nothing spills under the default limit");

    let tight = with_engine(&with_engine(&pipeline, "stage_parallelism", 4), "memory_limit_mb", 64);
    let tight = run("tight", &tight);
    let spills = spilled(&tight);
    assert!(!spills.is_empty(), "some stage spills under 64 MiB");

    let want = consistent_snapshot(&roomy, None).await;
    assert!(
        want.values().all(|rows| !rows.is_empty()) && want.len() > 10,
        "{:?}",
        want.keys()
    );
    assert_same_tables(
        &consistent_snapshot(&tight, None).await,
        &want,
        "the same inputs under a 64 MiB memory limit",
    );
}
