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
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::error::DataFusionError;
use datafusion::execution::options::ParquetReadOptions;
use datafusion::prelude::{DataFrame, Expr, SessionContext, cast, col, lit};
use datafusion::scalar::ScalarValue;
use deltalake::delta_datafusion::DeltaSessionContext;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{Action, Add, StructType};
use deltalake::operations::create::CreateBuilder;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::DeltaOperation;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt as _;

use super::PublishError;
use crate::engine::partitioned::{PartFile, PartitionedFiles};
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
    /// The staged rows replace only the partitions they fall in; the table's other
    /// partitions stay (`@incremental_strategy: insert_overwrite`).
    pub replace_partitions: bool,
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
/// With `target.replace_partitions` the commit replaces only the partitions the staged rows
/// fall in (Delta's `replaceWhere` on the partition values; new columns are added to the
/// table's schema).
///
/// The staged files join the table as they are (see [`adopt_staged_files`]) when their
/// column types are Delta's own and their row groups are cut as `layout` cuts them, as
/// patron writes them; otherwise (another row-group size set since, a partitioned table,
/// a type Delta does not have) delta-rs rewrites the rows with `layout`'s writer settings.
pub async fn overwrite_from_parquet(
    ctx: &SessionContext,
    table: &str,
    staged: &Path,
    target: &CommitTarget<'_>,
) -> Result<CommitMetrics, PublishError> {
    if target.partition_by.is_empty()
        && !target.replace_partitions
        && let Some(files) = adoptable_files(table, staged, target.layout)?
    {
        return adopt_staged_files(table, &files, target).await;
    }
    rewrite_from_parquet(ctx, table, staged, target).await
}

/// A commit's properties: tagged with the run that makes it.
fn run_commit(run_id: &str) -> CommitProperties {
    CommitProperties::default().with_metadata([(RUN_ID_COMMIT_KEY.to_string(), serde_json::json!(run_id))])
}

/// A staged Parquet file that can join a Delta table as it is.
struct Adoptable {
    path: PathBuf,
    size: u64,
    rows: i64,
    schema: arrow::datatypes::SchemaRef,
    /// Null values per column, for the columns whose every row group counts them.
    null_counts: Vec<(String, i64)>,
}

/// Arrow types whose Parquet encoding, as patron writes it, is what Delta Lake reads for
/// the column's Delta type (a timestamp without a time zone is a `timestamp_ntz`, whose
/// table feature the commit that creates the table turns on).
fn delta_native(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Utf8
            | DataType::Utf8View
            | DataType::LargeUtf8
            | DataType::Date32
    ) || matches!(data_type, DataType::Timestamp(TimeUnit::Microsecond, _))
}

/// The Parquet files of `staged` (sorted by name) when there are some and all of them can
/// join a Delta table as they are: the same schema, every column of a [`delta_native`]
/// type, and row groups of `layout.row_group_rows` rows (the last of a file may be
/// shorter). `None` otherwise.
fn adoptable_files(table: &str, staged: &Path, layout: &Layout) -> Result<Option<Vec<Adoptable>>, PublishError> {
    let read_err = |path: &Path, message: String| PublishError::Delta {
        table: table.to_string(),
        path: path.display().to_string(),
        message: format!("reading the staged table: {message}"),
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(staged)
        .map_err(|e| read_err(staged, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    paths.sort();
    let mut files: Vec<Adoptable> = Vec::with_capacity(paths.len());
    for path in paths {
        let file = std::fs::File::open(&path).map_err(|e| read_err(&path, e.to_string()))?;
        let size = file.metadata().map_err(|e| read_err(&path, e.to_string()))?.len();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| read_err(&path, e.to_string()))?;
        let schema = Arc::clone(reader.schema());
        if let Some(f) = schema.fields().iter().find(|f| !delta_native(f.data_type())) {
            let data_type = f.data_type();
            tracing::debug!(table, column = %f.name(), %data_type, "rewriting the staged files: a type Delta lacks");
            return Ok(None);
        }
        if files
            .first()
            .is_some_and(|first| first.schema.fields() != schema.fields())
        {
            tracing::debug!(table, file = %path.display(), "rewriting the staged files: their schemas differ");
            return Ok(None);
        }
        let meta = reader.metadata();
        let groups = meta.row_groups();
        let cut = groups.iter().enumerate().all(|(i, g)| {
            let rows = g.num_rows() as usize;
            if i + 1 < groups.len() {
                rows == layout.row_group_rows
            } else {
                rows <= layout.row_group_rows
            }
        });
        if !cut {
            tracing::debug!(table, file = %path.display(), "rewriting the staged files: row groups not cut by row_group_rows");
            return Ok(None);
        }
        let null_counts = schema
            .fields()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let counted: Option<u64> = groups
                    .iter()
                    .map(|g| g.columns().get(i)?.statistics()?.null_count_opt())
                    .sum();
                Some((f.name().clone(), i64::try_from(counted?).ok()?))
            })
            .collect();
        files.push(Adoptable {
            path,
            size,
            rows: meta.file_metadata().num_rows(),
            schema,
            null_counts,
        });
    }
    Ok((!files.is_empty()).then_some(files))
}

