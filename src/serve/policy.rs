//! What `patron serve` lets a client run: queries, and the harmless statements clients send
//! when they connect. Everything else (CREATE EXTERNAL TABLE, COPY, INSERT, DDL, cursors,
//! PREPARE, SET of engine options...) is refused before it is planned.
//!
//! Two layers: the parsed statement (the SQL parser's syntax tree, never string matching) is
//! checked against an allow-list here, and the logical plan of every query is checked again
//! with DataFusion's [`SQLOptions`] (no DDL, no DML, no statements), which also catches
//! `SELECT ... INTO` and anything a future parser rewrite might smuggle into a query.

use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Set, Statement};

/// SQLSTATE of a refused statement: `read_only_sql_transaction`.
pub const SQLSTATE_READ_ONLY: &str = "25006";

/// How an allowed statement is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// A query (SELECT, WITH, VALUES, EXPLAIN, DESCRIBE, SHOW of tables/columns): planned,
    /// checked with [`check_plan`] and executed under the limits.
    Query,
    /// A session statement the protocol layer answers itself (SET, SHOW variable,
    /// BEGIN/COMMIT/ROLLBACK): no data is read.
    Session,
}

/// Prefix of DataFusion's engine options (`SET datafusion.execution...`), never settable.
const ENGINE_OPTION_PREFIX: &str = "datafusion.";

/// Checks one parsed statement; the error says what was refused and what is allowed.
pub fn check_statement(statement: &Statement) -> Result<Allowed, String> {
    match statement {
        Statement::Query(_) | Statement::ExplainTable { .. } => Ok(Allowed::Query),
        Statement::Explain { statement, .. } => match check_statement(statement)? {
            Allowed::Query => Ok(Allowed::Query),
            Allowed::Session => Err(refusal(statement)),
        },
        Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowFunctions { .. } => Ok(Allowed::Query),
        Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { savepoint: None, .. } => Ok(Allowed::Session),
        Statement::Set(set) => check_set(set)
            .map(|_| Allowed::Session)
            .map_err(|m| m.unwrap_or(refusal(statement))),
        other => Err(refusal(other)),
    }
}

/// SET of client settings (time zone, date style, application name, statement timeout...)
/// is fine; DataFusion engine options, roles and session authorization are not.
fn check_set(set: &Set) -> Result<(), Option<String>> {
    let engine_option = |name: &str| name.to_ascii_lowercase().starts_with(ENGINE_OPTION_PREFIX);
    match set {
        Set::SingleAssignment { variable, .. } => {
            if engine_option(&variable.to_string()) {
                Err(Some(format!(
                    "patron serve does not allow changing engine options (`SET {variable}`)"
                )))
            } else {
                Ok(())
            }
        }
        Set::MultipleAssignments { assignments } => {
            match assignments.iter().find(|a| engine_option(&a.name.to_string())) {
                Some(a) => Err(Some(format!(
                    "patron serve does not allow changing engine options (`SET {}`)",
                    a.name
                ))),
                None => Ok(()),
            }
        }
        Set::SetTimeZone { .. } | Set::SetNames { .. } | Set::SetNamesDefault {} | Set::SetTransaction { .. } => Ok(()),
        _ => Err(None),
    }
}

fn refusal(statement: &impl std::fmt::Display) -> String {
    let text = statement.to_string();
    let shown: String = text.chars().take(80).collect();
    let ellipsis = if text.chars().count() > 80 { "..." } else { "" };
    format!(
        "patron serve is read-only: `{shown}{ellipsis}` is not allowed; only SELECT, WITH, VALUES, EXPLAIN, SHOW, SET and BEGIN/COMMIT/ROLLBACK run here"
    )
}

/// For SQL the PostgreSQL parser rejected: if DataFusion's own SQL parser reads it as one of
/// its extensions (CREATE EXTERNAL TABLE, COPY ... TO, ...), the read-only refusal naming it,
/// so a client learns the statement is not allowed rather than misspelt.
pub fn refuse_datafusion_extension(sql: &str) -> Option<String> {
    let statements = DFParser::parse_sql(sql).ok()?;
    statements.iter().find_map(|s| match s {
        DfStatement::Statement(inner) => check_statement(inner).err(),
        other => Some(refusal(other)),
    })
}

/// Checks the logical plan of a query: no DDL, DML (INSERT, COPY) or statement nodes anywhere,
/// subqueries included.
pub fn check_plan(plan: &LogicalPlan) -> Result<(), String> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| format!("patron serve is read-only: {e}"))
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
            Err(e) => return Err(refuse_datafusion_extension(sql).unwrap_or_else(|| panic!("{sql}: {e}"))),
        };
        assert_eq!(statements.len(), 1, "{sql}");
        check_statement(&statements[0])
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
            assert_eq!(check(sql), Ok(Allowed::Session), "{sql}");
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
            "SET ROLE postgres",
            "EXPLAIN INSERT INTO t VALUES (1)",
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
        let message = refuse_datafusion_extension(sql).unwrap();
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
        assert!(check_plan(&plan).is_err());
        let plan = ctx.state().create_logical_plan("SELECT 1 AS x").await.unwrap();
        assert_eq!(check_plan(&plan), Ok(()));
    }
}
