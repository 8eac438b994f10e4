//! A table of Parquet files that each hold one partition: every file comes with the values
//! of the table's partition columns (which the files themselves do not store, as in a
//! partitioned Delta table).
//!
//! DataFusion's Parquet scan knows each file's partition values here, so a filter on a
//! partition column skips whole files without opening them, and so does a join's dynamic
//! filter (a `JOIN ... ON h.as_of = d.as_of` against a few days reads those days' files
//! only; a filter naming partition columns alone leaves the other files out of the scan).
//! The Delta provider does not push filters on partition columns into its scan; a table
//! read through it is read whole.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{FieldRef, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;

/// One file of a [`PartitionedFiles`] table.
#[derive(Debug, Clone)]
pub struct PartFile {
    /// Absolute local path.
    pub path: std::path::PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// The file's values of the partition columns, in their order (none NULL).
    pub partition_values: Vec<ScalarValue>,
}

/// Local Parquet files with their partition values, read as one table (see the module doc).
/// Its columns are the files' columns, then the partition columns.
#[derive(Debug)]
pub struct PartitionedFiles {
    table_schema: TableSchema,
    schema: SchemaRef,
    /// The partition columns alone.
    partition_schema: SchemaRef,
    files: Vec<PartitionedFile>,
}

impl PartitionedFiles {
    /// The table of `files`, whose columns are `file_schema`'s, partitioned by
    /// `partition_cols` (each file's values given in that order).
    pub fn try_new(
        file_schema: SchemaRef,
        partition_cols: Vec<FieldRef>,
        files: &[PartFile],
    ) -> Result<Self, DataFusionError> {
        let partition_schema = Arc::new(Schema::new(partition_cols.clone()));
        let table_schema = TableSchema::builder(Arc::clone(&file_schema))
            .with_table_partition_cols(partition_cols)
            .build();
        let schema = Arc::clone(table_schema.table_schema());
        let unknown = Arc::new(Statistics::new_unknown(&file_schema));
        let files = files
            .iter()
            .map(|f| {
                let location = object_store::path::Path::from_absolute_path(&f.path)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                let file = PartitionedFile::new(location.to_string(), f.size)
                    .with_partition_values(f.partition_values.clone())
                    // Statistics (unknown but for the partition values) let the scan prune
                    // a file by a dynamic filter on its partition values.
                    .with_statistics(Arc::clone(&unknown));
                Ok(file)
            })
            .collect::<Result<Vec<_>, DataFusionError>>()?;
        Ok(PartitionedFiles {
            table_schema,
            schema,
            partition_schema,
            files,
        })
    }

    /// The files whose partition values can meet `filters` (those of them that name
    /// partition columns only; the others are left to the scan).
    fn files_for(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<PartitionedFile>, DataFusionError> {
        let on_partitions: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                f.column_refs()
                    .iter()
                    .all(|c| self.partition_schema.field_with_name(&c.name).is_ok())
            })
            .cloned()
            .collect();
        let Some(filter) = conjunction(on_partitions) else {
            return Ok(self.files.clone());
        };
        let df_schema = DFSchema::try_from(Schema::clone(&self.partition_schema))?;
        let predicate = state.create_physical_expr(filter, &df_schema)?;
        let mut kept = Vec::new();
        for file in &self.files {
            let columns = file
                .partition_values
                .iter()
                .map(|v| v.to_array_of_size(1))
                .collect::<Result<Vec<_>, _>>()?;
            let row = RecordBatch::try_new(Arc::clone(&self.partition_schema), columns)?;
            let result = predicate.evaluate(&row)?.into_array(1)?;
            let meets = result
                .as_any()
                .downcast_ref::<BooleanArray>()
                .is_none_or(|b| b.is_valid(0) && b.value(0));
            if meets {
                kept.push(file.clone());
            }
        }
        Ok(kept)
    }
}

#[async_trait]
impl TableProvider for PartitionedFiles {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        // Used to skip files and row groups; the rows are filtered again above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let mut source = ParquetSource::new(self.table_schema.clone())
            .with_table_parquet_options(state.table_options().parquet.clone());
        if let Some(filter) = conjunction(filters.to_vec()) {
            let df_schema = DFSchema::try_from(Schema::clone(&self.schema))?;
            source = source.with_predicate(state.create_physical_expr(filter, &df_schema)?);
        }
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
            .with_file_group(FileGroup::new(self.files_for(state, filters)?))
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::prelude::SessionContext;

    use crate::storage::ParquetSink;

    fn write(path: &std::path::Path, n: Vec<i64>) -> u64 {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(n)) as ArrayRef]).unwrap();
        let mut sink = ParquetSink::create(path, schema).unwrap();
        sink.write(&batch).unwrap();
        sink.close().unwrap();
        std::fs::metadata(path).unwrap().len()
    }

    async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<String>, DataFusionError> {
        let batches = ctx.sql(sql).await?.collect().await?;
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
        Ok(text
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .map(String::from)
            .collect())
    }

    /// Partitions `a` and `b` name files that do not exist: a query reads them only if it
    /// cannot skip them by their partition values.
    #[tokio::test]
    async fn a_join_on_the_partition_column_reads_only_the_matching_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("day=c.parquet");
        let size = write(&c, vec![7, 8]);
        let part = |name: &str, path: std::path::PathBuf| PartFile {
            path,
            size,
            partition_values: vec![ScalarValue::from(name)],
        };
        let files = [
            part("a", dir.path().join("missing-a.parquet")),
            part("b", dir.path().join("missing-b.parquet")),
            part("c", c),
        ];
        let file_schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let day = Arc::new(Field::new("day", DataType::Utf8, false));
        let table = PartitionedFiles::try_new(file_schema, vec![day], &files).unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::new(table)).unwrap();

        // A literal filter on the partition column, and a join whose other side names the day.
        let by_filter = rows(&ctx, "SELECT day, n FROM t WHERE day = 'c' ORDER BY n")
            .await
            .unwrap();
        assert_eq!(by_filter, ["| c   | 7 |", "| c   | 8 |"]);
        let by_join = rows(
            &ctx,
            "SELECT t.day, t.n FROM (SELECT max(column1) AS day FROM (VALUES ('c'))) d \
             JOIN t ON t.day = d.day ORDER BY t.n",
        )
        .await
        .unwrap();
        assert_eq!(by_join, ["| c   | 7 |", "| c   | 8 |"]);
        // Without either, the missing files are opened.
        let e = rows(&ctx, "SELECT count(n) FROM t").await.unwrap_err().to_string();
        assert!(e.contains("missing-"), "{e}");
    }
}
