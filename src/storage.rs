//! Writing Parquet files: one [`ParquetSink`] per output file, used by extract (raw and
//! quarantine) and by the stage runner, so every table patron writes has the same settings;
//! the Delta publish writes with the same [`Layout`] (see `publish::delta`).
//!
//! A [`Layout`] bounds the rows per row group and, for a stage declaring
//! `-- @cluster_by: customer_id`, adds a bloom filter on the cluster columns. Every column
//! gets page-level statistics and the page index (column and offset indexes), so a reader
//! filtering on a sorted column skips the row groups and pages whose min/max cannot match.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

/// Rows per row group unless the pipeline says otherwise (`publish.row_group_rows`): small
/// enough that a lookup by a clustered key reads a sliver of a large table, large enough
/// that the per-group metadata stays small.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 65_536;

/// Rows per data page of a clustered table (Parquet's default is 20000): a lookup by the
/// cluster column decodes about one page per column.
pub const CLUSTERED_PAGE_ROWS: usize = 4096;

/// How a table's Parquet files are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Most rows per row group.
    pub row_group_rows: usize,
    /// Columns the rows are sorted by first (`-- @cluster_by`): each gets a bloom filter.
    pub cluster_by: Vec<String>,
    /// Columns whose values rarely repeat (a source's key and event time), written without
    /// a dictionary: one would be as large as the column and cost a hash per value.
    pub plain: Vec<String>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            cluster_by: Vec::new(),
            plain: Vec::new(),
        }
    }
}

impl Layout {
    /// The Parquet writer settings: Snappy, page statistics and page index on every column,
    /// `row_group_rows` per row group, no dictionary for `_source_line` and the `plain` columns; with cluster columns, pages of
    /// [`CLUSTERED_PAGE_ROWS`] rows and bloom filters (no dictionary) on those columns.
    pub fn writer_properties(&self) -> WriterProperties {
        let mut builder = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("patron {}", env!("CARGO_PKG_VERSION")))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)));
        if !self.cluster_by.is_empty() {
            builder = builder.set_data_page_row_count_limit(CLUSTERED_PAGE_ROWS);
        }
        // Line numbers are unique within a file: a dictionary of them is as large as the
        // column, and building it per row group was a visible cost of extract.
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(crate::names::SOURCE_LINE_COLUMN), false);
        for column in &self.plain {
            builder = builder.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), false);
        }
        for column in &self.cluster_by {
            let path = ColumnPath::from(column.as_str());
            // Plain encoding: a dictionary page holds the whole row group's ids and would be
            // read in full by every lookup.
            builder = builder
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_bloom_filter_enabled(path.clone(), true)
                .set_column_bloom_filter_max_ndv(path, self.row_group_rows.max(1) as u64);
        }
        builder.build()
    }
}

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
    /// Creates `path` (and its parent folders) for batches of `schema`, default layout.
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self, WriteError> {
        Self::create_with(path, schema, &Layout::default())
    }

    /// Creates `path` (and its parent folders) for batches of `schema`, laid out as `layout`.
    pub fn create_with(path: &Path, schema: SchemaRef, layout: &Layout) -> Result<Self, WriteError> {
        let err = |message: String| WriteError {
            path: path.to_path_buf(),
            message,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        let file = File::create(path).map_err(|e| err(e.to_string()))?;
        let writer =
            ArrowWriter::try_new(file, schema, Some(layout.writer_properties())).map_err(|e| err(e.to_string()))?;
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
        finish_file(file, self.rows, &self.path)
    }
}

/// Syncs a written file to disk; returns (rows, bytes).
fn finish_file(file: File, rows: u64, path: &Path) -> Result<(u64, u64), WriteError> {
    file.sync_all().map_err(|e| write_error(path, &e))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((rows, bytes))
}

/// A Parquet file written row group by row group, the row groups encoded elsewhere: each
/// [`RowGroupEncoder`] from [`RowGroupSink::encoder`] can run on its own thread, and the
/// encoded groups are appended in the order their encoders were made. Same settings and
/// file layout as a [`ParquetSink`] of the same [`Layout`] given the same rows per group.
pub struct RowGroupSink {
    writer: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    path: PathBuf,
    /// Encoders handed out so far (the next one's row group index).
    encoders: usize,
    rows: u64,
    row_group_rows: usize,
}

