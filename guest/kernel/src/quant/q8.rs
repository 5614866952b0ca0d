//! 8-bit blocks: Q8_0 weights and the Q8_0 / Q8_1 activation blocks that
//! the 4/5/8-bit weight types are dotted against.

use super::{f16_le, f32_to_f16_le, ActBlock, QuantKind};
use crate::ggml_type::GgmlType;

/// Weights (and activations) per 8-bit block.
pub const QK8: usize = 32;

/// Q8_0 weight block (ggml `block_q8_0`): 8.5 bits per weight.
/// `w[j] = d * qs[j]`.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    pub qs: [i8; QK8],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::align_of::<BlockQ8_0>() == 1);

/// Q8_0 activation block: ggml's `block_q8_0` with the f16 scale stored
/// widened to f32 (the same value). `qs` is always in -127..=127.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Q8_0Act {
    /// f16-rounded scale.
    pub d: f32,
    pub qs: [i8; QK8],
}
const _: () = assert!(std::mem::size_of::<Q8_0Act>() == 36);

/// Q8_1 activation block: ggml's `block_q8_1` (`s = d * sum(qs)`) with
/// both f16 fields stored widened to f32. `qs` is always in -127..=127.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Q8_1Act {
    /// f16-rounded scale.
    pub d: f32,
    /// f16-rounded `d * sum(qs)` (computed with the unrounded d).
    pub s: f32,
    pub qs: [i8; QK8],
}
const _: () = assert!(std::mem::size_of::<Q8_1Act>() == 40);

/// `max |x|` of a block (0 for an all-NaN one), as
/// `fold(0.0, |m, v| m.max(v.abs()))` gives it: a NaN never wins, and the
/// maximum of the others is the same in any order. A compare and select
/// rather than `f32::max`, which is a libm call per element on wasm (and a
/// function entry the engine checks for interruption).
#[inline(always)]
fn amax(x: &[f32]) -> f32 {
    let x: &[f32; QK8] = x.try_into().expect("a whole block");
    let mut m = [0f32; 4];
    for c in x.chunks_exact(4) {
        for (m, &v) in m.iter_mut().zip(c) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    let (a, b) = (
        if m[1] > m[0] { m[1] } else { m[0] },
        if m[3] > m[2] { m[3] } else { m[2] },
    );
    if b > a {
        b
    } else {
        a
    }
}

/// A Q8_0 activation block's quants split by sign, the operands of the
/// relaxed-SIMD decode dots of Q8_0 weights ([`vec_dot4_split`]):
/// `y = pos - neg` with `pos = max(y, 0)` and `neg = max(-y, 0)`, both in
/// 0..=127: valid 7-bit operands of `i16x8.relaxed_dot_i8x16_i7x16_s`, whose
/// results are then exact and the same on every engine, with the weights
/// (any i8, -128 included) as the signed operand. Computed once per
/// activation vector ([`super::QActs`]).
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct PosNeg {
    /// `max(y, 0)` per quant.
    pub pos: [i8; QK8],
    /// `max(-y, 0)` per quant.
    pub neg: [i8; QK8],
}

impl PosNeg {
    /// The operands of the quants `qs` (each in -127..=127, as every
    /// quantizer of ours writes them; a -128 would be taken as -127).
    pub fn new(qs: &[i8; QK8]) -> PosNeg {
        PosNeg {
            pos: qs.map(|q| q.max(0)),
            neg: qs.map(|q| -q.clamp(-127, 0)),
        }
    }
}

/// ggml's 8-bit activation quantizer as its x86 build runs it
/// (`quantize_row_q8_0`/`_q8_1` in `arch/x86/quants.c`, the build the goldens
/// come from): returns (d as f32 before f16 rounding, qs) with
/// `d = max|x| / 127` and `q = round_ties_even(x * (127 / max|x|))`.
/// `round_ties_even` is also wasm's native `f32.nearest`.
#[inline]
fn quantize_q8_act_block(x: &[f32]) -> (f32, [i8; QK8]) {
    let amax = amax(x);
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK8];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
    }
    (amax / 127.0, qs)
}

/// ggml's reference quantizer (`quantize_row_q8_0_ref`, what llama-quantize
/// writes): `q = round(x / d)`, ties away from zero, with `d = max|x| / 127`.
#[inline]
fn quantize_q8_ref_block(x: &[f32]) -> (f32, [i8; QK8]) {
    let amax = amax(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK8];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    (d, qs)
}

