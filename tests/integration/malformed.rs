//! Every file under `tests/malformed/` through a real `patron run`: each either fails the
//! run with a clear error naming the file and line, or loads with exactly the expected
//! quarantine entries (line, column, reason); never a panic, never a silent loss
//! (rows read = loaded + quarantined, and the raw and quarantine tables hold them).

use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;

use crate::support::*;

/// What a malformed file must do.
enum Expect {
    /// The run succeeds with this many rows loaded and exactly these quarantine entries:
    /// (line, column, text the reason contains).
    Loads {
        loaded: u64,
        rejected: &'static [(u64, &'static str, &'static str)],
    },
    /// The run fails (exit 1) with an error naming the file, `line N` and this text.
    Fails { line: u64, needle: &'static str },
}

struct Case {
    /// File under tests/malformed/.
    file: &'static str,
    /// Schema under tests/malformed/schemas/.
    schema: &'static str,
    /// Extra `[[sources]]` settings.
    settings: &'static str,
    expect: Expect,
    /// Queries on the published tables and the text of their single value.
    checks: &'static [(&'static str, &'static str)],
    /// JSON pointers into the source's manifest entry and their expected JSON.
    manifest: &'static [(&'static str, &'static str)],
}

const ORDERS: &str = "orders.schema.json";

const CASES: &[Case] = &[
    Case {
        file: "bom.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 2,
            rejected: &[],
        },
        checks: &[("SELECT min(id) FROM raw_orders", "a1")],
        manifest: &[("/files/0/missing_columns", "[]")],
    },
    Case {
        file: "windows1252_undeclared.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 1,
            rejected: &[(2, "note", "not valid UTF-8"), (4, "note", "not valid UTF-8")],
        },
        checks: &[("SELECT raw_value FROM quarantine_orders WHERE line = 2", "caf\u{fffd}")],
        manifest: &[],
    },
    Case {
        file: "windows1252_declared.csv",
        schema: ORDERS,
        settings: "encoding = \"windows-1252\"",
        expect: Expect::Loads {
            loaded: 3,
            rejected: &[],
        },
        checks: &[
            ("SELECT note FROM raw_orders WHERE id = 'w1'", "café"),
            ("SELECT note FROM raw_orders WHERE id = 'w3'", "naïve € price"),
        ],
        manifest: &[],
    },
    Case {
        file: "crlf.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 2,
            rejected: &[(3, "qty", "not an integer")],
        },
        checks: &[("SELECT note FROM raw_orders WHERE id = 'c3'", "three")],
        manifest: &[],
    },
    Case {
        file: "quoted_newlines.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 2,
            rejected: &[(7, "qty", "-1 is below the minimum 1")],
        },
        checks: &[
            (
                "SELECT note FROM raw_orders WHERE id = 'q2'",
                "three\nwhole\nlines, with a comma",
            ),
            (
                "SELECT CAST(_source_line AS VARCHAR) FROM raw_orders WHERE id = 'q2'",
                "4",
            ),
        ],
        manifest: &[],
    },
    Case {
        file: "ragged_rows.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 2,
            rejected: &[
                (3, "", "expected 5 fields, found 3"),
                (4, "", "expected 5 fields, found 7"),
            ],
        },
        checks: &[("SELECT raw_record FROM quarantine_orders WHERE line = 3", "r2,2,2.50")],
        manifest: &[],
    },
    Case {
        file: "unterminated_quote.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Fails {
            line: 3,
            needle: "never closed",
        },
        checks: &[],
        manifest: &[],
    },
    Case {
        file: "wrong_types.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 1,
            rejected: &[
                (3, "qty", "not an integer"),
                (4, "price", "not a number"),
                (5, "ts", "not a datetime"),
                (6, "ts", "not a datetime"),
            ],
        },
        checks: &[("SELECT raw_value FROM quarantine_orders WHERE line = 4", "cheap")],
        manifest: &[],
    },
    Case {
        file: "out_of_range.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 1,
            rejected: &[
                (3, "qty", "0 is below the minimum 1"),
                (4, "qty", "1001 is above the maximum 1000"),
                (5, "price", "-0.01 is below the minimum 0"),
                (6, "qty", "not an integer"),
            ],
        },
        checks: &[],
        manifest: &[],
    },
    Case {
        file: "mixed_timestamps.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 5,
            rejected: &[(7, "ts", "not a datetime"), (8, "ts", "not a datetime")],
        },
        checks: &[
            // Z, +01:00, naive (UTC) and -05:00 forms of one instant are one instant.
            (
                "SELECT CAST(COUNT(DISTINCT ts) AS VARCHAR) FROM raw_orders WHERE id IN ('m1', 'm2', 'm3', 'm4')",
                "1",
            ),
            (
                "SELECT CAST(ts AS VARCHAR) FROM raw_orders WHERE id = 'm5'",
                "2024-03-05T00:00:00",
            ),
        ],
        manifest: &[],
    },
    Case {
        file: "mixed_timestamps_declared.csv",
        schema: "zoned.schema.json",
        settings: "",
        expect: Expect::Loads {
            loaded: 4,
            rejected: &[
                (6, "ts", "does not exist in Europe/Berlin"),
                (7, "ts", "matches none of the datetime formats `%d.%m.%Y %H:%M`, `any`"),
            ],
        },
        checks: &[
            // Berlin local 15:22 in March is 14:22 UTC, in either declared form.
            (
                "SELECT CAST(COUNT(DISTINCT ts) AS VARCHAR) FROM raw_orders WHERE id IN ('z1', 'z2', 'z3')",
                "1",
            ),
            (
                "SELECT CAST(ts AS VARCHAR) FROM raw_orders WHERE id = 'z3'",
                "2024-03-05T14:22:00",
            ),
            (
                "SELECT CAST(ts AS VARCHAR) FROM raw_orders WHERE id = 'z4'",
                "2024-07-01T10:00:00",
            ),
        ],
        manifest: &[],
    },
    Case {
        file: "thousands_currency.csv",
        schema: "money.schema.json",
        settings: "",
        expect: Expect::Loads {
            loaded: 3,
            rejected: &[(5, "qty", "not an integer"), (6, "price", "not a number")],
        },
        checks: &[
            ("SELECT CAST(SUM(qty) AS VARCHAR) FROM raw_orders", "1205"),
            ("SELECT CAST(SUM(price) AS VARCHAR) FROM raw_orders", "1248.5"),
            ("SELECT CAST(SUM(price_de) AS VARCHAR) FROM raw_orders", "1223.49"),
        ],
        manifest: &[],
    },
    Case {
        file: "empty_strings.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 2,
            rejected: &[
                (3, "qty", "required value is missing"),
                (4, "id", "required value is missing"),
            ],
        },
        checks: &[(
            "SELECT CAST(COUNT(*) AS VARCHAR) FROM raw_orders WHERE note IS NULL AND price IS NULL",
            "2",
        )],
        manifest: &[],
    },
    Case {
        file: "duplicate_keys.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 5,
            rejected: &[],
        },
        checks: &[
            (
                "SELECT string_agg(CAST(line AS VARCHAR), ',' ORDER BY line) FROM duplicates WHERE key = 'id=d1' AND kept_line = 5 AND NOT identical",
                "2,4",
            ),
            // ` d2 ` is `d2` with spaces around: the same key, as staging's TRIM sees it.
            (
                "SELECT key || ' ' || CAST(line AS VARCHAR) FROM duplicates WHERE kept_line = 6 AND NOT identical",
                "id=d2 3",
            ),
            ("SELECT CAST(COUNT(*) AS VARCHAR) FROM duplicates", "3"),
        ],
        manifest: &[("/duplicate_rows", "3"), ("/duplicate_rows_changed", "3")],
    },
    Case {
        file: "ndjson_not_json.ndjson",
        schema: ORDERS,
        settings: "format = \"ndjson\"",
        expect: Expect::Loads {
            loaded: 2,
            rejected: &[
                (2, "", "not valid JSON"),
                (3, "", "not valid JSON"),
                (4, "", "JSON but not an object"),
            ],
        },
        checks: &[("SELECT CAST(qty AS VARCHAR) FROM raw_orders WHERE id = 'j6'", "3")],
        manifest: &[("/files/0/extra_columns", "[\"extra\"]")],
    },
    Case {
        file: "truncated.csv.gz",
        schema: ORDERS,
        settings: "",
        // 890 whole lines decompress before the data ends.
        expect: Expect::Fails {
            line: 891,
            needle: "gzip data is corrupt (truncated)",
        },
        checks: &[],
        manifest: &[],
    },
    Case {
        file: "empty.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 0,
            rejected: &[],
        },
        checks: &[],
        manifest: &[("/files/0/rows_read", "0")],
    },
    Case {
        file: "header_only.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 0,
            rejected: &[],
        },
        checks: &[],
        manifest: &[("/files/0/missing_columns", "[]")],
    },
    Case {
        file: "header_missing_column.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 0,
            rejected: &[
                (2, "qty", "required value is missing"),
                (3, "qty", "required value is missing"),
            ],
        },
        checks: &[],
        manifest: &[("/files/0/missing_columns", "[\"qty\",\"ts\"]")],
    },
    Case {
        file: "header_extra_reordered.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Loads {
            loaded: 2,
            rejected: &[],
        },
        checks: &[("SELECT note FROM raw_orders WHERE id = 'x1'", "reordered")],
        manifest: &[
            ("/files/0/extra_columns", "[\"extra_col\"]"),
            ("/files/0/missing_columns", "[]"),
        ],
    },
    Case {
        file: "header_duplicate_column.csv",
        schema: ORDERS,
        settings: "",
        expect: Expect::Fails {
            line: 1,
            needle: "column `id` appears twice in the header",
        },
        checks: &[],
        manifest: &[],
    },
];

