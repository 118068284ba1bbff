//! The CPU kernels: every weight format decodes as candle decodes it; every ISA path's
//! matmul agrees with a dense f32 reference; and a row's result is bit-identical whatever
//! rows share its batch (the property re-prefill and batching rely on).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use exo::engine::cpu::activations::Activations;
use exo::engine::cpu::isa::Isa;
use exo::engine::cpu::matrix::{ActivationPrecision, CpuMatrix, MatmulJob, matmul};

const FORMATS: [GgmlDType; 8] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Values in [-1, 1) from a small xorshift generator, with a few larger outliers (as
/// real activations have).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = (state % 20_000) as f32 / 10_000.0 - 1.0;
            if i % 97 == 5 { v * 12.0 } else { v }
        })
        .collect()
}

fn quantized(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> (QTensor, CpuMatrix) {
    let weights = Tensor::from_vec(random(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&weights, dtype).unwrap();
    let matrix = CpuMatrix::from_qtensor("w", &q).unwrap();
    (q, matrix)
}

fn run(
    isa: Isa,
    precision: ActivationPrecision,
    matrix: &CpuMatrix,
    x: &[f32],
    m: usize,
) -> Vec<f32> {
    let acts = Activations::new(x, m, matrix.cols());
    let mut out = vec![0f32; m * matrix.rows()];
    matmul(
        isa,
        precision,
        &acts,
        &mut [MatmulJob {
            matrix,
            out: &mut out,
        }],
    )
    .unwrap();
    out
}

fn reference(weights: &[f32], rows: usize, cols: usize, x: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * rows];
    for j in 0..m {
        for r in 0..rows {
            let mut sum = 0f64;
            for k in 0..cols {
                sum += f64::from(weights[r * cols + k]) * f64::from(x[j * cols + k]);
            }
            out[j * rows + r] = sum as f32;
        }
    }
    out
}

/// For each output, the most that rounding the activations to 16-bit steps (per group of
/// `group` values) can move it: Σₖ |wₖ| · step(k) / 2.
fn rounding_bound(
    weights: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    m: usize,
    group: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; m * rows];
    for j in 0..m {
        let xs = &x[j * cols..(j + 1) * cols];
        let steps: Vec<f32> = xs
            .chunks(group)
            .map(|g| g.iter().fold(0f32, |a, v| a.max(v.abs())) / 16383.0)
            .collect();
        for r in 0..rows {
            out[j * rows + r] = (0..cols)
                .map(|k| weights[r * cols + k].abs() * steps[k / group] * 0.5)
                .sum();
        }
    }
    out
}

