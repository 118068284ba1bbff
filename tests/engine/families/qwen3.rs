//! Qwen3: RMS norms on each head of q and k (weights far from 1), heads wider than
//! hidden / heads (as in the real models), against candle-transformers' `qwen3` and, on
//! the GGUF file, its `quantized_qwen3`.

use candle_core::Device;
use candle_transformers::models::quantized_qwen3::ModelWeights;
use candle_transformers::models::qwen3::{Config, ModelForCausalLM};
use serde_json::json;

use super::generate::Family;
use super::{Candle, Written, check_shards_of, prompt, read_gguf, tiny_config};

pub(super) fn config() -> serde_json::Value {
    tiny_config(
        "Qwen3ForCausalLM",
        "qwen3",
        json!({
            "head_dim": 32,
            "sliding_window": null,
            "max_window_layers": 4,
            "use_sliding_window": false,
            "attention_bias": false,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": false
        }),
    )
}

#[test]
fn qwen3_qk_norms_match_candle_transformers_qwen3() {
    let written = Written::new(Family::Qwen3, config(), 61);
    let config: Config = written.candle_config();
    let model = ModelForCausalLM::new(&config, written.var_builder()).unwrap();
    written.check_reference_on_the_prompt(&mut Candle::new(model));
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
