//! Where a registry entry's files live on this machine: `<models dir>/<entry id>/`, each
//! weight file under its own name (repository folders dropped), with a sidecar next to a
//! partial one. A safetensors checkpoint split in several files lists them in its index
//! (`model.safetensors.index.json`), kept in the same directory.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::registry::{ModelEntry, ModelFile, WeightFormat};

/// The directory of an entry's files.
pub fn model_dir(entry: &ModelEntry, models_dir: &Path) -> PathBuf {
    models_dir.join(&entry.id)
}

/// What the engine opens: the (first) GGUF file, or the safetensors directory.
pub fn model_path(entry: &ModelEntry, models_dir: &Path) -> PathBuf {
    let dir = model_dir(entry, models_dir);
    match (entry.format, entry.files.first()) {
        (WeightFormat::Gguf, Some(file)) => dir.join(file.name()),
        _ => dir,
    }
}

/// One weight file of an entry: where it comes from and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub remote: ModelFile,
    pub path: PathBuf,
}

/// The entry's weight files, or `None` when they are listed in an index not fetched yet.
pub fn weight_files(
    entry: &ModelEntry,
    models_dir: &Path,
) -> anyhow::Result<Option<Vec<LocalFile>>> {
    let dir = model_dir(entry, models_dir);
    let files = if !entry.files.is_empty() {
        entry.files.clone()
    } else if let Some(index) = &entry.index {
        let index_path = dir.join(file_name(index));
        let bytes = match std::fs::read(&index_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", index_path.display()));
            }
        };
        index_files(&bytes, index)?
            .into_iter()
            .map(|path| ModelFile {
                path,
                size: None,
                sha256: None,
                manifest: None,
            })
            .collect()
    } else {
        bail!("registry entry '{}' names no weight files", entry.id);
    };
    Ok(Some(
        files
            .into_iter()
            .map(|remote| LocalFile {
                path: dir.join(remote.name()),
                remote,
            })
            .collect(),
    ))
}

/// The weight files a safetensors index names (repository paths, relative to the
/// index's folder), sorted.
pub fn index_files(bytes: &[u8], index_path: &str) -> anyhow::Result<Vec<String>> {
    let index: serde_json::Value =
        serde_json::from_slice(bytes).with_context(|| format!("{index_path} is not JSON"))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{index_path} has no weight_map"))?;
    let folder = index_path.rsplit_once('/').map(|(f, _)| f);
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .with_context(|| format!("{index_path}: tensor {tensor} names no file"))?;
        if file.contains("..") || file.starts_with('/') || file.is_empty() {
            bail!("{index_path}: tensor {tensor} names the file '{file}', outside the repository");
        }
        files.insert(match folder {
            Some(folder) => format!("{folder}/{file}"),
            None => file.to_string(),
        });
    }
    if files.is_empty() {
        bail!("{index_path} names no files");
    }
    Ok(files.into_iter().collect())
}

/// The last component of a repository path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Locks the model's directory for one writer at a time, across processes (a fetch from
/// the Hub, a transfer from a peer), creating it first; the lock holds until the returned
/// file is dropped.
pub fn lock_model_dir(entry: &ModelEntry, models_dir: &Path) -> anyhow::Result<File> {
    let dir = model_dir(entry, models_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lock = File::create(dir.join(".fetch.lock"))
        .with_context(|| format!("cannot create a lock in {}", dir.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", dir.display()))?;
    Ok(lock)
}
