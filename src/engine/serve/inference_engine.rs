//! The inference engine as a resource: initialize opens the device, the model file and
//! the tokenizer; shards are loaded on demand; health runs a tiny forward; cleanup frees
//! weights and caches.

use std::sync::{Arc, RwLock};

use anyhow::Context;
use serde_json::json;

use super::engine_config::EngineConfig;
use super::group_runs::spawn_follower_with;
use super::loaded_model::LoadedModel;
use crate::resource::Resource;

/// A cache untouched for this long belongs to a request whose origin is gone.
const IDLE_CACHE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);

/// The engine resource.
pub struct InferenceEngine {
    config: EngineConfig,
    /// Shared with the node's group follower runner (if it has groups), which runs the
    /// batches leaders hand it through whatever model is open.
    loaded: Arc<RwLock<Option<Arc<LoadedModel>>>>,
}

impl InferenceEngine {
    pub fn new(config: EngineConfig) -> Self {
        InferenceEngine {
            config,
            loaded: Arc::new(RwLock::new(None)),
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
        if let Some(hub) = &self.config.groups {
            // Once per hub (a second open finds its batches taken, and the runner there).
            let loaded = Arc::downgrade(&self.loaded);
            spawn_follower_with(
                move || {
                    loaded
                        .upgrade()?
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                },
                hub,
            );
        }
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
        if self
            .config
            .faults
            .as_ref()
            .is_some_and(|f| f.engine_failed())
        {
            anyhow::bail!("fault injected: the engine fails");
        }
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
                "prefix_cache": model.prefix_stats(),
                "groups": model.groups().map(|hub| hub.stats.snapshot()),
            }),
            None => json!({
                "model": self.config.model.id,
                "path": self.config.model.path.display().to_string(),
                "device_requested": self.config.device.to_string(),
            }),
        }
    }
}
