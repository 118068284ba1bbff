//! The plain-tensor forward of a tiny model: the whole sequence at once, no cache,
//! rotate-half rope, key and value heads repeated explicitly, a mask built element by
//! element. Written independently of the engine's code. Keys and values are rounded to
//! f16, as the engine stores them (llama.cpp does the same).

use std::collections::HashMap;

use candle_core::{D, DType, Device, Tensor};

use super::{EPS, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, LAYERS, THETA, Tiny};

/// The logits of the last of `tokens`.
pub fn reference_logits(w: &HashMap<String, Tensor>, tiny: Tiny, tokens: &[u32]) -> Vec<f32> {
    let t = tokens.len();
    let mask = causal_mask(t);
    let ids = Tensor::new(tokens, &Device::Cpu).unwrap();
    let mut x = w["model.embed_tokens.weight"]
        .index_select(&ids, 0)
        .unwrap();
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        let h = rms(&x, &w[&format!("{p}.input_layernorm.weight")]);
        x = (x + attention(w, &p, &h, &mask)).unwrap();
        let h = rms(&x, &w[&format!("{p}.post_attention_layernorm.weight")]);
        x = (x + feed_forward(w, &p, &h)).unwrap();
    }
    let last = rms(&x.narrow(0, t - 1, 1).unwrap(), &w["model.norm.weight"]);
    let head = if tiny.tied {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    last.matmul(&w[head].t().unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// One layer's attention over the normed rows `h`.
fn attention(w: &HashMap<String, Tensor>, p: &str, h: &Tensor, mask: &Tensor) -> Tensor {
    let t = h.dim(0).unwrap();
    let heads = |y: Tensor, n: usize| {
        y.reshape((t, n, HEAD_DIM))
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let q = rope(&heads(
        linear(w, h, &format!("{p}.self_attn.q_proj.weight")),
        HEADS,
    ));
    let k = rope(&heads(
        linear(w, h, &format!("{p}.self_attn.k_proj.weight")),
        KV_HEADS,
    ));
    let v = heads(
        linear(w, h, &format!("{p}.self_attn.v_proj.weight")),
        KV_HEADS,
    );
    let f16 = |x: Tensor| {
        x.to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let (k, v) = (f16(k), f16(v));
    let repeat: Vec<u32> = (0..HEADS)
        .map(|h| (h / (HEADS / KV_HEADS)) as u32)
        .collect();
    let repeat = Tensor::new(repeat.as_slice(), &Device::Cpu).unwrap();
    let k = k.index_select(&repeat, 0).unwrap();
    let v = v.index_select(&repeat, 0).unwrap();
    let scores = (q.matmul(&k.t().unwrap()).unwrap() / (HEAD_DIM as f64).sqrt()).unwrap();
    let scores = scores.broadcast_add(mask).unwrap();
    let exp = (scores
        .broadcast_sub(&scores.max_keepdim(D::Minus1).unwrap())
        .unwrap())
    .exp()
    .unwrap();
    let probs = exp
        .broadcast_div(&exp.sum_keepdim(D::Minus1).unwrap())
        .unwrap();
    let attn = probs
        .matmul(&v)
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .reshape((t, HIDDEN))
        .unwrap();
    linear(w, &attn, &format!("{p}.self_attn.o_proj.weight"))
}

/// One layer's SiLU-gated feed-forward block over the normed rows `h`.
fn feed_forward(w: &HashMap<String, Tensor>, p: &str, h: &Tensor) -> Tensor {
    let gate = linear(w, h, &format!("{p}.mlp.gate_proj.weight"));
    let silu = (&gate * candle_nn::ops::sigmoid(&gate).unwrap()).unwrap();
    let up = linear(w, h, &format!("{p}.mlp.up_proj.weight"));
    linear(
        w,
        &(silu * up).unwrap(),
        &format!("{p}.mlp.down_proj.weight"),
    )
}

fn rms(x: &Tensor, weight: &Tensor) -> Tensor {
    let mean = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    x.broadcast_div(&(mean + EPS).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(weight)
        .unwrap()
}

/// `x` times the weight `name`, plus its bias when the model has one.
fn linear(w: &HashMap<String, Tensor>, x: &Tensor, name: &str) -> Tensor {
    let y = x.matmul(&w[name].t().unwrap()).unwrap();
    match w.get(&name.replace(".weight", ".bias")) {
        Some(b) => y.broadcast_add(b).unwrap(),
        None => y,
    }
}

/// Rotate-half rope with explicit cos/sin per (position, pair); `x` is (heads, t, d).
fn rope(x: &Tensor) -> Tensor {
    let t = x.dim(1).unwrap();
    let half = HEAD_DIM / 2;
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for pos in 0..t {
        for i in 0..half {
            let angle = pos as f32 / THETA.powf(2.0 * i as f32 / HEAD_DIM as f32);
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (t, half), &Device::Cpu).unwrap();
    let sin = Tensor::from_vec(sin, (t, half), &Device::Cpu).unwrap();
    let cos = Tensor::cat(&[&cos, &cos], 1).unwrap();
    let sin = Tensor::cat(&[&sin, &sin], 1).unwrap();
    let x1 = x.narrow(2, 0, half).unwrap();
    let x2 = x.narrow(2, half, half).unwrap();
    let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], 2).unwrap();
    (x.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap()
}

/// 0 where row i may see column j (j ≤ i), −∞ elsewhere.
fn causal_mask(t: usize) -> Tensor {
    let mut mask = vec![0f32; t * t];
    for i in 0..t {
        for j in (i + 1)..t {
            mask[i * t + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap()
}
