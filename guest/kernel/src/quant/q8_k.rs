//! Q8_K: the 256-element activation block the k-quants (Q2_K..Q6_K) and
//! IQ4_XS are dotted against, and helpers shared by those weight types.

use super::{f16_le, f32_to_f16_le, ActBlock};
use crate::ggml_type::GgmlType;

/// Elements per k-quant super-block.
pub const QK_K: usize = 256;

/// Q8_K activation block (ggml `block_q8_K`, same layout and values):
/// `x[j] = d * qs[j]`, `bsums[k] = sum(qs[16k..16k+16])`. `qs` is always in
/// -127..=127.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct Q8_KAct {
    /// Scale (f32, not rounded to f16).
    pub d: f32,
    pub qs: [i8; QK_K],
    /// Sums of each 16 `qs`, for the weight types' min terms.
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<Q8_KAct>() == 292);
const _: () = assert!(std::mem::align_of::<Q8_KAct>() == 4);

/// ggml's `nearest_int`: round half to even (exact for |x| < 2^22).
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

impl ActBlock for Q8_KAct {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const BLOCK: usize = QK_K;

    /// ggml's `quantize_row_q8_K_ref`: the value of largest magnitude, with
    /// its sign, maps to -127.
    fn quantize(x: &[f32], out: &mut [Self]) {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            simd::quantize_block(xb.try_into().unwrap(), o);
        }
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        quantize_scalar(x, out);
    }

    fn dequantize(b: &[Self], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
            for (v, &q) in o.iter_mut().zip(&blk.qs) {
                *v = blk.d * q as f32;
            }
        }
    }
}

