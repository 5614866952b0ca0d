//! Weights repacked at load into groups of 4 rows, so one 16-byte load
//! feeds four output rows and the per-block float work (scale conversion,
//! scaling, accumulation) is done for four rows at once.
//!
//! A packed tensor of `rows` rows holds `rows / 4` groups, then the
//! `rows % 4` tail rows in the GGUF layout. A group is `nb` (blocks per row)
//! group blocks; group block `b` holds block `b` of its 4 rows: their f16
//! scales (and Q4_1's minimums) side by side, then their quants interleaved
//! two bytes at a time (`qs[8 c + 2 r + e]` = row `r`'s `qs[2 c + e]`);
//! Q8_0's four bytes at a time (`qs[16 c + 4 r + e]` = row `r`'s
//! `qs[4 c + e]`, [`interleave4`]), which its dots take a quad of columns at
//! a time ([`simd::dot4_q8`], [`simd::dot1_q8_split`]). The packed bytes take
//! exactly the space of the rows they replace, so packing is done in place.
//!
//! With the activations extended to i16 once per matmul, each 8 weights
//! widened to i16 (two columns of four rows) meet a splat of the two
//! activations in `i32x4.dot_i16x8_s`: the integer block sums of 4 rows in
//! one i32x4, exact. The float part then repeats the scalar reference's
//! operations lane by lane — `(d_x * d_y) * sumi (+ m_x * s_y)`, added to the
//! row's sum in block order — so every row's result has the same bits as
//! [`QuantKind::vec_dot_scalar`] (tests).

use super::q4_0::{BlockQ4_0, Q4_0};
use super::q4_1::{BlockQ4_1, Q4_1};
use super::q8::{BlockQ8_0, Q8_0};
use super::QuantKind;
use bytemuck::{Pod, Zeroable};

/// Rows per group.
pub const ROWS: usize = 4;

/// A weight type with a 4-row packed layout.
pub trait PackKind: QuantKind {
    /// Block `b` of 4 rows (alignment 1, `4 * size_of::<Block>()` bytes).
    type Group: Pod;
    /// Group block from block `b` of each of 4 rows.
    fn pack(rows: [&Self::Block; ROWS]) -> Self::Group;
    /// Group blocks `out` (`nb` of them) from 4 rows of `nb` blocks each
    /// (`rows`, side by side): [`PackKind::pack`] of each column of blocks.
    #[inline(always)]
    fn pack_rows(rows: &[Self::Block], out: &mut [Self::Group]) {
        let nb = out.len();
        assert_eq!(rows.len(), ROWS * nb, "pack_rows: 4 rows of nb blocks");
        for (b, o) in out.iter_mut().enumerate() {
            *o = Self::pack(std::array::from_fn(|r| &rows[r * nb + b]));
        }
    }
    /// Whether every f16 scale (and minimum) of `b` is finite.
    fn finite(b: &Self::Block) -> bool;
    /// The block of lane `r` of `g`.
    fn unpack(g: &Self::Group, r: usize) -> Self::Block;
    /// Dots of the 4 rows of a group (`g`: its `nb` group blocks) with `T`
    /// activation vectors (`y[t]`, and `yw[t]`: its quants as i16), each
    /// bit-identical to [`QuantKind::vec_dot_scalar`] of the row and
    /// vector: the weights are unpacked once for all `T` vectors, and each
    /// vector's float operations are the same whatever `T`.
    fn dot4<const T: usize>(
        g: &[Self::Group],
        y: [&[Self::Act]; T],
        yw: [&[i16]; T],
    ) -> [[f32; ROWS]; T];
    /// Whether [`PackKind::dot4`] is run for 8 vectors at a time where
    /// there are 8 (else at most 4): its weights' decoding is then shared
    /// by more vectors, which pays where each vector's work keeps to few
    /// registers (the relaxed k-quant and Q5_0 dots, vector at a time:
    /// 1.03-1.10x at 8 vectors) and costs where it does not (Q4_0 0.85x).
    const WIDE_TILE: bool = false;
    /// [`PackKind::dot4`] given also each vector's block sums of quants
    /// (`ys[t]`: one per block for Q8_0 activations, else empty), which
    /// dots of offset weights use; the same bits.
    #[inline(always)]
    fn dot4_sums<const T: usize>(
        g: &[Self::Group],
        y: [&[Self::Act]; T],
        yw: [&[i16]; T],
        _ys: [&[i32]; T],
    ) -> [[f32; ROWS]; T] {
        Self::dot4(g, y, yw)
    }
    /// One vector (decode): [`PackKind::dot4_sums`] for `T = 1`, given also
    /// `yp`, the vector's quants as i16 with each column pair repeated four
    /// times (`4 * BLOCK` per block, empty if not computed), which the
    /// simd128 dots of this module load whole where they would splat, and
    /// `yq`, its Q8_0 quants split by sign with each column quad repeated
    /// four times ([`super::QActs`], relaxed SIMD only, else empty); the
    /// same bits.
    #[inline(always)]
    fn dot1(
        g: &[Self::Group],
        y: &[Self::Act],
        yw: &[i16],
        yp: &[i16],
        yq: &[i8],
        ys: &[i32],
    ) -> [f32; ROWS] {
        let _ = (yp, yq);
        Self::dot4_sums::<1>(g, [y], [yw], [ys])[0]
    }
}

/// [`PackKind::dot1`] of this module's types: [`simd::dot1_pairs`] in the
/// wasm32 builds that also satisfy `$cfg` (given the pairs), else the
/// default's [`PackKind::dot4_sums`].
macro_rules! dot1_pairs_where {
    ($cfg:meta) => {
        #[inline(always)]
        fn dot1(
            g: &[Self::Group],
            y: &[Self::Act],
            yw: &[i16],
            yp: &[i16],
            _yq: &[i8],
            ys: &[i32],
        ) -> [f32; ROWS] {
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", $cfg))]
            if !yp.is_empty() {
                return simd::dot1_pairs::<Self>(g, y, yp);
            }
            let _ = yp;
            Self::dot4_sums::<1>(g, [y], [yw], [ys])[0]
        }
    };
}

