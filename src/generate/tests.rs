//! Tests of the generator: determinism, schema headers, exact mess counts (checked by an
//! independent mini-validator), clean = messy after staging, and model statistics.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use chrono::{DateTime, NaiveDateTime, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use super::*;

fn opts(dir: &Path, customers: u64, seed: u64, format: OutputFormat, messy: bool) -> GenerateOptions {
    GenerateOptions {
        customers,
        seed,
        out_dir: dir.to_path_buf(),
        format,
        messy,
        ..GenerateOptions::default()
    }
}

/// Every file under `dir`, relative, sorted.
fn list_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).expect("prefix").to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------- schema mini-validator

/// A field of a Frictionless schema, as the test validator understands it.
struct SchemaField {
    name: String,
    ftype: String,
    required: bool,
    enumeration: Option<Vec<String>>,
    minimum: Option<f64>,
    maximum: Option<f64>,
}

fn load_schema(source: &str) -> Vec<SchemaField> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{source}.schema.json"));
    let v: Value = serde_json::from_slice(&read(&path)).expect("schema json");
    v["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| {
            let c = &f["constraints"];
            SchemaField {
                name: f["name"].as_str().expect("name").to_string(),
                ftype: f["type"].as_str().expect("type").to_string(),
                required: c["required"].as_bool().unwrap_or(false),
                enumeration: c["enum"]
                    .as_array()
                    .map(|a| a.iter().map(|x| x.as_str().expect("enum str").to_string()).collect()),
                minimum: c["minimum"].as_f64(),
                maximum: c["maximum"].as_f64(),
            }
        })
        .collect()
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|n| n.and_utc())
}

/// Validates one row (None = null/absent); returns the canonical row when valid.
fn check_row(schema: &[SchemaField], row: &[Option<String>]) -> Option<Vec<String>> {
    if row.len() != schema.len() {
        return None;
    }
    let mut out = Vec::with_capacity(row.len());
    for (f, v) in schema.iter().zip(row) {
        let Some(v) = v.as_deref() else {
            if f.required {
                return None;
            }
            out.push(String::new());
            continue;
        };
        let canonical = match f.ftype.as_str() {
            "integer" => {
                let x: i64 = v.parse().ok()?;
                if f.minimum.is_some_and(|m| (x as f64) < m) || f.maximum.is_some_and(|m| (x as f64) > m) {
                    return None;
                }
                x.to_string()
            }
            "number" => {
                let x: f64 = v.parse().ok()?;
                if !x.is_finite() || f.minimum.is_some_and(|m| x < m) || f.maximum.is_some_and(|m| x > m) {
                    return None;
                }
                format!("{x:.2}")
            }
            "datetime" => parse_ts(v)?.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            _ if f.name == "customer_id" || f.name == "referred_by" => v.trim().to_ascii_uppercase(),
            _ => v.to_string(),
        };
        if let Some(e) = &f.enumeration
            && !e.contains(&canonical)
        {
            return None;
        }
        out.push(canonical);
    }
    Some(out)
}

/// One data row as read back: raw identity (for duplicate detection) and cells.
struct ReadRow {
    raw: String,
    cells: Option<Vec<Option<String>>>,
}

