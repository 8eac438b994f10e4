//! Running data tests: each test is a query returning the failing rows, so a failure can
//! be shown (first rows) and reproduced (the query is printed). `error` failures stop the
//! run before publishing; `warn` failures are reported only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::{StatisticsArgs, StatisticsContext};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use serde::Serialize;

use crate::key_filter::{KeyColumns, SeenKeys};
use crate::quote::{ident, literal};

use super::TransformError;
use super::spec::{DataTest, Severity, TestKind};

/// Failing rows shown per test.
pub const SAMPLE_ROWS: usize = 5;

/// The result of one data test.
#[derive(Debug, Clone, Serialize)]
pub struct TestOutcome {
    /// Table tested (empty for singular tests).
    pub table: String,
    /// Test name.
    pub name: String,
    /// Error or warn.
    pub severity: Severity,
    /// File declaring it.
    pub file: PathBuf,
    /// Failing rows (0 = pass).
    pub failures: u64,
    /// The first failing rows, as a text table.
    pub sample: Option<String>,
    /// The query that returns the failing rows.
    pub query: String,
}

impl TestOutcome {
    /// True when the test found no failing row.
    pub fn passed(&self) -> bool {
        self.failures == 0
    }

    /// True when this outcome must stop the run.
    pub fn blocks(&self) -> bool {
        !self.passed() && self.severity == Severity::Error
    }
}

/// The query returning the rows that fail `test`.
pub fn failing_rows_sql(test: &DataTest) -> String {
    let t = ident(&test.table);
    match &test.kind {
        TestKind::Unique(cols) => {
            let cols = cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
            format!("SELECT {cols}, COUNT(*) AS copies FROM {t} GROUP BY {cols} HAVING COUNT(*) > 1")
        }
        TestKind::NotNull(c) => format!("SELECT * FROM {t} WHERE {} IS NULL", ident(c)),
        TestKind::AcceptedValues { column, values } => format!(
            "SELECT * FROM {t} WHERE {c} IS NOT NULL AND CAST({c} AS VARCHAR) NOT IN ({})",
            values.iter().map(|v| literal(v)).collect::<Vec<_>>().join(", "),
            c = ident(column)
        ),
        TestKind::Relationships { column, to, field } => format!(
            "SELECT * FROM {t} WHERE {c} IS NOT NULL AND {c} NOT IN (SELECT {f} FROM {to} WHERE {f} IS NOT NULL)",
            c = ident(column),
            to = ident(to),
            f = ident(field)
        ),
        TestKind::Expression(e) => format!("SELECT * FROM {t} WHERE NOT COALESCE(({e}), false)"),
        TestKind::RowCount { min, max } => format!(
            "SELECT COUNT(*) AS row_count FROM {t} HAVING COUNT(*) < {} OR COUNT(*) > {}",
            min.unwrap_or(0),
            max.map_or_else(|| i64::MAX.to_string(), |m| m.to_string())
        ),
        TestKind::Singular { sql } => sql.trim().trim_end_matches(';').to_string(),
    }
}

/// `test` pointed at table `rows` (a stage's new partitions) when it can pass or fail on those
/// rows alone: a test of one row at a time, or `unique` on columns that include every
/// partition column (`partition_by`), whose repeats can only be within one partition.
/// Other tests (`row_count`, `unique` across partitions) are returned as they are.
pub fn on_rows_of(test: &DataTest, rows: &str, partition_by: &[String]) -> DataTest {
    let within_rows = match &test.kind {
        TestKind::NotNull(_)
        | TestKind::AcceptedValues { .. }
        | TestKind::Relationships { .. }
        | TestKind::Expression(_) => true,
        TestKind::Unique(cols) => partition_by.iter().all(|p| cols.contains(p)),
        TestKind::RowCount { .. } | TestKind::Singular { .. } => false,
    };
    if within_rows {
        DataTest {
            table: rows.to_string(),
            ..test.clone()
        }
    } else {
        test.clone()
    }
}

/// Tells apart the candidate tables of `unique` tests that run at the same time.
static CANDIDATE_TABLES: AtomicU64 = AtomicU64::new(0);

