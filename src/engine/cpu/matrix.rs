//! Weight matrices on the CPU and their matmuls: `y = x · Wᵀ` for many rows of `x` at once.
//!
//! Weights stay as they are in the file (quantized blocks, or f32/f16/bf16). A matmul runs
//! on the kernels' worker pool, split by weight rows; each worker decodes one weight row at
//! a time and takes it through a block of activation rows, a few at a time, so that a
//! weight is read from memory once per block of rows, not once per row. Several matrices
//! that share an input (q, k, v; gate, up) run in one pass over the pool.

use std::cell::RefCell;

use anyhow::{Context, bail};
use candle_core::quantized::{GgmlDType, QTensor};
use half::{bf16, f16};

use super::activations::Activations;
use super::decode::{DecodedRow, decode_row};
use super::dot::dot_f32;
use super::formats::QuantFormat;
use super::int_dot::{self, TILE};
use super::int8::{self, PackedMatrix};
use super::isa::Isa;

/// How quantized weights meet their activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationPrecision {
    /// Weights repacked at load into panels, activations rounded to 8-bit integers per
    /// 32 or 256 values, `vpdpbusd` dot products (the default: llama.cpp's arithmetic, at
    /// its speed or better; see [`super::int8`]).
    #[default]
    Int8,
    /// Activations rounded to 16-bit integers per 32 or 256 values, integer dot products
    /// on the file's blocks (a reference: closer to f32, slower).
    Int16,
    /// Activations kept in f32, weights dequantized on the fly (the reference).
    F32,
}

/// Activation rows a worker takes through one decoded weight row before the next row.
const ROW_BLOCK: usize = 64;

/// Up to this many activation rows, weights are decoded in registers for each tile of
/// rows (no decoded copy in memory); more rows share one decoded copy per block.
const FUSED_ROWS: usize = 8;

