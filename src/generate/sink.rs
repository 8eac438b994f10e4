//! Output sinks of the generator: one streaming writer per output file.
//!
//! A [`Sink`] writes rows of one source (sales, service or marketing) as CSV, NDJSON or
//! Parquet. Rows are given as text cells (the same text for every format), so the mess the
//! generator injects (`three` as a quantity, `not-a-date` as a timestamp, ...) can be written
//! in every format. Memory per sink is constant: text sinks use a 1 MiB `BufWriter`, Parquet
//! sinks buffer at most [`PARQUET_BATCH_ROWS`] rows before handing a `RecordBatch` to the
//! `ArrowWriter` (whose row groups are capped at the same size).
//!
//! Parquet files store every column as nullable UTF-8 text, exactly as the CSV would carry
//! it (an empty cell is a null); type checking is the validator's job, as for CSV.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder};
use arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::{GenerateError, OutputFormat};

/// Capacity of the buffered writers (1 MiB).
const BUF_CAPACITY: usize = 1 << 20;

/// Rows buffered per Parquet sink before a `RecordBatch` is written (also the row group size).
pub(crate) const PARQUET_BATCH_ROWS: usize = 65_536;

/// Declared type of a column (drives JSON number vs string output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Text.
    Str,
    /// Integer.
    Int,
    /// Decimal number.
    Num,
}

/// One column of a source, in schema order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    /// Column name, as in the schema JSON.
    pub name: &'static str,
    /// Declared kind.
    pub kind: Kind,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

/// Columns of `schemas/sales.schema.json`.
pub(crate) const SALES_COLUMNS: &[Column] = &[
    col("order_id", Kind::Str),
    col("line_no", Kind::Int),
    col("customer_id", Kind::Str),
    col("order_ts", Kind::Str),
    col("channel", Kind::Str),
    col("category", Kind::Str),
    col("quantity", Kind::Int),
    col("unit_price", Kind::Num),
    col("discount", Kind::Num),
    col("unit_cost", Kind::Num),
    col("currency", Kind::Str),
    col("referred_by", Kind::Str),
    col("status", Kind::Str),
    col("refund_of", Kind::Str),
];

/// Columns of `truth_customers.csv`: each buyer's simulated state (see
/// [`super::TRUTH_CUSTOMERS_FILE`]).
pub(crate) const TRUTH_COLUMNS: &[Column] = &[
    col("customer_id", Kind::Str),
    col("acquired_at", Kind::Str),
    col("purchase_rate_per_week", Kind::Num),
    col("dropout_probability", Kind::Num),
    col("purchases", Kind::Int),
    col("dropped_out", Kind::Str),
    col("dropout_at", Kind::Str),
];

/// Columns of `schemas/service.schema.json`.
pub(crate) const SERVICE_COLUMNS: &[Column] = &[
    col("ticket_id", Kind::Str),
    col("customer_id", Kind::Str),
    col("opened_at", Kind::Str),
    col("closed_at", Kind::Str),
    col("category", Kind::Str),
    col("status", Kind::Str),
    col("csat", Kind::Int),
    col("handling_cost", Kind::Num),
];

/// Columns of `schemas/marketing.schema.json`.
pub(crate) const MARKETING_COLUMNS: &[Column] = &[
    col("event_id", Kind::Str),
    col("customer_id", Kind::Str),
    col("event_ts", Kind::Str),
    col("campaign", Kind::Str),
    col("channel", Kind::Str),
    col("event_type", Kind::Str),
    col("cost", Kind::Num),
];

/// One row as text cells in column order. An empty cell is a null.
#[derive(Debug, Clone, Default)]
pub(crate) struct Row {
    /// Cell texts, one per column.
    pub vals: Vec<String>,
    /// A column left out entirely (ragged CSV row, missing JSON key, null in Parquet).
    pub absent: Option<usize>,
    /// NDJSON only: write nulls as `""` instead of `null`.
    pub empty_as_string: bool,
}

