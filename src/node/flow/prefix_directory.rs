//! What an origin knows of its peers' prefix caches (`engine::serve::prefix_cache`): the
//! blocks each node said it kept, per layer range, when a request of this origin finished
//! there. A new request reuses the longest prefix of its prompt that every node of its
//! plan kept for the range the plan gives it; every shard of a plan must start from the
//! same position, so one node lacking a block limits all.
//!
//! The directory may be wrong the other way (a node evicted a block, or restarted): the
//! node then answers a prefix miss, the origin forgets what it claimed and runs the
//! request again without the prefix. It is never wrong in a way that changes an answer:
//! a block is named by the chain hash of every token before its end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::topology::Partition;

/// Blocks remembered per node and layer range, the oldest forgotten first.
const BLOCKS_PER_RANGE: usize = 1 << 16;

/// The blocks one node kept for one layer range.
#[derive(Default)]
struct Kept {
    blocks: HashSet<u64>,
    order: VecDeque<u64>,
}

/// Per (node, layer range): the blocks it kept.
#[derive(Default)]
pub(super) struct PrefixDirectory {
    kept: Mutex<HashMap<(String, usize, usize), Kept>>,
}

impl PrefixDirectory {
    /// `node` keeps `hashes` for the layers `[start, end)`.
    pub(super) fn record(&self, node: &str, start: usize, end: usize, hashes: &[u64]) {
        let mut kept = self.lock();
        let entry = kept.entry((node.to_string(), start, end)).or_default();
        for &hash in hashes {
            if entry.blocks.insert(hash) {
                entry.order.push_back(hash);
            }
        }
        while entry.order.len() > BLOCKS_PER_RANGE {
            if let Some(old) = entry.order.pop_front() {
                entry.blocks.remove(&old);
            }
        }
    }

    /// How many leading blocks of `hashes` every node of `plan` kept for its range.
    pub(super) fn reusable(&self, plan: &Partition, hashes: &[u64]) -> usize {
        // A group's members keep no prefixes (their caches are slices).
        if plan.has_groups() {
            return 0;
        }
        let kept = self.lock();
        plan.entries
            .iter()
            .map(|entry| {
                let key = (entry.node_id.clone(), entry.start_layer, entry.end_layer);
                kept.get(&key).map_or(0, |k| {
                    hashes.iter().take_while(|h| k.blocks.contains(h)).count()
                })
            })
            .min()
            .unwrap_or(0)
    }

    /// Forgets `hashes` on every node of `plan` (one of them lacked them).
    pub(super) fn forget(&self, plan: &Partition, hashes: &[u64]) {
        let mut kept = self.lock();
        for entry in &plan.entries {
            let key = (entry.node_id.clone(), entry.start_layer, entry.end_layer);
            if let Some(k) = kept.get_mut(&key) {
                for hash in hashes {
                    k.blocks.remove(hash);
                }
                k.order.retain(|h| k.blocks.contains(h));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, usize, usize), Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::PartitionEntry;

    fn plan(entries: &[(&str, usize, usize)]) -> Partition {
        Partition {
            model_id: "m".into(),
            n_layers: 30,
            entries: entries
                .iter()
                .map(|(node, start, end)| PartitionEntry {
                    node_id: node.to_string(),
                    address: "127.0.0.1:1".into(),
                    start_layer: *start,
                    followers: Vec::new(),
                    end_layer: *end,
                })
                .collect(),
        }
    }

    #[test]
    fn a_prefix_is_reusable_as_far_as_every_node_of_the_plan_kept_it() {
        let directory = PrefixDirectory::default();
        directory.record("a", 0, 15, &[1, 2, 3]);
        directory.record("b", 15, 30, &[1, 2]);
        let ring = plan(&[("a", 0, 15), ("b", 15, 30)]);
        assert_eq!(directory.reusable(&ring, &[1, 2, 3, 4]), 2);
        assert_eq!(directory.reusable(&ring, &[9, 2]), 0);
        // Another split of the layers: nothing known.
        assert_eq!(directory.reusable(&plan(&[("a", 0, 30)]), &[1]), 0);
        directory.forget(&ring, &[2]);
        assert_eq!(directory.reusable(&ring, &[1, 2, 3]), 1);
    }
}
