//! A model's config from the `<arch>.*` keys of a GGUF file's metadata.

use std::collections::HashMap;

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file::{self, Value};

use super::{Architecture, ModelConfig, RawConfig, RopeLayout, RopeSpec};

/// The metadata keys of one architecture (`llama.block_count`, …).
struct Keys<'a> {
    md: &'a HashMap<String, Value>,
    arch: String,
}

impl Keys<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    /// An unsigned integer, if the file has the key.
    fn uint(&self, k: &str) -> anyhow::Result<Option<usize>> {
        let full = self.key(k);
        let Some(value) = self.md.get(&full) else {
            return Ok(None);
        };
        value
            .to_u32()
            .map(|v| v as usize)
            .or_else(|_| value.to_u64().map(|v| v as usize))
            .or_else(|_| value.to_i32().map(|v| v.max(0) as usize))
            .with_context(|| format!("{full} is not an unsigned integer"))
            .map(Some)
    }

    /// An unsigned integer the config cannot do without.
    fn need(&self, k: &str) -> anyhow::Result<usize> {
        self.uint(k)?
            .with_context(|| format!("GGUF metadata has no {}", self.key(k)))
    }

    fn float(&self, k: &str) -> anyhow::Result<Option<f32>> {
        match self.md.get(&self.key(k)) {
            None => Ok(None),
            Some(v) => {
                Ok(Some(v.to_f32().with_context(|| {
                    format!("{} is not a float", self.key(k))
                })?))
            }
        }
    }

    fn string(&self, k: &str) -> Option<String> {
        self.md
            .get(&self.key(k))
            .and_then(|v| v.to_string().ok())
            .cloned()
    }
}

impl ModelConfig {
    /// Reads the `<arch>.*` keys of a GGUF file. Rope frequency factors stored as tensors
    /// (`rope_freqs`, `rope_factors_short`) are filled in by the caller, which can read
    /// tensors.
    pub fn from_gguf(content: &gguf_file::Content) -> anyhow::Result<Self> {
        let md = &content.metadata;
        let arch_name = md
            .get("general.architecture")
            .context("GGUF metadata has no general.architecture")?
            .to_string()
            .context("general.architecture is not a string")?
            .clone();
        let architecture = Architecture::from_name(&arch_name)?;
        let keys = Keys {
            md,
            arch: arch_name,
        };
        let n_heads = keys.need("attention.head_count")?;
        let hidden_size = keys.need("embedding_length")?;
        let n_kv_heads = keys.uint("attention.head_count_kv")?.unwrap_or(n_heads);
        let head_dim = match keys.uint("attention.key_length")? {
            Some(d) => d,
            None => hidden_size / n_heads.max(1),
        };
        let rotary_dim = keys.uint("rope.dimension_count")?.unwrap_or(head_dim);
        let vocab_size = match keys.uint("vocab_size")? {
            Some(v) => v,
            None => md
                .get("tokenizer.ggml.tokens")
                .and_then(|t| t.to_vec().ok())
                .map(|t| t.len())
                .context("GGUF metadata has neither a vocab size nor tokens")?,
        };
        let context_length = keys.uint("context_length")?.unwrap_or(4096);
        let (rope, context_length) = rope(&keys, architecture, rotary_dim, context_length)?;
        let (rope_local, sliding_window, sliding_pattern) = windows(&keys, architecture, &rope)?;
        let attention_scale = match architecture {
            Architecture::Gemma3 if n_heads > 0 && keys.uint("block_count")? == Some(62) => {
                // Gemma 3 27B scales by the model width per head, not the head dimension.
                1.0 / ((hidden_size / n_heads) as f32).sqrt()
            }
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        RawConfig {
            architecture,
            n_layers: keys.need("block_count")?,
            hidden_size,
            intermediate_size: keys.need("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            rms_norm_eps: f64::from(
                keys.float("attention.layer_norm_rms_epsilon")?
                    .context("GGUF metadata has no attention.layer_norm_rms_epsilon")?,
            ),
            rope,
            rope_local,
            attention_scale,
            sliding_window,
            sliding_pattern,
            norm_offset: 0.0,
        }
        .finish()
    }
}

/// The rotary embedding of the global layers, and the context it allows (LongRoPE caps
/// it at the original context).
fn rope(
    keys: &Keys,
    architecture: Architecture,
    rotary_dim: usize,
    mut context_length: usize,
) -> anyhow::Result<(RopeSpec, usize)> {
    let theta = keys.float("rope.freq_base")?.unwrap_or(10_000.0);
    let layout = match architecture {
        Architecture::Llama => RopeLayout::Interleaved,
        _ => RopeLayout::Halves,
    };
    let mut rope = RopeSpec {
        theta,
        rotary_dim,
        layout,
        freq_factors: Vec::new(),
        magnitude: 1.0,
    };
    let scaling = keys.string("rope.scaling.type");
    let scaling_factor = keys.float("rope.scaling.factor")?;
    match (scaling.as_deref(), scaling_factor) {
        (Some("linear"), Some(factor)) if factor > 0.0 && factor != 1.0 => {
            rope.freq_factors = vec![factor; rotary_dim / 2];
        }
        (Some("linear") | Some("none") | None, _) => {}
        // Llama 3 files carry their factors as the rope_freqs tensor, Phi-3 as the
        // rope_factors tensors; YaRN and others are not implemented.
        (Some("yarn"), Some(factor)) if factor > 1.0 => bail!(
            "the model uses YaRN rope scaling (factor {factor}), which this engine does not implement"
        ),
        _ => {}
    }
    if let Some(attn_factor) = keys.float("rope.scaling.attn_factor")? {
        rope.magnitude = attn_factor;
    }
    if architecture == Architecture::Phi3
        && let Some(original) = keys.uint("rope.scaling.original_context_length")?
    {
        // LongRoPE: the short factors hold up to the original context; beyond it the
        // model needs the long ones, which this engine does not switch to.
        context_length = context_length.min(original);
    }
    Ok((rope, context_length))
}

/// The sliding window: the local layers' rope (Gemma 3), the window, and which layers
/// are global.
fn windows(
    keys: &Keys,
    architecture: Architecture,
    rope: &RopeSpec,
) -> anyhow::Result<(Option<RopeSpec>, Option<usize>, Option<usize>)> {
    let sliding_window = keys.uint("attention.sliding_window")?.filter(|&w| w > 0);
    Ok(match architecture {
        Architecture::Gemma3 => match sliding_window {
            Some(window) => {
                let pattern = keys.uint("attention.sliding_window_pattern")?.unwrap_or(6);
                let local = RopeSpec {
                    theta: keys.float("rope.freq_base_swa")?.unwrap_or(10_000.0),
                    freq_factors: Vec::new(),
                    ..rope.clone()
                };
                (Some(local), Some(window), Some(pattern))
            }
            None => (None, None, None),
        },
        // llama.cpp disables Phi-3's window (its converters do not record the pattern).
        Architecture::Phi3 => (None, None, None),
        _ => (None, sliding_window, None),
    })
}
