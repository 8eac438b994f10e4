//! Golden files for the bundled stages: SQL in, rows out. The default pipeline runs on the
//! bundled fixtures; for each table the row count and the first rows (by its key) are
//! compared with `tests/golden/<table>.csv`. A stage change that moves any of these values
//! fails here with a diff; review it, then regenerate with
//! `UPDATE_GOLDEN=1 cargo test --test integration golden`.

use datafusion::arrow::array::{Array, Float64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::support::*;

/// Rows kept per table; the row count covers the rest.
const GOLDEN_ROWS: usize = 25;

/// Table, key to order by, columns (all but volatile ones such as fit times).
const TABLES: [(&str, &str, &str); 9] = [
    ("stg_sales", "order_id, line_no", "*"),
    ("stg_service", "ticket_id", "*"),
    ("stg_marketing", "event_id", "*"),
    ("fct_customer", "customer_id", "*"),
    ("customer_model_input", "customer_id", "*"),
    (
        "model_params",
        "model, parameter",
        "model_version, model, parameter, value, log_likelihood, iterations, converged, customers",
    ),
    ("customer_values", "customer_id", "*"),
    ("customer_ranks", "customer_id", "*"),
    ("customer_scores", "customer_id", "*"),
];

/// The table as CSV text: a row-count line, a header, then the first rows; doubles with 6
/// decimals so the files read well and do not churn on the last bit.
async fn snapshot(ctx: &datafusion::prelude::SessionContext, table: &str, key: &str, columns: &str) -> String {
    let rows = scalar(ctx, &format!("SELECT COUNT(*) FROM {table}")).await;
    let sql = format!("SELECT {columns} FROM {table} ORDER BY {key} LIMIT {GOLDEN_ROWS}");
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let mut out = format!("# {table}: {rows} rows; first {GOLDEN_ROWS} by {key}\n");
    let Some(first) = batches.first() else { return out };
    let schema = first.schema();
    out.push_str(
        &schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    out.push('\n');
    let options = FormatOptions::default().with_null("");
    for batch in &batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(col, f)| {
                    if col.data_type() == &DataType::Float64 && col.is_valid(row) {
                        let v = col.as_any().downcast_ref::<Float64Array>().unwrap().value(row);
                        format!("{v:.6}")
                    } else {
                        let s = f.value(row).to_string();
                        if s.contains([',', '"', '\n']) {
                            format!("\"{}\"", s.replace('"', "\"\""))
                        } else {
                            s
                        }
                    }
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
    }
    out
}

#[tokio::test]
async fn bundled_stages_match_their_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    run_default(&wh);
    let ctx = warehouse_session(&wh).await;
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    // Source file paths depend on where the repository is checked out.
    let root = format!("{}/", repo().display());
    for (table, key, columns) in TABLES {
        let got = snapshot(&ctx, table, key, columns).await.replace(&root, "");
        let path = repo().join("tests/golden").join(format!("{table}.csv"));
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; create it with UPDATE_GOLDEN=1", path.display()));
        if got != want {
            let diff: Vec<String> = want
                .lines()
                .zip(got.lines())
                .enumerate()
                .filter(|(_, (w, g))| w != g)
                .take(3)
                .map(|(i, (w, g))| format!("  line {}:\n    want {w}\n    got  {g}", i + 1))
                .collect();
            mismatches.push(format!("{} differs:\n{}", path.display(), diff.join("\n")));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
