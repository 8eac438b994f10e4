//! Keys seen before (the key filter): while a source is extracted, the primary key of each loaded row goes
//! through a Bloom filter, and the key of every row the filter may have seen already is
//! kept aside. Every key loaded more than once is among those kept (a Bloom filter never
//! misses a key it was given), along with a few keys loaded once (its false positives,
//! about 1% of them in the tests). Finding the duplicate keys afterwards
//! (`extract::duplicates`) then joins the raw table with this short list instead of
//! grouping every row by its key, which held a hash table of every key.
//!
//! The filter is a split-block Bloom filter (the layout Parquet's bloom filters use): a
//! key's 8 bits all fall in one 32-byte block, so a lookup touches one cache line. It
//! takes [`BITS_PER_KEY`] bits per key; when more keys arrive than it was sized for, a
//! filter twice as large is added, and a key counts as seen when any filter has it.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Filter bits per key: with 8 bits set per key, about 1% of the keys loaded once pass for
/// seen (measured in the tests, across four filters after growing).
pub const BITS_PER_KEY: usize = 12;

/// Keys looked up ahead of the one being added, their blocks loaded meanwhile.
const PREFETCH_AHEAD: usize = 16;

/// Keys the first filter is sized for when nothing better is known.
const MIN_CAPACITY: usize = 1 << 16;

/// Multipliers choosing a key's bit in each of the block's 8 words (Parquet's salts).
const SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// One split-block Bloom filter sized for `capacity` keys.
#[derive(Clone)]
struct Bloom {
    blocks: Vec<[u32; 8]>,
    capacity: usize,
    keys: usize,
}

impl Bloom {
    fn new(capacity: usize) -> Self {
        let blocks = (capacity * BITS_PER_KEY).div_ceil(256).max(1);
        Bloom {
            blocks: vec![[0; 8]; blocks],
            capacity,
            keys: 0,
        }
    }

    fn block(&self, hash: u64) -> usize {
        (((hash >> 32) * self.blocks.len() as u64) >> 32) as usize
    }

    fn mask(hash: u64) -> [u32; 8] {
        let low = hash as u32;
        SALT.map(|salt| 1u32 << (low.wrapping_mul(salt) >> 27))
    }

    /// Asks the CPU to load the block of `hash`, for a lookup a few keys later: the filter
    /// is far larger than the caches, and lookups one after another would each wait for
    /// memory.
    fn prefetch(&self, hash: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let block = &self.blocks[self.block(hash)];
            // SAFETY: a prefetch only hints the cache; it reads nothing and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    fn contains(&self, hash: u64) -> bool {
        let block = &self.blocks[self.block(hash)];
        Self::mask(hash).iter().zip(block).all(|(m, word)| word & m != 0)
    }

    fn insert(&mut self, hash: u64) {
        let i = self.block(hash);
        for (word, m) in self.blocks[i].iter_mut().zip(Self::mask(hash)) {
            *word |= m;
        }
        self.keys += 1;
    }
}

impl std::fmt::Debug for SeenKeys {
    /// A summary: the filters are megabytes of bits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeenKeys")
            .field("key", &self.key)
            .field("filters", &self.filters.len())
            .field("filter_bytes", &self.filter_bytes())
            .field("kept_rows", &self.kept.iter().map(|b| b.num_rows()).sum::<usize>())
            .finish()
    }
}

/// The hash of each of the `rows` rows of `keys` (columns of one key), combined over the
/// columns. Text is hashed without its leading and trailing spaces ([`trim_spaces`]).
fn hash_rows(keys: &[ArrayRef], rows: usize) -> datafusion::error::Result<Vec<u64>> {
    let keys: Vec<ArrayRef> = keys.iter().map(trim_spaces).collect();
    let mut hashes = vec![0u64; rows];
    create_hashes(&keys, &RandomState::default(), &mut hashes)?;
    Ok(hashes)
}

/// A text key column without leading and trailing spaces, as SQL's `TRIM` (which staging
/// applies to keys) leaves it, so `" E1"` and `"E1"` are one key; other columns as they
/// are. The column itself when no value has such a space, the common case.
fn trim_spaces(column: &ArrayRef) -> ArrayRef {
    let Some(text) = column.as_any().downcast_ref::<StringArray>() else {
        return Arc::clone(column);
    };
    let padded = |v: &str| v.starts_with(' ') || v.ends_with(' ');
    if !text.iter().flatten().any(padded) {
        return Arc::clone(column);
    }
    Arc::new(
        text.iter()
            .map(|v| v.map(|v| v.trim_matches(' ')))
            .collect::<StringArray>(),
    )
}

/// Where a primary key's columns are in the raw table.
#[derive(Debug, Clone)]
pub struct KeyColumns(Vec<usize>);

