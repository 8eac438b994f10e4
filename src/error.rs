//! The error of a whole run, the error of a command ([`CliError`]) and the exit-code
//! contract the CLI documents: 0 success, 1 the run failed, 2 usage or configuration error,
//! 3 data tests failed, 4 another run holds the warehouse lock (the run was skipped), 5 the
//! run was aborted by SIGTERM/SIGINT (nothing published). [`exit_code`] is the one place
//! that decides which code an error gets.

use std::error::Error;
use std::path::PathBuf;

use datafusion::error::DataFusionError;

use crate::config::ConfigError;
use crate::evaluate::EvaluateError;
use crate::generate::GenerateError;
use crate::pipeline::{RunError, RunFailure};
use crate::publish::PublishError;
use crate::publish::quarantine::QuarantineError;
use crate::publish::read::QueryError;
use crate::publish::runs::ChooseRunError;
use crate::report::data::ReportError;
use crate::report::explain::ExplainError;
use crate::schedule::ScheduleError;
use crate::serve::ServeError;
use crate::transform::TransformError;
use crate::transform::checks::PublishedTestsError;
use crate::warehouse::WarehouseError;

pub use crate::exit_codes::{EXIT_ABORTED, EXIT_LOCKED, EXIT_OK, EXIT_RUN_FAILED, EXIT_TESTS_FAILED, EXIT_USAGE};

