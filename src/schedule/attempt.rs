//! One attempt of a scheduled run: a child `patron run` process with a run id chosen
//! here. A child is stopped like any `patron run` under cron: SIGTERM, after which it
//! aborts without publishing, records itself and releases the warehouse lock; only when
//! it has not stopped after the grace period is it killed, and then this side releases the
//! lock it left and records the attempt as failed.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::config::Plan;
use crate::exit_codes::{EXIT_ABORTED, EXIT_LOCKED, EXIT_OK, EXIT_TESTS_FAILED, EXIT_USAGE};
use crate::names::OUTCOME_FAILED;
use crate::publish::{lock, runs};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// Published.
    Succeeded,
    /// Did not start: another run held the warehouse lock (recorded by the child).
    Locked,
    /// Failed; worth retrying (exit code 1, a crash).
    Failed,
    /// Failed in a way a retry repeats (exit 2: configuration, exit 3: data tests).
    FailedFinal,
    /// Stopped after running longer than the timeout.
    TimedOut,
    /// Stopped because the daemon is shutting down.
    Stopped,
}

impl AttemptKind {
    /// The label used in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            AttemptKind::Succeeded => "succeeded",
            AttemptKind::Locked => "skipped",
            AttemptKind::Failed | AttemptKind::FailedFinal => "failed",
            AttemptKind::TimedOut => "timed_out",
            AttemptKind::Stopped => "aborted",
        }
    }
}

/// What an attempt did.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The child's run id.
    pub run_id: String,
    /// How it ended.
    pub kind: AttemptKind,
    /// The child's exit code (`None` when killed by a signal).
    pub exit_code: Option<i32>,
    /// Wall time.
    pub duration: Duration,
    /// The error, for anything but success.
    pub error: Option<String>,
    /// Rows per published table (from the manifest), on success.
    pub table_rows: Vec<(String, u64)>,
    /// The last lines the child printed.
    pub log_tail: Vec<String>,
}

/// Limits of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Stop the attempt after this long.
    pub timeout: Option<Duration>,
    /// After SIGTERM, how long the child gets before SIGKILL.
    pub stop_grace: Duration,
    /// Lines of output kept.
    pub tail_lines: usize,
}

type Tail = Arc<Mutex<VecDeque<String>>>;

fn keep_tail<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    tail: Tail,
    limit: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            t.push_back(line);
            while t.len() > limit.max(1) {
                t.pop_front();
            }
        }
    })
}

fn signal(child: &Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// Runs `exe run --pipeline <file> --warehouse <warehouse> --run-id <run_id>` under `limits`,
/// stopping it when `stop` is cancelled.
pub async fn run(exe: &Path, plan: &Plan, run_id: &str, limits: Limits, stop: &CancellationToken) -> Attempt {
    let started = Instant::now();
    let tail: Tail = Arc::default();
    let spawned = tokio::process::Command::new(exe)
        .arg("run")
        .arg("--pipeline")
        .arg(&plan.pipeline_file)
        .arg("--warehouse")
        .arg(plan.warehouse.to_string())
        .arg("--run-id")
        .arg(run_id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Attempt {
                run_id: run_id.to_string(),
                kind: AttemptKind::Failed,
                exit_code: None,
                duration: started.elapsed(),
                error: Some(format!("cannot start {}: {e}", exe.display())),
                table_rows: Vec::new(),
                log_tail: Vec::new(),
            };
        }
    };
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(keep_tail(out, tail.clone(), limits.tail_lines));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(keep_tail(err, tail.clone(), limits.tail_lines));
    }
    let deadline = async {
        match limits.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let mut interrupted = None;
    let waited = tokio::select! {
        status = child.wait() => Some(status),
        _ = deadline => { interrupted = Some(AttemptKind::TimedOut); None }
        _ = stop.cancelled() => { interrupted = Some(AttemptKind::Stopped); None }
    };
    let mut killed = false;
    let status = match waited {
        Some(status) => status,
        None => {
            signal(&child, libc::SIGTERM);
            match tokio::time::timeout(limits.stop_grace, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    killed = true;
                    let _ = child.start_kill();
                    child.wait().await
                }
            }
        }
    };
    for r in readers {
        let _ = r.await;
    }
    let exit_code = status.as_ref().ok().and_then(|s| s.code());
    let log_tail: Vec<String> = tail.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
    let manifest = crate::publish::read::run_manifest(&plan.warehouse, run_id).await.ok();
    let kind = match (interrupted, exit_code) {
        (Some(kind), _) => kind,
        (None, Some(c)) if c == i32::from(EXIT_OK) => AttemptKind::Succeeded,
        (None, Some(c)) if c == i32::from(EXIT_LOCKED) => AttemptKind::Locked,
        (None, Some(c)) if c == i32::from(EXIT_USAGE) || c == i32::from(EXIT_TESTS_FAILED) => AttemptKind::FailedFinal,
        // Aborted without being asked to (someone signalled the child): a retry may pass.
        (None, Some(c)) if c == i32::from(EXIT_ABORTED) => AttemptKind::Failed,
        (None, _) => AttemptKind::Failed,
    };
    let error = match kind {
        AttemptKind::Succeeded => None,
        AttemptKind::TimedOut => Some(format!(
            "timed out after {}s{}",
            limits.timeout.unwrap_or_default().as_secs(),
            if killed { " and was killed" } else { "" }
        )),
        _ => manifest
            .as_ref()
            .and_then(|m| m.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .or_else(|| last_error(&log_tail))
            .or_else(|| Some(format!("patron run ended with {status:?}"))),
    };
    if killed {
        // The child could not release its lock nor record itself.
        if let Err(e) = lock::remove_if_owned_by(&plan.warehouse, run_id) {
            tracing::warn!(error = %e, "cannot remove the lock of a killed run");
        }
        record_killed(plan, run_id, error.as_deref().unwrap_or("killed")).await;
    }
    let table_rows = manifest
        .as_ref()
        .filter(|_| kind == AttemptKind::Succeeded)
        .and_then(|m| m.get("tables").and_then(|t| t.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| Some((t.get("name")?.as_str()?.to_string(), t.get("rows")?.as_u64()?)))
        .collect();
    Attempt {
        run_id: run_id.to_string(),
        kind,
        exit_code,
        duration: started.elapsed(),
        error,
        table_rows,
        log_tail,
    }
}

/// The error the child printed last (`patron: ...` and what follows).
fn last_error(tail: &[String]) -> Option<String> {
    let start = tail.iter().rposition(|l| l.starts_with("patron: "))?;
    Some(tail[start..].join("\n").trim_start_matches("patron: ").to_string())
}

/// Records a killed attempt as failed, unless it recorded itself before dying.
async fn record_killed(plan: &Plan, run_id: &str, why: &str) {
    let recorded = runs::read_all(&plan.warehouse)
        .await
        .map(|all| all.iter().any(|r| r.run_id == run_id))
        .unwrap_or(false);
    if recorded {
        return;
    }
    let record = crate::pipeline::bare_record(plan, run_id, Utc::now(), OUTCOME_FAILED, why);
    if let Err(e) = runs::append(&plan.warehouse, &record).await {
        tracing::warn!(error = %e, "cannot record the killed run");
    }
}
