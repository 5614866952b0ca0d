//! The transformer forward pass, batched over tokens.
//!
//! Reads like llama2.c's `run.c`: one `forward` with a comment per step. It
//! is the llama block; the options of [`Config`] (and the optional tensors
//! of [`super::weights::BlockWeights`]) add what other architectures change:
//! embedding scale, q/k norms, NEOX RoPE, sliding-window layers, post-norms,
//! GeGLU, logit soft-capping (Gemma 3).
//! Every weight comes from the layer cache, so resident and streamed models
//! share this one code path. Matmuls take quantized activations (`QActs`), as
//! llama.cpp does, for speed and for parity with its arithmetic.

use super::attention::{self, attend_batch, KvHead, HEADS};
use super::config::{Config, FfnAct, RopeStyle, Yarn};
use super::residency::LayerCache;
use super::weights::{BlockWeights, HeadWeights, LayerData, Mat};
use crate::quant::{self, QActs, QTensor};
use crate::store::ByteSource;
use crate::{Error, Result};
use half::f16;
use std::rc::Rc;

/// Tokens evaluated per internal batch (bounds scratch memory).
pub const UBATCH: usize = 32;

/// What a session's KV cache stores per value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// The nearest f16 (2 bytes), llama.cpp's default cache type. Attention
    /// then follows llama.cpp's two flash-attention kernels (see
    /// [`attention`]), so scores match llama.cpp's.
    #[default]
    F16,
    /// The f32 value itself (4 bytes), as llama.cpp's `--cache-type-k f32
    /// --cache-type-v f32`. Every token's attention then runs the f32
    /// kernel ([`attention::attend_batch_f32`]): closer to exact math,
    /// several times faster than the f16 emulation in long contexts,
    /// further from llama.cpp's default numbers.
    F32,
}

impl KvType {
    /// Bytes of one cached value.
    pub fn bytes(self) -> u64 {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

/// One layer's keys or values, (n_ctx, kv_dim).
pub enum KvStore {
    /// f16 bits ([`KvType::F16`]).
    F16(Vec<u16>),
    /// f32 values ([`KvType::F32`]).
    F32(Vec<f32>),
}

impl KvStore {
    /// `n` zeroed values of `ty`, or `OutOfMemory` (naming the cache's
    /// `total` bytes) instead of an allocation abort.
    fn zeroed(ty: KvType, n: usize, total: u64) -> Result<KvStore> {
        fn zeros<T: Clone + Default>(n: usize, total: u64) -> Result<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| {
                Error::OutOfMemory(format!(
                    "cannot allocate the KV cache ({} MiB)",
                    total >> 20
                ))
            })?;
            v.resize(n, T::default());
            Ok(v)
        }
        Ok(match ty {
            KvType::F16 => KvStore::F16(zeros(n, total)?),
            KvType::F32 => KvStore::F32(zeros(n, total)?),
        })
    }

    /// Values `at..at + src.len()` set from `src` (rounded to f16 in an f16
    /// store, ties to even, as llama.cpp stores them).
    fn store(&mut self, at: usize, src: &[f32]) {
        match self {
            KvStore::F16(d) => {
                for (d, &x) in d[at..at + src.len()].iter_mut().zip(src) {
                    *d = f16::from_f32(x).to_bits();
                }
            }
            KvStore::F32(d) => d[at..at + src.len()].copy_from_slice(src),
        }
    }

    /// The values, for the attention kernels.
    fn rows(&self) -> attention::KvRows<'_> {
        match self {
            KvStore::F16(d) => attention::KvRows::F16(d),
            KvStore::F32(d) => attention::KvRows::F32(d),
        }
    }

    fn len(&self) -> usize {
        match self {
            KvStore::F16(d) => d.len(),
            KvStore::F32(d) => d.len(),
        }
    }
}

/// Key/value cache of one session, in f16 (llama.cpp's default cache type)
/// or f32 ([`KvType`]).
pub struct KvCache {
    /// Per layer: (n_ctx, kv_dim)
    pub k: Vec<KvStore>,
    /// Per layer: (n_ctx, kv_dim)
    pub v: Vec<KvStore>,
    pub n_ctx: usize,
    pub ty: KvType,
}

