//! The prefix cache at work in a node's model: a new request's cache restored from the
//! blocks its first step names, and a finished request's blocks kept (see
//! [`super::prefix_cache`]).

use super::loaded_model::LoadedModel;
use super::prefix_cache::{BLOCK_TOKENS, PrefixMiss, PrefixStats};
use crate::engine::model::loaded_shard::LoadedShard;
use crate::engine::model::sequence_cache::SequenceCache;

impl LoadedModel {
    /// A new request's cache on `shard`: empty, or made of the prefix cache's blocks
    /// `prefix` (a [`PrefixMiss`] when one of them is not here).
    pub(super) fn start_cache(
        &self,
        shard: &LoadedShard,
        prefix: &[u64],
    ) -> anyhow::Result<SequenceCache> {
        if prefix.is_empty() {
            return Ok(shard.new_cache());
        }
        let range = shard.shard();
        let (start, end) = (range.start_layer, range.end_layer);
        // The blocks are held (counted) while they are copied, so they cannot be evicted;
        // the store's lock is not.
        let blocks = self
            .prefixes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .chain(prefix, start, end)
            .ok_or(PrefixMiss {
                tokens: prefix.len() * BLOCK_TOKENS,
                start,
                end,
            })?;
        let parts: Vec<&SequenceCache> = blocks.iter().map(|b| b.as_ref()).collect();
        shard.join_blocks(&parts)
    }

    /// Drops every cache of `request_id` on this node, first keeping in the prefix cache
    /// the blocks `hashes` name (the full blocks of the tokens the request ran, as
    /// [`super::prefix_cache::block_hashes`] names them) of every layer range it ran here.
    /// Returns how many leading blocks of `hashes` the prefix cache now holds for every
    /// such range (0 when it ran none here).
    pub fn finish_keeping(&self, request_id: &str, hashes: &[u64]) -> usize {
        let taken = self
            .caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_prefix(&format!("{request_id}@"));
        let mut kept: Option<usize> = None;
        for (key, cache) in taken {
            let Some((start, end)) = range_of_key(&key) else {
                continue;
            };
            let Some(shard) = self
                .shard_for(start, end)
                .ok()
                .and_then(|range| self.loaded_shard(&range))
            else {
                continue;
            };
            let here = self.keep_blocks(&shard, &cache, hashes);
            kept = Some(kept.map_or(here, |k| k.min(here)));
        }
        kept.unwrap_or(0)
    }

    /// Keeps the blocks of `cache` that `hashes` name (those the cache covers) and returns
    /// how many leading ones the prefix cache holds. The chain is stored from its end to
    /// its start, so that its start is the most recently used (evicted last).
    fn keep_blocks(&self, shard: &LoadedShard, cache: &SequenceCache, hashes: &[u64]) -> usize {
        let (start, end) = (shard.shard().start_layer, shard.shard().end_layer);
        let count = hashes.len().min(cache.len / BLOCK_TOKENS);
        let mut prefixes = self.prefixes.lock().unwrap_or_else(|p| p.into_inner());
        for i in (0..count).rev() {
            if prefixes.touch(hashes[i], start, end) {
                continue;
            }
            match shard.cut_block(cache, i * BLOCK_TOKENS, (i + 1) * BLOCK_TOKENS) {
                Ok(block) => {
                    prefixes.insert(hashes[i], start, end, block);
                }
                Err(error) => {
                    tracing::warn!(
                        "cannot keep a prefix block of layers [{start}, {end}): {error:#}"
                    );
                    return 0;
                }
            }
        }
        (0..count)
            .take_while(|&i| prefixes.contains(hashes[i], start, end))
            .count()
    }

    /// The prefix cache's counters.
    pub fn prefix_stats(&self) -> PrefixStats {
        self.prefixes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats()
    }
}

/// The layer range of a cache key (`request@start-end`).
fn range_of_key(key: &str) -> Option<(usize, usize)> {
    let (_, range) = key.rsplit_once('@')?;
    let (start, end) = range.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?))
}
