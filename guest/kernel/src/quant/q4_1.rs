//! Q4_1: 32 weights per block, f16 scale and minimum, 4-bit unsigned quants.

use super::q8::Q8_1Act;
use super::{f16_le, f32_to_f16_le, QuantKind};
use crate::ggml_type::GgmlType;

/// Weights per block.
pub const QK4_1: usize = 32;

/// Q4_1 block (ggml `block_q4_1`): 5 bits per weight.
/// `w[j] = d * q[j] + m`; nibble order as Q4_0.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Minimum, f16 little-endian.
    pub m: [u8; 2],
    pub qs: [u8; QK4_1 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::align_of::<BlockQ4_1>() == 1);

/// Q4_1 weights (dotted against [`Q8_1Act`]).
pub struct Q4_1;

impl QuantKind for Q4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK: usize = QK4_1;
    type Block = BlockQ4_1;
    type Act = Q8_1Act;

    fn quantize(x: &[f32], out: &mut [BlockQ4_1]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK4_1)) {
            let mut min = f32::MAX;
            let mut max = -f32::MAX;
            for &v in xb {
                min = if v < min { v } else { min };
                max = if v > max { v } else { max };
            }
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
            for j in 0..QK4_1 / 2 {
                o.qs[j] = q(xb[j]) | (q(xb[j + QK4_1 / 2]) << 4);
            }
            o.d = f32_to_f16_le(d);
            o.m = f32_to_f16_le(min);
        }
    }

    fn dequantize(b: &[BlockQ4_1], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK4_1)) {
            let d = f16_le(blk.d);
            let m = f16_le(blk.m);
            let (lo, hi) = o.split_at_mut(QK4_1 / 2);
            for j in 0..QK4_1 / 2 {
                lo[j] = (blk.qs[j] & 0x0f) as f32 * d + m;
                hi[j] = (blk.qs[j] >> 4) as f32 * d + m;
            }
        }
    }

    fn vec_dot_scalar(x: &[BlockQ4_1], y: &[Q8_1Act]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let mut sumi = 0i32;
            for j in 0..QK4_1 / 2 {
                let lo = (bx.qs[j] & 0x0f) as i32;
                let hi = (bx.qs[j] >> 4) as i32;
                sumi += lo * by.qs[j] as i32 + hi * by.qs[j + QK4_1 / 2] as i32;
            }
            sum += (f16_le(bx.d) * by.d) * sumi as f32 + f16_le(bx.m) * by.s;
        }
        sum
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockQ4_1], y: &[Q8_1Act]) -> f32 {
        use core::arch::wasm32::*;
        let m4 = u8x16_splat(0x0f);
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
            let lo = v128_and(q, m4);
            let hi = u8x16_shr(q, 4);
            // 0 <= q <= 15 and |y| <= 127, so four products fit i16.
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
            sum += (f16_le(bx.d) * by.d) * super::hsum_i32x4(s) as f32 + f16_le(bx.m) * by.s;
        }
        sum
    }

    /// Four rows in cache with relaxed SIMD, read side by side, as Q4_0's
    /// ([`super::q4_0`]): the nibbles against the activations (no offset:
    /// the minimum's term `m * s` is the block's float part), each lane at
    /// most 2 * 2 * 15 * 128 in magnitude, exact in i16; the float part
    /// that of [`QuantKind::vec_dot_scalar`], lane by lane: the same bits.
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    fn vec_dot4(
        x: [&[BlockQ4_1]; 4],
        y: &[Q8_1Act],
        _yw: &[i16],
        _ypn: &[super::q8::PosNeg],
        in_cache: bool,
    ) -> [f32; 4] {
        use super::q8::{f16s4, row_totals4};
        use core::arch::wasm32::*;
        assert!(x.iter().all(|r| r.len() == y.len()));
        if !in_cache {
            return x.map(|x| Self::vec_dot(x, y));
        }
        let m4 = u8x16_splat(0x0f);
        let mut acc = f32x4_splat(0.0);
        for (b, by) in y.iter().enumerate() {
            // SAFETY: the two halves of the 32-byte `qs` of block `b`.
            let (y0, y1) = unsafe {
                let p = by.qs.as_ptr();
                (
                    v128_load(p as *const v128),
                    v128_load(p.add(16) as *const v128),
                )
            };
            let dot = |w: v128, a: v128| i16x8_relaxed_dot_i8x16_i7x16(a, w);
            let row = |r: usize| {
                // SAFETY: the 16-byte `qs` of block `b` of row `r`.
                let q = unsafe { v128_load(x[r][b].qs.as_ptr() as *const v128) };
                let s = i16x8_add(dot(v128_and(q, m4), y0), dot(u8x16_shr(q, 4), y1));
                i32x4_extadd_pairwise_i16x8(s)
            };
            let sumi = row_totals4([row(0), row(1), row(2), row(3)]);
            let d = f16s4([x[0][b].d, x[1][b].d, x[2][b].d, x[3][b].d]);
            let m = f16s4([x[0][b].m, x[1][b].m, x[2][b].m, x[3][b].m]);
            let term = f32x4_add(
                f32x4_mul(f32x4_mul(d, f32x4_splat(by.d)), f32x4_convert_i32x4(sumi)),
                f32x4_mul(m, f32x4_splat(by.s)),
            );
            acc = f32x4_add(acc, term);
        }
        super::f32x4_lanes(acc)
    }
}
