//! The prefix cache: the keys and values of recent prompts, kept by token block, so that
//! a prompt that starts with one of them (a conversation's next turn, a shared system
//! prompt) prefills only the rest.
//!
//! A sequence is cut into blocks of [`BLOCK_TOKENS`] tokens; each full block is named by a
//! *chain hash* ([`block_hashes`]): the hash of its tokens and of the hash of the block
//! before it, so one hash stands for the whole prefix up to the block's end. A shard keeps
//! the KV of a block of its layer range under (hash, range) when a request that ran it
//! finishes (the origin names the blocks in its `FinishRequest`); a later request whose
//! first step names a chain of hashes gets a cache made of those blocks and starts at the
//! chain's end. Every shard of a plan must hold the whole chain: the origin only names
//! chains it was told each node kept, and a node that no longer holds one (evicted,
//! restarted) answers a *prefix miss*, after which the origin runs the request without
//! it.
//!
//! Blocks are reference counted (`Arc`): a block a request is being restored from is never
//! evicted under it. The store is bounded in bytes; past the budget the least recently
//! used blocks go first, and a chain is touched from its end to its start, so that its
//! later blocks (useless without the earlier ones) are evicted before the earlier ones.
//!
//! Restoring copies the blocks into the request's own cache: the kernels read a cache as
//! one run of positions, and a copy of a few megabytes costs far less than the prefill it
//! saves. The copied keys and values are the very bits a prefill writes (the CPU kernels
//! give a row the same result however the prompt was chunked), so a reused prefix changes
//! no logit.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::model::sequence_cache::SequenceCache;

/// Tokens per block: the granularity of reuse.
pub const BLOCK_TOKENS: usize = 16;

/// The chain hash of every full block of `tokens` (a last partial block has none).
pub fn block_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut hashes = Vec::with_capacity(tokens.len() / BLOCK_TOKENS);
    let mut previous = 0u64;
    for block in tokens.chunks_exact(BLOCK_TOKENS) {
        let mut hasher = Sha256::new();
        hasher.update(previous.to_le_bytes());
        for token in block {
            hasher.update(token.to_le_bytes());
        }
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        previous = u64::from_le_bytes(first);
        hashes.push(previous);
    }
    hashes
}

/// A request named a prefix that this node's prefix cache does not hold (all of it, for
/// the layers asked): its origin runs it again without the prefix.
#[derive(Debug, thiserror::Error)]
#[error(
    "layers [{start}, {end}) of this node do not hold the prefix of {tokens} tokens the step names (evicted from the prefix cache, or never kept here)"
)]
pub struct PrefixMiss {
    pub tokens: usize,
    pub start: usize,
    pub end: usize,
}

/// Bytes the prefix cache of a node may hold by default.
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 512 << 20;

/// A block's place: its chain hash and the layer range its KV belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BlockKey {
    hash: u64,
    start: usize,
    end: usize,
}

struct Entry {
    /// The block's keys and values: a cache of [`BLOCK_TOKENS`] positions.
    kv: Arc<SequenceCache>,
    last_used: u64,
}

/// Counters of a prefix cache, for `/metrics` and the engine's info.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PrefixStats {
    /// Blocks held now, and their bytes.
    pub blocks: usize,
    pub bytes: usize,
    pub budget_bytes: usize,
    /// Requests that started from a cached prefix, and the tokens they did not prefill.
    pub hits: u64,
    pub reused_tokens: u64,
    /// Requests that named a prefix this node did not hold.
    pub misses: u64,
    /// Blocks taken in (new ones only) and evicted to stay within the budget.
    pub stored_blocks: u64,
    pub evictions: u64,
}

/// The blocks of one node's model, within a memory budget.
pub struct PrefixCache {
    budget: usize,
    blocks: HashMap<BlockKey, Entry>,
    /// A logical clock for least-recently-used order.
    clock: u64,
    stats: PrefixStats,
}

impl PrefixCache {
    /// A store of at most `budget` bytes (0 keeps nothing).
    pub fn new(budget: usize) -> Self {
        PrefixCache {
            budget,
            blocks: HashMap::new(),
            clock: 0,
            stats: PrefixStats {
                budget_bytes: budget,
                ..PrefixStats::default()
            },
        }
    }

    pub fn stats(&self) -> PrefixStats {
        PrefixStats {
            blocks: self.blocks.len(),
            ..self.stats
        }
    }

    /// The blocks of `hashes` for the layers `[start, end)`, in order, when every one is
    /// here (each is touched, the last first); None counts a miss.
    pub fn chain(
        &mut self,
        hashes: &[u64],
        start: usize,
        end: usize,
    ) -> Option<Vec<Arc<SequenceCache>>> {
        let keys: Vec<BlockKey> = hashes
            .iter()
            .map(|&hash| BlockKey { hash, start, end })
            .collect();
        if keys.iter().any(|key| !self.blocks.contains_key(key)) {
            self.stats.misses += 1;
            return None;
        }
        for key in keys.iter().rev() {
            self.clock += 1;
            if let Some(entry) = self.blocks.get_mut(key) {
                entry.last_used = self.clock;
            }
        }
        self.stats.hits += 1;
        self.stats.reused_tokens += (hashes.len() * BLOCK_TOKENS) as u64;
        Some(keys.iter().map(|key| self.blocks[key].kv.clone()).collect())
    }

