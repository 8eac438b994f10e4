//! What BI tools and database drivers expect of a PostgreSQL server, beyond what
//! `datafusion-postgres` provides: the functions their connect and metadata queries call, a
//! PostgreSQL-style `information_schema.columns`, `pg_index` key columns as arrays, and
//! rewrites of PostgreSQL syntax DataFusion cannot plan.
//!
//! Who needs what (each checked with the real client in `tests/integration/serve_clients.rs`):
//!
//! - SQLAlchemy parses `version()` ([`VERSION`]) at connect, and reflects with
//!   `NOT LIKE ... ESCAPE '/'` ([`like_escape`]), `pg_get_serial_sequence`, correlated
//!   subqueries in its column query, and `unnest`/`generate_subscripts` of `pg_index.indkey`;
//! - pgJDBC's `getPrimaryKeys` selects `(information_schema._pg_expandarray(i.indkey)).n`,
//!   and `getTypeInfo` filters `pg_type` with a correlated boolean subquery and compares
//!   `typinput` with `'array_in'::regproc`;
//! - Grafana reads `current_setting('search_path')` and `server_version_num`, expands the
//!   search path with `string_to_array(...)` and `generate_series(...)` in `FROM`, and sorts
//!   its table list by an `IN (subquery)`;
//! - Grafana and Metabase show `information_schema.columns.data_type` / `udt_name` as column
//!   types, so they carry PostgreSQL type names ([`pg_type_names`]) instead of Arrow's, and
//!   Metabase asks `has_table_privilege` which tables are writable ([`has_privilege`]).
//!
//! [`register`] installs the functions and catalog pieces on a session; [`parse`] reads a
//! statement text into syntax trees with the [`rewrite`]s applied; `current_setting` reports
//! the connection's settings ([`session`]).

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BooleanArray, Int16Builder, Int32Array, Int32Builder, ListArray,
    ListBuilder, RecordBatch, StringArray, StringBuilder, StructArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::catalog::information_schema::{INFORMATION_SCHEMA, InformationSchemaProvider};
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemTable, SchemaProvider, TableFunction, TableProvider,
};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, DataType as SqlDataType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, GroupByExpr, Ident, ObjectName, OrderBy, OrderByKind, Query, Select,
    SelectItem, SetExpr, Statement, TableAlias, TableAliasColumnDef, TableFactor, TableWithJoins, Value, VisitMut,
    VisitorMut, visit_expressions, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion_postgres::arrow_pg::datatypes::into_pg_type;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::pgwire::api::Type;
use tokio::sync::OnceCell;

use super::session;

/// What `version()` returns: PostgreSQL's format (clients such as SQLAlchemy parse the
/// release out of it), naming patron and the platform it runs on.
pub static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "PostgreSQL {} on {}-{}, compiled by rustc (patron {})",
        session::PG_VERSION,
        std::env::consts::ARCH,
        std::env::consts::OS,
        env!("CARGO_PKG_VERSION")
    )
});

/// Installs the compatibility functions and catalog pieces on `ctx` (after
/// `setup_pg_catalog` and the `datafusion-postgres` function set, whose `version()` this
/// replaces): `version()`, `current_setting(name [, missing_ok])` answered by `setting`,
/// `pg_get_serial_sequence`, `like_escape`, `_pg_expandarray`, an `information_schema`
/// whose `columns` carry PostgreSQL type names, and `pg_catalog.pg_index` with its key
/// vectors as arrays.
pub fn register(ctx: &SessionContext) -> Result<(), DataFusionError> {
    register_current_setting(ctx, |name| session::lookup(&HashMap::new(), name).ok());
    ctx.register_udf(ScalarUDF::new_from_impl(ToRegtypeUdf::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(LikeEscapeUdf::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(ExpandArrayUdf::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObjectUdf::new()));
    for name in [
        "has_table_privilege",
        "has_any_column_privilege",
        "has_column_privilege",
        "has_schema_privilege",
        "has_database_privilege",
    ] {
        ctx.register_udf(ScalarUDF::new_from_impl(PrivilegeUdf::new(name)));
    }
    let any = || Signature::variadic_any(Volatility::Stable);
    for (name, value, signature) in [
        (
            "version",
            ScalarValue::Utf8(Some(VERSION.clone())),
            Signature::exact(vec![], Volatility::Immutable),
        ),
        (
            "pg_get_serial_sequence",
            ScalarValue::Utf8(None),
            Signature::any(2, Volatility::Stable),
        ),
        ("pg_get_indexdef", ScalarValue::Utf8(None), any()),
        ("pg_collation_is_visible", ScalarValue::Boolean(Some(true)), any()),
    ] {
        ctx.register_udf(ScalarUDF::new_from_impl(ConstantUdf::new(name, value, signature)));
    }

    let state = ctx.state_ref();
    let mut state = state.write();
    let catalog_list = Arc::clone(state.catalog_list());
    let table_functions = state.table_functions().clone();
    // DataFusion answers `information_schema` itself while this option is on; off, the
    // schema registered below answers instead (`SHOW TABLES` and `SHOW COLUMNS` read it).
    state.config_mut().options_mut().catalog.information_schema = false;
    drop(state);

    for name in catalog_list.catalog_names() {
        let Some(catalog) = catalog_list.catalog(&name) else {
            continue;
        };
        catalog_list.register_catalog(
            name,
            Arc::new(WithInformationSchema {
                inner: Arc::clone(&catalog),
                information_schema: Arc::new(PgInformationSchema {
                    catalog_list: Arc::downgrade(&catalog_list),
                    table_functions: table_functions.clone(),
                }),
            }),
        );
        if let Some(pg_catalog) = catalog.schema("pg_catalog") {
            catalog.register_schema(
                "pg_catalog",
                Arc::new(PgCatalogFixes {
                    inner: pg_catalog,
                    tables: Default::default(),
                }),
            )?;
        }
    }
    Ok(())
}

/// Registers `current_setting(name [, missing_ok])` on `ctx`, answered by `setting` (a
/// statement's session registers it with its connection's own settings).
pub fn register_current_setting(
    ctx: &SessionContext,
    setting: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) {
    ctx.register_udf(ScalarUDF::new_from_impl(CurrentSettingUdf::new(Arc::new(setting))));
}

// ---------------------------------------------------------------------------------------
// Type names

/// PostgreSQL's names for the type an Arrow column is sent as (the mapping the wire
/// protocol uses, `arrow_pg::datatypes::into_pg_type`): the SQL-standard name
/// `information_schema.columns.data_type` shows (`bigint`, `double precision`,
/// `timestamp without time zone`, `ARRAY`...) and the internal one in `udt_name` (`int8`,
/// `float8`, `timestamp`, `_text`...). Types without a PostgreSQL counterpart are `text`.
pub fn pg_type_names(data_type: &DataType) -> (String, String) {
    let ty = into_pg_type(data_type).unwrap_or(Type::TEXT);
    let udt = ty.name().to_string();
    let sql = if udt.starts_with('_') {
        "ARRAY"
    } else {
        match ty {
            Type::BOOL => "boolean",
            Type::INT2 => "smallint",
            Type::INT4 => "integer",
            Type::INT8 => "bigint",
            Type::FLOAT4 => "real",
            Type::FLOAT8 => "double precision",
            Type::VARCHAR => "character varying",
            Type::BPCHAR => "character",
            Type::CHAR => "\"char\"",
            Type::TIME => "time without time zone",
            Type::TIMETZ => "time with time zone",
            Type::TIMESTAMP => "timestamp without time zone",
            Type::TIMESTAMPTZ => "timestamp with time zone",
            Type::UNKNOWN => "unknown",
            _ => udt.as_str(),
        }
    };
    (sql.to_string(), udt)
}

// ---------------------------------------------------------------------------------------
// information_schema

/// A catalog with [`PgInformationSchema`] reachable by name but, as with DataFusion's own,
/// not among its listed schemas: `pg_namespace` and `pg_class` list the catalog's schemas,
/// and clients that list "visible" tables (`pg_table_is_visible`, always true here) would
/// otherwise show `information_schema` views among the published tables.
#[derive(Debug)]
struct WithInformationSchema {
    inner: Arc<dyn CatalogProvider>,
    information_schema: Arc<dyn SchemaProvider>,
}

impl CatalogProvider for WithInformationSchema {
    fn schema_names(&self) -> Vec<String> {
        self.inner.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name.eq_ignore_ascii_case(INFORMATION_SCHEMA) {
            return Some(Arc::clone(&self.information_schema));
        }
        self.inner.schema(name)
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>, DataFusionError> {
        self.inner.register_schema(name, schema)
    }

    fn deregister_schema(&self, name: &str, cascade: bool) -> Result<Option<Arc<dyn SchemaProvider>>, DataFusionError> {
        self.inner.deregister_schema(name, cascade)
    }
}

/// `information_schema` as DataFusion builds it, except `columns`, which has PostgreSQL's
/// type names, 1-based positions and the `udt_*` columns clients read.
#[derive(Debug)]
struct PgInformationSchema {
    /// Weak: this schema lives inside one of the list's catalogs.
    catalog_list: Weak<dyn CatalogProviderList>,
    table_functions: std::collections::HashMap<String, Arc<TableFunction>>,
}

impl PgInformationSchema {
    fn list(&self) -> Result<Arc<dyn CatalogProviderList>, DataFusionError> {
        self.catalog_list
            .upgrade()
            .ok_or_else(|| DataFusionError::Internal("the session's catalogs are gone".into()))
    }

    fn datafusion(&self) -> Result<InformationSchemaProvider, DataFusionError> {
        Ok(InformationSchemaProvider::new(self.list()?).with_table_functions(self.table_functions.clone()))
    }

    async fn columns(&self) -> Result<Arc<dyn TableProvider>, DataFusionError> {
        let list = self.list()?;
        let mut rows = ColumnsBuilder::default();
        for catalog_name in list.catalog_names() {
            let Some(catalog) = list.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                if schema_name == INFORMATION_SCHEMA {
                    continue;
                }
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    if let Some(table) = schema.table(&table_name).await? {
                        for (i, field) in table.schema().fields().iter().enumerate() {
                            rows.add(&catalog_name, &schema_name, &table_name, i + 1, field);
                        }
                    }
                }
            }
        }
        let batch = rows.finish()?;
        Ok(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))
    }
}

