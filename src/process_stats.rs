//! Measuring a child process: wall time and peak resident memory (Linux `VmHWM`, polled
//! from `/proc` while it runs). Used by the benchmarks and the streaming-memory tests.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a measured child did.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// How it exited.
    pub status: ExitStatus,
    /// Wall time.
    pub elapsed: Duration,
    /// Peak resident set size in KiB (0 where `/proc` is not available).
    pub peak_rss_kib: u64,
}

fn read_hwm(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd` (stdout discarded) and measures it.
pub fn measure(mut cmd: Command) -> std::io::Result<Measured> {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).spawn()?;
    let pid = child.id();
    let mut peak = 0;
    loop {
        if let Some(hwm) = read_hwm(pid) {
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_wait()? {
            return Ok(Measured {
                status,
                elapsed: started.elapsed(),
                peak_rss_kib: peak,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
