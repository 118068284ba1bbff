//! What a shard keeps of one sequence between steps: a key/value cache per layer, on
//! whichever backend runs the shard.

use anyhow::bail;

use super::backend::Backend;
use super::candle_backend::{CandleBackend, CandleKv};
use crate::engine::cpu::CpuBackend;
use crate::engine::cpu::attention::KvLayer;

/// One layer's keys and values for one sequence, on whichever backend holds them.
pub enum AnyKv {
    Cpu(KvLayer),
    Candle(CandleKv),
}

/// How a backend finds its own caches in an [`AnyKv`], and copies positions between them
/// (the prefix cache's blocks).
pub trait KvSlot: Backend {
    fn new_kv() -> AnyKv;
    fn kv(slot: &mut AnyKv) -> anyhow::Result<&mut Self::Kv>;
    fn kv_ref(slot: &AnyKv) -> Option<&Self::Kv>;
    /// Positions `[from, to)` of a layer cache whose rows are `width` wide (None when it
    /// holds fewer).
    fn kv_copy(slot: &AnyKv, from: usize, to: usize, width: usize)
    -> anyhow::Result<Option<AnyKv>>;
    /// Appends `blocks`' positions after `slot`'s own.
    fn kv_extend(slot: &mut AnyKv, blocks: &[&AnyKv]) -> anyhow::Result<()>;
}

impl KvSlot for CpuBackend {
    fn new_kv() -> AnyKv {
        AnyKv::Cpu(KvLayer::default())
    }
    fn kv(slot: &mut AnyKv) -> anyhow::Result<&mut KvLayer> {
        match slot {
            AnyKv::Cpu(kv) => Ok(kv),
            AnyKv::Candle(_) => bail!("a cache of another backend"),
        }
    }
    fn kv_ref(slot: &AnyKv) -> Option<&KvLayer> {
        match slot {
            AnyKv::Cpu(kv) => Some(kv),
            AnyKv::Candle(_) => None,
        }
    }
    fn kv_copy(
        slot: &AnyKv,
        from: usize,
        to: usize,
        width: usize,
    ) -> anyhow::Result<Option<AnyKv>> {
        let kv = Self::kv_ref(slot).ok_or_else(|| anyhow::anyhow!("a cache of another backend"))?;
        Ok(kv.copy_positions(from, to, width).map(AnyKv::Cpu))
    }
    fn kv_extend(slot: &mut AnyKv, blocks: &[&AnyKv]) -> anyhow::Result<()> {
        let blocks: Vec<&KvLayer> = blocks.iter().filter_map(|b| Self::kv_ref(b)).collect();
        Self::kv(slot)?.extend_from(&blocks);
        Ok(())
    }
}

impl KvSlot for CandleBackend {
    fn new_kv() -> AnyKv {
        AnyKv::Candle(CandleKv::default())
    }
    fn kv(slot: &mut AnyKv) -> anyhow::Result<&mut CandleKv> {
        match slot {
            AnyKv::Candle(kv) => Ok(kv),
            AnyKv::Cpu(_) => bail!("a cache of another backend"),
        }
    }
    fn kv_ref(slot: &AnyKv) -> Option<&CandleKv> {
        match slot {
            AnyKv::Candle(kv) => Some(kv),
            AnyKv::Cpu(_) => None,
        }
    }
    fn kv_copy(
        slot: &AnyKv,
        from: usize,
        to: usize,
        _width: usize,
    ) -> anyhow::Result<Option<AnyKv>> {
        let kv = Self::kv_ref(slot).ok_or_else(|| anyhow::anyhow!("a cache of another backend"))?;
        Ok(kv.copy_positions(from, to)?.map(AnyKv::Candle))
    }
    fn kv_extend(slot: &mut AnyKv, blocks: &[&AnyKv]) -> anyhow::Result<()> {
        let blocks: Vec<&CandleKv> = blocks.iter().filter_map(|b| Self::kv_ref(b)).collect();
        Self::kv(slot)?.extend_from(&blocks)
    }
}

/// Everything one shard caches for one sequence: a cache per layer and the number of
/// positions seen.
pub struct SequenceCache {
    pub layers: Vec<AnyKv>,
    /// Positions processed so far: the position of the next token.
    pub len: usize,
    /// Bytes the layer caches hold (kept up to date by each step).
    pub bytes: usize,
}