#[async_trait]
impl SchemaProvider for PgInformationSchema {
    fn table_names(&self) -> Vec<String> {
        self.datafusion().map(|p| p.table_names()).unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        if name.eq_ignore_ascii_case("columns") {
            return self.columns().await.map(Some);
        }
        self.datafusion()?.table(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.datafusion().is_ok_and(|p| p.table_exist(name))
    }
}

/// The rows of `information_schema.columns`, in PostgreSQL's column order (the subset
/// DataFusion and clients know about).
#[derive(Default)]
struct ColumnsBuilder {
    catalog: StringBuilder,
    schema: StringBuilder,
    table: StringBuilder,
    column: StringBuilder,
    position: Int32Builder,
    nullable: StringBuilder,
    data_type: StringBuilder,
    octet_length: Int32Builder,
    precision: Int32Builder,
    radix: Int32Builder,
    scale: Int32Builder,
    datetime_precision: Int32Builder,
    udt_name: StringBuilder,
}

impl ColumnsBuilder {
    fn add(&mut self, catalog: &str, schema: &str, table: &str, position: usize, field: &Field) {
        let (data_type, udt_name) = pg_type_names(field.data_type());
        self.catalog.append_value(catalog);
        self.schema.append_value(schema);
        self.table.append_value(table);
        self.column.append_value(field.name());
        self.position.append_value(i32::try_from(position).unwrap_or(i32::MAX));
        self.nullable
            .append_value(if field.is_nullable() { "YES" } else { "NO" });
        // PostgreSQL's values for its own types (what `psql -c '\d information_schema.columns'`
        // shows for a text, integer, float, numeric or timestamp column).
        let (octets, precision, radix, scale, datetime) = match udt_name.as_str() {
            "text" | "varchar" | "bpchar" => (Some(1_073_741_824), None, None, None, None),
            "int2" => (None, Some(16), Some(2), Some(0), None),
            "int4" => (None, Some(32), Some(2), Some(0), None),
            "int8" => (None, Some(64), Some(2), Some(0), None),
            "float4" => (None, Some(24), Some(2), None, None),
            "float8" => (None, Some(53), Some(2), None, None),
            "numeric" => match field.data_type() {
                DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
                    (None, Some(i32::from(*p)), Some(10), Some(i32::from(*s)), None)
                }
                _ => (None, None, Some(10), None, None),
            },
            "date" => (None, None, None, None, Some(0)),
            "time" | "timetz" | "timestamp" | "timestamptz" | "interval" => (None, None, None, None, Some(6)),
            _ => (None, None, None, None, None),
        };
        self.data_type.append_value(data_type);
        self.octet_length.append_option(octets);
        self.precision.append_option(precision);
        self.radix.append_option(radix);
        self.scale.append_option(scale);
        self.datetime_precision.append_option(datetime);
        self.udt_name.append_value(udt_name);
    }

    fn finish(mut self) -> Result<RecordBatch, DataFusionError> {
        let rows = self.catalog.len();
        let text = |values: Vec<Option<&str>>| Arc::new(StringArray::from(values)) as ArrayRef;
        let same = |v: Option<&str>| text(vec![v; rows]);
        let ints = |b: &mut Int32Builder| Arc::new(b.finish()) as ArrayRef;
        let columns: Vec<(&str, DataType, bool, ArrayRef)> = vec![
            ("table_catalog", DataType::Utf8, false, Arc::new(self.catalog.finish())),
            ("table_schema", DataType::Utf8, false, Arc::new(self.schema.finish())),
            ("table_name", DataType::Utf8, false, Arc::new(self.table.finish())),
            ("column_name", DataType::Utf8, false, Arc::new(self.column.finish())),
            ("ordinal_position", DataType::Int32, false, ints(&mut self.position)),
            ("column_default", DataType::Utf8, true, same(None)),
            ("is_nullable", DataType::Utf8, false, Arc::new(self.nullable.finish())),
            ("data_type", DataType::Utf8, false, Arc::new(self.data_type.finish())),
            (
                "character_maximum_length",
                DataType::Int32,
                true,
                Arc::new(Int32Array::new_null(rows)),
            ),
            (
                "character_octet_length",
                DataType::Int32,
                true,
                ints(&mut self.octet_length),
            ),
            ("numeric_precision", DataType::Int32, true, ints(&mut self.precision)),
            ("numeric_precision_radix", DataType::Int32, true, ints(&mut self.radix)),
            ("numeric_scale", DataType::Int32, true, ints(&mut self.scale)),
            (
                "datetime_precision",
                DataType::Int32,
                true,
                ints(&mut self.datetime_precision),
            ),
            ("interval_type", DataType::Utf8, true, same(None)),
            (
                "udt_catalog",
                DataType::Utf8,
                true,
                Arc::new(StringArray::from(vec![None::<&str>; rows])),
            ),
            ("udt_schema", DataType::Utf8, false, same(Some("pg_catalog"))),
            ("udt_name", DataType::Utf8, false, Arc::new(self.udt_name.finish())),
            ("is_identity", DataType::Utf8, false, same(Some("NO"))),
            ("identity_generation", DataType::Utf8, true, same(None)),
            ("is_generated", DataType::Utf8, false, same(Some("NEVER"))),
            ("generation_expression", DataType::Utf8, true, same(None)),
            ("is_updatable", DataType::Utf8, false, same(Some("NO"))),
        ];
        let schema: SchemaRef = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(name, ty, nullable, _)| Field::new(*name, ty.clone(), *nullable))
                .collect::<Vec<_>>(),
        ));
        Ok(RecordBatch::try_new(
            schema,
            columns.into_iter().map(|(_, _, _, array)| array).collect(),
        )?)
    }
}

// ---------------------------------------------------------------------------------------
// pg_catalog

/// `pg_catalog` as `datafusion-postgres` provides it, with the `int2vector`/`oidvector`
/// columns of `pg_index` (kept as text such as `1 2` there) turned into arrays, as
/// PostgreSQL's `unnest`, `generate_subscripts` and `_pg_expandarray` take them, and
/// `pg_class` with the columns it lacks that clients select ([`PG_CLASS_MISSING`]).
#[derive(Debug)]
struct PgCatalogFixes {
    inner: Arc<dyn SchemaProvider>,
    tables: OnceCell<Option<Arc<dyn TableProvider>>>,
}

/// `pg_index`'s vector columns: name and element type (`int2vector` or `oidvector`).
const PG_INDEX_VECTORS: &[(&str, DataType)] = &[
    ("indkey", DataType::Int16),
    ("indcollation", DataType::Int32),
    ("indclass", DataType::Int32),
    ("indoption", DataType::Int16),
];

impl PgCatalogFixes {
    async fn pg_index(&self) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let table = self
            .tables
            .get_or_try_init(|| async {
                let Some(table) = self.inner.table("pg_index").await? else {
                    return Ok::<_, DataFusionError>(None);
                };
                let Some(memory) = table.downcast_ref::<MemTable>() else {
                    return Ok(Some(table));
                };
                let mut batches = Vec::new();
                for partition in &memory.batches {
                    for batch in partition.read().await.iter() {
                        batches.push(vectors_to_arrays(batch)?);
                    }
                }
                let schema = match batches.first() {
                    Some(b) => b.schema(),
                    None => return Ok(Some(table)),
                };
                Ok(Some(
                    Arc::new(MemTable::try_new(schema, vec![batches])?) as Arc<dyn TableProvider>
                ))
            })
            .await?;
        Ok(table.clone())
    }
}

/// `pg_class` columns `datafusion-postgres` leaves out (access privileges and storage
/// options, both `text[]` and NULL for tables without any), selected by SQLAlchemy's
/// index reflection and pgJDBC.
const PG_CLASS_MISSING: &[&str] = &["relacl", "reloptions"];

/// A table with extra columns that are always NULL (`text[]`), for catalog columns
/// clients select that have no data here.
#[derive(Debug)]
struct WithNullColumns {
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
}

impl WithNullColumns {
    fn wrap(inner: Arc<dyn TableProvider>, extra: &[&str]) -> Arc<dyn TableProvider> {
        let base = inner.schema();
        let missing: Vec<&&str> = extra.iter().filter(|n| base.field_with_name(n).is_err()).collect();
        if missing.is_empty() {
            return inner;
        }
        let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
        for name in missing {
            fields.push(Field::new(*name, DataType::new_list(DataType::Utf8, true), true));
        }
        Arc::new(WithNullColumns {
            inner,
            schema: Arc::new(Schema::new_with_metadata(fields, base.metadata().clone())),
        })
    }
}

#[async_trait]
impl TableProvider for WithNullColumns {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[datafusion::prelude::Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let own = self.inner.schema().fields().len();
        let wanted: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let mut read: Vec<usize> = wanted.iter().copied().filter(|i| *i < own).collect();
        read.dedup();
        let input = self.inner.scan(state, Some(&read), &[], limit).await?;
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(wanted.len());
        for i in wanted {
            let field = self.schema.field(i);
            let expr: Arc<dyn PhysicalExpr> = match read.iter().position(|r| *r == i) {
                Some(at) if i < own => Arc::new(Column::new(field.name(), at)),
                _ => Arc::new(Literal::new(ScalarValue::try_from(field.data_type())?)),
            };
            exprs.push((expr, field.name().clone()));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, input)?))
    }
}

/// `batch` with each [`PG_INDEX_VECTORS`] text column parsed into a list.
fn vectors_to_arrays(batch: &RecordBatch) -> Result<RecordBatch, DataFusionError> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let vector = PG_INDEX_VECTORS.iter().find(|(name, _)| name == field.name());
        match (vector, column.as_string_opt::<i32>()) {
            (Some((_, element)), Some(text)) => {
                let list = parse_vectors(text, element)?;
                fields.push(Field::new(field.name(), list.data_type().clone(), true));
                columns.push(list);
            }
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(Arc::clone(column));
            }
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// Parses PostgreSQL vector text (`1 2`, or the array form `{1,2}`/`[1, 2]`) into a list of
/// `element` (Int16 or Int32).
fn parse_vectors(
    text: &datafusion::arrow::array::StringArray,
    element: &DataType,
) -> Result<ArrayRef, DataFusionError> {
    let numbers = |s: &str| -> Result<Vec<i64>, DataFusionError> {
        s.split(|c: char| c.is_whitespace() || c == ',' || matches!(c, '{' | '}' | '[' | ']'))
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<i64>()
                    .map_err(|e| DataFusionError::Internal(format!("pg_catalog vector {s:?}: {e}")))
            })
            .collect()
    };
    let out: ArrayRef = if *element == DataType::Int16 {
        let mut b = ListBuilder::new(Int16Builder::new());
        for value in text.iter() {
            match value {
                Some(s) => {
                    for n in numbers(s)? {
                        b.values().append_value(i16::try_from(n).unwrap_or(i16::MAX));
                    }
                    b.append(true);
                }
                None => b.append(false),
            }
        }
        Arc::new(b.finish())
    } else {
        let mut b = ListBuilder::new(Int32Builder::new());
        for value in text.iter() {
            match value {
                Some(s) => {
                    for n in numbers(s)? {
                        // oids above i32::MAX wrap, as the crate stores oid columns as Int32.
                        b.values().append_value(n as i32);
                    }
                    b.append(true);
                }
                None => b.append(false),
            }
        }
        Arc::new(b.finish())
    };
    Ok(out)
}

