//! Q4_0: 32 weights per block, one f16 scale, 4-bit signed quants.

use super::q8::Q8_0Act;
use super::{f16_le, f32_to_f16_le, QuantKind};
use crate::ggml_type::GgmlType;

/// Weights per block.
pub const QK4_0: usize = 32;

/// Q4_0 block (ggml `block_q4_0`): 4.5 bits per weight.
/// `w[j] = d * (q[j] - 8)`; weight j < 16 is the low nibble of `qs[j]`,
/// weight j + 16 its high nibble.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    pub qs: [u8; QK4_0 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::align_of::<BlockQ4_0>() == 1);

/// Q4_0 weights (dotted against [`Q8_0Act`]).
pub struct Q4_0;

impl QuantKind for Q4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK: usize = QK4_0;
    type Block = BlockQ4_0;
    type Act = Q8_0Act;

    fn quantize(x: &[f32], out: &mut [BlockQ4_0]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK4_0)) {
            // The value of largest magnitude, with its sign, maps to -8.
            let (_, max) = super::signed_max(xb);
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
            for j in 0..QK4_0 / 2 {
                o.qs[j] = q(xb[j]) | (q(xb[j + QK4_0 / 2]) << 4);
            }
            o.d = f32_to_f16_le(d);
        }
    }

    fn dequantize(b: &[BlockQ4_0], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK4_0)) {
            let d = f16_le(blk.d);
            let (lo, hi) = o.split_at_mut(QK4_0 / 2);
            for j in 0..QK4_0 / 2 {
                lo[j] = ((blk.qs[j] & 0x0f) as i32 - 8) as f32 * d;
                hi[j] = ((blk.qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
    }

    fn vec_dot_scalar(x: &[BlockQ4_0], y: &[Q8_0Act]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let mut sumi = 0i32;
            for j in 0..QK4_0 / 2 {
                let lo = (bx.qs[j] & 0x0f) as i32 - 8;
                let hi = (bx.qs[j] >> 4) as i32 - 8;
                sumi += lo * by.qs[j] as i32 + hi * by.qs[j + QK4_0 / 2] as i32;
            }
            sum += (f16_le(bx.d) * by.d) * sumi as f32;
        }
        sum
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockQ4_0], y: &[Q8_0Act]) -> f32 {
        use core::arch::wasm32::*;
        let m4 = u8x16_splat(0x0f);
        let s8 = i8x16_splat(8);
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
            let lo = i8x16_sub(v128_and(q, m4), s8);
            let hi = i8x16_sub(u8x16_shr(q, 4), s8);
            // |(q - 8) * y| <= 8 * 127, so four products fit i16.
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

    /// Four rows in cache (a streamed chunk) with relaxed SIMD, read side by
    /// side ([`super::q8::side4_codes`]): the nibbles (0..=15) against the
    /// activations, the offset of 8 taken off lane by lane: the scalar
    /// reference's integers and bits. Rows not in cache keep the
    /// row-by-row dot (four streams side by side lose the hardware
    /// prefetcher, as for Q8_0).
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    fn vec_dot4(
        x: [&[BlockQ4_0]; 4],
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
        super::q8::side4_codes(
            x,
            y,
            |b| b.d,
            3,
            |bx| {
                // SAFETY: the block's 16-byte `qs`.
                let q = unsafe { v128_load(bx.qs.as_ptr() as *const v128) };
                [v128_and(q, m4), u8x16_shr(q, 4)]
            },
        )
    }
}
