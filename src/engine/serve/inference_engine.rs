//! The inference engine as a resource: initialize opens the device, the model file and
//! the tokenizer; shards are loaded on demand; health runs a tiny forward; cleanup frees
//! weights and caches.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::batcher::{BatchLimits, Batcher, CachePosition, StepDone, StepJob};
use super::kv_cache::{CacheLimits, KvCacheStore, SequenceCache};
use crate::catalog::{ModelFormat, ResolvedModel};
use crate::engine::cpu::CpuBackend;
use crate::engine::model::candle_backend::CandleBackend;
use crate::engine::model::config::ModelConfig;
use crate::engine::model::cpu_matmul::CpuMatmul;
use crate::engine::model::device::{DeviceChoice, dense_dtype, device_name};
use crate::engine::model::shard::Shard;
use crate::engine::model::shard_model::{HiddenState, ShardInput, ShardModel, ShardOutput};
use crate::engine::model::weights::WeightSource;
use crate::engine::text::tokenizer::TextTokenizer;
use crate::resource::Resource;

/// How to build the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model: ResolvedModel,
    pub device: DeviceChoice,
    pub cache_limits: CacheLimits,
    /// Loaded shards kept at once (a node's range changes when the cluster does).
    pub max_loaded_shards: usize,
    /// Which kernels run quantized matmuls on the CPU.
    pub cpu_matmul: CpuMatmul,
    /// How steps of different requests are batched.
    pub batch_limits: BatchLimits,
    /// Where the model's header comes from when it is not on this disk yet (a node whose
    /// weights come from its peers or the Hub); `None`: the files must be here.
    pub supply: Option<Arc<crate::supply::WeightSupply>>,
}

impl EngineConfig {
    pub fn new(model: ResolvedModel, device: DeviceChoice) -> Self {
        EngineConfig {
            model,
            device,
            cache_limits: CacheLimits::default(),
            max_loaded_shards: 2,
            cpu_matmul: CpuMatmul::default(),
            batch_limits: BatchLimits::default(),
            supply: None,
        }
    }
}

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
        use crate::engine::model::backend::Backend;
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

    /// Bytes one more position of a sequence takes in this shard's KV caches.
    pub fn kv_bytes_per_position(&self) -> usize {
        let (config, layers, element) = match self {
            // Our CPU caches hold f16; candle's hold the activation dtype.
            LoadedShard::Cpu(m) => (m.config(), m.shard().len(), 2),
            LoadedShard::Candle(m) => (
                m.config(),
                m.shard().len(),
                m.backend().dtype().size_in_bytes(),
            ),
        };
        layers * 2 * config.n_kv_heads * config.head_dim * element
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

    /// Checks an input against this shard without running it.
    pub fn check_input(&self, input: &ShardInput, position: usize) -> anyhow::Result<usize> {
        match self {
            LoadedShard::Cpu(m) => m.check_input(input, position),
            LoadedShard::Candle(m) => m.check_input(input, position),
        }
    }
}

