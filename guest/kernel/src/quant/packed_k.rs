//! 4-row packed layouts (see [`super::packed`]) for Q5_0, Q4_K, Q5_K and Q6_K,
//! with the same contract: the packed bytes take the space of the rows
//! they replace (packing is in place), the weights of a group are unpacked
//! once for `T` activation vectors, and every row's result has the bits of
//! [`super::QuantKind::vec_dot_scalar`] (the integer sums are exact in any order;
//! the float part repeats the reference's operations lane by lane).
//!
//! Layouts (group block `b` = block `b` of 4 rows):
//! - Q5_0: the 4 f16 scales, then the fifth bits as 8 bit planes (16
//!   bytes: bit `2k` of byte `i` is the fifth bit of the low nibble of byte
//!   `i` of 16-byte part `k` of the quants, bit `2k + 1` that of its high
//!   nibble), then the quants interleaved two bytes at a time as in
//!   [`super::packed`]. Masking plane `v` and shifting it to bit 4 gives a
//!   part's fifth bits ready to `or` onto its nibbles: two operations.
//! - Q4_K: the 4 `d`, the 4 `dmin`, the 4 rows' 12 scale bytes, then the
//!   quants interleaved 32 bytes at a time (`qs[128 k + 32 r + i]` is row
//!   `r`'s `qs[32 k + i]`): each 16 bytes are one row's, as unpacked, so
//!   the one-vector dot meets them with the activations as they are and
//!   shares each activation load among the 4 rows; the batched dots
//!   transpose each 4 x 16 bytes into 4 columns per row.
//! - Q5_K: Q4_K's layout, then the 4 rows' 32-byte `qh` one after
//!   another (a row's 16-byte runs line up with its quants').
//! - Q6_K: `ql` and `qh` each interleaved two bytes at a time, the 16
//!   scales of the 4 rows transposed (`scales[4 s + r]`), then the 4 `d`.

use super::packed::{deinterleave, finite, interleave, PackKind, ROWS};
use super::q4_k::{BlockQ4_K, Q4_K};
use super::q5_0::{BlockQ5_0, Q5_0};
use super::q5_k::{BlockQ5_K, Q5_K};
use super::q6_k::{BlockQ6_K, Q6_K};
use bytemuck::{Pod, Zeroable};

/// Q5_0, 4 rows.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_0x4 {
    /// The 4 rows' f16 scales.
    pub d: [[u8; 2]; ROWS],
    /// The fifth bits: bit `2k` (`2k + 1`) of byte `i` is that of the low
    /// (high) nibble of byte `i` of part `k`.
    pub qh: [u8; 16],
    pub qs: [u8; 64],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0x4>() == 4 * 22);

/// Q4_K, 4 rows.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_Kx4 {
    pub d: [[u8; 2]; ROWS],
    pub dmin: [[u8; 2]; ROWS],
    pub scales: [[u8; 12]; ROWS],
    pub qs: [u8; 512],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_Kx4>() == 4 * 144);

/// Q5_K, 4 rows: Q4_K's layout, then the 4 rows' `qh` one after another.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_Kx4 {
    pub head: BlockQ4_Kx4,
    /// `qh[32 r + i]`: row `r`'s `qh[i]`.
    pub qh: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_Kx4>() == 4 * 176);

/// Q6_K, 4 rows.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6_Kx4 {
    pub ql: [u8; 512],
    pub qh: [u8; 256],
    /// `scales[4 s + r]`: row `r`'s scale of sub-block `s`.
    pub scales: [i8; 64],
    pub d: [[u8; 2]; ROWS],
}
const _: () = assert!(std::mem::size_of::<BlockQ6_Kx4>() == 4 * 210);

/// For byte `i` of a 16-byte part `k` of interleaved Q5_0 quants: its row
/// and its column (the low nibble's weight; the high nibble's is 16 more).
fn q5_0_byte(k: usize, i: usize) -> (usize, usize) {
    let (c, r, e) = (i / 8, (i / 2) % ROWS, i % 2);
    (r, 4 * k + 2 * c + e)
}

/// Q4_K's quants of 4 rows, 32 bytes of each row at a time: `out[128 k +
/// 32 r + i]` = row `r`'s `qs[32 k + i]`.
fn interleave32(rows: [&[u8; 128]; ROWS]) -> [u8; 512] {
    let mut out = [0u8; 512];
    for k in 0..4 {
        for (r, row) in rows.iter().enumerate() {
            out[128 * k + 32 * r..128 * k + 32 * r + 32].copy_from_slice(&row[32 * k..32 * k + 32]);
        }
    }
    out
}

/// Row `r`'s quants of [`interleave32`]d ones.
fn deinterleave32(qs: &[u8; 512], r: usize) -> [u8; 128] {
    let mut out = [0u8; 128];
    for k in 0..4 {
        out[32 * k..32 * k + 32].copy_from_slice(&qs[128 * k + 32 * r..128 * k + 32 * r + 32]);
    }
    out
}

/// [`PackKind::dot4`] of the Q4_K-shaped types (Q4_K, Q5_K).
macro_rules! k4_dot4 {
    () => {
        fn dot4<const T: usize>(
            g: &[Self::Group],
            y: [&[Self::Act]; T],
            yw: [&[i16]; T],
        ) -> [[f32; ROWS]; T] {
            #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
            {
                let _ = yw;
                simd::q4_k_relaxed::<_, T>(g, y)
            }
            #[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
            dot4_impl::<Self, T>(g, y, yw)
        }
    };
}

impl PackKind for Q5_0 {
    const WIDE_TILE: bool = cfg!(target_feature = "relaxed-simd");
    type Group = BlockQ5_0x4;
    fn pack(rows: [&BlockQ5_0; ROWS]) -> BlockQ5_0x4 {
        let mut qh = [0u8; 16];
        for k in 0..4 {
            for (i, plane) in qh.iter_mut().enumerate() {
                let (r, j) = q5_0_byte(k, i);
                let h = u32::from_le_bytes(rows[r].qh);
                *plane |= (((h >> j) & 1) as u8) << (2 * k);
                *plane |= (((h >> (j + 16)) & 1) as u8) << (2 * k + 1);
            }
        }
        BlockQ5_0x4 {
            d: rows.map(|b| b.d),
            qh,
            qs: interleave(rows.map(|b| &b.qs)),
        }
    }
    fn finite(b: &BlockQ5_0) -> bool {
        finite(b.d)
    }
    fn unpack(g: &BlockQ5_0x4, r: usize) -> BlockQ5_0 {
        let mut h = 0u32;
        for k in 0..4 {
            for (i, &plane) in g.qh.iter().enumerate() {
                let (ri, j) = q5_0_byte(k, i);
                if ri == r {
                    h |= (((plane >> (2 * k)) & 1) as u32) << j;
                    h |= (((plane >> (2 * k + 1)) & 1) as u32) << (j + 16);
                }
            }
        }
        BlockQ5_0 {
            d: g.d[r],
            qh: h.to_le_bytes(),
            qs: deinterleave(&g.qs, r),
        }
    }
    fn dot4<const T: usize>(
        g: &[Self::Group],
        y: [&[Self::Act]; T],
        yw: [&[i16]; T],
    ) -> [[f32; ROWS]; T] {
        dot4_impl::<Self, T>(g, y, yw)
    }
    #[inline(always)]
    fn dot4_sums<const T: usize>(
        g: &[Self::Group],
        y: [&[Self::Act]; T],
        yw: [&[i16]; T],
        ys: [&[i32]; T],
    ) -> [[f32; ROWS]; T] {
        #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
        {
            let _ = yw;
            simd::q5_0_relaxed::<T>(g, y, ys)
        }
        #[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
        {
            let _ = ys;
            dot4_impl::<Self, T>(g, y, yw)
        }
    }
}

impl PackKind for Q4_K {
    const WIDE_TILE: bool = cfg!(target_feature = "relaxed-simd");
    type Group = BlockQ4_Kx4;
    fn pack(rows: [&BlockQ4_K; ROWS]) -> BlockQ4_Kx4 {
        BlockQ4_Kx4 {
            d: rows.map(|b| b.d),
            dmin: rows.map(|b| b.dmin),
            scales: rows.map(|b| b.scales),
            qs: interleave32(rows.map(|b| &b.qs)),
        }
    }
    fn finite(b: &BlockQ4_K) -> bool {
        finite(b.d) && finite(b.dmin)
    }
    fn unpack(g: &BlockQ4_Kx4, r: usize) -> BlockQ4_K {
        BlockQ4_K {
            d: g.d[r],
            dmin: g.dmin[r],
            scales: g.scales[r],
            qs: deinterleave32(&g.qs, r),
        }
    }
    k4_dot4!();
}

