//! Writing Parquet files: one [`ParquetSink`] per output file, used by extract (raw and
//! quarantine) and by the stage runner, so every table patron writes has the same settings.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Failure writing a Parquet file, with its path.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {message}")]
pub struct WriteError {
    /// File being written.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// An open Parquet file being written batch by batch.
pub struct ParquetSink {
    writer: ArrowWriter<File>,
    path: PathBuf,
    rows: u64,
}

impl ParquetSink {
    /// Creates `path` (and its parent folders) for batches of `schema`.
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self, WriteError> {
        let err = |message: String| WriteError {
            path: path.to_path_buf(),
            message,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        let file = File::create(path).map_err(|e| err(e.to_string()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("patron {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| err(e.to_string()))?;
        Ok(ParquetSink {
            writer,
            path: path.to_path_buf(),
            rows: 0,
        })
    }

    /// Appends one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).map_err(|e| WriteError {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// Finishes the file and syncs it to disk; returns (rows, bytes).
    pub fn close(self) -> Result<(u64, u64), WriteError> {
        let err = |message: String| WriteError {
            path: self.path.clone(),
            message,
        };
        let file = self.writer.into_inner().map_err(|e| err(e.to_string()))?;
        file.sync_all().map_err(|e| err(e.to_string()))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((self.rows, bytes))
    }
}
