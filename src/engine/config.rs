//! The shape of a model, read from GGUF metadata or a Hugging Face config.json.

use std::collections::HashMap;

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file;
use serde::Serialize;

/// The model families the sharded model code implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Qwen2,
}

impl Architecture {
    fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "llama" | "LlamaForCausalLM" => Ok(Architecture::Llama),
            "qwen2" | "Qwen2ForCausalLM" => Ok(Architecture::Qwen2),
            other => bail!("unsupported model architecture '{other}' (supported: llama, qwen2)"),
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1). llama.cpp's converter permutes llama's q/k weights into this
    /// layout, so GGUF llama files use it.
    Interleaved,
    /// Pairs (i, i + d/2), Hugging Face's `rotate_half`: safetensors checkpoints, and
    /// GGUF qwen2 (which llama.cpp does not permute).
    Halves,
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
    pub rope_theta: f32,
    pub rms_norm_eps: f64,
    pub rope_layout: RopeLayout,
    /// Whether q, k and v projections have biases (qwen2).
    pub qkv_bias: bool,
}

impl ModelConfig {
    /// Reads the `<arch>.*` keys of a GGUF file.
    pub fn from_gguf(content: &gguf_file::Content) -> anyhow::Result<Self> {
        let md = &content.metadata;
        let arch_name = md
            .get("general.architecture")
            .context("GGUF metadata has no general.architecture")?
            .to_string()
            .context("general.architecture is not a string")?
            .clone();
        let architecture = Architecture::parse(&arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_u32 = |k: &str| -> anyhow::Result<usize> {
            let full = key(k);
            let value = md
                .get(&full)
                .with_context(|| format!("GGUF metadata has no {full}"))?;
            Ok(value
                .to_u32()
                .or_else(|_| value.to_u64().map(|v| v as u32))
                .with_context(|| format!("{full} is not an unsigned integer"))?
                as usize)
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
        let n_heads = get_u32("attention.head_count")?;
        let hidden_size = get_u32("embedding_length")?;
        let n_kv_heads = get_u32("attention.head_count_kv").unwrap_or(n_heads);
        let head_dim = match get_u32("rope.dimension_count") {
            Ok(d) => d,
            Err(_) => hidden_size / n_heads.max(1),
        };
        let vocab_size = match get_u32("vocab_size") {
            Ok(v) => v,
            Err(_) => md
                .get("tokenizer.ggml.tokens")
                .and_then(|t| t.to_vec().ok())
                .map(|t| t.len())
                .context("GGUF metadata has neither a vocab size nor tokens")?,
        };
        let config = ModelConfig {
            architecture,
            n_layers: get_u32("block_count")?,
            hidden_size,
            intermediate_size: get_u32("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length: get_u32("context_length").unwrap_or(4096),
            rope_theta: get_f32("rope.freq_base")?.unwrap_or(10_000.0),
            rms_norm_eps: f64::from(
                get_f32("attention.layer_norm_rms_epsilon")?
                    .context("GGUF metadata has no attention.layer_norm_rms_epsilon")?,
            ),
            rope_layout: match architecture {
                Architecture::Llama => RopeLayout::Interleaved,
                Architecture::Qwen2 => RopeLayout::Halves,
            },
            qkv_bias: architecture == Architecture::Qwen2,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json` (llama and qwen2 families).
    pub fn from_hf_json(text: &str) -> anyhow::Result<Self> {
        let raw: HashMap<String, serde_json::Value> =
            serde_json::from_str(text).context("config.json is not a JSON object")?;
        let arch_name = raw
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .or_else(|| raw.get("model_type").and_then(|m| m.as_str()))
            .context("config.json names no architecture (architectures / model_type)")?;
        let architecture = Architecture::parse(arch_name)?;
        let uint = |k: &str| -> anyhow::Result<usize> {
            raw.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .with_context(|| format!("config.json has no unsigned integer '{k}'"))
        };
        let float = |k: &str| raw.get(k).and_then(|v| v.as_f64());
        if let Some(scaling) = raw.get("rope_scaling").filter(|v| !v.is_null()) {
            bail!("config.json uses rope_scaling {scaling}, which this engine does not implement");
        }
        let hidden_size = uint("hidden_size")?;
        let n_heads = uint("num_attention_heads")?;
        let config = ModelConfig {
            architecture,
            n_layers: uint("num_hidden_layers")?,
            hidden_size,
            intermediate_size: uint("intermediate_size")?,
            n_heads,
            n_kv_heads: uint("num_key_value_heads").unwrap_or(n_heads),
            head_dim: uint("head_dim").unwrap_or(hidden_size / n_heads.max(1)),
            vocab_size: uint("vocab_size")?,
            context_length: uint("max_position_embeddings").unwrap_or(4096),
            rope_theta: float("rope_theta").unwrap_or(10_000.0) as f32,
            rms_norm_eps: float("rms_norm_eps").unwrap_or(1e-6),
            rope_layout: RopeLayout::Halves,
            qkv_bias: architecture == Architecture::Qwen2,
        };
        config.validate()?;
        Ok(config)
    }

    /// Rejects shapes the model code cannot run, with the reason.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.n_layers == 0 || self.hidden_size == 0 || self.n_heads == 0 || self.n_kv_heads == 0
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
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "head dimension {} is odd; rotary embeddings need pairs",
                self.head_dim
            );
        }
        Ok(())
    }

    /// Query heads that share one key/value head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

pub fn is_supported_architecture(name: &str) -> bool { matches!(name, "llama" | "qwen2" | "qwen3" | "gemma3" | "phi3") }