fn read_rows(path: &Path, schema: &[SchemaField]) -> Vec<ReadRow> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    match ext {
        "csv" => {
            let text = String::from_utf8(read(path)).expect("utf8");
            let mut lines = text.lines();
            let header = lines.next().expect("header");
            let names: Vec<&str> = schema.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(header, names.join(","), "{}", path.display());
            assert!(!text.contains('"'), "no quoting expected in {}", path.display());
            lines
                .map(|l| ReadRow {
                    raw: l.to_string(),
                    cells: Some(l.split(',').map(|c| (!c.is_empty()).then(|| c.to_string())).collect()),
                })
                .collect()
        }
        "ndjson" => {
            let text = String::from_utf8(read(path)).expect("utf8");
            text.lines()
                .map(|l| {
                    let cells = serde_json::from_str::<Value>(l).ok().and_then(|v| {
                        let obj = v.as_object()?.clone();
                        Some(
                            schema
                                .iter()
                                .map(|f| match obj.get(&f.name) {
                                    None | Some(Value::Null) => None,
                                    Some(Value::String(s)) if s.is_empty() => None,
                                    Some(Value::String(s)) => Some(s.clone()),
                                    Some(other) => Some(other.to_string()),
                                })
                                .collect(),
                        )
                    });
                    ReadRow {
                        raw: l.to_string(),
                        cells,
                    }
                })
                .collect()
        }
        "parquet" => {
            let file = File::open(path).expect("open parquet");
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet reader");
            let names: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
            let expected: Vec<String> = schema.iter().map(|f| f.name.clone()).collect();
            assert_eq!(names, expected, "{}", path.display());
            let mut out = Vec::new();
            for batch in builder.build().expect("build reader") {
                let batch = batch.expect("batch");
                for r in 0..batch.num_rows() {
                    let cells: Vec<Option<String>> = (0..batch.num_columns())
                        .map(|c| {
                            let col = batch.column(c).as_string::<i32>();
                            (!col.is_null(r)).then(|| col.value(r).to_string())
                        })
                        .collect();
                    out.push(ReadRow {
                        raw: format!("{cells:?}"),
                        cells: Some(cells),
                    });
                }
            }
            out
        }
        other => panic!("unexpected extension {other}"),
    }
}

/// What the test validator found in one source.
#[derive(Default, Debug)]
struct Found {
    rows: u64,
    bad: u64,
    dups: u64,
    id_variants: u64,
    naive_ts: u64,
    offset_ts: u64,
    /// Canonical distinct valid rows per file, in file order.
    canonical: BTreeMap<String, Vec<Vec<String>>>,
}

fn validate_source(dir: &Path, report: &GenerateReport, source: &str) -> Found {
    let schema = load_schema(source);
    let prefix = format!("{source}/");
    let id_col = schema
        .iter()
        .position(|f| f.name == "customer_id")
        .expect("customer_id");
    let ts_col = schema.iter().position(|f| f.ftype == "datetime").expect("timestamp");
    let mut found = Found::default();
    for rel in report.files.iter().filter(|f| f.starts_with(&prefix)) {
        let mut seen = HashSet::new();
        let mut rows = Vec::new();
        for row in read_rows(&dir.join(rel), &schema) {
            found.rows += 1;
            let canonical = row.cells.as_deref().and_then(|c| check_row(&schema, c));
            let Some(canonical) = canonical else {
                found.bad += 1;
                assert!(seen.insert(row.raw.clone()), "bad row duplicated: {}", row.raw);
                continue;
            };
            if !seen.insert(row.raw.clone()) {
                found.dups += 1;
                continue;
            }
            let cells = row.cells.as_ref().expect("cells");
            let id = cells[id_col].as_deref().unwrap_or_default();
            if id != id.trim().to_ascii_uppercase() {
                found.id_variants += 1;
            }
            let ts = cells[ts_col].as_deref().unwrap_or_default();
            if ts.contains(' ') {
                found.naive_ts += 1;
            } else if !ts.ends_with('Z') {
                found.offset_ts += 1;
            }
            rows.push(canonical);
        }
        found.canonical.insert(rel.clone(), rows);
    }
    found
}

fn source_report<'a>(r: &'a GenerateReport, source: &str) -> &'a SourceReport {
    match source {
        "sales" => &r.sales,
        "service" => &r.service,
        _ => &r.marketing,
    }
}

/// Canonical rows per source, with the file's extension dropped from the key.
fn by_stem(found: &Found) -> BTreeMap<String, Vec<Vec<String>>> {
    found
        .canonical
        .iter()
        .map(|(k, v)| (k.rsplit_once('.').map_or(k.clone(), |x| x.0.to_string()), v.clone()))
        .collect()
}

// ---------------------------------------------------------------- tests

