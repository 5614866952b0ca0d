//! Quantized tensors: block formats, activation quantization, dot products
//! and the matmul.
//!
//! As in llama.cpp (ggml), the activation vector is quantized once per
//! matmul into the weight type's [`vec_dot_type`] (8-bit blocks for the
//! 4/5/8-bit weight types), and each output element is an integer dot
//! product of a weight row against it, scaled per block.
//!
//! One module per quant family ([`float`], [`q4_0`], [`q4_1`], [`q5_0`],
//! [`q5_1`], [`q8`], [`iq4_nl`], and the k-quants [`q2_k`], [`q3_k`],
//! [`q4_k`], [`q5_k`], [`q6_k`], [`iq4_xs`] dotted against the [`q8_k`]
//! activation block); each implements [`QuantKind`]. The scalar `vec_dot_scalar` is
//! always compiled and is the reference; on wasm32 with `simd128` the hot
//! kinds provide a SIMD `vec_dot`, tested against the scalar one.

use crate::error::Error;
use crate::ggml_type::GgmlType;
use bytemuck::Pod;

pub mod float;
pub mod iq4_nl;
pub mod iq4_xs;
mod kbatch;
pub mod packed;
pub mod packed_k;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8;
pub mod q8_k;

#[cfg(test)]
mod kquant_ref;
#[cfg(test)]
mod tests;

/// A block of activations in a `vec_dot_type` (see [`QActs`]).
pub trait ActBlock: Pod {
    /// The GGML type this block represents.
    const TYPE: GgmlType;
    /// Elements per block.
    const BLOCK: usize;
    /// Quantize `x` (`out.len() * BLOCK` values) into `out`.
    fn quantize(x: &[f32], out: &mut [Self]);
    /// Dequantize `b` into `out` (`b.len() * BLOCK` values).
    fn dequantize(b: &[Self], out: &mut [f32]);
}

/// A weight type: its block, its activation block, and its dot products.
pub trait QuantKind {
    /// The weight type.
    const TYPE: GgmlType;
    /// Weights per block.
    const BLOCK: usize;
    /// The weight block, in the GGUF byte layout (alignment 1).
    type Block: Pod;
    /// The activation block (the `vec_dot_type`).
    type Act: ActBlock;
    /// Quantize `x` (`out.len() * BLOCK` values) with ggml's reference quantizer.
    fn quantize(x: &[f32], out: &mut [Self::Block]);
    /// Dequantize `b` into `out` (`b.len() * BLOCK` values).
    fn dequantize(b: &[Self::Block], out: &mut [f32]);
    /// The reference dot product of weight blocks `x` with activation blocks
    /// `y` (same length): block results accumulated in f32, in block order.
    fn vec_dot_scalar(x: &[Self::Block], y: &[Self::Act]) -> f32;
    /// The fast dot product (SIMD where available); same value as
    /// [`QuantKind::vec_dot_scalar`] up to f32 reassociation.
    fn vec_dot(x: &[Self::Block], y: &[Self::Act]) -> f32 {
        Self::vec_dot_scalar(x, y)
    }
    /// [`QuantKind::vec_dot`] of four rows `x` with the same `y` (a decode
    /// mat-vec, 4 rows at a time): each result has the bits of
    /// [`QuantKind::vec_dot_scalar`] of its row. `yw`: `y`'s quants widened
    /// to i16 ([`QActs`] keeps them for the 8-bit activation types). `ypn`:
    /// `y`'s [`q8::PosNeg`] operands, or empty (Q8_0 activations of one
    /// vector in the relaxed-SIMD build only). `in_cache`: whether the rows
    /// are assumed in cache ([`IN_CACHE`]), which suits other orders of
    /// reading them.
    fn vec_dot4(
        x: [&[Self::Block]; 4],
        y: &[Self::Act],
        _yw: &[i16],
        _ypn: &[q8::PosNeg],
        _in_cache: bool,
    ) -> [f32; 4] {
        x.map(|x| Self::vec_dot(x, y))
    }
}

/// Runs `$body` with `$K` bound to the [`QuantKind`] of weight type `$ty`.
/// This is the one table of supported weight types.
macro_rules! with_kind {
    ($ty:expr, $K:ident => $body:expr, $other:expr) => {
        match $ty {
            GgmlType::F32 => {
                type $K = float::F32;
                $body
            }
            GgmlType::F16 => {
                type $K = float::F16;
                $body
            }
            GgmlType::BF16 => {
                type $K = float::BF16;
                $body
            }
            GgmlType::Q4_0 => {
                type $K = q4_0::Q4_0;
                $body
            }
            GgmlType::Q4_1 => {
                type $K = q4_1::Q4_1;
                $body
            }
            GgmlType::Q5_0 => {
                type $K = q5_0::Q5_0;
                $body
            }
            GgmlType::Q5_1 => {
                type $K = q5_1::Q5_1;
                $body
            }
            GgmlType::Q8_0 => {
                type $K = q8::Q8_0;
                $body
            }
            GgmlType::IQ4_NL => {
                type $K = iq4_nl::IQ4NL;
                $body
            }
            GgmlType::Q2_K => {
                type $K = q2_k::Q2_K;
                $body
            }
            GgmlType::Q3_K => {
                type $K = q3_k::Q3_K;
                $body
            }
            GgmlType::Q4_K => {
                type $K = q4_k::Q4_K;
                $body
            }
            GgmlType::Q5_K => {
                type $K = q5_k::Q5_K;
                $body
            }
            GgmlType::Q6_K => {
                type $K = q6_k::Q6_K;
                $body
            }
            GgmlType::IQ4_XS => {
                type $K = iq4_xs::IQ4_XS;
                $body
            }
            _ => $other,
        }
    };
}

