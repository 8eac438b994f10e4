//! `patron quarantine`: what a run rejected and why. Reads the quarantine tables (and the
//! duplicates table) as the chosen run published them (default: the latest succeeded
//! run), and prints a summary by source, column and reason, then sample rows with file,
//! line, column and raw value.

use clap::Args;
use datafusion::prelude::SessionContext;
use serde_json::Value;

use super::{CliError, OutputFormat, ReadArgs};
use crate::names::quarantine as q;
use crate::publish::quarantine::{self, Summary};
use crate::publish::read::{self, cell_text as text};
use crate::publish::runs::{self, chosen_run};

/// Arguments of `patron quarantine`.
#[derive(Debug, Args)]
pub struct QuarantineArgs {
    /// The warehouse to read.
    #[command(flatten)]
    pub read: ReadArgs,
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

/// Prints what the chosen run quarantined.
pub async fn run(args: QuarantineArgs) -> Result<(), CliError> {
    let warehouse = args.read.open()?;
    let records = runs::read_all(&warehouse).await?;
    let record = chosen_run(&records, args.run.as_deref(), &warehouse)?;
    let ctx = SessionContext::new();
    let tables = read::register_run(&ctx, &warehouse, record).await?;
    let report = quarantine::summarise(
        &ctx,
        &tables,
        record,
        args.source.as_deref(),
        args.reason.as_deref(),
        args.limit,
    )
    .await?;
    match args.format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print_text(&report, &args),
    }
    Ok(())
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
    outln!(
        "quarantine of run {} (pipeline {}, finished {}){filters}: {} rows rejected, {} entries",
        r.run_id,
        r.pipeline,
        r.finished_at,
        r.rows,
        r.entries
    );
    if !r.summary.is_empty() {
        outln!();
        outln!(
            "  {:<12} {:<18} {:>7} {:>7}  reason",
            "source",
            "column",
            "rows",
            "entries"
        );
        for g in &r.summary {
            let column = if g.column.is_empty() { "(row)" } else { &g.column };
            outln!(
                "  {:<12} {:<18} {:>7} {:>7}  {}",
                g.source,
                column,
                g.rows,
                g.entries,
                g.reason
            );
        }
    }
    if r.duplicates.iter().any(|d| d.rows > 0) {
        outln!();
        outln!("duplicate primary keys (kept in raw; staging keeps the latest copy; table `duplicates`):");
        for d in r.duplicates.iter().filter(|d| d.rows > 0) {
            outln!(
                "  {:<12} {:>7} superseded copies ({} with changed values)",
                d.source,
                d.rows,
                d.changed
            );
        }
    }
    if !r.samples.is_empty() {
        outln!();
        outln!("first {} of {} entries:", r.samples.len(), r.entries);
        for s in &r.samples {
            let column = text(s, q::COLUMN);
            let value = match s.get(q::RAW_VALUE) {
                Some(Value::String(v)) => format!(" = {v:?}"),
                _ => String::new(),
            };
            let column = if column.is_empty() { "(row)".to_string() } else { column };
            outln!(
                "  {} {}:{}  {column}{value}: {}",
                text(s, q::SOURCE),
                text(s, q::FILE),
                text(s, q::LINE),
                text(s, q::REASON)
            );
            let record: String = text(s, q::RAW_RECORD).chars().take(160).collect();
            outln!("      record: {record}");
        }
    }
}
