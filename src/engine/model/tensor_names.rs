//! What each family calls its tensors, in GGUF files and in Hugging Face safetensors.

use super::config::Architecture;

/// The file format the names are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameStyle {
    Gguf,
    HuggingFace,
}

/// A tensor of one decoder layer, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerTensor {
    AttnNorm,
    Q,
    K,
    V,
    /// q, k and v stacked (Phi-3).
    Qkv,
    QBias,
    KBias,
    VBias,
    QNorm,
    KNorm,
    Output,
    /// The norm after attention (Gemma 3).
    PostAttnNorm,
    FfnNorm,
    Gate,
    Up,
    /// gate and up stacked (Phi-3).
    GateUp,
    Down,
    /// The norm after the feed-forward block (Gemma 3).
    PostFfnNorm,
}

/// The tensors outside the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalTensor {
    Embedding,
    FinalNorm,
    Head,
    /// Llama 3's rope frequency factors (GGUF only).
    RopeFreqs,
    /// Phi-3's LongRoPE short factors (GGUF only).
    RopeFactorsShort,
}

/// The name of a layer tensor.
pub fn layer_name(
    style: NameStyle,
    arch: Architecture,
    layer: usize,
    tensor: LayerTensor,
) -> String {
    use LayerTensor::*;
    match style {
        NameStyle::Gguf => {
            let suffix = match tensor {
                AttnNorm => "attn_norm.weight",
                Q => "attn_q.weight",
                K => "attn_k.weight",
                V => "attn_v.weight",
                Qkv => "attn_qkv.weight",
                QBias => "attn_q.bias",
                KBias => "attn_k.bias",
                VBias => "attn_v.bias",
                QNorm => "attn_q_norm.weight",
                KNorm => "attn_k_norm.weight",
                Output => "attn_output.weight",
                PostAttnNorm => "post_attention_norm.weight",
                FfnNorm => "ffn_norm.weight",
                Gate => "ffn_gate.weight",
                // Phi-3's stacked gate/up is called ffn_up in GGUF files.
                Up | GateUp => "ffn_up.weight",
                Down => "ffn_down.weight",
                PostFfnNorm => "post_ffw_norm.weight",
            };
            format!("blk.{layer}.{suffix}")
        }
        NameStyle::HuggingFace => {
            let gemma = arch == Architecture::Gemma3;
            let suffix = match tensor {
                AttnNorm => "input_layernorm.weight",
                Q => "self_attn.q_proj.weight",
                K => "self_attn.k_proj.weight",
                V => "self_attn.v_proj.weight",
                Qkv => "self_attn.qkv_proj.weight",
                QBias => "self_attn.q_proj.bias",
                KBias => "self_attn.k_proj.bias",
                VBias => "self_attn.v_proj.bias",
                QNorm => "self_attn.q_norm.weight",
                KNorm => "self_attn.k_norm.weight",
                Output => "self_attn.o_proj.weight",
                // Gemma's "post attention" norm follows attention; the others' precedes
                // the feed-forward block.
                PostAttnNorm => "post_attention_layernorm.weight",
                FfnNorm if gemma => "pre_feedforward_layernorm.weight",
                FfnNorm => "post_attention_layernorm.weight",
                Gate => "mlp.gate_proj.weight",
                Up => "mlp.up_proj.weight",
                GateUp => "mlp.gate_up_proj.weight",
                Down => "mlp.down_proj.weight",
                PostFfnNorm => "post_feedforward_layernorm.weight",
            };
            format!("model.layers.{layer}.{suffix}")
        }
    }
}

/// The name of a tensor outside the layers.
pub fn global_name(style: NameStyle, tensor: GlobalTensor) -> &'static str {
    match (style, tensor) {
        (NameStyle::Gguf, GlobalTensor::Embedding) => "token_embd.weight",
        (NameStyle::Gguf, GlobalTensor::FinalNorm) => "output_norm.weight",
        (NameStyle::Gguf, GlobalTensor::Head) => "output.weight",
        (NameStyle::Gguf, GlobalTensor::RopeFreqs) => "rope_freqs.weight",
        (NameStyle::Gguf, GlobalTensor::RopeFactorsShort) => "rope_factors_short.weight",
        (NameStyle::HuggingFace, GlobalTensor::Embedding) => "model.embed_tokens.weight",
        (NameStyle::HuggingFace, GlobalTensor::FinalNorm) => "model.norm.weight",
        (NameStyle::HuggingFace, GlobalTensor::Head) => "lm_head.weight",
        (NameStyle::HuggingFace, GlobalTensor::RopeFreqs) => "rope_freqs.weight",
        (NameStyle::HuggingFace, GlobalTensor::RopeFactorsShort) => "rope_factors_short.weight",
    }
}

/// The layer a tensor name belongs to (`blk.N.` or `model.layers.N.`), if any.
pub fn layer_of(name: &str) -> Option<usize> {
    let rest = name
        .strip_prefix("blk.")
        .or_else(|| name.strip_prefix("model.layers."))?;
    rest.split('.').next()?.parse().ok()
}
