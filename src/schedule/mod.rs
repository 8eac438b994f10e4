//! `patron schedule`: a long-running daemon that runs pipelines on their cron schedule.
//!
//! Per pipeline, a loop sleeps until the next slot of its `[schedule]` and decides the
//! slots due ([`slots::SlotTracker`]): a slot on time starts a run; a slot arriving while
//! the previous run (or its retries) is still going is skipped (`max_concurrent = 1`);
//! slots missed while the daemon was down are skipped or caught up once. Skipped slots
//! are recorded in the `runs` table as `skipped`. A run is a child `patron run` process
//! ([`attempt`]), retried with exponential backoff and jitter; after its last attempt
//! fails the alert goes out ([`alert`]). Every step is a JSON line on stdout ([`log`]);
//! `/healthz` and `/metrics` are served on a local address ([`health`]). SIGTERM/SIGINT
//! stop the loops and the running child (which aborts without publishing and releases
//! the warehouse lock), then the daemon exits 0.

pub mod alert;
pub mod attempt;
pub mod health;
pub mod log;
pub mod settings;
pub mod slots;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Plan, Schedule};
use crate::names::OUTCOME_SKIPPED;
use crate::pipeline::{bare_record, new_run_id};
use crate::publish::runs;
use attempt::{AttemptKind, Limits};
use health::Metrics;
use slots::{Clock, SlotTracker};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The health endpoint's address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The patron binary (run for each attempt) cannot be found.
    #[error("cannot find the patron executable: {0}")]
    Exe(std::io::Error),
}

/// What every schedule loop shares.
struct Shared {
    exe: PathBuf,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// Runs the daemon for `plans` (each with a schedule) until SIGTERM/SIGINT.
pub async fn run(plans: Vec<(Plan, Schedule)>, listen: SocketAddr) -> Result<(), ScheduleError> {
    let exe = std::env::current_exe().map_err(ScheduleError::Exe)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ScheduleError::Listen { addr: listen, source })?;
    let bound = listener.local_addr().unwrap_or(listen);
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        exe,
        clock: Arc::new(slots::SystemClock),
        metrics: Arc::new(Metrics::default()),
        stop: stop.clone(),
    });
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(health::serve(listener, shared.metrics.clone(), server_stop.clone()));
    stop_on_signals(stop.clone());
    log::info(
        "daemon_started",
        json!({
            "pid": std::process::id(),
            "listen": bound.to_string(),
            "pipelines": plans.iter().map(|(p, s)| json!({
                "pipeline": p.name, "cron": s.settings.cron, "timezone": s.settings.timezone,
                "alert_webhook": alert::webhook_url(&s.settings.alert).is_some(),
                "alert_command": s.settings.alert.command.is_some(),
            })).collect::<Vec<_>>(),
        }),
    );
    let loops: Vec<_> = plans
        .into_iter()
        .map(|(plan, schedule)| tokio::spawn(pipeline_loop(shared.clone(), plan, schedule)))
        .collect();
    for l in loops {
        let _ = l.await;
    }
    server_stop.cancel();
    let _ = server.await;
    log::info("daemon_stopped", json!({}));
    Ok(())
}

/// Cancels `stop` on the first SIGTERM or SIGINT (registered before this returns).
fn stop_on_signals(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        log::warn("signals_unavailable", json!({}));
        return;
    };
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        log::info("shutdown_requested", json!({ "signal": name }));
        stop.cancel();
    });
}

/// Where the slots of `plan` start: after its last recorded run (so downtime is seen as
/// missed slots), else now.
async fn last_recorded(plan: &Plan, now: DateTime<Utc>) -> DateTime<Utc> {
    let records = runs::read_all(&plan.warehouse).await.unwrap_or_else(|e| {
        log::warn(
            "runs_unreadable",
            json!({"pipeline": plan.name, "error": e.to_string()}),
        );
        Vec::new()
    });
    records
        .iter()
        .filter(|r| r.pipeline == plan.name)
        .filter_map(|r| DateTime::parse_from_rfc3339(&r.started_at).ok())
        .map(|t| t.with_timezone(&Utc))
        .max()
        .filter(|t| *t <= now)
        .unwrap_or(now)
}

async fn record_skipped(plan: &Plan, at: DateTime<Utc>, why: &str) -> String {
    let run_id = new_run_id(at);
    if let Err(e) = runs::append(&plan.warehouse, &bare_record(plan, &run_id, at, OUTCOME_SKIPPED, why)).await {
        log::warn(
            "record_failed",
            json!({"pipeline": plan.name, "run_id": run_id, "error": e.to_string()}),
        );
    }
    run_id
}

