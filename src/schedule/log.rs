//! Structured log lines of the scheduler: one JSON object per line on stdout, with `ts`
//! (RFC 3339 UTC), `level`, `event` and the event's fields, for log shippers and tests.

use std::io::Write;

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};

/// Writes one JSON line: `{"ts":..., "level":..., "event":..., <fields>}`. A closed stdout
/// is ignored (the daemon keeps scheduling).
pub fn emit(level: &str, event: &str, fields: Value) {
    let mut line = Map::new();
    line.insert(
        "ts".into(),
        Value::String(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    line.insert("level".into(), Value::String(level.into()));
    line.insert("event".into(), Value::String(event.into()));
    if let Value::Object(fields) = fields {
        line.extend(fields);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", Value::Object(line));
    let _ = out.flush();
}

/// An `info` line.
pub fn info(event: &str, fields: Value) {
    emit("info", event, fields);
}

/// A `warn` line.
pub fn warn(event: &str, fields: Value) {
    emit("warn", event, fields);
}

/// An `error` line.
pub fn error(event: &str, fields: Value) {
    emit("error", event, fields);
}
