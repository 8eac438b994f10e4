//! Running stages: plan each SELECT on the run's one [`SessionContext`] with the run's
//! named parameters, stream the result into Parquet in the staging area, and register it
//! so later stages read the materialised table rather than recomputing it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use datafusion::error::DataFusionError;
use datafusion::execution::options::{CsvReadOptions, ParquetReadOptions};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use serde::Serialize;

use super::spec::Materialized;
use super::{Seed, Stage, TransformError};
use crate::storage::ParquetSink;

/// What one stage did.
#[derive(Debug, Clone, Serialize)]
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
    /// Table (written and published) or view (neither).
    pub materialized: Materialized,
    /// The materialised file.
    #[serde(skip)]
    pub output: PathBuf,
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
        let path = seed.path.to_string_lossy();
        ctx.register_csv(&seed.name, path.as_ref(), CsvReadOptions::new().has_header(true))
            .await
            .map_err(|e| TransformError::Sql {
                stage: seed.name.clone(),
                path: seed.path.clone(),
                message: e.to_string(),
            })?;
    }
    Ok(())
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
    ctx.deregister_table(name)?;
    let paths: Vec<String> = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let df = ctx.read_parquet(paths, ParquetReadOptions::default()).await?;
    ctx.register_table(name, df.into_view())?;
    Ok(())
}

/// Why materialising a table failed.
#[derive(Debug)]
pub enum MaterializeError {
    /// Executing the query failed.
    Query(DataFusionError),
    /// Writing the Parquet file failed.
    Write(crate::storage::WriteError),
}

impl std::fmt::Display for MaterializeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaterializeError::Query(e) => write!(f, "{e}"),
            MaterializeError::Write(e) => write!(f, "{e}"),
        }
    }
}

/// Streams `df` into `out_dir/<name>/part-00000.parquet` and registers the file as table
/// `name` in place of the query; returns (file, rows, bytes).
pub async fn materialize(
    ctx: &SessionContext,
    name: &str,
    df: DataFrame,
    out_dir: &Path,
) -> Result<(PathBuf, u64, u64), MaterializeError> {
    let schema = df.schema().inner().clone();
    let output = out_dir.join(name).join("part-00000.parquet");
    let mut sink = ParquetSink::create(&output, schema).map_err(MaterializeError::Write)?;
    let mut stream = df.execute_stream().await.map_err(MaterializeError::Query)?;
    while let Some(batch) = stream.next().await {
        sink.write(&batch.map_err(MaterializeError::Query)?)
            .map_err(MaterializeError::Write)?;
    }
    let (rows, bytes) = sink.close().map_err(MaterializeError::Write)?;
    register_parquet(ctx, name, &output)
        .await
        .map_err(MaterializeError::Query)?;
    Ok((output, rows, bytes))
}

/// Runs one stage into `out_dir/<name>/part-00000.parquet` and registers the result.
pub async fn run_stage(
    ctx: &SessionContext,
    stage: &Stage,
    params: &HashMap<String, ScalarValue>,
    out_dir: &Path,
) -> Result<StageMetrics, TransformError> {
    let started = Instant::now();
    let sql_err = |e: DataFusionError| TransformError::Sql {
        stage: stage.name.clone(),
        path: stage.path.clone(),
        message: describe_sql_error(&stage.sql, &e),
    };
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(&stage.sql, options)
        .await
        .map_err(sql_err)?
        .with_param_values(params.clone())
        .map_err(sql_err)?;
    let (output, rows, bytes) = match stage.spec.materialized {
        Materialized::View => {
            ctx.deregister_table(&stage.name).map_err(sql_err)?;
            ctx.register_table(&stage.name, df.into_view()).map_err(sql_err)?;
            (PathBuf::new(), 0, 0)
        }
        Materialized::Table => materialize(ctx, &stage.name, df, out_dir).await.map_err(|e| match e {
            MaterializeError::Query(e) => sql_err(e),
            MaterializeError::Write(e) => TransformError::Write(e),
        })?,
    };
    let metrics = StageMetrics {
        name: stage.name.clone(),
        file: stage.path.to_string_lossy().into_owned(),
        layer: stage.layer.clone(),
        rows,
        bytes,
        duration_ms: started.elapsed().as_millis() as u64,
        materialized: stage.spec.materialized,
        output,
    };
    tracing::info!(stage = %metrics.name, rows, ms = metrics.duration_ms, "stage done");
    Ok(metrics)
}
