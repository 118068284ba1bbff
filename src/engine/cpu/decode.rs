//! Decoding a quantized weight row into 16-bit integers and unit scales, per ISA.
//!
//! The kernels decode each weight row once per block of activation rows (see `matrix`), so
//! decoding is on the hot path of every matmul — for a single decoded token it is about
//! half the work. The SIMD decoders write exactly what [`QuantFormat::decode_unit`] writes
//! (a test compares them), a whole row per call so that nothing is called per unit.

use super::formats::{MinTerm, QuantFormat};
use super::isa::Isa;

/// How a format's minimum enters the dot product (see [`MinTerm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinKind {
    #[default]
    None,
    /// `+ m · Σ x` per unit.
    Block,
    /// `− dmin · Σₛ mₛ · Σ_{s} x` per unit.
    Sub,
}

impl MinKind {
    pub fn of(format: QuantFormat) -> Self {
        match format {
            QuantFormat::Q4_1 | QuantFormat::Q5_1 => MinKind::Block,
            QuantFormat::Q4K | QuantFormat::Q5K => MinKind::Sub,
            _ => MinKind::None,
        }
    }
}

/// One weight row, decoded: integers with sub-scales folded in, and per unit its float
/// scale and minimum (structure of arrays, as the dot kernels read them).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DecodedRow {
    pub w: Vec<i16>,
    pub scales: Vec<f32>,
    /// Block: `m`; Sub: `dmin`. Empty for formats without a minimum.
    pub mins: Vec<f32>,
    /// Sub: the 6-bit sub-block minimums, sub-block-major (`[s · units + u]`), so that the
    /// kernels can take sixteen units at a time.
    pub sub_mins: Vec<i32>,
    pub kind: MinKind,
    pub unit_len: usize,
}

impl DecodedRow {
    /// Sizes the scale buffers for `units` units of `format` (not the weights).
    pub fn prepare(&mut self, format: QuantFormat, units: usize) {
        self.kind = MinKind::of(format);
        self.unit_len = format.unit_len();
        self.scales.resize(units, 0.0);
        self.mins
            .resize(if self.kind == MinKind::None { 0 } else { units }, 0.0);
        self.sub_mins.resize(
            if self.kind == MinKind::Sub {
                8 * units
            } else {
                0
            },
            0,
        );
    }
}

/// Decodes a whole row into `out`.
pub fn decode_row(isa: Isa, format: QuantFormat, row: &[u8], out: &mut DecodedRow) {
    let units = row.len() / format.unit_bytes();
    out.prepare(format, units);
    out.w.resize(units * format.unit_len(), 0);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            // SAFETY: chosen only on CPUs with AVX-512 F/BW/VL and F16C; `out` was sized
            // for the row's units just above.
            unsafe { avx512::decode_row(format, row, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: chosen only on CPUs with AVX2 and F16C; `out` is sized as above.
            unsafe { avx2::decode_row(format, row, out) }
        }
        _ => portable_decode_row(format, row, out),
    }
}

fn portable_decode_row(format: QuantFormat, row: &[u8], out: &mut DecodedRow) {
    let (unit_bytes, unit_len) = (format.unit_bytes(), format.unit_len());
    for (u, unit) in row.chunks_exact(unit_bytes).enumerate() {
        let s = format.decode_unit(unit, &mut out.w[u * unit_len..(u + 1) * unit_len]);
        store_scale(out, u, s.scale, s.min);
    }
}

#[inline(always)]
fn store_scale(out: &mut DecodedRow, u: usize, scale: f32, min: MinTerm) {
    out.scales[u] = scale;
    match min {
        MinTerm::None => {}
        MinTerm::Block(m) => out.mins[u] = m,
        MinTerm::Sub(dmin, mins) => {
            out.mins[u] = dmin;
            store_sub_mins(out, u, mins);
        }
    }
}

