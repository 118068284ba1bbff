//! Reading a GGUF header from the first bytes of a file, without the rest of the file.
//!
//! A node that fetches only its layers first fetches the header with small range requests,
//! growing the range until the header is complete. This reader walks the header over the
//! bytes it has and says either where the tensor data starts (and every tensor's place) or
//! how many bytes it needs at least; every length in the header is checked against the
//! file's size before anything is allocated, so garbage is a clear error, not a huge
//! allocation. It knows every ggml type's block size, so it also places tensors of types
//! the engine cannot run (a download does not need to understand the numbers).

use anyhow::bail;

use super::layout::{FileLayout, TensorSpan};

/// What the bytes at hand say.
#[derive(Debug)]
pub enum HeaderRead<T> {
    /// The header is complete.
    Complete(T),
    /// The header goes on past the bytes given: at least this many bytes from the start
    /// of the file are needed.
    NeedMore(u64),
}

/// The parts of a GGUF header a download needs.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// `<arch>.block_count`: the number of layers.
    pub block_count: Option<u64>,
    pub layout: FileLayout,
}

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// Reads the GGUF header in `prefix` (the first bytes of a file of `file_size` bytes).
pub fn read_gguf_header(prefix: &[u8], file_size: u64) -> anyhow::Result<HeaderRead<GgufHeader>> {
    let mut cursor = Cursor {
        bytes: prefix,
        position: 0,
        file_size,
    };
    match cursor.header() {
        Ok(header) => Ok(HeaderRead::Complete(header)),
        Err(Stop::NeedMore(n)) if n > file_size => bail!(
            "the GGUF file is truncated: its header needs at least {n} bytes but the file has \
             {file_size}"
        ),
        Err(Stop::NeedMore(n)) => Ok(HeaderRead::NeedMore(n)),
        Err(Stop::Invalid(message)) => bail!("not a readable GGUF header: {message}"),
    }
}

/// Bytes of one ggml block and the elements it holds, by ggml type id (ggml.h).
fn ggml_block(type_id: u32) -> Option<(u64, u64)> {
    Some(match type_id {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        _ => return None,
    })
}

enum Stop {
    NeedMore(u64),
    Invalid(String),
}

type Step<T> = Result<T, Stop>;

struct Cursor<'a> {
    bytes: &'a [u8],
    position: u64,
    file_size: u64,
}

