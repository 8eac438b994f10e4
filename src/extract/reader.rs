//! Readers turn one export file into [`TextBatch`]es: every declared column as text, with
//! the line each row started on. They trust nothing: a row that cannot even be split into
//! the declared columns (ragged CSV row, invalid UTF-8, a line that is not a JSON object)
//! becomes a [`Reject`] right here, so typing and constraint checks see only whole rows.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryBuilder, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::ExtractError;
use crate::config::TableSchema;

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

/// Wraps the file so record start offsets can be turned into line numbers: it remembers
/// the offsets of the line ends (`\n`, `\r\n` or a lone `\r`) read ahead of the CSV parser (csv's own line counter is
/// off by one per record on CRLF files).
struct NewlineIndex<R> {
    inner: R,
    offset: u64,
    newlines: Rc<RefCell<VecDeque<u64>>>,
    /// The last byte read that is not a space or line end: tells whether the file ends
    /// with a closing quote.
    last_byte: Rc<std::cell::Cell<u8>>,
    /// Offset of a `\r` whose next byte is not read yet.
    pending_cr: Option<u64>,
}

/// Position of the first `\n` or `\r` among the 8 bytes of `word` (read little-endian),
/// if any. The "has a zero byte" test on the word XOR each line-end byte repeated marks
/// the first such byte exactly (only bytes after it can be marked wrongly), so the lowest
/// mark is the answer.
fn first_line_end(word: u64) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zeros = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let marks = zeros(word ^ u64::from_ne_bytes([b'\n'; 8])) | zeros(word ^ u64::from_ne_bytes([b'\r'; 8]));
    (marks != 0).then(|| marks.trailing_zeros() as usize / 8)
}