/// The Delta schema of files of `schema` (all of [`delta_native`] types).
fn delta_schema(schema: &arrow::datatypes::Schema) -> Result<StructType, DeltaTableError> {
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View | DataType::LargeUtf8 => f.as_ref().clone().with_data_type(DataType::Utf8),
            _ => f.as_ref().clone(),
        })
        .collect();
    Ok((&arrow::datatypes::Schema::new(fields)).try_into_kernel()?)
}

/// Publishes the staged `files` without rewriting a row: each is copied into the table's
/// folder under a new name (on a local warehouse, a hard link when the staging area is on
/// the same file system), then one commit replaces the table's files by them. A table
/// whose schema changed, or a new table, gets the commit that (re)creates it, with the
/// same files. The commit's statistics give each file's rows and null counts; the files
/// keep their own row-group and page statistics, page index and bloom filters.
async fn adopt_staged_files(
    table: &str,
    files: &[Adoptable],
    target: &CommitTarget<'_>,
) -> Result<CommitMetrics, PublishError> {
    let CommitTarget {
        warehouse,
        location,
        run_id,
        ..
    } = *target;
    let path = warehouse.describe(location);
    let current = open(warehouse, table, location).await?;
    let previous = current.version();
    let Some(first) = files.first() else {
        return Err(PublishError::Delta {
            table: table.to_string(),
            path,
            message: "the staged table has no file".into(),
        });
    };
    let schema = delta_schema(&first.schema).map_err(delta_err(table, path.clone()))?;
    let batch = uuid::Uuid::new_v4();
    let now = chrono::Utc::now().timestamp_millis();
    let mut adds = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let name = format!("part-{i:05}-{batch}-c000.snappy.parquet");
        let key = format!("{location}/{name}");
        match warehouse.local_path(&key) {
            Some(dest) => link_or_copy(&file.path, &dest).map_err(|source| PublishError::Io { path: dest, source })?,
            None => warehouse.put_file(&key, &file.path).await?,
        }
        let stats = serde_json::json!({
            "numRecords": file.rows,
            "nullCount": file
                .null_counts
                .iter()
                .map(|(c, n)| (c.clone(), serde_json::json!(n)))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
        });
        adds.push(Action::Add(Add {
            path: name,
            partition_values: HashMap::new(),
            size: i64::try_from(file.size).unwrap_or(i64::MAX),
            modification_time: now,
            data_change: true,
            stats: Some(stats.to_string()),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        }));
    }
    let properties = run_commit(run_id);
    // The table as it is, when it exists with the files' schema.
    let same_schema = current.snapshot().ok().filter(|s| s.schema().as_ref() == &schema);
    let version = if let Some(snapshot) = same_schema {
        let mut actions: Vec<Action> = snapshot
            .snapshot()
            .file_views(&current.log_store(), None)
            .map_ok(|f| Action::Remove(f.remove_action(true)))
            .try_collect()
            .await
            .map_err(delta_err(table, path.clone()))?;
        actions.extend(adds);
        CommitBuilder::from(properties)
            .with_actions(actions)
            .build(
                Some(snapshot as &dyn TableReference),
                current.log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Overwrite,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await
            .map_err(delta_err(table, path.clone()))?
            .version()
    } else {
        // A new table, or a new schema: the commit that (re)creates the table, with the files.
        CreateBuilder::new()
            .with_log_store(current.log_store())
            .with_table_name(table)
            .with_columns(schema.fields().cloned())
            .with_save_mode(SaveMode::Overwrite)
            .with_actions(adds)
            .with_commit_properties(properties)
            .await
            .map_err(delta_err(table, path.clone()))?
            .version()
            .ok_or_else(|| PublishError::Delta {
                table: table.to_string(),
                path: path.clone(),
                message: "the commit returned no version".into(),
            })?
    };
    Ok(CommitMetrics { version, previous })
}