    /// Whether the block `hash` of the layers `[start, end)` is here (touching it).
    pub fn touch(&mut self, hash: u64, start: usize, end: usize) -> bool {
        self.clock += 1;
        match self.blocks.get_mut(&BlockKey { hash, start, end }) {
            Some(entry) => {
                entry.last_used = self.clock;
                true
            }
            None => false,
        }
    }

    /// Whether the block `hash` of the layers `[start, end)` is here (not touching it).
    pub fn contains(&self, hash: u64, start: usize, end: usize) -> bool {
        self.blocks.contains_key(&BlockKey { hash, start, end })
    }

    /// Takes in a block (the caller checked with [`PrefixCache::touch`] that it is new),
    /// then evicts to stay within the budget. Returns whether the block stayed.
    pub fn insert(&mut self, hash: u64, start: usize, end: usize, kv: SequenceCache) -> bool {
        if kv.bytes > self.budget {
            return false;
        }
        self.clock += 1;
        let key = BlockKey { hash, start, end };
        self.stats.bytes += kv.bytes;
        if let Some(old) = self.blocks.insert(
            key,
            Entry {
                kv: Arc::new(kv),
                last_used: self.clock,
            },
        ) {
            self.stats.bytes -= old.kv.bytes;
        } else {
            self.stats.stored_blocks += 1;
        }
        self.evict(Some(key));
        self.blocks.contains_key(&key)
    }

    /// Evicts least recently used blocks that no request is being restored from, until
    /// the store is within its budget (never `keep`).
    fn evict(&mut self, keep: Option<BlockKey>) {
        while self.stats.bytes > self.budget {
            let victim = self
                .blocks
                .iter()
                .filter(|(key, entry)| Some(**key) != keep && Arc::strong_count(&entry.kv) == 1)
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(key, _)| *key);
            let Some(victim) = victim.or(keep) else {
                return;
            };
            if let Some(entry) = self.blocks.remove(&victim) {
                self.stats.bytes -= entry.kv.bytes;
                self.stats.evictions += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(bytes: usize) -> SequenceCache {
        SequenceCache {
            layers: Vec::new(),
            len: BLOCK_TOKENS,
            bytes,
        }
    }

    #[test]
    fn a_chain_hash_names_the_whole_prefix_up_to_its_block() {
        let a: Vec<u32> = (0..40).collect();
        let mut b = a.clone();
        b[3] = 99;
        let (ha, hb) = (block_hashes(&a), block_hashes(&b));
        assert_eq!(ha.len(), 2, "two full blocks of 16 in 40 tokens");
        assert_ne!(ha[0], hb[0]);
        // The second blocks hold the same tokens, but their prefixes differ.
        assert_ne!(ha[1], hb[1]);
        assert_eq!(block_hashes(&a[..32]), ha);
        assert!(block_hashes(&a[..15]).is_empty());
    }

    #[test]
    fn the_least_recently_used_blocks_go_first_and_a_chain_loses_its_end_first() {
        let mut cache = PrefixCache::new(300);
        for hash in [1, 2, 3] {
            assert!(cache.insert(hash, 0, 4, block(100)));
        }
        // Using the chain 1 → 2 touches 2 then 1: 3 is now the oldest.
        assert!(cache.chain(&[1, 2], 0, 4).is_some());
        assert!(cache.insert(4, 0, 4, block(100)));
        assert!(!cache.touch(3, 0, 4));
        // Of the chain, its end (2) is older than its start (1).
        assert!(cache.insert(5, 0, 4, block(100)));
        assert!(!cache.touch(2, 0, 4));
        assert!(cache.touch(1, 0, 4));
        let stats = cache.stats();
        assert_eq!((stats.blocks, stats.bytes, stats.evictions), (3, 300, 2));
        // Another layer range is another block.
        assert!(cache.chain(&[1], 4, 8).is_none());
        assert_eq!(cache.stats().misses, 1);
    }

    #[test]
    fn a_block_being_restored_is_never_evicted() {
        let mut cache = PrefixCache::new(200);
        cache.insert(1, 0, 4, block(100));
        cache.insert(2, 0, 4, block(100));
        let held = cache.chain(&[1], 0, 4).unwrap();
        // 1 is in use: the newer but unused 2 goes instead.
        cache.insert(3, 0, 4, block(100));
        assert!(cache.touch(1, 0, 4));
        assert!(!cache.touch(2, 0, 4));
        drop(held);
        // A block larger than the whole budget is not taken.
        assert!(!cache.insert(9, 0, 4, block(201)));
    }
}
