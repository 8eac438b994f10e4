//! Running stages: plan each SELECT on the run's one [`SessionContext`] with the run's
//! named parameters, stream the result into Parquet in the staging area, and register it
//! so later stages read the materialised table rather than recomputing it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::view::ViewTable;
use datafusion::datasource::listing::ListingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::options::CsvReadOptions;
use datafusion::logical_expr::{Expr, LogicalPlan, SortExpr};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::common::spawn_buffered;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use serde::Serialize;

use super::spec::{IncrementalStrategy, Materialized, OnSchemaChange};
use super::{Seed, Stage, TransformError};
use crate::engine::register::{location_of, register_sorted_parquet};
use crate::publish::read::PublishedVersion;
use crate::quote::ident;
use crate::storage::{Layout, ParquetSink};

/// What one stage did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageMetrics {
    /// Table name.
    pub name: String,
    /// Stage file.
    pub file: String,
    /// Layer (folder under `sql/`).
    pub layer: String,
    /// Rows written.
    pub rows: u64,
    /// Parquet bytes written.
    pub bytes: u64,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Table, incremental (both written and published) or view (neither).
    pub materialized: Materialized,
    /// Incremental stages: the new or changed rows this run's query selected (merged into
    /// the previous table to give `rows`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_new: Option<u64>,
    /// Columns the published Delta table is partitioned by.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
    /// `@incremental_strategy: insert_overwrite` on a Delta table: the stage's file holds
    /// this run's rows only, and the publish replaces the partitions they fall in (the
    /// table's other partitions stay as they are).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replaces_partitions: bool,
    /// Columns the table is sorted by first (`-- @cluster_by`), with bloom filters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster_by: Vec<String>,
    /// Bytes the stage's operators spilled to disk because the engine's memory limit was
    /// reached (sorts, aggregations, windows); 0 when everything fit.
    #[serde(skip_serializing_if = "is_zero")]
    pub spilled_bytes: u64,
    /// The materialised file.
    #[serde(skip)]
    pub output: PathBuf,
}

/// A table written to Parquet by [`materialize`].
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// The Parquet file.
    pub file: PathBuf,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Bytes the query spilled to disk on the way.
    pub spilled_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Bytes spilled to disk by every operator of an executed plan.
pub fn spilled_bytes(plan: &dyn ExecutionPlan) -> u64 {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) as u64;
    own + plan.children().iter().map(|c| spilled_bytes(c.as_ref())).sum::<u64>()
}

/// Finds a line/column for an error: DataFusion's diagnostic span, else the parser's
/// "Line: L, Column: C" text.
fn error_location(err: &DataFusionError) -> Option<(u64, u64)> {
    if let Some(span) = err.diagnostic().and_then(|d| d.span) {
        return Some((span.start.line, span.start.column));
    }
    let text = err.to_string();
    let after = text.split("Line: ").nth(1)?;
    let line: u64 = after.split(',').next()?.trim().parse().ok()?;
    let col: u64 = after
        .split("Column: ")
        .nth(1)?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()?;
    Some((line, col))
}

/// DataFusion's message, plus the offending line of the stage with a caret under the column.
pub fn describe_sql_error(sql: &str, err: &DataFusionError) -> String {
    let mut message = err.to_string();
    if let Some((line, column)) = error_location(err)
        && line > 0
        && let Some(text) = sql.lines().nth((line - 1) as usize)
    {
        let gutter = format!("{line} | ");
        message = format!(
            "line {line}, column {column}: {message}\n  {gutter}{text}\n  {}^",
            " ".repeat(gutter.len() + (column.saturating_sub(1)) as usize)
        );
    }
    message
}

