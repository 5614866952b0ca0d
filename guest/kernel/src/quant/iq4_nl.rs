//! IQ4_NL: 32 weights per block, one f16 scale, 4-bit indices into a
//! fixed non-linear table of 16 signed 8-bit values ([`KVALUES_IQ4NL`]).

use super::q8::Q8_0Act;
use super::{f16_le, f32_to_f16_le, QuantKind};
use crate::ggml_type::GgmlType;

/// Weights per block.
pub const QK4_NL: usize = 32;

/// The non-linear 4-bit grid (ggml `kvalues_iq4nl`), shared with IQ4_XS.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The grid's magnitudes (each at most 127); its values are negative at
/// indices 0..8, positive at 8..16.
#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
const KVALUES_ABS: [u8; 16] = {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        a[i] = KVALUES_IQ4NL[i].unsigned_abs();
        i += 1;
    }
    a
};

/// Grid values at nibbles `nib` (each below 16) times the activations `y`,
/// as i16 sums of two products, lane `i` those of bytes `2i` and `2i + 1`
/// (each sum at most 2 * 127 * 127 in magnitude; the callers accumulate
/// lanes separately in f32, so both builds pair the same products).
/// Relaxed SIMD: the values' magnitudes (valid 7-bit operands of
/// `i16x8.relaxed_dot_i8x16_i7x16_s`) against `y` with the values' signs
/// moved onto it, exact since no activation is -128 (both 8-bit activation
/// quantizers round into -127..=127); simd128: the products widened, pairs
/// added in i32 and narrowed back (no sum saturates).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn grid_pairs(
    nib: core::arch::wasm32::v128,
    y: core::arch::wasm32::v128,
) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    #[cfg(target_feature = "relaxed-simd")]
    {
        // SAFETY: reads the 16-byte table; no alignment needed.
        let mag = i8x16_relaxed_swizzle(
            unsafe { v128_load(KVALUES_ABS.as_ptr() as *const v128) },
            nib,
        );
        let neg = i8x16_gt(i8x16_splat(8), nib);
        let ys = i8x16_sub(v128_xor(y, neg), neg);
        i16x8_relaxed_dot_i8x16_i7x16(ys, mag)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        // SAFETY: reads the 16-byte table; no alignment needed.
        let v = i8x16_swizzle(
            unsafe { v128_load(KVALUES_IQ4NL.as_ptr() as *const v128) },
            nib,
        );
        let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(v), i16x8_extend_low_i8x16(y));
        let hi = i32x4_dot_i16x8(i16x8_extend_high_i8x16(v), i16x8_extend_high_i8x16(y));
        i16x8_narrow_i32x4(lo, hi)
    }
}

