//! `patron docs`: the HTML catalog, checked as text and rendered in a real headless
//! browser (Debian's chromium, installed by .ci/run) to prove the graph draws.

use std::process::Command;

use crate::support::*;

/// Pixels of an RGB colour in a PNG screenshot.
fn count_colour(png_path: &std::path::Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|px| px[..3] == rgb)
        .count()
}

fn hex(colour: &str) -> [u8; 3] {
    let v = u32::from_str_radix(colour.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

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

    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("chromium is installed by .ci/run (apt-get install chromium)");
    let shot = dir.path().join("docs.png");
    let profile = tempfile::tempdir().unwrap();
    let status = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Six stage boxes of 190x34 px in the stage colour, four input boxes in grey.
    let stage_px = count_colour(&shot, hex(patron::docs::STAGE_FILL));
    assert!(
        stage_px > 6 * 190 * 34 / 2,
        "graph stage nodes not drawn ({stage_px} px)"
    );
    let input_px = count_colour(&shot, hex("#718096"));
    assert!(
        input_px > 3 * 190 * 34 / 2,
        "graph input nodes not drawn ({input_px} px)"
    );
}