/// f16 round trip of an f32.
#[inline]
fn f16_round(x: f32) -> f32 {
    f16_le(f32_to_f16_le(x))
}

impl ActBlock for Q8_0Act {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK: usize = QK8;
    fn quantize(x: &[f32], out: &mut [Self]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK8)) {
            let (d, qs) = quantize_q8_act_block(xb);
            *o = Q8_0Act {
                d: f16_round(d),
                qs,
            };
        }
    }
    fn dequantize(b: &[Self], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK8)) {
            for (v, &q) in o.iter_mut().zip(&blk.qs) {
                *v = blk.d * q as f32;
            }
        }
    }
}

impl ActBlock for Q8_1Act {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const BLOCK: usize = QK8;
    fn quantize(x: &[f32], out: &mut [Self]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK8)) {
            let (d, qs) = quantize_q8_act_block(xb);
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            *o = Q8_1Act {
                d: f16_round(d),
                s: f16_round(sum as f32 * d),
                qs,
            };
        }
    }
    fn dequantize(b: &[Self], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK8)) {
            for (v, &q) in o.iter_mut().zip(&blk.qs) {
                *v = blk.d * q as f32;
            }
        }
    }
}

/// Integer dot product of two 32-element i8 blocks.
#[inline(always)]
pub(crate) fn dot_i8(a: &[i8; QK8], b: &[i8; QK8]) -> i32 {
    let mut s = 0i32;
    for k in 0..QK8 {
        s += a[k] as i32 * b[k] as i32;
    }
    s
}

/// Q8_0 weights (dotted against [`Q8_0Act`]).
pub struct Q8_0;

