//! The warehouse lock: one run at a time publishes into a warehouse.
//!
//! The lock is the file `_lock.json` in the warehouse, created with `create_new` (the OS
//! guarantees only one creator wins) and holding its owner: run id, host, pid, start and a
//! heartbeat a background thread rewrites every few seconds. A lock is *stale*, and is
//! taken over, when its heartbeat is older than the timeout, or when it names a process on
//! this host that no longer exists (a run killed with `SIGKILL` leaves its lock behind).
//!
//! Taking over renames the stale file aside, checks that the file moved is the one judged
//! stale (another run may have taken it over in between; then the file is put back and
//! the lock counts as held), and creates a fresh lock. The owner checks it still holds
//! the lock ([`WarehouseLock::check`]) before each commit, so a run whose lock was taken
//! over (paused longer than the timeout) stops instead of publishing beside the new owner.
//!
//! The scheduler reuses this module: [`WarehouseLock::acquire`] and [`LockError::Held`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Name of the lock file in the warehouse folder.
pub const LOCK_FILE: &str = "_lock.json";

/// Who holds a lock: the content of `_lock.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    /// The run holding the lock.
    pub run_id: String,
    /// Host name of the process.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// When the lock was taken, RFC 3339 UTC.
    pub started: String,
    /// Last heartbeat, RFC 3339 UTC.
    pub heartbeat: String,
    /// Last heartbeat, milliseconds since the Unix epoch (what staleness is judged on).
    pub heartbeat_unix_ms: i64,
}

/// Lock failures.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live run holds the lock.
    #[error(
        "another run holds the warehouse lock {path}: run {} on {} (pid {}), started {}, last heartbeat {}s ago; \
         it is taken over once its heartbeat is older than {timeout_secs}s or its process is gone",
        owner.run_id, owner.host, owner.pid, owner.started, age_secs
    )]
    Held {
        /// The lock file.
        path: PathBuf,
        /// Its owner.
        owner: Box<LockOwner>,
        /// Seconds since its last heartbeat.
        age_secs: u64,
        /// The staleness timeout.
        timeout_secs: u64,
    },
    /// Our lock was taken over by another run (we were paused longer than the timeout).
    #[error("the warehouse lock {path} was taken over by run {by}; this run stops without publishing further")]
    Lost {
        /// The lock file.
        path: PathBuf,
        /// The run now holding it (or `nobody` if the file is gone).
        by: String,
    },
    /// Reading or writing the lock file failed.
    #[error("warehouse lock {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How long a heartbeat stays fresh, and how often it is renewed.
#[derive(Debug, Clone, Copy)]
pub struct LockTiming {
    /// A lock whose heartbeat is older than this is stale.
    pub timeout: Duration,
    /// Heartbeat period.
    pub heartbeat: Duration,
}

impl LockTiming {
    /// Heartbeat at a quarter of the timeout, between every second and every 5 s.
    pub fn from_timeout_secs(timeout_secs: u64) -> Self {
        let timeout = Duration::from_secs(timeout_secs.max(1));
        let heartbeat = (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(5));
        LockTiming { timeout, heartbeat }
    }
}

/// A held warehouse lock; released (file removed) on drop.
#[derive(Debug)]
pub struct WarehouseLock {
    path: PathBuf,
    run_id: String,
    taken_over: Option<LockOwner>,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether process `pid` exists on this host; `None` when that cannot be told (no `/proc`).
fn process_alive(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self").exists() {
        return None;
    }
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return Some(false),
    };
    // A zombie (killed, not yet reaped by its parent) is dead for our purpose.
    let state = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next());
    Some(state != Some("Z"))
}

/// Why an existing lock may be taken over, or `None` when it is live.
fn staleness(owner: &LockOwner, timing: LockTiming, host: &str) -> Option<String> {
    let age_ms = now_ms().saturating_sub(owner.heartbeat_unix_ms);
    if age_ms > timing.timeout.as_millis() as i64 {
        return Some(format!(
            "heartbeat {}s old (timeout {}s)",
            age_ms / 1000,
            timing.timeout.as_secs()
        ));
    }
    if owner.host == host && owner.pid != std::process::id() && process_alive(owner.pid) == Some(false) {
        return Some(format!("process {} no longer runs on {host}", owner.pid));
    }
    None
}

