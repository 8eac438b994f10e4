//! `patron dag`: the stage graph (sources, seeds, stages and the model fit) as text,
//! Mermaid, Graphviz dot or JSON.

use clap::{Args, ValueEnum};

use super::{CliError, PipelineArgs};
use crate::config::Overrides;
use crate::transform::graph::Graph;
use crate::transform::{execution_order, select};

/// Output format of the graph: `text` and `json` as on every other command, plus the
/// graph formats.
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
    /// The pipeline whose graph to show.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
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

/// Prints the graph.
pub fn run(args: DagArgs) -> Result<(), CliError> {
    let plan = args.pipeline.load(&Overrides::default())?;
    let project = crate::pipeline::project(&plan).map_err(CliError::Stages)?;
    let provided = crate::score::step::providers();
    let external = crate::pipeline::external_tables(&plan);
    let order = execution_order(&project, &external, &provided).map_err(CliError::Stages)?;
    let chosen = select::select(&project, &provided, &args.select, &[]).map_err(CliError::Stages)?;
    let graph = crate::transform::graph::graph(&project, &provided, &plan.source_tables(), &order, &chosen);
    out!("{}", render(&graph, args.format));
    Ok(())
}
