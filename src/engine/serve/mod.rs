//! Serving requests with the model: per-request KV caches ([`kv_cache`]), continuous
//! batching of the steps ready on a node ([`batcher`]), picking tokens ([`sampling`]),
//! generation with in-process shards ([`local`]), and the engine as a lifecycle-managed
//! resource ([`inference_engine`]).

pub mod batcher;
pub mod inference_engine;
pub mod kv_cache;
pub mod local;
pub mod sampling;
