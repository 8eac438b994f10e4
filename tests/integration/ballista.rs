//! The same pipeline on Apache DataFusion Ballista: the default pipeline on the bundled
//! fixtures run (a) locally, (b) on an in-process standalone Ballista, (c) on a real
//! scheduler and two executors (`patron ballista-scheduler` / `ballista-executor`, separate
//! processes on 127.0.0.1 started and killed here) publishes the same tables. Killing an
//! executor in the middle of a run either fails the run cleanly, publishing nothing, or
//! Ballista reruns the lost work and the run publishes the same tables.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::support::*;

/// Compared tables: name, key to order by, columns (all but fit times, which vary).
const TABLES: [(&str, &str, &str); 10] = [
    ("stg_sales", "order_id, line_no", "*"),
    ("stg_service", "ticket_id", "*"),
    ("stg_marketing", "event_id", "*"),
    ("fct_customer", "customer_id", "*"),
    ("customer_model_input", "customer_id", "*"),
    (
        "model_params",
        "model, parameter",
        "model_version, model, parameter, value, log_likelihood, iterations, converged, customers, note",
    ),
    ("customer_values", "customer_id", "*"),
    ("customer_ranks", "customer_id", "*"),
    ("customer_scores", "customer_id", "*"),
    (
        "segment_migration",
        "segmentation, from_segment, to_segment, movement",
        "*",
    ),
];

/// Relative tolerance for doubles (aggregation order may differ between engines).
const REL_TOL: f64 = 1e-9;

/// One value: doubles as numbers, everything else as Arrow's text.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Float(f64),
    Text(String),
}

fn close(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Float(x), Cell::Float(y)) => {
            (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= REL_TOL * x.abs().max(y.abs())
        }
        _ => a == b,
    }
}

/// Every compared table of a warehouse: header and rows ordered by the key.
async fn tables(warehouse: &Path) -> BTreeMap<&'static str, (Vec<String>, Vec<Vec<Cell>>)> {
    let ctx = warehouse_session(warehouse).await;
    let mut out = BTreeMap::new();
    for (table, key, columns) in TABLES {
        let batches = collect(&ctx, &format!("SELECT {columns} FROM {table} ORDER BY {key}")).await;
        let mut header = Vec::new();
        let mut rows = Vec::new();
        for batch in &batches {
            header = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            let options = FormatOptions::default();
            let mut columns: Vec<Box<dyn Fn(usize) -> Cell>> = Vec::new();
            for col in batch.columns() {
                if matches!(col.data_type(), DataType::Float32 | DataType::Float64) {
                    let f = cast(col, &DataType::Float64).unwrap();
                    columns.push(Box::new(move |i| {
                        let f = f.as_any().downcast_ref::<Float64Array>().unwrap();
                        if f.is_null(i) {
                            Cell::Null
                        } else {
                            Cell::Float(f.value(i))
                        }
                    }));
                } else {
                    let col = col.clone();
                    let options = options.clone();
                    columns.push(Box::new(move |i| {
                        if col.is_null(i) {
                            Cell::Null
                        } else {
                            let fmt = ArrayFormatter::try_new(col.as_ref(), &options).unwrap();
                            Cell::Text(fmt.value(i).to_string())
                        }
                    }));
                }
            }
            for i in 0..batch.num_rows() {
                rows.push(columns.iter().map(|c| c(i)).collect());
            }
        }
        out.insert(table, (header, rows));
    }
    out
}

/// Asserts that two warehouses publish the same compared tables, row by row.
async fn assert_same_tables(expected: &Path, actual: &Path, what: &str) {
    let (want, got) = (tables(expected).await, tables(actual).await);
    for (table, (header, rows)) in &want {
        let (got_header, got_rows) = &got[table];
        assert_eq!(header, got_header, "{what}: {table} columns");
        assert!(!rows.is_empty(), "{table} has rows");
        assert_eq!(rows.len(), got_rows.len(), "{what}: {table} row count");
        for (n, (a, b)) in rows.iter().zip(got_rows).enumerate() {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    close(x, y),
                    "{what}: {table} row {n} column {}: {x:?} (local) vs {y:?}",
                    header[i]
                );
            }
        }
    }
}

