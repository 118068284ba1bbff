//! The CPU backend and its kernels.
//!
//! - [`formats`]: the quantized weight formats and how a unit of each decodes;
//! - [`int8`]: the default path: weights repacked into panels at load, 8-bit activations,
//!   one tiled integer kernel per ISA for every batch size;
//! - [`activations`]: activation rows, and their 8- and 16-bit integer forms;
//! - [`decode`]: quantized weight rows to 16-bit integers, per ISA;
//! - [`int_dot`]: quantized weight rows · 16-bit activations: exact integer totals per unit,
//!   then one shared float combination (so results never depend on the batch or the ISA);
//! - [`dot`]: f32 dot products (dense weights, the f32 reference path), per ISA;
//! - [`isa`]: which SIMD path the CPU offers (chosen at run time);
//! - [`matrix`]: weight matrices and batched matmuls on the worker pool;
//! - [`ops`], [`rope`], [`attention`]: the row-wise parts of a layer;
//! - [`pool`]: the worker threads every parallel call runs on; [`par_rows`]: row-wise
//!   operations spread over them;
//! - [`backend`]: all of it behind the decoder's [`crate::engine::backend::Backend`].
//!
//! Every operation computes each activation row on its own, in a fixed order: a row's
//! result is the same whatever else is in the batch, and whether its sequence's prompt
//! was run in one piece, in chunks, or one token at a time.

// Kernels index several arrays (lanes, rows, panels) by one loop variable: index loops say
// that more plainly than zipped iterators.
#![allow(clippy::needless_range_loop)]

pub mod activations;
pub mod attention;
pub mod backend;
pub mod decode;
pub mod dot;
pub mod formats;
pub mod int8;
pub mod int_dot;
pub mod isa;
pub mod matrix;
pub mod ops;
pub mod par_rows;
pub mod pool;
pub mod rope;

pub use backend::CpuBackend;
pub use matrix::ActivationPrecision;
