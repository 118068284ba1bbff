//! Where each part of a packed block lives: the byte layout the kernels read.
//!
//! A packed matrix is a run of *panels* of [`PANEL`] weight rows. A panel is a run of
//! *records*, one per block of the row (32 values for the classic formats, 256 for the
//! K-quants), so a kernel working on one panel reads one contiguous stream. Inside a
//! record, the sixteen rows are interleaved four values at a time: the 64 bytes of one
//! vector load hold four consecutive values of each of the sixteen rows, which is what
//! `vpdpbusd` multiplies against four activation values broadcast to every lane. The
//! weights are kept as unsigned integers (`u`, with the format's zero point or minimum
//! kept apart), at the file's bit width:
//!
//! - *nibbles* (256 bytes per 32 values): byte `64·L + 4·r + t` holds value `4L + t` of
//!   row r in its low half and value `16 + 4L + t` in its high half (L = 0..4, t = 0..4);
//! - *high-bit masks* (Q5 formats: 64 bytes per 32 values; Q6_K: 128): for load L, a
//!   64-bit mask at `16·L` whose bit `4r + t` is bit 4 of the low-half value, one at
//!   `16·L + 8` for the high-half value; Q6_K adds the same for bit 5, 64 bytes later;
//! - *bytes* (Q8_0: 512 bytes per 32 values): byte `64·g + 4·r + t` is value `4g + t` of
//!   row r, as the signed byte of the file.
//!
//! Scales are kept as the file has them (f16 per row per block; the K-quants' 6-bit
//! sub-block scales and minimums unpacked to one byte each, done once here rather than on
//! every call). The records are the file's size, or within 3% of it (Q4_K, Q5_K: the
//! unpacked sub-block scales).

use crate::engine::cpu::formats::QuantFormat;

/// Weight rows per panel: the sixteen 32-bit lanes of an AVX-512 register (two AVX2 ones).
pub const PANEL: usize = 16;

/// The nibbles of 32 values of a panel.
pub const NIBBLES: usize = 256;
/// The bit-4 masks of 32 values of a panel.
pub const MASKS: usize = 64;

/// The layout of one format's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub format: QuantFormat,
    /// Values of a row per record: 32 or 256.
    pub block: usize,
    /// Bytes per record.
    pub record: usize,
    /// Offset of the f16 scales (`d`, one per row).
    pub scales: usize,
    /// Offset of the f16 minimums (Q4_1, Q5_1: `m`; Q4_K, Q5_K: `dmin`).
    pub mins: Option<usize>,
    /// K-quants: offset of the per-sub-block scales, `[sub][row]` bytes (u8; i8 for Q6_K).
    pub sub_scales: Option<usize>,
    /// Q4_K, Q5_K: offset of the per-sub-block minimums, `[sub][row]` u8.
    pub sub_mins: Option<usize>,
    /// Offset of the weights of the first 32 values.
    pub weights: usize,
    /// Bytes of the weights of 32 values (nibbles and masks, or bytes).
    pub weights_stride: usize,
    /// The zero point subtracted from `u` (0 where a minimum is used instead).
    pub zero: i32,
}

impl Layout {
    pub const fn of(format: QuantFormat) -> Layout {
        match format {
            QuantFormat::Q4_0 => Self::classic(format, 288, None, 32, NIBBLES, 8),
            QuantFormat::Q4_1 => Self::classic(format, 320, Some(32), 64, NIBBLES, 0),
            QuantFormat::Q5_0 => Self::classic(format, 352, None, 32, NIBBLES + MASKS, 16),
            QuantFormat::Q5_1 => Self::classic(format, 384, Some(32), 64, NIBBLES + MASKS, 0),
            QuantFormat::Q8_0 => Self::classic(format, 544, None, 32, 512, 0),
            QuantFormat::Q4K => Layout {
                format,
                block: 256,
                record: 320 + 8 * NIBBLES,
                scales: 0,
                mins: Some(32),
                sub_scales: Some(64),
                sub_mins: Some(192),
                weights: 320,
                weights_stride: NIBBLES,
                zero: 0,
            },
            QuantFormat::Q5K => Layout {
                format,
                block: 256,
                record: 320 + 8 * (NIBBLES + MASKS),
                scales: 0,
                mins: Some(32),
                sub_scales: Some(64),
                sub_mins: Some(192),
                weights: 320,
                weights_stride: NIBBLES + MASKS,
                zero: 0,
            },
            QuantFormat::Q6K => Layout {
                format,
                block: 256,
                record: 288 + 8 * (NIBBLES + 2 * MASKS),
                scales: 0,
                mins: None,
                sub_scales: Some(32),
                sub_mins: None,
                weights: 288,
                weights_stride: NIBBLES + 2 * MASKS,
                zero: 32,
            },
        }
    }

    const fn classic(
        format: QuantFormat,
        record: usize,
        mins: Option<usize>,
        weights: usize,
        weights_stride: usize,
        zero: i32,
    ) -> Layout {
        Layout {
            format,
            block: 32,
            record,
            scales: 0,
            mins,
            sub_scales: None,
            sub_mins: None,
            weights,
            weights_stride,
            zero,
        }
    }

    /// Bits of `u` per weight: 4, 5, 6 or 8.
    pub const fn bits(&self) -> u32 {
        match self.format {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q4K => 4,
            QuantFormat::Q5_0 | QuantFormat::Q5_1 | QuantFormat::Q5K => 5,
            QuantFormat::Q6K => 6,
            QuantFormat::Q8_0 => 8,
        }
    }

    /// Bytes of one panel of a row of `cols` values.
    pub fn panel_bytes(&self, cols: usize) -> usize {
        cols / self.block * self.record
    }
}

/// Where value `k` (0..32) of row `r` of a 32-value span sits in its nibbles:
/// (byte offset, whether in the high half).
#[inline]
pub fn nibble_at(r: usize, k: usize) -> (usize, bool) {
    let high = k >= 16;
    let k = k % 16;
    (64 * (k / 4) + 4 * r + k % 4, high)
}

/// Where value `k` of row `r` sits in a 32-value span's masks: (byte offset of its u64
/// mask, bit).
#[inline]
pub fn mask_at(r: usize, k: usize) -> (usize, usize) {
    let high = usize::from(k >= 16);
    let k = k % 16;
    (16 * (k / 4) + 8 * high, 4 * r + k % 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_the_files_size_or_within_three_percent() {
        use QuantFormat::*;
        for f in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K] {
            let l = Layout::of(f);
            let file = PANEL * f.unit_bytes() * l.block / f.unit_len();
            assert!(l.record >= file && l.record * 100 <= file * 103, "{f:?}");
            let end = l.weights + l.block / 32 * l.weights_stride;
            assert_eq!(end, l.record, "{f:?}");
        }
    }

    #[test]
    fn every_value_has_its_own_place() {
        let mut seen = std::collections::HashSet::new();
        for r in 0..PANEL {
            for k in 0..32 {
                assert!(seen.insert(nibble_at(r, k)));
                let (byte, bit) = mask_at(r, k);
                assert!(byte < MASKS && bit < 64);
            }
        }
    }
}
