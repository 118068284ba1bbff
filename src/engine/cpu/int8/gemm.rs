//! Packed matrices times int8 activation rows: the tiles, their shapes per ISA, and how a
//! range of panels is walked.
//!
//! One code path serves a single decoding row, a batch of decoding rows and a 512-token
//! prompt: a range of panels is taken `PG` panels at a time, and each panel group through
//! every activation row, `MR` rows at a time. The panel group's weights stay in the cache
//! while the rows stream past, so a weight is read from memory once per call, whatever the
//! number of rows. Every output is computed by the same float operations whatever the tile
//! shape (`super::portable`), so the shapes are free to differ by ISA and by row count.

use super::layout::PANEL;
use super::packed::PackedMatrix;
use super::portable;
use super::rows::Int8Rows;
use crate::engine::cpu::formats::QuantFormat;
use crate::engine::cpu::isa::Isa;

/// One panel's results for one activation row.
pub type Lanes = [f32; PANEL];

/// Where a tile reads: consecutive panels from `panels`, `blocks` records each, against
/// activation rows from `j0` on.
pub struct Tile<'a> {
    pub panels: *const u8,
    pub panel_bytes: usize,
    pub blocks: usize,
    pub x: &'a Int8Rows,
    pub j0: usize,
}

/// The kernels' code for a format (their `F` parameter).
pub const fn code(format: QuantFormat) -> u8 {
    match format {
        QuantFormat::Q4_0 => 0,
        QuantFormat::Q4_1 => 1,
        QuantFormat::Q5_0 => 2,
        QuantFormat::Q5_1 => 3,
        QuantFormat::Q8_0 => 4,
        QuantFormat::Q4K => 5,
        QuantFormat::Q5K => 6,
        QuantFormat::Q6K => 7,
    }
}

/// A tile kernel: `out[r · PG + p]` for activation row `j0 + r` and panel p of the tile.
type TileFn = unsafe fn(&Tile<'_>, &mut [Lanes]);

/// The largest tile: rows × panels.
const MAX_TILE: usize = 8;

/// Panels a tile takes at once for `rows` activation rows on `isa` (a range is walked in
/// groups of this many; the last group may be smaller).
pub fn panel_group(isa: Isa, rows: usize) -> usize {
    match isa {
        Isa::Avx512Vnni if rows == 1 => 4,
        Isa::Avx512Vnni if rows >= 8 => 1,
        Isa::Avx512Vnni => 2,
        Isa::Avx2 if rows == 1 => 2,
        _ => 1,
    }
}

/// Activation rows the next tile takes on `isa`, `left` rows remaining of `rows`.
fn row_tile(isa: Isa, rows: usize, left: usize) -> usize {
    let most = match isa {
        Isa::Avx512Vnni if rows >= 8 => 8,
        Isa::Avx512Vnni => 4,
        Isa::Avx2 => 2,
        Isa::Portable => 1,
    };
    if left >= most {
        most
    } else if left >= 4 {
        4.min(most)
    } else {
        left.min(most)
    }
}

/// `out[j · m.rows + r] = row r of m · activation row j`, for the rows of panels `panels`
/// and every activation row. `out` is written only there.
///
/// # Safety
/// `out` points to `x.rows × m.rows` floats, and nothing else writes the rows of these
/// panels while this runs.
pub unsafe fn run_panels(
    isa: Isa,
    m: &PackedMatrix,
    x: &Int8Rows,
    panels: std::ops::Range<usize>,
    out: *mut f32,
) {
    let n = m.rows;
    let write = |j: usize, p: usize, lanes: &Lanes| {
        let live = PANEL.min(n - p * PANEL);
        // SAFETY: row j of the output, the rows of panel p: inside, and ours alone.
        unsafe {
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), out.add(j * n + p * PANEL), live);
        }
    };
    if isa == Isa::Portable {
        for p in panels {
            for j in 0..x.rows {
                write(j, p, &portable::panel_dot(m, p, x, j));
            }
        }
        return;
    }
    let group = panel_group(isa, x.rows);
    let mut buffer = [[0f32; PANEL]; MAX_TILE];
    let mut p = panels.start;
    while p < panels.end {
        let pg = group.min(panels.end - p);
        let pg = if pg == group { pg } else { 1 };
        let mut j0 = 0;
        while j0 < x.rows {
            let mr = row_tile(isa, x.rows, x.rows - j0);
            let tile = Tile {
                // SAFETY: panel p is inside the matrix.
                panels: unsafe { m.data.as_ptr().add(p * m.panel_bytes) },
                panel_bytes: m.panel_bytes,
                blocks: m.blocks(),
                x,
                j0,
            };
            let kernel = tile_fn(isa, code(m.format()), mr, pg);
            // SAFETY: the ISA was detected; the tile's panels and rows exist; the buffer
            // holds mr · pg ≤ MAX_TILE lanes.
            unsafe { kernel(&tile, &mut buffer[..mr * pg]) };
            for r in 0..mr {
                for q in 0..pg {
                    write(j0 + r, p + q, &buffer[r * pg + q]);
                }
            }
            j0 += mr;
        }
        p += pg;
    }
}

