//! Registering files with a session: a Parquet file or folder (optionally with the order
//! its rows were written in) as a table, named by its path, or on a cluster that reads the
//! run's files from an object store, by the URL of its copy there.

use std::path::{Path, PathBuf};

use datafusion::error::DataFusionError;
use datafusion::logical_expr::SortExpr;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use super::cluster_store::ClusterStaging;

/// How queries of `ctx` name the local file or folder `path`: by its path, or on a cluster
/// reading the run's files from an object store, by the URL of its copy there (made now,
/// see [`ClusterStaging`]).
pub async fn location_of(ctx: &SessionContext, path: &Path) -> Result<String, DataFusionError> {
    match ClusterStaging::of(ctx) {
        Some(staging) => staging
            .url_of(path)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e))),
        None => Ok(path.to_string_lossy().into_owned()),
    }
}

/// Registers a Parquet file or folder as table `name`, replacing any earlier one.
pub async fn register_parquet(ctx: &SessionContext, name: &str, path: &Path) -> Result<(), DataFusionError> {
    register_parquet_files(ctx, name, std::slice::from_ref(&path.to_path_buf())).await
}

/// Registers several Parquet files (same schema) as one table `name`.
pub async fn register_parquet_files(
    ctx: &SessionContext,
    name: &str,
    paths: &[PathBuf],
) -> Result<(), DataFusionError> {
    register_sorted_parquet(ctx, name, paths, Vec::new()).await
}

/// Registers Parquet files as table `name`, declaring that each file's rows are in `order`
/// (none when empty). The planner then relies on it: aggregations and windows over a
/// prefix of the order stream group by group instead of holding every group, and sorts
/// and merge joins on it are skipped. Declare only the order the files were written in.
pub async fn register_sorted_parquet(
    ctx: &SessionContext,
    name: &str,
    paths: &[PathBuf],
    order: Vec<SortExpr>,
) -> Result<(), DataFusionError> {
    ctx.deregister_table(name)?;
    let mut locations = Vec::with_capacity(paths.len());
    for path in paths {
        locations.push(location_of(ctx, path).await?);
    }
    let mut options = ParquetReadOptions::default();
    if !order.is_empty() {
        options = options.file_sort_order(vec![order]);
    }
    let df = ctx.read_parquet(locations, options).await?;
    ctx.register_table(name, df.into_view())?;
    Ok(())
}