/// For a `unique` test on the local engine, the query counting only the values that may
/// repeat, with the table of those values it reads (to deregister afterwards).
///
/// The tested columns stream once through a key filter ([`SeenKeys`]), which keeps every
/// value seen before (and about 1% others); the `GROUP BY` then runs over the rows with
/// those values only. Grouping every row held a hash table of every value: for
/// `stg_marketing`'s 17.4M event ids, about 7 s and 2 GB. A Ballista engine keeps the
/// plain query: its executors cannot read a table held in this process.
async fn unique_on_candidates(
    ctx: &SessionContext,
    table: &str,
    cols: &[String],
) -> Result<Option<(String, String)>, DataFusionError> {
    if crate::engine::is_distributed(ctx) {
        return Ok(None);
    }
    let names: Vec<&str> = cols.iter().map(String::as_str).collect();
    let frame = ctx.table(TableReference::bare(table)).await?.select_columns(&names)?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let Some(key) = KeyColumns::new(&schema, cols) else {
        return Ok(None);
    };
    let plan = frame.create_physical_plan().await?;
    // The filter's size from the plan's row count (a Parquet file's footer says it); it
    // grows when more rows come.
    let rows = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())?
        .num_rows
        .get_value()
        .copied()
        .unwrap_or(0);
    let mut seen = SeenKeys::new(&schema, key, rows)?;
    let mut stream = datafusion::physical_plan::execute_stream(plan, ctx.task_ctx())?;
    while let Some(batch) = stream.next().await {
        seen.add_batch(&batch?)?;
    }
    let kept_schema = Arc::clone(seen.schema());
    let candidates = format!("__patron_unique_{}", CANDIDATE_TABLES.fetch_add(1, Ordering::Relaxed));
    let kept = MemTable::try_new(kept_schema, vec![seen.into_kept()])?;
    ctx.register_table(candidates.as_str(), Arc::new(kept))?;
    let list = |prefix: &str| {
        cols.iter()
            .map(|c| format!("{prefix}{}", ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let on = cols
        .iter()
        .map(|c| format!("(t.{c} IS NOT DISTINCT FROM k.{c})", c = ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!(
        "SELECT {t_cols}, COUNT(*) AS copies FROM (SELECT DISTINCT {cols} FROM {k}) AS k JOIN {t} AS t ON {on} \
         GROUP BY {t_cols} HAVING COUNT(*) > 1",
        t_cols = list("t."),
        cols = list(""),
        k = ident(&candidates),
        t = ident(table),
    );
    Ok(Some((sql, candidates)))
}

/// Runs `tests` on `ctx` with the run's named parameters.
pub async fn run_tests(
    ctx: &SessionContext,
    tests: &[DataTest],
    params: &HashMap<String, ScalarValue>,
) -> Result<Vec<TestOutcome>, TransformError> {
    let mut outcomes = Vec::with_capacity(tests.len());
    for test in tests {
        let query = failing_rows_sql(test);
        let err = |e: datafusion::error::DataFusionError| TransformError::Sql {
            stage: format!("{} test {}", test.table, test.name),
            path: test.file.clone(),
            message: format!("{e}\n  query: {query}"),
        };
        let (run_query, candidates) = match &test.kind {
            TestKind::Unique(cols) => match unique_on_candidates(ctx, &test.table, cols).await.map_err(err)? {
                Some((sql, table)) => (sql, Some(table)),
                None => (query.clone(), None),
            },
            _ => (query.clone(), None),
        };
        let outcome = count_and_sample(ctx, &run_query, params).await;
        if let Some(table) = candidates {
            ctx.deregister_table(table.as_str()).map_err(err)?;
        }
        let (failures, sample) = outcome.map_err(err)?;
        if failures > 0 {
            tracing::warn!(table = %test.table, test = %test.name, failures, "data test failed");
        }
        outcomes.push(TestOutcome {
            table: test.table.clone(),
            name: test.name.clone(),
            severity: test.severity,
            file: test.file.clone(),
            failures,
            sample,
            query,
        });
    }
    Ok(outcomes)
}

/// The number of rows `query` returns and, if any, the first of them as a text table.
async fn count_and_sample(
    ctx: &SessionContext,
    query: &str,
    params: &HashMap<String, ScalarValue>,
) -> Result<(u64, Option<String>), DataFusionError> {
    let count_sql = format!("SELECT COUNT(*) AS failures FROM ({query}) AS failing");
    let batches = ctx
        .sql(&count_sql)
        .await?
        .with_param_values(params.clone())?
        .collect()
        .await?;
    let failures = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
        })
        .map_or(0, |a| a.value(0).max(0) as u64);
    let sample = if failures > 0 {
        let rows = ctx
            .sql(&format!("{query} LIMIT {SAMPLE_ROWS}"))
            .await?
            .with_param_values(params.clone())?
            .collect()
            .await?;
        pretty_format_batches(&rows).ok().map(|t| t.to_string())
    } else {
        None
    };
    Ok((failures, sample))
}

/// A human report of the failed tests: name, file, count, first rows and query.
pub fn describe_failures(outcomes: &[TestOutcome]) -> String {
    let mut text = String::new();
    for o in outcomes.iter().filter(|o| !o.passed()) {
        let level = match o.severity {
            Severity::Error => "FAIL",
            Severity::Warn => "WARN",
        };
        text.push_str(&format!(
            "{level} {}{} ({}): {} failing row(s)\n",
            if o.table.is_empty() {
                String::new()
            } else {
                format!("{}: ", o.table)
            },
            o.name,
            o.file.display(),
            o.failures
        ));
        if let Some(sample) = &o.sample {
            for line in sample.lines() {
                text.push_str(&format!("    {line}\n"));
            }
        }
        text.push_str(&format!("  reproduce: {};\n", o.query));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::spec::test_name;

    fn test(kind: TestKind) -> DataTest {
        DataTest {
            table: "t".into(),
            name: test_name(&kind),
            kind,
            severity: Severity::Error,
            file: PathBuf::from("t.toml"),
        }
    }

    #[test]
    fn tests_of_one_row_or_a_key_within_a_partition_move_to_the_new_rows() {
        let by = ["as_of".to_string()];
        let moved = |kind: TestKind| on_rows_of(&test(kind), "new", &by).table == "new";
        assert!(moved(TestKind::NotNull("x".into())));
        assert!(moved(TestKind::Expression("x > 0".into())));
        assert!(moved(TestKind::Unique(vec!["as_of".into(), "customer_id".into()])));
        assert!(!moved(TestKind::Unique(vec!["customer_id".into()])));
        assert!(!moved(TestKind::RowCount {
            min: Some(1),
            max: None
        }));
    }

    #[tokio::test]
    async fn each_test_kind_finds_exactly_the_failing_rows() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t AS VALUES (1, 'a', 10), (2, 'b', NULL), (2, 'z', 5), (NULL, 'a', 1)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        ctx.sql("CREATE TABLE u AS VALUES (1), (2)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let cases = [
            (TestKind::Unique(vec!["column1".into()]), 1),
            (TestKind::NotNull("column3".into()), 1),
            (
                TestKind::AcceptedValues {
                    column: "column2".into(),
                    values: vec!["a".into(), "b".into()],
                },
                1,
            ),
            (
                TestKind::Relationships {
                    column: "column1".into(),
                    to: "u".into(),
                    field: "column1".into(),
                },
                0,
            ),
            (TestKind::Expression("column3 >= 5".into()), 2),
            (
                TestKind::RowCount {
                    min: Some(5),
                    max: None,
                },
                1,
            ),
            (
                TestKind::RowCount {
                    min: Some(1),
                    max: Some(4),
                },
                0,
            ),
            (
                TestKind::Singular {
                    sql: "SELECT * FROM t WHERE column1 = $n;".into(),
                },
                2,
            ),
        ];
        let params = HashMap::from([("n".to_string(), ScalarValue::Int64(Some(2)))]);
        for (kind, want) in cases {
            let t = test(kind);
            let out = run_tests(&ctx, std::slice::from_ref(&t), &params)
                .await
                .unwrap()
                .remove(0);
            assert_eq!(out.failures, want, "{}: {}", t.name, out.query);
            assert_eq!(out.sample.is_some(), want > 0);
        }
    }

    /// A `unique` test counts exactly the repeated values the plain `GROUP BY` finds:
    /// nulls equal to nulls, values with spaces around them apart from those without, over
    /// more rows than the key filter is first sized for; its sample shows the values, and
    /// the table of candidates is gone afterwards.
    #[tokio::test]
    async fn a_unique_test_finds_what_grouping_every_row_finds() {
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE TABLE big AS SELECT \
               CASE WHEN value % 50000 = 7 THEN NULL WHEN value % 1000 = 3 THEN ' K' || CAST(value % 7 AS VARCHAR) \
                    ELSE 'K' || CAST(CASE WHEN value % 997 = 0 THEN value % 5 ELSE value END AS VARCHAR) END AS k, \
               value % 2 AS part \
             FROM generate_series(1, 300000)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        for cols in [vec!["k".to_string()], vec!["k".to_string(), "part".to_string()]] {
            let t = DataTest {
                table: "big".into(),
                ..test(TestKind::Unique(cols.clone()))
            };
            let out = run_tests(&ctx, std::slice::from_ref(&t), &HashMap::new())
                .await
                .unwrap()
                .remove(0);
            let plain = ctx
                .sql(&format!("SELECT COUNT(*) FROM ({}) AS f", out.query))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let plain = plain[0]
                .column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .unwrap()
                .value(0) as u64;
            assert!(plain > 10, "the table repeats values: {plain}");
            assert_eq!(out.failures, plain, "{cols:?}");
            assert!(out.sample.unwrap().contains("copies"));
        }
        let names = ctx
            .catalog("datafusion")
            .unwrap()
            .schema("public")
            .unwrap()
            .table_names();
        assert!(names.iter().all(|n| !n.starts_with("__patron")), "{names:?}");
    }

    #[tokio::test]
    async fn a_broken_test_names_its_file_and_query() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t AS VALUES (1)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let e = run_tests(&ctx, &[test(TestKind::NotNull("nope".into()))], &HashMap::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml") && e.contains("nope") && e.contains("query:"),
            "{e}"
        );
    }
}

/// Why the data tests of the published tables could not run (`patron test`).
#[derive(Debug, thiserror::Error)]
pub enum PublishedTestsError {
    /// The stage files or the selection are wrong (exit code 2).
    #[error("{0}")]
    Stages(#[source] TransformError),
    /// The warehouse has no published run (exit code 2).
    #[error("{source}\nno published run to test in {warehouse}; run `patron run` first")]
    NothingPublished {
        /// The warehouse.
        warehouse: String,
        /// Why its latest manifest could not be read.
        source: crate::publish::PublishError,
    },
    /// The latest manifest names no as-of date.
    #[error("the latest manifest has no as_of date")]
    NoAsOf,
    /// The query engine could not be set up.
    #[error("{0}")]
    Engine(#[source] DataFusionError),
    /// Registering the published tables failed.
    #[error("{0}")]
    Publish(#[source] crate::publish::PublishError),
    /// A table the selected tests read is not published (exit code 2).
    #[error("not published in {warehouse}: {tables}; run `patron run` first")]
    NotPublished {
        /// The warehouse.
        warehouse: String,
        /// The missing tables, comma-separated.
        tables: String,
    },
    /// Registering the seeds or running a test failed.
    #[error("{0}")]
    Run(#[source] TransformError),
}

/// Runs the data tests of the stages of `project` (`provided`: what its model steps
/// provide) that `select` and `exclude` choose (dbt
/// syntax; all when `select` is empty), and the singular tests reading them, against the tables `plan`'s
/// warehouse published last, with the named parameters of its latest run's as-of date.
pub async fn test_published(
    plan: &crate::config::Plan,
    project: &super::Project,
    provided: &super::Provided,
    select: &[String],
    exclude: &[String],
) -> Result<Vec<TestOutcome>, PublishedTestsError> {
    use crate::config::AsOf;
    use crate::publish::read::{latest_manifest, register_published};
    use PublishedTestsError as E;

    let chosen = super::select::select(project, provided, select, exclude).map_err(E::Stages)?;
    let manifest = latest_manifest(&plan.warehouse)
        .await
        .map_err(|source| E::NothingPublished {
            warehouse: plan.warehouse.to_string(),
            source,
        })?;
    let as_of = manifest["as_of"]
        .as_str()
        .and_then(|d| AsOf::parse(d).ok())
        .and_then(|a| match a {
            AsOf::Date(d) => Some(d),
            AsOf::Latest => None,
        })
        .ok_or(E::NoAsOf)?;
    let spill = std::env::temp_dir();
    let ctx = crate::engine::build_context(&plan.engine, &spill, None)
        .await
        .map_err(E::Engine)?;
    let published = register_published(&ctx, &plan.warehouse).await.map_err(E::Publish)?;
    super::runner::register_seeds(&ctx, project.seeds.values())
        .await
        .map_err(E::Run)?;
    let mut tests: Vec<_> = project
        .stages
        .values()
        .filter(|s| chosen.contains(&s.name))
        .flat_map(|s| s.spec.tests.iter().cloned())
        .collect();
    for t in &project.singular_tests {
        if let TestKind::Singular { sql } = &t.kind {
            let reads = super::discover::references(&t.file, sql).map_err(E::Stages)?.tables;
            if reads.iter().any(|r| chosen.contains(r)) {
                tests.push(t.clone());
            }
        }
    }
    let missing: Vec<_> = tests
        .iter()
        .filter(|t| !t.table.is_empty() && !published.contains(&t.table))
        .map(|t| t.table.clone())
        .collect();
    if !missing.is_empty() {
        return Err(E::NotPublished {
            warehouse: plan.warehouse.to_string(),
            tables: missing.join(", "),
        });
    }
    let params = plan.scoring.sql_params(as_of);
    run_tests(&ctx, &tests, &params).await.map_err(E::Run)
}
