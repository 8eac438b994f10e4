//! What `patron serve` lets a client run: queries, and the session statements clients send
//! when they connect. Everything else (CREATE EXTERNAL TABLE, COPY, INSERT, DDL, cursors,
//! PREPARE...) is refused before it is planned.
//!
//! Three layers, none of them string matching:
//! - the parsed statement (the SQL parser's syntax tree) is checked against an allow-list:
//!   a query goes on to planning; a session statement becomes a [`session::Command`] that
//!   patron answers from the connection's own settings (nothing reaches the engine, nothing
//!   is turned back into SQL text); anything else is refused;
//! - the statement's size and expression depth are bounded ([`MAX_STATEMENT_BYTES`],
//!   [`MAX_EXPRESSION_DEPTH`]), so no statement can exhaust a thread's stack;
//! - the logical plan of every query is checked again with DataFusion's [`SQLOptions`] (no
//!   DDL, no DML, no statements), which also catches `SELECT ... INTO` and anything a future
//!   parser rewrite might smuggle into a query.

use std::ops::ControlFlow;

use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Expr, Query, SetExpr, Statement, Visit, Visitor};

use super::session::{self, Command};

/// SQLSTATE of a refused statement: `read_only_sql_transaction`.
pub const SQLSTATE_READ_ONLY: &str = "25006";
/// SQLSTATE of a statement over a size or depth limit: `statement_too_complex`.
pub const SQLSTATE_TOO_COMPLEX: &str = "54001";

/// Longest statement text accepted, in bytes. BI tools' generated SQL (long `IN` lists
/// included) stays far below. Parsing takes about 1 KiB of memory per token (a 1 MiB chain
/// of `+1` about 500 MiB), so statements over
/// [`LARGE_STATEMENT_BYTES`](super::executor::LARGE_STATEMENT_BYTES) are also parsed only
/// a few at a time.
pub const MAX_STATEMENT_BYTES: usize = 1024 * 1024;

/// Deepest nesting of expressions and subqueries in a statement. `a + b + c` nests two
/// deep, `x = 1 OR x = 2 OR ...` one level per `OR`, an `IN` list of any length one level.
/// Query threads get stacks sized for this depth ([`super::executor::QUERY_STACK_BYTES`]).
pub const MAX_EXPRESSION_DEPTH: usize = 1000;

/// How an allowed statement is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// A query (SELECT, WITH, VALUES, EXPLAIN, DESCRIBE, SHOW of tables/columns): planned,
    /// checked with [`check_plan`] and executed under the limits.
    Query,
    /// A session statement patron answers from the connection's settings; no data is read.
    Session(Command),
}

/// Why a statement was refused: the SQLSTATE and a message naming what and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// SQLSTATE code.
    pub code: &'static str,
    /// Message for the client.
    pub message: String,
}

impl Refusal {
    fn read_only(message: String) -> Refusal {
        Refusal {
            code: SQLSTATE_READ_ONLY,
            message,
        }
    }
}

impl From<session::SessionError> for Refusal {
    fn from(e: session::SessionError) -> Refusal {
        Refusal {
            code: e.code,
            message: e.message,
        }
    }
}

/// Checks one parsed statement: its kind, then its expression depth.
pub fn check_statement(statement: &Statement) -> Result<Allowed, Refusal> {
    let allowed = match statement {
        Statement::Query(query) if writes(query) => return Err(Refusal::read_only(refusal(statement))),
        Statement::Query(_) | Statement::ExplainTable { .. } => Allowed::Query,
        Statement::Explain { statement: inner, .. } => match check_statement(inner)? {
            Allowed::Query => Allowed::Query,
            Allowed::Session(_) => return Err(Refusal::read_only(refusal(statement))),
        },
        Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowFunctions { .. } => Allowed::Query,
        other => match session::command(other)? {
            Some(command) => Allowed::Session(command),
            None => return Err(Refusal::read_only(refusal(other))),
        },
    };
    check_depth(statement)?;
    Ok(allowed)
}

