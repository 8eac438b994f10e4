//! `patron schedule` and `patron run` under external schedulers, through the real binary:
//! a per-second cron and bounded waits instead of real minutes. The daemon's JSON log
//! lines are what the tests follow; a webhook server on 127.0.0.1 started here receives
//! the alert; the warehouse is checked with the same readers as the crash tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::crash::{consistent_snapshot, table_rows};
use crate::support::*;

/// Longest wait for anything a run does (a debug-build run of the fixtures takes ~10 s;
/// tests run side by side on few cores).
const PATIENCE: Duration = Duration::from_secs(240);

/// A pipeline over the bundled fixtures publishing into `dir/wh`, with `schedule` (TOML
/// key-value lines) as its `[schedule]` section.
fn scheduled_pipeline(dir: &Path, name: &str, schedule: &str) -> PathBuf {
    let path = write_pipeline(dir, &[]);
    let mut doc: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    doc.insert("name".into(), name.into());
    let run = doc.get_mut("run").and_then(|r| r.as_table_mut()).expect("[run]");
    run.insert("warehouse".into(), dir.join("wh").display().to_string().into());
    let schedule: toml::Table = schedule.parse().expect("schedule TOML");
    doc.insert("schedule".into(), schedule.into());
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

/// A running `patron schedule`, its JSON log lines collected as they come.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    stderr: std::thread::JoinHandle<String>,
}

impl Daemon {
    fn start(pipeline: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patron"));
        cmd.args([
            "schedule",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "patron=warn")
        .env_remove(patron::failpoint::ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("patron schedule starts");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for the first line with `event` (seen before or coming) matching `pred`.
    fn wait_for(&mut self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let matches = |v: &Value| v["event"] == event && pred(v);
        if let Some(v) = self.seen.iter().find(|v| matches(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if matches(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no `{event}` line within {PATIENCE:?}; lines so far:\n{}", self.log()),
            }
        }
    }

    /// Every line seen so far with `event`.
    fn events(&self, event: &str) -> Vec<&Value> {
        self.seen.iter().filter(|v| v["event"] == event).collect()
    }

    fn log(&self) -> String {
        self.seen.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
    }

    /// The health endpoint's address, from the `daemon_started` line.
    fn listen(&mut self) -> String {
        self.wait_for("daemon_started", |_| true)["listen"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Sends SIGTERM and waits (bounded) for the daemon to exit; collects the rest of its
    /// lines.
    fn terminate(mut self) -> (ExitStatus, Vec<Value>, String) {
        // SAFETY: kill(2) on the daemon we started.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the daemon did not stop within {PATIENCE:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(v);
        }
        let stderr = self.stderr.join().unwrap_or_default();
        (status, self.seen, stderr)
    }
}

/// `GET path` from the health endpoint: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// A webhook receiver on 127.0.0.1: every POST body, answered 200.
fn webhook_server() -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
            assert!(request_line.starts_with("POST /alerts "), "{request_line}");
            if tx.send(serde_json::from_slice(&body).expect("a JSON body")).is_err() {
                break;
            }
        }
    });
    (url, rx)
}

/// A metric's value for the given label set (`name{labels} value`).
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_due_run_publishes_overlapping_slots_are_skipped_and_metrics_show_it() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scheduled_pipeline(dir.path(), "every_second", "cron = \"* * * * * *\"\n");
    let wh = dir.path().join("wh");
    let mut daemon = Daemon::start(&pipeline, &[]);
    let addr = daemon.listen();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let started = daemon.wait_for("attempt_started", |_| true);
    let done = daemon.wait_for("run_succeeded", |_| true);
    assert_eq!(done["run_id"], started["run_id"]);
    assert_eq!(done["attempt"], 1);
    assert!(done["rows"].as_u64().unwrap() > 0, "{done}");
    // The run takes seconds and a slot comes every second: the slots meanwhile were skipped.
    let overlap = daemon.wait_for("slot_skipped", |v| v["reason"] == "overlap");
    assert_eq!(overlap["pipeline"], "every_second");