async fn pipeline_loop(shared: Arc<Shared>, plan: Plan, schedule: Schedule) {
    let settings = &schedule.settings;
    let since = last_recorded(&plan, shared.clock.now()).await;
    let mut tracker = SlotTracker::new(
        schedule.cron.clone(),
        settings.missed,
        Duration::from_secs(settings.misfire_grace_secs),
        since,
    );
    let plan = Arc::new(plan);
    let settings = Arc::new(settings.clone());
    let mut job: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let Some(next) = tracker.next_slot() else {
            log::warn("no_more_slots", json!({"pipeline": plan.name}));
            break;
        };
        shared.metrics.update(&plan.name, |m| m.next_slot = Some(next));
        let wait = (next - shared.clock.now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = shared.clock.now();
        let busy = job.as_ref().is_some_and(|j| !j.is_finished());
        let decision = tracker.tick(now, busy);
        if let Some(missed) = &decision.missed {
            let why = format!(
                "{} slot(s) from {} to {} missed (the daemon was not running or was late); [schedule] missed = {:?}",
                missed.count,
                stamp(missed.first),
                stamp(missed.last),
                settings.missed
            );
            let run_id = record_skipped(&plan, now, &why).await;
            log::warn(
                "slots_missed",
                json!({"pipeline": plan.name, "run_id": run_id, "count": missed.count, "first": stamp(missed.first), "last": stamp(missed.last), "policy": settings.missed}),
            );
            shared.metrics.update(&plan.name, |m| {
                *m.skipped.entry("missed".into()).or_default() += missed.count
            });
        }
        if let Some(slot) = decision.overlapped {
            let why = format!(
                "slot {} skipped: the previous run of this pipeline is still going (max_concurrent = 1)",
                stamp(slot)
            );
            let run_id = record_skipped(&plan, now, &why).await;
            log::warn(
                "slot_skipped",
                json!({"pipeline": plan.name, "slot": stamp(slot), "run_id": run_id, "reason": "overlap"}),
            );
            shared
                .metrics
                .update(&plan.name, |m| *m.skipped.entry("overlap".into()).or_default() += 1);
        }
        if let Some(slot) = decision.run {
            log::info("slot_due", json!({"pipeline": plan.name, "slot": stamp(slot)}));
            job = Some(tokio::spawn(run_slot(
                shared.clone(),
                plan.clone(),
                settings.clone(),
                slot,
            )));
        }
    }
    if let Some(job) = job {
        // The job sees the stop itself: its child aborts and releases the lock.
        let _ = job.await;
    }
}

/// Runs one slot: attempts with backoff until one succeeds, a failure is final, or the
/// daemon stops; alerts after a final failure.
async fn run_slot(
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    settings: Arc<settings::ScheduleSettings>,
    slot: DateTime<Utc>,
) {
    let limits = Limits {
        timeout: (settings.timeout_secs > 0).then(|| Duration::from_secs(settings.timeout_secs)),
        stop_grace: Duration::from_secs(settings.stop_grace_secs),
        tail_lines: settings.alert.log_tail_lines,
    };
    let attempts = settings.retries + 1;
    let backoff = settings.backoff();
    shared.metrics.update(&plan.name, |m| m.running = true);
    for n in 1..=attempts {
        let run_id = new_run_id(shared.clock.now());
        log::info(
            "attempt_started",
            json!({"pipeline": plan.name, "slot": stamp(slot), "run_id": run_id, "attempt": n, "attempts": attempts}),
        );
        let a = attempt::run(&shared.exe, &plan, &run_id, limits, &shared.stop).await;
        let finished = shared.clock.now();
        let rows: u64 = a.table_rows.iter().map(|(_, r)| r).sum();
        shared.metrics.update(&plan.name, |m| {
            *m.attempts.entry(a.kind.label().into()).or_default() += 1;
            m.last_duration = Some(a.duration.as_secs_f64());
            m.duration_sum += a.duration.as_secs_f64();
            m.duration_count += 1;
            match a.kind {
                AttemptKind::Succeeded => {
                    m.last_success = Some(unix(finished));
                    m.table_rows = a.table_rows.iter().cloned().collect();
                }
                AttemptKind::Locked => *m.skipped.entry("locked".into()).or_default() += 1,
                _ => {}
            }
        });
        let fields = json!({
            "pipeline": plan.name, "slot": stamp(slot), "run_id": a.run_id, "attempt": n, "attempts": attempts,
            "outcome": a.kind.label(), "exit_code": a.exit_code, "duration_ms": a.duration.as_millis() as u64,
            "rows": rows, "error": a.error,
        });
        match a.kind {
            AttemptKind::Succeeded => {
                log::info("run_succeeded", fields);
                break;
            }
            AttemptKind::Locked => {
                log::warn("run_skipped", fields);
                break;
            }
            AttemptKind::Stopped => {
                log::warn("run_aborted", fields);
                break;
            }
            _ => {}
        }
        let retry = n < attempts && a.kind != AttemptKind::FailedFinal && !shared.stop.is_cancelled();
        if retry {
            let delay = backoff.delay(n, rand::random::<f64>());
            let mut fields = fields;
            fields["retry_in_ms"] = json!(delay.as_millis() as u64);
            log::warn("attempt_failed", fields);
            tokio::select! {
                _ = shared.stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            continue;
        }
        log::error("run_failed", fields);
        shared.metrics.update(&plan.name, |m| {
            m.failures += 1;
            m.last_failure = Some(unix(finished));
        });
        let alert = alert::Alert {
            event: "run_failed",
            pipeline: plan.name.clone(),
            run_id: a.run_id.clone(),
            slot: stamp(slot),
            attempts: n,
            error: a.error.clone().unwrap_or_default(),
            exit_code: a.exit_code,
            log_tail: a.log_tail.clone(),
            host: crate::publish::lock::host_name(),
        };
        for (channel, result) in alert::send(&settings.alert, &alert).await {
            match result {
                Ok(()) => log::info(
                    "alert_sent",
                    json!({"pipeline": plan.name, "run_id": a.run_id, "channel": channel}),
                ),
                Err(e) => log::error(
                    "alert_failed",
                    json!({"pipeline": plan.name, "run_id": a.run_id, "channel": channel, "error": e}),
                ),
            }
        }
        break;
    }
    shared.metrics.update(&plan.name, |m| m.running = false);
}
