//! The inference engine: models on candle and on our own CPU kernels, split into shards
//! of layers.
//!
//! - [`device`]: `--device auto|cpu|cuda|metal`, checked for real;
//! - [`weights`], [`tensor_names`]: tensors read one by one from GGUF or safetensors;
//! - [`config`]: a model's shape, for every family;
//! - [`model`]: the sharded decoder of every family, over a [`backend`]:
//!   [`cpu`] (our kernels) or [`candle_backend`] (candle's, for GPUs);
//! - [`kv_cache`]: per-request caches, bounded; [`sampling`]: picking tokens;
//! - [`tokenizer`] (built by [`gguf_vocab`] and [`spm`] from GGUF metadata), [`chat_template`],
//!   [`text_stream`]: text in and out;
//! - [`batcher`]: continuous batching of the steps ready on a node;
//! - [`generation`]: the decoding loop's bookkeeping; [`local`]: generation with
//!   in-process shards; [`inference_engine`]: the engine as a lifecycle-managed resource.

#[path = "model/backend.rs"]
pub mod backend;
#[path = "serve/batcher.rs"]
pub mod batcher;
#[path = "model/candle_backend.rs"]
pub mod candle_backend;
#[path = "text/chat_template.rs"]
pub mod chat_template;
#[path = "model/config.rs"]
pub mod config;
pub mod cpu;
#[path = "model/cpu_matmul.rs"]
pub mod cpu_matmul;
#[path = "model/device.rs"]
pub mod device;
#[path = "text/generation.rs"]
pub mod generation;
#[path = "text/gguf_vocab.rs"]
pub mod gguf_vocab;
#[path = "serve/inference_engine.rs"]
pub mod inference_engine;
#[path = "serve/kv_cache.rs"]
pub mod kv_cache;
#[path = "serve/local.rs"]
pub mod local;
#[path = "model/shard_model.rs"]
pub mod model;
#[path = "serve/sampling.rs"]
pub mod sampling;
#[path = "model/shard.rs"]
pub mod shard;
#[path = "text/spm.rs"]
pub mod spm;
#[path = "model/tensor_names.rs"]
pub mod tensor_names;
#[path = "text/text_stream.rs"]
pub mod text_stream;
#[path = "text/tokenizer.rs"]
pub mod tokenizer;
#[path = "model/weights.rs"]
pub mod weights;

pub use chat_template::ChatMessage;
pub use cpu_matmul::CpuMatmul;
pub use device::DeviceChoice;
pub use generation::{Decoding, FinishReason, TokenOutcome};
pub use inference_engine::{EngineConfig, InferenceEngine, LoadedModel, LoadedShard};
pub use model::{HiddenState, ShardInput, ShardModel, ShardOutput};
pub use sampling::SamplingParams;
pub use shard::Shard;