impl KvCache {
    /// A cache of `n_ctx` positions of `ty` for `c`.
    pub fn new(c: &Config, n_ctx: usize, ty: KvType) -> Result<KvCache> {
        let per_layer = n_ctx.checked_mul(c.kv_dim()).ok_or_else(|| {
            Error::OutOfMemory(format!("KV cache of {n_ctx} positions overflows"))
        })?;
        let bytes = (n_ctx as u64).saturating_mul(Self::bytes_per_position(c, ty));
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..c.n_layers {
            k.push(KvStore::zeroed(ty, per_layer, bytes)?);
            v.push(KvStore::zeroed(ty, per_layer, bytes)?);
        }
        Ok(KvCache { k, v, n_ctx, ty })
    }

    /// Bytes one position takes (K and V of every layer).
    pub fn bytes_per_position(c: &Config, ty: KvType) -> u64 {
        c.kv_dim() as u64 * 2 * ty.bytes() * c.n_layers as u64
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.k
            .iter()
            .chain(self.v.iter())
            .map(|l| l.len() as u64 * self.ty.bytes())
            .sum()
    }
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
    hb: Vec<f32>,          // (n, n_ff) gate, then silu(gate) * up
    hb2: Vec<f32>,         // (n, n_ff) up
    logits: Vec<f32>,      // (rows, n_vocab)
    rope: Vec<(f32, f32)>, // (rope_dim / 2,) cos, sin of one position
    acts: QActs,
    attn: attention::Scratch,
    /// Whether the next [`forward`] attends as llama.cpp's prompt kernel
    /// ([`attention::attend_batch_f32`]) rather than its one-query kernel.
    prompt_attention: bool,
}

impl State {
    /// Set which attention kernel the next [`forward`] runs: llama.cpp's
    /// tiled prompt kernel (`true`: f32 accumulation), or its one-query
    /// kernel (`false`, the default: f16 accumulation).
    pub(crate) fn set_prompt_attention(&mut self, on: bool) {
        self.prompt_attention = on;
    }

    fn ensure(&mut self, c: &Config, n: usize) {
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
        grow(&mut self.hb, n * c.n_ff);
        grow(&mut self.hb2, n * c.n_ff);
    }
}

/// 1 / RMS of `x` (ggml's `rms_norm`: the sum of squares in f64).
fn rms_inv(x: &[f32], eps: f32) -> f32 {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt()
}

/// RMSNorm of each row of `x` (rows of `w.len()`), times `w`, into `out`.
fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let scale = rms_inv(xr, eps);
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
            *o = (xv * scale) * wv;
        }
    }
}

/// RMSNorm of each row of `x` (rows of `w.len()`: one head), times `w`, in place.
fn rmsnorm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    for xr in x.chunks_exact_mut(w.len()) {
        let scale = rms_inv(xr, eps);
        for (xv, &wv) in xr.iter_mut().zip(w) {
            *xv = (*xv * scale) * wv;
        }
    }
}

/// `out = w · x` for the first `n` rows of `x` (each `w.cols` wide).
fn matmul(out: &mut [f32], w: &QTensor, x: &[f32], n: usize, acts: &mut QActs) {
    acts.quantize(quant::vec_dot_type(w.ty), &x[..n * w.cols], n, w.cols);
    quant::matmul(&mut out[..n * w.rows], w, acts);
}

/// [`matmul`] for a block's matrix, which may be streamed from the store.
fn mat_mul(out: &mut [f32], w: &Mat, x: &[f32], n: usize, acts: &mut QActs) -> Result<()> {
    acts.quantize(quant::vec_dot_type(w.ty), &x[..n * w.cols], n, w.cols);
    w.matmul(&mut out[..n * w.rows], acts)
}

/// Like [`mat_mul`] for a second weight on the same input: reuses the
/// quantized activations when the weight wants the same type.
fn mat_mul_again(out: &mut [f32], w: &Mat, x: &[f32], n: usize, acts: &mut QActs) -> Result<()> {
    if acts.ty() == quant::vec_dot_type(w.ty) && acts.n() == n && acts.cols() == w.cols {
        w.matmul(&mut out[..n * w.rows], acts)
    } else {
        mat_mul(out, w, x, n, acts)
    }
}

