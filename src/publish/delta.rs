//! Delta Lake tables on local disk, through the `deltalake` crate: publish a staged table
//! as one atomic overwrite commit, read a table at a version, restore a version, vacuum
//! old versions.
//!
//! A Delta table is a folder of Parquet files plus a transaction log (`_delta_log/`); a
//! version exists once its JSON commit file is written (atomically, by the log store), so
//! a reader sees the whole overwrite or none of it, and older versions stay readable by
//! number until vacuumed. Tables are addressed by their location in a [`Warehouse`]
//! (`tables/fct_customer`), in a local folder or an object store alike; in an object store
//! the commit file is written with a conditional put (see [`crate::warehouse`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::Column;
use datafusion::execution::options::ParquetReadOptions;
use datafusion::prelude::{Expr, SessionContext, cast};
use deltalake::delta_datafusion::DeltaSessionContext;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};

use super::PublishError;
use crate::storage::Layout;
use crate::warehouse::Warehouse;

/// Subfolder holding a Delta table's transaction log.
pub const DELTA_LOG_DIR: &str = "_delta_log";

/// Commit metadata key naming the run that made a commit.
pub const RUN_ID_COMMIT_KEY: &str = "patron.run_id";

fn delta_err(table: &str, path: String) -> impl FnOnce(DeltaTableError) -> PublishError {
    let table = table.to_string();
    move |e| PublishError::Delta {
        table,
        path,
        message: e.to_string(),
    }
}

/// True when `location` in `warehouse` holds a Delta table (a non-empty `_delta_log`).
pub async fn is_delta_table(warehouse: &Warehouse, location: &str) -> Result<bool, PublishError> {
    Ok(warehouse.has_any_under(&format!("{location}/{DELTA_LOG_DIR}")).await?)
}

/// Opens (or prepares to create) the Delta table at `location` in `warehouse`.
pub async fn open(warehouse: &Warehouse, table: &str, location: &str) -> Result<DeltaTable, PublishError> {
    let path = warehouse.describe(location);
    let url = warehouse.table_url(location)?;
    let mut builder = DeltaTableBuilder::from_url(url.clone()).map_err(delta_err(table, path.clone()))?;
    if let Some(store) = warehouse.remote_store() {
        builder = builder.with_storage_backend(store, url);
    }
    let mut delta = builder.build().map_err(delta_err(table, path.clone()))?;
    // A location without a table yet is fine: the first write creates it.
    match delta.load().await {
        Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(delta),
        Err(e) => Err(delta_err(table, path)(e)),
    }
}

/// The latest committed version of the table at `location`, `None` when there is none.
pub async fn latest_version(warehouse: &Warehouse, table: &str, location: &str) -> Result<Option<u64>, PublishError> {
    if !is_delta_table(warehouse, location).await? {
        return Ok(None);
    }
    Ok(open(warehouse, table, location).await?.version())
}

