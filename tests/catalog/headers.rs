//! The header reader places every tensor where candle's GGUF reader does, asks for more
//! bytes on any prefix of a header, and turns garbage into errors, not allocations or
//! panics.

use exo::catalog::gguf_header::{HeaderRead, read_gguf_header};

use super::fixtures::*;

fn check_against_candle(bytes: &[u8]) {
    let (data_offset, spans) = candle_tensors(bytes);
    let header = match read_gguf_header(bytes, bytes.len() as u64).unwrap() {
        HeaderRead::Complete(header) => header,
        HeaderRead::NeedMore(n) => panic!("the whole file is not enough: needs {n}"),
    };
    assert_eq!(header.layout.header_len, data_offset);
    assert_eq!(header.layout.tensors.len(), spans.len());
    for tensor in &header.layout.tensors {
        assert_eq!(
            spans[&tensor.name],
            tensor.start..tensor.end,
            "{}",
            tensor.name
        );
    }
    assert_eq!(header.architecture.as_deref(), Some("llama"));
    // Any prefix short of the header asks for more, never for less than it has.
    // (The last 31 bytes may be alignment padding, which the header itself does not need.)
    for cut in [
        0,
        3,
        4,
        16,
        100,
        data_offset as usize / 3,
        data_offset as usize - 32,
    ] {
        match read_gguf_header(&bytes[..cut], bytes.len() as u64).unwrap() {
            HeaderRead::NeedMore(n) => assert!(n > cut as u64, "prefix {cut} asks for {n}"),
            HeaderRead::Complete(_) => panic!("a {cut}-byte prefix cannot hold the header"),
        }
    }
}

#[test]
fn tensors_are_where_candle_finds_them() {
    check_against_candle(&tiny_gguf(3, false));
    let smollm = smollm_bytes();
    check_against_candle(&smollm);
    match read_gguf_header(&smollm, smollm.len() as u64).unwrap() {
        HeaderRead::Complete(header) => assert_eq!(header.block_count, Some(30)),
        HeaderRead::NeedMore(_) => unreachable!("checked above"),
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let bytes = tiny_gguf(2, false);
    let size = bytes.len() as u64;
    // Every single-byte change in the first part of the header: an error, a request for
    // more, or a header — never a panic or a huge allocation.
    for position in (0..600).step_by(3) {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0xff;
        let _ = read_gguf_header(&damaged, size);
    }
    let mut claims = b"GGUF".to_vec();
    claims.extend_from_slice(&3u32.to_le_bytes());
    claims.extend_from_slice(&u64::MAX.to_le_bytes());
    claims.extend_from_slice(&u64::MAX.to_le_bytes());
    let error = read_gguf_header(&claims, 1 << 30).unwrap_err();
    assert!(format!("{error:#}").contains("cannot fit"), "{error:#}");
    let error = read_gguf_header(b"GGML1234", 1 << 20).unwrap_err();
    assert!(
        format!("{error:#}").contains("does not start with GGUF"),
        "{error:#}"
    );
}

#[test]
fn safetensors_headers_are_read_from_their_first_bytes() {
    use exo::catalog::safetensors_header::read_safetensors_header;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let tensor = candle_core::Tensor::arange(0f32, 64.0, &candle_core::Device::Cpu).unwrap();
    let tensors =
        std::collections::HashMap::from([("model.layers.0.x.weight".to_string(), tensor)]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let size = bytes.len() as u64;
    assert!(matches!(
        read_safetensors_header(&bytes[..4], size).unwrap(),
        HeaderRead::NeedMore(8)
    ));
    let layout = match read_safetensors_header(&bytes, size).unwrap() {
        HeaderRead::Complete(layout) => layout,
        HeaderRead::NeedMore(n) => panic!("needs {n}"),
    };
    assert_eq!(layout.tensors[0].end - layout.tensors[0].start, 64 * 4);
    assert_eq!(layout.tensors[0].end, size);
    let error = read_safetensors_header(&bytes, size - 10).unwrap_err();
    assert!(format!("{error:#}").contains("truncated"), "{error:#}");
}
