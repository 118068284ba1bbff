//! Dot products of quantized weight rows with 16-bit activation rows.
//!
//! Every path computes exactly the same thing, defined on vectors of sixteen *lanes*
//! (one AVX-512 register; AVX2 uses two registers, the portable path arrays):
//!
//! 1. `A₀`, `A₁`: unit u (in order) adds `f32(Iᵤ[l]) · (scaleᵤ · dxᵤ)` to lane l of
//!    `A_{u mod 2}` (fused multiply-add), where `Iᵤ[l]` is the exact integer sum of the
//!    products of value pairs (2l, 2l+1) of every 32-value chunk of the unit. Two
//!    accumulators let consecutive units overlap instead of waiting on one another.
//! 2. `M`: for formats with a minimum, unit u (in order) adds its minimum term to lane
//!    u mod 16.
//! 3. The result is the fixed tree sum (l + l+8, then +4, +2, +1) of `(A₀ + A₁) + M`.
//!
//! The integer sums are exact and every float operation is the same on every path, so a
//! row's result is bit-identical whatever its batch, however its prompt was chunked, and
//! on every ISA — a ring of an AVX2 and an AVX-512 machine re-running a request after a
//! node is lost gets exactly the tokens it had.

use super::activations::QuantizedRows;
use super::decode::{DecodedRow, MinKind, decode_row};
use super::formats::QuantFormat;
use super::isa::Isa;

/// Activation rows a tile takes at once.
pub const TILE: usize = 4;

const LANES: usize = 16;

/// `out[c] = w · x[j0 + c]` for `c < out.len()` (at most [`TILE`]), from a decoded row.
pub fn dot_rows(isa: Isa, w: &DecodedRow, x: &QuantizedRows, j0: usize, out: &mut [f32]) {
    let count = out.len();
    debug_assert!(count <= TILE && j0 + count <= x.rows && x.group == w.unit_len);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            // SAFETY: chosen only on CPUs with AVX-512 F/BW/VL/VNNI.
            unsafe { by_shape!(avx512::tile, w, x, j0, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: chosen only on CPUs with AVX2 and FMA.
            unsafe { by_shape!(avx2::tile, w, x, j0, out) }
        }
        _ => {
            for (c, o) in out.iter_mut().enumerate() {
                *o = portable_dot(w, x, j0 + c);
            }
        }
    }
}

/// Calls `$f::<C, MIN>` for the tile size and the row's kind of minimum.
macro_rules! by_shape {
    ($($f:ident)::+, $w:expr, $x:expr, $j0:expr, $out:expr) => {{
        let (w, x, j0, out) = ($w, $x, $j0, $out);
        macro_rules! kinds {
            ($c:literal) => {
                match w.kind {
                    MinKind::None => $($f)::+::<$c, 0>(w, x, j0, out),
                    MinKind::Block => $($f)::+::<$c, 1>(w, x, j0, out),
                    MinKind::Sub => $($f)::+::<$c, 2>(w, x, j0, out),
                }
            };
        }
        match out.len() {
            1 => kinds!(1),
            2 => kinds!(2),
            3 => kinds!(3),
            _ => kinds!(4),
        }
    }};
}
use by_shape;

/// For each raw weight row `r` of `rows` (`row_bytes` each, in `data`), its products with
/// activation rows `j0..j0 + count` (`count` ≤ [`TILE`]), handed to `out(r, c, value)`:
/// decoding and multiplying in one pass where the ISA has a fused kernel (what a few
/// tokens at a time — decoding — run).
#[allow(clippy::too_many_arguments)]
pub fn dot_raw_rows(
    isa: Isa,
    format: QuantFormat,
    data: &[u8],
    row_bytes: usize,
    rows: std::ops::Range<usize>,
    x: &QuantizedRows,
    j0: usize,
    count: usize,
    scratch: &mut DecodedRow,
    mut out: impl FnMut(usize, usize, f32),
) {
    debug_assert!((1..=TILE).contains(&count) && j0 + count <= x.rows);
    let mut values = [0f32; TILE];
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            scratch.prepare(format, row_bytes / format.unit_bytes());
            for r in rows {
                let row = &data[r * row_bytes..(r + 1) * row_bytes];
                let v = &mut values[..count];
                // SAFETY: chosen only on CPUs with AVX-512 F/BW/VL/VNNI and F16C;
                // `scratch` was sized for a row's units just above.
                unsafe {
                    match count {
                        1 => avx512::fused::<1>(format, row, x, j0, scratch, v),
                        2 => avx512::fused::<2>(format, row, x, j0, scratch, v),
                        3 => avx512::fused::<3>(format, row, x, j0, scratch, v),
                        _ => avx512::fused::<4>(format, row, x, j0, scratch, v),
                    }
                }
                for (c, &value) in v.iter().enumerate() {
                    out(r, c, value);
                }
            }
        }
        _ => {
            for r in rows {
                decode_row(
                    isa,
                    format,
                    &data[r * row_bytes..(r + 1) * row_bytes],
                    scratch,
                );
                dot_rows(isa, scratch, x, j0, &mut values[..count]);
                for (c, &value) in values[..count].iter().enumerate() {
                    out(r, c, value);
                }
            }
        }
    }
}