impl<R: Read> Read for NewlineIndex<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = &buf[..n];
        let mut newlines = self.newlines.borrow_mut();
        let mut i = 0;
        while i < n {
            // Most bytes are no line end: skip to the next one 8 bytes at a time (a pending
            // `\r` needs the byte right after it, so not then).
            if self.pending_cr.is_none() {
                while let Some(word) = data[i..].first_chunk::<8>() {
                    match first_line_end(u64::from_le_bytes(*word)) {
                        Some(at) => {
                            i += at;
                            break;
                        }
                        None => i += 8,
                    }
                }
                if i == n {
                    break;
                }
            }
            let b = &data[i];
            let at = self.offset + i as u64;
            i += 1;
            // A lone `\r` (old Mac line ends) ends a line too; in `\r\n` the `\n` does.
            if let Some(cr) = self.pending_cr.take()
                && *b != b'\n'
            {
                newlines.push_back(cr);
            }
            if *b == b'\n' {
                newlines.push_back(at);
            } else if *b == b'\r' {
                self.pending_cr = Some(at);
            }
        }
        if n == 0
            && let Some(cr) = self.pending_cr.take()
        {
            newlines.push_back(cr);
        }
        if let Some(last) = buf[..n].iter().rev().find(|b| !b" \t\r\n".contains(b)) {
            self.last_byte.set(*last);
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// Line numbers for increasing byte offsets, from a [`NewlineIndex`].
struct LineCounter {
    newlines: Rc<RefCell<VecDeque<u64>>>,
    passed: u64,
}

impl LineCounter {
    /// The 1-based line of a record starting at byte `offset` (on CRLF files csv reports
    /// the start at the `\n` ending the previous line, which still belongs to it);
    /// offsets must not decrease between calls.
    fn line_at(&mut self, offset: u64) -> u64 {
        let mut newlines = self.newlines.borrow_mut();
        while newlines.front().is_some_and(|&nl| nl <= offset) {
            newlines.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }

    /// The line the underlying reader has reached: where reading stopped on an I/O error.
    fn reached(&self) -> u64 {
        self.passed + self.newlines.borrow().len() as u64 + 1
    }
}

/// Reads delimited text with a header line. Quoted fields may hold delimiters, quotes and
/// newlines; a UTF-8 byte-order mark and CRLF line ends are accepted.
pub struct CsvReader {
    reader: csv::Reader<NewlineIndex<Box<dyn Read>>>,
    lines: LineCounter,
    positions: Vec<Option<usize>>,
    declared: Vec<String>,
    header: HeaderReport,
    width: usize,
    delimiter: u8,
    batch_size: usize,
    record: csv::ByteRecord,
    file: String,
    done: bool,
    last_byte: Rc<std::cell::Cell<u8>>,
    /// Line of the latest record when its last field holds a line break.
    last_multiline: Option<u64>,
}

impl CsvReader {
    /// Reads the header of `input` (decoded text of the file named `file`).
    pub fn new(
        input: Box<dyn Read>,
        file: &str,
        schema: &TableSchema,
        delimiter: u8,
        batch_size: usize,
    ) -> Result<Self, ExtractError> {
        let newlines = Rc::new(RefCell::new(VecDeque::new()));
        let file_name = file;
        let last_byte = Rc::new(std::cell::Cell::new(0));
        let file = NewlineIndex {
            inner: input,
            offset: 0,
            newlines: Rc::clone(&newlines),
            last_byte: Rc::clone(&last_byte),
            pending_cr: None,
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .has_headers(false)
            .from_reader(file);
        let mut record = csv::ByteRecord::new();
        let bad_file = |message: String| ExtractError::BadFile {
            file: file_name.to_string(),
            line: 1,
            message,
        };
        let has_header = reader
            .read_byte_record(&mut record)
            .map_err(|e| bad_file(e.to_string()))?;
        let names: Vec<String> = if has_header {
            record
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let s = String::from_utf8_lossy(f);
                    // A UTF-8 byte-order mark before the first name is not part of it.
                    if i == 0 {
                        s.trim_start_matches('\u{feff}').to_string()
                    } else {
                        s.into_owned()
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let (positions, header) = if has_header {
            match_columns(schema, &names).map_err(bad_file)?
        } else {
            (vec![None; schema.fields.len()], HeaderReport::default())
        };
        Ok(CsvReader {
            reader,
            lines: LineCounter { newlines, passed: 0 },
            positions,
            declared: schema.fields.iter().map(|f| f.name.clone()).collect(),
            header,
            width: names.len(),
            delimiter,
            batch_size,
            record,
            file: file_name.to_string(),
            done: !has_header,
            last_byte,
            last_multiline: None,
        })
    }

    /// True when a field of the current record holds a line break (it was quoted).
    fn spans_lines(&self) -> bool {
        self.record.iter().any(|f| f.contains(&b'\n'))
    }

    /// The error for a file whose last record ends inside a quoted field: a quote that is
    /// never closed swallows every line after it into the record's last field (which then
    /// holds line breaks, and the file does not end with a quote). Checked at the end of
    /// the file, with the line of the last record whose last field spans lines.
    fn open_quote_at_end(&self) -> Option<ExtractError> {
        let line = self.last_multiline?;
        (self.last_byte.get() != b'"').then(|| ExtractError::BadFile {
            file: self.file.clone(),
            line,
            message: format!(
                "a quoted field in the record starting on this line is never closed: it runs to the end of \
                 the file (line {}), taking every line after it; close the quote",
                self.lines.reached().saturating_sub(1).max(line)
            ),
        })
    }

    fn raw_record(&self) -> String {
        let parts: Vec<String> = self
            .record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        cut(parts.join(&(self.delimiter as char).to_string()))
    }
}

impl ExportReader for CsvReader {
    fn next_batch(&mut self) -> Result<Option<TextBatch>, ExtractError> {
        if self.done {
            return Ok(None);
        }
        let mut b = Builders::new(self.positions.len(), self.batch_size);
        while b.lines.len() < self.batch_size {
            match self.reader.read_byte_record(&mut self.record) {
                Ok(false) => {
                    self.done = true;
                    // Loading or quarantining the last record as one would hide the lines
                    // an unclosed quote swallowed.
                    if let Some(e) = self.open_quote_at_end() {
                        return Err(e);
                    }
                    break;
                }
                Ok(true) => {}
                Err(e) => {
                    // The csv crate only fails on I/O here (it is flexible and byte based);
                    // anything else would silently lose the rest of the file.
                    return Err(ExtractError::BadFile {
                        file: self.file.clone(),
                        line: self.lines.reached(),
                        message: e.to_string(),
                    });
                }
            }
            let offset = self.record.position().map(|p| p.byte()).unwrap_or(0);
            let line = self.lines.line_at(offset);
            self.last_multiline = self
                .record
                .iter()
                .next_back()
                .is_some_and(|f| f.contains(&b'\n'))
                .then_some(line);
            if self.record.len() != self.width {
                let hint = if self.spans_lines() {
                    " (a quoted field runs over several lines: is a quote not closed?)"
                } else {
                    ""
                };
                b.rejects.push(Reject {
                    line,
                    column: String::new(),
                    raw_value: None,
                    reason: format!("expected {} fields, found {}{hint}", self.width, self.record.len()),
                    raw_record: self.raw_record(),
                });
                continue;
            }
            // Checked before appending anything, so a row is appended whole or not at all;
            // an all-ASCII record (most are) needs no check per field.
            let bad_utf8 = if self.record.as_slice().is_ascii() {
                None
            } else {
                self.positions
                    .iter()
                    .position(|pos| pos.is_some_and(|p| std::str::from_utf8(&self.record[p]).is_err()))
            };
            if let Some(field_idx) = bad_utf8 {
                let p = self.positions[field_idx].unwrap_or(0);
                b.rejects.push(Reject {
                    line,
                    column: self.declared[field_idx].clone(),
                    raw_value: Some(String::from_utf8_lossy(&self.record[p]).into_owned()),
                    reason: "not valid UTF-8 (set the source encoding)".into(),
                    raw_record: self.raw_record(),
                });
                continue;
            }
            for (builder, pos) in b.columns.iter_mut().zip(&self.positions) {
                builder.append_option(pos.map(|p| &self.record[p]));
            }
            b.lines.push(line);
        }
        b.finish(&self.file, self.lines.reached())
    }

    fn header(&self) -> &HeaderReport {
        &self.header
    }
}

/// Reads newline-delimited JSON: one object per line, keys matched to declared fields.
/// Each value is taken as its JSON text (strings unquoted and unescaped, other values as
/// written), without building a JSON tree; a key given twice keeps its last value.
pub struct NdjsonReader {
    input: BufReader<Box<dyn Read>>,
    /// The current line's bytes.
    line: Vec<u8>,
    names: Vec<String>,
    header: HeaderReport,
    batch_size: usize,
    line_no: u64,
    file: String,
}

impl NdjsonReader {
    /// Reads `input` (decoded text of the file named `file`).
    pub fn new(input: Box<dyn Read>, file: &str, schema: &TableSchema, batch_size: usize) -> Self {
        NdjsonReader {
            input: BufReader::with_capacity(1 << 20, input),
            line: Vec::new(),
            names: schema.fields.iter().map(|f| f.name.clone()).collect(),
            header: HeaderReport::default(),
            batch_size,
            line_no: 0,
            file: file.to_string(),
        }
    }

    /// Reads the next line into `self.line` without its line end; false at the end.
    fn read_line(&mut self) -> Result<bool, ExtractError> {
        self.line.clear();
        let n = self
            .input
            .read_until(b'\n', &mut self.line)
            .map_err(|source| ExtractError::BadFile {
                file: self.file.clone(),
                line: self.line_no + 1,
                message: source.to_string(),
            })?;
        if n == 0 {
            return Ok(false);
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
        }
        Ok(true)
    }
}

/// A JSON object's members in order, each value as its JSON text.
struct Members<'de>(Vec<(Cow<'de, str>, &'de RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push((key.0, value));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Object)
    }
}

/// An object key, borrowed from the line unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> Visitor<'de> for Name {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(Name)
    }
}

/// A JSON value as the text a column holds: `None` for null, a string's characters, else
/// the value's JSON text as written.
fn json_text(value: &RawValue) -> Result<Option<Cow<'_, str>>, serde_json::Error> {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'n') if text == "null" => Ok(None),
        Some(b'"') if !text.contains('\\') => Ok(Some(Cow::Borrowed(&text[1..text.len() - 1]))),
        Some(b'"') => serde_json::from_str::<String>(text).map(|s| Some(Cow::Owned(s))),
        _ => Ok(Some(Cow::Borrowed(text))),
    }
}

