//! `patron serve` with the database drivers and BI tools people point at it, each the real
//! client package: SQLAlchemy 2 over psycopg 3 and psycopg2 (connect, reflection, pandas
//! with a bound parameter), pgJDBC's `DatabaseMetaData` and a prepared statement, and the
//! catalog queries Grafana and Metabase send to list schemas, tables and columns (through
//! psql). Each test starts its own server over the shared warehouse of `serve.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::serve::{psql, psql_rows, python, shared_warehouse, start};
use crate::support::{repo, text};

/// The server version patron reports (`src/serve/compat.rs`).
const SERVER_VERSION: &str = "16.6";

/// SQLAlchemy 2 over `driver`: connect (the dialect parses `version()`), reflect
/// `customer_scores` and `customer_values`, and read with pandas and a bound parameter.
/// Prints one JSON object.
const SQLALCHEMY: &str = r#"
import json, os
import pandas as pd
from sqlalchemy import create_engine, inspect, text

driver = os.environ["DRIVER"]
# At connect, SQLAlchemy's psycopg 3 dialect looks hstore up inside a SAVEPOINT.
engine = create_engine(f"postgresql+{driver}://analyst@127.0.0.1:{os.environ['PORT']}/patron")
out = {}
with engine.connect() as conn:
    out["server_version_info"] = list(conn.dialect.server_version_info)
    out["version"] = conn.execute(text("SELECT version()")).scalar()
    sql = "SELECT customer_id, clv FROM customer_scores WHERE clv > {} ORDER BY customer_id"
    bound = pd.read_sql(text(sql.format(":x")), conn, params={"x": 10})
    literal = pd.read_sql(text(sql.format("10")), conn)
    out["read_sql_rows"] = len(bound)
    out["read_sql_equal"] = bool(bound.equals(literal))
    out["customers"] = conn.execute(text("SELECT COUNT(*) FROM customer_scores")).scalar()
insp = inspect(engine)
out["schemas"] = insp.get_schema_names()
out["tables"] = insp.get_table_names()
out["columns"] = {}
out["nullable"] = {}
for table in ["customer_scores", "customer_values"]:
    for c in insp.get_columns(table):
        out["columns"][f"{table}.{c['name']}"] = str(c["type"])
        out["nullable"][f"{table}.{c['name']}"] = c["nullable"]
out["pk"] = insp.get_pk_constraint("customer_scores")
out["indexes"] = insp.get_indexes("customer_scores")
out["fks"] = insp.get_foreign_keys("customer_scores")
print(json.dumps(out, default=str))
"#;

