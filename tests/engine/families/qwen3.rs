//! Qwen3: RMS norms on each head of q and k (weights far from 1), heads wider than
//! hidden / heads (as in the real models), against candle-transformers' `qwen3` and, on
//! the GGUF file, its `quantized_qwen3`.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::quantized_qwen3::ModelWeights;
use candle_transformers::models::qwen3::{Config, ModelForCausalLM};
use serde_json::json;

use super::generate::Family;
use super::{Reference, Written, check_shards_of, input, logits, prompt, read_gguf};

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

/// A candle Qwen3 model: `forward(tokens, offset)` and `clear_kv_cache()`.
trait Qwen3Like {
    fn forward(&mut self, tokens: &[u32], offset: usize) -> Vec<f32>;
    fn clear(&mut self);
}

impl Qwen3Like for ModelForCausalLM {
    fn forward(&mut self, tokens: &[u32], offset: usize) -> Vec<f32> {
        logits(ModelForCausalLM::forward(self, &input(tokens), offset))
    }
    fn clear(&mut self) {
        self.clear_kv_cache();
    }
}

impl Qwen3Like for ModelWeights {
    fn forward(&mut self, tokens: &[u32], offset: usize) -> Vec<f32> {
        logits(ModelWeights::forward(self, &input(tokens), offset))
    }
    fn clear(&mut self) {
        self.clear_kv_cache();
    }
}

struct CandleQwen3<M>(M);

impl<M: Qwen3Like> Reference for CandleQwen3<M> {
    fn full(&mut self, tokens: &[u32]) -> Vec<f32> {
        self.0.clear();
        self.0.forward(tokens, 0)
    }

    fn cached(&mut self, tokens: &[u32], prompt: usize) -> Option<Vec<Vec<f32>>> {
        self.0.clear();
        let mut out = vec![self.0.forward(&tokens[..prompt], 0)];
        for (i, &t) in tokens[prompt..].iter().enumerate() {
            out.push(self.0.forward(&[t], prompt + i));
        }
        Some(out)
    }
}

#[test]
fn qwen3_qk_norms_match_candle_transformers_qwen3() {
    let written = Written::new(Family::Qwen3, config(), 61);
    let config: Config = serde_json::from_value(written.model.config.clone()).unwrap();
    let vb = VarBuilder::from_tensors(written.model.weights.clone(), DType::F32, &Device::Cpu);
    let mut reference = CandleQwen3(ModelForCausalLM::new(&config, vb).unwrap());
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
    written.check_gguf_reference(&mut CandleQwen3(model), &tokens, 20);
}

#[test]
fn qwen3_shards_agree() {
    check_shards_of(&Written::new(Family::Qwen3, config(), 61));
}