/// Runs `$body` with `$A` bound to the [`ActBlock`] of activation type `$ty`.
macro_rules! with_act {
    ($ty:expr, $A:ident => $body:expr) => {
        match $ty {
            GgmlType::F32 => {
                type $A = f32;
                $body
            }
            GgmlType::F16 => {
                type $A = float::F16Act;
                $body
            }
            GgmlType::BF16 => {
                type $A = float::BF16Act;
                $body
            }
            GgmlType::Q8_0 => {
                type $A = q8::Q8_0Act;
                $body
            }
            GgmlType::Q8_1 => {
                type $A = q8::Q8_1Act;
                $body
            }
            GgmlType::Q8_K => {
                type $A = q8_k::Q8_KAct;
                $body
            }
            t => panic!("{t} is not an activation type"),
        }
    };
}

/// Whether the matmul supports weights of type `ty` (the `with_kind!`
/// table; [`GgmlType::is_supported`] asks this).
pub fn is_weight_type(ty: GgmlType) -> bool {
    with_kind!(ty, K => K::TYPE == ty, false)
}

/// The activation type ggml dots weights of type `w` against. Types the
/// matmul does not support map to themselves.
pub fn vec_dot_type(w: GgmlType) -> GgmlType {
    with_kind!(w, K => <<K as QuantKind>::Act as ActBlock>::TYPE, w)
}

/// f16 bits to f32, exact for every value (branch-free except for Inf/NaN,
/// much cheaper than a software `half` conversion on wasm).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let mag = ((h & 0x7fff) as u32) << 13;
    // Reinterpreting the shifted bits as f32 gives the value times 2^-112
    // (normal and subnormal f16 alike); the multiply by 2^112 is exact.
    let v = f32::from_bits(mag) * f32::from_bits(0x7780_0000);
    let v = if h & 0x7c00 == 0x7c00 {
        f32::from_bits(mag | 0x7f80_0000)
    } else {
        v
    };
    f32::from_bits(v.to_bits() | (((h & 0x8000) as u32) << 16))
}

/// The four f32 lanes of `v`, in order.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn f32x4_lanes(v: core::arch::wasm32::v128) -> [f32; 4] {
    use core::arch::wasm32::f32x4_extract_lane;
    [
        f32x4_extract_lane::<0>(v),
        f32x4_extract_lane::<1>(v),
        f32x4_extract_lane::<2>(v),
        f32x4_extract_lane::<3>(v),
    ]
}

/// 32-bit lane `j` (0..4) of the 16 bytes at `p`, in all four lanes: a
/// whole-vector load and a byte shuffle. wasmtime 48's Cranelift lowers
/// `v128.load32_splat` to a load into a general register, a move and a
/// broadcast, and in the i16 dots of several vectors those general
/// registers spilled: with this, packed Q8_0 1536x1536 x 8 vectors runs at
/// 29.5 instead of 21 GMAC/s, Q6_K at 19.6 instead of 17 (wasm32, both
/// builds). It is not a rule: the relaxed dots' i8 splats and the Q5_0 and
/// Q4_K i16 ones measured slower with it and keep `v128.load32_splat`.
///
/// # Safety
/// `p` must point to 16 readable bytes.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) unsafe fn splat_lane<P>(p: *const P, j: usize) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    // Bytes 4j..4j + 4, four times.
    const fn lane(j: u8) -> [u8; 16] {
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            out[i] = 4 * j + (i % 4) as u8;
            i += 1;
        }
        out
    }
    static LANES: [[u8; 16]; 4] = [lane(0), lane(1), lane(2), lane(3)];
    let v = v128_load(p as *const v128);
    i8x16_swizzle(v, v128_load(LANES[j & 3].as_ptr() as *const v128))
}

