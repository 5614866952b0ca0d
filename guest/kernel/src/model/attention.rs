//! Attention over the KV cache, as llama.cpp's CPU flash attention computes
//! it with its default f16 cache. Two kernels, as llama.cpp has two:
//!
//! - [`attend_batch`], its one-query kernel (decode, and micro-batches of
//!   fewer than 64 tokens): q rounded to f16, q·k in f32, an online softmax
//!   over the positions in order, and the weighted sum of values
//!   accumulated in f16.
//! - [`attend_batch_f32`], its tiled prompt kernel (micro-batches of 64
//!   tokens or more): q in f32, q·k in f32, softmax weights in f32 and the
//!   weighted sum of values accumulated in f32.
//!
//! The cache holds f16 bits ([`super::forward::KvCache`]); both kernels
//! widen the rows they read to f32 ([`widen_f16`], exact), so they compute
//! on the same values as llama.cpp's f16 cache. An f32 cache
//! ([`super::forward::KvType::F32`]) is read as it is, by
//! [`attend_batch_f32`] only.
//!
//! The scalar functions are the reference; the simd128 paths give the same
//! bits (tested as wasm32).

#[cfg(test)]
use half::f16;

/// `x` rounded to the nearest f16 value (ties to even), as f32: what
/// storing it in an f16 and reading it back gives, without a conversion
/// routine (wasm has no f16 instructions).
#[inline(always)]
pub(super) fn f16r(x: f32) -> f32 {
    let a = x.abs();
    if a < 6.103_515_6e-5 {
        // f16 subnormals (and zero): multiples of 2^-24, exact in f32.
        (x * 16_777_216.0).round_ties_even() * (1.0 / 16_777_216.0)
    } else if a < 65_520.0 {
        // Normal: keep 10 mantissa bits, rounding the 13 dropped ones to
        // nearest even (a carry into the exponent is the right result).
        let b = x.to_bits();
        f32::from_bits((b + 0xfff + ((b >> 13) & 1)) & !0x1fff)
    } else if a.is_nan() {
        x
    } else {
        f32::INFINITY.copysign(x)
    }
}

/// Query heads a pass of [`attend_batch`] takes from one kv head's group.
pub(super) const HEADS: usize = 4;

/// (query, head) pairs of one pass of [`attend_batch`]: their q·k sums fill
/// up to 4 f32x4.
pub(super) const LANES: usize = 16;

/// Queries per pass of [`attend_batch`] for `g` heads (1..=HEADS): as many
/// as fill [`LANES`], or 4 where `g` does not divide 4 (3 heads: 12 lanes,
/// three whole vectors, rather than 15 in four).
pub(super) fn queries_per_pass(g: usize) -> usize {
    if HEADS.is_multiple_of(g) {
        LANES / g
    } else {
        HEADS
    }
}

/// A layer's cached keys or values: f16 bits or f32.
#[derive(Clone, Copy)]
pub(super) enum KvRows<'a> {
    F16(&'a [u16]),
    F32(&'a [f32]),
}

impl KvRows<'_> {
    /// Values `at..at + dst.len()` as f32 into `dst`.
    #[inline(always)]
    fn widen_into(&self, at: usize, dst: &mut [f32]) {
        match self {
            KvRows::F16(h) => widen_f16(dst, &h[at..at + dst.len()]),
            KvRows::F32(x) => dst.copy_from_slice(&x[at..at + dst.len()]),
        }
    }

    /// Value `at` as f32 (for the references).
    #[cfg(test)]
    fn get(&self, at: usize) -> f32 {
        match self {
            KvRows::F16(h) => f32_of(h[at]),
            KvRows::F32(x) => x[at],
        }
    }

    /// Where the rows are (to recognize them again).
    fn addr(&self) -> usize {
        match self {
            KvRows::F16(h) => h.as_ptr() as usize,
            KvRows::F32(x) => x.as_ptr() as usize,
        }
    }
}

/// Where one pass of [`attend_batch`] reads its keys and values: the layer's
/// cache rows (`kv_dim` values wide) and the kv head's offset `kvh` in
/// them.
pub(super) struct KvHead<'a> {
    pub k: KvRows<'a>,
    pub v: KvRows<'a>,
    pub kv_dim: usize,
    pub kvh: usize,
}

/// Scratch of [`attend_batch`].
#[derive(Default)]
pub(super) struct Scratch {
    /// (LANES, head_dim) the lanes' queries rounded to f16: one after the
    /// other (scalar), or per 4 lanes transposed, `[4 i + r]` = lane r's
    /// element i (simd128).
    qh: Vec<f32>,
    /// (LANES, head_dim) the lanes' f16 value accumulators.
    acc: Vec<f32>,
    /// (head_dim) the position's value row widened to f64, once for all
    /// lanes (what [`add_scaled_f16`] widens each value to).
    vw: Vec<f64>,
    /// (LANES, positions) [`attend_batch_f32`]'s scores, then weights.
    w: Vec<f32>,
    /// (head_dim) [`attend_batch`]'s key row of a position widened to f32.
    kf: Vec<f32>,
    /// (head_dim) [`attend_batch`]'s value row of a position widened to f32.
    vf: Vec<f32>,
    /// [`attend_batch_f32`]'s widened rows, kept from pass to pass of one
    /// kv head: its keys and values at positions `wide.lo..wide.hi`,
    /// (positions, head_dim) each.
    kw: Vec<f32>,
    vw32: Vec<f32>,
    wide: Option<Widened>,
}

/// Which rows [`Scratch::kw`] and [`Scratch::vw32`] hold.
#[derive(Clone, Copy, PartialEq)]
struct Widened {
    /// The cache's key rows (their address), their width, the kv head's
    /// offset in them and its width.
    k: usize,
    kv_dim: usize,
    kvh: usize,
    hd: usize,
    lo: usize,
    hi: usize,
}

impl Scratch {
    /// Drop the widened rows kept for [`attend_batch_f32`]: call before
    /// the passes of another kv head or layer, and after the cache rows
    /// changed (every new batch).
    pub fn forget(&mut self) {
        self.wide = None;
    }

