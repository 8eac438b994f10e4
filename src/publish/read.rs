//! Reading what a warehouse has published: the tables as DataFusion tables, and the latest
//! successful run's manifest. Used by `patron test` and other commands that look at the
//! published state rather than run the pipeline.

use datafusion::common::Column;
use datafusion::prelude::{SessionContext, col};

use super::runs::RunRecord;
use super::{PublishError, delta};
use crate::engine::register::{register_parquet, register_sorted_parquet};
use crate::names::{LATEST_MANIFEST, RUNS_DIR, RUNS_TABLE, RUNS_TABLE_DIR, TABLES_DIR, published_table_name};
use crate::warehouse::Warehouse;

/// Registers every published table of `warehouse` on `ctx` (Delta tables at their latest
/// version, Parquet folders as they are); returns their names, sorted.
pub async fn register_published(ctx: &SessionContext, warehouse: &Warehouse) -> Result<Vec<String>, PublishError> {
    let names = warehouse.folders(TABLES_DIR).await?;
    for name in &names {
        register_table(ctx, name, warehouse, &format!("{TABLES_DIR}/{name}")).await?;
    }
    Ok(names)
}

/// Registers one published table folder as `name`: a Delta table at its latest version,
/// or a plain Parquet folder (the `parquet` publish format, local warehouses only).
pub async fn register_table(
    ctx: &SessionContext,
    name: &str,
    warehouse: &Warehouse,
    location: &str,
) -> Result<(), PublishError> {
    register_version(ctx, name, warehouse, location, None).await
}