impl ExportReader for NdjsonReader {
    fn next_batch(&mut self) -> Result<Option<TextBatch>, ExtractError> {
        let mut b = Builders::new(self.names.len(), self.batch_size);
        // Per declared column, the member holding its value.
        let mut slots: Vec<Option<usize>> = Vec::with_capacity(self.names.len());
        while b.lines.len() < self.batch_size {
            if !self.read_line()? {
                break;
            }
            self.line_no += 1;
            let line = self.line_no;
            let Ok(text) = std::str::from_utf8(&self.line) else {
                b.rejects.push(Reject {
                    line,
                    column: String::new(),
                    raw_value: None,
                    reason: "not valid UTF-8 (set the source encoding)".into(),
                    raw_record: String::new(),
                });
                continue;
            };
            let trimmed = text.trim_start_matches('\u{feff}').trim();
            if trimmed.is_empty() {
                continue;
            }
            let reject = |reason: String| Reject {
                line,
                column: String::new(),
                raw_value: None,
                reason,
                raw_record: cut(text.to_string()),
            };
            let members = match serde_json::from_str::<Members>(trimmed) {
                Ok(members) => members,
                Err(_) if serde_json::from_str::<IgnoredAny>(trimmed).is_ok() => {
                    b.rejects.push(reject("line is JSON but not an object".into()));
                    continue;
                }
                Err(e) => {
                    b.rejects.push(reject(format!("not valid JSON: {e}")));
                    continue;
                }
            };
            slots.clear();
            slots.resize(self.names.len(), None);
            for (m, (key, _)) in members.0.iter().enumerate() {
                match self.names.iter().position(|n| n == key) {
                    Some(i) => slots[i] = Some(m),
                    None if !self.header.extra.iter().any(|e| e == key) => self.header.extra.push(key.to_string()),
                    None => {}
                }
            }
            let texts = slots
                .iter()
                .map(|slot| slot.map(|m| json_text(members.0[m].1)).transpose().map(Option::flatten))
                .collect::<Result<Vec<_>, _>>();
            let texts = match texts {
                Ok(texts) => texts,
                Err(e) => {
                    b.rejects.push(reject(format!("not valid JSON: {e}")));
                    continue;
                }
            };
            for (builder, t) in b.columns.iter_mut().zip(texts) {
                builder.append_option(t.as_deref());
            }
            b.lines.push(line);
        }
        b.finish(&self.file, self.line_no)
    }