/// A hard link of `from` at `to` (the staged file stays until the run's staging area is
/// removed), or a copy when the two are on different file systems.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(_) => std::fs::copy(from, to).map(|_| ()),
    }
}

/// [`overwrite_from_parquet`] by rewriting the rows: delta-rs reads the staged files and
/// writes new ones with `layout`'s writer settings (types Delta does not have are cast).
async fn rewrite_from_parquet(
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
        replace_partitions,
        layout,
    } = *target;
    let staged_err = |message: String| PublishError::Delta {
        table: table.to_string(),
        path: staged.display().to_string(),
        message,
    };
    let staged_text = staged.to_string_lossy();
    let df = ctx
        .read_parquet(staged_text.as_ref(), ParquetReadOptions::default())
        .await
        .map_err(|e| staged_err(format!("reading the staged table: {e}")))?;
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
        df.select(exprs).map_err(|e| staged_err(e.to_string()))?
    } else {
        df
    };
    let replaced = if replace_partitions {
        let predicate = partition_predicate(df.clone(), partition_by)
            .await
            .map_err(|e| staged_err(format!("reading the staged table's partitions: {e}")))?;
        Some(predicate)
    } else {
        None
    };
    let current = open(warehouse, table, location).await?;
    let previous = current.version();
    let write = current
        .write(Vec::new())
        .with_input_plan(df.logical_plan().clone())
        .with_session_state(Arc::new(ctx.state()))
        .with_save_mode(SaveMode::Overwrite)
        .with_table_name(table)
        .with_partition_columns(partition_by.to_vec())
        .with_writer_properties(layout.writer_properties())
        .with_commit_properties(run_commit(run_id));
    let write = match replaced {
        // The other partitions keep their files; columns new in this run are added.
        Some(predicate) => write.with_schema_mode(SchemaMode::Merge).with_replace_where(predicate),
        None => write.with_schema_mode(SchemaMode::Overwrite),
    };
    let written = write.await.map_err(delta_err(table, warehouse.describe(location)))?;
    let version = written.version().ok_or_else(|| PublishError::Delta {
        table: table.to_string(),
        path: warehouse.describe(location),
        message: "the commit returned no version".into(),
    })?;
    Ok(CommitMetrics { version, previous })
}

/// The predicate matching the partitions (values of `columns`) the rows of `df` fall in:
/// `(a = 1 AND b = 'x') OR ...`, partitions in ascending order; `false` when `df` has no rows.
pub async fn partition_predicate(df: DataFrame, columns: &[String]) -> Result<Expr, DataFusionError> {
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let order = columns
        .iter()
        .map(|c| col(Column::new_unqualified(c)).sort(true, true))
        .collect();
    let batches = df.select_columns(&names)?.distinct()?.sort(order)?.collect().await?;
    let mut any: Option<Expr> = None;
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let mut all: Option<Expr> = None;
            for (i, c) in columns.iter().enumerate() {
                let term = col(Column::new_unqualified(c)).eq(lit(ScalarValue::try_from_array(batch.column(i), row)?));
                all = Some(match all {
                    Some(all) => all.and(term),
                    None => term,
                });
            }
            if let Some(all) = all {
                any = Some(match any {
                    Some(any) => any.or(all),
                    None => all,
                });
            }
        }
    }
    Ok(any.unwrap_or_else(|| lit(false)))
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

