//! Alerts on a run's final failure: a JSON POST to a webhook and/or a shell command.

use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::settings::AlertSettings;

/// What an alert says: the JSON body of the webhook call and the command's stdin.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Always `run_failed`.
    pub event: &'static str,
    /// Pipeline name.
    pub pipeline: String,
    /// The last attempt's run id (its row in the `runs` table, its manifest).
    pub run_id: String,
    /// The schedule slot, RFC 3339 UTC.
    pub slot: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: String,
    /// The last attempt's exit code (`None` when it was killed).
    pub exit_code: Option<i32>,
    /// The last lines the last attempt printed.
    pub log_tail: Vec<String>,
    /// Host the daemon runs on.
    pub host: String,
}

/// Environment variable holding the webhook URL; it wins over `alert.webhook`, so a URL
/// with a secret token (a chat incoming-webhook) need not be written in the pipeline file.
pub const WEBHOOK_ENV: &str = "PATRON_ALERT_WEBHOOK";

/// The webhook URL: [`WEBHOOK_ENV`] when set, else the configured one.
pub fn webhook_url(settings: &AlertSettings) -> Option<String> {
    std::env::var(WEBHOOK_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| settings.webhook.clone())
}

/// Sends `alert` through every configured channel; returns per channel (`webhook`,
/// `command`) the error, if it failed.
pub async fn send(settings: &AlertSettings, alert: &Alert) -> Vec<(&'static str, Result<(), String>)> {
    let timeout = Duration::from_secs(settings.timeout_secs.max(1));
    let mut results = Vec::new();
    if let Some(url) = webhook_url(settings) {
        results.push(("webhook", webhook(&url, alert, timeout).await));
    }
    if let Some(command) = &settings.command {
        results.push(("command", run_command(command, alert, timeout).await));
    }
    results
}

async fn webhook(url: &str, alert: &Alert, timeout: Duration) -> Result<(), String> {
    let body = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("POST {url}: HTTP {status}"))
    }
}

async fn run_command(command: &str, alert: &Alert, timeout: Duration) -> Result<(), String> {
    let body = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("PATRON_PIPELINE", &alert.pipeline)
        .env("PATRON_RUN_ID", &alert.run_id)
        .env("PATRON_ERROR", &alert.error)
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("`{command}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is fine.
        let _ = stdin.write_all(&body).await;
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("`{command}` exited with {status}")),
        Ok(Err(e)) => Err(format!("`{command}`: {e}")),
        Err(_) => Err(format!("`{command}` took longer than {}s", timeout.as_secs())),
    }
}