/// cos/sin of each rotated pair at position `pos` for RoPE frequency base
/// `base`, linear scale `freq_scale`, the file's frequency factors (empty:
/// all 1) and YaRN (ggml's rope cache and `rope_yarn`): theta_extrap =
/// pos * base^(-2i/rope_dim) / factor_i, theta_interp = freq_scale *
/// theta_extrap; YaRN mixes them by a ramp over the correction dims and
/// scales cos/sin by attn_factor * (1 + 0.1 ln(1 / freq_scale)).
fn rope_table(
    rope_dim: usize,
    factors: &[f32],
    y: &Yarn,
    (base, freq_scale): (f32, f32),
    pos: usize,
    table: &mut Vec<(f32, f32)>,
) {
    table.clear();
    let theta_scale = base.powf(-2.0 / rope_dim as f32);
    let corr = yarn_corr_dims(rope_dim, y.n_ctx_orig, base, y.beta_fast, y.beta_slow);
    let mut mscale = y.attn_factor;
    if y.ext_factor != 0.0 {
        mscale *= 1.0 + 0.1 * (1.0 / freq_scale).ln();
    }
    let mut theta = pos as f32;
    for i in 0..rope_dim / 2 {
        let ff = factors.get(i).copied().unwrap_or(1.0);
        let extrap = theta / ff;
        let interp = freq_scale * extrap;
        let t = if y.ext_factor != 0.0 {
            let ramp = {
                let v = (i as f32 - corr[0]) / (corr[1] - corr[0]).max(0.001);
                1.0 - v.clamp(0.0, 1.0)
            } * y.ext_factor;
            interp * (1.0 - ramp) + extrap * ramp
        } else {
            interp
        };
        table.push((t.cos() * mscale, t.sin() * mscale));
        theta *= theta_scale;
    }
}

/// ggml_rope_yarn_corr_dims: the dims where YaRN's ramp starts and ends.
fn yarn_corr_dims(n_dims: usize, n_ctx_orig: usize, base: f32, fast: f32, slow: f32) -> [f32; 2] {
    let dim = |n_rot: f32| {
        n_dims as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    [
        dim(fast).floor().max(0.0),
        dim(slow).ceil().min(n_dims as f32 - 1.0),
    ]
}

/// Rotate the pairs of each head of `v` (n_heads * head_dim wide): pair i is
/// (2i, 2i + 1) for NORM RoPE, (i, i + rope_dim / 2) for NEOX.
fn rope(v: &mut [f32], head_dim: usize, style: RopeStyle, table: &[(f32, f32)]) {
    let half = table.len();
    for head in v.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Norm => {
                for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(table) {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0 * cos - x1 * sin;
                    pair[1] = x0 * sin + x1 * cos;
                }
            }
            RopeStyle::Neox => {
                let (lo, hi) = head[..2 * half].split_at_mut(half);
                for ((x0, x1), &(cos, sin)) in lo.iter_mut().zip(hi).zip(table) {
                    let (a, b) = (*x0, *x1);
                    *x0 = a * cos - b * sin;
                    *x1 = a * sin + b * cos;
                }
            }
        }
    }
}

/// Add `b` to each row of `x` (rows of `b.len()`).
fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        for (v, &bb) in row.iter_mut().zip(b) {
            *v += bb;
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU (tanh form) as ggml's CPU backend computes it (`GGML_GELU_FP16`):
/// looked up in a table indexed by x rounded to f16, whose entries are f16.
/// The table ([`gelu_table`]) holds [`gelu_ref`] of every f16 value, built
/// once, so this has the bits of [`gelu_ref`] for every input (tests).
/// The forward pass calls [`gelu_with`] with the table hoisted.
#[cfg(test)]
fn gelu(x: f32) -> f32 {
    gelu_with(gelu_table(), x)
}

/// [`gelu`] with the table at hand (hoisted out of loops).
#[inline(always)]
fn gelu_with(table: &[f32; 1 << 16], x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    table[half::f16::from_f32(x).to_bits() as usize]
}

/// `g[i] = gelu(g[i]) * u[i]` (the gated FFN), four values at a time in
/// the simd128 builds (the f16 rounding of the index in SIMD, the table
/// read per lane): the same bits as the scalar loop (tests).
fn gelu_mul(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "gelu_mul: lengths");
    let table = gelu_table();
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = {
        use core::arch::wasm32::*;
        let n4 = g.len() / 4 * 4;
        for (gc, uc) in g[..n4].chunks_exact_mut(4).zip(u[..n4].chunks_exact(4)) {
            // SAFETY: 4 f32 in each chunk.
            let (x, y) = unsafe {
                (
                    v128_load(gc.as_ptr() as *const v128),
                    v128_load(uc.as_ptr() as *const v128),
                )
            };
            let h = crate::quant::f32x4_to_f16(x);
            let t = f32x4(
                table[u32x4_extract_lane::<0>(h) as usize & 0xffff],
                table[u32x4_extract_lane::<1>(h) as usize & 0xffff],
                table[u32x4_extract_lane::<2>(h) as usize & 0xffff],
                table[u32x4_extract_lane::<3>(h) as usize & 0xffff],
            );
            let r = v128_bitselect(f32x4_splat(0.0), t, f32x4_le(x, f32x4_splat(-10.0)));
            let r = v128_bitselect(x, r, f32x4_ge(x, f32x4_splat(10.0)));
            // SAFETY: as above.
            unsafe { v128_store(gc.as_mut_ptr() as *mut v128, f32x4_mul(r, y)) };
        }
        n4
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    for (g, &u) in g[done..].iter_mut().zip(&u[done..]) {
        *g = gelu_with(table, *g) * u;
    }
}

/// [`gelu_ref`] of each f16 value (by its bits), built on first use.
fn gelu_table() -> &'static [f32; 1 << 16] {
    static TABLE: std::sync::OnceLock<Box<[f32; 1 << 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0f32; 1 << 16]);
        for (h, v) in t.iter_mut().enumerate() {
            *v = gelu_f16(half::f16::from_bits(h as u16).to_f32());
        }
        t
    })
}

