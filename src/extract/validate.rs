//! Typing and constraint checks: a [`TextBatch`] becomes a typed Arrow [`RecordBatch`] of
//! the rows that pass every declared rule, plus one [`Reject`] per failing value. Works
//! column by column; the good rows are then taken with one filter mask, so the line
//! number of every row, good or bad, is kept.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Date32Builder, Float64Builder, Int64Array, Int64Builder,
    StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::compute::filter;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};

use super::reader::{Reject, TextBatch};
use crate::config::TableSchema;
use crate::config::schema::{DatetimeFormat, DatetimeSpec, FieldKind, FieldSpec, NumberFormat};
use crate::names::{SOURCE_FILE_COLUMN, SOURCE_LINE_COLUMN};

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01, for Arrow's Date32.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Arrow schema of an extracted table: the declared fields, then file and line.
pub fn raw_schema(schema: &TableSchema) -> SchemaRef {
    let mut fields: Vec<Field> = schema
        .arrow_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SOURCE_FILE_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(SOURCE_LINE_COLUMN, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// A line number as stored: a signed 64-bit integer, the type Delta Lake and most readers
/// have (no file has 2^63 lines; larger numbers would be stored as `i64::MAX`).
pub fn line_value(line: u64) -> i64 {
    i64::try_from(line).unwrap_or(i64::MAX)
}

/// The result of validating one batch.
#[derive(Debug)]
pub struct Validated {
    /// Rows that passed, typed, with `_source_file` and `_source_line`.
    pub good: RecordBatch,
    /// One entry per failed value (a row can fail in several columns).
    pub rejects: Vec<Reject>,
    /// Rows rejected (each counted once).
    pub rejected_rows: usize,
    /// Largest datetime seen in the good rows, as UTC microseconds.
    pub max_timestamp: Option<i64>,
}

/// A datetime as one format read it: an instant, or a local time still to be placed in the
/// field's zone.
enum ParsedDatetime {
    Instant(i64),
    Local(NaiveDateTime),
}

/// True when `t` cannot hold a zone or offset: after its first 10 characters (a date) only
/// digits and `T`, space, `:` or `.`. The formats with a zone need not be tried on it.
fn without_zone(t: &str) -> bool {
    t.get(10..)
        .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit() || b"T :.".contains(&b)))
}

/// Reads `t` with one format; `None` when it does not match.
fn parse_with(t: &str, format: &DatetimeFormat) -> Option<ParsedDatetime> {
    let instant = |d: DateTime<chrono::FixedOffset>| ParsedDatetime::Instant(d.timestamp_micros());
    match format {
        DatetimeFormat::Default => DateTime::parse_from_rfc3339(t).ok().map(instant),
        DatetimeFormat::Any => (!without_zone(t))
            .then(|| {
                DateTime::parse_from_rfc3339(t).ok().or_else(|| {
                    ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%z"]
                        .iter()
                        .find_map(|f| DateTime::parse_from_str(t, f).ok())
                })
            })
            .flatten()
            .map(instant)
            .or_else(|| {
                [
                    "%Y-%m-%dT%H:%M:%S%.f",
                    "%Y-%m-%d %H:%M:%S%.f",
                    "%Y-%m-%dT%H:%M",
                    "%Y-%m-%d %H:%M",
                ]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
                .or_else(|| {
                    NaiveDate::parse_from_str(t, "%Y-%m-%d")
                        .ok()
                        .map(|d| d.and_time(NaiveTime::MIN))
                })
                .map(ParsedDatetime::Local)
            }),
        DatetimeFormat::Pattern(p) if p.contains("%z") || p.contains("%:z") || p.contains("%#z") => {
            DateTime::parse_from_str(t, p).ok().map(instant)
        }
        DatetimeFormat::Pattern(p) => NaiveDateTime::parse_from_str(t, p)
            .or_else(|_| NaiveDate::parse_from_str(t, p).map(|d| d.and_time(NaiveTime::MIN)))
            .ok()
            .map(ParsedDatetime::Local),
    }
}