/// An opened model: device, weights source, tokenizer, loaded shards, KV caches.
pub struct LoadedModel {
    model_id: String,
    device: Device,
    dtype: DType,
    source: WeightSource,
    tokenizer: Arc<TextTokenizer>,
    shards: Mutex<Vec<Arc<LoadedShard>>>,
    /// Held while a shard loads.
    loading: Mutex<()>,
    /// When a step last succeeded (a health probe is redundant right after one).
    last_good_step: Mutex<Option<Instant>>,
    caches: Mutex<KvCacheStore>,
    max_loaded_shards: usize,
    cpu_matmul: CpuMatmul,
    batcher: Arc<Batcher>,
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
            shards: Mutex::new(Vec::new()),
            loading: Mutex::new(()),
            last_good_step: Mutex::new(None),
            caches: Mutex::new(KvCacheStore::new(config.cache_limits)),
            max_loaded_shards: config.max_loaded_shards.max(1),
            cpu_matmul: config.cpu_matmul,
            batcher: Arc::new(Batcher::new(config.batch_limits)),
        })
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn config(&self) -> &ModelConfig {
        self.source.config()
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
    pub fn memory_need(&self) -> crate::topology::ModelMemory {
        let config = self.config();
        let tokens = crate::catalog::KV_RESERVE_TOKENS.min(config.context_length.max(1));
        let per_token =
            2 * config.n_layers as u64 * config.n_kv_heads as u64 * config.head_dim as u64 * 2;
        crate::topology::ModelMemory {
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
        let shard = self.shard_for(start, end)?;
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
    fn loaded_shard(&self, shard: &Shard) -> Option<Arc<LoadedShard>> {
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
        let mut cache = {
            let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            caches.checkout(&cache_key(request_id, start, end), position, 0, || {
                shard.new_cache()
            })?
        };
        match shard.forward(input, &mut cache) {
            Ok(output) => {
                let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
                caches.checkin(&cache_key(request_id, start, end), cache);
                *self
                    .last_good_step
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
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
        self.batcher.submit(self, job);
    }

    /// Where `request_id` stands on the shard `[start, end)`.
    pub fn cache_position(&self, request_id: &str, start: usize, end: usize) -> CachePosition {
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .position(&cache_key(request_id, start, end))
    }

    /// Runs a batch of steps on one layer range (the batcher's worker calls this): each
    /// step's cache is taken out (a new request reserving its positions in the budget),
    /// the inputs that fit run in one forward pass, and each step gets its outcome. A step
    /// that fails leaves its request without a cache here.
    pub fn run_batch(
        &self,
        jobs: Vec<StepJob>,
    ) -> Vec<(StepDone, tokio::sync::mpsc::UnboundedSender<Vec<StepDone>>)> {
        let mut done = Vec::with_capacity(jobs.len());
        let Some(first) = jobs.first() else {
            return done;
        };
        let (start, end) = (first.start, first.end);
        let shard = match self.shard(start, end) {
            Ok(shard) => shard,
            Err(error) => {
                let message = format!("{error:#}");
                for job in jobs {
                    done.push((
                        StepDone {
                            tag: job.tag,
                            request_id: job.request_id,
                            output: Err(anyhow::anyhow!("{message}")),
                        },
                        job.sink,
                    ));
                }
                return done;
            }
        };
        let per_position = shard.kv_bytes_per_position();
        let mut runnable = Vec::with_capacity(jobs.len());
        {
            let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            for job in jobs {
                let key = cache_key(&job.request_id, start, end);
                let checked = shard.check_input(&job.input, job.position).and_then(|_| {
                    caches.checkout(
                        &key,
                        job.position,
                        job.reserve_positions * per_position,
                        || shard.new_cache(),
                    )
                });
                match checked {
                    Ok(cache) => runnable.push((job, key, cache)),
                    Err(error) => done.push((
                        StepDone {
                            tag: job.tag,
                            request_id: job.request_id,
                            output: Err(error),
                        },
                        job.sink,
                    )),
                }
            }
        }
        if runnable.is_empty() {
            return done;
        }
        let mut inputs = Vec::with_capacity(runnable.len());
        let mut caches_out = Vec::with_capacity(runnable.len());
        let mut meta = Vec::with_capacity(runnable.len());
        for (job, key, cache) in runnable {
            let StepJob {
                request_id,
                input,
                tag,
                sink,
                ..
            } = job;
            inputs.push(input);
            caches_out.push(cache);
            meta.push((request_id, key, tag, sink));
        }
        let result = shard.forward_batch(inputs.into_iter().zip(caches_out.iter_mut()).collect());
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(outputs) => {
                for ((request_id, key, tag, sink), (cache, output)) in
                    meta.into_iter().zip(caches_out.into_iter().zip(outputs))
                {
                    caches.checkin(&key, cache);
                    done.push((
                        StepDone {
                            tag,
                            request_id,
                            output: Ok(output),
                        },
                        sink,
                    ));
                }
                *self
                    .last_good_step
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
            Err(error) => {
                let message = format!("{error:#}");
                for (request_id, key, tag, sink) in meta {
                    caches.remove(&key);
                    done.push((
                        StepDone {
                            tag,
                            request_id,
                            output: Err(anyhow::anyhow!("{message}")),
                        },
                        sink,
                    ));
                }
            }
        }
        done
    }

    /// Whether `request_id` has a cache for the shard `[start, end)`.
    pub fn has_cache(&self, request_id: &str, start: usize, end: usize) -> bool {
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&cache_key(request_id, start, end))
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
        caches.remove(&cache_key(request_id, start, end));
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
        let shard = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
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

/// A step this recent stands in for a health probe.
const RECENT_STEP: std::time::Duration = std::time::Duration::from_secs(10);

/// A cache untouched for this long belongs to a request whose origin is gone.
const IDLE_CACHE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);

/// Caches are per request and per layer range (a node may briefly hold two ranges).
fn cache_key(request_id: &str, start: usize, end: usize) -> String {
    format!("{request_id}@{start}-{end}")
}

/// The engine resource.
pub struct InferenceEngine {
    config: EngineConfig,
    loaded: RwLock<Option<Arc<LoadedModel>>>,
}

impl InferenceEngine {
    pub fn new(config: EngineConfig) -> Self {
        InferenceEngine {
            config,
            loaded: RwLock::new(None),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Lifecycle settings for the engine: loading a large model from a slow disk takes a
    /// while, and a health check may run a forward pass.
    pub fn resource_config() -> crate::resource::ResourceConfig {
        crate::resource::ResourceConfig {
            initialize_timeout: std::time::Duration::from_secs(600),
            health_timeout: std::time::Duration::from_secs(30),
            ..crate::resource::ResourceConfig::default()
        }
    }

    /// The opened model. Fails only if a cleanup raced this call.
    pub fn model(&self) -> anyhow::Result<Arc<LoadedModel>> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .context("the inference engine has been cleaned up")
    }
}

impl Resource for InferenceEngine {
    const KIND: &'static str = "inference_engine";

    async fn initialize(&self) -> anyhow::Result<()> {
        let config = self.config.clone();
        // Opening needs the header (config, tokenizer); a node without the file gets it
        // (and nothing more) from a peer or the Hub.
        if let Some(supply) = &config.supply {
            supply.ensure_header().await?;
        }
        // A shard's weights load on the first request that names its range: a node only
        // learns its range from the plans it is sent.
        let model = tokio::task::spawn_blocking(move || LoadedModel::open(&config))
            .await
            .context("the model loading task failed")??;
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(model));
        Ok(())
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        // In-flight steps keep their Arc until they finish; memory goes when they do.
        self.loaded
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Ok(())
    }

    async fn health(&self) -> anyhow::Result<()> {
        let model = self.model()?;
        let expired = model.expire_idle(IDLE_CACHE_LIFETIME);
        if expired > 0 {
            tracing::info!("dropped {expired} idle KV cache(s)");
        }
        tokio::task::spawn_blocking(move || model.probe())
            .await
            .context("the health probe task failed")?
    }

    fn info(&self) -> serde_json::Value {
        let mut info = self.model_info();
        if let (Some(supply), Some(object)) = (&self.config.supply, info.as_object_mut()) {
            object.insert("weights".into(), supply.info());
        }
        info
    }
}

impl InferenceEngine {
    fn model_info(&self) -> serde_json::Value {
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match loaded {
            Some(model) => json!({
                "model": model.model_id(),
                "path": self.config.model.path.display().to_string(),
                "device": model.device_name(),
                "backend": model.loaded_shards_backend(),
                "dtype": format!("{:?}", model.dtype()).to_lowercase(),
                "layers": model.config().n_layers,
                "loaded_shards": model.loaded_shards().iter().map(|s| format!("[{}, {})", s.start_layer, s.end_layer)).collect::<Vec<_>>(),
                "active_requests": model.active_requests(),
                "kv_cache_bytes": model.cache_bytes(),
            }),
            None => json!({
                "model": self.config.model.id,
                "path": self.config.model.path.display().to_string(),
                "device_requested": self.config.device.to_string(),
            }),
        }
    }
}