/// Registers every seed as a table (CSV with a header, types inferred).
pub async fn register_seeds(ctx: &SessionContext, seeds: impl Iterator<Item = &Seed>) -> Result<(), TransformError> {
    for seed in seeds {
        let registered = async {
            let location = location_of(ctx, &seed.path).await?;
            ctx.register_csv(&seed.name, &location, CsvReadOptions::new().has_header(true))
                .await
        };
        registered.await.map_err(|e| TransformError::Sql {
            stage: seed.name.clone(),
            path: seed.path.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// Registers `df` as the view `name` (computed on read), replacing any earlier table of
/// that name.
pub fn register_view(ctx: &SessionContext, name: &str, df: DataFrame) -> Result<(), DataFusionError> {
    ctx.deregister_table(name)?;
    ctx.register_table(name, df.into_view())?;
    Ok(())
}

/// The order of the rows a plan streams out, as far as it is by plain columns: empty
/// unless the plan has one output partition (the rows of several would interleave).
fn streamed_order(plan: &dyn ExecutionPlan) -> Vec<SortExpr> {
    if plan.properties().output_partitioning().partition_count() != 1 {
        return Vec::new();
    }
    column_ordering(plan)
        .into_iter()
        .map(|(name, options)| {
            col(datafusion::common::Column::new_unqualified(name)).sort(!options.descending, options.nulls_first)
        })
        .collect()
}

/// The leading plain-column keys of the ordering a physical plan reports (per partition).
fn column_ordering(plan: &dyn ExecutionPlan) -> Vec<(String, SortOptions)> {
    plan.properties()
        .output_ordering()
        .map(|ordering| {
            ordering
                .iter()
                .map_while(|s| Some((s.expr.downcast_ref::<Column>()?.name().to_string(), s.options)))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes table `name` (any provider: in memory, Delta) to `out_dir/<name>/part-00000.parquet`
/// by reading it in this process, and registers the file in its place; returns (file, rows,
/// bytes). For tables patron holds in memory (fitted model output) or reads through a
/// provider only this process has.
pub async fn materialize_here(
    ctx: &SessionContext,
    name: &str,
    out_dir: &Path,
) -> Result<(PathBuf, u64, u64), MaterializeError> {
    let provider = ctx.table_provider(name).await.map_err(MaterializeError::Query)?;
    let here = SessionContext::new_with_config_rt(SessionConfig::new(), ctx.runtime_env());
    let df = here.read_table(provider).map_err(MaterializeError::Query)?;
    let w = materialize(ctx, name, df, out_dir, &Layout::default()).await?;
    Ok((w.file, w.rows, w.bytes))
}

/// On a distributed engine, replaces table `name` by a Parquet file in `out_dir` unless it
/// already is files (or a view over them), so executors can read it; on the local engine
/// it does nothing.
pub async fn make_portable(ctx: &SessionContext, name: &str, out_dir: &Path) -> Result<(), MaterializeError> {
    if !crate::engine::is_distributed(ctx) {
        return Ok(());
    }
    let provider = ctx.table_provider(name).await.map_err(MaterializeError::Query)?;
    if provider.is::<ListingTable>() || provider.is::<ViewTable>() {
        return Ok(());
    }
    tracing::debug!(table = name, "written to Parquet for the cluster's executors");
    materialize_here(ctx, name, out_dir).await.map(|_| ())
}

/// Why materialising a table failed.
#[derive(Debug)]
pub enum MaterializeError {
    /// Executing the query failed.
    Query(DataFusionError),
    /// Writing the Parquet file failed.
    Write(crate::storage::WriteError),
}

impl std::error::Error for MaterializeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MaterializeError::Query(e) => Some(e),
            MaterializeError::Write(e) => Some(e),
        }
    }
}

impl std::fmt::Display for MaterializeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaterializeError::Query(e) => write!(f, "{e}"),
            MaterializeError::Write(e) => write!(f, "{e}"),
        }
    }
}

fn stage_error(stage: &Stage, e: DataFusionError) -> TransformError {
    TransformError::Sql {
        stage: stage.name.clone(),
        path: stage.path.clone(),
        message: describe_sql_error(&stage.sql, &e),
    }
}

fn materialize_error(stage: &Stage, e: MaterializeError) -> TransformError {
    match e {
        MaterializeError::Query(e) => stage_error(stage, e),
        MaterializeError::Write(e) => TransformError::Write(e),
    }
}

/// Plans the stage's SELECT (no DDL, DML or other statements) with `params` bound.
async fn plan_stage(
    ctx: &SessionContext,
    stage: &Stage,
    params: HashMap<String, ScalarValue>,
) -> Result<DataFrame, TransformError> {
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(&stage.sql, options)
        .await
        .and_then(|df| df.with_param_values(params))
        .map_err(|e| stage_error(stage, e))
}

/// The first column of the first row of a one-row query (an aggregate).
async fn first_value(ctx: &SessionContext, sql: &str) -> Result<ScalarValue, DataFusionError> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| DataFusionError::Execution(format!("no row from {sql}")))?;
    ScalarValue::try_from_array(batch.column(0), 0)
}

