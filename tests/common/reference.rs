//! A naive f32 Llama forward written from the HF modeling code, for the micro model.
#![allow(dead_code)]

use super::*;
use std::collections::HashMap;

/// Llama 3 inverse frequencies, written out independently of the library.
pub fn reference_inv_freq() -> Vec<f32> {
    let (theta, factor, low, high, orig) = (10000f64, 8f64, 1f64, 4f64, 16f64);
    (0..MICRO_HEAD_DIM / 2)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f64 / MICRO_HEAD_DIM as f64);
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let r = if wavelen < orig / high {
                f
            } else if wavelen > orig / low {
                f / factor
            } else {
                let s = (orig / wavelen - low) / (high - low);
                (1.0 - s) * f / factor + s * f
            };
            r as f32
        })
        .collect()
}

/// llama.cpp's rope_freqs.weight for the same scaling: the divisor of each base frequency.
pub fn gguf_rope_freqs() -> Vec<f32> {
    let inv = reference_inv_freq();
    (0..MICRO_HEAD_DIM / 2)
        .map(|i| (1.0 / 10000f64.powf((2 * i) as f64 / MICRO_HEAD_DIM as f64)) as f32 / inv[i])
        .collect()
}

/// Last-position logits by the book: HF LlamaForCausalLM in plain loops.
pub fn reference_logits(tensors: &[(String, Vec<usize>, Vec<f32>)], ids: &[u32]) -> Vec<f32> {
    let w: HashMap<&str, &Vec<f32>> = tensors.iter().map(|(n, _, v)| (n.as_str(), v)).collect();
    let h = MICRO_HIDDEN;
    let hd = MICRO_HEAD_DIM;
    let matvec = |m: &[f32], x: &[f32], rows: usize| -> Vec<f32> {
        (0..rows).map(|r| m[r * x.len()..(r + 1) * x.len()].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    };
    let rms = |x: &[f32], g: &[f32]| -> Vec<f32> {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        x.iter().zip(g).map(|(v, g)| v * inv * g).collect()
    };
    let inv_freq = reference_inv_freq();
    let rope = |x: &mut [f32], pos: usize| {
        for head in x.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let a = pos as f32 * inv_freq[i];
                let (c, s) = (a.cos(), a.sin());
                let (x1, x2) = (head[i], head[i + hd / 2]);
                head[i] = x1 * c - x2 * s;
                head[i + hd / 2] = x2 * c + x1 * s;
            }
        }
    };
    let embed = w["model.embed_tokens.weight"];
    let mut xs: Vec<Vec<f32>> = ids.iter().map(|&id| embed[id as usize * h..(id as usize + 1) * h].to_vec()).collect();
    for l in 0..MICRO_LAYERS {
        let p = |s: &str| w[format!("model.layers.{l}.{s}").as_str()];
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut qs = Vec::new();
        for (t, x) in xs.iter().enumerate() {
            let hn = rms(x, p("input_layernorm.weight"));
            let mut q = matvec(p("self_attn.q_proj.weight"), &hn, MICRO_HEADS * hd);
            let mut k = matvec(p("self_attn.k_proj.weight"), &hn, MICRO_KV_HEADS * hd);
            rope(&mut q, t);
            rope(&mut k, t);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(p("self_attn.v_proj.weight"), &hn, MICRO_KV_HEADS * hd));
        }
        let group = MICRO_HEADS / MICRO_KV_HEADS;
        for t in 0..xs.len() {
            let mut attn = vec![0f32; MICRO_HEADS * hd];
            for head in 0..MICRO_HEADS {
                let kvh = head / group;
                let q = &qs[t][head * hd..(head + 1) * hd];
                let scores: Vec<f32> = (0..=t)
                    .map(|s| {
                        q.iter().zip(&ks[s][kvh * hd..(kvh + 1) * hd]).map(|(a, b)| a * b).sum::<f32>()
                            / (hd as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                for (s, e) in exps.iter().enumerate() {
                    for d in 0..hd {
                        attn[head * hd + d] += e / sum * vs[s][kvh * hd + d];
                    }
                }
            }
            let o = matvec(p("self_attn.o_proj.weight"), &attn, h);
            xs[t].iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            let hn = rms(&xs[t], p("post_attention_layernorm.weight"));
            let g = matvec(p("mlp.gate_proj.weight"), &hn, MICRO_FF);
            let u = matvec(p("mlp.up_proj.weight"), &hn, MICRO_FF);
            let m: Vec<f32> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let d = matvec(p("mlp.down_proj.weight"), &m, h);
            xs[t].iter_mut().zip(&d).for_each(|(x, d)| *x += d);
        }
    }
    let last = rms(xs.last().unwrap(), w["model.norm.weight"]);
    matvec(w["lm_head.weight"], &last, MICRO_VOCAB)
}