/// GELU of an f16 value `x`, rounded to f16 (ggml's table entry).
fn gelu_f16(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const GELU_COEF_A: f32 = 0.044715;
    let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh());
    half::f16::from_f32(y).to_f32()
}

/// The reference [`gelu`], computed per call.
#[cfg(test)]
fn gelu_ref(x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    gelu_f16(half::f16::from_f32(x).to_f32())
}

/// `cap * tanh(x / cap)` on every element (soft-capping).
fn softcap(x: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for v in x {
        *v = (*v * inv).tanh() * cap;
    }
}

/// Evaluate `tokens` at positions `pos0..`, appending to `kv`. For every
/// token index `i >= logits_from`, calls `sink(i, logits)` with its logits
/// (`c.logit_rows` of the vocabulary). `tokens.len() <= UBATCH`.
///
/// The pass is the sequence of the steps below; a sharded pass (see
/// [`Pass`]) runs the same steps, pausing after each partial sum
/// (attention output, down projection) for the host to add the shards' up.
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
    let head = cache.layer(src, cache.head_index())?;
    let hw = head.head(c.logit_rows.clone())?;
    embed(c, s, &hw, tokens)?;
    for l in 0..c.n_layers {
        // Read ahead the next layer while this one computes.
        cache.prefetch(src, l + 1);
        let layer = cache.layer(src, l)?;
        let w = layer.block(c, src)?;
        attn_partial(c, kv, s, &w, l, n, pos0)?;
        attn_finish(c, s, &w, n);
        ffn_partial(c, s, &w, n)?;
        ffn_finish(c, s, &w, n);
    }
    logits(c, s, &hw, n, logits_from, sink);
    Ok(())
}

/// Where a sharded pass is: the partial sum in `State::xb2` is the output
/// of the attention (`Attn(l)`) or of the feed-forward (`Ffn(l)`) of layer l.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Attn(usize),
    Ffn(usize),
}

/// A sharded forward pass in progress (a state machine the host drives:
/// [`Pass::begin`], then [`Pass::resume`] with each reduced vector). It
/// holds the head and the current layer, so each layer is looked up in the
/// cache once per pass, as in [`forward`].
#[derive(Clone)]
pub struct Pass {
    pub n: usize,
    pub pos0: usize,
    pub logits_from: usize,
    pub stage: Stage,
    head: Rc<LayerData>,
    layer: Rc<LayerData>,
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("n", &self.n)
            .field("pos0", &self.pos0)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl Pass {
    /// Embed `tokens` and run up to the first partial sum (layer 0's
    /// attention output), left in `s` (see [`State::partial`]).
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        c: &Config,
        cache: &mut LayerCache,
        src: &dyn ByteSource,
        kv: &mut KvCache,
        s: &mut State,
        tokens: &[u32],
        pos0: usize,
        logits_from: usize,
    ) -> Result<Pass> {
        let n = tokens.len();
        if c.n_layers == 0 {
            return Err(Error::InvalidModel("the model has no layers".into()));
        }
        let head = cache.layer(src, cache.head_index())?;
        embed(c, s, &head.head(c.logit_rows.clone())?, tokens)?;
        cache.prefetch(src, 1);
        let layer = cache.layer(src, 0)?;
        attn_partial(c, kv, s, &layer.block(c, src)?, 0, n, pos0)?;
        Ok(Pass {
            n,
            pos0,
            logits_from,
            stage: Stage::Attn(0),
            head,
            layer,
        })
    }