    /// Rows `lo..hi` of `kv`'s keys and values widened into `kw` and
    /// `vw32` (reusing rows kept since the last [`Scratch::forget`] for
    /// the same kv head); returns the position of their first row.
    fn widen_rows(&mut self, kv: &KvHead, hd: usize, lo: usize, hi: usize) -> usize {
        let (from, start) = match self.wide {
            Some(w)
                if (w.k, w.kv_dim, w.kvh, w.hd) == (kv.k.addr(), kv.kv_dim, kv.kvh, hd)
                    && w.lo <= lo =>
            {
                (w.hi.max(lo), w.lo)
            }
            _ => (lo, lo),
        };
        let end = hi.max(from);
        let need = (end - start) * hd;
        if self.kw.len() < need {
            self.kw.resize(need, 0.0);
            self.vw32.resize(need, 0.0);
        }
        for t in from..end {
            let (row, at) = (t * kv.kv_dim + kv.kvh, (t - start) * hd);
            kv.k.widen_into(row, &mut self.kw[at..at + hd]);
            kv.v.widen_into(row, &mut self.vw32[at..at + hd]);
        }
        self.wide = Some(Widened {
            k: kv.k.addr(),
            kv_dim: kv.kv_dim,
            kvh: kv.kvh,
            hd,
            lo: start,
            hi: end,
        });
        start
    }
}

/// `dst[i]` = the f16 of bits `src[i]`, as f32 (exact: every f16 is an
/// f32). In simd128 8 values per step, with the bits of the scalar
/// conversion (tested as wasm32 on every f16).
#[inline(always)]
pub(super) fn widen_f16(dst: &mut [f32], src: &[u16]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = simd::widen_f16(dst, src);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    for (d, &h) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = crate::quant::f16_to_f32(h);
    }
}

/// [`attend_f16`] for `g` (1..=HEADS) consecutive query heads of `hd`
/// values that read the kv head `kv`, for `ts.len()` queries (at most
/// [`queries_per_pass`]`(g)`): query i's head j is `q[i * stride + j * hd..]`
/// (`hd` values), sees the positions `ts[i]`, and its result goes to the same
/// place in `out`. Each key row is read once for all of them: in simd128
/// their q·k sums run in the lanes of f32x4 vectors, each lane adding its
/// products in index order as [`dot_in_order`] does; positions outside a
/// query's range leave it untouched. So every (query, head) gets the bits of
/// [`attend_f16`] (tested, also as wasm32).
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_batch(
    hd: usize,
    g: usize,
    q: &[f32],
    stride: usize,
    ts: &[std::ops::Range<usize>],
    kv: &KvHead,
    scale: f32,
    softcap: Option<f32>,
    sc: &mut Scratch,
    out: &mut [f32],
) {
    let (n, at) = lanes(hd, g, q, stride, ts, sc, f16r);
    sc.vw.resize(hd, 0.0);
    sc.kf.resize(hd, 0.0);
    sc.vf.resize(hd, 0.0);
    let acc = &mut sc.acc[..n * hd];
    acc.fill(0.0);
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut sum = [0f32; LANES];
    let (t_lo, t_hi) = positions(ts);
    for t in t_lo..t_hi {
        let row = t * kv.kv_dim + kv.kvh;
        let kr = &mut sc.kf[..hd];
        kv.k.widen_into(row, kr);
        let scores = scores::of(&sc.qh, n, hd, kr);
        let vr = &mut sc.vf[..hd];
        kv.v.widen_into(row, vr);
        for (w, &x) in sc.vw.iter_mut().zip(vr.iter()) {
            *w = f64::from(x);
        }
        for (l, o) in acc.chunks_exact_mut(hd).enumerate() {
            if !ts[l / g].contains(&t) {
                continue;
            }
            let s = scaled(scores[l], scale, softcap);
            let mut ms = 1.0f32;
            let mut vs = 1.0f32;
            if s > m[l] {
                ms = if m[l] == f32::NEG_INFINITY {
                    0.0
                } else {
                    (m[l] - s).exp()
                };
                m[l] = s;
                rescale_f16(o, ms);
            } else {
                vs = (s - m[l]).exp();
            }
            add_scaled_f16(o, vr, &sc.vw, vs);
            sum[l] = sum[l] * ms + vs;
        }
    }
    for (l, a) in acc.chunks_exact(hd).enumerate() {
        let inv = if sum[l] == 0.0 { 0.0 } else { 1.0 / sum[l] };
        for (o, &x) in out[at(l)..at(l) + hd].iter_mut().zip(a) {
            *o = x * inv;
        }
    }
}

/// [`attend_batch`]'s arguments and result, with the arithmetic of
/// llama.cpp's tiled flash attention (`ggml_compute_forward_flash_attn_ext_tiled`,
/// which it runs for micro-batches of 64 queries or more): q kept in f32
/// (not rounded to f16), each q·k summed in f32, the softmax weights
/// `exp(s - max)` in f32 and the weighted sum of values accumulated in f32.
/// llama.cpp folds the maximum in per tile of 64 positions and fuses its
/// multiply-adds; here the maximum is the query's own over all its
/// positions and every product is rounded before its sum (a last-bit
/// difference, far below the f16 rounding that the one-query kernel pays
/// per position, which is why this path is several times faster: no f16
/// emulation per value). Each lane's sums run in position order, so the
/// simd128 path has the bits of the scalar reference
/// [`attend_f32_reference`] (tested, also as wasm32).
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_batch_f32(
    hd: usize,
    g: usize,
    q: &[f32],
    stride: usize,
    ts: &[std::ops::Range<usize>],
    kv: &KvHead,
    scale: f32,
    softcap: Option<f32>,
    sc: &mut Scratch,
    out: &mut [f32],
) {
    let (n, lane) = lanes(hd, g, q, stride, ts, sc, |x| x);
    let (t_lo, t_hi) = positions(ts);
    let span = t_hi - t_lo;
    if sc.w.len() < LANES * span {
        sc.w.resize(LANES * span, 0.0);
    }
    // The rows in f32: an f32 cache's own, or f16 rows widened once for
    // the passes of this kv head. Row t starts at `at(t)` of `kr`, `vr`.
    let (kr, vr, row_stride, t0, off): (&[f32], &[f32], usize, usize, usize) = match (kv.k, kv.v) {
        (KvRows::F32(k), KvRows::F32(v)) => (k, v, kv.kv_dim, 0, kv.kvh),
        _ => {
            let t0 = sc.widen_rows(kv, hd, t_lo, t_hi);
            (&sc.kw, &sc.vw32, hd, t0, 0)
        }
    };
    let at = |t: usize| (t - t0) * row_stride + off;
    // 1. Every lane's scaled (soft-capped) q·k at every position of the
    //    pass; each lane then reads only its own range.
    for t in t_lo..t_hi {
        let s = scores::of(&sc.qh, n, hd, &kr[at(t)..at(t) + hd]);
        for (l, &x) in s.iter().enumerate().take(n) {
            sc.w[l * span + t - t_lo] = scaled(x, scale, softcap);
        }
    }
    // 2. Per lane: the weights, their sum and the weighted sum of values.
    for l in 0..n {
        let r = ts[l / g].clone();
        let w = &mut sc.w[l * span + r.start - t_lo..l * span + r.end - t_lo];
        let inv = softmax_weights(w);
        let o = &mut out[lane(l)..lane(l) + hd];
        weighted_values(o, w, vr, row_stride, at(r.start));
        for x in o.iter_mut() {
            *x *= inv;
        }
    }
}

