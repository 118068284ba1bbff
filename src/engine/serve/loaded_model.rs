//! An opened model on a node: its device, weights source and tokenizer, the shards loaded
//! on demand (sharing the layers they have in common), the KV caches of the requests it
//! serves, and the batcher that runs their steps.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::bail;
use candle_core::{DType, Device, Tensor};

use super::batcher::{Batcher, StepDone, StepJob, StepRunner, StepSink};
use super::engine_config::EngineConfig;
use super::kv_cache::{CachePosition, KvCacheStore};
use super::prefix_cache::PrefixCache;
use crate::catalog::ModelFormat;
use crate::engine::group::GroupHub;
use crate::engine::model::config::ModelConfig;
use crate::engine::model::cpu_matmul::CpuMatmul;
use crate::engine::model::device::{dense_dtype, device_name};
use crate::engine::model::loaded_shard::LoadedShard;
use crate::engine::model::memory::ModelMemory;
use crate::engine::model::shard::Shard;
use crate::engine::model::shard_io::{HiddenState, ShardInput, ShardOutput};
use crate::engine::model::slice::{SplitUnits, TensorSlice, split_slices};
use crate::engine::model::weights::WeightSource;
use crate::engine::text::constraint::Grammars;
use crate::engine::text::tokenizer::TextTokenizer;

/// An opened model: device, weights source, tokenizer, loaded shards, KV caches.
pub struct LoadedModel {
    model_id: String,
    device: Device,
    dtype: DType,
    source: WeightSource,
    tokenizer: Arc<TextTokenizer>,
    /// The grammar compiler over the tokenizer's vocabulary, built on first use (only
    /// constrained requests need it); Err keeps why it could not be built.
    grammars: OnceLock<Result<Arc<Grammars>, String>>,
    shards: Mutex<Vec<Arc<LoadedShard>>>,
    /// Held while a shard loads.
    loading: Mutex<()>,
    /// When a step last succeeded (a health probe is redundant right after one).
    last_good_step: Mutex<Option<Instant>>,
    pub(super) caches: Mutex<KvCacheStore>,
    /// Blocks of finished requests' KV, which new prompts that start with them reuse.
    /// Locked after `caches` when both are held.
    pub(super) prefixes: Mutex<PrefixCache>,
    max_loaded_shards: usize,
    cpu_matmul: CpuMatmul,
    batcher: Arc<Batcher>,
    /// The node's hub for the tensor-parallel groups it takes part in.
    pub(super) groups: Option<Arc<GroupHub>>,
    /// Faults to inject (tests and chaos runs only; see `crate::faults`).
    faults: Option<Arc<crate::faults::Faults>>,
}

impl Drop for LoadedModel {
    fn drop(&mut self) {
        self.batcher.stop();
    }
}

impl LoadedModel {
    /// Opens the model on a device (blocking: reads headers and builds the tokenizer).
    pub fn open(config: &EngineConfig) -> anyhow::Result<Self> {
        let device = config.device.open()?;
        let source = WeightSource::open(&config.model.path)?;
        let tokenizer = match config.model.format {
            ModelFormat::Gguf => match source.gguf() {
                Some(content) => TextTokenizer::from_gguf(content)?,
                None => bail!("{} is not a GGUF file", config.model.path.display()),
            },
            ModelFormat::Safetensors => TextTokenizer::from_dir(&config.model.path)?,
        };
        let dtype = if source.is_quantized() {
            DType::F32
        } else {
            dense_dtype(&device)
        };
        Ok(LoadedModel {
            model_id: config.model.id.clone(),
            device,
            dtype,
            source,
            tokenizer: Arc::new(tokenizer),
            grammars: OnceLock::new(),
            shards: Mutex::new(Vec::new()),
            loading: Mutex::new(()),
            last_good_step: Mutex::new(None),
            caches: Mutex::new(KvCacheStore::new(config.cache_limits)),
            prefixes: Mutex::new(PrefixCache::new(config.prefix_cache_bytes)),
            max_loaded_shards: config.max_loaded_shards.max(1),
            cpu_matmul: config.cpu_matmul,
            batcher: Arc::new(Batcher::new(config.batch_limits)),
            groups: config.groups.clone(),
            faults: config.faults.clone(),
        })
    }

