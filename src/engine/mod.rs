//! The inference engine: models on candle, split into shards of layers.
//!
//! - [`device`]: `--device auto|cpu|cuda|metal`, checked for real;
//! - [`weights`]: tensors read one by one from GGUF or safetensors;
//! - [`config`]: a model's shape; [`llama`]: the sharded Llama-family decoder;
//! - [`kv_cache`]: per-request caches, bounded; [`sampling`]: picking tokens;
//! - [`tokenizer`] (built by [`gguf_vocab`] and [`spm`] from GGUF metadata), [`chat_template`],
//!   [`text_stream`]: text in and out;
//! - [`generation`]: the decoding loop's bookkeeping; [`local`]: generation with
//!   in-process shards; [`inference_engine`]: the engine as a lifecycle-managed resource.

pub mod chat_template;
pub mod config;
pub mod device;
pub mod generation;
pub mod gguf_vocab;
pub mod inference_engine;
pub mod kv_cache;
pub mod llama;
pub mod local;
pub mod matrix;
pub mod quant_matmul;
pub mod rope;
pub mod sampling;
pub mod shard;
pub mod spm;
pub mod text_stream;
pub mod tokenizer;
pub mod weights;

pub use chat_template::ChatMessage;
pub use device::DeviceChoice;
pub use generation::{Decoding, FinishReason, TokenOutcome};
pub use inference_engine::{EngineConfig, InferenceEngine, LoadedModel};
pub use llama::{ShardInput, ShardModel, ShardOutput};
pub use matrix::CpuMatmul;
pub use sampling::SamplingParams;
pub use shard::Shard;
