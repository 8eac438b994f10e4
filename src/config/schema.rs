//! Declared export schemas in the Frictionless Table Schema format
//! (<https://specs.frictionlessdata.io/table-schema/>), the subset patron validates:
//! field `name`, `type` (string, integer, number, boolean, date, datetime), `format`,
//! `description`, `constraints` (`required`, `minimum`, `maximum`, `enum`, `pattern`), the
//! number options `decimalChar`, `groupChar` and `bareNumber`, the table's `primaryKey` and
//! `missingValues`; and patron's extensions `formats` and `timezone` (datetime fields) and
//! `eventTime` (the table's).

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
    /// Columns that together identify a row; the source's `raw_<source>_current` view
    /// keeps the latest copy of each.
    pub primary_key: Vec<String>,
    /// The date or datetime field that dates a row (patron's `eventTime`): rows dated after
    /// the as-of day are left out of `raw_<source>_current`, and cannot supersede an
    /// earlier copy there.
    pub event_time: Option<String>,
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
    /// How number and integer text is written (separators, currency symbols).
    pub number: NumberFormat,
}

/// How a number or integer is written in the export: Frictionless `decimalChar`,
/// `groupChar` and `bareNumber`. The default is a plain number (`1234.5`).
#[derive(Debug, Clone, PartialEq)]
pub struct NumberFormat {
    /// The decimal separator (`.` unless declared, e.g. `,` for `1.234,50`).
    pub decimal_char: char,
    /// The thousands separator, removed before parsing (e.g. `,` for `1,234.50`).
    pub group_char: Option<char>,
    /// `false` allows non-numeric text before and after the number, such as currency
    /// symbols, codes and percent signs (`€12.50`, `12.50 USD`, `15%`); it is dropped.
    pub bare_number: bool,
}

impl Default for NumberFormat {
    fn default() -> Self {
        NumberFormat {
            decimal_char: '.',
            group_char: None,
            bare_number: true,
        }
    }
}

impl NumberFormat {
    /// True for the default: text is parsed as it is.
    pub fn is_plain(&self) -> bool {
        *self == NumberFormat::default()
    }
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
    /// Instant stored as UTC microseconds; see [`DatetimeSpec`].
    Datetime(DatetimeSpec),
}

