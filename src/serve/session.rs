//! The session statements of `patron serve` (`SET`, `SHOW`, `RESET`, `DISCARD`, `BEGIN`,
//! `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`), answered by patron from a settings map of
//! the connection alone. None of them reaches the query engine, none is turned back into
//! SQL text, and one connection's settings never change another's.
//!
//! Only the PostgreSQL client variables in [`VARIABLES`] exist; `SET` of any other name is
//! refused as PostgreSQL refuses it (`unrecognized configuration parameter`, 42704), so no
//! client can reach an engine option (`datafusion.*`, quoted or not). Values a client may
//! set are checked and stored in the connection's metadata map, where the protocol layer
//! reads the ones that change how results are written (`DateStyle`, `IntervalStyle`,
//! `bytea_output`, `extra_float_digits`), the statement timeout and the time zone a
//! statement is planned in.
//!
//! Transactions are accepted and have nothing to undo: every statement only reads.

use std::collections::HashMap;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{
    Expr, Ident, ObjectName, Reset, ResetStatement, Set, Statement, Value, ValueWithSpan,
};
use datafusion_postgres::pgwire::api::auth::DefaultServerParameterProvider;

/// The PostgreSQL version patron's endpoint speaks as (`server_version`, `version()`).
pub const PG_VERSION: &str = "16.6";
/// [`PG_VERSION`] as `server_version_num`.
pub const PG_VERSION_NUM: &str = "160006";

/// A session statement refused or malformed: SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError {
    /// The SQLSTATE code.
    pub code: &'static str,
    /// The message for the client.
    pub message: String,
}

impl SessionError {
    fn new(code: &'static str, message: impl Into<String>) -> SessionError {
        SessionError {
            code,
            message: message.into(),
        }
    }

    fn unknown(name: &str) -> SessionError {
        SessionError::new("42704", format!("unrecognized configuration parameter \"{name}\""))
    }

    fn read_only(name: &str) -> SessionError {
        SessionError::new("55P02", format!("parameter \"{name}\" cannot be changed"))
    }

    fn invalid(name: &str, value: &str, hint: &str) -> SessionError {
        SessionError::new(
            "22023",
            format!("invalid value for parameter \"{name}\": \"{value}\" ({hint})"),
        )
    }
}

/// How a variable's value is checked when a client sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Fixed by the server: `SET` is refused (55P02).
    Fixed,
    /// Any text up to [`MAX_VALUE_BYTES`].
    Text,
    /// One of the listed values (case-insensitive); stored as listed.
    OneOf(&'static [&'static str]),
    /// An integer in the range.
    Integer(i64, i64),
    /// A duration: a number of milliseconds, or with a unit (`ms`, `s`, `min`, `h`).
    Duration,
    /// A time zone: an IANA name (`Europe/Berlin`, `UTC`) or an offset (`+02:00`).
    TimeZone,
    /// `DateStyle`: output style and field order, e.g. `ISO, MDY`.
    DateStyle,
}

/// One client variable: its name as clients spell it in `SHOW` output, its default, how a
/// new value is checked, and whether a change is reported with a `ParameterStatus` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    /// Name as PostgreSQL shows it (`TimeZone`); matched case-insensitively.
    pub name: &'static str,
    /// The value a new connection starts with.
    pub default: &'static str,
    /// How `SET` checks a value.
    pub check: Check,
    /// Sent to the client as `ParameterStatus` when it changes (PostgreSQL's GUC_REPORT).
    pub reported: bool,
    /// One line for `SHOW ALL`.
    pub description: &'static str,
}

/// Longest value a client may set (a sanity bound; PostgreSQL has none for most).
pub const MAX_VALUE_BYTES: usize = 1024;