/// The table name a stage's new rows are registered under while an incremental stage runs
/// (and, for a stage that replaces partitions, while its data tests run).
pub fn new_rows_table(stage: &str) -> String {
    format!("__new_{stage}")
}

/// An incremental stage's query, planned against its previous table.
struct IncrementalPlan {
    /// This run's query (`$is_incremental` true when `base`).
    df: DataFrame,
    /// The previous table is registered (as `__previous_<stage>`) and its rows are kept.
    base: bool,
    /// The columns of both sides when `append_new_columns` kept the previous rows of a table
    /// whose columns changed.
    evolved: Option<Vec<Field>>,
}

/// Registers the previous table (when there is one and it reads) as `prev_name` and plans
/// the stage with `$is_incremental` / `$watermark`; settles a change of columns as
/// `@on_schema_change` says.
async fn plan_incremental(
    ctx: &SessionContext,
    stage: &Stage,
    params: &HashMap<String, ScalarValue>,
    out_dir: &Path,
    previous: Option<&PublishedVersion>,
    prev_name: &str,
) -> Result<IncrementalPlan, TransformError> {
    let sql_err = |e: DataFusionError| stage_error(stage, e);
    let mut base = false;
    if let Some(p) = previous {
        let portable = out_dir.parent().unwrap_or(out_dir).join(crate::names::PORTABLE_DIR);
        // Replacing partitions keeps the other partitions, which later stages may read a few
        // of at a time (segment_migration: two days of the history). A cluster's executors
        // read the table as the Parquet file `make_portable` writes.
        let by_partition = stage.spec.incremental_strategy == IncrementalStrategy::InsertOverwrite
            && !crate::engine::is_distributed(ctx);
        let registered = if by_partition {
            p.register_by_partition(ctx, prev_name).await
        } else {
            p.register(ctx, prev_name).await
        };
        match registered {
            Ok(()) => {
                make_portable(ctx, prev_name, &portable)
                    .await
                    .map_err(|e| materialize_error(stage, e))?;
                base = true
            }
            Err(e) => tracing::warn!(stage = %stage.name, error = %e, "previous table unreadable: full refresh"),
        }
    }
    let bind = |incremental: bool, watermark: ScalarValue| {
        let mut p = params.clone();
        p.insert("is_incremental".into(), ScalarValue::Boolean(Some(incremental)));
        p.insert("watermark".into(), watermark);
        p
    };
    let mut df = None;
    let mut evolved: Option<Vec<Field>> = None;
    if base {
        let watermark = match &stage.spec.incremental_column {
            Some(col) => first_value(ctx, &format!("SELECT max({}) FROM {}", ident(col), ident(prev_name)))
                .await
                .map_err(sql_err)?,
            None => ScalarValue::Null,
        };
        let planned = plan_stage(ctx, stage, bind(true, watermark)).await?;
        let before = ctx.table(prev_name).await.map_err(sql_err)?;
        let change = SchemaChange::between(before.schema().inner(), planned.schema().inner());
        match stage.spec.on_schema_change {
            _ if change.is_none() => df = Some(planned),
            OnSchemaChange::FullRefresh => {
                tracing::warn!(stage = %stage.name, %change, "columns changed since the previous run: full refresh");
                base = false;
            }
            OnSchemaChange::AppendNewColumns if change.retyped.is_empty() => {
                tracing::info!(stage = %stage.name, %change, "columns changed: previous rows kept, new columns NULL in them");
                evolved = Some(change.union);
                df = Some(planned);
            }
            OnSchemaChange::Fail | OnSchemaChange::AppendNewColumns => {
                let why = if stage.spec.on_schema_change == OnSchemaChange::Fail {
                    "fail"
                } else {
                    "append_new_columns, which cannot change a column's type"
                };
                return Err(TransformError::Sql {
                    stage: stage.name.clone(),
                    path: stage.path.clone(),
                    message: format!(
                        "the columns changed since the previous run ({change}) and `@on_schema_change` is {why}; \
                         rerun with --full-refresh to rebuild the table"
                    ),
                });
            }
        }
    }
    let df = match df {
        Some(df) => df,
        None => plan_stage(ctx, stage, bind(false, ScalarValue::Null)).await?,
    };
    Ok(IncrementalPlan { df, base, evolved })
}