/// Q4_0, 4 rows.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0x4 {
    /// The 4 rows' f16 scales.
    pub d: [[u8; 2]; ROWS],
    pub qs: [u8; 64],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0x4>() == 4 * 18);

/// Q4_1, 4 rows.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_1x4 {
    /// The 4 rows' f16 scales, then their f16 minimums.
    pub dm: [[u8; 2]; 2 * ROWS],
    pub qs: [u8; 64],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1x4>() == 4 * 20);

/// Q8_0, 4 rows.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0x4 {
    /// The 4 rows' f16 scales.
    pub d: [[u8; 2]; ROWS],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0x4>() == 4 * 34);

/// Whether f16 `h` (little-endian) is finite.
pub(super) fn finite(h: [u8; 2]) -> bool {
    u16::from_le_bytes(h) & 0x7c00 != 0x7c00
}

/// Interleave 4 rows' quant bytes two at a time.
pub(super) fn interleave<const N: usize, const M: usize>(rows: [&[u8; N]; ROWS]) -> [u8; M] {
    debug_assert_eq!(M, N * ROWS);
    let mut out = [0u8; M];
    for c in 0..N / 2 {
        for (r, row) in rows.iter().enumerate() {
            out[8 * c + 2 * r] = row[2 * c];
            out[8 * c + 2 * r + 1] = row[2 * c + 1];
        }
    }
    out
}

/// Interleave 4 rows' quant bytes four at a time (Q8_0's layout:
/// `qs[16 c + 4 r + e]` = row `r`'s `qs[4 c + e]`).
pub(super) fn interleave4<const N: usize, const M: usize>(rows: [&[u8; N]; ROWS]) -> [u8; M] {
    debug_assert_eq!(M, N * ROWS);
    let mut out = [0u8; M];
    for c in 0..N / 4 {
        for (r, row) in rows.iter().enumerate() {
            out[16 * c + 4 * r..16 * c + 4 * r + 4].copy_from_slice(&row[4 * c..4 * c + 4]);
        }
    }
    out
}

/// Lane `r`'s bytes of [`interleave4`]d quants.
pub(super) fn deinterleave4<const N: usize, const M: usize>(qs: &[u8; M], r: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for c in 0..N / 4 {
        out[4 * c..4 * c + 4].copy_from_slice(&qs[16 * c + 4 * r..16 * c + 4 * r + 4]);
    }
    out
}

/// Lane `r`'s bytes of [`interleave`]d quants.
pub(super) fn deinterleave<const N: usize, const M: usize>(qs: &[u8; M], r: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for c in 0..N / 2 {
        out[2 * c] = qs[8 * c + 2 * r];
        out[2 * c + 1] = qs[8 * c + 2 * r + 1];
    }
    out
}