    /// Take the sum over shards of the last partial (`reduced`, n * n_embd)
    /// and run to the next partial (returns false), or to the logits, which
    /// go to `sink` as in [`forward`] (returns true: the pass is done).
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        &mut self,
        c: &Config,
        cache: &mut LayerCache,
        src: &dyn ByteSource,
        kv: &mut KvCache,
        s: &mut State,
        reduced: &[f32],
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<bool> {
        let (n, dim) = (self.n, c.n_embd);
        if reduced.len() != n * dim {
            return Err(Error::InvalidInput(format!(
                "the reduced vector has {} values, expected {} ({n} tokens of {dim})",
                reduced.len(),
                n * dim
            )));
        }
        s.xb2[..n * dim].copy_from_slice(reduced);
        let w = self.layer.block(c, src)?;
        match self.stage {
            Stage::Attn(l) => {
                attn_finish(c, s, &w, n);
                ffn_partial(c, s, &w, n)?;
                self.stage = Stage::Ffn(l);
                Ok(false)
            }
            Stage::Ffn(l) => {
                ffn_finish(c, s, &w, n);
                if l + 1 < c.n_layers {
                    cache.prefetch(src, l + 2);
                    let next = cache.layer(src, l + 1)?;
                    attn_partial(c, kv, s, &next.block(c, src)?, l + 1, n, self.pos0)?;
                    self.layer = next;
                    self.stage = Stage::Attn(l + 1);
                    Ok(false)
                } else {
                    let hw = self.head.head(c.logit_rows.clone())?;
                    logits(c, s, &hw, n, self.logits_from, sink);
                    Ok(true)
                }
            }
        }
    }
}

impl State {
    /// The partial sum a sharded pass paused at (n * n_embd values).
    pub fn partial(&self, n: usize, dim: usize) -> &[f32] {
        &self.xb2[..n * dim]
    }
}

/// 1. Token embeddings: dequantize one row of token_embd per token
///    (times embd_scale: Gemma's sqrt(n_embd)).
fn embed(c: &Config, s: &mut State, hw: &HeadWeights, tokens: &[u32]) -> Result<()> {
    let n = tokens.len();
    s.ensure(c, n);
    let dim = c.n_embd;
    for (i, &t) in tokens.iter().enumerate() {
        if t as usize >= c.n_vocab {
            return Err(Error::InvalidInput(format!(
                "token id {t} is outside the vocabulary ({})",
                c.n_vocab
            )));
        }
        let x = &mut s.x[i * dim..(i + 1) * dim];
        hw.embed(t as usize, x);
        if c.embd_scale != 1.0 {
            x.iter_mut().for_each(|v| *v *= c.embd_scale);
        }
    }
    Ok(())
}

