//! The row-validation path (reader + validate) under random input: [`check_export`]
//! reads arbitrary bytes as a CSV and as an NDJSON export the way extract does and panics
//! when a property breaks. It is the body of the coverage-guided `cargo fuzz` target
//! `validate_rows` (`tests/fuzz/`, run by CI for a bounded time), and of two seeded
//! property tests in the normal test suite:
//!
//! 1. Structured: random rows of nasty values (quotes, delimiters, line breaks, Unicode,
//!    separators, currency, out-of-range numbers, bad dates), written with proper CSV
//!    quoting, random column order, extra columns, CRLF or LF and a BOM. Every valid row is
//!    loaded with its start line, every invalid row is quarantined with exactly the
//!    columns that are invalid, and nothing else appears.
//! 2. Mutations: the files of `tests/malformed/` and structured outputs with random byte
//!    flips, insertions of quotes, delimiters, line breaks and invalid UTF-8, deletions and
//!    truncations, checked by [`check_export`].
//!
//! What [`check_export`] asserts: no panic; either an error naming the file and a line,
//! or every record is accounted for: loaded + quarantined = records in the bytes (counted
//! by a separate CSV reader, or by lines for NDJSON), each quarantined row has a line and
//! a reason, and no line is both loaded and quarantined.
//!
//! `PATRON_FUZZ_CASES` (default 400) and `PATRON_FUZZ_SEED` run the property tests longer
//! or elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use arrow::array::{Array, Int64Array};
use arrow::datatypes::SchemaRef;

use super::ExtractError;
use super::reader::{CsvReader, ExportReader, NdjsonReader};
use super::validate::{raw_schema, validate};
use crate::config::TableSchema;
use crate::names::SOURCE_LINE_COLUMN;

const SCHEMA: &str = r#"{"fields":[
    {"name":"id","type":"string","constraints":{"required":true}},
    {"name":"qty","type":"integer","groupChar":",","constraints":{"required":true,"minimum":1,"maximum":1000}},
    {"name":"price","type":"number","groupChar":",","bareNumber":false,"constraints":{"minimum":0}},
    {"name":"ts","type":"datetime","format":"any"},
    {"name":"flag","type":"boolean"},
    {"name":"day","type":"date"},
    {"name":"kind","type":"string","constraints":{"enum":["a","b"]}}
],"primaryKey":"id"}"#;

/// The declared schema every input is validated against, and its raw (text) Arrow
/// schema; parsed once, not per input.
fn schemas() -> &'static (TableSchema, SchemaRef) {
    static SCHEMAS: OnceLock<(TableSchema, SchemaRef)> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let schema = TableSchema::parse(SCHEMA, Path::new("fuzz.schema.json")).expect("fuzz schema parses");
        let raw = raw_schema(&schema);
        (schema, raw)
    })
}

/// What reading and validating one input gave.
#[derive(Debug, Default)]
struct Outcome {
    /// Start lines of the loaded rows.
    loaded: Vec<u64>,
    /// Quarantined line -> the columns named (empty string: the row as a whole).
    rejected: BTreeMap<u64, BTreeSet<String>>,
    /// Rows read (rows split into columns plus rows rejected while reading).
    read: u64,
}

/// Reads and validates `bytes` like extract does, with small batches so rows cross batch
/// boundaries; checks the per-batch invariants on the way.
fn run(bytes: &[u8], ndjson: bool, batch_size: usize) -> Result<Outcome, ExtractError> {
    let (schema, raw) = schemas();
    let input = Box::new(Cursor::new(bytes.to_vec()));
    let mut reader: Box<dyn ExportReader> = if ndjson {
        Box::new(NdjsonReader::new(input, "fuzz.ndjson", schema, batch_size))
    } else {
        Box::new(CsvReader::new(input, "fuzz.csv", schema, b',', batch_size)?)
    };
    let mut out = Outcome::default();
    while let Some(batch) = reader.next_batch()? {
        let checked = validate(schema, raw, &batch, "fuzz");
        assert_eq!(
            checked.good.num_rows() + checked.rejected_rows,
            batch.num_rows(),
            "validate accounts for every row of the batch"
        );
        out.read += (batch.num_rows() + batch.rejects.len()) as u64;
        let lines = checked
            .good
            .column_by_name(SOURCE_LINE_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
            .expect("line column");
        out.loaded.extend(lines.values().iter().map(|&l| l as u64));
        for r in batch.rejects.iter().chain(&checked.rejects) {
            assert!(r.line > 0, "a rejected row has a line: {r:?}");
            assert!(!r.reason.is_empty(), "a rejected row has a reason: {r:?}");
            out.rejected.entry(r.line).or_default().insert(r.column.clone());
        }
        let rejected_here: BTreeSet<u64> = checked.rejects.iter().map(|r| r.line).collect();
        assert_eq!(rejected_here.len(), checked.rejected_rows, "one line per rejected row");
    }
    Ok(out)
}

/// Records in CSV bytes after the header, counted by a separate csv reader.
fn csv_records(bytes: &[u8]) -> u64 {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut n = 0u64;
    while r.read_byte_record(&mut record).unwrap_or(false) {
        n += 1;
    }
    n.saturating_sub(1)
}

/// Non-blank NDJSON lines (a line of invalid UTF-8 counts: it is rejected, not skipped).
fn ndjson_records(bytes: &[u8]) -> u64 {
    let mut chunks: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if bytes.ends_with(b"\n") {
        chunks.pop();
    }
    chunks
        .iter()
        .filter(|l| match std::str::from_utf8(l) {
            Ok(s) => !s.trim_start_matches('\u{feff}').trim().is_empty(),
            Err(_) => true,
        })
        .count() as u64
}

/// The input, escaped and cut, for a failure message.
fn show(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes).escape_debug().take(2000).collect();
    format!("{} bytes: {text}", bytes.len())
}