impl PackKind for Q5_K {
    const WIDE_TILE: bool = cfg!(target_feature = "relaxed-simd");
    type Group = BlockQ5_Kx4;
    fn pack(rows: [&BlockQ5_K; ROWS]) -> BlockQ5_Kx4 {
        let mut qh = [0u8; 128];
        for (r, b) in rows.iter().enumerate() {
            qh[32 * r..32 * r + 32].copy_from_slice(&b.qh);
        }
        BlockQ5_Kx4 {
            // The same head as Q4_K's: the rows less their `qh`.
            head: Q4_K::pack(
                rows.map(|b| BlockQ4_K {
                    d: b.d,
                    dmin: b.dmin,
                    scales: b.scales,
                    qs: b.qs,
                })
                .each_ref(),
            ),
            qh,
        }
    }
    fn finite(b: &BlockQ5_K) -> bool {
        finite(b.d) && finite(b.dmin)
    }
    fn unpack(g: &BlockQ5_Kx4, r: usize) -> BlockQ5_K {
        BlockQ5_K {
            d: g.head.d[r],
            dmin: g.head.dmin[r],
            scales: g.head.scales[r],
            qh: std::array::from_fn(|i| g.qh[32 * r + i]),
            qs: deinterleave32(&g.head.qs, r),
        }
    }
    k4_dot4!();
}

impl PackKind for Q6_K {
    const WIDE_TILE: bool = cfg!(target_feature = "relaxed-simd");
    type Group = BlockQ6_Kx4;
    fn pack(rows: [&BlockQ6_K; ROWS]) -> BlockQ6_Kx4 {
        let mut scales = [0i8; 64];
        for (r, b) in rows.iter().enumerate() {
            for s in 0..16 {
                scales[4 * s + r] = b.scales[s];
            }
        }
        BlockQ6_Kx4 {
            ql: interleave(rows.map(|b| &b.ql)),
            qh: interleave(rows.map(|b| &b.qh)),
            scales,
            d: rows.map(|b| b.d),
        }
    }
    fn finite(b: &BlockQ6_K) -> bool {
        finite(b.d)
    }
    fn unpack(g: &BlockQ6_Kx4, r: usize) -> BlockQ6_K {
        BlockQ6_K {
            ql: deinterleave(&g.ql, r),
            qh: deinterleave(&g.qh, r),
            scales: std::array::from_fn(|s| g.scales[4 * s + r]),
            d: g.d[r],
        }
    }
    fn dot4<const T: usize>(
        g: &[Self::Group],
        y: [&[Self::Act]; T],
        yw: [&[i16]; T],
    ) -> [[f32; ROWS]; T] {
        // Relaxed SIMD: one vector (decode) and several (the codes of a
        // sub-block made once for all of them, each vector's activations
        // shuffled in register).
        #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
        {
            let _ = yw;
            if T == 1 {
                let one = simd::q6_k_relaxed1(g, y[0]);
                return std::array::from_fn(|_| one);
            }
            simd::q6_k_relaxed::<T>(g, y)
        }
        #[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
        dot4_impl::<Self, T>(g, y, yw)
    }
}

/// The scalar [`PackKind::dot4`] is [`super::packed`]'s.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use super::packed::dot4_impl;

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use simd::dot4_impl;

