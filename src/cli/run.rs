//! `patron run`: one pipeline run, with a summary on stdout.

use clap::Args;

use tokio_util::sync::CancellationToken;

use super::{CliError, OutAlias, PipelineArgs, SelectionArgs, WarehouseArgs};
use crate::config::{AsOf, Overrides};
use crate::engine::Engine;
use crate::pipeline::{self, RunOptions};
use crate::progress::Progress;

/// Arguments of `patron run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline to run.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// As-of date YYYY-MM-DD (or `latest`): events after this day are ignored.
    #[arg(long, value_parser = AsOf::parse)]
    pub as_of: Option<AsOf>,
    /// The warehouse to publish into.
    #[command(flatten)]
    pub warehouse: WarehouseArgs,
    /// `--out`, the hidden alias of `--warehouse`.
    #[command(flatten)]
    pub out: OutAlias,
    /// Reload every file of `incremental` sources instead of only new or changed ones.
    #[arg(long)]
    pub full_refresh: bool,
    /// The stages to run.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Where queries execute: `local` (this process), `standalone` (an in-process Ballista
    /// scheduler and executor) or `df://HOST:PORT` (a Ballista scheduler; every executor
    /// must read the warehouse under the same path). Overrides `engine.engine`.
    #[arg(long, value_parser = parse_engine)]
    pub engine: Option<Engine>,
    /// Run id to use instead of a new one (set by `patron schedule` for its attempts).
    #[arg(long, hide = true)]
    pub run_id: Option<String>,
}

fn parse_engine(text: &str) -> Result<Engine, String> {
    text.parse()
}

/// A token cancelled on the first SIGTERM or SIGINT, so the run stops cleanly: it aborts
/// before publishing (or restores what it committed), records itself and releases the
/// warehouse lock. Without signal support the token is never cancelled.
pub fn cancel_on_signals() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let cancel = token.clone();
    // Registered before returning, so a signal arriving at any later point is caught.
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot listen for SIGTERM/SIGINT");
        return token;
    };
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        eprintln!("patron: {name} received: stopping the run without publishing");
        cancel.cancel();
    });
    token
}

/// Loads the plan, runs it and prints a summary.
pub async fn run(args: RunArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        as_of: args.as_of,
        warehouse: args.warehouse.or_out(args.out),
        full_refresh: args.full_refresh,
        selection: args.selection.into(),
        engine: args.engine,
    };
    let plan = args.pipeline.load(&overrides)?;
    let progress = Progress::for_stderr();
    let options = RunOptions {
        run_id: args.run_id,
        cancel: cancel_on_signals(),
    };
    let report = pipeline::run_with(&plan, &progress, &options).await?;
    print_report(&report, &plan.warehouse);
    Ok(())
}

/// The summary of a succeeded run.
fn print_report(report: &pipeline::RunReport, warehouse: &crate::warehouse::Warehouse) {
    let m = &report.manifest;
    outln!(
        "run {} succeeded in {:.1}s (as of {})",
        m.run_id,
        m.duration_ms as f64 / 1000.0,
        m.as_of.as_deref().unwrap_or("?")
    );
    for s in &m.extract {
        let reused = if s.files_reused > 0 {
            format!(
                " ({} rows of {} unchanged files carried over)",
                s.rows_reused, s.files_reused
            )
        } else {
            String::new()
        };
        let duplicates = if s.duplicate_rows > 0 {
            format!(
                ", {} superseded by a later copy of their key ({} changed)",
                s.duplicate_rows, s.duplicate_rows_changed
            )
        } else {
            String::new()
        };
        outln!(
            "  extract {:<12} {:>9} rows read, {:>9} loaded, {:>6} quarantined{duplicates}{reused}",
            s.source,
            s.rows_read,
            s.rows_loaded,
            s.rows_quarantined
        );
    }
    for s in &m.stages {
        outln!("  stage   {:<24} {:>9} rows  {:>6} ms", s.name, s.rows, s.duration_ms);
    }
    for t in m.tables.iter().filter(|t| t.version.is_some()) {
        outln!(
            "  publish {:<24} {:>9} rows  version {}",
            t.name,
            t.rows,
            t.version.unwrap_or_default()
        );
    }
    if let Some(models) = &m.models {
        let fallbacks: Vec<String> = [&models.bgnbd_fallback, &models.gamma_gamma_fallback]
            .into_iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        if !fallbacks.is_empty() {
            outln!(
                "warning: scored with model fallbacks: {} (`[scoring] require_models = true` makes this fail the run)",
                fallbacks.join("; ")
            );
        }
    }
    if let Some(old) = &m.lock_taken_over {
        outln!("took over a stale warehouse lock: {old}");
    }
    if report.vacuumed_files > 0 {
        outln!("vacuum: {} old data files deleted", report.vacuumed_files);
    }
    outln!("warehouse: {warehouse}");
    outln!("manifest:  {}", report.manifest_path);
}
