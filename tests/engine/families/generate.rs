//! Tiny random models of every family: written as Hugging Face checkpoints (config.json,
//! model.safetensors in f32, tokenizer.json) and converted to GGUF as llama.cpp's
//! `convert_hf_to_gguf.py` converts each family.
//!
//! The GGUF conversion reads the same config.json and tensors a real conversion reads, and
//! applies the same per-family rules (llama's q/k permuted into interleaved rope pairs,
//! Gemma's norms with their +1 folded in, Phi-3's fused tensors under llama.cpp's names,
//! rope factors as tensors), so a test comparing the two files checks the engine's reading
//! of both conventions against each other.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use serde_json::Value as Json;

use crate::synthetic::{permute_for_gguf, vocabulary, write_tokenizer_json};

/// The families the engine runs, by the Hugging Face architecture they are written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama 3.x: rope scaling of type "llama3".
    Llama3,
    /// Mistral: the llama layout with a sliding window on every layer.
    Mistral,
    /// Qwen2: biases on q, k and v.
    Qwen2,
    /// Qwen3: RMS norms on each head of q and k.
    Qwen3,
    /// Gemma 3: local and global layers, extra norms, GELU, scaled embeddings.
    Gemma3,
    /// Phi-3: fused qkv and gate/up, LongRoPE.
    Phi3,
}

impl Family {
    /// `general.architecture` in llama.cpp's files.
    pub fn gguf_architecture(self) -> &'static str {
        match self {
            Family::Llama3 | Family::Mistral => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma3 => "gemma3",
            Family::Phi3 => "phi3",
        }
    }
}

/// A generated model: its config.json and its f32 tensors under Hugging Face names.
pub struct Model {
    pub family: Family,
    pub config: Json,
    pub weights: HashMap<String, Tensor>,
}

/// A config.json entry that must be an unsigned integer.
pub fn dim(config: &Json, key: &str) -> usize {
    config[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config.json needs an integer {key}")) as usize
}

/// A config.json entry that must be a number.
pub fn number(config: &Json, key: &str) -> f64 {
    config[key]
        .as_f64()
        .unwrap_or_else(|| panic!("config.json needs a number {key}"))
}

/// The head dimension: explicit in Qwen3 and Gemma 3 configs, hidden / heads otherwise.
pub fn head_dim(config: &Json) -> usize {
    config["head_dim"]
        .as_u64()
        .map(|d| d as usize)
        .unwrap_or_else(|| dim(config, "hidden_size") / dim(config, "num_attention_heads"))
}

/// The size of the tiny vocabulary (the byte-level alphabet and two special tokens).
pub fn vocab_size() -> usize {
    vocabulary().len()
}

/// Deterministic uniform values (candle's CPU RNG is global, so tests make their own).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self, shape: &[usize], centre: f32, spread: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = (self.0 >> 40) as f32 / (1u64 << 24) as f32;
                centre + (unit * 2.0 - 1.0) * spread
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }
}

impl Model {
    /// Random weights for `config`, in the family's Hugging Face layout. Norm weights vary
    /// around their neutral value (1, or 0 for Gemma, which stores w for 1 + w) widely
    /// enough that a norm applied wrongly, or not at all, changes the logits.
    pub fn generate(family: Family, config: Json, seed: u64) -> Model {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1));
        let hidden = dim(&config, "hidden_size");
        let ffn = dim(&config, "intermediate_size");
        let heads = dim(&config, "num_attention_heads");
        let kv_heads = dim(&config, "num_key_value_heads");
        let d = head_dim(&config);
        let vocab = dim(&config, "vocab_size");
        let gemma = family == Family::Gemma3;
        let norm_centre = if gemma { 0.0 } else { 1.0 };
        let mut w = HashMap::new();
        let mut put = |name: String, t: Tensor| {
            w.insert(name, t);
        };
        put(
            "model.embed_tokens.weight".into(),
            rng.uniform(&[vocab, hidden], 0.0, 1.0),
        );
        for l in 0..dim(&config, "num_hidden_layers") {
            let p = format!("model.layers.{l}");
            let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
            if gemma {
                norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
            }
            for norm in norms {
                put(
                    format!("{p}.{norm}.weight"),
                    rng.uniform(&[hidden], norm_centre, 0.3),
                );
            }
            if matches!(family, Family::Qwen3 | Family::Gemma3) {
                for norm in ["q_norm", "k_norm"] {
                    put(
                        format!("{p}.self_attn.{norm}.weight"),
                        rng.uniform(&[d], norm_centre, 0.5),
                    );
                }
            }
            if family == Family::Phi3 {
                put(
                    format!("{p}.self_attn.qkv_proj.weight"),
                    rng.uniform(&[(heads + 2 * kv_heads) * d, hidden], 0.0, 0.2),
                );
                put(
                    format!("{p}.mlp.gate_up_proj.weight"),
                    rng.uniform(&[2 * ffn, hidden], 0.0, 0.2),
                );
            } else {
                for (name, rows) in [("q", heads * d), ("k", kv_heads * d), ("v", kv_heads * d)] {
                    put(
                        format!("{p}.self_attn.{name}_proj.weight"),
                        rng.uniform(&[rows, hidden], 0.0, 0.2),
                    );
                    if family == Family::Qwen2 {
                        put(
                            format!("{p}.self_attn.{name}_proj.bias"),
                            rng.uniform(&[rows], 0.0, 0.3),
                        );
                    }
                }
                for name in ["gate_proj", "up_proj"] {
                    put(
                        format!("{p}.mlp.{name}.weight"),
                        rng.uniform(&[ffn, hidden], 0.0, 0.2),
                    );
                }
            }
            put(
                format!("{p}.self_attn.o_proj.weight"),
                rng.uniform(&[hidden, heads * d], 0.0, 0.2),
            );
            put(
                format!("{p}.mlp.down_proj.weight"),
                rng.uniform(&[hidden, ffn], 0.0, 0.2),
            );
        }
        put(
            "model.norm.weight".into(),
            rng.uniform(&[hidden], norm_centre, 0.3),
        );
        if config["tie_word_embeddings"].as_bool() != Some(true) {
            put(
                "lm_head.weight".into(),
                rng.uniform(&[vocab, hidden], 0.0, 0.5),
            );
        }
        Model {
            family,
            config,
            weights: w,
        }
    }

    /// Writes config.json, model.safetensors (f32) and tokenizer.json into `dir`.
    pub fn write_safetensors(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), self.config.to_string()).unwrap();
        candle_core::safetensors::save(&self.weights, dir.join("model.safetensors")).unwrap();
        write_tokenizer_json(&dir.join("tokenizer.json"));
    }

    /// The model as llama.cpp's converter writes it (see [`Gguf`]).
    pub fn to_gguf(&self) -> Gguf {
        Gguf::convert(self)
    }
}