#[async_trait]
impl SchemaProvider for PgCatalogFixes {
    fn owner_name(&self) -> Option<&str> {
        self.inner.owner_name()
    }

    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        if name.eq_ignore_ascii_case("pg_index") {
            return self.pg_index().await;
        }
        let table = self.inner.table(name).await?;
        if name.eq_ignore_ascii_case("pg_class")
            && let Some(table) = table
        {
            return Ok(Some(WithNullColumns::wrap(table, PG_CLASS_MISSING)));
        }
        Ok(table)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

// ---------------------------------------------------------------------------------------
// Functions

/// Implements `PartialEq`, `Eq` and `Hash` of a UDF struct by its name (what DataFusion
/// compares functions by), for structs holding closures.
macro_rules! udf_identity {
    ($ty:ty) => {
        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.name() == other.name()
            }
        }
        impl Eq for $ty {}
        impl Hash for $ty {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.name().hash(state);
            }
        }
    };
}

/// A setting lookup: the value of a run-time setting by name, `None` if there is none.
type SettingLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// `current_setting(name [, missing_ok])`: the value of a setting; an unknown name is
/// PostgreSQL's error (SQLSTATE 42704 there), or NULL with `missing_ok` true.
struct CurrentSettingUdf {
    signature: Signature,
    lookup: SettingLookup,
}

impl fmt::Debug for CurrentSettingUdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentSettingUdf")
    }
}

impl CurrentSettingUdf {
    fn new(lookup: SettingLookup) -> Self {
        CurrentSettingUdf {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
                ],
                Volatility::Stable,
            ),
            lookup,
        }
    }
}
udf_identity!(CurrentSettingUdf);

impl ScalarUDFImpl for CurrentSettingUdf {
    fn name(&self) -> &str {
        "current_setting"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(names) = arrays.first() else {
            return exec_err!("current_setting takes a setting name");
        };
        let names = cast(names, &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let missing_ok = match arrays.get(1) {
            Some(a) => Some(cast(a, &DataType::Boolean)?.as_boolean().clone()),
            None => None,
        };
        let mut out = StringBuilder::new();
        for i in 0..names.len() {
            if names.is_null(i) {
                out.append_null();
                continue;
            }
            let name = names.value(i);
            match (self.lookup)(name) {
                Some(value) => out.append_value(value),
                None if missing_ok
                    .as_ref()
                    .is_some_and(|m: &BooleanArray| m.is_valid(i) && m.value(i)) =>
                {
                    out.append_null()
                }
                None => return exec_err!("unrecognized configuration parameter \"{name}\""),
            }
        }
        shaped_like(&args.args, Arc::new(out.finish()))
    }
}

/// A function's result shaped like its arguments: a scalar when every argument was one
/// (`values_to_arrays` made one-row arrays of them), else the array.
fn shaped_like(args: &[ColumnarValue], array: ArrayRef) -> Result<ColumnarValue, DataFusionError> {
    if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
        return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?));
    }
    Ok(ColumnarValue::Array(array))
}

/// The oid of a built-in type by name, as `to_regtype(name)` gives it (`None`: no such
/// type): PostgreSQL's internal names (`int4`, `_text`), the SQL spellings of the common
/// ones (`integer`, `double precision`), optionally qualified with `pg_catalog.`.
pub fn type_oid(name: &str) -> Option<i32> {
    static BY_NAME: LazyLock<HashMap<String, u32>> = LazyLock::new(|| {
        (0..=20_000u32)
            .filter_map(|oid| Type::from_oid(oid).map(|t| (t.name().to_string(), oid)))
            .collect()
    });
    let name = name.trim().trim_matches('"').to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    let internal = match name {
        "integer" | "int" => "int4",
        "bigint" => "int8",
        "smallint" => "int2",
        "boolean" => "bool",
        "real" => "float4",
        "double precision" => "float8",
        "character varying" => "varchar",
        "character" => "bpchar",
        "decimal" => "numeric",
        "timestamp without time zone" => "timestamp",
        "timestamp with time zone" => "timestamptz",
        "time without time zone" => "time",
        "time with time zone" => "timetz",
        other => other,
    };
    BY_NAME.get(internal).and_then(|oid| i32::try_from(*oid).ok())
}

/// `to_regtype(name)`: [`type_oid`] (psycopg 3 looks types up with it).
#[derive(Debug)]
struct ToRegtypeUdf {
    signature: Signature,
}

impl ToRegtypeUdf {
    fn new() -> Self {
        ToRegtypeUdf {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Stable),
        }
    }
}
udf_identity!(ToRegtypeUdf);