/// Steps 2 to 5 of layer `l` up to the attention output projection, whose
/// result (this instance's heads' share of it) is left in `s.xb2`.
#[allow(clippy::too_many_arguments)]
fn attn_partial(
    c: &Config,
    kv: &mut KvCache,
    s: &mut State,
    w: &BlockWeights,
    l: usize,
    n: usize,
    pos0: usize,
) -> Result<()> {
    let (dim, hd, kv_dim, q_dim) = (c.n_embd, c.head_dim, c.kv_dim(), c.q_dim());
    // 2. Attention: RMSNorm, then q, k, v projections (plus their biases
    //    where the file has them); per-head RMSNorm of q and k where the
    //    architecture has it.
    rmsnorm(
        &mut s.xb[..n * dim],
        &s.x[..n * dim],
        w.attn_norm,
        c.norm_eps,
    );
    mat_mul(&mut s.q, &w.wq, &s.xb, n, &mut s.acts)?;
    mat_mul_again(&mut s.k, &w.wk, &s.xb, n, &mut s.acts)?;
    mat_mul_again(&mut s.v, &w.wv, &s.xb, n, &mut s.acts)?;
    for (x, b) in [(&mut s.q, w.bq), (&mut s.k, w.bk), (&mut s.v, w.bv)] {
        if let Some(b) = b {
            add_bias(&mut x[..n * b.len()], b);
        }
    }
    if let Some(qn) = w.q_norm {
        rmsnorm_rows(&mut s.q[..n * q_dim], qn, c.norm_eps);
    }
    if let Some(kn) = w.k_norm {
        rmsnorm_rows(&mut s.k[..n * kv_dim], kn, c.norm_eps);
    }

    // 3. RoPE on q and k (this layer's base and scale); store k, v at
    //    their positions, rounded to f16 (ties to even) as llama.cpp's
    //    default cache stores them.
    //    With an attention temperature (mistral3), q is then scaled by
    //    position.
    let base_scale = c.rope_of(l);
    let factors = c.rope_factors(kv.n_ctx);
    for i in 0..n {
        let pos = pos0 + i;
        rope_table(c.rope_dim, factors, &c.yarn, base_scale, pos, &mut s.rope);
        rope(
            &mut s.q[i * q_dim..(i + 1) * q_dim],
            hd,
            c.rope_style,
            &s.rope,
        );
        rope(
            &mut s.k[i * kv_dim..(i + 1) * kv_dim],
            hd,
            c.rope_style,
            &s.rope,
        );
        if let Some(t) = c.attn_temp {
            let f = t.at(pos);
            s.q[i * q_dim..(i + 1) * q_dim]
                .iter_mut()
                .for_each(|v| *v *= f);
        }
        kv.k[l].store(pos * kv_dim, &s.k[i * kv_dim..(i + 1) * kv_dim]);
        kv.v[l].store(pos * kv_dim, &s.v[i * kv_dim..(i + 1) * kv_dim]);
    }

    // 4. Causal grouped-query attention: head h reads kv head h / (n_head / n_head_kv)
    //    (`Config::kv_head`: a shard's heads may start inside a group).
    //    On a sliding-window layer the query at pos sees keys pos - n_swa < t <= pos.
    //    Runs of up to HEADS consecutive heads reading the same kv head,
    //    for several queries of the batch at a time (each key row read once
    //    for all of them).
    let window = c.window(l);
    let kv_l = |kvh: usize| KvHead {
        k: kv.k[l].rows(),
        v: kv.v[l].rows(),
        kv_dim,
        kvh: kvh * hd,
    };
    let mut h = 0;
    while h < c.n_head {
        let kvh = c.kv_head(h);
        let mut g = 1;
        while g < HEADS && h + g < c.n_head && c.kv_head(h + g) == kvh {
            g += 1;
        }
        let per_pass = attention::queries_per_pass(g);
        s.attn.forget();
        for i0 in (0..n).step_by(per_pass) {
            let nq = per_pass.min(n - i0);
            let mut ts: [std::ops::Range<usize>; attention::LANES] = Default::default();
            for (r, pos) in ts.iter_mut().zip(pos0 + i0..).take(nq) {
                *r = window.map_or(0, |w| (pos + 1).saturating_sub(w))..pos + 1;
            }
            let a = i0 * q_dim + h * hd;
            // An f32 cache has no f16 kernel to follow: always the f32 one.
            let attend = if s.prompt_attention || kv.ty == KvType::F32 {
                attention::attend_batch_f32
            } else {
                attend_batch
            };
            attend(
                hd,
                g,
                &s.q[a..],
                q_dim,
                &ts[..nq],
                &kv_l(kvh),
                c.attn_scale,
                c.attn_softcap,
                &mut s.attn,
                &mut s.att[a..],
            );
        }
        h += g;
    }

    // 5. Output projection (RMSNorm'd where the architecture has a
    //    post-attention norm) and residual.
    mat_mul(&mut s.xb2, &w.wo, &s.att, n, &mut s.acts)
}

/// The attention output (summed over shards) into the residual stream,
/// RMSNorm'd first where the architecture has a post-attention norm.
fn attn_finish(c: &Config, s: &mut State, w: &BlockWeights, n: usize) {
    residual(
        &mut s.x,
        &mut s.xb,
        &s.xb2,
        w.attn_post_norm,
        n * c.n_embd,
        c.norm_eps,
    );
}

/// 6. Feed-forward: RMSNorm, act(gate) * up (SwiGLU or GeGLU), down
///    projection (this instance's rows' share of it) into `s.xb2`.
fn ffn_partial(c: &Config, s: &mut State, w: &BlockWeights, n: usize) -> Result<()> {
    let dim = c.n_embd;
    rmsnorm(
        &mut s.xb[..n * dim],
        &s.x[..n * dim],
        w.ffn_norm,
        c.norm_eps,
    );
    mat_mul(&mut s.hb, &w.w_gate, &s.xb, n, &mut s.acts)?;
    mat_mul_again(&mut s.hb2, &w.w_up, &s.xb, n, &mut s.acts)?;
    let (g, u) = (&mut s.hb[..n * c.n_ff], &s.hb2[..n * c.n_ff]);
    match c.ffn_act {
        FfnAct::Silu => g.iter_mut().zip(u).for_each(|(g, &u)| *g = silu(*g) * u),
        FfnAct::GeluTanh => gelu_mul(g, u),
    }
    mat_mul(&mut s.xb2, &w.w_down, &s.hb, n, &mut s.acts)
}