/// The Delta table at `location` loaded at `version` (or its latest).
async fn open_version(
    warehouse: &Warehouse,
    name: &str,
    location: &str,
    version: Option<u64>,
) -> Result<DeltaTable, PublishError> {
    let mut table = open(warehouse, name, location).await?;
    if let Some(v) = version {
        table
            .load_version(v)
            .await
            .map_err(delta_err(name, warehouse.describe(location)))?;
    }
    Ok(table)
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
    let table = open_version(warehouse, name, location, version).await?;
    let provider = delta_provider(ctx, name, &table, &path).await?;
    ctx.register_table(name, provider).map_err(|e| PublishError::Delta {
        table: name.to_string(),
        path,
        message: e.to_string(),
    })?;
    Ok(())
}

/// The DataFusion provider of the opened Delta `table` (table `name` at `path`), with
/// `ctx`'s session made ready to read it.
async fn delta_provider(
    ctx: &SessionContext,
    name: &str,
    table: &DeltaTable,
    path: &str,
) -> Result<Arc<dyn TableProvider>, PublishError> {
    table
        .update_datafusion_session(&ctx.state())
        .map_err(delta_err(name, path.to_string()))?;
    table.table_provider().await.map_err(|e| PublishError::Delta {
        table: name.to_string(),
        path: path.to_string(),
        message: e.to_string(),
    })
}

/// [`register`] for reading a partitioned table by partition: on a local warehouse the
/// table's live files are registered as plain Parquet with each file's partition values
/// ([`PartitionedFiles`]), so filters on partition columns (a join's dynamic filters too)
/// skip the other partitions' files, which the Delta provider reads. Columns in the
/// table's order. The table is read through the Delta provider, as [`register`] reads it,
/// for an object store, an unpartitioned table,
/// a NULL partition value, or a table using a reader feature (deletion vectors, column
/// mapping) that plain Parquet reading would miss.
pub async fn register_by_partition(
    ctx: &SessionContext,
    name: &str,
    warehouse: &Warehouse,
    location: &str,
    version: Option<u64>,
) -> Result<(), PublishError> {
    let path = warehouse.describe(location);
    let err = |message: String| PublishError::Delta {
        table: name.to_string(),
        path: path.clone(),
        message,
    };
    let table = open_version(warehouse, name, location, version).await?;
    let provider = delta_provider(ctx, name, &table, &path).await?;
    let by_files = match warehouse.local_path(location) {
        Some(root) => partition_files(ctx, &table, &provider.schema(), &root).map_err(err)?,
        None => None,
    };
    let registered = match by_files {
        Some(files) => ctx.register_table(name, files.into_view()),
        None => ctx.register_table(name, provider),
    };
    registered.map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// The live files of the opened Delta `table` (its folder `root`) as a DataFrame with the
/// table's columns (`schema`, in order), read through [`PartitionedFiles`]; `None` when the
/// table must be read through the Delta provider (see [`register_by_partition`]). Errors
/// are messages.
fn partition_files(
    ctx: &SessionContext,
    table: &DeltaTable,
    schema: &arrow::datatypes::SchemaRef,
    root: &Path,
) -> Result<Option<DataFrame>, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let snapshot = table.snapshot().map_err(|e| err(&e))?;
    let partition_by: Vec<String> = snapshot.metadata().partition_columns().to_vec();
    let protocol = serde_json::to_value(snapshot.protocol()).map_err(|e| err(&e))?;
    let plain = match protocol["minReaderVersion"].as_i64() {
        Some(1) => true,
        Some(3) => protocol["readerFeatures"]
            .as_array()
            .is_none_or(|f| f.iter().all(|f| f == "timestampNtz")),
        _ => false,
    };
    if partition_by.is_empty() || !plain {
        return Ok(None);
    }
    let mut partition_cols = Vec::with_capacity(partition_by.len());
    for c in &partition_by {
        let field = schema.field_with_name(c).map_err(|e| err(&e))?;
        partition_cols.push(Arc::new(field.clone()));
    }
    let file_fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| !partition_by.contains(f.name()))
        .cloned()
        .collect();
    let mut files = Vec::new();
    for file in snapshot.log_data() {
        let relative = file.path().into_owned();
        if relative.contains("://") {
            return Ok(None);
        }
        let raw = file.partition_values_map();
        let mut values = Vec::with_capacity(partition_cols.len());
        for field in &partition_cols {
            let Some(Some(text)) = raw.get(field.name()) else {
                return Ok(None);
            };
            values.push(ScalarValue::try_from_string(text.clone(), field.data_type()).map_err(|e| err(&e))?);
        }
        files.push(PartFile {
            path: root.join(relative),
            size: u64::try_from(file.size()).unwrap_or(0),
            partition_values: values,
        });
    }
    let provider = PartitionedFiles::try_new(
        Arc::new(arrow::datatypes::Schema::new(file_fields)),
        partition_cols,
        &files,
    )
    .map_err(|e| err(&e))?;
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let df = ctx
        .read_table(Arc::new(provider))
        .and_then(|df| df.select_columns(&names))
        .map_err(|e| err(&e))?;
    Ok(Some(df))
}