impl PackKind for Q4_0 {
    // 8 vectors per pass in the relaxed build: its block works a vector
    // at a time, so the codes' decoding is shared by more of them.
    const WIDE_TILE: bool = cfg!(target_feature = "relaxed-simd");
    type Group = BlockQ4_0x4;
    fn pack(rows: [&BlockQ4_0; ROWS]) -> BlockQ4_0x4 {
        BlockQ4_0x4 {
            d: rows.map(|b| b.d),
            qs: interleave(rows.map(|b| &b.qs)),
        }
    }
    fn finite(b: &BlockQ4_0) -> bool {
        finite(b.d)
    }
    fn unpack(g: &BlockQ4_0x4, r: usize) -> BlockQ4_0 {
        BlockQ4_0 {
            d: g.d[r],
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
    // The relaxed build's dots take the activations' block sums (they undo
    // the nibbles' offset of 8) rather than summing them again per group.
    #[inline(always)]
    fn dot4_sums<const T: usize>(
        g: &[Self::Group],
        y: [&[Self::Act]; T],
        yw: [&[i16]; T],
        ys: [&[i32]; T],
    ) -> [[f32; ROWS]; T] {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return simd::dot4_impl_ys::<Self, T>(g, y, yw, ys);
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        {
            let _ = ys;
            Self::dot4(g, y, yw)
        }
    }
    // The relaxed build's one-vector block (`block_relaxed1`) is faster.
    dot1_pairs_where!(not(target_feature = "relaxed-simd"));
}

impl PackKind for Q4_1 {
    // 8 vectors per pass in the relaxed build: its block works a vector
    // at a time, so the codes' decoding is shared by more of them.
    const WIDE_TILE: bool = cfg!(target_feature = "relaxed-simd");
    type Group = BlockQ4_1x4;
    fn pack(rows: [&BlockQ4_1; ROWS]) -> BlockQ4_1x4 {
        let mut dm = [[0u8; 2]; 2 * ROWS];
        for (r, b) in rows.iter().enumerate() {
            dm[r] = b.d;
            dm[ROWS + r] = b.m;
        }
        BlockQ4_1x4 {
            dm,
            qs: interleave(rows.map(|b| &b.qs)),
        }
    }
    fn finite(b: &BlockQ4_1) -> bool {
        finite(b.d) && finite(b.m)
    }
    fn unpack(g: &BlockQ4_1x4, r: usize) -> BlockQ4_1 {
        BlockQ4_1 {
            d: g.dm[r],
            m: g.dm[ROWS + r],
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
    // The relaxed build's one-vector block (`block_relaxed1`) is faster.
    dot1_pairs_where!(not(target_feature = "relaxed-simd"));
}

impl PackKind for Q8_0 {
    type Group = BlockQ8_0x4;
    fn pack(rows: [&BlockQ8_0; ROWS]) -> BlockQ8_0x4 {
        BlockQ8_0x4 {
            d: rows.map(|b| b.d),
            qs: interleave4(rows.map(|b| bytemuck::cast_ref::<_, [u8; 32]>(&b.qs))),
        }
    }
    // A 4x4 transpose of 32-bit lanes per 16 bytes of the 4 rows.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn pack_rows(rows: &[BlockQ8_0], out: &mut [BlockQ8_0x4]) {
        simd::pack_q8_0(rows, out)
    }
    fn finite(b: &BlockQ8_0) -> bool {
        finite(b.d)
    }
    fn unpack(g: &BlockQ8_0x4, r: usize) -> BlockQ8_0 {
        BlockQ8_0 {
            d: g.d[r],
            qs: bytemuck::cast(deinterleave4::<32, 128>(&g.qs, r)),
        }
    }
    fn dot4<const T: usize>(
        g: &[Self::Group],
        y: [&[Self::Act]; T],
        yw: [&[i16]; T],
    ) -> [[f32; ROWS]; T] {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return simd::dot4_q8::<T>(g, y, yw);
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        dot4_impl::<Self, T>(g, y, yw)
    }
    #[inline(always)]
    fn dot1(
        g: &[Self::Group],
        y: &[Self::Act],
        yw: &[i16],
        _yp: &[i16],
        yq: &[i8],
        _ys: &[i32],
    ) -> [f32; ROWS] {
        #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
        if !yq.is_empty() {
            return simd::dot1_q8_split(g, y, yq);
        }
        let _ = yq;
        Self::dot4::<1>(g, [y], [yw])[0]
    }
}

/// The scalar [`PackKind::dot4`]: each lane's row unpacked and dotted with
/// the reference.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
pub(super) fn dot4_impl<K: PackKind, const T: usize>(
    g: &[K::Group],
    y: [&[K::Act]; T],
    _yw: [&[i16]; T],
) -> [[f32; ROWS]; T] {
    let mut row: Vec<K::Block> = Vec::with_capacity(g.len());
    let mut out = [[0f32; ROWS]; T];
    for r in 0..ROWS {
        row.clear();
        row.extend(g.iter().map(|b| K::unpack(b, r)));
        for (o, y) in out.iter_mut().zip(y) {
            o[r] = K::vec_dot_scalar(&row, y);
        }
    }
    out
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use simd::dot4_impl;

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(super) mod simd {
    use super::{BlockQ4_0x4, BlockQ4_1x4, BlockQ8_0x4, PackKind, ROWS};
    use crate::quant::load_f16x4;
    use crate::quant::q4_0::Q4_0;
    use crate::quant::q4_1::Q4_1;
    use crate::quant::q8::{BlockQ8_0, Q8_0Act, Q8_1Act};
    use core::arch::wasm32::*;

    /// The SIMD parts of a packed type.
    pub trait Simd4: PackKind {
        /// Part `k` (0..4) of group block `g`'s quants as four i16x8 of
        /// 4 rows x 2 columns, and the offsets in the block's activations
        /// of those column pairs.
        ///
        /// # Safety
        /// None beyond reading `g` (wasm loads need no alignment).
        unsafe fn weights(g: &Self::Group, k: usize) -> ([v128; 4], [usize; 4]);
        /// The 4 rows' scales (and minimums; zero where the type has none).
        ///
        /// # Safety
        /// None beyond reading `g`.
        unsafe fn scales(g: &Self::Group) -> (v128, v128);
        /// The block's term of the scalar reference, lane by lane, from its
        /// integer sums: the same f32 operations in the same order.
        fn term(d: v128, m: v128, sumi: v128, y: &Self::Act) -> v128;
        /// Whether the relaxed-SIMD block ([`block_relaxed`]) serves this
        /// type: its weights are nibbles, valid 7-bit operands.
        #[cfg(target_feature = "relaxed-simd")]
        const RELAXED: bool;
        /// What the nibbles are offset by (the weight is `nibble - BIAS`).
        #[cfg(target_feature = "relaxed-simd")]
        const BIAS: i32;
        /// The activation's 32 quants.
        #[cfg(target_feature = "relaxed-simd")]
        fn qs(y: &Self::Act) -> &[i8; 32];
        /// The group's packed quants.
        #[cfg(target_feature = "relaxed-simd")]
        fn nibbles(g: &Self::Group) -> *const u8;
    }

    impl Simd4 for Q4_0 {
        #[inline(always)]
        unsafe fn weights(g: &BlockQ4_0x4, k: usize) -> ([v128; 4], [usize; 4]) {
            let q = v128_load(g.qs.as_ptr().add(16 * k) as *const v128);
            let lo = i8x16_sub(v128_and(q, u8x16_splat(0x0f)), i8x16_splat(8));
            let hi = i8x16_sub(u8x16_shr(q, 4), i8x16_splat(8));
            (
                [
                    i16x8_extend_low_i8x16(lo),
                    i16x8_extend_high_i8x16(lo),
                    i16x8_extend_low_i8x16(hi),
                    i16x8_extend_high_i8x16(hi),
                ],
                [4 * k, 4 * k + 2, 16 + 4 * k, 16 + 4 * k + 2],
            )
        }
        #[inline(always)]
        unsafe fn scales(g: &BlockQ4_0x4) -> (v128, v128) {
            (load_f16x4(g.d.as_ptr()), f32x4_splat(0.0))
        }
        #[inline(always)]
        fn term(d: v128, _m: v128, sumi: v128, y: &Q8_0Act) -> v128 {
            f32x4_mul(f32x4_mul(d, f32x4_splat(y.d)), f32x4_convert_i32x4(sumi))
        }
        #[cfg(target_feature = "relaxed-simd")]
        const RELAXED: bool = true;
        #[cfg(target_feature = "relaxed-simd")]
        const BIAS: i32 = 8;
        #[cfg(target_feature = "relaxed-simd")]
        #[inline(always)]
        fn qs(y: &Q8_0Act) -> &[i8; 32] {
            &y.qs
        }
        #[cfg(target_feature = "relaxed-simd")]
        #[inline(always)]
        fn nibbles(g: &BlockQ4_0x4) -> *const u8 {
            g.qs.as_ptr()
        }
    }

    impl Simd4 for Q4_1 {
        #[inline(always)]
        unsafe fn weights(g: &BlockQ4_1x4, k: usize) -> ([v128; 4], [usize; 4]) {
            let q = v128_load(g.qs.as_ptr().add(16 * k) as *const v128);
            let lo = v128_and(q, u8x16_splat(0x0f));
            let hi = u8x16_shr(q, 4);
            (
                [
                    u16x8_extend_low_u8x16(lo),
                    u16x8_extend_high_u8x16(lo),
                    u16x8_extend_low_u8x16(hi),
                    u16x8_extend_high_u8x16(hi),
                ],
                [4 * k, 4 * k + 2, 16 + 4 * k, 16 + 4 * k + 2],
            )
        }
        #[inline(always)]
        unsafe fn scales(g: &BlockQ4_1x4) -> (v128, v128) {
            let p = g.dm.as_ptr();
            (load_f16x4(p), load_f16x4(p.add(ROWS)))
        }
        #[inline(always)]
        fn term(d: v128, m: v128, sumi: v128, y: &Q8_1Act) -> v128 {
            let t = f32x4_mul(f32x4_mul(d, f32x4_splat(y.d)), f32x4_convert_i32x4(sumi));
            f32x4_add(t, f32x4_mul(m, f32x4_splat(y.s)))
        }
        #[cfg(target_feature = "relaxed-simd")]
        const RELAXED: bool = true;
        #[cfg(target_feature = "relaxed-simd")]
        const BIAS: i32 = 0;
        #[cfg(target_feature = "relaxed-simd")]
        #[inline(always)]
        fn qs(y: &Q8_1Act) -> &[i8; 32] {
            &y.qs
        }
        #[cfg(target_feature = "relaxed-simd")]
        #[inline(always)]
        fn nibbles(g: &BlockQ4_1x4) -> *const u8 {
            g.qs.as_ptr()
        }
    }

    /// [`PackKind::dot4`] in simd128: per block, the integer sums of each
    /// vector (two chains each, exact in any order) from weights unpacked
    /// once, then each vector's term added to its sums in block order.
    ///
    /// For one vector (decode) the loops are unrolled by hand (two blocks
    /// per iteration, the four parts of a block in straight-line code): the
    /// engine checks for interruption at every loop back-edge, and a loop
    /// per part paid that check (and the spills around it) every few
    /// instructions. With several vectors the straight-line code needs more
    /// registers than x86 has and spills more than that (measured), so the
    /// loops stay.
    #[inline(always)]
    pub fn dot4_impl<K: Simd4, const T: usize>(
        g: &[K::Group],
        y: [&[K::Act]; T],
        yw: [&[i16]; T],
    ) -> [[f32; ROWS]; T] {
        dot4_impl_ys::<K, T>(g, y, yw, [&[]; T])
    }

    /// [`dot4_impl`] given also each vector's block sums of quants (`ys[t]`:
    /// one per block, or empty), which the relaxed blocks of offset
    /// nibbles (Q4_0's) take rather than summing the activations again.
    #[inline(always)]
    pub fn dot4_impl_ys<K: Simd4, const T: usize>(
        g: &[K::Group],
        y: [&[K::Act]; T],
        yw: [&[i16]; T],
        ys: [&[i32]; T],
    ) -> [[f32; ROWS]; T] {
        for t in 0..T {
            assert!(y[t].len() == g.len() && yw[t].len() == 32 * g.len());
            assert!(ys[t].is_empty() || ys[t].len() == g.len());
        }
        let mut acc = [f32x4_splat(0.0); T];
        // One vector (decode) in the relaxed build: `block_relaxed1`, whose
        // activations are one register shuffle per 16 weights (the relaxed
        // block's splat loads and row shuffles per vector measured slower
        // than the i16 dots for decode: 76 vs 90 tokens/s).
        #[cfg(target_feature = "relaxed-simd")]
        if T == 1 && K::RELAXED {
            let one = relaxed1::<K>(g, y[0], ys[0]);
            return std::array::from_fn(|_| one);
        }
        if T == 1 {
            let mut pairs = g.chunks_exact(2);
            let mut b = 0;
            for p in pairs.by_ref() {
                block::<K, T>(&p[0], b, &y, &yw, &ys, &mut acc);
                block::<K, T>(&p[1], b + 1, &y, &yw, &ys, &mut acc);
                b += 2;
            }
            if let [bx] = pairs.remainder() {
                block::<K, T>(bx, b, &y, &yw, &ys, &mut acc);
            }
        } else {
            for (b, bx) in g.iter().enumerate() {
                block::<K, T>(bx, b, &y, &yw, &ys, &mut acc);
            }
        }
        acc.map(lanes)
    }

    /// [`dot4_impl`] for one vector in the relaxed build, two blocks per
    /// loop step; `ys`, if not empty, the vector's block sums of quants
    /// (one per block), which [`block_relaxed1`] then takes rather than
    /// summing the activations again.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    pub fn relaxed1<K: Simd4>(g: &[K::Group], y: &[K::Act], ys: &[i32]) -> [f32; ROWS] {
        assert!(y.len() == g.len() && (ys.is_empty() || ys.len() == g.len()));
        let c = relaxed1_masks();
        let mut acc = f32x4_splat(0.0);
        let ysum = |b: usize| ys.get(b).copied();
        let mut pairs = g.chunks_exact(2);
        let mut b = 0;
        for p in pairs.by_ref() {
            block_relaxed1::<K>(&p[0], &y[b], ysum(b), &mut acc, &c);
            block_relaxed1::<K>(&p[1], &y[b + 1], ysum(b + 1), &mut acc, &c);
            b += 2;
        }
        if let [bx] = pairs.remainder() {
            block_relaxed1::<K>(bx, &y[b], ysum(b), &mut acc, &c);
        }
        lanes(acc)
    }

    /// Block `b` (`bx`) of [`dot4_impl`]: its term added to `acc`.
    /// `b < y[t].len()` and `yw[t].len() == 32 * y[t].len()` (asserted by
    /// the caller).
    #[inline(always)]
    fn block<K: Simd4, const T: usize>(
        bx: &K::Group,
        b: usize,
        y: &[&[K::Act]; T],
        yw: &[&[i16]; T],
        ys: &[&[i32]; T],
        acc: &mut [v128; T],
    ) {
        // Several vectors (prompts, batches): the relaxed block, 11% faster
        // for prompts (one vector takes `block_relaxed1` in `dot4_impl`).
        #[cfg(target_feature = "relaxed-simd")]
        if K::RELAXED && T > 1 {
            return block_relaxed::<K, T>(bx, b, y, ys, acc);
        }
        let _ = ys;
        let mut s = [[i32x4_splat(0); 2]; T];
        let mut part = |k: usize| {
            // SAFETY: `weights` reads `bx`; the activation offsets are
            // below 32, and `yw[t]` has 32 i16 per block (the caller's
            // assert), `b` a block of it.
            unsafe {
                let (w, off) = K::weights(bx, k);
                for t in 0..T {
                    let yp = yw[t].as_ptr().add(32 * b);
                    let a = i32x4_add(dot_pair(w[0], yp, off[0]), dot_pair(w[1], yp, off[1]));
                    let c = i32x4_add(dot_pair(w[2], yp, off[2]), dot_pair(w[3], yp, off[3]));
                    s[t][0] = i32x4_add(s[t][0], a);
                    s[t][1] = i32x4_add(s[t][1], c);
                }
            }
        };
        if T == 1 {
            part(0);
            part(1);
            part(2);
            part(3);
        } else {
            // With several vectors, the unrolled parts spill more than
            // the checks cost.
            for k in (0..4).step_by(2) {
                part(k);
                part(k + 1);
            }
        }
        // SAFETY: reads `bx`.
        let (d, m) = unsafe { K::scales(bx) };
        for t in 0..T {
            let sumi = i32x4_add(s[t][0], s[t][1]);
            acc[t] = f32x4_add(acc[t], K::term(d, m, sumi, &y[t][b]));
        }
    }

    /// [`block`] with relaxed SIMD for nibble weights, a vector at a time
    /// (as Q5_0's): the block's nibbles (0..=15, the 7-bit operand of
    /// `i16x8.relaxed_dot_i8x16_i7x16_s`) shuffled to 4 rows x 4 columns
    /// once ([`crate::quant::packed_k::rows`], 8 registers), then per
    /// vector its 32 activations loaded whole and each 4 broadcast by a
    /// shuffle ([`crate::quant::packed_k::quads4`]), the vector's term
    /// finished before the next. A pair sum is at most 2 * 15 * 128 =
    /// 3840 in magnitude, the 4 parts of a lane at most 15360: exact in
    /// i16 on every host, so the block's `sumi` (less `BIAS` times the
    /// activations' sum, `ys` if given) is the simd128 one: the same float
    /// bits.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn block_relaxed<K: Simd4, const T: usize>(
        bx: &K::Group,
        b: usize,
        y: &[&[K::Act]; T],
        ys: &[&[i32]; T],
        acc: &mut [v128; T],
    ) {
        use crate::quant::packed_k::{quads4, rows};
        let m4 = u8x16_splat(0x0f);
        let codes: [(v128, v128); 4] = std::array::from_fn(|k| {
            // SAFETY: the block's quants are 64 bytes (4 parts of 16).
            let q = unsafe { v128_load(K::nibbles(bx).add(16 * k) as *const v128) };
            (rows(v128_and(q, m4)), rows(u8x16_shr(q, 4)))
        });
        // SAFETY: reads `bx`.
        let (d, m) = unsafe { K::scales(bx) };
        let one = i16x8_splat(1);
        for t in 0..T {
            let qs = K::qs(&y[t][b]).as_ptr();
            // SAFETY: the 32 quants.
            let (y0, y1) = unsafe {
                (
                    v128_load(qs as *const v128),
                    v128_load(qs.add(16) as *const v128),
                )
            };
            let (lo, hi) = quads4(&codes, y0, y1);
            // Adjacent i16 lanes are one row's.
            let mut sumi = i32x4_add(i32x4_dot_i16x8(lo, one), i32x4_dot_i16x8(hi, one));
            if K::BIAS != 0 {
                sumi = match ys[t].get(b) {
                    Some(&s) => i32x4_sub(sumi, i32x4_splat(K::BIAS * s)),
                    None => unbias::<K>(sumi, y0, y1),
                };
            }
            acc[t] = f32x4_add(acc[t], K::term(d, m, sumi, &y[t][b]));
        }
    }

    /// [`block`] for one vector with relaxed SIMD: each 16 bytes of nibbles
    /// (low and high halves: 4 rows x 2 columns, then 4 rows x the next 2)
    /// dotted pairwise, by `i16x8.relaxed_dot_i8x16_i7x16_s` with the nibbles
    /// as the 7-bit operand, with the block's activations shuffled in
    /// register to the same arrangement (a full vector, no splat loads).
    /// A lane of a pair sum is at most 2 * 128 * 15 = 3840 in magnitude, the
    /// 8 pair sums of a lane at most 30720: exact in i16 on every host. The
    /// lanes `r` and `r + 4` then hold row `r`'s two halves: `sumi` is the
    /// exact integer sum, the term that of [`block`].
    ///
    /// `c` are [`relaxed1_masks`]: the column shuffles are swizzles by
    /// those values, not constant shuffles, because V8 rebuilds a v128
    /// constant at every use inside a loop (four instructions each) where
    /// a value defined before the loop stays in a register; wasmtime
    /// compiles either to one `pshufb`.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn block_relaxed1<K: Simd4>(
        bx: &K::Group,
        y: &K::Act,
        ysum: Option<i32>,
        acc: &mut v128,
        c: &[v128; 5],
    ) {
        let qs = K::qs(y).as_ptr();
        let p = K::nibbles(bx);
        // SAFETY: 32 activation bytes, 64 bytes of quants.
        let (y0, y1, q) = unsafe {
            (
                v128_load(qs as *const v128),
                v128_load(qs.add(16) as *const v128),
                [
                    v128_load(p as *const v128),
                    v128_load(p.add(16) as *const v128),
                    v128_load(p.add(32) as *const v128),
                    v128_load(p.add(48) as *const v128),
                ],
            )
        };
        // Columns 4k, 4k + 1 for 4 rows, then 4k + 2, 4k + 3 (indices all
        // below 16: every host's relaxed swizzle gives the same bytes).
        let cols = |v: v128, k: usize| i8x16_relaxed_swizzle(v, c[k]);
        let m = c[4];
        let dot = |w: v128, a: v128| i16x8_relaxed_dot_i8x16_i7x16(a, w);
        // One half (the low or the high nibbles of all 4 parts) against the
        // activations `a` (y0 or y1).
        let half = |w: [v128; 4], a: v128| {
            i16x8_add(
                i16x8_add(dot(w[0], cols(a, 0)), dot(w[1], cols(a, 1))),
                i16x8_add(dot(w[2], cols(a, 2)), dot(w[3], cols(a, 3))),
            )
        };
        let s0 = half(q.map(|v| v128_and(v, m)), y0);
        let s1 = half(q.map(|v| u8x16_shr(v, 4)), y1);
        let mut sumi = row_sums(i16x8_add(s0, s1));
        if K::BIAS != 0 {
            sumi = match ysum {
                Some(ys) => i32x4_sub(sumi, i32x4_splat(K::BIAS * ys)),
                None => unbias::<K>(sumi, y0, y1),
            };
        }
        // SAFETY: reads `bx`.
        let (d, m) = unsafe { K::scales(bx) };
        *acc = f32x4_add(*acc, K::term(d, m, sumi, y));
    }

    /// The i32 sums of i16 lanes `r` and `r + 4` of `v`, in lane `r`: the
    /// lanes side by side, then added pairwise (`pmaddwd` against ones in
    /// wasmtime's x64 code): two instructions, where widening both halves
    /// and adding them takes four.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    pub(crate) fn row_sums(v: v128) -> v128 {
        i32x4_extadd_pairwise_i16x8(i8x16_shuffle::<
            0,
            1,
            8,
            9,
            2,
            3,
            10,
            11,
            4,
            5,
            12,
            13,
            6,
            7,
            14,
            15,
        >(v, v))
    }