/// How the weights are held.
pub enum Weights {
    Quant {
        format: QuantFormat,
        data: Vec<u8>,
    },
    /// Repacked for the int8 kernels.
    Packed(PackedMatrix),
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// A `rows × cols` weight matrix.
pub struct CpuMatrix {
    rows: usize,
    cols: usize,
    weights: Weights,
}

/// The quantized types a GGUF file may hold that the CPU kernels read.
pub const SUPPORTED_QUANTS: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K";

impl CpuMatrix {
    /// Takes a 2-D tensor as read from a GGUF file.
    pub fn from_qtensor(name: &str, tensor: &QTensor) -> anyhow::Result<Self> {
        let (rows, cols) = tensor
            .shape()
            .dims2()
            .with_context(|| format!("tensor {name} is not a matrix"))?;
        let bytes = tensor.data()?;
        let weights = match tensor.dtype() {
            GgmlDType::F32 => Weights::F32(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            GgmlDType::F16 => Weights::F16(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            GgmlDType::BF16 => Weights::BF16(
                bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            other => {
                let format = QuantFormat::of(other).with_context(|| {
                    format!(
                        "tensor {name} is quantized as {other:?}, which the CPU kernels do not read \
                         (supported: {SUPPORTED_QUANTS})"
                    )
                })?;
                if !cols.is_multiple_of(format.unit_len()) {
                    bail!(
                        "tensor {name} has rows of {cols} values, not whole {} blocks",
                        format.name()
                    );
                }
                Weights::Quant {
                    format,
                    data: bytes.into_owned(),
                }
            }
        };
        Self::new(rows, cols, weights).with_context(|| format!("tensor {name}"))
    }

    /// Checks that the weights fill `rows × cols`.
    pub fn new(rows: usize, cols: usize, weights: Weights) -> anyhow::Result<Self> {
        let (have, need) = match &weights {
            Weights::Quant { format, data } => (
                data.len(),
                rows * cols / format.unit_len() * format.unit_bytes(),
            ),
            Weights::Packed(m) => (m.rows * m.cols, rows * cols),
            Weights::F32(v) => (v.len(), rows * cols),
            Weights::F16(v) => (v.len(), rows * cols),
            Weights::BF16(v) => (v.len(), rows * cols),
        };
        if have != need || rows == 0 || cols == 0 {
            bail!("{have} weights do not make a {rows}×{cols} matrix ({need} expected)");
        }
        Ok(CpuMatrix {
            rows,
            cols,
            weights,
        })
    }

    /// The same matrix repacked for the int8 kernels when it is quantized (once, at load).
    pub fn packed(self) -> anyhow::Result<Self> {
        match self.weights {
            Weights::Quant { format, data } => Ok(CpuMatrix {
                weights: Weights::Packed(PackedMatrix::pack(format, self.rows, self.cols, &data)?),
                ..self
            }),
            _ => Ok(self),
        }
    }

    /// Stacks matrices of the same width and storage into one (fused q/k/v, gate/up).
    /// None when their storage differs.
    pub fn stack_refs(parts: &[&CpuMatrix]) -> Option<CpuMatrix> {
        let first = parts.first()?;
        let cols = first.cols;
        if parts.iter().any(|p| p.cols != cols) {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let weights = match &first.weights {
            Weights::Packed(_) => {
                let packed: Option<Vec<&PackedMatrix>> = parts
                    .iter()
                    .map(|p| match &p.weights {
                        Weights::Packed(m) => Some(m),
                        _ => None,
                    })
                    .collect();
                Weights::Packed(PackedMatrix::stack(&packed?)?)
            }
            Weights::Quant { format, .. } => {
                let mut data = Vec::new();
                for p in parts {
                    match &p.weights {
                        Weights::Quant { format: f, data: d } if f == format => {
                            data.extend_from_slice(d)
                        }
                        _ => return None,
                    }
                }
                Weights::Quant {
                    format: *format,
                    data,
                }
            }
            Weights::F32(_) => {
                let mut all = Vec::new();
                for p in parts {
                    let Weights::F32(v) = &p.weights else {
                        return None;
                    };
                    all.extend_from_slice(v);
                }
                Weights::F32(all)
            }
            Weights::F16(_) => {
                let mut all = Vec::new();
                for p in parts {
                    let Weights::F16(v) = &p.weights else {
                        return None;
                    };
                    all.extend_from_slice(v);
                }
                Weights::F16(all)
            }
            Weights::BF16(_) => {
                let mut all = Vec::new();
                for p in parts {
                    let Weights::BF16(v) = &p.weights else {
                        return None;
                    };
                    all.extend_from_slice(v);
                }
                Weights::BF16(all)
            }
        };
        Some(CpuMatrix {
            rows,
            cols,
            weights,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the weights take in memory.
    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::Quant { data, .. } => data.len(),
            Weights::Packed(m) => m.data.len(),
            Weights::F32(v) => v.len() * 4,
            Weights::F16(v) => v.len() * 2,
            Weights::BF16(v) => v.len() * 2,
        }
    }

    pub fn format_name(&self) -> &'static str {
        match &self.weights {
            Weights::Quant { format, .. } => format.name(),
            Weights::Packed(m) => m.format().name(),
            Weights::F32(_) => "F32",
            Weights::F16(_) => "F16",
            Weights::BF16(_) => "BF16",
        }
    }

    fn quant(&self) -> Option<(QuantFormat, &[u8])> {
        match &self.weights {
            Weights::Quant { format, data } => Some((*format, data)),
            _ => None,
        }
    }

    /// Row `r` as f32 values (dequantized if need be).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let cols = self.cols;
        match &self.weights {
            Weights::Quant { format, data } => {
                let row_bytes = cols / format.unit_len() * format.unit_bytes();
                let row = &data[r * row_bytes..(r + 1) * row_bytes];
                for (unit, o) in row
                    .chunks_exact(format.unit_bytes())
                    .zip(out.chunks_exact_mut(format.unit_len()))
                {
                    format.dequantize_unit(unit, o);
                }
            }
            Weights::Packed(m) => m.row_f32(r, out),
            Weights::F32(v) => out.copy_from_slice(&v[r * cols..(r + 1) * cols]),
            Weights::F16(v) => {
                for (o, w) in out.iter_mut().zip(&v[r * cols..(r + 1) * cols]) {
                    *o = w.to_f32();
                }
            }
            Weights::BF16(v) => {
                for (o, w) in out.iter_mut().zip(&v[r * cols..(r + 1) * cols]) {
                    *o = w.to_f32();
                }
            }
        }
    }

    /// The bytes of quantized row `r`.
    fn quant_row<'a>(&self, format: QuantFormat, data: &'a [u8], r: usize) -> &'a [u8] {
        let row_bytes = self.cols / format.unit_len() * format.unit_bytes();
        &data[r * row_bytes..(r + 1) * row_bytes]
    }

    /// The whole matrix as f32, row-major (for reference computations in tests).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row_f32(r, row);
        }
        out
    }
}

/// One matmul of a batch: its matrix and where its output goes (`x.rows × matrix.rows`,
/// row-major).
pub struct MatmulJob<'a> {
    pub matrix: &'a CpuMatrix,
    pub out: &'a mut [f32],
}

/// An output buffer written by several workers, each to rows of its own.
#[derive(Clone, Copy)]
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: workers write disjoint elements (each owns whole weight rows), and the buffer
// outlives the pool call that uses it.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

thread_local! {
    static SCRATCH: RefCell<(DecodedRow, Vec<f32>)> = RefCell::new((DecodedRow::default(), Vec::new()));
}

