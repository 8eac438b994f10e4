//! Bad configuration and bad inputs: clear messages naming the file and key, and the
//! documented exit codes (2 for usage/configuration, 1 for a failed run).

use crate::support::*;

fn write_pipeline(dir: &std::path::Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let p = scratch_project(dir);
    let text = edit(std::fs::read_to_string(&p).unwrap());
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn unknown_key_exits_2_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(dir.path(), |t| t.replace("margin_rate = 0.30", "margin_rat = 0.30"));
    let out = run_pipeline(dir.path(), &p, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("margin_rat") && err.contains("default.toml"), "{err}");
}

#[test]
fn bad_values_exit_2_listing_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(dir.path(), |t| {
        t.replace("as_of = \"latest\"", "as_of = \"last tuesday\"")
            .replace("value_tier_a_share = 0.80", "value_tier_a_share = 1.8")
    });
    let out = run_pipeline(dir.path(), &p, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run.as_of") && err.contains("scoring.value_tier_a_share") && err.contains("default.toml"),
        "{err}"
    );
}

#[test]
fn missing_input_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(dir.path(), |t| {
        t.replace("fixtures/service/*.csv", "fixtures/service/nope_*.csv")
    });
    let out = run_pipeline(dir.path(), &p, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope_*.csv") && err.contains("service"), "{err}");
}

#[test]
fn missing_pipeline_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = patron(dir.path(), &["run", "--pipeline", "nowhere.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere.toml"));
}

#[test]
fn bad_flag_exits_2() {
    let out = patron(&repo(), &["run", "--as-of", "31/12/2025"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn error_budget_exceeded_fails_the_run_and_keeps_the_previous_tables() {
    let dir = tempfile::tempdir().unwrap();
    let good = scratch_project(dir.path());
    let out = run_pipeline(dir.path(), &good, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = delta_versions(&dir.path().join("wh"));
    assert!(before.values().all(|v| v.is_some()), "{before:?}");

    let text_before = std::fs::read_to_string(&good).unwrap();
    std::fs::write(
        &good,
        text_before.replace("error_budget = 0.05", "error_budget = 0.0001"),
    )
    .unwrap();
    let out = run_pipeline(dir.path(), &good, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error budget") && err.contains("source `"), "{err}");
    let after = delta_versions(&dir.path().join("wh"));
    assert_eq!(before, after, "a failed run publishes nothing");
    // The failed run has a manifest saying so.
    let failed = std::fs::read_dir(dir.path().join("wh/runs"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .find(|m| m["outcome"] == "failed")
        .expect("failed manifest");
    assert_eq!(failed["failed_phase"], "extract");
    assert!(failed["error"].as_str().unwrap().contains("error budget"));
}

/// One meaning per flag: `--warehouse` names the warehouse on every command that has one,
/// `--out` only a command's own output (`report`, `docs`, `evaluate`); `run` and `test`
/// keep `--out` as a hidden alias (the suite's `run_default` uses it).
#[test]
fn warehouse_names_the_warehouse_and_out_only_an_output() {
    for command in [
        "run",
        "test",
        "evaluate",
        "query",
        "report",
        "docs",
        "runs",
        "quarantine",
        "serve",
    ] {
        let out = patron(&repo(), &[command, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{command}: {}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--warehouse"), "{command} has no --warehouse:\n{help}");
        let has_out = help.contains("--out ");
        assert_eq!(
            has_out,
            matches!(command, "report" | "docs" | "evaluate"),
            "{command}: --out shown = {has_out}:\n{help}"
        );
    }
}

/// One `--format text|json` choice on every command that prints for people or scripts.
#[test]
fn format_is_text_or_json_on_every_printing_command() {
    for command in ["explain", "lineage", "quarantine", "query", "runs"] {
        let out = patron(&repo(), &[command, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        let line = help
            .lines()
            .skip_while(|l| !l.contains("--format"))
            .take(8)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            line.contains("- text:") && line.contains("- json:") && !line.contains("- table:"),
            "{command} --format:\n{line}"
        );
    }
}

/// `patron run | head -1`: the reader goes away after one line. The run still finishes,
/// publishes and exits 0; no panic about a broken pipe.
#[test]
fn a_closed_stdout_does_not_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_patron"))
        .args(["run", "--warehouse", wh.to_str().unwrap()])
        .current_dir(repo())
        .env("RUST_LOG", "patron=warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("patron starts");
    // The reader closes before the run prints anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert!(wh.join("runs/latest.json").is_file(), "the run published");
}
