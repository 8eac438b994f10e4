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
    /// The query engine failed outside a stage (building the session, registering a
    /// table).
    #[error("query engine: {context}: {source}")]
    Engine {
        /// What the run was doing.
        context: String,
        /// The engine's error.
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },
    /// A table the run holds (model parameters, churn predictions, a table carried from
    /// the previous run) could not be written to the staging folder.
    #[error("table `{table}`: {source}")]
    Materialize {
        /// The table.
        table: String,
        /// Why.
        #[source]
        source: Box<crate::transform::runner::MaterializeError>,
    },
    /// A task of the run stopped before finishing (it panicked or was cancelled).
    #[error("{task}: the task stopped: {source}")]
    Task {
        /// The task: `extract of source `sales``, `stage `fct_customer``, ...
        task: String,
        /// The runtime's report.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The incremental extract could not carry the unchanged files' rows over from the
    /// previous run.
    #[error(
        "source `{name}`: carrying the unchanged files over from run {previous_run}: {message}; rerun with --full-refresh"
    )]
    CarryOver {
        /// The source.
        name: String,
        /// The run whose tables the rows come from.
        previous_run: String,
        /// What went wrong.
        message: String,
    },
    /// The scan for superseded copies of a key failed.
    #[error("duplicate-key scan: {0}")]
    Duplicates(String),
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
    /// A query-engine error with what the run was doing.
    pub fn engine(context: impl Into<String>) -> impl FnOnce(datafusion::error::DataFusionError) -> RunError {
        let context = context.into();
        move |source| RunError::Engine {
            context,
            source: Box::new(source),
        }
    }

    /// A materialisation error of `table`.
    pub fn materialize(
        table: impl Into<String>,
    ) -> impl FnOnce(crate::transform::runner::MaterializeError) -> RunError {
        let table = table.into();
        move |source| RunError::Materialize {
            table,
            source: Box::new(source),
        }
    }

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
            RunError::CarryOver { .. } | RunError::Duplicates(_) => names::PHASE_EXTRACT,
            RunError::Transform(_) | RunError::Engine { .. } | RunError::Materialize { .. } | RunError::Task { .. } => {
                names::PHASE_TRANSFORM
            }
            RunError::Score(_) => "score",
            RunError::DataTests { .. } => names::PHASE_TESTS,
            RunError::Aborted { .. } => "aborted",
            RunError::Publish(_) | RunError::Io { .. } => names::PHASE_PUBLISH,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[tokio::test]
    async fn typed_errors_keep_their_source_phase_and_exit_code() {
        let engine = RunError::engine("registering `raw_sales`")(datafusion::error::DataFusionError::Plan(
            "no such file".into(),
        ));
        assert_eq!(
            engine.to_string(),
            "query engine: registering `raw_sales`: Error during planning: no such file"
        );
        assert!(engine.source().is_some_and(|s| s.to_string().contains("no such file")));
        assert_eq!(
            (engine.phase(), engine.exit_code()),
            (names::PHASE_TRANSFORM, EXIT_RUN_FAILED)
        );

        let join = tokio::spawn(async { panic!("boom") })
            .await
            .expect_err("the task panicked");
        let task = RunError::Task {
            task: "stage `fct_customer`".into(),
            source: join,
        };
        assert!(
            task.to_string().starts_with("stage `fct_customer`: the task stopped: "),
            "{task}"
        );
        assert!(task.source().is_some());
        assert_eq!(task.exit_code(), EXIT_RUN_FAILED);

        let carry = RunError::CarryOver {
            name: "sales".into(),
            previous_run: "R1".into(),
            message: "raw table missing".into(),
        };
        assert_eq!(
            carry.to_string(),
            "source `sales`: carrying the unchanged files over from run R1: raw table missing; rerun with --full-refresh"
        );
        assert_eq!(
            (carry.phase(), carry.exit_code()),
            (names::PHASE_EXTRACT, EXIT_RUN_FAILED)
        );
    }
}
