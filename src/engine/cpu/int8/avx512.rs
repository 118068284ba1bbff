//! The int8 kernels on AVX-512 with VNNI: `vpdpbusd` multiplies the sixteen rows of a
//! panel, four values each, by four activation values broadcast to every lane, and adds
//! into one 32-bit integer per row. A tile is `MR` activation rows × `PG` panels: each
//! weight vector is unpacked once for the `MR` rows, each broadcast serves the `PG` panels.
//!
//! The float operations are exactly the definition's (`super::portable`).

use std::arch::x86_64::*;

use super::gemm::{Lanes, Tile};
use super::layout::{Layout, MASKS, NIBBLES, PANEL};
use crate::engine::cpu::formats::QuantFormat;

/// Four activation integers broadcast to every 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn broadcast(p: *const i8) -> __m512i {
    // SAFETY: the caller keeps p..p+4 inside the activation row.
    unsafe { _mm512_set1_epi32((p as *const i32).read_unaligned()) }
}

/// The unsigned low and high nibbles of one 64-byte load of a span.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn nibbles(at: *const u8, low4: __m512i) -> (__m512i, __m512i) {
    // SAFETY: the caller keeps the 64 bytes inside the panel.
    let v = unsafe { _mm512_loadu_si512(at as *const __m512i) };
    (
        _mm512_and_si512(v, low4),
        _mm512_and_si512(_mm512_srli_epi16::<4>(v), low4),
    )
}

/// `v + bit` in the bytes whose bit is set in the 64-bit mask at `at`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn add_bit(v: __m512i, at: *const u8, bit: __m512i) -> __m512i {
    // SAFETY: the caller keeps the 8 bytes inside the panel.
    let k = unsafe { (at as *const u64).read_unaligned() };
    _mm512_mask_add_epi8(v, k, v, bit)
}

/// Span `s`'s unsigned weights for load `l` (values 4l..4l+4 and 16+4l..16+4l+4 of every
/// row), for 4-, 5- and 6-bit formats.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn unpack(lay: &Layout, span: *const u8, l: usize, c: &Consts) -> (__m512i, __m512i) {
    // SAFETY: the span holds its nibbles and masks (layout).
    unsafe {
        let (mut lo, mut hi) = nibbles(span.add(64 * l), c.low4);
        if lay.bits() >= 5 {
            let masks = span.add(NIBBLES + 16 * l);
            lo = add_bit(lo, masks, c.bit4);
            hi = add_bit(hi, masks.add(8), c.bit4);
        }
        if lay.bits() == 6 {
            let masks = span.add(NIBBLES + MASKS + 16 * l);
            lo = add_bit(lo, masks, c.bit5);
            hi = add_bit(hi, masks.add(8), c.bit5);
        }
        (lo, hi)
    }
}

struct Consts {
    low4: __m512i,
    bit4: __m512i,
    bit5: __m512i,
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
fn consts() -> Consts {
    Consts {
        low4: _mm512_set1_epi8(0x0f),
        bit4: _mm512_set1_epi8(0x10),
        bit5: _mm512_set1_epi8(0x20),
    }
}

/// Sixteen f16 values at `at` as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn halves(at: *const u8) -> __m512 {
    // SAFETY: the caller keeps the 32 bytes inside the record.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i)) }
}

/// Sixteen bytes at `at`, widened to 32-bit lanes (signed or not).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn widen<const SIGNED: bool>(at: *const u8) -> __m512i {
    // SAFETY: the caller keeps the 16 bytes inside the record.
    unsafe {
        let v = _mm_loadu_si128(at as *const __m128i);
        if SIGNED {
            _mm512_cvtepi8_epi32(v)
        } else {
            _mm512_cvtepu8_epi32(v)
        }
    }
}

/// The format a kernel is compiled for.
#[inline(always)]
const fn format_of(f: u8) -> QuantFormat {
    match f {
        0 => QuantFormat::Q4_0,
        1 => QuantFormat::Q4_1,
        2 => QuantFormat::Q5_0,
        3 => QuantFormat::Q5_1,
        4 => QuantFormat::Q8_0,
        5 => QuantFormat::Q4K,
        6 => QuantFormat::Q5K,
        _ => QuantFormat::Q6K,
    }
}

/// `out[r][p]`: activation row `j0 + r` against panel p of the tile.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI and F16C; the tile's `PG` panels and `MR` rows exist.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn tile<const F: u8, const MR: usize, const PG: usize>(
    t: &Tile<'_>,
    out: &mut [[Lanes; PG]; MR],
) {
    let lay = const { Layout::of(format_of(F)) };
    // SAFETY: forwarded.
    let acc = unsafe {
        if lay.block == 32 {
            classic::<F, MR, PG>(t)
        } else if lay.format == QuantFormat::Q6K {
            q6k::<MR, PG>(t)
        } else {
            k_min::<F, MR, PG>(t)
        }
    };
    for r in 0..MR {
        for p in 0..PG {
            // SAFETY: out[r][p] holds sixteen floats.
            unsafe { _mm512_storeu_ps(out[r][p].as_mut_ptr(), acc[r][p]) };
        }
    }
}

/// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn classic<const F: u8, const MR: usize, const PG: usize>(
    t: &Tile<'_>,
) -> [[__m512; PG]; MR] {
    let lay = const { Layout::of(format_of(F)) };
    let c = consts();
    let flip = _mm512_set1_epi8(-128);
    let q8 = lay.format == QuantFormat::Q8_0;
    // Q8_0 is read as unsigned `w + 128`, corrected by 128·Σx̂ like a zero point.
    let zero = if q8 { 128 } else { lay.zero };
    let x = t.x;
    let mut acc = [[_mm512_setzero_ps(); PG]; MR];
    let xq: [*const i8; MR] = std::array::from_fn(|r| x.row(t.j0 + r).as_ptr());
    let dx: [&[f32]; MR] = std::array::from_fn(|r| x.row_d(t.j0 + r));
    let sums: [&[i32]; MR] = std::array::from_fn(|r| x.row_sum32(t.j0 + r));
    for b in 0..t.blocks {
        // SAFETY: record b of each panel, and values 32b..32b+32 of each row, exist.
        unsafe {
            let rec: [*const u8; PG] =
                std::array::from_fn(|p| t.panels.add(p * t.panel_bytes + b * lay.record));
            let mut ints = [[_mm512_setzero_si512(); PG]; MR];
            if q8 {
                for g in 0..8 {
                    let mut w = [_mm512_setzero_si512(); PG];
                    for p in 0..PG {
                        let v =
                            _mm512_loadu_si512(rec[p].add(lay.weights + 64 * g) as *const __m512i);
                        w[p] = _mm512_xor_si512(v, flip);
                    }
                    for r in 0..MR {
                        let xv = broadcast(xq[r].add(32 * b + 4 * g));
                        for p in 0..PG {
                            ints[r][p] = _mm512_dpbusd_epi32(ints[r][p], w[p], xv);
                        }
                    }
                }
            } else {
                for l in 0..4 {
                    let mut lo = [_mm512_setzero_si512(); PG];
                    let mut hi = [_mm512_setzero_si512(); PG];
                    for p in 0..PG {
                        (lo[p], hi[p]) = unpack(&lay, rec[p].add(lay.weights), l, &c);
                    }
                    for r in 0..MR {
                        let xl = broadcast(xq[r].add(32 * b + 4 * l));
                        let xh = broadcast(xq[r].add(32 * b + 16 + 4 * l));
                        for p in 0..PG {
                            ints[r][p] = _mm512_dpbusd_epi32(ints[r][p], lo[p], xl);
                            ints[r][p] = _mm512_dpbusd_epi32(ints[r][p], hi[p], xh);
                        }
                    }
                }
            }
            for p in 0..PG {
                let dw = halves(rec[p].add(lay.scales));
                for r in 0..MR {
                    let mut i = ints[r][p];
                    if zero != 0 {
                        i = _mm512_sub_epi32(i, _mm512_set1_epi32(zero * sums[r][b]));
                    }
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(dx[r][b]));
                    acc[r][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), scale, acc[r][p]);
                    if let Some(at) = lay.mins {
                        let m = halves(rec[p].add(at));
                        let ds = _mm512_set1_ps(x.row_dsum(t.j0 + r)[b]);
                        acc[r][p] = _mm512_fmadd_ps(m, ds, acc[r][p]);
                    }
                }
            }
        }
    }
    acc
}

