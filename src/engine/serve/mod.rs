//! Serving requests with the model: per-request KV caches ([`kv_cache`]) and the KV of
//! recent prompts that later ones reuse ([`prefix_cache`]), continuous
//! batching of the steps ready on a node ([`batcher`]), picking tokens ([`sampling`]),
//! generation with in-process shards ([`local`]), the opened model ([`loaded_model`]), and
//! the engine as a lifecycle-managed resource ([`inference_engine`], built from an
//! [`engine_config`]), which asks a [`supplier`] for the model's header when
//! the files are not here yet.

mod batch_run;
pub mod batcher;
pub mod engine_config;
pub mod group_runs;
pub mod inference_engine;
pub mod kv_cache;
pub mod loaded_model;
pub mod local;
pub mod prefix_cache;
mod prefix_reuse;
pub mod sampling;
pub mod supplier;
