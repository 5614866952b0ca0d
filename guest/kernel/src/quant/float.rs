//! Unquantized weights: F32, F16, BF16.
//!
//! As ggml: F32 weights dot f32 activations, F16 weights dot activations
//! rounded to f16, BF16 weights dot activations rounded to bf16; products
//! are accumulated in f32.

use super::{f16_le, f16_to_f32, ActBlock, QuantKind};
use crate::ggml_type::GgmlType;

/// f32 activations (the F32 `vec_dot_type`).
impl ActBlock for f32 {
    const TYPE: GgmlType = GgmlType::F32;
    const BLOCK: usize = 1;
    fn quantize(x: &[f32], out: &mut [f32]) {
        out.copy_from_slice(x);
    }
    fn dequantize(b: &[f32], out: &mut [f32]) {
        out.copy_from_slice(b);
    }
}

/// f16 activation bits (the F16 `vec_dot_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct F16Act(pub u16);

impl ActBlock for F16Act {
    const TYPE: GgmlType = GgmlType::F16;
    const BLOCK: usize = 1;
    fn quantize(x: &[f32], out: &mut [F16Act]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = F16Act(half::f16::from_f32(v).to_bits());
        }
    }
    fn dequantize(b: &[F16Act], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(b) {
            *o = f16_to_f32(v.0);
        }
    }
}

/// bf16 activation bits (the BF16 `vec_dot_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct BF16Act(pub u16);

#[inline(always)]
fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

impl ActBlock for BF16Act {
    const TYPE: GgmlType = GgmlType::BF16;
    const BLOCK: usize = 1;
    fn quantize(x: &[f32], out: &mut [BF16Act]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = BF16Act(half::bf16::from_f32(v).to_bits());
        }
    }
    fn dequantize(b: &[BF16Act], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(b) {
            *o = bf16_to_f32(v.0);
        }
    }
}

/// F32 weights: 32 bits per weight, little-endian.
pub struct F32;

impl QuantKind for F32 {
    const TYPE: GgmlType = GgmlType::F32;
    const BLOCK: usize = 1;
    type Block = [u8; 4];
    type Act = f32;

    fn quantize(x: &[f32], out: &mut [[u8; 4]]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = v.to_le_bytes();
        }
    }

    fn dequantize(b: &[[u8; 4]], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(b) {
            *o = f32::from_le_bytes(*v);
        }
    }

    fn vec_dot_scalar(x: &[[u8; 4]], y: &[f32]) -> f32 {
        // Eight independent partial sums so the compiler can vectorize.
        let mut acc = [0f32; 8];
        let (xc, xr) = x.as_chunks::<8>();
        let (yc, yr) = y.as_chunks::<8>();
        for (xs, ys) in xc.iter().zip(yc) {
            for k in 0..8 {
                acc[k] += f32::from_le_bytes(xs[k]) * ys[k];
            }
        }
        let mut s =
            ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (a, b) in xr.iter().zip(yr) {
            s += f32::from_le_bytes(*a) * b;
        }
        s
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn vec_dot(x: &[[u8; 4]], y: &[f32]) -> f32 {
        use core::arch::wasm32::*;
        let n = x.len().min(y.len());
        let n16 = n / 16 * 16;
        let mut a = [f32x4_splat(0.0); 4];
        let xp = x.as_ptr() as *const u8;
        let yp = y.as_ptr();
        let mut i = 0;
        while i < n16 {
            for (k, acc) in a.iter_mut().enumerate() {
                // SAFETY: i + 4k + 4 <= n16 <= both lengths, so the 16 bytes
                // read from each slice are in bounds; wasm loads need no
                // alignment.
                let (xv, yv) = unsafe {
                    (
                        v128_load(xp.add((i + 4 * k) * 4) as *const v128),
                        v128_load(yp.add(i + 4 * k) as *const v128),
                    )
                };
                *acc = f32x4_add(*acc, f32x4_mul(xv, yv));
            }
            i += 16;
        }
        let v = f32x4_add(f32x4_add(a[0], a[1]), f32x4_add(a[2], a[3]));
        let mut s = super::hsum_f32x4(v);
        for j in n16..n {
            s += f32::from_le_bytes(x[j]) * y[j];
        }
        s
    }
}

/// F16 weights: 16 bits per weight, little-endian IEEE half.
pub struct F16;

impl QuantKind for F16 {
    const TYPE: GgmlType = GgmlType::F16;
    const BLOCK: usize = 1;
    type Block = [u8; 2];
    type Act = F16Act;

    fn quantize(x: &[f32], out: &mut [[u8; 2]]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = half::f16::from_f32(v).to_bits().to_le_bytes();
        }
    }

    fn dequantize(b: &[[u8; 2]], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(b) {
            *o = f16_le(*v);
        }
    }

    fn vec_dot_scalar(x: &[[u8; 2]], y: &[F16Act]) -> f32 {
        let mut acc = [0f32; 8];
        let (xc, xr) = x.as_chunks::<8>();
        let (yc, yr) = y.as_chunks::<8>();
        for (xs, ys) in xc.iter().zip(yc) {
            for k in 0..8 {
                acc[k] += f16_le(xs[k]) * f16_to_f32(ys[k].0);
            }
        }
        let mut s =
            ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (a, b) in xr.iter().zip(yr) {
            s += f16_le(*a) * f16_to_f32(b.0);
        }
        s
    }
}

/// BF16 weights: 16 bits per weight, little-endian bfloat16.
pub struct BF16;

impl QuantKind for BF16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const BLOCK: usize = 1;
    type Block = [u8; 2];
    type Act = BF16Act;

    fn quantize(x: &[f32], out: &mut [[u8; 2]]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = half::bf16::from_f32(v).to_bits().to_le_bytes();
        }
    }

    fn dequantize(b: &[[u8; 2]], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(b) {
            *o = bf16_to_f32(u16::from_le_bytes(*v));
        }
    }

    fn vec_dot_scalar(x: &[[u8; 2]], y: &[BF16Act]) -> f32 {
        let mut acc = [0f32; 8];
        let (xc, xr) = x.as_chunks::<8>();
        let (yc, yr) = y.as_chunks::<8>();
        for (xs, ys) in xc.iter().zip(yc) {
            for k in 0..8 {
                acc[k] += bf16_to_f32(u16::from_le_bytes(xs[k])) * bf16_to_f32(ys[k].0);
            }
        }
        let mut s =
            ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (a, b) in xr.iter().zip(yr) {
            s += bf16_to_f32(u16::from_le_bytes(*a)) * bf16_to_f32(b.0);
        }
        s
    }
}
