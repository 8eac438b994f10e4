//! What a run rejected, as `patron quarantine` and `patron report` show it: the quarantine
//! grouped by source, column and reason pattern, the superseded copies per source, and
//! sample entries.

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use serde::Serialize;
use serde_json::{Map, Value};

use super::read::{QueryError, cell_text as text, cell_u64 as number, json_rows};
use super::runs::RunRecord;
use crate::names::{DUPLICATES_TABLE, QUARANTINE_TABLE, duplicates as d, quarantine as q};
use crate::quote::{ident, literal};

/// One group of the summary.
#[derive(Debug, Serialize)]
pub struct Group {
    /// Source name.
    pub source: String,
    /// Declared column (empty: the row as a whole).
    pub column: String,
    /// The reason with its numbers replaced by `<n>`, so that values group together.
    pub reason: String,
    /// Rejected rows (a row counts once per column it failed in).
    pub rows: u64,
    /// Quarantine entries.
    pub entries: u64,
}

/// Duplicate keys of one source.
#[derive(Debug, Serialize)]
pub struct Duplicates {
    /// Source name.
    pub source: String,
    /// Superseded copies (kept in raw, left out by staging).
    pub rows: u64,
    /// Of those, copies whose values differ from the current one.
    pub changed: u64,
}

/// The whole answer: one run's rejections.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The run.
    pub run_id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// When it finished.
    pub finished_at: String,
    /// Distinct rejected rows (file and line) matching the filters.
    pub rows: u64,
    /// Quarantine entries matching the filters.
    pub entries: u64,
    /// Groups by source, column and reason pattern, most rows first.
    pub summary: Vec<Group>,
    /// Superseded copies per source.
    pub duplicates: Vec<Duplicates>,
    /// Up to `--limit` entries, ordered by source, file, line, column.
    pub samples: Vec<Map<String, Value>>,
}

/// Why the quarantine summary could not be made.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// The run has no source of that name (exit code 2).
    #[error("run {run_id} has no source `{source_name}`; its sources: {sources}")]
    UnknownSource {
        /// The run.
        run_id: String,
        /// The source asked for.
        source_name: String,
        /// The run's sources, comma-separated.
        sources: String,
    },
    /// Reading the quarantine tables failed.
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// Replaces the numbers standing alone in a reason (`-3 is below the minimum 1`) by `<n>`.
fn reason_pattern(reason: &str) -> String {
    static NUMBER: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"(^|[\s(])[-+]?\d+(\.\d+)?").expect("valid regex"));
    NUMBER
        .replace_all(reason, |c: &regex::Captures| {
            let whole = c.get(0).expect("match");
            // A number naming a standard (`ISO 8601`, `UTF-8`) is part of the reason.
            let before = reason[..whole.start()].trim_end();
            let word = before.rsplit(|ch: char| !ch.is_alphanumeric()).next().unwrap_or("");
            if !word.is_empty() && word.chars().all(|ch| ch.is_ascii_uppercase()) {
                whole.as_str().to_string()
            } else {
                format!("{}<n>", &c[1])
            }
        })
        .into_owned()
}

async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<Map<String, Value>>, QueryError> {
    json_rows(ctx, sql, "reading the quarantine").await
}

