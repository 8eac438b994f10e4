//! Merge joins for inputs that are already sorted on their join keys.
//!
//! On one partition (`engine.deterministic`) DataFusion 55 plans every equi-join as a hash
//! join that collects one side into memory, and that memory cannot spill. patron's staged
//! tables are stored sorted by customer (see `@cluster_by`), so the per-customer aggregates
//! of a mart such as `fct_customer` come out in customer order, and joining them needs no
//! hash table at all: [`MergeSortedJoins`] replaces such a hash join with DataFusion's
//! sort-merge join, which holds only the rows of the current key. It runs before
//! DataFusion's `EnsureRequirements`, which then sees the merge join's ordered output and
//! drops a sort by the same key above it.
//!
//! Only joins whose two inputs both already satisfy the order are changed (no sort is
//! added), and only inner, left, right and full joins without an extra join filter. A join
//! whose build side is known to hold at most one row (such as `MAX(as_of)`) stays a hash
//! join: its hash table costs nothing, and its dynamic filter lets the other side's scan
//! skip the files and row groups that cannot match, where a merge join would read them all
//! and hold every row of the matching key.

use std::sync::Arc;

use arrow::compute::SortOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{JoinType, Result};
use datafusion::config::ConfigOptions;
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode, SortMergeJoinExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// The rule; see the module documentation.
#[derive(Debug, Default)]
pub struct MergeSortedJoins;

/// Name of the DataFusion rule [`MergeSortedJoins`] runs before.
pub const RUNS_BEFORE: &str = "EnsureRequirements";

/// The orders a sorted input may have its keys in: ascending, nulls last (patron's staged
/// tables) or first.
const ORDERS: [SortOptions; 2] = [
    SortOptions {
        descending: false,
        nulls_first: false,
    },
    SortOptions {
        descending: false,
        nulls_first: true,
    },
];

impl PhysicalOptimizerRule for MergeSortedJoins {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match node.downcast_ref::<HashJoinExec>() {
            Some(join) => match merge_join(join)? {
                Some(merged) => Ok(Transformed::yes(merged)),
                None => Ok(Transformed::no(node)),
            },
            None => Ok(Transformed::no(node)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "MergeSortedJoins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `join` as a sort-merge join (with its projection), when both inputs are sorted on the
/// join keys in one of [`ORDERS`].
fn merge_join(join: &HashJoinExec) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let eligible = *join.partition_mode() == PartitionMode::CollectLeft
        && matches!(
            join.join_type(),
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
        )
        && join.filter().is_none()
        && !join.on().is_empty()
        && !at_most_one_row(join.left())?;
    if !eligible {
        return Ok(None);
    }
    let (left, right) = (join.left(), join.right());
    let sorted = |plan: &Arc<dyn ExecutionPlan>, keys: Vec<PhysicalSortExpr>| {
        plan.equivalence_properties().ordering_satisfy(keys)
    };
    for order in ORDERS {
        let left_keys = join
            .on()
            .iter()
            .map(|(l, _)| PhysicalSortExpr::new(Arc::clone(l), order));
        let right_keys = join
            .on()
            .iter()
            .map(|(_, r)| PhysicalSortExpr::new(Arc::clone(r), order));
        if !(sorted(left, left_keys.collect())? && sorted(right, right_keys.collect())?) {
            continue;
        }
        let merged: Arc<dyn ExecutionPlan> = Arc::new(SortMergeJoinExec::try_new(
            Arc::clone(left),
            Arc::clone(right),
            join.on().to_vec(),
            None,
            *join.join_type(),
            vec![order; join.on().len()],
            join.null_equality(),
        )?);
        let Some(projection) = &join.projection else {
            return Ok(Some(merged));
        };
        let schema = merged.schema();
        let columns: Vec<_> = projection
            .iter()
            .map(|&i| {
                let column: Arc<dyn datafusion::physical_plan::PhysicalExpr> =
                    Arc::new(Column::new(schema.field(i).name(), i));
                (column, schema.field(i).name().clone())
            })
            .collect();
        return Ok(Some(Arc::new(ProjectionExec::try_new(columns, merged)?)));
    }
    Ok(None)
}

/// True when the plan's statistics say exactly how many rows it yields, and that is 0 or 1.
fn at_most_one_row(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    let stats = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new())?;
    Ok(matches!(stats.num_rows, Precision::Exact(n) if n <= 1))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::logical_expr::{SortExpr, col};
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// A table of (k, v) rows, declared sorted by k when `sorted`.
    fn table(keys: &[Option<&str>], values: &[i64], sorted: bool) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .unwrap();
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        let order = vec![vec![SortExpr::new(col("k"), true, false)]];
        Arc::new(if sorted { table.with_sort_order(order) } else { table })
    }

