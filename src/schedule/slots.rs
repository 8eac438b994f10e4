//! Slot logic, free of real time: which cron slots came due since the scheduler last
//! looked, which one to run, which are skipped as missed or as overlapping a run still
//! going. The daemon asks a [`Clock`] for the time; tests use a [`ManualClock`].

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::settings::{CronSchedule, MissedPolicy};

/// Where the scheduler gets the time from.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock standing at `t`.
    pub fn new(t: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(t))
    }

    /// Moves the clock to `t`.
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += chrono::Duration::from_std(d).unwrap_or_default();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Slots skipped because they were missed (the daemon was down, paused or late).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    /// How many (counting stops at [`COUNT_LIMIT`]).
    pub count: u64,
    /// The earliest.
    pub first: DateTime<Utc>,
    /// The latest.
    pub last: DateTime<Utc>,
}

/// Counting missed slots stops here (a per-second schedule down for a week).
pub const COUNT_LIMIT: u64 = 10_000;

/// What the scheduler does at one look at the clock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// The slot to start a run for.
    pub run: Option<DateTime<Utc>>,
    /// The slot skipped because a run of the pipeline is still going (`max_concurrent = 1`).
    pub overlapped: Option<DateTime<Utc>>,
    /// Slots skipped because they were missed.
    pub missed: Option<Missed>,
}

/// Tracks the slots of one pipeline's schedule: every slot is decided exactly once.
#[derive(Debug, Clone)]
pub struct SlotTracker {
    schedule: CronSchedule,
    policy: MissedPolicy,
    grace: Duration,
    /// Every slot at or before this instant has been decided.
    cursor: DateTime<Utc>,
}

impl SlotTracker {
    /// Starts tracking after `since`: the last run recorded for the pipeline (so slots
    /// missed while the daemon was down are found), or the daemon's start.
    pub fn new(schedule: CronSchedule, policy: MissedPolicy, grace: Duration, since: DateTime<Utc>) -> Self {
        SlotTracker {
            schedule,
            policy,
            grace,
            cursor: since,
        }
    }

    /// The next slot not yet decided: when the scheduler should look again.
    pub fn next_slot(&self) -> Option<DateTime<Utc>> {
        self.schedule.next_after(self.cursor)
    }