/// Q4_K and Q5_K.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn k_min<const F: u8, const MR: usize, const PG: usize>(t: &Tile<'_>) -> [[__m512; PG]; MR] {
    let lay = const { Layout::of(format_of(F)) };
    let c = consts();
    let x = t.x;
    let (sc_at, mn_at, dmin_at) = (
        lay.sub_scales.unwrap_or(0),
        lay.sub_mins.unwrap_or(0),
        lay.mins.unwrap_or(0),
    );
    let mut acc = [[_mm512_setzero_ps(); PG]; MR];
    let xq: [*const i8; MR] = std::array::from_fn(|r| x.row(t.j0 + r).as_ptr());
    let dx: [&[f32]; MR] = std::array::from_fn(|r| x.row_d(t.j0 + r));
    let sums: [&[i32]; MR] = std::array::from_fn(|r| x.row_sum32(t.j0 + r));
    for b in 0..t.blocks {
        // SAFETY: record b of each panel, and values 256b..256b+256 of each row, exist.
        unsafe {
            let rec: [*const u8; PG] =
                std::array::from_fn(|p| t.panels.add(p * t.panel_bytes + b * lay.record));
            let mut scaled = [[_mm512_setzero_si512(); PG]; MR];
            for s in 0..8 {
                let mut ints = [[_mm512_setzero_si512(); PG]; MR];
                for l in 0..4 {
                    let mut lo = [_mm512_setzero_si512(); PG];
                    let mut hi = [_mm512_setzero_si512(); PG];
                    for p in 0..PG {
                        let span = rec[p].add(lay.weights + s * lay.weights_stride);
                        (lo[p], hi[p]) = unpack(&lay, span, l, &c);
                    }
                    for r in 0..MR {
                        let at = 256 * b + 32 * s + 4 * l;
                        let (xl, xh) = (broadcast(xq[r].add(at)), broadcast(xq[r].add(at + 16)));
                        for p in 0..PG {
                            ints[r][p] = _mm512_dpbusd_epi32(ints[r][p], lo[p], xl);
                            ints[r][p] = _mm512_dpbusd_epi32(ints[r][p], hi[p], xh);
                        }
                    }
                }
                for p in 0..PG {
                    let sc = widen::<false>(rec[p].add(sc_at + s * PANEL));
                    for r in 0..MR {
                        scaled[r][p] =
                            _mm512_add_epi32(scaled[r][p], _mm512_mullo_epi32(ints[r][p], sc));
                    }
                }
            }
            let mut mins = [[_mm512_setzero_si512(); PG]; MR];
            for s in 0..8 {
                for p in 0..PG {
                    let m = widen::<false>(rec[p].add(mn_at + s * PANEL));
                    for r in 0..MR {
                        let sum = _mm512_set1_epi32(sums[r][8 * b + s]);
                        mins[r][p] = _mm512_add_epi32(mins[r][p], _mm512_mullo_epi32(m, sum));
                    }
                }
            }
            for p in 0..PG {
                let d = halves(rec[p].add(lay.scales));
                let dmin = halves(rec[p].add(dmin_at));
                for r in 0..MR {
                    let dxv = _mm512_set1_ps(dx[r][b]);
                    acc[r][p] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(scaled[r][p]),
                        _mm512_mul_ps(d, dxv),
                        acc[r][p],
                    );
                    acc[r][p] = _mm512_fnmadd_ps(
                        _mm512_cvtepi32_ps(mins[r][p]),
                        _mm512_mul_ps(dmin, dxv),
                        acc[r][p],
                    );
                }
            }
        }
    }
    acc
}

/// Q6_K.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
unsafe fn q6k<const MR: usize, const PG: usize>(t: &Tile<'_>) -> [[__m512; PG]; MR] {
    let lay = const { Layout::of(QuantFormat::Q6K) };
    let c = consts();
    let x = t.x;
    let sc_at = lay.sub_scales.unwrap_or(0);
    let mut acc = [[_mm512_setzero_ps(); PG]; MR];
    let xq: [*const i8; MR] = std::array::from_fn(|r| x.row(t.j0 + r).as_ptr());
    let dx: [&[f32]; MR] = std::array::from_fn(|r| x.row_d(t.j0 + r));
    let sums: [&[i32]; MR] = std::array::from_fn(|r| x.row_sum16(t.j0 + r));
    for b in 0..t.blocks {
        // SAFETY: record b of each panel, and values 256b..256b+256 of each row, exist.
        unsafe {
            let rec: [*const u8; PG] =
                std::array::from_fn(|p| t.panels.add(p * t.panel_bytes + b * lay.record));
            let mut scaled = [[_mm512_setzero_si512(); PG]; MR];
            for s in 0..8 {
                // The low halves of the loads are 16-value sub-block 2s, the high halves 2s+1.
                let mut low = [[_mm512_setzero_si512(); PG]; MR];
                let mut high = [[_mm512_setzero_si512(); PG]; MR];
                for l in 0..4 {
                    let mut lo = [_mm512_setzero_si512(); PG];
                    let mut hi = [_mm512_setzero_si512(); PG];
                    for p in 0..PG {
                        let span = rec[p].add(lay.weights + s * lay.weights_stride);
                        (lo[p], hi[p]) = unpack(&lay, span, l, &c);
                    }
                    for r in 0..MR {
                        let at = 256 * b + 32 * s + 4 * l;
                        let (xl, xh) = (broadcast(xq[r].add(at)), broadcast(xq[r].add(at + 16)));
                        for p in 0..PG {
                            low[r][p] = _mm512_dpbusd_epi32(low[r][p], lo[p], xl);
                            high[r][p] = _mm512_dpbusd_epi32(high[r][p], hi[p], xh);
                        }
                    }
                }
                for p in 0..PG {
                    let sc_lo = widen::<true>(rec[p].add(sc_at + 2 * s * PANEL));
                    let sc_hi = widen::<true>(rec[p].add(sc_at + (2 * s + 1) * PANEL));
                    for r in 0..MR {
                        let z_lo = _mm512_set1_epi32(32 * sums[r][16 * b + 2 * s]);
                        let z_hi = _mm512_set1_epi32(32 * sums[r][16 * b + 2 * s + 1]);
                        let lo = _mm512_mullo_epi32(_mm512_sub_epi32(low[r][p], z_lo), sc_lo);
                        let hi = _mm512_mullo_epi32(_mm512_sub_epi32(high[r][p], z_hi), sc_hi);
                        scaled[r][p] = _mm512_add_epi32(scaled[r][p], _mm512_add_epi32(lo, hi));
                    }
                }
            }
            for p in 0..PG {
                let d = halves(rec[p].add(lay.scales));
                for r in 0..MR {
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(dx[r][b]));
                    acc[r][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(scaled[r][p]), scale, acc[r][p]);
                }
            }
        }
    }
    acc
}