fn sqlalchemy(driver: &str) {
    let started = Instant::now();
    let wh = shared_warehouse();
    let server = start(&repo(), &["--warehouse", wh.to_str().unwrap()], &[]);
    let out = python(server.port, SQLALCHEMY, &[("DRIVER", driver)]);
    assert!(out.status.success(), "{driver}: {}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    let got: Value = serde_json::from_str(printed.trim()).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));

    let version = &got["server_version_info"];
    assert_eq!(
        format!("{}.{}", version[0], version[1]),
        SERVER_VERSION,
        "{driver}: {got}"
    );
    let banner = got["version"].as_str().unwrap();
    assert!(
        banner.starts_with(&format!("PostgreSQL {SERVER_VERSION} on ")) && banner.contains("(patron "),
        "{banner}"
    );

    // pandas with a bound parameter: the same rows as the literal query, and some of them.
    let rows = got["read_sql_rows"].as_i64().unwrap();
    assert!(rows > 0 && rows < got["customers"].as_i64().unwrap(), "{got}");
    assert_eq!(got["read_sql_equal"], Value::Bool(true), "{got}");

    // Reflection: schemas (NOT LIKE ... ESCAPE), tables, columns with PostgreSQL types
    // (pg_get_serial_sequence, correlated subqueries), keys and indexes (pg_index.indkey).
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert!(names(&got["schemas"]).contains(&"public".to_string()), "{got}");
    let tables = names(&got["tables"]);
    for t in ["customer_scores", "runs", "model_params"] {
        assert!(tables.contains(&t.to_string()), "{t}: {tables:?}");
    }
    assert!(
        !tables.iter().any(|t| t == "columns" || t == "tables"),
        "information_schema views among the tables: {tables:?}"
    );
    for (column, ty) in [
        ("customer_scores.customer_id", "TEXT"),
        ("customer_scores.as_of", "DATE"),
        ("customer_scores.recency_days", "INTEGER"),
        ("customer_scores.frequency", "BIGINT"),
        ("customer_scores.clv", "DOUBLE PRECISION"),
        ("customer_values.is_buyer", "BOOLEAN"),
        ("customer_values.cohort_month", "TIMESTAMP"),
    ] {
        assert_eq!(got["columns"][column], Value::from(ty), "{column}: {got}");
    }
    assert!(got["columns"].as_object().unwrap().len() > 30, "{got}");
    assert_eq!(got["nullable"]["customer_scores.as_of"], Value::Bool(false), "{got}");
    assert_eq!(
        got["nullable"]["customer_scores.customer_id"],
        Value::Bool(true),
        "{got}"
    );
    assert_eq!(got["pk"]["constrained_columns"], serde_json::json!([]), "{got}");
    assert_eq!(got["indexes"], serde_json::json!([]), "{got}");
    assert_eq!(got["fks"], serde_json::json!([]), "{got}");
    eprintln!("SQLAlchemy over {driver}: {:?}", started.elapsed());
}

#[test]
fn serve_clients_sqlalchemy_over_psycopg3() {
    sqlalchemy("psycopg");
}

#[test]
fn serve_clients_sqlalchemy_over_psycopg2() {
    sqlalchemy("psycopg2");
}

/// Debian's pgJDBC (libpostgresql-jdbc-java).
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// A pgJDBC client: `DatabaseMetaData` calls and a one-parameter prepared statement, one
/// `key=value` line per fact.
const JDBC_CLIENT: &str = r#"
import java.sql.*;
import java.util.*;

public class Clients {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/patron?sslmode=disable";
        try (Connection c = DriverManager.getConnection(url, "analyst", "")) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("product=" + md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());
            try (ResultSet rs = md.getSchemas()) {
                while (rs.next()) System.out.println("schema=" + rs.getString("TABLE_SCHEM"));
            }
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) System.out.println("table=" + rs.getString("TABLE_NAME"));
            }
            try (ResultSet rs = md.getColumns(null, "public", "customer_scores", "%")) {
                while (rs.next()) {
                    System.out.println("column=" + rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME")
                        + ":" + rs.getInt("DATA_TYPE") + ":" + rs.getInt("ORDINAL_POSITION"));
                }
            }
            int keys = 0;
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "customer_scores")) {
                while (rs.next()) keys++;
            }
            System.out.println("primary_keys=" + keys);
            List<String> types = new ArrayList<>();
            try (ResultSet rs = md.getTypeInfo()) {
                while (rs.next()) types.add(rs.getString("TYPE_NAME") + ":" + rs.getInt("DATA_TYPE"));
            }
            System.out.println("type_count=" + types.size());
            for (String t : types) System.out.println("type=" + t);
            try (PreparedStatement p = c.prepareStatement("SELECT COUNT(*) FROM customer_scores WHERE clv > ?")) {
                p.setDouble(1, 10.0);
                try (ResultSet rs = p.executeQuery()) {
                    rs.next();
                    System.out.println("prepared=" + rs.getLong(1));
                }
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT COUNT(*) FROM customer_scores WHERE clv > 10")) {
                rs.next();
                System.out.println("literal=" + rs.getLong(1));
            }
        }
    }
}
"#;

/// Compiles [`JDBC_CLIENT`] into `dir`.
fn compile_jdbc_client(dir: &Path) -> PathBuf {
    let source = dir.join("Clients.java");
    std::fs::write(&source, JDBC_CLIENT).unwrap();
    let out = Command::new("javac")
        .args(["-cp", PGJDBC_JAR, "-d"])
        .arg(dir)
        .arg(&source)
        .output()
        .expect("javac runs (default-jdk-headless)");
    assert!(out.status.success(), "{}", text(&out));
    dir.to_path_buf()
}

