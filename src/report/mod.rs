//! `patron report`: one self-contained static HTML page about a succeeded run (no script,
//! no network; charts are inline SVG from [`svg`]): header, segment sizes, CLV and
//! churn-risk distributions, the portfolio two-by-two with a customer sample, the
//! lifecycle funnel, the model fits and the data quality. [`queries`] lists every query
//! it runs on the published tables; the rest comes from the run manifest.

pub mod data;
pub mod explain;
pub mod svg;

use std::fmt::Write as _;

use serde_json::Value;

use self::svg::{Bar, Cell, Point, bars, bucket_labels, histogram, int, log_edges, num, short};
use crate::docs::esc;
use crate::publish::quarantine::Summary;

/// The queries the report runs on `customer_scores` as the run published it.
pub mod queries {
    /// Customers scored.
    pub const CUSTOMERS: &str = "SELECT COUNT(*) AS customers FROM customer_scores";
    /// Customers and summed CLV per value of `{column}` (NULL shown as `(none)`).
    pub const SEGMENT: &str = "SELECT COALESCE(CAST({column} AS VARCHAR), '(none)') AS label, COUNT(*) AS customers, \
         COALESCE(SUM(clv), 0) AS clv FROM customer_scores GROUP BY 1 ORDER BY 2 DESC, 1";
    /// The columns [`SEGMENT`] runs on for the segment panel.
    pub const SEGMENT_COLUMNS: [&str; 4] = ["rfm_segment", "value_tier", "churn_band", "loyalty_type"];
    /// The column [`SEGMENT`] runs on for the lifecycle funnel.
    pub const LIFECYCLE_COLUMN: &str = "lifecycle_stage";
    /// CLV of buyers (customers with at least one purchase day).
    pub const CLV: &str = "SELECT clv AS v FROM customer_scores WHERE frequency > 0 AND clv IS NOT NULL";
    /// Churn risk of every customer who has one (buyers).
    pub const CHURN_RISK: &str = "SELECT churn_risk AS v FROM customer_scores WHERE churn_risk IS NOT NULL";
    /// Customers and summed historical and potential value per portfolio quadrant.
    pub const QUADRANTS: &str = "SELECT portfolio_quadrant AS label, COUNT(*) AS customers, \
         COALESCE(SUM(historical_value), 0) AS historical, COALESCE(SUM(potential_value), 0) AS potential \
         FROM customer_scores GROUP BY 1";
    /// The scatter sample: the first `{limit}` customers by the MD5 of their id, a
    /// deterministic pseudo-random sample.
    pub const SAMPLE: &str = "SELECT customer_id, historical_value, potential_value FROM customer_scores \
         WHERE historical_value IS NOT NULL AND potential_value IS NOT NULL ORDER BY md5(customer_id), customer_id LIMIT {limit}";
}

/// Customers drawn in the portfolio scatter at most.
pub const SAMPLE_LIMIT: usize = 2000;
/// Quarantine reason groups listed at most.
pub const TOP_REASONS: usize = 10;
/// Lifecycle stages in funnel order (docs/scoring.md, "Lifecycle stage").
pub const LIFECYCLE_ORDER: [&str; 6] = [
    "prospect",
    "exploration",
    "formation",
    "stability",
    "decline",
    "churned",
];
/// Portfolio quadrants in grid order: top-left, top-right, bottom-left, bottom-right
/// (historical value across, potential value up).
pub const QUADRANT_ORDER: [&str; 4] = ["cultivate", "invest", "abandon", "maintain"];
/// The panel headings, in page order.
pub const PANELS: [&str; 7] = [
    "Run",
    "Segment sizes",
    "Distributions",
    "Customer portfolio",
    "Lifecycle funnel",
    "Model fit",
    "Data quality",
];

