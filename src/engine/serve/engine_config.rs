//! How to build the engine: the model, the device, and the limits of what it holds.

use std::sync::Arc;

use super::batcher::BatchLimits;
use super::kv_cache::CacheLimits;
use super::supplier::WeightSupplier;
use crate::catalog::ResolvedModel;
use crate::engine::group::GroupHub;
use crate::engine::model::cpu_matmul::CpuMatmul;
use crate::engine::model::device::DeviceChoice;
use crate::faults::Faults;

/// How to build the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model: ResolvedModel,
    pub device: DeviceChoice,
    pub cache_limits: CacheLimits,
    /// Bytes of the prefix cache (blocks of finished requests' KV that later prompts
    /// reuse; 0 keeps none).
    pub prefix_cache_bytes: usize,
    /// Loaded shards kept at once (a node's range changes when the cluster does).
    pub max_loaded_shards: usize,
    /// Which kernels run quantized matmuls on the CPU.
    pub cpu_matmul: CpuMatmul,
    /// How steps of different requests are batched.
    pub batch_limits: BatchLimits,
    /// Where the model's header comes from when it is not on this disk yet (a node whose
    /// weights come from its peers or the Hub); `None`: the files must be here.
    pub supply: Option<Arc<dyn WeightSupplier>>,
    /// The node's hub for tensor-parallel groups (None: this engine runs only whole
    /// layers).
    pub groups: Option<Arc<GroupHub>>,
    /// Faults to inject (a node started with `--enable-fault-injection`; see
    /// `crate::faults`). None in normal use.
    pub faults: Option<Arc<Faults>>,
}

impl EngineConfig {
    pub fn new(model: ResolvedModel, device: DeviceChoice) -> Self {
        EngineConfig {
            model,
            device,
            cache_limits: CacheLimits::default(),
            prefix_cache_bytes: super::prefix_cache::DEFAULT_PREFIX_CACHE_BYTES,
            max_loaded_shards: 2,
            cpu_matmul: CpuMatmul::default(),
            batch_limits: BatchLimits::default(),
            supply: None,
            groups: None,
            faults: None,
        }
    }
}