/// The lanes of a pass of either kernel: lane l is query l / g, head l % g.
/// Checks their count, grows the scratch and puts their queries, through
/// `round`, into `sc.qh`; returns the count and where lane l's values are
/// in `q` and `out`.
#[inline(always)]
fn lanes(
    hd: usize,
    g: usize,
    q: &[f32],
    stride: usize,
    ts: &[std::ops::Range<usize>],
    sc: &mut Scratch,
    round: impl Fn(f32) -> f32,
) -> (usize, impl Fn(usize) -> usize) {
    let n = g * ts.len();
    assert!((1..=HEADS).contains(&g) && (1..=LANES).contains(&n) && hd > 0);
    let at = move |l: usize| (l / g) * stride + (l % g) * hd;
    if sc.qh.len() < LANES * hd {
        sc.qh.resize(LANES * hd, 0.0);
        sc.acc.resize(LANES * hd, 0.0);
    }
    scores::prepare(n, hd, |l, i| round(q[at(l) + i]), &mut sc.qh);
    (n, at)
}

/// The positions any query of a pass sees: from the least start to the
/// greatest end.
fn positions(ts: &[std::ops::Range<usize>]) -> (usize, usize) {
    (
        ts.iter().map(|r| r.start).min().unwrap_or(0),
        ts.iter().map(|r| r.end).max().unwrap_or(0),
    )
}

/// A q·k sum scaled (and soft-capped) as both kernels do it.
#[inline(always)]
fn scaled(s: f32, scale: f32, softcap: Option<f32>) -> f32 {
    match softcap {
        Some(cap) => cap * (s * (scale / cap)).tanh(),
        None => s * scale,
    }
}

/// The scores `w` replaced by `exp(s - max)`, summed in order; returns
/// 1 / sum (0 for an empty or all-zero sum).
#[inline(always)]
fn softmax_weights(w: &mut [f32]) -> f32 {
    let m = w.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let mut sum = 0f32;
    for x in w.iter_mut() {
        *x = (*x - m).exp();
        sum += *x;
    }
    if sum == 0.0 {
        0.0
    } else {
        1.0 / sum
    }
}

/// `o[i] = sum over k of w[k] * v[base + k * stride + i]`, each sum from
/// 0.0 in position order with every product rounded (the scalar reference;
/// simd128 runs 16 values per pass with the same operations per lane).
#[inline(always)]
fn weighted_values(o: &mut [f32], w: &[f32], v: &[f32], stride: usize, base: usize) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = simd::weighted_values(o, w, v, stride, base);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    for (i, oi) in o.iter_mut().enumerate().skip(done) {
        let mut a = 0f32;
        for (k, &p) in w.iter().enumerate() {
            a += p * v[base + k * stride + i];
        }
        *oi = a;
    }
}

