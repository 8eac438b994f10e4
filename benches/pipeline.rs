//! End-to-end benchmark: `patron generate` then `patron run` on the bundled fixtures and on
//! generated data sets, printing wall time, peak memory and throughput. Figures only; no
//! assertion on time.
//!
//! ```sh
//! cargo bench --bench pipeline                         # fixtures + 210k customers (~1M order lines)
//! cargo bench --bench pipeline -- --customers 2000,50000,210000
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use patron::process_stats::{Measured, measure};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn patron(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patron"));
    cmd.args(args).current_dir(repo()).env("RUST_LOG", "patron=warn");
    cmd
}

fn run_measured(what: &str, cmd: Command) -> Measured {
    let m = measure(cmd).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(m.status.success(), "{what} failed: {:?}", m.status);
    m
}

/// Total rows read by extract, from the run's manifest.
fn rows_read(warehouse: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(warehouse.join("runs/latest.json")).expect("manifest");
    let m: serde_json::Value = serde_json::from_str(&text).expect("json");
    let sources = m["extract"].as_array().cloned().unwrap_or_default();
    let total = sources.iter().map(|s| s["rows_read"].as_u64().unwrap_or(0)).sum();
    let sales = sources
        .iter()
        .find(|s| s["source"] == "sales")
        .and_then(|s| s["rows_read"].as_u64())
        .unwrap_or(0);
    (sales, total)
}

fn print_row(label: &str, gen_s: Option<f64>, warehouse: &Path, run: &Measured) {
    let (sales, total) = rows_read(warehouse);
    let secs = run.elapsed.as_secs_f64();
    println!(
        "{label:<22} {sales:>12} {total:>12} {:>10} {secs:>9.2} {:>10.1} {:>12.0}",
        gen_s.map(|g| format!("{g:.2}")).unwrap_or_else(|| "-".into()),
        run.peak_rss_kib as f64 / 1024.0,
        total as f64 / secs
    );
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip_while(|a| a != "--customers")
        .nth(1)
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![210_000]);
    let scratch = tempfile::tempdir().expect("temp dir");
    println!(
        "{:<22} {:>12} {:>12} {:>10} {:>9} {:>10} {:>12}",
        "data set", "sales lines", "rows read", "gen s", "run s", "peak MiB", "rows/s"
    );

    let wh = scratch.path().join("fixtures-wh");
    let run = run_measured("run on fixtures", patron(&["run", "--warehouse", wh.to_str().unwrap()]));
    print_row("bundled fixtures", None, &wh, &run);

    for n in sizes {
        let data = scratch.path().join(format!("gen-{n}"));
        let generated = run_measured(
            "generate",
            patron(&[
                "generate",
                "--customers",
                &n.to_string(),
                "--seed",
                "7",
                "--out",
                data.to_str().unwrap(),
            ]),
        );
        let pipeline = data.join("pipeline.toml");
        let text = std::fs::read_to_string(repo().join("pipelines/default.toml"))
            .expect("default pipeline")
            .replace("root = \"..\"", &format!("root = \"{}\"", repo().display()))
            .replace("\"fixtures/", &format!("\"{}/", data.display()));
        std::fs::write(&pipeline, text).expect("write pipeline");
        let wh = data.join("wh");
        let run = run_measured(
            "run",
            patron(&[
                "run",
                "--pipeline",
                pipeline.to_str().unwrap(),
                "--out",
                wh.to_str().unwrap(),
            ]),
        );
        print_row(
            &format!("generated {n} cust."),
            Some(generated.elapsed.as_secs_f64()),
            &wh,
            &run,
        );
    }
}
