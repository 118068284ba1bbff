//! A weight transfer on the wire, both ways (`FetchWeights`): the byte ranges a node asks
//! a peer for, and the chunks that answer, each with the CRC-32 of its bytes.

use std::ops::Range;

use super::pb;

/// The request for `ranges` of `file` of model `model_id`.
pub fn weight_request(model_id: &str, file: &str, ranges: &[Range<u64>]) -> pb::WeightRequest {
    pb::WeightRequest {
        model_id: model_id.to_string(),
        file: file.to_string(),
        ranges: ranges
            .iter()
            .map(|r| pb::ByteRange {
                start: r.start,
                end: r.end,
            })
            .collect(),
    }
}

/// The ranges a request asks for, as sent (the server checks them against its file).
pub fn requested_ranges(request: &pb::WeightRequest) -> impl Iterator<Item = Range<u64>> + '_ {
    request.ranges.iter().map(|r| r.start..r.end)
}

/// A chunk of bytes starting at `offset`, with their CRC-32.
pub fn weight_chunk(offset: u64, data: Vec<u8>) -> pb::WeightChunk {
    let crc32 = crc32fast::hash(&data);
    pb::WeightChunk {
        offset,
        data: data.into(),
        crc32,
    }
}

/// Checks a received chunk's bytes against its CRC-32; Err holds the CRC they have.
pub fn check_chunk(chunk: &pb::WeightChunk) -> Result<(), u32> {
    let crc = crc32fast::hash(&chunk.data);
    if crc == chunk.crc32 { Ok(()) } else { Err(crc) }
}
