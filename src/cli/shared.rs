//! Flags several commands share, and helpers to act on them.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::catalog::{ResolvedModel, default_models_dir, resolve_model};
use crate::engine::{CpuMatmul, DeviceChoice, EngineConfig, InferenceEngine};
use crate::resource::{Managed, ResourceRegistry};

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A model id from the registry (`exo models list`), a .gguf file, or a directory with
    /// config.json and safetensors.
    #[arg(long, env = "EXO_MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Where fetched models live.
    #[arg(long, env = "EXO_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Device to run on: auto, cpu, cuda[:N], metal[:N].
    #[arg(long, env = "EXO_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// How the CPU runs the model: int8 (our kernels on weights repacked at load,
    /// activations rounded to 8 bits as llama.cpp does; the default), int16 (our kernels,
    /// 16-bit activations: a reference nearer f32), f32 (exact activations: the reference)
    /// or candle (candle's kernels).
    #[arg(long, env = "EXO_CPU_MATMUL", default_value = "int8")]
    pub cpu_matmul: CpuMatmul,
}

impl ModelArgs {
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir.clone().unwrap_or_else(default_models_dir)
    }

    pub fn resolve(&self) -> anyhow::Result<ResolvedModel> {
        resolve_model(&self.model, &self.models_dir())
    }

    /// The engine as a managed resource (registered when a registry is given), keeping
    /// up to `shards` shards loaded at once.
    pub fn engine(
        &self,
        registry: Option<&Arc<ResourceRegistry>>,
        shards: usize,
    ) -> anyhow::Result<Arc<Managed<InferenceEngine>>> {
        let mut config = EngineConfig::new(self.resolve()?, self.device);
        config.cpu_matmul = self.cpu_matmul;
        config.max_loaded_shards = config.max_loaded_shards.max(shards);
        let mut builder = Managed::builder("engine", InferenceEngine::new(config))
            .name(format!("inference engine ({})", self.model))
            .config(InferenceEngine::resource_config());
        if let Some(registry) = registry {
            builder = builder.register_in(registry);
        }
        Ok(builder.build())
    }
}

/// The `Authorization` header value for a key given on the command line or in the
/// environment (where several may be comma-separated: the first is used).
pub fn bearer(key: Option<&str>) -> Option<String> {
    let key = key?.split(',').next()?.trim();
    (!key.is_empty()).then(|| format!("Bearer {key}"))
}

/// The keys in a key file: one a line; blank lines and lines starting with `#` are
/// skipped. A file other users may read is refused (`crate::trust::read_private_file`).
pub fn keys_from_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = crate::trust::read_private_file(path)?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    anyhow::ensure!(
        !keys.is_empty(),
        "the key file {} holds no key",
        path.display()
    );
    Ok(keys)
}

/// A client's key: the first of `file` when given, else `key` (a flag or the environment).
pub fn client_key(
    key: Option<&str>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<String>> {
    match file {
        Some(path) => Ok(keys_from_file(path)?.into_iter().next()),
        None => Ok(key.map(String::from)),
    }
}