impl QuantKind for Q8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK: usize = QK8;
    type Block = BlockQ8_0;
    type Act = Q8_0Act;

    fn quantize(x: &[f32], out: &mut [BlockQ8_0]) {
        for (o, xb) in out.iter_mut().zip(x.chunks_exact(QK8)) {
            let (d, qs) = quantize_q8_ref_block(xb);
            *o = BlockQ8_0 {
                d: f32_to_f16_le(d),
                qs,
            };
        }
    }

    fn dequantize(b: &[BlockQ8_0], out: &mut [f32]) {
        for (blk, o) in b.iter().zip(out.chunks_exact_mut(QK8)) {
            let d = f16_le(blk.d);
            for (v, &q) in o.iter_mut().zip(&blk.qs) {
                *v = d * q as f32;
            }
        }
    }

    fn vec_dot_scalar(x: &[BlockQ8_0], y: &[Q8_0Act]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let sumi = dot_i8(&bx.qs, &by.qs);
            sum += (f16_le(bx.d) * by.d) * sumi as f32;
        }
        sum
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[BlockQ8_0], y: &[Q8_0Act]) -> f32 {
        use core::arch::wasm32::*;
        // Integer block sums in SIMD, the float part as the scalar
        // reference does it: the same bits.
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            // SAFETY: each load reads 16 of the 32 bytes of a `qs` array;
            // wasm loads have no alignment requirement.
            let (x0, x1, y0, y1) = unsafe {
                let xp = bx.qs.as_ptr();
                let yp = by.qs.as_ptr();
                (
                    v128_load(xp as *const v128),
                    v128_load(xp.add(16) as *const v128),
                    v128_load(yp as *const v128),
                    v128_load(yp.add(16) as *const v128),
                )
            };
            // |x| <= 128 and |y| <= 127, so a sum of two products fits i16.
            let p0 = i16x8_add(
                i16x8_extmul_low_i8x16(x0, y0),
                i16x8_extmul_high_i8x16(x0, y0),
            );
            let p1 = i16x8_add(
                i16x8_extmul_low_i8x16(x1, y1),
                i16x8_extmul_high_i8x16(x1, y1),
            );
            let s = i32x4_add(
                i32x4_extadd_pairwise_i16x8(p0),
                i32x4_extadd_pairwise_i16x8(p1),
            );
            sum += (f16_le(bx.d) * by.d) * super::hsum_i32x4(s) as f32;
        }
        sum
    }

    /// Four rows at a time: each activation block is loaded once (widened
    /// to i16), each row's quants are widened and dotted with it
    /// (`i32x4.dot_i16x8_s`, [`part_i16`]), the four rows' integer sums are
    /// reduced into one i32x4, and the float part runs lane by lane (a lane
    /// per row) with the f32 operations of the scalar reference in its
    /// order ([`add_terms4`]), so every row has its bits.
    ///
    /// Rows in cache are read side by side ([`side4`]), in the
    /// relaxed-SIMD build given `ypn` with the activations split by sign
    /// ([`vec_dot4_split`]).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot4(
        x: [&[BlockQ8_0]; 4],
        y: &[Q8_0Act],
        yw: &[i16],
        ypn: &[PosNeg],
        in_cache: bool,
    ) -> [f32; 4] {
        use core::arch::wasm32::*;
        let n = y.len();
        assert!(x.iter().all(|r| r.len() == n), "row lengths");
        assert_eq!(yw.len(), QK8 * n, "widened activations");
        assert!(ypn.is_empty() || ypn.len() == n, "split operands");
        // SAFETY (both closures): reads the 32 i16 of block `b` of `yw`
        // (asserted above).
        let yv = |b: usize| -> [v128; 4] {
            unsafe {
                let p = yw.as_ptr().add(QK8 * b);
                std::array::from_fn(|j| v128_load(p.add(8 * j) as *const v128))
            }
        };
        if in_cache {
            #[cfg(target_feature = "relaxed-simd")]
            if !ypn.is_empty() {
                return vec_dot4_split(x, y, ypn);
            }
            return side4(
                x,
                y,
                |b| b.d,
                |b| {
                    let yv = yv(b);
                    [
                        part_i16(&x[0][b], &yv),
                        part_i16(&x[1][b], &yv),
                        part_i16(&x[2][b], &yv),
                        part_i16(&x[3][b], &yv),
                    ]
                },
            );
        }
        // Memory order: a span of blocks of row 0, then of row 1, .., so
        // that the rows are read as one stream (four rows read side by side,
        // block by block, measured 3x slower out of cache: 5.5 vs 17 GB/s
        // for a 262144 x 640 matrix, as hardware prefetching lost track);
        // the integer sums wait in `sums` for the float part.
        const SPAN: usize = 32;
        let mut sums = [[i32x4_splat(0); SPAN]; 4];
        let mut acc = f32x4_splat(0.0);
        for b0 in (0..n).step_by(SPAN) {
            let m = SPAN.min(n - b0);
            for (r, xr) in x.iter().enumerate() {
                for (s, (k, bx)) in sums[r][..m]
                    .iter_mut()
                    .zip(xr[b0..b0 + m].iter().enumerate())
                {
                    *s = part_i16(bx, &yv(b0 + k));
                }
            }
            for (k, by) in y[b0..b0 + m].iter().enumerate() {
                let xb = b0 + k;
                let s = [sums[0][k], sums[1][k], sums[2][k], sums[3][k]];
                let d = [x[0][xb].d, x[1][xb].d, x[2][xb].d, x[3][xb].d];
                acc = add_terms4(acc, s, d, by.d);
            }
        }
        super::f32x4_lanes(acc)
    }
}

/// Row block `bx` dotted with the widened activations `yv` (its block's
/// 32, as i16): 4 partial integer sums (|x| <= 128, |y| <= 127: exact in
/// i32).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn part_i16(bx: &BlockQ8_0, yv: &[core::arch::wasm32::v128; 4]) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    // SAFETY: each load reads 16 of the 32 bytes of `qs`; wasm loads have
    // no alignment requirement.
    let (x0, x1) = unsafe {
        let xp = bx.qs.as_ptr();
        (
            v128_load(xp as *const v128),
            v128_load(xp.add(16) as *const v128),
        )
    };
    let a = i32x4_add(
        i32x4_dot_i16x8(i16x8_extend_low_i8x16(x0), yv[0]),
        i32x4_dot_i16x8(i16x8_extend_high_i8x16(x0), yv[1]),
    );
    let b = i32x4_add(
        i32x4_dot_i16x8(i16x8_extend_low_i8x16(x1), yv[2]),
        i32x4_dot_i16x8(i16x8_extend_high_i8x16(x1), yv[3]),
    );
    i32x4_add(a, b)
}

