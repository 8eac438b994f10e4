//! The warehouse lock: one run at a time publishes into a warehouse.
//!
//! The lock is the object `_lock.json` in the warehouse, created only if absent (a local
//! file opened with `create_new`, or an object store's conditional put: only one creator
//! wins) and holding its owner: run id, host, pid, start and a heartbeat a background
//! thread rewrites every few seconds. A lock is *stale*, and is taken over, when its
//! heartbeat is older than the timeout, or when it names a process on this host that no
//! longer exists (a run killed with `SIGKILL` leaves its lock behind).
//!
//! Taking over must replace exactly the lock judged stale, never one another run wrote in
//! between. In an object store that is a compare-and-swap: the new owner is written only
//! if the object still has the ETag that was read. In a local folder the stale file is
//! renamed aside, checked to be the one judged (else put back) and a fresh lock created.
//! The owner checks it still holds the lock ([`WarehouseLock::check`]) before each commit,
//! so a run whose lock was taken over (paused longer than the timeout) stops instead of
//! publishing beside the new owner.
//!
//! The scheduler reuses this module: [`WarehouseLock::acquire`] and [`LockError::Held`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{SecondsFormat, Utc};
use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};

use crate::warehouse::{Warehouse, WarehouseError};

/// Name of the lock object in the warehouse.
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
        /// The lock file or object.
        path: String,
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
        /// The lock file or object.
        path: String,
        /// The run now holding it (or `nobody` if the file is gone).
        by: String,
    },
    /// Reading or writing the lock failed.
    #[error("warehouse lock {path}: {message}")]
    Io {
        /// The lock file or object.
        path: String,
        /// The OS or store error.
        message: String,
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

/// A held warehouse lock; released (removed) on drop.
#[derive(Debug)]
pub struct WarehouseLock {
    file: Arc<LockFile>,
    run_id: String,
    taken_over: Option<LockOwner>,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
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
    if !std::path::Path::new("/proc/self").exists() {
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

/// A lock as read: its text, its owner or why it does not parse, how old the object is,
/// and (in an object store) its version for a compare-and-swap.
struct Seen {
    text: String,
    owner: Result<LockOwner, String>,
    age: Duration,
    version: Option<UpdateVersion>,
}

/// Where the lock lives, and the few operations the protocol needs from it.
enum LockFile {
    /// `_lock.json` in a local warehouse folder.
    Local(PathBuf),
    /// `_lock.json` in an object store, driven from a private runtime: the lock is used
    /// from synchronous code (the heartbeat thread, `Drop`) as well as from async code.
    Remote {
        warehouse: Warehouse,
        /// Always `Some` until dropped.
        runtime: Option<tokio::runtime::Runtime>,
    },
}

impl std::fmt::Debug for LockFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's context would panic.
        if let LockFile::Remote { runtime, .. } = self
            && let Some(rt) = runtime.take()
        {
            rt.shutdown_background();
        }
    }
}

fn serialize(owner: &LockOwner) -> String {
    serde_json::to_string_pretty(owner).unwrap_or_default()
}

impl LockFile {
    fn new(warehouse: &Warehouse) -> Result<LockFile, LockError> {
        match warehouse.local_dir() {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| LockError::Io {
                    path: dir.display().to_string(),
                    message: e.to_string(),
                })?;
                Ok(LockFile::Local(dir.join(LOCK_FILE)))
            }
            None => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|e| LockError::Io {
                        path: warehouse.describe(LOCK_FILE),
                        message: e.to_string(),
                    })?;
                Ok(LockFile::Remote {
                    warehouse: warehouse.clone(),
                    runtime: Some(runtime),
                })
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            LockFile::Local(path) => path.display().to_string(),
            LockFile::Remote { warehouse, .. } => warehouse.describe(LOCK_FILE),
        }
    }

    fn err(&self, message: impl ToString) -> LockError {
        LockError::Io {
            path: self.describe(),
            message: message.to_string(),
        }
    }

    /// Creates the lock holding `owner` if there is none; `false` when one exists.
    fn create(&self, owner: &LockOwner) -> Result<bool, LockError> {
        let text = serialize(owner);
        match self {
            LockFile::Local(path) => {
                let written = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .and_then(|mut file| {
                        file.write_all(text.as_bytes())?;
                        file.sync_all()
                    });
                match written {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(self.err(e)),
                }
            }
            LockFile::Remote { warehouse, runtime } => {
                let wh = warehouse.clone();
                on(runtime, async move { wh.put_new(LOCK_FILE, text).await }).map_err(|e| self.err(e.message))
            }
        }
    }

    /// The lock as it is now, `None` when there is none.
    fn read(&self) -> Result<Option<Seen>, LockError> {
        let parse = |text: String, age: Duration, version: Option<UpdateVersion>| Seen {
            owner: serde_json::from_str(&text).map_err(|e| e.to_string()),
            text,
            age,
            version,
        };
        match self {
            LockFile::Local(path) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let age = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    Ok(Some(parse(text, age, None)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.err(e)),
            },
            LockFile::Remote { warehouse, runtime } => {
                let wh = warehouse.clone();
                let got =
                    on(runtime, async move { wh.get_versioned(LOCK_FILE).await }).map_err(|e| self.err(e.message))?;
                Ok(got.map(|(bytes, version, modified)| {
                    let age = (Utc::now() - modified).to_std().unwrap_or_default();
                    parse(String::from_utf8_lossy(&bytes).into_owned(), age, Some(version))
                }))
            }
        }
    }

    /// Replaces the lock `seen` with one held by `me`; `false` when the lock changed in
    /// between (another run got there first).
    fn replace(&self, seen: &Seen, me: &LockOwner, aside_tag: &str) -> Result<bool, LockError> {
        match self {
            LockFile::Local(path) => {
                let aside = path.with_extension(format!("json.stale-{aside_tag}"));
                match std::fs::rename(path, &aside) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(self.err(e)),
                }
                let moved = std::fs::read_to_string(&aside).unwrap_or_default();
                if moved != seen.text {
                    // Someone replaced the lock just before our rename: put theirs back
                    // (never over a newer one).
                    let _ = std::fs::hard_link(&aside, path);
                    let _ = std::fs::remove_file(&aside);
                    return Ok(false);
                }
                let _ = std::fs::remove_file(&aside);
                self.create(me)
            }
            LockFile::Remote { warehouse, runtime } => {
                let Some(version) = seen.version.clone() else {
                    return Ok(false);
                };
                let (wh, text) = (warehouse.clone(), serialize(me));
                on(runtime, async move { wh.put_if(LOCK_FILE, text, version).await }).map_err(|e| self.err(e.message))
            }
        }
    }

    /// Rewrites our own lock `seen` with a fresh heartbeat.
    fn renew(&self, seen: &Seen, me: &LockOwner) -> Result<(), LockError> {
        let text = serialize(me);
        match self {
            LockFile::Local(path) => {
                // Written aside and renamed over, so a reader never sees half a lock.
                let tmp = path.with_extension(format!("json.{}.tmp", me.run_id));
                std::fs::write(&tmp, text)
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .map_err(|e| self.err(e))
            }
            LockFile::Remote { warehouse, runtime } => {
                let Some(version) = seen.version.clone() else {
                    return Err(self.err("the lock object has no version"));
                };
                let wh = warehouse.clone();
                match on(runtime, async move { wh.put_if(LOCK_FILE, text, version).await }) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(self.err("the lock changed while renewing it")),
                    Err(e) => Err(self.err(e.message)),
                }
            }
        }
    }

    fn remove(&self) -> Result<(), LockError> {
        match self {
            LockFile::Local(path) => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.err(e)),
            },
            LockFile::Remote { warehouse, runtime } => {
                let wh = warehouse.clone();
                on(runtime, async move { wh.delete(LOCK_FILE).await }).map_err(|e| self.err(e.message))
            }
        }
    }

    /// The owner, if the lock exists and parses.
    fn owner(&self) -> Result<Option<LockOwner>, LockError> {
        Ok(self.read()?.and_then(|s| s.owner.ok()))
    }
}