/// Encodes the rows of one row group into Parquet pages, in memory; `Send`, so it can
/// run on a worker thread. Made by [`RowGroupSink::encoder`].
pub struct RowGroupEncoder {
    writers: Vec<ArrowColumnWriter>,
    schema: SchemaRef,
    path: PathBuf,
    rows: u64,
}

/// The encoded column chunks of one row group, ready for [`RowGroupSink::append`].
pub struct EncodedRowGroup {
    chunks: Vec<ArrowColumnChunk>,
    rows: u64,
}

impl RowGroupSink {
    /// Creates `path` (and its parent folders) for row groups of `schema`, laid out as
    /// `layout` (whose `row_group_rows` the caller cuts the row groups by:
    /// [`RowGroupSink::row_group_rows`]).
    pub fn create(path: &Path, schema: SchemaRef, layout: &Layout) -> Result<Self, WriteError> {
        // Made through an ArrowWriter, so the file carries the same Arrow schema metadata.
        let (writer, factory) = ParquetSink::create_with(path, Arc::clone(&schema), layout)?
            .writer
            .into_serialized_writer()
            .map_err(|e| write_error(path, &e))?;
        Ok(RowGroupSink {
            writer,
            factory,
            schema,
            path: path.to_path_buf(),
            encoders: 0,
            rows: 0,
            row_group_rows: layout.row_group_rows.max(1),
        })
    }

    /// Most rows the caller should put in one row group.
    pub fn row_group_rows(&self) -> usize {
        self.row_group_rows
    }

    /// An encoder for the next row group; append what it encodes in the order the encoders
    /// were made.
    pub fn encoder(&mut self) -> Result<RowGroupEncoder, WriteError> {
        let writers = self
            .factory
            .create_column_writers(self.encoders)
            .map_err(|e| write_error(&self.path, &e))?;
        self.encoders += 1;
        Ok(RowGroupEncoder {
            writers,
            schema: Arc::clone(&self.schema),
            path: self.path.clone(),
            rows: 0,
        })
    }

    /// Writes one encoded row group to the file.
    pub fn append(&mut self, group: EncodedRowGroup) -> Result<(), WriteError> {
        if group.rows == 0 {
            return Ok(());
        }
        let mut row_group = self.writer.next_row_group().map_err(|e| write_error(&self.path, &e))?;
        for chunk in group.chunks {
            chunk
                .append_to_row_group(&mut row_group)
                .map_err(|e| write_error(&self.path, &e))?;
        }
        row_group.close().map_err(|e| write_error(&self.path, &e))?;
        self.rows += group.rows;
        Ok(())
    }

    /// Finishes the file and syncs it to disk; returns (rows, bytes).
    pub fn close(self) -> Result<(u64, u64), WriteError> {
        let file = self.writer.into_inner().map_err(|e| write_error(&self.path, &e))?;
        finish_file(file, self.rows, &self.path)
    }
}

/// The error for a failure writing `path`.
fn write_error(path: &Path, e: &dyn std::fmt::Display) -> WriteError {
    WriteError {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl RowGroupEncoder {
    /// Encodes one batch of the row group's rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        let err = |e: parquet::errors::ParquetError| write_error(&self.path, &e);
        let mut writers = self.writers.iter_mut();
        for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
            for leaf in compute_leaves(field, column).map_err(err)? {
                let Some(writer) = writers.next() else {
                    return Err(write_error(
                        &self.path,
                        &"batch has more columns than the file's schema",
                    ));
                };
                writer.write(&leaf).map_err(err)?;
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// The encoded row group.
    pub fn finish(self) -> Result<EncodedRowGroup, WriteError> {
        let chunks = self
            .writers
            .into_iter()
            .map(ArrowColumnWriter::close)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| write_error(&self.path, &e))?;
        Ok(EncodedRowGroup {
            chunks,
            rows: self.rows,
        })
    }
}
