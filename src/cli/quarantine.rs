//! `patron quarantine`: what a run rejected and why. Reads the quarantine tables (and the
//! duplicates table) as the chosen run published them (default: the latest succeeded
//! run), and prints a summary by source, column and reason, then sample rows with file,
//! line, column and raw value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use datafusion::prelude::SessionContext;
use serde_json::{Map, Value};

use super::query::{cell_text as text, cell_u64 as number, chosen_run, json_rows};
use super::{CliError, OutputFormat, warehouse_of};
use crate::names::{DUPLICATES_TABLE, QUARANTINE_TABLE, duplicates as d, quarantine as q};
use crate::publish::quarantine::{Duplicates, Group, Summary};
use crate::publish::{read, runs};
use crate::transform::checks::{ident, literal};

/// Arguments of `patron quarantine`.
#[derive(Debug, Args)]
pub struct QuarantineArgs {
    /// Pipeline file whose warehouse to read.
    #[arg(long, default_value = "pipelines/default.toml")]
    pub pipeline: PathBuf,
    /// Warehouse folder or object store URL such as s3://bucket/prefix (overrides the pipeline's `run.warehouse`).
    #[arg(long)]
    pub warehouse: Option<String>,
    /// Only this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Only rejections whose reason contains this text (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Sample rows to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Read this run's quarantine (default: the latest succeeded run).
    #[arg(long)]
    pub run: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
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

async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<Map<String, Value>>, CliError> {
    json_rows(ctx, sql, "reading the quarantine").await
}

/// Prints what the chosen run quarantined.
pub async fn run(args: QuarantineArgs) -> Result<(), CliError> {
    let warehouse = warehouse_of(&args.pipeline, args.warehouse.clone())?;
    let records = runs::read_all(&warehouse)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    let record = chosen_run(&records, args.run.as_deref(), &warehouse)?;
    let ctx = SessionContext::new();
    let tables = read::register_run(&ctx, &warehouse, record)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    let report = summarise(
        &ctx,
        &tables,
        record,
        args.source.as_deref(),
        args.reason.as_deref(),
        args.limit,
    )
    .await?;
    match args.format {
        OutputFormat::Json => {
            let text = serde_json::to_string_pretty(&report).map_err(|e| CliError::failed(e.to_string()))?;
            println!("{text}");
        }
        OutputFormat::Text => print_text(&report, &args),
    }
    Ok(())
}

/// What the succeeded run `record` quarantined (its tables registered on `ctx` by
/// [`read::register_run`], named in `tables`): totals, groups by source, column and
/// reason pattern (most rows first), duplicates per source and up to `limit` sample
/// entries, optionally only of one `source` and of reasons containing `reason`.
pub async fn summarise(
    ctx: &SessionContext,
    tables: &[String],
    record: &runs::RunRecord,
    source: Option<&str>,
    reason: Option<&str>,
    limit: usize,
) -> Result<Summary, CliError> {
    let prefix = format!("{QUARANTINE_TABLE}_");
    let sources: Vec<&str> = tables.iter().filter_map(|t| t.strip_prefix(&prefix)).collect();
    let chosen: Vec<&str> = match source {
        Some(s) if !sources.contains(&s) => {
            return Err(CliError::usage(format!(
                "run {} has no source `{s}`; its sources: {}",
                record.run_id,
                sources.join(", ")
            )));
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

fn print_text(r: &Summary, args: &QuarantineArgs) {
    let mut filters = Vec::new();
    if let Some(s) = &args.source {
        filters.push(format!("source {s}"));
    }
    if let Some(t) = &args.reason {
        filters.push(format!("reason contains {t:?}"));
    }
    let filters = if filters.is_empty() {
        String::new()
    } else {
        format!(" [{}]", filters.join(", "))
    };
    println!(
        "quarantine of run {} (pipeline {}, finished {}){filters}: {} rows rejected, {} entries",
        r.run_id, r.pipeline, r.finished_at, r.rows, r.entries
    );
    if !r.summary.is_empty() {
        println!();
        println!(
            "  {:<12} {:<18} {:>7} {:>7}  reason",
            "source", "column", "rows", "entries"
        );
        for g in &r.summary {
            let column = if g.column.is_empty() { "(row)" } else { &g.column };
            println!(
                "  {:<12} {:<18} {:>7} {:>7}  {}",
                g.source, column, g.rows, g.entries, g.reason
            );
        }
    }
    if r.duplicates.iter().any(|d| d.rows > 0) {
        println!();
        println!("duplicate primary keys (kept in raw; staging keeps the latest copy; table `duplicates`):");
        for d in r.duplicates.iter().filter(|d| d.rows > 0) {
            println!(
                "  {:<12} {:>7} superseded copies ({} with changed values)",
                d.source, d.rows, d.changed
            );
        }
    }
    if !r.samples.is_empty() {
        println!();
        println!("first {} of {} entries:", r.samples.len(), r.entries);
        for s in &r.samples {
            let column = text(s, q::COLUMN);
            let value = match s.get(q::RAW_VALUE) {
                Some(Value::String(v)) => format!(" = {v:?}"),
                _ => String::new(),
            };
            let column = if column.is_empty() { "(row)".to_string() } else { column };
            println!(
                "  {} {}:{}  {column}{value}: {}",
                text(s, q::SOURCE),
                text(s, q::FILE),
                text(s, q::LINE),
                text(s, q::REASON)
            );
            let record: String = text(s, q::RAW_RECORD).chars().take(160).collect();
            println!("      record: {record}");
        }
    }
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
