//! Reading what a warehouse has published: the tables as DataFusion tables, and the latest
//! successful run's manifest. Used by `patron test` and other commands that look at the
//! published state rather than run the pipeline.

use std::path::Path;

use datafusion::prelude::{ParquetReadOptions, SessionContext};

use super::runs::{self, RunRecord};
use super::{PublishError, delta};
use crate::names::{LATEST_MANIFEST, RUNS_DIR, RUNS_TABLE, TABLES_DIR, published_table_name};
use crate::transform::runner::register_parquet;

/// Registers every published table of `warehouse` on `ctx` (Delta tables at their latest
/// version, Parquet folders as they are); returns their names, sorted.
pub async fn register_published(ctx: &SessionContext, warehouse: &Path) -> Result<Vec<String>, PublishError> {
    let dir = warehouse.join(TABLES_DIR);
    let entries = std::fs::read_dir(&dir).map_err(|source| PublishError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if !path.is_dir() {
            continue;
        }
        register_parquet(ctx, &name, &path)
            .await
            .map_err(|e| PublishError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Registers one published table folder as `name`: a Delta table at its latest version,
/// or a plain Parquet folder (the `parquet` publish format).
pub async fn register_table(ctx: &SessionContext, name: &str, path: &Path) -> Result<(), PublishError> {
    if super::delta::is_delta_table(path) {
        super::delta::register(ctx, name, path, None).await
    } else {
        register_parquet(ctx, name, path).await.map_err(|e| PublishError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// A table as a succeeded run published it: what incremental loads and stages build on.
#[derive(Debug, Clone)]
pub struct PublishedVersion {
    /// The run that published it.
    pub run_id: String,
    /// The table folder.
    pub path: std::path::PathBuf,
    /// The Delta version that run committed; `None` for a Parquet-format folder.
    pub version: Option<u64>,
}

impl PublishedVersion {
    /// The table at `location` (`raw/sales`, `tables/fct_customer`) as pipeline
    /// `pipeline`'s latest succeeded run in `records` published it, if it did.
    pub fn latest(
        warehouse: &Path,
        records: &[super::runs::RunRecord],
        pipeline: &str,
        location: &str,
    ) -> Option<PublishedVersion> {
        let record = super::runs::latest_succeeded(records, Some(pipeline))?;
        let path = warehouse.join(location);
        let version = record.table_versions.get(location).copied();
        let parquet_run = record.table_versions.is_empty() && record.table_rows.contains_key(location);
        (path.is_dir() && (version.is_some() || parquet_run)).then(|| PublishedVersion {
            run_id: record.run_id.clone(),
            path,
            version,
        })
    }

    /// Registers this version of the table on `ctx` as `name`.
    pub async fn register(&self, ctx: &SessionContext, name: &str) -> Result<(), PublishError> {
        if super::delta::is_delta_table(&self.path) {
            super::delta::register(ctx, name, &self.path, self.version).await
        } else {
            register_parquet(ctx, name, &self.path)
                .await
                .map_err(|e| PublishError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
        }
    }
}

/// Registers every table the succeeded run `record` published, at the versions it
/// committed (Parquet-format runs: the folders as they are now), under their SQL names
/// ([`published_table_name`]), plus the `runs` table; returns the table names, sorted.
pub async fn register_run(
    ctx: &SessionContext,
    warehouse: &Path,
    record: &RunRecord,
) -> Result<Vec<String>, PublishError> {
    let mut names = Vec::new();
    if record.table_versions.is_empty() {
        // A Parquet-format run: the folders hold only the latest publish.
        for location in record.table_rows.keys() {
            let path = warehouse.join(location);
            ctx.register_parquet(
                published_table_name(location),
                path.to_string_lossy().as_ref(),
                ParquetReadOptions::default(),
            )
            .await
            .map_err(|e| PublishError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            names.push(published_table_name(location));
        }
    } else {
        for (location, version) in &record.table_versions {
            let name = published_table_name(location);
            delta::register(ctx, &name, &warehouse.join(location), Some(*version)).await?;
            names.push(name);
        }
    }
    delta::register(ctx, RUNS_TABLE, &runs::runs_table_path(warehouse), None).await?;
    names.sort();
    Ok(names)
}

/// The latest successful run's manifest as JSON.
pub fn latest_manifest(warehouse: &Path) -> Result<serde_json::Value, PublishError> {
    read_manifest(&warehouse.join(RUNS_DIR).join(LATEST_MANIFEST))
}

/// The manifest of run `run_id` (`runs/<run_id>.json`) as JSON.
pub fn run_manifest(warehouse: &Path, run_id: &str) -> Result<serde_json::Value, PublishError> {
    read_manifest(&warehouse.join(RUNS_DIR).join(format!("{run_id}.json")))
}

fn read_manifest(path: &Path) -> Result<serde_json::Value, PublishError> {
    let text = std::fs::read_to_string(path).map_err(|source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| PublishError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}
