//! The threads of one source's extract. Reader threads turn the files into [`TextBatch`]es
//! (one file after another per reader; a file is read by one thread, start to end), a pool
//! of workers validates the batches and encodes the raw table's row groups, and the calling
//! thread hands out that work and takes the results back strictly in file, then line order:
//! it keeps the jobs in a queue in the order it submitted them and always waits for the
//! oldest. The output, the metrics and the first error are therefore the same whatever the
//! number of threads; with one thread everything runs on the calling thread.
//!
//! Bounded everywhere: each reader runs at most [`READ_AHEAD`] batches ahead, and at most
//! twice as many batches and as many row groups as there are threads are in the pool.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, Scope, ScopedJoinHandle};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::codec::Codec;
use super::reader::{ExportReader, HeaderReport, TextBatch};
use super::{ExtractError, FileMetrics, LocalInput, open_reader, quarantine_batch, validate};
use crate::config::{Compression, Format, SourcePlan};
use crate::key_filter::{KeyColumns, SeenKeys};
use crate::storage::{EncodedRowGroup, ParquetSink, RowGroupSink, WriteError};

/// Batches a reader thread may read ahead of the batch being handed out.
const READ_AHEAD: usize = 4;

/// Input bytes per row assumed when sizing the primary key filter: a short CSV row, an
/// NDJSON line (which repeats the field names), a Parquet row (compressed). A guess too
/// low costs filter memory, one too high a second filter.
fn bytes_per_row_guess(format: Format) -> u64 {
    match format {
        Format::Csv => 64,
        Format::Ndjson => 128,
        Format::Parquet => 16,
    }
}

/// How many times larger a compressed CSV or NDJSON export is once decompressed, assumed
/// when sizing the primary key filter. Sized from the compressed bytes, the filter had to
/// grow three times on a 10M-line zstd set; each filter that fills adds its false
/// positives, and the duplicate-key phase took 9.1 s against 3.0 s on the same rows
/// uncompressed. (zstd -1 made the generated exports 3.8-14x smaller.)
const DECOMPRESSED_RATIO_GUESS: u64 = 8;

/// Rows `x`'s files may hold, for sizing the primary key filter.
fn expected_rows(x: &Extraction) -> usize {
    let bytes: u64 = x.files.iter().map(|f| text_bytes(x.source, &f.name, f.size)).sum();
    (bytes / bytes_per_row_guess(x.source.format)) as usize
}

/// The bytes of text a file of `source` named `name` of `size` bytes is assumed to hold:
/// its size, times [`DECOMPRESSED_RATIO_GUESS`] when a CSV or NDJSON file is read through
/// a decompressor (under `compression = "auto"`, by its extension).
fn text_bytes(source: &SourcePlan, name: &str, size: u64) -> u64 {
    let compressed = match source.compression {
        Compression::None => false,
        Compression::Auto => Codec::from_extension(name).is_some(),
        _ => true,
    };
    if compressed && source.format != Format::Parquet {
        size.saturating_mul(DECOMPRESSED_RATIO_GUESS)
    } else {
        size
    }
}

/// The primary key filter for `x`, when its source has a key.
fn key_filter(x: &Extraction) -> Result<Option<SeenKeys>, ExtractError> {
    let Some(key) = &x.key else { return Ok(None) };
    SeenKeys::new(x.raw_schema, key.clone(), expected_rows(x))
        .map(Some)
        .map_err(|e| ExtractError::Worker {
            source_name: x.source.name.clone(),
            message: format!("primary key filter: {e}"),
        })
}

/// What to extract: one source's files and where its rows go.
pub(super) struct Extraction<'a> {
    /// The source.
    pub source: &'a SourcePlan,
    /// Its files, in the order their rows are written.
    pub files: &'a [LocalInput],
    /// Fills the quarantine's run id column.
    pub run_id: &'a str,
    /// Schema of the raw table.
    pub raw_schema: &'a SchemaRef,
    /// Schema of the quarantine table.
    pub q_schema: &'a SchemaRef,
    /// Rows per batch read.
    pub batch_size: usize,
    /// Where the primary key is, when the source declares one: loaded rows' keys then go
    /// through a [`SeenKeys`] filter.
    pub key: Option<KeyColumns>,
}

