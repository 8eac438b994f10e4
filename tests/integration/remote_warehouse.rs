//! A warehouse in an S3-compatible object store: a real `moto` server on 127.0.0.1 holds
//! the Delta tables, the `runs` table, the manifests and the lock. The published tables
//! must equal a local run's, be readable by the `deltalake` Python package (a reader no one
//! here wrote), survive a store that fails now and then (retried with backoff), and the
//! lock must work by conditional put: a live lock stops a run, a stale one is taken over.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::remote_sources::pipeline_with;
use crate::support::*;

pub const BUCKET: &str = "lake";
pub const WAREHOUSE: &str = "s3://lake/prod";

/// Rows of `sql` on a warehouse, as NDJSON lines.
pub fn query(dir: &Path, pipeline: &Path, warehouse: &str, sql: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "query",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--warehouse",
        warehouse,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    args.push(sql);
    let out = patron_s3(dir, &args);
    assert_eq!(out.status.code(), Some(0), "{sql}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The keys under `prefix` in the bucket.
pub fn keys(moto: &Moto, prefix: &str) -> Vec<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import boto3\n\
                 s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
                 for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}', Prefix='{prefix}'):\n\
                 \x20   for o in page.get('Contents', []):\n\
                 \x20       print(o['Key'])\n",
                moto.endpoint
            ),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Writes `_lock.json` of the warehouse as another host's run with a heartbeat `age_ms` old.
fn plant_lock(moto: &Moto, run_id: &str, age_ms: i64) {
    moto.boto3(&format!(
        "import json, time\n\
         now = int(time.time() * 1000) - {age_ms}\n\
         owner = dict(run_id='{run_id}', host='another-host', pid=1, started='2026-11-29T00:00:00.000Z', \
         heartbeat='2026-11-29T00:00:00.000Z', heartbeat_unix_ms=now)\n\
         s3.put_object(Bucket='{BUCKET}', Key='prod/_lock.json', Body=json.dumps(owner).encode())\n"
    ));
}

/// An HTTP proxy on 127.0.0.1 in front of `upstream` answering every `every`-th request,
/// and the first attempt of every Delta commit (a PUT of `_delta_log/<version>.json`), with
/// 503 instead of forwarding it; it logs one line per refused request to `log`.
struct FlakyProxy {
    child: std::process::Child,
    endpoint: String,
}

