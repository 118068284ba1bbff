//! Safetensors headers (`read_safetensors_header`): what a node reads from a peer or the Hub
//! before it fetches a model's tensors, as arbitrary bytes and as mutated valid headers.

use exo::catalog::gguf_header::HeaderRead;
use exo::catalog::safetensors_header::read_safetensors_header;
use proptest::prelude::*;
use serde_json::json;

use super::harness::{check_need_more, edge_u64, fuzz, mutate, mutations};

/// Reads `bytes` as the catalog does, growing the prefix as the reader asks.
fn read(bytes: &[u8]) -> Result<(), TestCaseError> {
    let size = bytes.len() as u64;
    let mut have = bytes.len().min(8);
    loop {
        match read_safetensors_header(&bytes[..have], size) {
            Ok(HeaderRead::Complete(layout)) => {
                prop_assert!(layout.header_len <= size);
                for t in &layout.tensors {
                    prop_assert!(t.start <= t.end && t.end <= size, "{:?}", t);
                }
                return Ok(());
            }
            Ok(HeaderRead::NeedMore(n)) => {
                check_need_more(n, have, size)?;
                have = n as usize;
            }
            Err(error) => {
                let message = format!("{error:#}");
                prop_assert!(!message.is_empty());
                return Ok(());
            }
        }
    }
}

/// A header of a few tensors laid out back to back (sizes sometimes wrong), and its data.
fn file() -> impl Strategy<Value = Vec<u8>> {
    let dtype = prop_oneof![
        Just("F32"),
        Just("F16"),
        Just("BF16"),
        Just("I64"),
        Just("U8"),
        Just("F8_E4M3"),
        Just("Q4"),
        Just("")
    ];
    let tensor = (
        "[a-z.0-9_]{0,16}",
        dtype,
        proptest::collection::vec(prop_oneof![4 => 0..6u64, 1 => edge_u64()], 0..4),
        proptest::option::of((edge_u64(), edge_u64())),
    );
    proptest::collection::vec(tensor, 0..5).prop_map(|tensors| {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0u64;
        for (name, dtype, shape, offsets) in tensors {
            let elements = shape.iter().fold(1u64, |a, &d| a.saturating_mul(d));
            let size = elements.saturating_mul(4).min(64);
            let (start, end) = offsets.unwrap_or((offset, offset + size));
            offset = offset.max(end.min(1 << 10));
            header.insert(
                name,
                json!({"dtype": dtype, "shape": shape, "data_offsets": [start, end]}),
            );
        }
        let text = serde_json::to_vec(&header).unwrap();
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend(text);
        bytes.resize(bytes.len() + offset as usize, 0);
        bytes
    })
}

#[test]
fn arbitrary_bytes_never_panic() {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (0u64..600, proptest::collection::vec(any::<u8>(), 0..600)).prop_map(|(n, rest)| {
            let mut b = n.to_le_bytes().to_vec();
            b.extend(rest);
            b
        }),
    ];
    fuzz("safetensors/arbitrary-bytes", bytes, |bytes| read(&bytes));
}

#[test]
fn mutated_headers_never_panic() {
    fuzz(
        "safetensors/mutated",
        (file(), mutations(6), any::<bool>()),
        |(file, mutations, mutate_it)| {
            let bytes = if mutate_it {
                mutate(&file, &mutations)
            } else {
                file
            };
            read(&bytes)
        },
    );
}

/// Found by `safetensors/mutated`: a tensor whose `data_offsets` start near u64::MAX
/// overflowed `header_len + start` (a panic where the catalog reads a header from a peer
/// or the Hub).
#[test]
fn regression_data_offset_overflow_is_an_error_not_a_panic() {
    let header = format!(
        r#"{{"t":{{"dtype":"F32","shape":[1],"data_offsets":[{},4]}}}}"#,
        u64::MAX - 2
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.resize(bytes.len() + 4, 0);
    let error = read_safetensors_header(&bytes, bytes.len() as u64).expect_err("refused");
    assert!(format!("{error:#}").contains("tensor t"), "{error:#}");
}