    /// [`block_relaxed1`]'s byte shuffles (columns 4k, 4k + 1 for 4 rows,
    /// then 4k + 2, 4k + 3, for k = 0..4) and its nibble mask, as values
    /// the compiler cannot fold back into constants.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn relaxed1_masks() -> [v128; 5] {
        let col = |k: u8| {
            let (a, b, c, d) = (4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3);
            u8x16(a, b, a, b, a, b, a, b, c, d, c, d, c, d, c, d)
        };
        core::hint::black_box([col(0), col(1), col(2), col(3), u8x16_splat(0x0f)])
    }

    /// `sumi` less `K::BIAS` times the sum of the block's 32 activations
    /// (`y0`, `y1`), in every lane: the relaxed blocks' nibble sums turned
    /// into the weights' (exact: the sum is at most 32 * 128).
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn unbias<K: Simd4>(sumi: v128, y0: v128, y1: v128) -> v128 {
        let one = i8x16_splat(1);
        let ys = i32x4_relaxed_dot_i8x16_i7x16_add(
            y0,
            one,
            i32x4_relaxed_dot_i8x16_i7x16_add(y1, one, i32x4_splat(0)),
        );
        let ys = i32x4_add(ys, i32x4_shuffle::<2, 3, 0, 1>(ys, ys));
        let ys = i32x4_add(ys, i32x4_shuffle::<1, 0, 3, 2>(ys, ys));
        i32x4_sub(sumi, i32x4_mul(ys, i32x4_splat(K::BIAS)))
    }

    /// One vector's [`PackKind::dot1`]: as [`dot4_impl`] for `T = 1`, but
    /// each column pair's activations loaded whole from `yp` (the pair
    /// repeated four times, a v128 per pair) rather than splat from the
    /// vector's i16 quants: a load the dot can take as its memory operand.
    /// (Q4_0 and Q4_1 in the simd128 build only.)
    #[cfg(not(target_feature = "relaxed-simd"))]
    #[inline(always)]
    pub fn dot1_pairs<K: Simd4>(g: &[K::Group], y: &[K::Act], yp: &[i16]) -> [f32; ROWS] {
        assert!(y.len() == g.len() && yp.len() == 128 * g.len());
        let mut acc = f32x4_splat(0.0);
        for (b, bx) in g.iter().enumerate() {
            // SAFETY: `weights` and `scales` read `bx`; the pair offsets
            // are below 32, so the v128 at `p + off / 2` is inside block
            // `b`'s 128 i16 of `yp` (asserted above).
            unsafe {
                let p = yp.as_ptr().add(128 * b) as *const v128;
                let pair = |w: v128, off: usize| i32x4_dot_i16x8(w, v128_load(p.add(off / 2)));
                let mut s0 = i32x4_splat(0);
                let mut s1 = i32x4_splat(0);
                for k in 0..4 {
                    let (w, off) = K::weights(bx, k);
                    s0 = i32x4_add(s0, i32x4_add(pair(w[0], off[0]), pair(w[1], off[1])));
                    s1 = i32x4_add(s1, i32x4_add(pair(w[2], off[2]), pair(w[3], off[3])));
                }
                let (d, m) = K::scales(bx);
                acc = f32x4_add(acc, K::term(d, m, i32x4_add(s0, s1), &y[b]));
            }
        }
        lanes(acc)
    }

    /// `w` (4 rows x 2 columns as i16, row-major pairs) dotted with the two
    /// activations at `base + off` (`off` even), splat: each lane a row's
    /// 2-term sum. `base` is a multiple of 8 i16 into its vector.
    ///
    /// # Safety
    /// The 8 i16 at `base + off / 8 * 8` must be readable.
    #[inline(always)]
    unsafe fn dot_pair(w: v128, base: *const i16, off: usize) -> v128 {
        i32x4_dot_i16x8(
            w,
            crate::quant::splat_lane(base.add(off / 8 * 8), off % 8 / 2),
        )
    }

    /// 4 x 4 transpose of 32-bit lanes: lane `r` of output `i` is lane `i`
    /// of input `r` (4 rows' 16 bytes to 4 quads of [r0, r1, r2, r3]).
    #[inline(always)]
    pub(crate) fn transpose4([r0, r1, r2, r3]: [v128; ROWS]) -> [v128; ROWS] {
        let t0 = i32x4_shuffle::<0, 4, 1, 5>(r0, r1);
        let t1 = i32x4_shuffle::<0, 4, 1, 5>(r2, r3);
        let t2 = i32x4_shuffle::<2, 6, 3, 7>(r0, r1);
        let t3 = i32x4_shuffle::<2, 6, 3, 7>(r2, r3);
        [
            i32x4_shuffle::<0, 1, 4, 5>(t0, t1),
            i32x4_shuffle::<2, 3, 6, 7>(t0, t1),
            i32x4_shuffle::<0, 1, 4, 5>(t2, t3),
            i32x4_shuffle::<2, 3, 6, 7>(t2, t3),
        ]
    }

    /// [`PackKind::pack_rows`] of Q8_0: per group block, the 4 rows'
    /// scales side by side, then each 16 bytes of the 4 rows transposed as
    /// a 4x4 matrix of 32-bit lanes ([`super::interleave4`]'s layout).
    pub fn pack_q8_0(rows: &[BlockQ8_0], out: &mut [BlockQ8_0x4]) {
        let nb = out.len();
        assert_eq!(rows.len(), ROWS * nb, "pack_rows: 4 rows of nb blocks");
        for (b, o) in out.iter_mut().enumerate() {
            let r: [&BlockQ8_0; ROWS] = std::array::from_fn(|i| &rows[i * nb + b]);
            o.d = r.map(|x| x.d);
            for h in 0..2 {
                // SAFETY: bytes 16 h..16 h + 16 of each row's 32 quants, and
                // 64 h..64 h + 64 of the group's 128.
                unsafe {
                    let v = r.map(|x| v128_load(x.qs.as_ptr().add(16 * h) as *const v128));
                    let q = o.qs.as_mut_ptr().add(64 * h) as *mut v128;
                    for (i, t) in transpose4(v).into_iter().enumerate() {
                        v128_store(q.add(i), t);
                    }
                }
            }
        }
    }

    /// [`PackKind::dot4`] of Q8_0 (quants interleaved four bytes at a
    /// time): per 16 bytes (4 rows x 4 columns, a quad), the weights
    /// widened to i16 once for all `T` vectors (rows 0-1 low, 2-3 high),
    /// each vector's quad of i16 activations in both halves of a register
    /// (a whole load and one shuffle), `i32x4.dot_i16x8_s` giving each
    /// row's two column pairs; at the block's end the pairs of a row are
    /// added (exact integers: at most 32 * 128 * 127) and the term is the
    /// scalar reference's, `(d_x * d_y) * sumi`, lane by lane: its bits.
    /// The quad splat takes one shuffle where the two-byte layout took one
    /// per column pair.
    #[inline(always)]
    pub fn dot4_q8<const T: usize>(
        g: &[BlockQ8_0x4],
        y: [&[Q8_0Act]; T],
        yw: [&[i16]; T],
    ) -> [[f32; ROWS]; T] {
        for t in 0..T {
            assert!(y[t].len() == g.len() && yw[t].len() == 32 * g.len());
        }
        let mut acc = [f32x4_splat(0.0); T];
        for (b, bx) in g.iter().enumerate() {
            let mut lo = [i32x4_splat(0); T];
            let mut hi = [i32x4_splat(0); T];
            let mut quads = |c2: usize| {
                // SAFETY: `c2 < 4`: quads 2 c2 and 2 c2 + 1 are bytes
                // 32 c2..32 c2 + 32 of the 128 of `qs`, and i16
                // 32 b + 8 c2..+ 8 of `yw[t]` (32 per block, asserted).
                unsafe {
                    let q = bx.qs.as_ptr().add(32 * c2);
                    let w0 = v128_load(q as *const v128);
                    let w1 = v128_load(q.add(16) as *const v128);
                    let (l0, h0) = (i16x8_extend_low_i8x16(w0), i16x8_extend_high_i8x16(w0));
                    let (l1, h1) = (i16x8_extend_low_i8x16(w1), i16x8_extend_high_i8x16(w1));
                    for t in 0..T {
                        let a = v128_load(yw[t].as_ptr().add(32 * b + 8 * c2) as *const v128);
                        let a0 = i64x2_shuffle::<0, 0>(a, a);
                        let a1 = i64x2_shuffle::<1, 1>(a, a);
                        lo[t] = i32x4_add(
                            lo[t],
                            i32x4_add(i32x4_dot_i16x8(l0, a0), i32x4_dot_i16x8(l1, a1)),
                        );
                        hi[t] = i32x4_add(
                            hi[t],
                            i32x4_add(i32x4_dot_i16x8(h0, a0), i32x4_dot_i16x8(h1, a1)),
                        );
                    }
                }
            };
            // (Not unrolled, as in `dot1_q8_split`.)
            let mut c2 = 0;
            while c2 < 4 {
                quads(c2);
                c2 += core::hint::black_box(1);
            }
            // SAFETY: reads `bx`'s 4 scales, finite (checked when packing).
            let d = unsafe { load_f16x4(bx.d.as_ptr()) };
            for t in 0..T {
                let sumi = i32x4_add(
                    i32x4_shuffle::<0, 2, 4, 6>(lo[t], hi[t]),
                    i32x4_shuffle::<1, 3, 5, 7>(lo[t], hi[t]),
                );
                acc[t] = f32x4_add(
                    acc[t],
                    f32x4_mul(
                        f32x4_mul(d, f32x4_splat(y[t][b].d)),
                        f32x4_convert_i32x4(sumi),
                    ),
                );
            }
        }
        acc.map(lanes)
    }

    /// One vector's [`PackKind::dot1`] of Q8_0 with relaxed SIMD, the
    /// activations split by sign as in [`crate::quant::q8::PosNeg`] and laid
    /// out by [`crate::quant::q8_quads`] (per block 8 quads of `max(y, 0)`,
    /// then 8 of `max(-y, 0)`, each 4 bytes repeated for the 4 rows): per 16
    /// bytes of weights, `relaxed_dot(x, pos) - relaxed_dot(x, neg)` (i16
    /// lanes: a row's column pair; both dots exact with a 7-bit operand,
    /// each lane and their difference at most 32512 in magnitude) widened
    /// pairwise: the four rows' sums of the quad, lane by lane. The term is
    /// [`dot4_q8`]'s: the same bits.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    pub fn dot1_q8_split(g: &[BlockQ8_0x4], y: &[Q8_0Act], yq: &[i8]) -> [f32; ROWS] {
        assert!(y.len() == g.len() && yq.len() == 256 * g.len());
        let mut acc = f32x4_splat(0.0);
        for (b, bx) in g.iter().enumerate() {
            // SAFETY: 16 c < 128 bytes of `qs`; 256 bytes of `yq` per block
            // (asserted).
            let quad = |c: usize| unsafe {
                let w = v128_load(bx.qs.as_ptr().add(16 * c) as *const v128);
                let a = yq.as_ptr().add(256 * b + 16 * c);
                let p = v128_load(a as *const v128);
                let n = v128_load(a.add(128) as *const v128);
                i32x4_extadd_pairwise_i16x8(i16x8_sub(
                    i16x8_relaxed_dot_i8x16_i7x16(w, p),
                    i16x8_relaxed_dot_i8x16_i7x16(w, n),
                ))
            };
            // A loop the compiler does not unroll: unrolled, all 24 loads
            // were scheduled first and spilled (measured slower).
            let (mut s0, mut s1) = (i32x4_splat(0), i32x4_splat(0));
            let mut c = 0;
            while c < 8 {
                s0 = i32x4_add(s0, quad(c));
                s1 = i32x4_add(s1, quad(c + 1));
                c += core::hint::black_box(2);
            }
            // SAFETY: reads `bx`'s 4 scales, finite (checked when packing).
            let d = unsafe { load_f16x4(bx.d.as_ptr()) };
            acc = f32x4_add(
                acc,
                f32x4_mul(
                    f32x4_mul(d, f32x4_splat(y[b].d)),
                    f32x4_convert_i32x4(i32x4_add(s0, s1)),
                ),
            );
        }
        lanes(acc)
    }

    /// The 4 rows' results (ROWS = 4 lanes).
    #[inline(always)]
    fn lanes(v: v128) -> [f32; ROWS] {
        crate::quant::f32x4_lanes(v)
    }
}