/// The feed-forward output (summed over shards) into the residual stream,
/// after the post-FFN norm where present.
fn ffn_finish(c: &Config, s: &mut State, w: &BlockWeights, n: usize) {
    residual(
        &mut s.x,
        &mut s.xb,
        &s.xb2,
        w.ffn_post_norm,
        n * c.n_embd,
        c.norm_eps,
    );
}

/// 7. Final RMSNorm and the output matrix (this instance's vocabulary
///    rows), only for the rows that want logits; soft-capped where the
///    architecture says so.
fn logits(
    c: &Config,
    s: &mut State,
    hw: &HeadWeights,
    n: usize,
    logits_from: usize,
    sink: &mut dyn FnMut(usize, &[f32]),
) {
    if logits_from >= n {
        return;
    }
    let dim = c.n_embd;
    let nv = hw.output.rows;
    let rows = n - logits_from;
    rmsnorm(
        &mut s.xb[..rows * dim],
        &s.x[logits_from * dim..n * dim],
        hw.output_norm,
        c.norm_eps,
    );
    if s.logits.len() < rows * nv {
        s.logits.resize(rows * nv, 0.0);
    }
    matmul(&mut s.logits, &hw.output, &s.xb, rows, &mut s.acts);
    if let Some(cap) = c.final_softcap {
        softcap(&mut s.logits[..rows * nv], cap);
    }
    for r in 0..rows {
        sink(logits_from + r, &s.logits[r * nv..(r + 1) * nv]);
    }
}

