//! A tensor-parallel group's frames (`crate::engine::group::Frame`) as bytes on a link
//! between two members: compact, little-endian, every length checked on the way in (a
//! frame from a peer is outside input: a bad one is an error naming what is wrong, never
//! a panic or a huge allocation).
//!
//! Layout: a kind byte (0 run, 1 part, 2 abort), the batch id (leader, sequence), then
//! - run: model id, start and end layer, the wire dtype, the members, the slices (JSON),
//!   the rows (request id, position, positions to reserve, tokens or a hidden state);
//! - part: the step, the dtype, the values (4 bytes each in f32, 2 in f16: what the member
//!   rounded them to already, so the receiver adds the very values the sender added);
//! - abort: the reason.
//!
//! Strings and vectors carry a u32 length first.

use anyhow::{Context, bail};

use crate::engine::group::{BatchId, Frame, GroupBatch, GroupPlacement, GroupRow, WireDtype};
use crate::engine::model::shard_io::{HiddenState, ShardInput};
use crate::engine::model::slice::TensorSlice;

/// The largest frame accepted from a peer (a batch's hidden states of a long prompt fit).
pub const MAX_FRAME_BYTES: usize = 256 << 20;

pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    match frame {
        Frame::Run(run) => {
            out.push(0);
            put_batch(&mut out, &run.batch);
            put_str(&mut out, &run.model_id);
            put_u32(&mut out, run.start_layer as u32);
            put_u32(&mut out, run.end_layer as u32);
            out.push(dtype_code(run.placement.wire));
            put_u32(&mut out, run.placement.members.len() as u32);
            for member in &run.placement.members {
                put_str(&mut out, member);
            }
            let slices = serde_json::to_string(&run.placement.slices).unwrap_or_default();
            put_str(&mut out, &slices);
            put_u32(&mut out, run.rows.len() as u32);
            for row in &run.rows {
                put_str(&mut out, &row.request_id);
                out.extend_from_slice(&(row.position as u64).to_le_bytes());
                out.extend_from_slice(&(row.reserve_positions as u64).to_le_bytes());
                match &row.input {
                    ShardInput::Tokens(tokens) => {
                        out.push(0);
                        put_u32(&mut out, tokens.len() as u32);
                        for t in tokens {
                            put_u32(&mut out, *t);
                        }
                    }
                    ShardInput::Hidden(h) => {
                        out.push(1);
                        put_u32(&mut out, h.rows as u32);
                        put_u32(&mut out, h.cols as u32);
                        for v in &h.data {
                            out.extend_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
        }
        Frame::Part {
            batch,
            op,
            values,
            dtype,
        } => {
            out.reserve(32 + values.len() * 4);
            out.push(1);
            put_batch(&mut out, batch);
            put_u32(&mut out, *op);
            out.push(dtype_code(*dtype));
            put_u32(&mut out, values.len() as u32);
            match dtype {
                WireDtype::F32 => {
                    for v in values {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
                WireDtype::F16 => {
                    for v in values {
                        out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                    }
                }
            }
        }
        Frame::Abort { batch, reason } => {
            out.push(2);
            put_batch(&mut out, batch);
            put_str(&mut out, reason);
        }
    }
    out
}

pub fn decode(bytes: &[u8]) -> anyhow::Result<Frame> {
    let mut r = Reader { bytes, at: 0 };
    let frame = match r.u8()? {
        0 => {
            let batch = r.batch()?;
            let model_id = r.string()?;
            let start_layer = r.u32()? as usize;
            let end_layer = r.u32()? as usize;
            let wire = dtype(r.u8()?)?;
            let count = r.len(4)?;
            let members = (0..count)
                .map(|_| r.string())
                .collect::<anyhow::Result<Vec<_>>>()?;
            let slices: Vec<TensorSlice> =
                serde_json::from_str(&r.string()?).context("the group's slices")?;
            if slices.len() != members.len() {
                bail!(
                    "{} slices for {} members of group batch {batch}",
                    slices.len(),
                    members.len()
                );
            }
            let count = r.len(21)?;
            let mut rows = Vec::with_capacity(count);
            for _ in 0..count {
                let request_id = r.string()?;
                let position = r.u64()? as usize;
                let reserve_positions = r.u64()? as usize;
                let input = match r.u8()? {
                    0 => {
                        let n = r.len(4)?;
                        ShardInput::Tokens((0..n).map(|_| r.u32()).collect::<Result<_, _>>()?)
                    }
                    1 => {
                        let (rows, cols) = (r.u32()? as usize, r.u32()? as usize);
                        let n = rows.checked_mul(cols).context("a hidden state too large")?;
                        let data = r.f32s(n)?;
                        ShardInput::Hidden(HiddenState { data, rows, cols })
                    }
                    other => bail!("unknown input kind {other} in group batch {batch}"),
                };
                rows.push(GroupRow {
                    request_id,
                    position,
                    reserve_positions,
                    input,
                });
            }
            Frame::Run(GroupBatch {
                batch,
                model_id,
                start_layer,
                end_layer,
                placement: GroupPlacement {
                    members,
                    slices,
                    wire,
                },
                rows,
            })
        }
        1 => {
            let batch = r.batch()?;
            let op = r.u32()?;
            let dtype = dtype(r.u8()?)?;
            let n = r.u32()? as usize;
            let values = match dtype {
                WireDtype::F32 => r.f32s(n)?,
                WireDtype::F16 => {
                    let raw = r.take(n.checked_mul(2).context("too many values")?)?;
                    raw.chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect()
                }
            };
            Frame::Part {
                batch,
                op,
                values,
                dtype,
            }
        }
        2 => {
            let batch = r.batch()?;
            let reason = r.string()?;
            Frame::Abort { batch, reason }
        }
        other => bail!("unknown group frame kind {other}"),
    };
    if r.at != bytes.len() {
        bail!("{} bytes left over after a group frame", bytes.len() - r.at);
    }
    Ok(frame)
}

fn dtype_code(dtype: WireDtype) -> u8 {
    match dtype {
        WireDtype::F32 => 0,
        WireDtype::F16 => 1,
    }
}

fn dtype(code: u8) -> anyhow::Result<WireDtype> {
    match code {
        0 => Ok(WireDtype::F32),
        1 => Ok(WireDtype::F16),
        other => bail!("unknown wire dtype {other}"),
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_batch(out: &mut Vec<u8>, batch: &BatchId) {
    put_str(out, &batch.leader);
    out.extend_from_slice(&batch.seq.to_le_bytes());
}

/// Reads a frame's fields, each bounded by the bytes that are left.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> anyhow::Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .with_context(|| {
                format!(
                    "a group frame cut short: {n} bytes wanted at {}, {} there",
                    self.at,
                    self.bytes.len()
                )
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> anyhow::Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// A count of items at least `item_bytes` long each: no more than the bytes left hold.
    fn len(&mut self, item_bytes: usize) -> anyhow::Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_bytes) > self.bytes.len() - self.at {
            bail!(
                "a group frame claims {n} items in {} bytes",
                self.bytes.len() - self.at
            );
        }
        Ok(n)
    }

    fn string(&mut self) -> anyhow::Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).context("a group frame's text is not UTF-8")
    }

    fn f32s(&mut self, n: usize) -> anyhow::Result<Vec<f32>> {
        let raw = self.take(n.checked_mul(4).context("too many values")?)?;
        Ok(raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn batch(&mut self) -> anyhow::Result<BatchId> {
        let leader = self.string()?;
        let seq = self.u64()?;
        Ok(BatchId { leader, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Frame {
        Frame::Run(GroupBatch {
            batch: BatchId {
                leader: "a".into(),
                seq: 7,
            },
            model_id: "m".into(),
            start_layer: 0,
            end_layer: 24,
            placement: GroupPlacement {
                members: vec!["a".into(), "b".into()],
                slices: vec![
                    TensorSlice {
                        member: 0,
                        members: 2,
                        heads: 0..7,
                        ffn: 0..256,
                        vocab: 0..16,
                    },
                    TensorSlice {
                        member: 1,
                        members: 2,
                        heads: 7..14,
                        ffn: 256..512,
                        vocab: 16..32,
                    },
                ],
                wire: WireDtype::F16,
            },
            rows: vec![
                GroupRow {
                    request_id: "r1".into(),
                    position: 3,
                    reserve_positions: 99,
                    input: ShardInput::Tokens(vec![1, 2, 3]),
                },
                GroupRow {
                    request_id: "r2".into(),
                    position: 0,
                    reserve_positions: 9,
                    input: ShardInput::Hidden(HiddenState {
                        data: vec![0.5, -1.25],
                        rows: 1,
                        cols: 2,
                    }),
                },
            ],
        })
    }

    #[test]
    fn every_frame_comes_back_as_it_went() {
        let batch = BatchId {
            leader: "a".into(),
            seq: 1,
        };
        let frames = [
            run(),
            Frame::Part {
                batch: batch.clone(),
                op: 3,
                values: vec![1.0, -2.5, 1e-3],
                dtype: WireDtype::F32,
            },
            Frame::Abort {
                batch: batch.clone(),
                reason: "gone".into(),
            },
        ];
        for frame in frames {
            assert_eq!(decode(&encode(&frame)).unwrap(), frame);
        }
        // f16 parts carry the values the sender rounded to, exactly.
        let rounded: Vec<f32> = [0.1f32, 3.3, -7.7]
            .iter()
            .map(|v| half::f16::from_f32(*v).to_f32())
            .collect();
        let part = Frame::Part {
            batch,
            op: 0,
            values: rounded,
            dtype: WireDtype::F16,
        };
        let bytes = encode(&part);
        assert_eq!(decode(&bytes).unwrap(), part);
    }

    #[test]
    fn cut_or_padded_frames_are_errors() {
        let bytes = encode(&run());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(decode(&padded).is_err());
        // A count far past the bytes there is refused before anything is allocated.
        let mut huge = vec![1u8];
        put_batch(
            &mut huge,
            &BatchId {
                leader: "a".into(),
                seq: 1,
            },
        );
        put_u32(&mut huge, 0);
        huge.push(0);
        put_u32(&mut huge, u32::MAX);
        let error = decode(&huge).unwrap_err().to_string();
        assert!(error.contains("cut short"), "{error}");
    }
}