/// Fails when a row of table `name` has a NULL in one of `columns` (`what` says what they are
/// for, in the error).
async fn check_no_nulls(
    ctx: &SessionContext,
    stage: &Stage,
    name: &str,
    columns: &[String],
    what: &str,
) -> Result<(), TransformError> {
    let nulls = first_value(
        ctx,
        &format!(
            "SELECT count(*) FROM {} WHERE {}",
            ident(name),
            columns
                .iter()
                .map(|k| format!("{} IS NULL", ident(k)))
                .collect::<Vec<_>>()
                .join(" OR ")
        ),
    )
    .await
    .map_err(|e| stage_error(stage, e))?;
    if matches!(nulls, ScalarValue::Int64(Some(0))) {
        return Ok(());
    }
    Err(TransformError::Sql {
        stage: stage.name.clone(),
        path: stage.path.clone(),
        message: format!("{nulls} new rows have a NULL in {what} ({})", columns.join(", ")),
    })
}

/// What an incremental stage wrote.
struct IncrementalWrite {
    /// The stage's file: the whole table, or (`replaces_partitions`) the new rows only.
    written: Written,
    /// The rows this run's query selected.
    new_rows: u64,
    /// The file holds the new rows only; publishing replaces the partitions they fall in.
    replaces_partitions: bool,
}

/// An incremental stage: plan with `$is_incremental` / `$watermark`, materialise the new
/// rows, then join them to the previous table as the stage's `@incremental_strategy` says.
/// `partitions_in_place`: the publish can replace a Delta table's partitions in place.
async fn run_incremental(
    ctx: &SessionContext,
    stage: &Stage,
    params: &HashMap<String, ScalarValue>,
    out_dir: &Path,
    previous: Option<&PublishedVersion>,
    layout: &Layout,
    partitions_in_place: bool,
) -> Result<IncrementalWrite, TransformError> {
    let prev_name = format!("__previous_{}", stage.name);
    let plan = plan_incremental(ctx, stage, params, out_dir, previous, &prev_name).await?;
    let result = match stage.spec.incremental_strategy {
        IncrementalStrategy::Merge => merge(ctx, stage, out_dir, layout, plan, &prev_name).await,
        IncrementalStrategy::InsertOverwrite => {
            insert_overwrite(ctx, stage, out_dir, layout, plan, &prev_name, partitions_in_place).await
        }
    };
    if ctx.table_exist(prev_name.as_str()).unwrap_or(false) {
        ctx.deregister_table(prev_name.as_str())
            .map_err(|e| stage_error(stage, e))?;
    }
    result
}

/// `@incremental_strategy: merge`: writes the new rows plus the previous rows whose key is
/// not among them, ordered by the key.
async fn merge(
    ctx: &SessionContext,
    stage: &Stage,
    out_dir: &Path,
    layout: &Layout,
    plan: IncrementalPlan,
    prev_name: &str,
) -> Result<IncrementalWrite, TransformError> {
    let sql_err = |e: DataFusionError| stage_error(stage, e);
    let IncrementalPlan { df, base, evolved } = plan;
    let new_name = new_rows_table(&stage.name);
    let new_dir = out_dir.parent().unwrap_or(out_dir).join("incremental");
    let new = materialize(ctx, &new_name, df, &new_dir, layout)
        .await
        .map_err(|e| materialize_error(stage, e))?;
    check_no_nulls(
        ctx,
        stage,
        &new_name,
        &stage.spec.unique_key,
        "the unique key: an incremental stage cannot merge them",
    )
    .await?;
    let keys: Vec<String> = stage.spec.unique_key.iter().map(|k| ident(k)).collect();
    if let Some(columns) = &evolved {
        // Both sides take the union of the columns (NULL where a side lacks one).
        for name in [new_name.as_str(), prev_name] {
            let aligned = align(ctx.table(name).await.map_err(sql_err)?, columns).map_err(sql_err)?;
            ctx.deregister_table(name).map_err(sql_err)?;
            ctx.register_table(name, aligned.into_view()).map_err(sql_err)?;
        }
    }
    let order = keys.join(", ");
    let merged = if base {
        let on: Vec<String> = keys.iter().map(|k| format!("p.{k} = n.{k}")).collect();
        // The new rows' keys are the join's build side, held in memory; the previous rows
        // stream past them (see `merge_ctx` below).
        format!(
            "SELECT * FROM {new} UNION ALL SELECT p.* FROM (SELECT {order} FROM {new}) n RIGHT ANTI JOIN {prev} p ON {} \
             ORDER BY {order}",
            on.join(" AND "),
            new = ident(&new_name),
            prev = ident(prev_name),
        )
    } else {
        format!("SELECT * FROM {} ORDER BY {order}", ident(&new_name))
    };
    // The join's sides as written: DataFusion's join selection made the previous rows the
    // build side (every previous row held at once, the sort after the join then failing
    // for memory), and a second daily run of `customer_scores_history` failed at 205,000
    // customers. With the sides kept, that run passed (history 411,334 rows).
    let merge_ctx = {
        let mut state = ctx.state();
        state.config_mut().options_mut().optimizer.join_reordering = false;
        SessionContext::new_with_state(state)
    };
    let df = merge_ctx.sql(&merged).await.map_err(sql_err)?;
    let mut merged = materialize(ctx, &stage.name, df, out_dir, layout)
        .await
        .map_err(|e| materialize_error(stage, e))?;
    ctx.deregister_table(new_name.as_str()).map_err(sql_err)?;
    merged.spilled_bytes += new.spilled_bytes;
    Ok(IncrementalWrite {
        written: merged,
        new_rows: new.rows,
        replaces_partitions: false,
    })
}

