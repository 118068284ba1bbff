//! Gemma 3 against candle-transformers' `gemma3`.
//!
//! The generated model has six layers with the pattern 6 (five local layers, then a
//! global one), a window of 8 (shorter than the 20-token prompt), local and global rope
//! bases 10 000 and 1 000 000, `query_pre_attn_scalar` 24 with heads 32 wide, norms stored
//! as w for (1 + w) with w up to ±0.5, GELU-tanh, tied and √hidden-scaled embeddings.
//!
//! Where candle's gemma3 is not Hugging Face's model, its reference is run so that it is:
//! - it scales scores by 1/√head_dim and ignores `query_pre_attn_scalar`: the reference's
//!   q norms are given (1 + w)·√(head_dim / query_pre_attn_scalar) − 1, which multiplies
//!   every query, and so every score, by the missing factor (the rope is linear);
//! - its multi-token path fails on any model with a global layer (candle 0.11.1's plain
//!   KV cache refuses the non-contiguous values of a step of several tokens), and its
//!   prompt mask would keep window + 1 keys (it masks j + window < i, where Hugging Face
//!   masks j + window ≤ i): so the reference is fed one token at a time, where its
//!   rotating cache keeps exactly the last `window` keys of a local layer, as Hugging Face
//!   and llama.cpp do.
//!
//! The GGUF file is written as llama.cpp's converter writes Gemma 3: norms with the 1
//! added, the window as `gemma3.attention.sliding_window`, the local base and the pattern
//! left to their defaults (10 000 and 6, as llama.cpp assumes). GGUF files carry no
//! `query_pre_attn_scalar` (llama.cpp scales by 1/√head_dim, or by the width per head for
//! the 27B model, which is what every Gemma 3 has), so the GGUF check uses a model whose
//! scalar is its head dimension. candle's quantized_gemma3 is no reference: it applies
//! SiLU where Gemma uses GELU-tanh (see gemma_real.rs for what that does to the real model).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::gemma3::{Config, Model};
use serde_json::json;

use super::generate::{Family, dim, number};
use super::{Candle, Written, check_shards_of, prompt, tiny_config};

const WINDOW: usize = 8;

pub(super) fn config(query_pre_attn_scalar: usize) -> serde_json::Value {
    tiny_config(
        "Gemma3ForCausalLM",
        "gemma3_text",
        json!({
            "attention_bias": false,
            "head_dim": 32,
            "hidden_activation": "gelu_pytorch_tanh",
            "num_hidden_layers": 6,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "query_pre_attn_scalar": query_pre_attn_scalar,
            "sliding_window": WINDOW,
            "sliding_window_pattern": 6,
            "final_logit_softcapping": null,
            "attn_logit_softcapping": null,
            "tie_word_embeddings": true
        }),
    )
}

/// candle's gemma3, fed one token at a time (see the file's notes).
fn candle_gemma3(written: &Written) -> Candle<Model> {
    let c = &written.model.config;
    // Every query times √(head_dim / query_pre_attn_scalar), through the q norms.
    let factor = (dim(c, "head_dim") as f64 / number(c, "query_pre_attn_scalar")).sqrt();
    let mut weights = written.model.weights.clone();
    for (name, w) in weights.iter_mut() {
        if name.ends_with("self_attn.q_norm.weight") {
            *w = (((w.clone() + 1.0).unwrap() * factor).unwrap() - 1.0).unwrap();
        }
    }
    let config: Config = serde_json::from_value(c.clone()).unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    Candle::one_token_at_a_time(Model::new(false, &config, vb).unwrap())
}

#[test]
fn gemma3_matches_candle_transformers_gemma3() {
    let written = Written::new(Family::Gemma3, config(24), 71);
    let engine_config = written.open_hf(Default::default()).config().clone();
    assert_eq!(engine_config.layer_window(0), Some(WINDOW));
    assert_eq!(engine_config.layer_window(5), None);
    let tokens = written.sequence(&prompt(20), 4);
    written.check_reference(&mut candle_gemma3(&written), &tokens, 20);
}

#[test]
fn gemma3_gguf_matches_the_safetensors() {
    let written = Written::new(Family::Gemma3, config(32), 71);
    let tokens = written.sequence(&prompt(20), 4);
    written.check_gguf_matches_safetensors(&tokens, 20);
    // The norms were written with their 1 added, as llama.cpp's converter does.
    let gguf = written.model.to_gguf();
    let (_, norm) = gguf
        .tensors
        .iter()
        .find(|(name, _)| name == "blk.0.post_ffw_norm.weight")
        .unwrap();
    let hf = &written.model.weights["model.layers.0.post_feedforward_layernorm.weight"];
    let shift = (norm - hf).unwrap();
    let ones = Tensor::ones_like(&shift).unwrap();
    let off: f32 = (shift - ones)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(off < 1e-6);
}

#[test]
fn gemma3_shards_agree() {
    check_shards_of(&Written::new(Family::Gemma3, config(24), 71));
}