/// Unit u's minimum term's coefficient and value (step 2), the same on every path.
#[inline(always)]
fn min_term<const MIN: u8>(
    w: &DecodedRow,
    u: usize,
    dx: f32,
    sums: &[i32],
    by_sub: &[i32],
) -> (f32, f32) {
    let units = w.scales.len();
    match MIN {
        1 => (w.mins[u] * dx, sums[u] as f32),
        2 => {
            let mut t = 0i32;
            for s in 0..8 {
                t += w.sub_mins[s * units + u] * by_sub[s * units + u];
            }
            (-(w.mins[u] * dx), t as f32)
        }
        _ => (0.0, 0.0),
    }
}

/// Step 2 for one activation row, written plainly.
fn min_lanes(w: &DecodedRow, x: &QuantizedRows, j: usize) -> [f32; LANES] {
    let mut m = [0f32; LANES];
    let dx = x.row_scales(j);
    let sums = x.row_sums(j);
    let by_sub = if w.kind == MinKind::Sub {
        x.row_sums_by_sub(j)
    } else {
        &[]
    };
    for u in 0..w.scales.len() {
        let (coefficient, value) = match w.kind {
            MinKind::None => return m,
            MinKind::Block => min_term::<1>(w, u, dx[u], sums, by_sub),
            MinKind::Sub => min_term::<2>(w, u, dx[u], sums, by_sub),
        };
        let l = u % LANES;
        m[l] = coefficient.mul_add(value, m[l]);
    }
    m
}