/// The stage's unique key as an ascending, nulls-last ordering.
fn key_order(stage: &Stage) -> Vec<SortExpr> {
    stage
        .spec
        .unique_key
        .iter()
        .map(|k| col(datafusion::common::Column::new_unqualified(k)).sort(true, false))
        .collect()
}

/// `@incremental_strategy: insert_overwrite`: the new rows (ordered by the unique key, if
/// any) replace every partition they fall in. With `in_place` the stage writes the new rows
/// only, and its table for later stages is the new rows plus the previous table's other
/// partitions (read where they are); the publish replaces the partitions in one Delta
/// commit. Otherwise (a Parquet-folder warehouse) the whole table is written.
/// The new rows stay registered as [`new_rows_table`] for the stage's data tests when the
/// stage replaces partitions.
async fn insert_overwrite(
    ctx: &SessionContext,
    stage: &Stage,
    out_dir: &Path,
    layout: &Layout,
    plan: IncrementalPlan,
    prev_name: &str,
    in_place: bool,
) -> Result<IncrementalWrite, TransformError> {
    let sql_err = |e: DataFusionError| stage_error(stage, e);
    let IncrementalPlan { df, base, evolved } = plan;
    let mut df = match &evolved {
        Some(columns) => align(df, columns).map_err(sql_err)?,
        None => df,
    };
    if !stage.spec.unique_key.is_empty() {
        df = df.sort(key_order(stage)).map_err(sql_err)?;
    }
    let partition_by = &stage.spec.partition_by;
    let new_name = new_rows_table(&stage.name);
    let (new_dir, new_table) = if !base || in_place {
        (out_dir.to_path_buf(), stage.name.as_str())
    } else {
        (
            out_dir.parent().unwrap_or(out_dir).join("incremental"),
            new_name.as_str(),
        )
    };
    let new = materialize(ctx, new_table, df, &new_dir, layout)
        .await
        .map_err(|e| materialize_error(stage, e))?;
    check_no_nulls(
        ctx,
        stage,
        new_table,
        partition_by,
        "the partition columns: insert_overwrite cannot place them",
    )
    .await?;
    if !base {
        return Ok(IncrementalWrite {
            new_rows: new.rows,
            written: new,
            replaces_partitions: false,
        });
    }
    let new_df = ctx.table(new_table).await.map_err(sql_err)?;
    let replaced = crate::publish::delta::partition_predicate(new_df.clone(), partition_by)
        .await
        .map_err(sql_err)?;
    let mut kept = ctx
        .table(prev_name)
        .await
        .map_err(sql_err)?
        .filter(replaced.is_not_true())
        .map_err(sql_err)?;
    if let Some(columns) = &evolved {
        kept = align(kept, columns).map_err(sql_err)?;
    }
    let table = new_df.clone().union(kept).map_err(sql_err)?;
    if !in_place {
        let table = if stage.spec.unique_key.is_empty() {
            table
        } else {
            table.sort(key_order(stage)).map_err(sql_err)?
        };
        let mut written = materialize(ctx, &stage.name, table, out_dir, layout)
            .await
            .map_err(|e| materialize_error(stage, e))?;
        ctx.deregister_table(new_name.as_str()).map_err(sql_err)?;
        written.spilled_bytes += new.spilled_bytes;
        return Ok(IncrementalWrite {
            written,
            new_rows: new.rows,
            replaces_partitions: false,
        });
    }
    let rows = table.clone().count().await.map_err(sql_err)? as u64;
    register_view(ctx, &new_name, new_df).map_err(sql_err)?;
    register_view(ctx, &stage.name, table).map_err(sql_err)?;
    Ok(IncrementalWrite {
        new_rows: new.rows,
        written: Written { rows, ..new },
        replaces_partitions: true,
    })
}