/// 4 finite f16, given as their bits sign-extended to i32 lanes, to f32
/// exactly (the bits of [`f16_to_f32`]): shifted left by 13, a lane holds
/// the sign in bit 31 and the f16 exponent and mantissa in bits 13..28
/// (bits 28..31, copies of the sign, are cleared), i.e. the value times
/// 2^-112 as an f32 (a subnormal for an f16 subnormal); the multiply by
/// 2^112 is exact. An infinity or NaN comes out finite: callers rule them
/// out or mend those lanes.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn f16x4_finite(h: core::arch::wasm32::v128) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    let bits = v128_and(i32x4_shl(h, 13), u32x4_splat(0x8fff_ffff));
    f32x4_mul(bits, f32x4_splat(f32::from_bits(0x7780_0000)))
}

/// [`f16_to_f32`] of four f16 given as [`f16x4_finite`] takes them (bits
/// sign-extended to i32 lanes), Inf and NaN included: the finite
/// conversion, with the lanes whose exponent is all ones replaced by the
/// f32 infinity or NaN of the same sign and (shifted) payload, as
/// [`f16_to_f32`] makes them: its bits, lane by lane (tests).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn f16x4_any(h: core::arch::wasm32::v128) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    let bits = v128_and(i32x4_shl(h, 13), u32x4_splat(0x8fff_ffff));
    let finite = f32x4_mul(bits, f32x4_splat(f32::from_bits(0x7780_0000)));
    let exp = u32x4_splat(0x7c00);
    let special = i32x4_eq(v128_and(h, exp), exp);
    v128_bitselect(v128_or(bits, u32x4_splat(0x7f80_0000)), finite, special)
}

/// [`f16x4_finite`] of the 4 f16 at `p` (scales, which packing checks
/// finite).
///
/// # Safety
/// `p` must point to 8 readable bytes.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) unsafe fn load_f16x4(p: *const [u8; 2]) -> core::arch::wasm32::v128 {
    f16x4_finite(core::arch::wasm32::i32x4_load_extend_i16x4(p as *const i16))
}

/// [`f32_to_f16_le`] of 4 f32 lanes, as the f16 bits in i32 lanes (round
/// to nearest even; the bits of `half::f16::from_f32` for every input,
/// tests): a normal result by rebiasing the exponent and adding the
/// rounding increment to the f32 bits (a carry into the exponent is the
/// correct rounding up), a subnormal or zero by one f32 addition of 0.5,
/// which rounds the value onto the f16 subnormal grid in its low bits;
/// beyond the f16 range infinity, and NaN as `half` makes it (quiet, the
/// top of its payload kept).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn f32x4_to_f16(x: core::arch::wasm32::v128) -> core::arch::wasm32::v128 {
    use core::arch::wasm32::*;
    let sign = u32x4_shr(v128_and(x, u32x4_splat(0x8000_0000)), 16);
    let a = v128_and(x, u32x4_splat(0x7fff_ffff));
    // |x| >= 2^-14: the exponent rebiased (-112 << 23), then the bits
    // rounded to 10 mantissa bits, ties to even.
    let odd = v128_and(u32x4_shr(a, 13), u32x4_splat(1));
    let normal = u32x4_shr(i32x4_add(i32x4_add(a, u32x4_splat(0xc800_0fff)), odd), 13);
    // |x| < 2^-14: 0.5 + |x| puts the f16 subnormal's mantissa, rounded
    // by the addition, in the low bits.
    let half = f32x4_splat(0.5);
    let sub = i32x4_sub(f32x4_add(a, half), half);
    let r = v128_bitselect(sub, normal, u32x4_lt(a, u32x4_splat(113 << 23)));
    // |x| >= 65536 (infinity included) overflows; rounding already makes
    // 65520..65536 infinite.
    let r = v128_bitselect(
        u32x4_splat(0x7c00),
        r,
        u32x4_ge(a, u32x4_splat(0x4780_0000)),
    );
    let nan = v128_or(
        u32x4_splat(0x7e00),
        u32x4_shr(v128_and(a, u32x4_splat(0x007f_ffff)), 13),
    );
    let r = v128_bitselect(nan, r, u32x4_gt(a, u32x4_splat(0x7f80_0000)));
    v128_or(r, sign)
}

/// Little-endian f16 bytes to f32.
#[inline(always)]
pub fn f16_le(b: [u8; 2]) -> f32 {
    f16_to_f32(u16::from_le_bytes(b))
}

/// f32 to little-endian f16 bytes (round to nearest even, as ggml).
#[inline]
pub fn f32_to_f16_le(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// A weight matrix view: `rows` rows of `cols` elements each, row-major in
/// `data` (row r = `data[r * row_bytes..]`), or when `packed`, in the
/// [`packed`] layout of groups of 4 rows (see [`pack_in_place`]).
#[derive(Clone, Copy, Debug)]
pub struct QTensor<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    pub packed: bool,
}

