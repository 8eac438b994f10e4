//! The memory pool a run's queries share (`engine.memory_limit_mb`).
//!
//! DataFusion's greedy pool serves whoever asks first. Operators that can spill (sorts,
//! aggregations) ask for memory batch after batch until the pool is full and only then
//! spill, so the operators that cannot spill and come next find nothing left: the merge
//! of a sort's spill files, the merge of sorted partitions, a second sort's merge. At 10M
//! sales lines a staging sort on two partitions failed that way under 4 GiB, its two
//! partition sorters holding 2 GB each while the merge of the two could not get 850 KB.
//!
//! [`HeadroomPool`] keeps a share of the limit ([`NON_SPILLABLE_SHARE`]) for operators
//! that cannot spill: spillable ones are refused beyond the rest, which makes them spill
//! there, while the others may use the whole limit.
//!
//! A sort's merges count in the spilling share too, though they are never refused by it:
//! when a sort spills, it merges every batch it holds, and the merge accounts the batches
//! as they move out of the sort's buffer, as memory that cannot spill. Counted only as
//! that, they freed the share for the next sort while still taking the same memory: at
//! 10M sales lines under 256 MiB, one sort's spill merge held 179.6 MB while another sort
//! took 56.4 MB more of the share, and the merge could not get its next 153 KB.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::resources_datafusion_err;
use datafusion::error::Result as DfResult;
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool, MemoryReservation, human_readable_size};

/// The share of the memory limit spilling operators leave to the others: one quarter.
pub const NON_SPILLABLE_SHARE: f64 = 0.25;

/// Most one sort or hash aggregation ([`AGGREGATE_CONSUMER`]) may hold before it spills.
/// The figure is the sorts': DataFusion's sort merges every batch it holds
/// when it spills, and the wider that merge the slower (at 10M sales lines `stg_marketing`
/// took 25.9 s with 384 MiB to sort in and 38-46 s with about 1.5 GiB, spilling as much).
/// What a spilling sort really holds is more than it accounts for: it sorts each batch into
/// a copy, releasing the batch's reservation, and keeps the merged batches until refused.
/// With 384 MiB, two staging sorts side by side put 393 MB of sorted copies and 348 MB of
/// merged batches on a 876 MB heap (heaptrack, 10M lines); with 192 MiB the run peaked at
/// 969-1087 MiB RSS against 1169-1187 MiB, in the same time (44.7-49.2 s in four runs against 47.2-47.7 s in two).
/// A sort holding nothing takes its next batch whatever its size.
/// Under a small limit, a sort holds at most [`SPILL_CAP_SHARE`] of it instead.
pub const SPILL_CAP_BYTES: usize = 192 * 1024 * 1024;

/// Most of the memory limit one sort or hash aggregation may hold before it spills, when that is less than
/// [`SPILL_CAP_BYTES`]: a spilling sort merges all it holds, and the merge takes more than
/// the sort held (at 10M sales lines under 128 MiB, a sort that held 87.7 MB spilled
/// through a merge of 118.7 MB and failed, the pool being full).
pub const SPILL_CAP_SHARE: f64 = 0.25;

/// Fewest spill files one merge pass of a sort reads at once (DataFusion's
/// `max_spill_merge_fan_in`; more files take more passes); see [`spill_merge_fan_in`].
pub const SPILL_MERGE_FAN_IN: usize = 16;

/// Memory limit per spill file a merge pass may read at once, above [`SPILL_MERGE_FAN_IN`]
/// files: 64 MiB, so 16 files up to a 1 GiB limit and 64 under the default 4 GiB.
pub const LIMIT_PER_MERGED_FILE: usize = 64 * 1024 * 1024;

/// Most spill files one merge pass of a sort reads under a memory limit of `limit` bytes.
/// DataFusion 55 otherwise seats as many spill files in one merge as the pool has room for,
/// reserving two of a file's largest batches per file and read buffer, and holds that for
/// as long as the merge streams (`sorts/multi_level_merge.rs`), so one merge could take
/// what the sorts after it need. A bounded fan-in costs another pass over the data when a
/// sort spilled more files: at 100M sales lines under 1 GiB (16 files) `stg_marketing`
/// spilled 16.7 GB, against 7.6 GB without a bound; at 10M under 4 GiB, 16 files made the
/// transform 12-21% slower than no bound, hence more files under larger limits.
pub fn spill_merge_fan_in(limit: usize) -> usize {
    SPILL_MERGE_FAN_IN.max(limit / LIMIT_PER_MERGED_FILE)
}