/// `x += out` over the first `len` values, with `out` RMSNorm'd by `norm`
/// first when the architecture has that norm (`tmp` holds it).
fn residual(
    x: &mut [f32],
    tmp: &mut [f32],
    out: &[f32],
    norm: Option<&[f32]>,
    len: usize,
    eps: f32,
) {
    let add = match norm {
        Some(w) => {
            rmsnorm(&mut tmp[..len], &out[..len], w, eps);
            &tmp[..len]
        }
        None => &out[..len],
    };
    for (x, &d) in x[..len].iter_mut().zip(add) {
        *x += d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neox_rope_rotates_i_with_i_plus_half() {
        // Two heads of 8, all of it rotated: pair i is (i, i + 4).
        let table: Vec<(f32, f32)> = (0..4)
            .map(|i| ((i as f32).cos(), (i as f32).sin()))
            .collect();
        let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut y = x.clone();
        rope(&mut y, 8, RopeStyle::Neox, &table);
        for h in 0..2 {
            for (i, &(cos, sin)) in table.iter().enumerate() {
                let (a, b) = (x[h * 8 + i], x[h * 8 + i + 4]);
                assert_eq!(y[h * 8 + i], a * cos - b * sin);
                assert_eq!(y[h * 8 + i + 4], a * sin + b * cos);
            }
        }
        // NORM pairs neighbours instead.
        let mut z = x.clone();
        rope(&mut z, 8, RopeStyle::Norm, &table);
        assert_eq!(z[1], x[0] * table[0].1 + x[1] * table[0].0);
        assert_ne!(y, z);
    }

    #[test]
    fn rope_freq_factors_divide_theta() {
        // rope_dim 8, base 10000, pos 7, linear scale 0.5, factors (1, 2, 4, 8):
        // theta_i = 7 * 10000^(-2i/8) / f_i * 0.5, against float64.
        let f = [1.0f32, 2.0, 4.0, 8.0];
        let mut t = Vec::new();
        rope_table(8, &f, &Yarn::NONE, (10000.0, 0.5), 7, &mut t);
        for (i, &(cos, sin)) in t.iter().enumerate() {
            let theta = 7.0 * 10000f64.powf(-2.0 * i as f64 / 8.0) / f[i] as f64 * 0.5;
            assert!((cos as f64 - theta.cos()).abs() < 1e-6, "pair {i}");
            assert!((sin as f64 - theta.sin()).abs() < 1e-6, "pair {i}");
        }
        // Pair 0 by hand: theta 3.5.
        assert!((t[0].0 - 3.5f32.cos()).abs() < 1e-6);
        // No factors is factors of 1.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        rope_table(8, &[], &Yarn::NONE, (10000.0, 1.0), 5, &mut a);
        rope_table(8, &[1.0; 4], &Yarn::NONE, (10000.0, 1.0), 5, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn yarn_matches_a_float64_reference() {
        // rope_dim 64, base 100000, factor 4, original context 2048, beta 32/1,
        // pos 37. ggml_rope_yarn_corr_dims: 64 ln(2048 / (32 2π)) / (2 ln 1e5)
        // = 6.45 -> 6; 64 ln(2048 / 2π) / (2 ln 1e5) = 16.08 -> 17.
        let y = Yarn {
            ext_factor: 1.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig: 2048,
        };
        assert_eq!(yarn_corr_dims(64, 2048, 1e5, 32.0, 1.0), [6.0, 17.0]);
        let mut t = Vec::new();
        rope_table(64, &[], &y, (1e5, 0.25), 37, &mut t);
        let mscale = 1.0 + 0.1 * 4f64.ln();
        for (i, &(cos, sin)) in t.iter().enumerate() {
            let extrap = 37.0 * 1e5f64.powf(-2.0 * i as f64 / 64.0);
            let interp = 0.25 * extrap;
            let ramp = 1.0 - ((i as f64 - 6.0) / 11.0).clamp(0.0, 1.0);
            let theta = interp * (1.0 - ramp) + extrap * ramp;
            assert!((cos as f64 - theta.cos() * mscale).abs() < 2e-5, "pair {i}");
            assert!((sin as f64 - theta.sin() * mscale).abs() < 2e-5, "pair {i}");
        }
        // Pairs up to 6 extrapolate (theta unscaled), from 17 interpolate.
        assert!((t[0].1 as f64 - 37f64.sin() * mscale).abs() < 2e-5);
    }

    #[test]
    fn gelu_is_ggmls_f16_table() {
        let exact = |x: f64| {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        };
        for i in -2000..2000 {
            let x = i as f32 * 0.0045;
            let g = gelu(x);
            // An f16 value, within f16 rounding of the exact GELU.
            assert_eq!(half::f16::from_f32(g).to_f32(), g);
            assert!(
                (g as f64 - exact(x as f64)).abs() <= 2e-3 * (1.0 + x.abs() as f64),
                "{x}"
            );
        }
        assert_eq!(gelu(-10.0), 0.0);
        assert_eq!(gelu(12.5), 12.5);
    }

    #[test]
    fn gelu_mul_has_the_bits_of_the_scalar_loop() {
        // Around the clamps, f16 rounding ties and subnormals, NaN and
        // infinities, and a length that leaves a tail.
        let mut g: Vec<f32> = vec![
            -10.0,
            -9.999_999,
            10.0,
            9.999_999,
            -10.000_001,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e-8,
            -3e-6,
            6.1e-5,
            1.000_488_3,
            -2.001_953,
        ];
        let mut x = 0x1234_5678u32;
        for _ in 0..4000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            g.push((x as f32 / u32::MAX as f32 - 0.5) * 24.0);
        }
        g.push(3.0);
        let u: Vec<f32> = (0..g.len()).map(|i| 0.25 + (i % 7) as f32 - 3.0).collect();
        let want: Vec<u32> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| (gelu(g) * u).to_bits())
            .collect();
        let mut got = g.clone();
        gelu_mul(&mut got, &u);
        for (i, (a, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), *w, "at {i}: gelu({}) * {}", g[i], u[i]);
        }
    }

    #[test]
    fn gelu_table_has_the_bits_of_the_formula() {
        // Every f16 value, the values around each (rounding to f16 in
        // between), the bounds, and non-finite inputs.
        for h in 0..=u16::MAX {
            let x = half::f16::from_bits(h).to_f32();
            for x in [x, x.next_up(), x.next_down()] {
                let (g, r) = (gelu(x), gelu_ref(x));
                assert!(
                    g.to_bits() == r.to_bits() || (g.is_nan() && r.is_nan()),
                    "{x}: {g} vs {r}"
                );
            }
        }
        for x in [
            -10.0f32,
            10.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
        ] {
            assert_eq!(gelu(x).to_bits(), gelu_ref(x).to_bits(), "{x}");
        }
        assert!(gelu(f32::NAN).is_nan());
    }
}
