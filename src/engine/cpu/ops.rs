//! Row-wise operations of the CPU forward pass: norms, activations, residual adds.
//!
//! Each works on one row at a time in a fixed order, so a row's result never depends on the
//! rows beside it (batching and chunking change nothing) — the property the request flow
//! relies on to re-run a prompt and get bit-identical logits.

/// `x[r] ← x[r] / rms(x[r]) · w` for every row of width `w.len()`, into `out`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let width = w.len();
    for (xs, os) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let scale = inverse_rms(xs, eps);
        for ((o, &v), &g) in os.iter_mut().zip(xs).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// The same in place, for every `w.len()`-wide piece of `x` (q/k norms: one per head).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let width = w.len();
    for xs in x.chunks_exact_mut(width) {
        let scale = inverse_rms(xs, eps);
        for (v, &g) in xs.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

fn inverse_rms(xs: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            lanes[l] = c[l].mul_add(c[l], lanes[l]);
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for &v in rest {
        sum = v.mul_add(v, sum);
    }
    1.0 / (sum / xs.len() as f32 + eps).sqrt()
}

/// `x += y`.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x += y + bias` per row (a projection's bias folded into the residual add is not used:
/// biases are added to projections directly with [`add_bias`]).
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add(row, bias);
    }
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// The gated activation of a feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `silu(g) · u` (llama, qwen, phi3).
    Silu,
    /// `gelu_tanh(g) · u` (gemma).
    GeluTanh,
}

/// `out[i] = act(gate[i]) · up[i]`.
pub fn gated(activation: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    match activation {
        Activation::Silu => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        }
        Activation::GeluTanh => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                let inner = SQRT_2_OVER_PI * (g + 0.044_715 * g * g * g);
                *o = 0.5 * g * (1.0 + tanh(inner)) * u;
            }
        }
    }
}

/// `tanh(x) = 1 − 2 / (e^{2x} + 1)`, through [`exp`].
#[inline]
pub fn tanh(x: f32) -> f32 {
    let x = x.clamp(-10.0, 10.0);
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// `e^x` to within a few ulps, in plain arithmetic the compiler can vectorize (the
/// standard library's calls cannot be): `2^(x·log2 e)` split into an integer power of two
/// and a polynomial on [−½, ½].
#[inline]
pub fn exp(x: f32) -> f32 {
    // No branch, so that loops over it vectorize: NaN stays NaN through the arithmetic
    // (clamp keeps it, and the power of two it gets is finite).
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E;
    let n = t.round();
    // r = x − n·ln2 in two steps for accuracy (Cody–Waite).
    let r = n.mul_add(-0.693_145_75, x);
    let r = n.mul_add(-1.428_606_8e-6, r);
    // e^r on |r| ≤ ½·ln2, degree-6 Taylor/minimax coefficients.
    let p = 1.0 / 720.0f32;
    let p = p.mul_add(r, 1.0 / 120.0);
    let p = p.mul_add(r, 1.0 / 24.0);
    let p = p.mul_add(r, 1.0 / 6.0);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_the_standard_one() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let (ours, std) = (exp(x), x.exp());
            assert!(
                ((ours - std) / std).abs() < 2e-6,
                "exp({x}) = {ours}, not {std}"
            );
            x += 0.0137;
        }
        assert_eq!(exp(-200.0), exp(-87.0));
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_close_to_the_standard_one() {
        let mut x = -12.0f32;
        while x < 12.0 {
            assert!((tanh(x) - x.tanh()).abs() < 2e-6, "tanh({x})");
            x += 0.0071;
        }
    }
}