/// Every variable a client can see, in `SHOW ALL` order (sorted by name).
pub const VARIABLES: &[Variable] = &[
    var(
        "application_name",
        "",
        Check::Text,
        true,
        "Application name reported in logs.",
    ),
    var(
        "block_size",
        "8192",
        Check::Fixed,
        false,
        "Size of a disk block (as PostgreSQL reports it).",
    ),
    var(
        "bytea_output",
        "hex",
        Check::OneOf(&["hex", "escape"]),
        false,
        "Output format for bytea.",
    ),
    var(
        "client_encoding",
        "UTF8",
        Check::OneOf(&["UTF8"]),
        true,
        "Client character set (UTF8 only).",
    ),
    var(
        "client_min_messages",
        "notice",
        Check::OneOf(&[
            "debug5", "debug4", "debug3", "debug2", "debug1", "log", "notice", "warning", "error",
        ]),
        false,
        "Message levels sent to the client.",
    ),
    var(
        "DateStyle",
        "ISO, YMD",
        Check::DateStyle,
        true,
        "Display format for dates.",
    ),
    var(
        "default_transaction_isolation",
        "read committed",
        Check::OneOf(&["serializable", "repeatable read", "read committed", "read uncommitted"]),
        false,
        "Isolation level of new transactions.",
    ),
    var(
        "default_transaction_read_only",
        "on",
        Check::OneOf(&["on"]),
        true,
        "Every transaction is read-only.",
    ),
    var(
        "extra_float_digits",
        "1",
        Check::Integer(-15, 3),
        false,
        "Extra digits for floating-point output.",
    ),
    var(
        "idle_in_transaction_session_timeout",
        "0",
        Check::Duration,
        false,
        "Accepted; patron holds no transaction state.",
    ),
    var(
        "in_hot_standby",
        "off",
        Check::Fixed,
        true,
        "Whether the server is a hot standby.",
    ),
    var(
        "integer_datetimes",
        "on",
        Check::Fixed,
        true,
        "Datetimes are integer based.",
    ),
    var(
        "IntervalStyle",
        "postgres",
        Check::OneOf(&["postgres", "postgres_verbose", "sql_standard", "iso_8601"]),
        true,
        "Display format for intervals.",
    ),
    var(
        "is_superuser",
        "off",
        Check::Fixed,
        true,
        "Whether the user is a superuser.",
    ),
    var("lc_collate", "C", Check::Fixed, false, "Collation order."),
    var("lc_ctype", "C", Check::Fixed, false, "Character classification."),
    var("lc_messages", "C", Check::Text, false, "Language of messages."),
    var("lc_monetary", "C", Check::Text, false, "Locale for money."),
    var("lc_numeric", "C", Check::Text, false, "Locale for numbers."),
    var("lc_time", "C", Check::Text, false, "Locale for dates and times."),
    var(
        "lock_timeout",
        "0",
        Check::Duration,
        false,
        "Accepted; patron takes no locks.",
    ),
    var(
        "max_index_keys",
        "32",
        Check::Fixed,
        false,
        "Most columns an index key holds.",
    ),
    var(
        "max_identifier_length",
        "63",
        Check::Fixed,
        false,
        "Longest identifier.",
    ),
    var(
        "search_path",
        "\"$user\", public",
        Check::Text,
        false,
        "Schema search order (patron has one schema).",
    ),
    var("server_encoding", "UTF8", Check::Fixed, true, "Server character set."),
    var(
        "server_version",
        PG_VERSION,
        Check::Fixed,
        true,
        "PostgreSQL version the endpoint speaks as.",
    ),
    var(
        "server_version_num",
        PG_VERSION_NUM,
        Check::Fixed,
        false,
        "server_version as a number.",
    ),
    var(
        "standard_conforming_strings",
        "on",
        Check::OneOf(&["on"]),
        true,
        "Backslashes in '...' strings are literal.",
    ),
    var(
        "statement_timeout",
        "0",
        Check::Duration,
        false,
        "Cancels statements running longer (0: the server's limit).",
    ),
    var(
        "TimeZone",
        "Etc/UTC",
        Check::TimeZone,
        true,
        "Time zone for displaying and interpreting timestamps.",
    ),
    var(
        "transaction_isolation",
        "read committed",
        Check::Fixed,
        false,
        "Isolation level of the current transaction.",
    ),
    var(
        "transaction_read_only",
        "on",
        Check::Fixed,
        false,
        "The current transaction is read-only.",
    ),
];

const fn var(
    name: &'static str,
    default: &'static str,
    check: Check,
    reported: bool,
    description: &'static str,
) -> Variable {
    Variable {
        name,
        default,
        check,
        reported,
        description,
    }
}