impl KeyColumns {
    /// The positions of `key` (column names) in `raw_schema`; `None` without a key or if a
    /// key column is missing.
    pub fn new(raw_schema: &Schema, key: &[String]) -> Option<Self> {
        if key.is_empty() {
            return None;
        }
        key.iter()
            .map(|k| raw_schema.index_of(k).ok())
            .collect::<Option<Vec<_>>>()
            .map(KeyColumns)
    }

    /// The key hash of each row of `batch` (a raw table batch): rows with equal keys (nulls
    /// equal to nulls, text compared without leading and trailing spaces) hash alike. Pure, so extract's workers compute it in parallel.
    pub fn hashes(&self, batch: &RecordBatch) -> Result<Vec<u64>, ArrowError> {
        hash_rows(&self.arrays(batch), batch.num_rows()).map_err(|e| ArrowError::ComputeError(e.to_string()))
    }

    fn arrays(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.0.iter().map(|&c| Arc::clone(batch.column(c))).collect()
    }
}

/// The keys of a source's loaded rows that may have been loaded before.
#[derive(Clone)]
pub struct SeenKeys {
    key: KeyColumns,
    /// Schema of the kept keys: the key columns of the raw table.
    schema: SchemaRef,
    filters: Vec<Bloom>,
    kept: Vec<RecordBatch>,
}

impl SeenKeys {
    /// For a raw table of `raw_schema` whose primary key is `key`, sized for about
    /// `expected_rows` rows (more only cost more memory per row).
    pub fn new(raw_schema: &Schema, key: KeyColumns, expected_rows: usize) -> Result<Self, ArrowError> {
        let schema = Arc::new(raw_schema.project(&key.0)?);
        Ok(SeenKeys {
            key,
            schema,
            filters: vec![Bloom::new(expected_rows.max(MIN_CAPACITY))],
            kept: Vec::new(),
        })
    }

    /// Adds the rows of `batch` whose key hashes are `hashes` ([`KeyColumns::hashes`]),
    /// keeping the keys of those the filters may have seen.
    pub fn add(&mut self, batch: &RecordBatch, hashes: &[u64]) -> Result<(), ArrowError> {
        let keys = self.key.arrays(batch);
        self.add_keys(&keys, hashes)
    }

    /// [`Self::add`] for the key columns alone.
    fn add_keys(&mut self, keys: &[ArrayRef], hashes: &[u64]) -> Result<(), ArrowError> {
        let mut seen = Vec::new();
        for (row, &hash) in hashes.iter().enumerate() {
            if let Some(&ahead) = hashes.get(row + PREFETCH_AHEAD) {
                self.filters.iter().for_each(|f| f.prefetch(ahead));
            }
            if self.filters.iter().any(|f| f.contains(hash)) {
                seen.push(row as u32);
                continue;
            }
            let last = self.filters.last_mut().expect("one filter at least");
            last.insert(hash);
            if last.keys >= last.capacity {
                let bigger = Bloom::new(last.capacity * 2);
                self.filters.push(bigger);
            }
        }
        if !seen.is_empty() {
            let rows = UInt32Array::from(seen);
            let kept = keys
                .iter()
                .map(|a| take(a, &rows, None))
                .collect::<Result<Vec<_>, _>>()?;
            self.kept.push(RecordBatch::try_new(Arc::clone(&self.schema), kept)?);
        }
        Ok(())
    }

    /// Adds every row of `batch` (a raw table batch), hashing here.
    pub fn add_batch(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let hashes = self.key.hashes(batch)?;
        self.add(batch, &hashes)
    }