/// Customers and CLV of one value of a segment column.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// The value (`(none)` for NULL).
    pub label: String,
    /// Customers.
    pub customers: u64,
    /// Their summed CLV (or, for a quadrant, historical value).
    pub value: f64,
    /// For a quadrant: summed potential value.
    pub potential: f64,
}

/// Everything the page shows, gathered by [`data::gather`].
#[derive(Debug)]
pub struct ReportData {
    /// The run's manifest (`runs/<run_id>.json`).
    pub manifest: Value,
    /// Customers in `customer_scores`.
    pub customers: u64,
    /// Per segment column, its segments.
    pub segments: Vec<(String, Vec<Segment>)>,
    /// Lifecycle stages.
    pub lifecycle: Vec<Segment>,
    /// Buyers' CLV.
    pub clv: Vec<f64>,
    /// Churn risks.
    pub churn_risk: Vec<f64>,
    /// Portfolio quadrants.
    pub quadrants: Vec<Segment>,
    /// The scatter sample.
    pub sample: Vec<Point>,
    /// What the run quarantined.
    pub quarantine: Summary,
}

fn table(head: &[&str], rows: &[(String, Vec<String>)]) -> String {
    let mut html = String::from("<table>");
    if !head.is_empty() {
        html.push_str("<tr>");
        for h in head {
            let _ = write!(html, "<th>{}</th>", esc(h));
        }
        html.push_str("</tr>\n");
    }
    for (attrs, cells) in rows {
        let _ = write!(html, "<tr{attrs}>");
        for c in cells {
            let _ = write!(html, "<td>{}</td>", esc(c));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Number(n) => n
            .as_u64()
            .map(int)
            .unwrap_or_else(|| short(n.as_f64().unwrap_or(f64::NAN))),
        other => other.to_string(),
    }
}

fn segment_bars(segments: &[Segment]) -> Vec<Bar> {
    segments
        .iter()
        .map(|s| Bar {
            label: s.label.clone(),
            value: s.customers as f64,
            detail: format!("{} customers, CLV {}", int(s.customers), num(s.value)),
        })
        .collect()
}

fn segment_table(dimension: &str, segments: &[Segment]) -> String {
    let rows: Vec<_> = segments
        .iter()
        .map(|s| {
            (
                format!(
                    " data-dimension=\"{}\" data-label=\"{}\" data-customers=\"{}\"",
                    esc(dimension),
                    esc(&s.label),
                    s.customers
                ),
                vec![s.label.clone(), int(s.customers), num(s.value)],
            )
        })
        .collect();
    table(&[dimension, "customers", "sum of CLV"], &rows)
}

fn histogram_panel(id: &str, title: &str, quantity: &str, values: &[f64], edges: &[f64]) -> String {
    let counts = histogram(values, edges);
    let labels = bucket_labels(edges);
    let chart: Vec<Bar> = labels
        .iter()
        .zip(&counts)
        .map(|(l, &c)| Bar {
            label: l.clone(),
            value: c as f64,
            detail: format!("{} customers", int(c)),
        })
        .collect();
    let edges_text: Vec<String> = edges.iter().map(|e| short(*e)).collect();
    let rows: Vec<_> = labels
        .into_iter()
        .zip(&counts)
        .map(|(l, c)| (String::new(), vec![l, int(*c)]))
        .collect();
    format!(
        "<div class=\"row\">{}{}</div><p class=\"muted\">{} customers; bucket edges: {}</p>\n",
        svg::bars(id, title, quantity, "customers", &chart, false),
        table(&[quantity, "customers"], &rows),
        int(values.len() as u64),
        esc(&edges_text.join(", "))
    )
}

fn model_panel(m: &Value) -> String {
    let mut html = String::new();
    for (key, name) in [
        ("bgnbd", "BG/NBD"),
        ("mbgnbd", "Modified BG/NBD (p_alive, churn_risk)"),
        ("gamma_gamma", "Gamma-Gamma"),
    ] {
        let fit = &m[key];
        let _ = writeln!(html, "<h3>{name}</h3>");
        if !fit.is_object() {
            let fallback = &m[format!("{key}_fallback")];
            let why = format!(
                "not fitted, fell back to {}: {}",
                fallback["method"].as_str().unwrap_or("?"),
                fallback["reason"].as_str().unwrap_or("no reason recorded")
            );
            let _ = writeln!(html, "<p class=\"warning\">{}</p>", esc(&why));
            continue;
        }
        let mut rows: Vec<(String, Vec<String>)> = fit["params"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(p, v)| (String::new(), vec![p.clone(), text(v)]))
            .collect();
        for stat in ["log_likelihood", "iterations", "converged", "customers"] {
            rows.push((String::new(), vec![stat.replace('_', "-"), text(&fit[stat])]));
        }
        html.push_str(&table(&["parameter", "value"], &rows));
    }
    let churn = &m["churn"];
    html.push_str("<h3>Churn model</h3>\n");
    if !churn.is_object() {
        html.push_str("<p>no churn model in this run</p>\n");
        return html;
    }
    let _ = writeln!(
        html,
        "<p>chosen: <b data-churn-model=\"{0}\">{0}</b>; fallback reason: {1}</p>\
         <p class=\"muted\">validation: fitted as of {2}, tested on the {3} days after {4} \
         (time-based holdout, {5} customers: {6} to choose the model on, {7} to calibrate it on); \
         AUC and Brier score for \"no purchase in the holdout\" on the first half.</p>",
        esc(&text(&churn["model"])),
        esc(churn["fallback_reason"].as_str().unwrap_or("none")),
        esc(&text(&churn["training_cutoff"])),
        esc(&text(&churn["holdout_days"])),
        esc(&text(&churn["validation_cutoff"])),
        esc(&text(&churn["validation_customers"])),
        esc(&text(&churn["selection_customers"])),
        esc(&text(&churn["calibration_customers"]))
    );
    let rows: Vec<_> = churn["validation"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                String::new(),
                vec![text(&l["learner"]), text(&l["auc"]), text(&l["brier"])],
            )
        })
        .collect();
    html.push_str(&table(&["learner", "AUC", "Brier"], &rows));
    let bins: Vec<_> = churn["calibration"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                String::new(),
                vec![
                    format!("{}-{}", text(&b["from"]), text(&b["to"])),
                    text(&b["customers"]),
                    text(&b["mean_predicted"]),
                    text(&b["observed_rate"]),
                ],
            )
        })
        .collect();
    if !bins.is_empty() {
        let _ = writeln!(
            html,
            "<p>deployed model, calibrated: Brier {} on the half it was chosen on (its calibration never saw it)</p>",
            esc(&text(&churn["calibrated_brier"]))
        );
        html.push_str(&table(
            &["P(no purchase)", "customers", "mean predicted", "observed"],
            &bins,
        ));
    }
    html
}