/// The f16 of bits `h`, as f32: what a reference reads from the cache.
#[cfg(test)]
fn f32_of(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// One query head of [`attend_batch_f32`], in plain scalar code: its
/// reference.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
fn attend_f32_reference(
    q: &[f32],
    kv: &KvHead,
    ts: std::ops::Range<usize>,
    scale: f32,
    softcap: Option<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    let mut w: Vec<f32> = ts
        .clone()
        .map(|t| {
            let at = t * kv.kv_dim + kv.kvh;
            let kr: Vec<f32> = (at..at + hd).map(|i| kv.k.get(i)).collect();
            scaled(dot_in_order(q, &kr), scale, softcap)
        })
        .collect();
    let inv = softmax_weights(&mut w);
    for (i, o) in out.iter_mut().enumerate() {
        let mut a = 0f32;
        for (k, t) in ts.clone().enumerate() {
            a += w[k] * kv.v.get(t * kv.kv_dim + kv.kvh + i);
        }
        *o = a * inv;
    }
}

/// One query head `q` against the cached keys and values at positions `ts`
/// (kv head offset `kvh`), into `out`: the arithmetic of llama.cpp's CPU
/// flash attention for one query with its default f16 cache
/// (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`): q rounded to f16,
/// q·k in f32, an online softmax over the positions in order, and the
/// weighted sum of values accumulated in f16 (rounded after every position).
/// The f16 accumulator is lossy, but it is what llama.cpp computes when it
/// decodes; matching it brought the teacher-forced median |Δ logprob| over
/// the 14 SmolLM2 variants from 0.066 to 0.065 and the mean of the maxima
/// from 0.82 to 0.72 (tests/tests/coverage.rs). `qh` is scratch (head_dim).
/// The reference of [`attend_batch`] (one query, one head).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
fn attend_f16(
    q: &[f32],
    k: &[u16],
    v: &[u16],
    kv_dim: usize,
    kvh: usize,
    ts: std::ops::Range<usize>,
    scale: f32,
    softcap: Option<f32>,
    qh: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    for (a, &b) in qh.iter_mut().zip(q) {
        *a = f16r(b);
    }
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    out.fill(0.0);
    for t in ts {
        let row = |c: &[u16]| -> Vec<f32> {
            c[t * kv_dim + kvh..t * kv_dim + kvh + hd]
                .iter()
                .map(|&h| f32_of(h))
                .collect()
        };
        let s = scaled(dot_in_order(qh, &row(k)), scale, softcap);
        let mut ms = 1.0f32;
        let mut vs = 1.0f32;
        if s > m {
            ms = if m == f32::NEG_INFINITY {
                0.0
            } else {
                (m - s).exp()
            };
            m = s;
            rescale_f16(out, ms);
        } else {
            vs = (s - m).exp();
        }
        add_scaled_f16_scalar(out, &row(v), vs);
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// The q·k sums of [`attend_batch`].
mod scores {
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    use super::dot_in_order;
    use super::LANES;

    /// The `n` lanes' queries (`q(l, i)`: lane l's element i, of `hd`)
    /// into `qh` (the layout of [`super::Scratch::qh`]).
    #[inline(always)]
    pub fn prepare(n: usize, hd: usize, q: impl Fn(usize, usize) -> f32, qh: &mut [f32]) {
        if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) {
            qh[..n.div_ceil(4) * 4 * hd].fill(0.0);
            for l in 0..n {
                let base = (l / 4) * 4 * hd + l % 4;
                for i in 0..hd {
                    qh[base + 4 * i] = q(l, i);
                }
            }
        } else {
            for l in 0..n {
                for i in 0..hd {
                    qh[l * hd + i] = q(l, i);
                }
            }
        }
    }

    /// Lane l's q · `kr` in `[l]` (l < n), in index order.
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    #[inline(always)]
    pub fn of(qh: &[f32], n: usize, hd: usize, kr: &[f32]) -> [f32; LANES] {
        let mut r = [0f32; LANES];
        for (l, r) in r.iter_mut().enumerate().take(n) {
            *r = dot_in_order(&qh[l * hd..(l + 1) * hd], kr);
        }
        r
    }

    /// Lane l's q · `kr` in `[l]` (l < n): 4 lanes per f32x4, each lane
    /// adding its products in index order from the empty sum, as
    /// [`dot_in_order`](super::dot_in_order) does.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    pub fn of(qh: &[f32], n: usize, hd: usize, kr: &[f32]) -> [f32; LANES] {
        match n.div_ceil(4) {
            1 => vectors::<1>(qh, hd, kr),
            2 => vectors::<2>(qh, hd, kr),
            3 => vectors::<3>(qh, hd, kr),
            _ => vectors::<4>(qh, hd, kr),
        }
    }

    /// [`of`] for `G` vectors of 4 lanes.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn vectors<const G: usize>(qh: &[f32], hd: usize, kr: &[f32]) -> [f32; LANES] {
        use core::arch::wasm32::*;
        assert!(G * 4 <= LANES && qh.len() >= G * 4 * hd && kr.len() == hd);
        let mut acc = [f32x4_splat(std::iter::empty::<f32>().sum()); G];
        // Vector gi of element i is q[gi * hd + i].
        let q = qh.as_ptr() as *const v128;
        let mut ck = kr.chunks_exact(8);
        let mut i = 0;
        for c in ck.by_ref() {
            // The 8 keys in two vectors, each key then broadcast by a lane
            // shuffle (one instruction; a splat load is three).
            // SAFETY: `c` holds 8 f32.
            let kq = unsafe {
                [
                    v128_load(c.as_ptr() as *const v128),
                    v128_load(c.as_ptr().add(4) as *const v128),
                ]
            };
            let keys = [
                i32x4_shuffle::<0, 0, 0, 0>(kq[0], kq[0]),
                i32x4_shuffle::<1, 1, 1, 1>(kq[0], kq[0]),
                i32x4_shuffle::<2, 2, 2, 2>(kq[0], kq[0]),
                i32x4_shuffle::<3, 3, 3, 3>(kq[0], kq[0]),
                i32x4_shuffle::<0, 0, 0, 0>(kq[1], kq[1]),
                i32x4_shuffle::<1, 1, 1, 1>(kq[1], kq[1]),
                i32x4_shuffle::<2, 2, 2, 2>(kq[1], kq[1]),
                i32x4_shuffle::<3, 3, 3, 3>(kq[1], kq[1]),
            ];
            for (e, &kx) in keys.iter().enumerate() {
                for (gi, a) in acc.iter_mut().enumerate() {
                    // SAFETY: i + e < hd and gi < G: inside qh's G * 4 * hd.
                    let qv = unsafe { v128_load(q.add(gi * hd + i + e)) };
                    *a = f32x4_add(*a, f32x4_mul(qv, kx));
                }
            }
            i += 8;
        }
        for &x in ck.remainder() {
            let kx = f32x4_splat(x);
            for (gi, a) in acc.iter_mut().enumerate() {
                // SAFETY: i < hd and gi < G.
                let qv = unsafe { v128_load(q.add(gi * hd + i)) };
                *a = f32x4_add(*a, f32x4_mul(qv, kx));
            }
            i += 1;
        }
        let mut r = [0f32; LANES];
        for (gi, a) in acc.iter().enumerate() {
            // SAFETY: 4 * gi + 4 <= LANES.
            unsafe { v128_store(r.as_mut_ptr().add(4 * gi) as *mut v128, *a) };
        }
        r
    }
}

/// Chunks per loop iteration in the attention helpers below: the engine
/// checks for interruption at every loop back-edge (and spills around the
/// check), so their loops do 16 elements per iteration.
const CHUNK: usize = 16;

/// `sum(a[i] * b[i])` added in index order from the empty sum, what
/// `a.iter().zip(b).map(|(a, b)| a * b).sum()` gives, `CHUNK` terms per
/// loop iteration.
#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128", not(test)),
    allow(dead_code)
)]
#[inline(always)]
fn dot_in_order(a: &[f32], b: &[f32]) -> f32 {
    let mut s: f32 = std::iter::empty::<f32>().sum();
    let (mut ca, mut cb) = (a.chunks_exact(CHUNK), b.chunks_exact(CHUNK));
    for (x, y) in ca.by_ref().zip(cb.by_ref()) {
        let (x, y): (&[f32; CHUNK], &[f32; CHUNK]) = (x.try_into().unwrap(), y.try_into().unwrap());
        for i in 0..CHUNK {
            s += x[i] * y[i];
        }
    }
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// `out[i] = f16r(v[i] * vs + out[i])` (in f64), `CHUNK` values per loop
/// iteration: attention's f16 value accumulator. `vw` is `v` widened to
/// f64 (exact). In simd128, 4 lanes at a time with the same operations
/// (bit-identical, tested as wasm32).
#[inline(always)]
fn add_scaled_f16(out: &mut [f32], v: &[f32], vw: &[f64], vs: f32) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    simd::add_scaled_f16(out, v, vw, vs);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let _ = vw;
        add_scaled_f16_scalar(out, v, vs);
    }
}

/// `out[i] = f16r(out[i] * ms)`: the accumulator rescaled when the running
/// maximum grows (simd128 as [`add_scaled_f16`]).
#[inline(always)]
fn rescale_f16(out: &mut [f32], ms: f32) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    simd::rescale_f16(out, ms);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    for o in out.iter_mut() {
        *o = f16r(*o * ms);
    }
}

/// One value of [`add_scaled_f16`].
#[inline(always)]
fn add_scaled_f16_one(o: &mut f32, x: f32, vs: f32) {
    *o = f16r((f64::from(x) * f64::from(vs) + f64::from(*o)) as f32);
}

