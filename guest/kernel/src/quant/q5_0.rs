//! Q5_0: 32 weights per block, one f16 scale, 5-bit signed quants.

use super::q8::Q8_0Act;
use super::{f16_le, f32_to_f16_le, QuantKind};
use crate::ggml_type::GgmlType;

/// Weights per block.
pub const QK5_0: usize = 32;

/// Q5_0 block (ggml `block_q5_0`): 5.5 bits per weight.
/// `w[j] = d * ((nibble | bit << 4) - 16)`: nibbles as Q4_0, the fifth bit
/// of weight j is bit j of the little-endian u32 `qh`.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Fifth bits, u32 little-endian.
    pub qh: [u8; 4],
    pub qs: [u8; QK5_0 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::align_of::<BlockQ5_0>() == 1);

/// The 5-bit quants of a block, minus 16.
#[inline(always)]
fn quants(b: &BlockQ5_0) -> [i32; QK5_0] {
    let qh = u32::from_le_bytes(b.qh);
    let mut v = [0i32; QK5_0];
    for j in 0..QK5_0 / 2 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        v[j] = ((b.qs[j] & 0x0f) as u32 | h0) as i32 - 16;
        v[j + 16] = ((b.qs[j] >> 4) as u32 | h1) as i32 - 16;
    }
    v
}

/// Q5_0 weights (dotted against [`Q8_0Act`]).
pub struct Q5_0;

impl QuantKind for Q5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK: usize = QK5_0;
    type Block = BlockQ5_0;
    type Act = Q8_0Act;

    fn quantize(x: &[f32], out: &mut [BlockQ5_0]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK5_0)) {
            let (_, max) = super::signed_max(xb);
            let d = max / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q = |v: f32| ((v * id + 16.5) as i8).min(31) as u32;
            let mut qh = 0u32;
            for j in 0..QK5_0 / 2 {
                let a = q(xb[j]);
                let b = q(xb[j + QK5_0 / 2]);
                o.qs[j] = ((a & 0x0f) | ((b & 0x0f) << 4)) as u8;
                qh |= ((a >> 4) & 1) << j;
                qh |= ((b >> 4) & 1) << (j + 16);
            }
            o.d = f32_to_f16_le(d);
            o.qh = qh.to_le_bytes();
        }
    }

    fn dequantize(b: &[BlockQ5_0], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK5_0)) {
            let d = f16_le(blk.d);
            for (v, q) in o.iter_mut().zip(quants(blk)) {
                *v = q as f32 * d;
            }
        }
    }

    fn vec_dot_scalar(x: &[BlockQ5_0], y: &[Q8_0Act]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let q = quants(bx);
            let mut sumi = 0i32;
            for (&a, &b) in q.iter().zip(&by.qs) {
                sumi += a * b as i32;
            }
            sum += (f16_le(bx.d) * by.d) * sumi as f32;
        }
        sum
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockQ5_0], y: &[Q8_0Act]) -> f32 {
        use core::arch::wasm32::*;
        let m4 = u8x16_splat(0x0f);
        let s16 = i8x16_splat(16);
        // Byte k of a vector holds qh byte k / 8; bit k % 8 of it is tested.
        let bits = u8x16(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
        // Not a swizzle of a splat: LLVM turns that into a two-input shuffle
        // whose second input is the accumulator, a false dependency that
        // serializes the loop.
        let bytes = |a: u8, b: u8| {
            const ONES: u64 = 0x0101_0101_0101_0101;
            u64x2(a as u64 * ONES, b as u64 * ONES)
        };
        // Integer block sums in SIMD, the float part as the scalar
        // reference does it: the same bits.
        let mut sum = 0f32;
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
            let qh = bx.qh;
            // 0xff where the fifth bit is set.
            let h_lo = i8x16_eq(v128_and(bytes(qh[0], qh[1]), bits), bits);
            let h_hi = i8x16_eq(v128_and(bytes(qh[2], qh[3]), bits), bits);
            // (nibble | bit << 4) - 16 == nibble - (bit ? 0 : 16).
            let lo = i8x16_sub(v128_and(q, m4), v128_andnot(s16, h_lo));
            let hi = i8x16_sub(u8x16_shr(q, 4), v128_andnot(s16, h_hi));
            // |q| <= 16 and |y| <= 127, so four products fit i16.
            let p = i16x8_add(
                i16x8_add(
                    i16x8_extmul_low_i8x16(lo, y0),
                    i16x8_extmul_high_i8x16(lo, y0),
                ),
                i16x8_add(
                    i16x8_extmul_low_i8x16(hi, y1),
                    i16x8_extmul_high_i8x16(hi, y1),
                ),
            );
            let s = i32x4_extadd_pairwise_i16x8(p);
            sum += (f16_le(bx.d) * by.d) * super::hsum_i32x4(s) as f32;
        }
        sum
    }

    /// Four rows in cache with relaxed SIMD, read side by side, as Q4_0's
    /// ([`super::q8::side4_codes`]): the 5-bit codes (0..=31) against the
    /// activations, the offset of 16 taken off lane by lane: the scalar
    /// reference's integers and bits.
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    fn vec_dot4(
        x: [&[BlockQ5_0]; 4],
        y: &[Q8_0Act],
        _yw: &[i16],
        _ypn: &[super::q8::PosNeg],
        in_cache: bool,
    ) -> [f32; 4] {
        use core::arch::wasm32::*;
        if !in_cache {
            return x.map(|x| Self::vec_dot(x, y));
        }
        let m4 = u8x16_splat(0x0f);
        let b4 = u8x16_splat(0x10);
        // Byte k of a half tests bit k % 8 of its qh byte.
        let bits = u8x16(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
        super::q8::side4_codes(
            x,
            y,
            |b| b.d,
            4,
            |bx| {
                // SAFETY: the block's 16-byte `qs` and 4-byte `qh`.
                let (q, h) = unsafe {
                    (
                        v128_load(bx.qs.as_ptr() as *const v128),
                        v128_load32_zero(bx.qh.as_ptr() as *const u32),
                    )
                };
                // The fifth bits, at bit 4 of each weight's byte.
                let fifth = |h: v128| v128_and(i8x16_eq(v128_and(h, bits), bits), b4);
                let h_lo = i8x16_shuffle::<0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1>(h, h);
                let h_hi = i8x16_shuffle::<2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3>(h, h);
                [
                    v128_or(v128_and(q, m4), fifth(h_lo)),
                    v128_or(u8x16_shr(q, 4), fifth(h_hi)),
                ]
            },
        )
    }
}
