//! Dense indices for the distinct values of an `f64` column, so that a term
//! depending on one value (e.g. `ln(1 + T/α)` of the BG/NBD likelihood,
//! where `T` is at day granularity and takes a few thousand values among
//! millions of customers) is computed once per distinct value.
//!
//! Values are told apart by their bit patterns (so `-0.0` and `0.0` are
//! distinct, as in `group_summaries`). Lookup is a hash table with the
//! SplitMix64 finaliser (Steele, Lea and Flood 2014) as the hash: the bit
//! patterns of whole numbers end in long runs of zeros, which a plain
//! multiplicative hash would map to few buckets.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hasher for `u64` keys: the SplitMix64 finaliser.
#[derive(Default)]
struct SplitMix(u64);

impl Hasher for SplitMix {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// The distinct values seen so far, in first-seen order, with their indices.
#[derive(Default)]
pub struct DistinctValues {
    values: Vec<f64>,
    index: HashMap<u64, u32, BuildHasherDefault<SplitMix>>,
}

impl DistinctValues {
    /// The index of `v` among the distinct values, adding it if new; `None`
    /// once more than `u32::MAX + 1` distinct values would be needed.
    pub fn index_of(&mut self, v: f64) -> Option<u32> {
        let next = u32::try_from(self.values.len()).ok();
        match self.index.entry(v.to_bits()) {
            std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let i = next?;
                e.insert(i);
                self.values.push(v);
                Some(i)
            }
        }
    }

    /// The distinct values; the value with index `i` is at position `i`.
    pub fn values(&self) -> &[f64] {
        &self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_in_first_seen_order_and_bitwise() {
        let mut d = DistinctValues::default();
        let input = [3.0, 1.0 / 7.0, 3.0, 0.0, -0.0, 1.0 / 7.0, 156.0, 0.0];
        let got: Vec<u32> = input.iter().map(|&v| d.index_of(v).unwrap()).collect();
        assert_eq!(got, [0, 1, 0, 2, 3, 1, 4, 2]);
        assert_eq!(d.values().len(), 5);
        for (&v, &i) in input.iter().zip(&got) {
            assert_eq!(d.values()[i as usize].to_bits(), v.to_bits());
        }
    }

    #[test]
    fn many_whole_and_day_valued_numbers() {
        // Whole numbers and multiples of 1/7 (weeks at day granularity), each seen twice.
        let mut d = DistinctValues::default();
        let values: Vec<f64> = (0..20_000)
            .map(|i| if i % 2 == 0 { i as f64 } else { i as f64 / 7.0 })
            .collect();
        for round in 0..2 {
            for (i, &v) in values.iter().enumerate() {
                assert_eq!(d.index_of(v), Some(i as u32), "round {round}");
            }
        }
        assert_eq!(d.values(), &values[..]);
    }
}
