//! `--cpu-matmul`: how the CPU runs the model.

use std::str::FromStr;

use crate::engine::cpu::ActivationPrecision;

/// Which kernels run the model on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuMatmul {
    /// Our kernels on weights repacked at load, activations rounded to 8 bits for integer
    /// dot products (the default: llama.cpp's arithmetic, the fast path).
    #[default]
    Int8,
    /// Our kernels on the file's blocks, activations rounded to 16 bits (a reference:
    /// nearer f32 than 8 bits).
    Int16,
    /// Our kernels with f32 activations: weights dequantized on the fly (the reference
    /// the 16-bit path is measured against).
    F32,
    /// candle's tensors and kernels (activations rounded to 8 bits for quantized
    /// weights, as llama.cpp does): an independent implementation, for comparison.
    Candle,
}

impl CpuMatmul {
    /// The activation precision of our kernels (None: candle's kernels).
    pub fn precision(self) -> Option<ActivationPrecision> {
        match self {
            CpuMatmul::Int8 => Some(ActivationPrecision::Int8),
            CpuMatmul::Int16 => Some(ActivationPrecision::Int16),
            CpuMatmul::F32 => Some(ActivationPrecision::F32),
            CpuMatmul::Candle => None,
        }
    }
}

impl FromStr for CpuMatmul {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "int8" => Ok(CpuMatmul::Int8),
            "int16" => Ok(CpuMatmul::Int16),
            "f32" | "exact" => Ok(CpuMatmul::F32),
            "candle" => Ok(CpuMatmul::Candle),
            other => Err(format!(
                "unknown CPU matmul '{other}': expected int8, int16, f32 or candle"
            )),
        }
    }
}

impl std::fmt::Display for CpuMatmul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuMatmul::Int8 => "int8",
            CpuMatmul::Int16 => "int16",
            CpuMatmul::F32 => "f32",
            CpuMatmul::Candle => "candle",
        })
    }
}