/// The files of the Delta table at `location` as of `version` (or its latest), as local
/// paths; `None` unless the warehouse is on local disk.
pub async fn local_files(
    warehouse: &Warehouse,
    name: &str,
    location: &str,
    version: Option<u64>,
) -> Result<Option<Vec<PathBuf>>, PublishError> {
    if warehouse.local_path(location).is_none() {
        return Ok(None);
    }
    let table = open_version(warehouse, name, location, version).await?;
    let uris: Vec<String> = table
        .get_file_uris()
        .map_err(delta_err(name, warehouse.describe(location)))?
        .collect();
    Ok(uris
        .iter()
        .map(|uri| match url::Url::parse(uri) {
            Ok(url) => url.to_file_path().ok(),
            Err(_) => Some(PathBuf::from(uri)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ParquetSink;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, UInt64Array};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    /// Stages `n` in a fresh folder `dir` as patron writes a table.
    fn stage(dir: &Path, ids: &[&str], n: ArrayRef) -> PathBuf {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", n.data_type().clone(), true),
        ]));
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(ids.to_vec())), n]).unwrap();
        let file = dir.join("part-00000.parquet");
        let mut sink = ParquetSink::create(&file, schema).unwrap();
        sink.write(&batch).unwrap();
        sink.close().unwrap();
        file
    }

    async fn publish(warehouse: &Warehouse, staged: &Path) -> CommitMetrics {
        publish_partitions(warehouse, staged, &[], false).await
    }

    async fn publish_partitions(
        warehouse: &Warehouse,
        staged: &Path,
        partition_by: &[String],
        replace_partitions: bool,
    ) -> CommitMetrics {
        let layout = Layout::default();
        let target = CommitTarget {
            warehouse,
            location: "tables/t",
            run_id: "run",
            partition_by,
            replace_partitions,
            layout: &layout,
        };
        overwrite_from_parquet(&publish_session(), "t", staged, &target)
            .await
            .unwrap()
    }

    /// The table's rows as text, sorted, at `version`.
    async fn rows(warehouse: &Warehouse, version: Option<u64>) -> Vec<String> {
        let ctx = SessionContext::new();
        register(&ctx, "t", warehouse, "tables/t", version).await.unwrap();
        let batches = ctx
            .sql("SELECT id || '=' || COALESCE(CAST(n AS VARCHAR), 'null') AS r FROM t ORDER BY r")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for b in batches {
            let c = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
            let c = c.as_any().downcast_ref::<StringArray>().unwrap();
            out.extend(c.iter().map(|v| v.unwrap().to_string()));
        }
        out
    }

    /// The table folder's data files.
    fn data_files(warehouse: &Warehouse) -> Vec<PathBuf> {
        let dir = warehouse.local_path("tables/t").unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        files.sort();
        files
    }

    /// Every data file under the table folder, partition folders included.
    fn all_data_files(warehouse: &Warehouse) -> Vec<PathBuf> {
        let dir = warehouse.local_path("tables/t").unwrap();
        let mut files: Vec<PathBuf> = walkdir(&dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        files.sort();
        files
    }

    fn walkdir(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[tokio::test]
    async fn replacing_partitions_keeps_the_other_partitions_files() {
        let tmp = tempfile::tempdir().unwrap();
        let warehouse = Warehouse::local(tmp.path().join("warehouse"));
        let by = ["id".to_string()];
        let staged = |name: &str, ids: &[&str], n: Vec<i64>| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            stage(&dir, ids, Arc::new(Int64Array::from(n)));
            dir
        };
        let first = staged("first", &["a", "b", "c"], vec![1, 2, 3]);
        publish_partitions(&warehouse, &first, &by, false).await;
        let before = all_data_files(&warehouse);
        assert_eq!(before.len(), 3);

        // `b` is replaced (two rows now), `d` is new; `a` and `c` keep their files.
        let second = staged("second", &["b", "b", "d"], vec![20, 21, 40]);
        let m = publish_partitions(&warehouse, &second, &by, true).await;
        assert_eq!((m.version, m.previous), (1, Some(0)));
        assert_eq!(rows(&warehouse, None).await, ["a=1", "b=20", "b=21", "c=3", "d=40"]);
        assert_eq!(rows(&warehouse, Some(0)).await, ["a=1", "b=2", "c=3"]);
        let live = local_files(&warehouse, "t", "tables/t", None).await.unwrap().unwrap();
        let kept: Vec<&PathBuf> = before.iter().filter(|f| live.contains(f)).collect();
        assert_eq!(kept.len(), 2, "{live:?}");
        assert!(kept.iter().all(|f| !f.to_string_lossy().contains("id=b")), "{kept:?}");

        // No new rows replace nothing.
        let empty = staged("empty", &[], vec![]);
        let m = publish_partitions(&warehouse, &empty, &by, true).await;
        assert_eq!(m.previous, Some(1));
        assert_eq!(rows(&warehouse, None).await, ["a=1", "b=20", "b=21", "c=3", "d=40"]);
    }

    #[tokio::test]
    async fn staged_files_join_the_table_unchanged_and_other_types_are_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let warehouse = Warehouse::local(tmp.path().join("warehouse"));
        let staged = |name: &str| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        };

        // A new table: created with the staged file itself, byte for byte.
        let first = staged("first");
        let file = stage(&first, &["a", "b"], Arc::new(Int64Array::from(vec![Some(1), None])));
        let m = publish(&warehouse, &first).await;
        assert_eq!((m.version, m.previous), (0, None));
        let files = data_files(&warehouse);
        assert_eq!(files.len(), 1);
        assert_eq!(std::fs::read(&files[0]).unwrap(), std::fs::read(&file).unwrap());
        assert_eq!(rows(&warehouse, None).await, ["a=1", "b=null"]);

        // Same schema: one overwrite commit; only the new file is in the table.
        let second = staged("second");
        let file = stage(&second, &["c"], Arc::new(Int64Array::from(vec![3])));
        let m = publish(&warehouse, &second).await;
        assert_eq!((m.version, m.previous), (1, Some(0)));
        assert_eq!(rows(&warehouse, None).await, ["c=3"]);
        assert_eq!(rows(&warehouse, Some(0)).await, ["a=1", "b=null"]);
        let newest = data_files(&warehouse)
            .into_iter()
            .find(|f| std::fs::read(f).unwrap() == std::fs::read(&file).unwrap());
        assert!(newest.is_some(), "the staged file is in the table as it is");
        let table = open(&warehouse, "t", "tables/t").await.unwrap();
        let history: Vec<_> = table.history(Some(1)).try_collect().await.unwrap();
        let last = history.into_iter().next().unwrap();
        assert_eq!(last.operation.as_deref(), Some("WRITE"));
        assert_eq!(last.info.get(RUN_ID_COMMIT_KEY), Some(&serde_json::json!("run")));

        // A type Delta does not have (unsigned): the rows are rewritten, cast to Int64.
        let third = staged("third");
        let file = stage(&third, &["d"], Arc::new(UInt64Array::from(vec![4])));
        let m = publish(&warehouse, &third).await;
        assert_eq!((m.version, m.previous), (2, Some(1)));
        assert_eq!(rows(&warehouse, None).await, ["d=4"]);
        let staged_bytes = std::fs::read(&file).unwrap();
        assert!(
            data_files(&warehouse)
                .iter()
                .all(|f| std::fs::read(f).unwrap() != staged_bytes)
        );

        // Back to a Delta type, a schema change again: the table is recreated with the file.
        let fourth = staged("fourth");
        stage(&fourth, &["e"], Arc::new(Int64Array::from(vec![5])));
        let m = publish(&warehouse, &fourth).await;
        assert_eq!(m.version, 3);
        assert_eq!(rows(&warehouse, None).await, ["e=5"]);
        assert_eq!(rows(&warehouse, Some(1)).await, ["c=3"]);
    }

    /// A stage's table read back into a run (`run --select`) is its version's one file,
    /// registered as sorted by the stage's cluster columns; other tables keep the Delta
    /// provider, which reports no order.
    #[tokio::test]
    async fn a_clustered_table_is_read_back_as_its_one_file_in_order() {
        use crate::publish::read::PublishedVersion;
        let tmp = tempfile::tempdir().unwrap();
        let warehouse = Warehouse::local(tmp.path().join("warehouse"));
        let mut files = Vec::new();
        for (i, ids) in [["a", "b", "c"], ["d", "e", "f"]].iter().enumerate() {
            let dir = tmp.path().join(format!("staged{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            stage(&dir, ids, Arc::new(Int64Array::from(vec![1, 2, 3])));
            let m = publish(&warehouse, &dir).await;
            let version_files = local_files(&warehouse, "t", "tables/t", Some(m.version))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(version_files.len(), 1, "{version_files:?}");
            assert!(version_files[0].is_file());
            files.push(version_files[0].clone());
        }
        assert_ne!(files[0], files[1], "each version is its own file");

        let published = |version| PublishedVersion {
            run_id: "run".into(),
            warehouse: warehouse.clone(),
            location: "tables/t".into(),
            path: "tables/t".into(),
            version: Some(version),
        };
        let ctx = SessionContext::new();
        published(0)
            .register_clustered(&ctx, "sorted", &["id".to_string()])
            .await
            .unwrap();
        published(0).register_clustered(&ctx, "plain", &[]).await.unwrap();
        let ordering = |table: &'static str| {
            let ctx = ctx.clone();
            async move {
                let plan = ctx.table(table).await.unwrap().create_physical_plan().await.unwrap();
                plan.properties().output_ordering().map(|o| o.to_string())
            }
        };
        assert_eq!(ordering("sorted").await.as_deref(), Some("id@0 ASC NULLS LAST"));
        assert_eq!(ordering("plain").await, None);
        let batches = ctx
            .sql("SELECT string_agg(id, ',' ORDER BY id) FROM sorted")
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches.collect().await.unwrap())
            .unwrap()
            .to_string();
        assert!(text.contains("a,b,c"), "version 0's rows: {text}");
    }
}
