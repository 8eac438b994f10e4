//! Command line: argument parsing with clap and one module per subcommand. Each
//! subcommand returns a [`CliError`] whose exit code is part of the documented contract.

pub mod ballista;
pub mod dag;
pub mod docs;
pub mod evaluate;
pub mod explain;
pub mod generate;
pub mod lineage;
pub mod quarantine;
pub mod query;
pub mod report;
pub mod run;
pub mod runs;
pub mod schedule;
pub mod serve;
pub mod test;

use std::path::Path;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Overrides, Plan};
use crate::error::{EXIT_RUN_FAILED, EXIT_USAGE};
use crate::warehouse::Warehouse;

/// patron: customer data warehouse pipeline.
#[derive(Debug, Parser)]
#[command(
    name = "patron",
    version,
    about = "Extract customer exports, transform them with SQL, score every customer, publish for BI",
    after_help = "Examples:\n  patron run                                   # pipelines/default.toml on the bundled fixtures\n  patron run --pipeline pipelines/shop.toml --as-of 2026-06-30 --out /data/warehouse\n  patron generate --customers 2000 --seed 42 --out fixtures\n  patron runs --format json\n  patron query \"SELECT rfm_segment, count(*) FROM customer_scores GROUP BY 1\"\n  patron serve --listen 127.0.0.1:5432                 # then: psql -h 127.0.0.1 -d patron\n  patron explain C0000042 --format json\n  patron quarantine --source sales --limit 5\n  patron report --out report.html              # HTML report of the latest succeeded run\n\nExit codes: 0 ok, 1 run failed, 2 usage or configuration error, 3 data tests failed, 4 skipped: another run holds the warehouse lock, 5 aborted by SIGTERM/SIGINT.\nLogs: set RUST_LOG (e.g. RUST_LOG=patron=debug)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: extract, transform, score, publish.
    Run(run::RunArgs),
    /// Write synthetic sales, service and marketing exports with known true parameters.
    Generate(generate::GenerateArgs),
    /// Run the data tests of the published tables (all, or `--select`ed stages).
    Test(test::TestArgs),
    /// Show the stage graph as text, Mermaid, Graphviz dot or JSON.
    Dag(dag::DagArgs),
    /// Write a static HTML catalog: tables, columns, descriptions, tests, lineage, graph.
    Docs(docs::DocsArgs),
    /// Show which source columns a column is computed from (`table.column`).
    Lineage(lineage::LineageArgs),
    /// Backtest the churn and purchase models: fit as of a calibration end, predict the holdout.
    Evaluate(evaluate::EvaluateArgs),
    /// One customer's card: facts, every score with the rule or model behind it, churn
    /// reasons, recent orders, tickets and marketing events (published tables only).
    Explain(explain::ExplainArgs),
    /// List the runs recorded in the warehouse's `runs` table.
    Runs(runs::RunsArgs),
    /// Run a SELECT on the published tables as a run left them (default: the latest succeeded).
    Query(query::QueryArgs),
    /// Show what the latest succeeded run rejected and why: summary by source and reason, then sample rows.
    Quarantine(quarantine::QuarantineArgs),
    /// Write a self-contained HTML report of the latest succeeded run: segments,
    /// distributions, portfolio, lifecycle, model fits, data quality (default
    /// `<warehouse>/report.html`).
    Report(report::ReportArgs),
    /// Run pipelines on their `[schedule]` until SIGTERM: retries, alerts, /healthz, /metrics.
    Schedule(schedule::ScheduleArgs),
    /// Serve the latest published tables over the PostgreSQL wire protocol (psql, BI tools).
    Serve(serve::ServeArgs),
    /// Run a Ballista scheduler with patron's codecs (for `run --engine df://HOST:PORT`).
    #[command(name = "ballista-scheduler", hide = true)]
    BallistaScheduler(ballista::SchedulerArgs),
    /// Run a Ballista executor with patron's codecs and functions.
    #[command(name = "ballista-executor", hide = true)]
    BallistaExecutor(ballista::ExecutorArgs),
}

/// How a command prints its result (`--format`), the same choice on every command that
/// has one (`dag` adds its graph formats of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people: aligned tables, `key: value` lines, summaries (`table` is accepted too).
    #[value(alias = "table")]
    Text,
    /// For scripts: JSON (one object, an array, or one object per row: see the command).
    Json,
}

/// A failed command: message already formatted, and its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What to print.
    pub message: String,
    /// Exit code (1 to 5, see [`crate::error`]).
    pub code: u8,
}

impl CliError {
    /// A usage or configuration error (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: EXIT_USAGE,
        }
    }

    /// A failed run (exit code 1).
    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: EXIT_RUN_FAILED,
        }
    }
}

/// Runs the parsed command line.
pub async fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Generate(args) => generate::run(args),
        Command::Evaluate(args) => evaluate::run(args).await,
        Command::Test(args) => test::run(args).await,
        Command::Dag(args) => dag::run(args),
        Command::Lineage(args) => lineage::run(args).await,
        Command::Docs(args) => docs::run(args).await,
        Command::Explain(args) => explain::run(args).await,
        Command::Runs(args) => runs::run(args).await,
        Command::Query(args) => query::run(args).await,
        Command::Quarantine(args) => quarantine::run(args).await,
        Command::Report(args) => report::run(args).await,
        Command::Schedule(args) => schedule::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::BallistaScheduler(args) => ballista::scheduler(args).await,
        Command::BallistaExecutor(args) => ballista::executor(args).await,
    }
}

/// Writes a command's output document: to the file `out` when given, else to `key` in the
/// warehouse (a local file or an object); returns where it went.
pub async fn write_output(
    out: Option<&Path>,
    warehouse: &Warehouse,
    key: &str,
    text: String,
) -> Result<String, CliError> {
    match out {
        Some(out) => {
            std::fs::write(out, text).map_err(|e| CliError::failed(format!("cannot write {}: {e}", out.display())))?;
            Ok(out.display().to_string())
        }
        None => {
            warehouse
                .put(key, text)
                .await
                .map_err(|e| CliError::failed(e.to_string()))?;
            Ok(warehouse.describe(key))
        }
    }
}

/// The warehouse a read-only command looks at: `--warehouse` (a folder relative to the
/// working directory, or an object store URL), else the pipeline's. Object store options
/// come from the pipeline's `[storage]` when the pipeline file loads, else the defaults.
pub fn warehouse_of(pipeline: &Path, warehouse: Option<String>) -> Result<Warehouse, CliError> {
    let overrides = Overrides {
        warehouse: warehouse.clone(),
        ..Overrides::default()
    };
    match (Plan::load(pipeline, &overrides), warehouse) {
        (Ok(plan), _) => Ok(plan.warehouse),
        (Err(_), Some(w)) => Warehouse::open(&w, Path::new("."), &crate::remote::StorageSettings::default())
            .map_err(|e| CliError::usage(e.to_string())),
        (Err(e), None) => Err(CliError::usage(e.to_string())),
    }
}