    let (status, metrics) = http_get(&addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    let last_success = metric(
        &metrics,
        "patron_schedule_last_success_timestamp_seconds{pipeline=\"every_second\"}",
    )
    .unwrap_or_else(|| panic!("no last success in\n{metrics}"));
    assert!((last_success - chrono::Utc::now().timestamp() as f64).abs() < 600.0);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(wh.join(format!("runs/{}.json", done["run_id"].as_str().unwrap()))).unwrap(),
    )
    .unwrap();
    let scores = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "customer_scores")
        .unwrap()["rows"]
        .as_f64()
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "patron_schedule_last_success_rows{pipeline=\"every_second\",table=\"customer_scores\"}"
        ),
        Some(scores)
    );
    assert!(
        metric(
            &metrics,
            "patron_schedule_run_duration_seconds_count{pipeline=\"every_second\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "patron_schedule_skipped_total{pipeline=\"every_second\",reason=\"overlap\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    let (status, health) = http_get(&addr, "/healthz");
    assert!(status.contains("200"), "{status}");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["pipelines"][0]["pipeline"], "every_second");
    assert!(http_get(&addr, "/nope").0.contains("404"));

    let (status, lines, stderr) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(lines.iter().any(|v| v["event"] == "daemon_stopped"));
    assert!(!wh.join("_lock.json").exists(), "no lock left behind");
    let recorded = runs(&wh).await;
    let succeeded: Vec<_> = recorded.iter().filter(|r| r.outcome == "succeeded").collect();
    assert_eq!(succeeded[0].run_id, done["run_id"].as_str().unwrap());
    let overlap_row = recorded
        .iter()
        .find(|r| r.run_id == overlap["run_id"].as_str().unwrap())
        .expect("the skipped slot is recorded");
    assert_eq!(overlap_row.outcome, "skipped");
    assert!(overlap_row.error.as_deref().unwrap().contains("still going"));
    // A run the shutdown interrupted is recorded as failed, aborted, never as succeeded.
    for r in recorded.iter().filter(|r| r.outcome == "failed") {
        assert!(r.error.as_deref().unwrap().contains("aborted"), "{r:?}");
    }
    // Every line is a JSON object with a time stamp and a level.
    for v in &lines {
        assert!(v["ts"].is_string() && v["level"].is_string(), "{v}");
    }
}

#[tokio::test]
async fn a_failing_run_is_retried_with_backoff_then_alerts_the_webhook_and_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let (url, alerts) = webhook_server();
    let command_out = dir.path().join("alert.json");
    let pipeline = scheduled_pipeline(
        dir.path(),
        "failing",
        &format!(
            "cron = \"* * * * * *\"\nretries = 2\nbackoff_secs = 0.5\njitter = 0.0\n\
             [alert]\nwebhook = \"{url}\"\ncommand = \"{{ cat; echo; echo \\\"$PATRON_RUN_ID\\\"; }} > '{}'\"\n",
            command_out.display()
        ),
    );
    let wh = dir.path().join("wh");
    // Every attempt fails writing its first table, as on a full disk (exit code 1).
    let mut daemon = Daemon::start(&pipeline, &[(patron::failpoint::ENV, "publish.write_error")]);
    let failed = daemon.wait_for("run_failed", |_| true);
    assert_eq!(failed["attempt"], 3);
    let retries: Vec<(u64, u64)> = daemon
        .events("attempt_failed")
        .iter()
        .map(|v| (v["attempt"].as_u64().unwrap(), v["retry_in_ms"].as_u64().unwrap()))
        .collect();
    assert_eq!(retries, [(1, 500), (2, 1000)], "backoff doubles (no jitter)");
    let attempt_ids: Vec<String> = daemon
        .events("attempt_started")
        .iter()
        .take(3)
        .map(|v| v["run_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(attempt_ids.len(), 3);
    assert_eq!(failed["run_id"], attempt_ids[2].as_str());

    let alert = alerts.recv_timeout(PATIENCE).expect("the webhook is called");
    assert_eq!(alert["pipeline"], "failing");
    assert_eq!(alert["run_id"], attempt_ids[2].as_str());
    assert_eq!(alert["attempts"], 3);
    assert_eq!(alert["exit_code"], 1);
    assert!(
        alert["error"].as_str().unwrap().contains("no space left on device"),
        "{alert}"
    );
    let tail = alert["log_tail"].as_array().unwrap();
    assert!(
        tail.iter().any(|l| l.as_str().unwrap().contains("run failed")),
        "{alert}"
    );
    daemon.wait_for("alert_sent", |v| v["channel"] == "webhook");
    daemon.wait_for("alert_sent", |v| v["channel"] == "command");
    let written = std::fs::read_to_string(&command_out).unwrap();
    let (json, run_id) = written.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(run_id, attempt_ids[2]);
    let from_command: Value = serde_json::from_str(json).unwrap();
    assert_eq!(from_command["run_id"], alert["run_id"]);

    let (status, _, stderr) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Each attempt recorded itself as failed; nothing was published.
    let recorded = runs(&wh).await;
    for id in &attempt_ids {
        let r = recorded.iter().find(|r| &r.run_id == id).expect("attempt recorded");
        assert_eq!(r.outcome, "failed");
    }
    assert!(recorded.iter().all(|r| r.outcome != "succeeded"));
    assert!(!wh.join("_lock.json").exists());
}

#[tokio::test]
async fn sigterm_mid_publish_aborts_the_run_restores_the_tables_and_leaves_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scheduled_pipeline(dir.path(), "interrupted", "cron = \"* * * * * *\"\n");
    let wh = dir.path().join("wh");
    // A first run publishes the tables the interrupted run must not change.
    let out = patron(dir.path(), &["run", "--pipeline", pipeline.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = consistent_snapshot(&wh, None).await;
    let raw_sales = wh.join("raw/sales");
    let first_version = delta_version(&raw_sales).unwrap();
    let raw_before = table_rows(&raw_sales, None).await;

    // The scheduled run pauses right after its first table commit; SIGTERM lands there.
    let mut daemon = Daemon::start(
        &pipeline,
        &[(patron::failpoint::ENV, "pause:publish.after_commit.raw_sales")],
    );
    let started = daemon.wait_for("attempt_started", |_| true);
    let deadline = Instant::now() + PATIENCE;
    while delta_version(&raw_sales) == Some(first_version) {
        assert!(Instant::now() < deadline, "the scheduled run commits raw_sales");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, lines, stderr) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let aborted = lines
        .iter()
        .find(|v| v["event"] == "run_aborted")
        .unwrap_or_else(|| panic!("no run_aborted line: {lines:?}"));
    assert_eq!(aborted["run_id"], started["run_id"]);
    assert_eq!(aborted["exit_code"], 5);

    assert!(!wh.join("_lock.json").exists(), "the aborted run released the lock");
    let recorded = runs(&wh).await;
    let row = recorded
        .iter()
        .find(|r| r.run_id == started["run_id"].as_str().unwrap())
        .expect("the aborted run is recorded");
    assert_eq!(row.outcome, "failed");
    assert!(
        row.error
            .as_deref()
            .unwrap()
            .contains("aborted by SIGTERM/SIGINT while publishing"),
        "{row:?}"
    );
    assert_eq!(recorded.iter().filter(|r| r.outcome == "succeeded").count(), 1);
    // Readers following the runs table, and readers of the latest versions, see the first run.
    assert_eq!(consistent_snapshot(&wh, None).await, before);
    assert!(
        delta_version(&raw_sales).unwrap() > first_version,
        "committed, then restored"
    );
    assert_eq!(table_rows(&raw_sales, None).await, raw_before);
    assert_eq!(
        delta_version(&wh.join("tables/customer_scores")),
        Some(0),
        "never reached"
    );
}

#[tokio::test]
async fn patron_run_under_cron_exits_5_on_sigterm_and_4_when_the_lock_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = scheduled_pipeline(dir.path(), "cron_job", "cron = \"0 2 * * *\"\n");
    let wh = dir.path().join("wh");
    let child = Command::new(env!("CARGO_BIN_EXE_patron"))
        .args(["run", "--pipeline", pipeline.to_str().unwrap()])
        .env("RUST_LOG", "patron=warn")
        .env_remove(patron::failpoint::ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !wh.join("_staging").exists() {
        assert!(Instant::now() < deadline, "the run starts");
        std::thread::sleep(Duration::from_millis(5));
    }
    // While it runs, a second run is skipped: exit 4, recorded as skipped.
    let second = patron(dir.path(), &["run", "--pipeline", pipeline.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(4), "{}", text(&second));
    // SIGTERM (what cron's kill, systemd and Kubernetes send) aborts the first: exit 5.
    // SAFETY: kill(2) on the child we started.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("aborted by SIGTERM"));
    assert!(!wh.join("_lock.json").exists());
    assert!(
        !wh.join("tables").exists() && !wh.join("raw").exists(),
        "nothing published"
    );
    let mut outcomes: Vec<String> = runs(&wh).await.into_iter().map(|r| r.outcome).collect();
    outcomes.sort();
    assert_eq!(outcomes, ["failed", "skipped"]);
}

#[test]
fn schedule_refuses_a_pipeline_without_a_schedule_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), &[]);
    let out = patron(
        dir.path(),
        &[
            "schedule",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pipeline.toml") && err.contains("[schedule]"), "{err}");
    let bad = scheduled_pipeline(dir.path(), "bad", "cron = \"0 2 * * *\"\nmissed = \"sometimes\"\n");
    let out = patron(dir.path(), &["schedule", "--pipeline", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipeline.toml") && err.contains("missed") && err.contains("line"),
        "{err}"
    );
}

/// Records a run of `pipeline` that started `days_ago` days ago, as if the daemon had been
/// down since.
async fn last_run_days_ago(pipeline: &Path, days_ago: i64) {
    let plan = patron::config::Plan::load(pipeline, &Default::default()).unwrap();
    let at = chrono::Utc::now() - chrono::Duration::days(days_ago);
    let record = patron::pipeline::bare_record(&plan, "20200101T000000.000Z-downtime", at, "skipped", "simulated");
    patron::publish::runs::append(&plan.warehouse, &record).await.unwrap();
}

#[tokio::test]
async fn after_downtime_missed_slots_are_skipped_or_the_last_one_caught_up_and_a_slow_run_times_out() {
    // Daily at midnight UTC, last run three days ago, no grace: the slots of the last
    // three midnights were missed.
    let schedule = "cron = \"0 0 * * *\"\nmisfire_grace_secs = 0\nretries = 0\ntimeout_secs = 2\n";
    let skip_dir = tempfile::tempdir().unwrap();
    let skip = scheduled_pipeline(skip_dir.path(), "skipper", &format!("{schedule}missed = \"skip\"\n"));
    last_run_days_ago(&skip, 3).await;
    let catch_dir = tempfile::tempdir().unwrap();
    let catch = scheduled_pipeline(
        catch_dir.path(),
        "catcher",
        &format!("{schedule}missed = \"catch_up\"\n"),
    );
    last_run_days_ago(&catch, 3).await;

    let mut skipper = Daemon::start(&skip, &[]);
    let mut catcher = Daemon::start(&catch, &[]);
    let missed = skipper.wait_for("slots_missed", |_| true);
    assert_eq!(
        (missed["count"].as_u64(), missed["policy"].as_str()),
        (Some(3), Some("skip"))
    );
    let caught = catcher.wait_for("slots_missed", |_| true);
    assert_eq!(
        caught["count"], 2,
        "the latest missed slot is run, the two before skipped"
    );
    let due = catcher.wait_for("slot_due", |_| true);
    let today = chrono::Utc::now()
        .date_naive()
        .format("%Y-%m-%dT00:00:00.000Z")
        .to_string();
    assert_eq!(due["slot"], today.as_str());
    // The caught-up run takes longer than its 2 s timeout: SIGTERM, recorded as failed.
    let failed = catcher.wait_for("run_failed", |_| true);
    assert_eq!(failed["outcome"], "timed_out");
    assert_eq!(failed["exit_code"], 5, "the child stopped cleanly on SIGTERM");
    assert!(failed["error"].as_str().unwrap().contains("timed out after 2s"));

    let (status, skip_lines, _) = skipper.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(
        !skip_lines.iter().any(|v| v["event"] == "slot_due"),
        "under skip nothing ran: {skip_lines:?}"
    );
    let (status, _, _) = catcher.terminate();
    assert_eq!(status.code(), Some(0));

    let skipped = runs(&skip_dir.path().join("wh")).await;
    let row = skipped
        .iter()
        .find(|r| r.run_id == missed["run_id"].as_str().unwrap())
        .expect("the missed slots are recorded");
    assert_eq!(row.outcome, "skipped");
    assert!(row.error.as_deref().unwrap().starts_with("3 slot(s) from"), "{row:?}");
    let wh = catch_dir.path().join("wh");
    let timed_out = runs(&wh).await;
    let row = timed_out
        .iter()
        .find(|r| r.run_id == failed["run_id"].as_str().unwrap())
        .expect("the timed-out run recorded itself");
    assert_eq!(row.outcome, "failed");
    assert!(!wh.join("_lock.json").exists());
    assert!(!wh.join("tables").exists(), "nothing published");
}