impl Cursor<'_> {
    fn take(&mut self, n: u64) -> Step<&[u8]> {
        let end = self
            .position
            .checked_add(n)
            .ok_or_else(|| invalid("length overflow"))?;
        if end > self.file_size {
            return Err(Stop::NeedMore(end));
        }
        if end > self.bytes.len() as u64 {
            return Err(Stop::NeedMore(end));
        }
        let slice = &self.bytes[self.position as usize..end as usize];
        self.position = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Step<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Step<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A count or string length: u32 in GGUF v1, u64 since.
    fn length(&mut self, version: u32) -> Step<u64> {
        if version == 1 {
            self.u32().map(u64::from)
        } else {
            self.u64()
        }
    }

    /// A length that must fit in what is left of the file.
    fn bounded_length(&mut self, version: u32, what: &str) -> Step<u64> {
        let n = self.length(version)?;
        if n > self.file_size.saturating_sub(self.position) {
            return Err(invalid(format!(
                "{what} of {n} bytes at offset {} runs past the end of the file ({} bytes)",
                self.position, self.file_size
            )));
        }
        Ok(n)
    }

    fn string(&mut self, version: u32) -> Step<String> {
        let n = self.bounded_length(version, "a string")?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn header(&mut self) -> Step<GgufHeader> {
        if self.take(4)? != MAGIC {
            return Err(invalid("the file does not start with GGUF"));
        }
        let version = self.u32()?;
        if !(1..=3).contains(&version) {
            return Err(invalid(format!("unknown GGUF version {version}")));
        }
        let tensor_count = self.length(version)?;
        let kv_count = self.length(version)?;
        // Each entry takes at least a few bytes: counts beyond the file are garbage.
        if tensor_count.saturating_add(kv_count) > self.file_size / 8 {
            return Err(invalid(format!(
                "{tensor_count} tensors and {kv_count} metadata entries cannot fit in {} bytes",
                self.file_size
            )));
        }
        let mut architecture = None;
        let mut alignment = DEFAULT_ALIGNMENT;
        let mut block_counts = Vec::new();
        for _ in 0..kv_count {
            let key = self.string(version)?;
            let value_type = self.u32()?;
            match (key.as_str(), value_type) {
                ("general.architecture", 8) => architecture = Some(self.string(version)?),
                ("general.alignment", _) => {
                    alignment = self.integer(value_type)?;
                    if alignment == 0 || !alignment.is_power_of_two() {
                        return Err(invalid(format!("general.alignment {alignment}")));
                    }
                }
                (key, _) if key.ends_with(".block_count") => {
                    let count = self.integer(value_type)?;
                    block_counts.push((key.trim_end_matches(".block_count").to_string(), count));
                }
                _ => self.skip_value(version, value_type, 0)?,
            }
        }
        let block_count = block_counts
            .iter()
            .find(|(arch, _)| Some(arch) == architecture.as_ref())
            .or(block_counts.first())
            .map(|(_, count)| *count);
        let mut raw = Vec::with_capacity(tensor_count.min(1 << 16) as usize);
        for _ in 0..tensor_count {
            let name = self.string(version)?;
            let dims = self.u32()?;
            if dims > 8 {
                return Err(invalid(format!("tensor {name} has {dims} dimensions")));
            }
            let mut elements: u64 = 1;
            for _ in 0..dims {
                let dim = if version == 1 {
                    u64::from(self.u32()?)
                } else {
                    self.u64()?
                };
                elements = elements
                    .checked_mul(dim)
                    .ok_or_else(|| invalid(format!("tensor {name} has too many elements")))?;
            }
            let type_id = self.u32()?;
            let offset = self.u64()?;
            raw.push((name, elements, type_id, offset));
        }
        let data_offset = self.position.div_ceil(alignment) * alignment;
        if data_offset > self.file_size {
            return Err(Stop::NeedMore(data_offset));
        }
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, elements, type_id, offset) in raw {
            let (block_elements, block_bytes) = ggml_block(type_id)
                .ok_or_else(|| invalid(format!("tensor {name} has unknown ggml type {type_id}")))?;
            if elements % block_elements != 0 {
                return Err(invalid(format!(
                    "tensor {name}: {elements} elements are not whole blocks of {block_elements}"
                )));
            }
            // Element counts were multiplied with checks, but their byte size can still
            // overflow (2^62 f32 values): checked too (found by tests/fuzz).
            let bytes = (elements / block_elements)
                .checked_mul(block_bytes)
                .ok_or_else(|| invalid(format!("tensor {name} has too many elements")))?;
            let start = data_offset.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= self.file_size => {
                    tensors.push(TensorSpan { name, start, end })
                }
                _ => {
                    return Err(invalid(format!(
                        "tensor {name} (offset {offset}, {bytes} bytes) lies past the end of the \
                         file ({} bytes): the file is truncated or not the one the header \
                         describes",
                        self.file_size
                    )));
                }
            }
        }
        Ok(GgufHeader {
            version,
            architecture,
            block_count,
            layout: FileLayout {
                header_len: data_offset,
                size: self.file_size,
                tensors,
            },
        })
    }

    fn integer(&mut self, value_type: u32) -> Step<u64> {
        Ok(match value_type {
            0 => u64::from(self.take(1)?[0]),
            2 => u64::from(u16::from_le_bytes(
                self.take(2)?.try_into().expect("2 bytes"),
            )),
            4 => u64::from(self.u32()?),
            10 => self.u64()?,
            // Signed: the same bytes, but a negative count is garbage.
            1 | 3 | 5 | 11 => {
                let bits = match value_type {
                    1 => 8,
                    3 => 16,
                    5 => 32,
                    _ => 64,
                };
                let raw = self.integer(match value_type {
                    1 => 0,
                    3 => 2,
                    5 => 4,
                    _ => 10,
                })?;
                if raw >> (bits - 1) & 1 == 1 {
                    return Err(invalid("a negative count in the metadata"));
                }
                raw
            }
            other => return Err(invalid(format!("expected an integer, found type {other}"))),
        })
    }

    fn skip_value(&mut self, version: u32, value_type: u32, depth: usize) -> Step<()> {
        let fixed = match value_type {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                let n = self.bounded_length(version, "a string")?;
                self.take(n)?;
                return Ok(());
            }
            9 => {
                if depth > 4 {
                    return Err(invalid("arrays nested too deep"));
                }
                let element_type = self.u32()?;
                let n = self.length(version)?;
                if n > self.file_size.saturating_sub(self.position) {
                    return Err(invalid(format!(
                        "an array of {n} elements cannot fit in the file"
                    )));
                }
                let element_size = match element_type {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match element_size {
                    // Fixed-size elements: one bounds check, no walk.
                    Some(size) => {
                        self.take(
                            n.checked_mul(size)
                                .ok_or_else(|| invalid("array overflow"))?,
                        )?;
                    }
                    None => {
                        for _ in 0..n {
                            self.skip_value(version, element_type, depth + 1)?;
                        }
                    }
                }
                return Ok(());
            }
            other => return Err(invalid(format!("unknown metadata value type {other}"))),
        };
        self.take(fixed)?;
        Ok(())
    }
}

fn invalid(message: impl Into<String>) -> Stop {
    Stop::Invalid(message.into())
}
