//! IQ4_XS: 256 weights per super-block in 8 sub-blocks of 32, each with a
//! 6-bit signed scale; 4-bit indices into a non-linear table of 16 values.

use super::iq4_nl::{best_index_int8, KVALUES_IQ4NL};
use super::q8_k::{nearest_int, Q8_KAct, GROUP_MAX_EPS, QK_K};
use super::{f16_le, f32_to_f16_le, QuantKind};
use crate::ggml_type::GgmlType;

/// IQ4_XS block (ggml `block_iq4_xs`): 4.25 bits per weight.
/// Sub-block s (32 weights) is `w = d * (ls - 32) * KVALUES_IQ4NL[q]`, ls
/// the 6-bit scale: low 4 bits in nibble s % 2 of `scales_l[s / 2]`, high 2
/// bits in bits 2s..2s+2 of the little-endian u16 `scales_h`. Bytes
/// `qs[16s..16s + 16]` hold weights 0..16 of sub-block s in their low
/// nibbles and weights 16..32 in their high nibbles.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct BlockIQ4_XS {
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
    /// High bits of the sub-block scales, u16 little-endian.
    pub scales_h: [u8; 2],
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4_XS>() == 136);
const _: () = assert!(std::mem::align_of::<BlockIQ4_XS>() == 1);

/// The 8 sub-block scales, minus 32.
#[inline(always)]
fn scales(b: &BlockIQ4_XS) -> [i32; 8] {
    let h = u16::from_le_bytes(b.scales_h) as i32;
    std::array::from_fn(|s| {
        let lo = (b.scales_l[s / 2] >> (4 * (s % 2))) as i32 & 0x0f;
        (lo | (((h >> (2 * s)) & 3) << 4)) - 32
    })
}

/// ggml's `quantize_row_iq4_nl_impl` for one IQ4_XS super-block (no
/// importance weights, `ntry = 7`).
fn quantize_block(x: &[f32], o: &mut BlockIQ4_XS) {
    let values = &KVALUES_IQ4NL;
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    *o = bytemuck::Zeroable::zeroed();
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let weight: [f32; 32] = std::array::from_fn(|j| xb[j] * xb[j]);
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let sums = |id: f32, lb: Option<&mut [u8]>| {
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            let mut lb = lb;
            for j in 0..32 {
                let k = best_index_int8(&KVALUES_IQ4NL, id * xb[j]);
                if let Some(lb) = lb.as_deref_mut() {
                    lb[j] = k;
                }
                let q = values[k as usize] as f32;
                sumqx += weight[j] * q * xb[j];
                sumq2 += weight[j] * q * q;
            }
            (sumqx, sumq2)
        };
        let d0 = -max / values[0] as f32;
        let (sumqx, sumq2) = sums(1.0 / d0, Some(&mut l[32 * ib..32 * ib + 32]));
        let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -7..=7 {
            let id = (itry as f32 + values[0] as f32) / max;
            let (sumqx, sumq2) = sums(id, None);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let d = -max_scale / 32.0;
    o.d = f32_to_f16_le(d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    for ib in 0..8 {
        let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for j in 0..32 {
            l[32 * ib + j] = best_index_int8(&KVALUES_IQ4NL, idl * x[32 * ib + j]);
        }
        let ls = (ls + 32) as u8;
        o.scales_l[ib / 2] |= (ls & 0x0f) << (4 * (ib % 2));
        scales_h |= ((ls >> 4) as u16) << (2 * ib);
    }
    o.scales_h = scales_h.to_le_bytes();
    for ib in 0..8 {
        for j in 0..16 {
            o.qs[16 * ib + j] = l[32 * ib + j] | (l[32 * ib + 16 + j] << 4);
        }
    }
}

/// IQ4_XS weights (dotted against [`Q8_KAct`]).
#[allow(non_camel_case_types)]
pub struct IQ4_XS;

impl QuantKind for IQ4_XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const BLOCK: usize = QK_K;
    type Block = BlockIQ4_XS;
    type Act = Q8_KAct;

    fn quantize(x: &[f32], out: &mut [BlockIQ4_XS]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            quantize_block(xb, o);
        }
    }

    fn dequantize(b: &[BlockIQ4_XS], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = f16_le(blk.d);
            for (s, ls) in scales(blk).into_iter().enumerate() {
                let dl = d * ls as f32;
                let q = &blk.qs[16 * s..16 * s + 16];
                let (lo, hi) = o[32 * s..32 * s + 32].split_at_mut(16);
                for j in 0..16 {
                    lo[j] = dl * KVALUES_IQ4NL[(q[j] & 0x0f) as usize] as f32;
                    hi[j] = dl * KVALUES_IQ4NL[(q[j] >> 4) as usize] as f32;
                }
            }
        }
    }

    /// As ggml's generic dot: one f32 product per sub-block.
    fn vec_dot_scalar(x: &[BlockIQ4_XS], y: &[Q8_KAct]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let d4d8 = f16_le(bx.d) * by.d;
            for (s, ls) in scales(bx).into_iter().enumerate() {
                let q = &bx.qs[16 * s..16 * s + 16];
                let y = &by.qs[32 * s..32 * s + 32];
                let mut sumi = 0i32;
                for j in 0..16 {
                    sumi += y[j] as i32 * KVALUES_IQ4NL[(q[j] & 0x0f) as usize] as i32;
                    sumi += y[j + 16] as i32 * KVALUES_IQ4NL[(q[j] >> 4) as usize] as i32;
                }
                sum += (d4d8 * ls as f32) * sumi as f32;
            }
        }
        sum
    }

    /// Integer sums over the whole super-block, one f32 product per block.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockIQ4_XS], y: &[Q8_KAct]) -> f32 {
        use core::arch::wasm32::*;
        let m4 = u8x16_splat(0x0f);
        let mut acc = f32x4_splat(0.0);
        for (bx, by) in x.iter().zip(y) {
            let sc16 = super::q8_k::scales_i16(scales(bx).map(|s| s as i8 as u8), true);
            let mut isum = i32x4_splat(0);
            for s in 0..8 {
                // SAFETY: 16 bytes at 16s of the 128-byte `qs`, 32 bytes at
                // 32s of the 256-byte `qs` of `by`; no alignment needed.
                let (q, y0, y1) = unsafe {
                    let yp = by.qs.as_ptr().add(32 * s);
                    (
                        v128_load(bx.qs.as_ptr().add(16 * s) as *const v128),
                        v128_load(yp as *const v128),
                        v128_load(yp.add(16) as *const v128),
                    )
                };
                // |value| <= 127 and |y| <= 127: two products fit i16.
                let p0 = super::iq4_nl::grid_pairs(v128_and(q, m4), y0);
                let p1 = super::iq4_nl::grid_pairs(u8x16_shr(q, 4), y1);
                let s16 = super::q8_k::scale_lane(sc16, s);
                isum = i32x4_add(
                    isum,
                    i32x4_add(i32x4_dot_i16x8(p0, s16), i32x4_dot_i16x8(p1, s16)),
                );
            }
            let d = f16_le(bx.d) * by.d;
            acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(isum), f32x4_splat(d)));
        }
        super::hsum_f32x4(acc)
    }
}
