//! Q2_K: 256 weights per super-block in 16 sub-blocks of 16, each with a
//! 4-bit scale and 4-bit min; 2-bit unsigned quants.

use super::q8_k::{make_qkx2_quants, nearest_int, Q8_KAct, QK_K};
use super::{f16_le, f32_to_f16_le, QuantKind};
use crate::ggml_type::GgmlType;

/// Q2_K block (ggml `block_q2_K`): 2.625 bits per weight.
/// `w = d * (scales[s] & 15) * q - dmin * (scales[s] >> 4)` for sub-block s
/// (16 weights), q in 0..=3: weight 32i + l (i in 0..8, l in 0..32) is at
/// bits 2(i % 4).. of `qs[32 (i / 4) + l]`.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct BlockQ2_K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale of the mins, f16 little-endian.
    pub dmin: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ2_K>() == 84);
const _: () = assert!(std::mem::align_of::<BlockQ2_K>() == 1);

/// The 256 quants (0..=3) of a block, in weight order.
#[inline(always)]
pub(crate) fn quants(b: &BlockQ2_K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for (i, o) in q.chunks_exact_mut(32).enumerate() {
        let qs = &b.qs[32 * (i / 4)..32 * (i / 4) + 32];
        for (v, &b) in o.iter_mut().zip(qs) {
            *v = (b >> (2 * (i % 4))) & 3;
        }
    }
    q
}

/// ggml's `quantize_row_q2_K_ref` for one super-block.
fn quantize_block(x: &[f32], o: &mut BlockQ2_K) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..16 {
        let xb = &x[16 * j..16 * j + 16];
        let weights: [f32; 16] = std::array::from_fn(|i| xb[i].abs());
        let lb = &mut l[16 * j..16 * j + 16];
        (scales[j], mins[j]) = make_qkx2_quants(3, xb, &weights, lb, -0.5, 0.1, 15, true);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (o, &s) in o.scales.iter_mut().zip(&scales) {
            *o = nearest_int(iscale * s) as u8;
        }
        o.d = f32_to_f16_le(max_scale / 15.0);
    } else {
        o.scales = [0; 16];
        o.d = f32_to_f16_le(0.0);
    }
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (o, &m) in o.scales.iter_mut().zip(&mins) {
            *o |= (nearest_int(iscale * m) << 4) as u8;
        }
        o.dmin = f32_to_f16_le(max_min / 15.0);
    } else {
        o.dmin = f32_to_f16_le(0.0);
    }
    let (d, dmin) = (f16_le(o.d), f16_le(o.dmin));
    for j in 0..16 {
        let dj = d * (o.scales[j] & 0x0f) as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * (o.scales[j] >> 4) as f32;
        for i in 0..16 {
            l[16 * j + i] = nearest_int((x[16 * j + i] + dm) / dj).clamp(0, 3) as u8;
        }
    }
    for h in 0..2 {
        for i in 0..32 {
            let q = |k: usize| l[128 * h + i + 32 * k];
            o.qs[32 * h + i] = q(0) | (q(1) << 2) | (q(2) << 4) | (q(3) << 6);
        }
    }
}

/// Q2_K weights (dotted against [`Q8_KAct`]).
#[allow(non_camel_case_types)]
pub struct Q2_K;

impl QuantKind for Q2_K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const BLOCK: usize = QK_K;
    type Block = BlockQ2_K;
    type Act = Q8_KAct;

    fn quantize(x: &[f32], out: &mut [BlockQ2_K]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            quantize_block(xb, o);
        }
    }

    fn dequantize(b: &[BlockQ2_K], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
            let (d, dmin) = (f16_le(blk.d), f16_le(blk.dmin));
            let q = quants(blk);
            for (s, (o, q)) in o.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                let sc = blk.scales[s];
                let (dl, ml) = (d * (sc & 0x0f) as f32, dmin * (sc >> 4) as f32);
                for (v, &q) in o.iter_mut().zip(q) {
                    *v = dl * q as f32 - ml;
                }
            }
        }
    }

    fn vec_dot_scalar(x: &[BlockQ2_K], y: &[Q8_KAct]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let mut summs = 0i32;
            for (&s, &sc) in by.bsums.iter().zip(&bx.scales) {
                summs += s as i32 * (sc >> 4) as i32;
            }
            let q = quants(bx);
            let mut isum = 0i32;
            for (s, (q, y)) in q.chunks_exact(16).zip(by.qs.chunks_exact(16)).enumerate() {
                let mut t = 0i32;
                for (&a, &b) in q.iter().zip(y) {
                    t += a as i32 * b as i32;
                }
                isum += (bx.scales[s] & 0x0f) as i32 * t;
            }
            let dall = by.d * f16_le(bx.d);
            let dmin = by.d * f16_le(bx.dmin);
            sum += dall * isum as f32 - dmin * summs as f32;
        }
        sum
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockQ2_K], y: &[Q8_KAct]) -> f32 {
        use core::arch::wasm32::*;
        let m3 = u8x16_splat(3);
        // Integer block sums in SIMD, the float part as the scalar
        // reference does it: the same bits (so a prompt batch, see
        // `kbatch`, and one token agree).
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            // SAFETY: the 16-byte `scales` and the 16 i16 `bsums`; wasm
            // loads need no alignment.
            let (sc, b0, b1) = unsafe {
                let bs = by.bsums.as_ptr();
                (
                    v128_load(bx.scales.as_ptr() as *const v128),
                    v128_load(bs as *const v128),
                    v128_load(bs.add(8) as *const v128),
                )
            };
            // The mins (high nibbles) times the bsums: exact integers.
            let mins = u8x16_shr(sc, 4);
            let summs = super::hsum_i32x4(i32x4_add(
                i32x4_dot_i16x8(b0, u16x8_extend_low_u8x16(mins)),
                i32x4_dot_i16x8(b1, u16x8_extend_high_u8x16(mins)),
            ));
            let mut isum = i32x4_splat(0);
            // The 16 scales' low nibbles as i16, 8 per vector.
            let scv = v128_and(sc, u8x16_splat(0x0f));
            let sc16 = [u16x8_extend_low_u8x16(scv), u16x8_extend_high_u8x16(scv)];
            for (h, &sch) in sc16.iter().enumerate() {
                // SAFETY: the two halves of `qs[32h..32h + 32]`.
                let qv = unsafe {
                    let p = bx.qs.as_ptr().add(32 * h);
                    [
                        v128_load(p as *const v128),
                        v128_load(p.add(16) as *const v128),
                    ]
                };
                for j in 0..4 {
                    let i = 4 * h + j;
                    for (c, &qc) in qv.iter().enumerate() {
                        // A 16-bit shift: the bits it carries across a
                        // byte land where the mask drops them.
                        let q = v128_and(u16x8_shr(qc, 2 * j as u32), m3);
                        // SAFETY: 32i + 16c + 16 <= 256, inside `by.qs`.
                        let yv = unsafe {
                            v128_load(by.qs.as_ptr().add(32 * i + 16 * c) as *const v128)
                        };
                        // q <= 3 and |y| <= 127: two products fit i16.
                        let p = super::q8_k::pair_dot(q, yv);
                        let s = super::q8_k::scale_lane(sch, 2 * j + c);
                        isum = i32x4_add(isum, i32x4_dot_i16x8(p, s));
                    }
                }
            }
            let dall = by.d * f16_le(bx.d);
            let dmin = by.d * f16_le(bx.dmin);
            sum += dall * super::hsum_i32x4(isum) as f32 - dmin * summs as f32;
        }
        sum
    }
}
