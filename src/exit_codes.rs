//! The exit codes patron's commands return: the documented contract (0 success, 1 the run
//! failed, 2 usage or configuration error, 3 data tests failed, 4 skipped: another run holds
//! the warehouse lock, 5 aborted by SIGTERM/SIGINT). A module of its own, below everything,
//! so the scheduler can read a child run's code; `error::exit_code` decides which code an
//! error gets.

/// Exit code: the run succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit code: the run failed (bad data over budget, SQL failure, I/O...).
pub const EXIT_RUN_FAILED: u8 = 1;
/// Exit code: usage or configuration error (bad flags, pipeline file, schema, missing
/// inputs, stage files that do not parse or do not resolve).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: an `error` data test failed; nothing was published.
pub const EXIT_TESTS_FAILED: u8 = 3;
/// Exit code: another run holds the warehouse lock; nothing was done.
pub const EXIT_LOCKED: u8 = 4;
/// Exit code: the run was aborted by SIGTERM or SIGINT; nothing was published.
pub const EXIT_ABORTED: u8 = 5;