/// A GGUF file before it is written: metadata and tensors (f32, candle's row-major
/// shapes), which tests of bad input alter before writing.
pub struct Gguf {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<(String, Tensor)>,
}

impl Gguf {
    fn convert(model: &Model) -> Gguf {
        let c = &model.config;
        let family = model.family;
        let arch = family.gguf_architecture();
        let heads = dim(c, "num_attention_heads");
        let kv_heads = dim(c, "num_key_value_heads");
        let d = head_dim(c);
        let key = |k: &str| format!("{arch}.{k}");
        let u32_value = |v: usize| Value::U32(v as u32);
        let mut metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String(arch.into()),
            ),
            (key("block_count"), u32_value(dim(c, "num_hidden_layers"))),
            (
                key("context_length"),
                u32_value(dim(c, "max_position_embeddings")),
            ),
            (key("embedding_length"), u32_value(dim(c, "hidden_size"))),
            (
                key("feed_forward_length"),
                u32_value(dim(c, "intermediate_size")),
            ),
            (key("attention.head_count"), u32_value(heads)),
            (key("attention.head_count_kv"), u32_value(kv_heads)),
            (
                key("rope.freq_base"),
                Value::F32(number(c, "rope_theta") as f32),
            ),
            (
                key("attention.layer_norm_rms_epsilon"),
                Value::F32(number(c, "rms_norm_eps") as f32),
            ),
        ];
        // The converter records an explicit head_dim as the key and value lengths.
        if c.get("head_dim").is_some() {
            metadata.push((key("attention.key_length"), u32_value(d)));
            metadata.push((key("attention.value_length"), u32_value(d)));
        }
        match family {
            Family::Llama3 | Family::Mistral => {
                metadata.push((key("vocab_size"), u32_value(dim(c, "vocab_size"))));
                metadata.push((key("rope.dimension_count"), u32_value(d)));
            }
            Family::Phi3 => metadata.push((key("rope.dimension_count"), u32_value(d))),
            _ => {}
        }
        // A window the model uses: Gemma 3's local layers; Mistral's, under the key
        // llama.cpp's writer defines for it.
        if matches!(family, Family::Gemma3 | Family::Mistral)
            && let Some(window) = c["sliding_window"].as_u64()
        {
            metadata.push((key("attention.sliding_window"), u32_value(window as usize)));
        }
        if family == Family::Qwen3 {
            // Read by candle's quantized_qwen3 only: without it, its rope tables are f16.
            metadata.push(("general.dtype".into(), Value::U32(0)));
        }
        metadata.extend(tokenizer_metadata());

        let mut tensors = Vec::new();
        let mut names: Vec<&String> = model.weights.keys().collect();
        names.sort();
        for name in names {
            let mut t = model.weights[name].clone();
            let permuted = matches!(family, Family::Llama3 | Family::Mistral);
            if permuted && name.ends_with("self_attn.q_proj.weight") {
                t = permute_for_gguf(&t, heads);
            }
            if permuted && name.ends_with("self_attn.k_proj.weight") {
                t = permute_for_gguf(&t, kv_heads);
            }
            if family == Family::Gemma3 && name.ends_with("norm.weight") {
                t = (t + 1.0).unwrap();
            }
            tensors.push((gguf_name(family, name), t));
        }
        match family {
            Family::Llama3 => {
                let factors = llama3_rope_factors(c);
                let n = factors.len();
                tensors.push((
                    "rope_freqs.weight".into(),
                    Tensor::from_vec(factors, n, &Device::Cpu).unwrap(),
                ));
            }
            Family::Phi3 => {
                let scaling = &c["rope_scaling"];
                for (kind, tensor) in [
                    ("short_factor", "rope_factors_short.weight"),
                    ("long_factor", "rope_factors_long.weight"),
                ] {
                    let factors: Vec<f32> = serde_json::from_value(scaling[kind].clone()).unwrap();
                    let n = factors.len();
                    tensors.push((
                        tensor.into(),
                        Tensor::from_vec(factors, n, &Device::Cpu).unwrap(),
                    ));
                }
                let original = dim(c, "original_max_position_embeddings");
                metadata.push((
                    key("rope.scaling.original_context_length"),
                    u32_value(original),
                ));
                metadata.push((
                    key("rope.scaling.attn_factor"),
                    Value::F32(longrope_attention_factor(c) as f32),
                ));
            }
            _ => {}
        }
        Gguf { metadata, tensors }
    }

    /// Sets (or adds) a metadata entry.
    pub fn set(&mut self, key: &str, value: Value) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
    }

    /// The tensor called `name`, to alter.
    pub fn tensor_mut(&mut self, name: &str) -> &mut Tensor {
        self.tensors
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// Writes the file with every tensor in f32.
    pub fn write(&self, path: &Path) {
        self.write_with(path, |_| GgmlDType::F32);
    }

    /// Writes the file with each tensor in the type `dtype_of` gives its name.
    pub fn write_with(&self, path: &Path, dtype_of: impl Fn(&str) -> GgmlDType) {
        let tensors: Vec<(&str, QTensor)> = self
            .tensors
            .iter()
            .map(|(name, t)| (name.as_str(), QTensor::quantize(t, dtype_of(name)).unwrap()))
            .collect();
        let metadata: Vec<(&str, &Value)> =
            self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
        let mut file = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut file, &metadata, &tensor_refs).unwrap();
    }
}