/// Runs the default pipeline on the bundled fixtures into `warehouse` on `engine`, with
/// `TMPDIR` beside the warehouse: Ballista 55's standalone executor writes its shuffle
/// files under a temporary folder it never removes (one folder per job).
fn run_on(engine: &str, warehouse: &Path) -> std::process::Output {
    let tmp = warehouse.with_extension("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    patron_with_env(
        &repo(),
        &["run", "--engine", engine, "--out", warehouse.to_str().unwrap()],
        &[("TMPDIR", &tmp)],
    )
}

fn engine_of(warehouse: &Path) -> String {
    latest_manifest(warehouse)["settings"]["engine"]["engine"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn local_and_standalone_ballista_publish_the_same_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (local, standalone) = (dir.path().join("local"), dir.path().join("standalone"));
    let out = run_on("local", &local);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run_on("standalone", &standalone);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(engine_of(&local), "local");
    assert_eq!(engine_of(&standalone), "standalone");
    assert_same_tables(&local, &standalone, "standalone").await;
}

#[test]
fn a_bad_engine_is_a_usage_error_and_an_unreachable_scheduler_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_on("spark://x", &dir.path().join("wh"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("df://HOST:PORT"), "{}", text(&out));
    let port = free_port();
    let wh = dir.path().join("wh");
    let out = run_on(&format!("df://127.0.0.1:{port}"), &wh);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("cannot reach the Ballista scheduler at df://127.0.0.1:{port}")),
        "{}",
        text(&out)
    );
    assert!(!wh.join("runs/latest.json").exists(), "nothing published");
}

/// Child processes killed (SIGKILL) and reaped when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within 60s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Executors of a test cluster; their logs are `<name>.log`.
const EXECUTORS: [&str; 2] = ["executor-a", "executor-b"];

/// Starts `patron run` with `args` in `cwd`, with extra environment `env`, its stderr piped.
fn spawn_run(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_patron"))
        .arg("run")
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("patron starts")
}

/// Waits for `child` at most `limit`; past it, kills it and panics with `why()`.
fn wait_within(child: &mut Child, limit: Duration, why: impl Fn() -> String) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{}", why());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scheduler and the named executors of this build on 127.0.0.1; returns them and the
/// scheduler's `df://` address. Their logs go to files in `dir`.
fn start_cluster(dir: &Path, executors: &[&str]) -> (Processes, String) {
    let spawn = |args: &[String], log: &str| -> Child {
        let log = std::fs::File::create(dir.join(log)).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_patron"));
        // No cloud credentials or endpoints of their own: what executors read from an
        // object store they reach with what the client's session passes them.
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("AWS_")) {
            command.env_remove(name);
        }
        command
            .args(args)
            .env("RUST_LOG", "info,patron=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("patron starts")
    };
    let scheduler = free_port();
    let mut processes = Processes(vec![spawn(
        &[
            "ballista-scheduler".into(),
            "--bind".into(),
            format!("127.0.0.1:{scheduler}"),
            "--executor-timeout-secs".into(),
            "10".into(),
        ],
        "scheduler.log",
    )]);
    wait_for_port(scheduler, "the scheduler");
    let mut flight_ports = Vec::new();
    for name in executors {
        let (flight, grpc) = (free_port(), free_port());
        processes.0.push(spawn(
            &[
                "ballista-executor".into(),
                "--scheduler".into(),
                format!("127.0.0.1:{scheduler}"),
                "--bind".into(),
                format!("127.0.0.1:{flight}"),
                "--grpc-port".into(),
                grpc.to_string(),
                "--work-dir".into(),
                dir.join(name).to_string_lossy().into_owned(),
                "--slots".into(),
                "2".into(),
                "--heartbeat-secs".into(),
                "1".into(),
            ],
            &format!("{name}.log"),
        ));
        flight_ports.push(flight);
    }
    for port in flight_ports {
        wait_for_port(port, "an executor");
    }
    (processes, format!("df://127.0.0.1:{scheduler}"))
}