/// [`Q8_KAct`]'s quantizer, ggml's `quantize_row_q8_K_ref` as written
/// (the reference of the simd128 one, which gives the same bytes).
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
pub(crate) fn quantize_scalar(x: &[f32], out: &mut [Q8_KAct]) {
    for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (amax, max) = super::signed_max(xb);
        if amax == 0.0 {
            *o = Q8_KAct {
                d: 0.0,
                qs: [0; QK_K],
                bsums: [0; QK_K / 16],
            };
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in o.qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q) in o.bsums.iter_mut().zip(o.qs.chunks_exact(16)) {
            *s = q.iter().map(|&q| q as i16).sum();
        }
        o.d = 1.0 / iscale;
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use super::{Q8_KAct, QK_K};
    use core::arch::wasm32::*;

    /// [`super::quantize_scalar`] of one block, 4 values at a time: the
    /// same operations per value. The largest magnitude by `f32x4.pmax`
    /// (which, like the scalar `>`, passes over NaN), the value it came
    /// from the first one of that magnitude (as the scalar loop keeps the
    /// first), each quant `f32x4.nearest` (round half to even, as
    /// `round_ties_even`) converted with saturation and NaN to 0 (as `as
    /// i32`); quants are within -127..=127, so the narrowings keep them.
    pub(super) fn quantize_block(xb: &[f32; QK_K], o: &mut Q8_KAct) {
        // SAFETY: 4 f32 at 4 i < 256 of `xb`.
        let at = |i: usize| unsafe { v128_load(xb.as_ptr().add(4 * i) as *const v128) };
        let mut m = f32x4_splat(0.0);
        for i in 0..QK_K / 4 {
            m = f32x4_pmax(m, f32x4_abs(at(i)));
        }
        let m = f32x4_pmax(m, i32x4_shuffle::<2, 3, 0, 1>(m, m));
        let m = f32x4_pmax(m, i32x4_shuffle::<1, 0, 3, 2>(m, m));
        let amax = f32x4_extract_lane::<0>(m);
        if amax == 0.0 {
            *o = Q8_KAct {
                d: 0.0,
                qs: [0; QK_K],
                bsums: [0; QK_K / 16],
            };
            return;
        }
        let mut max = amax;
        for i in 0..QK_K / 4 {
            let hit = i32x4_bitmask(f32x4_eq(f32x4_abs(at(i)), m));
            if hit != 0 {
                max = xb[4 * i + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let sc = f32x4_splat(iscale);
        let q = |i: usize| {
            i32x4_min(
                i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(sc, at(i)))),
                i32x4_splat(127),
            )
        };
        for g in 0..QK_K / 16 {
            let v = i8x16_narrow_i16x8(
                i16x8_narrow_i32x4(q(4 * g), q(4 * g + 1)),
                i16x8_narrow_i32x4(q(4 * g + 2), q(4 * g + 3)),
            );
            // SAFETY: 16 bytes at 16 g < 256 of `qs`.
            unsafe { v128_store(o.qs.as_mut_ptr().add(16 * g) as *mut v128, v) };
            let s = i32x4_extadd_pairwise_i16x8(i16x8_extadd_pairwise_i8x16(v));
            let s = i32x4_add(s, i32x4_shuffle::<2, 3, 0, 1>(s, s));
            let s = i32x4_add(s, i32x4_shuffle::<1, 0, 3, 2>(s, s));
            o.bsums[g] = i32x4_extract_lane::<0>(s) as i16;
        }
        o.d = 1.0 / iscale;
    }
}

/// Decodes the 12-byte packed 6-bit scales and mins of Q4_K / Q5_K (ggml
/// `get_scale_min_k4` for j = 0..8, computed four at a time as ggml's dot
/// products do): (scales, mins).
#[inline(always)]
pub(crate) fn scales_mins_k4(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let u = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    // Scales 0..4 are the low 6 bits of bytes 0..4; scales 4..8 the low
    // nibbles of bytes 8..12 with the top 2 bits of bytes 0..4 above them.
    let sc0 = u0 & KMASK1;
    let sc1 = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    // Mins likewise from bytes 4..8 and the high nibbles of bytes 8..12.
    let m0 = u1 & KMASK1;
    let m1 = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let join = |a: u32, b: u32| (a as u64 | ((b as u64) << 32)).to_le_bytes();
    (join(sc0, sc1), join(m0, m1))
}

/// 16 quants `q` in 0..=127 times 16 activations `y`, two products per
/// i16 lane. Which two share a lane differs between builds (relaxed SIMD:
/// neighbours, by `i16x8.relaxed_dot_i8x16_i7x16_s` with `q` as the 7-bit
/// operand, exact on every engine; simd128: lanes l and l + 8), so callers
/// use only the total. Each lane's sum must fit i16: `q <= 127` does.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn pair_dot(
    q: core::arch::wasm32::v128,
    y: core::arch::wasm32::v128,
) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    #[cfg(target_feature = "relaxed-simd")]
    {
        i16x8_relaxed_dot_i8x16_i7x16(y, q)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        i16x8_add(i16x8_extmul_low_i8x16(q, y), i16x8_extmul_high_i8x16(q, y))
    }
}

/// `sum(bsums[j] * m[j / 2])` (the min term of Q4_K / Q5_K) as four i32
/// partial sums.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn bsums_dot_mins(bsums: &[i16; 16], m: &[u8; 8]) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    let mv = u64x2(u64::from_le_bytes(*m), 0);
    // Each min widened to i16 (swizzle indices >= 16 give 0) and repeated
    // for its two 16-sums.
    let lo = i8x16_swizzle(
        mv,
        i8x16(0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1),
    );
    let hi = i8x16_swizzle(
        mv,
        i8x16(4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7, -1),
    );
    // SAFETY: the two 16-byte halves of the 32-byte `bsums`; wasm loads
    // need no alignment.
    let (b0, b1) = unsafe {
        let p = bsums.as_ptr();
        (
            v128_load(p as *const v128),
            v128_load(p.add(8) as *const v128),
        )
    };
    // |bsum| <= 16 * 127 and m <= 63: the pair sums fit i32.
    i32x4_add(i32x4_dot_i16x8(b0, lo), i32x4_dot_i16x8(b1, hi))
}