fn write_owner(path: &Path, owner: &LockOwner, create_new: bool) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(owner).map_err(std::io::Error::other)?;
    if create_new {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    } else {
        // Renewal: write aside and rename over, so a reader never sees half a lock.
        let tmp = path.with_extension(format!("json.{}.tmp", owner.run_id));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

/// A lock file as read: its text, and its owner or why it does not parse.
type ReadLock = (String, Result<LockOwner, String>);

/// Reads a lock file: `Ok(None)` when absent, `Err` text when unreadable as a lock.
fn read_owner(path: &Path) -> Result<Option<ReadLock>, LockError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let parsed = serde_json::from_str(&text).map_err(|e| e.to_string());
            Ok(Some((text, parsed)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

impl WarehouseLock {
    /// Takes the lock of `warehouse` for `run_id`, taking over a stale one; fails with
    /// [`LockError::Held`] when a live run holds it.
    pub fn acquire(warehouse: &Path, run_id: &str, timing: LockTiming) -> Result<WarehouseLock, LockError> {
        std::fs::create_dir_all(warehouse).map_err(io(warehouse))?;
        let path = warehouse.join(LOCK_FILE);
        let host = host_name();
        let mut taken_over = None;
        for _attempt in 0..5 {
            let now = Utc::now();
            let stamp = now.to_rfc3339_opts(SecondsFormat::Millis, true);
            let me = LockOwner {
                run_id: run_id.to_string(),
                host: host.clone(),
                pid: std::process::id(),
                started: stamp.clone(),
                heartbeat: stamp,
                heartbeat_unix_ms: now.timestamp_millis(),
            };
            match write_owner(&path, &me, true) {
                Ok(()) => {
                    let (stop, rx) = mpsc::channel();
                    let heartbeat = spawn_heartbeat(path.clone(), me, timing.heartbeat, rx);
                    return Ok(WarehouseLock {
                        path,
                        run_id: run_id.to_string(),
                        taken_over,
                        stop: Some(stop),
                        heartbeat: Some(heartbeat),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&path)(e)),
            }
            let Some((text, parsed)) = read_owner(&path)? else {
                continue; // released in between: try again
            };
            let (owner, stale) = match parsed {
                Ok(owner) => {
                    let stale = staleness(&owner, timing, &host);
                    (owner, stale)
                }
                Err(message) => {
                    // Half-written by a creator that died (or is writing right now): judge
                    // by the file's age.
                    let age = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    let owner = LockOwner {
                        run_id: format!("<unreadable lock: {message}>"),
                        host: "?".into(),
                        pid: 0,
                        started: "?".into(),
                        heartbeat: "?".into(),
                        heartbeat_unix_ms: now_ms() - age.as_millis() as i64,
                    };
                    let stale = (age > timing.timeout).then(|| format!("unreadable and {}s old", age.as_secs()));
                    (owner, stale)
                }
            };
            let Some(reason) = stale else {
                return Err(LockError::Held {
                    path,
                    age_secs: (now_ms().saturating_sub(owner.heartbeat_unix_ms) / 1000) as u64,
                    owner: Box::new(owner),
                    timeout_secs: timing.timeout.as_secs(),
                });
            };
            // Move the stale lock aside; only the file we judged may be removed.
            let aside = warehouse.join(format!("{LOCK_FILE}.stale-{run_id}"));
            match std::fs::rename(&path, &aside) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            }
            let moved = std::fs::read_to_string(&aside).unwrap_or_default();
            if moved != text {
                // Someone replaced the stale lock with a live one just before our rename:
                // put theirs back (never over a newer one) and retry.
                let _ = std::fs::hard_link(&aside, &path);
                let _ = std::fs::remove_file(&aside);
                continue;
            }
            let _ = std::fs::remove_file(&aside);
            tracing::warn!(stale_run = %owner.run_id, %reason, "took over a stale warehouse lock");
            taken_over = Some(owner);
        }
        Err(LockError::Io {
            path,
            source: std::io::Error::other("the lock kept changing hands; gave up after 5 attempts"),
        })
    }

    /// The stale lock this run took over, if any.
    pub fn taken_over(&self) -> Option<&LockOwner> {
        self.taken_over.as_ref()
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fails with [`LockError::Lost`] unless the lock file still names this run.
    pub fn check(&self) -> Result<(), LockError> {
        match read_owner(&self.path)? {
            Some((_, Ok(owner))) if owner.run_id == self.run_id => Ok(()),
            Some((_, Ok(owner))) => Err(LockError::Lost {
                path: self.path.clone(),
                by: owner.run_id,
            }),
            _ => Err(LockError::Lost {
                path: self.path.clone(),
                by: "nobody".into(),
            }),
        }
    }

    /// Stops the heartbeat and removes the lock file if it is still ours.
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.heartbeat.take() {
            let _ = handle.join();
        }
        if self.check().is_ok() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the lock of `warehouse` if it names `run_id`: for a supervisor (the scheduler)
/// whose child run had to be killed and so could not release its own lock. Returns
/// whether a lock was removed.
pub fn remove_if_owned_by(warehouse: &Path, run_id: &str) -> Result<bool, LockError> {
    let path = warehouse.join(LOCK_FILE);
    match read_owner(&path)? {
        Some((_, Ok(owner))) if owner.run_id == run_id => {
            std::fs::remove_file(&path).map_err(io(&path))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

impl Drop for WarehouseLock {
    fn drop(&mut self) {
        self.release_inner();
    }
}

fn spawn_heartbeat(path: PathBuf, mut me: LockOwner, period: Duration, stop: mpsc::Receiver<()>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(period) {
            // Renew only our own lock: once taken over, the file belongs to the new owner.
            match read_owner(&path) {
                Ok(Some((_, Ok(owner)))) if owner.run_id == me.run_id => {}
                _ => {
                    tracing::error!(lock = %path.display(), "warehouse lock lost; heartbeat stops");
                    return;
                }
            }
            let now = Utc::now();
            me.heartbeat = now.to_rfc3339_opts(SecondsFormat::Millis, true);
            me.heartbeat_unix_ms = now.timestamp_millis();
            if let Err(e) = write_owner(&path, &me, false) {
                tracing::warn!(lock = %path.display(), error = %e, "heartbeat not written");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(timeout_ms: u64) -> LockTiming {
        LockTiming {
            timeout: Duration::from_millis(timeout_ms),
            heartbeat: Duration::from_millis(timeout_ms / 4),
        }
    }

    #[test]
    fn a_second_run_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = WarehouseLock::acquire(dir.path(), "run-a", timing(60_000)).unwrap();
        let err = WarehouseLock::acquire(dir.path(), "run-b", timing(60_000)).unwrap_err();
        assert!(
            matches!(&err, LockError::Held { owner, .. } if owner.run_id == "run-a"),
            "{err}"
        );
        assert!(err.to_string().contains("run-a"), "{err}");
        first.release();
        assert!(!dir.path().join(LOCK_FILE).exists(), "release removes the lock");
        WarehouseLock::acquire(dir.path(), "run-b", timing(60_000)).unwrap();
    }

    #[test]
    fn the_heartbeat_keeps_a_live_lock_fresh_past_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let _held = WarehouseLock::acquire(dir.path(), "run-a", timing(800)).unwrap();
        std::thread::sleep(Duration::from_millis(1600));
        let err = WarehouseLock::acquire(dir.path(), "run-b", timing(800)).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
    }

    #[test]
    fn a_lock_with_an_old_heartbeat_is_taken_over_and_the_old_owner_notices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let old = LockOwner {
            run_id: "run-old".into(),
            host: "elsewhere".into(),
            pid: 1,
            started: "2026-01-01T00:00:00.000Z".into(),
            heartbeat: "2026-01-01T00:00:00.000Z".into(),
            heartbeat_unix_ms: now_ms() - 120_000,
        };
        write_owner(&path, &old, true).unwrap();
        let lock = WarehouseLock::acquire(dir.path(), "run-new", timing(60_000)).unwrap();
        assert_eq!(lock.taken_over().map(|o| o.run_id.as_str()), Some("run-old"));
        lock.check().unwrap();
        let now_held: LockOwner = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(now_held.run_id, "run-new");
        assert_eq!(now_held.pid, std::process::id());
    }

    #[test]
    fn a_lock_of_a_dead_process_on_this_host_is_stale_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let old = LockOwner {
            run_id: "run-killed".into(),
            host: host_name(),
            pid,
            started: "now".into(),
            heartbeat: "now".into(),
            heartbeat_unix_ms: now_ms(),
        };
        write_owner(&dir.path().join(LOCK_FILE), &old, true).unwrap();
        let lock = WarehouseLock::acquire(dir.path(), "run-new", timing(60_000)).unwrap();
        assert_eq!(lock.taken_over().map(|o| o.run_id.as_str()), Some("run-killed"));
    }

    #[test]
    fn a_supervisor_removes_only_the_lock_of_its_own_child() {
        let dir = tempfile::tempdir().unwrap();
        let lock = WarehouseLock::acquire(dir.path(), "run-child", timing(60_000)).unwrap();
        assert!(!remove_if_owned_by(dir.path(), "run-other").unwrap());
        assert!(lock.path().exists());
        assert!(remove_if_owned_by(dir.path(), "run-child").unwrap());
        assert!(!dir.path().join(LOCK_FILE).exists());
        assert!(!remove_if_owned_by(dir.path(), "run-child").unwrap(), "no lock left");
    }

    #[test]
    fn an_owner_whose_lock_was_taken_over_fails_its_check() {
        let dir = tempfile::tempdir().unwrap();
        let lock = WarehouseLock::acquire(dir.path(), "run-a", timing(60_000)).unwrap();
        let mut other: LockOwner = serde_json::from_str(&std::fs::read_to_string(lock.path()).unwrap()).unwrap();
        other.run_id = "run-b".into();
        write_owner(lock.path(), &other, false).unwrap();
        let err = lock.check().unwrap_err();
        assert!(matches!(&err, LockError::Lost { by, .. } if by == "run-b"), "{err}");
        drop(lock);
        assert!(dir.path().join(LOCK_FILE).exists(), "a lost lock is not removed");
    }
}