/// [`QuantKind::vec_dot4`] with the 4 rows read side by side, block by
/// block: `int(b)` gives block `b`'s 4 partial integer sums of each row
/// (its activations loaded once for the 4), then [`add_terms4`] at once
/// (no round trip through memory). From cache 1.12x faster than the span
/// order with the i16 dots (60 x 4096: 20.3 vs 18.1 GMAC/s), from DRAM 3.5x
/// slower, the hardware prefetcher losing track: for rows in cache only.
/// Also for the other weight types dotted against Q8_0 activations, whose
/// block's scale `d` gives (Q4_0's).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(super) fn side4<B>(
    x: [&[B]; 4],
    y: &[Q8_0Act],
    d: impl Fn(&B) -> [u8; 2],
    mut int: impl FnMut(usize) -> [core::arch::wasm32::v128; 4],
) -> [f32; 4] {
    use core::arch::wasm32::*;
    assert!(x.iter().all(|r| r.len() == y.len()));
    let mut acc = f32x4_splat(0.0);
    for (b, by) in y.iter().enumerate() {
        let d = [d(&x[0][b]), d(&x[1][b]), d(&x[2][b]), d(&x[3][b])];
        acc = add_terms4(acc, int(b), d, by.d);
    }
    super::f32x4_lanes(acc)
}

/// [`side4`] for weights stored as unsigned codes (at most 127) with an
/// offset of `2^log2_off` (the weight is `code - 2^log2_off`; Q4_0: 8,
/// Q5_0: 16), in the relaxed build: `codes(block)` gives a block's codes
/// for its 32 weights (two halves of 16), the 7-bit operand of
/// `i16x8.relaxed_dot_i8x16_i7x16_s` against the activations, and the
/// offset comes off lane by lane as `2^log2_off` times the activations'
/// pair sums (one dot against ones for the 4 rows). With codes at most 31
/// a lane is at most 2 * 2 * 31 * 128 + 16 * 2 * 2 * 128 in magnitude:
/// exact in i16 on every engine, so the block sums are the scalar
/// reference's integers.
#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
#[inline(always)]
pub(super) fn side4_codes<B>(
    x: [&[B]; 4],
    y: &[Q8_0Act],
    d: impl Fn(&B) -> [u8; 2],
    log2_off: u32,
    codes: impl Fn(&B) -> [core::arch::wasm32::v128; 2],
) -> [f32; 4] {
    use core::arch::wasm32::*;
    let ones = i8x16_splat(1);
    side4(x, y, d, |b| {
        // SAFETY: the two halves of the 32-byte `qs` of block `b`.
        let (y0, y1) = unsafe {
            let p = y[b].qs.as_ptr();
            (
                v128_load(p as *const v128),
                v128_load(p.add(16) as *const v128),
            )
        };
        let dot = |w: v128, a: v128| i16x8_relaxed_dot_i8x16_i7x16(a, w);
        let off = i16x8_shl(i16x8_add(dot(ones, y0), dot(ones, y1)), log2_off);
        let row = |r: usize| {
            let [lo, hi] = codes(&x[r][b]);
            i32x4_extadd_pairwise_i16x8(i16x8_sub(i16x8_add(dot(lo, y0), dot(hi, y1)), off))
        };
        [row(0), row(1), row(2), row(3)]
    })
}

/// The float part of a block of [`QuantKind::vec_dot4`]: `acc` (lane r: row
/// r's sum so far) plus, lane by lane, `(d_r * yd) * sumi_r` with the f32
/// operations of [`QuantKind::vec_dot_scalar`] in its order; `s[r]`: 4
/// partial integer sums of row r's block (exact in any order), `d[r]` its
/// f16 scale (any: subnormal, Inf, NaN convert as the scalar one).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn add_terms4(
    acc: core::arch::wasm32::v128,
    s: [core::arch::wasm32::v128; 4],
    d: [[u8; 2]; 4],
    yd: f32,
) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    let sumi = row_totals4(s);
    let d = f16s4(d);
    f32x4_add(
        acc,
        f32x4_mul(f32x4_mul(d, f32x4_splat(yd)), f32x4_convert_i32x4(sumi)),
    )
}

