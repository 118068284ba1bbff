//! A shard: the contiguous range of a model's layers one node runs.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::slice::TensorSlice;

/// Layers `[start_layer, end_layer)` of a model with `n_layers` layers, whole or a
/// tensor-parallel member's slice of them.
///
/// The first shard (start 0) owns the token embedding; the last (end == n_layers) owns the
/// final norm, the output head and sampling. One shard can be both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub model_id: String,
    pub start_layer: usize,
    pub end_layer: usize,
    pub n_layers: usize,
    /// A tensor-parallel member's part of every matrix; None: the whole layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<TensorSlice>,
}

impl Shard {
    /// A checked shard: non-empty, inside the model.
    pub fn new(
        model_id: impl Into<String>,
        start_layer: usize,
        end_layer: usize,
        n_layers: usize,
    ) -> anyhow::Result<Self> {
        let model_id = model_id.into();
        if start_layer >= end_layer {
            anyhow::bail!("shard [{start_layer}, {end_layer}) of {model_id} is empty");
        }
        if end_layer > n_layers {
            anyhow::bail!(
                "shard [{start_layer}, {end_layer}) is outside {model_id}, which has {n_layers} layers"
            );
        }
        Ok(Shard {
            model_id,
            start_layer,
            end_layer,
            n_layers,
            slice: None,
        })
    }

    /// The same layers, only `slice` of them.
    pub fn sliced(mut self, slice: Option<TensorSlice>) -> Self {
        self.slice = slice;
        self
    }

    /// The whole model as one shard.
    pub fn full(model_id: impl Into<String>, n_layers: usize) -> anyhow::Result<Self> {
        Self::new(model_id, 0, n_layers, n_layers)
    }

    pub fn is_first(&self) -> bool {
        self.start_layer == 0
    }

    pub fn is_last(&self) -> bool {
        self.end_layer == self.n_layers
    }

    pub fn len(&self) -> usize {
        self.end_layer - self.start_layer
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, layer: usize) -> bool {
        (self.start_layer..self.end_layer).contains(&layer)
    }

    /// `count` shards of (nearly) equal size covering the model in order; the first
    /// shards take one layer more when the layers do not divide evenly.
    pub fn split_even(model_id: &str, n_layers: usize, count: usize) -> anyhow::Result<Vec<Shard>> {
        if count == 0 || count > n_layers {
            anyhow::bail!("cannot split {n_layers} layers into {count} non-empty shards");
        }
        let (base, extra) = (n_layers / count, n_layers % count);
        let mut shards = Vec::with_capacity(count);
        let mut start = 0;
        for i in 0..count {
            let len = base + usize::from(i < extra);
            shards.push(Shard::new(model_id, start, start + len, n_layers)?);
            start += len;
        }
        Ok(shards)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} layers [{}, {}) of {}",
            self.model_id, self.start_layer, self.end_layer, self.n_layers
        )?;
        if let Some(slice) = &self.slice {
            write!(f, ", {slice}")?;
        }
        Ok(())
    }
}
