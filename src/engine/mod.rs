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

pub mod backend;
pub mod batcher;
pub mod candle_backend;
pub mod chat_template;
pub mod config;
pub mod cpu;
pub mod cpu_matmul;
pub mod device;
pub mod generation;
pub mod gguf_vocab;
pub mod inference_engine;
pub mod kv_cache;
pub mod local;
pub mod model;
pub mod sampling;
pub mod shard;
pub mod spm;
pub mod tensor_names;
pub mod text_stream;
pub mod tokenizer;
pub mod weights;

pub use chat_template::ChatMessage;
pub use cpu_matmul::CpuMatmul;
pub use device::DeviceChoice;
pub use generation::{Decoding, FinishReason, TokenOutcome};
pub use inference_engine::{EngineConfig, InferenceEngine, LoadedModel, LoadedShard};
pub use model::{HiddenState, ShardInput, ShardModel, ShardOutput};
pub use sampling::SamplingParams;
pub use shard::Shard;
