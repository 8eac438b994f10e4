//! Column-level lineage: which input columns a stage column is computed from, traced
//! through the logical plans of the stages (projections, aggregates, windows, joins,
//! unions) down to the extracted sources, seeds and model tables. Columns used only to
//! filter, join or sort rows are not counted as sources of a value; columns read inside a
//! subquery expression are not traced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{JoinType, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

use super::{Project, TransformError};

/// A column of a table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ColumnRef {
    /// Table name.
    pub table: String,
    /// Column name.
    pub column: String,
}

impl std::fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.table, self.column)
    }
}

/// Column `index` of `plan`'s output comes from these table columns (one plan, no
/// recursion into other stages).
fn trace(plan: &LogicalPlan, index: usize, out: &mut BTreeSet<ColumnRef>) {
    let from_exprs = |input: &LogicalPlan, expr: &datafusion::prelude::Expr, out: &mut BTreeSet<ColumnRef>| {
        for col in expr.column_refs() {
            if let Ok(i) = input.schema().index_of_column(col) {
                trace(input, i, out);
            }
        }
    };
    match plan {
        LogicalPlan::TableScan(scan) => {
            let field = scan.projected_schema.field(index);
            out.insert(ColumnRef {
                table: scan.table_name.table().to_string(),
                column: field.name().clone(),
            });
        }
        LogicalPlan::Projection(p) => {
            if let Some(e) = p.expr.get(index) {
                from_exprs(&p.input, e, out);
            }
        }
        LogicalPlan::Aggregate(a) => {
            let n = a.group_expr.len();
            let e = if index < n {
                a.group_expr.get(index)
            } else {
                a.aggr_expr.get(index - n)
            };
            if let Some(e) = e {
                if e.column_refs().is_empty() {
                    // COUNT(*) and the like: the value comes from the rows themselves.
                    row_sources(&a.input, out);
                } else {
                    from_exprs(&a.input, e, out);
                }
            }
        }
        LogicalPlan::Window(w) => {
            let n = w.input.schema().fields().len();
            if index < n {
                trace(&w.input, index, out);
            } else if let Some(e) = w.window_expr.get(index - n) {
                from_exprs(&w.input, e, out);
            }
        }
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => trace(&j.right, index, out),
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => trace(&j.left, index, out),
                _ if index < left => trace(&j.left, index, out),
                _ => trace(&j.right, index - left, out),
            }
        }
        LogicalPlan::Union(u) => {
            for input in &u.inputs {
                trace(input, index, out);
            }
        }
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {}
        // Row-preserving nodes (filter, sort, limit, alias, distinct, repartition, ...)
        // keep column positions; anything else counts every input column.
        other => {
            let inputs = other.inputs();
            if let [input] = inputs.as_slice()
                && input.schema().fields().len() == other.schema().fields().len()
            {
                trace(input, index, out);
            } else {
                for input in inputs {
                    for i in 0..input.schema().fields().len() {
                        trace(input, i, out);
                    }
                }
            }
        }
    }
}

/// Marks every table under `plan` as a source of row counts (`table.*`).
fn row_sources(plan: &LogicalPlan, out: &mut BTreeSet<ColumnRef>) {
    if let LogicalPlan::TableScan(scan) = plan {
        out.insert(ColumnRef {
            table: scan.table_name.table().to_string(),
            column: ROWS.into(),
        });
    }
    for input in plan.inputs() {
        row_sources(input, out);
    }
}

/// The column name standing for "the rows of the table" (counts).
pub const ROWS: &str = "*";

/// The plans of every stage, planned in `order` against empty tables with the right
/// schemas, so no data is read.
pub struct LineageGraph {
    plans: HashMap<String, LogicalPlan>,
}

impl LineageGraph {
    /// Plans every stage. `inputs` are the schemas of the tables that exist before the
    /// stages (sources, model tables); `ctx` must already carry the seeds and model
    /// functions.
    pub async fn build(
        ctx: &SessionContext,
        project: &Project,
        order: &[String],
        inputs: &BTreeMap<String, Arc<Schema>>,
        params: &HashMap<String, ScalarValue>,
    ) -> Result<Self, TransformError> {
        let empty = |schema: Arc<Schema>| MemTable::try_new(schema, vec![vec![]]);
        for (name, schema) in inputs {
            let table = empty(Arc::clone(schema)).map_err(|e| TransformError::Sql {
                stage: name.clone(),
                path: Default::default(),
                message: e.to_string(),
            })?;
            let _ = ctx.deregister_table(name.as_str());
            ctx.register_table(name.as_str(), Arc::new(table))
                .map_err(|e| TransformError::Sql {
                    stage: name.clone(),
                    path: Default::default(),
                    message: e.to_string(),
                })?;
        }
        let mut plans = HashMap::new();
        for name in order {
            let Some(stage) = project.stages.get(name) else {
                continue;
            };
            let err = |e: datafusion::error::DataFusionError| TransformError::Sql {
                stage: name.clone(),
                path: stage.path.clone(),
                message: e.to_string(),
            };
            let df = ctx
                .sql(&stage.sql)
                .await
                .map_err(err)?
                .with_param_values(params.clone())
                .map_err(err)?;
            let plan = df.logical_plan().clone();
            let schema = Arc::new(plan.schema().as_arrow().clone());
            let _ = ctx.deregister_table(name.as_str());
            ctx.register_table(name.as_str(), Arc::new(empty(schema).map_err(err)?))
                .map_err(err)?;
            plans.insert(name.clone(), plan);
        }
        Ok(LineageGraph { plans })
    }

