//! The k-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) dotted with several
//! activation vectors at once, for prompt batches.
//!
//! Each super-block's 256 weights are expanded once into i16, already
//! multiplied by their sub-block scale, and then dotted with every vector's
//! quants widened to i16 (`i32x4.dot_i16x8_s`). The integer sum is the
//! scalar reference's `isum` (exact: integer arithmetic in any order), and
//! the float part is the reference's, term for term and in block order, so
//! every output has the bits of [`QuantKind::vec_dot_scalar`] whatever the
//! batch, as the single-vector dots do (tests).

use super::q2_k::{BlockQ2_K, Q2_K};
use super::q3_k::{BlockQ3_K, Q3_K};
use super::q4_k::{BlockQ4_K, Q4_K};
use super::q5_k::{BlockQ5_K, Q5_K};
use super::q6_k::{BlockQ6_K, Q6_K};
use super::q8_k::{scales_mins_k4, Q8_KAct, QK_K};
use super::{f16_le, QuantKind};

/// A k-quant with a batched dot.
pub trait KBatch: QuantKind<Act = Q8_KAct> {
    /// What [`KBatch::term`] needs of a block besides its integer sum.
    type Aux: Copy;
    /// Block `b`'s weights times their sub-block scales (`out`), so that
    /// `sum(out[i] * y.qs[i])` is the reference's integer sum.
    fn scaled(b: &Self::Block, out: &mut [i16; QK_K]) -> Self::Aux;
    /// The reference's float term of block `b` from that integer sum.
    fn term(b: &Self::Block, aux: Self::Aux, isum: i32, y: &Q8_KAct) -> f32;
}

impl KBatch for Q4_K {
    /// The 8 mins.
    type Aux = [u8; 8];
    fn scaled(b: &BlockQ4_K, out: &mut [i16; QK_K]) -> [u8; 8] {
        let (sc, m) = scales_mins_k4(&b.scales);
        simd::scaled_q4_k(b, &sc, out);
        m
    }
    #[inline(always)]
    fn term(b: &BlockQ4_K, m: [u8; 8], isum: i32, y: &Q8_KAct) -> f32 {
        term_k4(b.d, b.dmin, m, isum, y)
    }
}

/// The reference's float term of a Q4_K / Q5_K block (scales `d`, `dmin`,
/// mins `m`) from its integer sum.
#[inline(always)]
fn term_k4(d: [u8; 2], dmin: [u8; 2], m: [u8; 8], isum: i32, y: &Q8_KAct) -> f32 {
    let mut summ = 0i32;
    for (j, &s) in y.bsums.iter().enumerate() {
        summ += s as i32 * m[j / 2] as i32;
    }
    let d = f16_le(d) * y.d;
    let dmin = f16_le(dmin) * y.d;
    d * isum as f32 - dmin * summ as f32
}

impl KBatch for Q5_K {
    /// The 8 mins.
    type Aux = [u8; 8];
    fn scaled(b: &BlockQ5_K, out: &mut [i16; QK_K]) -> [u8; 8] {
        let (sc, m) = scales_mins_k4(&b.scales);
        simd::scaled_q5_k(b, &sc, out);
        m
    }
    #[inline(always)]
    fn term(b: &BlockQ5_K, m: [u8; 8], isum: i32, y: &Q8_KAct) -> f32 {
        term_k4(b.d, b.dmin, m, isum, y)
    }
}

impl KBatch for Q6_K {
    type Aux = ();
    fn scaled(b: &BlockQ6_K, out: &mut [i16; QK_K]) {
        simd::scaled_q6_k(b, out);
    }
    #[inline(always)]
    fn term(b: &BlockQ6_K, _: (), isum: i32, y: &Q8_KAct) -> f32 {
        (f16_le(b.d) * y.d) * isum as f32
    }
}

impl KBatch for Q2_K {
    type Aux = ();
    fn scaled(b: &BlockQ2_K, out: &mut [i16; QK_K]) {
        simd::scaled_q2_k(b, out);
    }
    #[inline(always)]
    fn term(b: &BlockQ2_K, _: (), isum: i32, y: &Q8_KAct) -> f32 {
        let mut summs = 0i32;
        for (&s, &sc) in y.bsums.iter().zip(&b.scales) {
            summs += s as i32 * (sc >> 4) as i32;
        }
        let dall = y.d * f16_le(b.d);
        let dmin = y.d * f16_le(b.dmin);
        dall * isum as f32 - dmin * summs as f32
    }
}

impl KBatch for Q3_K {
    type Aux = ();
    fn scaled(b: &BlockQ3_K, out: &mut [i16; QK_K]) {
        simd::scaled_q3_k(b, out);
    }
    #[inline(always)]
    fn term(b: &BlockQ3_K, _: (), isum: i32, y: &Q8_KAct) -> f32 {
        (f16_le(b.d) * y.d) * isum as f32
    }
}

