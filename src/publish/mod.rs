//! Publish: move a finished run's tables from its staging area into the warehouse, record
//! the run, and write the run manifest.
//!
//! With the default `delta` format ([`delta`]) every table is a Delta Lake table and each
//! table's publish is one atomic overwrite commit; the run is then appended to the `runs`
//! table ([`runs`]) with the version of every table, which is how readers get a consistent
//! set. With the `parquet` format each table is a plain folder swapped in with renames
//! ([`swap_in`]): no history and no cross-table consistency, for tools without Delta.
//! [`lock`] keeps a second run from publishing into the same warehouse at the same time.

pub mod commit;
pub mod delta;
pub mod lock;
pub mod manifest;
pub mod quarantine;
pub mod read;
pub mod runs;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use manifest::{Outcome, RunManifest, write_manifest};

use crate::problems::Problems;

/// Publish failures, with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A rename, folder creation or manifest write failed.
    #[error("publishing {path}: {source}")]
    Io {
        /// The path being published or written.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A Delta Lake operation on a table failed.
    #[error("Delta table `{table}` ({path}): {message}")]
    Delta {
        /// Table name.
        table: String,
        /// Table folder or URL.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The warehouse lock is held by another run, or was lost.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// Reading or writing an object of the warehouse failed.
    #[error(transparent)]
    Store(#[from] crate::warehouse::WarehouseError),
    /// The publish was cancelled (SIGTERM/SIGINT) before its next table; the tables it had
    /// committed were restored.
    #[error("cancelled while publishing")]
    Cancelled,
}

/// How tables are published (`[publish] format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    /// Delta Lake tables: atomic commits, versions, a consistent set through `runs`.
    #[default]
    Delta,
    /// Plain Parquet folders swapped in with renames (no history).
    Parquet,
}

impl TableFormat {
    /// The name used in the pipeline file and the `runs` table.
    pub fn as_str(self) -> &'static str {
        match self {
            TableFormat::Delta => "delta",
            TableFormat::Parquet => "parquet",
        }
    }
}

/// Largest `publish.row_group_rows`.
pub const MAX_ROW_GROUP_ROWS: usize = 16 * 1024 * 1024;

/// Publish settings (`[publish]` in the pipeline file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishSettings {
    /// Table format: `delta` (default) or `parquet`.
    pub format: TableFormat,
    /// After a successful run, keep the table versions of this many latest succeeded runs
    /// readable and vacuum the data files only older versions need; 0 keeps everything.
    /// The versions of the latest successful run are always kept.
    pub retain_versions: u64,
    /// A warehouse lock whose heartbeat is older than this is stale and taken over.
    pub lock_timeout_secs: u64,
    /// Most rows per Parquet row group of the staged and published tables.
    pub row_group_rows: usize,
}

impl Default for PublishSettings {
    fn default() -> Self {
        PublishSettings {
            format: TableFormat::Delta,
            retain_versions: 0,
            lock_timeout_secs: 60,
            row_group_rows: crate::storage::DEFAULT_ROW_GROUP_ROWS,
        }
    }
}

impl PublishSettings {
    /// Records out-of-range values under `publish.*`.
    pub fn validate(&self, problems: &mut Problems) {
        if !(5..=86_400).contains(&self.lock_timeout_secs) {
            problems.push(
                "publish.lock_timeout_secs",
                format!("{} must be between 5 and 86400", self.lock_timeout_secs),
            );
        }
        if !(1..=MAX_ROW_GROUP_ROWS).contains(&self.row_group_rows) {
            problems.push(
                "publish.row_group_rows",
                format!("{} must be between 1 and {MAX_ROW_GROUP_ROWS}", self.row_group_rows),
            );
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces the folder `target` with the folder `staged`; the old folder is moved to
/// `retired` (inside the run's staging area) and removed afterwards.
pub fn swap_in(staged: &Path, target: &Path, retired: &Path) -> Result<(), PublishError> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if target.exists() {
        if let Some(parent) = retired.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::rename(target, retired).map_err(io(target))?;
    }
    std::fs::rename(staged, target).map_err(io(target))?;
    if retired.exists() {
        std::fs::remove_dir_all(retired).map_err(io(retired))?;
    }
    Ok(())
}

/// Removes a run's staging folder after a successful publish.
pub fn remove_staging(staging: &Path) -> Result<(), PublishError> {
    if staging.exists() {
        std::fs::remove_dir_all(staging).map_err(io(staging))?;
    }
    Ok(())
}