    /// Adds every row of the raw table file at `path` (rows carried over from an earlier
    /// run), reading its key columns only. Blocking I/O.
    pub fn add_parquet(&mut self, path: &Path) -> Result<(), String> {
        let failed = |e: &dyn std::fmt::Display| format!("{}: reading its keys: {e}", path.display());
        let file = std::fs::File::open(path).map_err(|e| failed(&e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| failed(&e))?;
        let names: Vec<String> = self.schema.fields().iter().map(|f| f.name().clone()).collect();
        let roots: Vec<usize> = names
            .iter()
            .map(|n| builder.schema().index_of(n))
            .collect::<Result<_, _>>()
            .map_err(|e| failed(&e))?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        for batch in builder.with_projection(mask).build().map_err(|e| failed(&e))? {
            let batch = batch.map_err(|e| failed(&e))?;
            // The projection keeps the file's column order; the hash follows the key's.
            let keys = names
                .iter()
                .map(|n| batch.column_by_name(n).map(Arc::clone).ok_or_else(|| failed(n)))
                .collect::<Result<Vec<_>, _>>()?;
            let hashes = hash_rows(&keys, batch.num_rows()).map_err(|e| failed(&e))?;
            self.add_keys(&keys, &hashes).map_err(|e| failed(&e))?;
        }
        Ok(())
    }

    /// Schema of the kept keys.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The kept keys: a key may appear more than once, and some appear in one row only.
    pub fn into_kept(self) -> Vec<RecordBatch> {
        self.kept
    }

    /// Bytes the filters take.
    pub fn filter_bytes(&self) -> usize {
        self.filters.iter().map(|f| f.blocks.len() * 32).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Utf8, true),
            Field::new("line_no", DataType::Int64, true),
            Field::new("amount", DataType::Float64, true),
        ]))
    }

    fn batch(rows: &[(Option<String>, Option<i64>)]) -> RecordBatch {
        let ids = StringArray::from(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>());
        let lines = Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let amounts = arrow::array::Float64Array::from(vec![1.0; rows.len()]);
        RecordBatch::try_new(schema(), vec![Arc::new(ids), Arc::new(lines), Arc::new(amounts)]).unwrap()
    }

    /// A text key with spaces around it is the same key as without, as staging's `TRIM`
    /// sees it; other whitespace and inner spaces still tell keys apart.
    #[test]
    fn text_keys_hash_without_surrounding_spaces() {
        let key = vec!["order_id".to_string(), "line_no".to_string()];
        let columns = KeyColumns::new(&schema(), &key).unwrap();
        let ids = ["O1", " O1", "O1  ", " O1 ", "\tO1", "O 1", "O1"];
        let rows: Vec<_> = ids.iter().map(|id| (Some(id.to_string()), Some(1))).collect();
        let hashes = columns.hashes(&batch(&rows)).unwrap();
        assert!(hashes[1..4].iter().all(|&h| h == hashes[0]), "{hashes:?}");
        assert_ne!(hashes[4], hashes[0], "a tab is not trimmed, as in SQL");
        assert_ne!(hashes[5], hashes[0]);
        assert_eq!(hashes[6], hashes[0]);
        // A batch without padded keys hashes the same values.
        let plain = columns.hashes(&batch(&rows[..1])).unwrap();
        assert_eq!(plain[0], hashes[0]);
    }

    /// Every key loaded twice is kept, whatever batch its copies are in and however far the
    /// filter grew past its first size; keys loaded once are rarely kept.
    #[test]
    fn every_repeated_key_is_kept_and_few_others() {
        let key = vec!["order_id".to_string(), "line_no".to_string()];
        // Sized for far fewer rows than arrive, so several filters are added.
        let columns = KeyColumns::new(&schema(), &key).unwrap();
        let mut seen = SeenKeys::new(&schema(), columns, 1000).unwrap();
        let mut expected = HashMap::new();
        let n = 600_000u64;
        let mut rows = Vec::new();
        for i in 0..n {
            // Every 97th row repeats the key of a row 50_000 rows earlier; null keys too.
            let k = if i % 97 == 0 && i >= 50_000 { i - 50_000 } else { i };
            let id = (k % 1013 != 0).then(|| format!("O{k:08}"));
            let line = Some((k % 3) as i64);
            *expected.entry((id.clone(), line)).or_insert(0u32) += 1;
            rows.push((id, line));
            if rows.len() == 8192 {
                seen.add_batch(&batch(&rows)).unwrap();
                rows.clear();
            }
        }
        seen.add_batch(&batch(&rows)).unwrap();
        assert!(seen.filters.len() > 3, "the filter grew: {}", seen.filters.len());
        let kept = seen.into_kept();
        let mut kept_keys = std::collections::HashSet::new();
        let mut kept_rows = 0;
        for b in &kept {
            let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let lines = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            for r in 0..b.num_rows() {
                let id = ids.is_valid(r).then(|| ids.value(r).to_string());
                kept_keys.insert((id, lines.is_valid(r).then(|| lines.value(r))));
                kept_rows += 1;
            }
        }
        let repeated: Vec<_> = expected
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(k, _)| k.clone())
            .collect();
        assert!(repeated.len() > 5000, "the test repeats keys: {}", repeated.len());
        for k in &repeated {
            assert!(kept_keys.contains(k), "repeated key {k:?} was not kept");
        }
        let once = kept_keys.iter().filter(|k| expected[*k] == 1).count();
        // About 1% of the keys loaded once are false positives after this much growth.
        assert!(once < (n as usize) / 50, "{once} keys loaded once were kept");
        assert!(kept_rows >= repeated.len());
    }

    #[test]
    fn no_key_or_an_unknown_key_column_means_no_filter() {
        assert!(KeyColumns::new(&schema(), &[]).is_none());
        assert!(KeyColumns::new(&schema(), &["line_no".to_string(), "nope".to_string()]).is_none());
    }
}