impl<'a> QTensor<'a> {
    /// Checks that `ty` is supported, `cols` is a whole number of blocks and
    /// `data` holds exactly `rows` rows.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, Error> {
        if !ty.is_supported() {
            return Err(Error::Unsupported(format!("tensor type {ty}")));
        }
        if !cols.is_multiple_of(ty.block_size()) {
            return Err(Error::InvalidModel(format!(
                "{cols} columns is not a whole number of {ty} blocks"
            )));
        }
        let rb = cols / ty.block_size() * ty.type_size();
        if rows.checked_mul(rb) != Some(data.len()) {
            return Err(Error::InvalidModel(format!(
                "{ty} tensor {rows}x{cols} needs {rows}*{rb} bytes, has {}",
                data.len()
            )));
        }
        Ok(QTensor {
            ty,
            rows,
            cols,
            data,
            packed: false,
        })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    /// The bytes of row `r` (of an unpacked tensor).
    pub fn row(&self, r: usize) -> &'a [u8] {
        assert!(!self.packed, "row bytes of a packed tensor");
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// `n` activation vectors of `cols` floats, quantized to a weight type's
/// [`vec_dot_type`]. The buffer is reused: no allocation per matmul once
/// warm.
///
/// The blocks hold the same values as ggml's (`block_q8_0`, `block_q8_1`,
/// `block_q8_K`, f16, bf16, f32), but the f16 scales of the 32-element
/// 8-bit blocks are stored already widened to f32 so the dot loops do not
/// convert them (`block_q8_K`'s scale is an f32 in ggml too).
#[derive(Clone, Debug)]
pub struct QActs {
    ty: GgmlType,
    n: usize,
    cols: usize,
    /// Bytes of one vector's blocks.
    vec_bytes: usize,
    /// Vector stride in `buf` words.
    stride: usize,
    /// u32 backing keeps every block (alignment <= 4) aligned.
    buf: Vec<u32>,
    /// For the 8-bit activation types: every vector's quants as i16
    /// (`cols` per vector), for the [`packed`] dots.
    wide: Vec<i16>,
    /// For Q8_0 activations: each block's sum of quants (`cols / 32` per
    /// vector), for the packed dots whose weights are offset (Q5_0's).
    sums: Vec<i32>,
    /// For one Q8_0 activation vector (decode) in the relaxed-SIMD build:
    /// each block's [`q8::PosNeg`] operands, for the Q8_0 weight dots.
    split: Vec<q8::PosNeg>,
    /// For one 8-bit activation vector (decode) of at most
    /// [`PAIRS_MAX_COLS`] columns: its quants as i16 with each column pair
    /// repeated four times, for the [`packed`] dots (else empty).
    pairs: Vec<i16>,
    /// For one Q8_0 activation vector (decode) of at most
    /// [`QUADS_MAX_COLS`] columns in the relaxed-SIMD build: [`q8_quads`]
    /// of its [`q8::PosNeg`] operands, for the packed Q8_0 dots (else empty).
    quads: Vec<i8>,
}

impl Default for QActs {
    fn default() -> Self {
        Self::new()
    }
}

impl QActs {
    /// An empty buffer.
    pub fn new() -> Self {
        QActs {
            ty: GgmlType::F32,
            n: 0,
            cols: 0,
            vec_bytes: 0,
            stride: 0,
            buf: Vec::new(),
            wide: Vec::new(),
            sums: Vec::new(),
            split: Vec::new(),
            pairs: Vec::new(),
            quads: Vec::new(),
        }
    }

    /// Quantize `n` vectors of `cols` values (`x`, vector-major) to
    /// `dot_ty`. Panics if `dot_ty` is not an activation type, `cols` is not
    /// a whole number of its blocks, or `x.len() != n * cols`.
    pub fn quantize(&mut self, dot_ty: GgmlType, x: &[f32], n: usize, cols: usize) {
        assert_eq!(x.len(), n * cols, "activation shape");
        with_act!(dot_ty, A => self.quantize_as::<A>(x, n, cols))
    }

