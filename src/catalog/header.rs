//! Reading a weight file's header through any source of byte ranges — a remote file
//! through range requests, a local (possibly sparse) file through reads — growing the
//! range until the header is complete, so that a 40 GB file costs a few megabytes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use anyhow::bail;

use super::gguf_header::{HeaderRead, read_gguf_header};
use super::layout::FileLayout;
use super::registry::WeightFormat;
use super::safetensors_header::read_safetensors_header;

/// A parsed header.
#[derive(Debug, Clone)]
pub struct Header {
    /// The first bytes of the file as read: the header, [0, layout.header_len), and
    /// whatever the last read brought after it (tensor data worth keeping).
    pub bytes: Vec<u8>,
    pub layout: FileLayout,
    /// GGUF `<arch>.block_count` (None for safetensors: config.json says).
    pub block_count: Option<u64>,
    pub architecture: Option<String>,
}

/// How much to read first, and the most a header may take.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub initial: u64,
    pub max: u64,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            initial: 1 << 20,
            max: 512 << 20,
        }
    }
}

/// Reads the header of a `size`-byte file of `format`, asking `fetch` for byte ranges:
/// first `limits.initial` bytes, then at least what the header says it needs, doubling.
pub fn read_header(
    format: WeightFormat,
    size: u64,
    limits: HeaderLimits,
    mut fetch: impl FnMut(Range<u64>) -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Header> {
    let mut bytes = fetch(0..limits.initial.min(size))?;
    loop {
        let read = match format {
            WeightFormat::Gguf => match read_gguf_header(&bytes, size)? {
                HeaderRead::Complete(h) => {
                    HeaderRead::Complete((h.layout, h.block_count, h.architecture))
                }
                HeaderRead::NeedMore(n) => HeaderRead::NeedMore(n),
            },
            WeightFormat::Safetensors => match read_safetensors_header(&bytes, size)? {
                HeaderRead::Complete(layout) => HeaderRead::Complete((layout, None, None)),
                HeaderRead::NeedMore(n) => HeaderRead::NeedMore(n),
            },
        };
        match read {
            HeaderRead::Complete((layout, block_count, architecture)) => {
                let header_len = layout.header_len;
                if (bytes.len() as u64) < header_len {
                    // GGUF pads its header up to the data alignment.
                    let more = fetch(bytes.len() as u64..header_len)?;
                    bytes.extend_from_slice(&more);
                }
                return Ok(Header {
                    bytes,
                    layout,
                    block_count,
                    architecture,
                });
            }
            HeaderRead::NeedMore(needed) => {
                if needed > limits.max {
                    bail!(
                        "the header needs more than {} bytes: not a weight file this reader \
                         takes",
                        limits.max
                    );
                }
                let have = bytes.len() as u64;
                let target = needed.max(have.saturating_mul(2)).min(size).min(limits.max);
                if target <= have {
                    bail!("the header is truncated: it needs {needed} bytes, the file has {size}");
                }
                let more = fetch(have..target)?;
                if more.len() as u64 != target - have {
                    bail!(
                        "asked for {} header bytes, got {}",
                        target - have,
                        more.len()
                    );
                }
                bytes.extend_from_slice(&more);
            }
        }
    }
}

/// Reads the header of a local file (whole, or sparse with its header present).
pub fn read_local_header(
    file: &mut File,
    format: WeightFormat,
    limits: HeaderLimits,
) -> anyhow::Result<Header> {
    let size = file.metadata()?.len();
    read_header(format, size, limits, |range| {
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        file.seek(SeekFrom::Start(range.start))?;
        file.read_exact(&mut bytes)?;
        Ok(bytes)
    })
}
