//! Declared export schemas in the Frictionless Table Schema format
//! (<https://specs.frictionlessdata.io/table-schema/>), the subset patron validates:
//! field `name`, `type` (string, integer, number, boolean, date, datetime), `format`,
//! `description`, `constraints` (`required`, `minimum`, `maximum`, `enum`, `pattern`),
//! the table's `primaryKey` and `missingValues`.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field as ArrowField, Schema, TimeUnit};
use serde::Deserialize;

use super::ConfigError;

/// A declared export schema: the columns a source must have and the rules each value obeys.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// Schema name (informational).
    pub name: String,
    /// Declared columns, in order.
    pub fields: Vec<FieldSpec>,
    /// Columns that together identify a row; staging deduplicates on them.
    pub primary_key: Vec<String>,
    /// Raw strings read as null (default: the empty string).
    pub missing_values: Vec<String>,
}

/// One declared column.
#[derive(Debug, Clone)]
pub struct FieldSpec {
    /// Column name as it appears in the export header or JSON key.
    pub name: String,
    /// Logical type.
    pub kind: FieldKind,
    /// Human description, carried into docs.
    pub description: Option<String>,
    /// A null (missing) value is a rejection.
    pub required: bool,
    /// Inclusive lower bound for numbers.
    pub minimum: Option<f64>,
    /// Inclusive upper bound for numbers.
    pub maximum: Option<f64>,
    /// Allowed values for strings.
    pub allowed: Option<Vec<String>>,
    /// Regular expression a string must match in full.
    pub pattern: Option<regex::Regex>,
}

/// Logical field types and how they are parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    /// UTF-8 text, kept as read.
    String,
    /// 64-bit signed integer.
    Integer,
    /// 64-bit float; a plain decimal number.
    Number,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`).
    Boolean,
    /// Calendar date, `YYYY-MM-DD` unless a strftime pattern is given.
    Date(Option<String>),
    /// Instant stored as UTC microseconds; see [`DatetimeFormat`].
    Datetime(DatetimeFormat),
}

/// How datetime text is parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum DatetimeFormat {
    /// Frictionless `default`: RFC 3339 / ISO 8601 with a `Z` or offset.
    Default,
    /// Frictionless `any`: RFC 3339, or ISO 8601 without zone (read as UTC), with `T` or a
    /// space between date and time, or a bare date (midnight UTC).
    Any,
    /// A strftime pattern; without `%z` the time is read as UTC.
    Pattern(String),
}

impl FieldSpec {
    /// Arrow type the validated column has.
    pub fn data_type(&self) -> DataType {
        match self.kind {
            FieldKind::String => DataType::Utf8,
            FieldKind::Integer => DataType::Int64,
            FieldKind::Number => DataType::Float64,
            FieldKind::Boolean => DataType::Boolean,
            FieldKind::Date(_) => DataType::Date32,
            FieldKind::Datetime(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
        }
    }
}

impl TableSchema {
    /// Loads and checks a Frictionless Table Schema JSON file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses schema JSON; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawSchema = serde_json::from_str(text).map_err(|e| ConfigError::Schema {
            path: path.to_path_buf(),
            message: format!("line {}, column {}: {e}", e.line(), e.column()),
        })?;
        let bad = |message: String| ConfigError::Schema {
            path: path.to_path_buf(),
            message,
        };
        if raw.fields.is_empty() {
            return Err(bad("`fields` is empty".into()));
        }
        let mut fields = Vec::with_capacity(raw.fields.len());
        for (i, f) in raw.fields.into_iter().enumerate() {
            let at = format!("fields[{i}] (`{}`)", f.name);
            if f.name.trim().is_empty() {
                return Err(bad(format!("fields[{i}]: `name` is empty")));
            }
            if fields.iter().any(|g: &FieldSpec| g.name == f.name) {
                return Err(bad(format!("{at}: duplicate field name")));
            }
            let format = f.format.filter(|s| s != "default");
            let kind = match f.r#type.as_str() {
                "string" => FieldKind::String,
                "integer" => FieldKind::Integer,
                "number" => FieldKind::Number,
                "boolean" => FieldKind::Boolean,
                "date" => FieldKind::Date(format.filter(|s| s != "any")),
                "datetime" => FieldKind::Datetime(match format.as_deref() {
                    None => DatetimeFormat::Default,
                    Some("any") => DatetimeFormat::Any,
                    Some(p) => DatetimeFormat::Pattern(p.to_string()),
                }),
                other => {
                    return Err(bad(format!(
                        "{at}: type `{other}` is not supported (use string, integer, number, boolean, date or datetime)"
                    )));
                }
            };
            let c = f.constraints.unwrap_or_default();
            let pattern = match c.pattern {
                Some(p) => Some(
                    regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| bad(format!("{at}: bad `pattern`: {e}")))?,
                ),
                None => None,
            };
            if let (Some(lo), Some(hi)) = (c.minimum, c.maximum)
                && lo > hi
            {
                return Err(bad(format!("{at}: minimum {lo} is above maximum {hi}")));
            }
            fields.push(FieldSpec {
                name: f.name,
                kind,
                description: f.description,
                required: c.required,
                minimum: c.minimum,
                maximum: c.maximum,
                allowed: c.r#enum,
                pattern,
            });
        }
        let primary_key = match raw.primary_key {
            None => Vec::new(),
            Some(PrimaryKey::One(k)) => vec![k],
            Some(PrimaryKey::Many(ks)) => ks,
        };
        for k in &primary_key {
            if !fields.iter().any(|f| &f.name == k) {
                return Err(bad(format!("primaryKey names `{k}`, which is not a field")));
            }
        }
        Ok(TableSchema {
            name: raw.name.unwrap_or_default(),
            fields,
            primary_key,
            missing_values: raw.missing_values.unwrap_or_else(|| vec![String::new()]),
        })
    }

    /// Arrow schema of the validated rows (declared fields only).
    pub fn arrow_schema(&self) -> Arc<Schema> {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .map(|f| ArrowField::new(&f.name, f.data_type(), !f.required))
                .collect::<Vec<_>>(),
        ))
    }

    /// Index of a declared field by name.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSchema {
    name: Option<String>,
    fields: Vec<RawField>,
    primary_key: Option<PrimaryKey>,
    missing_values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PrimaryKey {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawField {
    name: String,
    #[serde(default = "default_type")]
    r#type: String,
    format: Option<String>,
    description: Option<String>,
    constraints: Option<RawConstraints>,
}

fn default_type() -> String {
    "string".into()
}

#[derive(Deserialize, Default)]
struct RawConstraints {
    #[serde(default)]
    required: bool,
    minimum: Option<f64>,
    maximum: Option<f64>,
    r#enum: Option<Vec<String>>,
    pattern: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_sales_schema_declares_order_line_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/sales.schema.json");
        let s = TableSchema::load(&path).expect("bundled schema loads");
        assert_eq!(s.primary_key, vec!["order_id", "line_no"]);
        assert!(matches!(
            s.fields[s.field_index("order_ts").unwrap()].kind,
            FieldKind::Datetime(DatetimeFormat::Any)
        ));
    }

    #[test]
    fn unknown_type_names_the_field() {
        let err = TableSchema::parse(r#"{"fields":[{"name":"a","type":"geopoint"}]}"#, Path::new("x.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.json") && err.contains("`a`") && err.contains("geopoint"),
            "{err}"
        );
    }

    #[test]
    fn primary_key_must_name_a_field() {
        let err = TableSchema::parse(r#"{"fields":[{"name":"a"}],"primaryKey":"b"}"#, Path::new("x.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`b`"), "{err}");
    }
}