    fn quantize_as<A: ActBlock>(&mut self, x: &[f32], n: usize, cols: usize) {
        assert!(
            cols.is_multiple_of(A::BLOCK),
            "{cols} not a multiple of {}",
            A::BLOCK
        );
        self.ty = A::TYPE;
        self.n = n;
        self.cols = cols;
        self.vec_bytes = cols / A::BLOCK * std::mem::size_of::<A>();
        self.stride = self.vec_bytes.div_ceil(4);
        self.buf.clear();
        self.buf.resize(n * self.stride, 0);
        for b in 0..n {
            let bytes: &mut [u8] =
                bytemuck::cast_slice_mut(&mut self.buf[b * self.stride..(b + 1) * self.stride]);
            let blocks: &mut [A] = bytemuck::cast_slice_mut(&mut bytes[..self.vec_bytes]);
            A::quantize(&x[b * cols..(b + 1) * cols], blocks);
        }
        self.wide.clear();
        self.sums.clear();
        if A::TYPE == GgmlType::Q8_0 {
            let mut sums = std::mem::take(&mut self.sums);
            for b in 0..n {
                let blocks = self.vec::<q8::Q8_0Act>(b);
                sums.extend(
                    blocks
                        .iter()
                        .map(|blk| blk.qs.iter().map(|&q| q as i32).sum::<i32>()),
                );
            }
            self.sums = sums;
        }
        self.split.clear();
        if A::TYPE == GgmlType::Q8_0 && n == 1 && cfg!(target_feature = "relaxed-simd") {
            let mut split = std::mem::take(&mut self.split);
            split.extend(
                self.vec::<q8::Q8_0Act>(0)
                    .iter()
                    .map(|b| q8::PosNeg::new(&b.qs)),
            );
            self.split = split;
        }
        self.quads.clear();
        if !self.split.is_empty() && cols <= QUADS_MAX_COLS {
            let mut quads = std::mem::take(&mut self.quads);
            q8_quads(&self.split, &mut quads);
            self.quads = quads;
        }
        match A::TYPE {
            GgmlType::Q8_0 => self.widen(|b: &q8::Q8_0Act| b.qs),
            GgmlType::Q8_1 => self.widen(|b: &q8::Q8_1Act| b.qs),
            GgmlType::Q8_K => self.widen(|b: &q8_k::Q8_KAct| b.qs),
            _ => {}
        }
        self.pairs.clear();
        // Only while the pairs (4 * cols i16) fit L1 beside the weights
        // streaming past: for the 5.7 GB model's 4032- and 10752-column
        // rows the splat loads are faster (decode 2.27 vs 2.0 tokens/s).
        // Q8_0 activations feed Q4_0 weights, Q8_1 ones Q4_1 weights,
        // whose relaxed-SIMD one-vector dots do not read them (packed Q8_0
        // weights take the `quads`, Q5_0 ones neither).
        let readers = match A::TYPE {
            GgmlType::Q8_0 | GgmlType::Q8_1 => !cfg!(target_feature = "relaxed-simd"),
            _ => false,
        };
        if n == 1 && cols <= PAIRS_MAX_COLS && readers {
            let mut pairs = std::mem::take(&mut self.pairs);
            pairs.reserve(4 * cols);
            for p in self.wide.chunks_exact(2) {
                for _ in 0..4 {
                    pairs.extend_from_slice(p);
                }
            }
            self.pairs = pairs;
        }
    }

    /// Fills `wide` from the quants `qs` of every block of type `A`.
    fn widen<A: ActBlock, const N: usize>(&mut self, qs: impl Fn(&A) -> [i8; N]) {
        let mut wide = std::mem::take(&mut self.wide);
        wide.reserve(self.n * self.cols);
        for b in 0..self.n {
            for blk in self.vec::<A>(b) {
                wide.extend(qs(blk).map(i16::from));
            }
        }
        self.wide = wide;
    }

    /// Vector `b`'s quants as i16 (8-bit activation types only).
    fn wide(&self, b: usize) -> &[i16] {
        &self.wide[b * self.cols..(b + 1) * self.cols]
    }

    /// Vector `b`'s block sums of quants (Q8_0 activations; else empty).
    fn sums(&self, b: usize) -> &[i32] {
        if self.sums.is_empty() {
            return &[];
        }
        let nb = self.cols / q8::QK8;
        &self.sums[b * nb..(b + 1) * nb]
    }

    /// The [`q8::PosNeg`] operands of vector 0, if computed (one Q8_0
    /// vector in the relaxed-SIMD build); else empty.
    fn split(&self) -> &[q8::PosNeg] {
        &self.split
    }

    /// Number of vectors.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Elements per vector.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The activation type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Vector `b` as blocks of `A` (which must be this buffer's type).
    fn vec<A: ActBlock>(&self, b: usize) -> &[A] {
        debug_assert_eq!(A::TYPE, self.ty);
        let bytes: &[u8] = bytemuck::cast_slice(&self.buf[b * self.stride..(b + 1) * self.stride]);
        bytemuck::cast_slice(&bytes[..self.vec_bytes])
    }