/// How a datetime field's text is read: the declared formats, tried in order (the first
/// that matches wins), and the time zone of values written without an offset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatetimeSpec {
    /// Frictionless `format`, or patron's `formats` list; never empty.
    pub formats: Vec<DatetimeFormat>,
    /// `timezone` (an IANA name): the zone of values without an offset; UTC when unset.
    /// A local time that a daylight-saving change skips is rejected; one it repeats is read
    /// as the earlier instant.
    pub timezone: Option<chrono_tz::Tz>,
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
        for (i, mut f) in raw.fields.into_iter().enumerate() {
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
                "datetime" => FieldKind::Datetime(
                    datetime_spec(format, f.formats.take(), f.timezone.take())
                        .map_err(|m| bad(format!("{at}: {m}")))?,
                ),
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
            if f.formats.is_some() || f.timezone.is_some() {
                return Err(bad(format!(
                    "{at}: `formats` and `timezone` apply to datetime fields only"
                )));
            }
            let number = number_format(&f.r#type, f.decimal_char, f.group_char, f.bare_number)
                .map_err(|m| bad(format!("{at}: {m}")))?;
            fields.push(FieldSpec {
                number,
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
        if let Some(t) = &raw.event_time {
            match fields.iter().find(|f| &f.name == t) {
                Some(f) if matches!(f.kind, FieldKind::Date(_) | FieldKind::Datetime(_)) => {}
                Some(_) => {
                    return Err(bad(format!(
                        "eventTime names `{t}`, which is not a date or datetime field"
                    )));
                }
                None => return Err(bad(format!("eventTime names `{t}`, which is not a field"))),
            }
        }
        Ok(TableSchema {
            name: raw.name.unwrap_or_default(),
            fields,
            primary_key,
            event_time: raw.event_time,
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
    /// patron's extension: the field that dates a row.
    event_time: Option<String>,
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
    #[serde(rename = "decimalChar")]
    decimal_char: Option<String>,
    #[serde(rename = "groupChar")]
    group_char: Option<String>,
    #[serde(rename = "bareNumber")]
    bare_number: Option<bool>,
    /// patron's extension: several datetime formats, tried in order.
    formats: Option<Vec<String>>,
    /// patron's extension: the IANA zone of datetimes written without an offset.
    timezone: Option<String>,
}

/// One datetime format by its Frictionless name (`default`, `any`) or as a strftime
/// pattern, checked for pattern errors.
fn datetime_format(name: &str) -> Result<DatetimeFormat, String> {
    match name {
        "default" => Ok(DatetimeFormat::Default),
        "any" => Ok(DatetimeFormat::Any),
        p => {
            let broken = chrono::format::StrftimeItems::new(p).any(|i| matches!(i, chrono::format::Item::Error));
            if broken || p.trim().is_empty() {
                Err(format!("`{p}` is not a valid strftime datetime format"))
            } else {
                Ok(DatetimeFormat::Pattern(p.to_string()))
            }
        }
    }
}

/// A datetime field's reading rules from its `format`, `formats` and `timezone`.
fn datetime_spec(
    format: Option<String>,
    formats: Option<Vec<String>>,
    timezone: Option<String>,
) -> Result<DatetimeSpec, String> {
    let formats = match (format, formats) {
        (Some(_), Some(_)) => return Err("give `format` or `formats`, not both".into()),
        (_, Some(list)) if list.is_empty() => return Err("`formats` is empty".into()),
        (_, Some(list)) => list.iter().map(|f| datetime_format(f)).collect::<Result<_, _>>()?,
        (Some(f), None) => vec![datetime_format(&f)?],
        (None, None) => vec![DatetimeFormat::Default],
    };
    let timezone = timezone
        .map(|z| {
            z.parse::<chrono_tz::Tz>()
                .map_err(|_| format!("`timezone` `{z}` is not an IANA time zone name (such as Europe/Berlin)"))
        })
        .transpose()?;
    Ok(DatetimeSpec { formats, timezone })
}

/// Checks the number options of a field of type `kind`: single characters, distinct, not
/// digits or signs, and only on numeric types (`decimalChar` only on `number`).
fn number_format(
    kind: &str,
    decimal: Option<String>,
    group: Option<String>,
    bare: Option<bool>,
) -> Result<NumberFormat, String> {
    let numeric = matches!(kind, "number" | "integer");
    if !numeric && (decimal.is_some() || group.is_some() || bare.is_some()) {
        return Err("`decimalChar`, `groupChar` and `bareNumber` apply only to number and integer fields".into());
    }
    if kind == "integer" && decimal.is_some() {
        return Err("`decimalChar` applies only to number fields".into());
    }
    let one_char = |key: &str, text: String| -> Result<char, String> {
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if !c.is_ascii_digit() && c != '-' && c != '+' => Ok(c),
            _ => Err(format!(
                "`{key}` must be one character, not a digit or sign (got {text:?})"
            )),
        }
    };
    let mut format = NumberFormat::default();
    if let Some(d) = decimal {
        format.decimal_char = one_char("decimalChar", d)?;
    }
    if let Some(g) = group {
        format.group_char = Some(one_char("groupChar", g)?);
    }
    if format.group_char == Some(format.decimal_char) {
        return Err(format!(
            "`groupChar` and `decimalChar` are both {:?}",
            format.decimal_char
        ));
    }
    format.bare_number = bare.unwrap_or(true);
    Ok(format)
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
            &s.fields[s.field_index("order_ts").unwrap()].kind,
            FieldKind::Datetime(DatetimeSpec { formats, timezone: None }) if formats == &[DatetimeFormat::Any]
        ));
    }

    #[test]
    fn datetime_formats_list_and_timezone_are_read_and_checked() {
        let s = TableSchema::parse(
            r#"{"fields":[{"name":"t","type":"datetime","formats":["%d.%m.%Y %H:%M","any"],"timezone":"Europe/Berlin"}]}"#,
            Path::new("x.json"),
        )
        .unwrap();
        let FieldKind::Datetime(spec) = &s.fields[0].kind else {
            panic!("{:?}", s.fields[0].kind)
        };
        assert_eq!(
            spec.formats,
            vec![DatetimeFormat::Pattern("%d.%m.%Y %H:%M".into()), DatetimeFormat::Any]
        );
        assert_eq!(spec.timezone, Some(chrono_tz::Europe::Berlin));
        for (bad, needle) in [
            (
                r#"{"name":"a","type":"datetime","format":"any","formats":["any"]}"#,
                "not both",
            ),
            (r#"{"name":"a","type":"datetime","formats":[]}"#, "`formats` is empty"),
            (
                r#"{"name":"a","type":"datetime","formats":["%Y-%m-%d %Q"]}"#,
                "not a valid strftime",
            ),
            (r#"{"name":"a","type":"datetime","timezone":"Mars/Olympus"}"#, "IANA"),
            (
                r#"{"name":"a","type":"string","timezone":"UTC"}"#,
                "datetime fields only",
            ),
        ] {
            let err = TableSchema::parse(&format!(r#"{{"fields":[{bad}]}}"#), Path::new("x.json"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("`a`") && err.contains(needle), "{bad}: {err}");
        }
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
    fn number_options_are_read_and_checked() {
        let s = TableSchema::parse(
            r#"{"fields":[{"name":"a","type":"number","decimalChar":",","groupChar":".","bareNumber":false},
                          {"name":"b","type":"integer","groupChar":" "}]}"#,
            Path::new("x.json"),
        )
        .unwrap();
        assert_eq!(
            s.fields[0].number,
            NumberFormat {
                decimal_char: ',',
                group_char: Some('.'),
                bare_number: false
            }
        );
        assert_eq!(s.fields[1].number.group_char, Some(' '));
        assert!(s.fields[1].number.bare_number);
        for (bad, needle) in [
            (r#"{"name":"a","type":"number","groupChar":"."}"#, "both"),
            (r#"{"name":"a","type":"number","decimalChar":",,"}"#, "one character"),
            (r#"{"name":"a","type":"integer","decimalChar":","}"#, "only to number"),
            (
                r#"{"name":"a","type":"string","bareNumber":false}"#,
                "only to number and integer",
            ),
        ] {
            let err = TableSchema::parse(&format!(r#"{{"fields":[{bad}]}}"#), Path::new("x.json"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("`a`") && err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn event_time_must_name_a_date_or_datetime_field() {
        let parse = |event: &str| {
            TableSchema::parse(
                &format!(r#"{{"fields":[{{"name":"id"}},{{"name":"at","type":"datetime"}}],"eventTime":"{event}"}}"#),
                Path::new("s.json"),
            )
        };
        assert_eq!(parse("at").unwrap().event_time.as_deref(), Some("at"));
        let wrong_type = parse("id").unwrap_err().to_string();
        assert!(
            wrong_type.contains("eventTime names `id`, which is not a date or datetime field"),
            "{wrong_type}"
        );
        let missing = parse("when").unwrap_err().to_string();
        assert!(
            missing.contains("eventTime names `when`, which is not a field"),
            "{missing}"
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