/// A session for publishing: delta-rs' planner (its write plan has nodes of its own), one
/// partition (so rows keep the staged file's order) and plain string types.
pub fn publish_session() -> SessionContext {
    let overrides: HashMap<String, String> = [
        ("datafusion.execution.target_partitions", "1"),
        ("datafusion.execution.parquet.schema_force_view_types", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // The keys are DataFusion's own; should they ever be refused, the defaults still work
    // (rows then keep their order within each file only).
    DeltaSessionContext::new_with_session_overrides(&overrides)
        .unwrap_or_else(|_| DeltaSessionContext::new())
        .into_inner()
}

/// Arrow types Delta Lake cannot store, mapped to ones it can: unsigned integers to
/// signed (line numbers and counts fit), timestamps to microseconds.
fn delta_type(data_type: &DataType) -> Option<DataType> {
    match data_type {
        DataType::UInt8 | DataType::UInt16 => Some(DataType::Int32),
        DataType::UInt32 | DataType::UInt64 => Some(DataType::Int64),
        DataType::Timestamp(unit, tz) if *unit != TimeUnit::Microsecond => {
            Some(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
        }
        _ => None,
    }
}

/// Where and how a staged table is committed.
#[derive(Debug, Clone, Copy)]
pub struct CommitTarget<'a> {
    /// The warehouse.
    pub warehouse: &'a Warehouse,
    /// The table's location in it (`tables/fct_customer`).
    pub location: &'a str,
    /// The run committing, recorded in the commit's metadata.
    pub run_id: &'a str,
    /// Delta partition columns.
    pub partition_by: &'a [String],
    /// Parquet writer settings.
    pub layout: &'a Layout,
}

/// What one table commit did.
#[derive(Debug, Clone)]
pub struct CommitMetrics {
    /// The version committed.
    pub version: u64,
    /// The version before the commit (`None` for a new table).
    pub previous: Option<u64>,
}

/// Replaces the content of the Delta table at `location` with the Parquet files in the
/// local folder `staged`, in one overwrite commit tagged with `run_id`. Rows keep their order.
/// delta-rs rewrites the rows into new files (it does not copy the staged ones), with
/// `layout`'s writer settings, so the published files have the same row groups, page
/// index and bloom filters as the staged ones.
pub async fn overwrite_from_parquet(
    ctx: &SessionContext,
    table: &str,
    staged: &Path,
    target: &CommitTarget<'_>,
) -> Result<CommitMetrics, PublishError> {
    let CommitTarget {
        warehouse,
        location,
        run_id,
        partition_by,
        layout,
    } = *target;
    let staged_text = staged.to_string_lossy();
    let df = ctx
        .read_parquet(staged_text.as_ref(), ParquetReadOptions::default())
        .await
        .map_err(|e| PublishError::Delta {
            table: table.to_string(),
            path: staged.display().to_string(),
            message: format!("reading the staged table: {e}"),
        })?;
    let needs_cast = df.schema().fields().iter().any(|f| delta_type(f.data_type()).is_some());
    let df = if needs_cast {
        let exprs: Vec<_> = df
            .schema()
            .fields()
            .iter()
            .map(|f| match delta_type(f.data_type()) {
                Some(t) => cast(Expr::Column(Column::new_unqualified(f.name())), t).alias(f.name()),
                None => Expr::Column(Column::new_unqualified(f.name())),
            })
            .collect();
        df.select(exprs).map_err(|e| PublishError::Delta {
            table: table.to_string(),
            path: staged.display().to_string(),
            message: e.to_string(),
        })?
    } else {
        df
    };
    let current = open(warehouse, table, location).await?;
    let previous = current.version();
    let written = current
        .write(Vec::new())
        .with_input_plan(df.logical_plan().clone())
        .with_session_state(Arc::new(ctx.state()))
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .with_table_name(table)
        .with_partition_columns(partition_by.to_vec())
        .with_writer_properties(layout.writer_properties())
        .with_commit_properties(
            CommitProperties::default().with_metadata([(RUN_ID_COMMIT_KEY.to_string(), serde_json::json!(run_id))]),
        )
        .await
        .map_err(delta_err(table, warehouse.describe(location)))?;
    let version = written.version().ok_or_else(|| PublishError::Delta {
        table: table.to_string(),
        path: warehouse.describe(location),
        message: "the commit returned no version".into(),
    })?;
    Ok(CommitMetrics { version, previous })
}

/// Makes `version` the content of the table again, with a new commit (readers of the
/// latest version see the old content; the history keeps both).
pub async fn restore(warehouse: &Warehouse, table: &str, location: &str, version: u64) -> Result<u64, PublishError> {
    let current = open(warehouse, table, location).await?;
    let (restored, _) = current
        .restore()
        .with_version_to_restore(version)
        .await
        .map_err(delta_err(table, warehouse.describe(location)))?;
    Ok(restored.version().unwrap_or(version))
}

/// Deletes the data files that neither the latest version nor the versions in `keep`
/// need; returns the number of files deleted. The other versions can then no longer be
/// read (their log entries stay, as history). Full mode: files no commit ever named (left
/// by a run killed while writing, or a Parquet-format publish) go too; call it only
/// while holding the warehouse lock, so no writer is half-way through a commit.
pub async fn vacuum(warehouse: &Warehouse, table: &str, location: &str, keep: &[u64]) -> Result<usize, PublishError> {
    let current = open(warehouse, table, location).await?;
    let Some(latest) = current.version() else {
        return Ok(0);
    };
    let mut versions: Vec<u64> = keep.iter().copied().chain([latest]).collect();
    versions.sort_unstable();
    versions.dedup();
    let (_, metrics) = current
        .vacuum()
        .with_keep_versions(&versions)
        .with_mode(VacuumMode::Full)
        .with_retention_period(chrono::Duration::zero())
        .with_enforce_retention_duration(false)
        .await
        .map_err(delta_err(table, warehouse.describe(location)))?;
    Ok(metrics.files_deleted.len())
}

/// Registers the Delta table at `location` as `name` in `ctx`, at `version` (or the latest).
pub async fn register(
    ctx: &SessionContext,
    name: &str,
    warehouse: &Warehouse,
    location: &str,
    version: Option<u64>,
) -> Result<(), PublishError> {
    let path = warehouse.describe(location);
    let mut table = open(warehouse, name, location).await?;
    if let Some(v) = version {
        table.load_version(v).await.map_err(delta_err(name, path.clone()))?;
    }
    table
        .update_datafusion_session(&ctx.state())
        .map_err(delta_err(name, path.clone()))?;
    let provider = table.table_provider().await.map_err(|e| PublishError::Delta {
        table: name.to_string(),
        path: path.clone(),
        message: e.to_string(),
    })?;
    ctx.register_table(name, provider).map_err(|e| PublishError::Delta {
        table: name.to_string(),
        path,
        message: e.to_string(),
    })?;
    Ok(())
}