/// Hands the memory the allocator holds free back to the operating system; called when a
/// query's result is written. A stage's sorts, joins and writers free hundreds of
/// megabytes when it ends, but glibc's malloc keeps freed chunks in its heaps (a heap only
/// shrinks from its top on its own), so the process would start the next stage that much
/// larger: at 100M sales lines a run was killed by a 2 GiB memory cgroup four seconds into
/// the stage after `churn_features`, whose predecessors had peaked at 1.4-1.6 GiB.
/// `malloc_trim` returns every free page; with the `mimalloc` feature this does nothing.
pub fn release_free_memory() {
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives free pages back; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How DataFusion 55 names a sort's buffer (`ExternalSorter[<partition>]`).
const SORT_CONSUMER: &str = "ExternalSorter[";

/// What DataFusion 55's names of a hash aggregation's state contain
/// (`SingleHashAggregateStream[<partition>]`, likewise `Partial`, `Final`, `PartialReduce`
/// and the older `GroupedHashAggregateStream[<partition>] (<aggregates>)`). One that can
/// spill is capped like a sort. Uncapped, an aggregation of unsorted rows into millions of
/// groups held them all (with as much again reserved to sort them should it spill), then
/// emitted them as one batch, whose slices a sort after it counts at the whole batch's
/// size: in a churn snapshot at 10M sales lines, the aggregation of the sales lines into
/// 3.7M orders took the run from 763 MiB to 1155 MiB RSS, and the sort of its result
/// spilled once per batch (431 times). Capped, it spills its groups sorted and merges them
/// back in batches of their own.
const AGGREGATE_CONSUMER: &str = "HashAggregateStream[";

/// How DataFusion 55 names a sort's merges (`ExternalSorterMerge[<partition>]`): the merge
/// of its batches when it spills, of its spill files, and the reserve kept for them. They
/// cannot spill and are not capped.
const SORT_MERGE_CONSUMER: &str = "ExternalSorterMerge[";

/// A fixed-size pool in which spilling operators may hold at most
/// `limit * (1 - NON_SPILLABLE_SHARE)` together, sorts' merges included (see the module
/// doc).
#[derive(Debug)]
pub struct HeadroomPool {
    limit: usize,
    spillable_limit: usize,
    /// Most one sort or hash aggregation may hold ([`SPILL_CAP_BYTES`], [`SPILL_CAP_SHARE`]).
    spill_cap: usize,
    used: AtomicUsize,
    spillable: AtomicUsize,
    /// Held by sorts' merges ([`SORT_MERGE_CONSUMER`]).
    merging: AtomicUsize,
}

impl HeadroomPool {
    /// A pool of `limit` bytes.
    pub fn new(limit: usize) -> HeadroomPool {
        HeadroomPool {
            limit,
            spillable_limit: (limit as f64 * (1.0 - NON_SPILLABLE_SHARE)) as usize,
            spill_cap: SPILL_CAP_BYTES.min((limit as f64 * SPILL_CAP_SHARE) as usize),
            used: AtomicUsize::new(0),
            spillable: AtomicUsize::new(0),
            merging: AtomicUsize::new(0),
        }
    }

    /// The same pool with `spill_cap` bytes at most per sort or hash aggregation.
    pub fn with_spill_cap(mut self, spill_cap: usize) -> HeadroomPool {
        self.spill_cap = spill_cap;
        self
    }
}

/// Adds `additional` to `counter` unless that passes `limit`; the value before on refusal.
fn add_within(counter: &AtomicUsize, additional: usize, limit: usize) -> Result<usize, usize> {
    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        n.checked_add(additional).filter(|total| *total <= limit)
    })
}