/// Runs every job on the same activations, in one pass over the worker pool.
pub fn matmul(
    isa: Isa,
    precision: ActivationPrecision,
    x: &Activations<'_>,
    jobs: &mut [MatmulJob<'_>],
) -> anyhow::Result<()> {
    for job in jobs.iter() {
        if job.matrix.cols != x.cols {
            bail!(
                "activations of width {} do not fit a {}×{} weight",
                x.cols,
                job.matrix.rows,
                job.matrix.cols
            );
        }
        if job.out.len() != x.rows * job.matrix.rows {
            bail!(
                "a matmul output of {} values cannot hold {}×{}",
                job.out.len(),
                x.rows,
                job.matrix.rows
            );
        }
    }
    // The integer forms of the activations are made before the workers start.
    for job in jobs.iter() {
        match (&job.matrix.weights, precision) {
            (Weights::Packed(m), _) => {
                x.int8(m.layout.block);
            }
            (Weights::Quant { format, .. }, ActivationPrecision::Int16) => {
                x.quantized(format.unit_len());
            }
            _ => {}
        }
    }
    let outs: Vec<SharedOut> = jobs
        .iter_mut()
        .map(|j| SharedOut {
            ptr: j.out.as_mut_ptr(),
            len: j.out.len(),
        })
        .collect();
    let matrices: Vec<&CpuMatrix> = jobs.iter().map(|j| j.matrix).collect();
    // Work is handed out in units: groups of panels for packed weights, rows otherwise.
    let group = int8::gemm::panel_group(isa, x.rows);
    let units: Vec<usize> = matrices
        .iter()
        .map(|m| match &m.weights {
            Weights::Packed(p) => p.panels().div_ceil(group),
            _ => m.rows,
        })
        .collect();
    let total_units: usize = units.iter().sum();
    let total_rows: usize = matrices.iter().map(|m| m.rows).sum();
    let run = |range: std::ops::Range<usize>| {
        // Map the global unit range onto the jobs it covers.
        let mut first = 0;
        for ((matrix, out), &count) in matrices.iter().zip(&outs).zip(&units) {
            let last = first + count;
            let start = range.start.max(first) - first;
            let end = range.end.min(last).saturating_sub(first);
            if start < end {
                match &matrix.weights {
                    Weights::Packed(m) => {
                        let panels = start * group..(end * group).min(m.panels());
                        let x8 = x.int8(m.layout.block);
                        // SAFETY: the output holds x.rows × m.rows floats, and each unit
                        // (hence each panel's rows) goes to one worker only.
                        unsafe { int8::gemm::run_panels(isa, m, x8, panels, out.ptr) };
                    }
                    _ => run_rows(isa, precision, matrix, x, start..end, *out),
                }
            }
            first = last;
        }
    };
    if total_rows * x.rows * x.cols < 1 << 14 {
        // Too small to be worth waking the workers.
        run(0..total_units);
    } else {
        super::pool::pool().chunked(total_units, &run);
    }
    Ok(())
}

/// Weight rows `rows` of `matrix` against every activation row.
fn run_rows(
    isa: Isa,
    precision: ActivationPrecision,
    matrix: &CpuMatrix,
    x: &Activations<'_>,
    rows: std::ops::Range<usize>,
    out: SharedOut,
) {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let (decoded, floats) = &mut *scratch;
        let n = matrix.rows;
        let write = |j: usize, r: usize, value: f32| {
            let at = j * n + r;
            debug_assert!(at < out.len);
            // SAFETY: `at` is inside the buffer, and only this worker writes row r.
            unsafe { *out.ptr.add(at) = value };
        };
        let mut tile = [0f32; TILE];
        match (matrix.quant(), precision) {
            (Some((format, data)), ActivationPrecision::Int16) if x.rows <= FUSED_ROWS => {
                // A few tokens (decoding): decode each weight row in registers for one
                // tile of activation rows, and multiply at once.
                let q = x.quantized(format.unit_len());
                let row_bytes = matrix.cols / format.unit_len() * format.unit_bytes();
                let mut j = 0;
                while j < x.rows {
                    let count = TILE.min(x.rows - j);
                    int_dot::dot_raw_rows(
                        isa,
                        format,
                        data,
                        row_bytes,
                        rows.clone(),
                        q,
                        j,
                        count,
                        decoded,
                        |r, c, value| write(j + c, r, value),
                    );
                    j += count;
                }
            }
            (Some((format, data)), ActivationPrecision::Int16) => {
                let q = x.quantized(format.unit_len());
                for block in (0..x.rows).step_by(ROW_BLOCK) {
                    let block_end = (block + ROW_BLOCK).min(x.rows);
                    for r in rows.clone() {
                        decode_row(isa, format, matrix.quant_row(format, data, r), decoded);
                        let mut j = block;
                        while j < block_end {
                            let count = TILE.min(block_end - j);
                            int_dot::dot_rows(isa, decoded, q, j, &mut tile[..count]);
                            for (c, &v) in tile[..count].iter().enumerate() {
                                write(j + c, r, v);
                            }
                            j += count;
                        }
                    }
                }
            }
            _ => {
                floats.resize(matrix.cols, 0.0);
                for block in (0..x.rows).step_by(ROW_BLOCK) {
                    let block_end = (block + ROW_BLOCK).min(x.rows);
                    for r in rows.clone() {
                        matrix.row_f32(r, floats);
                        let mut j = block;
                        while j < block_end {
                            let count = TILE.min(block_end - j);
                            let xs: [&[f32]; TILE] =
                                std::array::from_fn(|c| x.row((j + c).min(block_end - 1)));
                            dot_f32(isa, floats, &xs[..count], &mut tile[..count]);
                            for (c, &v) in tile[..count].iter().enumerate() {
                                write(j + c, r, v);
                            }
                            j += count;
                        }
                    }
                }
            }
        }
    });
}
