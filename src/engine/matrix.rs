//! A weight matrix as the model code uses it: candle's `QMatMul` (dense weights, GPUs,
//! formats without our kernel) or our exact-activation CPU kernel.

use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::quant_matmul::QuantMatrix;

/// Which CPU kernels run quantized matmuls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuMatmul {
    /// Ours: weights dequantized on the fly, activations kept in f32 (the default; see
    /// `quant_matmul` for why).
    #[default]
    Exact,
    /// candle's: activations quantized to 8 bits first, as llama.cpp does.
    Candle,
}

impl FromStr for CpuMatmul {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "exact" => Ok(CpuMatmul::Exact),
            "candle" => Ok(CpuMatmul::Candle),
            other => Err(format!(
                "unknown CPU matmul '{other}': expected exact or candle"
            )),
        }
    }
}

/// `y = x · Wᵀ`, whatever holds `W`.
#[derive(Clone)]
pub enum Matrix {
    Candle(QMatMul),
    Exact(Arc<QuantMatrix>),
}

impl Matrix {
    /// Wraps a quantized tensor read from a file.
    pub fn from_qtensor(
        tensor: QTensor,
        device: &Device,
        kernels: CpuMatmul,
    ) -> candle_core::Result<Self> {
        if device.is_cpu()
            && kernels == CpuMatmul::Exact
            && let Some(matrix) = QuantMatrix::from_qtensor(&tensor)?
        {
            return Ok(Matrix::Exact(Arc::new(matrix)));
        }
        Ok(Matrix::Candle(QMatMul::from_qtensor(tensor)?))
    }

    /// A dense weight (rows × cols).
    pub fn dense(weight: Tensor) -> Self {
        Matrix::Candle(QMatMul::Tensor(weight))
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Matrix::Candle(matmul) => matmul.forward(x),
            Matrix::Exact(matrix) => matrix.forward(x),
        }
    }

    /// Rows `ids` (an embedding lookup), shape ids.dims + [cols].
    pub fn embedding(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Matrix::Candle(matmul) => matmul.embedding(ids),
            Matrix::Exact(matrix) => matrix.embedding(ids),
        }
    }
}
