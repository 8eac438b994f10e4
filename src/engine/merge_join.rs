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
//! added), and only inner, left, right and full joins without an extra join filter.

use std::sync::Arc;

use arrow::compute::SortOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{JoinType, Result};
use datafusion::config::ConfigOptions;
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode, SortMergeJoinExec};
use datafusion::physical_plan::projection::ProjectionExec;
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
        && !join.on().is_empty();
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
