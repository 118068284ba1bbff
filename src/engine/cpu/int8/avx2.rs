//! The int8 kernels on AVX2: a panel's sixteen rows are two registers of eight lanes, and
//! `vpmaddubsw` + `vpmaddwd` stand in for `vpdpbusd` (the 16-bit pair sums cannot
//! saturate: unsigned weights are below 64, and Q8_0's signed bytes go through the sign
//! trick, |w|·±x̂ ≤ 128·127). Same tiles and the same float operations as the AVX-512 path
//! (`super::portable` is the definition); AVX2 has sixteen registers, so tiles are smaller.

use std::arch::x86_64::*;

use super::gemm::Tile;
use super::layout::{Layout, MASKS, NIBBLES, PANEL};
use crate::engine::cpu::formats::QuantFormat;

/// A panel's sixteen lanes as two halves.
type Pair = [__m256i; 2];

struct Consts {
    low4: __m256i,
    bit4: __m256i,
    bit5: __m256i,
    ones: __m256i,
    spread: __m256i,
    select: __m256i,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn consts() -> Consts {
    Consts {
        low4: _mm256_set1_epi8(0x0f),
        bit4: _mm256_set1_epi8(0x10),
        bit5: _mm256_set1_epi8(0x20),
        ones: _mm256_set1_epi16(1),
        spread: _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        ),
        select: _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64),
    }
}

/// `acc + Σ₄ u·x` per 32-bit lane (u unsigned below 64, x signed).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot4(acc: __m256i, u: __m256i, x: __m256i, c: &Consts) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), c.ones))
}

/// `acc + Σ₄ w·x` per lane for signed weights.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot4_signed(acc: __m256i, w: __m256i, x: __m256i, c: &Consts) -> __m256i {
    let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, c.ones))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn broadcast(p: *const i8) -> __m256i {
    // SAFETY: the caller keeps p..p+4 inside the activation row.
    unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
}

/// `bit` in the bytes whose bit is set in the 32 bits at `at`, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bit_bytes(at: *const u8, bit: __m256i, c: &Consts) -> __m256i {
    // SAFETY: the caller keeps the 4 bytes inside the panel.
    unsafe {
        let bits = (at as *const i32).read_unaligned();
        let v = _mm256_shuffle_epi8(_mm256_set1_epi32(bits), c.spread);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(v, c.select), c.select);
        _mm256_and_si256(set, bit)
    }
}

/// Span values for load `l`, half `h` (rows 8h..8h+8): (low, high) unsigned weights.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack(
    lay: &Layout,
    span: *const u8,
    l: usize,
    h: usize,
    c: &Consts,
) -> (__m256i, __m256i) {
    // SAFETY: the span holds its nibbles and masks (layout).
    unsafe {
        let v = _mm256_loadu_si256(span.add(64 * l + 32 * h) as *const __m256i);
        let mut lo = _mm256_and_si256(v, c.low4);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), c.low4);
        if lay.bits() >= 5 {
            let masks = span.add(NIBBLES + 16 * l + 4 * h);
            lo = _mm256_or_si256(lo, bit_bytes(masks, c.bit4, c));
            hi = _mm256_or_si256(hi, bit_bytes(masks.add(8), c.bit4, c));
        }
        if lay.bits() == 6 {
            let masks = span.add(NIBBLES + MASKS + 16 * l + 4 * h);
            lo = _mm256_or_si256(lo, bit_bytes(masks, c.bit5, c));
            hi = _mm256_or_si256(hi, bit_bytes(masks.add(8), c.bit5, c));
        }
        (lo, hi)
    }
}

/// Eight f16 values at `at` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves(at: *const u8) -> __m256 {
    // SAFETY: the caller keeps the 16 bytes inside the record.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i)) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen<const SIGNED: bool>(at: *const u8) -> __m256i {
    // SAFETY: the caller keeps the 8 bytes inside the record.
    unsafe {
        let v = _mm_loadl_epi64(at as *const __m128i);
        if SIGNED {
            _mm256_cvtepi8_epi32(v)
        } else {
            _mm256_cvtepu8_epi32(v)
        }
    }
}

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

const ZERO: Pair = [unsafe { std::mem::transmute::<[i32; 8], __m256i>([0; 8]) }; 2];