/// Why a value matching no format was rejected, naming the format(s).
fn mismatch(formats: &[DatetimeFormat]) -> String {
    match formats {
        [DatetimeFormat::Default] => "not an ISO 8601 / RFC 3339 datetime with a zone".into(),
        [DatetimeFormat::Any] => "not a datetime (ISO 8601, 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD')".into(),
        [DatetimeFormat::Pattern(p)] => format!("does not match the datetime format `{p}`"),
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|f| match f {
                    DatetimeFormat::Default => "`default`".to_string(),
                    DatetimeFormat::Any => "`any`".to_string(),
                    DatetimeFormat::Pattern(p) => format!("`{p}`"),
                })
                .collect();
            format!("matches none of the datetime formats {}", names.join(", "))
        }
    }
}

/// Parses one datetime value with the field's formats, in order; a value without an offset
/// is placed in the field's time zone (UTC when none). `Err` carries the reason.
fn parse_datetime(text: &str, spec: &DatetimeSpec) -> Result<i64, String> {
    let t = text.trim();
    let Some(parsed) = spec.formats.iter().find_map(|f| parse_with(t, f)) else {
        return Err(mismatch(&spec.formats));
    };
    match (parsed, spec.timezone) {
        (ParsedDatetime::Instant(us), _) => Ok(us),
        (ParsedDatetime::Local(local), None) => Ok(local.and_utc().timestamp_micros()),
        (ParsedDatetime::Local(local), Some(zone)) => match zone.from_local_datetime(&local) {
            LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => Ok(d.timestamp_micros()),
            LocalResult::None => Err(format!(
                "{local} does not exist in {zone} (a daylight-saving change skips it)"
            )),
        },
    }
}

/// The text of a number or integer as Rust parses it: trimmed; with a `groupChar` the
/// separators removed (only between digits, never after the decimal separator); a
/// `decimalChar` turned into `.`; with `bareNumber: false` the non-numeric text before the
/// first and after the last digit dropped, keeping a minus sign found before the number
/// (`-€12.50`, `€ -12.50`). `None` when the text cannot be a number in this format.
fn number_text<'a>(format: &NumberFormat, text: &'a str) -> Option<Cow<'a, str>> {
    let t = text.trim();
    if format.is_plain() {
        return Some(Cow::Borrowed(t));
    }
    let mut body = t;
    let mut negative = false;
    if !format.bare_number {
        let first = t.find(|c: char| c.is_ascii_digit())?;
        let last = t.rfind(|c: char| c.is_ascii_digit())? + 1;
        // A decimal separator right before the first digit belongs to the number (`€.50`).
        let start = match t[..first].strip_suffix(format.decimal_char) {
            Some(before) => before.len(),
            None => first,
        };
        let prefix = &t[..start];
        let sign = prefix.trim_end().chars().last();
        if matches!(sign, Some('-' | '+')) {
            negative = sign == Some('-');
        } else if prefix.contains('-') {
            negative = prefix.trim_start().starts_with('-');
        }
        body = &t[start..last];
    }
    let mut out = String::with_capacity(body.len() + 1);
    if negative {
        out.push('-');
    }
    let mut seen_decimal = false;
    let mut previous: Option<char> = None;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if Some(c) == format.group_char {
            let between_digits =
                previous.is_some_and(|p| p.is_ascii_digit()) && chars.peek().is_some_and(|n| n.is_ascii_digit());
            if seen_decimal || !between_digits {
                return None;
            }
        } else if c == format.decimal_char {
            seen_decimal = true;
            out.push('.');
        } else if c == '.' {
            // `.` is not the decimal separator here (and not the group separator).
            return None;
        } else {
            out.push(c);
        }
        previous = Some(c);
    }
    Some(Cow::Owned(out))
}

/// Why `text` is not a number of `field`: the type, and a hint at the schema option that
/// would read it when it looks like a formatted number.
fn number_reason(field: &FieldSpec, text: &str) -> String {
    let what = if field.kind == FieldKind::Integer {
        "not an integer"
    } else {
        "not a number"
    };
    let t = text.trim();
    if !t.contains(|c: char| c.is_ascii_digit()) {
        return what.into();
    }
    let f = &field.number;
    let inner = t.trim_matches(|c: char| !c.is_ascii_digit());
    let outer = t.len() != inner.len() && t.trim_start_matches(['-', '+']).len() != inner.len();
    if f.bare_number && outer && !t.ends_with('.') {
        format!("{what} (declare `\"bareNumber\": false` to allow currency symbols, units or %)")
    } else if f.group_char.is_none() && inner.contains([',', ' ', '\'', '\u{a0}', '.']) {
        format!("{what} (declare `groupChar` / `decimalChar` for numbers like 1,234.50 or 1.234,50)")
    } else {
        what.into()
    }
}