fn malformed_dir() -> PathBuf {
    repo().join("tests/malformed")
}

/// A pipeline with one source reading `case.file`, no SQL stages and a fixed as-of day.
fn pipeline_for(dir: &Path, case: &Case) -> PathBuf {
    std::fs::create_dir_all(dir.join("sql")).unwrap();
    let text = format!(
        "name = \"malformed\"\nroot = \".\"\n\n[run]\nas_of = \"2026-01-01\"\nerror_budget = 1.0\n\n\
         [[sources]]\nname = \"orders\"\nlocation = {location:?}\nschema = {schema:?}\n{settings}\n\n\
         [transform]\nsql_dir = \"sql\"\n",
        location = malformed_dir().join(case.file).display().to_string(),
        schema = malformed_dir().join("schemas").join(case.schema).display().to_string(),
        settings = case.settings,
    );
    let p = dir.join("pipeline.toml");
    std::fs::write(&p, text).unwrap();
    p
}

async fn single_text(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap();
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .unwrap_or_else(|| panic!("{sql}: no rows"));
    let col = cast(batch.column(0), &DataType::Utf8).unwrap();
    let col = col.as_any().downcast_ref::<StringArray>().unwrap();
    if col.is_null(0) {
        "NULL".into()
    } else {
        col.value(0).to_string()
    }
}