/// A failed command: the library's typed error (or a problem the command found itself),
/// printed after `patron: `; [`exit_code`] gives its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A usage or configuration problem the command found itself (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// A failure the command found itself (exit code 1).
    #[error("{0}")]
    Failed(String),
    /// Data tests of severity `error` failed (exit code 3).
    #[error("{failed} data test(s) failed")]
    TestsFailed {
        /// Blocking failures.
        failed: usize,
    },
    /// The pipeline file or a schema is wrong (exit code 2).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A pipeline run failed or did not start; the code is the run error's.
    #[error("{}", run_failure_message(.0))]
    Run(#[source] Box<RunFailure>),
    /// Preparing the stages of a pipeline (outside a run) failed; the code is the run
    /// error's.
    #[error("{0}")]
    Pipeline(#[from] RunError),
    /// The stage files do not parse, do not resolve or the selection is wrong (exit code 2).
    #[error("{0}")]
    Stages(#[source] TransformError),
    /// The backtest failed.
    #[error("evaluate: {0}")]
    Evaluate(#[from] EvaluateError),
    /// A customer's card could not be made.
    #[error("explain: {0}")]
    Explain(#[from] ExplainError),
    /// The data tests of the published tables could not run.
    #[error("{0}")]
    DataTests(#[from] PublishedTestsError),
    /// The quarantine summary could not be made.
    #[error("{0}")]
    Quarantine(#[from] QuarantineError),
    /// The report's data could not be gathered.
    #[error("{0}")]
    Report(#[from] ReportError),
    /// The SQL server did not start or stopped.
    #[error("{0}")]
    Serve(#[from] ServeError),
    /// The scheduler stopped.
    #[error("{0}")]
    Schedule(#[from] ScheduleError),
    /// Generating synthetic exports failed.
    #[error("{0}")]
    Generate(#[from] GenerateError),
    /// Reading the warehouse's runs, manifests or tables failed.
    #[error("{0}")]
    Publish(#[from] PublishError),
    /// No run's tables can be read (an unknown run, a failed run, or no succeeded run).
    #[error("{0}")]
    ChooseRun(#[from] ChooseRunError),
    /// A query on the published tables failed.
    #[error("{0}")]
    Query(#[from] QueryError),
    /// `patron query` was given something other than a SELECT (exit code 2).
    #[error("only a SELECT can run here: {0}")]
    NotASelect(#[source] DataFusionError),
    /// The query engine failed.
    #[error("{0}")]
    Engine(#[from] DataFusionError),
    /// Formatting a result failed.
    #[error("{0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Writing JSON failed.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The `--warehouse` given does not name a warehouse (exit code 2).
    #[error("{0}")]
    OpenWarehouse(#[source] WarehouseError),
    /// Writing into the warehouse failed.
    #[error("{0}")]
    Warehouse(#[from] WarehouseError),
    /// Writing an output file failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading the standard input failed (exit code 2).
    #[error("reading the password from stdin: {0}")]
    Stdin(#[source] std::io::Error),
}

impl CliError {
    /// A usage or configuration error (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Usage(message.into())
    }

    /// A failure (exit code 1).
    pub fn failed(message: impl Into<String>) -> Self {
        CliError::Failed(message.into())
    }

    /// The process exit code for this error (see [`exit_code`]).
    pub fn exit_code(&self) -> u8 {
        exit_code(self)
    }
}

impl From<RunFailure> for CliError {
    fn from(failure: RunFailure) -> Self {
        CliError::Run(Box::new(failure))
    }
}

/// `patron run`'s message for a failed run: `not started: ...` when another run holds the
/// lock, else `run failed: ...` and the failed run's manifest.
fn run_failure_message(failure: &RunFailure) -> String {
    if failure.error.is_locked() {
        return format!("not started: {}", failure.error);
    }
    let mut message = format!("run failed: {}", failure.error);
    if let Some(p) = &failure.manifest_path {
        message.push_str(&format!("\nmanifest: {p}"));
    }
    message
}

/// The process exit code of `error`: the first error of its chain (`error`, its source, the
/// source's source...) that decides one; [`EXIT_RUN_FAILED`] when none does. This is the
/// one place that maps errors to the documented codes.
pub fn exit_code(error: &(dyn Error + 'static)) -> u8 {
    let mut link = Some(error);
    while let Some(e) = link {
        if let Some(code) = decide(e) {
            return code;
        }
        link = e.source();
    }
    EXIT_RUN_FAILED
}

/// The exit code `e` itself decides, or `None` to look at its source.
fn decide(e: &(dyn Error + 'static)) -> Option<u8> {
    if let Some(e) = e.downcast_ref::<CliError>() {
        return match e {
            CliError::Usage(_)
            | CliError::Config(_)
            | CliError::Stages(_)
            | CliError::NotASelect(_)
            | CliError::OpenWarehouse(_)
            | CliError::Stdin(_) => Some(EXIT_USAGE),
            CliError::TestsFailed { .. } => Some(EXIT_TESTS_FAILED),
            CliError::Run(failure) => Some(run_error_code(&failure.error)),
            CliError::Pipeline(e) => Some(run_error_code(e)),
            CliError::Failed(_) | CliError::Write { .. } => Some(EXIT_RUN_FAILED),
            // Typed library errors: their own rules below.
            _ => None,
        };
    }
    if e.is::<ConfigError>() {
        return Some(EXIT_USAGE);
    }
    if let Some(e) = e.downcast_ref::<RunError>() {
        return Some(run_error_code(e));
    }
    if let Some(failure) = e.downcast_ref::<RunFailure>() {
        return Some(run_error_code(&failure.error));
    }
    if let Some(e) = e.downcast_ref::<EvaluateError>() {
        return Some(match e {
            EvaluateError::Config(_)
            | EvaluateError::NoSalesSource { .. }
            | EvaluateError::HoldoutOutOfRange { .. }
            | EvaluateError::DateOutOfRange { .. }
            | EvaluateError::Truth(_) => EXIT_USAGE,
            EvaluateError::Run { failure, .. } => run_error_code(&failure.error),
            _ => EXIT_RUN_FAILED,
        });
    }
    if let Some(e) = e.downcast_ref::<ExplainError>() {
        return Some(match e {
            ExplainError::EmptyId | ExplainError::UnknownCustomer { .. } => EXIT_USAGE,
            _ => EXIT_RUN_FAILED,
        });
    }
    if let Some(e) = e.downcast_ref::<PublishedTestsError>() {
        return Some(match e {
            PublishedTestsError::Stages(_)
            | PublishedTestsError::NothingPublished { .. }
            | PublishedTestsError::NotPublished { .. } => EXIT_USAGE,
            _ => EXIT_RUN_FAILED,
        });
    }
    if let Some(e) = e.downcast_ref::<QuarantineError>() {
        return Some(match e {
            QuarantineError::UnknownSource { .. } => EXIT_USAGE,
            QuarantineError::Query(_) => EXIT_RUN_FAILED,
        });
    }
    if let Some(e) = e.downcast_ref::<ChooseRunError>() {
        return Some(match e {
            ChooseRunError::Unknown { .. } | ChooseRunError::NotSucceeded { .. } => EXIT_USAGE,
            ChooseRunError::NoneSucceeded { .. } => EXIT_RUN_FAILED,
        });
    }
    if let Some(e) = e.downcast_ref::<ServeError>() {
        return Some(if e.is_config_error() {
            EXIT_USAGE
        } else {
            EXIT_RUN_FAILED
        });
    }
    None
}

/// The exit code of a run error: 4 when another run holds the lock, 2 for configuration
/// problems, 3 when data tests failed, 5 when aborted, else 1.
fn run_error_code(e: &RunError) -> u8 {
    if e.is_locked() {
        return EXIT_LOCKED;
    }
    match e {
        RunError::Config(_) => EXIT_USAGE,
        RunError::Extract(x) if x.is_config_error() => EXIT_USAGE,
        RunError::Transform(x) if x.is_config_error() => EXIT_USAGE,
        RunError::DataTests { .. } => EXIT_TESTS_FAILED,
        RunError::Aborted { .. } => EXIT_ABORTED,
        _ => EXIT_RUN_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::extract::ExtractError;
    use crate::names;

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
            (engine.phase(), exit_code(&engine)),
            (names::PHASE_TRANSFORM, EXIT_RUN_FAILED)
        );

        let join = tokio::spawn(async { panic!("boom") })
            .await
            .expect_err("the task panicked");
        let task = RunError::Transform(TransformError::Task {
            stage: "fct_customer".into(),
            source: join,
        });
        assert!(
            task.to_string().starts_with("stage `fct_customer`: the task stopped: "),
            "{task}"
        );
        assert!(task.source().is_some());
        assert_eq!(exit_code(&task), EXIT_RUN_FAILED);

        let carry = RunError::Extract(ExtractError::CarryOver {
            source_name: "sales".into(),
            previous_run: "R1".into(),
            message: "raw table missing".into(),
        });
        assert_eq!(
            carry.to_string(),
            "source `sales`: carrying the unchanged files over from run R1: raw table missing; rerun with --full-refresh"
        );
        assert_eq!(
            (carry.phase(), exit_code(&carry)),
            (names::PHASE_EXTRACT, EXIT_RUN_FAILED)
        );
    }

    fn failure(error: RunError) -> CliError {
        CliError::from(RunFailure {
            error,
            manifest_path: Some("wh/runs/R1.json".into()),
        })
    }

    /// Every documented code comes from the one [`exit_code`], whatever wraps the error.
    #[test]
    fn one_function_maps_every_error_to_its_exit_code() {
        use crate::publish::lock::{LockError, LockOwner};
        use crate::publish::runs::ChooseRunError;

        let locked = RunError::Publish(PublishError::Lock(LockError::Held {
            path: "wh/_lock.json".into(),
            owner: Box::new(LockOwner {
                run_id: "R0".into(),
                host: "h".into(),
                pid: 1,
                started: "t".into(),
                heartbeat: "t".into(),
                heartbeat_unix_ms: 0,
            }),
            age_secs: 1,
            timeout_secs: 60,
        }));
        let locked = failure(locked);
        assert!(locked.to_string().starts_with("not started: "), "{locked}");
        assert_eq!(locked.exit_code(), EXIT_LOCKED);

        let aborted = failure(RunError::Aborted {
            phase: "before publishing",
        });
        assert_eq!(
            aborted.to_string(),
            "run failed: aborted by SIGTERM/SIGINT before publishing; nothing was published\nmanifest: wh/runs/R1.json"
        );
        assert_eq!(aborted.exit_code(), EXIT_ABORTED);
        let tests = RunError::DataTests {
            failed: 2,
            report: String::new(),
        };
        assert_eq!(failure(tests).exit_code(), EXIT_TESTS_FAILED);
        let config = ConfigError::Read {
            path: "nowhere.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(failure(RunError::Config(config)).exit_code(), EXIT_USAGE);
        assert_eq!(failure(RunError::NoAsOf).exit_code(), EXIT_RUN_FAILED);

        let evaluate = CliError::from(EvaluateError::Run {
            what: "calibration run".into(),
            failure: Box::new(RunFailure {
                error: RunError::Aborted {
                    phase: "while publishing",
                },
                manifest_path: None,
            }),
        });
        assert!(
            evaluate.to_string().starts_with("evaluate: calibration run failed: "),
            "{evaluate}"
        );
        assert_eq!(evaluate.exit_code(), EXIT_ABORTED);
        let no_sales = CliError::from(EvaluateError::NoSalesSource {
            pipeline: "p.toml".into(),
            found: "web".into(),
        });
        assert_eq!(no_sales.exit_code(), EXIT_USAGE);

        assert_eq!(CliError::from(ExplainError::EmptyId).exit_code(), EXIT_USAGE);
        assert_eq!(
            CliError::from(ExplainError::EmptyId).to_string(),
            "explain: the customer id is empty"
        );
        let missing = ExplainError::MissingTable {
            warehouse: "wh".into(),
            table: "fct_customer".into(),
        };
        assert_eq!(CliError::from(missing).exit_code(), EXIT_RUN_FAILED);

        // Through a wrapper that does not decide, the chain's first decider does.
        let unknown = ReportError::ChooseRun(ChooseRunError::Unknown {
            run_id: "R9".into(),
            warehouse: "wh".into(),
        });
        assert_eq!(CliError::from(unknown).exit_code(), EXIT_USAGE);
        let none = ReportError::ChooseRun(ChooseRunError::NoneSucceeded { warehouse: "wh".into() });
        assert_eq!(CliError::from(none).exit_code(), EXIT_RUN_FAILED);

        assert_eq!(CliError::from(ServeError::Config("no".into())).exit_code(), EXIT_USAGE);
        assert_eq!(
            CliError::from(ServeError::NoRun { warehouse: "wh".into() }).exit_code(),
            EXIT_RUN_FAILED
        );
        assert_eq!(CliError::usage("bad").exit_code(), EXIT_USAGE);
        assert_eq!(CliError::failed("bad").exit_code(), EXIT_RUN_FAILED);
        assert_eq!(CliError::TestsFailed { failed: 1 }.exit_code(), EXIT_TESTS_FAILED);
        assert_eq!(
            CliError::OpenWarehouse(crate::warehouse::WarehouseError {
                location: "x://y".into(),
                message: "unknown scheme".into(),
            })
            .exit_code(),
            EXIT_USAGE
        );
        // A bare library error is decided the same way.
        assert_eq!(exit_code(&RunError::NoAsOf), EXIT_RUN_FAILED);
    }
}
