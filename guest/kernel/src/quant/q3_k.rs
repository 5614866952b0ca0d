//! Q3_K: 256 weights per super-block in 16 sub-blocks of 16, each with a
//! 6-bit signed scale; 3-bit signed quants.

use super::q8_k::{nearest_int, Q8_KAct, GROUP_MAX_EPS, QK_K};
use super::{f16_le, f32_to_f16_le, QuantKind};
use crate::ggml_type::GgmlType;

/// Q3_K block (ggml `block_q3_K`): 3.4375 bits per weight.
/// `w = d * (sc[s] - 32) * q` for sub-block s (16 weights), q in -4..=3.
/// Weight 32i + l (i in 0..8, l in 0..32) has its low 2 bits at bits
/// 2(i % 4).. of `qs[32 (i / 4) + l]` and q = low - 4 unless bit i of
/// `hmask[l]` is set. Scale s has its low 4 bits in nibble s / 8 of
/// `scales[s % 8]` and its high 2 bits at bits 2(s / 4).. of
/// `scales[8 + s % 4]`.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct BlockQ3_K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ3_K>() == 110);
const _: () = assert!(std::mem::align_of::<BlockQ3_K>() == 1);

/// The 16 sub-block scales, minus 32.
#[inline(always)]
pub(crate) fn scales(s: &[u8; 12]) -> [i8; 16] {
    std::array::from_fn(|j| {
        let lo = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        (lo | (hi << 4)) as i8 - 32
    })
}

/// The 256 quants (-4..=3) of a block, in weight order.
#[inline(always)]
pub(crate) fn quants(b: &BlockQ3_K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for (i, o) in q.chunks_exact_mut(32).enumerate() {
        let qs = &b.qs[32 * (i / 4)..32 * (i / 4) + 32];
        let shift = 2 * (i % 4);
        for l in 0..32 {
            let low = ((qs[l] >> shift) & 3) as i8;
            let high = (b.hmask[l] >> i) & 1;
            o[l] = if high != 0 { low } else { low - 4 };
        }
    }
    q
}

