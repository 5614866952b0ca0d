//! Attention over the KV cache, as llama.cpp's CPU flash attention computes
//! it with its default f16 cache: q rounded to f16, q·k in f32, an online
//! softmax over the positions in order, and the weighted sum of values
//! accumulated in f16. The scalar functions are the reference; the simd128
//! paths give the same bits (tested as wasm32).

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

/// Query heads per pass of [`attend_f16_heads`]: the lanes of an f32x4.
pub(super) const HEADS: usize = 4;

/// [`attend_f16`] for `g = qs.len() / hd` (1..=HEADS) query heads of
/// `hd` values that read the same kv head: `qs` and `out` hold the heads one
/// after the other. Each key row is read once for all of them, and in
/// simd128 their q·k sums run in the lanes of one vector, each lane adding
/// its products in index order as [`dot_in_order`] does: every head's
/// result has the bits of [`attend_f16`] (tested as wasm32). `qh` is
/// scratch (HEADS * head_dim).
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_f16_heads(
    hd: usize,
    qs: &[f32],
    k: &[f32],
    v: &[f32],
    kv_dim: usize,
    kvh: usize,
    ts: std::ops::Range<usize>,
    scale: f32,
    softcap: Option<f32>,
    qh: &mut [f32],
    out: &mut [f32],
) {
    let g = qs.len() / hd;
    assert!((1..=HEADS).contains(&g) && out.len() == qs.len() && qh.len() >= HEADS * hd);
    scores::prepare(qs, g, hd, qh);
    let mut m = [f32::NEG_INFINITY; HEADS];
    let mut sum = [0f32; HEADS];
    out.fill(0.0);
    for t in ts {
        let kr = &k[t * kv_dim + kvh..t * kv_dim + kvh + hd];
        let sc = scores::of(qh, g, hd, kr);
        let vr = &v[t * kv_dim + kvh..t * kv_dim + kvh + hd];
        for j in 0..g {
            let mut s = sc[j];
            match softcap {
                Some(cap) => s = cap * (s * (scale / cap)).tanh(),
                None => s *= scale,
            }
            let o = &mut out[j * hd..(j + 1) * hd];
            let mut ms = 1.0f32;
            let mut vs = 1.0f32;
            if s > m[j] {
                ms = if m[j] == f32::NEG_INFINITY {
                    0.0
                } else {
                    (m[j] - s).exp()
                };
                m[j] = s;
                rescale_f16(o, ms);
            } else {
                vs = (s - m[j]).exp();
            }
            add_scaled_f16(o, vr, vs);
            sum[j] = sum[j] * ms + vs;
        }
    }
    for j in 0..g {
        let inv = if sum[j] == 0.0 { 0.0 } else { 1.0 / sum[j] };
        for o in out[j * hd..(j + 1) * hd].iter_mut() {
            *o *= inv;
        }
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
/// The reference of [`attend_f16_heads`] (one head).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
fn attend_f16(
    q: &[f32],
    k: &[f32],
    v: &[f32],
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
        let kr = &k[t * kv_dim + kvh..t * kv_dim + kvh + hd];
        let mut s = dot_in_order(qh, kr);
        match softcap {
            Some(cap) => s = cap * (s * (scale / cap)).tanh(),
            None => s *= scale,
        }
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
        let vr = &v[t * kv_dim + kvh..t * kv_dim + kvh + hd];
        add_scaled_f16(out, vr, vs);
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// The q·k sums of [`attend_f16_heads`].
mod scores {
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    use super::dot_in_order;
    use super::{f16r, HEADS};

    /// The `g` heads of `qs` rounded to f16 into `qh`: one after the other
    /// (scalar), or transposed, `qh[4 i + j]` = head j's element i (simd128).
    pub fn prepare(qs: &[f32], g: usize, hd: usize, qh: &mut [f32]) {
        if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) {
            qh[..HEADS * hd].fill(0.0);
            for j in 0..g {
                for i in 0..hd {
                    qh[HEADS * i + j] = f16r(qs[j * hd + i]);
                }
            }
        } else {
            for (a, &b) in qh[..g * hd].iter_mut().zip(&qs[..g * hd]) {
                *a = f16r(b);
            }
        }
    }

    /// Head j's q · `kr` in lane j (j < g), in index order.
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    #[inline(always)]
    pub fn of(qh: &[f32], g: usize, hd: usize, kr: &[f32]) -> [f32; HEADS] {
        let mut r = [0f32; HEADS];
        for (j, r) in r.iter_mut().enumerate().take(g) {
            *r = dot_in_order(&qh[j * hd..(j + 1) * hd], kr);
        }
        r
    }

    /// Head j's q · `kr` in lane j (j < g), each lane adding its products
    /// in index order from the empty sum, as [`dot_in_order`] does.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    pub fn of(qh: &[f32], _g: usize, hd: usize, kr: &[f32]) -> [f32; HEADS] {
        use core::arch::wasm32::*;
        assert!(qh.len() >= HEADS * hd && kr.len() == hd);
        let mut acc = f32x4_splat(std::iter::empty::<f32>().sum());
        let q = qh.as_ptr() as *const v128;
        let mut ck = kr.chunks_exact(8);
        let mut i = 0;
        for c in ck.by_ref() {
            // SAFETY: i + 8 <= hd, and qh holds HEADS * hd values.
            unsafe {
                for (e, &x) in c.iter().enumerate() {
                    let p = f32x4_mul(v128_load(q.add(i + e)), f32x4_splat(x));
                    acc = f32x4_add(acc, p);
                }
            }
            i += 8;
        }
        for &x in ck.remainder() {
            // SAFETY: i < hd.
            unsafe {
                acc = f32x4_add(acc, f32x4_mul(v128_load(q.add(i)), f32x4_splat(x)));
            }
            i += 1;
        }
        [
            f32x4_extract_lane::<0>(acc),
            f32x4_extract_lane::<1>(acc),
            f32x4_extract_lane::<2>(acc),
            f32x4_extract_lane::<3>(acc),
        ]
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
/// iteration: attention's f16 value accumulator. In simd128, 4 lanes at a
/// time with the same operations (bit-identical, tested as wasm32).
#[inline(always)]
fn add_scaled_f16(out: &mut [f32], v: &[f32], vs: f32) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    simd::add_scaled_f16(out, v, vs);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    add_scaled_f16_scalar(out, v, vs);
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
    all(target_arch = "wasm32", target_feature = "simd128"),
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

    /// `f16r((x * vs + o) in f64, as f32)` on 4 lanes. `hi` moves the
    /// upper half's two results to lanes 2 and 3 ([`hi`]).
    #[inline(always)]
    fn step(o: v128, x: v128, vs: v128, hi: v128) -> v128 {
        let lo = f64x2_add(
            f64x2_mul(f64x2_promote_low_f32x4(x), vs),
            f64x2_promote_low_f32x4(o),
        );
        let up = f64x2_add(
            f64x2_mul(f64x2_promote_low_f32x4(i64x2_shuffle::<1, 1>(x, x)), vs),
            f64x2_promote_low_f32x4(i64x2_shuffle::<1, 1>(o, o)),
        );
        let r = v128_or(
            f32x4_demote_f64x2_zero(lo),
            i8x16_swizzle(f32x4_demote_f64x2_zero(up), hi),
        );
        f16r4(r)
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

    pub fn add_scaled_f16(out: &mut [f32], v: &[f32], vs: f32) {
        assert_eq!(out.len(), v.len());
        let vs2 = f64x2_splat(f64::from(vs));
        let hi = hi();
        let (mut co, mut cv) = (out.chunks_exact_mut(16), v.chunks_exact(16));
        for (o, x) in co.by_ref().zip(cv.by_ref()) {
            // SAFETY: `o` and `x` hold 16 f32 each (wasm loads and stores
            // need no alignment).
            unsafe {
                let po = o.as_mut_ptr() as *mut v128;
                let px = x.as_ptr() as *const v128;
                for k in 0..4 {
                    let r = step(v128_load(po.add(k)), v128_load(px.add(k)), vs2, hi);
                    v128_store(po.add(k), r);
                }
            }
        }
        for (o, &x) in co.into_remainder().iter_mut().zip(cv.remainder()) {
            add_scaled_f16_one(o, x, vs);
        }
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
        let k: Vec<f32> = (0..n * kv_dim).map(|_| f16r(rnd())).collect();
        let v: Vec<f32> = (0..n * kv_dim).map(|_| f16r(rnd())).collect();
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
        let s: Vec<f64> = (3..n)
            .map(|t| {
                let kr = &k[t * kv_dim + kvh..t * kv_dim + kvh + hd];
                q.iter()
                    .zip(kr)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum::<f64>()
                    * f64::from(scale)
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        for (d, o) in out.iter().enumerate() {
            let want: f64 = (3..n)
                .zip(&s)
                .map(|(t, x)| (x - m).exp() / z * f64::from(v[t * kv_dim + kvh + d]))
                .sum();
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

    #[test]
    fn grouped_heads_give_each_heads_bits() {
        // attend_f16_heads over 1..=4 heads against attend_f16 per head,
        // bit for bit (as wasm32: the simd128 lanes), with and without
        // soft-capping, over whole and windowed position ranges.
        let mut next = stream(1);
        let mut rnd = || (next() as f32 / u32::MAX as f32 - 0.5) * 6.0;
        for (hd, n_kv) in [(64, 2), (70, 1), (8, 3)] {
            let kv_dim = hd * n_kv;
            let n = 40;
            let k: Vec<f32> = (0..n * kv_dim).map(|_| f16r(rnd())).collect();
            let v: Vec<f32> = (0..n * kv_dim).map(|_| f16r(rnd())).collect();
            for g in 1..=HEADS {
                let qs: Vec<f32> = (0..g * hd).map(|_| rnd()).collect();
                for (ts, cap) in [(0..n, None), (7..30, Some(2.0f32)), (3..4, None)] {
                    let kvh = hd * (n_kv - 1);
                    let mut qh = vec![0f32; HEADS * hd];
                    let mut got = vec![0f32; g * hd];
                    attend_f16_heads(
                        hd,
                        &qs,
                        &k,
                        &v,
                        kv_dim,
                        kvh,
                        ts.clone(),
                        0.125,
                        cap,
                        &mut qh,
                        &mut got,
                    );
                    for j in 0..g {
                        let mut want = vec![0f32; hd];
                        attend_f16(
                            &qs[j * hd..(j + 1) * hd],
                            &k,
                            &v,
                            kv_dim,
                            kvh,
                            ts.clone(),
                            0.125,
                            cap,
                            &mut qh[..hd],
                            &mut want,
                        );
                        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got[j * hd..(j + 1) * hd]),
                            bits(&want),
                            "hd {hd} g {g} head {j} {ts:?}"
                        );
                    }
                }
            }
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
                add_scaled_f16(&mut a, &v, vs);
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