impl ScalarUDFImpl for ToRegtypeUdf {
    fn name(&self) -> &str {
        "to_regtype"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let names = args.args[0].to_array(args.number_rows)?;
        let names = cast(&names, &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let oids: Int32Array = names.iter().map(|n| n.and_then(type_oid)).collect();
        Ok(ColumnarValue::Array(Arc::new(oids)))
    }
}

/// Converts a LIKE `pattern` written with `escape` as its escape character into the
/// default form, where backslash escapes (PostgreSQL's `like_escape`; an empty `escape`
/// means no escape character). PostgreSQL's error when the pattern ends in the escape
/// character or `escape` is longer than one character.
pub fn like_escape(pattern: &str, escape: &str) -> Result<String, String> {
    let mut chars = escape.chars();
    let escape = match (chars.next(), chars.next()) {
        (None, _) => None,
        (Some(c), None) => Some(c),
        _ => return Err("invalid escape string: escape string must be empty or one character".into()),
    };
    let mut out = String::with_capacity(pattern.len() + 2);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            match chars.next() {
                Some(next @ ('%' | '_' | '\\')) => {
                    out.push('\\');
                    out.push(next);
                }
                Some(next) => out.push(next),
                None => return Err("LIKE pattern must not end with escape character".into()),
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// `like_escape(pattern, escape)`: [`like_escape`] as a function, which
/// [`rewrite`] puts in place of `LIKE pattern ESCAPE 'c'` (DataFusion only runs backslash).
#[derive(Debug)]
struct LikeEscapeUdf {
    signature: Signature,
}

impl LikeEscapeUdf {
    fn new() -> Self {
        LikeEscapeUdf {
            signature: Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Immutable),
        }
    }
}
udf_identity!(LikeEscapeUdf);

impl ScalarUDFImpl for LikeEscapeUdf {
    fn name(&self) -> &str {
        "like_escape"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [patterns, escapes] = arrays.as_slice() else {
            return exec_err!("like_escape takes a pattern and an escape character");
        };
        let patterns = patterns.as_string::<i32>();
        let escapes = escapes.as_string::<i32>();
        let mut out = StringBuilder::new();
        for i in 0..patterns.len() {
            if patterns.is_null(i) || escapes.is_null(i) {
                out.append_null();
                continue;
            }
            match like_escape(patterns.value(i), escapes.value(i)) {
                Ok(p) => out.append_value(p),
                Err(e) => return exec_err!("{e}"),
            }
        }
        shaped_like(&args.args, Arc::new(out.finish()))
    }
}

/// `_pg_expandarray(array)`: PostgreSQL's `information_schema._pg_expandarray` as a list of
/// `(x, n)` records, element and 1-based position; [`rewrite`] wraps calls in `unnest`, so
/// it yields one row per element as PostgreSQL's set-returning original does.
#[derive(Debug)]
struct ExpandArrayUdf {
    signature: Signature,
}

impl ExpandArrayUdf {
    fn new() -> Self {
        ExpandArrayUdf {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    fn record_fields(element: &DataType) -> Fields {
        Fields::from(vec![
            Field::new("x", element.clone(), true),
            Field::new("n", DataType::Int32, false),
        ])
    }
}
udf_identity!(ExpandArrayUdf);

impl ScalarUDFImpl for ExpandArrayUdf {
    fn name(&self) -> &str {
        "_pg_expandarray"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType, DataFusionError> {
        match args.first() {
            Some(DataType::List(element)) => Ok(DataType::new_list(
                DataType::Struct(Self::record_fields(element.data_type())),
                true,
            )),
            Some(other) => plan_err!("_pg_expandarray takes an array, not {other}"),
            None => plan_err!("_pg_expandarray takes an array"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(list) = arrays.first().and_then(|a| a.as_list_opt::<i32>()) else {
            return exec_err!("_pg_expandarray takes an array");
        };
        let values = list.values();
        // Position of every child value within its list (values outside any list stay 0).
        let mut positions = vec![0i32; values.len()];
        for window in list.offsets().windows(2) {
            let (start, end) = (window[0].max(0) as usize, window[1].max(0) as usize);
            for (n, slot) in positions.iter_mut().take(end).skip(start).enumerate() {
                *slot = i32::try_from(n + 1).unwrap_or(i32::MAX);
            }
        }
        let fields = Self::record_fields(values.data_type());
        let records = StructArray::try_new(
            fields.clone(),
            vec![Arc::clone(values), Arc::new(Int32Array::from(positions))],
            None,
        )?;
        let out = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Struct(fields), true)),
            list.offsets().clone(),
            Arc::new(records),
            list.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `json_build_object(key, value, ...)`: a JSON object as text, in PostgreSQL's layout
/// (`{"a" : 1, "b" : "x"}`).
#[derive(Debug)]
struct JsonBuildObjectUdf {
    signature: Signature,
}

impl JsonBuildObjectUdf {
    fn new() -> Self {
        JsonBuildObjectUdf {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}
udf_identity!(JsonBuildObjectUdf);

/// A scalar as JSON text.
fn json_value(value: &ScalarValue) -> String {
    if value.is_null() {
        return "null".into();
    }
    match value {
        ScalarValue::Boolean(Some(b)) => b.to_string(),
        ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_)
        | ScalarValue::Decimal128(..) => value.to_string(),
        ScalarValue::Float32(Some(f)) if f.is_finite() => value.to_string(),
        ScalarValue::Float64(Some(f)) if f.is_finite() => value.to_string(),
        other => serde_json::Value::String(other.to_string()).to_string(),
    }
}

impl ScalarUDFImpl for JsonBuildObjectUdf {
    fn name(&self) -> &str {
        "json_build_object"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        if !args.args.len().is_multiple_of(2) {
            return exec_err!("argument list must have even number of elements");
        }
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::new();
        for row in 0..rows {
            let mut members = Vec::with_capacity(arrays.len() / 2);
            for pair in arrays.chunks(2) {
                let [key, value] = pair else {
                    return exec_err!("argument list must have even number of elements");
                };
                let key = ScalarValue::try_from_array(key, row)?;
                if key.is_null() {
                    return exec_err!("null value not allowed for object key");
                }
                let key = match key {
                    ScalarValue::Utf8(Some(k)) | ScalarValue::Utf8View(Some(k)) | ScalarValue::LargeUtf8(Some(k)) => k,
                    other => other.to_string(),
                };
                let value = json_value(&ScalarValue::try_from_array(value, row)?);
                members.push(format!("{} : {value}", serde_json::Value::String(key)));
            }
            out.append_value(format!("{{{}}}", members.join(", ")));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Privileges a client of `patron serve` has: reading and looking up, never writing or
/// creating (the server is read-only for everyone).
pub const READ_PRIVILEGES: &[&str] = &["SELECT", "USAGE", "CONNECT"];

/// True when every privilege in `list` (PostgreSQL's comma-separated form, each optionally
/// `WITH GRANT OPTION`) is one [`READ_PRIVILEGES`] has; grant options are never held.
pub fn has_privilege(list: &str) -> bool {
    list.split(',').all(|p| {
        let p = p.trim().to_ascii_uppercase();
        !p.ends_with("WITH GRANT OPTION") && READ_PRIVILEGES.contains(&p.as_str())
    })
}

/// `has_table_privilege([user,] object, [column,] privilege)` and its schema, database
/// and column siblings, answered by [`has_privilege`] for every user and object
/// (`datafusion-postgres` answers true to everything, writes included, so BI tools such
/// as Metabase would offer editing).
#[derive(Debug)]
struct PrivilegeUdf {
    name: &'static str,
    signature: Signature,
}

impl PrivilegeUdf {
    fn new(name: &'static str) -> Self {
        PrivilegeUdf {
            name,
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}
udf_identity!(PrivilegeUdf);

impl ScalarUDFImpl for PrivilegeUdf {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(privileges) = arrays.last().filter(|_| arrays.len() >= 2) else {
            return exec_err!("{} takes an object and a privilege", self.name);
        };
        let privileges = cast(privileges, &DataType::Utf8)?;
        let privileges = privileges.as_string::<i32>();
        let out: BooleanArray = (0..args.number_rows)
            .map(|i| privileges.is_valid(i).then(|| has_privilege(privileges.value(i))))
            .collect();
        shaped_like(&args.args, Arc::new(out))
    }
}

/// A function with a fixed answer: `version()` is [`VERSION`]; for what published tables
/// have, `pg_get_serial_sequence(table, column)` is NULL (no sequences, as PostgreSQL
/// answers for a column that is not serial), `pg_get_indexdef` is NULL (no indexes;
/// PostgreSQL answers NULL for an oid it does not know) and `pg_collation_is_visible` is
/// true (every collation is in `pg_catalog`, always on the search path).
#[derive(Debug)]
struct ConstantUdf {
    name: &'static str,
    value: ScalarValue,
    signature: Signature,
}

impl ConstantUdf {
    fn new(name: &'static str, value: ScalarValue, signature: Signature) -> Self {
        ConstantUdf { name, value, signature }
    }
}
udf_identity!(ConstantUdf);

impl ScalarUDFImpl for ConstantUdf {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

// ---------------------------------------------------------------------------------------
// SQL rewrites

/// Scalar functions clients call in `FROM` (`FROM string_to_array(...) s`), which
/// PostgreSQL treats as a one-row table; [`rewrite`] turns them into a subquery.
const SCALAR_FUNCTIONS_IN_FROM: &[&str] = &[
    "string_to_array",
    "current_setting",
    "current_schemas",
    "current_schema",
    "current_database",
    "version",
    "regexp_split_to_array",
];

/// Set-returning functions of one column, which PostgreSQL lets `FROM f(...) AS a` refer to
/// as the column `a`; DataFusion names the column `value`, so [`rewrite`] adds `a(a)`.
const SINGLE_COLUMN_TABLE_FUNCTIONS: &[&str] = &["generate_series"];

/// Parses a statement text the way the server runs it, as syntax trees only (no statement
/// is ever printed and parsed again): `datafusion-postgres`' parser, with its fixed
/// stand-ins for catalog queries of psql and others, unless the text calls
/// `current_setting` (its stand-in for Grafana's table list drops the search path); then
/// `plain` (the text parsed by sqlparser alone, already checked by the caller) with
/// [`rewrite`] and the crate's rewrite rules applied, in that order.
pub fn parse(sql: &str, plain: Result<Vec<Statement>, ParserError>) -> Result<Vec<Statement>, ParserError> {
    let theirs = PARSER.parse(sql);
    let Ok(plain) = plain else {
        return theirs;
    };
    if let Ok(theirs) = theirs
        && replaced_by_crate(&theirs, &plain)
        && !sql.to_ascii_lowercase().contains("current_setting")
    {
        return Ok(theirs);
    }
    Ok(plain
        .into_iter()
        .map(|mut statement| {
            rewrite(&mut statement);
            PARSER.rewrite(statement)
        })
        .collect())
}

static PARSER: LazyLock<PostgresCompatibilityParser> = LazyLock::new(PostgresCompatibilityParser::new);

/// True when `datafusion-postgres`' parser swapped (part of) the text for one of its fixed
/// stand-ins: its statements differ from its rewrite rules applied to the plain parse.
/// (The statements are printed only to be compared.)
fn replaced_by_crate(theirs: &[Statement], plain: &[Statement]) -> bool {
    theirs.len() != plain.len()
        || theirs
            .iter()
            .zip(plain)
            .any(|(t, p)| t.to_string() != PARSER.rewrite(p.clone()).to_string())
}

/// Rewrites PostgreSQL syntax DataFusion cannot plan into equivalents it can:
///
/// - `x [NOT] [I]LIKE p ESCAPE 'c'` -> `x LIKE like_escape(p, 'c')` (DataFusion only runs
///   the default backslash escape);
/// - `(expr).field` -> `get_field(expr, 'field')` (composite field access);
/// - `[information_schema.]_pg_expandarray(a)` -> `unnest(_pg_expandarray(a))` and
///   `generate_subscripts(a, d)` -> `unnest(generate_series(1, array_length(a, d)))`, the
///   set-returning functions of a select list;
/// - `user` -> `current_user`;
/// - in `FROM`: `string_to_array(...) s` and other scalar functions become a one-row
///   subquery, and `generate_series(...) AS i` names its column `i`;
/// - a boolean scalar subquery directly in a `WHERE` condition,
///   `(SELECT b FROM t WHERE w)`, becomes `EXISTS (SELECT 1 FROM t WHERE w AND b)`
///   (DataFusion cannot run a correlated subquery there; in a filter both are the same).
pub fn rewrite(statement: &mut Statement) {
    let _ = statement.visit(&mut Rewriter);
}

struct Rewriter;

impl VisitorMut for Rewriter {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        // Before the subqueries themselves are visited (and aggregated, below).
        predicates_of(&mut query.body, &mut |select| {
            if let Some(selection) = &mut select.selection {
                subqueries_to_exists(selection);
            }
        });
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        predicates_of(&mut query.body, &mut |select| {
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                    in_subqueries_to_array_has(e);
                }
            }
        });
        if let Some(OrderBy {
            kind: OrderByKind::Expressions(items),
            ..
        }) = &mut query.order_by
        {
            for item in items {
                in_subqueries_to_array_has(&mut item.expr);
            }
        }
        sort_keys_out_of_subqueries(query);
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, table_factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias,
            args: Some(args),
            ..
        } = table_factor
        else {
            return ControlFlow::Continue(());
        };
        let function = last_name(name);
        if SCALAR_FUNCTIONS_IN_FROM.contains(&function.as_str()) {
            let table = alias
                .as_ref()
                .map_or_else(|| Ident::new(function.clone()), |a| a.name.clone());
            let column = alias
                .as_ref()
                .and_then(|a| a.columns.first())
                .map_or_else(|| table.clone(), |c| c.name.clone());
            // (SELECT name(args) AS column) AS table
            let call = call(name.clone(), args.args.clone());
            let item = SelectItem::ExprWithAlias {
                expr: call,
                alias: column,
            };
            if let Some(subquery) = select_query(vec![item], vec![], None) {
                *table_factor = derived(subquery, table);
            }
        } else if SINGLE_COLUMN_TABLE_FUNCTIONS.contains(&function.as_str())
            && let Some(alias) = alias
            && alias.columns.is_empty()
        {
            alias.columns.push(TableAliasColumnDef {
                name: alias.name.clone(),
                data_type: None,
            });
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::Like {
                pattern, escape_char, ..
            }
            | Expr::ILike {
                pattern, escape_char, ..
            } => {
                if let Some(escape) = escape_char.take() {
                    if matches!(&escape.value, Value::SingleQuotedString(s) if s == "\\") {
                        *escape_char = Some(escape);
                    } else {
                        let client = std::mem::replace(&mut **pattern, Expr::Value(Value::Null.into()));
                        **pattern = function_call("like_escape", vec![client, Expr::Value(escape)]);
                    }
                }
            }
            Expr::CompoundFieldAccess { root, access_chain }
                if matches!(**root, Expr::Nested(_) | Expr::Function(_))
                    && matches!(access_chain.first(), Some(AccessExpr::Dot(Expr::Identifier(_)))) =>
            {
                let mut base = match &**root {
                    Expr::Nested(inner) => (**inner).clone(),
                    other => other.clone(),
                };
                let mut rest = std::mem::take(access_chain).into_iter().peekable();
                while let Some(AccessExpr::Dot(Expr::Identifier(field))) = rest.peek() {
                    let name = if field.quote_style.is_some() {
                        field.value.clone()
                    } else {
                        field.value.to_lowercase()
                    };
                    base = function_call(
                        "get_field",
                        vec![base, Expr::Value(Value::SingleQuotedString(name).into())],
                    );
                    rest.next();
                }
                let rest: Vec<AccessExpr> = rest.collect();
                *expr = if rest.is_empty() {
                    base
                } else {
                    Expr::CompoundFieldAccess {
                        root: Box::new(base),
                        access_chain: rest,
                    }
                };
            }
            Expr::Subquery(query) => {
                if let Some(e) = aggregated_subquery(query) {
                    *expr = e;
                }
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq | BinaryOperator::NotEq,
                right,
            } => {
                if is_regproc_text_column(left)
                    && let Some(name) = regproc_literal(right)
                {
                    **right = Expr::Value(Value::SingleQuotedString(name).into());
                } else if is_regproc_text_column(right)
                    && let Some(name) = regproc_literal(left)
                {
                    **left = Expr::Value(Value::SingleQuotedString(name).into());
                }
            }
            Expr::Function(function) => {
                let name = last_name(&function.name);
                let args = function_args(function);
                match (name.as_str(), args.as_slice()) {
                    ("_pg_expandarray", [array]) => {
                        let expanded = function_call("_pg_expandarray", vec![array.clone()]);
                        *expr = function_call("unnest", vec![expanded]);
                    }
                    ("generate_subscripts", [array, dim]) => {
                        let length = function_call("array_length", vec![array.clone(), dim.clone()]);
                        let series = function_call("generate_series", vec![number(1), length]);
                        *expr = function_call("unnest", vec![series]);
                    }
                    ("user", []) if matches!(function.args, FunctionArguments::None) => {
                        function.name = ObjectName::from(vec![Ident::new("current_user")]);
                    }
                    _ => {}
                }
            }
            Expr::Identifier(ident) if ident.quote_style.is_none() && ident.value.eq_ignore_ascii_case("user") => {
                *expr = Expr::Function(Function {
                    name: ObjectName::from(vec![Ident::new("current_user")]),
                    uses_odbc_syntax: false,
                    parameters: FunctionArguments::None,
                    args: FunctionArguments::None,
                    filter: None,
                    null_treatment: None,
                    over: None,
                    within_group: vec![],
                });
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// `pg_type` columns of type `regproc`, which `datafusion-postgres` keeps as the function's
/// name (`boolin`), as PostgreSQL displays them.
const REGPROC_TEXT_COLUMNS: &[&str] = &[
    "typinput",
    "typoutput",
    "typreceive",
    "typsend",
    "typmodin",
    "typmodout",
    "typanalyze",
];

fn is_regproc_text_column(expr: &Expr) -> bool {
    let name = match expr {
        Expr::Identifier(i) => &i.value,
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(i) => &i.value,
            None => return false,
        },
        _ => return false,
    };
    REGPROC_TEXT_COLUMNS.contains(&name.to_ascii_lowercase().as_str())
}

/// The function name of `'[schema.]name'::regproc`, as a `regproc` text column holds it.
fn regproc_literal(expr: &Expr) -> Option<String> {
    let Expr::Cast {
        expr: inner,
        data_type: SqlDataType::Custom(type_name, _),
        ..
    } = expr
    else {
        return None;
    };
    let Expr::Value(value) = inner.as_ref() else {
        return None;
    };
    let Value::SingleQuotedString(text) = &value.value else {
        return None;
    };
    if last_name(type_name) != "regproc" {
        return None;
    }
    let name = text.rsplit('.').next().unwrap_or(text);
    Some(name.trim_matches('"').to_string())
}

/// A correlated scalar subquery DataFusion cannot plan as written, in a form it can:
/// its single value wrapped in `max` (PostgreSQL requires at most one row, so that is the
/// row's value, or NULL for none), and conditions on the outer query alone moved out of
/// it into `CASE WHEN outer THEN (subquery) END`. `None` when `query` is not such a
/// subquery (uncorrelated, grouped, already aggregated, or more than a plain SELECT).
fn aggregated_subquery(query: &Query) -> Option<Expr> {
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [item] = select.projection.as_slice() else {
        return None;
    };
    let (value, alias) = match item {
        SelectItem::UnnamedExpr(e) => (e, None),
        SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
        _ => return None,
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
    if grouped || select.having.is_some() || select.distinct.is_some() || has_aggregate(value) {
        return None;
    }
    let inner = relation_names(select);
    if inner.is_empty() || !references_outer(&Expr::Subquery(Box::new(query.clone())), &inner) {
        return None;
    }
    let mut outer_only = Vec::new();
    let mut rest = Vec::new();
    if let Some(selection) = &select.selection {
        for term in conjuncts(selection) {
            if is_outer_only(&term, &inner) {
                outer_only.push(term);
            } else {
                rest.push(term);
            }
        }
    }
    let from = &select.from;
    let filter = and_all(rest);
    let subquery = if references_outer(value, &inner) {
        // DataFusion cannot run a subquery whose select list reads the outer row: read each
        // inner column with a subquery of its own, and keep PostgreSQL's NULL for no row.
        let mut unqualified = false;
        let mut built = true;
        let mut combined = value.clone();
        let _ = visit_expressions_mut(&mut combined, |e: &mut Expr| {
            match e {
                Expr::CompoundIdentifier(parts) if qualifier(parts).is_some_and(|q| inner.contains(&q)) => {
                    // (SELECT max(e) FROM from WHERE filter)
                    let read = SelectItem::UnnamedExpr(function_call("max", vec![e.clone()]));
                    match select_query(vec![read], from.clone(), filter.clone()) {
                        Some(read) => *e = Expr::Subquery(Box::new(read)),
                        None => built = false,
                    }
                }
                Expr::Identifier(_) => unqualified = true,
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
        if unqualified || !built {
            return None;
        }
        // CASE WHEN (SELECT count(*) FROM from WHERE filter) > 0 THEN combined END
        let count = SelectItem::UnnamedExpr(template("count(*)", vec![])?);
        let rows = Expr::Subquery(Box::new(select_query(vec![count], from.clone(), filter)?));
        template(
            "CASE WHEN __patron_arg_0 > 0 THEN __patron_arg_1 END",
            vec![rows, combined],
        )?
    } else {
        // (SELECT max(value) [AS alias] FROM from WHERE filter)
        let max = function_call("max", vec![value.clone()]);
        let item = match alias {
            Some(alias) => SelectItem::ExprWithAlias {
                expr: max,
                alias: alias.clone(),
            },
            None => SelectItem::UnnamedExpr(max),
        };
        Expr::Subquery(Box::new(select_query(vec![item], from.clone(), filter)?))
    };
    match and_all(outer_only) {
        None => Some(subquery),
        Some(condition) => template(
            "CASE WHEN __patron_arg_0 THEN __patron_arg_1 END",
            vec![condition, subquery],
        ),
    }
}

/// The names a SELECT's FROM clause makes available as qualifiers: aliases, and the last
/// part of table names (lower case).
fn relation_names(select: &Select) -> Vec<String> {
    let mut names = Vec::new();
    let mut add = |factor: &TableFactor| match factor {
        TableFactor::Table { name, alias, .. } => {
            names.push(last_name(name));
            if let Some(a) = alias {
                names.push(a.name.value.to_ascii_lowercase());
            }
        }
        TableFactor::Derived { alias: Some(a), .. } | TableFactor::Function { alias: Some(a), .. } => {
            names.push(a.name.value.to_ascii_lowercase())
        }
        _ => {}
    };
    for table in &select.from {
        add(&table.relation);
        for join in &table.joins {
            add(&join.relation);
        }
    }
    names
}

/// The qualifier of a qualified column reference (`t` in `s.t.c` or `t.c`), lower case.
fn qualifier(parts: &[Ident]) -> Option<String> {
    (parts.len() >= 2).then(|| parts[parts.len() - 2].value.to_ascii_lowercase())
}

/// True when `expr` has a qualified column whose qualifier is none of `inner`.
fn references_outer(expr: &Expr, inner: &[String]) -> bool {
    let mut found = false;
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(expr, |e| {
        if let Expr::CompoundIdentifier(parts) = e
            && qualifier(parts).is_some_and(|q| !inner.contains(&q))
        {
            found = true;
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// True when every column `expr` reads is qualified by a relation not in `inner` (and it
/// reads at least one, and has no subquery).
fn is_outer_only(expr: &Expr, inner: &[String]) -> bool {
    let mut outer = 0usize;
    let mut other = false;
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(expr, |e| {
        match e {
            Expr::CompoundIdentifier(parts) => match qualifier(parts) {
                Some(q) if !inner.contains(&q) => outer += 1,
                _ => other = true,
            },
            Expr::Identifier(_) | Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => other = true,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    outer > 0 && !other
}

/// The terms of a chain of ANDs.
fn conjuncts(expr: &Expr) -> Vec<Expr> {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut terms = conjuncts(left);
            terms.extend(conjuncts(right));
            terms
        }
        Expr::Nested(inner)
            if matches!(
                **inner,
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(inner)
        }
        other => vec![other.clone()],
    }
}

/// DataFusion cannot sort by an expression with a subquery (Grafana orders tables by
/// `CASE WHEN schema IN (SELECT ...) THEN 0 ELSE 1 END`): such a SELECT computes its sort
/// keys as extra columns of a subquery, and an outer SELECT of the original columns sorts
/// by them. Left alone when the select list has unnamed expressions or `*`, or DISTINCT.
fn sort_keys_out_of_subqueries(query: &mut Query) {
    let Some(OrderBy {
        kind: OrderByKind::Expressions(items),
        ..
    }) = &mut query.order_by
    else {
        return;
    };
    if !items.iter().any(|i| contains_subquery(&i.expr)) {
        return;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return;
    };
    if select.distinct.is_some() {
        return;
    }
    let mut names = Vec::with_capacity(select.projection.len());
    for item in &select.projection {
        names.push(match item {
            SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => i.clone(),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => match parts.last() {
                Some(i) => i.clone(),
                None => return,
            },
            _ => return,
        });
    }
    let mut inner = select.as_ref().clone();
    let mut keys = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let named = match &item.expr {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| names.get(i))
                    .cloned(),
                _ => None,
            },
            Expr::Identifier(id) if names.contains(id) => Some(id.clone()),
            _ => None,
        };
        keys.push(named.unwrap_or_else(|| {
            let alias = Ident::new(format!("_patron_sort_{k}"));
            inner.projection.push(SelectItem::ExprWithAlias {
                expr: item.expr.clone(),
                alias: alias.clone(),
            });
            alias
        }));
    }
    // SELECT names FROM (inner) AS _patron_sorted
    let Some(inner) = query_of(inner) else {
        return;
    };
    let columns = names
        .into_iter()
        .map(|n| SelectItem::UnnamedExpr(Expr::Identifier(n)))
        .collect();
    let sorted = TableWithJoins {
        relation: derived(inner, Ident::new("_patron_sorted")),
        joins: vec![],
    };
    let Some(outer) = select_query(columns, vec![sorted], None) else {
        return;
    };
    for (item, key) in items.iter_mut().zip(keys) {
        item.expr = Expr::Identifier(key);
    }
    query.body = outer.body;
}

/// In a select list, DataFusion runs scalar subqueries but not `x [NOT] IN (SELECT ...)`
/// (Grafana's table list tests the schema against the search path there): an
/// uncorrelated one becomes `[NOT] array_has(COALESCE((SELECT array_agg(...) ...),
/// []), x)`. Nested subqueries are left to their own query's turn.
fn in_subqueries_to_array_has(expr: &mut Expr) {
    match expr {
        Expr::InSubquery {
            expr: needle,
            subquery,
            negated,
        } => {
            in_subqueries_to_array_has(needle);
            let SetExpr::Select(select) = subquery.body.as_ref() else {
                return;
            };
            let [SelectItem::UnnamedExpr(value) | SelectItem::ExprWithAlias { expr: value, .. }] =
                select.projection.as_slice()
            else {
                return;
            };
            let inner = relation_names(select);
            let whole = Expr::Subquery(subquery.clone());
            if references_outer(&whole, &inner) || subquery.order_by.is_some() || subquery.limit_clause.is_some() {
                return;
            }
            let mut listed = select.as_ref().clone();
            listed.projection = vec![SelectItem::UnnamedExpr(function_call("array_agg", vec![value.clone()]))];
            let Some(mut listed) = query_of(listed) else {
                return;
            };
            listed.with = subquery.with.clone();
            let args = vec![Expr::Subquery(Box::new(listed)), (**needle).clone()];
            let has = if *negated {
                template(
                    "NOT array_has(COALESCE(__patron_arg_0, make_array()), __patron_arg_1)",
                    args,
                )
            } else {
                template(
                    "array_has(COALESCE(__patron_arg_0, make_array()), __patron_arg_1)",
                    args,
                )
            };
            if let Some(e) = has {
                *expr = e;
            }
        }
        Expr::Nested(e) | Expr::UnaryOp { expr: e, .. } | Expr::Cast { expr: e, .. } => in_subqueries_to_array_has(e),
        Expr::IsNull(e) | Expr::IsNotNull(e) | Expr::IsTrue(e) | Expr::IsFalse(e) => in_subqueries_to_array_has(e),
        Expr::BinaryOp { left, right, .. } => {
            in_subqueries_to_array_has(left);
            in_subqueries_to_array_has(right);
        }
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            if let Some(o) = operand {
                in_subqueries_to_array_has(o);
            }
            for when in conditions {
                in_subqueries_to_array_has(&mut when.condition);
                in_subqueries_to_array_has(&mut when.result);
            }
            if let Some(e) = else_result {
                in_subqueries_to_array_has(e);
            }
        }
        Expr::Function(f) => {
            if let FunctionArguments::List(list) = &mut f.args {
                for arg in &mut list.args {
                    if let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = arg {
                        in_subqueries_to_array_has(e);
                    }
                }
            }
        }
        _ => {}
    }
}

/// True when `expr` has a subquery (scalar, IN or EXISTS).
fn contains_subquery(expr: &Expr) -> bool {
    let mut found = false;
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(expr, |e| {
        if matches!(e, Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. }) {
            found = true;
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// Calls `f` on every SELECT of a query body (each side of UNION/INTERSECT/EXCEPT).
fn predicates_of(body: &mut SetExpr, f: &mut impl FnMut(&mut Select)) {
    match body {
        SetExpr::Select(select) => f(select),
        SetExpr::SetOperation { left, right, .. } => {
            predicates_of(left, f);
            predicates_of(right, f);
        }
        _ => {}
    }
}

/// Replaces boolean scalar subqueries among the AND/OR terms of a filter with EXISTS.
fn subqueries_to_exists(condition: &mut Expr) {
    match condition {
        Expr::Nested(inner) => subqueries_to_exists(inner),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And | BinaryOperator::Or,
            right,
        } => {
            subqueries_to_exists(left);
            subqueries_to_exists(right);
        }
        Expr::Subquery(query) => {
            if let Some(exists) = subquery_as_exists(query) {
                *condition = exists;
            }
        }
        _ => {}
    }
}

/// `(SELECT b FROM ... WHERE w)` -> `EXISTS (SELECT 1 FROM ... WHERE (w) AND (b))`, for a
/// plain single-column SELECT (no grouping, aggregates' HAVING, DISTINCT, LIMIT or ORDER).
fn subquery_as_exists(query: &Query) -> Option<Expr> {
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [item] = select.projection.as_slice() else {
        return None;
    };
    let value = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return None,
    };
    let grouped = !matches!(
        &select.group_by,
        GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty()
    );
    if grouped || select.having.is_some() || select.distinct.is_some() || has_aggregate(value) {
        return None;
    }
    if select.from.is_empty() {
        return None;
    }
    // EXISTS (SELECT 1 FROM from WHERE (w) AND (value))
    let condition = and_all(select.selection.iter().chain([value]).cloned().collect())?;
    let one = SelectItem::UnnamedExpr(number(1));
    Some(Expr::Exists {
        subquery: Box::new(select_query(vec![one], select.from.clone(), Some(condition))?),
        negated: false,
    })
}

/// True when `expr` calls a common aggregate (then the subquery always has one row).
fn has_aggregate(expr: &Expr) -> bool {
    const AGGREGATES: &[&str] = &[
        "count",
        "sum",
        "min",
        "max",
        "avg",
        "bool_and",
        "bool_or",
        "array_agg",
        "string_agg",
    ];
    visit_expressions(expr, |e| match e {
        Expr::Function(f) if AGGREGATES.contains(&last_name(&f.name).as_str()) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

fn last_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The plain (unnamed) arguments of a call; empty when it has other kinds.
fn function_args(function: &Function) -> Vec<Expr> {
    let FunctionArguments::List(list) = &function.args else {
        return Vec::new();
    };
    list.args
        .iter()
        .map_while(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// `name(args)`, a call of a plain function named `name`.
fn function_call(name: &str, args: Vec<Expr>) -> Expr {
    call(
        ObjectName::from(vec![Ident::new(name)]),
        args.into_iter()
            .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
            .collect(),
    )
}

/// `name(args)`: a call of the (possibly qualified) function `name`.
fn call(name: ObjectName, args: Vec<FunctionArg>) -> Expr {
    Expr::Function(Function {
        name,
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args,
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// The integer literal `n`.
fn number(n: u32) -> Expr {
    Expr::Value(Value::Number(n.to_string(), false).into())
}

/// `(t1) AND (t2) AND ...`, each term parenthesized; `None` for no terms.
fn and_all(terms: Vec<Expr>) -> Option<Expr> {
    terms
        .into_iter()
        .map(|t| Expr::Nested(Box::new(t)))
        .reduce(|left, right| Expr::BinaryOp {
            left: Box::new(left),
            op: BinaryOperator::And,
            right: Box::new(right),
        })
}

/// `(subquery) AS alias` in a FROM clause.
fn derived(subquery: Query, alias: Ident) -> TableFactor {
    TableFactor::Derived {
        lateral: false,
        subquery: Box::new(subquery),
        alias: Some(TableAlias {
            explicit: true,
            name: alias,
            columns: vec![],
            at: None,
        }),
        sample: None,
    }
}

/// `SELECT projection [FROM from] [WHERE selection]`, the given nodes put into the tree of
/// a constant `SELECT 1`.
fn select_query(projection: Vec<SelectItem>, from: Vec<TableWithJoins>, selection: Option<Expr>) -> Option<Query> {
    let Expr::Subquery(mut query) = template("(SELECT 1)", vec![])? else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    select.projection = projection;
    select.from = from;
    select.selection = selection;
    Some(*query)
}

/// A query of `select` alone (no WITH, ORDER BY or LIMIT).
fn query_of(select: Select) -> Option<Query> {
    let mut query = select_query(vec![], vec![], None)?;
    query.body = Box::new(SetExpr::Select(Box::new(select)));
    Some(query)
}

/// The prefix of the placeholder identifiers of a [`template`]: `__patron_arg_0`, ...
const PLACEHOLDER: &str = "__patron_arg_";

/// The expression `sql`, a constant written in this file, with `args` (the client's
/// syntax trees) in place of its placeholder identifiers `__patron_arg_<i>`.
///
/// This is the only parsing the rewrites do: `sql` is `'static`, so text built at run time
/// (and so anything printed from a client's statement) cannot be passed; the arguments are
/// put in after parsing, each exactly once, and are not searched for placeholders
/// themselves (the substitution visits each node of the template once, children first).
/// `None` (the rewrite is skipped) if the template does not parse or does not use every
/// argument exactly once, which would be a bug here, not something a client can cause.
fn template(sql: &'static str, args: Vec<Expr>) -> Option<Expr> {
    let mut expr = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()?
        .parse_expr()
        .ok()?;
    let mut args: Vec<Option<Expr>> = args.into_iter().map(Some).collect();
    let mut used_once = true;
    let _ = visit_expressions_mut(&mut expr, |e: &mut Expr| {
        if let Expr::Identifier(ident) = e
            && ident.quote_style.is_none()
            && let Some(index) = ident.value.strip_prefix(PLACEHOLDER)
        {
            match index
                .parse::<usize>()
                .ok()
                .and_then(|i| args.get_mut(i))
                .and_then(Option::take)
            {
                Some(arg) => *e = arg,
                None => used_once = false,
            }
        }
        ControlFlow::<()>::Continue(())
    });
    (used_once && args.iter().all(Option::is_none)).then_some(expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escape_converts_to_backslash() {
        assert_eq!(like_escape("pg/_%", "/").unwrap(), "pg\\_%");
        assert_eq!(like_escape("a\\b", "/").unwrap(), "a\\\\b");
        assert_eq!(like_escape("a//b", "/").unwrap(), "a/b");
        assert_eq!(like_escape("a/xb", "/").unwrap(), "axb");
        assert_eq!(like_escape("a\\_", "").unwrap(), "a\\\\_");
        assert!(like_escape("ab/", "/").is_err());
        assert!(like_escape("ab", "//").is_err());
    }

    #[test]
    fn type_names_are_postgres_names() {
        use datafusion::arrow::datatypes::TimeUnit;
        for (arrow, sql, udt) in [
            (DataType::Utf8View, "text", "text"),
            (DataType::Utf8, "text", "text"),
            (DataType::Date32, "date", "date"),
            (DataType::Int64, "bigint", "int8"),
            (DataType::Int32, "integer", "int4"),
            (DataType::Float64, "double precision", "float8"),
            (DataType::Boolean, "boolean", "bool"),
            (DataType::Decimal128(10, 2), "numeric", "numeric"),
            (
                DataType::Timestamp(TimeUnit::Microsecond, None),
                "timestamp without time zone",
                "timestamp",
            ),
            (
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                "timestamp with time zone",
                "timestamptz",
            ),
            (DataType::new_list(DataType::Utf8View, true), "ARRAY", "_text"),
        ] {
            assert_eq!(pg_type_names(&arrow), (sql.to_string(), udt.to_string()), "{arrow}");
        }
    }

    #[test]
    fn privileges_are_read_only() {
        assert!(has_privilege("SELECT"));
        assert!(has_privilege("usage"));
        assert!(has_privilege("SELECT, USAGE"));
        assert!(!has_privilege("INSERT"));
        assert!(!has_privilege("SELECT,UPDATE"));
        assert!(!has_privilege("SELECT WITH GRANT OPTION"));
        assert!(!has_privilege("CREATE"));
    }

    #[test]
    fn type_oids_are_found_by_internal_and_sql_names() {
        assert_eq!(type_oid("int4"), Some(23));
        assert_eq!(type_oid("integer"), Some(23));
        assert_eq!(type_oid("pg_catalog.text"), Some(25));
        assert_eq!(type_oid("double precision"), Some(701));
        assert_eq!(type_oid("_text"), Some(1009));
        assert_eq!(type_oid("hstore"), None);
    }

    #[test]
    fn the_version_string_names_the_postgresql_release_and_patron() {
        assert!(
            VERSION.starts_with(&format!("PostgreSQL {} on ", session::PG_VERSION)),
            "{}",
            *VERSION
        );
        assert!(VERSION.ends_with(&format!("(patron {})", env!("CARGO_PKG_VERSION"))));
    }

    /// A session set up as `Snapshot::build` does, with one table `t` of Arrow types.
    async fn session() -> SessionContext {
        use datafusion::arrow::array::{Date32Array, Float64Array, StringViewArray};
        use datafusion::prelude::SessionConfig;
        use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
        use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;

        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("patron", "public");
        let ctx = SessionContext::new_with_config(config);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8View, true),
            Field::new("day", DataType::Date32, false),
            Field::new("clv", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringViewArray::from(vec!["a", "b"])),
                Arc::new(Date32Array::from(vec![1, 2])),
                Arc::new(Float64Array::from(vec![1.5, 20.0])),
            ],
        )
        .unwrap();
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()))
            .unwrap();
        setup_pg_catalog(&ctx, "patron", EmptyContextProvider).unwrap();
        let mut state = ctx.state();
        datafusion_postgres::datafusion_pg_functions::register_all(&mut state);
        let ctx = SessionContext::new_with_state(state);
        register(&ctx).unwrap();
        ctx
    }

    /// The rows of `sql` on `ctx`, rewritten and parsed as the handler does, cells joined
    /// by `|`.
    async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<String>, DataFusionError> {
        use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
        let statement = parse(sql, Parser::parse_sql(&PostgreSqlDialect {}, sql))
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .pop()
            .ok_or_else(|| DataFusionError::Plan("no statement".into()))?;
        let plan = ctx
            .state()
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(statement)))
            .await?;
        let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
        let mut out = Vec::new();
        for batch in batches {
            let options = FormatOptions::default().with_null("NULL");
            let formatters: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                out.push(
                    formatters
                        .iter()
                        .map(|f| f.value(row).to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                );
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn the_session_answers_like_postgres() {
        let ctx = session().await;
        assert_eq!(rows(&ctx, "SELECT version()").await.unwrap(), [VERSION.as_str()]);
        assert_eq!(
            rows(
                &ctx,
                "SELECT current_setting('search_path'), current_setting('DATESTYLE')"
            )
            .await
            .unwrap(),
            ["\"$user\", public|ISO, YMD"]
        );
        let err = rows(&ctx, "SELECT current_setting('nope')").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("unrecognized configuration parameter \"nope\""),
            "{err}"
        );
        assert_eq!(
            rows(&ctx, "SELECT current_setting('nope', true) IS NULL")
                .await
                .unwrap(),
            ["true"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT column_name, data_type, udt_name, ordinal_position, is_nullable \
                 FROM information_schema.columns WHERE table_name = 't' ORDER BY ordinal_position"
            )
            .await
            .unwrap(),
            [
                "id|text|text|1|YES",
                "day|date|date|2|NO",
                "clv|double precision|float8|3|YES"
            ]
        );
        // information_schema answers by name but is not listed among the schemas.
        assert_eq!(
            rows(&ctx, "SELECT nspname FROM pg_catalog.pg_namespace ORDER BY 1")
                .await
                .unwrap(),
            ["pg_catalog", "public"]
        );
        assert!(!rows(&ctx, "SHOW TABLES").await.unwrap().is_empty());
        assert_eq!(
            rows(
                &ctx,
                "SELECT id FROM t WHERE id NOT LIKE 'a/_%' ESCAPE '/' AND 'a_x' LIKE 'a/_%' ESCAPE '/'"
            )
            .await
            .unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            rows(&ctx, "SELECT id FROM t WHERE 'axc' LIKE 'a/_c' ESCAPE '/'")
                .await
                .unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT (information_schema._pg_expandarray(ARRAY[7, 8])).x, \
                 (information_schema._pg_expandarray(ARRAY[7, 8])).n"
            )
            .await
            .unwrap(),
            ["7|1", "8|2"]
        );
        assert_eq!(
            rows(&ctx, "SELECT json_build_object('a', 1, 'b', 'x', 'c', NULL, 'd', true)")
                .await
                .unwrap(),
            [r#"{"a" : 1, "b" : "x", "c" : null, "d" : true}"#]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT has_table_privilege('t', 'SELECT'), has_table_privilege(current_user, 't', 'INSERT'), \
                 has_schema_privilege('public', 'CREATE')"
            )
            .await
            .unwrap(),
            ["true|false|false"]
        );
        assert_eq!(
            rows(&ctx, "SELECT pg_get_serial_sequence('t', 'id') IS NULL")
                .await
                .unwrap(),
            ["true"]
        );
        // pg_index's key vectors are arrays, as unnest and generate_subscripts take them.
        let keys = rows(
            &ctx,
            "SELECT unnest(indkey), generate_subscripts(indkey, 1) FROM pg_catalog.pg_index \
             WHERE indexrelid = 2837",
        )
        .await
        .unwrap();
        assert_eq!(keys, ["1|1", "2|2"]);
        // pg_class has the columns clients select that the crate leaves out.
        assert_eq!(
            rows(
                &ctx,
                "SELECT relname, reloptions IS NULL FROM pg_catalog.pg_class WHERE relname = 't'"
            )
            .await
            .unwrap(),
            ["t|true"]
        );
    }

    /// `sql` parsed by sqlparser with [`rewrite`] applied, printed (for comparing only);
    /// unparsable text as it is.
    fn rewritten(sql: &str) -> String {
        match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(statements) => statements
                .into_iter()
                .map(|mut s| {
                    rewrite(&mut s);
                    s.to_string()
                })
                .collect::<Vec<_>>()
                .join(";\n"),
            Err(_) => sql.to_string(),
        }
    }

    /// What [`parse`] makes of `sql`, printed.
    fn served(sql: &str) -> String {
        parse(sql, Parser::parse_sql(&PostgreSqlDialect {}, sql))
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(";\n")
    }

    #[test]
    fn rewrites_what_datafusion_cannot_plan() {
        assert_eq!(
            rewritten("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg/_%' ESCAPE '/'"),
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE like_escape('pg/_%', '/')"
        );
        assert_eq!(
            rewritten("SELECT (information_schema._pg_expandarray(i.indkey)).n AS k FROM pg_index i"),
            "SELECT get_field(unnest(_pg_expandarray(i.indkey)), 'n') AS k FROM pg_index i"
        );
        assert_eq!(
            rewritten("SELECT r.a FROM t r WHERE r.b = (r.KEYS).x"),
            "SELECT r.a FROM t r WHERE r.b = get_field(r.KEYS, 'x')"
        );
        assert_eq!(
            rewritten("SELECT generate_subscripts(indkey, 1) AS ord FROM pg_index"),
            "SELECT unnest(generate_series(1, array_length(indkey, 1))) AS ord FROM pg_index"
        );
        assert_eq!(
            rewritten(
                "SELECT t.typname FROM pg_type t WHERE t.typrelid = 0 OR (SELECT c.relkind = 'c' FROM pg_class c WHERE c.oid = t.typrelid)"
            ),
            "SELECT t.typname FROM pg_type t WHERE t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_class c WHERE (c.oid = t.typrelid) AND (c.relkind = 'c'))"
        );
        assert_eq!(
            rewritten(
                "SELECT s[i] FROM generate_series(1, 2) AS i, string_to_array(current_setting('search_path'), ',') s"
            ),
            "SELECT s[i] FROM generate_series(1, 2) AS i (i), (SELECT string_to_array(current_setting('search_path'), ',') AS s) AS s"
        );
        assert_eq!(rewritten("SELECT user"), "SELECT current_user");
        // Left alone: the default escape, plain queries, and what the parser rejects.
        for sql in [
            "SELECT 1 WHERE 'a' LIKE 'a\\%' ESCAPE '\\'",
            "SELECT COUNT(*) FROM customer_scores WHERE clv > $1",
            "SELECT x FROM t WHERE (SELECT count(*) FROM u) > 0",
            "CREATE EXTERNAL TABLE p (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
            "SELEC 1",
        ] {
            assert_eq!(rewritten(sql), sql);
        }
    }

    #[test]
    fn stand_ins_of_the_crate_parser_are_kept_except_for_current_setting() {
        // psql's `\d` publication lookup: the crate swaps it for an empty stand-in; the
        // generate_series alias rule would otherwise keep it from matching.
        let psql = "SELECT pubname , NULL , NULL FROM pg_catalog.pg_publication p JOIN pg_catalog.pg_publication_namespace pn ON p.oid = pn.pnpubid JOIN pg_catalog.pg_class pc ON pc.relnamespace = pn.pnnspid WHERE pc.oid = '16384' and pg_catalog.pg_relation_is_publishable('16384') UNION SELECT pubname , pg_get_expr(pr.prqual, c.oid) , (CASE WHEN pr.prattrs IS NOT NULL THEN (SELECT string_agg(attname, ', ') FROM pg_catalog.generate_series(0, pg_catalog.array_upper(pr.prattrs::pg_catalog.int2[], 1)) s, pg_catalog.pg_attribute WHERE attrelid = pr.prrelid AND attnum = prattrs[s]) ELSE NULL END) FROM pg_catalog.pg_publication p JOIN pg_catalog.pg_publication_rel pr ON p.oid = pr.prpubid JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid WHERE pr.prrelid = '16384' UNION SELECT pubname , NULL , NULL FROM pg_catalog.pg_publication p WHERE p.puballtables AND pg_catalog.pg_relation_is_publishable('16384') ORDER BY 1";
        let stand_in = PARSER.parse(psql).unwrap()[0].to_string();
        assert!(stand_in.contains("WHERE false"), "{stand_in}");
        assert_eq!(served(psql), stand_in);
        let grafana = "SELECT quote_ident(table_name) FROM information_schema.tables WHERE quote_ident(table_schema) IN (SELECT CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END FROM generate_series(array_lower(string_to_array(current_setting('search_path'),','),1), array_upper(string_to_array(current_setting('search_path'),','),1)) as i, string_to_array(current_setting('search_path'),',') s)";
        let out = served(grafana);
        // `user` became `current_user`, which the crate's rules call `session_user`.
        assert!(out.contains("AS i (i)") && out.contains("session_user"), "{out}");
        assert!(!out.contains("WHERE false"), "{out}");
    }

    /// `sql` parsed by sqlparser with [`rewrite`] applied.
    fn rewritten_tree(sql: &str) -> Statement {
        let mut statement = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0);
        rewrite(&mut statement);
        statement
    }

    #[test]
    fn rewrites_build_the_trees_their_sql_describes() {
        // What the rewrites made when they printed and parsed again: the same trees now,
        // compared both printed and as trees (spans aside).
        for (sql, expected) in [
            (
                "SELECT t.a, (SELECT c.x AS y FROM c WHERE c.k = t.k AND t.z > 0 AND c.w = 1) FROM t",
                "SELECT t.a, CASE WHEN (t.z > 0) THEN (SELECT max(c.x) AS y FROM c WHERE (c.k = t.k) AND (c.w = 1)) END FROM t",
            ),
            (
                "SELECT t.a, (SELECT c.x FROM c JOIN d ON c.i = d.i WHERE c.k = t.k) FROM t",
                "SELECT t.a, (SELECT max(c.x) FROM c JOIN d ON c.i = d.i WHERE (c.k = t.k)) FROM t",
            ),
            (
                "SELECT (SELECT c.x + t.y FROM c WHERE c.k = t.k AND (c.a = 1 OR c.b = 2)) FROM t",
                "SELECT CASE WHEN (SELECT count(*) FROM c WHERE (c.k = t.k) AND ((c.a = 1 OR c.b = 2))) > 0 THEN (SELECT max(c.x) FROM c WHERE (c.k = t.k) AND ((c.a = 1 OR c.b = 2))) + t.y END FROM t",
            ),
            (
                "SELECT (SELECT c.x + t.y FROM c WHERE t.q AND c.k = t.k) FROM t",
                "SELECT CASE WHEN (t.q) THEN CASE WHEN (SELECT count(*) FROM c WHERE (c.k = t.k)) > 0 THEN (SELECT max(c.x) FROM c WHERE (c.k = t.k)) + t.y END END FROM t",
            ),
            (
                "SELECT table_name AS name, table_schema FROM information_schema.tables ORDER BY CASE WHEN table_schema IN (SELECT 'public') THEN 0 ELSE 1 END, name, 2",
                "SELECT name, table_schema FROM (SELECT table_name AS name, table_schema, CASE WHEN array_has(COALESCE((SELECT array_agg('public')), make_array()), table_schema) THEN 0 ELSE 1 END AS _patron_sort_0 FROM information_schema.tables) AS _patron_sorted ORDER BY _patron_sort_0, name, table_schema",
            ),
            (
                "SELECT \"q\"\"x\" FROM t ORDER BY (SELECT 1) DESC NULLS FIRST LIMIT 3",
                "SELECT \"q\"\"x\" FROM (SELECT \"q\"\"x\", (SELECT 1) AS _patron_sort_0 FROM t) AS _patron_sorted ORDER BY _patron_sort_0 DESC NULLS FIRST LIMIT 3",
            ),
            (
                "SELECT a IN (SELECT u.b FROM u WHERE u.c = 1), a NOT IN (WITH w AS (SELECT 1 AS b) SELECT b FROM w) FROM t",
                "SELECT array_has(COALESCE((SELECT array_agg(u.b) FROM u WHERE u.c = 1), make_array()), a), NOT array_has(COALESCE((WITH w AS (SELECT 1 AS b) SELECT array_agg(b) FROM w), make_array()), a) FROM t",
            ),
            (
                "SELECT x FROM t WHERE (SELECT u.b FROM u)",
                "SELECT x FROM t WHERE EXISTS (SELECT 1 FROM u WHERE (u.b))",
            ),
            (
                "SELECT x FROM t WHERE t.a = 1 AND ((SELECT u.b FROM u, v WHERE u.i = t.i))",
                "SELECT x FROM t WHERE t.a = 1 AND (EXISTS (SELECT 1 FROM u, v WHERE (u.i = t.i) AND (u.b)))",
            ),
            (
                "SELECT * FROM pg_catalog.string_to_array('a,b', ',')",
                "SELECT * FROM (SELECT pg_catalog.string_to_array('a,b', ',') AS string_to_array) AS string_to_array",
            ),
            (
                "SELECT * FROM current_schemas(true) AS s (n, m)",
                "SELECT * FROM (SELECT current_schemas(true) AS n) AS s",
            ),
            (
                "SELECT 1 WHERE 'x' ILIKE 'a'';--/%' || 'b' ESCAPE '/'",
                "SELECT 1 WHERE 'x' ILIKE like_escape('a'';--/%' || 'b', '/')",
            ),
            (
                "SELECT _pg_expandarray(ARRAY[1]), generate_subscripts(a.b, 1 + 1) FROM a",
                "SELECT unnest(_pg_expandarray(ARRAY[1])), unnest(generate_series(1, array_length(a.b, 1 + 1))) FROM a",
            ),
            // Aggregates are found by function name, not in the printed text (which took
            // `discount(` for `count(`).
            (
                "SELECT (SELECT count(c.x) FROM c WHERE c.k = t.k) FROM t",
                "SELECT (SELECT count(c.x) FROM c WHERE c.k = t.k) FROM t",
            ),
            (
                "SELECT (SELECT pg_catalog.MAX(c.x) FROM c WHERE c.k = t.k) FROM t",
                "SELECT (SELECT pg_catalog.MAX(c.x) FROM c WHERE c.k = t.k) FROM t",
            ),
            (
                "SELECT (SELECT discount(c.x) FROM c WHERE c.k = t.k) FROM t",
                "SELECT (SELECT max(discount(c.x)) FROM c WHERE (c.k = t.k)) FROM t",
            ),
            (
                "SELECT (SELECT x + t.y FROM c WHERE c.k = t.k) FROM t",
                "SELECT (SELECT x + t.y FROM c WHERE c.k = t.k) FROM t",
            ),
        ] {
            let tree = rewritten_tree(sql);
            assert_eq!(tree.to_string(), expected, "{sql}");
            assert_eq!(
                tree,
                Parser::parse_sql(&PostgreSqlDialect {}, expected).unwrap().remove(0),
                "{sql}"
            );
        }
    }

    /// The literal values and identifiers in the expressions of `statement`, in order.
    fn literals_and_names(statement: &Statement) -> (Vec<Value>, Vec<Ident>) {
        let mut literals = Vec::new();
        let mut names = Vec::new();
        let _ = visit_expressions(statement, |e| {
            match e {
                Expr::Value(v) => literals.push(v.value.clone()),
                Expr::Identifier(i) => names.push(i.clone()),
                Expr::CompoundIdentifier(parts) => names.extend(parts.iter().cloned()),
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
        (literals, names)
    }

    #[test]
    fn the_client_s_literals_and_names_come_through_as_parsed() {
        // Quotes, statement separators and comment markers in the client's literals and
        // quoted identifiers: every rewrite moves these nodes into the new tree as they
        // are, so none of them is split, closed early or commented out. (sqlparser prints
        // the national literal below without doubling its quotes: printed and parsed
        // again, it would have become `N'x' OR true OR ...`.)
        let hostile = "x'' OR true OR ''); DROP TABLE t; -- /* \" ";
        let hostile_value = hostile.replace("''", "'");
        let name = "\"c\"\"); DROP TABLE t; --\"";
        for literal in [format!("'{hostile}'"), format!("N'{hostile}'")] {
            let l = literal.as_str();
            for sql in [
                format!("SELECT 1 WHERE 'a' NOT LIKE {l} ESCAPE '/'"),
                format!("SELECT 1 WHERE 'a' LIKE {name} ESCAPE {l}"),
                format!("SELECT * FROM string_to_array({l}, ',') AS {name}"),
                format!("SELECT generate_subscripts({name}, 1), _pg_expandarray(ARRAY[{l}]) FROM t"),
                format!("SELECT (SELECT c.{name} || {l} FROM c WHERE c.k = t.k AND t.z = {l}) FROM t"),
                format!("SELECT (SELECT c.x || t.{name} FROM c WHERE c.k = {l} AND c.k = t.k) FROM t"),
                format!("SELECT x FROM t WHERE (SELECT u.{name} = {l} FROM u WHERE u.i = t.i)"),
                format!("SELECT {l} IN (SELECT u.{name} FROM u) AS {name} FROM t"),
                format!("SELECT {name} FROM t ORDER BY CASE WHEN {name} IN (SELECT {l}) THEN 0 END"),
            ] {
                let original = Parser::parse_sql(&PostgreSqlDialect {}, &sql).unwrap().remove(0);
                let tree = rewritten_tree(&sql);
                assert_ne!(tree, original, "not rewritten: {sql}");
                let (before, before_names) = literals_and_names(&original);
                let (after, after_names) = literals_and_names(&tree);
                assert!(
                    after.iter().any(|v| matches!(
                        v,
                        Value::SingleQuotedString(s) | Value::NationalStringLiteral(s) if *s == hostile_value
                    )),
                    "{sql}"
                );
                for literal in &before {
                    assert!(after.contains(literal), "{literal:?} lost from {tree}");
                }
                for ident in &before_names {
                    assert!(after_names.contains(ident), "{ident:?} lost from {tree}");
                }
            }
        }
        // The pattern of a LIKE is the first argument of like_escape, the same tree.
        let sql = format!("SELECT 1 WHERE 'a' LIKE N'{hostile}' || {name} ESCAPE '/'");
        let Statement::Query(original) = Parser::parse_sql(&PostgreSqlDialect {}, &sql).unwrap().remove(0) else {
            unreachable!()
        };
        let Statement::Query(query) = rewritten_tree(&sql) else {
            unreachable!()
        };
        let (SetExpr::Select(before), SetExpr::Select(after)) = (&*original.body, &*query.body) else {
            unreachable!()
        };
        let (Some(Expr::Like { pattern: before, .. }), Some(Expr::Like { pattern: after, .. })) =
            (&before.selection, &after.selection)
        else {
            unreachable!()
        };
        let Expr::Function(like_escape) = after.as_ref() else {
            panic!("{after}")
        };
        assert_eq!(
            function_args(like_escape),
            [
                *before.clone(),
                Expr::Value(Value::SingleQuotedString("/".into()).into())
            ]
        );
    }

    #[test]
    fn client_names_like_placeholders_are_not_substituted() {
        assert_eq!(
            rewritten("SELECT __patron_arg_1 IN (SELECT __patron_arg_0 FROM u) FROM t"),
            "SELECT array_has(COALESCE((SELECT array_agg(__patron_arg_0) FROM u), make_array()), __patron_arg_1) FROM t"
        );
        assert_eq!(
            template(
                "f(__patron_arg_0, __patron_arg_1)",
                vec![Expr::Identifier(Ident::new("__patron_arg_1")), number(2)]
            )
            .unwrap()
            .to_string(),
            "f(__patron_arg_1, 2)"
        );
        // Each argument exactly once.
        assert!(template("f(__patron_arg_0, __patron_arg_0)", vec![number(1)]).is_none());
        assert!(template("f(__patron_arg_0)", vec![number(1), number(2)]).is_none());
        assert!(template("f(__patron_arg_1)", vec![number(1)]).is_none());
    }

    #[test]
    fn the_rewrites_parse_only_constant_templates() {
        // The rewrites (everything before the tests) parse SQL in one place, `template`,
        // whose text is `&'static str`: no text printed from a statement reaches a parser.
        let source = include_str!("compat.rs");
        let code = &source[..source.find("#[cfg(test)]\nmod tests").unwrap()];
        assert!(code.contains("fn template(sql: &'static str, args: Vec<Expr>) -> Option<Expr> {"));
        for (needle, count) in [
            ("Parser::new(", 1),
            ("Parser::parse", 0),
            ("try_with_sql(", 1),
            (".parse_expr(", 1),
            ("parse_sql(", 0),
            ("parse_statement", 0),
            ("parse_query", 0),
            ("Box::leak", 0),
            ("String::leak", 0),
            // The crate's parser reads the client's statement text as sent, in `parse`.
            ("PARSER.parse(", 1),
        ] {
            assert_eq!(code.matches(needle).count(), count, "{needle}");
        }
        // Every template is a string literal written here.
        let mut calls = 0;
        for (at, _) in code
            .match_indices("template(")
            .filter(|(at, _)| !code[..*at].ends_with("fn "))
        {
            let argument = code[at + "template(".len()..].trim_start();
            assert!(
                argument.starts_with('"'),
                "template called with a non-literal: {argument:.40}"
            );
            calls += 1;
        }
        assert!(calls >= 5, "{calls}");
    }
}
