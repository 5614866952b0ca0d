//! Q4_K: 256 weights per super-block in 8 sub-blocks of 32, each with a
//! 6-bit scale and 6-bit min; 4-bit unsigned quants.

use super::q8_k::{quantize_k4_levels, scales_mins_k4, Q8_KAct, QK_K};
use super::{f16_le, QuantKind};
use crate::ggml_type::GgmlType;

/// Q4_K block (ggml `block_q4_K`): 4.5 bits per weight.
/// Sub-block s (32 weights) is `w = d * sc[s] * q - dmin * m[s]` with
/// (sc, m) the 6-bit pairs packed in `scales` (see `get_scale_min_k4`).
/// Bytes `qs[32k..32k + 32]` hold sub-block 2k in their low nibbles and
/// sub-block 2k + 1 in their high nibbles.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct BlockQ4_K {
    /// Super-block scale of the scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale of the mins, f16 little-endian.
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_K>() == 144);
const _: () = assert!(std::mem::align_of::<BlockQ4_K>() == 1);

/// Q4_K weights (dotted against [`Q8_KAct`]).
#[allow(non_camel_case_types)]
pub struct Q4_K;

/// ggml's `quantize_row_q4_K_ref` for one super-block.
fn quantize_block(x: &[f32], o: &mut BlockQ4_K) {
    let mut l = [0u8; QK_K];
    (o.d, o.dmin, o.scales) = quantize_k4_levels(x, 15, -1.0, 20, &mut l);
    for k in 0..4 {
        for i in 0..32 {
            o.qs[32 * k + i] = l[64 * k + i] | (l[64 * k + 32 + i] << 4);
        }
    }
}

impl QuantKind for Q4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const BLOCK: usize = QK_K;
    type Block = BlockQ4_K;
    type Act = Q8_KAct;

    fn quantize(x: &[f32], out: &mut [BlockQ4_K]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            quantize_block(xb, o);
        }
    }

    fn dequantize(b: &[BlockQ4_K], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
            let (d, dmin) = (f16_le(blk.d), f16_le(blk.dmin));
            let (sc, m) = scales_mins_k4(&blk.scales);
            for k in 0..4 {
                let q = &blk.qs[32 * k..32 * k + 32];
                let (d1, m1) = (d * sc[2 * k] as f32, dmin * m[2 * k] as f32);
                let (d2, m2) = (d * sc[2 * k + 1] as f32, dmin * m[2 * k + 1] as f32);
                let (lo, hi) = o[64 * k..64 * k + 64].split_at_mut(32);
                for i in 0..32 {
                    lo[i] = d1 * (q[i] & 0x0f) as f32 - m1;
                    hi[i] = d2 * (q[i] >> 4) as f32 - m2;
                }
            }
        }
    }

    fn vec_dot_scalar(x: &[BlockQ4_K], y: &[Q8_KAct]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let (sc, m) = scales_mins_k4(&bx.scales);
            let mut summ = 0i32;
            for (j, &s) in by.bsums.iter().enumerate() {
                summ += s as i32 * m[j / 2] as i32;
            }
            let mut isum = 0i32;
            for k in 0..4 {
                let q = &bx.qs[32 * k..32 * k + 32];
                let y = &by.qs[64 * k..64 * k + 64];
                let (mut lo, mut hi) = (0i32, 0i32);
                for i in 0..32 {
                    lo += (q[i] & 0x0f) as i32 * y[i] as i32;
                    hi += (q[i] >> 4) as i32 * y[32 + i] as i32;
                }
                isum += sc[2 * k] as i32 * lo + sc[2 * k + 1] as i32 * hi;
            }
            let d = f16_le(bx.d) * by.d;
            let dmin = f16_le(bx.dmin) * by.d;
            sum += d * isum as f32 - dmin * summ as f32;
        }
        sum
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockQ4_K], y: &[Q8_KAct]) -> f32 {
        use core::arch::wasm32::*;
        let m4 = u8x16_splat(0x0f);
        // Integer block sums in SIMD, the float part as the scalar
        // reference does it: the same bits.
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let (sc, m) = scales_mins_k4(&bx.scales);
            let summ = super::hsum_i32x4(super::q8_k::bsums_dot_mins(&by.bsums, &m));
            let scv = super::q8_k::scales_i16(sc, false);
            let mut isum = i32x4_splat(0);
            for k in 0..4 {
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
                let (l0, l1) = (v128_and(q0, m4), v128_and(q1, m4));
                let (h0, h1) = (u8x16_shr(q0, 4), u8x16_shr(q1, 4));
                // q <= 15 and |y| <= 127: four products fit i16.
                let plo = i16x8_add(super::q8_k::pair_dot(l0, y0), super::q8_k::pair_dot(l1, y1));
                let phi = i16x8_add(super::q8_k::pair_dot(h0, y2), super::q8_k::pair_dot(h1, y3));
                isum = i32x4_add(
                    isum,
                    i32x4_add(
                        i32x4_dot_i16x8(plo, super::q8_k::scale_lane(scv, 2 * k)),
                        i32x4_dot_i16x8(phi, super::q8_k::scale_lane(scv, 2 * k + 1)),
                    ),
                );
            }
            let d = f16_le(bx.d) * by.d;
            let dmin = f16_le(bx.dmin) * by.d;
            sum += d * super::hsum_i32x4(isum) as f32 - dmin * summ as f32;
        }
        sum
    }

    /// Four rows in cache (a streamed chunk) with relaxed SIMD: the packed
    /// one-vector dot on the rows as they are
    /// ([`super::packed_k::q4_k_rows_dot4`]), the same bits. Rows with an
    /// Inf or NaN scale (which that dot does not convert) and rows not in
    /// cache keep the row-by-row dot.
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    fn vec_dot4(
        x: [&[BlockQ4_K]; 4],
        y: &[Q8_KAct],
        _yw: &[i16],
        _ypn: &[super::q8::PosNeg],
        in_cache: bool,
    ) -> [f32; 4] {
        use super::packed::PackKind;
        if !in_cache || !x.iter().all(|r| r.iter().all(<Self as PackKind>::finite)) {
            return x.map(|x| Self::vec_dot(x, y));
        }
        super::packed_k::q4_k_rows_dot4(x, y)
    }
}
