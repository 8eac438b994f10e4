//! `patron dag`: the stage graph (sources, seeds, stages and the model fit) as text,
//! Mermaid, Graphviz dot or JSON.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::CliError;
use crate::config::{Overrides, Plan};
use crate::names;
use crate::score::models;
use crate::transform::graph::Graph;
use crate::transform::{self, discover, execution_order, select};

/// Output format of the graph.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DagFormat {
    /// Stages in execution order with what each reads.
    Text,
    /// A Mermaid flowchart.
    Mermaid,
    /// Graphviz dot.
    Dot,
    /// Nodes and edges as JSON.
    Json,
}

/// Arguments of `patron dag`.
#[derive(Debug, Args)]
pub struct DagArgs {
    /// Pipeline file.
    #[arg(long, default_value = "pipelines/default.toml")]
    pub pipeline: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: DagFormat,
    /// Stages to show (dbt syntax); default all.
    #[arg(long, num_args = 1..)]
    pub select: Vec<String>,
}

/// Renders the graph.
pub fn render(g: &Graph, format: DagFormat) -> String {
    match format {
        DagFormat::Json => serde_json::to_string_pretty(g).unwrap_or_default(),
        DagFormat::Text => {
            let mut out = String::new();
            for n in &g.nodes {
                let reads: Vec<&str> = g
                    .edges
                    .iter()
                    .filter(|e| e.to == n.name)
                    .map(|e| e.from.as_str())
                    .collect();
                out.push_str(&format!("{:<24} {:<9}", n.name, n.kind));
                if !reads.is_empty() {
                    out.push_str(&format!(" <- {}", reads.join(", ")));
                }
                out.push('\n');
            }
            out
        }
        DagFormat::Mermaid => {
            let mut out = String::from("flowchart LR\n");
            for n in &g.nodes {
                let shape = match n.kind.as_str() {
                    "source" => format!("{}[({})]", n.name, n.name),
                    "seed" => format!("{}[/{}/]", n.name, n.name),
                    _ => format!("{}[{}]", n.name, n.name),
                };
                out.push_str(&format!("  {shape}\n"));
            }
            for e in &g.edges {
                out.push_str(&format!("  {} --> {}\n", e.from, e.to));
            }
            out
        }
        DagFormat::Dot => {
            let mut out = String::from("digraph patron {\n  rankdir=LR;\n");
            for n in &g.nodes {
                let shape = match n.kind.as_str() {
                    "source" => "cylinder",
                    "seed" => "note",
                    _ => "box",
                };
                out.push_str(&format!("  \"{}\" [shape={shape}, tooltip=\"{}\"];\n", n.name, n.kind));
            }
            for e in &g.edges {
                out.push_str(&format!("  \"{}\" -> \"{}\";\n", e.from, e.to));
            }
            out.push_str("}\n");
            out
        }
    }
}

/// The raw tables of the pipeline's sources.
pub fn source_tables(plan: &Plan) -> BTreeSet<String> {
    plan.sources.iter().map(|s| names::raw_table(&s.name)).collect()
}

/// Prints the graph.
pub fn run(args: DagArgs) -> Result<(), CliError> {
    let plan = Plan::load(&args.pipeline, &Overrides::default()).map_err(|e| CliError::usage(e.to_string()))?;
    let project = discover(&plan.sql_dir).map_err(|e| CliError::usage(e.to_string()))?;
    let provided = models::providers();
    let external = crate::pipeline::external_tables(&plan);
    let order = execution_order(&project, &external, &provided).map_err(|e| CliError::usage(e.to_string()))?;
    let chosen = select::select(&project, &provided, &args.select, &[])
        .map_err(|e: transform::TransformError| CliError::usage(e.to_string()))?;
    let graph = transform::graph::graph(&project, &provided, &source_tables(&plan), &order, &chosen);
    print!("{}", render(&graph, args.format));
    Ok(())
}
