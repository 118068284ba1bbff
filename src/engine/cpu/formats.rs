//! The weight formats the CPU kernels read, and how one unit of each decodes.
//!
//! A *unit* is the span of weights that share one floating-point scale: a 32-weight block
//! for the classic formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), a 256-weight super-block for the
//! K-quants (Q4_K, Q5_K, Q6_K). A unit decodes to small integers with its integer sub-scales
//! already folded in (`sc · q` fits an i16 for every format here), plus the float scale
//! and, for the formats with a minimum, the minimum's part. The dot product of a unit with
//! 16-bit activations is then an exact integer sum, scaled once per unit:
//!
//! `Σ wᵢ·xᵢ = scale · dx · Σ qᵢ·x̂ᵢ  −/+  min-term`
//!
//! The byte layouts are GGUF's (ggml's `block_q4_0`, `block_q4_K`, …).

use candle_core::quantized::GgmlDType;
use half::f16;

/// Weights per unit of the K-quants.
pub const SUPER: usize = 256;
/// Weights per block of the classic formats, and per sub-block of the K-quants.
pub const BLOCK: usize = 32;

/// A quantized weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// How a unit's minimum enters its dot product.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinTerm {
    /// No minimum: the weights are centred (Q4_0, Q5_0, Q8_0, Q6_K).
    None,
    /// `+ m · Σ xᵢ` over the whole 32-weight block (Q4_1, Q5_1).
    Block(f32),
    /// `− dmin · Σₛ mₛ · Σ_{i∈s} xᵢ` over the eight 32-weight sub-blocks (Q4_K, Q5_K).
    Sub(f32, [u8; 8]),
}

/// One decoded unit: `weights` holds `unit_len()` integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitScale {
    pub scale: f32,
    pub min: MinTerm,
}

