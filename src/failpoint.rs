//! Failpoints: named places in a run where the crash-safety tests make the process die or
//! fail on purpose. `PATRON_FAILPOINT=<name>` arms one point for the process:
//!
//! - [`hit`] at a crash point calls [`std::process::abort`] when its name is armed: no
//!   destructors, no flush, no lock release, the same as a `SIGKILL` or a power cut for
//!   everything patron wrote so far;
//! - [`error`] at an error point returns an injected I/O error ("no space left on device")
//!   when its name is armed, so the normal failure path runs (a failed run, a manifest).
//!
//! Unarmed, a point costs one comparison with a cached value. Names are fixed strings
//! (listed in [`CRASH_POINTS`] and [`ERROR_POINTS`]) or built from a source or stage name
//! (`extract.<source>.start`); [`armed`] lets callers skip building those names.

use std::sync::OnceLock;

/// Environment variable naming the armed failpoint.
pub const ENV: &str = "PATRON_FAILPOINT";

/// Crash points a run of the default pipeline passes through, in run order (the crash
/// test runs each). Points named after a source or stage exist for every source and stage
/// (`extract.<source>.{start,mid_file,end}`, `transform.{before,after}.<stage>`,
/// `publish.{before,after}_commit.<table>`); a sample is listed. `mid_file` fires after
/// a file's first batch, so only in files longer than one batch (`engine.batch_size`).
pub const CRASH_POINTS: &[&str] = &[
    "run.after_lock",
    "extract.sales.start",
    "extract.sales.end",
    "extract.service.start",
    "extract.service.end",
    "extract.marketing.start",
    "extract.marketing.mid_file",
    "extract.marketing.end",
    "transform.before.stg_sales",
    "transform.after.stg_sales",
    "transform.before.fct_customer",
    "transform.after.fct_customer",
    "score.before_fit",
    "score.after_fit",
    "transform.before.customer_scores",
    "transform.after.customer_scores",
    "publish.start",
    "publish.before_commit.raw_sales",
    "publish.after_commit.raw_sales",
    "publish.before_commit.fct_customer",
    "publish.after_commit.fct_customer",
    "publish.after_commit.customer_scores",
    "publish.before_runs_append",
    "publish.before_manifest",
    "publish.before_vacuum",
];

/// Error points: armed, they make an operation return an injected I/O error.
pub const ERROR_POINTS: &[&str] = &[
    // Writing the first stage table during publish fails as on a full disk (after the raw
    // and quarantine tables were committed, so their rollback runs too).
    "publish.write_error",
];

fn armed_name() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.trim().is_empty()))
        .as_deref()
}

/// True when some failpoint is armed in this process.
pub fn armed() -> bool {
    armed_name().is_some()
}

/// Prefix that turns a crash point into a pause: `PATRON_FAILPOINT=pause:<name>` makes
/// the run stop for [`PAUSE`] at that point (so a test can signal it there).
pub const PAUSE_PREFIX: &str = "pause:";
/// How long a paused point waits.
pub const PAUSE: std::time::Duration = std::time::Duration::from_secs(3);

/// A crash point: aborts the process when `name` is the armed failpoint, pauses the
/// thread for [`PAUSE`] when `pause:<name>` is.
pub fn hit(name: &str) {
    match armed_name() {
        Some(armed) if armed == name => {
            eprintln!("patron: failpoint {name}: aborting");
            std::process::abort();
        }
        Some(armed) if armed.strip_prefix(PAUSE_PREFIX) == Some(name) => {
            eprintln!("patron: failpoint {name}: pausing {}s", PAUSE.as_secs());
            std::thread::sleep(PAUSE);
        }
        _ => {}
    }
}

/// A crash point whose name is built only when some failpoint is armed.
pub fn hit_with(name: impl FnOnce() -> String) {
    if armed() {
        hit(&name());
    }
}

/// An error point: an injected "no space left on device" error when `name` is armed.
pub fn error(name: &str) -> std::io::Result<()> {
    if armed_name() == Some(name) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("no space left on device (injected by {ENV}={name})"),
        ));
    }
    Ok(())
}