impl FlakyProxy {
    fn start(upstream: &str, every: u32, log: &Path) -> FlakyProxy {
        let port = free_port();
        let upstream_port = upstream.rsplit(':').next().unwrap();
        let script = format!(
            r#"
import http.client, http.server, threading
count, lock, commits = 0, threading.Lock(), set()
log = open({log:?}, 'a')
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *args):
        pass
    def relay(self):
        global count
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length) if length else None
        with lock:
            count += 1
            refused = count % {every} == 0
            commit = self.command == 'PUT' and '/_delta_log/' in self.path and self.path.split('?')[0].endswith('.json')
            if commit and self.path not in commits:
                commits.add(self.path)
                refused = True
        if refused:
            log.write(f'{{self.command}} {{self.path}}\n'); log.flush()
            self.send_response(503); self.send_header('Content-Length', '0'); self.end_headers()
            return
        upstream = http.client.HTTPConnection('127.0.0.1', {upstream_port}, timeout=60)
        upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
        reply = upstream.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for k, v in reply.getheaders():
            if k.lower() not in ('transfer-encoding', 'content-length', 'connection', 'date', 'server'):
                self.send_header(k, v)
        length = reply.getheader('Content-Length') if self.command == 'HEAD' else str(len(data))
        self.send_header('Content-Length', length or '0')
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(data)
        upstream.close()
    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay
http.server.ThreadingHTTPServer(('127.0.0.1', {port}), Handler).serve_forever()
"#,
            log = log.to_str().unwrap()
        );
        let child = Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed().as_secs() < 30, "the proxy did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        FlakyProxy {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_warehouse_on_s3_publishes_delta_tables_equal_to_a_local_run_and_locks_by_conditional_put() {
    let moto = Moto::start();
    moto.boto3(&format!("s3.create_bucket(Bucket='{BUCKET}')\n"));
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_with(dir.path(), &[], &moto.storage_toml());
    let p = pipeline.to_str().unwrap();

    let first = patron_s3(dir.path(), &["run", "--pipeline", p, "--out", WAREHOUSE]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains(&format!("warehouse: {WAREHOUSE}")), "{stdout}");
    assert!(stdout.contains(&format!("manifest:  {WAREHOUSE}/runs/")), "{stdout}");

    // Everything lives in the bucket: tables with their logs, runs, manifests; no staging
    // folder and no lock left behind.
    let stored = keys(&moto, "prod/");
    for needed in [
        "prod/tables/customer_scores/_delta_log/00000000000000000000.json",
        "prod/raw/sales/_delta_log/00000000000000000000.json",
        "prod/runs/table/_delta_log/00000000000000000000.json",
        "prod/runs/latest.json",
    ] {
        assert!(stored.iter().any(|k| k == needed), "{needed} missing in {stored:?}");
    }
    assert!(
        !stored
            .iter()
            .any(|k| k.contains("_staging") || k.ends_with("_lock.json")),
        "{stored:?}"
    );

    // The same tables as a run into a local folder.
    let local = dir.path().join("local-wh");
    run_default(&local);
    let local_text = local.to_str().unwrap();
    for sql in [
        "SELECT * FROM fct_customer ORDER BY customer_id",
        "SELECT * FROM customer_scores ORDER BY customer_id",
        "SELECT line, column_name, raw_value, reason FROM quarantine_sales ORDER BY line, column_name",
    ] {
        let remote = query(dir.path(), &pipeline, WAREHOUSE, sql, &[]);
        assert!(!remote.is_empty(), "{sql}: no rows");
        assert_eq!(remote, query(dir.path(), &pipeline, local_text, sql, &[]), "{sql}");
    }

    // A reader no one here wrote: the deltalake Python package, straight from the bucket.
    let count = Command::new("python3")
        .args([
            "-c",
            &format!(
                "from deltalake import DeltaTable\n\
                 t = DeltaTable('{WAREHOUSE}/tables/customer_scores', storage_options=dict(AWS_ENDPOINT_URL='{}', \
                 AWS_ALLOW_HTTP='true', AWS_REGION='us-east-1', AWS_ACCESS_KEY_ID='test', AWS_SECRET_ACCESS_KEY='test'))\n\
                 print(t.version(), t.to_pyarrow_table().num_rows, flush=True)\n\
                 import os; os._exit(0)  # the package's runtime threads can abort a normal exit\n",
                moto.endpoint
            ),
        ])
        .output()
        .unwrap();
    assert!(count.status.success(), "{}", text(&count));
    let customers = query(
        dir.path(),
        &pipeline,
        WAREHOUSE,
        "SELECT COUNT(*) AS n FROM customer_scores",
        &[],
    );
    let n: serde_json::Value = serde_json::from_str(&customers[0]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        format!("0 {}", n["n"]),
        "deltalake reads version 0 with every customer"
    );

    // A live lock of another host stops the run (exit 4) naming the lock and its owner.
    plant_lock(&moto, "run-elsewhere", 0);
    let locked = patron_s3(dir.path(), &["run", "--pipeline", p, "--out", WAREHOUSE]);
    assert_eq!(locked.status.code(), Some(4), "{}", text(&locked));
    let message = text(&locked);
    assert!(
        message.contains(&format!("{WAREHOUSE}/_lock.json")) && message.contains("run-elsewhere"),
        "{message}"
    );
    // A stale one (heartbeat an hour old) is taken over by compare-and-swap; the rerun
    // publishes new versions with the same rows.
    plant_lock(&moto, "run-crashed", 3_600_000);
    let second = patron_s3(dir.path(), &["run", "--pipeline", p, "--out", WAREHOUSE]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("took over a stale warehouse lock: run run-crashed"),
        "{}",
        text(&second)
    );
    assert!(!keys(&moto, "prod/").iter().any(|k| k.ends_with("_lock.json")));
    let runs = patron_s3(
        dir.path(),
        &["runs", "--pipeline", p, "--warehouse", WAREHOUSE, "--format", "json"],
    );
    assert_eq!(runs.status.code(), Some(0), "{}", text(&runs));
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&runs.stdout).unwrap();
    let outcomes: Vec<&str> = runs.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["succeeded", "skipped", "succeeded"], "{runs:?}");
    let (v1, v2) = (
        &runs[0]["table_versions"]["tables/customer_scores"],
        &runs[2]["table_versions"]["tables/customer_scores"],
    );
    assert_eq!((v1.as_u64(), v2.as_u64()), (Some(0), Some(1)), "{runs:?}");
    // The rerun replaced the history's day in the bucket (a Delta replaceWhere commit): one
    // day, each customer once.
    let history = query(
        dir.path(),
        &pipeline,
        WAREHOUSE,
        "SELECT COUNT(*) AS n, COUNT(DISTINCT as_of) AS days FROM customer_scores_history",
        &[],
    );
    let history: serde_json::Value = serde_json::from_str(&history[0]).unwrap();
    assert_eq!((&history["n"], &history["days"]), (&n["n"], &serde_json::json!(1)));
    // Time travel reads the first run's versions; same rows, as the inputs did not change.
    let sql = "SELECT * FROM customer_scores ORDER BY customer_id";
    let first_id = runs[0]["run_id"].as_str().unwrap();
    assert_eq!(
        query(dir.path(), &pipeline, WAREHOUSE, sql, &["--as-of-run", first_id]),
        query(dir.path(), &pipeline, WAREHOUSE, sql, &[])
    );
}

