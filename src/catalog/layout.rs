//! Where each tensor of a model lies in its files, and which tensors a range of layers
//! needs.
//!
//! A shard of layers [A, B) of an N-layer model needs the tensors of its layers (GGUF
//! `blk.i.*`, safetensors `model.layers.i.*`); the first shard (A = 0) also needs the
//! token embedding; the last (B = N) the final norm and the output head — or the token
//! embedding when the model has no head of its own (tied embeddings, as in Qwen2.5 0.5B or
//! Gemma). Small tensors outside the layers (`rope_freqs.weight`, phi3's
//! `rope_factors_long/short.weight`) are needed by every shard.

use std::ops::Range;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::registry::WeightFormat;

/// One tensor's bytes: an absolute byte range of its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpan {
    pub name: String,
    pub start: u64,
    pub end: u64,
}

impl TensorSpan {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// One file: its header's length, its size and its tensors in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLayout {
    /// Bytes [0, header_len) are the header (for GGUF, with the padding up to the data).
    pub header_len: u64,
    pub size: u64,
    pub tensors: Vec<TensorSpan>,
}

/// What a tensor is for, which decides which shards need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    Layer(usize),
    Embedding,
    FinalNorm,
    Head,
    /// Outside the layers and small (rope factors): every shard takes it.
    Shared,
}

/// The role of a tensor, from its name in `format`.
pub fn tensor_role(format: WeightFormat, name: &str) -> TensorRole {
    match format {
        WeightFormat::Gguf => {
            if let Some(layer) = layer_index(name, "blk.") {
                return TensorRole::Layer(layer);
            }
            match name {
                "token_embd.weight" => TensorRole::Embedding,
                "output_norm.weight" => TensorRole::FinalNorm,
                "output.weight" => TensorRole::Head,
                _ => TensorRole::Shared,
            }
        }
        WeightFormat::Safetensors => {
            let name = name.strip_prefix("language_model.").unwrap_or(name);
            if let Some(layer) = layer_index(name, "model.layers.") {
                return TensorRole::Layer(layer);
            }
            match name {
                "model.embed_tokens.weight" => TensorRole::Embedding,
                "model.norm.weight" => TensorRole::FinalNorm,
                "lm_head.weight" => TensorRole::Head,
                _ => TensorRole::Shared,
            }
        }
    }
}

fn layer_index(name: &str, prefix: &str) -> Option<usize> {
    let rest = name.strip_prefix(prefix)?;
    let (index, _) = rest.split_once('.')?;
    index.parse().ok()
}

/// Every file of a model (one, or several for a split checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLayout {
    pub format: WeightFormat,
    pub files: Vec<FileLayout>,
    pub n_layers: usize,
}

/// A tensor a shard needs: which file (index into [`ModelLayout::files`]) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorRange {
    pub file: usize,
    pub name: String,
    pub start: u64,
    pub end: u64,
}

impl TensorRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

impl ModelLayout {
    /// Whether the model has an output head of its own (else the embedding is tied).
    pub fn has_head(&self) -> bool {
        self.all()
            .any(|(_, t)| tensor_role(self.format, &t.name) == TensorRole::Head)
    }

    /// Every tensor with the index of its file.
    pub fn all(&self) -> impl Iterator<Item = (usize, &TensorSpan)> {
        self.files
            .iter()
            .enumerate()
            .flat_map(|(i, f)| f.tensors.iter().map(move |t| (i, t)))
    }
}

/// Whether a shard of `layers` (of `n_layers`) needs a tensor of `role`; `tied`: the model
/// has no head and reuses the embedding.
pub fn needed(role: TensorRole, layers: &Range<usize>, n_layers: usize, tied: bool) -> bool {
    let first = layers.start == 0;
    let last = layers.end == n_layers;
    match role {
        TensorRole::Layer(i) => layers.contains(&i),
        TensorRole::Embedding => first || (last && tied),
        TensorRole::FinalNorm | TensorRole::Head => last,
        TensorRole::Shared => true,
    }
}

/// The tensors a shard of `layers` needs, in file order.
pub fn tensor_ranges(
    layout: &ModelLayout,
    layers: Range<usize>,
) -> anyhow::Result<Vec<TensorRange>> {
    check_layers(&layers, layout.n_layers)?;
    let tied = !layout.has_head();
    let mut ranges = Vec::new();
    for (file, tensor) in layout.all() {
        let role = tensor_role(layout.format, &tensor.name);
        if needed(role, &layers, layout.n_layers, tied) {
            ranges.push(TensorRange {
                file,
                name: tensor.name.clone(),
                start: tensor.start,
                end: tensor.end,
            });
        }
    }
    ranges.sort_by_key(|r| (r.file, r.start));
    Ok(ranges)
}

/// Refuses an empty range or one outside the model, with the reason.
pub fn check_layers(layers: &Range<usize>, n_layers: usize) -> anyhow::Result<()> {
    if layers.start >= layers.end {
        bail!("the layer range {}..{} is empty", layers.start, layers.end);
    }
    if layers.end > n_layers {
        bail!(
            "the layer range {}..{} is outside the model, which has {n_layers} layers (0..{n_layers})",
            layers.start,
            layers.end
        );
    }
    Ok(())
}
