//! Command line: argument parsing with clap and one module per subcommand. A subcommand
//! only parses its arguments, calls into the library and prints; it returns a
//! [`CliError`] wrapping the library's typed error, whose exit code
//! ([`crate::error::exit_code`]) is part of the documented contract.

/// `println!` for a command's results, written to [`Out`]: once the reader of standard
/// output has gone (`patron run | head`), the rest is dropped instead of a panic, and the
/// command finishes its work and exits with its own code.
macro_rules! outln {
    () => {
        $crate::cli::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` to [`Out`] (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Overrides, Plan, Selection};
pub use crate::error::CliError;
use crate::warehouse::Warehouse;

/// patron: customer data warehouse pipeline.
#[derive(Debug, Parser)]
#[command(
    name = "patron",
    version,
    about = "Extract customer exports, transform them with SQL, score every customer, publish for BI",
    after_help = "Examples:\n  patron run                                   # pipelines/default.toml on the bundled fixtures\n  patron run --pipeline pipelines/shop.toml --as-of 2026-06-30 --warehouse /data/warehouse\n  patron generate --customers 2000 --seed 42 --out fixtures\n  patron runs --format json\n  patron query \"SELECT rfm_segment, count(*) FROM customer_scores GROUP BY 1\"\n  patron serve --listen 127.0.0.1:5432                 # then: psql -h 127.0.0.1 -d patron\n  patron explain C0000042 --format json\n  patron quarantine --source sales --limit 5\n  patron report --out report.html              # HTML report of the latest succeeded run\n\nExit codes: 0 ok, 1 run failed, 2 usage or configuration error, 3 data tests failed, 4 skipped: another run holds the warehouse lock, 5 aborted by SIGTERM/SIGINT.\nLogs: set RUST_LOG (e.g. RUST_LOG=patron=debug)."
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

/// `--pipeline`, shared by every command that reads a pipeline file.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Pipeline file.
    #[arg(long, default_value = "pipelines/default.toml")]
    pub pipeline: PathBuf,
}

impl PipelineArgs {
    /// Loads the pipeline file with `overrides` applied.
    pub fn load(&self, overrides: &Overrides) -> Result<Plan, CliError> {
        Ok(Plan::load(&self.pipeline, overrides)?)
    }
}

/// `--select` and `--exclude`, the stage selection `run` and `test` share.
#[derive(Debug, Clone, Args)]
pub struct SelectionArgs {
    /// Stages to run or test (dbt syntax: `name`, `+name`, `name+`, `tag:x`, `layer:x`);
    /// with `run`, the stages they read that are not selected are read as the last run
    /// published them.
    #[arg(long, num_args = 1..)]
    pub select: Vec<String>,
    /// Stages to leave out (same syntax).
    #[arg(long, num_args = 1..)]
    pub exclude: Vec<String>,
}

impl From<SelectionArgs> for Selection {
    fn from(args: SelectionArgs) -> Self {
        Selection {
            select: args.select,
            exclude: args.exclude,
        }
    }
}

/// `--warehouse`, shared by every command that names a warehouse.
#[derive(Debug, Clone, Args)]
pub struct WarehouseArgs {
    /// Warehouse folder or object store URL such as s3://bucket/prefix (overrides the
    /// pipeline's `run.warehouse`).
    #[arg(long)]
    pub warehouse: Option<String>,
}

/// `--out` as the hidden alias of `--warehouse` that `run` and `test` keep for one release
/// (elsewhere `--out` names a command's own output).
#[derive(Debug, Clone, Args)]
pub struct OutAlias {
    /// The warehouse: a hidden alias of `--warehouse`, kept for one release.
    #[arg(long = "out", hide = true, conflicts_with = "warehouse", value_name = "WAREHOUSE")]
    pub out: Option<String>,
}

impl WarehouseArgs {
    /// The warehouse given by `--warehouse`, else by the hidden `--out`.
    pub fn or_out(self, alias: OutAlias) -> Option<String> {
        self.warehouse.or(alias.out)
    }
}

/// `--pipeline` and `--warehouse` of a command that reads a warehouse.
#[derive(Debug, Clone, Args)]
pub struct ReadArgs {
    /// The pipeline whose warehouse to read.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The warehouse, overriding the pipeline's.
    #[command(flatten)]
    pub warehouse: WarehouseArgs,
}

impl ReadArgs {
    /// The warehouse to read (see [`warehouse_of`]).
    pub fn open(&self) -> Result<Warehouse, CliError> {
        warehouse_of(&self.pipeline.pipeline, self.warehouse.warehouse.clone())
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
            std::fs::write(out, text).map_err(|source| CliError::Write {
                path: out.to_path_buf(),
                source,
            })?;
            Ok(out.display().to_string())
        }
        None => {
            warehouse.put(key, text).await?;
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
            .map_err(CliError::OpenWarehouse),
        (Err(e), None) => Err(e.into()),
    }
}

/// Whether standard output's reader has gone (a broken pipe).
static OUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Standard output for a command's results. Once the reader has gone (`patron runs | head
/// -1`), writes are dropped and succeed: the command's work and its exit code do not depend
/// on who reads its output. Other write errors (a full disk behind `>`) are errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Out;

impl Out {
    fn dropped(result: std::io::Result<usize>, len: usize) -> std::io::Result<usize> {
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                OUT_CLOSED.store(true, Ordering::Relaxed);
                Ok(len)
            }
            other => other,
        }
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if OUT_CLOSED.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        Out::dropped(std::io::stdout().lock().write(buf), buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if OUT_CLOSED.load(Ordering::Relaxed) {
            return Ok(());
        }
        Out::dropped(std::io::stdout().lock().flush().map(|()| 0), 0).map(|_| ())
    }
}

/// Writes `args` to [`Out`] (what [`outln!`] and [`out!`] call). An error other than a
/// broken pipe is reported on standard error once; the command goes on.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = Out.write_fmt(args)
        && !REPORTED.swap(true, Ordering::Relaxed)
    {
        eprintln!("patron: cannot write to standard output: {e}");
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(argv: &[&str]) -> Command {
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
            .command
    }

    /// `--warehouse` names the warehouse of `run`, `test` and `evaluate`; on `run` and `test`
    /// `--out` still does, as a hidden alias kept for one release, and not both at once. On
    /// `evaluate`, `--out` names the evaluation's own folder.
    #[test]
    fn out_is_a_hidden_alias_of_warehouse_on_run_and_test() {
        for flag in ["--warehouse", "--out"] {
            let warehouse = match parse(&["patron", "run", flag, "/tmp/wh"]) {
                Command::Run(a) => a.warehouse.or_out(a.out),
                other => panic!("{other:?}"),
            };
            assert_eq!(warehouse.as_deref(), Some("/tmp/wh"), "run {flag}");
            let warehouse = match parse(&["patron", "test", flag, "/tmp/wh"]) {
                Command::Test(a) => a.warehouse.or_out(a.out),
                other => panic!("{other:?}"),
            };
            assert_eq!(warehouse.as_deref(), Some("/tmp/wh"), "test {flag}");
        }
        match parse(&["patron", "evaluate", "--warehouse", "/tmp/wh", "--out", "/tmp/ev"]) {
            Command::Evaluate(a) => {
                assert_eq!(a.warehouse.warehouse.as_deref(), Some("/tmp/wh"));
                assert_eq!(a.out, Some(PathBuf::from("/tmp/ev")));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["patron", "run", "--out", "a", "--warehouse", "b"]).is_err());
        for command in ["run", "test"] {
            let mut cli = Cli::command();
            let sub = cli.find_subcommand_mut(command).expect("subcommand");
            let help = sub.render_long_help().to_string();
            assert!(help.contains("--warehouse"), "{command}:\n{help}");
            assert!(!help.contains("--out"), "{command} shows --out:\n{help}");
        }
    }

    /// The shared groups parse the same flags on every command.
    #[test]
    fn shared_groups_parse_pipeline_and_warehouse() {
        match parse(&[
            "patron",
            "runs",
            "--pipeline",
            "p.toml",
            "--warehouse",
            "wh",
            "--format",
            "json",
        ]) {
            Command::Runs(a) => {
                assert_eq!(a.read.pipeline.pipeline, PathBuf::from("p.toml"));
                assert_eq!(a.read.warehouse.warehouse.as_deref(), Some("wh"));
                assert_eq!(a.format, OutputFormat::Json);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["patron", "run", "--select", "a", "b", "--exclude", "c"]) {
            Command::Run(a) => {
                assert_eq!(a.pipeline.pipeline, PathBuf::from("pipelines/default.toml"));
                let selection: Selection = a.selection.into();
                assert_eq!((selection.select.len(), selection.exclude.len()), (2, 1));
            }
            other => panic!("{other:?}"),
        }
        Cli::command().debug_assert();
    }
}