#[test]
fn serve_clients_pgjdbc_metadata_and_prepared_statement() {
    let started = Instant::now();
    assert!(
        Path::new(PGJDBC_JAR).exists(),
        "{PGJDBC_JAR} missing: apt-get install libpostgresql-jdbc-java"
    );
    let dir = tempfile::tempdir().unwrap();
    let classes = compile_jdbc_client(dir.path());
    let wh = shared_warehouse();
    let server = start(&repo(), &["--warehouse", wh.to_str().unwrap()], &[]);
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{}:{PGJDBC_JAR}", classes.display()))
        .arg("Clients")
        .arg(server.port.to_string())
        .output()
        .expect("java runs");
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let values = |key: &str| -> Vec<String> {
        printed
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    let one = |key: &str| -> String {
        let v = values(key);
        assert_eq!(v.len(), 1, "{key}: {printed}");
        v[0].clone()
    };

    assert!(one("product").starts_with("PostgreSQL 16."), "{printed}");
    assert!(values("schema").contains(&"public".to_string()), "{printed}");
    assert!(values("table").contains(&"customer_scores".to_string()), "{printed}");
    let columns = values("column");
    assert_eq!(columns.len(), 31, "{printed}");
    // name:TYPE_NAME:java.sql.Types:ORDINAL_POSITION
    for expected in [
        "customer_id:text:12:1",
        "as_of:date:91:2",
        "recency_days:int4:4:3",
        "frequency:int8:-5:4",
        "clv:float8:8:22",
    ] {
        assert!(columns.contains(&expected.to_string()), "{expected}: {columns:?}");
    }
    // getPrimaryKeys runs (_pg_expandarray over pg_index.indkey); published tables have none.
    assert_eq!(one("primary_keys"), "0", "{printed}");
    // getTypeInfo lists the built-in types with their JDBC type codes.
    let types = values("type");
    assert!(one("type_count").parse::<usize>().unwrap() > 50, "{printed}");
    for expected in ["text:12", "int8:-5", "float8:8", "bool:-7", "date:91", "timestamp:93"] {
        assert!(types.contains(&expected.to_string()), "{expected}: {types:?}");
    }
    let prepared: i64 = one("prepared").parse().unwrap();
    assert!(prepared > 0, "{printed}");
    assert_eq!(one("prepared"), one("literal"), "{printed}");
    eprintln!("pgJDBC (javac and run): {:?}", started.elapsed());
}

/// Grafana's PostgreSQL data source: its version probe, schema and table lists, and the
/// column list of a table, with the search path expanded as its `buildSchemaConstraint`
/// does (grafana `postgresMetaQuery.ts`).
const GRAFANA_SEARCH_PATH: &str = r#"
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )"#;

fn grafana_tables() -> String {
    format!(
        r#"SELECT
    CASE WHEN {GRAFANA_SEARCH_PATH}
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN {GRAFANA_SEARCH_PATH} THEN 0 ELSE 1 END, 1"#
    )
}

fn grafana_columns(table: &str) -> String {
    format!(
        r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('{table}'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('{table}'))[1]
          AND quote_ident(table_name) = (parse_ident('{table}'))[2]
        ELSE quote_ident(table_name) = '{table}'
          AND {GRAFANA_SEARCH_PATH}
      END"#
    )
}

const GRAFANA_SCHEMAS: &str = r#"SELECT schema_name AS "name"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name"#;

/// Metabase's PostgreSQL driver: the table list of a sync (`get-tables-sql`, HoneySQL with
/// ANSI quoting) and its privilege check (`current-user-table-privileges`).
const METABASE_TABLES: &str = r#"SELECT "n"."nspname" AS "schema", "c"."relname" AS "name", CASE "c"."relkind" WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE NULL END AS "type", "d"."description" AS "description", "stat"."n_live_tup" AS "estimated_row_count" FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid" LEFT JOIN "pg_catalog"."pg_description" AS "d" ON ("c"."oid" = "d"."objoid") AND ("d"."objsubid" = 0) AND ("d"."classoid" = 'pg_class'::regclass) LEFT JOIN "pg_stat_user_tables" AS "stat" ON ("n"."nspname" = "stat"."schemaname") AND ("c"."relname" = "stat"."relname") WHERE ("c"."relnamespace" = "n"."oid") AND ("n"."nspname" !~ '^pg_') AND ("n"."nspname" <> 'information_schema') AND c.relkind in ('r', 'p', 'v', 'f', 'm') AND ("n"."nspname" IN ('public')) ORDER BY "type" ASC, "schema" ASC, "name" ASC"#;