/// Runs `$body` with `$K` bound to the [`PackKind`] of weight type `$ty`.
macro_rules! with_pack {
    ($ty:expr, $K:ident => $body:expr, $other:expr) => {
        match $ty {
            crate::ggml_type::GgmlType::Q4_0 => {
                type $K = crate::quant::q4_0::Q4_0;
                $body
            }
            crate::ggml_type::GgmlType::Q4_1 => {
                type $K = crate::quant::q4_1::Q4_1;
                $body
            }
            crate::ggml_type::GgmlType::Q8_0 => {
                type $K = crate::quant::q8::Q8_0;
                $body
            }
            // Layouts in `packed_k`.
            crate::ggml_type::GgmlType::Q5_0 => {
                type $K = crate::quant::q5_0::Q5_0;
                $body
            }
            crate::ggml_type::GgmlType::Q4_K => {
                type $K = crate::quant::q4_k::Q4_K;
                $body
            }
            crate::ggml_type::GgmlType::Q5_K => {
                type $K = crate::quant::q5_k::Q5_K;
                $body
            }
            crate::ggml_type::GgmlType::Q6_K => {
                type $K = crate::quant::q6_k::Q6_K;
                $body
            }
            _ => $other,
        }
    };
}
pub(crate) use with_pack;

/// Whether weights of type `ty` have a packed layout.
pub fn has_layout(ty: crate::ggml_type::GgmlType) -> bool {
    with_pack!(ty, K => { let _ = K::TYPE; true }, false)
}

