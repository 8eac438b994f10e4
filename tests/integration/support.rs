//! Shared helpers: run the binary, query Parquet output with DataFusion, read manifests.

use patron::warehouse::Warehouse;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Float64Array, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

/// The repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `patron` with `args` in `cwd`.
pub fn patron(cwd: &Path, args: &[&str]) -> Output {
    patron_with_env(cwd, args, &[])
}

/// [`patron`] with extra environment variables.
pub fn patron_with_env(cwd: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patron"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "patron=warn")
        .envs(env.iter().copied())
        .output()
        .expect("patron binary starts")
}

/// Runs `patron run --pipeline <pipeline> --out <dir>/wh <extra...>` in `dir`.
pub fn run_pipeline(dir: &Path, pipeline: &Path, extra: &[&str]) -> Output {
    let out = dir.join("wh");
    let mut args = vec![
        "run",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--warehouse",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    patron(dir, &args)
}

/// stdout + stderr as text, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the default pipeline on the bundled fixtures into `warehouse`; panics unless exit 0.
pub fn run_default(warehouse: &Path) -> Output {
    // `--out`, the hidden alias of `--warehouse` kept for one release, so it stays tested.
    let out = patron(&repo(), &["run", "--out", warehouse.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    out
}

/// The latest successful manifest of a warehouse.
pub fn latest_manifest(warehouse: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(warehouse.join("runs/latest.json")).expect("latest manifest exists");
    serde_json::from_str(&text).expect("manifest is JSON")
}

/// A session with every published table and raw/quarantine table registered: Delta
/// tables at their latest version, plain Parquet folders as they are.
pub async fn warehouse_session(warehouse: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    for (location, name) in published_tables(warehouse) {
        let path = warehouse.join(&location);
        if path.join("_delta_log").is_dir() {
            patron::publish::delta::register(&ctx, &name, &Warehouse::local(&path), "", None)
                .await
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
        } else {
            ctx.register_parquet(&name, path.to_str().unwrap(), ParquetReadOptions::default())
                .await
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
        }
    }
    ctx
}

/// Every published table of a warehouse: (location relative to it, SQL name).
pub fn published_tables(warehouse: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if warehouse.join("duplicates").is_dir() {
        out.push(("duplicates".to_string(), "duplicates".to_string()));
    }
    for (kind, prefix) in [("tables", ""), ("raw", "raw_"), ("quarantine", "quarantine_")] {
        let Ok(entries) = std::fs::read_dir(warehouse.join(kind)) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            out.push((format!("{kind}/{file}"), format!("{prefix}{file}")));
        }
    }
    out.sort();
    out
}

/// The latest committed version of the Delta table in `table` (the highest numbered
/// commit file in `_delta_log/`), read from the files as any Delta reader would.
#[allow(dead_code)]
pub fn delta_version(table: &Path) -> Option<i64> {
    std::fs::read_dir(table.join("_delta_log"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json")?.parse::<i64>().ok()
        })
        .max()
}

/// Latest Delta version of every published table, keyed by location.
#[allow(dead_code)]
pub fn delta_versions(warehouse: &Path) -> std::collections::BTreeMap<String, Option<i64>> {
    published_tables(warehouse)
        .into_iter()
        .map(|(location, _)| {
            let v = delta_version(&warehouse.join(&location));
            (location, v)
        })
        .collect()
}

/// Runs a query and collects its batches, panicking with the query on any error.
pub async fn collect(ctx: &SessionContext, sql: &str) -> Vec<datafusion::arrow::record_batch::RecordBatch> {
    ctx.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every row of a query as text lines (each value formatted by Arrow), in result order.
#[allow(dead_code)]
pub async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = collect(ctx, sql).await;
    let mut out = Vec::new();
    for b in &batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| {
                datafusion::arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default()).unwrap()
            })
            .collect();
        for r in 0..b.num_rows() {
            let line: Vec<String> = formatters.iter().map(|f| f.value(r).to_string()).collect();
            out.push(line.join("|"));
        }
    }
    out
}

/// The runs recorded in a warehouse's `runs` table, oldest first.
#[allow(dead_code)]
pub async fn runs(warehouse: &Path) -> Vec<patron::publish::runs::RunRecord> {
    patron::publish::runs::read_all(&Warehouse::local(warehouse))
        .await
        .expect("runs table readable")
}

