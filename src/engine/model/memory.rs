//! What a whole model needs in memory, as the partitioner weighs it against each node's
//! free memory.

/// A model's weights and the KV cache reserve of its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelMemory {
    pub weights: u64,
    pub kv_reserve: u64,
    /// The tokens the reserve is for.
    pub reserve_tokens: usize,
}

impl ModelMemory {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_reserve
    }
}