fn logs(dir: &Path) -> String {
    ["scheduler.log", "executor-a.log", "executor-b.log"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            format!(
                "--- {f} (last lines)\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Tasks an executor log reports as finished.
fn tasks_run(dir: &Path, executor: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{executor}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("task") && l.to_lowercase().contains("finish"))
        .count()
}

#[tokio::test]
async fn a_scheduler_and_two_executor_processes_publish_what_the_local_engine_does() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, engine) = start_cluster(dir.path(), &EXECUTORS);
    let (local, remote) = (dir.path().join("local"), dir.path().join("remote"));
    let out = run_on("local", &local);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run_on(&engine, &remote);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), logs(dir.path()));
    assert_eq!(engine_of(&remote), engine);
    assert_same_tables(&local, &remote, "cluster").await;
    for executor in EXECUTORS {
        assert!(
            tasks_run(dir.path(), executor) > 0,
            "{executor} ran no task\n{}",
            logs(dir.path())
        );
    }
    drop(cluster);
}

#[tokio::test]
async fn killing_an_executor_mid_run_publishes_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, engine) = start_cluster(dir.path(), &EXECUTORS);
    let (local, remote) = (dir.path().join("local"), dir.path().join("remote"));
    let out = run_on("local", &local);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run_on(&engine, &remote);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), logs(dir.path()));
    let versions = delta_versions(&remote);
    let manifest = std::fs::read_to_string(remote.join("runs/latest.json")).unwrap();
    let succeeded =
        |records: &[patron::publish::runs::RunRecord]| records.iter().filter(|r| r.outcome == "succeeded").count();
    let before = succeeded(&runs(&remote).await);

    // A second run pauses before fct_customer; executor A is killed during the pause.
    let mut run = spawn_run(
        &repo(),
        &["--engine", &engine, "--out", remote.to_str().unwrap()],
        &[
            ("RUST_LOG", "patron=warn"),
            (patron::failpoint::ENV, "pause:transform.before.fct_customer"),
        ],
    );
    let stderr = run.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut killed = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !killed && line.contains("pausing") {
                killed = true;
                let executor = &mut cluster.0[1];
                executor.kill().unwrap();
                executor.wait().unwrap();
            }
            seen.push(line);
        }
        (killed, seen.join("\n"), cluster)
    });
    let status = wait_within(&mut run, Duration::from_secs(600), || {
        "the run did not end within 600s after an executor was killed".into()
    });
    let (killed, stderr, cluster) = reader.join().unwrap();
    assert!(killed, "the run never paused:\n{stderr}");
    let records = runs(&remote).await;
    if status.success() {
        // Ballista reran the lost work: the run is complete and correct.
        assert_eq!(succeeded(&records), before + 1, "{stderr}");
        assert_same_tables(&local, &remote, "after an executor was lost").await;
    } else {
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert_eq!(succeeded(&records), before, "no new succeeded run:\n{stderr}");
        assert_eq!(delta_versions(&remote), versions, "no table changed");
        assert_eq!(
            std::fs::read_to_string(remote.join("runs/latest.json")).unwrap(),
            manifest,
            "the latest manifest is the previous run's"
        );
        assert_same_tables(&local, &remote, "the previous publish").await;
    }
    eprintln!(
        "executor killed mid-run: run {}",
        if status.success() {
            "succeeded (Ballista reran the lost tasks)"
        } else {
            "failed cleanly"
        }
    );
    drop(cluster);
}

