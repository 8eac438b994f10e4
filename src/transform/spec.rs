//! What a data engineer declares about a stage besides its SELECT: header comments at the
//! top of the `.sql` file and an optional schema file `<table>.toml` beside it with table
//! and column descriptions and data tests.
//!
//! Header comments (`-- @key: value`, before the first SQL line):
//! ```sql
//! -- @description: One row per customer.
//! -- @materialized: table        (table | view | incremental)
//! -- @tags: daily, marts
//! -- @unique_key: order_id, line_no      (incremental: the merge key)
//! -- @incremental_column: order_ts       (incremental: `$watermark` is its last max)
//! -- @partition_by: order_date           (Delta publish: partition columns)
//! -- @on_schema_change: append_new_columns  (incremental: full_refresh | fail | append_new_columns)
//! -- @incremental_strategy: insert_overwrite (incremental: merge | insert_overwrite)
//! -- @cluster_by: customer_id             (the ORDER BY starts with these: lookups prune)
//! ```
//! Schema file (`sql/marts/fct_customer.toml`):
//! ```toml
//! description = "One row per customer."
//! [columns.customer_id]
//! description = "Canonical id"
//! tests = ["unique", "not_null"]
//! [columns.value_tier]
//! tests = [{ accepted_values = ["A", "B", "C"] }]
//! [columns.referred_by]
//! tests = [{ relationships = { to = "fct_customer", field = "customer_id" }, severity = "warn" }]
//! [[tests]]
//! expression = "revenue >= 0"
//! [[tests]]
//! row_count = { min = 1 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TransformError;

/// How a stage's result is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Materialized {
    /// Written to Parquet and published (the default).
    #[default]
    Table,
    /// Computed on read by later stages; not written or published.
    View,
    /// Written and published like a table, but each run's query sees
    /// `$is_incremental = true` and `$watermark` (the previous table's maximum of the
    /// `incremental_column`), selects only new or changed rows, and those rows are merged
    /// into the previous table on the `unique_key`.
    Incremental,
}

impl Materialized {
    /// True when the stage's result is written and published.
    pub fn is_stored(self) -> bool {
        self != Materialized::View
    }
}

/// What happens when a data test fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The run fails before publishing.
    #[default]
    Error,
    /// Reported, the run goes on.
    Warn,
}

/// One data test: a query returning the failing rows (empty = pass).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    /// No two rows share these columns.
    Unique(Vec<String>),
    /// The column has no NULL.
    NotNull(String),
    /// Every non-NULL value is one of these.
    AcceptedValues {
        /// Column.
        column: String,
        /// Allowed values (compared as text).
        values: Vec<String>,
    },
    /// Every non-NULL value exists in `to`.`field`.
    Relationships {
        /// Column.
        column: String,
        /// Referenced table.
        to: String,
        /// Referenced column.
        field: String,
    },
    /// A boolean SQL expression every row must meet.
    Expression(String),
    /// Row count bounds.
    RowCount {
        /// At least this many rows.
        min: Option<u64>,
        /// At most this many rows.
        max: Option<u64>,
    },
    /// A query under `sql/tests/` returning failing rows.
    Singular {
        /// The query.
        sql: String,
    },
}

/// A data test attached to a table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataTest {
    /// Table the test checks.
    pub table: String,
    /// Readable name, e.g. `unique(customer_id)`.
    pub name: String,
    /// What it checks.
    pub kind: TestKind,
    /// Error or warn.
    pub severity: Severity,
    /// File that declares it.
    pub file: PathBuf,
}

/// What an incremental stage does when its query's columns no longer match the previous
/// table's (a column added, removed or retyped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSchemaChange {
    /// Rebuild the table from this run's query alone (the previous rows are dropped).
    #[default]
    FullRefresh,
    /// Fail the run, naming the differences.
    Fail,
    /// Keep the previous rows: new columns are NULL in them, columns the query no longer
    /// selects stay (NULL in new rows); a column whose type changed fails the run.
    AppendNewColumns,
}

