//! The shape of a model, read from GGUF metadata or a Hugging Face config.json.
//!
//! One [`ModelConfig`] describes every family the engine runs; the families differ in a
//! handful of switches (biases, q/k norms, extra norms, the activation, sliding windows,
//! rope variants), which the decoder reads. How each family spells those switches in GGUF
//! metadata and in config.json is this file's business.

use std::collections::HashMap;

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file;
use serde::Serialize;

use crate::engine::cpu::ops::Activation;

/// The model families the sharded model code implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama 1–3.x, Mistral, SmolLM and other models of the Llama layout.
    Llama,
    /// Qwen2 / Qwen2.5 and the DeepSeek-R1 distills built on them (bias on q/k/v).
    Qwen2,
    /// Qwen3 dense models (q/k RMS norms, no bias).
    Qwen3,
    /// Gemma 3 (embedding scale, extra norms, q/k norms, local/global attention, GELU).
    Gemma3,
    /// Phi-3 / Phi-3.5 (fused qkv and gate/up projections).
    Phi3,
}

/// The names this engine runs, for error messages.
pub const SUPPORTED_ARCHITECTURES: &str =
    "llama (incl. Llama 3.x, Mistral, SmolLM), qwen2, qwen3, gemma3, phi3";

impl Architecture {
    /// The family of a GGUF `general.architecture` or a config.json architecture /
    /// model_type; a clear error for the rest.
    pub fn from_name(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "llama" | "mistral" | "LlamaForCausalLM" | "MistralForCausalLM" => Architecture::Llama,
            "qwen2" | "Qwen2ForCausalLM" => Architecture::Qwen2,
            "qwen3" | "Qwen3ForCausalLM" => Architecture::Qwen3,
            "gemma3" | "gemma3_text" | "Gemma3ForCausalLM" => Architecture::Gemma3,
            "phi3" | "Phi3ForCausalLM" => Architecture::Phi3,
            "qwen3moe" | "qwen3_moe" | "Qwen3MoeForCausalLM" => bail!(
                "model architecture '{name}' (Qwen3 mixture of experts) is not supported yet \
                 (supported: {SUPPORTED_ARCHITECTURES})"
            ),
            "Gemma3ForConditionalGeneration" => bail!(
                "model architecture '{name}' (Gemma 3 with vision) is not supported: use the \
                 text-only GGUF (general.architecture = gemma3)"
            ),
            other => bail!(
                "unsupported model architecture '{other}' (supported: {SUPPORTED_ARCHITECTURES})"
            ),
        })
    }
}

/// Whether this build runs models of the named architecture.
pub fn is_supported_architecture(name: &str) -> bool {
    Architecture::from_name(name).is_ok()
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1). llama.cpp's converter permutes llama's q/k weights into this
    /// layout, so GGUF llama files use it.
    Interleaved,
    /// Pairs (i, i + d/2), Hugging Face's `rotate_half`: safetensors checkpoints, and
    /// GGUF files of the other families (which llama.cpp does not permute).
    Halves,
}

/// One rotary embedding configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RopeSpec {
    pub theta: f32,
    /// Dimensions of each head that rotate (the head dimension for every family here).
    pub rotary_dim: usize,
    pub layout: RopeLayout,
    /// Divides each frequency (Llama 3's rope scaling, LongRoPE, linear scaling); empty
    /// means 1 for all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub freq_factors: Vec<f32>,
    /// Multiplies cos and sin (LongRoPE's attention factor).
    pub magnitude: f32,
}