macro_rules! shaped {
    ($isa:ident, $f:literal, $mr:literal, $pg:literal) => {{
        unsafe fn kernel(t: &Tile<'_>, out: &mut [Lanes]) {
            debug_assert_eq!(out.len(), $mr * $pg);
            // SAFETY: out holds MR · PG lanes, laid out as [[Lanes; PG]; MR].
            let out = unsafe { &mut *(out.as_mut_ptr() as *mut [[Lanes; $pg]; $mr]) };
            // SAFETY: forwarded from `run_panels`.
            unsafe { super::$isa::tile::<$f, $mr, $pg>(t, out) }
        }
        kernel as TileFn
    }};
}

macro_rules! by_format {
    ($isa:ident, $f:expr, $mr:literal, $pg:literal) => {
        match $f {
            0 => shaped!($isa, 0, $mr, $pg),
            1 => shaped!($isa, 1, $mr, $pg),
            2 => shaped!($isa, 2, $mr, $pg),
            3 => shaped!($isa, 3, $mr, $pg),
            4 => shaped!($isa, 4, $mr, $pg),
            5 => shaped!($isa, 5, $mr, $pg),
            6 => shaped!($isa, 6, $mr, $pg),
            _ => shaped!($isa, 7, $mr, $pg),
        }
    };
}

/// The kernel for a format code, tile rows and panels: the shapes `row_tile` and
/// `panel_group` ask for (a group's last tile may have fewer rows or panels).
#[cfg(target_arch = "x86_64")]
fn tile_fn(isa: Isa, f: u8, mr: usize, pg: usize) -> TileFn {
    match (isa, mr, pg) {
        (Isa::Avx512Vnni, 1, 1) => by_format!(avx512, f, 1, 1),
        (Isa::Avx512Vnni, 1, 2) => by_format!(avx512, f, 1, 2),
        (Isa::Avx512Vnni, 1, _) => by_format!(avx512, f, 1, 4),
        (Isa::Avx512Vnni, 2, 1) => by_format!(avx512, f, 2, 1),
        (Isa::Avx512Vnni, 2, _) => by_format!(avx512, f, 2, 2),
        (Isa::Avx512Vnni, 3, 1) => by_format!(avx512, f, 3, 1),
        (Isa::Avx512Vnni, 3, _) => by_format!(avx512, f, 3, 2),
        (Isa::Avx512Vnni, 4, 1) => by_format!(avx512, f, 4, 1),
        (Isa::Avx512Vnni, _, 1) => by_format!(avx512, f, 8, 1),
        (Isa::Avx512Vnni, _, _) => by_format!(avx512, f, 4, 2),
        (_, 1, 1) => by_format!(avx2, f, 1, 1),
        (_, 1, _) => by_format!(avx2, f, 1, 2),
        (_, _, _) => by_format!(avx2, f, 2, 1),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn tile_fn(_isa: Isa, _f: u8, _mr: usize, _pg: usize) -> TileFn {
    unreachable!("only the portable path exists off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::int8::packed::random_blocks;

    fn activations(rows: usize, cols: usize, seed: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let v = ((i * 7919 + seed * 104_729) % 1009) as f32 / 1009.0 - 0.5;
                // A few large values, as real hidden states have.
                if i % 97 == 0 { v * 40.0 } else { v }
            })
            .collect()
    }

    /// Every ISA path gives the definition's results bit for bit, for every format, row
    /// count (every tile shape and tail) and a last panel that is not full.
    #[test]
    fn every_path_is_the_definition_bit_for_bit() {
        use QuantFormat::*;
        for format in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K] {
            let (rows, cols) = (16 * 5 + 3, 512);
            let m = PackedMatrix::pack(format, rows, cols, &random_blocks(format, rows, cols, 11))
                .unwrap();
            for x_rows in [1, 2, 3, 4, 5, 7, 9] {
                let group = if format.is_k_quant() { 256 } else { 32 };
                let x = Int8Rows::quantize(&activations(x_rows, cols, x_rows), x_rows, cols, group);
                let mut expected = vec![0f32; x_rows * rows];
                // SAFETY: the buffer holds x_rows × rows floats.
                unsafe { run_panels(Isa::Portable, &m, &x, 0..m.panels(), expected.as_mut_ptr()) };
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; x_rows * rows];
                    // Two ranges, as two workers would take them.
                    unsafe {
                        run_panels(isa, &m, &x, 0..2, got.as_mut_ptr());
                        run_panels(isa, &m, &x, 2..m.panels(), got.as_mut_ptr());
                    }
                    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
                        assert_eq!(
                            e.to_bits(),
                            g.to_bits(),
                            "{format:?} {isa:?} {x_rows} rows, output {i}: {e} vs {g}"
                        );
                    }
                }
            }
        }
    }

    /// A row's result does not depend on the rows beside it.
    #[test]
    fn a_row_is_the_same_alone_and_in_a_batch() {
        let format = QuantFormat::Q4K;
        let (rows, cols) = (64, 768);
        let m =
            PackedMatrix::pack(format, rows, cols, &random_blocks(format, rows, cols, 5)).unwrap();
        let xs = activations(6, cols, 1);
        let batch = Int8Rows::quantize(&xs, 6, cols, 256);
        let alone = Int8Rows::quantize(&xs[3 * cols..4 * cols], 1, cols, 256);
        let isa = Isa::best();
        let mut all = vec![0f32; 6 * rows];
        let mut one = vec![0f32; rows];
        unsafe {
            run_panels(isa, &m, &batch, 0..m.panels(), all.as_mut_ptr());
            run_panels(isa, &m, &alone, 0..m.panels(), one.as_mut_ptr());
        }
        assert_eq!(&all[3 * rows..4 * rows], &one[..]);
    }
}
