//! Qwen2: biases on q, k and v, tied embeddings, against candle-transformers' `qwen2` and,
//! on the GGUF file, its `quantized_qwen2`.
//!
//! Qwen2 configs carry a `sliding_window` that they switch off (`use_sliding_window:
//! false`); candle's qwen2 applies it regardless, so the generated config sets it to the
//! whole context, where it changes nothing for either.

use candle_core::Device;
use candle_transformers::models::quantized_qwen2::ModelWeights;
use candle_transformers::models::qwen2::{Config, ModelForCausalLM};
use serde_json::json;

use super::generate::Family;
use super::{Candle, Written, check_shards_of, prompt, read_gguf, tiny_config};

pub(super) fn config() -> serde_json::Value {
    tiny_config(
        "Qwen2ForCausalLM",
        "qwen2",
        json!({
            "sliding_window": 128,
            "max_window_layers": 4,
            "use_sliding_window": false,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": true
        }),
    )
}

#[test]
fn qwen2_biases_match_candle_transformers_qwen2() {
    let written = Written::new(Family::Qwen2, config(), 51);
    let config: Config = written.candle_config();
    let model = ModelForCausalLM::new(&config, written.var_builder()).unwrap();
    written.check_reference_on_the_prompt(&mut Candle::new(model));
}

#[test]
fn qwen2_gguf_matches_the_safetensors_and_candle_quantized_qwen2() {
    let written = Written::new(Family::Qwen2, config(), 51);
    let tokens = written.sequence(&prompt(20), 4);
    written.check_gguf_matches_safetensors(&tokens, 20);
    let (content, mut file) = read_gguf(&written.gguf);
    let model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let mut reference = Candle::new(model);
    written.check_gguf_reference(&mut reference, &tokens, 20);
}

#[test]
fn qwen2_shards_agree() {
    check_shards_of(&Written::new(Family::Qwen2, config(), 51));
}