/// The variable called `name` (case-insensitive), with PostgreSQL's aliases.
pub fn variable(name: &str) -> Option<&'static Variable> {
    let name = match name.to_ascii_lowercase().as_str() {
        "time zone" | "time_zone" => "timezone".to_string(),
        "transaction isolation level" => "transaction_isolation".to_string(),
        other => other.to_string(),
    };
    VARIABLES.iter().find(|v| v.name.eq_ignore_ascii_case(&name))
}

/// The metadata key a variable is stored under: its lowercase name, which is also what
/// pgwire's `FormatOptions::from_client_metadata` reads.
fn key(v: &Variable) -> String {
    v.name.to_ascii_lowercase()
}

/// The current value of `v` on a connection.
pub fn value(metadata: &HashMap<String, String>, v: &Variable) -> String {
    metadata.get(&key(v)).cloned().unwrap_or_else(|| v.default.to_string())
}

/// The value of the variable called `name` on a connection (`current_setting`, `SHOW`).
pub fn lookup(metadata: &HashMap<String, String>, name: &str) -> Result<String, SessionError> {
    variable(name)
        .map(|v| value(metadata, v))
        .ok_or_else(|| SessionError::unknown(name))
}

/// The statement timeout a client set on its connection, if any.
pub fn client_timeout(metadata: &HashMap<String, String>) -> Option<Duration> {
    // `SET` stores it checked, in milliseconds ([`Check::Duration`]); 0 means none.
    metadata
        .get("statement_timeout")
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// The time zone a client set on its connection (`None`: the default, UTC). A value that
/// came unchecked (a login parameter) and does not parse counts as unset.
pub fn time_zone(metadata: &HashMap<String, String>) -> Option<String> {
    metadata.get("timezone").and_then(|tz| parse_time_zone(tz))
}

/// The parameters a client is sent at login (`ParameterStatus`), from [`VARIABLES`].
pub fn login_parameters() -> DefaultServerParameterProvider {
    let default = |name: &str| variable(name).map_or_else(String::new, |v| v.default.to_string());
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = default("server_version");
    p.server_encoding = default("server_encoding");
    p.search_path = default("search_path");
    p.time_zone = default("TimeZone");
    p.date_style = default("DateStyle");
    p.interval_style = default("IntervalStyle");
    p.is_superuser = false;
    p.default_transaction_read_only = true;
    p
}

/// A session statement, decided from its syntax tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Set variables to values (`None`: back to the default); the command tag (`SET`,
    /// `RESET`).
    Set(Vec<(&'static Variable, Option<String>)>, &'static str),
    /// Show one variable.
    Show(&'static Variable),
    /// Show every variable (`SHOW ALL`).
    ShowAll,
    /// Reset every variable (`RESET ALL`, `DISCARD ALL`), with the command tag.
    ResetAll(&'static str),
    /// Start a transaction.
    Begin,
    /// End a transaction; the tag is `COMMIT` or `ROLLBACK`.
    End(&'static str),
    /// A savepoint command with its command tag (`SAVEPOINT`, `RELEASE`, `ROLLBACK`).
    Savepoint(&'static str),
    /// A command that changes nothing here, answered with its tag (`SET` of transaction
    /// characteristics).
    NoOp(&'static str),
}

/// The session command `statement` is, `Ok(None)` when it is not a session statement, or
/// the refusal (an unknown variable, a value out of range, an engine option).
pub fn command(statement: &Statement) -> Result<Option<Command>, SessionError> {
    Ok(Some(match statement {
        Statement::Set(set) => set_command(set)?,
        Statement::ShowVariable { variable } => {
            let name = variable.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(" ");
            if name.eq_ignore_ascii_case("all") {
                Command::ShowAll
            } else {
                Command::Show(variable_named(&name)?)
            }
        }
        Statement::Reset(ResetStatement { reset }) => match reset {
            Reset::ALL => Command::ResetAll("RESET"),
            Reset::ConfigurationParameter(name) => {
                let v = settable(&object_name(name)?)?;
                Command::Set(vec![(v, None)], "RESET")
            }
        },
        Statement::Discard { .. } => Command::ResetAll("DISCARD ALL"),
        Statement::StartTransaction { statements, .. } if statements.is_empty() => Command::Begin,
        Statement::Commit { chain: false, .. } => Command::End("COMMIT"),
        Statement::Rollback {
            chain: false,
            savepoint: None,
        } => Command::End("ROLLBACK"),
        Statement::Rollback {
            chain: false,
            savepoint: Some(_),
        } => Command::Savepoint("ROLLBACK"),
        Statement::Savepoint { .. } => Command::Savepoint("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => Command::Savepoint("RELEASE"),
        _ => return Ok(None),
    }))
}

fn set_command(set: &Set) -> Result<Command, SessionError> {
    match set {
        Set::SingleAssignment {
            hivevar: false,
            variable,
            values,
            ..
        } => Ok(Command::Set(vec![assignment(variable, values)?], "SET")),
        Set::MultipleAssignments { assignments } => assignments
            .iter()
            .map(|a| assignment(&a.name, std::slice::from_ref(&a.value)))
            .collect::<Result<_, _>>()
            .map(|changes| Command::Set(changes, "SET")),
        Set::SetTimeZone { value, .. } => {
            let v = settable("TimeZone")?;
            let text = match value {
                Expr::Identifier(i)
                    if i.quote_style.is_none()
                        && ["local", "default"].contains(&i.value.to_ascii_lowercase().as_str()) =>
                {
                    None
                }
                other => Some(value_text("TimeZone", std::slice::from_ref(other))?),
            };
            Ok(Command::Set(
                vec![(v, text.map(|t| checked(v, &t)).transpose()?)],
                "SET",
            ))
        }
        Set::SetNames {
            charset_name,
            collation_name: None,
        } => {
            let v = settable("client_encoding")?;
            Ok(Command::Set(vec![(v, Some(checked(v, &charset_name.value)?))], "SET"))
        }
        Set::SetNames {
            collation_name: Some(_),
            ..
        } => Err(SessionError::new(
            "0A000",
            "SET NAMES ... COLLATE is not supported: patron serve speaks UTF8 with the C collation",
        )),
        Set::SetNamesDefault {} => Ok(Command::Set(vec![(settable("client_encoding")?, None)], "SET")),
        Set::SetTransaction { .. } => Ok(Command::NoOp("SET")),
        Set::SetRole { .. } | Set::SetSessionAuthorization(_) => Err(SessionError::new(
            "42501",
            "patron serve does not allow changing the role or session user",
        )),
        _ => Err(SessionError::new(
            "0A000",
            format!("patron serve does not support `{set}`"),
        )),
    }
}

/// The variable `name` and the checked value of `SET name = values`.
fn assignment(name: &ObjectName, values: &[Expr]) -> Result<(&'static Variable, Option<String>), SessionError> {
    let name = object_name(name)?;
    let v = settable(&name)?;
    if let [Expr::Identifier(i)] = values
        && i.quote_style.is_none()
        && i.value.eq_ignore_ascii_case("default")
    {
        return Ok((v, None));
    }
    let text = value_text(v.name, values)?;
    Ok((v, Some(checked(v, &text)?)))
}

/// A variable name from its parts, as written (`a.b` for a qualified one).
fn object_name(name: &ObjectName) -> Result<String, SessionError> {
    let parts: Option<Vec<&Ident>> = name.0.iter().map(|p| p.as_ident()).collect();
    parts
        .map(|p| p.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join("."))
        .ok_or_else(|| SessionError::unknown(&name.to_string()))
}

fn variable_named(name: &str) -> Result<&'static Variable, SessionError> {
    if name.to_ascii_lowercase().starts_with("datafusion.") {
        return Err(SessionError::new(
            "42501",
            format!("patron serve does not allow reading or changing engine options (\"{name}\")"),
        ));
    }
    variable(name).ok_or_else(|| SessionError::unknown(name))
}

fn settable(name: &str) -> Result<&'static Variable, SessionError> {
    let v = variable_named(name)?;
    if v.check == Check::Fixed {
        return Err(SessionError::read_only(v.name));
    }
    Ok(v)
}

/// The text of a `SET` value: string literals, numbers, identifiers and `on`/`off`; a list
/// (`SET search_path = a, b`) joined with `, `.
fn value_text(name: &str, values: &[Expr]) -> Result<String, SessionError> {
    let one = |e: &Expr| -> Result<String, SessionError> {
        match e {
            Expr::Value(ValueWithSpan { value, .. }) => match value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Ok(s.clone()),
                Value::Number(n, _) => Ok(n.to_string()),
                Value::Boolean(b) => Ok(if *b { "on" } else { "off" }.into()),
                other => Err(SessionError::invalid(name, &other.to_string(), "not a plain value")),
            },
            Expr::Identifier(i) => Ok(i.value.clone()),
            Expr::UnaryOp { op, expr } => Ok(format!("{op}{}", one_plain(name, expr)?)),
            other => Err(SessionError::invalid(name, &other.to_string(), "not a plain value")),
        }
    };
    let parts = values.iter().map(one).collect::<Result<Vec<_>, _>>()?;
    if parts.is_empty() {
        return Err(SessionError::new("42601", format!("SET {name} needs a value")));
    }
    Ok(parts.join(", "))
}

fn one_plain(name: &str, e: &Expr) -> Result<String, SessionError> {
    match e {
        Expr::Value(ValueWithSpan {
            value: Value::Number(n, _),
            ..
        }) => Ok(n.to_string()),
        other => Err(SessionError::invalid(name, &other.to_string(), "not a number")),
    }
}

/// Checks `text` as a value of `v`; the value to store.
pub fn checked(v: &Variable, text: &str) -> Result<String, SessionError> {
    if text.len() > MAX_VALUE_BYTES {
        return Err(SessionError::invalid(
            v.name,
            &text.chars().take(40).collect::<String>(),
            "longer than 1024 bytes",
        ));
    }
    let lower = text.trim().to_ascii_lowercase();
    match v.check {
        Check::Fixed => Err(SessionError::read_only(v.name)),
        Check::Text => Ok(text.to_string()),
        Check::OneOf(allowed) => {
            let aliases = [
                ("unicode", "utf8"),
                ("utf-8", "utf8"),
                ("true", "on"),
                ("yes", "on"),
                ("1", "on"),
            ];
            let lower = aliases
                .iter()
                .find(|(a, _)| *a == lower)
                .map_or(lower.as_str(), |(_, b)| b);
            allowed
                .iter()
                .find(|a| a.eq_ignore_ascii_case(lower))
                .map(|a| a.to_string())
                .ok_or_else(|| SessionError::invalid(v.name, text, &format!("allowed: {}", allowed.join(", "))))
        }
        Check::Integer(lo, hi) => match lower.parse::<i64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n.to_string()),
            _ => Err(SessionError::invalid(
                v.name,
                text,
                &format!("an integer from {lo} to {hi}"),
            )),
        },
        Check::Duration => parse_duration_ms(&lower)
            .map(|ms| ms.to_string())
            .ok_or_else(|| SessionError::invalid(v.name, text, "milliseconds, or a number with ms, s, min or h")),
        Check::TimeZone => parse_time_zone(text.trim()).ok_or_else(|| {
            SessionError::invalid(
                v.name,
                text,
                "an IANA time zone name such as Europe/Berlin, or an offset such as +02:00",
            )
        }),
        Check::DateStyle => parse_date_style(&lower).ok_or_else(|| {
            SessionError::invalid(
                v.name,
                text,
                "a style (ISO, SQL, Postgres, German) and/or an order (MDY, DMY, YMD)",
            )
        }),
    }
}

/// `100`, `100ms`, `5s`, `2min`, `1h` as milliseconds.
fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// An IANA zone in its canonical spelling, or a `+HH:MM` offset.
fn parse_time_zone(text: &str) -> Option<String> {
    if let Some(tz) = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(text))
    {
        return Some(tz.name().to_string());
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => ('+', &text[1..]),
        b'-' => ('-', &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 15 && m < 60).then(|| format!("{sign}{h:02}:{m:02}"))
}

/// `ISO, MDY` and its parts, normalised to PostgreSQL's spelling.
fn parse_date_style(text: &str) -> Option<String> {
    let mut style = "ISO";
    let mut order = "MDY";
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "iso" => style = "ISO",
            "sql" => style = "SQL",
            "postgres" => style = "Postgres",
            "german" => style = "German",
            "mdy" | "us" | "noneuropean" | "non-european" => order = "MDY",
            "dmy" | "euro" | "european" => order = "DMY",
            "ymd" => order = "YMD",
            _ => return None,
        }
    }
    Some(format!("{style}, {order}"))
}