/// How a stage's columns differ from its previous table's.
#[derive(Debug, Default)]
struct SchemaChange {
    added: Vec<String>,
    removed: Vec<String>,
    /// (column, previous type, new type).
    retyped: Vec<(String, DataType, DataType)>,
    /// Only the order of the columns changed.
    reordered: bool,
    /// The new columns in order, then the previous table's columns the query dropped.
    union: Vec<Field>,
}

impl SchemaChange {
    fn between(before: &Schema, after: &Schema) -> SchemaChange {
        let mut change = SchemaChange::default();
        for f in after.fields() {
            match before.field_with_name(f.name()) {
                Err(_) => change.added.push(f.name().clone()),
                Ok(b) if !same_logical_type(b.data_type(), f.data_type()) => {
                    change
                        .retyped
                        .push((f.name().clone(), b.data_type().clone(), f.data_type().clone()))
                }
                Ok(_) => {}
            }
            change.union.push(f.as_ref().clone().with_nullable(true));
        }
        for f in before.fields() {
            if after.field_with_name(f.name()).is_err() {
                change.removed.push(f.name().clone());
                change.union.push(f.as_ref().clone().with_nullable(true));
            }
        }
        let names = |s: &Schema| s.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
        change.reordered = names(before) != names(after);
        change
    }

    fn is_none(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.retyped.is_empty() && !self.reordered
    }
}

impl std::fmt::Display for SchemaChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("added {}", self.added.join(", ")));
        }
        if !self.removed.is_empty() {
            parts.push(format!("removed {}", self.removed.join(", ")));
        }
        for (name, was, now) in &self.retyped {
            parts.push(format!("{name} was {was}, now {now}"));
        }
        if parts.is_empty() && self.reordered {
            parts.push("columns reordered".into());
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// True when two Arrow types hold the same values: equal, or both text (or both binary)
/// in different layouts. A previous table read back through Delta Lake has string views
/// where the stage's query, reading staged Parquet, has plain strings; Delta stores both
/// as `string`, and the merge's UNION converts between them.
fn same_logical_type(a: &DataType, b: &DataType) -> bool {
    let text = |t: &DataType| matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8);
    let binary = |t: &DataType| matches!(t, DataType::Binary | DataType::BinaryView | DataType::LargeBinary);
    a == b || (text(a) && text(b)) || (binary(a) && binary(b))
}

/// `df` with exactly `columns`, in order: its own where it has them, typed NULLs elsewhere.
fn align(df: DataFrame, columns: &[Field]) -> Result<DataFrame, DataFusionError> {
    let exprs = columns
        .iter()
        .map(|f| {
            if df.schema().inner().field_with_name(f.name()).is_ok() {
                Ok(col(datafusion::common::Column::new_unqualified(f.name())))
            } else {
                Ok(lit(ScalarValue::try_from(f.data_type())?).alias(f.name()))
            }
        })
        .collect::<Result<Vec<_>, DataFusionError>>()?;
    df.select(exprs)
}

/// Streams `df` into `out_dir/<name>/part-00000.parquet` (laid out as `layout`) and
/// registers the file as table `name` in place of the query; returns (file, rows, bytes).
pub async fn materialize(
    ctx: &SessionContext,
    name: &str,
    df: DataFrame,
    out_dir: &Path,
    layout: &Layout,
) -> Result<Written, MaterializeError> {
    let plan = df.create_physical_plan().await.map_err(MaterializeError::Query)?;
    materialize_plan(ctx, name, plan, out_dir, layout).await
}