    fn header(&self) -> &HeaderReport {
        &self.header
    }
}

/// Reads Parquet, turning every declared column into text so one validation path checks
/// every format; timestamps without a zone are read as UTC.
pub struct ParquetReader {
    reader: ParquetRecordBatchReader,
    positions: Vec<Option<usize>>,
    header: HeaderReport,
    next_row: u64,
    file: String,
}

impl ParquetReader {
    /// Opens the local copy `path` of the file named `file` and matches its columns.
    pub fn open(path: &Path, file: &str, schema: &TableSchema, batch_size: usize) -> Result<Self, ExtractError> {
        let bad = |message: String| ExtractError::BadFile {
            file: file.to_string(),
            line: 0,
            message,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(open(path, file)?).map_err(|e| bad(e.to_string()))?;
        let names: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
        let (positions, header) = match_columns(schema, &names).map_err(bad)?;
        let reader = builder
            .with_batch_size(batch_size)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(ParquetReader {
            reader,
            positions,
            header,
            next_row: 1,
            file: file.to_string(),
        })
    }
}

fn to_text(array: &ArrayRef) -> Result<ArrayRef, arrow::error::ArrowError> {
    match array.data_type() {
        DataType::Utf8 => Ok(Arc::clone(array)),
        DataType::Timestamp(unit, None) => {
            let utc = cast(array, &DataType::Timestamp(*unit, Some("+00:00".into())))?;
            cast(&utc, &DataType::Utf8)
        }
        DataType::Timestamp(_, Some(_)) => {
            let micros = cast(
                array,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            )?;
            cast(&micros, &DataType::Utf8)
        }
        _ => cast(array, &DataType::Utf8),
    }
}

impl ExportReader for ParquetReader {
    fn next_batch(&mut self) -> Result<Option<TextBatch>, ExtractError> {
        let Some(batch) = self.reader.next() else {
            return Ok(None);
        };
        let batch = batch.map_err(|e| ExtractError::BadFile {
            file: self.file.clone(),
            line: self.next_row,
            message: e.to_string(),
        })?;
        let n = batch.num_rows();
        let mut columns = Vec::with_capacity(self.positions.len());
        for pos in &self.positions {
            let col: ArrayRef = match pos {
                Some(p) => to_text(batch.column(*p)).map_err(|e| ExtractError::BadFile {
                    file: self.file.clone(),
                    line: self.next_row,
                    message: format!("column `{}`: {e}", batch.schema().field(*p).name()),
                })?,
                None => Arc::new(StringArray::new_null(n)),
            };
            columns.push(col);
        }
        let lines = (self.next_row..self.next_row + n as u64).collect();
        self.next_row += n as u64;
        Ok(Some(TextBatch {
            lines,
            columns,
            rejects: Vec::new(),
        }))
    }

