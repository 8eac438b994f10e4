//! The Parquet reader: every declared column cast to text, so one validation path
//! checks every format.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{ExportReader, HeaderReport, TextBatch, match_columns, open};
use crate::config::TableSchema;
use crate::extract::ExtractError;

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
