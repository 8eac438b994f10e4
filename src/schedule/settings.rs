//! The `[schedule]` section of a pipeline file: when `patron schedule` runs the pipeline,
//! how often it retries, how long a run may take, what happens to slots missed while the
//! daemon was down, and whom to alert when a run finally fails.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::problems::Problems;

/// What to do with slots that passed while the daemon was not running (or was paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// Missed slots are skipped (and recorded); the next run is the next slot on time.
    #[default]
    Skip,
    /// The latest missed slot is run at once; older missed slots are skipped.
    CatchUp,
}

/// Alerts sent when a run has failed for good (after its retries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// URL the alert is POSTed to as JSON (`pipeline`, `run_id`, `slot`, `attempts`,
    /// `error`, `exit_code`, `log_tail`).
    pub webhook: Option<String>,
    /// Shell command (`sh -c`) run with the alert JSON on stdin and `PATRON_PIPELINE`,
    /// `PATRON_RUN_ID`, `PATRON_ERROR` in its environment.
    pub command: Option<String>,
    /// Lines of the failed run's output sent along.
    pub log_tail_lines: usize,
    /// Seconds an alert (webhook call or command) may take.
    pub timeout_secs: u64,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            webhook: None,
            command: None,
            log_tail_lines: 40,
            timeout_secs: 30,
        }
    }
}

/// The `[schedule]` section as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSettings {
    /// Cron expression: 5 fields (minute hour day-of-month month day-of-week) or 6 (with
    /// seconds first).
    pub cron: String,
    /// IANA time zone the expression is read in (`Europe/Berlin`); default `UTC`.
    pub timezone: String,
    /// Extra attempts after a failed one (0 = none).
    pub retries: u32,
    /// Wait before the first retry, seconds; doubles with each further retry.
    pub backoff_secs: f64,
    /// Longest wait between two attempts, seconds.
    pub backoff_max_secs: f64,
    /// Random spread of each wait, as a fraction: 0.2 waits between 80% and 120%.
    pub jitter: f64,
    /// An attempt running longer is stopped (SIGTERM, then SIGKILL) and counts as failed;
    /// 0 = no limit.
    pub timeout_secs: u64,
    /// Slots missed while the daemon was down: `skip` or `catch_up`.
    pub missed: MissedPolicy,
    /// A slot is still run on time when the daemon gets to it at most this late.
    pub misfire_grace_secs: u64,
    /// Runs of this pipeline at the same time; only 1 is supported: a slot that comes
    /// while a run (or its retries) is still going is skipped and recorded.
    pub max_concurrent: u32,
    /// After SIGTERM, seconds a run gets to stop cleanly before it is killed.
    pub stop_grace_secs: u64,
    /// Alerts on final failure.
    pub alert: AlertSettings,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings {
            cron: String::new(),
            timezone: "UTC".into(),
            retries: 2,
            backoff_secs: 30.0,
            backoff_max_secs: 900.0,
            jitter: 0.2,
            timeout_secs: 0,
            missed: MissedPolicy::Skip,
            misfire_grace_secs: 60,
            max_concurrent: 1,
            stop_grace_secs: 30,
            alert: AlertSettings::default(),
        }
    }
}

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

impl CronSchedule {
    /// Parses a 5- or 6-field expression read in `timezone`.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, String> {
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "`{expression}` has {fields} fields; a cron expression has 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| format!("`{expression}` is not a cron expression: {e}"))?;
        let tz: Tz = timezone
            .parse()
            .map_err(|_| format!("`{timezone}` is not an IANA time zone (such as `UTC` or `Europe/Berlin`)"))?;
        Ok(CronSchedule { cron, tz })
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|s| s.with_timezone(&Utc))
    }

    /// The latest slot at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|s| s.with_timezone(&Utc))
    }
}

