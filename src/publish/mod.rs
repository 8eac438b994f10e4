//! Publish: move a finished run's tables from its staging area into the warehouse, and
//! write the run manifest. Each table is a folder swapped in with renames on the same
//! file system, so a reader sees the old or the new folder, never a half-written file.
//! (Cross-table atomicity comes with the Delta Lake table format.)

pub mod manifest;
pub mod read;

use std::path::{Path, PathBuf};

pub use manifest::{Outcome, RunManifest, write_manifest};

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