#[test]
fn generate_same_seed_same_bytes_other_seed_differs() {
    for format in [OutputFormat::Csv, OutputFormat::Ndjson, OutputFormat::Parquet] {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let c = tempfile::tempdir().expect("tempdir");
        let ra = generate(&opts(a.path(), 300, 7, format, true)).expect("generate a");
        let rb = generate(&opts(b.path(), 300, 7, format, true)).expect("generate b");
        let rc = generate(&opts(c.path(), 300, 8, format, true)).expect("generate c");
        assert_eq!(ra, rb);
        let files = list_files(a.path());
        assert_eq!(files, list_files(b.path()));
        assert!(files.iter().any(|f| f.ends_with("truth.json")));
        assert!(files.iter().any(|f| f.ends_with(super::TRUTH_CUSTOMERS_FILE)));
        assert_eq!(files.len(), ra.files.len() + 2, "{files:?}");
        for f in &files {
            assert_eq!(
                read(&a.path().join(f)),
                read(&b.path().join(f)),
                "{format}: {}",
                f.display()
            );
        }
        let differs = files.iter().any(|f| {
            let other = c.path().join(f);
            !other.exists() || read(&a.path().join(f)) != read(&other)
        });
        assert!(differs, "{format}: seed 8 gave the same files as seed 7");
        assert_ne!(ra, rc);
    }
}

