//! `patron dag`: the stage graph (sources, seeds, stages and the model fit) as text,
//! Mermaid, Graphviz dot or JSON.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::CliError;
use crate::config::{Overrides, Plan};
use crate::names;
use crate::score::models;
use crate::transform::{self, Project, discover, execution_order, select};

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

/// A node of the graph.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Table name.
    pub name: String,
    /// `source`, `seed`, or the stage's layer (`staging`, `marts`, `scoring`, ...).
    pub kind: String,
    /// Stage file, for stages.
    pub file: Option<String>,
}

/// An edge: `to` reads (or calls what is provided by) `from`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// Upstream table.
    pub from: String,
    /// Downstream stage.
    pub to: String,
}

/// The graph of the selected stages and what they read.
#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    /// Nodes in execution order (inputs first).
    pub nodes: Vec<Node>,
    /// Edges, sorted.
    pub edges: Vec<Edge>,
}

/// Builds the graph of `chosen` stages of `project`, in `order`.
pub fn graph(project: &Project, plan: &Plan, order: &[String], chosen: &BTreeSet<String>) -> Graph {
    let provided = models::providers();
    let mut nodes = Vec::new();
    let mut edges = BTreeSet::new();
    let mut inputs = BTreeSet::new();
    for name in order.iter().filter(|n| chosen.contains(*n)) {
        let Some(stage) = project.stages.get(name) else {
            continue;
        };
        for read in &stage.reads {
            let from = provided.get(read).cloned().unwrap_or_else(|| read.clone());
            edges.insert(Edge {
                from: from.clone(),
                to: name.clone(),
            });
            if !project.stages.contains_key(&from) {
                inputs.insert(from);
            }
        }
        for call in &stage.calls {
            if let Some(from) = provided.get(call) {
                edges.insert(Edge {
                    from: from.clone(),
                    to: name.clone(),
                });
            }
        }
    }
    for input in &inputs {
        let kind = if project.seeds.contains_key(input) {
            "seed"
        } else if plan.sources.iter().any(|s| names::raw_table(&s.name) == *input) {
            "source"
        } else {
            "table"
        };
        nodes.push(Node {
            name: input.clone(),
            kind: kind.into(),
            file: None,
        });
    }
    for name in order.iter().filter(|n| chosen.contains(*n)) {
        if let Some(stage) = project.stages.get(name) {
            nodes.push(Node {
                name: name.clone(),
                kind: if stage.layer.is_empty() {
                    "stage".into()
                } else {
                    stage.layer.clone()
                },
                file: Some(stage.path.display().to_string()),
            });
        }
    }
    Graph {
        nodes,
        edges: edges.into_iter().collect(),
    }
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
    let plan = Plan::load(&args.pipeline, &Overrides::default()).map_err(|e| CliError::usage(e.to_string()))?;
    let project = discover(&plan.sql_dir).map_err(|e| CliError::usage(e.to_string()))?;
    let provided = models::providers();
    let external = crate::pipeline::external_tables(&plan);
    let order = execution_order(&project, &external, &provided).map_err(|e| CliError::usage(e.to_string()))?;
    let chosen = select::select(&project, &provided, &args.select, &[])
        .map_err(|e: transform::TransformError| CliError::usage(e.to_string()))?;
    print!("{}", render(&graph(&project, &plan, &order, &chosen), args.format));
    Ok(())
}
