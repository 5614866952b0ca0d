//! The transformer forward pass (llama architecture), batched over tokens.
//!
//! Reads like llama2.c's `run.c`: one `forward` with a comment per step.
//! Every weight comes from the layer cache, so resident and streamed models
//! share this one code path. Matmuls take quantized activations (`QActs`), as
//! llama.cpp does, for speed and for parity with its arithmetic.

use super::config::Config;
use super::residency::LayerCache;
use crate::quant::{self, QActs, QTensor};
use crate::store::ByteSource;
use crate::{Error, Result};

/// Tokens evaluated per internal batch (bounds scratch memory).
pub const UBATCH: usize = 32;

/// Key/value cache of one session (f32).
pub struct KvCache {
    /// Per layer: (n_ctx, kv_dim)
    pub k: Vec<Vec<f32>>,
    /// Per layer: (n_ctx, kv_dim)
    pub v: Vec<Vec<f32>>,
    pub n_ctx: usize,
}

impl KvCache {
    /// A cache of `n_ctx` positions for `c`.
    pub fn new(c: &Config, n_ctx: usize) -> Result<KvCache> {
        let per_layer = n_ctx.checked_mul(c.kv_dim()).ok_or_else(|| {
            Error::OutOfMemory(format!("KV cache of {n_ctx} positions overflows"))
        })?;
        let bytes = (per_layer as u64) * 8 * c.n_layers as u64;
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..c.n_layers {
            k.push(try_zeroed(per_layer, bytes)?);
            v.push(try_zeroed(per_layer, bytes)?);
        }
        Ok(KvCache { k, v, n_ctx })
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.k
            .iter()
            .chain(self.v.iter())
            .map(|l| l.len() as u64 * 4)
            .sum()
    }
}

/// A zeroed f32 buffer, or `OutOfMemory` instead of an allocation abort.
fn try_zeroed(n: usize, total: u64) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::OutOfMemory(format!(
            "cannot allocate the KV cache ({} MiB)",
            total >> 20
        ))
    })?;
    v.resize(n, 0.0);
    Ok(v)
}

/// Scratch buffers of the forward pass (llama2.c's `RunState`).
#[derive(Default)]
pub struct State {
    x: Vec<f32>,           // (n, n_embd) residual stream
    xb: Vec<f32>,          // (n, n_embd) normed input of a sub-layer
    xb2: Vec<f32>,         // (n, n_embd) output of a sub-layer
    q: Vec<f32>,           // (n, q_dim)
    k: Vec<f32>,           // (n, kv_dim)
    v: Vec<f32>,           // (n, kv_dim)
    att: Vec<f32>,         // (n, q_dim) attention output
    scores: Vec<f32>,      // (n_ctx,) one head's attention weights
    hb: Vec<f32>,          // (n, n_ff) gate, then silu(gate) * up
    hb2: Vec<f32>,         // (n, n_ff) up
    logits: Vec<f32>,      // (rows, n_vocab)
    rope: Vec<(f32, f32)>, // (rope_dim / 2,) cos, sin of one position
    acts: QActs,
}

impl State {
    fn ensure(&mut self, c: &Config, n: usize, n_ctx: usize) {
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow(&mut self.x, n * c.n_embd);
        grow(&mut self.xb, n * c.n_embd);
        grow(&mut self.xb2, n * c.n_embd);
        grow(&mut self.q, n * c.q_dim());
        grow(&mut self.k, n * c.kv_dim());
        grow(&mut self.v, n * c.kv_dim());
        grow(&mut self.att, n * c.q_dim());
        grow(&mut self.scores, n_ctx);
        grow(&mut self.hb, n * c.n_ff);
        grow(&mut self.hb2, n * c.n_ff);
    }
}

/// RMSNorm of each row of `x` (rows of `w.len()`), times `w`, into `out`.
fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = 1.0 / ((ss / d as f64) as f32 + eps).sqrt();
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
            *o = (xv * scale) * wv;
        }
    }
}

/// `out = w · x` for the first `n` rows of `x` (each `w.cols` wide).
fn matmul(out: &mut [f32], w: &QTensor, x: &[f32], n: usize, acts: &mut QActs) {
    acts.quantize(quant::vec_dot_type(w.ty), &x[..n * w.cols], n, w.cols);
    quant::matmul(&mut out[..n * w.rows], w, acts);
}

/// Like [`matmul`] for a second weight on the same input: reuses the
/// quantized activations when the weight wants the same type.
fn matmul_again(out: &mut [f32], w: &QTensor, x: &[f32], n: usize, acts: &mut QActs) {
    if acts.ty() == quant::vec_dot_type(w.ty) && acts.n() == n && acts.cols() == w.cols {
        quant::matmul(&mut out[..n * w.rows], w, acts);
    } else {
        matmul(out, w, x, n, acts);
    }
}

/// cos/sin of each rotated pair at position `pos` (ggml's NORM RoPE).
fn rope_table(c: &Config, pos: usize, table: &mut Vec<(f32, f32)>) {
    table.clear();
    let theta_scale = c.rope_base.powf(-2.0 / c.rope_dim as f32);
    let mut theta = pos as f32;
    for _ in 0..c.rope_dim / 2 {
        let t = theta * c.rope_freq_scale;
        table.push((t.cos(), t.sin()));
        theta *= theta_scale;
    }
}