/// [`materialize`] for a planned query.
async fn materialize_plan(
    ctx: &SessionContext,
    name: &str,
    plan: Arc<dyn ExecutionPlan>,
    out_dir: &Path,
    layout: &Layout,
) -> Result<Written, MaterializeError> {
    let output = out_dir.join(name).join("part-00000.parquet");
    let mut sink = ParquetSink::create_with(&output, plan.schema(), layout).map_err(MaterializeError::Write)?;
    let plan_ref = Arc::clone(&plan);
    let order = streamed_order(plan.as_ref());
    // The query runs on a task of its own while this one encodes its batches.
    let mut stream = spawn_buffered(
        datafusion::physical_plan::execute_stream(plan, ctx.task_ctx()).map_err(MaterializeError::Query)?,
        crate::engine::prefetch::PREFETCH_BATCHES,
    );
    while let Some(batch) = stream.next().await {
        sink.write(&batch.map_err(MaterializeError::Query)?)
            .map_err(MaterializeError::Write)?;
    }
    let (rows, bytes) = sink.close().map_err(MaterializeError::Write)?;
    log_executed_plan(name, plan_ref.as_ref());
    let spilled = spilled_bytes(plan_ref.as_ref());
    drop(plan_ref);
    crate::engine::memory::release_free_memory();
    if spilled > 0 {
        tracing::info!(
            table = name,
            spilled_bytes = spilled,
            "spilled to disk under the memory limit"
        );
    }
    register_sorted_parquet(ctx, name, std::slice::from_ref(&output), order)
        .await
        .map_err(MaterializeError::Query)?;
    Ok(Written {
        file: output,
        rows,
        bytes,
        spilled_bytes: spilled,
    })
}

/// Logs `plan`, executed for `table`, with each operator's metrics (rows, time, spills) at
/// debug level (`RUST_LOG=patron::transform=debug`).
pub fn log_executed_plan(table: &str, plan: &dyn ExecutionPlan) {
    tracing::debug!(
        table,
        "executed plan, with each operator's metrics:\n{}",
        datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan).indent(true)
    );
}

/// The leading ascending, nulls-last plain-column keys of the ORDER BY at the top of a logical plan
/// (under projections that pass the columns through by name).
fn logical_ordering(plan: &LogicalPlan) -> Vec<String> {
    match plan {
        LogicalPlan::Sort(sort) => sort
            .expr
            .iter()
            .map_while(|s| match &s.expr {
                Expr::Column(c) if s.asc && !s.nulls_first => Some(c.name.clone()),
                _ => None,
            })
            .collect(),
        LogicalPlan::Projection(p) => {
            let passed = |name: &String| p.expr.iter().any(|e| matches!(e, Expr::Column(c) if &c.name == name));
            logical_ordering(&p.input).into_iter().take_while(passed).collect()
        }
        _ => Vec::new(),
    }
}

/// Checks that the planned query's output is sorted by the stage's `@cluster_by` columns
/// first (ascending, nulls last: how later runs read the published table), as its ORDER BY must say: from the physical plan's ordering, or, on a
/// distributed engine (whose plan does not report one), from the logical plan's ORDER BY.
fn check_clustered(stage: &Stage, plan: &dyn ExecutionPlan, logical: &LogicalPlan) -> Result<(), TransformError> {
    let cluster = &stage.spec.cluster_by;
    if cluster.is_empty() {
        return Ok(());
    }
    let sorted: Vec<String> = column_ordering(plan)
        .into_iter()
        .map_while(|(name, options)| (!options.descending && !options.nulls_first).then_some(name))
        .collect();
    let leads = |sorted: &[String]| sorted.len() >= cluster.len() && sorted[..cluster.len()] == cluster[..];
    if leads(&sorted) {
        return Ok(());
    }
    if plan.properties().output_ordering().is_none() && leads(&logical_ordering(logical)) {
        return Ok(());
    }
    Err(TransformError::Sql {
        stage: stage.name.clone(),
        path: stage.path.clone(),
        message: format!(
            "`-- @cluster_by: {}` needs the stage to end with `ORDER BY {}, ...` (ascending, nulls last); its output is sorted by [{}]",
            cluster.join(", "),
            cluster.join(", "),
            sorted.join(", ")
        ),
    })
}

