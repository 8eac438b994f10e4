//! Extract speed: DataFusion CSV scans vs patron's extract on the same generated sales
//! export, MB/s of input and the ratios, in one run. Figures only; no assertion.
//!
//! ```sh
//! cargo bench --bench extract                          # 400k customers, ~1.9M order lines
//! cargo bench --bench extract -- --customers 100000
//! ```
//!
//! Every figure produces typed Arrow columns of every field and says how many threads it
//! ran on (N = the machine's cores):
//! - `datafusion scan`: `read_csv` with the declared Arrow schema, every batch pulled, with
//!   one target partition, then with N (DataFusion splits the files into byte ranges);
//! - `patron read+validate`: patron's CSV reader and column-wise validation, no output, one thread;
//! - `datafusion scan + parquet`: the one-partition scan, written with patron's Parquet writer;
//! - `patron extract`: `extract_source`, the whole thing (raw and quarantine Parquet), on
//!   one thread, then on N.
//!
//! Each figure has its wall time and the CPU time of all the process's threads meanwhile:
//! on a machine shared with other work, the wall time of a parallel figure depends on the
//! cores left to it, the CPU time shows what its threads cost.
//!
//! The data is generated with `--clean` because DataFusion's scan fails on the first
//! malformed row; patron's figures on the messy export are printed too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use datafusion::prelude::{CsvReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use patron::config::{Overrides, Plan};
use patron::extract::reader::{CsvReader, ExportReader};
use patron::extract::{LocalInput, validate};
use patron::storage::ParquetSink;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate(out: &Path, customers: u64, clean: bool) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patron"));
    cmd.args([
        "generate",
        "--customers",
        &customers.to_string(),
        "--seed",
        "42",
        "--out",
    ])
    .arg(out)
    .current_dir(repo())
    .env("RUST_LOG", "patron=warn");
    if clean {
        cmd.arg("--clean");
    }
    cmd.stdout(std::process::Stdio::null());
    let status = cmd.status().expect("patron generate starts");
    assert!(status.success(), "patron generate failed");
}

/// The sales source of a pipeline reading `data/sales/*.csv` with the bundled schema.
fn sales_source(dir: &Path, data: &Path) -> patron::config::SourcePlan {
    let pipeline = dir.join("bench.toml");
    let text = format!(
        "name = \"bench\"\nroot = \".\"\n[run]\nas_of = \"2026-01-01\"\nerror_budget = 1.0\n\
         [[sources]]\nname = \"sales\"\nlocation = {:?}\nschema = {:?}\n[transform]\nsql_dir = {:?}\n",
        data.join("sales/*.csv").display().to_string(),
        repo().join("schemas/sales.schema.json").display().to_string(),
        repo().join("sql").display().to_string(),
    );
    std::fs::write(&pipeline, text).expect("write pipeline");
    let plan = Plan::load(&pipeline, &Overrides::default()).expect("bench pipeline loads");
    plan.sources.into_iter().next().expect("one source")
}

fn files(data: &Path) -> Vec<LocalInput> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(data.join("sales"))
        .expect("sales folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| LocalInput::local(p).expect("input file"))
        .collect()
}

struct Figure {
    label: String,
    threads: usize,
    /// Wall time.
    secs: f64,
    /// CPU time of every thread of the process.
    cpu: f64,
    rows: u64,
}

/// CPU seconds the process has used so far, all threads: `utime` + `stime` of
/// `/proc/self/stat` (Linux, in ticks of 1/100 s); 0 elsewhere.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name (in parentheses, maybe with spaces) come the fields from the
    // 3rd on: utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// Wall and CPU time from a start.
struct Clock {
    wall: Instant,
    cpu: f64,
}