/// What extract counted, file by file.
pub(super) struct Extracted {
    /// Per file, in file order.
    pub files: Vec<FileMetrics>,
    /// Quarantine entries written.
    pub entries: u64,
    /// Latest datetime value in the loaded rows.
    pub max_ts: Option<i64>,
    /// The keys that may repeat, when the source has a primary key.
    pub seen: Option<SeenKeys>,
}

/// Extracts `x` with `threads` threads (1: all on the calling thread), writing the loaded
/// rows to `raw` and the rejected ones to `quarantine`, and closes both files.
pub(super) fn run<'x>(
    x: &'x Extraction<'x>,
    threads: usize,
    raw: RowGroupSink,
    quarantine: ParquetSink,
) -> Result<Extracted, ExtractError> {
    let threads = threads.max(1);
    thread::scope(|scope| {
        let workers = if threads == 1 { 0 } else { threads };
        let (mut events, readers) = if threads == 1 {
            (Events::inline(x), Vec::new())
        } else {
            spawn_readers(scope, x, (threads / 2).clamp(1, x.files.len().max(1)))?
        };
        let pool = Pool::new(scope, workers, &x.source.name)?;
        let seen = key_filter(x)?;
        let mut output = Output::new(x, &pool, raw, quarantine, 2 * workers, seen);
        let result = consume(x, &mut events, &mut output).and_then(|()| output.finish());
        // Readers blocked on a full channel see it closed and stop; workers finish their
        // queued jobs (whose results nobody waits for any more) and stop.
        drop(events);
        let healthy = pool.join() & join_all(readers);
        match result {
            Ok(extracted) if healthy => Ok(extracted),
            Ok(_) => Err(worker_failed(&x.source.name)),
            Err(e) => Err(e),
        }
    })
}

/// Joins every thread (all of them: a thread that panicked and is left unjoined would make
/// the scope panic); false when one of them panicked.
fn join_all<'scope, T>(threads: impl IntoIterator<Item = ScopedJoinHandle<'scope, T>>) -> bool {
    threads
        .into_iter()
        .map(ScopedJoinHandle::join)
        .filter(Result::is_err)
        .count()
        == 0
}

