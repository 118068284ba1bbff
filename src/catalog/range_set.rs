//! A set of byte ranges, kept sorted and merged: which bytes of a sparse file are there.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Disjoint, sorted, non-adjacent `[start, end)` ranges (stored as pairs in JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RangeSet {
    ranges: Vec<[u64; 2]>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let (mut start, mut end) = (range.start, range.end);
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &[s, e] in &self.ranges {
            if e < start || s > end {
                kept.push([s, e]);
            } else {
                start = start.min(s);
                end = end.max(e);
            }
        }
        kept.push([start, end]);
        kept.sort_unstable();
        self.ranges = kept;
    }

    pub fn remove(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &[s, e] in &self.ranges {
            if e <= range.start || s >= range.end {
                kept.push([s, e]);
                continue;
            }
            if s < range.start {
                kept.push([s, range.start]);
            }
            if e > range.end {
                kept.push([range.end, e]);
            }
        }
        self.ranges = kept;
    }

    /// Whether every byte of `range` is in the set.
    pub fn contains(&self, range: &Range<u64>) -> bool {
        range.is_empty()
            || self
                .ranges
                .iter()
                .any(|&[s, e]| s <= range.start && range.end <= e)
    }

    /// The parts of `range` not in the set, in order.
    pub fn missing(&self, range: &Range<u64>) -> Vec<Range<u64>> {
        let mut gaps = Vec::new();
        let mut position = range.start;
        for &[s, e] in &self.ranges {
            if e <= position {
                continue;
            }
            if s >= range.end {
                break;
            }
            if s > position {
                gaps.push(position..s);
            }
            position = position.max(e);
            if position >= range.end {
                break;
            }
        }
        if position < range.end {
            gaps.push(position..range.end);
        }
        gaps
    }

    /// Bytes in the set.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|[s, e]| e - s).sum()
    }

    /// Whether the set holds well-formed ranges (after reading it from disk).
    pub fn is_well_formed(&self) -> bool {
        self.ranges.iter().all(|[s, e]| s < e) && self.ranges.windows(2).all(|w| w[0][1] < w[1][0])
    }
}

#[cfg(test)]
mod tests {
    use super::RangeSet;

    #[test]
    fn insert_merges_and_missing_reports_gaps() {
        let mut set = RangeSet::new();
        set.insert(10..20);
        set.insert(30..40);
        assert_eq!(set.missing(&(0..50)), vec![0..10, 20..30, 40..50]);
        set.insert(20..30);
        assert_eq!(set.missing(&(0..50)), vec![0..10, 40..50]);
        assert!(set.contains(&(12..38)));
        assert!(!set.contains(&(5..15)));
        set.remove(15..35);
        assert_eq!(set.missing(&(10..40)), vec![15..35]);
        assert_eq!(set.total(), 10);
        assert!(set.is_well_formed());
    }
}