impl Clock {
    fn start() -> Self {
        Clock {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    fn figure(&self, label: &str, threads: usize, rows: u64) -> Figure {
        Figure {
            label: label.into(),
            threads,
            secs: self.wall.elapsed().as_secs_f64(),
            cpu: cpu_seconds() - self.cpu,
            rows,
        }
    }
}

fn timed(label: &str, threads: usize, f: impl FnOnce() -> u64) -> Figure {
    let clock = Clock::start();
    let rows = f();
    clock.figure(label, threads, rows)
}

async fn datafusion_scan(
    source: &patron::config::SourcePlan,
    inputs: &[LocalInput],
    partitions: usize,
    out: Option<&Path>,
) -> u64 {
    let config = SessionConfig::new()
        .with_target_partitions(partitions)
        .with_batch_size(8192);
    let ctx = SessionContext::new_with_config(config);
    let schema = source.schema.arrow_schema();
    let options = CsvReadOptions::new().has_header(true).schema(&schema);
    let paths: Vec<String> = inputs.iter().map(|f| f.path.display().to_string()).collect();
    let df = ctx.read_csv(paths, options).await.expect("read_csv");
    let mut stream = df.execute_stream().await.expect("scan");
    let mut sink = out.map(|p| ParquetSink::create(p, std::sync::Arc::clone(&schema)).expect("sink"));
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.expect("DataFusion scan (the clean export must parse)");
        rows += batch.num_rows() as u64;
        if let Some(s) = sink.as_mut() {
            s.write(&batch).expect("write");
        }
    }
    if let Some(s) = sink {
        s.close().expect("close");
    }
    rows
}

fn read_and_validate(source: &patron::config::SourcePlan, inputs: &[LocalInput]) -> u64 {
    let raw = validate::raw_schema(&source.schema);
    let mut rows = 0u64;
    for f in inputs {
        let file = std::fs::File::open(&f.path).expect("open");
        let mut reader =
            CsvReader::new(Box::new(file), &f.name, &source.schema, source.delimiter, 8192).expect("header");
        while let Some(batch) = reader.next_batch().expect("read") {
            let checked = validate::validate(&source.schema, &raw, &batch, &f.name);
            rows += checked.good.num_rows() as u64;
        }
    }
    rows
}

fn extract(source: &patron::config::SourcePlan, inputs: &[LocalInput], dir: &Path, threads: usize) -> u64 {
    let (raw, quarantine) = (dir.join("raw"), dir.join("quarantine"));
    let m =
        patron::extract::extract_source(source, inputs, "bench", &raw, &quarantine, 8192, threads).expect("extract");
    let _ = std::fs::remove_dir_all(dir);
    m.rows_loaded
}

/// Prints the figures; `bases` (label and seconds of the scans) give the ratio columns.
fn report(title: &str, bytes: u64, bases: &[(&str, f64)], figures: &[Figure]) {
    println!("\n{title}: {:.1} MB of CSV", bytes as f64 / 1e6);
    print!(
        "{:<28} {:>7} {:>9} {:>9} {:>8} {:>8}",
        "method", "threads", "rows out", "seconds", "cpu s", "MB/s"
    );
    for (label, _) in bases {
        print!(" {label:>14}");
    }
    println!();
    for f in figures {
        print!(
            "{:<28} {:>7} {:>9} {:>9.3} {:>8.2} {:>8.1}",
            f.label,
            f.threads,
            f.rows,
            f.secs,
            f.cpu,
            bytes as f64 / 1e6 / f.secs
        );
        for (_, base) in bases {
            print!(" {:>14}", format!("{:.0}%", 100.0 * base / f.secs));
        }
        println!();
    }
}

// Multi-threaded, so the N-partition scan runs its partitions in parallel.
#[tokio::main]
async fn main() {
    let customers: u64 = std::env::args()
        .skip_while(|a| a != "--customers")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(400_000);
    let cores = patron::extract::default_threads();
    let scratch = tempfile::tempdir().expect("temp dir");
    let clean = scratch.path().join("clean");
    generate(&clean, customers, true);
    let source = sales_source(scratch.path(), &clean);
    let inputs = files(&clean);
    let bytes: u64 = inputs.iter().map(|f| f.size).sum();

    // Warm the page cache so the first measurement does not pay for the disk.
    let _ = read_and_validate(&source, &inputs);
    let mut figures = Vec::new();
    for partitions in [1, cores] {
        let clock = Clock::start();
        let rows = datafusion_scan(&source, &inputs, partitions, None).await;
        figures.push(clock.figure("datafusion scan", partitions, rows));
    }
    figures.push(timed("patron read+validate", 1, || read_and_validate(&source, &inputs)));
    let out = scratch.path().join("df.parquet");
    let clock = Clock::start();
    let rows = datafusion_scan(&source, &inputs, 1, Some(&out)).await;
    figures.push(clock.figure("datafusion scan + parquet", 1, rows));
    let _ = std::fs::remove_file(&out);
    let dir = scratch.path().join("extract-clean");
    for threads in [1, cores] {
        figures.push(timed("patron extract (parquet)", threads, || {
            extract(&source, &inputs, &dir, threads)
        }));
    }
    let scan_n = format!("vs scan({cores})");
    let bases = [("vs scan(1)", figures[0].secs), (scan_n.as_str(), figures[1].secs)];
    report(
        &format!("clean sales export, {customers} customers, {cores} cores"),
        bytes,
        &bases,
        &figures,
    );
    println!(
        "(vs scan(n): the n-partition DataFusion scan's time / the method's time; 100% = as fast as that scan; \
         cpu s: CPU time of all the process's threads)"
    );
    std::fs::remove_dir_all(&clean).ok();

    let messy = scratch.path().join("messy");
    generate(&messy, customers, false);
    let source = sales_source(scratch.path(), &messy);
    let inputs = files(&messy);
    let bytes: u64 = inputs.iter().map(|f| f.size).sum();
    let _ = read_and_validate(&source, &inputs);
    let mut messy_figures = vec![timed("patron read+validate", 1, || read_and_validate(&source, &inputs))];
    let dir = scratch.path().join("extract-messy");
    for threads in [1, cores] {
        messy_figures.push(timed("patron extract (parquet)", threads, || {
            extract(&source, &inputs, &dir, threads)
        }));
    }
    report(
        &format!("messy sales export, {customers} customers (DataFusion's scan fails on it)"),
        bytes,
        &[],
        &messy_figures,
    );
}
