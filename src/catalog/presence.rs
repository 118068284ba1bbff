//! What of a model is on this machine: the whole file(s), the tensors of some layers, or
//! nothing — read from local headers and sidecars, without the network.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use serde::Serialize;

use super::header::{HeaderLimits, read_local_header};
use super::layout::{TensorRole, tensor_role};
use super::local_files::{model_dir, weight_files};
use super::registry::ModelEntry;
use super::sparse_store::{Sidecar, TensorCheck, read_sidecar};

/// What of a model is here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Presence {
    /// Every file, whole (fetched whole, or by scripts/fetch-model.sh).
    Whole,
    /// Some tensors, fetched by layer range.
    Layers(LayerSet),
    Nothing,
}

/// The tensors a partial copy holds, by what a shard needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerSet {
    /// Layers whose tensors are all present and checked.
    pub layers: Vec<Range<usize>>,
    /// The token embedding (the first shard needs it).
    pub embedding: bool,
    /// The final norm and output head, or the embedding where it is tied (the last shard).
    pub head: bool,
    /// The small tensors every shard needs (rope factors), or there are none.
    pub shared: bool,
    /// How the present tensors were checked.
    pub tensor_check: TensorCheck,
}

impl Presence {
    /// Whether a shard of `layers` of an `n_layers` model can run on what is here.
    pub fn covers(&self, layers: &Range<usize>, n_layers: usize) -> bool {
        match self {
            Presence::Whole => true,
            Presence::Nothing => false,
            Presence::Layers(set) => {
                !layers.is_empty()
                    && set.shared
                    && (layers.start != 0 || set.embedding)
                    && (layers.end != n_layers || set.head)
                    && layers
                        .clone()
                        .all(|l| set.layers.iter().any(|r| r.contains(&l)))
            }
        }
    }

    /// "whole", "layers 0..10 (+embedding)", "no".
    pub fn describe(&self) -> String {
        match self {
            Presence::Whole => "whole".into(),
            Presence::Nothing => "no".into(),
            Presence::Layers(set) if set.layers.is_empty() => "header only".into(),
            Presence::Layers(set) => {
                let ranges: Vec<String> = set
                    .layers
                    .iter()
                    .map(|r| format!("{}..{}", r.start, r.end))
                    .collect();
                let mut text = format!("layers {}", ranges.join(","));
                if set.tensor_check == TensorCheck::SizeOnly {
                    text.push_str(" (size-checked)");
                }
                text
            }
        }
    }
}

enum FileState {
    Missing,
    Whole,
    Partial(Sidecar),
}

/// What of `entry` is in `models_dir` (see [`Presence`]). Unreadable state counts as
/// nothing: a fetch then says what is wrong.
pub fn presence(entry: &ModelEntry, models_dir: &Path) -> Presence {
    match try_presence(entry, models_dir) {
        Ok(presence) => presence,
        Err(error) => {
            tracing::warn!("cannot tell what of {} is here: {error:#}", entry.id);
            Presence::Nothing
        }
    }
}

fn try_presence(entry: &ModelEntry, models_dir: &Path) -> anyhow::Result<Presence> {
    let Some(files) = weight_files(entry, models_dir)? else {
        return Ok(Presence::Nothing);
    };
    let dir = model_dir(entry, models_dir);
    if entry
        .extra_files
        .iter()
        .any(|f| !dir.join(super::local_files::file_name(f)).is_file())
    {
        return Ok(Presence::Nothing);
    }
    let mut states = Vec::new();
    for file in &files {
        let state = if !file.path.is_file() {
            FileState::Missing
        } else {
            match read_sidecar(&file.path)? {
                Some(sidecar) => FileState::Partial(sidecar),
                None => {
                    let len = std::fs::metadata(&file.path)?.len();
                    if file.remote.size.is_some_and(|size| size != len) {
                        FileState::Missing
                    } else {
                        FileState::Whole
                    }
                }
            }
        };
        states.push(state);
    }
    if states.iter().all(|s| matches!(s, FileState::Whole)) {
        return Ok(Presence::Whole);
    }
    if states.iter().any(|s| matches!(s, FileState::Missing)) {
        return Ok(Presence::Nothing);
    }
    // Per tensor: present and checked, or not; by role.
    let mut check = TensorCheck::Sha256;
    let mut roles: Vec<(TensorRole, bool)> = Vec::new();
    for (file, state) in files.iter().zip(&states) {
        if let FileState::Partial(sidecar) = state {
            if sidecar.header_len.is_none() {
                return Ok(Presence::Nothing);
            }
            if sidecar.tensor_check == TensorCheck::SizeOnly && !sidecar.verified.is_empty() {
                check = TensorCheck::SizeOnly;
            }
        }
        let mut handle = File::open(&file.path)?;
        let header = read_local_header(&mut handle, entry.format, HeaderLimits::default())?;
        for tensor in &header.layout.tensors {
            let present = match state {
                FileState::Partial(sidecar) => sidecar.verified.contains(&tensor.name),
                _ => true,
            };
            roles.push((tensor_role(entry.format, &tensor.name), present));
        }
    }
    Ok(Presence::Layers(layer_set(&roles, entry.layers, check)))
}

fn layer_set(roles: &[(TensorRole, bool)], n_layers: usize, tensor_check: TensorCheck) -> LayerSet {
    let all = |wanted: &dyn Fn(TensorRole) -> bool| {
        let mut any = false;
        for (role, present) in roles {
            if wanted(*role) {
                any = true;
                if !present {
                    return Some(false);
                }
            }
        }
        any.then_some(true)
    };
    let mut layers: Vec<Range<usize>> = Vec::new();
    for layer in 0..n_layers {
        if all(&|r| r == TensorRole::Layer(layer)) == Some(true) {
            match layers.last_mut() {
                Some(last) if last.end == layer => last.end = layer + 1,
                _ => layers.push(layer..layer + 1),
            }
        }
    }
    let embedding = all(&|r| r == TensorRole::Embedding) == Some(true);
    let has_head = all(&|r| r == TensorRole::Head).is_some();
    let head_present = if has_head {
        all(&|r| r == TensorRole::Head) == Some(true)
    } else {
        embedding
    };
    let norm = all(&|r| r == TensorRole::FinalNorm) != Some(false);
    LayerSet {
        layers,
        embedding,
        head: head_present && norm,
        shared: all(&|r| r == TensorRole::Shared) != Some(false),
        tensor_check,
    }
}
