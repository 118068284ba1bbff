//! Where fetched models live, and turning a `--model` argument into files.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::bail;

use super::checksum::verify_file;
use super::local_files::{model_path, weight_files};
use super::presence::{Presence, presence};
use super::registry::{Catalog, ModelEntry, WeightFormat};

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

/// Resolves `spec`: a catalog id (its files must be here whole and match their sha256),
/// a `.gguf` file, or a safetensors model directory.
pub fn resolve_model(spec: &str, models_dir: &Path) -> anyhow::Result<ResolvedModel> {
    let catalog = Catalog::builtin();
    if let Some(entry) = catalog.get(spec) {
        return match presence(entry, models_dir) {
            Presence::Whole => resolve_whole(entry, models_dir),
            // Every tensor fetched by layer ranges and checked: as good as whole for the
            // engine (only the padding between tensors was never fetched).
            here @ Presence::Layers(_) if here.covers(&(0..entry.layers), entry.layers) => {
                Ok(resolved(entry, models_dir))
            }
            here @ Presence::Layers(_) => bail!(
                "only part of model '{spec}' is here ({}): a node fetched the layers it \
                 serves. Run `exo models fetch {spec}` for the whole model",
                here.describe()
            ),
            Presence::Nothing => not_fetched(entry, models_dir),
        };
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

/// Resolves `spec` for a node: a registry model resolves to where its files are or will
/// be (a node's weight supply fetches what its plans need: `crate::supply`), checked
/// against its sha256 when it is here whole; anything else as [`resolve_model`]. The flag
/// says whether `spec` is a registry model.
pub fn resolve_node_model(spec: &str, models_dir: &Path) -> anyhow::Result<(ResolvedModel, bool)> {
    let catalog = Catalog::builtin();
    match catalog.get(spec) {
        Some(entry) => match presence(entry, models_dir) {
            Presence::Whole => Ok((resolve_whole(entry, models_dir)?, true)),
            _ => Ok((resolved(entry, models_dir), true)),
        },
        None => Ok((resolve_model(spec, models_dir)?, false)),
    }
}

/// Resolves catalog model `spec` for a shard of `layers`: what is here must cover them
/// (a partial copy fetched by [`super::fetch_layers`] does). The engine must read only
/// the tensors of those layers from it: the others are holes.
pub fn resolve_shard(
    spec: &str,
    models_dir: &Path,
    layers: Range<usize>,
) -> anyhow::Result<ResolvedModel> {
    let catalog = Catalog::builtin();
    let entry = catalog.require(spec)?;
    match presence(entry, models_dir) {
        Presence::Whole => resolve_whole(entry, models_dir),
        Presence::Nothing => not_fetched(entry, models_dir),
        here @ Presence::Layers(_) => {
            if !here.covers(&layers, entry.layers) {
                bail!(
                    "layers {}..{} of '{spec}' are not all here ({}): fetch them with \
                     `exo models fetch {spec} --layers {}..{}`",
                    layers.start,
                    layers.end,
                    here.describe(),
                    layers.start,
                    layers.end
                );
            }
            Ok(resolved(entry, models_dir))
        }
    }
}

fn resolved(entry: &ModelEntry, models_dir: &Path) -> ResolvedModel {
    ResolvedModel {
        id: entry.id.clone(),
        path: model_path(entry, models_dir),
        format: match entry.format {
            WeightFormat::Gguf => ModelFormat::Gguf,
            WeightFormat::Safetensors => ModelFormat::Safetensors,
        },
    }
}

/// Every file whole: checked against the registry's sha256 where it has one.
fn resolve_whole(entry: &ModelEntry, models_dir: &Path) -> anyhow::Result<ResolvedModel> {
    for file in weight_files(entry, models_dir)?.unwrap_or_default() {
        match &file.remote.sha256 {
            Some(sha) => verify_file(&file.path, sha)?,
            None => tracing::debug!(
                "the registry has no sha256 for {}; not checked",
                file.path.display()
            ),
        }
    }
    Ok(resolved(entry, models_dir))
}

fn not_fetched(entry: &ModelEntry, models_dir: &Path) -> anyhow::Result<ResolvedModel> {
    let hint = if entry.python_package.is_some() {
        " (or scripts/fetch-model.sh, which fetches it without Hugging Face)"
    } else {
        ""
    };
    bail!(
        "model '{}' is not fetched yet: expected {}. Run `exo models fetch {}`{hint}",
        entry.id,
        model_path(entry, models_dir).display(),
        entry.id
    )
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