    pub fn model_source(&self) -> &WeightSource {
        &self.source
    }

    /// The finest cuts between the members of a tensor-parallel group of this model.
    pub fn split_units(&self) -> SplitUnits {
        SplitUnits::of(&self.source)
    }

    /// Each member's slice of a group of `shares.len()` members sharing this model in
    /// proportion to `shares` (see [`split_slices`]).
    pub fn split_group(&self, shares: &[f64]) -> anyhow::Result<Vec<TensorSlice>> {
        split_slices(self.config(), &self.split_units(), shares)
    }

    /// The node's hub for tensor-parallel groups, if it has one.
    pub fn groups(&self) -> Option<&Arc<GroupHub>> {
        self.groups.as_ref()
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn config(&self) -> &ModelConfig {
        self.source.config()
    }

    /// The grammar compiler over this model's vocabulary (built on first use).
    pub fn grammars(&self) -> anyhow::Result<Arc<Grammars>> {
        self.grammars
            .get_or_init(|| {
                Grammars::new(&self.tokenizer)
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.tokenizer
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn device_name(&self) -> String {
        device_name(&self.device)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// What the whole model needs in memory: its tensors as stored, and a KV reserve of
    /// [`crate::catalog::KV_RESERVE_TOKENS`] tokens (16-bit, as the catalog counts it).
    pub fn memory_need(&self) -> ModelMemory {
        let config = self.config();
        let tokens = crate::catalog::KV_RESERVE_TOKENS.min(config.context_length.max(1));
        let per_token =
            2 * config.n_layers as u64 * config.n_kv_heads as u64 * config.head_dim as u64 * 2;
        ModelMemory {
            weights: self.source.tensor_bytes(),
            kv_reserve: per_token * tokens as u64,
            reserve_tokens: tokens,
        }
    }

    /// `count` consecutive ranges of (nearly) equal size over every layer: the model as
    /// `count` shards chained in one process.
    pub fn even_ranges(&self, count: usize) -> anyhow::Result<Vec<(usize, usize)>> {
        Ok(
            Shard::split_even(&self.model_id, self.config().n_layers, count)?
                .iter()
                .map(|s| (s.start_layer, s.end_layer))
                .collect(),
        )
    }

    /// The checked shard for a layer range of this model.
    pub fn shard_for(&self, start: usize, end: usize) -> anyhow::Result<Shard> {
        Shard::new(&self.model_id, start, end, self.config().n_layers)
    }

    /// The loaded shard for `[start, end)`, loading it if need be (blocking).
    pub fn shard(&self, start: usize, end: usize) -> anyhow::Result<Arc<LoadedShard>> {
        self.shard_sliced(start, end, None)
    }

    /// The loaded shard for `[start, end)`, only `slice` of it when given (a member of a
    /// tensor-parallel group), loading it if need be (blocking).
    pub fn shard_sliced(
        &self,
        start: usize,
        end: usize,
        slice: Option<TensorSlice>,
    ) -> anyhow::Result<Arc<LoadedShard>> {
        let shard = self.shard_for(start, end)?.sliced(slice);
        if let Some(found) = self.loaded_shard(&shard) {
            return Ok(found);
        }
        // One load at a time: two requests reaching a cold node together must not load
        // the same shard twice (nor evict each other's).
        let _loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = self.loaded_shard(&shard) {
            return Ok(found);
        }
        let started = Instant::now();
        tracing::info!("loading {shard} (first use of these layers on this node)");
        // Layers another loaded shard holds are shared, not read again.
        let donors: Vec<Arc<LoadedShard>> = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let loaded = Arc::new(LoadedShard::load_reusing(
            &self.source,
            &shard,
            &self.device,
            self.dtype,
            self.cpu_matmul,
            &donors,
        )?);
        drop(donors);
        tracing::info!(
            "loaded {shard} on {} in {:.2}s ({:.1} MB of layers)",
            loaded.backend_name(),
            started.elapsed().as_secs_f64(),
            loaded.layer_bytes() as f64 / 1e6
        );
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        shards.push(loaded.clone());
        while shards.len() > self.max_loaded_shards {
            let dropped = shards.remove(0);
            tracing::info!("unloading {}", dropped.shard());
        }
        Ok(loaded)
    }

    /// The loaded shard, marked most recently used.
    pub(super) fn loaded_shard(&self, shard: &Shard) -> Option<Arc<LoadedShard>> {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let i = shards.iter().position(|s| s.shard() == shard)?;
        let found = shards.remove(i);
        shards.push(found.clone());
        Some(found)
    }

    /// Runs one step of `request_id` on the shard `[start, end)` (blocking). The request's
    /// cache must be at `position` (0 starts a new one). A failed step drops the cache: a
    /// half-updated cache must never be used again.
    pub fn step(
        &self,
        request_id: &str,
        start: usize,
        end: usize,
        input: ShardInput,
        position: usize,
    ) -> anyhow::Result<ShardOutput> {
        let shard = self.shard(start, end)?;
        let key = cache_key(request_id, start, end, None);
        let mut cache = {
            let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            caches.checkout(&key, position, 0, || Ok(shard.new_cache()))?
        };
        match shard.forward(input, &mut cache) {
            Ok(output) => {
                let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
                caches.checkin(&key, cache);
                self.step_succeeded();
                Ok(output)
            }
            Err(error) => {
                self.finish_range(request_id, start, end);
                Err(error)
            }
        }
    }

    /// The batcher that runs this model's steps for the node.
    pub fn batcher(&self) -> &Arc<Batcher> {
        &self.batcher
    }

    /// Queues a step for the batcher (see [`super::batcher`]).
    pub fn submit(self: &Arc<Self>, job: StepJob) {
        // An injected engine failure holds the step, as a hung device would, until the
        // fault is mended: then it fails, as a device reset fails the work it had.
        if let Some(faults) = self.faults.as_ref().filter(|f| f.engine_failed()) {
            faults.hold_step(Box::new(move || {
                let failed = StepDone {
                    tag: job.tag,
                    request_id: job.request_id,
                    output: Err(anyhow::anyhow!(
                        "the engine was reset while it held this step (injected fault)"
                    )),
                };
                let _ = job.sink.send(vec![failed]);
            }));
            return;
        }
        let runner: Arc<dyn StepRunner> = self.clone();
        self.batcher.submit(Arc::downgrade(&runner), job);
    }

    /// Where `request_id` stands on the shard `[start, end)` (as member `member` of a
    /// group sharing it, if one).
    pub fn cache_position(
        &self,
        request_id: &str,
        start: usize,
        end: usize,
        member: Option<usize>,
    ) -> CachePosition {
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .position(&cache_key(request_id, start, end, member))
    }

    /// Whether `request_id` has a cache for the shard `[start, end)`.
    pub fn has_cache(&self, request_id: &str, start: usize, end: usize) -> bool {
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&cache_key(request_id, start, end, None))
    }

    /// The KV caches (the group runs take theirs out and put them back).
    pub(super) fn caches(&self) -> std::sync::MutexGuard<'_, KvCacheStore> {
        self.caches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A step succeeded just now (a health probe would be redundant).
    pub(super) fn step_succeeded(&self) {
        *self
            .last_good_step
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Drops caches idle for longer than `max_idle` (their origin went away without
    /// finishing them). Returns how many.
    pub fn expire_idle(&self, max_idle: std::time::Duration) -> usize {
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire_idle(max_idle)
    }

    /// Drops every cache of `request_id` on this node. Returns how many there were.
    pub fn finish(&self, request_id: &str) -> usize {
        // Every range, loaded or not: a request may outlive the shard it ran on.
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_prefix(&format!("{request_id}@"))
    }

    fn finish_range(&self, request_id: &str, start: usize, end: usize) {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.remove(&cache_key(request_id, start, end, None));
    }

    /// Requests with a cache on this node.
    pub fn active_requests(&self) -> usize {
        self.caches.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn cache_bytes(&self) -> usize {
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes()
    }

    /// The loaded shards' ranges.
    pub fn loaded_shards(&self) -> Vec<Shard> {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| s.shard().clone())
            .collect()
    }

    /// What runs the loaded shards (`cpu (avx512-vnni, int16 activations)`, `cuda:0`);
    /// what would run them when none is loaded yet.
    pub fn loaded_shards_backend(&self) -> String {
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        match shards.last() {
            Some(shard) => shard.backend_name(),
            None => match (self.device.is_cpu(), self.cpu_matmul) {
                (true, CpuMatmul::Candle) => "cpu (candle)".into(),
                (true, m) => format!(
                    "cpu ({}, {m} activations)",
                    crate::engine::cpu::isa::Isa::best().name()
                ),
                (false, _) => self.device_name(),
            },
        }
    }

    /// A one-token forward through a loaded shard with a throwaway cache, or a small
    /// computation on the device when no shard is loaded yet. A real step that succeeded
    /// moments ago proves as much, so then nothing runs: the probe must not take cycles from
    /// the requests it would only confirm.
    pub fn probe(&self) -> anyhow::Result<()> {
        let recent = *self
            .last_good_step
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if recent.is_some_and(|at| at.elapsed() < RECENT_STEP) {
            return Ok(());
        }
        // A tensor-parallel slice runs only with its group: the probe uses a whole shard.
        let shard = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|s| s.shard().slice.is_none())
            .cloned();
        match shard {
            Some(shard) => {
                let input = if shard.shard().is_first() {
                    ShardInput::Tokens(vec![0])
                } else {
                    ShardInput::Hidden(HiddenState {
                        data: vec![0.0; self.config().hidden_size],
                        rows: 1,
                        cols: self.config().hidden_size,
                    })
                };
                shard.forward(input, &mut shard.new_cache())?;
            }
            None => {
                let sum = Tensor::ones(16, DType::F32, &self.device)?
                    .sum_all()?
                    .to_scalar::<f32>()?;
                if sum != 16.0 {
                    bail!("the device computed 1×16 = {sum}");
                }
            }
        }
        Ok(())
    }
}

/// The batcher's view of the model: where each request stands, and running a batch.
impl StepRunner for LoadedModel {
    fn cache_position(&self, job: &StepJob) -> CachePosition {
        let member = job.group.as_ref().map(|_| 0);
        LoadedModel::cache_position(self, &job.request_id, job.start, job.end, member)
    }

    fn run_batch(&self, jobs: Vec<StepJob>) -> Vec<(StepDone, StepSink)> {
        if self.faults.as_ref().is_some_and(|f| f.take_batch_panic()) {
            panic!("fault injected: a batch of {} step(s) panics", jobs.len());
        }
        LoadedModel::run_batch(self, jobs)
    }

    fn abandon(&self, request_id: &str, start: usize, end: usize) {
        self.finish_range(request_id, start, end);
    }
}

/// A step this recent stands in for a health probe.
const RECENT_STEP: std::time::Duration = std::time::Duration::from_secs(10);

/// Caches are per request and per layer range (a node may briefly hold two ranges), and
/// per member of a group (members in one process share a store).
pub(super) fn cache_key(
    request_id: &str,
    start: usize,
    end: usize,
    member: Option<usize>,
) -> String {
    match member {
        None => format!("{request_id}@{start}-{end}"),
        Some(m) => format!("{request_id}@{start}-{end}/m{m}"),
    }
}