/// Runs `future` on `runtime` and waits for it, from any thread: the calling thread only
/// waits (it may itself be a runtime's worker), the work happens on `runtime`.
fn on<T: Send + 'static>(
    runtime: &Option<tokio::runtime::Runtime>,
    future: impl std::future::Future<Output = Result<T, WarehouseError>> + Send + 'static,
) -> Result<T, WarehouseError> {
    let stopped = || WarehouseError {
        location: LOCK_FILE.into(),
        message: "the lock's runtime has stopped".into(),
    };
    let (tx, rx) = mpsc::channel();
    runtime.as_ref().ok_or_else(stopped)?.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().map_err(|_| stopped())?
}

impl WarehouseLock {
    /// Takes the lock of `warehouse` for `run_id`, taking over a stale one; fails with
    /// [`LockError::Held`] when a live run holds it.
    pub fn acquire(warehouse: &Warehouse, run_id: &str, timing: LockTiming) -> Result<WarehouseLock, LockError> {
        let file = Arc::new(LockFile::new(warehouse)?);
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
            let held = match taken_over {
                Some(_) => false,
                None => file.create(&me)?,
            };
            let held = held || {
                let Some(seen) = file.read()? else {
                    continue; // released in between: try again
                };
                let (owner, stale) = match &seen.owner {
                    Ok(owner) => (owner.clone(), staleness(owner, timing, &host)),
                    Err(message) => {
                        // Half-written by a creator that died (or is writing right now):
                        // judge by the object's age.
                        let owner = LockOwner {
                            run_id: format!("<unreadable lock: {message}>"),
                            host: "?".into(),
                            pid: 0,
                            started: "?".into(),
                            heartbeat: "?".into(),
                            heartbeat_unix_ms: now_ms() - seen.age.as_millis() as i64,
                        };
                        let stale =
                            (seen.age > timing.timeout).then(|| format!("unreadable and {}s old", seen.age.as_secs()));
                        (owner, stale)
                    }
                };
                let Some(reason) = stale else {
                    return Err(LockError::Held {
                        path: file.describe(),
                        age_secs: (now_ms().saturating_sub(owner.heartbeat_unix_ms) / 1000) as u64,
                        owner: Box::new(owner),
                        timeout_secs: timing.timeout.as_secs(),
                    });
                };
                if !file.replace(&seen, &me, run_id)? {
                    continue; // it changed hands in between: judge again
                }
                tracing::warn!(stale_run = %owner.run_id, %reason, "took over a stale warehouse lock");
                taken_over = Some(owner);
                true
            };
            if held {
                let (stop, rx) = mpsc::channel();
                let heartbeat = spawn_heartbeat(file.clone(), me, timing.heartbeat, rx);
                return Ok(WarehouseLock {
                    file,
                    run_id: run_id.to_string(),
                    taken_over,
                    stop: Some(stop),
                    heartbeat: Some(heartbeat),
                });
            }
        }
        Err(file.err("the lock kept changing hands; gave up after 5 attempts"))
    }

    /// The stale lock this run took over, if any.
    pub fn taken_over(&self) -> Option<&LockOwner> {
        self.taken_over.as_ref()
    }

    /// The lock file or object.
    pub fn path(&self) -> String {
        self.file.describe()
    }

    /// Fails with [`LockError::Lost`] unless the lock still names this run.
    pub fn check(&self) -> Result<(), LockError> {
        match self.file.owner()? {
            Some(owner) if owner.run_id == self.run_id => Ok(()),
            Some(owner) => Err(LockError::Lost {
                path: self.file.describe(),
                by: owner.run_id,
            }),
            None => Err(LockError::Lost {
                path: self.file.describe(),
                by: "nobody".into(),
            }),
        }
    }

    /// Stops the heartbeat and removes the lock if it is still ours.
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
            let _ = self.file.remove();
        }
    }
}

