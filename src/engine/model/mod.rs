//! The model: a shard of layers of any supported family, read tensor by tensor from GGUF
//! or safetensors ([`weights`], [`tensor_names`], [`config`], `loader`) and run by the
//! sharded decoder ([`shard_model`], a `layer` at a time; [`shard_io`] in and out, a
//! [`sequence_cache`] per sequence) over a [`backend`]: our CPU kernels (`crate::engine::cpu`)
//! or candle's ([`candle_backend`], for GPUs); [`device`] and [`cpu_matmul`] pick which.
//! [`loaded_shard`]: a shard on whichever backend runs it; [`memory`]: what a whole model
//! needs in memory. Tensor parallelism: a [`slice`] of every matrix per member of a group,
//! whose partial sums the decoder adds through a [`collective`].

pub mod backend;
pub mod candle_backend;
pub mod collective;
pub mod config;
pub mod cpu_matmul;
pub mod device;
mod layer;
pub mod loaded_shard;
mod loader;
pub mod memory;
pub mod sequence_cache;
pub mod shard;
pub mod shard_io;
pub mod shard_model;
pub mod slice;
pub mod tensor_names;
pub mod weights;
