//! Llama 3.x: rope scaling of type "llama3", against candle-transformers' `llama`.
//!
//! The generated model's rope is chosen so that the scaling changes frequencies at the
//! positions the test reaches: θ = 500 over 16-wide heads gives wavelengths from 6 to 1430
//! positions, and an original context of 64 with low/high frequency factors 1 and 4 keeps
//! the two shortest, blends the third and divides the rest by 8. The GGUF file carries the
//! factors as llama.cpp's converter writes them, in a `rope_freqs` tensor.
//!
//! candle's quantized llama reads no `rope_freqs`, so it is no reference for this family.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Config, Llama, LlamaConfig};
use serde_json::json;

use super::generate::Family;
use super::{Candle, CandleModel, Written, check_shards_of, prompt, tiny_config};

pub(super) fn config() -> serde_json::Value {
    tiny_config(
        "LlamaForCausalLM",
        "llama",
        json!({
            "rms_norm_eps": 1e-5,
            "rope_theta": 500.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64
            },
            "tie_word_embeddings": false
        }),
    )
}

/// candle's llama, whose cache is a value of its own.
struct CandleLlama {
    model: Llama,
    config: Config,
    cache: Cache,
}

impl CandleLlama {
    fn load(written: &Written) -> Candle<Self> {
        let config: LlamaConfig = serde_json::from_value(written.model.config.clone()).unwrap();
        let config = config.into_config(false);
        let vb = VarBuilder::from_tensors(written.model.weights.clone(), DType::F32, &Device::Cpu);
        let model = Llama::load(vb, &config).unwrap();
        let cache = Cache::new(true, DType::F32, &config, &Device::Cpu).unwrap();
        Candle::new(CandleLlama {
            model,
            config,
            cache,
        })
    }
}

impl CandleModel for CandleLlama {
    fn forward(&mut self, input: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        self.model.forward(input, offset, &mut self.cache)
    }

    fn clear(&mut self) {
        self.cache = Cache::new(true, DType::F32, &self.config, &Device::Cpu).unwrap();
    }
}

#[test]
fn llama3_rope_scaling_matches_candle_transformers_llama() {
    let written = Written::new(Family::Llama3, config(), 31);
    let tokens = written.sequence(&prompt(20), 4);
    written.check_reference(&mut CandleLlama::load(&written), &tokens, 20);
}

#[test]
fn llama3_gguf_with_rope_freqs_matches_the_safetensors() {
    let written = Written::new(Family::Llama3, config(), 31);
    let tokens = written.sequence(&prompt(20), 4);
    written.check_gguf_matches_safetensors(&tokens, 20);
}

#[test]
fn llama3_shards_agree() {
    check_shards_of(&Written::new(Family::Llama3, config(), 31));
}