/// ggml's `make_q3_quants` with `do_rmse`: a symmetric scale for `L` in
/// -nmax..nmax-1 (stored in `l` plus nmax), refined by coordinate descent
/// on the x²-weighted error.
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (o, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *o = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (o, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let lo = *o as f32;
            let mut slx = sumlx - w * v * lo;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * lo * lo;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *o as i32 {
                    let nl = new_l as f32;
                    slx += w * v * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for o in l.iter_mut() {
        *o += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml's `quantize_row_q3_K_ref` for one super-block.
fn quantize_block(x: &[f32], o: &mut BlockQ3_K) {
    let mut l = [0i8; QK_K];
    let mut sc = [0f32; 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for j in 0..16 {
        sc[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        if sc[j].abs() > amax {
            amax = sc[j].abs();
            max_scale = sc[j];
        }
    }
    o.scales = [0; 12];
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &s) in sc.iter().enumerate() {
            let l = (nearest_int(iscale * s) as i8).clamp(-32, 31) + 32;
            if j < 8 {
                o.scales[j] = (l & 0x0f) as u8;
            } else {
                o.scales[j - 8] |= ((l & 0x0f) << 4) as u8;
            }
            o.scales[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
        }
        o.d = f32_to_f16_le(1.0 / iscale);
    } else {
        o.d = f32_to_f16_le(0.0);
    }
    let d = f16_le(o.d);
    for (j, s) in scales(&o.scales).into_iter().enumerate() {
        let dj = d * s as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dj).clamp(-4, 3) + 4) as i8;
        }
    }
    o.hmask = [0; QK_K / 8];
    for (j, v) in l.iter_mut().enumerate() {
        if *v > 3 {
            o.hmask[j % 32] |= 1 << (j / 32);
            *v -= 4;
        }
    }
    for h in 0..2 {
        for i in 0..32 {
            let q = |k: usize| l[128 * h + i + 32 * k] as u8;
            o.qs[32 * h + i] = q(0) | (q(1) << 2) | (q(2) << 4) | (q(3) << 6);
        }
    }
}

/// Q3_K weights (dotted against [`Q8_KAct`]).
#[allow(non_camel_case_types)]
pub struct Q3_K;

impl QuantKind for Q3_K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const BLOCK: usize = QK_K;
    type Block = BlockQ3_K;
    type Act = Q8_KAct;

    fn quantize(x: &[f32], out: &mut [BlockQ3_K]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            quantize_block(xb, o);
        }
    }

    fn dequantize(b: &[BlockQ3_K], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = f16_le(blk.d);
            let sc = scales(&blk.scales);
            let q = quants(blk);
            for (s, (o, q)) in o.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                let dl = d * sc[s] as f32;
                for (v, &q) in o.iter_mut().zip(q) {
                    *v = dl * q as f32;
                }
            }
        }
    }

    fn vec_dot_scalar(x: &[BlockQ3_K], y: &[Q8_KAct]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let sc = scales(&bx.scales);
            let q = quants(bx);
            let mut isum = 0i32;
            for (s, (q, y)) in q.chunks_exact(16).zip(by.qs.chunks_exact(16)).enumerate() {
                let mut t = 0i32;
                for (&a, &b) in q.iter().zip(y) {
                    t += a as i32 * b as i32;
                }
                isum += sc[s] as i32 * t;
            }
            sum += (f16_le(bx.d) * by.d) * isum as f32;
        }
        sum
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockQ3_K], y: &[Q8_KAct]) -> f32 {
        use core::arch::wasm32::*;
        let m3 = u8x16_splat(3);
        let four = u8x16_splat(4);
        // Integer block sums in SIMD, the float part as the scalar
        // reference does it: the same bits (so a prompt batch, see
        // `kbatch`, and one token agree).
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let sc = scales(&bx.scales);
            // SAFETY: the two halves of the 32-byte `hmask`.
            let hm = unsafe {
                let p = bx.hmask.as_ptr();
                [
                    v128_load(p as *const v128),
                    v128_load(p.add(16) as *const v128),
                ]
            };
            // The quants are dotted plus 4 (0..=7, unsigned); the 4 comes
            // back as -4 * sum(scales[s] * bsums[s]).
            // SAFETY: the two halves of the 32-byte `bsums` and the 16
            // scales; wasm loads need no alignment.
            let (b0, b1, scv) = unsafe {
                let bp = by.bsums.as_ptr();
                (
                    v128_load(bp as *const v128),
                    v128_load(bp.add(8) as *const v128),
                    v128_load(sc.as_ptr() as *const v128),
                )
            };
            let corr = i32x4_add(
                i32x4_dot_i16x8(b0, i16x8_extend_low_i8x16(scv)),
                i32x4_dot_i16x8(b1, i16x8_extend_high_i8x16(scv)),
            );
            let mut isum = i32x4_neg(i32x4_shl(corr, 2));
            let sc16 = [i16x8_extend_low_i8x16(scv), i16x8_extend_high_i8x16(scv)];
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
                    for c in 0..2 {
                        // 16-bit shifts: the bits they carry across a
                        // byte land where the masks drop them.
                        let low = v128_and(u16x8_shr(qv[c], 2 * j as u32), m3);
                        // q + 4: low, plus 4 where the high bit (bit i of
                        // the hmask byte) is set: that bit moved to bit 2.
                        let high = match i {
                            0 => i16x8_shl(hm[c], 2),
                            1 => i16x8_shl(hm[c], 1),
                            2 => hm[c],
                            3 => u16x8_shr(hm[c], 1),
                            4 => u16x8_shr(hm[c], 2),
                            5 => u16x8_shr(hm[c], 3),
                            6 => u16x8_shr(hm[c], 4),
                            _ => u16x8_shr(hm[c], 5),
                        };
                        let q4 = v128_or(low, v128_and(high, four));
                        // SAFETY: 32i + 16c + 16 <= 256, inside `by.qs`.
                        let yv = unsafe {
                            v128_load(by.qs.as_ptr().add(32 * i + 16 * c) as *const v128)
                        };
                        // q + 4 <= 7 and |y| <= 127: two products fit i16.
                        let p = super::q8_k::pair_dot(q4, yv);
                        let s = super::q8_k::scale_lane(sch, 2 * j + c);
                        isum = i32x4_add(isum, i32x4_dot_i16x8(p, s));
                    }
                }
            }
            sum += (f16_le(bx.d) * by.d) * super::hsum_i32x4(isum) as f32;
        }
        sum
    }
}