/// True when a query's body or one of its `WITH` parts is a data-modifying statement
/// (`WITH x AS (...) INSERT ...`, `WITH d AS (DELETE ... RETURNING ...) SELECT ...`). The
/// plan check would refuse them too; this names them as refused rather than unplannable.
fn writes(query: &Query) -> bool {
    fn body_writes(body: &SetExpr) -> bool {
        match body {
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => true,
            SetExpr::SetOperation { left, right, .. } => body_writes(left) || body_writes(right),
            SetExpr::Query(q) => writes(q),
            _ => false,
        }
    }
    body_writes(&query.body)
        || query
            .with
            .as_ref()
            .is_some_and(|with| with.cte_tables.iter().any(|cte| writes(&cte.query)))
}

/// Refuses SQL text longer than [`MAX_STATEMENT_BYTES`] before it is parsed.
pub fn check_size(sql: &str) -> Result<(), Refusal> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(Refusal {
            code: SQLSTATE_TOO_COMPLEX,
            message: format!(
                "statement too long: {} bytes, the limit is {MAX_STATEMENT_BYTES}",
                sql.len()
            ),
        });
    }
    Ok(())
}

/// Counts expression and subquery nesting, stopping as soon as the limit is passed (so the
/// walk itself never goes deeper than the limit).
struct Depth {
    current: usize,
    limit: usize,
}

impl Depth {
    fn enter(&mut self) -> ControlFlow<()> {
        self.current += 1;
        if self.current > self.limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.current -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.current -= 1;
        ControlFlow::Continue(())
    }
}

/// Refuses a statement whose expressions nest deeper than [`MAX_EXPRESSION_DEPTH`].
pub fn check_depth(statement: &Statement) -> Result<(), Refusal> {
    let mut depth = Depth {
        current: 0,
        limit: MAX_EXPRESSION_DEPTH,
    };
    match statement.visit(&mut depth) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(Refusal {
            code: SQLSTATE_TOO_COMPLEX,
            message: format!(
                "statement too complex: expressions nest more than {MAX_EXPRESSION_DEPTH} deep \
                 (about {MAX_EXPRESSION_DEPTH} AND/OR/+ terms in one chain); use IN (...) for long value lists"
            ),
        }),
    }
}

fn refusal(statement: &impl std::fmt::Display) -> String {
    let text = statement.to_string();
    let shown: String = text.chars().take(80).collect();
    let ellipsis = if text.chars().count() > 80 { "..." } else { "" };
    format!(
        "patron serve is read-only: `{shown}{ellipsis}` is not allowed; only SELECT, WITH, VALUES, EXPLAIN, SHOW, SET, RESET and BEGIN/COMMIT/ROLLBACK/SAVEPOINT run here"
    )
}

/// For SQL the PostgreSQL parser rejected: if DataFusion's own SQL parser reads it as one of
/// its extensions (CREATE EXTERNAL TABLE, COPY ... TO, ...), the read-only refusal naming it,
/// so a client learns the statement is not allowed rather than misspelt.
pub fn refuse_datafusion_extension(sql: &str) -> Option<Refusal> {
    let statements = DFParser::parse_sql(sql).ok()?;
    statements.iter().find_map(|s| match s {
        DfStatement::Statement(inner) => check_statement(inner).err(),
        other => Some(Refusal::read_only(refusal(other))),
    })
}

