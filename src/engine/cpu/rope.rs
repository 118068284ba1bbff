//! Rotary position embeddings on the CPU: each row rotated by its own position.
//!
//! Rows of a batch belong to different sequences at different positions, so the angle is
//! looked up per row. Angles come from a table for the first positions and from the same
//! formula beyond it, so a position's rotation is the same however it is reached.

use crate::engine::config::{RopeLayout, RopeSpec};

/// Positions whose cos/sin are tabulated (later ones are computed when needed).
const TABLE_POSITIONS: usize = 8192;

/// cos and sin of `position · θᵢ` for one rope configuration.
pub struct RopeTable {
    inv_freq: Vec<f64>,
    /// Multiplies cos and sin (LongRoPE's attention factor; 1 otherwise).
    magnitude: f32,
    layout: RopeLayout,
    /// Dimensions rotated (the first `rotary_dim` of each head).
    rotary_dim: usize,
    /// TABLE_POSITIONS × rotary_dim/2 each.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(spec: &RopeSpec, max_positions: usize) -> Self {
        let half = spec.rotary_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| {
                let base =
                    1.0 / f64::from(spec.theta).powf((2 * i) as f64 / spec.rotary_dim as f64);
                let factor = spec.freq_factors.get(i).copied().unwrap_or(1.0);
                base / f64::from(factor)
            })
            .collect();
        let positions = max_positions.min(TABLE_POSITIONS);
        let mut table = RopeTable {
            inv_freq,
            magnitude: spec.magnitude,
            layout: spec.layout,
            rotary_dim: spec.rotary_dim,
            cos: Vec::with_capacity(positions * half),
            sin: Vec::with_capacity(positions * half),
        };
        for p in 0..positions {
            for i in 0..half {
                let (c, s) = table.angle(p, i);
                table.cos.push(c);
                table.sin.push(s);
            }
        }
        table
    }

    fn angle(&self, position: usize, i: usize) -> (f32, f32) {
        let a = position as f64 * self.inv_freq[i];
        (
            a.cos() as f32 * self.magnitude,
            a.sin() as f32 * self.magnitude,
        )
    }

    /// Rotates every head (`head_dim` wide) of `row`, a token at `position`.
    pub fn apply(&self, row: &mut [f32], head_dim: usize, position: usize) {
        let half = self.rotary_dim / 2;
        let tabulated = position * half < self.cos.len();
        let mut cos_buf = [0f32; 256];
        let mut sin_buf = [0f32; 256];
        let (cos, sin): (&[f32], &[f32]) = if tabulated {
            (
                &self.cos[position * half..(position + 1) * half],
                &self.sin[position * half..(position + 1) * half],
            )
        } else {
            for i in 0..half {
                (cos_buf[i], sin_buf[i]) = self.angle(position, i);
            }
            (&cos_buf[..half], &sin_buf[..half])
        };
        for head in row.chunks_exact_mut(head_dim) {
            match self.layout {
                RopeLayout::Interleaved => {
                    for i in 0..half {
                        let (a, b) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = a * cos[i] - b * sin[i];
                        head[2 * i + 1] = a * sin[i] + b * cos[i];
                    }
                }
                RopeLayout::Halves => {
                    for i in 0..half {
                        let (a, b) = (head[i], head[i + half]);
                        head[i] = a * cos[i] - b * sin[i];
                        head[i + half] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
    }
}