/// Hands the batches of every file, in order, to `output`.
fn consume<'p, 'scope, 'x: 'scope>(
    x: &'x Extraction<'x>,
    events: &mut Events,
    output: &mut Output<'p, 'scope, 'x>,
) -> Result<(), ExtractError> {
    for (index, file) in x.files.iter().enumerate() {
        let mut first_batch = true;
        loop {
            match events.next(index) {
                Ok(Event::Batch(batch)) => {
                    if !std::mem::take(&mut first_batch) {
                        crate::failpoint::hit_with(|| format!("extract.{}.mid_file", x.source.name));
                    }
                    output.batch(&file.name, batch)?;
                }
                Ok(Event::End(header)) => {
                    output.end_file(file, header)?;
                    break;
                }
                Err(e) => {
                    // Work on earlier rows still in flight may fail too: its error comes first.
                    output.settle()?;
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// The error for a thread of extract that stopped unexpectedly (a bug: it panicked).
fn worker_failed(source: &str) -> ExtractError {
    ExtractError::Worker {
        source_name: source.to_string(),
        message: "an extract thread stopped unexpectedly".into(),
    }
}

/// What a reader yields for one file.
enum Event {
    /// The next batch of the file.
    Batch(TextBatch),
    /// The file is read to the end.
    End(HeaderReport),
}

/// The events of the files, file by file.
enum Events<'a> {
    /// Read on the calling thread.
    Inline {
        x: &'a Extraction<'a>,
        /// The file being read, once opened.
        reader: Option<Box<dyn ExportReader>>,
    },
    /// Read by reader threads: file `i` by reader `i % readers.len()`.
    Threads {
        receivers: Vec<Receiver<Result<Event, ExtractError>>>,
        source: &'a str,
    },
}

impl<'a> Events<'a> {
    fn inline(x: &'a Extraction<'a>) -> Self {
        Events::Inline { x, reader: None }
    }

    /// The next event of file `index`; a file's events must be taken to its end before the
    /// next file's.
    fn next(&mut self, index: usize) -> Result<Event, ExtractError> {
        match self {
            Events::Inline { x, reader } => {
                let current = match reader {
                    Some(r) => r,
                    None => reader.insert(open_reader(x.source, &x.files[index], x.batch_size)?),
                };
                match current.next_batch()? {
                    Some(batch) => Ok(Event::Batch(batch)),
                    None => {
                        let header = current.header().clone();
                        *reader = None;
                        Ok(Event::End(header))
                    }
                }
            }
            Events::Threads { receivers, source } => {
                let n = receivers.len();
                receivers[index % n]
                    .recv()
                    .unwrap_or_else(|_| Err(worker_failed(source)))
            }
        }
    }
}

/// Starts `n` reader threads, reader `r` reading files `r`, `r + n`, `r + 2n`... in turn.
/// A reader stops at its first error (after sending it) or when its receiver is dropped.
fn spawn_readers<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    x: &'env Extraction<'env>,
    n: usize,
) -> Result<(Events<'env>, Vec<ScopedJoinHandle<'scope, ()>>), ExtractError> {
    let mut receivers = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for r in 0..n {
        let (tx, rx) = mpsc::sync_channel(READ_AHEAD);
        let handle = thread::Builder::new()
            .name(format!("extract-read-{r}"))
            .spawn_scoped(scope, move || read_files(x, r, n, &tx))
            .map_err(|e| spawn_failed(&x.source.name, &e))?;
        receivers.push(rx);
        handles.push(handle);
    }
    let events = Events::Threads {
        receivers,
        source: &x.source.name,
    };
    Ok((events, handles))
}

fn spawn_failed(source: &str, e: &std::io::Error) -> ExtractError {
    ExtractError::Worker {
        source_name: source.to_string(),
        message: format!("cannot start a thread: {e}"),
    }
}

/// A reader thread's loop: files `first`, `first + step`... as events into `tx`.
fn read_files(x: &Extraction, first: usize, step: usize, tx: &SyncSender<Result<Event, ExtractError>>) {
    let mut events = Events::inline(x);
    for index in (first..x.files.len()).step_by(step) {
        loop {
            let event = events.next(index);
            let (failed, end) = (event.is_err(), matches!(event, Ok(Event::End(_))));
            if tx.send(event).is_err() || failed {
                return;
            }
            if end {
                break;
            }
        }
    }
}

/// A job for the pool.
type Task<'scope> = Box<dyn FnOnce() + Send + 'scope>;

/// A fixed set of worker threads running jobs in the order submitted; with no workers,
/// jobs run right away on the submitting thread.
struct Pool<'scope> {
    tasks: Option<mpsc::Sender<Task<'scope>>>,
    workers: Vec<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> Pool<'scope> {
    fn new<'env>(scope: &'scope Scope<'scope, 'env>, workers: usize, source: &str) -> Result<Self, ExtractError> {
        let mut pool = Pool {
            tasks: None,
            workers: Vec::with_capacity(workers),
        };
        if workers == 0 {
            return Ok(pool);
        }
        let (tx, rx) = mpsc::channel::<Task<'scope>>();
        let rx = Arc::new(Mutex::new(rx));
        for w in 0..workers {
            let rx = Arc::clone(&rx);
            let handle = thread::Builder::new()
                .name(format!("extract-work-{w}"))
                .spawn_scoped(scope, move || {
                    loop {
                        // The lock is released before the task runs.
                        let task = match rx.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match task {
                            Ok(task) => task(),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| spawn_failed(source, &e))?;
            pool.workers.push(handle);
        }
        pool.tasks = Some(tx);
        Ok(pool)
    }

    /// Runs `job` on a worker; its result arrives on the returned channel (which closes
    /// without a result if the job could not run).
    fn submit<T: Send + 'scope>(&self, job: impl FnOnce() -> T + Send + 'scope) -> Receiver<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let task = move || {
            let _ = tx.send(job());
        };
        match &self.tasks {
            Some(tasks) => {
                // A send fails only when every worker is gone; the task (and `tx`) is then
                // dropped, closing `rx`.
                let _ = tasks.send(Box::new(task));
            }
            None => task(),
        }
        rx
    }

    /// Lets the workers finish and joins them; false when one of them panicked.
    fn join(mut self) -> bool {
        self.tasks = None;
        join_all(self.workers.drain(..))
    }
}

/// One validated batch, with what it adds to its file's counts.
struct Checked {
    read: u64,
    loaded: u64,
    rejected: u64,
    max_ts: Option<i64>,
    good: RecordBatch,
    /// Key hashes of the `good` rows (empty without a key).
    key_hashes: Result<Vec<u64>, String>,
    /// Quarantine rows: the reader's rejects, then validation's.
    quarantine: Vec<RecordBatch>,
    entries: u64,
}

/// Validates one batch of `file` (a pool job).
fn check(x: &Extraction, file: &str, batch: TextBatch) -> Checked {
    let checked = validate::validate(&x.source.schema, x.raw_schema, &batch, file);
    let mut quarantine = Vec::new();
    let mut entries = 0;
    for rejects in [&batch.rejects, &checked.rejects] {
        if !rejects.is_empty() {
            entries += rejects.len() as u64;
            quarantine.push(quarantine_batch(x.q_schema, x.run_id, &x.source.name, file, rejects));
        }
    }
    let key_hashes = match &x.key {
        Some(key) if checked.good.num_rows() > 0 => key.hashes(&checked.good).map_err(|e| e.to_string()),
        _ => Ok(Vec::new()),
    };
    Checked {
        key_hashes,
        read: (batch.num_rows() + batch.rejects.len()) as u64,
        loaded: checked.good.num_rows() as u64,
        rejected: (checked.rejected_rows + batch.rejects.len()) as u64,
        max_ts: checked.max_timestamp,
        good: checked.good,
        quarantine,
        entries,
    }
}

/// Work handed out, in order.
enum Pending {
    /// A batch being validated.
    Batch(Receiver<Checked>),
    /// The end of a file, after its batches.
    End(LocalInput, HeaderReport),
}

/// Counts of the file whose batches are being taken back.
#[derive(Default)]
struct Counts {
    read: u64,
    loaded: u64,
    rejected: u64,
    max_ts: Option<i64>,
}

/// The calling thread's side: submits validation and encoding, takes the results back in
/// order, writes them, counts.
struct Output<'p, 'scope, 'x> {
    x: &'x Extraction<'x>,
    pool: &'p Pool<'scope>,
    raw: RowGroupSink,
    quarantine: ParquetSink,
    /// Jobs of each kind in the pool before the oldest is waited for.
    in_flight: usize,
    checking: VecDeque<Pending>,
    encoding: VecDeque<Receiver<Result<EncodedRowGroup, WriteError>>>,
    /// Loaded rows not yet in a row group.
    group: VecDeque<RecordBatch>,
    group_rows: usize,
    counts: Counts,
    files: Vec<FileMetrics>,
    entries: u64,
    max_ts: Option<i64>,
    seen: Option<SeenKeys>,
}

fn latest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.max(b)
}

