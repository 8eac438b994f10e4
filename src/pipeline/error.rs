//! The error of a whole run: which phase stopped it and why, with the typed error of the
//! layer that failed. `error::exit_code` maps it to the documented exit code.

use crate::config::ConfigError;
use crate::extract::ExtractError;
use crate::names;
use crate::publish::PublishError;
use crate::transform::TransformError;

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
            RunError::Duplicates(_) => names::PHASE_EXTRACT,
            RunError::Transform(_) | RunError::Engine { .. } | RunError::Materialize { .. } => names::PHASE_TRANSFORM,
            RunError::Score(_) => "score",
            RunError::DataTests { .. } => names::PHASE_TESTS,
            RunError::Aborted { .. } => "aborted",
            RunError::Publish(_) | RunError::Io { .. } => names::PHASE_PUBLISH,
        }
    }
}