#[test]
fn a_store_failing_now_and_then_is_retried_and_the_run_publishes_the_same_tables() {
    let moto = Moto::start();
    moto.boto3(&format!("s3.create_bucket(Bucket='{BUCKET}')\n"));
    let dir = tempfile::tempdir().unwrap();
    let refused = dir.path().join("refused.log");
    let proxy = FlakyProxy::start(&moto.endpoint, 7, &refused);
    let storage = format!(
        "\n[storage]\nmax_retries = 3\ninit_backoff_ms = 20\n\n[storage.s3]\nendpoint = \"{}\"\nallow_http = true\nregion = \"us-east-1\"\n",
        proxy.endpoint
    );
    let pipeline = pipeline_with(dir.path(), &[], &storage);
    let out = patron_s3(
        dir.path(),
        &["run", "--pipeline", pipeline.to_str().unwrap(), "--out", WAREHOUSE],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let refusals = std::fs::read_to_string(&refused).unwrap_or_default();
    // Every 7th request failed, and the first attempt of every Delta commit: each was
    // retried (the tables below are complete). 17 tables and the runs row: 18 commits.
    let commits = refusals
        .lines()
        .filter(|l| l.starts_with("PUT ") && l.contains("/_delta_log/") && l.ends_with(".json"))
        .count();
    assert!(commits >= 18, "{commits} commits refused: {refusals}");
    assert!(refusals.lines().count() > commits, "{refusals}");

    // Read back through moto directly: the same tables as a local run.
    let direct = pipeline_with(dir.path(), &[], &moto.storage_toml());
    let local = dir.path().join("local-wh");
    run_default(&local);
    for sql in [
        "SELECT * FROM customer_scores ORDER BY customer_id",
        "SELECT * FROM fct_customer ORDER BY customer_id",
    ] {
        assert_eq!(
            query(dir.path(), &direct, WAREHOUSE, sql, &[]),
            query(dir.path(), &direct, local.to_str().unwrap(), sql, &[]),
            "{sql}"
        );
    }

    // A store that fails every request: retried, then the run fails naming the warehouse.
    let (endpoint, requests) = crate::remote_sources::failing_server();
    let dead = format!(
        "\n[storage]\nmax_retries = 2\ninit_backoff_ms = 20\n\n[storage.s3]\nendpoint = \"{endpoint}\"\nallow_http = true\nregion = \"us-east-1\"\n"
    );
    let pipeline = pipeline_with(dir.path(), &[], &dead);
    let out = patron_s3(
        dir.path(),
        &["run", "--pipeline", pipeline.to_str().unwrap(), "--out", WAREHOUSE],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let message = text(&out);
    assert!(message.contains(&format!("{WAREHOUSE}/_lock.json")), "{message}");
    assert!(
        message.contains("503") || message.contains("Service Unavailable"),
        "{message}"
    );
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one try and two retries"
    );
}
