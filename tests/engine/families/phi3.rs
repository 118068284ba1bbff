//! Phi-3: fused qkv and gate/up projections and LongRoPE, against candle-transformers'
//! `phi3`.
//!
//! The generated model's short factors run from 1 to 2.75, and its context (256) is four
//! times the original (64), so the attention factor √(1 + ln 4 / ln 64) ≈ 1.155 scales
//! cos and sin (and the scores by its square). The engine holds the context to the
//! original 64, where the short factors apply.
//!
//! Where candle's phi3 is not Hugging Face's model, its reference is run so that it is:
//! - it multiplies the frequencies by the LongRoPE factors where Hugging Face divides
//!   them (`inv_freq = 1 / (factor · base^(2i/d))`): it is given the reciprocal factors;
//! - it leaves out the attention factor: the q and k rows of its fused projection are
//!   multiplied by it instead, which scales the rotated q and k alike (the rope is linear).
//!
//! The GGUF file carries the factors in `rope_factors_short` / `rope_factors_long` and the
//! attention factor as `phi3.rope.scaling.attn_factor`, as llama.cpp's converter writes
//! them. candle's quantized_phi3 reads neither (its rope is plain, with θ fixed at
//! 10 000), so it is no reference for this model.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::phi3::{Config, Model};
use serde_json::json;

use super::generate::{Family, dim, head_dim, longrope_attention_factor};
use super::{Candle, Written, check_shards_of, prompt, tiny_config};

pub(super) fn config() -> serde_json::Value {
    let half = 8;
    let short: Vec<f32> = (0..half).map(|i| 1.0 + 0.25 * i as f32).collect();
    let long = vec![4.0f32; half];
    tiny_config(
        "Phi3ForCausalLM",
        "phi3",
        json!({
            "max_position_embeddings": 256,
            "original_max_position_embeddings": 64,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "rope_scaling": {"type": "longrope", "short_factor": short, "long_factor": long},
            "hidden_act": "silu",
            "tie_word_embeddings": false
        }),
    )
}

/// candle's phi3 computing Hugging Face's model: its rope factors inverted, the LongRoPE
/// attention factor folded into the q and k rows.
fn candle_phi3(written: &Written) -> Candle<Model> {
    let c = &written.model.config;
    let mut reference_config = c.clone();
    for kind in ["short_factor", "long_factor"] {
        let factors: Vec<f64> = serde_json::from_value(c["rope_scaling"][kind].clone()).unwrap();
        reference_config["rope_scaling"][kind] =
            json!(factors.iter().map(|f| 1.0 / f).collect::<Vec<_>>());
    }
    let config: Config = serde_json::from_value(reference_config).unwrap();
    // q and k rows of each fused projection times the attention factor.
    let attention = longrope_attention_factor(c);
    let qk_rows = (dim(c, "num_attention_heads") + dim(c, "num_key_value_heads")) * head_dim(c);
    let mut weights = written.model.weights.clone();
    for (name, w) in weights.iter_mut() {
        if name.ends_with("self_attn.qkv_proj.weight") {
            let rows = w.dim(0).unwrap();
            let qk = (w.narrow(0, 0, qk_rows).unwrap() * attention).unwrap();
            let v = w.narrow(0, qk_rows, rows - qk_rows).unwrap();
            *w = Tensor::cat(&[&qk, &v], 0).unwrap();
        }
    }
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    Candle::new(Model::new(&config, vb).unwrap())
}

#[test]
fn phi3_longrope_and_fused_projections_match_candle_transformers_phi3() {
    let written = Written::new(Family::Phi3, config(), 81);
    let engine_config = written.open_hf(Default::default()).config().clone();
    assert_eq!(engine_config.context_length, 64);
    assert!(engine_config.rope.magnitude > 1.15);
    let tokens = written.sequence(&prompt(20), 4);
    written.check_reference(&mut candle_phi3(&written), &tokens, 20);
}

#[test]
fn phi3_gguf_with_rope_factor_tensors_matches_the_safetensors() {
    let written = Written::new(Family::Phi3, config(), 81);
    let tokens = written.sequence(&prompt(20), 4);
    written.check_gguf_matches_safetensors(&tokens, 20);
}

#[test]
fn phi3_shards_agree() {
    check_shards_of(&Written::new(Family::Phi3, config(), 81));
}