/// Step 3.
#[inline(always)]
fn finish(a0: [f32; LANES], a1: [f32; LANES], m: [f32; LANES]) -> f32 {
    let mut lanes = [0f32; LANES];
    for l in 0..LANES {
        lanes[l] = (a0[l] + a1[l]) + m[l];
    }
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// The definition, written plainly (the reference for the SIMD paths, and the path on
/// CPUs without them).
pub fn portable_dot(w: &DecodedRow, x: &QuantizedRows, j: usize) -> f32 {
    let xs = x.row(j);
    let dx = x.row_scales(j);
    let n = w.unit_len;
    let mut a = [[0f32; LANES]; 2];
    for u in 0..w.scales.len() {
        let mut ints = [0i32; LANES];
        for chunk in (u * n..(u + 1) * n).step_by(32) {
            for (l, int) in ints.iter_mut().enumerate() {
                let i = chunk + 2 * l;
                *int += i32::from(w.w[i]) * i32::from(xs[i])
                    + i32::from(w.w[i + 1]) * i32::from(xs[i + 1]);
            }
        }
        let c = w.scales[u] * dx[u];
        let acc = &mut a[u % 2];
        for l in 0..LANES {
            acc[l] = (ints[l] as f32).mul_add(c, acc[l]);
        }
    }
    finish(a[0], a[1], min_lanes(w, x, j))
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::decode::avx512::{self as dec, Q4_0, Q4_1, Q4K, Q5_0, Q5_1, Q5K, Q6K, Q8_0};
    use super::{DecodedRow, LANES, QuantFormat, QuantizedRows};

    /// The mask of the first `n` (≤ 16) lanes.
    #[inline]
    fn first(n: usize) -> __mmask16 {
        if n >= LANES { 0xffff } else { (1u16 << n) - 1 }
    }

    /// `−v`, by flipping the sign bit (as the other paths negate).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn negate(v: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(v),
            _mm512_set1_epi32(i32::MIN),
        ))
    }

    /// Step 2 for units `base..base + n` of one activation row, into `m`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn min_block<const MIN: u8>(
        m: __m512,
        w: &DecodedRow,
        x: &QuantizedRows,
        j: usize,
        base: usize,
        n: usize,
    ) -> __m512 {
        let units = w.scales.len();
        let mask = first(n);
        // SAFETY: the mask keeps every load within the `units` (or 8 · units) values of
        // each array.
        unsafe {
            let coefficient = _mm512_mul_ps(
                _mm512_maskz_loadu_ps(mask, w.mins.as_ptr().add(base)),
                _mm512_maskz_loadu_ps(mask, x.row_scales(j).as_ptr().add(base)),
            );
            if MIN == 1 {
                let sums = _mm512_maskz_loadu_epi32(mask, x.row_sums(j).as_ptr().add(base));
                _mm512_mask3_fmadd_ps(coefficient, _mm512_cvtepi32_ps(sums), m, mask)
            } else {
                let by_sub = x.row_sums_by_sub(j).as_ptr();
                let sub_mins = w.sub_mins.as_ptr();
                let mut t = _mm512_setzero_si512();
                for s in 0..8 {
                    let at = s * units + base;
                    t = _mm512_add_epi32(
                        t,
                        _mm512_mullo_epi32(
                            _mm512_maskz_loadu_epi32(mask, sub_mins.add(at)),
                            _mm512_maskz_loadu_epi32(mask, by_sub.add(at)),
                        ),
                    );
                }
                _mm512_mask3_fmadd_ps(negate(coefficient), _mm512_cvtepi32_ps(t), m, mask)
            }
        }
    }

    /// Step 2 for a whole row.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn min_lanes<const MIN: u8>(w: &DecodedRow, x: &QuantizedRows, j: usize) -> __m512 {
        let mut m = _mm512_setzero_ps();
        if MIN != 0 {
            let units = w.scales.len();
            let mut base = 0;
            while base < units {
                // SAFETY: forwarded.
                m = unsafe { min_block::<MIN>(m, w, x, j, base, (units - base).min(LANES)) };
                base += LANES;
            }
        }
        m
    }

    /// Step 3.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    fn finish(a0: __m512, a1: __m512, m: __m512) -> f32 {
        let s = _mm512_add_ps(_mm512_add_ps(a0, a1), m);
        let v = _mm256_add_ps(
            _mm512_castps512_ps256(s),
            _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)),
        );
        let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        let v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 1));
        _mm_cvtss_f32(v)
    }

    /// `C` activation rows against a decoded row. Coefficients (scale · dx) are made
    /// sixteen units at a time; each is then broadcast straight from memory into its
    /// fused multiply-add.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn tile<const C: usize, const MIN: u8>(
        w: &DecodedRow,
        x: &QuantizedRows,
        j0: usize,
        out: &mut [f32],
    ) {
        let units = w.scales.len();
        let n = w.unit_len;
        let xs: [*const i16; C] = std::array::from_fn(|c| x.row(j0 + c).as_ptr());
        let dx: [*const f32; C] = std::array::from_fn(|c| x.row_scales(j0 + c).as_ptr());
        let wp = w.w.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); 2]; C];
        let mut coefficients = [[0f32; LANES]; C];
        // SAFETY: `w` and each row of `x` hold `units` whole units; loads of scales are
        // masked to the units that exist.
        unsafe {
            let mut base = 0;
            while base < units {
                let count = (units - base).min(LANES);
                let mask = first(count);
                let scales = _mm512_maskz_loadu_ps(mask, w.scales.as_ptr().add(base));
                for c in 0..C {
                    let v = _mm512_mul_ps(scales, _mm512_maskz_loadu_ps(mask, dx[c].add(base)));
                    _mm512_storeu_ps(coefficients[c].as_mut_ptr(), v);
                }
                for k in 0..count {
                    let u = base + k;
                    let mut ints = [_mm512_setzero_si512(); C];
                    let mut at = u * n;
                    while at < (u + 1) * n {
                        let wv = _mm512_loadu_si512(wp.add(at) as *const __m512i);
                        for c in 0..C {
                            ints[c] = _mm512_dpwssd_epi32(
                                ints[c],
                                wv,
                                _mm512_loadu_si512(xs[c].add(at) as *const __m512i),
                            );
                        }
                        at += 32;
                    }
                    for c in 0..C {
                        let a = &mut acc[c][k % 2];
                        *a = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(ints[c]),
                            _mm512_set1_ps(coefficients[c][k]),
                            *a,
                        );
                    }
                }
                base += LANES;
            }
            for c in 0..C {
                out[c] = finish(acc[c][0], acc[c][1], min_lanes::<MIN>(w, x, j0 + c));
            }
        }
    }

    /// One raw weight row against activation rows `j0..j0 + C`, decoding as it goes: the
    /// weights are decoded once for all the rows. `d` (sized by the caller) receives the
    /// K-quants' minimums.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn fused<const C: usize>(
        format: QuantFormat,
        row: &[u8],
        x: &QuantizedRows,
        j0: usize,
        d: &mut DecodedRow,
        out: &mut [f32],
    ) {
        // SAFETY: forwarded to functions with the same contract.
        unsafe {
            match dec::code(format) {
                Q4_0 => fused32::<Q4_0, 0, C>(row, x, j0, out),
                Q4_1 => fused32::<Q4_1, 1, C>(row, x, j0, out),
                Q5_0 => fused32::<Q5_0, 0, C>(row, x, j0, out),
                Q5_1 => fused32::<Q5_1, 1, C>(row, x, j0, out),
                Q8_0 => fused32::<Q8_0, 0, C>(row, x, j0, out),
                Q4K => fused256::<Q4K, 2, C>(row, x, j0, d, out),
                Q5K => fused256::<Q5K, 2, C>(row, x, j0, d, out),
                _ => fused256::<Q6K, 0, C>(row, x, j0, d, out),
            }
        }
    }

    /// How far ahead of the weights being decoded to prefetch (bytes).
    const PREFETCH_AHEAD: usize = 1024;

    /// The 32-value formats: sixteen blocks at a time, their scales (and minimums) read
    /// with one gather.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn fused32<const F: u8, const MIN: u8, const C: usize>(
        row: &[u8],
        x: &QuantizedRows,
        j0: usize,
        out: &mut [f32],
    ) {
        let unit_bytes = [18, 20, 22, 24, 34][F as usize];
        let units = row.len() / unit_bytes;
        let xs: [*const i16; C] = std::array::from_fn(|c| x.row(j0 + c).as_ptr());
        let dx: [*const f32; C] = std::array::from_fn(|c| x.row_scales(j0 + c).as_ptr());
        let sums: [*const i32; C] = std::array::from_fn(|c| x.row_sums(j0 + c).as_ptr());
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(unit_bytes as i32),
        );
        let mut acc = [[_mm512_setzero_ps(); 2]; C];
        let mut m = [_mm512_setzero_ps(); C];
        // SAFETY: `row` holds `units` whole blocks and `x`'s rows their values; gathers
        // and loads are masked to the blocks that exist (a block's first four bytes are
        // its scale and, for Q4_1/Q5_1, its minimum).
        unsafe {
            let mut base = 0;
            while base < units {
                let n = (units - base).min(LANES);
                let mask = first(n);
                let p = row.as_ptr().add(base * unit_bytes);
                let heads = _mm512_mask_i32gather_epi32::<1>(
                    _mm512_setzero_si512(),
                    mask,
                    offsets,
                    p as *const i32,
                );
                let scales = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(heads));
                let mins = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(heads, 16)));
                let mut coefficients = [_mm512_setzero_ps(); C];
                for c in 0..C {
                    let dxs = _mm512_maskz_loadu_ps(mask, dx[c].add(base));
                    coefficients[c] = _mm512_mul_ps(scales, dxs);
                    if MIN == 1 {
                        let s =
                            _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mask, sums[c].add(base)));
                        m[c] = _mm512_mask3_fmadd_ps(_mm512_mul_ps(mins, dxs), s, m[c], mask);
                    }
                }
                let mut k = 0;
                while k < n {
                    let unit = p.add(k * unit_bytes);
                    _mm_prefetch::<_MM_HINT_T0>(unit.add(PREFETCH_AHEAD) as *const i8);
                    let wv = dec::block32::<F>(unit);
                    let lane = _mm512_set1_epi32(k as i32);
                    for c in 0..C {
                        let ints = _mm512_madd_epi16(
                            wv,
                            _mm512_loadu_si512(xs[c].add((base + k) * 32) as *const __m512i),
                        );
                        let coefficient = _mm512_permutexvar_ps(lane, coefficients[c]);
                        let a = &mut acc[c][k % 2];
                        *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), coefficient, *a);
                    }
                    k += 1;
                }
                base += LANES;
            }
        }
        for c in 0..C {
            out[c] = finish(acc[c][0], acc[c][1], m[c]);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn fused256<const F: u8, const MIN: u8, const C: usize>(
        row: &[u8],
        x: &QuantizedRows,
        j0: usize,
        d: &mut DecodedRow,
        out: &mut [f32],
    ) {
        let unit_bytes = [144, 176, 210][(F - Q4K) as usize];
        let units = row.len() / unit_bytes;
        let xs: [*const i16; C] = std::array::from_fn(|c| x.row(j0 + c).as_ptr());
        let dx: [&[f32]; C] = std::array::from_fn(|c| x.row_scales(j0 + c));
        let mut acc = [[_mm512_setzero_ps(); 2]; C];
        // SAFETY: `row` holds `units` whole units, `x`'s rows their values, and `d` was
        // sized for `units` by the caller.
        unsafe {
            for u in 0..units {
                let unit = row.get_unchecked(u * unit_bytes..(u + 1) * unit_bytes);
                _mm_prefetch::<_MM_HINT_T0>(unit.as_ptr().add(PREFETCH_AHEAD) as *const i8);
                let chunks = dec::unit256::<F>(unit);
                let mut ints = [_mm512_setzero_si512(); C];
                for (k, chunk) in chunks.into_iter().enumerate() {
                    for c in 0..C {
                        ints[c] = _mm512_dpwssd_epi32(
                            ints[c],
                            chunk,
                            _mm512_loadu_si512(xs[c].add(u * 256 + 32 * k) as *const __m512i),
                        );
                    }
                }
                let scale = dec::half(unit.as_ptr().add(if F == Q6K { 208 } else { 0 }));
                if MIN != 0 {
                    dec::store_scales::<F>(unit, u, d);
                }
                for c in 0..C {
                    let a = &mut acc[c][u % 2];
                    *a = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(ints[c]),
                        _mm512_set1_ps(scale * dx[c][u]),
                        *a,
                    );
                }
            }
            for c in 0..C {
                out[c] = finish(acc[c][0], acc[c][1], min_lanes::<MIN>(d, x, j0 + c));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{DecodedRow, LANES, QuantizedRows, min_lanes};

    /// `C` activation rows against a decoded row; lanes 0–7 in one register, 8–15 in
    /// another, for each of the two accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const C: usize, const MIN: u8>(
        w: &DecodedRow,
        x: &QuantizedRows,
        j0: usize,
        out: &mut [f32],
    ) {
        let units = w.scales.len();
        let n = w.unit_len;
        let xs: [*const i16; C] = std::array::from_fn(|c| x.row(j0 + c).as_ptr());
        let dx: [&[f32]; C] = std::array::from_fn(|c| x.row_scales(j0 + c));
        let wp = w.w.as_ptr();
        // acc[c][a][half]
        let mut acc = [[[_mm256_setzero_ps(); 2]; 2]; C];
        // SAFETY: `w` and each row of `x` hold `units` whole units.
        unsafe {
            for u in 0..units {
                let mut lo = [_mm256_setzero_si256(); C];
                let mut hi = [_mm256_setzero_si256(); C];
                let mut at = u * n;
                while at < (u + 1) * n {
                    // Values 0–15 of a chunk make pairs 0–7, values 16–31 pairs 8–15.
                    let w0 = _mm256_loadu_si256(wp.add(at) as *const __m256i);
                    let w1 = _mm256_loadu_si256(wp.add(at + 16) as *const __m256i);
                    for c in 0..C {
                        let x0 = _mm256_loadu_si256(xs[c].add(at) as *const __m256i);
                        let x1 = _mm256_loadu_si256(xs[c].add(at + 16) as *const __m256i);
                        lo[c] = _mm256_add_epi32(lo[c], _mm256_madd_epi16(w0, x0));
                        hi[c] = _mm256_add_epi32(hi[c], _mm256_madd_epi16(w1, x1));
                    }
                    at += 32;
                }
                let scale = w.scales[u];
                for c in 0..C {
                    let k = _mm256_set1_ps(scale * dx[c][u]);
                    let a = &mut acc[c][u % 2];
                    a[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo[c]), k, a[0]);
                    a[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi[c]), k, a[1]);
                }
            }
            for c in 0..C {
                let lanes = |a: [__m256; 2]| {
                    let mut out = [0f32; LANES];
                    _mm256_storeu_ps(out.as_mut_ptr(), a[0]);
                    _mm256_storeu_ps(out.as_mut_ptr().add(8), a[1]);
                    out
                };
                out[c] = super::finish(lanes(acc[c][0]), lanes(acc[c][1]), min_lanes(w, x, j0 + c));
            }
        }
    }
}