    /// The columns of stage tables a column directly derives from (one step).
    pub fn direct(&self, column: &ColumnRef) -> Option<BTreeSet<ColumnRef>> {
        let plan = self.plans.get(&column.table)?;
        let index = plan.schema().fields().iter().position(|f| f.name() == &column.column)?;
        let mut out = BTreeSet::new();
        trace(plan, index, &mut out);
        Some(out)
    }

    /// The input columns (sources, seeds, model tables) a column ultimately derives from,
    /// following stage tables; `None` if the table or column is unknown.
    pub fn sources(&self, column: &ColumnRef) -> Option<BTreeSet<ColumnRef>> {
        let mut result = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![column.clone()];
        let first = self.direct(column)?;
        todo.pop();
        todo.extend(first);
        while let Some(c) = todo.pop() {
            if !seen.insert(c.clone()) {
                continue;
            }
            if c.column == ROWS && self.plans.contains_key(&c.table) {
                // The rows of a stage come from the rows of what it reads.
                if let Some(plan) = self.plans.get(&c.table) {
                    let mut rows = BTreeSet::new();
                    row_sources(plan, &mut rows);
                    todo.extend(rows);
                }
                continue;
            }
            match self.direct(&c) {
                Some(next) if self.plans.contains_key(&c.table) => todo.extend(next),
                _ => {
                    result.insert(c);
                }
            }
        }
        Some(result)
    }

    /// Columns of a stage table with their SQL types, in order.
    pub fn typed_columns(&self, table: &str) -> Option<Vec<(String, String)>> {
        self.plans.get(table).map(|p| {
            p.schema()
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().to_string()))
                .collect()
        })
    }

    /// Columns of a stage table, in order.
    pub fn columns(&self, table: &str) -> Option<Vec<String>> {
        self.plans
            .get(table)
            .map(|p| p.schema().fields().iter().map(|f| f.name().clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::Stage;
    use datafusion::arrow::datatypes::{DataType, Field};
    use std::path::PathBuf;

    fn stage(name: &str, sql: &str) -> Stage {
        let refs = crate::transform::discover::references(std::path::Path::new("x.sql"), sql).unwrap();
        Stage {
            name: name.into(),
            path: PathBuf::from(format!("{name}.sql")),
            layer: String::new(),
            sql: sql.into(),
            reads: refs.tables,
            calls: refs.functions,
            spec: Default::default(),
        }
    }

    #[tokio::test]
    async fn lineage_follows_projections_aggregates_joins_and_stages() {
        let mut p = Project::default();
        for s in [
            stage(
                "stg",
                "SELECT UPPER(TRIM(id)) AS customer_id, qty * price - disc AS revenue, ts FROM raw_s WHERE qty > 0",
            ),
            stage(
                "fct",
                "WITH a AS (SELECT customer_id, SUM(revenue) AS revenue, MAX(ts) AS last_ts FROM stg GROUP BY customer_id) \
                 SELECT a.customer_id, a.revenue, a.last_ts, t.n AS tickets FROM a LEFT JOIN \
                 (SELECT UPPER(cust) AS customer_id, COUNT(*) AS n FROM raw_t GROUP BY UPPER(cust)) AS t USING (customer_id)",
            ),
            stage(
                "top",
                "SELECT customer_id, RANK() OVER (ORDER BY revenue DESC) AS r FROM fct",
            ),
        ] {
            p.stages.insert(s.name.clone(), s);
        }
        let inputs = BTreeMap::from([
            (
                "raw_s".to_string(),
                Arc::new(Schema::new(vec![
                    Field::new("id", DataType::Utf8, true),
                    Field::new("qty", DataType::Int64, true),
                    Field::new("price", DataType::Float64, true),
                    Field::new("disc", DataType::Float64, true),
                    Field::new("ts", DataType::Int64, true),
                ])),
            ),
            (
                "raw_t".to_string(),
                Arc::new(Schema::new(vec![Field::new("cust", DataType::Utf8, true)])),
            ),
        ]);
        let ctx = SessionContext::new();
        let order = vec!["stg".to_string(), "fct".to_string(), "top".to_string()];
        let g = LineageGraph::build(&ctx, &p, &order, &inputs, &HashMap::new())
            .await
            .unwrap();
        let col = |t: &str, c: &str| ColumnRef {
            table: t.into(),
            column: c.into(),
        };
        let names = |s: BTreeSet<ColumnRef>| s.into_iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(g.sources(&col("fct", "revenue")).unwrap()),
            vec!["raw_s.disc", "raw_s.price", "raw_s.qty"]
        );
        assert_eq!(names(g.sources(&col("fct", "customer_id")).unwrap()), vec!["raw_s.id"]);
        assert_eq!(
            names(g.sources(&col("fct", "tickets")).unwrap()),
            vec!["raw_t.*"],
            "COUNT(*) counts rows"
        );
        assert_eq!(names(g.direct(&col("top", "r")).unwrap()), vec!["fct.revenue"]);
        assert_eq!(
            names(g.sources(&col("top", "r")).unwrap()),
            vec!["raw_s.disc", "raw_s.price", "raw_s.qty"]
        );
        assert!(g.sources(&col("fct", "nope")).is_none());
    }
}
