//! How much memory a cluster needs to run a model: its weights plus a reserve for the
//! key/value cache.
//!
//! - Weights: the files' size when the registry knows it (the bytes are loaded as they
//!   are: quantized blocks stay quantized), otherwise parameters × bits per weight of the
//!   quantization, marked as an estimate.
//! - KV reserve: one sequence of [`KV_RESERVE_TOKENS`] tokens (or the model's context
//!   length if shorter), keys and values, every layer, 16-bit:
//!   `2 × layers × kv_heads × head_dim × tokens × 2 bytes`. GPUs keep the cache in 16
//!   bits; the CPU build keeps it in f32 and needs twice that.
//!
//! A cluster's share of this follows its layers: a node running a third of the layers
//! needs about a third (plus the embedding on the first node and the head on the last).

use std::ops::Range;

use serde::Serialize;

use super::registry::ModelEntry;

/// The tokens of KV cache every cluster should be able to hold, across its nodes.
pub const KV_RESERVE_TOKENS: usize = 4096;

/// Bytes per cached key or value element in the reserve (f16/bf16).
const KV_BYTES_PER_ELEMENT: u64 = 2;

/// Memory a model needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryNeed {
    pub weights: u64,
    /// `weights` is the files' exact size, not an estimate from the parameter count.
    pub weights_exact: bool,
    pub kv_reserve: u64,
    pub total: u64,
}

impl ModelEntry {
    /// What a whole cluster needs to run this variant (see the module docs).
    pub fn memory_need(&self) -> MemoryNeed {
        let (weights, weights_exact) = match self.size() {
            Some(size) => (size, true),
            None => (estimate_weight_bytes(self), false),
        };
        let kv_reserve =
            kv_bytes_per_token(self) * KV_RESERVE_TOKENS.min(self.context_length) as u64;
        MemoryNeed {
            weights,
            weights_exact,
            kv_reserve,
            total: weights + kv_reserve,
        }
    }

    /// What the node running `layers` of this variant needs: its share of the weights and
    /// of the reserve, layers being of equal size (true of these decoder-only models up to
    /// the embedding and head, which are counted in with the layers).
    pub fn memory_need_for_layers(&self, layers: Range<usize>) -> MemoryNeed {
        let whole = self.memory_need();
        let count = layers.end.saturating_sub(layers.start).min(self.layers) as u64;
        let share = |bytes: u64| (bytes as u128 * count as u128 / self.layers as u128) as u64;
        let weights = share(whole.weights);
        let kv_reserve = share(whole.kv_reserve);
        MemoryNeed {
            weights,
            weights_exact: false,
            kv_reserve,
            total: weights + kv_reserve,
        }
    }
}

/// Bytes of KV cache per token over all layers, 16-bit.
pub fn kv_bytes_per_token(entry: &ModelEntry) -> u64 {
    2 * entry.layers as u64
        * entry.attention.kv_heads as u64
        * entry.attention.head_dim as u64
        * KV_BYTES_PER_ELEMENT
}

/// Average bits per weight of a quantization as llama.cpp's mixes come out on real files
/// (a Q4_K_M file keeps some tensors in Q6_K, so it averages above 4.5 bits).
pub fn bits_per_weight(quantization: &str) -> f64 {
    match quantization.to_ascii_uppercase().as_str() {
        "F32" => 32.0,
        "F16" | "BF16" => 16.0,
        "Q8_0" => 8.5,
        "Q6_K" => 6.6,
        "Q5_K_M" => 5.7,
        "Q5_0" | "Q5_1" => 5.5,
        "Q4_K_M" => 4.9,
        "Q4_K_S" => 4.6,
        "Q4_0" => 4.5,
        "Q4_1" => 5.0,
        "Q3_K_M" => 3.9,
        "Q2_K" => 3.0,
        _ => 16.0,
    }
}

fn estimate_weight_bytes(entry: &ModelEntry) -> u64 {
    (entry.parameters as f64 * bits_per_weight(&entry.quantization) / 8.0) as u64
}

/// "4.7 GB", "98 MB": sizes as people read them (decimal units, as the Hub shows them).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// "7.6B", "135M".
pub fn human_parameters(parameters: u64) -> String {
    if parameters >= 1_000_000_000 {
        let billions = parameters as f64 / 1e9;
        if billions >= 10.0 {
            format!("{billions:.0}B")
        } else {
            format!("{billions:.1}B")
        }
    } else {
        format!("{:.0}M", parameters as f64 / 1e6)
    }
}