/// Checks the logical plan of a query: no DDL, DML (INSERT, COPY) or statement nodes anywhere,
/// subqueries included.
pub fn check_plan(plan: &LogicalPlan) -> Result<(), Refusal> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| Refusal::read_only(format!("patron serve is read-only: {e}")))
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    use super::*;

    /// What the handlers do: the PostgreSQL parser, else DataFusion's for its extensions.
    fn check(sql: &str) -> Result<Allowed, String> {
        let statements = match PostgresCompatibilityParser::new().parse(sql) {
            Ok(s) => s,
            Err(e) => {
                return Err(refuse_datafusion_extension(sql)
                    .unwrap_or_else(|| panic!("{sql}: {e}"))
                    .message);
            }
        };
        assert_eq!(statements.len(), 1, "{sql}");
        check_statement(&statements[0]).map_err(|r| r.message)
    }

    #[test]
    fn queries_and_connect_time_statements_are_allowed() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
        ] {
            assert_eq!(check(sql), Ok(Allowed::Query), "{sql}");
        }
        for sql in [
            "SET statement_timeout = 1000",
            "SET application_name = 'psql'",
            "SET TIME ZONE 'UTC'",
            "SET extra_float_digits = 3",
            "SHOW transaction_isolation",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
        ] {
            assert!(matches!(check(sql), Ok(Allowed::Session(_))), "{sql}");
        }
    }

    #[test]
    fn writes_file_access_and_engine_options_are_refused() {
        for sql in [
            "CREATE EXTERNAL TABLE p (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
            "COPY customer_scores TO '/tmp/out.csv'",
            "COPY (SELECT 1) TO '/tmp/out.parquet'",
            "INSERT INTO customer_scores VALUES (1)",
            "CREATE TABLE t AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "DROP TABLE customer_scores",
            "DELETE FROM customer_scores",
            "UPDATE customer_scores SET clv = 0",
            "SET datafusion.execution.target_partitions = 64",
            "SET \"datafusion.execution.batch_size\" = 1",
            "SET ROLE postgres",
            "EXPLAIN INSERT INTO t VALUES (1)",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "DECLARE c CURSOR FOR SELECT 1",
            "PREPARE p AS SELECT 1",
        ] {
            match check(sql) {
                Err(message) => assert!(message.contains("patron serve"), "{sql}: {message}"),
                Ok(a) => panic!("{sql} allowed as {a:?}"),
            }
        }
    }

    #[test]
    fn datafusion_only_statements_are_named_as_refused() {
        let sql = "CREATE EXTERNAL TABLE p (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'";
        assert!(PostgresCompatibilityParser::new().parse(sql).is_err());
        let message = refuse_datafusion_extension(sql).unwrap().message;
        assert!(
            message.contains("read-only") && message.contains("CREATE EXTERNAL TABLE"),
            "{message}"
        );
        assert!(refuse_datafusion_extension("COPY (SELECT 1) TO '/tmp/x' STORED AS PARQUET").is_some());
        assert_eq!(refuse_datafusion_extension("SELEC 1"), None);
    }

    #[tokio::test]
    async fn the_plan_check_refuses_select_into_and_passes_queries() {
        let ctx = SessionContext::new();
        let plan = ctx.state().create_logical_plan("SELECT 1 AS x INTO t2").await.unwrap();
        assert_eq!(check_plan(&plan).unwrap_err().code, SQLSTATE_READ_ONLY);
        let plan = ctx.state().create_logical_plan("SELECT 1 AS x").await.unwrap();
        assert_eq!(check_plan(&plan), Ok(()));
    }

    #[test]
    fn deep_expressions_and_long_statements_are_refused_with_a_clear_error() {
        let chain = |n: usize, op: &str| format!("SELECT 1{}", format!(" {op} 1").repeat(n));
        assert_eq!(check(&chain(100, "+")), Ok(Allowed::Query));
        let err = check(&chain(MAX_EXPRESSION_DEPTH + 5, "+")).unwrap_err();
        assert!(err.contains("too complex"), "{err}");
        let ors = format!("SELECT 1 WHERE {}", vec!["x = 1"; 2000].join(" OR "));
        assert!(check(&ors).unwrap_err().contains("too complex"));
        // A long IN list is one level, whatever its length.
        let values: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        assert_eq!(
            check(&format!("SELECT 1 WHERE 1 IN ({})", values.join(","))),
            Ok(Allowed::Query)
        );
        assert!(check_size(&"x".repeat(MAX_STATEMENT_BYTES)).is_ok());
        assert_eq!(
            check_size(&"x".repeat(MAX_STATEMENT_BYTES + 1)).unwrap_err().code,
            SQLSTATE_TOO_COMPLEX
        );
    }
}