/// IQ4_NL block (ggml `block_iq4_nl`): 4.5 bits per weight.
/// `w[j] = d * KVALUES_IQ4NL[i[j]]`; index j < 16 is the low nibble of
/// `qs[j]`, index j + 16 its high nibble (as Q4_0).
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockIQ4NL {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    pub qs: [u8; QK4_NL / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 18);
const _: () = assert!(std::mem::align_of::<BlockIQ4NL>() == 1);

/// Blocks whose largest magnitude is below this quantize to zero (ggml
/// `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Index of the entry of `values` (ascending) nearest to `x`, ties to the
/// upper one (ggml `best_index_int8`). NaN maps to the last index.
#[inline]
pub fn best_index_int8(values: &[i8; 16], x: f32) -> u8 {
    let n = values.len();
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[n - 1] as f32 {
        return (n - 1) as u8;
    }
    let (mut ml, mut mu) = (0, n - 1);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < values[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (values[mu - 1] as f32) < values[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// Quantize one block as ggml's `quantize_row_iq4_nl_impl` with one
/// sub-block, no importance weights (weights `x^2`) and `ntry` extra scale
/// candidates on each side (`-1` for `quantize_row_iq4_nl_ref`, `7` for
/// `quantize_iq4_nl`, what `llama-quantize` writes).
///
/// ggml leaves the indices of a block below [`GROUP_MAX_EPS`] unspecified
/// (stale from the previous block); its scale is 0 so every weight is 0.
/// Here they are 0.
fn quantize_block(xb: &[f32], ntry: i32) -> BlockIQ4NL {
    let values = &KVALUES_IQ4NL;
    let v0 = values[0] as f32;
    let (amax, max) = super::signed_max(xb);
    let mut out = BlockIQ4NL {
        d: f32_to_f16_le(0.0),
        qs: [0; QK4_NL / 2],
    };
    if amax < GROUP_MAX_EPS {
        return out;
    }
    let mut l = [0u8; QK4_NL];
    // sum(w * q * x) and sum(w * q^2) for the inverse scale `id`, in ggml's
    // evaluation order; with `Some(l)` the indices go to `l`.
    let sums = |id: f32, l: Option<&mut [u8; QK4_NL]>| {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        let mut idx = [0u8; QK4_NL];
        for (j, &x) in xb.iter().enumerate() {
            idx[j] = best_index_int8(values, id * x);
            let q = values[idx[j] as usize] as f32;
            let w = x * x;
            sumqx += w * q * x;
            sumq2 += w * q * q;
        }
        if let Some(l) = l {
            *l = idx;
        }
        (sumqx, sumq2)
    };
    let d0 = if ntry > 0 { -max / v0 } else { max / v0 };
    let (sumqx, sumq2) = sums(1.0 / d0, Some(&mut l));
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -ntry..=ntry {
        let id = (itry + values[0] as i32) as f32 / max;
        let (sumqx, sumq2) = sums(id, None);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    out.d = f32_to_f16_le(d);
    if ntry > 0 {
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (li, &x) in l.iter_mut().zip(xb) {
            *li = best_index_int8(values, id * x);
        }
    }
    for j in 0..QK4_NL / 2 {
        out.qs[j] = l[j] | (l[j + QK4_NL / 2] << 4);
    }
    out
}

/// Quantize `x` with the scale search of ggml's `quantize_iq4_nl` without
/// importance weights (what `llama-quantize` writes for IQ4_NL), which is
/// more accurate than the reference quantizer [`QuantKind::quantize`].
pub fn quantize_search(x: &[f32], out: &mut [BlockIQ4NL]) {
    for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK4_NL)) {
        *o = quantize_block(xb, 7);
    }
}

/// IQ4_NL weights (dotted against [`Q8_0Act`]).
pub struct IQ4NL;

impl QuantKind for IQ4NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const BLOCK: usize = QK4_NL;
    type Block = BlockIQ4NL;
    type Act = Q8_0Act;

    /// ggml's `quantize_row_iq4_nl_ref`.
    fn quantize(x: &[f32], out: &mut [BlockIQ4NL]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK4_NL)) {
            *o = quantize_block(xb, -1);
        }
    }

    fn dequantize(b: &[BlockIQ4NL], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK4_NL)) {
            let d = f16_le(blk.d);
            let (lo, hi) = o.split_at_mut(QK4_NL / 2);
            for j in 0..QK4_NL / 2 {
                lo[j] = d * KVALUES_IQ4NL[(blk.qs[j] & 0x0f) as usize] as f32;
                hi[j] = d * KVALUES_IQ4NL[(blk.qs[j] >> 4) as usize] as f32;
            }
        }
    }

    fn vec_dot_scalar(x: &[BlockIQ4NL], y: &[Q8_0Act]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let mut sumi = 0i32;
            for j in 0..QK4_NL / 2 {
                let lo = KVALUES_IQ4NL[(bx.qs[j] & 0x0f) as usize] as i32;
                let hi = KVALUES_IQ4NL[(bx.qs[j] >> 4) as usize] as i32;
                sumi += lo * by.qs[j] as i32 + hi * by.qs[j + QK4_NL / 2] as i32;
            }
            sum += (by.d * f16_le(bx.d)) * sumi as f32;
        }
        sum
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockIQ4NL], y: &[Q8_0Act]) -> f32 {
        use core::arch::wasm32::*;
        let m4 = u8x16_splat(0x0f);
        let mut acc = f32x4_splat(0.0);
        for (bx, by) in x.iter().zip(y) {
            // SAFETY: reads the 16-byte `qs` of `bx` and the two halves of
            // the 32-byte `qs` of `by`; wasm loads need no alignment.
            let (q, y0, y1) = unsafe {
                (
                    v128_load(bx.qs.as_ptr() as *const v128),
                    v128_load(by.qs.as_ptr() as *const v128),
                    v128_load(by.qs.as_ptr().add(16) as *const v128),
                )
            };
            // |k| <= 127 and |y| <= 127, so only two products fit i16.
            let p0 = grid_pairs(v128_and(q, m4), y0);
            let p1 = grid_pairs(u8x16_shr(q, 4), y1);
            let s = i32x4_add(
                i32x4_extadd_pairwise_i16x8(p0),
                i32x4_extadd_pairwise_i16x8(p1),
            );
            let d = f32x4_splat(by.d * f16_le(bx.d));
            acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(s), d));
        }
        super::hsum_f32x4(acc)
    }
}
