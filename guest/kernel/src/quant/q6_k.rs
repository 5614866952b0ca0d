//! Q6_K: 256 weights per super-block in 16 sub-blocks of 16, each with an
//! 8-bit signed scale; 6-bit signed quants.

use super::q8_k::{make_qx_quants, nearest_int, Q8_KAct, GROUP_MAX_EPS, QK_K};
use super::{f16_le, f32_to_f16_le, QuantKind};
use crate::ggml_type::GgmlType;

/// Q6_K block (ggml `block_q6_K`): 6.5625 bits per weight.
/// `w = d * scales[s] * (q - 32)` for sub-block s (16 weights), q the 6-bit
/// quant: low 4 bits in `ql`, high 2 bits in `qh`. Each 128-weight half h
/// uses `ql[64h..64h + 64]` and `qh[32h..32h + 32]`: for l in 0..32, weight
/// l + 32i (i in 0..4) has low bits from nibble i / 2 of `ql[l + 32 (i % 2)]`
/// and high bits from bits 2i..2i+2 of `qh[l]`.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct BlockQ6_K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6_K>() == 210);
const _: () = assert!(std::mem::align_of::<BlockQ6_K>() == 1);

/// The 256 quants of a block, minus 32, in weight order.
#[inline(always)]
fn quants(b: &BlockQ6_K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        let ql = &b.ql[64 * h..64 * h + 64];
        let qh = &b.qh[32 * h..32 * h + 32];
        let o = &mut q[128 * h..128 * h + 128];
        for l in 0..32 {
            o[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            o[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

/// ggml's `quantize_row_q6_K_ref` for one super-block.
fn quantize_block(x: &[f32], o: &mut BlockQ6_K) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        *s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = *s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *o = bytemuck::Zeroable::zeroed();
        return;
    }
    let iscale = -128.0 / max_scale;
    o.d = f32_to_f16_le(1.0 / iscale);
    for (sc, &s) in o.scales.iter_mut().zip(&scales) {
        *sc = nearest_int(iscale * s).min(127) as i8;
    }
    let d = f16_le(o.d);
    for j in 0..16 {
        let dj = d * o.scales[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dj).clamp(-32, 31) + 32) as i8;
        }
    }
    for h in 0..2 {
        let lh = &l[128 * h..128 * h + 128];
        for i in 0..32 {
            let q = |k: usize| lh[i + 32 * k] as u8;
            o.ql[64 * h + i] = (q(0) & 0x0f) | ((q(2) & 0x0f) << 4);
            o.ql[64 * h + 32 + i] = (q(1) & 0x0f) | ((q(3) & 0x0f) << 4);
            o.qh[32 * h + i] =
                (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}

/// Q6_K weights (dotted against [`Q8_KAct`]).
#[allow(non_camel_case_types)]
pub struct Q6_K;

impl QuantKind for Q6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const BLOCK: usize = QK_K;
    type Block = BlockQ6_K;
    type Act = Q8_KAct;

    fn quantize(x: &[f32], out: &mut [BlockQ6_K]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            quantize_block(xb, o);
        }
    }

    fn dequantize(b: &[BlockQ6_K], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = f16_le(blk.d);
            let q = quants(blk);
            for (s, (o, q)) in o.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                let ds = d * blk.scales[s] as f32;
                for (v, &q) in o.iter_mut().zip(q) {
                    *v = ds * q as f32;
                }
            }
        }
    }

    fn vec_dot_scalar(x: &[BlockQ6_K], y: &[Q8_KAct]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let q = quants(bx);
            let mut isum = 0i32;
            for (s, (q, y)) in q.chunks_exact(16).zip(by.qs.chunks_exact(16)).enumerate() {
                let mut t = 0i32;
                for (&a, &b) in q.iter().zip(y) {
                    t += a as i32 * b as i32;
                }
                isum += bx.scales[s] as i32 * t;
            }
            sum += (f16_le(bx.d) * by.d) * isum as f32;
        }
        sum
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockQ6_K], y: &[Q8_KAct]) -> f32 {
        use core::arch::wasm32::*;
        // Integer block sums in SIMD, the float part as the scalar
        // reference does it: the same bits.
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            // The quants are dotted unsigned (0..=63); the -32 comes back as
            // -32 * sum(scales[s] * bsums[s]).
            // SAFETY: the 16-byte `scales` and the two halves of the 32-byte
            // `bsums`; wasm loads need no alignment.
            let (scv, b0, b1) = unsafe {
                let bp = by.bsums.as_ptr();
                (
                    v128_load(bx.scales.as_ptr() as *const v128),
                    v128_load(bp as *const v128),
                    v128_load(bp.add(8) as *const v128),
                )
            };
            let corr = i32x4_add(
                i32x4_dot_i16x8(b0, i16x8_extend_low_i8x16(scv)),
                i32x4_dot_i16x8(b1, i16x8_extend_high_i8x16(scv)),
            );
            let mut isum = i32x4_neg(i32x4_shl(corr, 5));
            let sc16 = [i16x8_extend_low_i8x16(scv), i16x8_extend_high_i8x16(scv)];
            #[allow(clippy::needless_range_loop)] // `h` also picks the quants
            for h in 0..2 {
                for c in 0..2 {
                    for (i, q) in simd_quants(bx, h, c).into_iter().enumerate() {
                        let off = 128 * h + 32 * i + 16 * c;
                        // SAFETY: off + 16 <= 256, inside `by.qs`.
                        let yv = unsafe { v128_load(by.qs.as_ptr().add(off) as *const v128) };
                        // q <= 63 and |y| <= 127: two products fit i16.
                        let p = super::q8_k::pair_dot(q, yv);
                        let sc = super::q8_k::scale_lane(sc16[h], off / 16 % 8);
                        isum = i32x4_add(isum, i32x4_dot_i16x8(p, sc));
                    }
                }
            }
            sum += (f16_le(bx.d) * by.d) * super::hsum_i32x4(isum) as f32;
        }
        sum
    }
}

/// The unsigned quants (0..=63) of block `b` at `128 h + 32 i + 16 c`
/// (`i` = 0..4, 16 each; `h`, `c` < 2), in simd128.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn simd_quants(b: &BlockQ6_K, h: usize, c: usize) -> [core::arch::wasm32::v128; 4] {
    use core::arch::wasm32::*;
    assert!(h < 2 && c < 2);
    let (m4, m3, m30) = (u8x16_splat(0x0f), u8x16_splat(0x03), u8x16_splat(0x30));
    // SAFETY: 16-byte loads inside `ql` (64h + 32 + 16c + 16 <= 128) and
    // `qh` (32h + 16c + 16 <= 64); wasm loads need no alignment.
    let (la, lb, qh) = unsafe {
        let lp = b.ql.as_ptr().add(64 * h + 16 * c);
        (
            v128_load(lp as *const v128),
            v128_load(lp.add(32) as *const v128),
            v128_load(b.qh.as_ptr().add(32 * h + 16 * c) as *const v128),
        )
    };
    [
        v128_or(v128_and(la, m4), i8x16_shl(v128_and(qh, m3), 4)),
        v128_or(v128_and(lb, m4), v128_and(i8x16_shl(qh, 2), m30)),
        v128_or(u8x16_shr(la, 4), v128_and(qh, m30)),
        v128_or(u8x16_shr(lb, 4), v128_and(u8x16_shr(qh, 2), m30)),
    ]
}