/// Reads and validates `bytes` as a CSV export and as an NDJSON export (rows crossing
/// batch boundaries: the batch size comes from the input's length) and panics when a
/// property of the module doc breaks: the fuzz target's body.
pub fn check_input(bytes: &[u8]) {
    let batch_size = 1 + bytes.len() % 8;
    check_export(bytes, false, batch_size);
    check_export(bytes, true, batch_size);
}

/// Reads and validates `bytes` as one export (`ndjson` or CSV) in batches of `batch_size`
/// rows, and panics when a property breaks; true when the input was refused with a
/// file-level error (naming the file and a line).
pub fn check_export(bytes: &[u8], ndjson: bool, batch_size: usize) -> bool {
    let ctx = || format!("ndjson {ndjson}, batch {batch_size}: {}", show(bytes));
    match run(bytes, ndjson, batch_size) {
        Err(e) => {
            match &e {
                ExtractError::BadFile { file, line, message } => {
                    assert!(
                        file.starts_with("fuzz") && *line >= 1 && !message.is_empty(),
                        "{e}\n{}",
                        ctx()
                    );
                }
                other => panic!("unexpected error kind {other}\n{}", ctx()),
            }
            true
        }
        Ok(out) => {
            let records = if ndjson {
                ndjson_records(bytes)
            } else {
                csv_records(bytes)
            };
            let quarantined = out.rejected.len() as u64;
            assert_eq!(out.read, records, "rows read vs records in the bytes: {}", ctx());
            assert_eq!(out.loaded.len() as u64 + quarantined, out.read, "{}", ctx());
            let loaded: BTreeSet<u64> = out.loaded.iter().copied().collect();
            assert_eq!(loaded.len(), out.loaded.len(), "one row per start line: {}", ctx());
            assert!(loaded.is_disjoint(&out.rejected.keys().copied().collect()), "{}", ctx());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Per column: (value, valid).
    const PALETTE: [&[(&str, bool)]; 7] = [
        &[
            ("a1", true),
            ("x y", true),
            ("quote\"d", true),
            ("comma,here", true),
            ("new\nline", true),
            ("cr\r\nlf", true),
            ("ünï €", true),
            ("  padded  ", true),
            ("", false),
        ],
        &[
            ("1", true),
            ("1000", true),
            ("1,000", true),
            (" 7 ", true),
            ("0", false),
            ("1001", false),
            ("1.5", false),
            ("x", false),
            ("", false),
            ("1,,0", false),
            ("99999999999999999999", false),
        ],
        &[
            ("0", true),
            ("1.5", true),
            ("€2.50", true),
            ("1,234.5 USD", true),
            ("3%", true),
            ("", true),
            ("-1", false),
            ("-€1", false),
            ("abc", false),
            ("€", false),
            ("1.2.3", false),
        ],
        &[
            ("2024-01-02T03:04:05Z", true),
            ("2024-01-02 03:04:05", true),
            ("2024-01-02T04:04:05+01:00", true),
            ("2024-01-02", true),
            ("", true),
            ("yesterday", false),
            ("2024-13-01", false),
            ("01/02/2024", false),
        ],
        &[("true", true), ("0", true), ("yes", true), ("", true), ("maybe", false)],
        &[
            ("2024-02-29", true),
            ("", true),
            ("2023-02-29", false),
            ("29.02.2024", false),
        ],
        &[("a", true), ("b", true), ("", true), ("c", false), ("A", false)],
    ];

    fn cases() -> usize {
        std::env::var("PATRON_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400)
    }

    fn seed() -> u64 {
        std::env::var("PATRON_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5EED_0005)
    }

    /// A random CSV export: (bytes, expected start line and invalid columns per row).
    fn structured(rng: &mut ChaCha8Rng) -> (Vec<u8>, Vec<(u64, BTreeSet<String>)>) {
        let (schema, _) = schemas();
        let names: Vec<String> = schema.fields.iter().map(|f| f.name.clone()).collect();
        // File column order: the declared ones shuffled (some upper-cased), maybe an extra.
        let mut order: Vec<Option<usize>> = (0..names.len()).map(Some).collect();
        if rng.gen_bool(0.5) {
            order.push(None);
        }
        order.shuffle(rng);
        let crlf = rng.gen_bool(0.5);
        let terminator = if crlf {
            csv::Terminator::CRLF
        } else {
            csv::Terminator::Any(b'\n')
        };
        let style = if rng.gen_bool(0.3) {
            csv::QuoteStyle::Always
        } else {
            csv::QuoteStyle::Necessary
        };
        let write = |fields: &[String]| -> Vec<u8> {
            let mut w = csv::WriterBuilder::new()
                .terminator(terminator)
                .quote_style(style)
                .from_writer(Vec::new());
            w.write_record(fields).expect("in-memory write");
            w.into_inner().expect("in-memory flush")
        };
        let header: Vec<String> = order
            .iter()
            .map(|c| match c {
                Some(i) if rng.gen_bool(0.2) => names[*i].to_uppercase(),
                Some(i) => names[*i].clone(),
                None => "extra,column".to_string(),
            })
            .collect();
        let mut bytes = Vec::new();
        if rng.gen_bool(0.3) {
            bytes.extend_from_slice("\u{feff}".as_bytes());
        }
        bytes.extend(write(&header));
        let mut line = 2u64;
        let mut expected = Vec::new();
        for _ in 0..rng.gen_range(0..40) {
            let picks: Vec<(&str, bool)> = PALETTE.iter().map(|p| p[rng.gen_range(0..p.len())]).collect();
            let fields: Vec<String> = order
                .iter()
                .map(|c| match c {
                    Some(i) => picks[*i].0.to_string(),
                    None => "junk \"x\"\n,y".to_string(),
                })
                .collect();
            let record = write(&fields);
            let invalid: BTreeSet<String> = picks
                .iter()
                .zip(&names)
                .filter(|((_, ok), _)| !ok)
                .map(|(_, n)| n.clone())
                .collect();
            expected.push((line, invalid));
            line += record.iter().filter(|b| **b == b'\n').count() as u64;
            bytes.extend(record);
        }
        (bytes, expected)
    }

    fn mutate(rng: &mut ChaCha8Rng, mut bytes: Vec<u8>) -> Vec<u8> {
        const INSERTS: [&[u8]; 9] = [
            b"\"",
            b",",
            b"\n",
            b"\r\n",
            b"\xff",
            b"\xef\xbb\xbf",
            b"{",
            b"}",
            b"\"\"",
        ];
        for _ in 0..rng.gen_range(1..6) {
            let at = rng.gen_range(0..=bytes.len());
            match rng.gen_range(0..5) {
                0 if !bytes.is_empty() => {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] = rng.r#gen();
                }
                1 => {
                    let ins = INSERTS[rng.gen_range(0..INSERTS.len())];
                    bytes.splice(at..at, ins.iter().copied());
                }
                2 if at < bytes.len() => {
                    let end = rng.gen_range(at..=bytes.len().min(at + 16));
                    bytes.drain(at..end);
                }
                3 => bytes.truncate(at),
                _ if at < bytes.len() => {
                    let end = rng.gen_range(at..=bytes.len().min(at + 64));
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(at..at, copy);
                }
                _ => {}
            }
        }
        bytes
    }

    #[test]
    fn structured_exports_load_every_valid_row_and_quarantine_every_invalid_one() {
        let seed = seed();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for case in 0..cases() {
            let (bytes, expected) = structured(&mut rng);
            let batch_size = rng.gen_range(1..9);
            let ctx = || format!("seed {seed} case {case} batch {batch_size}: {}", show(&bytes));
            let out = run(&bytes, false, batch_size).unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
            let want_loaded: Vec<u64> = expected.iter().filter(|e| e.1.is_empty()).map(|e| e.0).collect();
            let want_rejected: BTreeMap<u64, BTreeSet<String>> =
                expected.iter().filter(|e| !e.1.is_empty()).cloned().collect();
            assert_eq!(out.loaded, want_loaded, "{}", ctx());
            assert_eq!(out.rejected, want_rejected, "{}", ctx());
            assert_eq!(out.read, expected.len() as u64, "{}", ctx());
        }
    }

    #[test]
    fn mutated_exports_never_panic_and_account_for_every_record() {
        let seed = seed();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xF022);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
        let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("tests/malformed exists")
            .flatten()
            .filter(|e| e.path().is_file())
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect();
        corpus.extend((0..8).map(|_| structured(&mut rng).0));
        let mut errors = 0;
        for case in 0..cases() * 3 {
            let base = corpus[rng.gen_range(0..corpus.len())].clone();
            let bytes = mutate(&mut rng, base);
            let ndjson = rng.gen_bool(0.3);
            let batch_size = rng.gen_range(1..9);
            let refused = std::panic::catch_unwind(|| check_export(&bytes, ndjson, batch_size))
                .unwrap_or_else(|_| panic!("seed {seed} case {case}: see the panic above"));
            errors += usize::from(refused);
        }
        // The mutations reach the error paths too, not only the row paths.
        assert!(errors > 0, "no mutated input hit a file-level error");
    }

    #[test]
    fn the_fuzz_targets_body_takes_any_bytes() {
        for bytes in [&b""[..], b"\xff", b"id\n\"", b"{\"id\": 1}\n{", b"id,qty\r\na,1\r\n"] {
            check_input(bytes);
        }
    }
}