/// `out[r][p]`: activation row `j0 + r` against panel p of the tile.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the tile's `PG` panels and `MR` rows exist.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile<const F: u8, const MR: usize, const PG: usize>(
    t: &Tile<'_>,
    out: &mut [[[f32; PANEL]; PG]; MR],
) {
    let lay = const { Layout::of(format_of(F)) };
    let c = consts();
    let x = t.x;
    let mut acc = [[[_mm256_setzero_ps(); 2]; PG]; MR];
    let xq: [*const i8; MR] = std::array::from_fn(|r| x.row(t.j0 + r).as_ptr());
    for b in 0..t.blocks {
        // SAFETY: record b of each panel and the rows' values of block b exist.
        unsafe {
            let rec: [*const u8; PG] =
                std::array::from_fn(|p| t.panels.add(p * t.panel_bytes + b * lay.record));
            for h in 0..2 {
                if lay.block == 32 {
                    classic_block::<F, MR, PG>(t, &rec, &xq, b, h, &c, &mut acc);
                } else if lay.format == QuantFormat::Q6K {
                    q6k_block::<MR, PG>(t, &rec, &xq, b, h, &c, &mut acc);
                } else {
                    k_min_block::<F, MR, PG>(t, &rec, &xq, b, h, &c, &mut acc);
                }
            }
        }
    }
    for r in 0..MR {
        for p in 0..PG {
            for h in 0..2 {
                // SAFETY: out[r][p] holds sixteen floats.
                unsafe { _mm256_storeu_ps(out[r][p].as_mut_ptr().add(8 * h), acc[r][p][h]) };
            }
        }
    }
}

type Acc<const MR: usize, const PG: usize> = [[[__m256; 2]; PG]; MR];

/// One 32-value block of the classic formats, for half `h` of each panel.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn classic_block<const F: u8, const MR: usize, const PG: usize>(
    t: &Tile<'_>,
    rec: &[*const u8; PG],
    xq: &[*const i8; MR],
    b: usize,
    h: usize,
    c: &Consts,
    acc: &mut Acc<MR, PG>,
) {
    let lay = const { Layout::of(format_of(F)) };
    let x = t.x;
    // SAFETY: as for `tile`.
    unsafe {
        let mut ints = [[ZERO[0]; PG]; MR];
        if lay.format == QuantFormat::Q8_0 {
            for g in 0..8 {
                let w: [__m256i; PG] = std::array::from_fn(|p| {
                    _mm256_loadu_si256(rec[p].add(lay.weights + 64 * g + 32 * h) as *const __m256i)
                });
                for r in 0..MR {
                    let xv = broadcast(xq[r].add(32 * b + 4 * g));
                    for p in 0..PG {
                        ints[r][p] = dot4_signed(ints[r][p], w[p], xv, c);
                    }
                }
            }
        } else {
            for l in 0..4 {
                let mut lo = [ZERO[0]; PG];
                let mut hi = [ZERO[0]; PG];
                for p in 0..PG {
                    (lo[p], hi[p]) = unpack(&lay, rec[p].add(lay.weights), l, h, c);
                }
                for r in 0..MR {
                    let xl = broadcast(xq[r].add(32 * b + 4 * l));
                    let xh = broadcast(xq[r].add(32 * b + 16 + 4 * l));
                    for p in 0..PG {
                        ints[r][p] = dot4(dot4(ints[r][p], lo[p], xl, c), hi[p], xh, c);
                    }
                }
            }
        }
        for p in 0..PG {
            let dw = halves(rec[p].add(lay.scales + 16 * h));
            for r in 0..MR {
                let j = t.j0 + r;
                let mut i = ints[r][p];
                if lay.zero != 0 {
                    i = _mm256_sub_epi32(i, _mm256_set1_epi32(lay.zero * x.row_sum32(j)[b]));
                }
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x.row_d(j)[b]));
                let a = &mut acc[r][p][h];
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), scale, *a);
                if let Some(at) = lay.mins {
                    let m = halves(rec[p].add(at + 16 * h));
                    *a = _mm256_fmadd_ps(m, _mm256_set1_ps(x.row_dsum(j)[b]), *a);
                }
            }
        }
    }
}