/// How an incremental stage's new rows join its previous table (dbt's `incremental_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncrementalStrategy {
    /// New rows replace the previous rows with the same `unique_key`; the table is rewritten.
    #[default]
    Merge,
    /// New rows replace every partition (`partition_by` values) they fall in; the previous
    /// table's other partitions are kept as they are. Published to Delta as one commit that
    /// removes the replaced partitions' files and adds the new ones, so a run writes only its
    /// own partitions however long the table's history (a daily snapshot table).
    InsertOverwrite,
}

/// Descriptions, settings and tests of one stage.
#[derive(Debug, Clone, Default)]
pub struct StageSpec {
    /// Table description.
    pub description: Option<String>,
    /// Materialisation.
    pub materialized: Materialized,
    /// Tags for selection (`--select tag:daily`).
    pub tags: Vec<String>,
    /// Incremental stages: the columns identifying a row, for the merge.
    pub unique_key: Vec<String>,
    /// Incremental stages: the column whose previous maximum is `$watermark`.
    pub incremental_column: Option<String>,
    /// Columns the published Delta table is partitioned by.
    pub partition_by: Vec<String>,
    /// Incremental stages: what a change of columns does.
    pub on_schema_change: OnSchemaChange,
    /// Incremental stages: merge on the key, or replace whole partitions.
    pub incremental_strategy: IncrementalStrategy,
    /// Columns the stage's output is sorted by first (its ORDER BY must start with them;
    /// the run checks): the written files get bloom filters on them and row groups small
    /// enough that a lookup by these columns skips most of the table.
    pub cluster_by: Vec<String>,
    /// Column descriptions.
    pub columns: BTreeMap<String, String>,
    /// Data tests.
    pub tests: Vec<DataTest>,
    /// The schema file, when there is one.
    pub schema_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchemaFile {
    description: Option<String>,
    tags: Option<Vec<String>>,
    materialized: Option<String>,
    unique_key: Option<Vec<String>>,
    incremental_column: Option<String>,
    partition_by: Option<Vec<String>>,
    on_schema_change: Option<String>,
    incremental_strategy: Option<String>,
    cluster_by: Option<Vec<String>>,
    #[serde(default)]
    columns: BTreeMap<String, RawColumn>,
    #[serde(default)]
    tests: Vec<RawTableTest>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    description: Option<String>,
    #[serde(default)]
    tests: Vec<RawColumnTest>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawColumnTest {
    Name(String),
    Table(RawColumnTestTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumnTestTable {
    unique: Option<bool>,
    not_null: Option<bool>,
    accepted_values: Option<Vec<String>>,
    relationships: Option<RawRelationship>,
    severity: Option<Severity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelationship {
    to: String,
    field: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTableTest {
    expression: Option<String>,
    unique: Option<Vec<String>>,
    row_count: Option<RawRowCount>,
    severity: Option<Severity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRowCount {
    min: Option<u64>,
    max: Option<u64>,
}

fn bad(path: &Path, message: impl Into<String>) -> TransformError {
    TransformError::Parse {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A stage setting's value as written: header text (`a, b` for a list) or a TOML value.
enum Value {
    /// A header line's text after `:`.
    Text(String),
    /// A TOML string of the sidecar.
    One(String),
    /// A TOML array of strings of the sidecar.
    List(Vec<String>),
}

impl Value {
    fn list(self) -> Vec<String> {
        match self {
            Value::Text(t) => list(&t),
            Value::One(v) => vec![v],
            Value::List(v) => v,
        }
    }

    fn text(self) -> String {
        match self {
            Value::Text(t) | Value::One(t) => t,
            Value::List(v) => v.join(", "),
        }
    }
}

/// The settings a stage can carry, in its sidecar or (one or the other) as `-- @key: value`
/// header lines.
const SETTINGS: [&str; 9] = [
    "description",
    "materialized",
    "tags",
    "unique_key",
    "incremental_column",
    "partition_by",
    "on_schema_change",
    "incremental_strategy",
    "cluster_by",
];

/// Reads the `-- @key: value` lines at the top of a stage file: (key, value, line).
fn read_header(path: &Path, sql: &str) -> Result<Vec<(String, String, usize)>, TransformError> {
    let mut settings = Vec::new();
    for (i, line) in sql.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else { break };
        let Some(setting) = comment.trim().strip_prefix('@') else {
            continue;
        };
        let (key, value) = setting
            .split_once(':')
            .ok_or_else(|| bad(path, format!("line {}: expected `-- @key: value`", i + 1)))?;
        settings.push((key.trim().to_string(), value.trim().to_string(), i + 1));
    }
    Ok(settings)
}

/// Sets setting `key` of `spec` to `value`; `at` says where it was written (`line 3: `,
/// or empty in a sidecar), for the error.
fn apply(spec: &mut StageSpec, path: &Path, at: &str, key: &str, value: Value) -> Result<(), TransformError> {
    let choice = |value: Value, choices: &[(&str, Materialized)]| one_of(path, at, key, &value.text(), choices);
    match key {
        "description" => spec.description = Some(value.text()),
        "materialized" => {
            spec.materialized = choice(
                value,
                &[
                    ("table", Materialized::Table),
                    ("view", Materialized::View),
                    ("incremental", Materialized::Incremental),
                ],
            )?
        }
        "tags" => {
            spec.tags = value.list();
            spec.tags.sort();
            spec.tags.dedup();
        }
        "unique_key" => spec.unique_key = value.list(),
        "partition_by" => spec.partition_by = value.list(),
        "cluster_by" => spec.cluster_by = value.list(),
        "incremental_column" => spec.incremental_column = Some(value.text()).filter(|v| !v.is_empty()),
        "on_schema_change" => {
            spec.on_schema_change = one_of(
                path,
                at,
                key,
                &value.text(),
                &[
                    ("full_refresh", OnSchemaChange::FullRefresh),
                    ("fail", OnSchemaChange::Fail),
                    ("append_new_columns", OnSchemaChange::AppendNewColumns),
                ],
            )?;
        }
        "incremental_strategy" => {
            spec.incremental_strategy = one_of(
                path,
                at,
                key,
                &value.text(),
                &[
                    ("merge", IncrementalStrategy::Merge),
                    ("insert_overwrite", IncrementalStrategy::InsertOverwrite),
                ],
            )?;
        }
        other => {
            return Err(bad(
                path,
                format!("{at}unknown setting `@{other}` (use {})", SETTINGS.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Checks that the settings of `spec` fit together (`path`: the file that holds them).
fn check_settings(path: &Path, spec: &StageSpec, schema_change_set: bool) -> Result<(), TransformError> {
    let incremental = spec.materialized == Materialized::Incremental;
    let overwrite = spec.incremental_strategy == IncrementalStrategy::InsertOverwrite;
    if incremental && !overwrite && spec.unique_key.is_empty() {
        return Err(bad(
            path,
            "an incremental stage needs `unique_key` (`-- @unique_key: <columns>`) to merge new rows into the previous table",
        ));
    }
    if overwrite && spec.partition_by.is_empty() {
        return Err(bad(
            path,
            "`@incremental_strategy: insert_overwrite` replaces whole partitions: it needs `@partition_by`",
        ));
    }
    if spec.materialized == Materialized::View && !spec.partition_by.is_empty() {
        return Err(bad(
            path,
            "`@partition_by` needs a stored stage (table or incremental), not a view",
        ));
    }
    if spec.materialized != Materialized::Table && !spec.cluster_by.is_empty() {
        return Err(bad(
            path,
            "`@cluster_by` applies to `@materialized: table` stages (a view is not written; an incremental \
             stage is ordered by its unique key)",
        ));
    }
    if !incremental
        && (!spec.unique_key.is_empty() || spec.incremental_column.is_some() || schema_change_set || overwrite)
    {
        return Err(bad(
            path,
            "`@unique_key`, `@incremental_column`, `@on_schema_change` and `@incremental_strategy` apply to \
             `@materialized: incremental` stages only",
        ));
    }
    Ok(())
}

/// The choice named `value` of a setting, or an error naming where it was written (`at`)
/// and the choices.
fn one_of<T: Copy>(
    path: &Path,
    at: &str,
    setting: &str,
    value: &str,
    choices: &[(&str, T)],
) -> Result<T, TransformError> {
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            bad(
                path,
                format!("{at}{setting} `{value}` is not one of {}", names.join(", ")),
            )
        })
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn column_test(table: &str, column: &str, test: RawColumnTest, file: &Path) -> Result<DataTest, TransformError> {
    let (kind, severity) = match test {
        RawColumnTest::Name(name) => match name.as_str() {
            "unique" => (TestKind::Unique(vec![column.to_string()]), Severity::Error),
            "not_null" => (TestKind::NotNull(column.to_string()), Severity::Error),
            other => {
                return Err(bad(
                    file,
                    format!(
                        "columns.{column}: unknown test `{other}` (unique, not_null, or a table with accepted_values / relationships)"
                    ),
                ));
            }
        },
        RawColumnTest::Table(t) => {
            let mut kinds = Vec::new();
            if t.unique == Some(true) {
                kinds.push(TestKind::Unique(vec![column.to_string()]));
            }
            if t.not_null == Some(true) {
                kinds.push(TestKind::NotNull(column.to_string()));
            }
            if let Some(values) = t.accepted_values {
                kinds.push(TestKind::AcceptedValues {
                    column: column.to_string(),
                    values,
                });
            }
            if let Some(r) = t.relationships {
                kinds.push(TestKind::Relationships {
                    column: column.to_string(),
                    to: r.to,
                    field: r.field,
                });
            }
            if kinds.len() != 1 {
                return Err(bad(
                    file,
                    format!("columns.{column}: each test entry must name exactly one test"),
                ));
            }
            (kinds.remove(0), t.severity.unwrap_or_default())
        }
    };
    Ok(DataTest {
        table: table.to_string(),
        name: test_name(&kind),
        kind,
        severity,
        file: file.to_path_buf(),
    })
}

/// A short readable name for a test.
pub fn test_name(kind: &TestKind) -> String {
    match kind {
        TestKind::Unique(cols) => format!("unique({})", cols.join(", ")),
        TestKind::NotNull(c) => format!("not_null({c})"),
        TestKind::AcceptedValues { column, .. } => format!("accepted_values({column})"),
        TestKind::Relationships { column, to, field } => format!("relationships({column} -> {to}.{field})"),
        TestKind::Expression(e) => format!("expression({e})"),
        TestKind::RowCount { min, max } => format!(
            "row_count({}..{})",
            min.map(|m| m.to_string()).unwrap_or_default(),
            max.map(|m| m.to_string()).unwrap_or_default()
        ),
        TestKind::Singular { .. } => "singular".into(),
    }
}

/// Reads the settings, descriptions and tests of a stage: its sidecar `<stem>.toml`, if
/// any, and the `-- @key: value` lines of its header. A setting lives in one of the two;
/// one set in both is an error.
pub fn load_spec(table: &str, sql_path: &Path, sql: &str) -> Result<StageSpec, TransformError> {
    let mut spec = StageSpec::default();
    let header = read_header(sql_path, sql)?;
    for (key, value, line) in &header {
        apply(
            &mut spec,
            sql_path,
            &format!("line {line}: "),
            key,
            Value::Text(value.clone()),
        )?;
    }
    let in_header = |key: &str| header.iter().find(|(k, _, _)| k == key).map(|(_, _, line)| *line);
    let schema_path = sql_path.with_extension("toml");
    if !schema_path.is_file() {
        check_settings(sql_path, &spec, in_header("on_schema_change").is_some())?;
        return Ok(spec);
    }
    let text = std::fs::read_to_string(&schema_path).map_err(|e| TransformError::Read {
        path: schema_path.clone(),
        message: e.to_string(),
    })?;
    let raw: RawSchemaFile = toml::from_str(&text).map_err(|e| bad(&schema_path, e.to_string().trim_end()))?;
    let one = |v: Option<String>| v.map(Value::One);
    let many = |v: Option<Vec<String>>| v.map(Value::List);
    let sidecar = [
        ("description", one(raw.description)),
        ("materialized", one(raw.materialized)),
        ("tags", many(raw.tags)),
        ("unique_key", many(raw.unique_key)),
        ("incremental_column", one(raw.incremental_column)),
        ("partition_by", many(raw.partition_by)),
        ("on_schema_change", one(raw.on_schema_change)),
        ("incremental_strategy", one(raw.incremental_strategy)),
        ("cluster_by", many(raw.cluster_by)),
    ];
    let mut schema_change_set = in_header("on_schema_change").is_some();
    for (key, value) in sidecar {
        let Some(value) = value else { continue };
        if let Some(line) = in_header(key) {
            return Err(bad(
                &schema_path,
                format!(
                    "`{key}` is set here and in the header of {} (line {line}); keep it in one place",
                    sql_path.display()
                ),
            ));
        }
        schema_change_set |= key == "on_schema_change";
        apply(&mut spec, &schema_path, "", key, value)?;
    }
    check_settings(&schema_path, &spec, schema_change_set)?;
    for (column, c) in raw.columns {
        if let Some(d) = c.description {
            spec.columns.insert(column.clone(), d);
        }
        for t in c.tests {
            spec.tests.push(column_test(table, &column, t, &schema_path)?);
        }
    }
    for (i, t) in raw.tests.into_iter().enumerate() {
        let mut kinds = Vec::new();
        if let Some(e) = t.expression {
            kinds.push(TestKind::Expression(e));
        }
        if let Some(cols) = t.unique {
            kinds.push(TestKind::Unique(cols));
        }
        if let Some(r) = t.row_count {
            kinds.push(TestKind::RowCount { min: r.min, max: r.max });
        }
        if kinds.len() != 1 {
            return Err(bad(
                &schema_path,
                format!("tests[{i}]: name exactly one of expression, unique, row_count"),
            ));
        }
        let kind = kinds.remove(0);
        spec.tests.push(DataTest {
            table: table.to_string(),
            name: test_name(&kind),
            kind,
            severity: t.severity.unwrap_or_default(),
            file: schema_path.clone(),
        });
    }
    spec.schema_file = Some(schema_path);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_schema_file_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let sql = dir.path().join("t.sql");
        let text = "-- @description: Customers\n-- @tags: daily, marts\n-- free comment\nSELECT 1 AS a";
        std::fs::write(&sql, text).unwrap();
        std::fs::write(
            dir.path().join("t.toml"),
            "[columns.a]\ndescription = \"the a\"\ntests = [\"unique\", { accepted_values = [\"1\"], severity = \"warn\" }]\n\
             [[tests]]\nrow_count = { min = 1 }\n",
        )
        .unwrap();
        let spec = load_spec("t", &sql, text).unwrap();
        assert_eq!(spec.description.as_deref(), Some("Customers"));
        assert_eq!(spec.tags, vec!["daily", "marts"]);
        assert_eq!(spec.columns["a"], "the a");
        let names: Vec<_> = spec.tests.iter().map(|t| (t.name.as_str(), t.severity)).collect();
        assert_eq!(
            names,
            vec![
                ("unique(a)", Severity::Error),
                ("accepted_values(a)", Severity::Warn),
                ("row_count(1..)", Severity::Error)
            ]
        );
    }

    #[test]
    fn unknown_header_setting_and_test_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let sql = dir.path().join("t.sql");
        let e = load_spec("t", &sql, "-- @materialised: table\nSELECT 1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.sql") && e.contains("line 1") && e.contains("@materialised"),
            "{e}"
        );
        // A setting with a fixed set of values names them.
        for (header, needle) in [
            (
                "-- @materialized: tabel",
                "line 1: materialized `tabel` is not one of table, view, incremental",
            ),
            (
                "-- @materialized: incremental\n-- @unique_key: a\n-- @on_schema_change: drop",
                "line 3: on_schema_change `drop` is not one of full_refresh, fail, append_new_columns",
            ),
        ] {
            let e = load_spec("t", &sql, &format!("{header}\nSELECT 1 AS a"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("t.sql") && e.contains(needle), "{e}");
        }
        let spec = load_spec(
            "t",
            &sql,
            "-- @materialized: incremental\n-- @unique_key: a\n-- @on_schema_change: append_new_columns\nSELECT 1 AS a",
        )
        .unwrap();
        assert_eq!(spec.on_schema_change, OnSchemaChange::AppendNewColumns);
        let e = load_spec("t", &sql, "-- @on_schema_change: fail\nSELECT 1 AS a")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`@on_schema_change` and `@incremental_strategy` apply to `@materialized: incremental`"),
            "{e}"
        );
        std::fs::write(dir.path().join("t.toml"), "[columns.a]\ntests = [\"uniq\"]\n").unwrap();
        let e = load_spec("t", &sql, "SELECT 1").unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("uniq"), "{e}");
    }

    #[test]
    fn insert_overwrite_needs_partitions_and_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let sql = dir.path().join("t.sql");
        let spec = load_spec(
            "t",
            &sql,
            "-- @materialized: incremental\n-- @incremental_strategy: insert_overwrite\n-- @partition_by: day\nSELECT 1 AS day",
        )
        .unwrap();
        assert_eq!(spec.incremental_strategy, IncrementalStrategy::InsertOverwrite);
        assert!(spec.unique_key.is_empty());
        for (header, needle) in [
            (
                "-- @materialized: incremental\n-- @incremental_strategy: insert_overwrite",
                "it needs `@partition_by`",
            ),
            (
                "-- @materialized: incremental\n-- @partition_by: day\n-- @incremental_strategy: replace",
                "line 3: incremental_strategy `replace` is not one of merge, insert_overwrite",
            ),
            (
                "-- @partition_by: day\n-- @incremental_strategy: insert_overwrite",
                "apply to `@materialized: incremental` stages only",
            ),
            (
                "-- @materialized: incremental\n-- @partition_by: day",
                "needs `unique_key`",
            ),
        ] {
            let e = load_spec("t", &sql, &format!("{header}\nSELECT 1 AS day"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("t.sql") && e.contains(needle), "{header}: {e}");
        }
    }

    #[test]
    fn cluster_by_is_read_and_only_allowed_on_table_stages() {
        let dir = tempfile::tempdir().unwrap();
        let sql = dir.path().join("t.sql");
        let spec = load_spec("t", &sql, "-- @cluster_by: customer_id, day\nSELECT 1").unwrap();
        assert_eq!(spec.cluster_by, vec!["customer_id", "day"]);
        for kind in ["view", "incremental\n-- @unique_key: a"] {
            let e = load_spec(
                "t",
                &sql,
                &format!("-- @materialized: {kind}\n-- @cluster_by: a\nSELECT 1 AS a"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("t.sql") && e.contains("@cluster_by"), "{e}");
        }
    }

    #[test]
    fn settings_live_in_the_sidecar_or_the_header_but_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let sql = dir.path().join("t.sql");
        let toml = dir.path().join("t.toml");
        std::fs::write(
            &toml,
            "description = \"Orders\"\nmaterialized = \"incremental\"\nunique_key = [\"a\", \"b\"]\n\
             incremental_column = \"b\"\non_schema_change = \"fail\"\ntags = [\"nightly\"]\n",
        )
        .unwrap();
        let spec = load_spec("t", &sql, "-- prose\nSELECT 1 AS a, 2 AS b").unwrap();
        assert_eq!(spec.description.as_deref(), Some("Orders"));
        assert_eq!(spec.materialized, Materialized::Incremental);
        assert_eq!(spec.unique_key, ["a", "b"]);
        assert_eq!(spec.incremental_column.as_deref(), Some("b"));
        assert_eq!(spec.on_schema_change, OnSchemaChange::Fail);
        assert_eq!(spec.tags, ["nightly"]);

        // The same setting in both places: which one counts would be a guess.
        let e = load_spec("t", &sql, "-- @materialized: table\nSELECT 1 AS a")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml")
                && e.contains("`materialized` is set here and in the header of")
                && e.contains("(line 1)"),
            "{e}"
        );
        // A bad value in the sidecar names the file and the choices; the combination is
        // checked across both places.
        std::fs::write(&toml, "materialized = \"tabel\"\n").unwrap();
        let e = load_spec("t", &sql, "SELECT 1").unwrap_err().to_string();
        assert!(
            e.contains("t.toml") && e.contains("materialized `tabel` is not one of table, view, incremental"),
            "{e}"
        );
        std::fs::write(&toml, "materialized = \"view\"\n").unwrap();
        let e = load_spec("t", &sql, "-- @cluster_by: a\nSELECT 1 AS a")
            .unwrap_err()
            .to_string();
        assert!(e.contains("@cluster_by"), "{e}");
        std::fs::write(&toml, "cluster_by = [\"a\"]\ncolour = \"red\"\n").unwrap();
        let e = load_spec("t", &sql, "SELECT 1 AS a").unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("colour"), "{e}");
    }
}
