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

/// How a backend finds its own caches in an [`AnyKv`].
pub trait KvSlot: Backend {
    fn new_kv() -> AnyKv;
    fn kv(slot: &mut AnyKv) -> anyhow::Result<&mut Self::Kv>;
    fn kv_ref(slot: &AnyKv) -> Option<&Self::Kv>;
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
