//! One read of each source per sampled snapshot. A sampled snapshot's features query
//! (see [`super::features::in_sample`]) inlines its stage chain as views, so a table that
//! several of them read is scanned once per reader: at 10M sales lines the query scanned
//! `raw_sales` three times and `raw_marketing` twice, and evaluated the sample's filter
//! (pushed into each scan) on every row each time. Here the scans of one table that all
//! carry the sample's filter are found in the optimized plan, the rows passing the filters
//! they share are written once (a fraction of the table: the sample's customers, up to the
//! cut-off), and those scans read that slice instead.
//!
//! Why the result cannot change: each rewritten scan keeps its own filters and projection,
//! and the slice holds every row of the table that passes the filters common to all those
//! scans, so it holds every row each of them would pass. The scans read the slice with the
//! table's own schema.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DataFusionError};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown, TableScan};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};

use super::ChurnError;
use crate::storage::Layout;
use crate::transform::runner::materialize;

/// What [`share_scans`] wrote: per table, the rows of its slice.
pub type Slices = BTreeMap<String, u64>;

/// `df` with the scans of each table read at least twice under a filter that calls
/// `marker` (a function name) rewritten to read one slice of that table, written under
/// `folder` (see the module doc). Tables scanned once, or not under `marker`, are left as
/// they are.
pub async fn share_scans(
    ctx: &SessionContext,
    df: DataFrame,
    marker: &str,
    folder: &Path,
) -> Result<(DataFrame, Slices), ChurnError> {
    let err = |e: DataFusionError| ChurnError::Input {
        table: "(sampled snapshot)".into(),
        message: e.to_string(),
    };
    let plan = df.into_optimized_plan().map_err(err)?;
    // Views are inlined by now, so a scan names the table it reads by its provider, which
    // is also how the registered tables are told apart below.
    let mut marked: BTreeMap<usize, Vec<TableScan>> = BTreeMap::new();
    plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && scan.filters.iter().any(|f| calls(f, marker))
        {
            let provider = source_as_provider(&scan.source)?;
            marked.entry(address(&provider)).or_default().push(scan.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(err)?;
    marked.retain(|_, scans| scans.len() > 1);
    if marked.is_empty() {
        return Ok((DataFrame::new(ctx.state(), plan), Slices::new()));
    }
    let names = registered_names(ctx).await.map_err(err)?;
    let mut sliced = BTreeMap::new();
    let mut slices = Slices::new();
    for (key, scans) in marked {
        let common = common_filters(&scans);
        let provider = source_as_provider(&scans[0].source).map_err(err)?;
        // The scans' filters must be applied above them again (inexact), as they are for
        // Parquet files: a slice read in their place returns more rows than a scan passes.
        let inexact = scans.iter().all(|scan| {
            let filters: Vec<&Expr> = scan.filters.iter().collect();
            provider
                .supports_filters_pushdown(&filters)
                .is_ok_and(|how| how.iter().all(|h| *h == TableProviderFilterPushDown::Inexact))
        });
        if !common.iter().any(|f| calls(f, marker)) || !inexact {
            continue;
        }
        let Some(filter) = conjunction(common) else {
            continue;
        };
        let table = names
            .get(&key)
            .cloned()
            .unwrap_or_else(|| scans[0].table_name.table().to_string());
        // Only the columns the scans read or filter on, without dictionaries (the slice is
        // read once or twice and then removed: encoding speed counts, not size).
        let schema = provider.schema();
        let columns = read_columns(&scans, &schema);
        let query = LogicalPlanBuilder::scan(
            scans[0].table_name.clone(),
            Arc::clone(&scans[0].source),
            Some(columns.clone()),
        )
        .and_then(|b| b.filter(filter))
        .and_then(|b| b.build())
        .map_err(err)?;
        let layout = Layout {
            plain: columns.iter().map(|&i| schema.field(i).name().clone()).collect(),
            ..Layout::default()
        };
        let name = format!("__slice_{table}");
        let written = materialize(ctx, &name, DataFrame::new(ctx.state(), query), folder, &layout)
            .await
            .map_err(|e| ChurnError::Input {
                table: table.clone(),
                message: e.to_string(),
            })?;
        let read = ctx
            .read_parquet(
                written.file.to_string_lossy().into_owned(),
                // The table's schema: the scans' column numbers stay valid, and the columns
                // no scan reads are not in the file.
                ParquetReadOptions::default().schema(&schema),
            )
            .await
            .map_err(err)?;
        let LogicalPlan::TableScan(scan) = read.logical_plan() else {
            return Err(err(DataFusionError::Internal(
                "a Parquet read is not a table scan".into(),
            )));
        };
        sliced.insert(key, Arc::clone(&scan.source));
        slices.insert(table, written.rows);
    }
    if sliced.is_empty() {
        return Ok((DataFrame::new(ctx.state(), plan), slices));
    }
    let plan = plan
        .transform_up(|node| match node {
            LogicalPlan::TableScan(mut scan) if scan.filters.iter().any(|f| calls(f, marker)) => {
                match sliced.get(&address(&source_as_provider(&scan.source)?)) {
                    Some(slice) => {
                        scan.source = Arc::clone(slice);
                        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
                    }
                    None => Ok(Transformed::no(LogicalPlan::TableScan(scan))),
                }
            }
            other => Ok(Transformed::no(other)),
        })
        .map_err(err)?
        .data;
    Ok((DataFrame::new(ctx.state(), plan), slices))
}

/// Tells providers apart (the same table registered under several names, or read by
/// several views, is one provider).
fn address(provider: &Arc<dyn TableProvider>) -> usize {
    Arc::as_ptr(provider) as *const () as usize
}

/// The session's table names by provider; a view (or a registered DataFrame) over one
/// table scan counts as that scan's provider.
async fn registered_names(ctx: &SessionContext) -> Result<BTreeMap<usize, String>, DataFusionError> {
    let mut names = BTreeMap::new();
    let state = ctx.state();
    let options = state.config_options();
    let Some(schema) = state
        .catalog_list()
        .catalog(&options.catalog.default_catalog)
        .and_then(|c| c.schema(&options.catalog.default_schema))
    else {
        return Ok(names);
    };
    for name in schema.table_names() {
        let Some(provider) = schema.table(&name).await? else {
            continue;
        };
        let inner = match provider.get_logical_plan().as_deref() {
            Some(LogicalPlan::TableScan(scan)) => source_as_provider(&scan.source)?,
            _ => Arc::clone(&provider),
        };
        names.entry(address(&inner)).or_insert(name);
    }
    Ok(names)
}

/// Whether `expr` calls the function named `marker`.
fn calls(expr: &Expr, marker: &str) -> bool {
    expr.exists(|e| Ok(matches!(e, Expr::ScalarFunction(f) if f.name() == marker)))
        .unwrap_or(false)
}

/// The columns of `schema` that `scans` project or filter on, in schema order.
fn read_columns(scans: &[TableScan], schema: &datafusion::arrow::datatypes::Schema) -> Vec<usize> {
    let mut read = vec![false; schema.fields().len()];
    for scan in scans {
        match &scan.projection {
            Some(columns) => columns.iter().for_each(|&i| read[i] = true),
            None => read.iter_mut().for_each(|r| *r = true),
        }
        for filter in &scan.filters {
            for column in filter.column_refs() {
                if let Ok(i) = schema.index_of(&column.name) {
                    read[i] = true;
                }
            }
        }
    }
    (0..read.len()).filter(|&i| read[i]).collect()
}

/// The filters every scan of `scans` carries, compared without column qualifiers.
fn common_filters(scans: &[TableScan]) -> Vec<Expr> {
    let unqualified = |scan: &TableScan| -> Vec<Expr> { scan.filters.iter().map(unqualify).collect() };
    let mut common = unqualified(&scans[0]);
    for scan in &scans[1..] {
        let filters = unqualified(scan);
        common.retain(|f| filters.contains(f));
    }
    common
}

fn unqualify(expr: &Expr) -> Expr {
    expr.clone()
        .transform_up(|e| match e {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))),
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
        .unwrap_or_else(|_| expr.clone())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::dataframe::DataFrameWriteOptions;

    use super::*;
    use crate::score::churn::features::{IN_SAMPLE_FUNCTION, in_sample};

    /// The query reads `t` three times: twice under the sample's filter (with different
    /// other filters), once without it.
    const QUERY: &str = "
        SELECT a.customer_id, a.v, b.n, c.total
        FROM (SELECT customer_id, v FROM t WHERE v > 2) AS a
        JOIN (SELECT customer_id, COUNT(*) AS n FROM t GROUP BY customer_id) AS b ON a.customer_id = b.customer_id
        CROSS JOIN (SELECT SUM(v) AS total FROM t) AS c
        ORDER BY a.customer_id, a.v";

    async fn session(dir: &Path) -> (SessionContext, Expr) {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("v", DataType::Int64, true),
            // Read by no query: left out of the slices.
            Field::new("w", DataType::Utf8, false),
        ]));
        let ids: Vec<String> = (0..60).map(|i| format!("C{}", i % 12)).collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Int64Array::from((0..60).collect::<Vec<i64>>())),
                Arc::new(StringArray::from(vec!["unread"; 60])),
            ],
        )
        .unwrap();
        let path = dir.join("t.parquet");
        ctx.read_batch(batch)
            .unwrap()
            .write_parquet(path.to_str().unwrap(), DataFrameWriteOptions::new(), None)
            .await
            .unwrap();
        ctx.register_parquet("t", path.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        let (udf, predicate) = in_sample(HashSet::from(["C1".to_string(), "C5".to_string()]));
        ctx.register_udf(udf);
        (ctx, predicate)
    }

    async fn rows(df: DataFrame) -> Vec<String> {
        let batches = df.collect().await.unwrap();
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .lines()
            .map(String::from)
            .collect()
    }

    #[tokio::test]
    async fn the_sampled_scans_of_a_table_read_one_slice_and_give_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, sample) = session(dir.path()).await;
        let query = || async { ctx.sql(QUERY).await.unwrap().filter(sample.clone()).unwrap() };
        let expected = rows(query().await).await;
        // C1 and C5 have 5 rows each; C1's first (v = 1) is not above 2.
        assert_eq!(expected.len(), 4 + 9, "a table of 9 rows: {expected:?}");

        let (df, slices) = share_scans(&ctx, query().await, IN_SAMPLE_FUNCTION, &dir.path().join("slices"))
            .await
            .unwrap();
        // The two scans under the sample's filter share a slice of its 10 rows; the third,
        // without it (the total over every row), still reads the table.
        assert_eq!(slices, Slices::from([("t".to_string(), 10)]));
        let file = dir.path().join("slices/__slice_t/part-00000.parquet");
        let written = ctx
            .read_parquet(file.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        let names: Vec<&String> = written.schema().fields().iter().map(|f| f.name()).collect();
        assert_eq!(names, ["customer_id", "v"], "the slice holds the columns read");
        let mut sources = Vec::new();
        df.logical_plan()
            .apply(|node| {
                if let LogicalPlan::TableScan(scan) = node {
                    sources.push((calls_any(&scan.filters), scan.source.schema().fields().len()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
        assert_eq!(sources.iter().filter(|(marked, _)| *marked).count(), 2, "{sources:?}");
        assert_eq!(rows(df).await, expected);
    }

    #[tokio::test]
    async fn a_table_scanned_once_under_the_filter_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, sample) = session(dir.path()).await;
        let df = ctx
            .sql("SELECT customer_id, v FROM t")
            .await
            .unwrap()
            .filter(sample)
            .unwrap();
        let expected = rows(df.clone()).await;
        let (df, slices) = share_scans(&ctx, df, IN_SAMPLE_FUNCTION, &dir.path().join("slices"))
            .await
            .unwrap();
        assert!(slices.is_empty());
        assert_eq!(rows(df).await, expected);
        assert!(!dir.path().join("slices").exists());
    }

    fn calls_any(filters: &[Expr]) -> bool {
        filters.iter().any(|f| calls(f, IN_SAMPLE_FUNCTION))
    }
}