/// Runs `$body` with `$K` bound to the [`KBatch`] of weight type `$ty`.
macro_rules! with_kbatch {
    ($ty:expr, $K:ident => $body:expr, $other:expr) => {
        match $ty {
            crate::ggml_type::GgmlType::Q2_K => {
                type $K = crate::quant::q2_k::Q2_K;
                $body
            }
            crate::ggml_type::GgmlType::Q3_K => {
                type $K = crate::quant::q3_k::Q3_K;
                $body
            }
            crate::ggml_type::GgmlType::Q4_K => {
                type $K = crate::quant::q4_k::Q4_K;
                $body
            }
            crate::ggml_type::GgmlType::Q5_K => {
                type $K = crate::quant::q5_k::Q5_K;
                $body
            }
            crate::ggml_type::GgmlType::Q6_K => {
                type $K = crate::quant::q6_k::Q6_K;
                $body
            }
            _ => $other,
        }
    };
}
pub(crate) use with_kbatch;

/// Rows `r0..r1` of `blocks` (`nb` blocks per row) dotted with vectors
/// `y[t]` (blocks) / `yw[t]` (their quants as i16): `out[t][r - r0]`.
pub(crate) fn dots<K: KBatch>(
    blocks: &[K::Block],
    nb: usize,
    rows: std::ops::Range<usize>,
    y: &[&[Q8_KAct]],
    yw: &[&[i16]],
    out: &mut [f32],
    stride: usize,
) {
    let mut w = [0i16; QK_K];
    let mut acc = vec![0f32; y.len()];
    for r in rows {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (b, bx) in blocks[r * nb..(r + 1) * nb].iter().enumerate() {
            let aux = K::scaled(bx, &mut w);
            let at = b * QK_K..(b + 1) * QK_K;
            let mut t = 0;
            while t + 4 <= acc.len() {
                let isum = simd::dot_i16x4(&w, std::array::from_fn(|i| &yw[t + i][at.clone()]));
                for (i, s) in isum.into_iter().enumerate() {
                    acc[t + i] += K::term(bx, aux, s, &y[t + i][b]);
                }
                t += 4;
            }
            for t in t..acc.len() {
                let isum = simd::dot_i16(&w, &yw[t][at.clone()]);
                acc[t] += K::term(bx, aux, isum, &y[t][b]);
            }
        }
        for (t, a) in acc.iter().enumerate() {
            out[t * stride + r] = *a;
        }
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod simd {
    use super::{BlockQ2_K, BlockQ3_K, BlockQ4_K, BlockQ5_K, BlockQ6_K, QK_K};

    pub fn scaled_q2_k(b: &BlockQ2_K, out: &mut [i16; QK_K]) {
        let q = crate::quant::q2_k::quants(b);
        for (i, (o, q)) in out.iter_mut().zip(q).enumerate() {
            *o = q as i16 * (b.scales[i / 16] & 0x0f) as i16;
        }
    }

    pub fn scaled_q3_k(b: &BlockQ3_K, out: &mut [i16; QK_K]) {
        let sc = crate::quant::q3_k::scales(&b.scales);
        let q = crate::quant::q3_k::quants(b);
        for (i, (o, q)) in out.iter_mut().zip(q).enumerate() {
            *o = q as i16 * sc[i / 16] as i16;
        }
    }

    pub fn scaled_q4_k(b: &BlockQ4_K, sc: &[u8; 8], out: &mut [i16; QK_K]) {
        for k in 0..4 {
            for i in 0..32 {
                let q = b.qs[32 * k + i];
                out[64 * k + i] = (q & 0x0f) as i16 * sc[2 * k] as i16;
                out[64 * k + 32 + i] = (q >> 4) as i16 * sc[2 * k + 1] as i16;
            }
        }
    }

    pub fn scaled_q5_k(b: &BlockQ5_K, sc: &[u8; 8], out: &mut [i16; QK_K]) {
        for k in 0..4 {
            for l in 0..32 {
                let q = b.qs[32 * k + l];
                let h = |s: usize| ((b.qh[l] >> s) & 1) << 4;
                out[64 * k + l] = ((q & 0x0f) | h(2 * k)) as i16 * sc[2 * k] as i16;
                out[64 * k + 32 + l] = ((q >> 4) | h(2 * k + 1)) as i16 * sc[2 * k + 1] as i16;
            }
        }
    }

    pub fn scaled_q6_k(b: &BlockQ6_K, out: &mut [i16; QK_K]) {
        for h in 0..2 {
            let ql = &b.ql[64 * h..64 * h + 64];
            let qh = &b.qh[32 * h..32 * h + 32];
            for l in 0..32 {
                let q = [
                    (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (i, q) in q.into_iter().enumerate() {
                    let at = 128 * h + 32 * i + l;
                    out[at] = (q as i16 - 32) * b.scales[at / 16] as i16;
                }
            }
        }
    }

    pub fn dot_i16(w: &[i16; QK_K], y: &[i16]) -> i32 {
        w.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum()
    }

    pub fn dot_i16x4(w: &[i16; QK_K], y: [&[i16]; 4]) -> [i32; 4] {
        y.map(|y| dot_i16(w, y))
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use super::{BlockQ2_K, BlockQ3_K, BlockQ4_K, BlockQ5_K, BlockQ6_K, QK_K};
    use core::arch::wasm32::*;

    /// Stores `v` (16 quants, u8 or i8 per `signed`) times `s` as 16 i16 at `p`.
    ///
    /// # Safety
    /// `p` must point to 16 writable i16.
    #[inline(always)]
    unsafe fn store_scaled(p: *mut i16, v: v128, s: i16, signed: bool) {
        let s = i16x8_splat(s);
        let (lo, hi) = if signed {
            (i16x8_extend_low_i8x16(v), i16x8_extend_high_i8x16(v))
        } else {
            (u16x8_extend_low_u8x16(v), u16x8_extend_high_u8x16(v))
        };
        v128_store(p as *mut v128, i16x8_mul(lo, s));
        v128_store(p.add(8) as *mut v128, i16x8_mul(hi, s));
    }

    /// The two 16-byte halves of `qs[32h..32h + 32]` (`qs` of 64 bytes).
    #[inline(always)]
    fn halves(qs: &[u8; QK_K / 4], h: usize) -> [v128; 2] {
        // SAFETY: 16-byte loads at 32h and 32h + 16 <= 48 of 64 bytes.
        unsafe {
            let p = qs.as_ptr().add(32 * h);
            [
                v128_load(p as *const v128),
                v128_load(p.add(16) as *const v128),
            ]
        }
    }

    /// Weight 32i + 16c + k (i = 4h + j) is at bits 2j of byte 16c + k of
    /// `halves(qs, h)`, in sub-block 2i + c.
    pub fn scaled_q2_k(b: &BlockQ2_K, out: &mut [i16; QK_K]) {
        let m3 = u8x16_splat(3);
        let o = out.as_mut_ptr();
        for h in 0..2 {
            let qv = halves(&b.qs, h);
            for j in 0..4 {
                let i = 4 * h + j;
                for (c, &qc) in qv.iter().enumerate() {
                    let q = v128_and(u8x16_shr(qc, 2 * j as u32), m3);
                    let s = (b.scales[2 * i + c] & 0x0f) as i16;
                    // SAFETY: 16 i16 at 32i + 16c + 16 <= 256 of `out`.
                    unsafe { store_scaled(o.add(32 * i + 16 * c), q, s, false) };
                }
            }
        }
    }

    /// As [`scaled_q2_k`], less 4 where the weight's bit `i` of `hmask` is clear.
    pub fn scaled_q3_k(b: &BlockQ3_K, out: &mut [i16; QK_K]) {
        let (m3, four, zero) = (u8x16_splat(3), i8x16_splat(4), i8x16_splat(0));
        let sc = crate::quant::q3_k::scales(&b.scales);
        // SAFETY: the two halves of the 32-byte `hmask`.
        let hm = unsafe {
            let p = b.hmask.as_ptr();
            [
                v128_load(p as *const v128),
                v128_load(p.add(16) as *const v128),
            ]
        };
        let o = out.as_mut_ptr();
        for h in 0..2 {
            let qv = halves(&b.qs, h);
            for j in 0..4 {
                let i = 4 * h + j;
                let bit = u8x16_splat(1 << i);
                for c in 0..2 {
                    let low = v128_and(u8x16_shr(qv[c], 2 * j as u32), m3);
                    let sub = v128_and(i8x16_eq(v128_and(hm[c], bit), zero), four);
                    let q = i8x16_sub(low, sub);
                    // SAFETY: 16 i16 at 32i + 16c + 16 <= 256 of `out`.
                    unsafe { store_scaled(o.add(32 * i + 16 * c), q, sc[2 * i + c] as i16, true) };
                }
            }
        }
    }

    pub fn scaled_q4_k(b: &BlockQ4_K, sc: &[u8; 8], out: &mut [i16; QK_K]) {
        let m4 = u8x16_splat(0x0f);
        let o = out.as_mut_ptr();
        for k in 0..4 {
            // SAFETY: 16-byte loads at 32k, 32k + 16 of the 128-byte `qs`;
            // stores of 16 i16 at 64k + 0..48 of the 256 in `out`.
            unsafe {
                let q0 = v128_load(b.qs.as_ptr().add(32 * k) as *const v128);
                let q1 = v128_load(b.qs.as_ptr().add(32 * k + 16) as *const v128);
                let (s0, s1) = (sc[2 * k] as i16, sc[2 * k + 1] as i16);
                store_scaled(o.add(64 * k), v128_and(q0, m4), s0, false);
                store_scaled(o.add(64 * k + 16), v128_and(q1, m4), s0, false);
                store_scaled(o.add(64 * k + 32), u8x16_shr(q0, 4), s1, false);
                store_scaled(o.add(64 * k + 48), u8x16_shr(q1, 4), s1, false);
            }
        }
    }

    pub fn scaled_q5_k(b: &BlockQ5_K, sc: &[u8; 8], out: &mut [i16; QK_K]) {
        use crate::quant::q5_k::{simd_hbit as hbit, simd_qh};
        let m4 = u8x16_splat(0x0f);
        let o = out.as_mut_ptr();
        let qh = simd_qh(b);
        // Unrolled by hand, so `hbit`'s shifts are by constants.
        let chunk = |k: usize| {
            let s = 2 * k as u32;
            for (c, &h) in qh.iter().enumerate() {
                // SAFETY: a 16-byte load at 32k + 16c of the 128-byte `qs`;
                // stores of 16 i16 at 64k + 16c (+ 32) of the 256 in `out`.
                unsafe {
                    let q = v128_load(b.qs.as_ptr().add(32 * k + 16 * c) as *const v128);
                    let lo = v128_or(v128_and(q, m4), hbit(h, s));
                    let hi = v128_or(u8x16_shr(q, 4), hbit(h, s + 1));
                    store_scaled(o.add(64 * k + 16 * c), lo, sc[2 * k] as i16, false);
                    store_scaled(o.add(64 * k + 32 + 16 * c), hi, sc[2 * k + 1] as i16, false);
                }
            }
        };
        chunk(0);
        chunk(1);
        chunk(2);
        chunk(3);
    }

    pub fn scaled_q6_k(b: &BlockQ6_K, out: &mut [i16; QK_K]) {
        let s32 = i8x16_splat(32);
        let o = out.as_mut_ptr();
        for h in 0..2 {
            for c in 0..2 {
                for (i, q) in crate::quant::q6_k::simd_quants(b, h, c)
                    .into_iter()
                    .enumerate()
                {
                    let at = 128 * h + 32 * i + 16 * c;
                    // SAFETY: stores of 16 i16 at at + 16 <= 256 of `out`.
                    unsafe {
                        store_scaled(o.add(at), i8x16_sub(q, s32), b.scales[at / 16] as i16, true)
                    };
                }
            }
        }
    }

    /// [`dot_i16`] of `w` with 4 vectors, each weight load shared.
    #[inline(always)]
    pub fn dot_i16x4(w: &[i16; QK_K], y: [&[i16]; 4]) -> [i32; 4] {
        for y in y {
            assert_eq!(y.len(), QK_K);
        }
        let wp = w.as_ptr();
        let mut acc = [i32x4_splat(0); 4];
        for i in (0..QK_K).step_by(8) {
            // SAFETY: i + 8 <= 256 for `w` and each `y[t]` of 256 i16.
            unsafe {
                let wv = v128_load(wp.add(i) as *const v128);
                for (a, y) in acc.iter_mut().zip(y) {
                    let yv = v128_load(y.as_ptr().add(i) as *const v128);
                    *a = i32x4_add(*a, i32x4_dot_i16x8(wv, yv));
                }
            }
        }
        acc.map(crate::quant::hsum_i32x4)
    }

    /// `sum(w[i] * y[i])`, exact (|w| <= 32 * 128, |y| <= 127: no overflow).
    #[inline(always)]
    pub fn dot_i16(w: &[i16; QK_K], y: &[i16]) -> i32 {
        assert_eq!(y.len(), QK_K);
        let (wp, yp) = (w.as_ptr(), y.as_ptr());
        let mut acc = [i32x4_splat(0); 4];
        for i in (0..QK_K).step_by(32) {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8j + 8 <= 256 for both slices of 256 i16.
                unsafe {
                    let wv = v128_load(wp.add(i + 8 * j) as *const v128);
                    let yv = v128_load(yp.add(i + 8 * j) as *const v128);
                    *a = i32x4_add(*a, i32x4_dot_i16x8(wv, yv));
                }
            }
        }
        crate::quant::hsum_i32x4(i32x4_add(
            i32x4_add(acc[0], acc[1]),
            i32x4_add(acc[2], acc[3]),
        ))
    }
}
