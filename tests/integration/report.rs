//! `patron report`: the HTML report of the latest succeeded run, checked against counts
//! computed independently with `patron query` and the manifest, then rendered in headless
//! chromium (as in docs.rs) to prove the charts draw.

use std::collections::BTreeMap;

use crate::support::*;

/// The capture groups of every match of `pattern` (data attributes), in document order.
fn attrs(html: &str, pattern: &str) -> Vec<Vec<String>> {
    regex::Regex::new(pattern)
        .unwrap()
        .captures_iter(html)
        .map(|c| {
            c.iter()
                .map(|m| m.map_or(String::new(), |m| m.as_str().to_string()))
                .collect()
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Customers per value of `column`, from `patron query --format json`.
fn counts_by(wh: &std::path::Path, column: &str) -> BTreeMap<String, u64> {
    let sql = format!("SELECT CAST({column} AS VARCHAR) AS k, COUNT(customer_id) AS n FROM customer_scores GROUP BY 1");
    let out = patron(
        &repo(),
        &["query", "--warehouse", wh.to_str().unwrap(), "--format", "json", &sql],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            let key = row["k"].as_str().unwrap_or("(none)").to_string();
            (key, row["n"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn report_shows_every_panel_with_the_published_numbers_and_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let page = dir.path().join("r.html");
    let report = |out: &std::path::Path| {
        patron(
            &repo(),
            &[
                "report",
                "--warehouse",
                wh.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };

    // No run yet: exit 1 (as `patron query` and `quarantine`), saying why; no page.
    std::fs::create_dir_all(&wh).unwrap();
    let none = report(&page);
    assert_eq!(none.status.code(), Some(1), "{}", text(&none));
    assert!(text(&none).contains("no succeeded run"), "{}", text(&none));
    assert!(!page.exists());

    run_default(&wh);
    let out = report(&page);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    let manifest = latest_manifest(&wh);

    // Self-contained: nothing loaded from anywhere, no script at all.
    let external =
        regex::Regex::new(r#"(?i)(src|href)\s*=\s*["']?\s*(https?:)?//|url\(|@import|<script|<link|<img"#).unwrap();
    assert!(
        external.find(&html).is_none(),
        "external reference: {:?}",
        external.find(&html)
    );
    for panel in patron::report::PANELS {
        assert!(html.contains(&format!("<h2>{panel}</h2>")), "no panel {panel}");
    }
    assert!(html.contains(manifest["run_id"].as_str().unwrap()));

    // Segment and lifecycle counts equal an independent GROUP BY over customer_scores.
    let mut shown: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for c in attrs(
        &html,
        r#"data-dimension="([^"]*)" data-label="([^"]*)" data-customers="(\d+)""#,
    ) {
        shown
            .entry(unescape(&c[1]))
            .or_default()
            .insert(unescape(&c[2]), c[3].parse().unwrap());
    }
    let mut dimensions: Vec<&str> = patron::report::queries::SEGMENT_COLUMNS.to_vec();
    dimensions.push(patron::report::queries::LIFECYCLE_COLUMN);
    for column in dimensions {
        let mut expected = counts_by(&wh, column);
        let table = shown.get(column).unwrap_or_else(|| panic!("no table of {column}"));
        if column == patron::report::queries::LIFECYCLE_COLUMN {
            // The funnel lists every stage, with 0 for those nobody is in.
            for stage in patron::report::LIFECYCLE_ORDER {
                expected.entry(stage.to_string()).or_insert(0);
            }
        }
        assert_eq!(table, &expected, "{column}");
        assert!(
            expected.values().sum::<u64>() > 100,
            "{column}: the fixtures have customers"
        );
    }
    let quadrants: u64 = attrs(&html, r#"data-quadrant="([^"]*)" data-customers="(\d+)""#)
        .iter()
        .map(|c| c[2].parse::<u64>().unwrap())
        .sum();
    assert_eq!(quadrants, counts_by(&wh, "portfolio_quadrant").values().sum::<u64>());

    // Data quality: the distinct quarantined rows equal the manifest's count.
    let q = attrs(&html, r#"data-quarantined-rows="(\d+)""#);
    assert_eq!(q.len(), 1);
    let rows_quarantined = manifest["rows_quarantined"].as_u64().unwrap();
    assert!(rows_quarantined > 0, "the fixtures carry bad rows");
    assert_eq!(q[0][1].parse::<u64>().unwrap(), rows_quarantined);
    let model = attrs(&html, r#"data-churn-model="([^"]*)""#);
    assert_eq!(model[0][1], manifest["models"]["churn"]["model"].as_str().unwrap());
    assert!(html.contains("mbgnbd_p_no_purchase") && html.contains("Gamma-Gamma"));
    assert!(html.contains("Modified BG/NBD"));
    assert!(!html.contains("no data"), "every chart has data on the fixtures");

    // An unwritable --out is an error naming the path.
    let bad = dir.path().join("no_such_folder/r.html");
    let failed = report(&bad);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(text(&failed).contains(bad.to_str().unwrap()), "{}", text(&failed));

    // Rendered by a real browser: a non-trivial screenshot, the charts in the DOM.
    let browse = |mode: &str| chromium(&page, (1280, 4000), mode);
    let shot = dir.path().join("report.png");
    let run = browse(&format!("--screenshot={}", shot.display()));
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (size, bar_px) = count_colour(&shot, hex(patron::report::svg::BAR_FILL));
    assert_eq!(size, (1280, 4000));
    assert!(bar_px > 20_000, "bars not drawn ({bar_px} px of the bar colour)");
    let dom = browse("--dump-dom");
    let dom = String::from_utf8_lossy(&dom.stdout);
    let charts = dom.matches("<svg").count();
    assert!(charts >= 9, "{charts} charts in the rendered DOM");
    assert!(dom.matches("<circle").count() > 100, "the scatter sample is drawn");
}