impl<'p, 'scope, 'x: 'scope> Output<'p, 'scope, 'x> {
    fn new(
        x: &'x Extraction<'x>,
        pool: &'p Pool<'scope>,
        raw: RowGroupSink,
        quarantine: ParquetSink,
        in_flight: usize,
        seen: Option<SeenKeys>,
    ) -> Self {
        Output {
            seen,
            x,
            pool,
            raw,
            quarantine,
            in_flight,
            checking: VecDeque::new(),
            encoding: VecDeque::new(),
            group: VecDeque::new(),
            group_rows: 0,
            counts: Counts::default(),
            files: Vec::with_capacity(x.files.len()),
            entries: 0,
            max_ts: None,
        }
    }

    /// Hands one batch of the file named `file` to the pool.
    fn batch(&mut self, file: &'x str, batch: TextBatch) -> Result<(), ExtractError> {
        let x = self.x;
        self.checking
            .push_back(Pending::Batch(self.pool.submit(move || check(x, file, batch))));
        self.take_checked(self.in_flight)
    }

    /// Marks the end of `file`: its metrics are recorded once its batches are taken back.
    fn end_file(&mut self, file: &LocalInput, header: HeaderReport) -> Result<(), ExtractError> {
        self.checking.push_back(Pending::End(file.clone(), header));
        self.take_checked(self.in_flight)
    }

    /// Takes back everything submitted so far.
    fn settle(&mut self) -> Result<(), ExtractError> {
        self.take_checked(0)?;
        self.take_encoded(0)
    }

    /// Takes back validated batches, oldest first, until at most `keep` are pending.
    fn take_checked(&mut self, keep: usize) -> Result<(), ExtractError> {
        while self.checking.len() > keep {
            match self.checking.pop_front() {
                Some(Pending::Batch(rx)) => {
                    let checked = rx.recv().map_err(|_| worker_failed(&self.x.source.name))?;
                    self.add(checked)?;
                }
                Some(Pending::End(file, header)) => self.record_file(file, header),
                None => break,
            }
        }
        Ok(())
    }

    fn add(&mut self, c: Checked) -> Result<(), ExtractError> {
        self.counts.read += c.read;
        self.counts.loaded += c.loaded;
        self.counts.rejected += c.rejected;
        self.counts.max_ts = latest(self.counts.max_ts, c.max_ts);
        self.entries += c.entries;
        for rows in &c.quarantine {
            self.quarantine.write(rows)?;
        }
        if let Some(seen) = self.seen.as_mut().filter(|_| c.good.num_rows() > 0) {
            let failed = |message: String| ExtractError::Worker {
                source_name: self.x.source.name.clone(),
                message: format!("hashing primary keys: {message}"),
            };
            let hashes = c.key_hashes.map_err(failed)?;
            seen.add(&c.good, &hashes).map_err(|e| failed(e.to_string()))?;
        }
        if c.good.num_rows() > 0 {
            self.group_rows += c.good.num_rows();
            self.group.push_back(c.good);
        }
        while self.group_rows >= self.raw.row_group_rows() {
            self.encode(self.raw.row_group_rows())?;
        }
        Ok(())
    }

    /// Hands the first `rows` loaded rows to the pool as one row group.
    fn encode(&mut self, rows: usize) -> Result<(), ExtractError> {
        let mut batches = Vec::new();
        let mut needed = rows.min(self.group_rows);
        while needed > 0
            && let Some(batch) = self.group.pop_front()
        {
            let n = batch.num_rows();
            if n > needed {
                self.group.push_front(batch.slice(needed, n - needed));
                batches.push(batch.slice(0, needed));
                needed = 0;
            } else {
                batches.push(batch);
                needed -= n;
            }
        }
        self.group_rows -= rows.min(self.group_rows);
        let mut encoder = self.raw.encoder()?;
        self.encoding.push_back(self.pool.submit(move || {
            for batch in &batches {
                encoder.write(batch)?;
            }
            encoder.finish()
        }));
        self.take_encoded(self.in_flight / 2)
    }

    /// Appends encoded row groups to the raw file, oldest first, until at most `keep` are
    /// pending.
    fn take_encoded(&mut self, keep: usize) -> Result<(), ExtractError> {
        while self.encoding.len() > keep {
            let Some(rx) = self.encoding.pop_front() else { break };
            let group = rx.recv().map_err(|_| worker_failed(&self.x.source.name))??;
            self.raw.append(group)?;
        }
        Ok(())
    }

    fn record_file(&mut self, file: LocalInput, header: HeaderReport) {
        if !header.extra.is_empty() || !header.missing.is_empty() {
            tracing::warn!(
                file = %file.name,
                missing = ?header.missing,
                extra = ?header.extra,
                "columns differ from the declared schema"
            );
        }
        let counts = std::mem::take(&mut self.counts);
        self.max_ts = latest(self.max_ts, counts.max_ts);
        self.files.push(FileMetrics {
            path: file.name,
            bytes: file.size,
            version: file.version,
            reused: false,
            max_timestamp_micros: counts.max_ts,
            rows_read: counts.read,
            rows_loaded: counts.loaded,
            rows_quarantined: counts.rejected,
            missing_columns: header.missing,
            extra_columns: header.extra,
        });
    }

    /// Takes back all the work, writes the last row group and closes both files.
    fn finish(mut self) -> Result<Extracted, ExtractError> {
        self.take_checked(0)?;
        if self.group_rows > 0 {
            self.encode(self.group_rows)?;
        }
        self.take_encoded(0)?;
        self.raw.close()?;
        self.quarantine.close()?;
        Ok(Extracted {
            files: self.files,
            entries: self.entries,
            max_ts: self.max_ts,
            seen: self.seen,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use arrow::compute::concat_batches;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::super::{SourceMetrics, extract_with};
    use super::*;
    use crate::config::{Compression, Format, TableSchema};
    use crate::generate::{GenerateOptions, generate};
    use crate::names::SOURCE_LINE_COLUMN;
    use crate::names::quarantine::LINE;
    use crate::storage::Layout;

    fn sales_source() -> SourcePlan {
        let schema_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/sales.schema.json");
        let text = std::fs::read_to_string(&schema_file).unwrap();
        SourcePlan {
            name: "sales".into(),
            location: "sales/*.csv".into(),
            format: Format::Csv,
            schema: TableSchema::parse(&text, &schema_file).unwrap(),
            schema_file,
            delimiter: b',',
            error_budget: 1.0,
            compression: Compression::Auto,
            encoding: encoding_rs::UTF_8,
            incremental: false,
        }
    }

    #[test]
    fn the_key_filter_is_sized_for_the_decompressed_text() {
        let mut source = sales_source();
        assert_eq!(text_bytes(&source, "s/a.csv", 1000), 1000);
        assert_eq!(
            text_bytes(&source, "s/a.csv.zst", 1000),
            1000 * DECOMPRESSED_RATIO_GUESS
        );
        assert_eq!(text_bytes(&source, "s/a.CSV.GZ", 1000), 1000 * DECOMPRESSED_RATIO_GUESS);
        source.compression = Compression::None;
        assert_eq!(text_bytes(&source, "s/a.csv.zst", 1000), 1000);
        source.compression = Compression::Zstd;
        assert_eq!(text_bytes(&source, "s/a.csv", 1000), 1000 * DECOMPRESSED_RATIO_GUESS);
        source.format = Format::Parquet;
        assert_eq!(
            text_bytes(&source, "s/a.parquet", 1000),
            1000,
            "Parquet is sized by its own bytes"
        );
    }

    /// All rows of a Parquet file, in file order.
    fn rows(path: &Path) -> RecordBatch {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    /// Row groups of a Parquet file.
    fn row_groups(path: &Path) -> usize {
        let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
        builder.metadata().num_row_groups()
    }

    fn lines(batch: &RecordBatch, column: &str) -> Vec<u64> {
        let c = batch.column_by_name(column).unwrap();
        let c = c.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
        c.values().iter().map(|&l| l as u64).collect()
    }

    /// Extracts `files` with `threads` threads into `out/<threads>/`, small batches and
    /// row groups so both cross every boundary many times.
    fn extract(files: &[LocalInput], out: &Path, threads: usize) -> Result<(SourceMetrics, PathBuf), ExtractError> {
        let dir = out.join(threads.to_string());
        let layout = Layout {
            row_group_rows: 700,
            ..Layout::default()
        };
        let dirs = (&dir.join("raw"), &dir.join("q"));
        let m = extract_with(&sales_source(), files, "run", (dirs.0, dirs.1), 37, threads, &layout)?;
        Ok((m, dir))
    }

    /// A raw table's key and event time columns are written without a dictionary (their
    /// values rarely repeat), the other columns with one.
    #[test]
    fn keys_and_event_times_have_no_dictionary() {
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join("sales.csv");
        let mut text = String::from("order_id,line_no,customer_id,order_ts,channel,quantity,unit_price\n");
        for i in 0..200 {
            text.push_str(&format!(
                "O{i},1,C{},2024-01-01T00:{:02}:00Z,web,1,2.5\n",
                i % 7,
                i % 60
            ));
        }
        std::fs::write(&csv, text).unwrap();
        let files = [LocalInput::local(&csv).unwrap()];
        let (raw, q) = (tmp.path().join("raw"), tmp.path().join("q"));
        super::super::extract_source(&sales_source(), &files, "run", &raw, &q, 64, 1).unwrap();
        let file = std::fs::File::open(raw.join("sales/part-00000.parquet")).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let group = builder.metadata().row_group(0);
        let dictionary = |name: &str| {
            let column = group
                .columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .unwrap();
            column.dictionary_page_offset().is_some()
        };
        let source = sales_source();
        let event_time = source.schema.event_time.clone().unwrap();
        for plain in source.schema.primary_key.iter().chain([&event_time]) {
            assert!(!dictionary(plain), "{plain} has a dictionary");
        }
        assert!(dictionary("customer_id") && dictionary("channel"));
    }

    #[test]
    fn threads_give_the_same_rows_order_metrics_and_quarantine_as_one_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let opts = GenerateOptions {
            customers: 3000,
            out_dir: data.clone(),
            messy: true,
            ..GenerateOptions::default()
        };
        generate(&opts).unwrap();
        let mut paths: Vec<PathBuf> = glob::glob(&data.join("sales/*.csv").to_string_lossy())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        paths.sort();
        // A small file between the big ones, with a row the reader rejects and one that
        // validation rejects.
        let small = tmp.path().join("small.csv");
        std::fs::write(
            &small,
            "order_id,line_no,customer_id,order_ts,quantity,unit_price\n\
             S1,1,C1,2024-01-01T00:00:00Z,1,2.5\nS2,1\nS3,x,C3,2024-01-01T00:00:00Z,1,2.5\n",
        )
        .unwrap();
        paths.insert(1, small);
        let files: Vec<LocalInput> = paths.iter().map(|p| LocalInput::local(p).unwrap()).collect();
        assert!(files.len() >= 3, "{files:?}");

        let out = tmp.path().join("out");
        let (one, one_dir) = extract(&files, &out, 1).unwrap();
        assert!(one.rows_quarantined > 2 && one.rows_loaded > 10 * 700, "{one:?}");
        let raw_one = rows(&one_dir.join("raw/sales/part-00000.parquet"));
        let q_one = rows(&one_dir.join("q/sales/part-00000.parquet"));
        // The sequential run itself keeps file, then line order.
        let mut expected = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let n = one.files[i].rows_loaded as usize;
            let start = expected.len();
            let file_lines = &lines(&raw_one, SOURCE_LINE_COLUMN)[start..start + n];
            assert!(file_lines.windows(2).all(|w| w[0] < w[1]), "{}", f.name);
            expected.extend_from_slice(file_lines);
        }
        assert_eq!(expected.len(), raw_one.num_rows());

        for threads in [2, 3, 8] {
            let (many, dir) = extract(&files, &out, threads).unwrap();
            let raw = dir.join("raw/sales/part-00000.parquet");
            let raw_many = rows(&raw);
            assert!(raw_many == raw_one, "raw rows differ with {threads} threads");
            assert_eq!(row_groups(&raw), raw_one.num_rows().div_ceil(700));
            let q = rows(&dir.join("q/sales/part-00000.parquet"));
            assert_eq!(
                lines(&q, LINE),
                lines(&q_one, LINE),
                "quarantine lines with {threads} threads"
            );
            assert!(q == q_one, "quarantine rows differ with {threads} threads");
            let json = |m: &SourceMetrics| {
                let mut v = serde_json::to_value(m).unwrap();
                v.as_object_mut().unwrap().remove("duration_ms");
                v
            };
            assert_eq!(json(&many), json(&one), "metrics with {threads} threads");
        }
    }

    #[test]
    fn the_first_error_in_file_order_wins_whatever_the_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let header = "order_id,line_no,customer_id,order_ts,quantity,unit_price\n";
        let good: String = (0..500)
            .map(|i| format!("O{i},1,C{i},2024-01-01T00:00:00Z,1,2.5\n"))
            .collect();
        let mut paths = Vec::new();
        for (name, text) in [
            ("a.csv", format!("{header}{good}")),
            // An unclosed quote: the error names the line of its record, found at the end.
            (
                "b.csv",
                format!("{header}{good}X,1,\"C,2024-01-01T00:00:00Z,1,2.5\n{good}"),
            ),
            // Unreadable from its first line: a reader that gets here first must not win.
            ("c.csv", "a,a\n".to_string()),
            ("d.csv", format!("{header}{good}")),
        ] {
            let p = tmp.path().join(name);
            std::fs::write(&p, text).unwrap();
            paths.push(p);
        }
        let files: Vec<LocalInput> = paths.iter().map(|p| LocalInput::local(p).unwrap()).collect();
        let out = tmp.path().join("out");
        let sequential = extract(&files, &out, 1).unwrap_err().to_string();
        assert!(sequential.contains("b.csv, line 502"), "{sequential}");
        for threads in [2, 4, 8] {
            let parallel = extract(&files, &out, threads).unwrap_err().to_string();
            assert_eq!(parallel, sequential, "{threads} threads");
        }
    }
}