/// Everything the model code needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// The longest sequence (prompt + generated tokens) the model supports.
    pub context_length: usize,
    pub rms_norm_eps: f64,
    /// Rotary embedding of the (global) attention layers.
    pub rope: RopeSpec,
    /// Rotary embedding of the sliding-window layers, when it differs (Gemma 3).
    pub rope_local: Option<RopeSpec>,
    /// Whether q, k and v projections have biases (qwen2).
    pub qkv_bias: bool,
    /// RMS norms on each head of q and k (qwen3, gemma3).
    pub qk_norm: bool,
    /// Norms after attention and after the feed-forward block (gemma3).
    pub post_norms: bool,
    pub activation: Activation,
    /// Multiplies the token embeddings (gemma: √hidden).
    pub embedding_scale: Option<f32>,
    /// Multiplies q·k (1/√head_dim unless the family says otherwise).
    pub attention_scale: f32,
    /// The window of the sliding-window layers.
    pub sliding_window: Option<usize>,
    /// With a window: every `n`-th layer (index % n == n − 1) is global; None with a
    /// window means every layer slides (Mistral v0.1).
    pub sliding_pattern: Option<usize>,
    /// Added to norm weights read from the file (Gemma's safetensors store w for (1 + w);
    /// its GGUF files have the 1 added already).
    pub norm_offset: f32,
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
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_uint = |k: &str| -> Option<anyhow::Result<usize>> {
            let full = key(k);
            let value = md.get(&full)?;
            Some(
                value
                    .to_u32()
                    .map(|v| v as usize)
                    .or_else(|_| value.to_u64().map(|v| v as usize))
                    .or_else(|_| value.to_i32().map(|v| v.max(0) as usize))
                    .with_context(|| format!("{full} is not an unsigned integer")),
            )
        };
        let need = |k: &str| -> anyhow::Result<usize> {
            get_uint(k).with_context(|| format!("GGUF metadata has no {}", key(k)))?
        };
        let get_f32 = |k: &str| -> anyhow::Result<Option<f32>> {
            match md.get(&key(k)) {
                None => Ok(None),
                Some(v) => Ok(Some(
                    v.to_f32()
                        .with_context(|| format!("{} is not a float", key(k)))?,
                )),
            }
        };
        let n_heads = need("attention.head_count")?;
        let hidden_size = need("embedding_length")?;
        let n_kv_heads = get_uint("attention.head_count_kv")
            .transpose()?
            .unwrap_or(n_heads);
        let head_dim = match get_uint("attention.key_length").transpose()? {
            Some(d) => d,
            None => hidden_size / n_heads.max(1),
        };
        let rotary_dim = get_uint("rope.dimension_count")
            .transpose()?
            .unwrap_or(head_dim);
        let vocab_size = match get_uint("vocab_size").transpose()? {
            Some(v) => v,
            None => md
                .get("tokenizer.ggml.tokens")
                .and_then(|t| t.to_vec().ok())
                .map(|t| t.len())
                .context("GGUF metadata has neither a vocab size nor tokens")?,
        };
        let mut context_length = get_uint("context_length").transpose()?.unwrap_or(4096);
        let theta = get_f32("rope.freq_base")?.unwrap_or(10_000.0);
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
        let scaling = md
            .get(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
            .cloned();
        let scaling_factor = get_f32("rope.scaling.factor")?;
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
        if let Some(attn_factor) = get_f32("rope.scaling.attn_factor")? {
            rope.magnitude = attn_factor;
        }
        if architecture == Architecture::Phi3
            && let Some(original) = get_uint("rope.scaling.original_context_length").transpose()?
        {
            // LongRoPE: the short factors hold up to the original context; beyond it the
            // model needs the long ones, which this engine does not switch to.
            context_length = context_length.min(original);
        }
        let sliding_window = get_uint("attention.sliding_window")
            .transpose()?
            .filter(|&w| w > 0);
        let (rope_local, sliding_window, sliding_pattern) = match architecture {
            Architecture::Gemma3 => match sliding_window {
                Some(window) => {
                    let pattern = get_uint("attention.sliding_window_pattern")
                        .transpose()?
                        .unwrap_or(6);
                    let local = RopeSpec {
                        theta: get_f32("rope.freq_base_swa")?.unwrap_or(10_000.0),
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
        };
        let attention_scale = match architecture {
            Architecture::Gemma3
                if n_heads > 0 && get_uint("block_count").transpose()? == Some(62) =>
            {
                // Gemma 3 27B scales by the model width per head, not the head dimension.
                1.0 / ((hidden_size / n_heads) as f32).sqrt()
            }
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let config = ModelConfig {
            architecture,
            n_layers: need("block_count")?,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            rms_norm_eps: f64::from(
                get_f32("attention.layer_norm_rms_epsilon")?
                    .context("GGUF metadata has no attention.layer_norm_rms_epsilon")?,
            ),
            rope,
            rope_local,
            qkv_bias: architecture == Architecture::Qwen2,
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            post_norms: architecture == Architecture::Gemma3,
            activation: match architecture {
                Architecture::Gemma3 => Activation::GeluTanh,
                _ => Activation::Silu,
            },
            embedding_scale: (architecture == Architecture::Gemma3)
                .then(|| (hidden_size as f32).sqrt()),
            attention_scale,
            sliding_window,
            sliding_pattern,
            norm_offset: 0.0,
        };
        config.validate()?;
        Ok(config)
    }

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
        let uint = |k: &str| -> anyhow::Result<usize> {
            raw.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .with_context(|| format!("config.json has no unsigned integer '{k}'"))
        };
        let opt_uint = |k: &str| raw.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let float = |k: &str| raw.get(k).and_then(|v| v.as_f64());
        let hidden_size = uint("hidden_size")?;
        let n_heads = uint("num_attention_heads")?;
        let head_dim = opt_uint("head_dim").unwrap_or(hidden_size / n_heads.max(1));
        let rotary_dim = match float("partial_rotary_factor") {
            Some(f) => ((head_dim as f64) * f) as usize,
            None => head_dim,
        };
        let mut context_length = opt_uint("max_position_embeddings").unwrap_or(4096);
        let mut rope = RopeSpec {
            theta: float("rope_theta").unwrap_or(10_000.0) as f32,
            rotary_dim,
            layout: RopeLayout::Halves,
            freq_factors: Vec::new(),
            magnitude: 1.0,
        };
        if let Some(scaling) = raw.get("rope_scaling").filter(|v| !v.is_null()) {
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
                    let original = opt_uint("original_max_position_embeddings")
                        .context("LongRoPE scaling without original_max_position_embeddings")?;
                    let scale = context_length as f64 / original as f64;
                    if scale > 1.0 {
                        rope.magnitude = (1.0 + scale.ln() / (original as f64).ln()).sqrt() as f32;
                    }
                    rope.freq_factors = short;
                    context_length = context_length.min(original);
                }
                "default" | "" => {}
                other => bail!(
                    "config.json uses rope scaling '{other}', which this engine does not implement"
                ),
            }
        }
        let is_gemma = architecture == Architecture::Gemma3;
        let sliding_window = opt_uint("sliding_window").filter(|&w| w > 0);
        let (rope_local, sliding_window, sliding_pattern) = match architecture {
            Architecture::Gemma3 => {
                let local = RopeSpec {
                    theta: float("rope_local_base_freq").unwrap_or(10_000.0) as f32,
                    freq_factors: Vec::new(),
                    ..rope.clone()
                };
                (
                    Some(local),
                    sliding_window,
                    Some(opt_uint("sliding_window_pattern").unwrap_or(6)),
                )
            }
            Architecture::Phi3 => (None, None, None),
            _ if raw.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(false) => {
                (None, None, None)
            }
            _ => (None, sliding_window.filter(|&w| w < context_length), None),
        };
        let attention_scale = match float("query_pre_attn_scalar") {
            Some(s) if is_gemma => 1.0 / (s as f32).sqrt(),
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let config = ModelConfig {
            architecture,
            n_layers: uint("num_hidden_layers")?,
            hidden_size,
            intermediate_size: uint("intermediate_size")?,
            n_heads,
            n_kv_heads: opt_uint("num_key_value_heads").unwrap_or(n_heads),
            head_dim,
            vocab_size: uint("vocab_size")?,
            context_length,
            rms_norm_eps: float("rms_norm_eps").unwrap_or(1e-6),
            rope,
            rope_local,
            qkv_bias: architecture == Architecture::Qwen2,
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            post_norms: is_gemma,
            activation: if is_gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            embedding_scale: is_gemma.then(|| (hidden_size as f32).sqrt()),
            attention_scale,
            sliding_window,
            sliding_pattern,
            norm_offset: if is_gemma { 1.0 } else { 0.0 },
        };
        config.validate()?;
        Ok(config)
    }

    /// Rejects shapes the model code cannot run, with the reason.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.n_layers == 0
            || self.hidden_size == 0
            || self.n_heads == 0
            || self.n_kv_heads == 0
            || self.head_dim == 0
            || self.vocab_size == 0
            || self.intermediate_size == 0
        {
            bail!("model config has a zero dimension: {self:?}");
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.n_heads,
                self.n_kv_heads
            );
        }
        if !self.rope.rotary_dim.is_multiple_of(2)
            || self.rope.rotary_dim > self.head_dim
            || self.head_dim > 512
        {
            bail!(
                "rotary dimension {} does not fit heads of {} (it must be even, at most the \
                 head dimension, and heads at most 512 wide)",
                self.rope.rotary_dim,
                self.head_dim
            );
        }
        if !self.rope.freq_factors.is_empty()
            && self.rope.freq_factors.len() != self.rope.rotary_dim / 2
        {
            bail!(
                "{} rope frequency factors for {} frequencies",
                self.rope.freq_factors.len(),
                self.rope.rotary_dim / 2
            );
        }
        if self
            .rope
            .freq_factors
            .iter()
            .any(|f| !f.is_finite() || *f <= 0.0)
        {
            bail!("rope frequency factors must be positive numbers");
        }
        if self.sliding_pattern == Some(0) {
            bail!("a sliding-window pattern of 0 layers");
        }
        Ok(())
    }

    /// Query heads that share one key/value head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// The window of layer `layer`, if it slides.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let window = self.sliding_window?;
        match self.sliding_pattern {
            Some(n) if layer % n == n - 1 => None,
            _ => Some(window),
        }
    }

    /// The rope of layer `layer`.
    pub fn layer_rope(&self, layer: usize) -> &RopeSpec {
        match (&self.rope_local, self.layer_window(layer)) {
            (Some(local), Some(_)) => local,
            _ => &self.rope,
        }
    }
}

/// Llama 3's frequency factors (its `rope_scaling` of type "llama3"): low frequencies
/// divided by `factor`, high ones kept, a smooth blend between.
pub fn llama3_factors(
    theta: f32,
    rotary_dim: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_context: f64,
) -> Vec<f32> {
    let low_wavelen = original_context / low_freq_factor;
    let high_wavelen = original_context / high_freq_factor;
    (0..rotary_dim / 2)
        .map(|i| {
            let freq = 1.0 / f64::from(theta).powf((2 * i) as f64 / rotary_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let scaled = if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / factor
            } else {
                let smooth = (original_context / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * freq / factor + smooth * freq
            };
            (freq / scaled) as f32
        })
        .collect()
}
