//! Running data tests: each test is a query returning the failing rows, so a failure can
//! be shown (first rows) and reproduced (the query is printed). `error` failures stop the
//! run before publishing; `warn` failures are reported only.

use std::collections::HashMap;
use std::path::PathBuf;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use serde::Serialize;

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

/// `name` as a quoted SQL identifier (case kept, `"` doubled).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a SQL string literal (`'` doubled).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
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
        let count_sql = format!("SELECT COUNT(*) AS failures FROM ({query}) AS failing");
        let batches = ctx
            .sql(&count_sql)
            .await
            .and_then(|df| df.with_param_values(params.clone()))
            .map_err(err)?
            .collect()
            .await
            .map_err(err)?;
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
                .await
                .and_then(|df| df.with_param_values(params.clone()))
                .map_err(err)?
                .collect()
                .await
                .map_err(err)?;
            pretty_format_batches(&rows).ok().map(|t| t.to_string())
        } else {
            None
        };
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