/// Whether every scale of the blocks of `K` in `bytes` is finite
/// ([`PackKind::finite`]: the packed dots convert scales assuming so).
pub(crate) fn all_finite<K: PackKind>(bytes: &[u8]) -> bool {
    bytemuck::cast_slice::<u8, K::Block>(bytes)
        .iter()
        .all(K::finite)
}

/// Packs `rows` rows of `nb` blocks of `K` (`data`, GGUF layout) in place,
/// each group of 4 rows through a copy; returns false, `data` untouched,
/// if a scale is not finite.
pub(crate) fn pack_kind<K: PackKind>(data: &mut [u8], rows: usize, nb: usize) -> bool {
    let rb = nb * std::mem::size_of::<K::Block>();
    assert_eq!(data.len(), rows * rb, "packed tensor size");
    if !all_finite::<K>(data) {
        return false;
    }
    let mut tmp = vec![0u8; ROWS * rb];
    for chunk in data.chunks_exact_mut(ROWS * rb) {
        tmp.copy_from_slice(chunk);
        K::pack_rows(bytemuck::cast_slice(&tmp), bytemuck::cast_slice_mut(chunk));
    }
    true
}

/// [`pack_kind`] from `src` into `dst` (the same size; no copy per group,
/// and the scales checked while each group is in cache): returns false,
/// `dst` unspecified, if a scale is not finite.
pub(crate) fn pack_kind_into<K: PackKind>(
    src: &[u8],
    dst: &mut [u8],
    rows: usize,
    nb: usize,
) -> bool {
    let rb = nb * std::mem::size_of::<K::Block>();
    assert!(
        src.len() == rows * rb && dst.len() == src.len(),
        "packed tensor size"
    );
    let full = rows / ROWS * ROWS * rb;
    if !all_finite::<K>(&src[full..]) {
        return false;
    }
    dst[full..].copy_from_slice(&src[full..]);
    for (s, d) in src[..full]
        .chunks_exact(ROWS * rb)
        .zip(dst[..full].chunks_exact_mut(ROWS * rb))
    {
        if !all_finite::<K>(s) {
            return false;
        }
        K::pack_rows(bytemuck::cast_slice(s), bytemuck::cast_slice_mut(d));
    }
    true
}

/// Row `r` of a packed tensor of `rows` rows of `nb` blocks, as GGUF blocks.
pub(crate) fn row_kind<K: PackKind>(
    data: &[u8],
    rows: usize,
    nb: usize,
    r: usize,
    out: &mut Vec<K::Block>,
) {
    let rb = nb * std::mem::size_of::<K::Block>();
    let full = rows / ROWS * ROWS;
    out.clear();
    if r < full {
        let g0 = r / ROWS * ROWS * rb;
        let g: &[K::Group] = bytemuck::cast_slice(&data[g0..g0 + ROWS * rb]);
        out.extend(g.iter().map(|b| K::unpack(b, r % ROWS)));
    } else {
        out.extend_from_slice(bytemuck::cast_slice(&data[r * rb..(r + 1) * rb]));
    }
}
