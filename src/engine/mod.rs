//! The inference engine: models on candle and on our own CPU kernels, split into shards
//! of layers. A leaf: it knows the catalog's model files and the lifecycle pattern, and
//! nothing of networks, peers or plans (what it needs from them comes through traits).
//!
//! - [`text`]: tokenizers, chat templates, text streaming, the decoding loop's
//!   bookkeeping;
//! - [`model`]: a model's shape and tensors, the sharded decoder of every family, and the
//!   backends it runs on: [`cpu`] (our kernels) or candle's (for GPUs);
//! - [`group`]: tensor-parallel groups: batches handed from a leader to its followers,
//!   all-reduces over a node's links (or in-process);
//! - [`serve`]: KV caches, continuous batching, sampling, local generation, and the
//!   engine as a lifecycle-managed resource.

pub mod cpu;
pub mod group;
pub mod model;
pub mod serve;
pub mod text;

// The CPU kernels name these by the paths they had before the engine was grouped.
pub use model::{backend, config, weights};

pub use model::cpu_matmul::CpuMatmul;
pub use model::device::DeviceChoice;
pub use model::loaded_shard::LoadedShard;
pub use model::memory::ModelMemory;
pub use model::shard::Shard;
pub use model::shard_io::{HiddenState, ShardInput, ShardOutput};
pub use model::shard_model::ShardModel;
pub use serve::engine_config::EngineConfig;
pub use serve::inference_engine::InferenceEngine;
pub use serve::loaded_model::LoadedModel;
pub use serve::sampling::SamplingParams;
pub use serve::supplier::WeightSupplier;
pub use text::chat_template::{ChatMessage, ToolCallStyle};
pub use text::generation::{Decoding, FinishReason, TokenOutcome};
