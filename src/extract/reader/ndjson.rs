//! The NDJSON reader: one JSON object per line, each value taken as its JSON text.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read};

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{Builders, ExportReader, HeaderReport, Reject, TextBatch, cut};
use crate::config::TableSchema;
use crate::extract::ExtractError;

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

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::super::test_support::*;
    use super::super::text_at;
    use super::*;

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
}