impl MemoryPool for HeadroomPool {
    fn name(&self) -> &str {
        "headroom"
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        if let Some(share) = self.share_of(reservation) {
            share.fetch_add(additional, Ordering::Relaxed);
        }
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        if let Some(share) = self.share_of(reservation) {
            share.fetch_sub(shrink, Ordering::Relaxed);
        }
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        let refuse = |available: usize, what: &str| {
            resources_datafusion_err!(
                "Failed to allocate additional {} for {} with {} already allocated for this reservation - {} remain available {what}: {}",
                human_readable_size(additional),
                reservation.consumer().name(),
                human_readable_size(reservation.size()),
                human_readable_size(available),
                self
            )
        };
        let spills = reservation.consumer().can_spill();
        let consumer = reservation.consumer().name();
        // A sort or aggregation holding nothing is never capped: it has nothing to spill,
        // and refusing its first batch (one batch can pass the cap: a 2M-row batch of
        // scores took 393 MB) would fail the query.
        let held = reservation.size();
        let capped = consumer.starts_with(SORT_CONSUMER) || consumer.contains(AGGREGATE_CONSUMER);
        if spills && capped && held > 0 && held + additional > self.spill_cap {
            return Err(refuse(self.spill_cap.saturating_sub(held), "to one operator"));
        }
        if spills {
            // With the sorts' merges: refused, an operator holding something spills it;
            // one holding nothing could not, and would fail the query.
            let merging = if held > 0 {
                self.merging.load(Ordering::Relaxed)
            } else {
                0
            };
            let limit = self.spillable_limit.saturating_sub(merging);
            add_within(&self.spillable, additional, limit)
                .map_err(|held| refuse(limit.saturating_sub(held), "to operators that spill"))?;
        }
        if let Err(used) = add_within(&self.used, additional, self.limit) {
            if spills {
                self.spillable.fetch_sub(additional, Ordering::Relaxed);
            }
            return Err(refuse(self.limit.saturating_sub(used), "in the pool"));
        }
        if let Some(merging) = self.share_of(reservation).filter(|_| !spills) {
            merging.fetch_add(additional, Ordering::Relaxed);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

impl HeadroomPool {
    /// The share a reservation counts in besides the pool: spilling operators', sorts'
    /// merges', or none.
    fn share_of(&self, reservation: &MemoryReservation) -> Option<&AtomicUsize> {
        let consumer = reservation.consumer();
        if consumer.can_spill() {
            Some(&self.spillable)
        } else if consumer.name().starts_with(SORT_MERGE_CONSUMER) {
            Some(&self.merging)
        } else {
            None
        }
    }
}

impl fmt::Display for HeadroomPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}(used: {}, by operators that spill: {} and sorts' merges: {} of at most {}, pool_size: {})",
            self.name(),
            human_readable_size(self.used.load(Ordering::Relaxed)),
            human_readable_size(self.spillable.load(Ordering::Relaxed)),
            human_readable_size(self.merging.load(Ordering::Relaxed)),
            human_readable_size(self.spillable_limit),
            human_readable_size(self.limit)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::execution::memory_pool::MemoryConsumer;

    use super::*;

    #[test]
    fn spilling_operators_leave_a_quarter_to_the_others() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(1000));
        let sort_a = MemoryConsumer::new("sort a").with_can_spill(true).register(&pool);
        let sort_b = MemoryConsumer::new("sort b").with_can_spill(true).register(&pool);
        let merge = MemoryConsumer::new("merge").register(&pool);
        sort_a.try_grow(500).unwrap();
        sort_b.try_grow(250).unwrap();
        let refused = sort_b.try_grow(1).unwrap_err().to_string();
        assert!(
            refused.contains("Resources exhausted") && refused.contains("sort b") && refused.contains("spill"),
            "{refused}"
        );
        // What the sorts may not take, the merge can.
        merge.try_grow(250).unwrap();
        assert_eq!(pool.reserved(), 1000);
        assert!(merge.try_grow(1).is_err(), "the pool is full");
        // Freed spillable memory can be taken again, by either kind.
        sort_a.shrink(300);
        merge.try_grow(100).unwrap();
        sort_b.try_grow(200).unwrap();
        assert!(sort_a.try_grow(1).is_err());
        assert_eq!(pool.reserved(), 1000);
        // A refused request changes nothing.
        drop(merge);
        assert_eq!(pool.reserved(), 650);
        assert!(sort_a.try_grow(101).is_err(), "spillable would pass 750");
        sort_a.try_grow(100).unwrap();
        assert_eq!(pool.reserved(), 750);
    }

