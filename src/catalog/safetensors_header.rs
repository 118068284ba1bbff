//! Reading a safetensors header from the first bytes of a file: an 8-byte little-endian
//! length, then that many bytes of JSON naming each tensor's dtype, shape and byte range
//! (relative to the end of the header).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::gguf_header::HeaderRead;
use super::layout::{FileLayout, TensorSpan};

/// Headers beyond this are not safetensors files (real ones are well under a megabyte).
const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Reads the safetensors header in `prefix` (the first bytes of a file of `file_size`
/// bytes).
pub fn read_safetensors_header(
    prefix: &[u8],
    file_size: u64,
) -> anyhow::Result<HeaderRead<FileLayout>> {
    if file_size < 8 {
        bail!("not a safetensors file: {file_size} bytes is shorter than its length prefix");
    }
    let Some(length) = prefix.get(..8) else {
        return Ok(HeaderRead::NeedMore(8));
    };
    let length = u64::from_le_bytes(length.try_into().expect("8 bytes"));
    if length > MAX_HEADER_BYTES || length > file_size - 8 {
        bail!(
            "not a safetensors file: it announces a {length}-byte header in a {file_size}-byte file"
        );
    }
    let header_len = 8 + length;
    let Some(json) = prefix.get(8..header_len as usize) else {
        return Ok(HeaderRead::NeedMore(header_len));
    };
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(json).context("not a safetensors file: its header is not JSON")?;
    let mut tensors = Vec::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let entry: Entry = serde_json::from_value(value)
            .with_context(|| format!("safetensors header: tensor {name} is malformed"))?;
        let [start, end] = entry.data_offsets;
        // Offsets come from the file: near u64::MAX they must not overflow (tests/fuzz).
        let (start, end) = (
            header_len.saturating_add(start),
            header_len.saturating_add(end),
        );
        if end < start || end > file_size {
            bail!(
                "safetensors header: tensor {name} spans bytes {start}..{end} of a {file_size}-byte \
                 file: the file is truncated or not the one the header describes"
            );
        }
        if let Some(element) = dtype_bytes(&entry.dtype) {
            let elements = entry.shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d));
            if elements.and_then(|n| n.checked_mul(element)) != Some(end - start) {
                bail!(
                    "safetensors header: tensor {name} ({} {:?}) does not fill its {} bytes",
                    entry.dtype,
                    entry.shape,
                    end - start
                );
            }
        }
        tensors.push(TensorSpan { name, start, end });
    }
    tensors.sort_by_key(|t| t.start);
    Ok(HeaderRead::Complete(FileLayout {
        header_len,
        size: file_size,
        tensors,
    }))
}

fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}