/// Registers the table at `location` as `name`: a Delta table at `version` (or its
/// latest), or a plain Parquet folder of a local warehouse.
async fn register_version(
    ctx: &SessionContext,
    name: &str,
    warehouse: &Warehouse,
    location: &str,
    version: Option<u64>,
) -> Result<(), PublishError> {
    if delta::is_delta_table(warehouse, location).await? {
        return delta::register(ctx, name, warehouse, location, version).await;
    }
    let Some(path) = warehouse.local_path(location) else {
        return Err(PublishError::Delta {
            table: name.to_string(),
            path: warehouse.describe(location),
            message: "no Delta table here".into(),
        });
    };
    register_parquet(ctx, name, &path).await.map_err(|e| PublishError::Io {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// A table as a succeeded run published it: what incremental loads and stages build on.
#[derive(Debug, Clone)]
pub struct PublishedVersion {
    /// The run that published it.
    pub run_id: String,
    /// The warehouse holding it.
    pub warehouse: Warehouse,
    /// The table's location in the warehouse (`raw/sales`).
    pub location: String,
    /// Its path or URL, for messages.
    pub path: String,
    /// The Delta version that run committed; `None` for a Parquet-format folder.
    pub version: Option<u64>,
}

impl PublishedVersion {
    /// The table at `location` (`raw/sales`, `tables/fct_customer`) as pipeline
    /// `pipeline`'s latest succeeded run in `records` published it, if it did.
    pub async fn latest(
        warehouse: &Warehouse,
        records: &[RunRecord],
        pipeline: &str,
        location: &str,
    ) -> Option<PublishedVersion> {
        let record = super::runs::latest_succeeded(records, Some(pipeline))?;
        let version = record.table_versions.get(location).copied();
        let parquet_run = record.table_versions.is_empty() && record.table_rows.contains_key(location);
        if !(version.is_some() || parquet_run) || !warehouse.has_any_under(location).await.unwrap_or(false) {
            return None;
        }
        Some(PublishedVersion {
            run_id: record.run_id.clone(),
            warehouse: warehouse.clone(),
            location: location.to_string(),
            path: warehouse.describe(location),
            version,
        })
    }

    /// Registers this version of the table on `ctx` as `name`.
    pub async fn register(&self, ctx: &SessionContext, name: &str) -> Result<(), PublishError> {
        register_version(ctx, name, &self.warehouse, &self.location, self.version).await
    }

    /// [`Self::register`] for reading by partition: a partitioned Delta table of a local
    /// warehouse is read through its files with their partition values, so filters on
    /// partition columns skip files (see [`delta::register_by_partition`]).
    pub async fn register_by_partition(&self, ctx: &SessionContext, name: &str) -> Result<(), PublishError> {
        match self.version {
            Some(version) => {
                delta::register_by_partition(ctx, name, &self.warehouse, &self.location, Some(version)).await
            }
            None => self.register(ctx, name).await,
        }
    }

    /// [`Self::register`] for a stage's table that the stage wrote sorted by `cluster_by`
    /// (ascending, nulls last; see `-- @cluster_by`): registered as that one Parquet file,
    /// known to be sorted, so later stages join it by merging rather than through a hash
    /// table of it. Only for a Delta table of a local warehouse whose version is one file;
    /// otherwise as [`Self::register`].
    pub async fn register_clustered(
        &self,
        ctx: &SessionContext,
        name: &str,
        cluster_by: &[String],
    ) -> Result<(), PublishError> {
        if !cluster_by.is_empty() && self.version.is_some() {
            let files = delta::local_files(&self.warehouse, name, &self.location, self.version).await?;
            if let Some([file]) = files.as_deref() {
                let order = cluster_by
                    .iter()
                    .map(|c| col(Column::new_unqualified(c)).sort(true, false))
                    .collect();
                return register_sorted_parquet(ctx, name, std::slice::from_ref(file), order)
                    .await
                    .map_err(|e| PublishError::Delta {
                        table: name.to_string(),
                        path: file.display().to_string(),
                        message: e.to_string(),
                    });
            }
        }
        self.register(ctx, name).await
    }
}

/// Registers every table the succeeded run `record` published, at the versions it
/// committed (Parquet-format runs: the folders as they are now), under their SQL names
/// ([`published_table_name`]), plus the `runs` table; returns the table names, sorted.
pub async fn register_run(
    ctx: &SessionContext,
    warehouse: &Warehouse,
    record: &RunRecord,
) -> Result<Vec<String>, PublishError> {
    let mut names = Vec::new();
    if record.table_versions.is_empty() {
        // A Parquet-format run: the folders hold only the latest publish.
        for location in record.table_rows.keys() {
            let name = published_table_name(location);
            register_version(ctx, &name, warehouse, location, None).await?;
            names.push(name);
        }
    } else {
        for (location, version) in &record.table_versions {
            let name = published_table_name(location);
            delta::register(ctx, &name, warehouse, location, Some(*version)).await?;
            names.push(name);
        }
    }
    delta::register(ctx, RUNS_TABLE, warehouse, RUNS_TABLE_DIR, None).await?;
    names.sort();
    Ok(names)
}

/// The latest successful run's manifest as JSON.
pub async fn latest_manifest(warehouse: &Warehouse) -> Result<serde_json::Value, PublishError> {
    read_manifest(warehouse, &format!("{RUNS_DIR}/{LATEST_MANIFEST}")).await
}

/// The manifest of run `run_id` (`runs/<run_id>.json`) as JSON.
pub async fn run_manifest(warehouse: &Warehouse, run_id: &str) -> Result<serde_json::Value, PublishError> {
    read_manifest(warehouse, &manifest_key(run_id)).await
}

/// The key of run `run_id`'s manifest in a warehouse.
pub fn manifest_key(run_id: &str) -> String {
    format!("{RUNS_DIR}/{run_id}.json")
}

async fn read_manifest(warehouse: &Warehouse, key: &str) -> Result<serde_json::Value, PublishError> {
    let bad = |message: String| crate::warehouse::WarehouseError {
        location: warehouse.describe(key),
        message,
    };
    let bytes = warehouse
        .get(key)
        .await?
        .ok_or_else(|| bad("no such manifest".into()))?;
    Ok(serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?)
}

/// A query on the published tables failed: what was being read, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct QueryError {
    /// What was being read (`report`, `reading the quarantine`).
    pub what: String,
    /// The engine's, Arrow's or the JSON decoder's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The rows of a query as JSON objects (column name to value); `what` names the read in
/// errors.
pub async fn json_rows(
    ctx: &SessionContext,
    sql: &str,
    what: &str,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, QueryError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| QueryError {
        what: what.to_string(),
        source,
    };
    let batches = ctx
        .sql(sql)
        .await
        .map_err(|e| failed(e.into()))?
        .collect()
        .await
        .map_err(|e| failed(e.into()))?;
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<_> = batches.iter().collect();
    writer.write_batches(&refs).map_err(|e| failed(e.into()))?;
    writer.finish().map_err(|e| failed(e.into()))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| failed(e.into()))
}

/// A JSON row's value as text (`""` for NULL or missing).
pub fn cell_text(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> String {
    match row.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A JSON row's value as a count (0 for NULL, missing or not a count).
pub fn cell_u64(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> u64 {
    row.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0)
}