/// One super-block of Q4_K/Q5_K, for half `h` of each panel.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn k_min_block<const F: u8, const MR: usize, const PG: usize>(
    t: &Tile<'_>,
    rec: &[*const u8; PG],
    xq: &[*const i8; MR],
    b: usize,
    h: usize,
    c: &Consts,
    acc: &mut Acc<MR, PG>,
) {
    let lay = const { Layout::of(format_of(F)) };
    let x = t.x;
    let (sc_at, mn_at, dmin_at) = (
        lay.sub_scales.unwrap_or(0),
        lay.sub_mins.unwrap_or(0),
        lay.mins.unwrap_or(0),
    );
    // SAFETY: as for `tile`.
    unsafe {
        let mut scaled = [[ZERO[0]; PG]; MR];
        let mut mins = [[ZERO[0]; PG]; MR];
        for s in 0..8 {
            let mut ints = [[ZERO[0]; PG]; MR];
            for l in 0..4 {
                let mut lo = [ZERO[0]; PG];
                let mut hi = [ZERO[0]; PG];
                for p in 0..PG {
                    let span = rec[p].add(lay.weights + s * lay.weights_stride);
                    (lo[p], hi[p]) = unpack(&lay, span, l, h, c);
                }
                for r in 0..MR {
                    let at = 256 * b + 32 * s + 4 * l;
                    let (xl, xh) = (broadcast(xq[r].add(at)), broadcast(xq[r].add(at + 16)));
                    for p in 0..PG {
                        ints[r][p] = dot4(dot4(ints[r][p], lo[p], xl, c), hi[p], xh, c);
                    }
                }
            }
            for p in 0..PG {
                let sc = widen::<false>(rec[p].add(sc_at + s * PANEL + 8 * h));
                let m = widen::<false>(rec[p].add(mn_at + s * PANEL + 8 * h));
                for r in 0..MR {
                    let sum = _mm256_set1_epi32(x.row_sum32(t.j0 + r)[8 * b + s]);
                    scaled[r][p] =
                        _mm256_add_epi32(scaled[r][p], _mm256_mullo_epi32(ints[r][p], sc));
                    mins[r][p] = _mm256_add_epi32(mins[r][p], _mm256_mullo_epi32(m, sum));
                }
            }
        }
        for p in 0..PG {
            let d = halves(rec[p].add(lay.scales + 16 * h));
            let dmin = halves(rec[p].add(dmin_at + 16 * h));
            for r in 0..MR {
                let dxv = _mm256_set1_ps(x.row_d(t.j0 + r)[b]);
                let a = &mut acc[r][p][h];
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(scaled[r][p]), _mm256_mul_ps(d, dxv), *a);
                *a = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins[r][p]), _mm256_mul_ps(dmin, dxv), *a);
            }
        }
    }
}

/// One super-block of Q6_K, for half `h` of each panel.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn q6k_block<const MR: usize, const PG: usize>(
    t: &Tile<'_>,
    rec: &[*const u8; PG],
    xq: &[*const i8; MR],
    b: usize,
    h: usize,
    c: &Consts,
    acc: &mut Acc<MR, PG>,
) {
    let lay = const { Layout::of(QuantFormat::Q6K) };
    let x = t.x;
    let sc_at = lay.sub_scales.unwrap_or(0);
    // SAFETY: as for `tile`.
    unsafe {
        let mut scaled = [[ZERO[0]; PG]; MR];
        for s in 0..8 {
            let mut low = [[ZERO[0]; PG]; MR];
            let mut high = [[ZERO[0]; PG]; MR];
            for l in 0..4 {
                let mut lo = [ZERO[0]; PG];
                let mut hi = [ZERO[0]; PG];
                for p in 0..PG {
                    let span = rec[p].add(lay.weights + s * lay.weights_stride);
                    (lo[p], hi[p]) = unpack(&lay, span, l, h, c);
                }
                for r in 0..MR {
                    let at = 256 * b + 32 * s + 4 * l;
                    let (xl, xh) = (broadcast(xq[r].add(at)), broadcast(xq[r].add(at + 16)));
                    for p in 0..PG {
                        low[r][p] = dot4(low[r][p], lo[p], xl, c);
                        high[r][p] = dot4(high[r][p], hi[p], xh, c);
                    }
                }
            }
            for p in 0..PG {
                let sc_lo = widen::<true>(rec[p].add(sc_at + 2 * s * PANEL + 8 * h));
                let sc_hi = widen::<true>(rec[p].add(sc_at + (2 * s + 1) * PANEL + 8 * h));
                for r in 0..MR {
                    let sums = x.row_sum16(t.j0 + r);
                    let z_lo = _mm256_set1_epi32(32 * sums[16 * b + 2 * s]);
                    let z_hi = _mm256_set1_epi32(32 * sums[16 * b + 2 * s + 1]);
                    let lo = _mm256_mullo_epi32(_mm256_sub_epi32(low[r][p], z_lo), sc_lo);
                    let hi = _mm256_mullo_epi32(_mm256_sub_epi32(high[r][p], z_hi), sc_hi);
                    scaled[r][p] = _mm256_add_epi32(scaled[r][p], _mm256_add_epi32(lo, hi));
                }
            }
        }
        for p in 0..PG {
            let d = halves(rec[p].add(lay.scales + 16 * h));
            for r in 0..MR {
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.row_d(t.j0 + r)[b]));
                let a = &mut acc[r][p][h];
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(scaled[r][p]), scale, *a);
            }
        }
    }
}