enum Out {
    Text { w: BufWriter<File>, ndjson: bool },
    Parquet(Box<ParquetOut>),
}

struct ParquetOut {
    writer: ArrowWriter<BufWriter<File>>,
    schema: SchemaRef,
    builders: Vec<StringBuilder>,
    pending: usize,
}

/// A streaming writer for one output file.
pub(crate) struct Sink {
    path: PathBuf,
    rel: String,
    columns: &'static [Column],
    out: Out,
    line: String,
    rows: u64,
}

fn io_err(path: &Path, source: std::io::Error) -> GenerateError {
    GenerateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn pq_err(path: &Path, source: parquet::errors::ParquetError) -> GenerateError {
    GenerateError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

impl Sink {
    /// Creates `out_dir/rel` (and its parent folder) and writes the header if any.
    pub(crate) fn create(
        out_dir: &Path,
        rel: &str,
        columns: &'static [Column],
        format: OutputFormat,
    ) -> Result<Self, GenerateError> {
        let path = out_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        let file = File::create(&path).map_err(|e| io_err(&path, e))?;
        let mut w = BufWriter::with_capacity(BUF_CAPACITY, file);
        let out = match format {
            OutputFormat::Csv => {
                let header: Vec<&str> = columns.iter().map(|c| c.name).collect();
                writeln!(w, "{}", header.join(",")).map_err(|e| io_err(&path, e))?;
                Out::Text { w, ndjson: false }
            }
            OutputFormat::Ndjson => Out::Text { w, ndjson: true },
            OutputFormat::Parquet => {
                let schema: SchemaRef = Arc::new(Schema::new(
                    columns
                        .iter()
                        .map(|c| ArrowField::new(c.name, DataType::Utf8, true))
                        .collect::<Vec<_>>(),
                ));
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(PARQUET_BATCH_ROWS))
                    .build();
                let writer = ArrowWriter::try_new(w, schema.clone(), Some(props)).map_err(|e| pq_err(&path, e))?;
                let builders = columns.iter().map(|_| StringBuilder::new()).collect();
                Out::Parquet(Box::new(ParquetOut {
                    writer,
                    schema,
                    builders,
                    pending: 0,
                }))
            }
        };
        Ok(Sink {
            path,
            rel: rel.to_string(),
            columns,
            out,
            line: String::with_capacity(256),
            rows: 0,
        })
    }

    /// Path relative to the output folder, with `/` separators.
    pub(crate) fn rel(&self) -> &str {
        &self.rel
    }

    /// Data rows written so far (header excluded).
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether this sink writes NDJSON (the only format where a non-JSON line makes sense).
    pub(crate) fn is_ndjson(&self) -> bool {
        matches!(self.out, Out::Text { ndjson: true, .. })
    }

    /// Whether this sink writes CSV.
    pub(crate) fn is_csv(&self) -> bool {
        matches!(self.out, Out::Text { ndjson: false, .. })
    }

    /// Renders a row as one NDJSON line (without newline) into `buf`.
    pub(crate) fn render_json(columns: &[Column], row: &Row, buf: &mut String) {
        buf.clear();
        buf.push('{');
        let mut first = true;
        for (i, (c, v)) in columns.iter().zip(&row.vals).enumerate() {
            if row.absent == Some(i) {
                continue;
            }
            if !first {
                buf.push(',');
            }
            first = false;
            push_json_str(buf, c.name);
            buf.push(':');
            if v.is_empty() {
                if row.empty_as_string {
                    buf.push_str("\"\"");
                } else {
                    buf.push_str("null");
                }
            } else if c.kind != Kind::Str && is_json_number(v) {
                buf.push_str(v);
            } else {
                push_json_str(buf, v);
            }
        }
        buf.push('}');
    }

    fn render_csv(row: &Row, buf: &mut String) {
        buf.clear();
        let mut first = true;
        for (i, v) in row.vals.iter().enumerate() {
            if row.absent == Some(i) {
                continue;
            }
            if !first {
                buf.push(',');
            }
            first = false;
            if v.contains([',', '"', '\n', '\r']) {
                buf.push('"');
                buf.push_str(&v.replace('"', "\"\""));
                buf.push('"');
            } else {
                buf.push_str(v);
            }
        }
    }

    /// Writes one data row.
    pub(crate) fn write_row(&mut self, row: &Row) -> Result<(), GenerateError> {
        debug_assert_eq!(row.vals.len(), self.columns.len());
        match &mut self.out {
            Out::Text { w, ndjson } => {
                if *ndjson {
                    Self::render_json(self.columns, row, &mut self.line);
                } else {
                    Self::render_csv(row, &mut self.line);
                }
                self.line.push('\n');
                w.write_all(self.line.as_bytes()).map_err(|e| io_err(&self.path, e))?;
            }
            Out::Parquet(pq) => {
                for (i, (b, v)) in pq.builders.iter_mut().zip(&row.vals).enumerate() {
                    if row.absent == Some(i) || v.is_empty() {
                        b.append_null();
                    } else {
                        b.append_value(v);
                    }
                }
                pq.pending += 1;
                if pq.pending >= PARQUET_BATCH_ROWS {
                    flush_parquet(pq, &self.path)?;
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Writes one raw line (text sinks only; used for a non-JSON NDJSON line).
    pub(crate) fn write_raw_line(&mut self, line: &str) -> Result<(), GenerateError> {
        match &mut self.out {
            Out::Text { w, .. } => {
                w.write_all(line.as_bytes())
                    .and_then(|()| w.write_all(b"\n"))
                    .map_err(|e| io_err(&self.path, e))?;
                self.rows += 1;
                Ok(())
            }
            Out::Parquet(_) => Err(GenerateError::InvalidOptions(format!(
                "internal: raw line written to Parquet file {}",
                self.path.display()
            ))),
        }
    }

    /// Flushes and closes the file.
    pub(crate) fn finish(self) -> Result<(), GenerateError> {
        let path = self.path;
        match self.out {
            Out::Text { mut w, .. } => w.flush().map_err(|e| io_err(&path, e)),
            Out::Parquet(mut pq) => {
                flush_parquet(&mut pq, &path)?;
                let mut inner = pq.writer.into_inner().map_err(|e| pq_err(&path, e))?;
                inner.flush().map_err(|e| io_err(&path, e))
            }
        }
    }
}

fn flush_parquet(pq: &mut ParquetOut, path: &Path) -> Result<(), GenerateError> {
    if pq.pending == 0 {
        return Ok(());
    }
    let arrays: Vec<ArrayRef> = pq
        .builders
        .iter_mut()
        .map(|b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(pq.schema.clone(), arrays).map_err(|e| GenerateError::Parquet {
        path: path.to_path_buf(),
        source: parquet::errors::ParquetError::External(Box::new(e)),
    })?;
    pq.writer.write(&batch).map_err(|e| pq_err(path, e))?;
    pq.pending = 0;
    Ok(())
}

/// Appends `s` as a JSON string literal.
fn push_json_str(buf: &mut String, s: &str) {
    buf.push('"');
    for ch in s.chars() {
        match ch {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            c if (c as u32) < 0x20 => buf.push_str(&format!("\\u{:04x}", c as u32)),
            c => buf.push(c),
        }
    }
    buf.push('"');
}

/// Whether `s` is a JSON number token as the generator writes them (`-?digits(.digits)?`).
fn is_json_number(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    digits(int) && (int == "0" || !int.starts_with('0')) && frac.is_none_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_json_number_detection() {
        assert!(is_json_number("12.50"));
        assert!(is_json_number("-2"));
        assert!(is_json_number("0.02"));
        assert!(!is_json_number("three"));
        assert!(!is_json_number("01"));
        assert!(!is_json_number("1."));
        assert!(!is_json_number(""));
    }
}