fn parse_bool(t: &str) -> Option<bool> {
    match t.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "t" => Some(true),
        "false" | "0" | "no" | "n" | "f" => Some(false),
        _ => None,
    }
}

fn check_range(field: &FieldSpec, v: f64) -> Result<(), String> {
    if let Some(lo) = field.minimum
        && v < lo
    {
        return Err(format!("{v} is below the minimum {lo}"));
    }
    if let Some(hi) = field.maximum
        && v > hi
    {
        return Err(format!("{v} is above the maximum {hi}"));
    }
    Ok(())
}

/// Typed output of one column.
enum Typed {
    Str(StringBuilder),
    Int(Int64Builder),
    Num(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder),
}

impl Typed {
    fn new(kind: &FieldKind, n: usize) -> Self {
        match kind {
            FieldKind::String => Typed::Str(StringBuilder::with_capacity(n, n * 12)),
            FieldKind::Integer => Typed::Int(Int64Builder::with_capacity(n)),
            FieldKind::Number => Typed::Num(Float64Builder::with_capacity(n)),
            FieldKind::Boolean => Typed::Bool(BooleanBuilder::with_capacity(n)),
            FieldKind::Date(_) => Typed::Date(Date32Builder::with_capacity(n)),
            FieldKind::Datetime(_) => Typed::Ts(TimestampMicrosecondBuilder::with_capacity(n)),
        }
    }

    fn append_null(&mut self) {
        match self {
            Typed::Str(b) => b.append_null(),
            Typed::Int(b) => b.append_null(),
            Typed::Num(b) => b.append_null(),
            Typed::Bool(b) => b.append_null(),
            Typed::Date(b) => b.append_null(),
            Typed::Ts(b) => b.append_null(),
        }
    }

    /// Parses and checks `t`, appending the typed value (or a null placeholder on failure).
    fn append(&mut self, field: &FieldSpec, t: &str) -> Result<Option<i64>, String> {
        let mut ts = None;
        let result = match (self, &field.kind) {
            (Typed::Str(b), _) => {
                let r = check_string(field, t);
                if r.is_ok() {
                    b.append_value(t);
                } else {
                    b.append_null();
                }
                return r.map(|_| None);
            }
            (Typed::Int(b), _) => match number_text(&field.number, t).and_then(|n| n.parse::<i64>().ok()) {
                Some(v) => check_range(field, v as f64).map(|_| b.append_value(v)),
                None => Err(number_reason(field, t)),
            }
            .inspect_err(|_| b.append_null()),
            (Typed::Num(b), _) => match number_text(&field.number, t).and_then(|n| n.parse::<f64>().ok()) {
                Some(v) if v.is_finite() => check_range(field, v).map(|_| b.append_value(v)),
                _ => Err(number_reason(field, t)),
            }
            .inspect_err(|_| b.append_null()),
            (Typed::Bool(b), _) => match parse_bool(t) {
                Some(v) => {
                    b.append_value(v);
                    Ok(())
                }
                None => {
                    b.append_null();
                    Err("not a boolean".into())
                }
            },
            (Typed::Date(b), FieldKind::Date(p)) => {
                match NaiveDate::parse_from_str(t.trim(), p.as_deref().unwrap_or("%Y-%m-%d")) {
                    Ok(d) => {
                        b.append_value(d.num_days_from_ce_i32() - UNIX_EPOCH_DAYS_FROM_CE);
                        Ok(())
                    }
                    Err(_) => {
                        b.append_null();
                        Err(format!("not a date ({})", p.as_deref().unwrap_or("YYYY-MM-DD")))
                    }
                }
            }
            (Typed::Ts(b), FieldKind::Datetime(f)) => match parse_datetime(t, f) {
                Ok(v) => {
                    b.append_value(v);
                    ts = Some(v);
                    Ok(())
                }
                Err(e) => {
                    b.append_null();
                    Err(e)
                }
            },
            (typed, _) => {
                typed.append_null();
                Err("internal: builder does not match the field type".into())
            }
        };
        result.map(|_| ts)
    }

