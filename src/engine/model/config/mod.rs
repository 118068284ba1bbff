//! The shape of a model, read from GGUF metadata or a Hugging Face config.json.
//!
//! One [`ModelConfig`] describes every family the engine runs; the families differ in a
//! handful of switches (biases, q/k norms, extra norms, the activation, sliding windows,
//! rope variants), which the decoder reads. Each reader (`gguf.rs`: GGUF metadata;
//! `hf.rs`: config.json) takes what the file says; what the family alone decides is added
//! in one shared step, `RawConfig::finish`, which also checks the result.

mod gguf;
mod hf;

use anyhow::bail;
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

/// What the two readers of a model's config (GGUF metadata, `config.json`) find in the
/// file: everything but what the family alone decides, which [`RawConfig::finish`] adds
/// in one place for both.
struct RawConfig {
    architecture: Architecture,
    n_layers: usize,
    hidden_size: usize,
    intermediate_size: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    vocab_size: usize,
    context_length: usize,
    rms_norm_eps: f64,
    rope: RopeSpec,
    rope_local: Option<RopeSpec>,
    attention_scale: f32,
    sliding_window: Option<usize>,
    sliding_pattern: Option<usize>,
    norm_offset: f32,
}

impl RawConfig {
    /// The family's switches (biases, q/k norms, extra norms, activation, embedding
    /// scale), then the checks.
    fn finish(self) -> anyhow::Result<ModelConfig> {
        let architecture = self.architecture;
        let is_gemma = architecture == Architecture::Gemma3;
        let config = ModelConfig {
            architecture,
            n_layers: self.n_layers,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            vocab_size: self.vocab_size,
            context_length: self.context_length,
            rms_norm_eps: self.rms_norm_eps,
            rope: self.rope,
            rope_local: self.rope_local,
            qkv_bias: architecture == Architecture::Qwen2,
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            post_norms: is_gemma,
            activation: if is_gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            embedding_scale: is_gemma.then(|| (self.hidden_size as f32).sqrt()),
            attention_scale: self.attention_scale,
            sliding_window: self.sliding_window,
            sliding_pattern: self.sliding_pattern,
            norm_offset: self.norm_offset,
        };
        config.validate()?;
        Ok(config)
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
