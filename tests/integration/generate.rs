//! `patron generate`: deterministic output and constant memory.

use std::path::Path;
use std::process::Command;

use crate::support::*;

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["sales", "service", "marketing"] {
        let mut entries: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            out.push((
                p.strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
    out
}

#[test]
fn same_seed_same_bytes_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    for (name, seed) in [("a", "7"), ("b", "7"), ("c", "8")] {
        let out = patron(
            dir.path(),
            &["generate", "--customers", "300", "--seed", seed, "--out", name],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let (a, b, c) = (
        files(&dir.path().join("a")),
        files(&dir.path().join("b")),
        files(&dir.path().join("c")),
    );
    assert!(!a.is_empty());
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(a, c, "another seed, other bytes");
}

/// Peak resident memory (KiB) of `patron args` run in `cwd`.
fn peak_rss_kib(args: &[&str], cwd: &Path) -> u64 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patron"));
    cmd.args(args).current_dir(cwd);
    let m = patron::process_stats::measure(cmd).unwrap();
    assert!(m.status.success());
    m.peak_rss_kib
}

#[test]
fn generator_memory_does_not_grow_with_output_size() {
    let dir = tempfile::tempdir().unwrap();
    let small = peak_rss_kib(
        &["generate", "--customers", "2000", "--seed", "1", "--out", "small"],
        dir.path(),
    );
    let large = peak_rss_kib(
        &["generate", "--customers", "40000", "--seed", "1", "--out", "large"],
        dir.path(),
    );
    let bytes = |d: &str| -> u64 { files(&dir.path().join(d)).iter().map(|(_, b)| b.len() as u64).sum() };
    let (small_bytes, large_bytes) = (bytes("small"), bytes("large"));
    assert!(
        large_bytes > 15 * small_bytes,
        "output grew {small_bytes} -> {large_bytes}"
    );
    assert!(small > 0 && large > 0, "peak RSS was read");
    // 20x the output, but memory stays flat (a little slack for allocator noise).
    assert!(
        (large as f64) < 1.5 * small as f64 + 8192.0,
        "peak RSS {small} KiB -> {large} KiB"
    );
}