/// The scalar reference of [`add_scaled_f16`].
#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128", not(test)),
    allow(dead_code)
)]
#[inline(always)]
fn add_scaled_f16_scalar(out: &mut [f32], v: &[f32], vs: f32) {
    let (mut co, mut cv) = (out.chunks_exact_mut(CHUNK), v.chunks_exact(CHUNK));
    for (o, x) in co.by_ref().zip(cv.by_ref()) {
        let (o, x): (&mut [f32; CHUNK], &[f32; CHUNK]) =
            (o.try_into().unwrap(), x.try_into().unwrap());
        for i in 0..CHUNK {
            add_scaled_f16_one(&mut o[i], x[i], vs);
        }
    }
    for (o, &x) in co.into_remainder().iter_mut().zip(cv.remainder()) {
        add_scaled_f16_one(o, x, vs);
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use super::{add_scaled_f16_one, f16r};
    use core::arch::wasm32::*;

    /// [`super::widen_f16`] for the first `dst.len() / 8 * 8` values (the
    /// count is returned): [`crate::quant::f16x4_finite`] per 4 values;
    /// infinities and NaNs (the f16 exponent all ones), checked per 8
    /// values, take f32's all-ones exponent instead, keeping the sign and
    /// mantissa (as [`crate::quant::f16_to_f32`]).
    #[inline(always)]
    pub fn widen_f16(dst: &mut [f32], src: &[u16]) -> usize {
        let n = dst.len().min(src.len()) / 8 * 8;
        let exp16 = u16x8_splat(0x7c00);
        let exp32 = u32x4_splat(0x0f80_0000);
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n, inside both slices.
            unsafe {
                let h = v128_load(src.as_ptr().add(i) as *const v128);
                let special = v128_any_true(i16x8_eq(v128_and(h, exp16), exp16));
                let halves = [i32x4_extend_low_i16x8(h), i32x4_extend_high_i16x8(h)];
                for (j, x) in halves.into_iter().enumerate() {
                    let mut f = crate::quant::f16x4_finite(x);
                    if special {
                        // Sign, exponent and mantissa at f32's places.
                        let y = v128_and(i32x4_shl(x, 13), u32x4_splat(0x8fff_ffff));
                        let all_ones = i32x4_eq(v128_and(y, exp32), exp32);
                        f = v128_bitselect(v128_or(y, u32x4_splat(0x7f80_0000)), f, all_ones);
                    }
                    v128_store(dst.as_mut_ptr().add(i + 4 * j) as *mut v128, f);
                }
            }
            i += 8;
        }
        n
    }

    /// [`f16r`] of 4 lanes, without a branch: a lane of exponent e (at
    /// least f16's smallest normal exponent, -14) is rounded to a multiple
    /// of 2^(e-10) by adding and subtracting 1.5 * 2^(e+13), whose f32 ulp
    /// that is (round to nearest even, as [`f16r`]'s bit rounding and its
    /// subnormal branch); a zero result takes the sign of `x` (-0 as
    /// [`f16r`]), |x| >= 65520 becomes infinity, NaN stays NaN (a NaN, not
    /// necessarily the same one). Tested against [`f16r`] as wasm32.
    #[inline(always)]
    pub fn f16r4(x: v128) -> v128 {
        let sign = v128_and(x, u32x4_splat(0x8000_0000));
        let e = i32x4_max(
            v128_and(x, u32x4_splat(0x7f80_0000)),
            u32x4_splat(0x3880_0000),
        );
        // 1.5 * 2^(e + 13); garbage for |x| >= 2^114, which is replaced below.
        let m = i32x4_add(e, u32x4_splat((13 << 23) | 0x40_0000));
        let r = v128_or(f32x4_sub(f32x4_add(x, m), m), sign);
        let big = f32x4_ge(f32x4_abs(x), f32x4_splat(65_520.0));
        v128_bitselect(v128_or(f32x4_splat(f32::INFINITY), sign), r, big)
    }

    /// [`f16r4`] for lanes of magnitude below 65520 (or NaN): without the
    /// overflow to infinity, which [`add_scaled_f16`] checks per 16 lanes.
    #[inline(always)]
    fn f16r4_finite(x: v128) -> v128 {
        let sign = v128_and(x, u32x4_splat(0x8000_0000));
        let e = i32x4_max(
            v128_and(x, u32x4_splat(0x7f80_0000)),
            u32x4_splat(0x3880_0000),
        );
        let m = i32x4_add(e, u32x4_splat((13 << 23) | 0x40_0000));
        v128_or(f32x4_sub(f32x4_add(x, m), m), sign)
    }

    /// `(x * vs + o) in f64, as f32` on 4 lanes, before the f16 rounding,
    /// with `x` given widened (`xlo`: lanes 0, 1; `xhi`: lanes 2, 3). `hi`
    /// moves the upper half's two results to lanes 2 and 3 ([`hi`]).
    #[inline(always)]
    fn step(o: v128, xlo: v128, xhi: v128, vs: v128, hi: v128) -> v128 {
        let lo = f64x2_add(f64x2_mul(xlo, vs), f64x2_promote_low_f32x4(o));
        let up = f64x2_add(
            f64x2_mul(xhi, vs),
            f64x2_promote_low_f32x4(i64x2_shuffle::<1, 1>(o, o)),
        );
        v128_or(
            f32x4_demote_f64x2_zero(lo),
            i8x16_swizzle(f32x4_demote_f64x2_zero(up), hi),
        )
    }

    /// The swizzle of [`step`] that moves lanes 0 and 1 to 2 and 3 and zeroes
    /// the rest, hidden from the compiler: with the plain shuffle LLVM merges
    /// the two `f32x4.demote_f64x2_zero` into a 4-lane truncation, which
    /// wasm has not, and emits 4 scalar `f32.demote_f64` instead.
    #[inline(always)]
    fn hi() -> v128 {
        core::hint::black_box(i8x16(
            -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 2, 3, 4, 5, 6, 7,
        ))
    }

    /// `vw` is `v` widened to f64, read in pairs. 16 values per loop
    /// iteration; their results rounded by [`f16r4_finite`] unless one is
    /// at least 65520 in magnitude (or NaN), which takes [`f16r4`] for
    /// the 16: the bits of [`f16r4`] either way, one check per 16 values.
    pub fn add_scaled_f16(out: &mut [f32], v: &[f32], vw: &[f64], vs: f32) {
        assert!(out.len() == v.len() && vw.len() == v.len());
        let vs2 = f64x2_splat(f64::from(vs));
        let hi = hi();
        let (mut co, mut cv) = (out.chunks_exact_mut(16), v.chunks_exact(16));
        let mut cw = vw.chunks_exact(16);
        for ((o, _), w) in co.by_ref().zip(cv.by_ref()).zip(cw.by_ref()) {
            // SAFETY: `o` holds 16 f32 and `w` 16 f64 (wasm loads and
            // stores need no alignment).
            unsafe {
                let po = o.as_mut_ptr() as *mut v128;
                let pw = w.as_ptr() as *const v128;
                let raw: [v128; 4] = std::array::from_fn(|k| {
                    step(
                        v128_load(po.add(k)),
                        v128_load(pw.add(2 * k)),
                        v128_load(pw.add(2 * k + 1)),
                        vs2,
                        hi,
                    )
                });
                let abs = u32x4_splat(0x7fff_ffff);
                let most = u32x4_max(
                    u32x4_max(v128_and(raw[0], abs), v128_and(raw[1], abs)),
                    u32x4_max(v128_and(raw[2], abs), v128_and(raw[3], abs)),
                );
                // 65520.0's bits: lanes at or above it overflow f16 (NaN above).
                if v128_any_true(u32x4_ge(most, u32x4_splat(0x477f_f000))) {
                    for (k, &x) in raw.iter().enumerate() {
                        v128_store(po.add(k), f16r4(x));
                    }
                } else {
                    for (k, &x) in raw.iter().enumerate() {
                        v128_store(po.add(k), f16r4_finite(x));
                    }
                }
            }
        }
        for (o, &x) in co.into_remainder().iter_mut().zip(cv.remainder()) {
            add_scaled_f16_one(o, x, vs);
        }
    }

    /// [`super::weighted_values`] for the first `o.len() / 4 * 4` values
    /// (the count is returned; the caller does the rest): row k of the
    /// values starts at `v[base + k * kv_dim]`. 16 values (then 4) per pass
    /// over the positions, two positions per loop iteration, each lane
    /// adding `w[k] * v` in position order from 0.0 as the reference does.
    pub fn weighted_values(
        o: &mut [f32],
        w: &[f32],
        v: &[f32],
        kv_dim: usize,
        base: usize,
    ) -> usize {
        let hd = o.len();
        if let Some(last) = w.len().checked_sub(1) {
            assert!(base + last * kv_dim + hd <= v.len(), "value rows");
        }
        /// `acc[j] += p * v[r + 4 j ..]` for the `J` vectors at `r`.
        #[inline(always)]
        unsafe fn step<const J: usize>(acc: &mut [v128; J], r: *const f32, p: f32) {
            let pv = f32x4_splat(p);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = f32x4_add(*a, f32x4_mul(v128_load(r.add(4 * j) as *const v128), pv));
            }
        }
        /// Values `i..i + 4 J` of `o`.
        #[inline(always)]
        fn pass<const J: usize>(o: &mut [f32], w: &[f32], v: &[f32], kv_dim: usize, at: usize) {
            let mut acc = [f32x4_splat(0.0); J];
            let mut pairs = w.chunks_exact(2);
            let mut r = at;
            // SAFETY: every row read is `v[r..r + 4 J]` with r = at + k *
            // kv_dim for k < w.len(): inside `v` (asserted by the caller for
            // the row ends, `at` is at most `base + hd - 4 J`).
            unsafe {
                let p = v.as_ptr();
                for pw in pairs.by_ref() {
                    step(&mut acc, p.add(r), pw[0]);
                    step(&mut acc, p.add(r + kv_dim), pw[1]);
                    r += 2 * kv_dim;
                }
                if let [x] = pairs.remainder() {
                    step(&mut acc, p.add(r), *x);
                }
                for (j, a) in acc.iter().enumerate() {
                    v128_store(o.as_mut_ptr().add(4 * j) as *mut v128, *a);
                }
            }
        }
        let mut i = 0;
        while i + 16 <= hd {
            pass::<4>(&mut o[i..i + 16], w, v, kv_dim, base + i);
            i += 16;
        }
        while i + 4 <= hd {
            pass::<1>(&mut o[i..i + 4], w, v, kv_dim, base + i);
            i += 4;
        }
        i
    }

    pub fn rescale_f16(out: &mut [f32], ms: f32) {
        let m = f32x4_splat(ms);
        let mut co = out.chunks_exact_mut(4);
        for o in co.by_ref() {
            // SAFETY: `o` holds 4 f32.
            unsafe {
                let p = o.as_mut_ptr() as *mut v128;
                v128_store(p, f16r4(f32x4_mul(v128_load(p), m)));
            }
        }
        for o in co.into_remainder() {
            *o = f16r(*o * ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attend_f16_is_softmax_attention_within_f16_rounding() {
        let (hd, kv_dim, kvh, n) = (64, 128, 64, 50);
        let mut r = 0x2545_f491_u32;
        let mut rnd = || {
            r ^= r << 13;
            r ^= r >> 17;
            r ^= r << 5;
            (r as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        let q: Vec<f32> = (0..hd).map(|_| 3.0 * rnd()).collect();
        let k: Vec<u16> = (0..n * kv_dim)
            .map(|_| f16::from_f32(rnd()).to_bits())
            .collect();
        let v: Vec<u16> = (0..n * kv_dim)
            .map(|_| f16::from_f32(rnd()).to_bits())
            .collect();
        let (mut qh, mut out) = (vec![0f32; hd], vec![0f32; hd]);
        let scale = 0.125;
        attend_f16(
            &q,
            &k,
            &v,
            kv_dim,
            kvh,
            3..n,
            scale,
            None,
            &mut qh,
            &mut out,
        );
        // Exact softmax attention in f64 over positions 3..n.
        let kv = KvHead {
            k: KvRows::F16(&k),
            v: KvRows::F16(&v),
            kv_dim,
            kvh,
        };
        let exact = exact_attention(&q, &kv, 3..n, scale);
        for (d, (o, &want)) in out.iter().zip(&exact).enumerate() {
            assert!(
                (f64::from(*o) - want).abs() < 2e-3,
                "dim {d}: {o} vs {want}"
            );
        }
    }

    /// A seeded stream of u32 for the SIMD-against-reference tests.
    fn stream(seed: u64) -> impl FnMut() -> u32 {
        use rand_core::{RngCore, SeedableRng};
        let mut g = rand_pcg::Pcg32::seed_from_u64(seed);
        move || g.next_u32()
    }

    /// Exact softmax attention in f64 of the query `q` over the positions
    /// `ts` of `kv`, scores scaled by `scale`.
    fn exact_attention(q: &[f32], kv: &KvHead, ts: std::ops::Range<usize>, scale: f32) -> Vec<f64> {
        let hd = q.len();
        let at = |t: usize| t * kv.kv_dim + kv.kvh;
        let s: Vec<f64> = ts
            .clone()
            .map(|t| {
                q.iter()
                    .zip(at(t)..at(t) + hd)
                    .map(|(a, i)| f64::from(*a) * f64::from(kv.k.get(i)))
                    .sum::<f64>()
                    * f64::from(scale)
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        (0..hd)
            .map(|d| {
                ts.clone()
                    .zip(&s)
                    .map(|(t, x)| (x - m).exp() / z * f64::from(kv.v.get(at(t) + d)))
                    .sum()
            })
            .collect()
    }

    /// A batch kernel: [`attend_batch`] or [`attend_batch_f32`].
    type Kernel = fn(
        usize,
        usize,
        &[f32],
        usize,
        &[std::ops::Range<usize>],
        &KvHead,
        f32,
        Option<f32>,
        &mut Scratch,
        &mut [f32],
    );

    /// One (query, head)'s expected result: `want(q, kv, positions, softcap)`.
    type Reference = dyn FnMut(&[f32], &KvHead, std::ops::Range<usize>, Option<f32>) -> Vec<f32>;

    /// `kernel` over 1..=4 heads per kv head, 1 to queries_per_pass
    /// queries, head sizes 64, 70, 8 and 256, with and without soft-capping,
    /// causal and sliding-window ranges per query: every (query, head) has
    /// the bits of `want(q, kv, positions, softcap)` (as wasm32: the simd128
    /// lanes), and the places of other heads in `out` stay untouched. The
    /// cache holds f16, or with `f32_cache` unrounded f32.
    fn check_batches(seed: u64, kernel: Kernel, want: &mut Reference, f32_cache: bool) {
        let mut next = stream(seed);
        let mut rnd = || (next() as f32 / u32::MAX as f32 - 0.5) * 6.0;
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let mut sc = Scratch::default();
        for (hd, n_kv) in [(64, 2), (70, 1), (8, 3), (256, 1)] {
            let kv_dim = hd * n_kv;
            let n = 80;
            let k32: Vec<f32> = (0..n * kv_dim).map(|_| rnd()).collect();
            let v32: Vec<f32> = (0..n * kv_dim).map(|_| rnd()).collect();
            let half =
                |x: &[f32]| -> Vec<u16> { x.iter().map(|&x| f16::from_f32(x).to_bits()).collect() };
            let (k16, v16) = (half(&k32), half(&v32));
            let (k, v) = if f32_cache {
                (KvRows::F32(&k32), KvRows::F32(&v32))
            } else {
                (KvRows::F16(&k16), KvRows::F16(&v16))
            };
            let kv = KvHead {
                k,
                v,
                kv_dim,
                kvh: hd * (n_kv - 1),
            };
            for g in 1..=HEADS {
                let stride = (g + 2) * hd;
                for nq in [1, 2, queries_per_pass(g) - 1, queries_per_pass(g)] {
                    let q: Vec<f32> = (0..nq * stride).map(|_| rnd()).collect();
                    // (first position, window, soft-cap)
                    for (p0, w, cap) in [
                        (0, None, None),
                        (nq.min(30), None, Some(2.0f32)),
                        (n - nq, Some(9), None),
                        (n - nq, None, None),
                        (3, Some(2), Some(30.0)),
                    ] {
                        let ts: Vec<_> = (p0..p0 + nq)
                            .map(|pos| w.map_or(0, |w: usize| (pos + 1).saturating_sub(w))..pos + 1)
                            .collect();
                        let mut got = vec![7f32; nq * stride];
                        sc.forget();
                        kernel(hd, g, &q, stride, &ts, &kv, 0.125, cap, &mut sc, &mut got);
                        for (i, r) in ts.iter().enumerate() {
                            for j in 0..g {
                                let at = i * stride + j * hd;
                                assert_eq!(
                                    bits(&got[at..at + hd]),
                                    bits(&want(&q[at..at + hd], &kv, r.clone(), cap)),
                                    "hd {hd} g {g} nq {nq} query {i} head {j} {r:?} {cap:?}"
                                );
                            }
                            assert!(got[i * stride + g * hd..(i + 1) * stride]
                                .iter()
                                .all(|&x| x == 7.0));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_gives_each_query_and_head_its_bits() {
        // attend_batch against attend_f16 per (query, head).
        check_batches(
            1,
            attend_batch,
            &mut |q, kv, r, cap| {
                let hd = q.len();
                let (mut qh, mut want) = (vec![0f32; hd], vec![0f32; hd]);
                let (KvRows::F16(k), KvRows::F16(v)) = (kv.k, kv.v) else {
                    unreachable!("an f16 cache")
                };
                attend_f16(
                    q, k, v, kv.kv_dim, kv.kvh, r, 0.125, cap, &mut qh, &mut want,
                );
                want
            },
            false,
        );
    }

    #[test]
    fn the_prompt_kernel_gives_each_query_and_head_its_bits() {
        // attend_batch_f32 against attend_f32_reference per (query, head)
        // (as wasm32 also its 16- and 4-value passes and scalar tail), and
        // without soft-capping within f32 rounding of exact softmax
        // attention in f64.
        // Both with an f16 cache and with an f32 one (read in place).
        for (seed, f32_cache) in [(3, false), (5, true)] {
            check_batches(
                seed,
                attend_batch_f32,
                &mut |q, kv, r, cap| {
                    let mut want = vec![0f32; q.len()];
                    attend_f32_reference(q, kv, r.clone(), 0.125, cap, &mut want);
                    if cap.is_none() {
                        for (d, (o, exact)) in want
                            .iter()
                            .zip(exact_attention(q, kv, r, 0.125))
                            .enumerate()
                        {
                            assert!(
                                (f64::from(*o) - exact).abs() < 1e-4,
                                "dim {d}: {o} vs {exact}"
                            );
                        }
                    }
                    want
                },
                f32_cache,
            );
        }
    }

    #[test]
    fn the_prompt_kernel_reuses_rows_across_passes_until_forgotten() {
        // The passes of a batch as the forward pass runs them (forget once,
        // then passes of growing causal or sliding ranges), then the cache
        // rows rewritten and the batch run again after a forget: every
        // (query, head) has its reference's bits each time.
        let mut next = stream(4);
        let mut rnd = || (next() as f32 / u32::MAX as f32 - 0.5) * 6.0;
        let (hd, kv_dim, kvh, g, n) = (64, 128, 64, 3, 70);
        let mut k: Vec<u16> = (0..n * kv_dim)
            .map(|_| f16::from_f32(rnd()).to_bits())
            .collect();
        let mut v: Vec<u16> = (0..n * kv_dim)
            .map(|_| f16::from_f32(rnd()).to_bits())
            .collect();
        let stride = g * hd;
        let q: Vec<f32> = (0..n * stride).map(|_| rnd()).collect();
        let mut sc = Scratch::default();
        for round in 0..2 {
            for window in [None, Some(7)] {
                let kv = KvHead {
                    k: KvRows::F16(&k),
                    v: KvRows::F16(&v),
                    kv_dim,
                    kvh,
                };
                let per_pass = queries_per_pass(g);
                let mut got = vec![0f32; n * stride];
                sc.forget();
                for i0 in (0..n).step_by(per_pass) {
                    let nq = per_pass.min(n - i0);
                    let ts: Vec<_> = (i0..i0 + nq)
                        .map(|p| window.map_or(0, |w| (p + 1).saturating_sub(w))..p + 1)
                        .collect();
                    attend_batch_f32(
                        hd,
                        g,
                        &q[i0 * stride..],
                        stride,
                        &ts,
                        &kv,
                        0.125,
                        None,
                        &mut sc,
                        &mut got[i0 * stride..],
                    );
                }
                for p in 0..n {
                    let r = window.map_or(0, |w| (p + 1).saturating_sub(w))..p + 1;
                    for j in 0..g {
                        let at = p * stride + j * hd;
                        let mut want = vec![0f32; hd];
                        attend_f32_reference(
                            &q[at..at + hd],
                            &kv,
                            r.clone(),
                            0.125,
                            None,
                            &mut want,
                        );
                        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got[at..at + hd]),
                            bits(&want),
                            "round {round} {window:?} query {p} head {j}"
                        );
                    }
                }
            }
            // New contents at the same addresses (a rewound session).
            k.iter_mut()
                .for_each(|h| *h = f16::from_f32(rnd()).to_bits());
            v.iter_mut()
                .for_each(|h| *h = f16::from_f32(rnd()).to_bits());
        }
    }

    #[test]
    fn the_f16_accumulator_matches_its_scalar_reference() {
        // As wasm32 this holds the simd128 lanes to the scalar f16r; values
        // from f16's subnormals to past its range, zeros, NaN, and lengths
        // with a scalar tail.
        let mut rnd = stream(2);
        let value = |r: u32| -> f32 {
            let e = (r % 40) as i32 - 30; // 2^-30 .. 2^9
            let m = 1.0 + (r >> 8) as f32 / (1u32 << 24) as f32;
            let x = m * 2f32.powi(e) * if r & 1 == 0 { 1.0 } else { -1.0 };
            match r % 97 {
                0 => 0.0,
                1 => 65_519.0,
                2 => f32::NAN,
                3 => 70_000.0,
                _ => x,
            }
        };
        for len in [16, 64, 70, 256, 3] {
            for _ in 0..200 {
                let out: Vec<f32> = (0..len).map(|_| f16r(value(rnd()))).collect();
                let v: Vec<f32> = (0..len).map(|_| f16r(value(rnd()))).collect();
                let vs = (rnd() as f32 / u32::MAX as f32) * 1.5;
                let (mut a, mut b) = (out.clone(), out.clone());
                let vw: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
                add_scaled_f16(&mut a, &v, &vw, vs);
                add_scaled_f16_scalar(&mut b, &v, vs);
                let bits = |x: &[f32]| {
                    x.iter()
                        .map(|f| if f.is_nan() { u32::MAX } else { f.to_bits() })
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(&a), bits(&b), "add, len {len}, vs {vs}");
                let (mut a, mut b) = (out.clone(), out);
                rescale_f16(&mut a, vs * 1e-3);
                b.iter_mut().for_each(|o| *o = f16r(*o * (vs * 1e-3)));
                assert_eq!(bits(&a), bits(&b), "rescale, len {len}");
            }
        }
    }

    #[test]
    fn one_overflowing_sum_among_16_values() {
        // Finite values whose sum overflows f16 in one lane of 16 (the
        // simd128 path checks per 16): that lane is infinity, the others
        // are rounded as usual, and every lane has the scalar bits.
        for at in [0, 5, 15, 16, 33] {
            for sign in [1.0f32, -1.0] {
                let out = vec![sign * 30_000.0; 48];
                let mut v = vec![f16r(0.3); 48];
                v[at] = sign * 60_000.0;
                let vw: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
                let (mut a, mut b) = (out.clone(), out);
                add_scaled_f16(&mut a, &v, &vw, 0.9);
                add_scaled_f16_scalar(&mut b, &v, 0.9);
                assert_eq!(a[at], sign * f32::INFINITY);
                assert!(a.iter().filter(|x| x.is_infinite()).count() == 1);
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "overflow at {at}");
            }
        }
    }

    #[test]
    fn widening_is_exact_on_every_f16() {
        // Every f16 bit pattern, at every lane of the simd128 path (as
        // wasm32) and in the scalar tail: the f32 of its value (NaN: a NaN
        // of the same sign).
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for skip in [0, 3, 5] {
            let src = &all[skip..];
            let mut got = vec![0f32; src.len()];
            widen_f16(&mut got, src);
            for (&h, g) in src.iter().zip(&got) {
                let want = f16::from_bits(h).to_f32();
                if want.is_nan() {
                    assert!(g.is_nan(), "{h:#06x}: {g}");
                    assert_eq!(g.is_sign_negative(), h & 0x8000 != 0, "{h:#06x}");
                } else {
                    assert_eq!(g.to_bits(), want.to_bits(), "{h:#06x}: {g:e} != {want:e}");
                }
            }
        }
    }

    #[test]
    fn f16r_is_an_f16_round_trip() {
        // Every 331st f32 bit pattern (normals, subnormals, overflow, NaN).
        for bits in (0..=u32::MAX)
            .step_by(331)
            .chain([0x3880_0000, 0x477f_f000, 0x477f_efff])
        {
            let x = f32::from_bits(bits);
            let want = half::f16::from_f32(x).to_f32();
            let got = f16r(x);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{x:e} ({bits:#x}): {got:e} != {want:e}"
            );
        }
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn the_f16_rounding_of_4_lanes_is_f16r() {
        // Every 331st f32 bit pattern, each in every lane, against f16r;
        // NaN only needs to stay NaN.
        use core::arch::wasm32::*;
        for bits in (0..=u32::MAX).step_by(331).chain([
            0,
            0x8000_0000,
            0x3880_0000,
            0x477f_f000,
            0x477f_efff,
            0x3300_0000,
            0xb300_0000,
        ]) {
            let x = f32::from_bits(bits);
            let y = f32::from_bits(bits.wrapping_mul(2_654_435_761));
            let r = simd::f16r4(f32x4(x, y, -x, 0.5));
            let got = [
                f32x4_extract_lane::<0>(r),
                f32x4_extract_lane::<1>(r),
                f32x4_extract_lane::<2>(r),
                f32x4_extract_lane::<3>(r),
            ];
            for (g, w) in got.into_iter().zip([x, y, -x, 0.5]) {
                let want = f16r(w);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{w:e} ({:#x}): {g:e} != {want:e}",
                    w.to_bits()
                );
            }
        }
    }
}
