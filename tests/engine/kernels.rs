//! The exact-activation CPU kernels against a dense f32 matmul of the same weights.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use exo::engine::quant_matmul::{BlockFormat, QuantMatrix, portable_dot};

fn random(shape: (usize, usize), seed: u64) -> Tensor {
    let mut state = seed | 1;
    let values: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

#[test]
fn quantized_matmul_matches_dequantized_f32_for_every_format_and_row_count() {
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let weight = QTensor::quantize(&random((96, 256), 3), dtype).unwrap();
        let dense = weight.dequantize(&Device::Cpu).unwrap();
        let matrix = Arc::new(
            QuantMatrix::from_qtensor(&weight)
                .unwrap()
                .expect("supported format"),
        );
        for m in [1, 2, 5, 8, 19] {
            let x = random((m, 256), 7 + m as u64);
            let expected = x.matmul(&dense.t().unwrap()).unwrap();
            let ours = matrix.forward(&x).unwrap();
            assert_eq!(ours.dims(), expected.dims());
            let diff: f32 = (ours - &expected)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-3, "{dtype:?} with {m} rows differs by {diff}");
        }
        // Dequantized rows are exactly candle's.
        let mut row = vec![0f32; 256];
        matrix.dequantize_row(17, &mut row);
        assert_eq!(row, dense.get(17).unwrap().to_vec1::<f32>().unwrap());
    }
}

#[test]
fn the_simd_kernel_agrees_with_the_portable_one() {
    for (dtype, format) in [
        (GgmlDType::Q4_0, BlockFormat::Q4_0),
        (GgmlDType::Q4_1, BlockFormat::Q4_1),
        (GgmlDType::Q8_0, BlockFormat::Q8_0),
    ] {
        let weight = QTensor::quantize(&random((4, 128), 11), dtype).unwrap();
        let bytes = weight.data().unwrap().into_owned();
        let matrix = Arc::new(QuantMatrix::from_qtensor(&weight).unwrap().unwrap());
        let x = random((1, 128), 5);
        let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let sums: Vec<f32> = values.chunks(32).map(|c| c.iter().sum()).collect();
        let fast = matrix
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let row_bytes = bytes.len() / 4;
        for (r, value) in fast.iter().enumerate() {
            let plain = portable_dot(
                format,
                &bytes[r * row_bytes..(r + 1) * row_bytes],
                &values,
                &sums,
            );
            assert!(
                (plain - value).abs() < 1e-4,
                "{dtype:?} row {r}: {plain} vs {value}"
            );
        }
    }
}

#[test]
fn embedding_rows_are_looked_up_and_bad_ids_refused() {
    let weight = QTensor::quantize(&random((10, 64), 2), GgmlDType::Q8_0).unwrap();
    let matrix = QuantMatrix::from_qtensor(&weight).unwrap().unwrap();
    let ids = Tensor::new(&[[3u32, 9]], &Device::Cpu).unwrap();
    let rows = matrix.embedding(&ids).unwrap();
    assert_eq!(rows.dims(), &[1, 2, 64]);
    let dense = weight.dequantize(&Device::Cpu).unwrap();
    assert_eq!(
        rows.get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        dense.get(9).unwrap().to_vec1::<f32>().unwrap()
    );
    let bad = Tensor::new(&[10u32], &Device::Cpu).unwrap();
    assert!(
        matrix
            .embedding(&bad)
            .unwrap_err()
            .to_string()
            .contains("outside")
    );
}
