//! The CPU backend: activations in plain `Vec<f32>` rows, weights as in the file, and the
//! kernels of this module. Every operation computes a row on its own, in a fixed order.

use anyhow::{Context, bail};

use super::activations::Activations;
use super::attention::{AttentionShape, KvLayer, ROWS, Scratch, attend};
use super::isa::Isa;
use super::matrix::{ActivationPrecision, CpuMatrix, MatmulJob, Weights, matmul};
use super::ops::{self, Activation};
use super::par_rows::for_rows;
use super::rope::RopeTable;
use crate::engine::backend::{Backend, SeqRows};
use crate::engine::config::RopeSpec;
use crate::engine::weights::{Encoding, RawTensor};

/// Rows of activations.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Rows {
    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// The CPU backend.
#[derive(Debug, Clone, Copy)]
pub struct CpuBackend {
    pub isa: Isa,
    pub precision: ActivationPrecision,
}

impl CpuBackend {
    pub fn new(precision: ActivationPrecision) -> Self {
        CpuBackend {
            isa: Isa::best(),
            precision,
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// A pointer to an output buffer that parallel workers fill, each its own part.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the workers write disjoint elements and the buffer outlives the pool call.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The element at `offset` (the caller keeps it inside the buffer).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl Backend for CpuBackend {
    type Act = Rows;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Rope = RopeTable;
    type Kv = KvLayer;

    fn describe(&self) -> String {
        let precision = match self.precision {
            ActivationPrecision::Int8 => "int8 activations",
            ActivationPrecision::Int16 => "int16 activations",
            ActivationPrecision::F32 => "f32 activations",
        };
        format!("cpu ({}, {precision})", self.isa.name())
    }

    fn matrix(&self, tensor: RawTensor) -> anyhow::Result<CpuMatrix> {
        let (rows, cols) = match tensor.shape.as_slice() {
            [rows, cols] => (*rows, *cols),
            other => bail!("tensor {} has shape {other:?}, not a matrix", tensor.name),
        };
        match tensor.encoding {
            Encoding::Ggml(_) => {
                let Encoding::Ggml(dtype) = tensor.encoding else {
                    unreachable!()
                };
                let qtensor = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    &tensor.bytes,
                    tensor.shape.clone(),
                    &candle_core::Device::Cpu,
                )
                .with_context(|| format!("tensor {}", tensor.name))?;
                let matrix = CpuMatrix::from_qtensor(&tensor.name, &qtensor)?;
                if self.precision == ActivationPrecision::Int8 {
                    matrix
                        .packed()
                        .with_context(|| format!("tensor {}", tensor.name))
                } else {
                    Ok(matrix)
                }
            }
            Encoding::Dense(dtype) => {
                let b = &tensor.bytes;
                let weights = match dtype {
                    candle_core::DType::F32 => Weights::F32(
                        b.chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    ),
                    candle_core::DType::F16 => Weights::F16(
                        b.chunks_exact(2)
                            .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                            .collect(),
                    ),
                    candle_core::DType::BF16 => Weights::BF16(
                        b.chunks_exact(2)
                            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                            .collect(),
                    ),
                    other => bail!("tensor {} has unsupported dtype {other:?}", tensor.name),
                };
                CpuMatrix::new(rows, cols, weights)
                    .with_context(|| format!("tensor {}", tensor.name))
            }
        }
    }

    fn vector(&self, values: Vec<f32>) -> anyhow::Result<Vec<f32>> {
        Ok(values)
    }

    fn stack(&self, parts: &[&CpuMatrix]) -> anyhow::Result<Option<CpuMatrix>> {
        Ok(CpuMatrix::stack_refs(parts))
    }

    fn rows_of(&self, matrix: &CpuMatrix) -> usize {
        matrix.rows()
    }

    fn rope(&self, spec: &RopeSpec, max_positions: usize) -> anyhow::Result<RopeTable> {
        Ok(RopeTable::new(spec, max_positions))
    }

    fn from_rows(&self, data: Vec<f32>, rows: usize, cols: usize) -> anyhow::Result<Rows> {
        if data.len() != rows * cols {
            bail!("{} values do not make {rows} rows of {cols}", data.len());
        }
        Ok(Rows { data, rows, cols })
    }

    fn to_rows(&self, x: &Rows) -> anyhow::Result<Vec<f32>> {
        Ok(x.data.clone())
    }

    fn shape(&self, x: &Rows) -> (usize, usize) {
        (x.rows, x.cols)
    }

    fn embed(&self, table: &CpuMatrix, ids: &[u32], scale: Option<f32>) -> anyhow::Result<Rows> {
        let cols = table.cols();
        let mut data = vec![0f32; ids.len() * cols];
        for (&id, row) in ids.iter().zip(data.chunks_exact_mut(cols)) {
            if id as usize >= table.rows() {
                bail!(
                    "token id {id} is outside the {} rows of the embedding",
                    table.rows()
                );
            }
            table.row_f32(id as usize, row);
            if let Some(s) = scale {
                ops::scale(row, s);
            }
        }
        Ok(Rows {
            data,
            rows: ids.len(),
            cols,
        })
    }

    fn rms_norm(&self, x: &Rows, weight: &Vec<f32>, eps: f32) -> anyhow::Result<Rows> {
        if weight.len() != x.cols {
            bail!("a norm of width {} on rows of {}", weight.len(), x.cols);
        }
        let mut data = vec![0f32; x.data.len()];
        let cols = x.cols;
        for_rows(&mut data, cols, |first, out| {
            let from = first * cols;
            ops::rms_norm(&x.data[from..from + out.len()], weight, eps, out);
        });
        Ok(Rows {
            data,
            rows: x.rows,
            cols: x.cols,
        })
    }

    fn head_norm(&self, mut x: Rows, weight: &Vec<f32>, eps: f32) -> anyhow::Result<Rows> {
        if weight.is_empty() || !x.cols.is_multiple_of(weight.len()) {
            bail!(
                "a head norm of width {} on rows of {}",
                weight.len(),
                x.cols
            );
        }
        ops::rms_norm_in_place(&mut x.data, weight, eps);
        Ok(x)
    }

    fn linear(
        &self,
        x: &Rows,
        weights: &[(&CpuMatrix, Option<&Vec<f32>>)],
    ) -> anyhow::Result<Vec<Rows>> {
        let acts = Activations::new(&x.data, x.rows, x.cols);
        let mut outs: Vec<Vec<f32>> = weights
            .iter()
            .map(|(m, _)| vec![0f32; x.rows * m.rows()])
            .collect();
        {
            let mut jobs: Vec<MatmulJob<'_>> = weights
                .iter()
                .zip(outs.iter_mut())
                .map(|((matrix, _), out)| MatmulJob { matrix, out })
                .collect();
            matmul(self.isa, self.precision, &acts, &mut jobs)?;
        }
        Ok(weights
            .iter()
            .zip(outs)
            .map(|((matrix, bias), mut data)| {
                if let Some(bias) = bias {
                    ops::add_bias(&mut data, bias);
                }
                Rows {
                    data,
                    rows: x.rows,
                    cols: matrix.rows(),
                }
            })
            .collect())
    }

    fn split(&self, x: Rows, widths: &[usize]) -> anyhow::Result<Vec<Rows>> {
        if widths.iter().sum::<usize>() != x.cols {
            bail!("cannot split rows of {} into {widths:?}", x.cols);
        }
        let mut parts: Vec<Rows> = widths
            .iter()
            .map(|&w| Rows {
                data: Vec::with_capacity(x.rows * w),
                rows: x.rows,
                cols: w,
            })
            .collect();
        for r in 0..x.rows {
            let mut at = 0;
            let row = x.row(r);
            for (part, &w) in parts.iter_mut().zip(widths) {
                part.data.extend_from_slice(&row[at..at + w]);
                at += w;
            }
        }
        Ok(parts)
    }

    fn apply_rope(
        &self,
        mut x: Rows,
        head_dim: usize,
        rope: &RopeTable,
        seqs: &[SeqRows],
    ) -> anyhow::Result<Rows> {
        let cols = x.cols;
        // Each row's position, from the sequence it belongs to.
        let mut positions = vec![0usize; x.rows];
        for seq in seqs {
            for i in 0..seq.len {
                positions[seq.start + i] = seq.position + i;
            }
        }
        for_rows(&mut x.data, cols, |first, rows| {
            for (i, row) in rows.chunks_exact_mut(cols).enumerate() {
                rope.apply(row, head_dim, positions[first + i]);
            }
        });
        Ok(x)
    }

    fn attention(
        &self,
        q: &Rows,
        k: &Rows,
        v: &Rows,
        seqs: &[SeqRows],
        caches: &mut [&mut KvLayer],
        shape: &AttentionShape,
    ) -> anyhow::Result<Rows> {
        let width = shape.n_kv_heads * shape.head_dim;
        if q.cols != shape.n_heads * shape.head_dim || k.cols != width || v.cols != width {
            bail!(
                "attention inputs do not fit the heads: q {}, k {}, v {}",
                q.cols,
                k.cols,
                v.cols
            );
        }
        if caches.len() != seqs.len() {
            bail!("{} caches for {} sequences", caches.len(), seqs.len());
        }
        // Keys and values first: every row then attends to cached positions only.
        for (seq, cache) in seqs.iter().zip(caches.iter_mut()) {
            if cache.len(width) != seq.position {
                bail!(
                    "the cache holds {} positions, but the step starts at {}",
                    cache.len(width),
                    seq.position
                );
            }
            let rows = seq.start * width..(seq.start + seq.len) * width;
            cache.append(&k.data[rows.clone()], &v.data[rows]);
        }
        // One work item per (sequence, key/value head, block of up to ROWS rows).
        let mut items = Vec::new();
        for (s, seq) in seqs.iter().enumerate() {
            for first in (0..seq.len).step_by(ROWS) {
                let count = ROWS.min(seq.len - first);
                for g in 0..shape.n_kv_heads {
                    items.push((s, first, count, g));
                }
            }
        }
        let mut out = vec![0f32; q.rows * q.cols];
        let shared = Shared(out.as_mut_ptr());
        let caches: Vec<&KvLayer> = caches.iter().map(|c| &**c).collect();
        let cols = q.cols;
        let isa = self.isa;
        let run = |range: std::ops::Range<usize>| {
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                for &(s, first, count, g) in &items[range] {
                    let seq = &seqs[s];
                    let rows: Vec<usize> = (seq.start + first..seq.start + first + count).collect();
                    let positions: Vec<usize> =
                        (0..count).map(|i| seq.position + first + i).collect();
                    let qs: Vec<&[f32]> = rows.iter().map(|&r| q.row(r)).collect();
                    let width = cols / shape.n_kv_heads;
                    // SAFETY: the columns of kv head g's query heads in these rows belong
                    // to this work item alone.
                    let mut outs: Vec<&mut [f32]> = rows
                        .iter()
                        .map(|&r| unsafe {
                            std::slice::from_raw_parts_mut(shared.at(r * cols + g * width), width)
                        })
                        .collect();
                    attend(
                        isa,
                        shape,
                        &qs,
                        &positions,
                        caches[s],
                        g,
                        &mut outs,
                        &mut scratch,
                    );
                }
            });
        };
        let work: usize = seqs
            .iter()
            .map(|s| s.len * (s.position + s.len))
            .sum::<usize>()
            * shape.n_heads;
        if items.len() > 1 && work > 1 << 14 {
            super::pool::pool().chunked(items.len(), &run);
        } else {
            run(0..items.len());
        }
        Ok(Rows {
            data: out,
            rows: q.rows,
            cols: q.cols,
        })
    }

    fn gated(&self, activation: Activation, gate: &Rows, up: &Rows) -> anyhow::Result<Rows> {
        if gate.data.len() != up.data.len() {
            bail!("gate and up differ in shape");
        }
        let mut data = vec![0f32; gate.data.len()];
        let cols = gate.cols;
        for_rows(&mut data, cols, |first, out| {
            let from = first * cols..first * cols + out.len();
            ops::gated(activation, &gate.data[from.clone()], &up.data[from], out);
        });
        Ok(Rows {
            data,
            rows: gate.rows,
            cols: gate.cols,
        })
    }

    fn gated_halves(
        &self,
        activation: Activation,
        fused: Rows,
        width: usize,
    ) -> anyhow::Result<Rows> {
        if fused.cols != 2 * width {
            bail!("rows of {} are not two halves of {width}", fused.cols);
        }
        let mut data = vec![0f32; fused.rows * width];
        for_rows(&mut data, width, |first, out| {
            for (i, out) in out.chunks_exact_mut(width).enumerate() {
                let (gate, up) = fused.row(first + i).split_at(width);
                ops::gated(activation, gate, up, out);
            }
        });
        Ok(Rows {
            data,
            rows: fused.rows,
            cols: width,
        })
    }

    fn add(&self, mut x: Rows, y: &Rows) -> anyhow::Result<Rows> {
        if x.rows != y.rows || x.cols != y.cols {
            bail!("cannot add {}×{} and {}×{}", x.rows, x.cols, y.rows, y.cols);
        }
        let cols = x.cols;
        for_rows(&mut x.data, cols, |first, rows| {
            ops::add(rows, &y.data[first * cols..first * cols + rows.len()]);
        });
        Ok(x)
    }

    fn select_rows(&self, x: &Rows, rows: &[usize]) -> anyhow::Result<Rows> {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            if r >= x.rows {
                bail!("row {r} of {}", x.rows);
            }
            data.extend_from_slice(x.row(r));
        }
        Ok(Rows {
            data,
            rows: rows.len(),
            cols: x.cols,
        })
    }

    fn kv_bytes(kv: &KvLayer) -> usize {
        kv.bytes()
    }

    fn kv_truncate(
        &self,
        kv: &mut KvLayer,
        positions: usize,
        shape: &AttentionShape,
    ) -> anyhow::Result<()> {
        kv.truncate(positions, shape.n_kv_heads * shape.head_dim);
        Ok(())
    }
}