#[test]
fn a_job_no_executor_can_run_times_out_is_cancelled_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, engine) = start_cluster(dir.path(), &[]);
    let pipeline = write_pipeline(dir.path(), &[]);
    let mut doc: toml::Table = std::fs::read_to_string(&pipeline).unwrap().parse().unwrap();
    let engine_table = doc.get_mut("engine").and_then(|e| e.as_table_mut()).unwrap();
    engine_table.insert("job_timeout_secs".into(), 3.into());
    std::fs::write(&pipeline, toml::to_string(&doc).unwrap()).unwrap();
    let warehouse = dir.path().join("wh");

    // Without the timeout the job would wait for an executor for ever.
    let mut run = spawn_run(
        dir.path(),
        &[
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--engine",
            &engine,
            "--out",
            warehouse.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = run.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = wait_within(&mut run, Duration::from_secs(120), || {
        format!(
            "the run did not end within 120s with a 3s job timeout\n{}",
            logs(dir.path())
        )
    });
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not finish within 3 s (engine.job_timeout_secs); it was cancelled on the scheduler"),
        "{stderr}"
    );
    let scheduler_log = std::fs::read_to_string(dir.path().join("scheduler.log")).unwrap();
    assert!(
        scheduler_log.contains("Received cancellation request for job"),
        "{}",
        logs(dir.path())
    );
    assert!(published_tables(&warehouse).is_empty(), "nothing published");
    assert!(
        !warehouse.join("runs/latest.json").exists(),
        "no manifest of a succeeded run"
    );
    drop(cluster);
}

#[test]
fn a_cluster_reads_a_runs_files_from_the_warehouse_store_with_the_credentials_the_session_passes() {
    use crate::remote_sources::pipeline_with;
    use crate::remote_warehouse::{BUCKET, WAREHOUSE, keys, query};
    let moto = Moto::start();
    moto.boto3(&format!("s3.create_bucket(Bucket='{BUCKET}')\n"));
    let dir = tempfile::tempdir().unwrap();
    let (cluster, engine) = start_cluster(dir.path(), &EXECUTORS);
    let pipeline = pipeline_with(dir.path(), &[], &moto.storage_toml());
    let p = pipeline.to_str().unwrap();

    let out = patron_s3(
        dir.path(),
        &["run", "--pipeline", p, "--out", WAREHOUSE, "--engine", &engine],
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), logs(dir.path()));
    // The executors (started without credentials) built the warehouse's store from the
    // session's options and ran the queries; the run's copy of its files is gone.
    for executor in EXECUTORS {
        let log = std::fs::read_to_string(dir.path().join(format!("{executor}.log"))).unwrap();
        assert!(
            log.contains(&format!("store=s3://{BUCKET}")) && log.contains("patron_store"),
            "{executor} never reached the store\n{}",
            logs(dir.path())
        );
        assert!(tasks_run(dir.path(), executor) > 0, "{executor} ran no task");
    }
    let left = keys(&moto, "prod/_staging");
    assert!(left.is_empty(), "{left:?}");

    // The same tables as the local engine publishes into a folder.
    let local = dir.path().join("local-wh");
    run_default(&local);
    for sql in [
        // Doubles rounded: sums may add up in another order on the cluster.
        "SELECT customer_id, orders, order_lines, ROUND(revenue, 6) AS revenue, tickets, marketing_sent \
         FROM fct_customer ORDER BY customer_id",
        "SELECT customer_id, rfm_segment, churn_band, value_tier, lifecycle_stage, ROUND(p_alive, 6) AS p_alive, \
         ROUND(clv, 4) AS clv FROM customer_scores ORDER BY customer_id",
        "SELECT line, column_name, raw_value, reason FROM quarantine_sales ORDER BY line, column_name",
    ] {
        let remote = query(dir.path(), &pipeline, WAREHOUSE, sql, &[]);
        assert!(!remote.is_empty(), "{sql}: no rows");
        assert_eq!(
            remote,
            query(dir.path(), &pipeline, local.to_str().unwrap(), sql, &[]),
            "{sql}"
        );
    }
    drop(cluster);
}
