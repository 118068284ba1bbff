//! A model's config from a Hugging Face `config.json`.

use std::collections::HashMap;

use anyhow::{Context, bail};

use super::{Architecture, ModelConfig, RawConfig, RopeLayout, RopeSpec, llama3_factors};

/// The keys of a `config.json`.
struct Keys(HashMap<String, serde_json::Value>);

impl Keys {
    fn uint(&self, k: &str) -> anyhow::Result<usize> {
        self.opt_uint(k)
            .with_context(|| format!("config.json has no unsigned integer '{k}'"))
    }

    fn opt_uint(&self, k: &str) -> Option<usize> {
        self.0.get(k).and_then(|v| v.as_u64()).map(|v| v as usize)
    }

    fn float(&self, k: &str) -> Option<f64> {
        self.0.get(k).and_then(|v| v.as_f64())
    }
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> anyhow::Result<Self> {
        let raw: HashMap<String, serde_json::Value> =
            serde_json::from_str(text).context("config.json is not a JSON object")?;
        let arch_name = raw
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .or_else(|| raw.get("model_type").and_then(|m| m.as_str()))
            .context("config.json names no architecture (architectures / model_type)")?;
        let architecture = Architecture::from_name(arch_name)?;
        let keys = Keys(raw);
        let hidden_size = keys.uint("hidden_size")?;
        let n_heads = keys.uint("num_attention_heads")?;
        let head_dim = keys
            .opt_uint("head_dim")
            .unwrap_or(hidden_size / n_heads.max(1));
        let rotary_dim = match keys.float("partial_rotary_factor") {
            Some(f) => ((head_dim as f64) * f) as usize,
            None => head_dim,
        };
        let context_length = keys.opt_uint("max_position_embeddings").unwrap_or(4096);
        let (rope, context_length) = rope(&keys, rotary_dim, context_length)?;
        let is_gemma = architecture == Architecture::Gemma3;
        let sliding_window = keys.opt_uint("sliding_window").filter(|&w| w > 0);
        let (rope_local, sliding_window, sliding_pattern) = match architecture {
            Architecture::Gemma3 => {
                let local = RopeSpec {
                    theta: keys.float("rope_local_base_freq").unwrap_or(10_000.0) as f32,
                    freq_factors: Vec::new(),
                    ..rope.clone()
                };
                (
                    Some(local),
                    sliding_window,
                    Some(keys.opt_uint("sliding_window_pattern").unwrap_or(6)),
                )
            }
            Architecture::Phi3 => (None, None, None),
            _ if keys.0.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(false) => {
                (None, None, None)
            }
            _ => (None, sliding_window.filter(|&w| w < context_length), None),
        };
        let attention_scale = match keys.float("query_pre_attn_scalar") {
            Some(s) if is_gemma => 1.0 / (s as f32).sqrt(),
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        RawConfig {
            architecture,
            n_layers: keys.uint("num_hidden_layers")?,
            hidden_size,
            intermediate_size: keys.uint("intermediate_size")?,
            n_heads,
            n_kv_heads: keys.opt_uint("num_key_value_heads").unwrap_or(n_heads),
            head_dim,
            vocab_size: keys.uint("vocab_size")?,
            context_length,
            rms_norm_eps: keys.float("rms_norm_eps").unwrap_or(1e-6),
            rope,
            rope_local,
            attention_scale,
            sliding_window,
            sliding_pattern,
            // Gemma's checkpoints store norm weights w for (1 + w).
            norm_offset: if is_gemma { 1.0 } else { 0.0 },
        }
        .finish()
    }
}

/// The rotary embedding of the global layers (its `rope_scaling`), and the context it
/// allows (LongRoPE caps it at the original context).
fn rope(
    keys: &Keys,
    rotary_dim: usize,
    mut context_length: usize,
) -> anyhow::Result<(RopeSpec, usize)> {
    let mut rope = RopeSpec {
        theta: keys.float("rope_theta").unwrap_or(10_000.0) as f32,
        rotary_dim,
        layout: RopeLayout::Halves,
        freq_factors: Vec::new(),
        magnitude: 1.0,
    };
    let Some(scaling) = keys.0.get("rope_scaling").filter(|v| !v.is_null()) else {
        return Ok((rope, context_length));
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let get = |k: &str| scaling.get(k).and_then(|v| v.as_f64());
    match kind {
        "llama3" => {
            rope.freq_factors = llama3_factors(
                rope.theta,
                rotary_dim,
                get("factor").unwrap_or(8.0),
                get("low_freq_factor").unwrap_or(1.0),
                get("high_freq_factor").unwrap_or(4.0),
                get("original_max_position_embeddings").unwrap_or(8192.0),
            );
        }
        "linear" => {
            let factor = get("factor").unwrap_or(1.0) as f32;
            rope.freq_factors = vec![factor; rotary_dim / 2];
        }
        "longrope" | "su" => {
            let short: Vec<f32> = scaling
                .get("short_factor")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .context("LongRoPE scaling without short_factor")?;
            let original = keys
                .opt_uint("original_max_position_embeddings")
                .context("LongRoPE scaling without original_max_position_embeddings")?;
            let scale = context_length as f64 / original as f64;
            if scale > 1.0 {
                rope.magnitude = (1.0 + scale.ln() / (original as f64).ln()).sqrt() as f32;
            }
            rope.freq_factors = short;
            context_length = context_length.min(original);
        }
        "default" | "" => {}
        other => {
            bail!("config.json uses rope scaling '{other}', which this engine does not implement")
        }
    }
    Ok((rope, context_length))
}
