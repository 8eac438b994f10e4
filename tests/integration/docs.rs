//! `patron docs`: the HTML catalog, checked as text and rendered in a real headless
//! browser (Debian's chromium, installed by .ci/run) to prove the graph draws.

use crate::support::*;

#[test]
fn docs_catalog_lists_tables_columns_tests_and_renders_the_graph_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    run_default(&wh);
    let out = patron(&repo(), &["docs", "--warehouse", wh.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let page = wh.join("docs/index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    let rows = latest_manifest(&wh)["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "fct_customer")
        .unwrap()["rows"]
        .as_u64()
        .unwrap();
    for needle in [
        "<h3 id=\"customer_scores\">",
        "<code>churn_risk</code>",
        "One row per customer seen in any export",
        "unique(customer_id)",
        "raw_sales.unit_price",
        &format!("rows {rows}"),
        "<svg",
    ] {
        assert!(html.contains(needle), "catalog lacks {needle}");
    }
    assert!(!html.contains("<script"), "opens from disk without scripts");

    let shot = dir.path().join("docs.png");
    let status = chromium(&page, (1400, 900), &format!("--screenshot={}", shot.display()));
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Six stage boxes of 190x34 px in the stage colour, four input boxes in grey.
    let (_, stage_px) = count_colour(&shot, hex(patron::docs::STAGE_FILL));
    assert!(
        stage_px > 6 * 190 * 34 / 2,
        "graph stage nodes not drawn ({stage_px} px)"
    );
    let (_, input_px) = count_colour(&shot, hex("#718096"));
    assert!(
        input_px > 3 * 190 * 34 / 2,
        "graph input nodes not drawn ({input_px} px)"
    );
}
