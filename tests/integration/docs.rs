//! `patron docs`: the HTML catalog, checked as text and rendered in a real headless
//! browser (Debian's chromium, installed by .ci/run) to prove the graph draws. And the
//! markdown docs (README.md, docs/, benches/): every relative link leads somewhere.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use regex::Regex;

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

/// The README and the pages under docs/ and benches/ link to each other by relative path
/// and `#heading`; a page moved or a heading renamed must not leave a link dangling.
#[test]
fn every_relative_link_in_the_readme_docs_and_benches_resolves() {
    let root = repo();
    let mut pages = vec![root.join("README.md")];
    for dir in ["docs", "benches"] {
        markdown_files(&root.join(dir), &mut pages);
    }
    let mut headings: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in relative_links(&text) {
            checked += 1;
            let (path, fragment) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let linked = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            let name = page.strip_prefix(&root).unwrap().display();
            if !linked.exists() {
                broken.push(format!("{name}: ({target}): no such file or folder"));
            } else if !fragment.is_empty() && linked.extension().is_some_and(|e| e == "md") {
                let slugs = headings
                    .entry(linked.clone())
                    .or_insert_with(|| heading_slugs(&std::fs::read_to_string(&linked).unwrap()));
                if !slugs.contains(fragment) {
                    let page = if path.is_empty() { "this page" } else { path };
                    broken.push(format!("{name}: ({target}): no heading #{fragment} in {page}"));
                }
            }
        }
    }
    assert!(checked > 20, "found only {checked} relative links in {pages:?}");
    assert!(
        broken.is_empty(),
        "{} broken links:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

/// Every `*.md` under `dir`, leaving out build output and hidden folders.
fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                markdown_files(&path, found);
            }
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

/// The lines of a page outside fenced code blocks: code shows links and headings, it does
/// not make them.
fn outside_fences(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// [`outside_fences`] without inline code spans (a span may wrap over lines).
fn prose(markdown: &str) -> String {
    Regex::new("`[^`]*`")
        .unwrap()
        .replace_all(&outside_fences(markdown), "")
        .into_owned()
}

/// Targets of `[text](target)` links that point into the repository: not a URL, not mail.
fn relative_links(markdown: &str) -> Vec<String> {
    let link = Regex::new(r#"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)"#).unwrap();
    link.captures_iter(&prose(markdown))
        .map(|c| c[1].to_string())
        .filter(|t| !["http://", "https://", "mailto:"].iter().any(|s| t.starts_with(s)))
        .collect()
}

/// GitHub's anchors for the headings of a page: lower case, punctuation other than `-` and
/// `_` dropped, spaces as `-`; a repeated heading gets `-1`, `-2`, ...
fn heading_slugs(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut slugs = BTreeSet::new();
    let heading = Regex::new(r"(?m)^#{1,6}\s+(.*?)\s*#*\s*$").unwrap();
    for line in outside_fences(markdown).lines().filter(|l| l.starts_with('#')) {
        let Some(title) = heading.captures(line) else { continue };
        let slug: String = title[1]
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        slugs.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
        *n += 1;
    }
    slugs
}