/// Largest difference relative to the largest reference value.
fn relative_error(ours: &[f32], expected: &[f32]) -> f32 {
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    ours.iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn every_format_decodes_exactly_as_candle_does() {
    for dtype in FORMATS {
        let (q, matrix) = quantized(dtype, 8, 512, 3);
        let expected = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(matrix.to_f32(), expected, "{dtype:?}");
    }
}

#[test]
fn every_isa_and_precision_agrees_with_a_dense_f32_matmul() {
    for dtype in FORMATS {
        let (rows, cols) = (70, 512);
        let (_, matrix) = quantized(dtype, rows, cols, 11);
        let dense = matrix.to_f32();
        for m in [1, 3, 9] {
            let x = random(m * cols, 100 + m as u64);
            let expected = reference(&dense, rows, cols, &x, m);
            let rounding = rounding_bound(
                &dense,
                rows,
                cols,
                &x,
                m,
                if dtype.block_size() == 256 { 256 } else { 32 },
            );
            for isa in Isa::available() {
                // f32 activations differ from the reference in summation order only.
                let ours = run(isa, ActivationPrecision::F32, &matrix, &x, m);
                let error = relative_error(&ours, &expected);
                assert!(
                    error < 1e-5,
                    "{dtype:?} {isa:?} f32 m={m}: relative error {error}"
                );
                // 16-bit activations: each value is off by at most half a step (the
                // group's largest value / 16383), so each output by at most Σ|w|·step/2.
                let ours = run(isa, ActivationPrecision::Int16, &matrix, &x, m);
                for (i, ((a, b), bound)) in ours.iter().zip(&expected).zip(&rounding).enumerate() {
                    assert!(
                        (a - b).abs() <= bound * 1.001 + 1e-5 * b.abs().max(1.0),
                        "{dtype:?} {isa:?} int16 m={m}, output {i}: {a} vs {b}, bound {bound}"
                    );
                }
            }
        }
    }
}

#[test]
fn dense_weights_in_f32_f16_and_bf16_agree_with_the_reference() {
    use exo::engine::cpu::matrix::Weights;
    let (rows, cols, m) = (33, 96, 5);
    let w = random(rows * cols, 9);
    let x = random(m * cols, 10);
    for (name, weights) in [
        ("f32", Weights::F32(w.clone())),
        (
            "f16",
            Weights::F16(w.iter().map(|&v| half::f16::from_f32(v)).collect()),
        ),
        (
            "bf16",
            Weights::BF16(w.iter().map(|&v| half::bf16::from_f32(v)).collect()),
        ),
    ] {
        let matrix = CpuMatrix::new(rows, cols, weights).unwrap();
        let expected = reference(&matrix.to_f32(), rows, cols, &x, m);
        for isa in Isa::available() {
            let ours = run(isa, ActivationPrecision::Int16, &matrix, &x, m);
            assert!(relative_error(&ours, &expected) < 1e-5, "{name} {isa:?}");
        }
    }
}

#[test]
fn a_rows_result_does_not_depend_on_the_rows_beside_it() {
    // 150 rows cross the 4-row tiles and the 64-row blocks of the kernel; a row alone
    // must give exactly the value it gets in any batch.
    for dtype in [
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q8_0,
    ] {
        let (rows, cols) = (40, 256);
        let (_, matrix) = quantized(dtype, rows, cols, 21);
        let m = 150;
        let x = random(m * cols, 22);
        for isa in Isa::available() {
            for precision in [ActivationPrecision::Int16, ActivationPrecision::F32] {
                let batch = run(isa, precision, &matrix, &x, m);
                // Small batches (weights decoded in registers per tile) too.
                for small in [3, 7] {
                    let few = run(isa, precision, &matrix, &x[..small * cols], small);
                    assert_eq!(
                        few.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        batch[..small * rows]
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>(),
                        "{dtype:?} {isa:?} {precision:?}: a batch of {small} differs"
                    );
                }
                for j in [0, 1, 3, 4, 63, 64, 65, 127, 149] {
                    let alone = run(isa, precision, &matrix, &x[j * cols..(j + 1) * cols], 1);
                    assert_eq!(
                        alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        batch[j * rows..(j + 1) * rows]
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>(),
                        "{dtype:?} {isa:?} {precision:?}: row {j} changed with its neighbours"
                    );
                }
            }
        }
    }
}

#[test]
fn the_integer_path_gives_the_same_bits_on_every_isa() {
    // Exact integer totals per unit, then one shared float combination: the CPU's vector
    // width must not change a result (a ring of an AVX2 and an AVX-512 machine agrees).
    for dtype in FORMATS {
        let (rows, cols) = (24, 512);
        let (_, matrix) = quantized(dtype, rows, cols, 41);
        for m in [1, 6] {
            let x = random(m * cols, 42 + m as u64);
            let portable = run(Isa::Portable, ActivationPrecision::Int16, &matrix, &x, m);
            for isa in Isa::available() {
                let ours = run(isa, ActivationPrecision::Int16, &matrix, &x, m);
                assert_eq!(
                    ours.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{dtype:?} on {isa:?}, {m} rows"
                );
            }
        }
    }
}

#[test]
fn several_matrices_in_one_pass_match_each_run_alone() {
    let cols = 256;
    let (_, a) = quantized(GgmlDType::Q5_0, 24, cols, 31);
    let (_, b) = quantized(GgmlDType::Q8_0, 8, cols, 32);
    let (_, c) = quantized(GgmlDType::Q4K, 16, cols, 33);
    let m = 6;
    let x = random(m * cols, 34);
    let isa = Isa::best();
    let acts = Activations::new(&x, m, cols);
    let mut outs = [vec![0f32; m * 24], vec![0f32; m * 8], vec![0f32; m * 16]];
    {
        let [oa, ob, oc] = &mut outs;
        let mut jobs = [
            MatmulJob {
                matrix: &a,
                out: oa,
            },
            MatmulJob {
                matrix: &b,
                out: ob,
            },
            MatmulJob {
                matrix: &c,
                out: oc,
            },
        ];
        matmul(isa, ActivationPrecision::Int16, &acts, &mut jobs).unwrap();
    }
    for (matrix, out) in [(&a, &outs[0]), (&b, &outs[1]), (&c, &outs[2])] {
        assert_eq!(&run(isa, ActivationPrecision::Int16, matrix, &x, m), out);
    }
}

#[test]
fn unsupported_formats_and_mismatched_shapes_are_clear_errors() {
    let weights = Tensor::from_vec(random(4 * 256, 1), (4, 256), &Device::Cpu).unwrap();
    let q2k = QTensor::quantize(&weights, GgmlDType::Q2K).unwrap();
    let error = CpuMatrix::from_qtensor("blk.0.attn_q.weight", &q2k)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("Q2K") && error.contains("supported"),
        "{error}"
    );

    let (_, matrix) = quantized(GgmlDType::Q4_0, 4, 256, 2);
    let x = random(128, 3);
    let acts = Activations::new(&x, 1, 128);
    let mut out = vec![0f32; 4];
    let error = matmul(
        Isa::best(),
        ActivationPrecision::Int16,
        &acts,
        &mut [MatmulJob {
            matrix: &matrix,
            out: &mut out,
        }],
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("width 128"), "{error}");
}
