//! The error of a whole run and the exit-code contract the CLI documents:
//! 0 success, 1 the run failed, 2 usage or configuration error, 3 data tests failed,
//! 4 another run holds the warehouse lock (the run was skipped), 5 the run was aborted by
//! SIGTERM/SIGINT (nothing published).

use crate::config::ConfigError;
use crate::extract::ExtractError;
use crate::names;
use crate::publish::PublishError;
use crate::transform::TransformError;

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

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Pipeline file or schema problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Extract failed.
    #[error(transparent)]
    Extract(#[from] ExtractError),
    /// Stage discovery or execution failed.
    #[error(transparent)]
    Transform(#[from] TransformError),
    /// Data tests of severity `error` failed; nothing was published.
    #[error("{failed} data test(s) failed; nothing was published\n{report}")]
    DataTests {
        /// Blocking failures.
        failed: usize,
        /// Failing rows and reproducing queries.
        report: String,
    },
    /// The model fit failed.
    #[error(transparent)]
    Score(#[from] crate::score::models::ScoreError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The query engine failed outside a stage (registering a table, building the session).
    #[error("query engine: {0}")]
    Engine(String),
    /// The data holds no timestamp to take the as-of date from.
    #[error("no event timestamps in the extracted data to take the as-of date from; set `run.as_of` or pass --as-of")]
    NoAsOf,
    /// SIGTERM or SIGINT asked the run to stop; it stopped without publishing (tables it
    /// had committed were restored).
    #[error("aborted by SIGTERM/SIGINT {phase}; nothing was published")]
    Aborted {
        /// When: `before publishing` or `while publishing`.
        phase: &'static str,
    },
    /// Any other I/O failure, with its path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl RunError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        if self.is_locked() {
            return EXIT_LOCKED;
        }
        let config = match self {
            RunError::Config(_) => true,
            RunError::Extract(e) => e.is_config_error(),
            RunError::Transform(e) => e.is_config_error(),
            _ => false,
        };
        if config {
            EXIT_USAGE
        } else if matches!(self, RunError::DataTests { .. }) {
            EXIT_TESTS_FAILED
        } else if matches!(self, RunError::Aborted { .. }) {
            EXIT_ABORTED
        } else {
            EXIT_RUN_FAILED
        }
    }

    /// True when the run did not start because another run holds the warehouse lock.
    pub fn is_locked(&self) -> bool {
        matches!(
            self,
            RunError::Publish(PublishError::Lock(crate::publish::lock::LockError::Held { .. }))
        )
    }

    /// The pipeline phase the error belongs to, for the manifest.
    pub fn phase(&self) -> &'static str {
        match self {
            RunError::Config(_) => "config",
            RunError::Extract(_) | RunError::NoAsOf => names::PHASE_EXTRACT,
            RunError::Transform(_) | RunError::Engine(_) => names::PHASE_TRANSFORM,
            RunError::Score(_) => "score",
            RunError::DataTests { .. } => names::PHASE_TESTS,
            RunError::Aborted { .. } => "aborted",
            RunError::Publish(_) | RunError::Io { .. } => names::PHASE_PUBLISH,
        }
    }
}
