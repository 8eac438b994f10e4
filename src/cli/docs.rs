//! `patron docs`: writes the HTML catalog of the pipeline's tables (see [`crate::docs`]).

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::config::{Overrides, Plan};
use crate::docs::{LastRun, render};
use crate::names::DOCS_KEY;
use crate::pipeline::lineage_graph;
use crate::publish::read::latest_manifest;

/// Arguments of `patron docs`.
#[derive(Debug, Args)]
pub struct DocsArgs {
    /// Pipeline file.
    #[arg(long, default_value = "pipelines/default.toml")]
    pub pipeline: PathBuf,
    /// Warehouse whose last run gives row counts and test results (overrides `run.warehouse`).
    #[arg(long)]
    pub warehouse: Option<String>,
    /// Output file (default `<warehouse>/docs/index.html`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Writes the catalog and prints its path.
pub async fn run(args: DocsArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        as_of: None,
        warehouse: args.warehouse,
        ..Overrides::default()
    };
    let plan = Plan::load(&args.pipeline, &overrides).map_err(|e| CliError::usage(e.to_string()))?;
    let (project, order, lineage) = lineage_graph(&plan).await.map_err(|e| CliError {
        message: e.to_string(),
        code: e.exit_code(),
    })?;
    let chosen: BTreeSet<String> = project.stages.keys().cloned().collect();
    let graph = crate::transform::graph::graph(
        &project,
        &crate::score::models::providers(),
        &super::dag::source_tables(&plan),
        &order,
        &chosen,
    );
    let last = latest_manifest(&plan.warehouse)
        .await
        .map(|m| LastRun::from_manifest(&m))
        .unwrap_or_default();
    let html = render(&project, &order, &graph, &lineage, &last);
    let written = super::write_output(args.out.as_deref(), &plan.warehouse, DOCS_KEY, html).await?;
    println!("{written}");
    Ok(())
}