/// Eight 8-bit scales widened to i16 lanes (`u8` codes zero-extended, `i8`
/// ones sign-extended by the caller's choice of `signed`).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn scales_i16(sc: [u8; 8], signed: bool) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    let v = u64x2(u64::from_le_bytes(sc), 0);
    if signed {
        i16x8_extend_low_i8x16(v)
    } else {
        u16x8_extend_low_u8x16(v)
    }
}

/// Lane `s` (< 8) of the i16 scales `sc`, in every lane: the multiplier of
/// a sub-block's i16 pair sums in `i32x4.dot_i16x8_s`. A byte shuffle,
/// where a splat of the scalar scale would not do: Cranelift turns the
/// widening of a splat into a splat of the wider value, which its
/// `pmaddwd` pattern then misses (the dot became two widenings, two
/// `pmulld` and a `phaddd`, plus the splat's scalar extraction).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn scale_lane(sc: core::arch::wasm32::v128, s: usize) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    match s {
        0 => i8x16_shuffle::<0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1>(sc, sc),
        1 => i8x16_shuffle::<2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3>(sc, sc),
        2 => i8x16_shuffle::<4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5>(sc, sc),
        3 => i8x16_shuffle::<6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7>(sc, sc),
        4 => i8x16_shuffle::<8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9>(sc, sc),
        5 => {
            i8x16_shuffle::<10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11>(sc, sc)
        }
        6 => {
            i8x16_shuffle::<12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13>(sc, sc)
        }
        _ => {
            i8x16_shuffle::<14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15>(sc, sc)
        }
    }
}

/// Packs 8 scales and 8 mins (each 0..=63) as [`scales_mins_k4`] reads them.
pub(crate) fn pack_scales_mins_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
    }
    q
}

/// ggml's `make_qkx2_quants`: the scale and (negated) min of an affine
/// `n`-value quantization `x ~ scale * L - min`, `L` in 0..=nmax, searched
/// to minimize the weighted error. Writes `l`; returns (scale, min).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        best_error += weights[i] * err(scale * q as f32 + min - x[i]);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                cur_error += weights[i] * err(this_scale * laux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type == 1` and no importance
/// weights: a symmetric scale for `L` in -nmax..nmax-1 (stored in `l` plus
/// nmax), searched to minimize the x²-weighted error.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (amax, max) = super::signed_max(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let q = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let lv = q(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * lv;
            suml2 += w * lv * lv;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (o, &v) in l.iter_mut().zip(x) {
        *o = (q(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l.iter_mut().zip(x) {
                *o = (q(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `GROUP_MAX_EPS`: groups with a smaller max |x| quantize to zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// The part of ggml's `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref`
/// that Q4_K and Q5_K share: per sub-block of 32 a scale and min by
/// `make_qkx2_quants(nmax, .., rmin, 0.1, nstep)`, both rounded to 6 bits
/// against the super-block's `d` / `dmin`, then every weight's level in
/// `0..=nmax` written to `l`. Returns (d, dmin, packed scales), f16 bytes.
pub(crate) fn quantize_k4_levels(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) -> ([u8; 2], [u8; 2], [u8; 12]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xb = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xb.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + xb[i].abs());
        let lb = &mut l[32 * j..32 * j + 32];
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xb, &weights, lb, rmin, 0.1, nstep, false);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    let packed = pack_scales_mins_k4(&ls, &lm);
    let (d16, dmin16) = (
        f32_to_f16_le(max_scale / 63.0),
        f32_to_f16_le(max_min / 63.0),
    );
    let (d, dmin) = (f16_le(d16), f16_le(dmin16));
    for j in 0..8 {
        let dj = d * ls[j] as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * lm[j] as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (d16, dmin16, packed)
}