/// Lane r: the sum of the 4 lanes of `s[r]`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(super) fn row_totals4(s: [core::arch::wasm32::v128; 4]) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    let [s0, s1, s2, s3] = s;
    let t0 = i32x4_add(
        i32x4_shuffle::<0, 4, 1, 5>(s0, s1),
        i32x4_shuffle::<2, 6, 3, 7>(s0, s1),
    );
    let t1 = i32x4_add(
        i32x4_shuffle::<0, 4, 1, 5>(s2, s3),
        i32x4_shuffle::<2, 6, 3, 7>(s2, s3),
    );
    i32x4_add(
        i32x4_shuffle::<0, 1, 4, 5>(t0, t1),
        i32x4_shuffle::<2, 3, 6, 7>(t0, t1),
    )
}

/// The f16 values `d` (any: subnormal, Inf, NaN) as f32 lanes.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(super) fn f16s4(d: [[u8; 2]; 4]) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    // Sign-extended: the lanes `f16x4_finite` takes.
    let h = i32x4(
        i16::from_le_bytes(d[0]) as i32,
        i16::from_le_bytes(d[1]) as i32,
        i16::from_le_bytes(d[2]) as i32,
        i16::from_le_bytes(d[3]) as i32,
    );
    super::f16x4_any(h)
}

/// [`QuantKind::vec_dot4`] of Q8_0 with relaxed SIMD and the activations
/// split by sign ([`PosNeg`]): per 16 quants `x` of a row,
/// `i16x8.relaxed_dot_i8x16_i7x16_s(x, pos) - i16x8.relaxed_dot_i8x16_i7x16_s(x, neg)`,
/// widened pairwise to i32. Each dot's lane is a sum of two products of an
/// i8 and a 7-bit operand, at most 2 * 128 * 127 = 32512 in magnitude: exact
/// in i16 (no saturation) and the same on every engine; their difference
/// is `x[j] y[j] + x[j+1] y[j+1]`, within the same bound, so the wrapping
/// i16 subtraction is exact too. A block's 4 partial sums per row are then
/// at most 8 * 128 * 127 in magnitude, and its float part is that of the
/// i16 dots ([`add_terms4`]): the scalar reference's bits, for any quants.
///
/// The four rows are read side by side ([`side4`]): rows in cache only.
/// (It replaced a "sign trick", `sign(y) * x` against `|y|`, which needed
/// a check for -128 weights on every block and cost more vector
/// instructions per weight: 60 x 4096 from cache, see `bench_q8_0_decode`.)
#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
#[inline(always)]
pub(super) fn vec_dot4_split(x: [&[BlockQ8_0]; 4], y: &[Q8_0Act], ypn: &[PosNeg]) -> [f32; 4] {
    use core::arch::wasm32::*;
    assert_eq!(ypn.len(), y.len());
    side4(
        x,
        y,
        |b| b.d,
        |b| {
            let pn = &ypn[b];
            // SAFETY: each load reads 16 of the 32 bytes of `pos` or `neg`;
            // wasm loads have no alignment requirement.
            let (p0, p1, n0, n1) = unsafe {
                let (pp, np) = (pn.pos.as_ptr(), pn.neg.as_ptr());
                (
                    v128_load(pp as *const v128),
                    v128_load(pp.add(16) as *const v128),
                    v128_load(np as *const v128),
                    v128_load(np.add(16) as *const v128),
                )
            };
            let row = |r: usize| {
                // SAFETY: each load reads 16 of the 32 bytes of `qs`.
                let (x0, x1) = unsafe {
                    let xp = x[r][b].qs.as_ptr();
                    (
                        v128_load(xp as *const v128),
                        v128_load(xp.add(16) as *const v128),
                    )
                };
                let d0 = i16x8_sub(
                    i16x8_relaxed_dot_i8x16_i7x16(x0, p0),
                    i16x8_relaxed_dot_i8x16_i7x16(x0, n0),
                );
                let d1 = i16x8_sub(
                    i16x8_relaxed_dot_i8x16_i7x16(x1, p1),
                    i16x8_relaxed_dot_i8x16_i7x16(x1, n1),
                );
                i32x4_add(
                    i32x4_extadd_pairwise_i16x8(d0),
                    i32x4_extadd_pairwise_i16x8(d1),
                )
            };
            [row(0), row(1), row(2), row(3)]
        },
    )
}
