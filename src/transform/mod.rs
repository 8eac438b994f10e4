//! Transform: every `sql/**/<table>.sql` file is one stage producing the table `<table>`;
//! every `sql/**/<table>.csv` is a seed (a small hand-kept lookup table). Dependencies are
//! the tables each query reads, found with DataFusion's SQL parser; stages run in
//! dependency order ([`dag`]) and each result is materialised to Parquet ([`runner`]).

pub mod checks;
pub mod dag;
pub mod discover;
pub mod graph;
pub mod lineage;
pub mod run;
pub mod runner;
pub mod select;
pub mod spec;

use std::path::PathBuf;

pub use dag::{Provided, execution_order, upstream, waves};
pub use discover::{Project, Seed, Stage, discover};
pub use run::{StageInputs, Wave, plan_waves, run_wave};

/// Transform failures, each naming the stage file.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The SQL folder or a file in it could not be read (exit code 2).
    #[error("cannot read {path}: {message}")]
    Read {
        /// File or folder.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// A file name is not usable as a table name (exit code 2).
    #[error("{path}: `{name}` is not a valid table name (use lower-case letters, digits and `_`)")]
    BadName {
        /// The file.
        path: PathBuf,
        /// Its stem.
        name: String,
    },
    /// Two files define the same table (exit code 2).
    #[error("table `{name}` is defined twice: {first} and {second}")]
    Duplicate {
        /// Table name.
        name: String,
        /// First file.
        first: PathBuf,
        /// Second file.
        second: PathBuf,
    },
    /// A stage file does not parse or is not exactly one SELECT (exit code 2).
    #[error("{path}: {message}")]
    Parse {
        /// The stage file.
        path: PathBuf,
        /// Parser message, with line and column where known.
        message: String,
    },
    /// A stage reads a table nobody produces (exit code 2).
    #[error("{path}: unknown table `{table}`{}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownTable {
        /// The stage file.
        path: PathBuf,
        /// The table it reads.
        table: String,
        /// Closest known table name.
        suggestion: Option<String>,
    },
    /// A stage uses a table or function that only a stage which does not exist provides
    /// (exit code 2).
    #[error("{path}: uses `{name}`, which comes from the stage `{provider}`; add that stage")]
    MissingProvider {
        /// The stage file.
        path: PathBuf,
        /// The table or function used.
        name: String,
        /// The stage that would provide it.
        provider: String,
    },
    /// A `--select` / `--exclude` selector matches nothing (exit code 2).
    #[error("selector `{selector}`: {message}")]
    Selection {
        /// The selector.
        selector: String,
        /// What is wrong, with a suggestion where one is close.
        message: String,
    },
    /// Stages depend on each other in a circle (exit code 2).
    #[error("dependency cycle between stages: {}", files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// The stage files on the cycle, first repeated at the end.
        files: Vec<PathBuf>,
    },
    /// Planning or executing a stage failed.
    #[error("stage `{stage}` ({path}): {message}")]
    Sql {
        /// Stage (table) name.
        stage: String,
        /// The stage file.
        path: PathBuf,
        /// DataFusion's message, with the line shown where known.
        message: String,
    },
    /// Writing a stage's result failed.
    #[error(transparent)]
    Write(#[from] crate::storage::WriteError),
    /// `--select` / `--exclude` left no stage to run (exit code 2).
    #[error("the selection picks no stage to run")]
    EmptySelection,
    /// A selected stage reads a stage that is not selected and was never published, so
    /// there is nothing to read it from (exit code 2).
    #[error(
        "stage `{stage}` is not selected but a selected stage reads it, and no succeeded run has published it; select it too (e.g. `--select +<your stage>`)"
    )]
    NotPublished {
        /// The unselected stage.
        stage: String,
    },
    /// A stage's task stopped before finishing (it panicked or was cancelled).
    #[error("stage `{stage}`: the task stopped: {source}")]
    Task {
        /// The stage.
        stage: String,
        /// The runtime's report.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl TransformError {
    /// True when the stage files themselves are wrong before anything ran.
    pub fn is_config_error(&self) -> bool {
        !matches!(
            self,
            TransformError::Sql { .. } | TransformError::Write(_) | TransformError::Task { .. }
        )
    }
}
