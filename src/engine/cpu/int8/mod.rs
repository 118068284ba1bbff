//! The int8 path: weights repacked once at load into panels of sixteen interleaved rows,
//! activations rounded to 8 bits per block, integer dot products with `vpdpbusd`
//! (AVX-512 VNNI), `vpmaddubsw` (AVX2) or plain Rust, one tiled kernel for a decoding
//! row, a batch and a prompt. The default CPU path (`--cpu-matmul int8`).
//!
//! - [`layout`]: the bytes of a packed panel;
//! - [`packed`]: packing GGUF blocks into panels (and reading rows back, for embeddings);
//! - [`rows`]: activations rounded to 8 bits;
//! - [`portable`]: the kernels' definition, bit for bit what every path computes;
//! - [`avx512`], [`avx2`]: the SIMD tiles;
//! - [`gemm`]: walking panels and rows in tiles.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod gemm;
pub mod layout;
pub mod packed;
pub mod portable;
pub mod rows;

pub use packed::PackedMatrix;
pub use rows::Int8Rows;