/// llama.cpp's name for a Hugging Face tensor of `family`.
fn gguf_name(family: Family, hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf
        .strip_prefix("model.layers.")
        .unwrap_or_else(|| panic!("unexpected tensor {hf}"));
    let (layer, role) = rest.split_once('.').unwrap();
    let gemma = family == Family::Gemma3;
    let role = match role {
        "input_layernorm.weight" => "attn_norm.weight",
        // Gemma's "post attention" norm follows attention; the others' precedes the
        // feed-forward block.
        "post_attention_layernorm.weight" if gemma => "post_attention_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.qkv_proj.weight" => "attn_qkv.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        // Phi-3's stacked gate and up: llama.cpp calls it ffn_up.
        "mlp.gate_up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("unexpected tensor role {other}"),
    };
    format!("blk.{layer}.{role}")
}

/// The `rope_freqs` tensor llama.cpp's converter writes for rope scaling "llama3": per
/// frequency, the divisor (1 for short wavelengths, `factor` for long ones, a blend in
/// between), computed here from the converter's formula.
fn llama3_rope_factors(config: &Json) -> Vec<f32> {
    let scaling = &config["rope_scaling"];
    let get = |k: &str| scaling[k].as_f64().unwrap();
    let (factor, low, high) = (
        get("factor"),
        get("low_freq_factor"),
        get("high_freq_factor"),
    );
    let old_context = get("original_max_position_embeddings");
    let theta = number(config, "rope_theta");
    let d = head_dim(config);
    let (low_wavelen, high_wavelen) = (old_context / low, old_context / high);
    (0..d / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / d as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let divisor = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_context / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            divisor as f32
        })
        .collect()
}

/// LongRoPE's attention factor, as Hugging Face and llama.cpp's converter compute it: with
/// a context extended by `scale` over the original, cos and sin are multiplied by
/// √(1 + ln scale / ln original).
pub fn longrope_attention_factor(config: &Json) -> f64 {
    let original = dim(config, "original_max_position_embeddings") as f64;
    let scale = dim(config, "max_position_embeddings") as f64 / original;
    if scale > 1.0 {
        (1.0 + scale.ln() / original.ln()).sqrt()
    } else {
        1.0
    }
}

/// The tiny byte-level vocabulary as GGUF metadata (a gpt2-style tokenizer).
fn tokenizer_metadata() -> Vec<(String, Value)> {
    let tokens = vocabulary();
    let n = tokens.len();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                (0..n)
                    .map(|i| Value::I32(if i >= n - 2 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(Vec::new())),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(n as u32 - 2),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(n as u32 - 1),
        ),
    ]
}
