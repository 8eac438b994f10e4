//! The inputs of a join computed on tasks of their own, so that a one-partition plan uses
//! more than one core.
//!
//! With one partition per query (`engine.deterministic`), DataFusion runs a whole plan as
//! one chain of streams polled by one task: `fct_customer`'s seven per-customer aggregates
//! over three staged tables, joined, took 12 s of one core while the other had nothing to
//! do. [`PrefetchJoinInputs`] puts a [`PrefetchExec`] over each input of every join; it
//! computes its input on a task of its own ([`spawn_buffered`]) and hands the batches on
//! unchanged and in the same order, holding at most [`PREFETCH_BATCHES`] ahead. The
//! results are the same batches; only where they are computed changes.

use std::fmt;
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::common::spawn_buffered;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec, SymmetricHashJoinExec,
};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
    SendableRecordBatchStream,
};

/// Batches a [`PrefetchExec`] computes ahead of its consumer.
pub const PREFETCH_BATCHES: usize = 2;

/// Computes its input on a task of its own; see the module documentation.
#[derive(Debug)]
pub struct PrefetchExec {
    input: Arc<dyn ExecutionPlan>,
    /// The input's: the output is the input's batches, in its order and partitions.
    properties: Arc<PlanProperties>,
}

impl PrefetchExec {
    /// `input`, computed on a task of its own.
    pub fn new(input: Arc<dyn ExecutionPlan>) -> PrefetchExec {
        let properties = Arc::clone(input.properties());
        PrefetchExec { input, properties }
    }
}

impl DisplayAs for PrefetchExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "PrefetchExec: batches={PREFETCH_BATCHES}")
            }
            DisplayFormatType::TreeRender => write!(f, "batches={PREFETCH_BATCHES}"),
        }
    }
}

impl ExecutionPlan for PrefetchExec {
    fn name(&self) -> &'static str {
        "PrefetchExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(PrefetchExec::new(input))),
            _ => datafusion::common::internal_err!("PrefetchExec takes one input"),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        Ok(spawn_buffered(
            self.input.execute(partition, context)?,
            PREFETCH_BATCHES,
        ))
    }
}

/// Puts a [`PrefetchExec`] over each input of every join; see the module documentation.
/// It runs last, after DataFusion's rules have settled the plan.
#[derive(Debug, Default)]
pub struct PrefetchJoinInputs;

/// True for the operators whose inputs are independent streams it consumes side by side.
fn is_join(plan: &dyn ExecutionPlan) -> bool {
    plan.downcast_ref::<HashJoinExec>().is_some()
        || plan.downcast_ref::<SortMergeJoinExec>().is_some()
        || plan.downcast_ref::<NestedLoopJoinExec>().is_some()
        || plan.downcast_ref::<CrossJoinExec>().is_some()
        || plan.downcast_ref::<SymmetricHashJoinExec>().is_some()
}

impl PhysicalOptimizerRule for PrefetchJoinInputs {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if !is_join(node.as_ref()) {
                return Ok(Transformed::no(node));
            }
            let children: Vec<Arc<dyn ExecutionPlan>> = node
                .children()
                .into_iter()
                .map(|child| match child.downcast_ref::<PrefetchExec>() {
                    Some(_) => Arc::clone(child),
                    None => Arc::new(PrefetchExec::new(Arc::clone(child))) as Arc<dyn ExecutionPlan>,
                })
                .collect();
            // The inputs' properties are unchanged (a `PrefetchExec` has its input's).
            let joined = node.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))?;
            Ok(Transformed::yes(joined))
        })
        .data()
    }

    fn name(&self) -> &str {
        "PrefetchJoinInputs"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A table of (k, v) rows in `batches` batches of 100: keys `k0`.. `k{keys-1}` in turn.
    fn table(batches: usize, keys: usize, offset: i64) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let parts = (0..batches)
            .map(|b| {
                let rows = (b * 100)..(b * 100 + 100);
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringArray::from_iter_values(
                            rows.clone().map(|r| format!("k{}", r % keys)),
                        )),
                        Arc::new(Int64Array::from_iter_values(rows.map(|r| r as i64 + offset))),
                    ],
                )
                .unwrap()
            })
            .collect();
        Arc::new(MemTable::try_new(schema, vec![parts]).unwrap())
    }

    use super::*;

    fn session(with_rule: bool) -> SessionContext {
        let config = SessionConfig::new().with_target_partitions(1).with_batch_size(100);
        let ctx = if with_rule {
            let runtime = RuntimeEnvBuilder::new().build_arc().unwrap();
            SessionContext::new_with_state(crate::engine::local_state(config, runtime))
        } else {
            SessionContext::new_with_config(config)
        };
        ctx.register_table("a", table(40, 700, 0)).unwrap();
        ctx.register_table("b", table(60, 900, 1_000_000)).unwrap();
        ctx
    }

    /// Each join input is prefetched once, and the rows (in their order) are the ones the
    /// plan without prefetching gives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefetched_join_inputs_give_the_same_rows_in_the_same_order() {
        let sql = "WITH x AS (SELECT k, SUM(v) AS s, COUNT(*) AS n FROM a GROUP BY k), \
                   y AS (SELECT k, MIN(v) AS m FROM b GROUP BY k) \
                   SELECT y.k, x.s, x.n, y.m, z.v FROM y LEFT JOIN x ON x.k = y.k \
                   JOIN (SELECT k, MAX(v) AS v FROM a GROUP BY k) AS z ON z.k = y.k ORDER BY y.k";
        let with = session(true);
        let plan = with.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        assert_eq!(text.matches("PrefetchExec").count(), 4, "{text}");
        assert!(!text.contains("PrefetchExec: batches=2\n    PrefetchExec"), "{text}");
        let rows = |batches: Vec<RecordBatch>| pretty_format_batches(&batches).unwrap().to_string();
        let prefetched = rows(with.sql(sql).await.unwrap().collect().await.unwrap());
        let plain = rows(session(false).sql(sql).await.unwrap().collect().await.unwrap());
        assert_eq!(prefetched.lines().count(), 700 + 4);
        assert_eq!(prefetched, plain);
    }

    /// An error on a prefetched input fails the query (rather than ending its input early).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_in_a_prefetched_input_fails_the_query() {
        let sql = "SELECT a.k, c.r FROM a JOIN (SELECT k, v / (v - 1003000) AS r FROM b) AS c ON a.k = c.k";
        let err = session(true).sql(sql).await.unwrap().collect().await.unwrap_err();
        assert!(err.to_string().contains("Divide by zero"), "{err}");
    }
}