    fn header(&self) -> &HeaderReport {
        &self.header
    }
}

/// Debug helper for tests: the text of column `c`, row `r`.
#[cfg(test)]
pub(crate) fn text_at(batch: &TextBatch, c: usize, r: usize) -> Option<String> {
    let col = batch.columns[c].as_any().downcast_ref::<StringArray>()?;
    col.is_valid(r).then(|| col.value(r).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> TableSchema {
        TableSchema::parse(
            r#"{"fields":[{"name":"id"},{"name":"note"},{"name":"qty","type":"integer"}]}"#,
            Path::new("s.json"),
        )
        .unwrap()
    }

    fn csv_at(p: &Path, batch_size: usize) -> Result<CsvReader, ExtractError> {
        CsvReader::new(Box::new(File::open(p).unwrap()), "a.csv", &schema(), b',', batch_size)
    }

    fn read_all(reader: &mut dyn ExportReader) -> Vec<TextBatch> {
        let mut out = Vec::new();
        while let Some(b) = reader.next_batch().unwrap() {
            out.push(b);
        }
        out
    }

    #[test]
    fn csv_with_bom_crlf_quoted_newline_reordered_header_and_ragged_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(
            &p,
            "\u{feff}QTY,id,note,extra\r\n1,a,\"two\r\nlines\",x\r\n2,b\r\n3,c,\"say \"\"hi\"\"\",y\r\n",
        )
        .unwrap();
        let mut r = csv_at(&p, 1024).unwrap();
        assert_eq!(r.header().extra, vec!["extra"]);
        assert!(r.header().missing.is_empty());
        let batches = read_all(&mut r);
        let b = &batches[0];
        assert_eq!(b.lines, vec![2, 5]);
        assert_eq!(text_at(b, 0, 0).as_deref(), Some("a"));
        assert_eq!(text_at(b, 1, 0).as_deref(), Some("two\r\nlines"));
        assert_eq!(text_at(b, 2, 1).as_deref(), Some("3"));
        assert_eq!(text_at(b, 1, 1).as_deref(), Some("say \"hi\""));
        assert_eq!(b.rejects.len(), 1);
        assert_eq!(b.rejects[0].line, 4);
        assert_eq!(b.rejects[0].reason, "expected 4 fields, found 2");
        assert_eq!(b.rejects[0].raw_record, "2,b");
    }

    #[test]
    fn csv_missing_declared_column_is_reported_and_left_null() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "id,qty\na,1\n").unwrap();
        let mut r = csv_at(&p, 1024).unwrap();
        assert_eq!(r.header().missing, vec!["note"]);
        let b = read_all(&mut r).remove(0);
        assert_eq!(text_at(&b, 1, 0), None);
    }

    #[test]
    fn csv_invalid_utf8_is_rejected_not_mangled() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, b"id,note,qty\na,caf\xe9,1\nb,ok,2\n").unwrap();
        let mut r = csv_at(&p, 1024).unwrap();
        let b = read_all(&mut r).remove(0);
        assert_eq!(b.lines, vec![3]);
        assert_eq!(b.rejects[0].column, "note");
        assert!(b.rejects[0].reason.contains("UTF-8"));
    }

    #[test]
    fn an_unclosed_quote_running_to_the_end_of_the_file_is_an_error_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "id,note,qty\na,ok,1\nb,\"never closed,2\nc,gone,3\nd,gone,4\n").unwrap();
        let mut r = csv_at(&p, 1024).unwrap();
        let err = r.next_batch().unwrap_err().to_string();
        assert!(
            err.starts_with("a.csv, line 3:") && err.contains("never closed"),
            "{err}"
        );
        // Legit multi-line quoted fields at the very end of a file are not mistaken for it.
        for text in [
            "id,note,qty\na,\"two\nlines\",1",
            "id,qty,note\na,1,\"two\nlines\"",
            "id,qty,note\na,1,\"x\ny\"\n",
        ] {
            std::fs::write(&p, text).unwrap();
            let mut r = csv_at(&p, 1024).unwrap();
            let b = read_all(&mut r).remove(0);
            assert_eq!((b.num_rows(), b.rejects.len()), (1, 0), "{text:?}");
        }
    }

    #[test]
    fn old_mac_line_ends_number_lines_like_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "id,note,qty\ra,x,1\rb,\"two\rlines\",2\rc,y\rd,z,4").unwrap();
        let mut r = csv_at(&p, 2).unwrap();
        let batches = read_all(&mut r);
        let lines: Vec<u64> = batches.iter().flat_map(|b| b.lines.clone()).collect();
        assert_eq!(lines, vec![2, 3, 6]);
        let rejected: Vec<u64> = batches.iter().flat_map(|b| b.rejects.iter().map(|r| r.line)).collect();
        assert_eq!(rejected, vec![5]);
    }

    #[test]
    fn empty_csv_file_has_no_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "").unwrap();
        let mut r = csv_at(&p, 1024).unwrap();
        assert!(read_all(&mut r).is_empty());
    }

    #[test]
    fn ndjson_bad_lines_are_rejected_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.ndjson");
        std::fs::write(
            &p,
            "{\"id\":\"a\",\"qty\":1,\"x\":true}\n\n{\"id\": \"b\", trunc\n[1,2]\n{\"id\":\"c\",\"note\":null}\n",
        )
        .unwrap();
        let mut r = NdjsonReader::new(Box::new(File::open(&p).unwrap()), "a.ndjson", &schema(), 1024);
        let b = read_all(&mut r).remove(0);
        assert_eq!(b.lines, vec![1, 5]);
        assert_eq!(text_at(&b, 2, 0).as_deref(), Some("1"));
        assert_eq!(text_at(&b, 1, 1), None);
        let lines: Vec<u64> = b.rejects.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![3, 4]);
        assert!(b.rejects[0].reason.starts_with("not valid JSON"));
        assert_eq!(r.header().extra, vec!["x"]);
    }

    /// Values are the JSON text of each member: strings unescaped, numbers and other values
    /// as written; a key given twice keeps its last value; CRLF line ends are line ends.
    #[test]
    fn ndjson_values_are_their_json_text_and_a_repeated_key_keeps_its_last_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.ndjson");
        std::fs::write(
            &p,
            "{\"id\":\"a\\\"b\\u00e9\",\"qty\":12.50,\"note\":{\"k\": [1, 2]}}\r\n\
             {\"id\":\"x\",\"id\":\"y\",\"qty\":true,\"z\":1,\"\\u0079\":2}\r\n",
        )
        .unwrap();
        let mut r = NdjsonReader::new(Box::new(File::open(&p).unwrap()), "a.ndjson", &schema(), 1024);
        let b = read_all(&mut r).remove(0);
        assert!(b.rejects.is_empty(), "{:?}", b.rejects);
        assert_eq!(b.lines, vec![1, 2]);
        assert_eq!(text_at(&b, 0, 0).as_deref(), Some("a\"b\u{e9}"));
        assert_eq!(text_at(&b, 2, 0).as_deref(), Some("12.50"));
        assert_eq!(text_at(&b, 1, 0).as_deref(), Some("{\"k\": [1, 2]}"));
        assert_eq!(text_at(&b, 0, 1).as_deref(), Some("y"));
        assert_eq!(text_at(&b, 2, 1).as_deref(), Some("true"));
        assert_eq!(text_at(&b, 1, 1), None);
        // An escaped key is matched by its characters: `\u0079` is `y`, undeclared.
        assert_eq!(r.header().extra, vec!["z", "y"]);
    }

    /// Hands out at most `step` bytes per read, so line ends fall on every read boundary.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn newline_index_finds_every_line_end_whatever_the_read_sizes() {
        // Line ends of every kind at every offset modulo 8, runs of them, long lines.
        let mut text = Vec::new();
        for i in 0..200usize {
            text.extend(std::iter::repeat_n(b'x', i % 19));
            text.extend_from_slice([&b"\n"[..], b"\r\n", b"\r", b"\r\r\n", b"\n\r"][i % 5]);
        }
        text.extend_from_slice(b"end\r");
        let mut expected = Vec::new();
        for (i, b) in text.iter().enumerate() {
            if *b == b'\n' || (*b == b'\r' && text.get(i + 1) != Some(&b'\n')) {
                expected.push(i as u64);
            }
        }
        for step in [1, 2, 3, 7, 8, 9, 64, 4096] {
            let newlines = Rc::new(RefCell::new(VecDeque::new()));
            let mut index = NewlineIndex {
                inner: Trickle { data: &text, step },
                offset: 0,
                newlines: Rc::clone(&newlines),
                last_byte: Rc::new(std::cell::Cell::new(0)),
                pending_cr: None,
            };
            let mut buf = [0u8; 4096];
            while index.read(&mut buf).unwrap() > 0 {}
            assert_eq!(Vec::from(newlines.borrow().clone()), expected, "reads of {step} bytes");
        }
    }

    #[test]
    fn batches_split_at_batch_size_keep_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        let mut text = String::from("id,note,qty\n");
        for i in 0..10 {
            text.push_str(&format!("x{i},n,{i}\n"));
        }
        std::fs::write(&p, text).unwrap();
        let mut r = csv_at(&p, 4).unwrap();
        let batches = read_all(&mut r);
        assert_eq!(batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(batches[2].lines, vec![10, 11]);
    }
}
