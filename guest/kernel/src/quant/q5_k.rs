//! Q5_K: 256 weights per super-block in 8 sub-blocks of 32, each with a
//! 6-bit scale and 6-bit min; 5-bit unsigned quants.

use super::q8_k::{quantize_k4_levels, scales_mins_k4, Q8_KAct, QK_K};
use super::{f16_le, QuantKind};
use crate::ggml_type::GgmlType;

/// Q5_K block (ggml `block_q5_K`): 5.5 bits per weight.
/// As Q4_K (`w = d * sc[s] * q - dmin * m[s]`, nibbles of `qs[32k..32k+32]`
/// are sub-blocks 2k and 2k + 1), plus a fifth bit: bit s of `qh[l]` is
/// the high bit of weight l of sub-block s.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct BlockQ5_K {
    /// Super-block scale of the scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale of the mins, f16 little-endian.
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_K>() == 176);
const _: () = assert!(std::mem::align_of::<BlockQ5_K>() == 1);

/// The 256 quants (0..=31) of a block, in weight order.
#[inline(always)]
fn quants(b: &BlockQ5_K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for k in 0..4 {
        let ql = &b.qs[32 * k..32 * k + 32];
        for l in 0..32 {
            let h = b.qh[l] >> (2 * k);
            q[64 * k + l] = (ql[l] & 0x0f) | ((h & 1) << 4);
            q[64 * k + 32 + l] = (ql[l] >> 4) | ((h & 2) << 3);
        }
    }
    q
}

/// ggml's `quantize_row_q5_K_ref` for one super-block.
fn quantize_block(x: &[f32], o: &mut BlockQ5_K) {
    let mut l = [0u8; QK_K];
    (o.d, o.dmin, o.scales) = quantize_k4_levels(x, 31, -0.5, 15, &mut l);
    o.qh = [0; QK_K / 8];
    for k in 0..4 {
        for i in 0..32 {
            let (l1, l2) = (l[64 * k + i], l[64 * k + 32 + i]);
            o.qh[i] |= ((l1 >> 4) << (2 * k)) | ((l2 >> 4) << (2 * k + 1));
            o.qs[32 * k + i] = (l1 & 0x0f) | ((l2 & 0x0f) << 4);
        }
    }
}

/// Q5_K weights (dotted against [`Q8_KAct`]).
#[allow(non_camel_case_types)]
pub struct Q5_K;