fn quality_panel(m: &Value, q: &Summary) -> String {
    let rows: Vec<_> = m["extract"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let cells = ["rows_read", "rows_loaded", "rows_quarantined", "duplicate_rows"].map(|k| text(&s[k]));
            (
                String::new(),
                std::iter::once(text(&s["source"])).chain(cells).collect(),
            )
        })
        .collect();
    let mut html = table(&["source", "rows read", "loaded", "quarantined", "duplicates"], &rows);
    let _ = writeln!(
        html,
        "<p>Quarantined rows in the published quarantine tables: \
         <b data-quarantined-rows=\"{}\">{}</b> ({} entries; the manifest says {}).</p>",
        q.rows,
        int(q.rows),
        int(q.entries),
        text(&m["rows_quarantined"])
    );
    let top: Vec<_> = q
        .summary
        .iter()
        .take(TOP_REASONS)
        .map(|g| {
            let column = if g.column.is_empty() { "(row)" } else { &g.column };
            (
                String::new(),
                vec![g.source.clone(), column.to_string(), g.reason.clone(), int(g.rows)],
            )
        })
        .collect();
    if top.is_empty() {
        html.push_str("<p>nothing was quarantined</p>\n");
    } else {
        html.push_str("<h3>Top quarantine reasons</h3>\n");
        html.push_str(&table(&["source", "column", "reason", "rows"], &top));
    }
    html
}

