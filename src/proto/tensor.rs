//! Tensors on the wire: raw little-endian bytes, a dtype and a shape.

use candle_core::{DType, Device, Tensor};

use super::pb;

/// Why a received tensor was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    #[error("unknown tensor dtype {0}")]
    UnknownDtype(i32),
    #[error("tensor shape {shape:?} is empty or too large")]
    BadShape { shape: Vec<u64> },
    #[error(
        "tensor of dtype {dtype} and shape {shape:?} needs {expected} bytes, but {actual} arrived"
    )]
    SizeMismatch {
        dtype: &'static str,
        shape: Vec<u64>,
        expected: u64,
        actual: u64,
    },
    #[error("cannot build the tensor: {0}")]
    Candle(String),
}

fn wire_dtype(dtype: DType) -> Result<pb::Dtype, TensorError> {
    match dtype {
        DType::F32 => Ok(pb::Dtype::F32),
        DType::F16 => Ok(pb::Dtype::F16),
        DType::BF16 => Ok(pb::Dtype::Bf16),
        other => Err(TensorError::Candle(format!(
            "dtype {other:?} cannot travel"
        ))),
    }
}

/// Serializes a tensor (any device; it is copied to the host).
pub fn encode_tensor(tensor: &Tensor) -> Result<pb::Tensor, TensorError> {
    let dtype = wire_dtype(tensor.dtype())?;
    let shape: Vec<u64> = tensor.dims().iter().map(|&d| d as u64).collect();
    let flat = tensor
        .flatten_all()
        .and_then(|t| t.to_device(&Device::Cpu))
        .map_err(|e| TensorError::Candle(e.to_string()))?;
    let data = match dtype {
        pb::Dtype::F32 => bytes_of(&flat.to_vec1::<f32>(), |v| v.to_le_bytes())?,
        pb::Dtype::F16 => bytes_of(&flat.to_vec1::<half::f16>(), |v| v.to_le_bytes())?,
        pb::Dtype::Bf16 => bytes_of(&flat.to_vec1::<half::bf16>(), |v| v.to_le_bytes())?,
        pb::Dtype::Unspecified => unreachable!("wire_dtype never returns Unspecified"),
    };
    Ok(pb::Tensor {
        data: data.into(),
        dtype: dtype as i32,
        shape,
    })
}

fn bytes_of<T: Copy, const N: usize>(
    values: &candle_core::Result<Vec<T>>,
    to_le: impl Fn(T) -> [u8; N],
) -> Result<Vec<u8>, TensorError> {
    let values = values
        .as_ref()
        .map_err(|e| TensorError::Candle(e.to_string()))?;
    let mut out = Vec::with_capacity(values.len() * N);
    for &v in values {
        out.extend_from_slice(&to_le(v));
    }
    Ok(out)
}

/// Checks and rebuilds a received tensor on `device`: the dtype must be known and the
/// byte count must be exactly elements × element size.
pub fn decode_tensor(wire: &pb::Tensor, device: &Device) -> Result<Tensor, TensorError> {
    let (dtype, size) = match pb::Dtype::try_from(wire.dtype) {
        Ok(pb::Dtype::F32) => (DType::F32, 4u64),
        Ok(pb::Dtype::F16) => (DType::F16, 2),
        Ok(pb::Dtype::Bf16) => (DType::BF16, 2),
        _ => return Err(TensorError::UnknownDtype(wire.dtype)),
    };
    let bad_shape = || TensorError::BadShape {
        shape: wire.shape.clone(),
    };
    if wire.shape.is_empty() || wire.shape.len() > 8 {
        return Err(bad_shape());
    }
    let elements = wire
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n > 0)
        .ok_or_else(bad_shape)?;
    let expected = elements.checked_mul(size).ok_or_else(bad_shape)?;
    if expected != wire.data.len() as u64 {
        return Err(TensorError::SizeMismatch {
            dtype: dtype.as_str(),
            shape: wire.shape.clone(),
            expected,
            actual: wire.data.len() as u64,
        });
    }
    let shape: Vec<usize> = wire.shape.iter().map(|&d| d as usize).collect();
    Tensor::from_raw_buffer(&wire.data, dtype, &shape, device)
        .map_err(|e| TensorError::Candle(e.to_string()))
}

/// Serializes rows of hidden states as an f32 tensor of shape (rows, cols).
pub fn encode_hidden(hidden: &crate::engine::HiddenState) -> pb::Tensor {
    let mut data = Vec::with_capacity(hidden.data.len() * 4);
    for v in &hidden.data {
        data.extend_from_slice(&v.to_le_bytes());
    }
    pb::Tensor {
        data: data.into(),
        dtype: pb::Dtype::F32 as i32,
        shape: vec![hidden.rows as u64, hidden.cols as u64],
    }
}

/// Checks and rebuilds received hidden states: shape (rows, cols) or (1, rows, cols), in
/// any wire dtype (converted to f32).
pub fn decode_hidden(wire: &pb::Tensor) -> Result<crate::engine::HiddenState, TensorError> {
    let tensor = decode_tensor(wire, &Device::Cpu)?;
    let (rows, cols) = match tensor.dims() {
        [rows, cols] => (*rows, *cols),
        [1, rows, cols] => (*rows, *cols),
        _ => {
            return Err(TensorError::BadShape {
                shape: wire.shape.clone(),
            });
        }
    };
    let data = tensor
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| TensorError::Candle(e.to_string()))?;
    Ok(crate::engine::HiddenState { data, rows, cols })
}
