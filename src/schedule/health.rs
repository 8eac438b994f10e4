//! The daemon's health endpoint: `GET /healthz` (JSON status) and `GET /metrics`
//! (Prometheus text format), served by a minimal HTTP/1.1 handler on a local address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the daemon knows about one pipeline, for `/metrics` and `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct PipelineMetrics {
    /// Unix time of the last succeeded run.
    pub last_success: Option<f64>,
    /// Unix time of the last final failure.
    pub last_failure: Option<f64>,
    /// Seconds the last attempt took.
    pub last_duration: Option<f64>,
    /// Sum and count of attempt durations, seconds.
    pub duration_sum: f64,
    /// Attempts finished.
    pub duration_count: u64,
    /// Attempts by outcome (`succeeded`, `failed`, `timed_out`, `skipped`, `aborted`).
    pub attempts: BTreeMap<String, u64>,
    /// Slots skipped, by reason (`overlap`, `missed`, `locked`).
    pub skipped: BTreeMap<String, u64>,
    /// Runs failed for good (after retries).
    pub failures: u64,
    /// Rows per table published by the last succeeded run.
    pub table_rows: BTreeMap<String, u64>,
    /// A run (or its retries) is going.
    pub running: bool,
    /// The next slot.
    pub next_slot: Option<DateTime<Utc>>,
}

/// Metrics of every scheduled pipeline, shared by the schedule loops and the server.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<BTreeMap<String, PipelineMetrics>>);

impl Metrics {
    /// Changes the metrics of `pipeline`.
    pub fn update(&self, pipeline: &str, change: impl FnOnce(&mut PipelineMetrics)) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        change(all.entry(pipeline.to_string()).or_default());
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> BTreeMap<String, PipelineMetrics> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let all = self.snapshot();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        let per = |f: &dyn Fn(&PipelineMetrics) -> Option<f64>| -> Vec<(String, f64)> {
            all.iter()
                .filter_map(|(p, m)| f(m).map(|v| (format!("pipeline=\"{}\"", escape(p)), v)))
                .collect()
        };
        family(
            "patron_schedule_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last succeeded run.",
            per(&|m| m.last_success),
        );
        family(
            "patron_schedule_last_failure_timestamp_seconds",
            "gauge",
            "Unix time of the last run that failed after its retries.",
            per(&|m| m.last_failure),
        );
        family(
            "patron_schedule_last_run_duration_seconds",
            "gauge",
            "Duration of the last attempt.",
            per(&|m| m.last_duration),
        );
        family(
            "patron_schedule_run_duration_seconds_sum",
            "counter",
            "Total duration of all attempts.",
            per(&|m| Some(m.duration_sum)),
        );
        family(
            "patron_schedule_run_duration_seconds_count",
            "counter",
            "Attempts finished.",
            per(&|m| Some(m.duration_count as f64)),
        );
        family(
            "patron_schedule_failures_total",
            "counter",
            "Runs that failed after their retries (and were alerted).",
            per(&|m| Some(m.failures as f64)),
        );
        family(
            "patron_schedule_running",
            "gauge",
            "1 while a run of the pipeline (or its retries) is going.",
            per(&|m| Some(if m.running { 1.0 } else { 0.0 })),
        );
        family(
            "patron_schedule_next_run_timestamp_seconds",
            "gauge",
            "Unix time of the next slot.",
            per(&|m| m.next_slot.map(|t| t.timestamp() as f64)),
        );
        let labelled = |f: &dyn Fn(&PipelineMetrics) -> &BTreeMap<String, u64>, label: &str| {
            all.iter()
                .flat_map(|(p, m)| {
                    f(m).iter().map(move |(k, v)| {
                        (
                            format!("pipeline=\"{}\",{label}=\"{}\"", escape(p), escape(k)),
                            *v as f64,
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            "patron_schedule_attempts_total",
            "counter",
            "Attempts by outcome.",
            labelled(&|m| &m.attempts, "outcome"),
        );
        family(
            "patron_schedule_skipped_total",
            "counter",
            "Slots not run, by reason (overlap, missed, locked).",
            labelled(&|m| &m.skipped, "reason"),
        );
        family(
            "patron_schedule_last_success_rows",
            "gauge",
            "Rows per table published by the last succeeded run.",
            labelled(&|m| &m.table_rows, "table"),
        );
        out
    }

    /// The `/healthz` body.
    pub fn health(&self) -> serde_json::Value {
        let pipelines: Vec<_> = self
            .snapshot()
            .into_iter()
            .map(|(name, m)| {
                json!({
                    "pipeline": name,
                    "running": m.running,
                    "next_slot": m.next_slot.map(|t| t.to_rfc3339()),
                    "last_success": m.last_success,
                    "failures": m.failures,
                })
            })
            .collect();
        json!({ "status": "ok", "pipelines": pipelines })
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serves `/healthz` and `/metrics` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &metrics).await {
                        tracing::debug!(error = %e, "health request failed");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "health endpoint: accept failed"),
        }
    }
}

/// Longest request head read.
const MAX_REQUEST: usize = 8192;

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head too slow"))??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        ("GET", "/healthz") => ("200 OK", "application/json", metrics.health().to_string()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /healthz or /metrics\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_prometheus_text_format() {
        let m = Metrics::default();
        m.update("shop", |p| {
            p.last_success = Some(1_700_000_000.0);
            p.duration_sum = 3.5;
            p.duration_count = 2;
            *p.attempts.entry("failed".into()).or_default() += 1;
            p.table_rows.insert("customer_scores".into(), 2000);
        });
        let text = m.render();
        assert!(text.contains("patron_schedule_last_success_timestamp_seconds{pipeline=\"shop\"} 1700000000\n"));
        assert!(text.contains("patron_schedule_run_duration_seconds_count{pipeline=\"shop\"} 2\n"));
        assert!(text.contains("patron_schedule_attempts_total{pipeline=\"shop\",outcome=\"failed\"} 1\n"));
        assert!(text.contains("patron_schedule_last_success_rows{pipeline=\"shop\",table=\"customer_scores\"} 2000\n"));
        assert!(text.contains("# TYPE patron_schedule_failures_total counter\n"));
    }
}