    /// Dequantize vector `b` into `out` (len `cols`); for tests and debugging.
    pub fn dequantize_vec(&self, b: usize, out: &mut [f32]) {
        with_act!(self.ty, A => A::dequantize(self.vec::<A>(b), out))
    }
}

fn check_shapes(out: &[f32], w: &QTensor, x: &QActs) {
    assert_eq!(
        x.ty,
        vec_dot_type(w.ty),
        "activations not in {}'s vec_dot_type",
        w.ty
    );
    assert_eq!(x.cols, w.cols, "matmul inner dimension");
    assert!(out.len() >= x.n * w.rows, "matmul output too short");
    assert_eq!(w.data.len(), w.rows * w.row_bytes(), "weight data size");
}

/// Weight bytes up to which a one-vector matmul assumes its matrix is in
/// cache, as a streamed chunk (at most [`STREAM_CHUNK`] bytes, just copied
/// in by the host) is: the Q8_0 decode dots then read 4 rows side by side,
/// from cache 1.12x faster than row by row (simd128; relaxed SIMD with the
/// activations split by sign 1.4x: 60 x 4096, 256 KB: 25 vs 17.5 GMAC/s) but from DRAM
/// 3.5x slower (262144 x 640: 4.6 vs 16.1 GMAC/s), as the hardware
/// prefetcher loses track.
///
/// [`STREAM_CHUNK`]: crate::model::weights::STREAM_CHUNK
const IN_CACHE: usize = crate::model::weights::STREAM_CHUNK;

/// Rows the matmul kernels take together: a packed group, the rows of a
/// one-vector [`QuantKind::vec_dot4`]. Rows past the last whole group take
/// one-row dots.
pub const GROUP_ROWS: usize = packed::ROWS;

/// Columns up to which one activation vector gets its
/// [`packed::PackKind::dot1`] pairs (16 KB of them).
const PAIRS_MAX_COLS: usize = 2048;

/// Columns up to which one Q8_0 activation vector gets its quads for the
/// packed Q8_0 decode dot (8 bytes per column: 16 KB). With 4032 columns
/// (32 KB, most of L1) the dot ran at half the speed of the i16 one.
const QUADS_MAX_COLS: usize = 2048;

/// The operands of the relaxed-SIMD packed Q8_0 decode dot
/// (`packed::simd::dot1_q8_split`) from a vector's [`q8::PosNeg`]: per
/// block, for each quad `c` of 4 columns, `pos[4c..4c + 4]` four times
/// (16 bytes, one per row of a packed group), the 8 quads, then the same
/// of `neg`: 256 bytes.
pub(crate) fn q8_quads(split: &[q8::PosNeg], out: &mut Vec<i8>) {
    out.clear();
    out.reserve(256 * split.len());
    for pn in split {
        for half in [&pn.pos, &pn.neg] {
            for quad in half.chunks_exact(4) {
                for _ in 0..packed::ROWS {
                    out.extend_from_slice(quad);
                }
            }
        }
    }
}

/// Rows per tile when several vectors are multiplied.
const ROW_TILE: usize = 8;
/// Vectors per tile.
const VEC_TILE: usize = 32;

#[inline(never)]
fn matmul_kind<K: QuantKind>(
    out: &mut [f32],
    w: &QTensor,
    x: &QActs,
    dot: impl Fn(&[K::Block], &[K::Act]) -> f32,
    four: bool,
) {
    let blocks: &[K::Block] = bytemuck::cast_slice(w.data);
    let nb = w.cols / K::BLOCK;
    let rows = w.rows;
    let row = |r: usize| &blocks[r * nb..(r + 1) * nb];
    if x.n == 1 {
        let y = x.vec::<K::Act>(0);
        // Widened quants exist for the 8-bit activation types only.
        let yw: &[i16] = if x.wide.is_empty() { &[] } else { x.wide(0) };
        let in_cache = w.data.len() <= IN_CACHE;
        let mut r0 = 0;
        if four {
            for o in out[..rows].chunks_exact_mut(4) {
                o.copy_from_slice(&K::vec_dot4(
                    [row(r0), row(r0 + 1), row(r0 + 2), row(r0 + 3)],
                    y,
                    yw,
                    x.split(),
                    in_cache,
                ));
                r0 += 4;
            }
        }
        for (r, o) in out[r0..rows].iter_mut().enumerate() {
            *o = dot(row(r0 + r), y);
        }
        return;
    }
    // Tiles of ROW_TILE weight rows x VEC_TILE vectors: the rows stay in L1
    // while every vector of the tile is dotted against them.
    for v0 in (0..x.n).step_by(VEC_TILE) {
        let v1 = (v0 + VEC_TILE).min(x.n);
        for r0 in (0..rows).step_by(ROW_TILE) {
            let r1 = (r0 + ROW_TILE).min(rows);
            for b in v0..v1 {
                let y = x.vec::<K::Act>(b);
                let o = &mut out[b * rows + r0..b * rows + r1];
                for (r, o) in (r0..r1).zip(o) {
                    *o = dot(row(r), y);
                }
            }
        }
    }
}

/// [`matmul_kind`] for a packed tensor: each group's 4 rows with up to 4
/// vectors at a time in one [`packed::PackKind::dot4`], the tail rows with
/// the scalar reference dot, so every output has the bits of
/// [`QuantKind::vec_dot_scalar`] whatever the batch.
#[inline(never)]
fn matmul_packed<K: packed::PackKind>(out: &mut [f32], w: &QTensor, x: &QActs) {
    use packed::ROWS;
    let nb = w.cols / K::BLOCK;
    let rows = w.rows;
    let full = rows / ROWS * ROWS;
    let rb = nb * std::mem::size_of::<K::Block>();
    let groups: &[K::Group] = bytemuck::cast_slice(&w.data[..full * rb]);
    let tail: &[K::Block] = bytemuck::cast_slice(&w.data[full * rb..]);
    // The rows past the last whole group, for vectors `v0..v1`: the scalar
    // reference dot.
    let tail_rows = |out: &mut [f32], v0: usize, v1: usize| {
        for b in v0..v1 {
            let y = x.vec::<K::Act>(b);
            for r in full..rows {
                let t = &tail[(r - full) * nb..(r - full + 1) * nb];
                out[b * rows + r] = K::vec_dot_scalar(t, y);
            }
        }
    };
    // One vector through the relaxed Q8_0 split dot (an output layer, most
    // often out of cache): the groups of the two halves of the matrix
    // alternately, two streams from memory, which that dot reads faster
    // than one (Gemma-3's 262144 x 640 output 6.7-6.8 -> 6.3-6.5 ms; the
    // wider rows' i16 dot and four streams measured slower).
    if K::TYPE == GgmlType::Q8_0 && x.n == 1 && !x.quads.is_empty() {
        let ng = groups.len() / nb.max(1);
        let half = ng / 2;
        for i in 0..half {
            for g in [i, i + half] {
                dot4_into::<K, 1>(out, rows, &groups[g * nb..(g + 1) * nb], g, x, 0);
            }
        }
        for g in 2 * half..ng {
            dot4_into::<K, 1>(out, rows, &groups[g * nb..(g + 1) * nb], g, x, 0);
        }
        tail_rows(out, 0, 1);
        return;
    }
    for v0 in (0..x.n).step_by(VEC_TILE) {
        let v1 = (v0 + VEC_TILE).min(x.n);
        for (g, group) in groups.chunks_exact(nb).enumerate() {
            let mut b = v0;
            while b < v1 {
                b += match v1 - b {
                    1 => dot4_into::<K, 1>(out, rows, group, g, x, b),
                    2 => dot4_into::<K, 2>(out, rows, group, g, x, b),
                    3 => dot4_into::<K, 3>(out, rows, group, g, x, b),
                    8.. if K::WIDE_TILE => dot4_into::<K, 8>(out, rows, group, g, x, b),
                    _ => dot4_into::<K, 4>(out, rows, group, g, x, b),
                };
            }
        }
        tail_rows(out, v0, v1);
    }
}

/// Group `g` (`group`) dotted with vectors `b..b + T` of `x` into `out`
/// (`rows` per vector); returns `T`.
#[inline(always)]
fn dot4_into<K: packed::PackKind, const T: usize>(
    out: &mut [f32],
    rows: usize,
    group: &[K::Group],
    g: usize,
    x: &QActs,
    b: usize,
) -> usize {
    use packed::ROWS;
    let y: [&[K::Act]; T] = std::array::from_fn(|t| x.vec::<K::Act>(b + t));
    let yw: [&[i16]; T] = std::array::from_fn(|t| x.wide(b + t));
    let ys: [&[i32]; T] = std::array::from_fn(|t| x.sums(b + t));
    if T == 1 && x.n == 1 {
        let at = b * rows + g * ROWS;
        out[at..at + ROWS].copy_from_slice(&K::dot1(group, y[0], yw[0], &x.pairs, &x.quads, ys[0]));
        return T;
    }
    for (t, o) in K::dot4_sums(group, y, yw, ys).iter().enumerate() {
        let at = (b + t) * rows + g * ROWS;
        out[at..at + ROWS].copy_from_slice(o);
    }
    T
}

/// `out[b * w.rows + r] = dot(w.row(r), x.vec(b))` for `b in 0..x.n()`,
/// `r in 0..w.rows`. `x` must be quantized to `vec_dot_type(w.ty)`. Panics
/// only on caller shape bugs.
pub fn matmul(out: &mut [f32], w: &QTensor, x: &QActs) {
    check_shapes(out, w, x);
    if w.packed {
        return packed::with_pack!(w.ty, K => matmul_packed::<K>(out, w, x), unsupported(w.ty));
    }
    if x.n > 1 && kbatch::with_kbatch!(w.ty, K => { matmul_kbatch::<K>(out, w, x); true }, false) {
        return;
    }
    with_kind!(w.ty, K => matmul_kind::<K>(out, w, x, K::vec_dot, true), unsupported(w.ty))
}

/// [`matmul_kind`] for several vectors of a k-quant with a batched dot
/// ([`kbatch`]): each row's weights expanded once per tile of vectors.
#[inline(never)]
fn matmul_kbatch<K: kbatch::KBatch>(out: &mut [f32], w: &QTensor, x: &QActs) {
    let blocks: &[K::Block] = bytemuck::cast_slice(w.data);
    let nb = w.cols / K::BLOCK;
    for v0 in (0..x.n).step_by(VEC_TILE) {
        let v1 = (v0 + VEC_TILE).min(x.n);
        let y: Vec<&[q8_k::Q8_KAct]> = (v0..v1).map(|b| x.vec::<q8_k::Q8_KAct>(b)).collect();
        let yw: Vec<&[i16]> = (v0..v1).map(|b| x.wide(b)).collect();
        kbatch::dots::<K>(
            blocks,
            nb,
            0..w.rows,
            &y,
            &yw,
            &mut out[v0 * w.rows..],
            w.rows,
        );
    }
}

/// [`matmul`] with the scalar reference dot products (row by row, also for
/// a packed tensor).
pub fn matmul_scalar(out: &mut [f32], w: &QTensor, x: &QActs) {
    check_shapes(out, w, x);
    if w.packed {
        return packed::with_pack!(w.ty, K => matmul_packed_scalar::<K>(out, w, x), unsupported(w.ty));
    }
    with_kind!(w.ty, K => matmul_kind::<K>(out, w, x, K::vec_dot_scalar, false), unsupported(w.ty))
}

fn matmul_packed_scalar<K: packed::PackKind>(out: &mut [f32], w: &QTensor, x: &QActs) {
    let nb = w.cols / K::BLOCK;
    let mut row = Vec::with_capacity(nb);
    for r in 0..w.rows {
        packed::row_kind::<K>(w.data, w.rows, nb, r, &mut row);
        for b in 0..x.n {
            out[b * w.rows + r] = K::vec_dot_scalar(&row, x.vec::<K::Act>(b));
        }
    }
}

/// Whether weights `data` of type `ty` (GGUF layout, whole blocks) can be
/// packed: the type has a packed layout and no scale is Inf or NaN.
pub fn packable(ty: GgmlType, data: &[u8]) -> bool {
    packed::with_pack!(ty, K => packed::all_finite::<K>(data), false)
}

/// Repack `rows` rows of `cols` weights of type `ty` (`data`, GGUF layout)
/// in place into the [`packed`] layout; returns false (and leaves `data`
/// alone) for a type without one, or for a tensor with an Inf or NaN
/// scale. The packed tensor is used through a [`QTensor`] with `packed: true`.
pub fn pack_in_place(ty: GgmlType, data: &mut [u8], rows: usize, cols: usize) -> bool {
    packed::with_pack!(ty, K => packed::pack_kind::<K>(data, rows, cols / K::BLOCK), false)
}

/// [`pack_in_place`] from `src` into `dst` (of the same size), which
/// saves the in-place repack's copy of each group of rows: returns false
/// for a type without a packed layout or a tensor with an Inf or NaN
/// scale, `dst` then unspecified (`src` is never changed).
pub fn pack_into(ty: GgmlType, src: &[u8], dst: &mut [u8], rows: usize, cols: usize) -> bool {
    packed::with_pack!(ty, K => packed::pack_kind_into::<K>(src, dst, rows, cols / K::BLOCK), false)
}

/// The largest magnitude in `x` and the value that has it, with its sign
/// (the first such value; NaN passed over), as ggml's quantizers find them.
#[inline(always)]
pub(crate) fn signed_max(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

fn unsupported(ty: GgmlType) -> ! {
    panic!("quant: unsupported weight type {ty}")
}

/// Dequantize row `r` of `w` into `out` (len `w.cols`).
pub fn dequantize_row(w: &QTensor, r: usize, out: &mut [f32]) {
    assert_eq!(out.len(), w.cols, "dequantize_row output length");
    if w.packed {
        return packed::with_pack!(w.ty, K => {
            let mut row = Vec::new();
            packed::row_kind::<K>(w.data, w.rows, w.cols / K::BLOCK, r, &mut row);
            K::dequantize(&row, out)
        }, unsupported(w.ty));
    }
    with_kind!(w.ty, K => K::dequantize(bytemuck::cast_slice(w.row(r)), out), unsupported(w.ty))
}

/// Quantize `x` into weight type `ty` with ggml's reference quantizers.
/// Panics if `ty` is unsupported or `x.len()` is not a whole number of blocks.
pub fn quantize_weights(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    with_kind!(ty, K => quantize_kind::<K>(x), unsupported(ty))
}

fn quantize_kind<K: QuantKind>(x: &[f32]) -> Vec<u8> {
    assert!(
        x.len().is_multiple_of(K::BLOCK),
        "not a whole number of blocks"
    );
    let mut blocks = vec![K::Block::zeroed(); x.len() / K::BLOCK];
    K::quantize(x, &mut blocks);
    bytemuck::cast_slice(&blocks).to_vec()
}

use bytemuck::Zeroable as _;

/// Horizontal sum of an i32x4 (exact; wrapping never happens for block sums).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn hsum_i32x4(v: core::arch::wasm32::v128) -> i32 {
    use core::arch::wasm32::*;
    let v = i32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    let v = i32x4_add(v, i32x4_shuffle::<1, 0, 3, 2>(v, v));
    i32x4_extract_lane::<0>(v)
}

/// Horizontal sum of an f32x4, lanes added as (0+1)+(2+3).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(crate) fn hsum_f32x4(v: core::arch::wasm32::v128) -> f32 {
    use core::arch::wasm32::*;
    (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v))
        + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
}