    fn session(with_rule: bool, sorted: bool) -> SessionContext {
        let config = SessionConfig::new().with_target_partitions(1);
        let ctx = if with_rule {
            let runtime = RuntimeEnvBuilder::new().build_arc().unwrap();
            SessionContext::new_with_state(crate::engine::local_state(config, runtime))
        } else {
            SessionContext::new_with_config(config)
        };
        // Keys ascending, nulls last; repeated keys on both sides; keys on one side only.
        let a = table(
            &[Some("a"), Some("b"), Some("b"), Some("d"), None],
            &[1, 2, 3, 4, 5],
            sorted,
        );
        let b = table(
            &[Some("b"), Some("b"), Some("c"), Some("d"), None],
            &[10, 20, 30, 40, 50],
            sorted,
        );
        ctx.register_table("a", a).unwrap();
        ctx.register_table("b", b).unwrap();
        ctx
    }

    async fn plan_and_rows(ctx: &SessionContext, sql: &str) -> (String, String) {
        let frame = ctx.sql(sql).await.unwrap();
        let plan = frame.clone().create_physical_plan().await.unwrap();
        let plan_text = displayable(plan.as_ref()).indent(false).to_string();
        let rows = pretty_format_batches(&frame.collect().await.unwrap())
            .unwrap()
            .to_string();
        (plan_text, rows)
    }

    /// Sorted inputs are merged, the sort by the key above the join is dropped, and every
    /// join type gives the rows the hash join gives; unsorted inputs keep the hash join.
    #[tokio::test]
    async fn sorted_inputs_are_merge_joined_with_the_hash_joins_results() {
        for join in ["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"] {
            let sql = format!(
                "SELECT a.k AS ak, a.v AS av, b.k AS bk, b.v AS bv FROM a {join} b ON a.k = b.k ORDER BY ak, av, bk, bv"
            );
            let (merged_plan, merged) = plan_and_rows(&session(true, true), &sql).await;
            let (hashed_plan, hashed) = plan_and_rows(&session(false, true), &sql).await;
            assert!(merged_plan.contains("SortMergeJoinExec"), "{join}:\n{merged_plan}");
            assert!(!merged_plan.contains("HashJoinExec"), "{join}:\n{merged_plan}");
            assert!(hashed_plan.contains("HashJoinExec"), "{join}:\n{hashed_plan}");
            assert_eq!(merged, hashed, "{join}");
        }
        let sql = "SELECT a.k, b.v FROM a LEFT JOIN b ON a.k = b.k ORDER BY a.k";
        let (plan, _) = plan_and_rows(&session(true, true), sql).await;
        assert!(
            !plan.contains("SortExec"),
            "the join's output is already in key order:\n{plan}"
        );
        let (plan, _) = plan_and_rows(&session(true, false), sql).await;
        assert!(
            plan.contains("HashJoinExec") && !plan.contains("SortMergeJoinExec"),
            "{plan}"
        );
    }

    /// A one-row build side (an aggregate without GROUP BY) stays a hash join even though
    /// both sides are sorted on the key, and gives the same rows.
    #[tokio::test]
    async fn a_one_row_build_side_keeps_the_hash_join() {
        let sql = "SELECT b.k, b.v FROM (SELECT MAX(k) AS k FROM a) AS m JOIN b ON b.k = m.k ORDER BY b.v";
        let (plan, rows) = plan_and_rows(&session(true, true), sql).await;
        assert!(
            plan.contains("HashJoinExec") && !plan.contains("SortMergeJoinExec"),
            "{plan}"
        );
        assert!(rows.contains("| d | 40 |") && !rows.contains("| b "), "{rows}");
    }
}
