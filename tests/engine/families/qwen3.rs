//! Qwen3: RMS norms on each head of q and k (weights far from 1), heads wider than
//! hidden / heads (as in the real models), against candle-transformers' `qwen3` and, on
//! the GGUF file, its `quantized_qwen3`.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::quantized_qwen3::ModelWeights;
use candle_transformers::models::qwen3::{Config, ModelForCausalLM};
use serde_json::json;

use super::generate::Family;
use super::{Candle, Written, check_shards_of, prompt, read_gguf};

pub(super) fn config() -> serde_json::Value {
    json!({
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_hidden_layers": 4,
        "vocab_size": super::generate::vocab_size(),
        "max_position_embeddings": 128,
        "sliding_window": null,
        "max_window_layers": 4,
        "use_sliding_window": false,
        "attention_bias": false,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false
    })
}

#[test]
fn qwen3_qk_norms_match_candle_transformers_qwen3() {
    let written = Written::new(Family::Qwen3, config(), 61);
    let config: Config = serde_json::from_value(written.model.config.clone()).unwrap();
    let vb = VarBuilder::from_tensors(written.model.weights.clone(), DType::F32, &Device::Cpu);
    let mut reference = Candle::new(ModelForCausalLM::new(&config, vb).unwrap());
    let tokens = written.sequence(&prompt(20), 4);
    written.check_reference(&mut reference, &tokens, 20);
}

#[test]
fn qwen3_gguf_matches_the_safetensors_and_candle_quantized_qwen3() {
    let written = Written::new(Family::Qwen3, config(), 61);
    let tokens = written.sequence(&prompt(20), 4);
    written.check_gguf_matches_safetensors(&tokens, 20);
    let (content, mut file) = read_gguf(&written.gguf);
    let model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    written.check_gguf_reference(&mut Candle::new(model), &tokens, 20);
}

#[test]
fn qwen3_shards_agree() {
    check_shards_of(&Written::new(Family::Qwen3, config(), 61));
}
