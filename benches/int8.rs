//! The int8 kernels on the matrix shapes of a real model, for 1 to 512 activation rows:
//! what a decode step, a batch of decoding rows and a prompt cost per matrix.
//!
//!   cargo bench --bench int8 [-- FILTER]
//!
//! Each line: the median time of one matmul through the whole path a layer takes
//! (activations rounded to 8 bits, both threads), its multiply-adds per second, and for
//! one row the weight bytes read per second (decoding reads every weight once per token).

use std::time::Instant;

use exo::engine::cpu::ActivationPrecision;
use exo::engine::cpu::activations::Activations;
use exo::engine::cpu::formats::QuantFormat;
use exo::engine::cpu::int8::packed::random_blocks;
use exo::engine::cpu::isa::Isa;
use exo::engine::cpu::matrix::{CpuMatrix, MatmulJob, Weights, matmul};

/// Qwen2.5-Coder-0.5B's matrices (rows × cols, format) and a wide Q4_K_M model's.
const SHAPES: &[(&str, usize, usize, QuantFormat)] = &[
    ("q/o 896×896 Q5_0", 896, 896, QuantFormat::Q5_0),
    ("gate+up 9728×896 Q5_0", 9728, 896, QuantFormat::Q5_0),
    ("down 896×4864 Q6_K", 896, 4864, QuantFormat::Q6K),
    ("down 896×4864 Q4_K", 896, 4864, QuantFormat::Q4K),
    ("head 151936×896 Q8_0", 151_936, 896, QuantFormat::Q8_0),
    ("gate+up 8192×1536 Q4_K", 8192, 1536, QuantFormat::Q4K),
    ("q 576×576 Q4_1", 576, 576, QuantFormat::Q4_1),
];

fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let isa = Isa::best();
    println!(
        "int8 kernels on {} ({} threads)",
        isa.name(),
        exo::engine::cpu::pool::pool().threads()
    );
    for &(name, rows, cols, format) in SHAPES {
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let data = random_blocks(format, rows, cols, 1);
        let bytes = data.len();
        let matrix = CpuMatrix::new(rows, cols, Weights::Quant { format, data })
            .unwrap()
            .packed()
            .unwrap();
        for m in [1, 4, 8, 16, 64, 512] {
            if rows * m > 40_000_000 {
                continue;
            }
            let x: Vec<f32> = (0..m * cols)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 300.0)
                .collect();
            let mut out = vec![0f32; m * rows];
            let mut times = Vec::new();
            let runs = (2_000_000_000 / (rows * cols * m)).clamp(5, 200);
            for _ in 0..runs {
                let started = Instant::now();
                let acts = Activations::new(&x, m, cols);
                let mut jobs = [MatmulJob {
                    matrix: &matrix,
                    out: &mut out,
                }];
                matmul(isa, ActivationPrecision::Int8, &acts, &mut jobs).unwrap();
                times.push(started.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let t = times[times.len() / 2];
            let gmacs = (rows * cols * m) as f64 / t / 1e9;
            let extra = if m == 1 {
                format!(", {:.1} GB/s of weights", bytes as f64 / t / 1e9)
            } else {
                String::new()
            };
            println!(
                "{name:<26} {m:>4} rows: {:>9.3} ms, {gmacs:>6.1} GMAC/s{extra}",
                t * 1e3
            );
        }
    }
}