impl QuantKind for Q5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const BLOCK: usize = QK_K;
    type Block = BlockQ5_K;
    type Act = Q8_KAct;

    fn quantize(x: &[f32], out: &mut [BlockQ5_K]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            quantize_block(xb, o);
        }
    }

    fn dequantize(b: &[BlockQ5_K], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
            let (d, dmin) = (f16_le(blk.d), f16_le(blk.dmin));
            let (sc, m) = scales_mins_k4(&blk.scales);
            let q = quants(blk);
            for (s, (o, q)) in o.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
                let (ds, ms) = (d * sc[s] as f32, dmin * m[s] as f32);
                for (v, &q) in o.iter_mut().zip(q) {
                    *v = ds * q as f32 - ms;
                }
            }
        }
    }

    fn vec_dot_scalar(x: &[BlockQ5_K], y: &[Q8_KAct]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let (sc, m) = scales_mins_k4(&bx.scales);
            let mut summ = 0i32;
            for (j, &s) in by.bsums.iter().enumerate() {
                summ += s as i32 * m[j / 2] as i32;
            }
            let q = quants(bx);
            let mut isum = 0i32;
            for (s, (q, y)) in q.chunks_exact(32).zip(by.qs.chunks_exact(32)).enumerate() {
                let mut t = 0i32;
                for (&a, &b) in q.iter().zip(y) {
                    t += a as i32 * b as i32;
                }
                isum += sc[s] as i32 * t;
            }
            let d = f16_le(bx.d) * by.d;
            let dmin = f16_le(bx.dmin) * by.d;
            sum += d * isum as f32 - dmin * summ as f32;
        }
        sum
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockQ5_K], y: &[Q8_KAct]) -> f32 {
        use core::arch::wasm32::*;
        let m4 = u8x16_splat(0x0f);
        // Integer sums in SIMD, the float part as the scalar reference does
        // it: the same bits (and those of the batched dots).
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let (sc, m) = scales_mins_k4(&bx.scales);
            let summ = super::hsum_i32x4(super::q8_k::bsums_dot_mins(&by.bsums, &m));
            let [qh0, qh1] = simd_qh(bx);
            let scv = super::q8_k::scales_i16(sc, false);
            let mut isum = i32x4_splat(0);
            // Unrolled by hand (LLVM left it rolled, every fifth-bit shift
            // then by a variable count).
            let mut chunk = |k: usize| {
                // SAFETY: 16-byte loads at offsets 32k, 32k + 16 of the
                // 128-byte `qs` and 64k + 0..48 of the 256-byte `qs` of `by`;
                // wasm loads need no alignment.
                let (q0, q1, y0, y1, y2, y3) = unsafe {
                    let qp = bx.qs.as_ptr().add(32 * k);
                    let yp = by.qs.as_ptr().add(64 * k);
                    (
                        v128_load(qp as *const v128),
                        v128_load(qp.add(16) as *const v128),
                        v128_load(yp as *const v128),
                        v128_load(yp.add(16) as *const v128),
                        v128_load(yp.add(32) as *const v128),
                        v128_load(yp.add(48) as *const v128),
                    )
                };
                let b = 2 * k as u32;
                let l0 = v128_or(v128_and(q0, m4), simd_hbit(qh0, b));
                let l1 = v128_or(v128_and(q1, m4), simd_hbit(qh1, b));
                let h0 = v128_or(u8x16_shr(q0, 4), simd_hbit(qh0, b + 1));
                let h1 = v128_or(u8x16_shr(q1, 4), simd_hbit(qh1, b + 1));
                // q <= 31 and |y| <= 127: four products fit i16.
                let plo = i16x8_add(super::q8_k::pair_dot(l0, y0), super::q8_k::pair_dot(l1, y1));
                let phi = i16x8_add(super::q8_k::pair_dot(h0, y2), super::q8_k::pair_dot(h1, y3));
                isum = i32x4_add(
                    isum,
                    i32x4_add(
                        i32x4_dot_i16x8(plo, super::q8_k::scale_lane(scv, 2 * k)),
                        i32x4_dot_i16x8(phi, super::q8_k::scale_lane(scv, 2 * k + 1)),
                    ),
                );
            };
            chunk(0);
            chunk(1);
            chunk(2);
            chunk(3);
            let d = f16_le(bx.d) * by.d;
            let dmin = f16_le(bx.dmin) * by.d;
            sum += d * super::hsum_i32x4(isum) as f32 - dmin * summ as f32;
        }
        sum
    }
}

/// The two halves of block `b`'s 32-byte `qh`, in simd128.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn simd_qh(b: &BlockQ5_K) -> [core::arch::wasm32::v128; 2] {
    use core::arch::wasm32::*;
    // SAFETY: the two halves of the 32-byte `qh`; no alignment needed.
    unsafe {
        let p = b.qh.as_ptr();
        [
            v128_load(p as *const v128),
            v128_load(p.add(16) as *const v128),
        ]
    }
}

/// Bit `s` (0..8) of each byte of `h`, moved to bit 4 (a fifth bit): the
/// bit masked, then a 16-bit shift by a constant (no set bit crosses a
/// byte). Callers unroll their loops over `s`, so the match folds away; a
/// shift by a variable count would be a count register plus the byte-shift
/// emulation in wasmtime's x64 code.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn simd_hbit(h: core::arch::wasm32::v128, s: u32) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    let bit = |b: u8| v128_and(h, u8x16_splat(b));
    match s {
        0 => i16x8_shl(bit(1), 4),
        1 => i16x8_shl(bit(2), 3),
        2 => i16x8_shl(bit(4), 2),
        3 => i16x8_shl(bit(8), 1),
        4 => bit(16),
        5 => u16x8_shr(bit(32), 1),
        6 => u16x8_shr(bit(64), 2),
        _ => u16x8_shr(bit(128), 3),
    }
}