/// Runs one stage into `out_dir/<name>/part-00000.parquet` and registers the result.
/// `previous` is the stage's table as the last succeeded run published it: incremental
/// stages merge into it (`None`: a full refresh); other stages ignore it. Files get at most
/// `row_group_rows` rows per row group. `delta_publish`: the run publishes Delta tables, so
/// an `insert_overwrite` stage whose previous table is a Delta version writes its new rows
/// only (see [`StageMetrics::replaces_partitions`]).
pub async fn run_stage(
    ctx: &SessionContext,
    stage: &Stage,
    params: &HashMap<String, ScalarValue>,
    out_dir: &Path,
    previous: Option<&PublishedVersion>,
    row_group_rows: usize,
    delta_publish: bool,
) -> Result<StageMetrics, TransformError> {
    let partitions_in_place = delta_publish && previous.is_some_and(|p| p.version.is_some());
    let started = Instant::now();
    let layout = Layout {
        row_group_rows,
        cluster_by: stage.spec.cluster_by.clone(),
        ..Layout::default()
    };
    let sql_err = |e: DataFusionError| stage_error(stage, e);
    let mut rows_new = None;
    let mut replaces_partitions = false;
    let written = match stage.spec.materialized {
        Materialized::View => {
            let df = plan_stage(ctx, stage, params.clone()).await?;
            register_view(ctx, &stage.name, df).map_err(sql_err)?;
            Written::default()
        }
        Materialized::Table => {
            let df = plan_stage(ctx, stage, params.clone()).await?;
            let logical = df.logical_plan().clone();
            let plan = df.create_physical_plan().await.map_err(sql_err)?;
            check_clustered(stage, plan.as_ref(), &logical)?;
            materialize_plan(ctx, &stage.name, plan, out_dir, &layout)
                .await
                .map_err(|e| materialize_error(stage, e))?
        }
        Materialized::Incremental => {
            let w = run_incremental(ctx, stage, params, out_dir, previous, &layout, partitions_in_place).await?;
            rows_new = Some(w.new_rows);
            replaces_partitions = w.replaces_partitions;
            w.written
        }
    };
    let metrics = StageMetrics {
        name: stage.name.clone(),
        file: stage.path.to_string_lossy().into_owned(),
        layer: stage.layer.clone(),
        rows: written.rows,
        bytes: written.bytes,
        duration_ms: started.elapsed().as_millis() as u64,
        materialized: stage.spec.materialized,
        rows_new,
        partition_by: stage.spec.partition_by.clone(),
        replaces_partitions,
        cluster_by: layout.cluster_by,
        spilled_bytes: written.spilled_bytes,
        output: written.file,
    };
    tracing::info!(stage = %metrics.name, rows = metrics.rows, ms = metrics.duration_ms, "stage done");
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &[(&str, DataType)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), false))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn a_schema_change_lists_added_removed_and_retyped_columns() {
        let before = schema(&[("id", DataType::Utf8), ("a", DataType::Int64), ("gone", DataType::Utf8)]);
        let after = schema(&[
            ("id", DataType::Utf8),
            ("a", DataType::Float64),
            ("new", DataType::Boolean),
        ]);
        let c = SchemaChange::between(&before, &after);
        assert_eq!(c.added, vec!["new"]);
        assert_eq!(c.removed, vec!["gone"]);
        assert_eq!(c.retyped, vec![("a".to_string(), DataType::Int64, DataType::Float64)]);
        let names: Vec<&str> = c.union.iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, vec!["id", "a", "new", "gone"]);
        assert_eq!(c.to_string(), "added new; removed gone; a was Int64, now Float64");
        assert!(SchemaChange::between(&before, &before).is_none());
        let reordered = schema(&[("a", DataType::Int64), ("id", DataType::Utf8), ("gone", DataType::Utf8)]);
        let c = SchemaChange::between(&before, &reordered);
        assert!(!c.is_none());
        assert_eq!(c.to_string(), "columns reordered");
        // String views and plain strings are one type to a stage (Delta reads views back).
        let views = schema(&[
            ("id", DataType::Utf8View),
            ("a", DataType::Int64),
            ("gone", DataType::LargeUtf8),
        ]);
        assert!(SchemaChange::between(&views, &before).is_none());
        let binary = schema(&[
            ("id", DataType::BinaryView),
            ("a", DataType::Int64),
            ("gone", DataType::Utf8),
        ]);
        assert_eq!(
            SchemaChange::between(&before, &binary).retyped,
            vec![("id".to_string(), DataType::Utf8, DataType::BinaryView)]
        );
    }

    #[tokio::test]
    async fn align_fills_missing_columns_with_typed_nulls() {
        let ctx = SessionContext::new();
        let df = ctx.sql("SELECT 'x' AS id, 1 AS a").await.unwrap();
        let columns = vec![
            Field::new("a", DataType::Int64, true),
            Field::new("id", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ];
        let aligned = align(df, &columns).unwrap();
        let batches = aligned.collect().await.unwrap();
        let b = &batches[0];
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, vec!["a", "id", "score"]);
        assert_eq!(b.column(2).data_type(), &DataType::Float64);
        assert_eq!(b.column(2).null_count(), 1);
    }
}