/// Removes the lock of `warehouse` if it names `run_id`: for a supervisor (the scheduler)
/// whose child run had to be killed and so could not release its own lock. Returns
/// whether a lock was removed.
pub fn remove_if_owned_by(warehouse: &Warehouse, run_id: &str) -> Result<bool, LockError> {
    let file = LockFile::new(warehouse)?;
    match file.owner()? {
        Some(owner) if owner.run_id == run_id => {
            file.remove()?;
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

fn spawn_heartbeat(
    file: Arc<LockFile>,
    mut me: LockOwner,
    period: Duration,
    stop: mpsc::Receiver<()>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(period) {
            // Renew only our own lock: once taken over, it belongs to the new owner.
            let seen = match file.read() {
                Ok(Some(seen)) if seen.owner.as_ref().is_ok_and(|o| o.run_id == me.run_id) => seen,
                _ => {
                    tracing::error!(lock = %file.describe(), "warehouse lock lost; heartbeat stops");
                    return;
                }
            };
            let now = Utc::now();
            me.heartbeat = now.to_rfc3339_opts(SecondsFormat::Millis, true);
            me.heartbeat_unix_ms = now.timestamp_millis();
            if let Err(e) = file.renew(&seen, &me) {
                tracing::warn!(lock = %file.describe(), error = %e, "heartbeat not written");
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
        let first = WarehouseLock::acquire(&Warehouse::local(dir.path()), "run-a", timing(60_000)).unwrap();
        let err = WarehouseLock::acquire(&Warehouse::local(dir.path()), "run-b", timing(60_000)).unwrap_err();
        assert!(
            matches!(&err, LockError::Held { owner, .. } if owner.run_id == "run-a"),
            "{err}"
        );
        assert!(err.to_string().contains("run-a"), "{err}");
        first.release();
        assert!(!dir.path().join(LOCK_FILE).exists(), "release removes the lock");
        WarehouseLock::acquire(&Warehouse::local(dir.path()), "run-b", timing(60_000)).unwrap();
    }

    #[test]
    fn the_heartbeat_keeps_a_live_lock_fresh_past_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let _held = WarehouseLock::acquire(&Warehouse::local(dir.path()), "run-a", timing(800)).unwrap();
        std::thread::sleep(Duration::from_millis(1600));
        let err = WarehouseLock::acquire(&Warehouse::local(dir.path()), "run-b", timing(800)).unwrap_err();
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
        std::fs::write(&path, serialize(&old)).unwrap();
        let lock = WarehouseLock::acquire(&Warehouse::local(dir.path()), "run-new", timing(60_000)).unwrap();
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
        std::fs::write(dir.path().join(LOCK_FILE), serialize(&old)).unwrap();
        let lock = WarehouseLock::acquire(&Warehouse::local(dir.path()), "run-new", timing(60_000)).unwrap();
        assert_eq!(lock.taken_over().map(|o| o.run_id.as_str()), Some("run-killed"));
    }

    #[test]
    fn a_supervisor_removes_only_the_lock_of_its_own_child() {
        let dir = tempfile::tempdir().unwrap();
        let lock = WarehouseLock::acquire(&Warehouse::local(dir.path()), "run-child", timing(60_000)).unwrap();
        assert!(!remove_if_owned_by(&Warehouse::local(dir.path()), "run-other").unwrap());
        assert!(std::path::Path::new(&lock.path()).exists());
        assert!(remove_if_owned_by(&Warehouse::local(dir.path()), "run-child").unwrap());
        assert!(!dir.path().join(LOCK_FILE).exists());
        assert!(
            !remove_if_owned_by(&Warehouse::local(dir.path()), "run-child").unwrap(),
            "no lock left"
        );
    }

    #[test]
    fn an_owner_whose_lock_was_taken_over_fails_its_check() {
        let dir = tempfile::tempdir().unwrap();
        let lock = WarehouseLock::acquire(&Warehouse::local(dir.path()), "run-a", timing(60_000)).unwrap();
        let mut other: LockOwner = serde_json::from_str(&std::fs::read_to_string(lock.path()).unwrap()).unwrap();
        other.run_id = "run-b".into();
        std::fs::write(lock.path(), serialize(&other)).unwrap();
        let err = lock.check().unwrap_err();
        assert!(matches!(&err, LockError::Lost { by, .. } if by == "run-b"), "{err}");
        drop(lock);
        assert!(dir.path().join(LOCK_FILE).exists(), "a lost lock is not removed");
    }
}
