//! A loaded shard on whichever backend runs it: our CPU kernels or candle's.

use std::sync::Arc;

use candle_core::{DType, Device};

use super::backend::Backend;
use super::candle_backend::CandleBackend;
use super::collective::Collective;
use super::cpu_matmul::CpuMatmul;
use super::sequence_cache::SequenceCache;
use super::shard::Shard;
use super::shard_io::{ShardInput, ShardOutput};
use super::shard_model::ShardModel;
use super::weights::WeightSource;
use crate::engine::cpu::CpuBackend;

/// A loaded shard on the backend that runs it.
pub enum LoadedShard {
    Cpu(ShardModel<CpuBackend>),
    Candle(ShardModel<CandleBackend>),
}

impl LoadedShard {
    /// Loads `shard` of `source` for `device`: our CPU kernels on the CPU (unless
    /// `cpu_matmul` asks for candle's), candle on GPUs.
    pub fn load(
        source: &WeightSource,
        shard: &Shard,
        device: &Device,
        dtype: DType,
        cpu_matmul: CpuMatmul,
    ) -> anyhow::Result<Self> {
        Self::load_reusing(source, shard, device, dtype, cpu_matmul, &[])
    }

    /// As [`LoadedShard::load`], sharing the tensors that `donors` (shards of the same
    /// model, loaded the same way) already hold.
    pub fn load_reusing(
        source: &WeightSource,
        shard: &Shard,
        device: &Device,
        dtype: DType,
        cpu_matmul: CpuMatmul,
        donors: &[Arc<LoadedShard>],
    ) -> anyhow::Result<Self> {
        match (device, cpu_matmul.precision()) {
            (Device::Cpu, Some(precision)) => {
                let donors: Vec<&ShardModel<CpuBackend>> = donors
                    .iter()
                    .filter_map(|d| match d.as_ref() {
                        LoadedShard::Cpu(m) => Some(m),
                        LoadedShard::Candle(_) => None,
                    })
                    .collect();
                Ok(LoadedShard::Cpu(ShardModel::load_reusing(
                    source,
                    shard,
                    CpuBackend::new(precision),
                    &donors,
                )?))
            }
            _ => {
                let donors: Vec<&ShardModel<CandleBackend>> = donors
                    .iter()
                    .filter_map(|d| match d.as_ref() {
                        LoadedShard::Candle(m) => Some(m),
                        LoadedShard::Cpu(_) => None,
                    })
                    .collect();
                Ok(LoadedShard::Candle(ShardModel::load_reusing(
                    source,
                    shard,
                    CandleBackend::new(device.clone(), dtype),
                    &donors,
                )?))
            }
        }
    }

    /// How many layers this shard shares in memory with `other` (see
    /// [`LoadedShard::load_reusing`]).
    pub fn shared_layers(&self, other: &LoadedShard) -> usize {
        match (self, other) {
            (LoadedShard::Cpu(a), LoadedShard::Cpu(b)) => a.shared_layers(b),
            (LoadedShard::Candle(a), LoadedShard::Candle(b)) => a.shared_layers(b),
            _ => 0,
        }
    }

    pub fn shard(&self) -> &Shard {
        match self {
            LoadedShard::Cpu(m) => m.shard(),
            LoadedShard::Candle(m) => m.shard(),
        }
    }

    pub fn layer_bytes(&self) -> u64 {
        match self {
            LoadedShard::Cpu(m) => m.layer_bytes(),
            LoadedShard::Candle(m) => m.layer_bytes(),
        }
    }

    pub fn other_bytes(&self) -> u64 {
        match self {
            LoadedShard::Cpu(m) => m.other_bytes(),
            LoadedShard::Candle(m) => m.other_bytes(),
        }
    }

    /// What runs it: `cpu (avx512-vnni, int16 activations)`, `cuda:0`.
    pub fn backend_name(&self) -> String {
        match self {
            LoadedShard::Cpu(m) => m.backend().describe(),
            LoadedShard::Candle(m) => m.backend().describe(),
        }
    }

    pub fn new_cache(&self) -> SequenceCache {
        match self {
            LoadedShard::Cpu(m) => m.new_cache(),
            LoadedShard::Candle(m) => m.new_cache(),
        }
    }

    /// Positions `[from, to)` of `cache` as a block of the prefix cache.
    pub fn cut_block(
        &self,
        cache: &SequenceCache,
        from: usize,
        to: usize,
    ) -> anyhow::Result<SequenceCache> {
        match self {
            LoadedShard::Cpu(m) => m.cut_block(cache, from, to),
            LoadedShard::Candle(m) => m.cut_block(cache, from, to),
        }
    }

    /// A cache made of prefix-cache blocks of this shard, one after another.
    pub fn join_blocks(&self, blocks: &[&SequenceCache]) -> anyhow::Result<SequenceCache> {
        match self {
            LoadedShard::Cpu(m) => m.join_blocks(blocks),
            LoadedShard::Candle(m) => m.join_blocks(blocks),
        }
    }

    /// Bytes one more position of a sequence takes in this shard's KV caches.
    pub fn kv_bytes_per_position(&self) -> usize {
        let (config, layers, kv_heads, element) = match self {
            // Our CPU caches hold f16; candle's hold the activation dtype.
            LoadedShard::Cpu(m) => (m.config(), m.shard().len(), m.kv_heads(), 2),
            LoadedShard::Candle(m) => (
                m.config(),
                m.shard().len(),
                m.kv_heads(),
                m.backend().dtype().size_in_bytes(),
            ),
        };
        layers * 2 * kv_heads * config.head_dim * element
    }

    /// One sequence's input, in prompt chunks.
    pub fn forward(
        &self,
        input: ShardInput,
        cache: &mut SequenceCache,
    ) -> anyhow::Result<ShardOutput> {
        match self {
            LoadedShard::Cpu(m) => m.forward(input, cache),
            LoadedShard::Candle(m) => m.forward(input, cache),
        }
    }

    /// Several sequences' inputs in one pass.
    pub fn forward_batch(
        &self,
        batch: Vec<(ShardInput, &mut SequenceCache)>,
    ) -> anyhow::Result<Vec<ShardOutput>> {
        match self {
            LoadedShard::Cpu(m) => m.forward_batch(batch),
            LoadedShard::Candle(m) => m.forward_batch(batch),
        }
    }

    /// Several sequences' inputs in one pass, as a member of a tensor-parallel group
    /// (see [`ShardModel::forward_batch_with`]).
    pub fn forward_batch_with(
        &self,
        batch: Vec<(ShardInput, &mut SequenceCache)>,
        group: &mut dyn Collective,
    ) -> anyhow::Result<Vec<ShardOutput>> {
        match self {
            LoadedShard::Cpu(m) => m.forward_batch_with(batch, Some(group)),
            LoadedShard::Candle(m) => m.forward_batch_with(batch, Some(group)),
        }
    }

    /// Checks an input against this shard without running it.
    pub fn check_input(&self, input: &ShardInput, position: usize) -> anyhow::Result<usize> {
        match self {
            LoadedShard::Cpu(m) => m.check_input(input, position),
            LoadedShard::Candle(m) => m.check_input(input, position),
        }
    }
}
