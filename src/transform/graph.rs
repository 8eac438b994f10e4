//! The stage graph a project's SQL implies: the selected stages and every table they read,
//! for `patron dag` and the HTML catalog (`patron docs`).

use std::collections::BTreeSet;

use serde::Serialize;

use super::{Project, Provided};

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

/// Builds the graph of `chosen` stages of `project`, in `order`: `provided` maps a
/// function or table a step of the run provides to the stage that provides it, and
/// `source_tables` are the raw tables of the pipeline's sources.
pub fn graph(
    project: &Project,
    provided: &Provided,
    source_tables: &BTreeSet<String>,
    order: &[String],
    chosen: &BTreeSet<String>,
) -> Graph {
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
        } else if source_tables.contains(input) {
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