/// Runs a query returning one row and one numeric column, as f64 (NULL as NaN).
pub async fn scalar(ctx: &SessionContext, sql: &str) -> f64 {
    let batches = collect(ctx, sql).await;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .unwrap_or_else(|| panic!("{sql}: no rows"));
    let col = cast(batch.column(0), &DataType::Float64).unwrap();
    let col = col.as_any().downcast_ref::<Float64Array>().unwrap();
    if col.is_null(0) { f64::NAN } else { col.value(0) }
}

/// Runs a query returning one integer column of any number of rows.
#[allow(dead_code)]
pub async fn ints(ctx: &SessionContext, sql: &str) -> Vec<i64> {
    let batches = collect(ctx, sql).await;
    let mut out = Vec::new();
    for b in batches {
        let col = cast(b.column(0), &DataType::Int64).unwrap();
        let col = col.as_any().downcast_ref::<Int64Array>().unwrap();
        out.extend(col.iter().map(|v| v.unwrap_or(i64::MIN)));
    }
    out
}

/// Data records in a fixture file: CSV lines after the header, non-blank NDJSON lines.
pub fn data_lines(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    if path.extension().is_some_and(|e| e == "csv") {
        lines - 1
    } else {
        lines
    }
}

/// A copy of the project's pipeline, schemas and SQL (not fixtures) in a scratch folder,
/// with the fixtures referenced from the repository; returns the pipeline path.
pub fn scratch_project(dir: &Path) -> PathBuf {
    copy_dir(&repo().join("sql"), &dir.join("sql"));
    copy_dir(&repo().join("schemas"), &dir.join("schemas"));
    let text = std::fs::read_to_string(repo().join("pipelines/default.toml"))
        .unwrap()
        .replace("\"fixtures/", &format!("\"{}/fixtures/", repo().display()));
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    let p = dir.join("pipelines/default.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Recursive copy.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Header of the sales export, from the declared schema's field order.
pub const SALES_HEADER: &str = "order_id,line_no,customer_id,order_ts,channel,category,quantity,unit_price,discount,unit_cost,currency,referred_by";

/// A scratch project whose three sources read the given export texts (written to
/// `dir/exports/`); service and marketing are empty exports when `None`. Returns the
/// pipeline path.
pub fn project_with_exports(
    dir: &Path,
    sales_csv: &str,
    service_csv: Option<&str>,
    marketing_ndjson: Option<&str>,
) -> PathBuf {
    let p = scratch_project(dir);
    let exports = dir.join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    std::fs::write(exports.join("sales.csv"), sales_csv).unwrap();
    let service_header = "ticket_id,customer_id,opened_at,closed_at,category,status,csat,handling_cost\n";
    std::fs::write(exports.join("service.csv"), service_csv.unwrap_or(service_header)).unwrap();
    std::fs::write(exports.join("marketing.ndjson"), marketing_ndjson.unwrap_or("")).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let fixtures = format!("\"{}/fixtures/", repo().display());
    let text = text
        .replace(
            &format!("{fixtures}sales/*.csv\""),
            &format!("\"{}\"", exports.join("sales.csv").display()),
        )
        .replace(
            &format!("{fixtures}service/*.csv\""),
            &format!("\"{}\"", exports.join("service.csv").display()),
        )
        .replace(
            &format!("{fixtures}marketing/*.ndjson\""),
            &format!("\"{}\"", exports.join("marketing.ndjson").display()),
        );
    assert!(!text.contains("/fixtures/"), "every source was redirected");
    std::fs::write(&p, text).unwrap();
    p
}

/// Writes a copy of `pipelines/default.toml` into `dir` with `root` set to the repository
/// (so `schemas/` and `sql/` resolve) and each named source read from the given location.
/// Returns the path of the new pipeline file.
pub fn write_pipeline(dir: &Path, locations: &[(&str, String)]) -> PathBuf {
    let default = repo().join("pipelines/default.toml");
    let text = std::fs::read_to_string(&default).unwrap_or_else(|e| panic!("cannot read {}: {e}", default.display()));
    let mut doc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", default.display()));
    doc.insert("root".into(), repo().display().to_string().into());
    let sources = doc
        .get_mut("sources")
        .and_then(|s| s.as_array_mut())
        .expect("the default pipeline has [[sources]]");
    for (name, location) in locations {
        let source = sources
            .iter_mut()
            .filter_map(|s| s.as_table_mut())
            .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(*name))
            .unwrap_or_else(|| panic!("the default pipeline has no source `{name}`"));
        source.insert("location".into(), location.clone().into());
    }
    let path = dir.join("pipeline.toml");
    let text = toml::to_string(&doc).expect("pipeline serialises");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// The pipeline at `pipeline` with `<table>.<key>` set (the table made if missing),
/// written next to it as `pipeline-<key>-<value>.toml`.
pub fn with_setting(pipeline: &Path, table: &str, key: &str, value: toml::Value) -> PathBuf {
    let text = std::fs::read_to_string(pipeline).unwrap();
    let mut doc: toml::Table = text.parse().unwrap();
    doc.entry(table)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap_or_else(|| panic!("[{table}] is not a table"))
        .insert(key.into(), value.clone());
    let path = pipeline.with_file_name(format!("pipeline-{key}-{value}.toml"));
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

/// Opens `page` in headless chromium (installed by .ci/run) at `width`x`height` with one
/// more flag (`--screenshot=FILE` or `--dump-dom`), in a fresh profile, with the flags that
/// keep it off the network; returns its output.
#[allow(dead_code)]
pub fn chromium(page: &Path, (width, height): (u32, u32), mode: &str) -> Output {
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("chromium is installed by .ci/run (apt-get install chromium)");
    let profile = tempfile::tempdir().unwrap();
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

/// An `#rrggbb` colour as RGB bytes.
#[allow(dead_code)]
pub fn hex(colour: &str) -> [u8; 3] {
    let v = u32::from_str_radix(colour.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// The (width, height) of a PNG screenshot and how many of its pixels have colour `rgb`.
#[allow(dead_code)]
pub fn count_colour(png_path: &Path, rgb: [u8; 3]) -> ((u32, u32), usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let count = buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|px| px[..3] == rgb)
        .count();
    ((info.width, info.height), count)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[allow(dead_code)]
/// A moto S3 server on 127.0.0.1, killed on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server starts (installed by .ci/run)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Runs a boto3 script against this server (`s3` is the client, `bucket` the name).
    pub fn boto3(&self, script: &str) {
        let prelude = format!(
            "import boto3, bz2, gzip, lzma, pathlib\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='test', aws_secret_access_key='test')\n\
             bucket = 'exports'\n",
            self.endpoint
        );
        let out = Command::new("python3")
            .args(["-c", &format!("{prelude}{script}")])
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "boto3 script failed: {}", text(&out));
    }

    /// `[storage]` settings reaching this server.
    pub fn storage_toml(&self) -> String {
        format!(
            "\n[storage]\nmax_retries = 2\ninit_backoff_ms = 20\n\n[storage.s3]\nendpoint = \"{}\"\nallow_http = true\nregion = \"us-east-1\"\n",
            self.endpoint
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Credentials for the object_store builders a test uses directly: set once for the whole
/// test binary (every test here uses the same fake ones).
pub fn set_test_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once, before any store reads them; every test uses the same values.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        }
    });
}

#[allow(dead_code)]
/// `patron ARGS` in `dir` with test credentials in the environment.
pub fn patron_s3(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patron"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "patron=warn")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("patron starts")
}

#[allow(dead_code)]
/// Generates `customers` customers with `seed` into `dir/data` and returns a pipeline
/// reading them.
pub fn generated_pipeline(dir: &Path, customers: &str, seed: &str) -> std::path::PathBuf {
    let data = dir.join("data");
    let out = patron(
        dir,
        &[
            "generate",
            "--customers",
            customers,
            "--seed",
            seed,
            "--out",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    write_pipeline(
        dir,
        &[
            ("sales", format!("{}/sales/*.csv", data.display())),
            ("service", format!("{}/service/*.csv", data.display())),
            ("marketing", format!("{}/marketing/*.ndjson", data.display())),
        ],
    )
}