/// What the succeeded run `record` quarantined (its tables registered on `ctx` by
/// [`super::read::register_run`], named in `tables`): totals, groups by source, column and
/// reason pattern (most rows first), duplicates per source and up to `limit` sample
/// entries, optionally only of one `source` and of reasons containing `reason`.
pub async fn summarise(
    ctx: &SessionContext,
    tables: &[String],
    record: &RunRecord,
    source: Option<&str>,
    reason: Option<&str>,
    limit: usize,
) -> Result<Summary, QuarantineError> {
    let prefix = format!("{QUARANTINE_TABLE}_");
    let sources: Vec<&str> = tables.iter().filter_map(|t| t.strip_prefix(&prefix)).collect();
    let chosen: Vec<&str> = match source {
        Some(s) if !sources.contains(&s) => {
            return Err(QuarantineError::UnknownSource {
                run_id: record.run_id.clone(),
                source_name: s.to_string(),
                sources: sources.join(", "),
            });
        }
        Some(s) => vec![s],
        None => sources.clone(),
    };
    let mut report = Summary {
        run_id: record.run_id.clone(),
        pipeline: record.pipeline.clone(),
        finished_at: record.finished_at.clone(),
        rows: 0,
        entries: 0,
        summary: Vec::new(),
        duplicates: Vec::new(),
        samples: Vec::new(),
    };
    if !chosen.is_empty() {
        let union = chosen
            .iter()
            .map(|s| format!("SELECT * FROM {}", ident(&format!("{prefix}{s}"))))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let filter = match reason {
            Some(r) => format!("WHERE strpos(lower({}), lower({})) > 0", ident(q::REASON), literal(r)),
            None => String::new(),
        };
        let (src, file, line, col, reason) = (
            ident(q::SOURCE),
            ident(q::FILE),
            ident(q::LINE),
            ident(q::COLUMN),
            ident(q::REASON),
        );
        let with = format!("WITH q AS ({union}), f AS (SELECT * FROM q {filter})");
        let row_id = format!("concat({src}, '|', {file}, '|', CAST({line} AS VARCHAR))");
        let totals = rows(
            ctx,
            &format!("{with} SELECT COUNT(DISTINCT {row_id}) AS r, COUNT(*) AS e FROM f"),
        )
        .await?;
        if let Some(t) = totals.first() {
            report.rows = number(t, "r");
            report.entries = number(t, "e");
        }
        let groups = rows(
            ctx,
            &format!(
                "{with} SELECT {src} AS s, {col} AS c, {reason} AS why, COUNT(DISTINCT {row_id}) AS r, COUNT(*) AS e \
                 FROM f GROUP BY 1, 2, 3"
            ),
        )
        .await?;
        let mut merged: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
        for g in &groups {
            let key = (text(g, "s"), text(g, "c"), reason_pattern(&text(g, "why")));
            let entry = merged.entry(key).or_default();
            entry.0 += number(g, "r");
            entry.1 += number(g, "e");
        }
        report.summary = merged
            .into_iter()
            .map(|((source, column, reason), (rows, entries))| Group {
                source,
                column,
                reason,
                rows,
                entries,
            })
            .collect();
        report.summary.sort_by(|a, b| {
            b.rows
                .cmp(&a.rows)
                .then_with(|| (&a.source, &a.column).cmp(&(&b.source, &b.column)))
        });
        report.samples = rows(
            ctx,
            &format!(
                "{with} SELECT {src}, {file}, {line}, {col}, {raw}, {reason}, {record} FROM f \
                 ORDER BY {src}, {file}, {line}, {col} LIMIT {limit}",
                raw = ident(q::RAW_VALUE),
                record = ident(q::RAW_RECORD),
                limit = limit
            ),
        )
        .await?;
    }
    if tables.iter().any(|t| t == DUPLICATES_TABLE) {
        let only = match source {
            Some(s) => format!("WHERE {} = {}", ident(d::SOURCE), literal(s)),
            None => String::new(),
        };
        let dups = rows(
            ctx,
            &format!(
                "SELECT {s} AS s, COUNT(*) AS r, SUM(CASE WHEN {i} THEN 0 ELSE 1 END) AS c FROM {t} {only} \
                 GROUP BY 1 ORDER BY 1",
                s = ident(d::SOURCE),
                i = ident(d::IDENTICAL),
                t = ident(DUPLICATES_TABLE)
            ),
        )
        .await?;
        report.duplicates = dups
            .iter()
            .map(|r| Duplicates {
                source: text(r, "s"),
                rows: number(r, "r"),
                changed: number(r, "c"),
            })
            .collect();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::reason_pattern;

    #[test]
    fn numbers_in_reasons_are_masked_but_words_kept() {
        assert_eq!(
            reason_pattern("-3 is below the minimum 1"),
            "<n> is below the minimum <n>"
        );
        assert_eq!(
            reason_pattern("expected 12 fields, found 11"),
            "expected <n> fields, found <n>"
        );
        assert_eq!(
            reason_pattern("not valid UTF-8 (set the source encoding)"),
            "not valid UTF-8 (set the source encoding)"
        );
        assert_eq!(
            reason_pattern("not a datetime (ISO 8601, 'YYYY-MM-DD') at line 3"),
            "not a datetime (ISO 8601, 'YYYY-MM-DD') at line <n>"
        );
        assert_eq!(
            reason_pattern("2.5 is above the maximum 2 (x)"),
            "<n> is above the maximum <n> (x)"
        );
    }
}