impl ScheduleSettings {
    /// Checks every value, recording problems under `schedule.*`; returns the parsed cron
    /// expression when it is valid.
    pub fn validate(&self, problems: &mut Problems) -> Option<CronSchedule> {
        let parsed = if self.cron.trim().is_empty() {
            problems.push(
                "schedule.cron",
                "missing: when to run, e.g. `0 2 * * *` (02:00 every day)",
            );
            None
        } else {
            match CronSchedule::parse(&self.cron, &self.timezone) {
                Ok(s) => Some(s),
                Err(m) if m.contains("time zone") => {
                    problems.push("schedule.timezone", m);
                    None
                }
                Err(m) => {
                    problems.push("schedule.cron", m);
                    None
                }
            }
        };
        if self.retries > 100 {
            problems.push("schedule.retries", format!("{} must be at most 100", self.retries));
        }
        problems.check_range("schedule.backoff_secs", self.backoff_secs, 0.0, 86_400.0);
        problems.check_range("schedule.backoff_max_secs", self.backoff_max_secs, 0.0, 86_400.0);
        problems.check_range("schedule.jitter", self.jitter, 0.0, 1.0);
        if self.max_concurrent != 1 {
            problems.push(
                "schedule.max_concurrent",
                format!(
                    "{} is not supported: one run of a pipeline at a time (overlapping slots are skipped)",
                    self.max_concurrent
                ),
            );
        }
        if let Some(url) = &self.alert.webhook
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(
                "schedule.alert.webhook",
                format!("`{url}` must be an http:// or https:// URL"),
            );
        }
        parsed
    }

    /// The wait before an attempt's retry.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_secs_f64(self.backoff_secs),
            max: Duration::from_secs_f64(self.backoff_max_secs),
            jitter: self.jitter,
        }
    }
}

/// Exponential backoff with jitter: the n-th retry waits `min(base * 2^(n-1), max)`,
/// spread by up to `jitter` either way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Wait before the first retry.
    pub base: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Spread as a fraction of the wait.
    pub jitter: f64,
}

impl Backoff {
    /// The wait before retry number `retry` (1 = after the first failed attempt), with
    /// `unit` a random number in `[0, 1)` (0.5 = no spread).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let doubling = 2f64.powi(retry.saturating_sub(1).min(62) as i32);
        let plain = (self.base.as_secs_f64() * doubling).min(self.max.as_secs_f64());
        let spread = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((plain * spread).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_field_expressions_in_a_time_zone() {
        let daily = CronSchedule::parse("0 2 * * *", "Europe/Berlin").unwrap();
        // 02:00 in Berlin (CET, UTC+1) on 2026-01-10 is 01:00 UTC.
        assert_eq!(
            daily.next_after(at("2026-01-10T00:30:00Z")),
            Some(at("2026-01-10T01:00:00Z"))
        );
        let every_second = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second.next_after(at("2026-01-10T00:30:00.200Z")),
            Some(at("2026-01-10T00:30:01Z"))
        );
        assert_eq!(
            every_second.latest_at_or_before(at("2026-01-10T00:30:00.200Z")),
            Some(at("2026-01-10T00:30:00Z"))
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        let mut problems = Problems::default();
        let bad = ScheduleSettings {
            cron: "0 2 * *".into(),
            timezone: "Mars/Base".into(),
            jitter: 2.0,
            max_concurrent: 2,
            ..ScheduleSettings::default()
        };
        assert!(bad.validate(&mut problems).is_none());
        let text = format!("{problems:?}");
        for key in ["schedule.cron", "schedule.jitter", "schedule.max_concurrent"] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
        let mut problems = Problems::default();
        let zone = ScheduleSettings {
            cron: "0 2 * * *".into(),
            timezone: "Mars/Base".into(),
            ..ScheduleSettings::default()
        };
        assert!(zone.validate(&mut problems).is_none());
        assert!(format!("{problems:?}").contains("schedule.timezone"));
        assert!(CronSchedule::parse("61 * * * *", "UTC").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_spreads_both_ways() {
        let b = Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(60),
            jitter: 0.2,
        };
        let plain: Vec<u64> = (1..=5).map(|n| b.delay(n, 0.5).as_secs()).collect();
        assert_eq!(plain, vec![10, 20, 40, 60, 60]);
        assert_eq!(b.delay(2, 0.0), Duration::from_secs(16));
        assert_eq!(b.delay(2, 1.0), Duration::from_secs(24));
        let none = Backoff { jitter: 0.0, ..b };
        assert_eq!(none.delay(3, 0.9), Duration::from_secs(40));
    }
}