/// Applies a `SET` or `RESET` to a connection's settings; the reported variables whose
/// value changed, with their new value, for `ParameterStatus` messages.
pub fn apply(
    metadata: &mut HashMap<String, String>,
    changes: &[(&'static Variable, Option<String>)],
) -> Vec<(&'static str, String)> {
    let mut reported = Vec::new();
    for (v, new) in changes {
        let before = value(metadata, v);
        match new {
            Some(text) => metadata.insert(key(v), text.clone()),
            None => metadata.remove(&key(v)),
        };
        let after = value(metadata, v);
        if v.reported && after != before {
            reported.push((v.name, after));
        }
    }
    reported
}

/// Resets every variable a client can set; the reported changes.
pub fn reset_all(metadata: &mut HashMap<String, String>) -> Vec<(&'static str, String)> {
    let all: Vec<_> = VARIABLES
        .iter()
        .filter(|v| v.check != Check::Fixed)
        .map(|v| (v, None))
        .collect();
    apply(metadata, &all)
}

#[cfg(test)]
mod tests {
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    use super::*;

    fn parse(sql: &str) -> Statement {
        let mut s = PostgresCompatibilityParser::new().parse(sql).unwrap();
        assert_eq!(s.len(), 1, "{sql}");
        s.remove(0)
    }

    fn run(metadata: &mut HashMap<String, String>, sql: &str) -> Result<Vec<(&'static str, String)>, SessionError> {
        match command(&parse(sql))? {
            Some(Command::Set(changes, _)) => Ok(apply(metadata, &changes)),
            Some(Command::ResetAll(_)) => Ok(reset_all(metadata)),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn client_variables_are_set_per_connection_and_reported() {
        let mut a = HashMap::new();
        let b = HashMap::new();
        assert_eq!(
            run(&mut a, "SET TIME ZONE 'europe/berlin'").unwrap(),
            vec![("TimeZone", "Europe/Berlin".to_string())]
        );
        assert_eq!(time_zone(&a).as_deref(), Some("Europe/Berlin"));
        assert_eq!(time_zone(&b), None);
        run(&mut a, "SET statement_timeout = '2s'").unwrap();
        assert_eq!(client_timeout(&a), Some(Duration::from_secs(2)));
        assert_eq!(lookup(&a, "STATEMENT_TIMEOUT").unwrap(), "2000");
        run(&mut a, "SET datestyle TO iso, dmy").unwrap();
        assert_eq!(a.get("datestyle").map(String::as_str), Some("ISO, DMY"));
        run(&mut a, "SET search_path = analytics, public").unwrap();
        assert_eq!(lookup(&a, "search_path").unwrap(), "analytics, public");
        run(&mut a, "SET application_name TO DEFAULT").unwrap();
        run(&mut a, "SET NAMES 'utf8'").unwrap();
        run(&mut a, "RESET statement_timeout").unwrap();
        assert_eq!(client_timeout(&a), None);
        run(&mut a, "RESET ALL").unwrap();
        assert_eq!(time_zone(&a), None);
        assert_eq!(lookup(&a, "search_path").unwrap(), "\"$user\", public");
    }

    #[test]
    fn engine_options_unknown_names_fixed_values_and_bad_values_are_refused() {
        let mut m = HashMap::new();
        for (sql, code) in [
            ("SET datafusion.execution.batch_size = 1", "42501"),
            ("SET \"datafusion.execution.batch_size\" = 1", "42501"),
            ("SET \"DataFusion\".\"execution\".\"batch_size\" = 1", "42501"),
            ("SET datafusion.runtime.temp_directory = '/tmp/x'", "42501"),
            ("SET work_mem = '1GB'", "42704"),
            ("SET myapp.user = 'x'", "42704"),
            ("SET server_version = '9'", "55P02"),
            ("SET client_encoding = 'LATIN1'", "22023"),
            ("SET extra_float_digits = 9", "22023"),
            ("SET statement_timeout = 'forever'", "22023"),
            ("SET TIME ZONE 'Mars/Olympus'", "22023"),
            ("SET default_transaction_read_only = off", "22023"),
            ("SET NAMES utf8 COLLATE 'x; COPY t TO ''/tmp/x'''", "0A000"),
            ("SET ROLE postgres", "42501"),
            ("SET SESSION AUTHORIZATION postgres", "42501"),
        ] {
            let err = match command(&parse(sql)) {
                Ok(Some(Command::Set(changes, _))) => {
                    apply(&mut m, &changes);
                    None
                }
                Ok(other) => panic!("{sql}: {other:?}"),
                Err(e) => Some(e),
            };
            assert_eq!(err.as_ref().map(|e| e.code), Some(code), "{sql}: {err:?}");
        }
        assert!(m.is_empty(), "{m:?}");
        assert_eq!(
            command(&parse("SHOW \"datafusion.execution.batch_size\""))
                .unwrap_err()
                .code,
            "42501"
        );
    }

    #[test]
    fn show_transactions_and_savepoints_are_commands() {
        assert_eq!(
            command(&parse("SHOW TRANSACTION ISOLATION LEVEL")).unwrap(),
            Some(Command::Show(variable("transaction_isolation").unwrap()))
        );
        assert_eq!(command(&parse("SHOW ALL")).unwrap(), Some(Command::ShowAll));
        assert_eq!(command(&parse("BEGIN READ ONLY")).unwrap(), Some(Command::Begin));
        assert_eq!(command(&parse("COMMIT")).unwrap(), Some(Command::End("COMMIT")));
        assert_eq!(command(&parse("ROLLBACK")).unwrap(), Some(Command::End("ROLLBACK")));
        assert_eq!(
            command(&parse("SAVEPOINT s1")).unwrap(),
            Some(Command::Savepoint("SAVEPOINT"))
        );
        assert_eq!(
            command(&parse("RELEASE SAVEPOINT s1")).unwrap(),
            Some(Command::Savepoint("RELEASE"))
        );
        assert_eq!(
            command(&parse("ROLLBACK TO SAVEPOINT s1")).unwrap(),
            Some(Command::Savepoint("ROLLBACK"))
        );
        assert_eq!(
            command(&parse("DISCARD ALL")).unwrap(),
            Some(Command::ResetAll("DISCARD ALL"))
        );
        assert_eq!(command(&parse("SELECT 1")).unwrap(), None);
    }

    #[test]
    fn defaults_agree_with_what_pgwire_formats_and_announces() {
        use datafusion_postgres::pgwire::types::format::FormatOptions;
        let format = FormatOptions::default();
        let empty = HashMap::new();
        assert_eq!(lookup(&empty, "DateStyle").unwrap(), format.date_style);
        assert_eq!(lookup(&empty, "TimeZone").unwrap(), format.time_zone);
        assert_eq!(lookup(&empty, "IntervalStyle").unwrap(), format.interval_style);
        assert_eq!(lookup(&empty, "bytea_output").unwrap(), format.bytea_output);
        assert_eq!(
            lookup(&empty, "extra_float_digits").unwrap(),
            format.extra_float_digits.to_string()
        );
        assert_eq!(login_parameters().server_version, PG_VERSION);
        // A garbage time zone from a login parameter is ignored, not planned with.
        let bad = HashMap::from([("timezone".to_string(), "Mars/Olympus".to_string())]);
        assert_eq!(time_zone(&bad), None);
    }

    #[test]
    fn durations_zones_and_date_styles_parse() {
        assert_eq!(parse_duration_ms("1500"), Some(1500));
        assert_eq!(parse_duration_ms("2min"), Some(120_000));
        assert_eq!(parse_duration_ms("2 s"), Some(2000));
        assert_eq!(parse_duration_ms("1d"), None);
        assert_eq!(parse_time_zone("+2"), Some("+02:00".into()));
        assert_eq!(parse_time_zone("utc"), Some("UTC".into()));
        assert_eq!(parse_time_zone("-25:00"), None);
        assert_eq!(parse_date_style("german"), Some("German, MDY".into()));
        assert_eq!(parse_date_style("ymd"), Some("ISO, YMD".into()));
    }
}