/// Stores unit `u`'s sub-block minimums in their sub-block-major places.
#[inline(always)]
fn store_sub_mins(out: &mut DecodedRow, u: usize, mins: [u8; 8]) {
    let units = out.scales.len();
    for (s, &m) in mins.iter().enumerate() {
        out.sub_mins[s * units + u] = i32::from(m);
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    //! Decoders that leave a unit in registers: [`block32`] for the 32-value formats,
    //! [`unit256`] for the K-quants. `decode_row` stores them; the single-row kernel of
    //! `int_dot` uses them directly.
    use std::arch::x86_64::*;

    use super::super::formats::{QuantFormat, k_scales};
    use super::DecodedRow;

    /// Format codes for const generics (the decoders are compiled once per format).
    pub const Q4_0: u8 = 0;
    pub const Q4_1: u8 = 1;
    pub const Q5_0: u8 = 2;
    pub const Q5_1: u8 = 3;
    pub const Q8_0: u8 = 4;
    pub const Q4K: u8 = 5;
    pub const Q5K: u8 = 6;
    pub const Q6K: u8 = 7;

    pub fn code(format: QuantFormat) -> u8 {
        match format {
            QuantFormat::Q4_0 => Q4_0,
            QuantFormat::Q4_1 => Q4_1,
            QuantFormat::Q5_0 => Q5_0,
            QuantFormat::Q5_1 => Q5_1,
            QuantFormat::Q8_0 => Q8_0,
            QuantFormat::Q4K => Q4K,
            QuantFormat::Q5K => Q5K,
            QuantFormat::Q6K => Q6K,
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub unsafe fn half(p: *const u8) -> f32 {
        // SAFETY: the caller points at two readable bytes.
        let bits = unsafe { (p as *const u16).read_unaligned() };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le(
            bits,
        )))))
    }

    /// 32 bytes widened to 32 u16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn bytes32(p: *const u8) -> __m512i {
        unsafe { _mm512_cvtepu8_epi16(_mm256_loadu_si256(p as *const __m256i)) }
    }

    /// Two 16-lane halves as one 32-lane vector.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn join(lo: __m256i, hi: __m256i) -> __m512i {
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }

    /// One block of a 32-value format (`F` ≤ Q8_0) as 32 i16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub unsafe fn block32<const F: u8>(p: *const u8) -> __m512i {
        // SAFETY: the caller points at one whole block of format F.
        unsafe {
            if F == Q8_0 {
                return _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(2) as *const __m256i));
            }
            let qs_at = [2, 4, 6, 8][F as usize];
            let b = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(qs_at) as *const __m128i));
            let lo = _mm256_and_si256(b, _mm256_set1_epi16(0x0f));
            let hi = _mm256_srli_epi16(b, 4);
            let mut v = join(lo, hi);
            if F == Q5_0 || F == Q5_1 {
                let qh_at = if F == Q5_0 { 2 } else { 4 };
                let qh = u32::from_le((p.add(qh_at) as *const u32).read_unaligned());
                v = _mm512_or_si512(v, _mm512_maskz_mov_epi16(qh, _mm512_set1_epi16(16)));
            }
            match F {
                Q4_0 => _mm512_sub_epi16(v, _mm512_set1_epi16(8)),
                Q5_0 => _mm512_sub_epi16(v, _mm512_set1_epi16(16)),
                _ => v,
            }
        }
    }

    /// One super-block of a K-quant (`F` ≥ Q4K) as eight vectors of 32 i16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub unsafe fn unit256<const F: u8>(unit: &[u8]) -> [__m512i; 8] {
        let nibble = _mm512_set1_epi16(0x0f);
        let p = unit.as_ptr();
        let mut out = [_mm512_setzero_si512(); 8];
        // SAFETY: `unit` is one whole super-block of format F.
        unsafe {
            if F == Q6K {
                let three = _mm512_set1_epi16(3);
                let thirty_two = _mm512_set1_epi16(32);
                for h in 0..2 {
                    let ql_a = bytes32(p.add(64 * h));
                    let ql_b = bytes32(p.add(64 * h + 32));
                    let qh = bytes32(p.add(128 + 32 * h));
                    let sc = p.add(192 + 8 * h) as *const i8;
                    let high = |shift: i32| {
                        _mm512_slli_epi16(
                            _mm512_and_si512(_mm512_srl_epi16(qh, _mm_cvtsi32_si128(shift)), three),
                            4,
                        )
                    };
                    let q = [
                        _mm512_or_si512(_mm512_and_si512(ql_a, nibble), high(0)),
                        _mm512_or_si512(_mm512_and_si512(ql_b, nibble), high(2)),
                        _mm512_or_si512(_mm512_srli_epi16(ql_a, 4), high(4)),
                        _mm512_or_si512(_mm512_srli_epi16(ql_b, 4), high(6)),
                    ];
                    for (k, q) in q.into_iter().enumerate() {
                        let scale = join(
                            _mm256_set1_epi16(i16::from(*sc.add(2 * k))),
                            _mm256_set1_epi16(i16::from(*sc.add(2 * k + 1))),
                        );
                        out[4 * h + k] = _mm512_mullo_epi16(_mm512_sub_epi16(q, thirty_two), scale);
                    }
                }
                return out;
            }
            let q5 = F == Q5K;
            let (scales, _) = k_scales(unit);
            let qs_at = if q5 { 48 } else { 16 };
            let qh = if q5 {
                bytes32(p.add(16))
            } else {
                _mm512_setzero_si512()
            };
            let one = _mm512_set1_epi16(1);
            for g in 0..4 {
                let b = bytes32(p.add(qs_at + 32 * g));
                let mut lo = _mm512_and_si512(b, nibble);
                let mut hi = _mm512_srli_epi16(b, 4);
                if q5 {
                    let bit_lo = _mm512_and_si512(
                        _mm512_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32)),
                        one,
                    );
                    let bit_hi = _mm512_and_si512(
                        _mm512_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32 + 1)),
                        one,
                    );
                    lo = _mm512_or_si512(lo, _mm512_slli_epi16(bit_lo, 4));
                    hi = _mm512_or_si512(hi, _mm512_slli_epi16(bit_hi, 4));
                }
                out[2 * g] = _mm512_mullo_epi16(lo, _mm512_set1_epi16(i16::from(scales[2 * g])));
                out[2 * g + 1] =
                    _mm512_mullo_epi16(hi, _mm512_set1_epi16(i16::from(scales[2 * g + 1])));
            }
        }
        out
    }

    /// Unit `u`'s scale, minimum and sub-block minimums into `out`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub unsafe fn store_scales<const F: u8>(unit: &[u8], u: usize, out: &mut DecodedRow) {
        let p = unit.as_ptr();
        // SAFETY: `unit` is one whole unit of format F; `out` is sized for the row.
        unsafe {
            match F {
                Q6K => *out.scales.get_unchecked_mut(u) = half(p.add(208)),
                Q4K | Q5K => {
                    *out.scales.get_unchecked_mut(u) = half(p);
                    *out.mins.get_unchecked_mut(u) = half(p.add(2));
                    super::store_sub_mins(out, u, k_scales(unit).1);
                }
                Q4_1 | Q5_1 => {
                    *out.scales.get_unchecked_mut(u) = half(p);
                    *out.mins.get_unchecked_mut(u) = half(p.add(2));
                }
                _ => *out.scales.get_unchecked_mut(u) = half(p),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub unsafe fn decode_row(format: QuantFormat, row: &[u8], out: &mut DecodedRow) {
        // SAFETY: forwarded to a function with the same contract.
        unsafe {
            match code(format) {
                Q4_0 => decode::<Q4_0>(row, out),
                Q4_1 => decode::<Q4_1>(row, out),
                Q5_0 => decode::<Q5_0>(row, out),
                Q5_1 => decode::<Q5_1>(row, out),
                Q8_0 => decode::<Q8_0>(row, out),
                Q4K => decode::<Q4K>(row, out),
                Q5K => decode::<Q5K>(row, out),
                _ => decode::<Q6K>(row, out),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn decode<const F: u8>(row: &[u8], out: &mut DecodedRow) {
        let k_quant = F >= Q4K;
        let unit_bytes = [18, 20, 22, 24, 34, 144, 176, 210][F as usize];
        let units = row.len() / unit_bytes;
        // SAFETY (every pointer below): `row` holds `units` whole units and `out` was
        // sized for them by the caller.
        unsafe {
            let o = out.w.as_mut_ptr() as *mut __m512i;
            for u in 0..units {
                let unit = row.get_unchecked(u * unit_bytes..(u + 1) * unit_bytes);
                if k_quant {
                    for (k, v) in unit256::<F>(unit).into_iter().enumerate() {
                        _mm512_storeu_si512(o.add(8 * u + k), v);
                    }
                } else {
                    _mm512_storeu_si512(o.add(u), block32::<F>(unit.as_ptr()));
                }
                store_scales::<F>(unit, u, out);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::formats::{QuantFormat, k_scales};
    use super::DecodedRow;

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn half(p: *const u8) -> f32 {
        // SAFETY: the caller points at two readable bytes.
        let bits = unsafe { u16::from_le_bytes([*p, *p.add(1)]) };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// 16 bytes widened to 16 u16 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn bytes16(p: *const u8) -> __m256i {
        unsafe { _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i)) }
    }

    /// 16 bits of `bits` as 16 lanes of 0 or `value`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn expand_bits(bits: u16, value: i16) -> __m256i {
        let lanes = _mm256_setr_epi16(
            1,
            2,
            4,
            8,
            16,
            32,
            64,
            128,
            256,
            512,
            1024,
            2048,
            4096,
            8192,
            16384,
            i16::MIN,
        );
        let set = _mm256_cmpeq_epi16(
            _mm256_and_si256(_mm256_set1_epi16(bits as i16), lanes),
            lanes,
        );
        _mm256_and_si256(set, _mm256_set1_epi16(value))
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn decode_row(format: QuantFormat, row: &[u8], out: &mut DecodedRow) {
        let unit_bytes = format.unit_bytes();
        let units = row.len() / unit_bytes;
        let nibble = _mm256_set1_epi16(0x0f);
        // SAFETY (every pointer below): `row` holds `units` whole units and `out` was
        // sized for them by the caller.
        unsafe {
            let o = out.w.as_mut_ptr() as *mut __m256i;
            match format {
                QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q5_0 | QuantFormat::Q5_1 => {
                    let (qs_at, qh_at, offset) = match format {
                        QuantFormat::Q4_0 => (2, None, 8),
                        QuantFormat::Q4_1 => (4, None, 0),
                        QuantFormat::Q5_0 => (6, Some(2), 16),
                        _ => (8, Some(4), 0),
                    };
                    let offset = _mm256_set1_epi16(offset);
                    let with_min = matches!(format, QuantFormat::Q4_1 | QuantFormat::Q5_1);
                    for u in 0..units {
                        let p = row.as_ptr().add(u * unit_bytes);
                        let b = bytes16(p.add(qs_at));
                        let mut lo = _mm256_and_si256(b, nibble);
                        let mut hi = _mm256_srli_epi16(b, 4);
                        if let Some(qh_at) = qh_at {
                            let qh = u32::from_le((p.add(qh_at) as *const u32).read_unaligned());
                            lo = _mm256_or_si256(lo, expand_bits(qh as u16, 16));
                            hi = _mm256_or_si256(hi, expand_bits((qh >> 16) as u16, 16));
                        }
                        _mm256_storeu_si256(o.add(2 * u), _mm256_sub_epi16(lo, offset));
                        _mm256_storeu_si256(o.add(2 * u + 1), _mm256_sub_epi16(hi, offset));
                        *out.scales.get_unchecked_mut(u) = half(p);
                        if with_min {
                            *out.mins.get_unchecked_mut(u) = half(p.add(2));
                        }
                    }
                }
                QuantFormat::Q8_0 => {
                    for u in 0..units {
                        let p = row.as_ptr().add(u * unit_bytes);
                        let lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(2) as *const __m128i));
                        let hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(18) as *const __m128i));
                        _mm256_storeu_si256(o.add(2 * u), lo);
                        _mm256_storeu_si256(o.add(2 * u + 1), hi);
                        *out.scales.get_unchecked_mut(u) = half(p);
                    }
                }
                QuantFormat::Q4K | QuantFormat::Q5K => {
                    let q5 = format == QuantFormat::Q5K;
                    let qs_at = if q5 { 48 } else { 16 };
                    let one = _mm256_set1_epi16(1);
                    for u in 0..units {
                        let unit = &row[u * unit_bytes..(u + 1) * unit_bytes];
                        let p = unit.as_ptr();
                        let (scales, mins) = k_scales(unit);
                        for g in 0..4 {
                            for part in 0..2 {
                                let b = bytes16(p.add(qs_at + 32 * g + 16 * part));
                                let mut lo = _mm256_and_si256(b, nibble);
                                let mut hi = _mm256_srli_epi16(b, 4);
                                if q5 {
                                    let qh = bytes16(p.add(16 + 16 * part));
                                    let bit_lo = _mm256_and_si256(
                                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32)),
                                        one,
                                    );
                                    let bit_hi = _mm256_and_si256(
                                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32 + 1)),
                                        one,
                                    );
                                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(bit_lo, 4));
                                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(bit_hi, 4));
                                }
                                let lo = _mm256_mullo_epi16(
                                    lo,
                                    _mm256_set1_epi16(i16::from(scales[2 * g])),
                                );
                                let hi = _mm256_mullo_epi16(
                                    hi,
                                    _mm256_set1_epi16(i16::from(scales[2 * g + 1])),
                                );
                                _mm256_storeu_si256(o.add(16 * u + 4 * g + part), lo);
                                _mm256_storeu_si256(o.add(16 * u + 4 * g + 2 + part), hi);
                            }
                        }
                        *out.scales.get_unchecked_mut(u) = half(p);
                        *out.mins.get_unchecked_mut(u) = half(p.add(2));
                        super::store_sub_mins(out, u, mins);
                    }
                }
                QuantFormat::Q6K => {
                    let three = _mm256_set1_epi16(3);
                    let thirty_two = _mm256_set1_epi16(32);
                    for u in 0..units {
                        let p = row.as_ptr().add(u * unit_bytes);
                        for h in 0..2 {
                            let sc = p.add(192 + 8 * h) as *const i8;
                            for part in 0..2 {
                                // Elements 16·part .. 16·part + 16 of each 32-run share one scale.
                                let ql_a = bytes16(p.add(64 * h + 16 * part));
                                let ql_b = bytes16(p.add(64 * h + 32 + 16 * part));
                                let qh = bytes16(p.add(128 + 32 * h + 16 * part));
                                let high = |shift: i32| {
                                    _mm256_slli_epi16(
                                        _mm256_and_si256(
                                            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift)),
                                            three,
                                        ),
                                        4,
                                    )
                                };
                                let q = [
                                    _mm256_or_si256(_mm256_and_si256(ql_a, nibble), high(0)),
                                    _mm256_or_si256(_mm256_and_si256(ql_b, nibble), high(2)),
                                    _mm256_or_si256(_mm256_srli_epi16(ql_a, 4), high(4)),
                                    _mm256_or_si256(_mm256_srli_epi16(ql_b, 4), high(6)),
                                ];
                                for (k, q) in q.into_iter().enumerate() {
                                    let scale = _mm256_set1_epi16(i16::from(*sc.add(2 * k + part)));
                                    let v =
                                        _mm256_mullo_epi16(_mm256_sub_epi16(q, thirty_two), scale);
                                    _mm256_storeu_si256(o.add(16 * u + 8 * h + 2 * k + part), v);
                                }
                            }
                        }
                        *out.scales.get_unchecked_mut(u) = half(p.add(208));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_simd_decoder_writes_what_the_portable_one_writes() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut byte = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        };
        for format in [
            QuantFormat::Q4_0,
            QuantFormat::Q4_1,
            QuantFormat::Q5_0,
            QuantFormat::Q5_1,
            QuantFormat::Q8_0,
            QuantFormat::Q4K,
            QuantFormat::Q5K,
            QuantFormat::Q6K,
        ] {
            let units = 16;
            let mut row: Vec<u8> = (0..units * format.unit_bytes()).map(|_| byte()).collect();
            // Keep the f16 scales finite.
            for unit in row.chunks_exact_mut(format.unit_bytes()) {
                let at = if format == QuantFormat::Q6K { 208 } else { 0 };
                unit[at + 1] &= 0x3b;
                unit[3] &= 0x3b;
            }
            let mut expected = DecodedRow::default();
            decode_row(Isa::Portable, format, &row, &mut expected);
            for isa in Isa::available() {
                let mut ours = DecodedRow::default();
                decode_row(isa, format, &row, &mut ours);
                assert_eq!(ours, expected, "{format:?} on {isa:?}");
            }
        }
    }
}
