//! What of its model a node holds, as it tells its peers (`NodeInfo.holdings` in
//! `CollectTopology`), and what a peer's holding can serve.
//!
//! A holding is read from the disk (the catalog's [`presence`] and the files' headers), so
//! it is always what the node could actually send: a whole file, or the tensors a partial
//! copy lists as checked.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use anyhow::{Context, bail};

use crate::catalog::header::{HeaderLimits, read_local_header};
use crate::catalog::local_files::weight_files;
use crate::catalog::sparse_store::read_sidecar;
use crate::catalog::{ModelEntry, Presence, WeightFormat, presence};
use crate::proto::pb;

/// The holding of `entry` in `models_dir`, or `None` when nothing of it is here (or this
/// kind of model is not shared between peers: only single-file GGUF models are, for now).
pub fn local_holding(
    entry: &ModelEntry,
    models_dir: &Path,
) -> anyhow::Result<Option<pb::ModelHolding>> {
    if !shareable(entry) {
        return Ok(None);
    }
    let here = presence(entry, models_dir);
    let mut holding = pb::ModelHolding {
        model_id: entry.id.clone(),
        ..Default::default()
    };
    match &here {
        Presence::Nothing => return Ok(None),
        Presence::Whole => {
            holding.whole = true;
            holding.embedding = true;
            holding.head = true;
            holding.shared = true;
            holding.layers = vec![pb::LayerRange {
                start: 0,
                end: entry.layers as u32,
            }];
        }
        Presence::Layers(set) => {
            holding.whole = here.covers(&(0..entry.layers), entry.layers);
            holding.embedding = set.embedding;
            holding.head = set.head;
            holding.shared = set.shared;
            holding.layers = set
                .layers
                .iter()
                .map(|r| pb::LayerRange {
                    start: r.start as u32,
                    end: r.end as u32,
                })
                .collect();
        }
    }
    for file in weight_files(entry, models_dir)?.unwrap_or_default() {
        let header_len = match read_sidecar(&file.path)? {
            Some(sidecar) => sidecar
                .header_len
                .with_context(|| format!("{} has no header yet", file.path.display()))?,
            None => {
                let mut handle = File::open(&file.path)
                    .with_context(|| format!("cannot open {}", file.path.display()))?;
                read_local_header(&mut handle, entry.format, HeaderLimits::default())?
                    .layout
                    .header_len
            }
        };
        holding.files.push(pb::WeightFileInfo {
            name: file.remote.name().to_string(),
            size: std::fs::metadata(&file.path)?.len(),
            header_len,
            sha256: file.remote.sha256.clone().unwrap_or_default(),
        });
    }
    Ok(Some(holding))
}

/// Whether peers share this model's weights: single-file GGUF models (their header and
/// tokenizer are all in the one file). Safetensors checkpoints also need their small
/// files (config, tokenizer); they come from the Hub.
pub fn shareable(entry: &ModelEntry) -> bool {
    entry.format == WeightFormat::Gguf && entry.files.len() == 1
}

/// Whether `holding` can serve what a shard of `layers` needs (`None`: just the header
/// and the small tensors every shard needs).
pub fn holding_covers(
    holding: &pb::ModelHolding,
    layers: Option<&Range<usize>>,
    n_layers: usize,
) -> bool {
    if holding.files.is_empty() {
        return false;
    }
    if holding.whole {
        return true;
    }
    if !holding.shared {
        return false;
    }
    let Some(layers) = layers else {
        return true;
    };
    !layers.is_empty()
        && (layers.start != 0 || holding.embedding)
        && (layers.end != n_layers || holding.head)
        && layers.clone().all(|l| {
            holding
                .layers
                .iter()
                .any(|r| (r.start as usize..r.end as usize).contains(&l))
        })
}

/// The one file of a shareable model in a holding, checked against what this node
/// expects of it (same name and size as the registry says).
pub fn holding_file<'a>(
    holding: &'a pb::ModelHolding,
    entry: &ModelEntry,
) -> anyhow::Result<&'a pb::WeightFileInfo> {
    let expected = entry
        .files
        .first()
        .context("the registry entry names no file")?;
    let Some(file) = holding.files.iter().find(|f| f.name == expected.name()) else {
        bail!("the peer holds no file named {}", expected.name());
    };
    if let Some(size) = expected.size
        && size != file.size
    {
        bail!(
            "the peer's {} has {} bytes, the registry says {size}: another version of the file",
            file.name,
            file.size
        );
    }
    if file.header_len == 0 || file.header_len > file.size {
        bail!(
            "the peer gives {} an impossible header length {}",
            file.name,
            file.header_len
        );
    }
    Ok(file)
}