#[test]
fn generate_layout_and_headers_follow_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = generate(&opts(dir.path(), 400, 1, OutputFormat::Csv, true)).expect("generate");
    assert_eq!(
        report.files,
        vec![
            "marketing/events.ndjson",
            "sales/sales_2023.csv",
            "sales/sales_2024.csv",
            "sales/sales_2025.csv",
            "service/tickets.csv",
        ]
    );
    for (rel, source) in [
        ("sales/sales_2023.csv", "sales"),
        ("sales/sales_2025.csv", "sales"),
        ("service/tickets.csv", "service"),
    ] {
        let names: Vec<String> = load_schema(source).into_iter().map(|f| f.name).collect();
        let text = String::from_utf8(read(&dir.path().join(rel))).expect("utf8");
        assert_eq!(text.lines().next(), Some(names.join(",").as_str()), "{rel}");
    }
    // NDJSON: keys in schema order on a regular line.
    let names: Vec<String> = load_schema("marketing").into_iter().map(|f| f.name).collect();
    let text = String::from_utf8(read(&dir.path().join("marketing/events.ndjson"))).expect("utf8");
    let first = text.lines().next().expect("an event");
    let positions: Vec<usize> = names
        .iter()
        .map(|n| {
            first
                .find(&format!("\"{n}\":"))
                .unwrap_or_else(|| panic!("{n} missing in {first}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{first}");
    // Sales files hold the orders of their calendar year (UTC).
    let sales = validate_source(dir.path(), &report, "sales");
    for (rel, rows) in &sales.canonical {
        let year = &rel["sales/sales_".len().."sales/sales_".len() + 4];
        assert!(rows.iter().all(|r| r[3].starts_with(year)), "{rel}");
    }
    // truth.json carries the options and counts, not the output path.
    let truth: Value = serde_json::from_slice(&read(&dir.path().join("truth.json"))).expect("truth");
    assert_eq!(truth["options"]["seed"], 1);
    assert_eq!(truth["options"]["format"], "csv");
    assert_eq!(truth["true_parameters"]["r"], 0.243);
    assert_eq!(truth["report"]["sales"]["bad_rows"], report.sales.bad_rows);
    assert!(
        !String::from_utf8(read(&dir.path().join("truth.json")))
            .expect("utf8")
            .contains(&*dir.path().to_string_lossy())
    );
}

#[test]
fn generate_counts_match_files_and_clean_equals_messy_after_staging() {
    let mut csv_canonical = None;
    for format in [OutputFormat::Csv, OutputFormat::Ndjson, OutputFormat::Parquet] {
        let m = tempfile::tempdir().expect("tempdir");
        let c = tempfile::tempdir().expect("tempdir");
        let messy = generate(&opts(m.path(), 1500, 42, format, true)).expect("messy");
        let clean = generate(&opts(c.path(), 1500, 42, format, false)).expect("clean");
        assert_eq!(messy.customers, 1500);
        assert_eq!(messy.buyers, clean.buyers);
        assert_eq!(messy.orders, clean.orders);
        assert_eq!(messy.buyers + messy.prospects + messy.service_only, messy.customers);
        for source in ["sales", "service", "marketing"] {
            let (mr, cr) = (source_report(&messy, source), source_report(&clean, source));
            let fm = validate_source(m.path(), &messy, source);
            let fc = validate_source(c.path(), &clean, source);
            let ctx = format!("{format} {source}");
            // Report = what is in the files, exactly.
            assert_eq!(fm.rows, mr.rows, "{ctx} rows");
            assert_eq!(mr.rows, mr.valid_rows + mr.duplicate_rows + mr.bad_rows, "{ctx}");
            assert_eq!(fm.bad, mr.bad_rows, "{ctx} bad");
            assert_eq!(fm.dups, mr.duplicate_rows, "{ctx} dups");
            assert_eq!(fm.id_variants, mr.id_variants, "{ctx} ids");
            assert_eq!(fm.naive_ts, mr.naive_timestamps, "{ctx} naive ts");
            assert_eq!(fm.offset_ts, mr.offset_timestamps, "{ctx} offset ts");
            assert_eq!(mr.bad_by_kind.values().sum::<u64>(), mr.bad_rows, "{ctx}");
            // The mess is there, at small rates.
            assert!(
                mr.bad_rows > 0 && mr.duplicate_rows > 0 && mr.id_variants > 0,
                "{ctx}: {mr:?}"
            );
            assert!(mr.naive_timestamps > 0 && mr.offset_timestamps > 0, "{ctx}: {mr:?}");
            assert!((mr.bad_rows + mr.duplicate_rows) * 50 < mr.rows, "{ctx}: {mr:?}");
            // The clean run has none of it.
            assert_eq!(
                (fc.bad, fc.dups, fc.id_variants, fc.naive_ts, fc.offset_ts),
                (0, 0, 0, 0, 0),
                "{ctx}"
            );
            assert_eq!(fc.rows, cr.rows, "{ctx}");
            assert_eq!(cr.valid_rows, mr.valid_rows, "{ctx}");
            // Staging the messy run (quarantine, dedup, normalise) gives the clean run.
            assert_eq!(fm.canonical, fc.canonical, "{ctx}: canonical rows differ");
            if source != "marketing" {
                match format {
                    OutputFormat::Csv => {
                        let mut map = csv_canonical.take().unwrap_or_else(BTreeMap::new);
                        map.extend(by_stem(&fc));
                        csv_canonical = Some(map);
                    }
                    OutputFormat::Parquet => {
                        let csv = csv_canonical.as_ref().expect("csv ran first");
                        for (stem, rows) in by_stem(&fc) {
                            assert_eq!(Some(&rows), csv.get(&stem), "{ctx}: Parquet differs from CSV");
                        }
                    }
                    OutputFormat::Ndjson => {}
                }
            }
        }
        // Ids per source: buyers are exactly the sales customers, service-only customers have
        // no sales and no marketing, prospects have marketing only.
        let ids = |found: &Found, col: usize| -> BTreeSet<String> {
            found.canonical.values().flatten().map(|r| r[col].clone()).collect()
        };
        let sales = ids(&validate_source(c.path(), &clean, "sales"), 2);
        let service = ids(&validate_source(c.path(), &clean, "service"), 1);
        let marketing = ids(&validate_source(c.path(), &clean, "marketing"), 1);
        assert_eq!(sales.len() as u64, clean.buyers);
        let service_only = service.difference(&sales).filter(|i| !marketing.contains(*i)).count();
        assert_eq!(service_only as u64, clean.service_only);
        assert_eq!(marketing.difference(&sales).count() as u64, clean.prospects);
        let all: BTreeSet<_> = sales.union(&service).chain(marketing.iter()).cloned().collect();
        assert_eq!(all.len() as u64, clean.customers);
    }
}

#[test]
fn generate_mess_kinds_look_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = generate(&opts(dir.path(), 3000, 5, OutputFormat::Csv, true)).expect("generate");
    for kind in ["bad_timestamp", "quantity_not_integer", "ragged_row", "negative_price"] {
        assert!(
            report.sales.bad_by_kind.contains_key(kind),
            "sales {kind}: {:?}",
            report.sales
        );
    }
    for kind in ["bad_timestamp", "csat_out_of_range", "unknown_category", "ragged_row"] {
        assert!(
            report.service.bad_by_kind.contains_key(kind),
            "service {kind}: {:?}",
            report.service
        );
    }
    for kind in [
        "bad_timestamp",
        "not_json",
        "unknown_event_type",
        "missing_required_field",
    ] {
        assert!(report.marketing.bad_by_kind.contains_key(kind), "marketing {kind}");
    }
    let events = String::from_utf8(read(&dir.path().join("marketing/events.ndjson"))).expect("utf8");
    assert!(
        events
            .lines()
            .any(|l| l.starts_with("{\"event_id\":\"E") && !l.ends_with('}'))
    );
    let sales: String = report
        .files
        .iter()
        .filter(|f| f.starts_with("sales/"))
        .map(|f| String::from_utf8(read(&dir.path().join(f))).expect("utf8"))
        .collect();
    for needle in [
        ",not-a-date,",
        ",three,",
        ",-2.00,",
        ",c0",
        ", C0",
        "0 ,",
        ",cancelled,",
        ",returned,",
    ] {
        assert!(sales.contains(needle), "sales lacks {needle:?}");
    }
    assert!(sales.lines().any(|l| l.contains("+01:00") || l.contains("-05:00")));
    assert!(
        sales
            .lines()
            .any(|l| l.split(',').nth(3).is_some_and(|t| t.contains(' ')))
    );
    // Lines of one order stay together and are numbered 1..k (+1 for an extra bad line);
    // a unit returned later is a line 101.. of its order, written when it comes back.
    let mut last: Option<(String, i64)> = None;
    let mut closed = HashSet::new();
    for l in sales.lines().filter(|l| l.starts_with('O')) {
        let f: Vec<&str> = l.split(',').collect();
        let Ok(n) = f[1].parse::<i64>() else { continue };
        if n > 100 {
            assert!(f[6].starts_with('-'), "a line 101.. returns units: {l}");
            continue;
        }
        match &last {
            Some((o, prev)) if o == f[0] => assert!(n == *prev || n == prev + 1, "{l}"),
            _ => {
                assert_eq!(n, 1, "{l}");
                if let Some((o, _)) = &last {
                    assert!(closed.insert(o.clone()), "order {o} split");
                }
            }
        }
        last = Some((f[0].to_string(), n));
    }
}

/// Expected orders per buyer under the modified BG/NBD with uniform acquisition over the
/// window: 1 + mean over T of E[X(T)], E[X(T) | p] = (1 - p) (1 - (alpha / (alpha + p T))^r) / p
/// (gone after the first purchase with probability p, else BG/NBD's repeat process).
fn expected_orders_per_buyer(t: &TrueParameters, weeks: f64) -> f64 {
    let (np, nt) = (4000, 200);
    let mut norm = 0.0;
    let mut grid = Vec::with_capacity(np);
    for k in 0..np {
        let v = (k as f64 + 0.5) / np as f64;
        let p = v.powf(1.0 / t.a);
        let w = (1.0 - p).powf(t.b - 1.0);
        norm += w;
        grid.push((p, w));
    }
    let mut total = 0.0;
    for j in 0..nt {
        let big_t = (j as f64 + 0.5) / nt as f64 * weeks;
        let ex: f64 = grid
            .iter()
            .map(|&(p, w)| w * (1.0 - p) * (1.0 - (t.alpha / (t.alpha + p * big_t)).powf(t.r)) / p)
            .sum::<f64>()
            / norm;
        total += ex;
    }
    1.0 + total / nt as f64
}

/// One order of the sales files, with its returns folded in.
struct Order {
    customer: String,
    /// Value of the sold lines (quantity > 0, not cancelled), after discount.
    gross: f64,
    /// Value taken back: negative lines, and whole lines with status returned.
    returned: f64,
    /// Sold something and was not taken back in full.
    is_purchase: bool,
}

/// The orders of the validated sales rows, keyed by the order a line counts towards
/// (`refund_of`, else `order_id`): the rule of docs/returns.md written out again here, so
/// the generator's truth is checked against an implementation other than the SQL.
fn purchases(found: &Found) -> BTreeMap<String, Order> {
    let mut orders: BTreeMap<String, Order> = BTreeMap::new();
    for row in found.canonical.values().flatten() {
        let num = |i: usize| {
            if row[i].is_empty() {
                0.0
            } else {
                row[i].parse::<f64>().expect("number")
            }
        };
        let (qty, price, discount) = (num(6), num(7), num(8));
        let key = if row[13].is_empty() {
            row[0].clone()
        } else {
            row[13].clone()
        };
        let o = orders.entry(key).or_insert_with(|| Order {
            customer: row[2].clone(),
            gross: 0.0,
            returned: 0.0,
            is_purchase: false,
        });
        let value = qty * price - discount;
        match (row[12].as_str(), qty > 0.0) {
            ("cancelled", _) => {}
            (_, false) => o.returned -= value,
            ("returned" | "refunded", true) => {
                o.gross += value;
                o.returned += value;
            }
            (_, true) => o.gross += value,
        }
        if qty > 0.0 && row[12] != "cancelled" {
            o.is_purchase = true;
        }
    }
    for o in orders.values_mut() {
        o.is_purchase &= o.returned == 0.0 || o.returned < o.gross * (1.0 - 1e-9);
    }
    orders
}

#[test]
fn generate_statistics_match_true_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(dir.path(), 5000, 2024, OutputFormat::Csv, false);
    let report = generate(&o).expect("generate");
    let truth = &o.truth;

    // Buyer share.
    let share = report.buyers as f64 / report.customers as f64;
    let expected_share = 1.0 - truth.prospect_share - truth.service_only_share;
    assert!((share - expected_share).abs() < 0.02, "buyer share {share}");

    // Orders per buyer and order values from the files: the purchases, valued at what
    // they sold (the Gamma-Gamma truth is the value ordered, before any return).
    let found = validate_source(dir.path(), &report, "sales");
    let orders = purchases(&found);
    let returned: f64 = orders.values().map(|o| o.returned).sum();
    assert!(
        (returned - report.returned_revenue_cents as f64 / 100.0).abs() < 0.01,
        "returned {returned} vs truth {}",
        report.returned_revenue_cents
    );
    assert!(report.cancelled_orders > 0 && report.returned_orders > 0 && report.partial_returns > 0);
    let orders: BTreeMap<&String, (String, f64)> = orders
        .iter()
        .filter(|(_, o)| o.is_purchase)
        .map(|(id, o)| (id, (o.customer.clone(), o.gross)))
        .collect();
    let mut per_customer: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (customer, value) in orders.values() {
        let e = per_customer.entry(customer.clone()).or_insert((0.0, 0.0));
        e.0 += 1.0;
        e.1 += value;
    }
    let n = per_customer.len() as f64;
    assert_eq!(n as u64, report.buyers);
    let counts: Vec<f64> = per_customer.values().map(|c| c.0).collect();
    let mean_orders = counts.iter().sum::<f64>() / n;
    let sd = (counts.iter().map(|c| (c - mean_orders).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let weeks = (NaiveDate::from_ymd_opt(2026, 1, 1).expect("date") - o.start).num_days() as f64 / 7.0;
    let expected_orders = expected_orders_per_buyer(truth, weeks);
    let se = sd / n.sqrt();
    eprintln!("orders per buyer {mean_orders:.3}, expected {expected_orders:.3}, se {se:.3}");
    assert!(
        (mean_orders - expected_orders).abs() < 4.0 * se,
        "orders per buyer {mean_orders:.3} vs expected {expected_orders:.3} (se {se:.3})"
    );
    assert!(expected_orders > 1.5 && expected_orders < 10.0, "{expected_orders}");

    // Mean order value vs p * gamma / (q - 1), with a customer-clustered standard error.
    let total_orders: f64 = counts.iter().sum();
    let mean_value = per_customer.values().map(|c| c.1).sum::<f64>() / total_orders;
    let var: f64 = per_customer
        .values()
        .map(|(k, s)| (s - mean_value * k).powi(2))
        .sum::<f64>()
        / total_orders.powi(2);
    let expected_value = truth.expected_order_value();
    let se_value = var.sqrt();
    eprintln!("order value {mean_value:.3}, expected {expected_value:.3}, se {se_value:.3}");
    assert!(
        (mean_value - expected_value).abs() < 4.0 * se_value + 0.01 * expected_value,
        "order value {mean_value:.2} vs expected {expected_value:.2} (se {se_value:.2})"
    );
    assert_eq!(total_orders as u64, report.orders);
}

#[test]
fn generate_service_follows_dissatisfaction() {
    // Customers who stop buying early (high dropout p) complain more: complaint share among
    // tickets of one-order buyers exceeds that of buyers with many orders.
    let dir = tempfile::tempdir().expect("tempdir");
    let report = generate(&opts(dir.path(), 4000, 9, OutputFormat::Csv, false)).expect("generate");
    let sales = validate_source(dir.path(), &report, "sales");
    let service = validate_source(dir.path(), &report, "service");
    let mut orders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, o) in purchases(&sales).into_iter().filter(|(_, o)| o.is_purchase) {
        orders.entry(o.customer).or_default().insert(id);
    }
    let (mut few, mut many) = ((0.0, 0.0), (0.0, 0.0));
    let mut open_late = 0;
    for r in service.canonical.values().flatten() {
        let complaint = if r[4] == "complaint" { 1.0 } else { 0.0 };
        match orders.get(&r[1]).map(|o| o.len()) {
            Some(1..=2) => few = (few.0 + complaint, few.1 + 1.0),
            Some(k) if k >= 6 => many = (many.0 + complaint, many.1 + 1.0),
            _ => {}
        }
        assert_eq!(r[5] == "closed", !r[3].is_empty(), "closed_at iff closed: {r:?}");
        if r[5] != "closed" {
            assert!(r[6].is_empty());
            assert!(r[2].as_str() >= "2025-12-01", "open ticket too old: {r:?}");
            open_late += 1;
        }
    }
    assert!(open_late > 0);
    let (rate_few, rate_many) = (few.0 / few.1, many.0 / many.1);
    assert!(
        rate_few > rate_many + 0.05,
        "complaints {rate_few:.3} vs {rate_many:.3}"
    );
}

#[test]
fn generate_rejects_bad_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = opts(dir.path(), 0, 1, OutputFormat::Csv, true);
    assert!(matches!(generate(&o), Err(GenerateError::InvalidOptions(_))));
    o.customers = 10;
    o.truth.alpha = -1.0;
    assert!(matches!(generate(&o), Err(GenerateError::InvalidOptions(_))));
    assert_eq!("Parquet".parse::<OutputFormat>().expect("parse"), OutputFormat::Parquet);
    assert!("xml".parse::<OutputFormat>().is_err());
}

#[test]
fn generate_replaces_files_of_an_earlier_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate(&opts(dir.path(), 200, 3, OutputFormat::Parquet, true)).expect("parquet run");
    let report = generate(&opts(dir.path(), 200, 3, OutputFormat::Csv, true)).expect("csv run");
    let mut expected: Vec<PathBuf> = report.files.iter().map(PathBuf::from).collect();
    expected.push(PathBuf::from("truth.json"));
    expected.push(PathBuf::from(super::TRUTH_CUSTOMERS_FILE));
    expected.sort();
    assert_eq!(list_files(dir.path()), expected);
}