/// The whole page.
pub fn render(d: &ReportData) -> String {
    let m = &d.manifest;
    let mut html = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>patron run report</title>\n<style>\
         body{font-family:sans-serif;margin:2em;color:#1a202c;max-width:1250px}\
         .row{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}table{border-collapse:collapse;margin:.5em 0 1.5em}\
         td,th{border:1px solid #cbd5e0;padding:3px 8px;text-align:left;font-size:13px}th{background:#edf2f7}\
         .muted{color:#718096}.nodata{color:#c53030;font-style:italic}svg.chart{display:block;margin:.5em 0}</style></head><body>\n\
         <h1>patron run report</h1>\n",
    );
    let header: Vec<_> = [
        ("pipeline", text(&m["pipeline"])),
        ("run id", text(&m["run_id"])),
        ("as of", text(&m["as_of"])),
        ("finished", text(&m["finished_at"])),
        ("customers", int(d.customers)),
        ("patron version", text(&m["patron_version"])),
    ]
    .into_iter()
    .map(|(k, v)| (String::new(), vec![k.to_string(), v]))
    .collect();
    let _ = write!(html, "<h2>{}</h2>\n{}", PANELS[0], table(&[], &header));

    let _ = writeln!(html, "<h2>{}</h2>", PANELS[1]);
    for (dimension, segments) in &d.segments {
        html.push_str("<div class=\"row\">");
        html.push_str(&bars(
            &format!("seg-{dimension}"),
            &format!("Customers by {dimension}"),
            dimension,
            "customers",
            &segment_bars(segments),
            false,
        ));
        html.push_str(&segment_table(dimension, segments));
        html.push_str("</div>\n");
    }

    let _ = writeln!(html, "<h2>{}</h2>", PANELS[2]);
    html.push_str(&histogram_panel(
        "clv-hist",
        "CLV of buyers (1-2-5 log buckets)",
        "CLV",
        &d.clv,
        &log_edges(&d.clv),
    ));
    let tenths: Vec<f64> = (0..=10).map(|i| f64::from(i) / 10.0).collect();
    html.push_str(&histogram_panel(
        "churn-hist",
        "Churn risk (10 bins of 0.1)",
        "churn risk",
        &d.churn_risk,
        &tenths,
    ));

    let _ = writeln!(html, "<h2>{}</h2>", PANELS[3]);
    let cells = QUADRANT_ORDER.map(|name| {
        let s = d.quadrants.iter().find(|s| s.label == name);
        Cell {
            name: name.to_string(),
            customers: s.map_or(0, |s| s.customers),
            historical: s.map_or(0.0, |s| s.value),
            potential: s.map_or(0.0, |s| s.potential),
        }
    });
    html.push_str("<div class=\"row\">");
    html.push_str(&svg::quadrant(
        "portfolio",
        &format!(
            "Portfolio: historical x potential value (axes split at quantile {} of buyers)",
            text(&m["settings"]["scoring"]["segment_split_quantile"])
        ),
        "historical value",
        "potential value",
        &cells,
    ));
    let rows: Vec<_> = d
        .quadrants
        .iter()
        .map(|s| {
            let attrs = format!(
                " data-quadrant=\"{}\" data-customers=\"{}\"",
                esc(&s.label),
                s.customers
            );
            (
                attrs,
                vec![s.label.clone(), int(s.customers), num(s.value), num(s.potential)],
            )
        })
        .collect();
    html.push_str(&table(
        &["quadrant", "customers", "historical value", "potential value"],
        &rows,
    ));
    html.push_str("</div>\n");
    html.push_str(&svg::scatter(
        "portfolio-scatter",
        &format!(
            "Sample of {} of {} customers (by MD5 of customer_id)",
            int(d.sample.len() as u64),
            int(d.customers)
        ),
        "historical value",
        "potential value",
        &d.sample,
    ));

    let _ = writeln!(html, "<h2>{}</h2>", PANELS[4]);
    let mut stages: Vec<Segment> = LIFECYCLE_ORDER
        .iter()
        .map(|name| {
            d.lifecycle
                .iter()
                .find(|s| s.label == *name)
                .cloned()
                .unwrap_or(Segment {
                    label: name.to_string(),
                    customers: 0,
                    value: 0.0,
                    potential: 0.0,
                })
        })
        .collect();
    stages.extend(
        d.lifecycle
            .iter()
            .filter(|s| !LIFECYCLE_ORDER.contains(&s.label.as_str()))
            .cloned(),
    );
    html.push_str("<div class=\"row\">");
    html.push_str(&bars(
        "lifecycle",
        "Customers by lifecycle stage",
        "lifecycle stage",
        "customers",
        &segment_bars(&stages),
        true,
    ));
    html.push_str(&segment_table(queries::LIFECYCLE_COLUMN, &stages));
    html.push_str("</div>\n");

    let _ = writeln!(html, "<h2>{}</h2>", PANELS[5]);
    html.push_str(&model_panel(&m["models"]));
    let _ = writeln!(html, "<h2>{}</h2>", PANELS[6]);
    html.push_str(&quality_panel(m, &d.quarantine));
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> ReportData {
        ReportData {
            manifest: Value::Null,
            customers: 0,
            segments: Vec::new(),
            lifecycle: Vec::new(),
            clv: Vec::new(),
            churn_risk: Vec::new(),
            quadrants: Vec::new(),
            sample: Vec::new(),
            quarantine: Summary {
                run_id: String::new(),
                pipeline: String::new(),
                finished_at: String::new(),
                rows: 0,
                entries: 0,
                summary: Vec::new(),
                duplicates: Vec::new(),
                samples: Vec::new(),
            },
        }
    }

    #[test]
    fn an_empty_run_renders_every_panel_with_no_data_notes() {
        let html = render(&empty());
        for panel in PANELS {
            assert!(html.contains(&format!("<h2>{panel}</h2>")), "{panel}");
        }
        assert_eq!(
            html.matches(svg::NO_DATA).count(),
            4,
            "two histograms, the scatter, the funnel"
        );
        assert!(html.contains("data-quarantined-rows=\"0\"") && html.contains("no churn model"));
        assert!(!html.contains("NaN") && !html.contains("inf"), "{html}");
    }

    #[test]
    fn user_data_is_escaped_in_tables_attributes_and_tooltips() {
        let mut d = empty();
        let evil = "<img src=x onerror='1'>\"&";
        d.segments.push((
            "rfm_segment".into(),
            vec![Segment {
                label: evil.into(),
                customers: 3,
                value: 1.5,
                potential: 0.0,
            }],
        ));
        d.sample.push(Point {
            id: evil.into(),
            x: 1.0,
            y: 2.0,
        });
        d.manifest = serde_json::json!({"pipeline": evil, "models": {"churn": {"model": evil, "validation": []}}});
        let html = render(&d);
        assert!(!html.contains("<img") && !html.contains("'1'"), "{html}");
        let escaped = "&lt;img src=x onerror=&#39;1&#39;&gt;&quot;&amp;";
        assert!(html.contains(&format!("data-label=\"{escaped}\"")), "{html}");
        assert!(html.contains(&format!("<td>{escaped}</td>")));
        assert!(html.contains(&format!("<title>{escaped}: 1.00, 2.00</title>")));
    }
}