    #[test]
    fn one_sort_holds_at_most_the_cap_and_other_consumers_are_not_capped() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(1000).with_spill_cap(300));
        let sort = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&pool);
        let other_sort = MemoryConsumer::new("ExternalSorter[1]")
            .with_can_spill(true)
            .register(&pool);
        let window = MemoryConsumer::new("WindowAggStream[0]")
            .with_can_spill(true)
            .register(&pool);
        sort.try_grow(300).unwrap();
        let refused = sort.try_grow(1).unwrap_err().to_string();
        assert!(
            refused.contains("ExternalSorter[0]") && refused.contains("one operator"),
            "{refused}"
        );
        assert_eq!(pool.reserved(), 300, "a refused request changes nothing");
        other_sort.try_grow(300).unwrap();
        window.try_grow(150).unwrap();
        assert!(window.try_grow(1).is_err(), "the spillable share (750) is full");
        sort.shrink(100);
        window.try_grow(100).unwrap();
    }

    /// Every hash aggregation stream of DataFusion 55 is capped like a sort; the ordered
    /// ones (which hold a group or two at a time) are not.
    #[test]
    fn hash_aggregations_are_capped_like_sorts() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(10_000).with_spill_cap(300));
        for name in [
            "SingleHashAggregateStream[0]",
            "PartialHashAggregateStream[1]",
            "FinalHashAggregateStream[0]",
            "PartialReduceHashAggregateStream[0]",
            "GroupedHashAggregateStream[0] (sum(x))",
        ] {
            let aggregate = MemoryConsumer::new(name).with_can_spill(true).register(&pool);
            aggregate.try_grow(300).unwrap();
            assert!(aggregate.try_grow(1).is_err(), "{name} is capped");
        }
        let ordered = MemoryConsumer::new("OrderedFinalAggregateStream[0]")
            .with_can_spill(true)
            .register(&pool);
        ordered.try_grow(301).unwrap();
        ordered.try_grow(1).unwrap();
    }

    /// A sort's merge is never refused by the spilling share, but counts in it: another
    /// sort then spills instead of taking what the merge holds. A sort holding nothing
    /// still takes its first batch.
    #[test]
    fn sorts_merges_count_in_the_spilling_share() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(1000).with_spill_cap(1000));
        let sort = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&pool);
        let other_sort = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&pool);
        let merge = MemoryConsumer::new("ExternalSorterMerge[0]").register(&pool);
        let join = MemoryConsumer::new("HashJoinInput").register(&pool);
        sort.try_grow(100).unwrap();
        merge.try_grow(600).unwrap();
        let refused = sort.try_grow(51).unwrap_err().to_string();
        assert!(refused.contains("merges: 600.0 B"), "{refused}");
        sort.try_grow(50).unwrap();
        // A sort holding nothing takes its first batch: it has nothing to spill.
        other_sort.try_grow(150).unwrap();
        assert!(other_sort.try_grow(1).is_err(), "sorts and merges hold the share (750)");
        join.try_grow(100).unwrap();
        assert!(merge.try_grow(1).is_err(), "the pool is full");
        // What a merge gives back, a sort can take again.
        merge.shrink(400);
        sort.try_grow(200).unwrap();
        assert!(sort.try_grow(51).is_err(), "500 held by sorts and 200 by the merge");
        assert_eq!(pool.reserved(), 800);
        drop(merge);
        drop(join);
        assert_eq!(pool.reserved(), 500);
        sort.try_grow(250).unwrap();
        assert!(sort.try_grow(1).is_err());
    }

    /// Under a small limit one sort holds at most a quarter of it; under a large one, the
    /// fixed cap.
    #[test]
    fn the_spill_cap_is_a_quarter_of_a_small_limit() {
        let small: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(1000));
        let sort = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&small);
        sort.try_grow(250).unwrap();
        assert!(sort.try_grow(1).unwrap_err().to_string().contains("one operator"));
        let large: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(8 * SPILL_CAP_BYTES));
        let sort = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&large);
        sort.try_grow(SPILL_CAP_BYTES).unwrap();
        assert!(sort.try_grow(1).is_err());
    }

    #[test]
    fn a_merge_reads_16_spill_files_up_to_a_1_gib_limit_and_more_above() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(spill_merge_fan_in(64 * MIB), 16);
        assert_eq!(spill_merge_fan_in(1024 * MIB), 16);
        assert_eq!(spill_merge_fan_in(4096 * MIB), 64);
    }

    /// A sort that holds nothing has nothing to spill: its first batch is taken even when
    /// it alone passes the cap (within the pool's limits), and the next one is refused.
    #[test]
    fn a_sort_holding_nothing_takes_a_batch_larger_than_the_cap() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(1000).with_spill_cap(300));
        let sort = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&pool);
        sort.try_grow(500).unwrap();
        assert!(sort.try_grow(1).unwrap_err().to_string().contains("one operator"));
        sort.free();
        assert!(sort.try_grow(751).is_err(), "the spillable share (750) still holds");
        sort.try_grow(750).unwrap();
    }
}
