//! The CSV reader: the csv crate's parser over a line-end index of the file, so every
//! record gets the line it started on.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Read;
use std::rc::Rc;

use super::{Builders, ExportReader, HeaderReport, Reject, TextBatch, cut, match_columns};
use crate::config::TableSchema;
use crate::extract::ExtractError;

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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::text_at;
    use super::*;

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