    /// Decides every slot due at `now` (after the cursor, at or before `now`). The latest
    /// of them runs when it is at most the grace late; a later one is missed, and with
    /// `catch_up` it runs anyway (older missed slots are skipped: one catch-up run, not
    /// one per slot). A slot to run while `busy` (a run is still going) is skipped as an
    /// overlap instead.
    pub fn tick(&mut self, now: DateTime<Utc>, busy: bool) -> Decision {
        let mut decision = Decision::default();
        let Some(first) = self.schedule.next_after(self.cursor).filter(|f| *f <= now) else {
            return decision;
        };
        let last = self.schedule.latest_at_or_before(now).unwrap_or(first).max(first);
        let mut count = 1;
        let mut t = first;
        while t < last && count < COUNT_LIMIT {
            match self.schedule.next_after(t) {
                Some(next) if next <= last => {
                    t = next;
                    count += 1;
                }
                _ => break,
            }
        }
        self.cursor = now;
        let late = (now - last).to_std().unwrap_or_default();
        let on_time = late <= self.grace;
        let to_run = on_time || self.policy == MissedPolicy::CatchUp;
        // Slots neither run nor overlapping: every slot before the latest, and the latest
        // too when it is late and the policy skips it.
        let missed_count = count - 1 + u64::from(!to_run);
        if missed_count > 0 {
            let missed_last = if to_run {
                self.schedule
                    .latest_at_or_before(last - chrono::Duration::milliseconds(1))
                    .unwrap_or(first)
                    .max(first)
            } else {
                last
            };
            decision.missed = Some(Missed {
                count: missed_count,
                first,
                last: missed_last,
            });
        }
        if to_run {
            if busy {
                decision.overlapped = Some(last);
            } else {
                decision.run = Some(last);
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn hourly(policy: MissedPolicy, since: &str) -> SlotTracker {
        SlotTracker::new(
            CronSchedule::parse("0 * * * *", "UTC").unwrap(),
            policy,
            Duration::from_secs(60),
            at(since),
        )
    }

    #[test]
    fn a_due_slot_runs_once_and_nothing_before_it() {
        let clock = ManualClock::new(at("2026-03-01T09:59:59Z"));
        let mut t = hourly(MissedPolicy::Skip, "2026-03-01T09:30:00Z");
        assert_eq!(t.next_slot(), Some(at("2026-03-01T10:00:00Z")));
        assert_eq!(t.tick(clock.now(), false), Decision::default(), "not due yet");
        clock.advance(Duration::from_millis(1500));
        let d = t.tick(clock.now(), false);
        assert_eq!(d.run, Some(at("2026-03-01T10:00:00Z")));
        assert_eq!((d.overlapped, d.missed), (None, None));
        assert_eq!(
            t.tick(clock.now(), false),
            Decision::default(),
            "a slot is decided once"
        );
        assert_eq!(t.next_slot(), Some(at("2026-03-01T11:00:00Z")));
    }

    #[test]
    fn a_slot_arriving_while_a_run_is_going_is_skipped_as_overlap() {
        let clock = ManualClock::new(at("2026-03-01T10:00:00.100Z"));
        let mut t = hourly(MissedPolicy::Skip, "2026-03-01T09:30:00Z");
        assert!(t.tick(clock.now(), false).run.is_some());
        clock.set(at("2026-03-01T11:00:00.050Z"));
        let d = t.tick(clock.now(), true);
        assert_eq!(d.run, None);
        assert_eq!(d.overlapped, Some(at("2026-03-01T11:00:00Z")));
        clock.set(at("2026-03-01T12:00:00.050Z"));
        assert_eq!(t.tick(clock.now(), false).run, Some(at("2026-03-01T12:00:00Z")));
    }

    #[test]
    fn after_downtime_missed_slots_are_skipped_under_skip() {
        // Last run at 06:00; the daemon comes back at 10:20: 07..10 are missed, none runs.
        let mut t = hourly(MissedPolicy::Skip, "2026-03-01T06:00:00.500Z");
        let d = t.tick(at("2026-03-01T10:20:00Z"), false);
        assert_eq!(d.run, None);
        assert_eq!(
            d.missed,
            Some(Missed {
                count: 4,
                first: at("2026-03-01T07:00:00Z"),
                last: at("2026-03-01T10:00:00Z"),
            })
        );
        assert_eq!(t.next_slot(), Some(at("2026-03-01T11:00:00Z")));
    }

    #[test]
    fn after_downtime_the_last_missed_slot_runs_under_catch_up() {
        let mut t = hourly(MissedPolicy::CatchUp, "2026-03-01T06:00:00.500Z");
        let d = t.tick(at("2026-03-01T10:20:00Z"), false);
        assert_eq!(d.run, Some(at("2026-03-01T10:00:00Z")));
        assert_eq!(
            d.missed,
            Some(Missed {
                count: 3,
                first: at("2026-03-01T07:00:00Z"),
                last: at("2026-03-01T09:00:00Z"),
            })
        );
        // Caught up: the next look runs the next slot on time.
        assert_eq!(
            t.tick(at("2026-03-01T11:00:01Z"), false).run,
            Some(at("2026-03-01T11:00:00Z"))
        );
    }

    #[test]
    fn a_slot_within_the_grace_runs_even_under_skip() {
        let mut t = hourly(MissedPolicy::Skip, "2026-03-01T09:30:00Z");
        let d = t.tick(at("2026-03-01T10:00:59Z"), false);
        assert_eq!(d.run, Some(at("2026-03-01T10:00:00Z")));
        let mut late = hourly(MissedPolicy::Skip, "2026-03-01T09:30:00Z");
        let d = late.tick(at("2026-03-01T10:01:01Z"), false);
        assert_eq!(d.run, None);
        assert_eq!(d.missed.map(|m| m.count), Some(1));
    }

    #[test]
    fn a_caught_up_slot_is_still_an_overlap_when_a_run_is_going() {
        let mut t = hourly(MissedPolicy::CatchUp, "2026-03-01T06:00:00.500Z");
        let d = t.tick(at("2026-03-01T10:20:00Z"), true);
        assert_eq!(d.run, None);
        assert_eq!(d.overlapped, Some(at("2026-03-01T10:00:00Z")));
    }

    #[test]
    fn counting_a_long_downtime_of_a_per_second_schedule_is_bounded() {
        let mut t = SlotTracker::new(
            CronSchedule::parse("* * * * * *", "UTC").unwrap(),
            MissedPolicy::Skip,
            Duration::from_secs(0),
            at("2026-03-01T00:00:00Z"),
        );
        let d = t.tick(at("2026-03-03T00:00:00.500Z"), false);
        let missed = d.missed.unwrap();
        assert_eq!(missed.count, COUNT_LIMIT);
        assert_eq!(missed.last, at("2026-03-03T00:00:00Z"));
    }
}