impl QuantFormat {
    /// The format of a GGUF tensor type, when the kernels read it.
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q4_0 => QuantFormat::Q4_0,
            GgmlDType::Q4_1 => QuantFormat::Q4_1,
            GgmlDType::Q5_0 => QuantFormat::Q5_0,
            GgmlDType::Q5_1 => QuantFormat::Q5_1,
            GgmlDType::Q8_0 => QuantFormat::Q8_0,
            GgmlDType::Q4K => QuantFormat::Q4K,
            GgmlDType::Q5K => QuantFormat::Q5K,
            GgmlDType::Q6K => QuantFormat::Q6K,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q4_0 => "Q4_0",
            QuantFormat::Q4_1 => "Q4_1",
            QuantFormat::Q5_0 => "Q5_0",
            QuantFormat::Q5_1 => "Q5_1",
            QuantFormat::Q8_0 => "Q8_0",
            QuantFormat::Q4K => "Q4_K",
            QuantFormat::Q5K => "Q5_K",
            QuantFormat::Q6K => "Q6_K",
        }
    }

    /// Weights per unit (one float scale).
    pub fn unit_len(self) -> usize {
        if self.is_k_quant() { SUPER } else { BLOCK }
    }

    pub fn is_k_quant(self) -> bool {
        matches!(self, QuantFormat::Q4K | QuantFormat::Q5K | QuantFormat::Q6K)
    }

    /// Bytes per unit in the file.
    pub fn unit_bytes(self) -> usize {
        match self {
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q5_0 => 22,
            QuantFormat::Q5_1 => 24,
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4K => 144,
            QuantFormat::Q5K => 176,
            QuantFormat::Q6K => 210,
        }
    }

    /// Whether the dot product needs the activations' per-32 sums.
    pub fn has_min(self) -> bool {
        matches!(
            self,
            QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q4K | QuantFormat::Q5K
        )
    }

    /// The float scale and minimum of one unit (what [`Self::decode_unit`] returns, without
    /// decoding the weights: the SIMD decoders use it).
    pub fn unit_scale(self, unit: &[u8]) -> UnitScale {
        match self {
            QuantFormat::Q4_0 | QuantFormat::Q5_0 | QuantFormat::Q8_0 => UnitScale {
                scale: half_at(unit, 0),
                min: MinTerm::None,
            },
            QuantFormat::Q4_1 | QuantFormat::Q5_1 => UnitScale {
                scale: half_at(unit, 0),
                min: MinTerm::Block(half_at(unit, 2)),
            },
            QuantFormat::Q4K | QuantFormat::Q5K => UnitScale {
                scale: half_at(unit, 0),
                min: MinTerm::Sub(half_at(unit, 2), k_scales(unit).1),
            },
            QuantFormat::Q6K => UnitScale {
                scale: half_at(unit, 208),
                min: MinTerm::None,
            },
        }
    }

    /// Decodes one unit: `out` receives `unit_len()` integers (sub-scales folded in).
    pub fn decode_unit(self, unit: &[u8], out: &mut [i16]) -> UnitScale {
        debug_assert_eq!(unit.len(), self.unit_bytes());
        debug_assert_eq!(out.len(), self.unit_len());
        match self {
            QuantFormat::Q4_0 => {
                let qs = &unit[2..18];
                for j in 0..16 {
                    out[j] = i16::from(qs[j] & 0x0f) - 8;
                    out[j + 16] = i16::from(qs[j] >> 4) - 8;
                }
                UnitScale {
                    scale: half_at(unit, 0),
                    min: MinTerm::None,
                }
            }
            QuantFormat::Q4_1 => {
                let qs = &unit[4..20];
                for j in 0..16 {
                    out[j] = i16::from(qs[j] & 0x0f);
                    out[j + 16] = i16::from(qs[j] >> 4);
                }
                UnitScale {
                    scale: half_at(unit, 0),
                    min: MinTerm::Block(half_at(unit, 2)),
                }
            }
            QuantFormat::Q5_0 | QuantFormat::Q5_1 => {
                let (qh_at, qs_at, offset) = if self == QuantFormat::Q5_0 {
                    (2, 6, 16)
                } else {
                    (4, 8, 0)
                };
                let qh = u32::from_le_bytes([
                    unit[qh_at],
                    unit[qh_at + 1],
                    unit[qh_at + 2],
                    unit[qh_at + 3],
                ]);
                let qs = &unit[qs_at..qs_at + 16];
                for j in 0..16 {
                    let high_lo = ((qh >> j) & 1) as i16;
                    let high_hi = ((qh >> (j + 16)) & 1) as i16;
                    out[j] = (i16::from(qs[j] & 0x0f) | (high_lo << 4)) - offset;
                    out[j + 16] = (i16::from(qs[j] >> 4) | (high_hi << 4)) - offset;
                }
                let min = if self == QuantFormat::Q5_1 {
                    MinTerm::Block(half_at(unit, 2))
                } else {
                    MinTerm::None
                };
                UnitScale {
                    scale: half_at(unit, 0),
                    min,
                }
            }
            QuantFormat::Q8_0 => {
                for (o, &q) in out.iter_mut().zip(&unit[2..34]) {
                    *o = i16::from(q as i8);
                }
                UnitScale {
                    scale: half_at(unit, 0),
                    min: MinTerm::None,
                }
            }
            QuantFormat::Q4K | QuantFormat::Q5K => {
                let scales = &unit[4..16];
                let (qh, qs) = if self == QuantFormat::Q5K {
                    (Some(&unit[16..48]), &unit[48..176])
                } else {
                    (None, &unit[16..144])
                };
                let mut mins = [0u8; 8];
                for group in 0..4 {
                    let q = &qs[group * 32..group * 32 + 32];
                    let (sc_lo, m_lo) = scale_min_k4(2 * group, scales);
                    let (sc_hi, m_hi) = scale_min_k4(2 * group + 1, scales);
                    mins[2 * group] = m_lo;
                    mins[2 * group + 1] = m_hi;
                    let lo = &mut out[group * 64..group * 64 + 32];
                    for (l, o) in lo.iter_mut().enumerate() {
                        let high = qh.map_or(0, |h| ((h[l] >> (2 * group)) & 1) << 4);
                        *o = i16::from((q[l] & 0x0f) | high) * i16::from(sc_lo);
                    }
                    let hi = &mut out[group * 64 + 32..group * 64 + 64];
                    for (l, o) in hi.iter_mut().enumerate() {
                        let high = qh.map_or(0, |h| ((h[l] >> (2 * group + 1)) & 1) << 4);
                        *o = i16::from((q[l] >> 4) | high) * i16::from(sc_hi);
                    }
                }
                UnitScale {
                    scale: half_at(unit, 0),
                    min: MinTerm::Sub(half_at(unit, 2), mins),
                }
            }
            QuantFormat::Q6K => {
                let ql = &unit[0..128];
                let qh = &unit[128..192];
                let sc = &unit[192..208];
                for half in 0..2 {
                    let ql = &ql[64 * half..];
                    let qh = &qh[32 * half..];
                    let sc = &sc[8 * half..];
                    let out = &mut out[128 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = i16::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
                        let q2 = i16::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                        let q3 = i16::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                        let q4 = i16::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                        out[l] = q1 * i16::from(sc[is] as i8);
                        out[l + 32] = q2 * i16::from(sc[is + 2] as i8);
                        out[l + 64] = q3 * i16::from(sc[is + 4] as i8);
                        out[l + 96] = q4 * i16::from(sc[is + 6] as i8);
                    }
                }
                UnitScale {
                    scale: half_at(unit, 208),
                    min: MinTerm::None,
                }
            }
        }
    }

    /// Decodes one unit to f32 weights (the reference the integer path is checked against,
    /// and the weights of the exact f32-activation path).
    pub fn dequantize_unit(self, unit: &[u8], out: &mut [f32]) {
        let mut ints = [0i16; SUPER];
        let ints = &mut ints[..self.unit_len()];
        let s = self.decode_unit(unit, ints);
        match s.min {
            MinTerm::None => {
                for (o, &q) in out.iter_mut().zip(ints.iter()) {
                    *o = s.scale * f32::from(q);
                }
            }
            MinTerm::Block(m) => {
                for (o, &q) in out.iter_mut().zip(ints.iter()) {
                    *o = s.scale * f32::from(q) + m;
                }
            }
            MinTerm::Sub(dmin, mins) => {
                for (sub, (o, q)) in out
                    .chunks_exact_mut(BLOCK)
                    .zip(ints.chunks_exact(BLOCK))
                    .enumerate()
                {
                    let m = dmin * f32::from(mins[sub]);
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = s.scale * f32::from(q) - m;
                    }
                }
            }
        }
    }
}

/// The f16 at byte `at` of a block, as f32.
#[inline]
pub fn half_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// The eight 6-bit sub-block scales and minimums of a Q4_K/Q5_K super-block.
#[inline]
pub fn k_scales(unit: &[u8]) -> ([u8; 8], [u8; 8]) {
    let packed = &unit[4..16];
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..8 {
        (scales[j], mins[j]) = scale_min_k4(j, packed);
    }
    (scales, mins)
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K super-block (ggml's
/// `get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