#[tokio::test]
async fn every_malformed_file_gives_a_clear_error_or_exact_quarantine_rows() {
    let listed: std::collections::BTreeSet<String> = std::fs::read_dir(malformed_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file() && e.file_name() != "README.md")
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let covered: std::collections::BTreeSet<String> = CASES.iter().map(|c| c.file.to_string()).collect();
    assert_eq!(
        listed, covered,
        "every file in tests/malformed has a case and every case a file"
    );

    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = pipeline_for(dir.path(), case);
        let out = run_pipeline(dir.path(), &pipeline, &[]);
        let ctx_text = format!("{}: {}", case.file, text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{ctx_text}");
        let wh = dir.path().join("wh");
        match &case.expect {
            Expect::Fails { line, needle } => {
                assert_eq!(out.status.code(), Some(1), "{ctx_text}");
                assert!(stderr.contains(case.file), "the error names the file: {ctx_text}");
                assert!(
                    stderr.contains(&format!("line {line}")),
                    "the error names the line: {ctx_text}"
                );
                assert!(stderr.contains(needle), "{ctx_text}");
                assert!(!wh.join("raw/orders").exists(), "nothing published: {ctx_text}");
            }
            Expect::Loads { loaded, rejected } => {
                assert_eq!(out.status.code(), Some(0), "{ctx_text}");
                let manifest = latest_manifest(&wh);
                let m = &manifest["extract"][0];
                let read = m["rows_read"].as_u64().unwrap();
                let quarantined = m["rows_quarantined"].as_u64().unwrap();
                assert_eq!(m["rows_loaded"].as_u64().unwrap(), *loaded, "{ctx_text}");
                assert_eq!(read, loaded + quarantined, "no silent loss: {ctx_text}");
                let distinct_lines: std::collections::BTreeSet<u64> = rejected.iter().map(|r| r.0).collect();
                assert_eq!(quarantined, distinct_lines.len() as u64, "{ctx_text}");
                let ctx = warehouse_session(&wh).await;
                let raw = scalar(&ctx, "SELECT COUNT(*) FROM raw_orders").await;
                assert_eq!(raw as u64, *loaded, "{ctx_text}");
                let q = ctx
                    .sql("SELECT line, column_name, reason, file FROM quarantine_orders ORDER BY line, column_name")
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                let mut entries = Vec::new();
                for b in &q {
                    let line = cast(b.column(0), &DataType::UInt64).unwrap();
                    let line = line
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                        .unwrap();
                    let texts: Vec<_> = (1..4).map(|i| cast(b.column(i), &DataType::Utf8).unwrap()).collect();
                    let s = |c: usize, r: usize| {
                        texts[c]
                            .as_any()
                            .downcast_ref::<StringArray>()
                            .unwrap()
                            .value(r)
                            .to_string()
                    };
                    for r in 0..b.num_rows() {
                        assert!(s(2, r).ends_with(case.file), "quarantine names the file: {ctx_text}");
                        entries.push((line.value(r), s(0, r), s(1, r)));
                    }
                }
                assert_eq!(entries.len(), rejected.len(), "{entries:?}\n{ctx_text}");
                for ((line, column, reason), (want_line, want_column, want_reason)) in
                    entries.iter().zip(rejected.iter())
                {
                    assert_eq!(
                        (*line, column.as_str()),
                        (*want_line, *want_column),
                        "{entries:?}\n{ctx_text}"
                    );
                    assert!(
                        reason.contains(want_reason),
                        "{reason:?} vs {want_reason:?}\n{ctx_text}"
                    );
                }
                for (sql, want) in case.checks {
                    assert_eq!(single_text(&ctx, sql).await, *want, "{sql}\n{ctx_text}");
                }
                for (pointer, want) in case.manifest {
                    let got = m.pointer(pointer).unwrap_or_else(|| panic!("{pointer} in {m}"));
                    let want: serde_json::Value = serde_json::from_str(want).unwrap();
                    assert_eq!(got, &want, "{pointer}\n{ctx_text}");
                }
            }
        }
    }
}