const METABASE_PRIVILEGES: &str = r#"with table_privileges as (
 select
   NULL as role,
   t.schemaname as schema,
   t.objectname as table,
   pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'update') as update,
   pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'select') as select,
   pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'insert') as insert,
   pg_catalog.has_table_privilege(     current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"',  'delete') as delete
 from (
   select schemaname, tablename as objectname from pg_catalog.pg_tables
   union
   select schemaname, viewname as objectname from pg_catalog.pg_views
   union
   select schemaname, matviewname as objectname from pg_catalog.pg_matviews
 ) t
 where t.schemaname !~ '^pg_'
   and t.schemaname <> 'information_schema'
   and pg_catalog.has_schema_privilege(current_user, t.schemaname, 'usage')
)
select t.*
from table_privileges t"#;

#[test]
fn serve_clients_grafana_and_metabase_catalog_queries_over_psql() {
    let started = Instant::now();
    let wh = shared_warehouse();
    let server = start(&repo(), &["--warehouse", wh.to_str().unwrap()], &[]);
    let port = server.port;

    // Grafana: `current_setting('server_version_num')::int/100` picks its query dialect.
    assert_eq!(
        psql_rows(port, "SELECT current_setting('server_version_num')::int/100 as version"),
        ["1600"]
    );
    assert_eq!(
        psql_rows(
            port,
            "SELECT current_setting('search_path'), current_setting('TimeZone')"
        ),
        ["\"$user\", public|Etc/UTC"]
    );
    let unknown = psql(
        port,
        "analyst",
        None,
        "disable",
        "SELECT current_setting('no_such_setting')",
    );
    assert_ne!(unknown.status.code(), Some(0), "{}", text(&unknown));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("unrecognized configuration parameter \"no_such_setting\""),
        "{}",
        text(&unknown)
    );
    assert_eq!(psql_rows(port, GRAFANA_SCHEMAS), ["public"]);
    // Tables on the search path are listed unqualified, sorted.
    let tables = psql_rows(port, &grafana_tables());
    assert!(tables.contains(&"customer_scores".to_string()), "{tables:?}");
    assert!(!tables.iter().any(|t| t.contains('.')), "{tables:?}");
    let mut sorted = tables.clone();
    sorted.sort();
    assert_eq!(tables, sorted);
    let published = psql_rows(
        port,
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert_eq!(tables.len().to_string(), published[0], "{tables:?}");
    // Column types as PostgreSQL names them.
    let columns = psql_rows(port, &grafana_columns("customer_scores"));
    assert_eq!(columns.len(), 31, "{columns:?}");
    for expected in [
        "customer_id|text",
        "as_of|date",
        "recency_days|integer",
        "frequency|bigint",
        "clv|double precision",
    ] {
        assert!(columns.contains(&expected.to_string()), "{expected}: {columns:?}");
    }
    let qualified = psql_rows(port, &grafana_columns("public.customer_values"));
    for expected in ["is_buyer|boolean", "cohort_month|timestamp without time zone"] {
        assert!(qualified.contains(&expected.to_string()), "{expected}: {qualified:?}");
    }

    // information_schema.columns: PostgreSQL names everywhere, no Arrow type names.
    let types = psql_rows(
        port,
        "SELECT DISTINCT data_type || '/' || udt_name FROM information_schema.columns \
         WHERE table_schema = 'public' ORDER BY 1",
    );
    assert_eq!(
        types,
        [
            "bigint/int8",
            "boolean/bool",
            "date/date",
            "double precision/float8",
            "integer/int4",
            "text/text",
            "timestamp with time zone/timestamptz",
            "timestamp without time zone/timestamp",
        ]
    );
    assert_eq!(
        psql_rows(
            port,
            "SELECT ordinal_position, is_nullable FROM information_schema.columns \
             WHERE table_name = 'customer_scores' AND column_name = 'as_of'"
        ),
        ["2|NO"]
    );

    // Metabase: the sync's table list, and the privilege check that decides what it syncs.
    let listed = psql_rows(port, METABASE_TABLES);
    assert_eq!(listed.len().to_string(), published[0], "{listed:?}");
    assert!(
        listed.contains(&"public|customer_scores|TABLE||".to_string()),
        "{listed:?}"
    );
    // Read-only: SELECT, but no UPDATE, INSERT or DELETE (Metabase marks tables writable
    // from these).
    let privileges = psql_rows(port, METABASE_PRIVILEGES);
    assert_eq!(privileges.len().to_string(), published[0], "{privileges:?}");
    assert!(
        privileges.contains(&"|public|customer_scores|f|t|f|f".to_string()),
        "{privileges:?}"
    );
    eprintln!("Grafana and Metabase catalog queries: {:?}", started.elapsed());
}
