//! Rotary position embeddings: precomputed cos/sin tables and their application.

use candle_core::{DType, Device, Tensor};

use super::config::RopeLayout;

/// cos and sin of `position × θᵢ` for every position of the context, `θᵢ = base^(-2i/d)`.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    layout: RopeLayout,
}

impl Rope {
    pub fn new(
        head_dim: usize,
        base: f32,
        max_positions: usize,
        layout: RopeLayout,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let angles = positions.matmul(&inv_freq)?;
        Ok(Rope {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
            layout,
        })
    }

    /// Rotates `x` of shape (batch, heads, seq, head_dim) whose first token sits at
    /// `position`.
    pub fn apply(&self, x: &Tensor, position: usize) -> candle_core::Result<Tensor> {
        let seq_len = x.dim(2)?;
        let cos = self.cos.narrow(0, position, seq_len)?;
        let sin = self.sin.narrow(0, position, seq_len)?;
        let x = x.contiguous()?;
        match self.layout {
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin),
            RopeLayout::Halves => candle_nn::rotary_emb::rope(&x, &cos, &sin),
        }
    }
}
