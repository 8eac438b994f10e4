//! `patron docs`: a static HTML catalog of the warehouse, one self-contained file that opens
//! from disk (no script, no network): the stage graph as inline SVG, and per table its
//! layer, file, description, row count from the last run, columns with types,
//! descriptions, source columns (lineage) and data tests with their last result.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::transform::Project;
use crate::transform::graph::Graph;
use crate::transform::lineage::{ColumnRef, LineageGraph};

/// What the last run said about tables and tests (from its manifest), when there was one.
#[derive(Debug, Default)]
pub struct LastRun {
    /// Run id and as-of date, for the page header.
    pub label: Option<String>,
    /// Rows per table.
    pub rows: HashMap<String, u64>,
    /// Failures per (table, test name).
    pub test_failures: HashMap<(String, String), u64>,
}

impl LastRun {
    /// Reads what the docs need from a run manifest.
    pub fn from_manifest(m: &serde_json::Value) -> Self {
        let mut last = LastRun {
            label: Some(format!(
                "run {} as of {}",
                m["run_id"].as_str().unwrap_or("?"),
                m["as_of"].as_str().unwrap_or("?")
            )),
            ..Default::default()
        };
        for s in m["stages"].as_array().into_iter().flatten() {
            if let (Some(n), Some(r)) = (s["name"].as_str(), s["rows"].as_u64()) {
                last.rows.insert(n.to_string(), r);
            }
        }
        for t in m["tests"].as_array().into_iter().flatten() {
            if let (Some(table), Some(name), Some(f)) =
                (t["table"].as_str(), t["name"].as_str(), t["failures"].as_u64())
            {
                last.test_failures.insert((table.to_string(), name.to_string()), f);
            }
        }
        last
    }
}

/// `text` safe inside HTML or SVG text and quoted attribute values.
pub fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Node fill colour by kind; the docs test looks for the stage colour in a screenshot.
pub const STAGE_FILL: &str = "#2b6cb0";
const INPUT_FILL: &str = "#718096";

/// The graph as SVG: nodes in columns by depth (longest path from an input), edges as
/// curves from left to right.
pub fn graph_svg(g: &Graph) -> String {
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &g.nodes {
        let d = g
            .edges
            .iter()
            .filter(|e| e.to == n.name)
            .filter_map(|e| depth.get(e.from.as_str()).map(|d| d + 1))
            .max()
            .unwrap_or(0);
        depth.insert(&n.name, d);
    }
    let (w, h, gap_x, gap_y) = (190.0, 34.0, 250.0, 52.0);
    let mut rows_in_col: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for n in &g.nodes {
        let d = depth[n.name.as_str()];
        let r = rows_in_col.entry(d).or_insert(0);
        pos.insert(&n.name, (20.0 + d as f64 * gap_x, 20.0 + *r as f64 * gap_y));
        *r += 1;
    }
    let width = 40.0 + (rows_in_col.len().max(1) - 1) as f64 * gap_x + w;
    let height = 40.0 + (rows_in_col.values().copied().max().unwrap_or(1) - 1) as f64 * gap_y + h;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"dag\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n"
    );
    for e in &g.edges {
        if let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(e.from.as_str()), pos.get(e.to.as_str())) {
            let (sx, sy, tx, ty) = (x1 + w, y1 + h / 2.0, x2, y2 + h / 2.0);
            let _ = writeln!(
                svg,
                "<path d=\"M{sx},{sy} C{},{sy} {},{ty} {tx},{ty}\" stroke=\"#a0aec0\" stroke-width=\"2\" fill=\"none\"/>",
                sx + 60.0,
                tx - 60.0
            );
        }
    }
    for n in &g.nodes {
        let (x, y) = pos[n.name.as_str()];
        let fill = if n.file.is_some() { STAGE_FILL } else { INPUT_FILL };
        let _ = writeln!(
            svg,
            "<a href=\"#{id}\"><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\" fill=\"{fill}\"/>\
             <text x=\"{}\" y=\"{}\" fill=\"#ffffff\" font-family=\"sans-serif\" font-size=\"13\" text-anchor=\"middle\">{name}</text></a>",
            x + w / 2.0,
            y + h / 2.0 + 4.5,
            id = esc(&n.name),
            name = esc(&n.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The whole catalog page.
pub fn render(project: &Project, order: &[String], graph: &Graph, lineage: &LineageGraph, last: &LastRun) -> String {
    let mut html = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>patron warehouse catalog</title>\n<style>\
         body{font-family:sans-serif;margin:2em;color:#1a202c}table{border-collapse:collapse;margin:.5em 0 1.5em}\
         td,th{border:1px solid #cbd5e0;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}\
         th{background:#edf2f7}.pass{color:#276749}.fail{color:#c53030}code{background:#edf2f7;padding:1px 3px}\
         .muted{color:#718096}</style></head><body>\n<h1>patron warehouse catalog</h1>\n",
    );
    if let Some(label) = &last.label {
        let _ = writeln!(
            html,
            "<p class=\"muted\">Row counts and test results from {}.</p>",
            esc(label)
        );
    }
    html.push_str("<h2>Stage graph</h2>\n");
    html.push_str(&graph_svg(graph));
    html.push_str("<h2>Tables</h2>\n<ul>\n");
    for name in order {
        let _ = writeln!(html, "<li><a href=\"#{0}\">{0}</a></li>", esc(name));
    }
    html.push_str("</ul>\n");
    for name in order {
        let Some(stage) = project.stages.get(name) else {
            continue;
        };
        let _ = writeln!(html, "<h3 id=\"{0}\">{0}</h3>", esc(name));
        let _ = writeln!(
            html,
            "<p>{}</p><p class=\"muted\">layer <code>{}</code> &middot; file <code>{}</code> &middot; {:?} &middot; rows {}{}</p>",
            esc(stage.spec.description.as_deref().unwrap_or("(no description)")),
            esc(&stage.layer),
            esc(&stage.path.display().to_string()),
            stage.spec.materialized,
            last.rows
                .get(name)
                .map_or_else(|| "unknown".to_string(), |r| r.to_string()),
            if stage.spec.tags.is_empty() {
                String::new()
            } else {
                format!(" &middot; tags {}", esc(&stage.spec.tags.join(", ")))
            }
        );
        html.push_str("<table><tr><th>column</th><th>type</th><th>description</th><th>source columns</th></tr>\n");
        for (column, ty) in lineage.typed_columns(name).unwrap_or_default() {
            let sources = lineage
                .sources(&ColumnRef {
                    table: name.clone(),
                    column: column.clone(),
                })
                .unwrap_or_default()
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"muted\">{}</td></tr>",
                esc(&column),
                esc(&ty),
                esc(stage.spec.columns.get(&column).map(String::as_str).unwrap_or("")),
                esc(&sources)
            );
        }
        html.push_str("</table>\n");
        if !stage.spec.tests.is_empty() {
            html.push_str("<table><tr><th>data test</th><th>severity</th><th>last result</th></tr>\n");
            for t in &stage.spec.tests {
                let result = match last.test_failures.get(&(name.clone(), t.name.clone())) {
                    Some(0) => "<span class=\"pass\">pass</span>".to_string(),
                    Some(n) => format!("<span class=\"fail\">{n} failing rows</span>"),
                    None => "not run".to_string(),
                };
                let _ = writeln!(
                    html,
                    "<tr><td><code>{}</code></td><td>{:?}</td><td>{result}</td></tr>",
                    esc(&t.name),
                    t.severity
                );
            }
            html.push_str("</table>\n");
        }
    }
    html.push_str("</body></html>\n");
    html
}
