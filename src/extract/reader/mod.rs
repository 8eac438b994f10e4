//! Readers turn one export file into [`TextBatch`]es: every declared column as text, with
//! the line each row started on. They trust nothing: a row that cannot even be split into
//! the declared columns (ragged CSV row, invalid UTF-8, a line that is not a JSON object)
//! becomes a [`Reject`] right here, so typing and constraint checks see only whole rows.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, StringArray};

use super::ExtractError;
use crate::config::TableSchema;

mod csv;
mod ndjson;
mod parquet;

pub use csv::CsvReader;
pub use ndjson::NdjsonReader;
pub use parquet::ParquetReader;

/// Longest raw text kept for one rejected record; longer text is cut and marked.
const MAX_RAW_RECORD: usize = 64 * 1024;

/// A rejected row or value: where it was, what it was, why it was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// 1-based line (CSV/NDJSON) or row (Parquet) where the record starts.
    pub line: u64,
    /// Declared column at fault; empty when the record as a whole failed.
    pub column: String,
    /// The offending value as read.
    pub raw_value: Option<String>,
    /// Why it was rejected.
    pub reason: String,
    /// The whole record as read.
    pub raw_record: String,
}

/// Rows of one file as text, one column per declared field (null where a field is absent).
#[derive(Debug)]
pub struct TextBatch {
    /// Line (or row) number of each row.
    pub lines: Vec<u64>,
    /// One string column per declared field, in schema order.
    pub columns: Vec<ArrayRef>,
    /// Records rejected while reading, before typing.
    pub rejects: Vec<Reject>,
}

impl TextBatch {
    /// Rows that made it into `columns`.
    pub fn num_rows(&self) -> usize {
        self.lines.len()
    }
}

/// What a reader learned about the file's columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderReport {
    /// Declared columns the file does not have.
    pub missing: Vec<String>,
    /// Columns in the file that are not declared (ignored).
    pub extra: Vec<String>,
}

/// A source of [`TextBatch`]es for one file.
pub trait ExportReader {
    /// The next batch, or `None` at the end of the file.
    fn next_batch(&mut self) -> Result<Option<TextBatch>, ExtractError>;
    /// How the file's columns matched the declared ones.
    fn header(&self) -> &HeaderReport;
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_RAW_RECORD {
        let mut end = MAX_RAW_RECORD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("…[cut]");
    }
    s
}

/// Maps file column names onto declared fields (exact name first, then case-insensitive,
/// ignoring surrounding spaces). Returns, per declared field, the file column index.
fn match_columns(schema: &TableSchema, names: &[String]) -> Result<(Vec<Option<usize>>, HeaderReport), String> {
    for (i, n) in names.iter().enumerate() {
        if names[..i].iter().any(|m| m.trim().eq_ignore_ascii_case(n.trim())) {
            return Err(format!("column `{}` appears twice in the header", n.trim()));
        }
    }
    let mut report = HeaderReport::default();
    let positions: Vec<Option<usize>> = schema
        .fields
        .iter()
        .map(|f| {
            let pos = names
                .iter()
                .position(|n| n == &f.name)
                .or_else(|| names.iter().position(|n| n.trim().eq_ignore_ascii_case(&f.name)));
            if pos.is_none() {
                report.missing.push(f.name.clone());
            }
            pos
        })
        .collect();
    report.extra = names
        .iter()
        .enumerate()
        .filter(|(i, _)| !positions.contains(&Some(*i)))
        .map(|(_, n)| n.trim().to_string())
        .collect();
    Ok((positions, report))
}

/// Opens a local file; a missing file is one that vanished after listing.
pub(crate) fn open(path: &Path, name: &str) -> Result<File, ExtractError> {
    File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ExtractError::Vanished { file: name.to_string() },
        _ => ExtractError::Io {
            file: name.to_string(),
            source,
        },
    })
}

/// Column builders for one batch. Values are appended as bytes (each one valid UTF-8,
/// checked or known by the reader) and the columns' text checked once per column when the
/// batch is finished, rather than value by value.
struct Builders {
    columns: Vec<BinaryBuilder>,
    lines: Vec<u64>,
    rejects: Vec<Reject>,
}

impl Builders {
    fn new(n: usize, capacity: usize) -> Self {
        Builders {
            columns: (0..n)
                .map(|_| BinaryBuilder::with_capacity(capacity, capacity * 16))
                .collect(),
            lines: Vec::with_capacity(capacity),
            rejects: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.rejects.is_empty()
    }

    /// The batch, `None` when it is empty; `Err` (naming `file` and `line`, where reading
    /// is) if a column's text is not UTF-8, which the readers rule out value by value.
    fn finish(&mut self, file: &str, line: u64) -> Result<Option<TextBatch>, ExtractError> {
        if self.is_empty() {
            return Ok(None);
        }
        let columns = self
            .columns
            .iter_mut()
            .map(|b| StringArray::try_from_binary(b.finish()).map(|c| Arc::new(c) as ArrayRef))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ExtractError::BadFile {
                file: file.to_string(),
                line,
                message: format!("internal: a text column is not UTF-8: {e}"),
            })?;
        Ok(Some(TextBatch {
            lines: std::mem::take(&mut self.lines),
            columns,
            rejects: std::mem::take(&mut self.rejects),
        }))
    }
}

/// Debug helper for tests: the text of column `c`, row `r`.
#[cfg(test)]
pub(crate) fn text_at(batch: &TextBatch, c: usize, r: usize) -> Option<String> {
    use arrow::array::Array;
    let col = batch.columns[c].as_any().downcast_ref::<StringArray>()?;
    col.is_valid(r).then(|| col.value(r).to_string())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub(crate) fn schema() -> TableSchema {
        TableSchema::parse(
            r#"{"fields":[{"name":"id"},{"name":"note"},{"name":"qty","type":"integer"}]}"#,
            Path::new("s.json"),
        )
        .unwrap()
    }

    pub(crate) fn csv_at(p: &Path, batch_size: usize) -> Result<CsvReader, ExtractError> {
        CsvReader::new(Box::new(File::open(p).unwrap()), "a.csv", &schema(), b',', batch_size)
    }

    pub(crate) fn read_all(reader: &mut dyn ExportReader) -> Vec<TextBatch> {
        let mut out = Vec::new();
        while let Some(b) = reader.next_batch().unwrap() {
            out.push(b);
        }
        out
    }
}