    fn finish(self) -> ArrayRef {
        match self {
            Typed::Str(mut b) => Arc::new(b.finish()),
            Typed::Int(mut b) => Arc::new(b.finish()),
            Typed::Num(mut b) => Arc::new(b.finish()),
            Typed::Bool(mut b) => Arc::new(b.finish()),
            Typed::Date(mut b) => Arc::new(b.finish()),
            Typed::Ts(mut b) => Arc::new(b.finish()),
        }
    }
}

trait NumDaysI32 {
    fn num_days_from_ce_i32(&self) -> i32;
}

impl NumDaysI32 for NaiveDate {
    fn num_days_from_ce_i32(&self) -> i32 {
        chrono::Datelike::num_days_from_ce(self)
    }
}

fn check_string(field: &FieldSpec, t: &str) -> Result<(), String> {
    if let Some(allowed) = &field.allowed
        && !allowed.iter().any(|a| a == t)
    {
        return Err(format!("not one of the allowed values: {}", allowed.join(", ")));
    }
    if let Some(p) = &field.pattern
        && !p.is_match(t)
    {
        return Err(format!(
            "does not match the pattern `{}`",
            p.as_str().trim_start_matches("^(?:").trim_end_matches(")$")
        ));
    }
    Ok(())
}

/// Builds the raw record shown in the quarantine for a row that split fine but failed a
/// check: a JSON object of the declared columns as read.
fn record_json(schema: &TableSchema, columns: &[&StringArray], row: usize) -> String {
    let mut map = serde_json::Map::new();
    for (f, c) in schema.fields.iter().zip(columns) {
        let v = if c.is_valid(row) {
            serde_json::Value::String(c.value(row).to_string())
        } else {
            serde_json::Value::Null
        };
        map.insert(f.name.clone(), v);
    }
    serde_json::Value::Object(map).to_string()
}

/// True when `v` is one of the schema's missing-value markers. Lengths first, so the usual
/// marker (the empty string) costs no string comparison on any value.
fn is_missing(markers: &[String], v: &str) -> bool {
    markers.iter().any(|m| m.len() == v.len() && (v.is_empty() || m == v))
}

/// A string field's column: the text column itself, its values not copied, with missing
/// markers made null. Missing required values and values failing the field's checks go to
/// `failures`; their rows are filtered out afterwards, so what they hold here does not
/// matter.
fn string_column(
    schema: &TableSchema,
    (fi, field): (usize, &FieldSpec),
    col: &StringArray,
    ok: &mut [bool],
    failures: &mut Vec<Failure>,
) -> ArrayRef {
    let mut present = NullBufferBuilder::new(col.len());
    let checked = field.allowed.is_some() || field.pattern.is_some();
    // The last value that passed the checks: values of a checked column (a code, an
    // enumeration) tend to repeat, and one comparison is cheaper than a pattern match.
    let mut last_ok: Option<&str> = None;
    for (row, row_ok) in ok.iter_mut().enumerate() {
        let value = col.is_valid(row).then(|| col.value(row));
        match value.filter(|v| !is_missing(&schema.missing_values, v)) {
            None => {
                present.append_null();
                if field.required {
                    *row_ok = false;
                    failures.push((row, fi, None, "required value is missing".into()));
                }
            }
            Some(v) => {
                present.append_non_null();
                if !checked || last_ok == Some(v) {
                    continue;
                }
                match check_string(field, v) {
                    Ok(()) => last_ok = Some(v),
                    Err(reason) => {
                        *row_ok = false;
                        failures.push((row, fi, Some(v.to_string()), reason));
                    }
                }
            }
        }
    }
    let nulls = present.finish();
    match StringArray::try_new(col.offsets().clone(), col.values().clone(), nulls.clone()) {
        Ok(column) => Arc::new(column),
        // Cannot happen (the parts come from a valid column); copying is right anyway.
        Err(_) => {
            let present = |row: usize| nulls.as_ref().is_none_or(|n| n.is_valid(row));
            Arc::new(
                (0..col.len())
                    .map(|row| present(row).then(|| col.value(row)))
                    .collect::<StringArray>(),
            )
        }
    }
}

/// A failed value: row, field index, the value as read, the reason.
type Failure = (usize, usize, Option<String>, String);