/// Rotate consecutive pairs of each head of `v` (n_heads * head_dim wide).
fn rope(v: &mut [f32], head_dim: usize, table: &[(f32, f32)]) {
    for head in v.chunks_exact_mut(head_dim) {
        for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(table) {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * cos - x1 * sin;
            pair[1] = x0 * sin + x1 * cos;
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Evaluate `tokens` at positions `pos0..`, appending to `kv`. For every
/// token index `i >= logits_from`, calls `sink(i, logits)` with its n_vocab
/// logits. `tokens.len() <= UBATCH`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    c: &Config,
    cache: &mut LayerCache,
    src: &dyn ByteSource,
    kv: &mut KvCache,
    s: &mut State,
    tokens: &[u32],
    pos0: usize,
    logits_from: usize,
    sink: &mut dyn FnMut(usize, &[f32]),
) -> Result<()> {
    let n = tokens.len();
    debug_assert!((1..=UBATCH).contains(&n) && pos0 + n <= kv.n_ctx);
    s.ensure(c, n, kv.n_ctx);
    let (dim, hd, kv_dim, q_dim) = (c.n_embd, c.head_dim, c.kv_dim(), c.q_dim());
    let head_l = cache.head_index();

    // 1. Token embeddings: dequantize one row of token_embd per token.
    let head = cache.layer(src, head_l)?;
    let hw = head.head();
    for (i, &t) in tokens.iter().enumerate() {
        if t as usize >= c.n_vocab {
            return Err(Error::InvalidInput(format!(
                "token id {t} is outside the vocabulary ({})",
                c.n_vocab
            )));
        }
        quant::dequantize_row(&hw.token_embd, t as usize, &mut s.x[i * dim..(i + 1) * dim]);
    }

    for l in 0..c.n_layers {
        // Read ahead the next layer while this one computes.
        cache.prefetch(src, l + 1);
        let layer = cache.layer(src, l)?;
        let w = layer.block();

        // 2. Attention: RMSNorm, then q, k, v projections.
        rmsnorm(
            &mut s.xb[..n * dim],
            &s.x[..n * dim],
            w.attn_norm,
            c.norm_eps,
        );
        matmul(&mut s.q, &w.wq, &s.xb, n, &mut s.acts);
        matmul_again(&mut s.k, &w.wk, &s.xb, n, &mut s.acts);
        matmul_again(&mut s.v, &w.wv, &s.xb, n, &mut s.acts);

        // 3. RoPE on q and k; store k, v at their positions. (Kept in f32:
        //    rounding them to f16 as llama.cpp's cache does moved far-tail
        //    log-probabilities further from llama.cpp's, not closer.)
        for i in 0..n {
            let pos = pos0 + i;
            rope_table(c, pos, &mut s.rope);
            rope(&mut s.q[i * q_dim..(i + 1) * q_dim], hd, &s.rope);
            rope(&mut s.k[i * kv_dim..(i + 1) * kv_dim], hd, &s.rope);
            kv.k[l][pos * kv_dim..(pos + 1) * kv_dim]
                .copy_from_slice(&s.k[i * kv_dim..(i + 1) * kv_dim]);
            kv.v[l][pos * kv_dim..(pos + 1) * kv_dim]
                .copy_from_slice(&s.v[i * kv_dim..(i + 1) * kv_dim]);
        }

        // 4. Causal grouped-query attention: head h reads kv head h / (n_head / n_head_kv).
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        for i in 0..n {
            let n_pos = pos0 + i + 1;
            for h in 0..c.n_head {
                let q = &s.q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
                let kvh = (h / group) * hd;
                let scores = &mut s.scores[..n_pos];
                let mut max = f32::NEG_INFINITY;
                for (t, sc) in scores.iter_mut().enumerate() {
                    let k = &kv.k[l][t * kv_dim + kvh..t * kv_dim + kvh + hd];
                    let dot: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
                    *sc = dot * scale;
                    max = max.max(*sc);
                }
                let mut sum = 0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let inv = 1.0 / sum;
                let out = &mut s.att[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
                out.fill(0.0);
                for (t, &p) in scores.iter().enumerate() {
                    let v = &kv.v[l][t * kv_dim + kvh..t * kv_dim + kvh + hd];
                    let p = p * inv;
                    for (o, &vv) in out.iter_mut().zip(v) {
                        *o += p * vv;
                    }
                }
            }
        }

        // 5. Output projection and residual.
        matmul(&mut s.xb2, &w.wo, &s.att, n, &mut s.acts);
        for (x, &d) in s.x[..n * dim].iter_mut().zip(&s.xb2[..n * dim]) {
            *x += d;
        }

        // 6. Feed-forward: RMSNorm, SwiGLU (silu(gate) * up), down projection, residual.
        rmsnorm(
            &mut s.xb[..n * dim],
            &s.x[..n * dim],
            w.ffn_norm,
            c.norm_eps,
        );
        matmul(&mut s.hb, &w.w_gate, &s.xb, n, &mut s.acts);
        matmul_again(&mut s.hb2, &w.w_up, &s.xb, n, &mut s.acts);
        for (g, &u) in s.hb[..n * c.n_ff].iter_mut().zip(&s.hb2[..n * c.n_ff]) {
            *g = silu(*g) * u;
        }
        matmul(&mut s.xb2, &w.w_down, &s.hb, n, &mut s.acts);
        for (x, &d) in s.x[..n * dim].iter_mut().zip(&s.xb2[..n * dim]) {
            *x += d;
        }
    }

    // 7. Final RMSNorm and the output matrix, only for the rows that want logits.
    if logits_from < n {
        let rows = n - logits_from;
        rmsnorm(
            &mut s.xb[..rows * dim],
            &s.x[logits_from * dim..n * dim],
            hw.output_norm,
            c.norm_eps,
        );
        if s.logits.len() < rows * c.n_vocab {
            s.logits.resize(rows * c.n_vocab, 0.0);
        }
        matmul(&mut s.logits, &hw.output, &s.xb, rows, &mut s.acts);
        for r in 0..rows {
            sink(
                logits_from + r,
                &s.logits[r * c.n_vocab..(r + 1) * c.n_vocab],
            );
        }
    }
    Ok(())
}