#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
pub(super) use simd::{q4_k_rows_dot4, quads4, rows};

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use super::{BlockQ4_Kx4, BlockQ5_0x4, BlockQ5_Kx4, BlockQ6_Kx4, PackKind, ROWS};
    use crate::quant::load_f16x4;
    #[cfg(target_feature = "relaxed-simd")]
    use crate::quant::packed::simd::row_sums;
    #[cfg(target_feature = "relaxed-simd")]
    use crate::quant::packed::simd::transpose4;
    use crate::quant::q4_k::Q4_K;
    use crate::quant::q5_0::Q5_0;
    use crate::quant::q5_k::Q5_K;
    use crate::quant::q6_k::Q6_K;
    use crate::quant::q8::Q8_0Act;
    use crate::quant::q8_k::Q8_KAct;
    use core::arch::wasm32::*;

    /// One group block of a packed type.
    pub trait SimdK: PackKind {
        /// Group block `b` (`bx`) dotted with vectors `y`/`yw`, its term
        /// added to `acc` lane by lane as the reference adds it. The caller
        /// asserted `b < y[t].len()` and `yw[t].len() == BLOCK * y[t].len()`.
        fn block<const T: usize>(
            bx: &Self::Group,
            b: usize,
            y: &[&[Self::Act]; T],
            yw: &[&[i16]; T],
            acc: &mut [v128; T],
        );
    }

    /// [`PackKind::dot4`] in simd128.
    #[inline(always)]
    pub fn dot4_impl<K: SimdK, const T: usize>(
        g: &[K::Group],
        y: [&[K::Act]; T],
        yw: [&[i16]; T],
    ) -> [[f32; ROWS]; T] {
        for t in 0..T {
            assert!(y[t].len() == g.len() && yw[t].len() == K::BLOCK * g.len());
        }
        let mut acc = [f32x4_splat(0.0); T];
        for (b, bx) in g.iter().enumerate() {
            K::block::<T>(bx, b, &y, &yw, &mut acc);
        }
        acc.map(lanes)
    }

    impl SimdK for Q5_0 {
        #[inline(always)]
        fn block<const T: usize>(
            bx: &BlockQ5_0x4,
            b: usize,
            y: &[&[Q8_0Act]; T],
            yw: &[&[i16]; T],
            acc: &mut [v128; T],
        ) {
            let s16 = i8x16_splat(16);
            let mut s = [[i32x4_splat(0); 2]; T];
            let codes = q5_0_codes(bx);
            for (k, &(lo, hi)) in codes.iter().enumerate() {
                // SAFETY: activation offsets below 32 in vector blocks `b`
                // (32 i16 each, the caller's assert).
                unsafe {
                    let (lo, hi) = (i8x16_sub(lo, s16), i8x16_sub(hi, s16));
                    let w = [
                        i16x8_extend_low_i8x16(lo),
                        i16x8_extend_high_i8x16(lo),
                        i16x8_extend_low_i8x16(hi),
                        i16x8_extend_high_i8x16(hi),
                    ];
                    for t in 0..T {
                        let yp = yw[t].as_ptr().add(32 * b + 4 * k);
                        let a = i32x4_add(dot_pair(w[0], yp), dot_pair(w[1], yp.add(2)));
                        let c = i32x4_add(dot_pair(w[2], yp.add(16)), dot_pair(w[3], yp.add(18)));
                        s[t][0] = i32x4_add(s[t][0], a);
                        s[t][1] = i32x4_add(s[t][1], c);
                    }
                }
            }
            // SAFETY: reads the 8-byte `d`.
            let d = unsafe { load_f16x4(bx.d.as_ptr()) };
            for t in 0..T {
                let sumi = i32x4_add(s[t][0], s[t][1]);
                let term = f32x4_mul(
                    f32x4_mul(d, f32x4_splat(y[t][b].d)),
                    f32x4_convert_i32x4(sumi),
                );
                acc[t] = f32x4_add(acc[t], term);
            }
        }
    }

    /// A Q4_K group block's per-row scales (`lane(k)`: sub-block `k`'s of
    /// the 4 rows, a lane each), and each vector's min sums: over
    /// sub-blocks, its two bsums times the min (exact integers: at most
    /// 8 * 63 * 4064 in magnitude).
    #[inline(always)]
    fn q4_k_mins<const T: usize>(
        bx: &BlockQ4_Kx4,
        b: usize,
        y: &[&[Q8_KAct]; T],
    ) -> (impl Fn(usize) -> v128, [v128; T]) {
        q4_k_mins_of(q4_k_words(bx), b, y)
    }

    /// The 4 rows' 12 scale bytes of a Q4_K group block as u32 words: lane
    /// r of word i is row r's u_i of `scales_mins_k4`.
    #[inline(always)]
    fn q4_k_words(bx: &BlockQ4_Kx4) -> [v128; 3] {
        // SAFETY: the 48 bytes of `scales`.
        let (l0, l1, l2) = unsafe {
            let p = bx.scales.as_ptr() as *const u8;
            (
                v128_load(p as *const v128),
                v128_load(p.add(16) as *const v128),
                v128_load(p.add(32) as *const v128),
            )
        };
        [
            i32x4_shuffle::<0, 1, 2, 5>(i32x4_shuffle::<0, 3, 6, 7>(l0, l1), l2),
            i32x4_shuffle::<0, 1, 2, 6>(i32x4_shuffle::<1, 4, 7, 7>(l0, l1), l2),
            i32x4_shuffle::<0, 1, 4, 7>(i32x4_shuffle::<2, 5, 4, 4>(l0, l1), l2),
        ]
    }

    /// [`q4_k_mins`] from the 4 rows' scale words ([`q4_k_words`]).
    #[inline(always)]
    fn q4_k_mins_of<const T: usize>(
        [u0, u1, u2]: [v128; 3],
        b: usize,
        y: &[&[Q8_KAct]; T],
    ) -> (impl Fn(usize) -> v128, [v128; T]) {
        // `scales_mins_k4` on the 4 rows at once: byte e of lane r is row
        // r's scale (min) e (sc0, m0) or 4 + e (sc1, m1).
        let (m3f, m0f, m03) = (
            u32x4_splat(0x3f3f_3f3f),
            u32x4_splat(0x0f0f_0f0f),
            u32x4_splat(0x0303_0303),
        );
        let sc0 = v128_and(u0, m3f);
        let sc1 = v128_or(
            v128_and(u2, m0f),
            i32x4_shl(v128_and(u32x4_shr(u0, 6), m03), 4),
        );
        let m0 = v128_and(u1, m3f);
        let m1 = v128_or(
            v128_and(u32x4_shr(u2, 4), m0f),
            i32x4_shl(v128_and(u32x4_shr(u1, 6), m03), 4),
        );
        let lane = move |k: usize| {
            let v = if k < 4 { sc0 } else { sc1 };
            v128_and(u32x4_shr(v, 8 * (k as u32 % 4)), u32x4_splat(0xff))
        };
        // Pair j: each row's mins of sub-blocks 2j and 2j + 1 as i16, side
        // by side (swizzle indices of 16 and more give 0).
        let z = 0xff;
        let mp = [
            i8x16_swizzle(m0, u8x16(0, z, 1, z, 4, z, 5, z, 8, z, 9, z, 12, z, 13, z)),
            i8x16_swizzle(
                m0,
                u8x16(2, z, 3, z, 6, z, 7, z, 10, z, 11, z, 14, z, 15, z),
            ),
            i8x16_swizzle(m1, u8x16(0, z, 1, z, 4, z, 5, z, 8, z, 9, z, 12, z, 13, z)),
            i8x16_swizzle(
                m1,
                u8x16(2, z, 3, z, 6, z, 7, z, 10, z, 11, z, 14, z, 15, z),
            ),
        ];
        let one = i16x8_splat(1);
        let summ = std::array::from_fn(|t| {
            let bs = y[t][b].bsums.as_ptr();
            // SAFETY: the 16 i16 of `bsums`.
            let (b0, b1) = unsafe {
                (
                    v128_load(bs as *const v128),
                    v128_load(bs.add(8) as *const v128),
                )
            };
            // Sub-block k's two bsums added (at most 2 * 16 * 127 in
            // magnitude, so the narrowing keeps them), then pair j of them
            // (one i32 lane) against the mins of pair j.
            let s = i16x8_narrow_i32x4(i32x4_dot_i16x8(b0, one), i32x4_dot_i16x8(b1, one));
            lane_dots(&mp, s)
        });
        (lane, summ)
    }

    /// `isum[t] += scales.0 * slo[t] + scales.1 * shi[t]`: the two
    /// sub-blocks of a Q4_K chunk, each row's sums times its scale.
    #[inline(always)]
    fn q4_k_add_scaled<const T: usize>(
        isum: &mut [v128; T],
        scales: (v128, v128),
        slo: &[v128; T],
        shi: &[v128; T],
    ) {
        for t in 0..T {
            isum[t] = i32x4_add(
                isum[t],
                i32x4_add(i32x4_mul(scales.0, slo[t]), i32x4_mul(scales.1, shi[t])),
            );
        }
    }

    /// A Q4_K group block's float term, the reference's operations lane by
    /// lane (`d * yd * isum - dmin * yd * summ`), added to `acc`.
    #[inline(always)]
    fn q4_k_term<const T: usize>(
        bx: &BlockQ4_Kx4,
        b: usize,
        y: &[&[Q8_KAct]; T],
        isum: &[v128; T],
        summ: &[v128; T],
        acc: &mut [v128; T],
    ) {
        // SAFETY: reads the 8-byte `d` and `dmin`.
        let dm = unsafe { (load_f16x4(bx.d.as_ptr()), load_f16x4(bx.dmin.as_ptr())) };
        q4_k_term_of(dm, b, y, isum, summ, acc);
    }

    /// [`q4_k_term`] given the 4 rows' `d` and `dmin` as f32 lanes.
    #[inline(always)]
    fn q4_k_term_of<const T: usize>(
        (d, dmin): (v128, v128),
        b: usize,
        y: &[&[Q8_KAct]; T],
        isum: &[v128; T],
        summ: &[v128; T],
        acc: &mut [v128; T],
    ) {
        for t in 0..T {
            let yd = f32x4_splat(y[t][b].d);
            let term = f32x4_sub(
                f32x4_mul(f32x4_mul(d, yd), f32x4_convert_i32x4(isum[t])),
                f32x4_mul(f32x4_mul(dmin, yd), f32x4_convert_i32x4(summ[t])),
            );
            acc[t] = f32x4_add(acc[t], term);
        }
    }

    /// The 4 rows' 16-byte quant runs `qs[32k + 16j..]` of a Q4_K group
    /// block.
    #[inline(always)]
    fn q4_k_rows16(bx: &BlockQ4_Kx4, k: usize, j: usize) -> [v128; ROWS] {
        assert!(k < 4 && j < 2);
        // SAFETY: 16 bytes at 128k + 32r + 16j + 16 <= 512 of `qs`.
        std::array::from_fn(|r| unsafe {
            v128_load(bx.qs.as_ptr().add(128 * k + 32 * r + 16 * j) as *const v128)
        })
    }

    /// A group block of the Q4_K shape: Q4_K's head and nibbles, and for
    /// Q5_K the codes' fifth bits (`qh` of the 4 rows, 32 bytes each).
    pub trait K4Group {
        fn head(&self) -> &BlockQ4_Kx4;
        fn qh(&self) -> Option<&[u8; 128]>;
    }

    impl K4Group for BlockQ4_Kx4 {
        #[inline(always)]
        fn head(&self) -> &BlockQ4_Kx4 {
            self
        }
        #[inline(always)]
        fn qh(&self) -> Option<&[u8; 128]> {
            None
        }
    }

    impl K4Group for BlockQ5_Kx4 {
        #[inline(always)]
        fn head(&self) -> &BlockQ4_Kx4 {
            &self.head
        }
        #[inline(always)]
        fn qh(&self) -> Option<&[u8; 128]> {
            Some(&self.qh)
        }
    }

    /// What the one-vector Q4_K/Q5_K dot ([`q4_k_block1`]) reads of a
    /// block of 4 rows: a packed group block's, or 4 unpacked rows' in
    /// cache ([`Q4KRows`]).
    #[cfg(target_feature = "relaxed-simd")]
    pub trait K4Rows {
        /// The rows' 12 scale bytes as [`q4_k_words`] gives them.
        fn words(&self) -> [v128; 3];
        /// The rows' `d` and `dmin` as f32 lanes (finite: checked by the
        /// caller).
        fn d_dmin(&self) -> (v128, v128);
        /// The rows' 16-byte quant runs `qs[32k + 16j..]`.
        fn rows16(&self, k: usize, j: usize) -> [v128; ROWS];
        /// Q5_K: the rows' 16-byte runs `qh[16j..]`.
        fn qh16(&self, j: usize) -> Option<[v128; ROWS]>;
    }

    #[cfg(target_feature = "relaxed-simd")]
    impl<G: K4Group> K4Rows for G {
        #[inline(always)]
        fn words(&self) -> [v128; 3] {
            q4_k_words(self.head())
        }
        #[inline(always)]
        fn d_dmin(&self) -> (v128, v128) {
            let h = self.head();
            // SAFETY: reads the 8-byte `d` and `dmin`.
            unsafe { (load_f16x4(h.d.as_ptr()), load_f16x4(h.dmin.as_ptr())) }
        }
        #[inline(always)]
        fn rows16(&self, k: usize, j: usize) -> [v128; ROWS] {
            q4_k_rows16(self.head(), k, j)
        }
        #[inline(always)]
        fn qh16(&self, j: usize) -> Option<[v128; ROWS]> {
            self.qh().map(|qh| qh_rows16(qh, j))
        }
    }

    /// Block `b` of 4 unpacked Q4_K rows (a streamed chunk's, in cache),
    /// for the packed one-vector dot: the rows, and their 16-byte heads
    /// (`d` and `dmin` in one word, then the 3 scale words) transposed
    /// once, which are the 4 rows' words.
    #[cfg(target_feature = "relaxed-simd")]
    pub struct Q4KRows<'a> {
        rows: [&'a crate::quant::q4_k::BlockQ4_K; ROWS],
        heads: [v128; ROWS],
    }

    #[cfg(target_feature = "relaxed-simd")]
    impl<'a> Q4KRows<'a> {
        #[inline(always)]
        fn new(rows: [&'a crate::quant::q4_k::BlockQ4_K; ROWS]) -> Self {
            // SAFETY: the first 16 of a block's 144 bytes.
            let heads = transpose4(rows.map(|b| unsafe {
                v128_load(b as *const crate::quant::q4_k::BlockQ4_K as *const v128)
            }));
            Q4KRows { rows, heads }
        }
    }

    #[cfg(target_feature = "relaxed-simd")]
    impl K4Rows for Q4KRows<'_> {
        #[inline(always)]
        fn words(&self) -> [v128; 3] {
            let [_, u0, u1, u2] = self.heads;
            [u0, u1, u2]
        }
        #[inline(always)]
        fn d_dmin(&self) -> (v128, v128) {
            let dd = self.heads[0];
            // Each f16 sign-extended in its lane, as `f16x4_finite` takes.
            (
                crate::quant::f16x4_finite(i32x4_shr(i32x4_shl(dd, 16), 16)),
                crate::quant::f16x4_finite(i32x4_shr(dd, 16)),
            )
        }
        #[inline(always)]
        fn rows16(&self, k: usize, j: usize) -> [v128; ROWS] {
            assert!(k < 4 && j < 2);
            // SAFETY: 16 bytes at 32k + 16j + 16 <= 128 of `qs`.
            std::array::from_fn(|r| unsafe {
                v128_load(self.rows[r].qs.as_ptr().add(32 * k + 16 * j) as *const v128)
            })
        }
        #[inline(always)]
        fn qh16(&self, _j: usize) -> Option<[v128; ROWS]> {
            None
        }
    }

    /// [`QuantKind::vec_dot4`](crate::quant::QuantKind::vec_dot4) of 4
    /// unpacked Q4_K rows in cache with finite scales: block by block, the
    /// packed one-vector dot ([`q4_k_block1`]) on the rows as they are,
    /// its terms those of the scalar reference, added in its order.
    #[cfg(target_feature = "relaxed-simd")]
    pub fn q4_k_rows_dot4(
        x: [&[crate::quant::q4_k::BlockQ4_K]; ROWS],
        y: &[Q8_KAct],
    ) -> [f32; ROWS] {
        assert!(x.iter().all(|r| r.len() == y.len()));
        let mut acc = f32x4_splat(0.0);
        for (b, by) in y.iter().enumerate() {
            q4_k_block1(&Q4KRows::new(x.map(|r| &r[b])), by, &mut acc);
        }
        lanes(acc)
    }

    /// The 4 rows' 16-byte runs `qh[16j..]` of a Q5_K group block.
    #[inline(always)]
    fn qh_rows16(qh: &[u8; 128], j: usize) -> [v128; ROWS] {
        assert!(j < 2);
        // SAFETY: 16 bytes at 32r + 16j + 16 <= 128.
        std::array::from_fn(|r| unsafe {
            v128_load(qh.as_ptr().add(32 * r + 16 * j) as *const v128)
        })
    }

    /// Chunk `k`'s codes from nibbles `q` (the low ones are sub-block
    /// 2k's, the high ones the next one's) and, for Q5_K, the bytes of
    /// `qh` in the same arrangement: their bits 2k and 2k + 1 moved to
    /// bit 4. The 16-bit shift by 2k carries bits across bytes only into
    /// bits that the masks drop.
    #[inline(always)]
    fn k4_codes(q: v128, h: Option<v128>, k: usize) -> (v128, v128) {
        let (lo, hi) = (v128_and(q, u8x16_splat(0x0f)), u8x16_shr(q, 4));
        match h {
            None => (lo, hi),
            Some(h) => {
                let hk = u16x8_shr(h, 2 * k as u32);
                (
                    v128_or(lo, i16x8_shl(v128_and(hk, u8x16_splat(1)), 4)),
                    v128_or(hi, i16x8_shl(v128_and(hk, u8x16_splat(2)), 3)),
                )
            }
        }
    }

    /// 4 rows' 16-byte runs as 4 vectors of 4 rows x 4 bytes, two bytes of
    /// a row at a time (vector `i`: bytes 4i..4i + 4 of each run, [r0 b0
    /// b1, r1 b0 b1, .., r3 b0 b1, r0 b2 b3, ..]).
    #[inline(always)]
    fn pairs_of([r0, r1, r2, r3]: [v128; ROWS]) -> [v128; 4] {
        let a = i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(r0, r1);
        let b = i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(r2, r3);
        let c = i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(r0, r1);
        let d = i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(r2, r3);
        [
            i32x4_shuffle::<0, 4, 1, 5>(a, b),
            i32x4_shuffle::<2, 6, 3, 7>(a, b),
            i32x4_shuffle::<0, 4, 1, 5>(c, d),
            i32x4_shuffle::<2, 6, 3, 7>(c, d),
        ]
    }

    /// A Q4_K-shaped group block against `T` vectors with simd128's i16
    /// pair dots: its codes two bytes of a row at a time, widened.
    #[inline(always)]
    fn k4_block<G: K4Group, const T: usize>(
        bx: &G,
        b: usize,
        y: &[&[Q8_KAct]; T],
        yw: &[&[i16]; T],
        acc: &mut [v128; T],
    ) {
        let head = bx.head();
        let (lane, summ) = q4_k_mins(head, b, y);
        let mut isum = [i32x4_splat(0); T];
        for k in 0..4 {
            let mut slo = [i32x4_splat(0); T];
            let mut shi = [i32x4_splat(0); T];
            for j in 0..2 {
                let q = pairs_of(q4_k_rows16(head, k, j));
                let h = bx.qh().map(|qh| pairs_of(qh_rows16(qh, j)));
                for i in 0..4 {
                    let p = 4 * j + i;
                    let (lo, hi) = k4_codes(q[i], h.map(|h| h[i]), k);
                    let w = [
                        u16x8_extend_low_u8x16(lo),
                        u16x8_extend_high_u8x16(lo),
                        u16x8_extend_low_u8x16(hi),
                        u16x8_extend_high_u8x16(hi),
                    ];
                    for t in 0..T {
                        // SAFETY: activation offsets 64k + 4p + 34 + 2 <=
                        // 256 in vector block `b` (256 i16 each, the
                        // caller's assert).
                        unsafe {
                            let yp = yw[t].as_ptr().add(256 * b + 64 * k + 4 * p);
                            slo[t] = i32x4_add(
                                slo[t],
                                i32x4_add(dot_pair(w[0], yp), dot_pair(w[1], yp.add(2))),
                            );
                            shi[t] = i32x4_add(
                                shi[t],
                                i32x4_add(dot_pair(w[2], yp.add(32)), dot_pair(w[3], yp.add(34))),
                            );
                        }
                    }
                }
            }
            let scales = (lane(2 * k), lane(2 * k + 1));
            q4_k_add_scaled(&mut isum, scales, &slo, &shi);
        }
        q4_k_term(head, b, y, &isum, &summ, acc);
    }

    /// [`SimdK`] of the Q4_K-shaped types: [`k4_block`].
    macro_rules! k4_simd {
        ($($kind:ty),*) => {$(
            impl SimdK for $kind {
                #[inline(always)]
                fn block<const T: usize>(
                    bx: &Self::Group,
                    b: usize,
                    y: &[&[Q8_KAct]; T],
                    yw: &[&[i16]; T],
                    acc: &mut [v128; T],
                ) {
                    k4_block(bx, b, y, yw, acc)
                }
            }
        )*};
    }
    k4_simd!(Q4_K, Q5_K);

    impl SimdK for Q6_K {
        #[inline(always)]
        fn block<const T: usize>(
            bx: &BlockQ6_Kx4,
            b: usize,
            y: &[&[Q8_KAct]; T],
            yw: &[&[i16]; T],
            acc: &mut [v128; T],
        ) {
            let mut isum = [i32x4_splat(0); T];
            // Integer sums, exact in any order; read in the memory's order
            // as in `q6_k_relaxed1`.
            for h in 0..2 {
                for lq in 0..2 {
                    q6_k_sub_i16::<T, 0>(bx, b, yw, h, lq, &mut isum);
                    q6_k_sub_i16::<T, 2>(bx, b, yw, h, lq, &mut isum);
                }
                for lq in 0..2 {
                    q6_k_sub_i16::<T, 1>(bx, b, yw, h, lq, &mut isum);
                    q6_k_sub_i16::<T, 3>(bx, b, yw, h, lq, &mut isum);
                }
            }
            // SAFETY: reads the 8-byte `d`.
            let d = unsafe { load_f16x4(bx.d.as_ptr()) };
            for t in 0..T {
                let term = f32x4_mul(
                    f32x4_mul(d, f32x4_splat(y[t][b].d)),
                    f32x4_convert_i32x4(isum[t]),
                );
                acc[t] = f32x4_add(acc[t], term);
            }
        }
    }

    /// [`PackKind::dot4`] of Q5_0 with relaxed SIMD: the weights as their
    /// unsigned 5-bit codes `u` (0..=31, the weight is `u - 16`), valid 7-bit
    /// operands of `i16x8.relaxed_dot_i8x16_i7x16_s` against the i8
    /// activations. A pair sum is at most 2 * 31 * 127 = 7874 in magnitude,
    /// the 4 pair sums a lane gathers per half block at most 31496: exact in
    /// i16 on every host, so the block's `sumi` (the codes' sum less 16
    /// times the activations' block sum `ys`) is the exact integer sum and
    /// the term that of the scalar reference.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    pub fn q5_0_relaxed<const T: usize>(
        g: &[BlockQ5_0x4],
        y: [&[Q8_0Act]; T],
        ys: [&[i32]; T],
    ) -> [[f32; ROWS]; T] {
        for t in 0..T {
            assert!(y[t].len() == g.len() && ys[t].len() == g.len());
        }
        let mut acc = [f32x4_splat(0.0); T];
        for (b, bx) in g.iter().enumerate() {
            if T == 1 {
                q5_0_relaxed1(bx, &y[0][b], ys[0][b], &mut acc[0]);
            } else {
                q5_0_relaxed_block::<T>(bx, b, &y, &ys, &mut acc);
            }
        }
        acc.map(lanes)
    }

    /// The 6-bit codes (0..=63; the weight is the code less 32) of a Q6_K
    /// group block's sub-block `2I + lq` of half `h`, at byte `l0` (`16lq +
    /// 4p`) of the half: 4 rows x 4 weights, interleaved two at a time. Low
    /// bits from nibble I / 2 of ql[64h + 32 (I % 2) + l], high bits from
    /// bits 2I, 2I + 1 of qh[32h + l]. `I` a constant, so every shift is an
    /// immediate 16-bit one: the high bits move to bits 4, 5 (the bits it
    /// carries across a byte are masked off with the rest).
    ///
    /// # Safety
    /// `h < 2`, `l0 + 4 <= 32`: interleaved row byte x (a multiple of 4)
    /// is at 4x, 4 (64h + 32 + l0) + 16 <= 512 in `ql`, 4 (32h + l0) + 16
    /// <= 256 in `qh`.
    #[inline(always)]
    unsafe fn q6_k_codes<const I: usize>(bx: &BlockQ6_Kx4, h: usize, l0: usize) -> v128 {
        let m4 = u8x16_splat(0x0f);
        let m30 = u8x16_splat(0x30);
        let ql = v128_load(bx.ql.as_ptr().add(4 * (64 * h + 32 * (I % 2) + l0)) as *const v128);
        let qh = v128_load(bx.qh.as_ptr().add(4 * (32 * h + l0)) as *const v128);
        let low = if I < 2 {
            v128_and(ql, m4)
        } else {
            v128_and(u16x8_shr(ql, 4), m4)
        };
        let high = match I {
            0 => i16x8_shl(qh, 4),
            1 => i16x8_shl(qh, 2),
            2 => qh,
            _ => u16x8_shr(qh, 2),
        };
        v128_or(low, v128_and(high, m30))
    }

    /// The 4 rows' i8 scales of sub-block `sub` (< 16) of a Q6_K group
    /// block, as i32 lanes.
    #[inline(always)]
    fn q6_k_scales(bx: &BlockQ6_Kx4, sub: usize) -> v128 {
        assert!(sub < 16);
        // SAFETY: 4 bytes at 4 sub < 64 of `scales`.
        let v = unsafe { v128_load32_zero(bx.scales.as_ptr().add(4 * sub) as *const u32) };
        i32x4_extend_low_i16x8(i16x8_extend_low_i8x16(v))
    }

    /// Sub-block `8h + 2I + lq` of a Q6_K group block (its codes from
    /// [`q6_k_codes`]) as i16 weights dotted with `T` vectors, each row's
    /// scale times its sum added to `isum`.
    #[inline(always)]
    fn q6_k_sub_i16<const T: usize, const I: usize>(
        bx: &BlockQ6_Kx4,
        b: usize,
        yw: &[&[i16]; T],
        h: usize,
        lq: usize,
        isum: &mut [v128; T],
    ) {
        let s32 = i8x16_splat(32);
        let mut s = [i32x4_splat(0); T];
        for p in 0..4 {
            let l0 = 16 * lq + 4 * p;
            // SAFETY: h < 2 and l0 + 4 <= 32 (`q6_k_codes`); activation
            // offsets 128h + 32I + l0 + 4 <= 256 in vector block `b` (the
            // caller's assert).
            unsafe {
                let q = i8x16_sub(q6_k_codes::<I>(bx, h, l0), s32);
                let (w0, w1) = (i16x8_extend_low_i8x16(q), i16x8_extend_high_i8x16(q));
                for t in 0..T {
                    let yp = yw[t].as_ptr().add(256 * b + 128 * h + 32 * I + 16 * lq);
                    s[t] = i32x4_add(
                        s[t],
                        i32x4_add(
                            dot_pair_lane(w0, yp, 4 * p),
                            dot_pair_lane(w1, yp, 4 * p + 2),
                        ),
                    );
                }
            }
        }
        let sub = 8 * h + 2 * I + lq;
        let sc = q6_k_scales(bx, sub);
        for t in 0..T {
            isum[t] = i32x4_add(isum[t], i32x4_mul(sc, s[t]));
        }
    }

    /// A Q5_0 group block as codes `u`: per part `k`, the low nibbles with
    /// their fifth bits (4 rows x columns 4k..4k+4, two at a time), the
    /// high nibbles likewise (columns 16 + 4k..).
    #[inline(always)]
    fn q5_0_codes(bx: &BlockQ5_0x4) -> [(v128, v128); 4] {
        /// Plane `V` masked (bit `V` of each byte, the only bit left in
        /// it) and moved to bit 4: a 16-bit shift (by a constant), which no
        /// set bit crosses a byte boundary in.
        #[inline(always)]
        fn fifth<const V: u32>(planes: v128) -> v128 {
            let m = v128_and(planes, u8x16_splat(1 << V));
            if V < 4 {
                i16x8_shl(m, 4 - V)
            } else {
                u16x8_shr(m, V - 4)
            }
        }
        let m4 = u8x16_splat(0x0f);
        // SAFETY: the 16 bytes of `qh` and of each quarter of `qs`.
        let (q, planes) = unsafe {
            let p = bx.qs.as_ptr() as *const v128;
            (
                [
                    v128_load(p),
                    v128_load(p.add(1)),
                    v128_load(p.add(2)),
                    v128_load(p.add(3)),
                ],
                v128_load(bx.qh.as_ptr() as *const v128),
            )
        };
        let lo = |q: v128, f: v128| v128_or(v128_and(q, m4), f);
        let hi = |q: v128, f: v128| v128_or(u8x16_shr(q, 4), f);
        [
            (lo(q[0], fifth::<0>(planes)), hi(q[0], fifth::<1>(planes))),
            (lo(q[1], fifth::<2>(planes)), hi(q[1], fifth::<3>(planes))),
            (lo(q[2], fifth::<4>(planes)), hi(q[2], fifth::<5>(planes))),
            (lo(q[3], fifth::<6>(planes)), hi(q[3], fifth::<7>(planes))),
        ]
    }

    /// One group block, one vector: the activations shuffled in register
    /// to the codes' arrangement (4 rows x 2 columns, then the next 2), so
    /// lanes `r` and `r + 4` of the i16 sums hold row `r`'s halves.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn q5_0_relaxed1(bx: &BlockQ5_0x4, y: &Q8_0Act, ys: i32, acc: &mut v128) {
        macro_rules! cols {
            ($v:expr, $a:literal, $b:literal, $c:literal, $d:literal) => {
                i8x16_shuffle::<$a, $b, $a, $b, $a, $b, $a, $b, $c, $d, $c, $d, $c, $d, $c, $d>(
                    $v, $v,
                )
            };
        }
        let dot = |w: v128, a: v128| i16x8_relaxed_dot_i8x16_i7x16(a, w);
        // SAFETY: 32 activation bytes; parts 0..4.
        let (y0, y1) = unsafe {
            (
                v128_load(y.qs.as_ptr() as *const v128),
                v128_load(y.qs.as_ptr().add(16) as *const v128),
            )
        };
        let w = q5_0_codes(bx);
        let lo = i16x8_add(
            i16x8_add(
                dot(w[0].0, cols!(y0, 0, 1, 2, 3)),
                dot(w[1].0, cols!(y0, 4, 5, 6, 7)),
            ),
            i16x8_add(
                dot(w[2].0, cols!(y0, 8, 9, 10, 11)),
                dot(w[3].0, cols!(y0, 12, 13, 14, 15)),
            ),
        );
        let hi = i16x8_add(
            i16x8_add(
                dot(w[0].1, cols!(y1, 0, 1, 2, 3)),
                dot(w[1].1, cols!(y1, 4, 5, 6, 7)),
            ),
            i16x8_add(
                dot(w[2].1, cols!(y1, 8, 9, 10, 11)),
                dot(w[3].1, cols!(y1, 12, 13, 14, 15)),
            ),
        );
        let sumi = i32x4_add(row_sums(lo), row_sums(hi));
        let sumi = i32x4_sub(sumi, i32x4_splat(16 * ys));
        // SAFETY: reads the 8-byte `d`.
        let d = unsafe { load_f16x4(bx.d.as_ptr()) };
        let term = f32x4_mul(f32x4_mul(d, f32x4_splat(y.d)), f32x4_convert_i32x4(sumi));
        *acc = f32x4_add(*acc, term);
    }

    /// One group block, `T` vectors: the codes shuffled to 4 rows x 4
    /// columns once (8 registers), then vector by vector its 32
    /// activations loaded whole and each 4 of them broadcast by a shuffle
    /// (one instruction; a splat load is two in wasmtime's x64 code), the
    /// vector's term finished before the next one (a vector at a time keeps
    /// every value in a register).
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn q5_0_relaxed_block<const T: usize>(
        bx: &BlockQ5_0x4,
        b: usize,
        y: &[&[Q8_0Act]; T],
        ys: &[&[i32]; T],
        acc: &mut [v128; T],
    ) {
        let codes = q5_0_codes(bx).map(|(wl, wh)| (rows(wl), rows(wh)));
        // SAFETY: reads the 8-byte `d`.
        let d = unsafe { load_f16x4(bx.d.as_ptr()) };
        let one = i16x8_splat(1);
        for t in 0..T {
            let qs = y[t][b].qs.as_ptr();
            // SAFETY: the 32 quants.
            let (y0, y1) = unsafe {
                (
                    v128_load(qs as *const v128),
                    v128_load(qs.add(16) as *const v128),
                )
            };
            let (lo, hi) = quads4(&codes, y0, y1);
            // Adjacent i16 lanes are one row's.
            let sumi = i32x4_add(i32x4_dot_i16x8(lo, one), i32x4_dot_i16x8(hi, one));
            let sumi = i32x4_sub(sumi, i32x4_splat(16 * ys[t][b]));
            let term = f32x4_mul(
                f32x4_mul(d, f32x4_splat(y[t][b].d)),
                f32x4_convert_i32x4(sumi),
            );
            acc[t] = f32x4_add(acc[t], term);
        }
    }

    /// Interleaved codes' bytes [r0 c0 c1, r1 c0 c1, .., r3 c0 c1 | r0 c2
    /// c3, ..] to [r0 c0..c4, r1 c0..c4, ..]: each row's 4 columns side by
    /// side, so a dot against a broadcast quad of activations leaves a
    /// row's sums in adjacent lanes.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    pub(crate) fn rows(q: v128) -> v128 {
        i8x16_shuffle::<0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15>(q, q)
    }

    /// `sum over k of i32x4.dot_i16x8_s(p[k], lane k of s, in every
    /// lane)`: pairs of i16 (`p[k]`) against the 4 i32 lanes of `s`, each a
    /// pair of i16 (exact for the callers' magnitudes).
    #[inline(always)]
    fn lane_dots(p: &[v128], s: v128) -> v128 {
        assert!(p.len() == 4);
        i32x4_add(
            i32x4_add(
                i32x4_dot_i16x8(p[0], i32x4_shuffle::<0, 0, 0, 0>(s, s)),
                i32x4_dot_i16x8(p[1], i32x4_shuffle::<1, 1, 1, 1>(s, s)),
            ),
            i32x4_add(
                i32x4_dot_i16x8(p[2], i32x4_shuffle::<2, 2, 2, 2>(s, s)),
                i32x4_dot_i16x8(p[3], i32x4_shuffle::<3, 3, 3, 3>(s, s)),
            ),
        )
    }

    /// Four parts of codes (each 4 rows x 4 columns, shuffled by `rows`;
    /// `.0` against the activations `y0`, `.1` against `y1`) dotted with
    /// those activations, 4 columns broadcast per part by a shuffle (one
    /// instruction, where a splat load is two in wasmtime's x64 code):
    /// the i16 pair sums of each row, added over the 4 parts.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    pub(crate) fn quads4(w: &[(v128, v128); 4], y0: v128, y1: v128) -> (v128, v128) {
        let dot = |w: v128, a: v128| i16x8_relaxed_dot_i8x16_i7x16(a, w);
        let half = |w: [v128; 4], y: v128| {
            i16x8_add(
                i16x8_add(
                    dot(w[0], i32x4_shuffle::<0, 0, 0, 0>(y, y)),
                    dot(w[1], i32x4_shuffle::<1, 1, 1, 1>(y, y)),
                ),
                i16x8_add(
                    dot(w[2], i32x4_shuffle::<2, 2, 2, 2>(y, y)),
                    dot(w[3], i32x4_shuffle::<3, 3, 3, 3>(y, y)),
                ),
            )
        };
        (
            half([w[0].0, w[1].0, w[2].0, w[3].0], y0),
            half([w[0].1, w[1].1, w[2].1, w[3].1], y1),
        )
    }

    /// [`PackKind::dot4`] of Q4_K with relaxed SIMD: the nibbles (0..=15) as
    /// the 7-bit operand of `i16x8.relaxed_dot_i8x16_i7x16_s` against the i8
    /// activations. A pair sum is at most 2 * 15 * 127 = 3810 in magnitude,
    /// the 8 a lane gathers per 32-weight sub-block at most 30480: exact in
    /// i16 on every host, so every sub-block sum, and the block's integer
    /// sums, are the simd128 ones: the same float bits.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    pub fn q4_k_relaxed<G: K4Group, const T: usize>(
        g: &[G],
        y: [&[Q8_KAct]; T],
    ) -> [[f32; ROWS]; T] {
        assert!(y.iter().all(|y| y.len() == g.len()));
        let mut acc = [f32x4_splat(0.0); T];
        for (b, bx) in g.iter().enumerate() {
            let (lane, summ) = q4_k_mins(bx.head(), b, &y);
            let mut isum = [i32x4_splat(0); T];
            for k in 0..4 {
                // Sub-blocks 2k (low nibbles) and 2k + 1 (high), per row.
                // (T = 1 as `q4_k_block1`, which written as a call here
                // made the 1.8 B Q4_K_M decode 12% slower: code layout.)
                let scales = (lane(2 * k), lane(2 * k + 1));
                if T == 1 {
                    let (l, h) = q4_k_half1(bx, &y[0][b], k);
                    let mut slo = [i32x4_splat(0); T];
                    let mut shi = [i32x4_splat(0); T];
                    slo[0] = l;
                    shi[0] = h;
                    q4_k_add_scaled(&mut isum, scales, &slo, &shi);
                } else {
                    q4_k_half::<G, T>(bx, b, &y, k, scales, &mut isum);
                }
            }
            q4_k_term(bx.head(), b, &y, &isum, &summ, &mut acc);
        }
        acc.map(lanes)
    }

    /// Chunk `k` (64 weights) of Q4_K group block `bx` against `T` vectors:
    /// the nibble sums of sub-blocks 2k and 2k + 1 per row, each 4 columns
    /// of the 4 rows shuffled together once and met by the vector's 4
    /// activations, splat.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn q4_k_half<G: K4Group, const T: usize>(
        bx: &G,
        b: usize,
        y: &[&[Q8_KAct]; T],
        k: usize,
        scales: (v128, v128),
        isum: &mut [v128; T],
    ) {
        let mut lo = [i16x8_splat(0); T];
        let mut hi = [i16x8_splat(0); T];
        // Parts 4h..4h + 4: their nibbles shuffled once (8 registers), then
        // a vector at a time, its 16 activations of those columns (and the
        // 16 of the high nibbles') loaded whole and broadcast 4 at a time by
        // a shuffle (a splat load is two instructions in wasmtime's x64
        // code).
        for h in 0..2 {
            let quads = transpose4(q4_k_rows16(bx.head(), k, h));
            let high = bx.qh().map(|qh| transpose4(qh_rows16(qh, h)));
            let w: [(v128, v128); 4] =
                std::array::from_fn(|i| k4_codes(quads[i], high.map(|v| v[i]), k));
            for t in 0..T {
                let qs = y[t][b].qs.as_ptr();
                // SAFETY: columns 64k + 16h + 0..16 and + 32 of 256.
                let (y0, y1) = unsafe {
                    (
                        v128_load(qs.add(64 * k + 16 * h) as *const v128),
                        v128_load(qs.add(64 * k + 32 + 16 * h) as *const v128),
                    )
                };
                let (l, hh) = quads4(&w, y0, y1);
                lo[t] = i16x8_add(lo[t], l);
                hi[t] = i16x8_add(hi[t], hh);
            }
        }
        // Adjacent i16 lanes are one row's: `i32x4.dot_i16x8_s` against the
        // row's scale in both of its i16 lanes adds and scales them in one
        // instruction (at most 2 * 31744 * 63 in magnitude: exact), where
        // adding against ones and then an `i32x4.mul` took two.
        let pair = |s: v128| v128_or(s, i32x4_shl(s, 16));
        let (s0, s1) = (pair(scales.0), pair(scales.1));
        for t in 0..T {
            isum[t] = i32x4_add(
                isum[t],
                i32x4_add(i32x4_dot_i16x8(lo[t], s0), i32x4_dot_i16x8(hi[t], s1)),
            );
        }
    }

    /// [`q4_k_half`] for one vector: each row's 32 quant bytes of chunk
    /// `k` met by the 64 activations as they are (loaded once for the 4
    /// rows), as the unpacked dot does; then each row's i16 sums added
    /// up and the 4 rows' totals gathered into lanes 0..4.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn q4_k_half1<G: K4Rows>(bx: &G, y: &Q8_KAct, k: usize) -> (v128, v128) {
        let qs = y.qs.as_ptr();
        assert!(k < 4);
        // SAFETY: columns 64k..64k + 64 of 256.
        let ya = unsafe {
            [
                v128_load(qs.add(64 * k) as *const v128),
                v128_load(qs.add(64 * k + 16) as *const v128),
                v128_load(qs.add(64 * k + 32) as *const v128),
                v128_load(qs.add(64 * k + 48) as *const v128),
            ]
        };
        let q = [bx.rows16(k, 0), bx.rows16(k, 1)];
        let h = bx.qh16(0).zip(bx.qh16(1)).map(|(a, b)| [a, b]);
        let one = i16x8_splat(1);
        let dot = |w: v128, a: v128| i16x8_relaxed_dot_i8x16_i7x16(a, w);
        let mut lo = [i32x4_splat(0); ROWS];
        let mut hi = [i32x4_splat(0); ROWS];
        for r in 0..ROWS {
            let (l0, h0) = k4_codes(q[0][r], h.map(|h| h[0][r]), k);
            let (l1, h1) = k4_codes(q[1][r], h.map(|h| h[1][r]), k);
            // Codes <= 31, |y| <= 127: two pair sums per lane fit i16.
            lo[r] = i32x4_dot_i16x8(i16x8_add(dot(l0, ya[0]), dot(l1, ya[1])), one);
            hi[r] = i32x4_dot_i16x8(i16x8_add(dot(h0, ya[2]), dot(h1, ya[3])), one);
        }
        (lane_totals(lo), lane_totals(hi))
    }

    /// One block of 4 rows against one vector (`y`: its block): the
    /// rows' mins and scales, the 4 chunks' nibble sums
    /// ([`q4_k_half1`]), and the term added to `acc`.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn q4_k_block1<G: K4Rows>(bx: &G, y: &Q8_KAct, acc: &mut v128) {
        let ys = [std::slice::from_ref(y)];
        let (lane, summ) = q4_k_mins_of(bx.words(), 0, &ys);
        let mut isum = [i32x4_splat(0)];
        for k in 0..4 {
            let (l, h) = q4_k_half1(bx, y, k);
            q4_k_add_scaled(&mut isum, (lane(2 * k), lane(2 * k + 1)), &[l], &[h]);
        }
        let mut a = [*acc];
        q4_k_term_of(bx.d_dmin(), 0, &ys, &isum, &summ, &mut a);
        *acc = a[0];
    }

    /// Lane `r` the sum of the 4 lanes of `v[r]`.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn lane_totals(v: [v128; ROWS]) -> v128 {
        let a = i32x4_add(
            i32x4_shuffle::<0, 4, 1, 5>(v[0], v[1]),
            i32x4_shuffle::<2, 6, 3, 7>(v[0], v[1]),
        );
        let b = i32x4_add(
            i32x4_shuffle::<0, 4, 1, 5>(v[2], v[3]),
            i32x4_shuffle::<2, 6, 3, 7>(v[2], v[3]),
        );
        i32x4_add(
            i32x4_shuffle::<0, 1, 4, 5>(a, b),
            i32x4_shuffle::<2, 3, 6, 7>(a, b),
        )
    }

    /// [`PackKind::dot4`] of Q6_K for one vector with relaxed SIMD: the 6-bit
    /// codes `u` (0..=63, the weight is `u - 32`) as the 7-bit operand of
    /// `i16x8.relaxed_dot_i8x16_i7x16_s` against the i8 activations,
    /// shuffled in register to the codes' arrangement (4 rows x 2 columns,
    /// then the next 2: lanes `r` and `r + 4` are row `r`'s). A pair sum is
    /// at most 2 * 63 * 127 = 16002 in magnitude, two of them per i16 lane
    /// at most 32004: exact on every host. A 16-weight sub-block's sum is
    /// the codes' sum less 32 times its activations' `bsums`: the exact
    /// integer sum, so the block's term is the simd128 one.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    pub fn q6_k_relaxed1(g: &[BlockQ6_Kx4], ys: &[Q8_KAct]) -> [f32; ROWS] {
        assert!(ys.len() == g.len());
        let mut acc = f32x4_splat(0.0);
        for (b, (bx, y)) in g.iter().zip(ys).enumerate() {
            let mut isum = i32x4_splat(0);
            // Sub-block 8h + 2I + lq ([`q6_k_sub`]); integer sums, exact in
            // any order. The order is the memory's: `ql`'s 128 bytes of a
            // half twice (low, then high nibbles: I = 0, 2), then the next
            // 128 (I = 1, 3), and the scales' sums last. Out of cache the
            // order I = 0..4 per `lq`, with the bsums first (the group
            // block's tail before its head), ran at 12.5 GMAC/s where this
            // one runs at 20 (16384 x 4096); the same in cache.
            for h in 0..2 {
                for lq in 0..2 {
                    isum = i32x4_add(isum, q6_k_sub::<0>(bx, y, h, lq));
                    isum = i32x4_add(isum, q6_k_sub::<2>(bx, y, h, lq));
                }
                for lq in 0..2 {
                    isum = i32x4_add(isum, q6_k_sub::<1>(bx, y, h, lq));
                    isum = i32x4_add(isum, q6_k_sub::<3>(bx, y, h, lq));
                }
            }
            // The codes' offset, - 32 * scales . bsums, once per block.
            let mut isum = [isum];
            q6_k_bsums::<1>(bx, b, &[ys], &mut isum);
            let [isum] = isum;
            // SAFETY: reads the 8-byte `d`.
            let d = unsafe { load_f16x4(bx.d.as_ptr()) };
            let term = f32x4_mul(f32x4_mul(d, f32x4_splat(y.d)), f32x4_convert_i32x4(isum));
            acc = f32x4_add(acc, term);
        }
        lanes(acc)
    }

    /// [`PackKind::dot4`] of Q6_K for several vectors with relaxed SIMD:
    /// per sub-block, its codes (0..=63, valid 7-bit operands) made once
    /// and shuffled to 4 columns per row, then each vector's 4-column
    /// quads broadcast by a shuffle: a row's i16 sums land in two adjacent
    /// lanes, which `i32x4.dot_i16x8_s` against the row's scale (in both
    /// lanes) adds and scales in one step. The `- 32 * bsums` part of each
    /// sub-block's sum is taken once per block for all 16 sub-blocks
    /// ([`q6_k_bsums`]). The same integers as the scalar reference, so the
    /// same bits.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    pub fn q6_k_relaxed<const T: usize>(g: &[BlockQ6_Kx4], y: [&[Q8_KAct]; T]) -> [[f32; ROWS]; T] {
        assert!(y.iter().all(|y| y.len() == g.len()));
        let mut acc = [f32x4_splat(0.0); T];
        for (b, bx) in g.iter().enumerate() {
            let mut isum = [i32x4_splat(0); T];
            // In the memory's order, as in `q6_k_relaxed1`.
            for h in 0..2 {
                for lq in 0..2 {
                    q6_k_sub_t::<T, 0>(bx, b, &y, h, lq, &mut isum);
                    q6_k_sub_t::<T, 2>(bx, b, &y, h, lq, &mut isum);
                }
                for lq in 0..2 {
                    q6_k_sub_t::<T, 1>(bx, b, &y, h, lq, &mut isum);
                    q6_k_sub_t::<T, 3>(bx, b, &y, h, lq, &mut isum);
                }
            }
            q6_k_bsums::<T>(bx, b, &y, &mut isum);
            // SAFETY: reads the 8-byte `d`.
            let d = unsafe { load_f16x4(bx.d.as_ptr()) };
            for t in 0..T {
                let term = f32x4_mul(
                    f32x4_mul(d, f32x4_splat(y[t][b].d)),
                    f32x4_convert_i32x4(isum[t]),
                );
                acc[t] = f32x4_add(acc[t], term);
            }
        }
        acc.map(lanes)
    }

    /// Sub-block `8h + 2I + lq` of Q6_K group block `bx` against `T`
    /// vectors (block `b` of each), without the `- 32 * bsums` part: each
    /// row's scale times its sum of codes times activations, added to
    /// `isum[t]`. A pair sum is at most 2 * 63 * 127 = 16002 in magnitude,
    /// two pairs per i16 lane at most 32004: exact on every host.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn q6_k_sub_t<const T: usize, const I: usize>(
        bx: &BlockQ6_Kx4,
        b: usize,
        y: &[&[Q8_KAct]; T],
        h: usize,
        lq: usize,
        isum: &mut [v128; T],
    ) {
        let sub = 8 * h + 2 * I + lq;
        // SAFETY: h < 2 and 16 lq + 4p + 4 <= 32.
        let u: [v128; 4] =
            std::array::from_fn(|p| rows(unsafe { q6_k_codes::<I>(bx, h, 16 * lq + 4 * p) }));
        // Row r's scale in i16 lanes 2r and 2r + 1.
        let sc = q6_k_scale_pairs(bx, sub);
        for t in 0..T {
            // SAFETY: the sub-block's 16 activations, 16 * sub + 16 <= 256.
            let ya = unsafe { v128_load(y[t][b].qs.as_ptr().add(16 * sub) as *const v128) };
            let dot = |a: v128, u: v128| i16x8_relaxed_dot_i8x16_i7x16(a, u);
            let s0 = i16x8_add(
                dot(i32x4_shuffle::<0, 0, 0, 0>(ya, ya), u[0]),
                dot(i32x4_shuffle::<1, 1, 1, 1>(ya, ya), u[1]),
            );
            let s1 = i16x8_add(
                dot(i32x4_shuffle::<2, 2, 2, 2>(ya, ya), u[2]),
                dot(i32x4_shuffle::<3, 3, 3, 3>(ya, ya), u[3]),
            );
            isum[t] = i32x4_add(
                isum[t],
                i32x4_add(i32x4_dot_i16x8(s0, sc), i32x4_dot_i16x8(s1, sc)),
            );
        }
    }

    /// `isum[t] -= 32 * sum over sub-blocks s of scale(r, s) * bsums[s]`
    /// (each row's lane) for block `b` of each of `T` vectors: the codes'
    /// offset, taken once per block. The scales of sub-blocks 2k, 2k + 1
    /// are paired per row (i16) once, then met by the vector's two block
    /// sums (one i32 lane of `bsums`) in `i32x4.dot_i16x8_s`. At most
    /// 16 * 128 * 4064 in magnitude: exact in i32.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn q6_k_bsums<const T: usize>(
        bx: &BlockQ6_Kx4,
        b: usize,
        y: &[&[Q8_KAct]; T],
        isum: &mut [v128; T],
    ) {
        // SAFETY: the 64 bytes of `scales`.
        let s: [v128; 4] = std::array::from_fn(|j| unsafe {
            v128_load(bx.scales.as_ptr().add(16 * j) as *const v128)
        });
        // Pair k: [r0 s2k, r0 s2k+1, r1 s2k, ..] as i16.
        let pair = |k: usize| {
            let v = s[k / 2];
            i16x8_extend_low_i8x16(if k.is_multiple_of(2) {
                i8x16_shuffle::<0, 4, 1, 5, 2, 6, 3, 7, 0, 0, 0, 0, 0, 0, 0, 0>(v, v)
            } else {
                i8x16_shuffle::<8, 12, 9, 13, 10, 14, 11, 15, 0, 0, 0, 0, 0, 0, 0, 0>(v, v)
            })
        };
        let p: [v128; 8] = std::array::from_fn(pair);
        for t in 0..T {
            let bs = y[t][b].bsums.as_ptr();
            // SAFETY: the 16 i16 of `bsums`.
            let (b0, b1) = unsafe {
                (
                    v128_load(bs as *const v128),
                    v128_load(bs.add(8) as *const v128),
                )
            };
            let c = i32x4_add(lane_dots(&p[..4], b0), lane_dots(&p[4..], b1));
            isum[t] = i32x4_sub(isum[t], i32x4_shl(c, 5));
        }
    }

    /// The byte shuffle of part `p` of 16 activations into the relaxed
    /// one-vector dots' arrangement: bytes 4p, 4p + 1 in lanes 0..8,
    /// 4p + 2, 4p + 3 in lanes 8..16.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn pair_pattern(p: usize) -> v128 {
        let j = 4 * p as u8;
        u8x16(
            j,
            j + 1,
            j,
            j + 1,
            j,
            j + 1,
            j,
            j + 1,
            j + 2,
            j + 3,
            j + 2,
            j + 3,
            j + 2,
            j + 3,
            j + 2,
            j + 3,
        )
    }

    /// Sub-block `8h + 2I + lq` of a Q6_K group block (its codes from
    /// [`q6_k_codes`]) against one vector: each row's scale times its
    /// integer sum.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn q6_k_sub<const I: usize>(bx: &BlockQ6_Kx4, y: &Q8_KAct, h: usize, lq: usize) -> v128 {
        let pattern = pair_pattern;
        let sub = 8 * h + 2 * I + lq;
        // SAFETY: the sub-block's 16 activations, 16 * sub + 16 <= 256.
        let ya = unsafe { v128_load(y.qs.as_ptr().add(16 * sub) as *const v128) };
        let mut s16 = [i16x8_splat(0); 2];
        for p in 0..4 {
            let l0 = 16 * lq + 4 * p;
            // SAFETY: h < 2 and l0 + 4 <= 32.
            let u = unsafe { q6_k_codes::<I>(bx, h, l0) };
            let a = i8x16_swizzle(ya, pattern(p));
            s16[p / 2] = i16x8_add(s16[p / 2], i16x8_relaxed_dot_i8x16_i7x16(a, u));
        }
        // Row r's sums are in i16 lanes r and r + 4: side by side, then
        // added and scaled by `i32x4.dot_i16x8_s` against the row's scale
        // in both lanes (the `- 32 * bsums` offset is the caller's).
        let adjacent =
            |v: v128| i8x16_shuffle::<0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15>(v, v);
        let sc = q6_k_scale_pairs(bx, sub);
        i32x4_add(
            i32x4_dot_i16x8(adjacent(s16[0]), sc),
            i32x4_dot_i16x8(adjacent(s16[1]), sc),
        )
    }

    /// Row r's scale of sub-block `sub` of a Q6_K group block in i16 lanes
    /// 2r and 2r + 1.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn q6_k_scale_pairs(bx: &BlockQ6_Kx4, sub: usize) -> v128 {
        assert!(sub < 16);
        // SAFETY: 4 bytes at 4 sub < 64 of `scales`.
        let sc = unsafe { v128_load32_zero(bx.scales.as_ptr().add(4 * sub) as *const u32) };
        i16x8_extend_low_i8x16(i8x16_shuffle::<
            0,
            0,
            1,
            1,
            2,
            2,
            3,
            3,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        >(sc, sc))
    }

    /// `w` (4 rows x 2 columns as i16, row-major pairs) dotted with the two
    /// activations at `y`, splat: each lane a row's 2-term sum.
    ///
    /// # Safety
    /// `y` must point to 2 readable i16.
    #[inline(always)]
    unsafe fn dot_pair(w: v128, y: *const i16) -> v128 {
        i32x4_dot_i16x8(w, v128_load32_splat(y as *const u32))
    }

    /// [`dot_pair`] loading the pair's 16-byte chunk whole and splatting
    /// it in register ([`crate::quant::splat_lane`]): faster for Q6_K
    /// (1536x1536, 8 vectors: 17.2 -> 19.6 GMAC/s, both builds), slower
    /// for Q5_0 and Q4_K (19.3 -> 15.9, 20.2 -> 16.9 in simd128), whose
    /// loops over parts keep the lane a variable. `base` is a multiple of
    /// 8 i16 into its vector.
    ///
    /// # Safety
    /// The 8 i16 at `base + off / 8 * 8` must be readable.
    #[inline(always)]
    unsafe fn dot_pair_lane(w: v128, base: *const i16, off: usize) -> v128 {
        i32x4_dot_i16x8(
            w,
            crate::quant::splat_lane(base.add(off / 8 * 8), off % 8 / 2),
        )
    }

    /// The 4 rows' results (ROWS = 4 lanes).
    #[inline(always)]
    fn lanes(v: v128) -> [f32; ROWS] {
        crate::quant::f32x4_lanes(v)
    }
}