/// Types and checks every declared column of `batch`; `file` fills `_source_file`.
pub fn validate(schema: &TableSchema, raw: &SchemaRef, batch: &TextBatch, file: &str) -> Validated {
    let n = batch.num_rows();
    let text: Vec<&StringArray> = batch
        .columns
        .iter()
        .map(|c| c.as_any().downcast_ref::<StringArray>())
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    let mut ok = vec![true; n];
    let mut failures: Vec<Failure> = Vec::new();
    let mut typed_columns = Vec::with_capacity(schema.fields.len());
    let mut max_timestamp: Option<i64> = None;
    for (fi, field) in schema.fields.iter().enumerate() {
        let Some(col) = text.get(fi) else {
            break;
        };
        if field.kind == FieldKind::String {
            typed_columns.push(string_column(schema, (fi, field), col, &mut ok, &mut failures));
            continue;
        }
        let mut typed = Typed::new(&field.kind, n);
        for (row, row_ok) in ok.iter_mut().enumerate() {
            let value = col.is_valid(row).then(|| col.value(row));
            let value = value.filter(|v| !is_missing(&schema.missing_values, v));
            match value {
                None => {
                    typed.append_null();
                    if field.required {
                        *row_ok = false;
                        failures.push((row, fi, None, "required value is missing".into()));
                    }
                }
                Some(v) => match typed.append(field, v) {
                    Ok(ts) => {
                        if let Some(t) = ts {
                            max_timestamp = Some(max_timestamp.map_or(t, |m| m.max(t)));
                        }
                    }
                    Err(reason) => {
                        *row_ok = false;
                        failures.push((row, fi, Some(v.to_string()), reason));
                    }
                },
            }
        }
        typed_columns.push(typed.finish());
    }
    let mask = BooleanArray::from(ok);
    let rejected_rows = mask.false_count();
    let mut columns: Vec<ArrayRef> = typed_columns;
    columns.push(Arc::new(StringArray::new_repeated(file, n)));
    columns.push(Arc::new(Int64Array::from_iter_values(
        batch.lines.iter().map(|&l| line_value(l)),
    )));
    // Most batches have no bad row: then every column is kept as built, not copied.
    let good_columns: Vec<ArrayRef> = if rejected_rows == 0 {
        columns
    } else {
        columns
            .iter()
            .map(|c| filter(c, &mask).unwrap_or_else(|_| Arc::clone(c)))
            .collect()
    };
    let good =
        RecordBatch::try_new(Arc::clone(raw), good_columns).unwrap_or_else(|_| RecordBatch::new_empty(Arc::clone(raw)));
    // Timestamps of rejected rows do not count towards the data's latest event.
    if rejected_rows > 0 {
        max_timestamp = None;
        for (fi, field) in schema.fields.iter().enumerate() {
            if matches!(field.kind, FieldKind::Datetime(_))
                && let Some(ts) = good
                    .column(fi)
                    .as_any()
                    .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
                && let Some(m) = arrow::compute::max(ts)
            {
                max_timestamp = Some(max_timestamp.map_or(m, |x| x.max(m)));
            }
        }
    }
    failures.sort_by_key(|f| (f.0, f.1));
    let rejects = failures
        .into_iter()
        .map(|(row, fi, raw_value, reason)| Reject {
            line: batch.lines[row],
            column: schema.fields[fi].name.clone(),
            raw_value,
            reason,
            raw_record: record_json(schema, &text, row),
        })
        .collect();
    Validated {
        good,
        rejects,
        rejected_rows,
        max_timestamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn schema() -> TableSchema {
        TableSchema::parse(
            r#"{"fields":[
                {"name":"id","type":"string","constraints":{"required":true}},
                {"name":"qty","type":"integer","constraints":{"minimum":1}},
                {"name":"ts","type":"datetime","format":"any"},
                {"name":"kind","type":"string","constraints":{"enum":["a","b"]}}
            ]}"#,
            Path::new("t.json"),
        )
        .unwrap()
    }

    fn batch(rows: &[[Option<&str>; 4]]) -> TextBatch {
        let columns = (0..4)
            .map(|c| Arc::new(StringArray::from(rows.iter().map(|r| r[c]).collect::<Vec<_>>())) as ArrayRef)
            .collect();
        TextBatch {
            lines: (2..2 + rows.len() as u64).collect(),
            columns,
            rejects: vec![],
        }
    }

    #[test]
    fn bad_values_are_rejected_with_line_column_and_reason() {
        let s = schema();
        let raw = raw_schema(&s);
        let b = batch(&[
            [Some("x1"), Some("2"), Some("2024-01-02T03:04:05Z"), Some("a")],
            [Some("x2"), Some("three"), Some("2024-01-02 03:04:05"), Some("b")],
            [Some(""), Some("0"), Some("not-a-date"), Some("c")],
            [Some("x4"), Some(""), Some("2024-01-02T04:04:05+01:00"), None],
        ]);
        let v = validate(&s, &raw, &b, "f.csv");
        assert_eq!(v.good.num_rows(), 2);
        assert_eq!(v.rejected_rows, 2);
        let reasons: Vec<(u64, &str, &str)> = v
            .rejects
            .iter()
            .map(|r| (r.line, r.column.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(reasons[0], (3, "qty", "not an integer"));
        assert_eq!(
            reasons.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![3, 4, 4, 4, 4],
            "sorted by line"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.0 == 4 && r.1 == "id" && r.2.contains("required"))
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.0 == 4 && r.1 == "qty" && r.2.contains("below the minimum"))
        );
        assert!(reasons.iter().any(|r| r.0 == 4 && r.1 == "ts"));
        assert!(reasons.iter().any(|r| r.0 == 4 && r.1 == "kind"));
        // Lines of the good rows are kept.
        let lines = v.good.column(5).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(lines.values().to_vec(), vec![2, 5]);
        // +01:00 is the same instant as 03:04:05Z, so the max is 03:04:05Z.
        assert_eq!(
            v.max_timestamp,
            parse_datetime("2024-01-02T03:04:05Z", &spec(&[DatetimeFormat::Any], None)).ok()
        );
    }

    fn number_field(options: &str) -> FieldSpec {
        TableSchema::parse(
            &format!(r#"{{"fields":[{{"name":"n","type":"number"{options}}}]}}"#),
            Path::new("t.json"),
        )
        .unwrap()
        .fields
        .remove(0)
    }

    fn parse_number(field: &FieldSpec, t: &str) -> Result<f64, String> {
        let mut typed = Typed::new(&field.kind, 1);
        typed.append(field, t)?;
        let array = typed.finish();
        let values = array.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
        Ok(values.value(0))
    }

    #[test]
    fn numbers_with_group_and_decimal_separators_and_symbols() {
        let plain = number_field("");
        assert_eq!(parse_number(&plain, " 1234.5 "), Ok(1234.5));
        let err = parse_number(&plain, "1,234.50").unwrap_err();
        assert!(err.starts_with("not a number") && err.contains("groupChar"), "{err}");
        let err = parse_number(&plain, "€12.50").unwrap_err();
        assert!(err.contains("bareNumber"), "{err}");
        assert_eq!(parse_number(&plain, "twelve"), Err("not a number".into()));

        let us = number_field(r#","groupChar":",""#);
        assert_eq!(parse_number(&us, "1,234.50"), Ok(1234.5));
        assert_eq!(parse_number(&us, "-1,234,567.25"), Ok(-1_234_567.25));
        assert_eq!(parse_number(&us, "12"), Ok(12.0));
        for bad in ["1,234.5,0", ",123", "123,", "1,,234", "€1,234.50"] {
            assert!(parse_number(&us, bad).is_err(), "{bad}");
        }

        let de = number_field(r#","decimalChar":",","groupChar":".""#);
        assert_eq!(parse_number(&de, "1.234,50"), Ok(1234.5));
        assert_eq!(parse_number(&de, "0,5"), Ok(0.5));
        assert!(parse_number(&de, "1,234.50").is_err());

        let comma_only = number_field(r#","decimalChar":",""#);
        assert_eq!(parse_number(&comma_only, "12,5"), Ok(12.5));
        assert!(
            parse_number(&comma_only, "12.5").is_err(),
            "`.` is not the decimal separator"
        );

        let money = number_field(r#","groupChar":",","bareNumber":false"#);
        for (text, value) in [
            ("€12.50", 12.5),
            ("12.50 USD", 12.5),
            ("$1,234.50", 1234.5),
            ("-€12.50", -12.5),
            ("€ -12.50", -12.5),
            ("15%", 15.0),
            ("EUR .50", 0.5),
        ] {
            assert_eq!(parse_number(&money, text), Ok(value), "{text}");
        }
        for bad in ["EUR", "12 and 13", "1,2,3.4.5"] {
            assert!(parse_number(&money, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn integers_take_group_separators_and_units() {
        let schema = TableSchema::parse(
            r#"{"fields":[{"name":"q","type":"integer","groupChar":"'","bareNumber":false,"constraints":{"maximum":5000}}]}"#,
            Path::new("t.json"),
        )
        .unwrap();
        let raw = raw_schema(&schema);
        let rows = ["1'200 pcs", "12", "1'200.5", "9'999", "x"];
        let b = TextBatch {
            lines: (2..2 + rows.len() as u64).collect(),
            columns: vec![Arc::new(StringArray::from(rows.to_vec())) as ArrayRef],
            rejects: vec![],
        };
        let v = validate(&schema, &raw, &b, "f.csv");
        let good = v
            .good
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(good.values().to_vec(), vec![1200, 12]);
        let reasons: Vec<(u64, &str, Option<&str>)> = v
            .rejects
            .iter()
            .map(|r| (r.line, r.reason.as_str(), r.raw_value.as_deref()))
            .collect();
        assert_eq!(reasons.len(), 3);
        assert_eq!(reasons[0].0, 4);
        assert!(reasons[0].1.starts_with("not an integer"), "{reasons:?}");
        assert_eq!(reasons[1], (5, "9999 is above the maximum 5000", Some("9'999")));
        assert_eq!(reasons[2], (6, "not an integer", Some("x")));
    }

    fn spec(formats: &[DatetimeFormat], zone: Option<&str>) -> DatetimeSpec {
        DatetimeSpec {
            formats: formats.to_vec(),
            timezone: zone.map(|z| z.parse().unwrap()),
        }
    }

    #[test]
    fn declared_formats_are_tried_in_order_and_local_times_placed_in_the_zone() {
        let utc = parse_datetime("2024-03-05T14:22:10Z", &spec(&[DatetimeFormat::Any], None)).unwrap();
        let berlin = spec(
            &[DatetimeFormat::Pattern("%d/%m/%Y %H:%M:%S".into()), DatetimeFormat::Any],
            Some("Europe/Berlin"),
        );
        // CET is UTC+1 in March: local 15:22:10 is 14:22:10Z, in either declared format.
        assert_eq!(parse_datetime("05/03/2024 15:22:10", &berlin).unwrap(), utc);
        assert_eq!(parse_datetime("2024-03-05 15:22:10", &berlin).unwrap(), utc);
        // An explicit offset wins over the zone.
        assert_eq!(parse_datetime("2024-03-05T14:22:10Z", &berlin).unwrap(), utc);
        // Summer time (UTC+2), the skipped hour, and the repeated hour (the earlier instant).
        let summer = parse_datetime("2024-07-01 12:00:00", &berlin).unwrap();
        assert_eq!(summer, parse_datetime("2024-07-01T10:00:00Z", &berlin).unwrap());
        let gap = parse_datetime("2024-03-31 02:30:00", &berlin).unwrap_err();
        assert!(gap.contains("does not exist in Europe/Berlin"), "{gap}");
        let repeated = parse_datetime("2024-10-27 02:30:00", &berlin).unwrap();
        assert_eq!(repeated, parse_datetime("2024-10-27T00:30:00Z", &berlin).unwrap());
        let none = parse_datetime("5 March 2024", &berlin).unwrap_err();
        assert_eq!(none, "matches none of the datetime formats `%d/%m/%Y %H:%M:%S`, `any`");
    }

    #[test]
    fn datetime_forms_agree_on_the_instant() {
        let f = spec(&[DatetimeFormat::Any], None);
        let a = parse_datetime("2024-03-05T14:22:10Z", &f).unwrap();
        assert_eq!(parse_datetime("2024-03-05 14:22:10", &f).unwrap(), a);
        assert_eq!(parse_datetime("2024-03-05T15:22:10+01:00", &f).unwrap(), a);
        assert!(parse_datetime("2024-03-05 14:22:10", &spec(&[DatetimeFormat::Default], None)).is_err());
        assert_eq!(
            parse_datetime(
                "05/03/2024 14:22",
                &spec(&[DatetimeFormat::Pattern("%d/%m/%Y %H:%M".into())], None)
            )
            .unwrap(),
            a - 10_000_000
        );
    }
}
