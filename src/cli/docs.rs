//! `patron docs`: writes the HTML catalog of the pipeline's tables (see [`crate::docs`]).

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;

use super::{CliError, PipelineArgs, WarehouseArgs, write_output};
use crate::config::Overrides;
use crate::docs::{LastRun, render};
use crate::names::DOCS_KEY;
use crate::pipeline::lineage_graph;
use crate::publish::read::latest_manifest;

/// Arguments of `patron docs`.
#[derive(Debug, Args)]
pub struct DocsArgs {
    /// The pipeline to describe.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The warehouse whose last run gives row counts and test results.
    #[command(flatten)]
    pub warehouse: WarehouseArgs,
    /// Output file (default `<warehouse>/docs/index.html`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Writes the catalog and prints its path.
pub async fn run(args: DocsArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        warehouse: args.warehouse.warehouse,
        ..Overrides::default()
    };
    let plan = args.pipeline.load(&overrides)?;
    let (project, order, lineage) = lineage_graph(&plan).await?;
    let chosen: BTreeSet<String> = project.stages.keys().cloned().collect();
    let graph = crate::transform::graph::graph(
        &project,
        &crate::score::step::providers(),
        &plan.source_tables(),
        &order,
        &chosen,
    );
    let last = latest_manifest(&plan.warehouse)
        .await
        .map(|m| LastRun::from_manifest(&m))
        .unwrap_or_default();
    let html = render(&project, &order, &graph, &lineage, &last);
    let written = write_output(args.out.as_deref(), &plan.warehouse, DOCS_KEY, html).await?;
    outln!("{written}");
    Ok(())
}
