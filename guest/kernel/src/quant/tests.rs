//! Tests of the quant module: round trips, integer dot formulas, matmul
//! paths (SIMD vs scalar, batched vs single), and reference values from an
//! independent implementation (the `gguf` Python package).

use super::*;

/// Fixed-seed LCG, uniform in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

const WEIGHT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_XS,
];

/// Every supported type is in [`WEIGHT_TYPES`], so the generic tests cover it.
#[test]
fn weight_types_cover_supported() {
    for ty in GgmlType::all() {
        assert_eq!(ty.is_supported(), WEIGHT_TYPES.contains(&ty), "{ty}");
    }
}

/// Elements per test "unit": 32, or the super-block of the k-quants.
fn unit(ty: GgmlType) -> usize {
    ty.block_size().max(32)
}

/// Max abs round-trip error allowed, relative to the block's max |x|.
fn rel_bound(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1e-3,
        GgmlType::BF16 => 8e-3,
        GgmlType::Q4_0 => 1.0 / 8.0 + 1e-3,
        GgmlType::Q4_1 => 1.0 / 15.0 + 1e-3,
        GgmlType::Q5_0 => 1.0 / 16.0 + 1e-3,
        GgmlType::Q5_1 => 1.0 / 31.0 + 1e-3,
        GgmlType::Q8_0 => 1.0 / 254.0 + 1e-3,
        // Half the widest gap of the grid (24 / 2) in units of max|x| / 127,
        // with slack for the least-squares scale.
        GgmlType::IQ4_NL => 1.0 / 8.0 + 1e-3,
        // Sub-block scales and mins are themselves quantized (6/8 bits),
        // so the bound is looser than half a step.
        // Few levels and a max clipped to the asymmetric range (Q3_K: q in
        // -4..=3): these are bounds of sanity, the exact values are checked
        // against ggml in kquants_match_ggml_reference.
        GgmlType::Q2_K => 0.45,
        GgmlType::Q3_K => 0.3,
        GgmlType::Q4_K => 0.1,
        GgmlType::Q5_K => 0.05,
        GgmlType::Q6_K => 0.03,
        // Optimized for the x²-weighted error, not the max error.
        GgmlType::IQ4_XS => 0.15,
        _ => unreachable!(),
    }
}

fn dequant_all(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Vec<f32> {
    let w = QTensor::new(ty, rows, cols, data).unwrap();
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        dequantize_row(&w, r, &mut out[r * cols..(r + 1) * cols]);
    }
    out
}

#[test]
fn f16_conversion_is_exact() {
    for h in 0..=u16::MAX {
        let a = f16_to_f32(h);
        let b = half::f16::from_bits(h).to_f32();
        if b.is_nan() {
            assert!(a.is_nan(), "{h:#x}");
        } else {
            assert_eq!(a.to_bits(), b.to_bits(), "{h:#x}");
        }
    }
}

/// The four-lane f32 -> f16 rounding has `half`'s bits for f32 patterns
/// across the whole range (every 509th pattern and the neighbours of
/// every f16 boundary and rounding tie), as wasm32.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[test]
fn f32x4_to_f16_is_halfs_rounding() {
    use core::arch::wasm32::*;
    let mut xs: Vec<u32> = (0..=u32::MAX / 509).map(|k| k * 509).collect();
    for h in 0..=u16::MAX {
        // The f32 of each f16 and of the midpoint above it, and their
        // neighbours.
        let f = f16_to_f32(h).to_bits();
        for b in [f, f.wrapping_add(1 << 12)] {
            xs.extend([b.wrapping_sub(1), b, b.wrapping_add(1)]);
        }
    }
    for c in xs.chunks_exact(4) {
        let v = u32x4(c[0], c[1], c[2], c[3]);
        let got = crate::quant::f32x4_to_f16(v);
        let got = [
            u32x4_extract_lane::<0>(got),
            u32x4_extract_lane::<1>(got),
            u32x4_extract_lane::<2>(got),
            u32x4_extract_lane::<3>(got),
        ];
        for k in 0..4 {
            let want = half::f16::from_f32(f32::from_bits(c[k])).to_bits() as u32;
            assert_eq!(got[k], want, "{:#010x}", c[k]);
        }
    }
}

/// Q8_K activation quantization (simd128 as wasm32) gives the scalar
/// reference's bytes: random blocks, a magnitude held by two values of
/// opposite sign (the first one's sign wins), rounding ties, all zero
/// (both signs), NaN and infinite values.
#[test]
fn q8_k_quantize_matches_scalar() {
    let mut rng = Lcg(21);
    let mut blocks: Vec<Vec<f32>> = (0..16).map(|i| rng.vec(256, 0.5 + i as f32)).collect();
    for (a, b) in [(-5.0, 5.0), (5.0, -5.0)] {
        let mut v = rng.vec(256, 1.0);
        v[7] = a;
        v[200] = b;
        blocks.push(v);
    }
    // Products on .5: iscale is -1 with 127 the largest magnitude.
    let mut ties: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) * 0.5).collect();
    ties[255] = -127.0;
    blocks.push(ties);
    blocks.push(vec![0.0; 256]);
    blocks.push(vec![-0.0; 256]);
    blocks.push(vec![f32::NAN; 256]);
    for (i, special) in [(3, f32::NAN), (50, f32::INFINITY), (60, f32::NEG_INFINITY)] {
        let mut v = rng.vec(256, 1.0);
        v[i] = special;
        v[i + 100] = f32::NAN;
        blocks.push(v);
    }
    let x = blocks.concat();
    let n = x.len() / 256;
    let mut got = vec![q8_k::Q8_KAct::zeroed(); n];
    let mut want = vec![q8_k::Q8_KAct::zeroed(); n];
    <q8_k::Q8_KAct as ActBlock>::quantize(&x, &mut got);
    q8_k::quantize_scalar(&x, &mut want);
    for (b, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(bytemuck::bytes_of(g), bytemuck::bytes_of(w), "block {b}");
    }
}

/// The four-lane conversion of the Q8_0 decode dots' scales has the scalar
/// conversion's bits for every f16, in every lane (as wasm32).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[test]
fn f16x4_any_is_f16_to_f32() {
    use core::arch::wasm32::*;
    for h in (0..=u16::MAX).step_by(4) {
        let hs: [u16; 4] = std::array::from_fn(|k| h + k as u16);
        let lanes = i32x4(
            hs[0] as i16 as i32,
            hs[1] as i16 as i32,
            hs[2] as i16 as i32,
            hs[3] as i16 as i32,
        );
        let got = f32x4_lanes(super::f16x4_any(lanes));
        for k in 0..4 {
            assert_eq!(
                got[k].to_bits(),
                f16_to_f32(hs[k]).to_bits(),
                "{:#x} in lane {k}",
                hs[k]
            );
        }
    }
}

#[test]
fn vec_dot_types_match_ggml() {
    use GgmlType::*;
    let want = [
        (F32, F32),
        (F16, F16),
        (BF16, BF16),
        (Q4_0, Q8_0),
        (Q4_1, Q8_1),
        (Q5_0, Q8_0),
        (Q5_1, Q8_1),
        (Q8_0, Q8_0),
        (IQ4_NL, Q8_0),
        (Q2_K, Q8_K),
        (Q3_K, Q8_K),
        (Q4_K, Q8_K),
        (Q5_K, Q8_K),
        (Q6_K, Q8_K),
        (IQ4_XS, Q8_K),
    ];
    for (w, a) in want {
        assert_eq!(vec_dot_type(w), a);
    }
    // The table of weight types is exactly the tested list.
    let supported: Vec<GgmlType> = GgmlType::all().filter(|t| t.is_supported()).collect();
    let mut tested = WEIGHT_TYPES.to_vec();
    tested.sort();
    assert_eq!(supported, tested);
    assert!(GgmlType::supported_names().starts_with("F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "));
}

#[test]
fn qtensor_new_checks_shapes() {
    let data = vec![0u8; 2 * 20];
    assert!(QTensor::new(GgmlType::Q4_1, 2, 32, &data).is_ok());
    assert!(QTensor::new(GgmlType::Q4_1, 2, 33, &data).is_err());
    assert!(QTensor::new(GgmlType::Q4_1, 3, 32, &data).is_err());
    assert!(QTensor::new(GgmlType::IQ2_XXS, 1, 256, &[0u8; 66]).is_err());
    assert!(QTensor::new(GgmlType::Q4_K, 1, 256, &[0u8; 144]).is_ok());
    assert!(QTensor::new(GgmlType::Q4_K, 1, 255, &[0u8; 144]).is_err());
    assert!(QTensor::new(GgmlType::Q4_K, 1, 512, &[0u8; 144]).is_err());
    let w = QTensor::new(GgmlType::Q4_1, 2, 32, &data).unwrap();
    assert_eq!(w.row_bytes(), 20);
    assert_eq!(w.row(1).len(), 20);
}

#[test]
fn quantize_dequantize_round_trip() {
    let mut rng = Lcg(1);
    let x = rng.vec(256 * 3, 3.0);
    for &ty in WEIGHT_TYPES {
        let q = quantize_weights(ty, &x);
        assert_eq!(q.len(), x.len() / ty.block_size() * ty.type_size());
        let y = dequant_all(ty, 1, x.len(), &q);
        // The error bound is relative to the max |x| of each 32 (for the
        // k-quants: of each 256, the super-block).
        for (xb, yb) in x.chunks(unit(ty)).zip(y.chunks(unit(ty))) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xb.iter().zip(yb) {
                assert!((a - b).abs() <= rel_bound(ty) * amax, "{ty}: {a} vs {b}");
            }
        }
    }
    // All-zero blocks quantize to zeros without NaN.
    for &ty in WEIGHT_TYPES {
        let n = unit(ty);
        let y = dequant_all(ty, 1, n, &quantize_weights(ty, &vec![0.0; n]));
        assert!(y.iter().all(|&v| v == 0.0), "{ty}");
    }
}

#[test]
fn activation_quantization_round_trip() {
    let mut rng = Lcg(2);
    let x = rng.vec(256 * 3, 2.0);
    let cols = |ty: GgmlType| if ty == GgmlType::Q8_K { 256 } else { 64 };
    let mut a = QActs::new();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q8_K,
    ] {
        let x = &x[..3 * cols(ty)];
        let c = cols(ty);
        a.quantize(ty, x, 3, c);
        assert_eq!((a.n(), a.cols(), a.ty()), (3, c, ty));
        let mut y = vec![0f32; c];
        for b in 0..3 {
            a.dequantize_vec(b, &mut y);
            for (u, v) in x[b * c..].iter().zip(&y) {
                assert!((u - v).abs() <= 2.0 / 200.0, "{ty}: {u} vs {v}");
            }
        }
    }
}

/// Q8_1's `s` is the f16 of `d * sum(q)` with the unrounded d.
#[test]
fn q8_1_sum_field() {
    let mut rng = Lcg(3);
    let x = rng.vec(32, 1.0);
    let mut b = [q8::Q8_1Act {
        d: 0.0,
        s: 0.0,
        qs: [0; 32],
    }];
    <q8::Q8_1Act as ActBlock>::quantize(&x, &mut b);
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let sum: i32 = b[0].qs.iter().map(|&q| q as i32).sum();
    assert_eq!(b[0].s, half::f16::from_f32(d * sum as f32).to_f32());
    assert_eq!(b[0].d, half::f16::from_f32(d).to_f32());
    // Not `qs.iter().all(|&q| q >= -127)`: rustc 1.95 (LLVM 22.1) compiles
    // that 32-lane test for wasm32+simd128 into a wrong bitmask shift
    // (llvm/llvm-project#190358, fixed by #190361) and the assert fails.
    let min = b[0].qs.iter().copied().min();
    assert!(min.is_some_and(|q| q >= -127), "{min:?}");
}

/// The dot product of each type equals an f64 dot of the dequantized
/// weights and dequantized activations (checks the integer formulas).
#[test]
fn vec_dot_matches_dequantized_dot() {
    let mut rng = Lcg(4);
    for &ty in WEIGHT_TYPES {
        let cols = unit(ty) * 12;
        let w = rng.vec(cols, 1.5);
        let x = rng.vec(cols, 4.0);
        let wq = quantize_weights(ty, &w);
        let wd = dequant_all(ty, 1, cols, &wq);
        let mut a = QActs::new();
        a.quantize(vec_dot_type(ty), &x, 1, cols);
        let mut xd = vec![0f32; cols];
        a.dequantize_vec(0, &mut xd);
        let mut want: f64 = wd.iter().zip(&xd).map(|(&p, &q)| p as f64 * q as f64).sum();
        if vec_dot_type(ty) == GgmlType::Q8_1 {
            // ggml's Q4_1 / Q5_1 dots use the block minimum times Q8_1's `s`
            // (the f16 of d * sum(q) with unrounded d) instead of
            // m * sum(d * q).
            let mins: Vec<[u8; 2]> = match ty {
                GgmlType::Q4_1 => bytemuck::cast_slice::<u8, q4_1::BlockQ4_1>(&wq)
                    .iter()
                    .map(|b| b.m)
                    .collect(),
                GgmlType::Q5_1 => bytemuck::cast_slice::<u8, q5_1::BlockQ5_1>(&wq)
                    .iter()
                    .map(|b| b.m)
                    .collect(),
                _ => unreachable!("{ty} is not dotted against Q8_1"),
            };
            let xb = a.vec::<q8::Q8_1Act>(0);
            for (k, (bm, bx)) in mins.iter().zip(xb).enumerate() {
                let m = f16_le(*bm) as f64;
                let sum_xd: f64 = xd[k * 32..(k + 1) * 32].iter().map(|&v| v as f64).sum();
                want += m * bx.s as f64 - m * sum_xd;
            }
        }
        let t = QTensor::new(ty, 1, cols, &wq).unwrap();
        let mut got = [0f32; 1];
        matmul_scalar(&mut got, &t, &a);
        let mag: f64 = wd
            .iter()
            .zip(&xd)
            .map(|(&p, &q)| (p as f64 * q as f64).abs())
            .sum();
        assert!(
            (got[0] as f64 - want).abs() <= 1e-5 * mag,
            "{ty}: {} vs {want}",
            got[0]
        );
    }
}

fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Lcg) -> Vec<u8> {
    quantize_weights(ty, &rng.vec(rows * cols, 1.0))
}

/// `matmul` (SIMD on wasm32+simd128) agrees with `matmul_scalar`, and a
/// batch of 5 agrees with 5 single-vector calls.
#[test]
fn matmul_simd_and_batched_match_scalar() {
    let mut rng = Lcg(5);
    let (rows, n) = (13, 5);
    for &ty in WEIGHT_TYPES {
        let cols = unit(ty) * 7;
        let data = random_matrix(ty, rows, cols, &mut rng);
        let w = QTensor::new(ty, rows, cols, &data).unwrap();
        let x = rng.vec(n * cols, 2.0);
        let mut a = QActs::new();
        a.quantize(vec_dot_type(ty), &x, n, cols);
        let mut fast = vec![0f32; n * rows];
        let mut slow = vec![0f32; n * rows];
        matmul(&mut fast, &w, &a);
        matmul_scalar(&mut slow, &w, &a);
        for (f, s) in fast.iter().zip(&slow) {
            assert!((f - s).abs() <= 1e-5 * s.abs().max(1.0), "{ty}: {f} vs {s}");
        }
        for b in 0..n {
            let mut one = QActs::new();
            one.quantize(vec_dot_type(ty), &x[b * cols..(b + 1) * cols], 1, cols);
            let mut o = vec![0f32; rows];
            matmul(&mut o, &w, &one);
            assert_eq!(&o[..], &fast[b * rows..(b + 1) * rows], "{ty} vector {b}");
        }
    }
}

/// Odd f32 lengths exercise the SIMD remainder loop.
#[test]
fn f32_dot_odd_length() {
    let mut rng = Lcg(6);
    for cols in [1, 3, 15, 17, 33, 100] {
        let data = random_matrix(GgmlType::F32, 2, cols, &mut rng);
        let w = QTensor::new(GgmlType::F32, 2, cols, &data).unwrap();
        let mut a = QActs::new();
        a.quantize(GgmlType::F32, &rng.vec(cols, 1.0), 1, cols);
        let (mut f, mut s) = ([0f32; 2], [0f32; 2]);
        matmul(&mut f, &w, &a);
        matmul_scalar(&mut s, &w, &a);
        for (u, v) in f.iter().zip(&s) {
            assert!((u - v).abs() <= 1e-5 * v.abs().max(1.0));
        }
    }
}

/// Q8_0 weights may hold -128 (not produced by ggml, but legal bytes): the
/// SIMD dot still agrees with the scalar one.
#[test]
fn q8_0_extreme_bytes() {
    let mut data = Vec::new();
    for _ in 0..4 {
        data.extend_from_slice(&f32_to_f16_le(0.5));
        data.extend_from_slice(&[0x80u8; 32]);
    }
    let w = QTensor::new(GgmlType::Q8_0, 1, 128, &data).unwrap();
    let mut a = QActs::new();
    a.quantize(GgmlType::Q8_0, &[-1.0; 128], 1, 128);
    let (mut f, mut s) = ([0f32], [0f32]);
    matmul(&mut f, &w, &a);
    matmul_scalar(&mut s, &w, &a);
    assert_eq!(f, s);
    assert_eq!(
        s[0],
        0.5 * 128.0 * 127.0 * 128.0 * half::f16::from_f32(1.0 / 127.0).to_f32()
    );
}

/// The largest legal quants against the largest activations: the SIMD dots
/// of Q5_1 (31 * 127 four times per i16 lane) and IQ4_NL (-127 * -127 twice
/// per lane) do not overflow.
#[test]
fn q5_1_and_iq4_nl_extreme_bytes() {
    let mut q5_1 = Vec::new();
    let mut iq4_nl = Vec::new();
    for _ in 0..4 {
        q5_1.extend_from_slice(&f32_to_f16_le(0.5));
        q5_1.extend_from_slice(&f32_to_f16_le(0.0));
        q5_1.extend_from_slice(&[0xff; 4 + 16]);
        iq4_nl.extend_from_slice(&f32_to_f16_le(0.5));
        iq4_nl.extend_from_slice(&[0x00; 16]);
    }
    let d = half::f16::from_f32(1.0 / 127.0).to_f32();
    for (ty, data, want) in [
        (GgmlType::Q5_1, &q5_1, 0.5 * 128.0 * -31.0 * 127.0 * d),
        (GgmlType::IQ4_NL, &iq4_nl, 0.5 * 128.0 * 127.0 * 127.0 * d),
    ] {
        let w = QTensor::new(ty, 1, 128, data).unwrap();
        let mut a = QActs::new();
        a.quantize(vec_dot_type(ty), &[-1.0; 128], 1, 128);
        let (mut f, mut s) = ([0f32], [0f32]);
        matmul(&mut f, &w, &a);
        matmul_scalar(&mut s, &w, &a);
        assert_eq!(f, s, "{ty}");
        assert_eq!(s[0], want, "{ty}");
    }
}

// Reference data generated offline with the `gguf` Python package (0.x;
// 0.19.0 for Q5_1 and IQ4_NL; gguf.quants.quantize / dequantize) from the
// 64 floats in X. gguf-py's Q5_1 quantizer agrees byte for byte with
// ggml's `quantize_row_q5_1_ref` (libggml-base) on X.
const X: [u32; 64] = [
    0xc0a1ed91, 0x3fab9db2, 0xc05522d0, 0x4044872a, 0xbfccd4fd, 0xc0f00000, 0x3e04dd2f, 0xc09151eb,
    0x3fee0c49, 0xc033eb85, 0x4065be76, 0xbf8a6666, 0x40aa3b64, 0x3f26147a, 0xc080b645, 0x40183d70,
    0xc012b439, 0x40837ae1, 0xbf0fef9d, 0x40bad70a, 0x3f9578d5, 0xc060353f, 0x403974bc, 0xbfe2f9db,
    0x40941687, 0xbd3126e9, 0xc096db22, 0x3fd7e76c, 0xc03efdf3, 0x405aac08, 0xbfa08b43, 0x40a4b22d,
    0x3ef39580, 0xc0863f7d, 0x400d2b02, 0xc01dc6a8, 0x407be353, 0xbf3c3958, 0x40b54dd2, 0x3f7ea7ef,
    0x41100000, 0x402e624d, 0xbff91eb8, 0x408e8d4f, 0xbe5d70a3, 0xc09c645a, 0x3fc1c28f, 0xc04a1062,
    0x404f9999, 0xbfb6b020, 0x409f28f5, 0x3e9b020c, 0xc08bc8b4, 0x40021893, 0xc028d916, 0x4070d0e5,
    0xbf688312, 0x40afc49b, 0x3f525e35, 0xc0765a1c, 0x40234fdf, 0xc007a1ca, 0x40890418, 0xbec74bc6,
];
const Q4_0_BYTES: [u8; 36] = [
    128, 59, 99, 201, 116, 235, 150, 64, 184, 99, 218, 133, 60, 167, 94, 201, 116, 219, 128, 188,
    88, 156, 70, 138, 197, 105, 163, 87, 144, 54, 122, 180, 104, 172, 71, 139,
];
const Q4_0_DEQ: [u32; 64] = [
    0xc0960000, 0x3f700000, 0xc0700000, 0x40340000, 0xbff00000, 0xc0f00000, 0x00000000, 0xc0960000,
    0x3ff00000, 0xc0340000, 0x40700000, 0xbf700000, 0x40b40000, 0x3f700000, 0xc0700000, 0x40340000,
    0xbff00000, 0x40700000, 0xbf700000, 0x40b40000, 0x3f700000, 0xc0700000, 0x40340000, 0xbff00000,
    0x40960000, 0x00000000, 0xc0960000, 0x3ff00000, 0xc0340000, 0x40700000, 0xbf700000, 0x40960000,
    0x80000000, 0xc0900000, 0x40100000, 0xc0100000, 0x40580000, 0xbf900000, 0x40b40000, 0x3f900000,
    0x41100000, 0x40100000, 0xc0100000, 0x40900000, 0x80000000, 0xc0900000, 0x3f900000, 0xc0580000,
    0x40580000, 0xbf900000, 0x40900000, 0x80000000, 0xc0900000, 0x40100000, 0xc0100000, 0x40580000,
    0xbf900000, 0x40b40000, 0x3f900000, 0xc0580000, 0x40100000, 0xc0100000, 0x40900000, 0x80000000,
];
const Q4_1_BYTES: [u8; 40] = [
    29, 59, 128, 199, 99, 218, 133, 252, 167, 64, 201, 99, 235, 133, 60, 167, 94, 201, 116, 235,
    104, 59, 227, 196, 150, 65, 184, 99, 26, 116, 43, 150, 79, 184, 99, 26, 133, 48, 167, 82,
];
const Q4_1_DEQ: [u32; 64] = [
    0xc09aa400, 0x3fb22000, 0xc0437800, 0x404ae000, 0xbfa35000, 0xc0f00000, 0x3f00a000, 0xc09aa400,
    0x4011f800, 0xc0437800, 0x404ae000, 0xbfa35000, 0x409e5800, 0x3f00a000, 0xc07c6000, 0x4011f800,
    0xc00a9000, 0x4081e400, 0xbec60000, 0x40bacc00, 0x3fb22000, 0xc07c6000, 0x404ae000, 0xc00a9000,
    0x409e5800, 0xbec60000, 0xc09aa400, 0x3fb22000, 0xc0437800, 0x404ae000, 0xbfa35000, 0x409e5800,
    0x3f2b0000, 0xc07d8000, 0x40214000, 0xc0070000, 0x408be000, 0xbf978000, 0x40a98000, 0x3f2b0000,
    0x41100000, 0x40214000, 0xc0070000, 0x408be000, 0xbe840000, 0xc09c6000, 0x3fcc0000, 0xc0424000,
    0x405c8000, 0xbf978000, 0x40a98000, 0x3f2b0000, 0xc07d8000, 0x3fcc0000, 0xc0424000, 0x405c8000,
    0xbf978000, 0x40a98000, 0x3f2b0000, 0xc07d8000, 0x40214000, 0xc0070000, 0x408be000, 0xbe840000,
];
const Q5_0_BYTES: [u8; 44] = [
    128, 55, 74, 181, 90, 171, 181, 147, 249, 199, 45, 144, 96, 198, 164, 10, 104, 78, 171, 113,
    215, 181, 128, 184, 42, 180, 82, 169, 175, 55, 124, 244, 137, 193, 86, 158, 32, 107, 243, 120,
    176, 73, 141, 22,
];
const Q5_0_DEQ: [u32; 64] = [
    0xc0a50000, 0x3fb40000, 0xc0520000, 0x40520000, 0xbfb40000, 0xc0f00000, 0x00000000, 0xc0960000,
    0x3ff00000, 0xc0340000, 0x40700000, 0xbf700000, 0x40a50000, 0x3ef00000, 0xc0870000, 0x40160000,
    0xc0160000, 0x40870000, 0xbef00000, 0x40b40000, 0x3f700000, 0xc0520000, 0x40340000, 0xbff00000,
    0x40960000, 0x00000000, 0xc0960000, 0x3ff00000, 0xc0340000, 0x40520000, 0xbfb40000, 0x40a50000,
    0x3f100000, 0xc07c0000, 0x40100000, 0xc0100000, 0x407c0000, 0xbf100000, 0x40b40000, 0x3f900000,
    0x41100000, 0x40340000, 0xbfd80000, 0x40900000, 0x80000000, 0xc0a20000, 0x3fd80000, 0xc0580000,
    0x40580000, 0xbfd80000, 0x40a20000, 0x3f100000, 0xc0900000, 0x40100000, 0xc0340000, 0x407c0000,
    0xbf900000, 0x40b40000, 0x3f100000, 0xc07c0000, 0x40340000, 0xc0100000, 0x40900000, 0xbf100000,
];
const Q8_0_BYTES: [u8; 68] = [
    143, 43, 170, 23, 200, 52, 229, 129, 2, 179, 31, 208, 61, 238, 90, 11, 188, 40, 217, 70, 246,
    99, 20, 197, 49, 226, 78, 255, 176, 29, 205, 58, 235, 87, 137, 44, 7, 197, 31, 221, 56, 246,
    80, 14, 127, 38, 229, 63, 253, 187, 21, 211, 46, 236, 70, 4, 194, 29, 219, 53, 243, 78, 12,
    202, 36, 226, 60, 251,
];
const Q8_0_DEQ: [u32; 64] = [
    0xc0a28280, 0x3fadd900, 0xc053a400, 0x40448600, 0xbfcc1500, 0xc0effc40, 0x3df1e000, 0xc09180c0,
    0x3fea5100, 0xc0356800, 0x40668980, 0xbf880e00, 0x40aa1180, 0x3f264a00, 0xc0807f00, 0x40172c00,
    0xc0136480, 0x40844680, 0xbf172c00, 0x40bb1340, 0x3f972c00, 0xc05efa80, 0x40392f80, 0xbfe2c200,
    0x40936480, 0xbd71e000, 0xc0972c00, 0x3fdb3300, 0xc040be80, 0x405b3300, 0xbf9ebb00, 0x40a46640,
    0x3efdf800, 0xc085c980, 0x400c9700, 0xc01ebb00, 0x407df800, 0xbf356800, 0x40b56800, 0x3f7df800,
    0x410ffdc0, 0x402c5600, 0xbff4e600, 0x408edb80, 0xbe59b000, 0xc09c7680, 0x3fbe7a00, 0xc04c1500,
    0x40509e00, 0xbfb56800, 0x409ebb00, 0x3e912000, 0xc08c9700, 0x40038500, 0xc027cd00, 0x40705d00,
    0xbf6bd400, 0x40b0df00, 0x3f59b000, 0xc074e600, 0x40234400, 0xc0080e00, 0x40880e00, 0xbeb56800,
];

const Q5_1_BYTES: [u8; 48] = [
    226, 54, 128, 199, 74, 181, 94, 171, 198, 181, 10, 249, 78, 144, 130, 215, 198, 27, 106, 95,
    174, 147, 248, 215, 43, 55, 227, 196, 84, 11, 133, 82, 44, 130, 96, 197, 20, 249, 88, 61, 159,
    113, 215, 37, 26, 96, 78, 164,
];
const Q5_1_DEQ: [u32; 64] = [
    0xc09d6800, 0x3fc45000, 0xc04cb000, 0x40504800, 0xbfbd2000, 0xc0f00000, 0x3e790000, 0xc08fa400,
    0x3ffb6000, 0xc0312800, 0x406bd000, 0xbf861000, 0x40acf800, 0x3f2c6000, 0xc081e000, 0x40193800,
    0xc015a000, 0x4083ac00, 0xbf1e0000, 0x40babc00, 0x3f8d4000, 0xc0683800, 0x4034c000, 0xbff43000,
    0x40917000, 0xbe3f8000, 0xc09d6800, 0x3fc45000, 0xc04cb000, 0x40504800, 0xbf861000, 0x409f3400,
    0x3efa8000, 0xc07f6800, 0x40120000, 0xc0296400, 0x40825800, 0xbf5ad000, 0x40bbb000, 0x3f6ff000,
    0x41100500, 0x402eac00, 0xbfe01800, 0x4090ae00, 0xbed04000, 0xc09c6000, 0x3fb15000, 0xc0461000,
    0x404b5800, 0xbfa6c000, 0x409f0400, 0x3efa8000, 0xc08e0a00, 0x3feaa800, 0xc0296400, 0x40680400,
    0xbf5ad000, 0x40ad5a00, 0x3f6ff000, 0xc07f6800, 0x402eac00, 0xc00cb800, 0x40825800, 0xbed04000,
];
const IQ4_NL_BYTES: [u8; 36] = [
    175, 43, 82, 218, 116, 236, 166, 48, 200, 82, 218, 132, 44, 166, 78, 201, 99, 235, 129, 172,
    71, 172, 53, 139, 212, 89, 178, 71, 144, 37, 122, 195, 88, 173, 54, 139,
];
const IQ4_NL_DEQ: [u32; 64] = [
    0xc09f6f40, 0x3fc01700, 0xc03c3f80, 0x404b9d80, 0xbfa90a00, 0xc0f3f440, 0x3d75e000, 0xc09f6f40,
    0x3fc01700, 0xc03c3f80, 0x404b9d80, 0xbfa90a00, 0x40aaf5c0, 0x3f47c600, 0xc079b780, 0x4011fd00,
    0xc0067680, 0x40848ac0, 0xbf19ac00, 0x40aaf5c0, 0x3fc01700, 0xc079b780, 0x404b9d80, 0xc0067680,
    0x40848ac0, 0x3d75e000, 0xc09f6f40, 0x3fc01700, 0xc03c3f80, 0x404b9d80, 0xbfa90a00, 0x40aaf5c0,
    0x3f342800, 0xc06eb500, 0x401da300, 0xc02b2600, 0x405cb100, 0xbf6a3400, 0x40bae980, 0x3f342800,
    0x410effc0, 0x401da300, 0xbfe13200, 0x40926080, 0xbd902000, 0xc09b6280, 0x3fc62c00, 0xc02b2600,
    0x405cb100, 0xbfe13200, 0x40926080, 0xbd902000, 0xc09b6280, 0x401da300, 0xc02b2600, 0x405cb100,
    0xbf6a3400, 0x40bae980, 0x3f342800, 0xc06eb500, 0x401da300, 0xbfe13200, 0x40926080, 0xbd902000,
];

// IQ4_NL: gguf-py has no IQ4_NL quantizer, so the bytes come from ggml
// itself (libggml-base: `quantize_row_iq4_nl_ref`, and `quantize_iq4_nl`
// without importance weights for the *_SEARCH_* arrays), the floats from
// gguf-py's dequantize. Y (64 normal samples) is where the two differ.
const Y: [u32; 64] = [
    0x3e00bf6c, 0xbe07467f, 0x3f23f2bd, 0x3dd6d5df, 0xbf0921a1, 0x3eb922fd, 0x3fa6e979, 0x3f7273e6,
    0xbf3427fe, 0xbfa1f955, 0xbf1f8eea, 0x3d29456e, 0xc014cd4e, 0xbe600aec, 0xbf9f7a03, 0xbf3b75e0,
    0xbf0b548f, 0xbea1f218, 0x3ed2c13d, 0x3f857114, 0xbe039e97, 0x3faee846, 0xbf2a4a33, 0x3eb3f921,
    0x3f6749d2, 0x3dc08985, 0xbf3e55f8, 0xbf6bf632, 0xbeea5b0a, 0x3e617ad5, 0xbf813b2b, 0xbe56321f,
    0xbe230be2, 0x3f0a74db, 0x3e5bcf9a, 0x3eb5f369, 0xbf276150, 0xbe04b970, 0x3f48b29e, 0x3fbf28c0,
    0xbfa1290f, 0x3fc1c841, 0x3fac45a5, 0x3f480406, 0x3e8766ba, 0xbea0ba7e, 0x3fbaa06c, 0x3ffae9bf,
    0x3fe69bf9, 0x3fa85552, 0x3eb6fa91, 0xbf9aaa2f, 0xbb91f3fa, 0x3f280ebe, 0xbfa4e907, 0x3eca4d70,
    0x3edc1718, 0x3f322fdb, 0xbf97912d, 0xbf296557, 0xbedf7471, 0xbf95bc12, 0x3fdea39b, 0xbefde803,
];
const IQ4_NL_Y_BYTES: [u8; 36] = [
    195, 36, 88, 103, 171, 200, 117, 218, 93, 172, 197, 131, 85, 72, 96, 151, 67, 117, 195, 163, 9,
    37, 103, 214, 139, 73, 228, 97, 110, 65, 210, 180, 166, 218, 17, 176,
];
const IQ4_NL_Y_DEQ: [u32; 64] = [
    0x3c986000, 0xbe3e7800, 0x3f34f200, 0x3c986000, 0xbf26a900, 0x3eee1600, 0x3fa44780, 0x3f7c5f00,
    0xbf26a900, 0xbf9ac180, 0xbf26a900, 0x3c986000, 0xc0172f40, 0xbe3e7800, 0xbf9ac180, 0xbf26a900,
    0xbf26a900, 0xbed18400, 0x3eee1600, 0x3f7c5f00, 0xbe3e7800, 0x3fa44780, 0xbf26a900, 0x3eee1600,
    0x3f7c5f00, 0x3c986000, 0xbf26a900, 0xbf695300, 0xbed18400, 0x3e779c00, 0xbf695300, 0xbe3e7800,
    0xbe49ce00, 0x3f07d480, 0x3e1b3c00, 0x3eaac200, 0xbf137900, 0xbe49ce00, 0x3f3e2980, 0x3fc9ce00,
    0xbfacb2c0, 0x3fc9ce00, 0x3fa10e40, 0x3f3e2980, 0x3eaac200, 0xbec20b00, 0x3fc9ce00, 0x3ff66f40,
    0x3ff66f40, 0x3fa10e40, 0x3eaac200, 0xbf85e3c0, 0xbc786000, 0x3f3e2980, 0xbfacb2c0, 0x3eaac200,
    0x3eaac200, 0x3f3e2980, 0xbf85e3c0, 0xbf137900, 0xbec20b00, 0xbf85e3c0, 0x3fc9ce00, 0xbf137900,
];
const IQ4_NL_Y_SEARCH_BYTES: [u8; 36] = [
    195, 36, 88, 103, 171, 200, 117, 218, 93, 156, 197, 131, 85, 72, 96, 151, 67, 117, 104, 163, 9,
    37, 103, 230, 139, 73, 228, 97, 94, 65, 226, 196, 166, 234, 1, 176,
];
const IQ4_NL_Y_SEARCH_DEQ: [u32; 64] = [
    0x3c986000, 0xbe3e7800, 0x3f34f200, 0x3c986000, 0xbf26a900, 0x3eee1600, 0x3fa44780, 0x3f7c5f00,
    0xbf26a900, 0xbf9ac180, 0xbf26a900, 0x3c986000, 0xc0172f40, 0xbe3e7800, 0xbf9ac180, 0xbf26a900,
    0xbf26a900, 0xbed18400, 0x3eee1600, 0x3f7c5f00, 0xbe3e7800, 0x3fa44780, 0xbf26a900, 0x3e779c00,
    0x3f7c5f00, 0x3c986000, 0xbf26a900, 0xbf695300, 0xbed18400, 0x3e779c00, 0xbf695300, 0xbe3e7800,
    0xbe409000, 0x3f019c00, 0x3e142000, 0x3ea2f000, 0xbf0cb800, 0xbe409000, 0x3f357400, 0x3fc09000,
    0xbfa4ca00, 0x3fc09000, 0x3f99ae00, 0x3f357400, 0x3ea2f000, 0xbeb92800, 0x3fc09000, 0x3feb2600,
    0x3feb2600, 0x3f99ae00, 0x3ea2f000, 0xbfa4ca00, 0xbc6d0000, 0x3f357400, 0xbfa4ca00, 0x3ea2f000,
    0x3f019c00, 0x3f357400, 0xbfa4ca00, 0xbf444400, 0xbeb92800, 0xbfa4ca00, 0x3feb2600, 0xbf0cb800,
];

fn check_reference(ty: GgmlType, bytes: &[u8], deq: &[u32; 64]) {
    let x: Vec<f32> = X.iter().map(|&b| f32::from_bits(b)).collect();
    check_reference_with(ty, &x, bytes, deq);
}

fn check_reference_with(ty: GgmlType, x: &[f32], bytes: &[u8], deq: &[u32; 64]) {
    assert_eq!(quantize_weights(ty, x), bytes, "{ty} quantization");
    check_bits(&ty.name(), &dequant_all(ty, 1, 64, bytes), deq);
}

#[test]
fn matches_gguf_python_reference() {
    check_reference(GgmlType::Q4_0, &Q4_0_BYTES, &Q4_0_DEQ);
    check_reference(GgmlType::Q4_1, &Q4_1_BYTES, &Q4_1_DEQ);
    check_reference(GgmlType::Q5_0, &Q5_0_BYTES, &Q5_0_DEQ);
    check_reference(GgmlType::Q8_0, &Q8_0_BYTES, &Q8_0_DEQ);
    check_reference(GgmlType::Q5_1, &Q5_1_BYTES, &Q5_1_DEQ);
    check_reference(GgmlType::IQ4_NL, &IQ4_NL_BYTES, &IQ4_NL_DEQ);
}

fn check_bits(what: &str, got: &[f32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, &b)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            a.to_bits(),
            b,
            "{what} element {i}: {a} vs {}",
            f32::from_bits(b)
        );
    }
}

/// IQ4_NL's reference quantizer and the scale search of `quantize_iq4_nl`
/// give ggml's bytes on Y, where they differ from each other.
#[test]
fn iq4_nl_matches_ggml_quantizers() {
    let y: Vec<f32> = Y.iter().map(|&b| f32::from_bits(b)).collect();
    assert_ne!(IQ4_NL_Y_BYTES, IQ4_NL_Y_SEARCH_BYTES);
    check_reference_with(GgmlType::IQ4_NL, &y, &IQ4_NL_Y_BYTES, &IQ4_NL_Y_DEQ);
    let mut blocks = [iq4_nl::BlockIQ4NL {
        d: [0; 2],
        qs: [0; 16],
    }; 2];
    iq4_nl::quantize_search(&y, &mut blocks);
    let bytes: &[u8] = bytemuck::cast_slice(&blocks);
    assert_eq!(bytes, IQ4_NL_Y_SEARCH_BYTES);
    check_bits(
        "IQ4_NL search",
        &dequant_all(GgmlType::IQ4_NL, 1, 64, bytes),
        &IQ4_NL_Y_SEARCH_DEQ,
    );
}

/// ggml's `best_index_int8`: nearest grid value, ties go up, clamped ends.
#[test]
fn iq4_nl_best_index() {
    let k = &iq4_nl::KVALUES_IQ4NL;
    for (i, &v) in k.iter().enumerate() {
        assert_eq!(iq4_nl::best_index_int8(k, v as f32), i as u8);
    }
    assert_eq!(iq4_nl::best_index_int8(k, -1000.0), 0);
    assert_eq!(iq4_nl::best_index_int8(k, 1000.0), 15);
    assert_eq!(iq4_nl::best_index_int8(k, f32::NEG_INFINITY), 0);
    // Midpoint of 1 and 13 is 7: the tie goes to the upper value.
    assert_eq!(iq4_nl::best_index_int8(k, 7.0), 9);
    assert_eq!(iq4_nl::best_index_int8(k, 6.99), 8);
    assert_eq!(iq4_nl::best_index_int8(k, f32::NAN), 15);
}

/// The k-quants against ggml's C reference (see `kquant_ref.rs`): our
/// quantizer gives ggml's bytes, our dequantizer ggml's (and gguf-py's)
/// floats, our Q8_K ggml's activation block, and both dot products ggml's
/// generic `vec_dot` up to f32 reassociation.
fn check_kquant_reference(ty: GgmlType, bytes: &[u8], deq: &[u32; 256], dot: [u32; 1]) {
    use super::kquant_ref::{A, Q8_K_BYTES, X};
    let x: Vec<f32> = X.iter().map(|&b| f32::from_bits(b)).collect();
    let a: Vec<f32> = A.iter().map(|&b| f32::from_bits(b)).collect();
    assert_eq!(quantize_weights(ty, &x), bytes, "{ty} quantization");
    let y = dequant_all(ty, 1, 256, bytes);
    for (i, (v, &b)) in y.iter().zip(deq).enumerate() {
        assert_eq!(
            v.to_bits(),
            b,
            "{ty} element {i}: {v} vs {}",
            f32::from_bits(b)
        );
    }
    let mut acts = QActs::new();
    acts.quantize(GgmlType::Q8_K, &a, 1, 256);
    let q8: &[u8] = bytemuck::cast_slice(acts.vec::<q8_k::Q8_KAct>(0));
    assert_eq!(q8, Q8_K_BYTES, "Q8_K quantization");
    let want = f32::from_bits(dot[0]);
    let w = QTensor::new(ty, 1, 256, bytes).unwrap();
    let mag: f32 = y.iter().zip(&a).map(|(p, q)| (p * q).abs()).sum();
    for f in [matmul, matmul_scalar] {
        let mut got = [0f32];
        f(&mut got, &w, &acts);
        assert!(
            (got[0] - want).abs() <= 1e-6 * mag,
            "{ty}: dot {} vs ggml {want}",
            got[0]
        );
    }
}

#[test]
fn kquants_match_ggml_reference() {
    use super::kquant_ref::*;
    check_kquant_reference(GgmlType::Q4_K, &Q4_K_BYTES, &Q4_K_DEQ, Q4_K_DOT);
    check_kquant_reference(GgmlType::Q6_K, &Q6_K_BYTES, &Q6_K_DEQ, Q6_K_DOT);
    check_kquant_reference(GgmlType::Q5_K, &Q5_K_BYTES, &Q5_K_DEQ, Q5_K_DOT);
    check_kquant_reference(GgmlType::IQ4_XS, &IQ4_XS_BYTES, &IQ4_XS_DEQ, IQ4_XS_DOT);
    check_kquant_reference(GgmlType::Q3_K, &Q3_K_BYTES, &Q3_K_DEQ, Q3_K_DOT);
    check_kquant_reference(GgmlType::Q2_K, &Q2_K_BYTES, &Q2_K_DEQ, Q2_K_DOT);
}

/// The word-wise decoding of Q4_K / Q5_K's packed 6-bit scales and mins
/// equals ggml's per-index `get_scale_min_k4`, and packing inverts it.
#[test]
fn k4_scales_and_mins_decode() {
    let mut rng = Lcg(9);
    for _ in 0..1000 {
        let q: [u8; 12] = std::array::from_fn(|_| (rng.next() * 128.0 + 128.0) as u8);
        let (sc, m) = q8_k::scales_mins_k4(&q);
        for j in 0..8 {
            let (d, mm) = if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                (
                    (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
                    (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                )
            };
            assert_eq!((sc[j], m[j]), (d, mm), "{q:?} {j}");
        }
        assert_eq!(q8_k::pack_scales_mins_k4(&sc, &m), q);
    }
}

/// Offsets of the f16 fields of a k-quant block.
fn f16_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        GgmlType::IQ4_XS => &[0],
        _ => unreachable!(),
    }
}

/// Blocks of random bytes (every scale, min and quant pattern, including
/// ones ggml's quantizers never write, e.g. a Q6_K scale of -128), with
/// finite f16 scales, against activations that reach +-127: the SIMD dot
/// agrees with the scalar one, which agrees with the dequantized dot.
#[test]
fn kquants_random_bytes() {
    let mut rng = Lcg(8);
    let (rows, cols) = (5, 256 * 3);
    for &ty in WEIGHT_TYPES.iter().filter(|t| t.block_size() == 256) {
        let mut data: Vec<u8> = (0..rows * cols / 256 * ty.type_size())
            .map(|_| (rng.next() * 128.0 + 128.0) as u8)
            .collect();
        for b in data.chunks_exact_mut(ty.type_size()) {
            for &o in f16_offsets(ty) {
                b[o..o + 2].copy_from_slice(&f32_to_f16_le(rng.next() * 0.01));
            }
        }
        let w = QTensor::new(ty, rows, cols, &data).unwrap();
        let mut x = rng.vec(cols, 3.0);
        x[7] = 5.0;
        x[300] = -5.0;
        let mut a = QActs::new();
        a.quantize(GgmlType::Q8_K, &x, 1, cols);
        let mut xd = vec![0f32; cols];
        a.dequantize_vec(0, &mut xd);
        let (mut fast, mut slow) = (vec![0f32; rows], vec![0f32; rows]);
        matmul(&mut fast, &w, &a);
        matmul_scalar(&mut slow, &w, &a);
        let wd = dequant_all(ty, rows, cols, &data);
        for r in 0..rows {
            let wr = &wd[r * cols..(r + 1) * cols];
            let want: f64 = wr.iter().zip(&xd).map(|(&p, &q)| p as f64 * q as f64).sum();
            let mag: f64 = wr
                .iter()
                .zip(&xd)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum();
            let (f, s) = (fast[r] as f64, slow[r] as f64);
            assert!(
                (f - s).abs() <= 1e-6 * mag,
                "{ty} row {r}: simd {f} vs scalar {s}"
            );
            assert!(
                (s - want).abs() <= 1e-5 * mag,
                "{ty} row {r}: {s} vs {want}"
            );
        }
    }
}

/// gguf-py's dequantization of the first rows of named tensors, compared
/// bit-for-bit with ours (raw f32 files named after the tensors).
#[cfg(not(target_arch = "wasm32"))]
const GGUF_PY_CHECK: &str = r#"
import sys, numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
path, d, rows, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
ts = {t.name: t for t in GGUFReader(path).tensors}
bad = 0
for n in names:
    t = ts[n]
    want = dequantize(np.asarray(t.data)[:rows], t.tensor_type).astype(np.float32).ravel()
    got = np.fromfile(f"{d}/{n}", dtype=np.float32)
    ok = want.shape == got.shape and np.array_equal(want.view(np.uint32), got.view(np.uint32))
    bad += not ok
    print(("ok  " if ok else "BAD ") + f"{n} {t.tensor_type.name} {got.size} values")
sys.exit(1 if bad else 0)
"#;

/// Dev check on a real file (not in CI): the first rows of every k-quant
/// tensor of the GGUF at `$WASM_CHORD_KQUANT_GGUF` (gemma-3-270m-q4_k_m,
/// llama.cpp's requantized SmolLM2 variants, ...) dequantize to the same f32
/// bits as gguf-py's. Needs python3 with `gguf`:
/// `WASM_CHORD_KQUANT_GGUF=path cargo test -p wasm-chord-kernel --release
/// real_kquant_tensors -- --ignored --nocapture`.
#[cfg(not(target_arch = "wasm32"))]
#[test]
#[ignore]
fn real_kquant_tensors_match_gguf_py() {
    const ROWS: usize = 64;
    let path = std::env::var("WASM_CHORD_KQUANT_GGUF").expect("set WASM_CHORD_KQUANT_GGUF");
    let bytes = std::fs::read(&path).expect("read the GGUF");
    let src = crate::store::MemSource::new(bytes.clone());
    let g = crate::gguf::GgufFile::parse(&src).expect("parse the GGUF");
    let dir = std::env::temp_dir().join(format!("wasm-chord-kquant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut names = Vec::new();
    for t in &g.tensors {
        if t.ty.block_size() != 256 || !t.ty.is_supported() {
            continue;
        }
        let (cols, rows) = (t.ne0() as usize, (t.n_rows() as usize).min(ROWS));
        let start = t.offset as usize;
        let data = &bytes[start..start + rows * t.ty.row_bytes(cols as u64).unwrap() as usize];
        let out = dequant_all(t.ty, rows, cols, data);
        std::fs::write(dir.join(&t.name), bytemuck::cast_slice(&out)).unwrap();
        names.push(t.name.clone());
    }
    assert!(!names.is_empty(), "no k-quant tensors in {path}");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            GGUF_PY_CHECK,
            &path,
            dir.to_str().unwrap(),
            &ROWS.to_string(),
        ])
        .args(&names)
        .status()
        .expect("run python3");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success(), "gguf-py disagrees (see the BAD lines)");
}

/// Micro-benchmark: `cargo test -p wasm-chord-kernel --release bench_matmul -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_matmul() {
    let mut rng = Lcg(7);
    for (ty, rows, cols) in [
        (GgmlType::Q4_1, 1536, 576),
        (GgmlType::Q4_1, 576, 1536),
        (GgmlType::Q4_0, 1536, 576),
        (GgmlType::Q5_0, 1536, 576),
        (GgmlType::Q5_1, 1536, 576),
        (GgmlType::Q8_0, 1536, 576),
        (GgmlType::IQ4_NL, 1536, 576),
        (GgmlType::F32, 1536, 576),
        (GgmlType::Q8_0, 1536, 1536),
        (GgmlType::Q4_0, 1536, 1536),
        (GgmlType::Q2_K, 1536, 1536),
        (GgmlType::Q3_K, 1536, 1536),
        (GgmlType::Q4_K, 1536, 1536),
        (GgmlType::Q5_K, 1536, 1536),
        (GgmlType::Q6_K, 1536, 1536),
        (GgmlType::IQ4_XS, 1536, 1536),
    ] {
        let data = random_matrix(ty, rows, cols, &mut rng);
        // `BENCH_TY=Q8_0`: that type only.
        if std::env::var("BENCH_TY").is_ok_and(|t| t != ty.to_string()) {
            continue;
        }
        let w = QTensor::new(ty, rows, cols, &data).unwrap();
        let p = packed::has_layout(ty).then(|| packed_copy(ty, rows, cols, &data));
        let pw = p.as_deref().map(|p| QTensor {
            packed: true,
            ..QTensor::new(ty, rows, cols, p).unwrap()
        });
        for n in [1usize, 8, 32] {
            let x = rng.vec(n * cols, 1.0);
            let mut a = QActs::new();
            let mut out = vec![0f32; n * rows];
            let mut paths = vec![
                ("simd", matmul as fn(&mut [f32], &QTensor, &QActs), &w),
                ("scalar", matmul_scalar, &w),
            ];
            if let Some(pw) = &pw {
                paths.push(("packed", matmul, pw));
            }
            for (name, f, w) in paths {
                let iters = 200 / n;
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    a.quantize(vec_dot_type(ty), &x, n, cols);
                    f(&mut out, w, &a);
                }
                let ns = t.elapsed().as_nanos() as f64 / iters as f64;
                let gmac = (rows * cols * n) as f64 / ns;
                println!(
                    "{ty} {rows}x{cols} n={n} {name}: {:.0} ns/matmul, {gmac:.2} GMAC/s",
                    ns
                );
            }
        }
    }
}

/// Decode (one vector) Q8_0 mat-vecs, unpacked (a streamed chunk: 60 rows
/// of 4096, 256 KB) and packed: the median of 9 runs of 200 matmuls each
/// (the activations quantized once), as GMAC/s.
#[test]
#[ignore]
fn bench_q8_0_decode() {
    let mut rng = Lcg(7);
    let ty = GgmlType::Q8_0;
    for (rows, cols) in [(60, 4096), (1536, 576), (1536, 1536)] {
        let data = random_matrix(ty, rows, cols, &mut rng);
        let p = packed_copy(ty, rows, cols, &data);
        let w = QTensor::new(ty, rows, cols, &data).unwrap();
        let pw = QTensor {
            packed: true,
            ..QTensor::new(ty, rows, cols, &p).unwrap()
        };
        let mut a = QActs::new();
        a.quantize(ty, &rng.vec(cols, 1.0), 1, cols);
        let mut out = vec![0f32; rows];
        for (name, w) in [("unpacked", &w), ("packed", &pw)] {
            print_median_gmacs(
                &format!("{ty} {rows}x{cols} n=1 {name}"),
                rows * cols,
                200,
                || matmul(&mut out, w, &a),
            );
        }
    }
}

/// A streamed Q8_0 decode mat-vec as `Mat::matmul` runs it: a 4096 x 4096
/// matrix (71 MB: out of cache) copied a 256 KB chunk at a time (as the
/// host's `load-layer` does) into a buffer that is then dotted (in cache);
/// the median of 5 runs of 4 passes, copy included, as GMAC/s.
#[test]
#[ignore]
fn bench_q8_0_streamed() {
    let mut rng = Lcg(8);
    let (ty, rows, cols) = (GgmlType::Q8_0, 4096, 4096);
    let data = random_matrix(ty, rows, cols, &mut rng);
    let rb = cols / 32 * 34;
    let chunk_rows = crate::model::weights::STREAM_CHUNK / rb;
    let mut a = QActs::new();
    a.quantize(ty, &rng.vec(cols, 1.0), 1, cols);
    let mut out = vec![0f32; rows];
    let mut chunk = Vec::new();
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..4 {
                for r0 in (0..rows).step_by(chunk_rows) {
                    let k = chunk_rows.min(rows - r0);
                    chunk.clear();
                    chunk.extend_from_slice(&data[r0 * rb..(r0 + k) * rb]);
                    let w = QTensor::new(ty, k, cols, &chunk).unwrap();
                    matmul(&mut out[r0..r0 + k], &w, &a);
                }
            }
            (4 * rows * cols) as f64 / t.elapsed().as_nanos() as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    println!(
        "{ty} {rows}x{cols} n=1 streamed in {chunk_rows}-row chunks: median {:.2} GMAC/s (min {:.2}, max {:.2})",
        runs[2], runs[0], runs[4]
    );
}

/// Decode (one vector) through a tied output matrix the size of
/// Gemma-3-270M's (262144 x 640 Q8_0, 178 MB: out of every cache), as laid
/// out in memory and packed.
#[test]
#[ignore]
fn bench_matmul_output() {
    let mut rng = Lcg(7);
    let rows: usize = std::env::var("Q8ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(262144);
    // `Q8COLS=4032 Q8ROWS=49152`: the output layer of the padded 5.7 GB
    // SmolLM2 (`make_padded_gguf.py`).
    let cols: usize = std::env::var("Q8COLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(640);
    let ty = GgmlType::Q8_0;
    let data = random_matrix(ty, rows, cols, &mut rng);
    let p = packed_copy(ty, rows, cols, &data);
    let w = QTensor::new(ty, rows, cols, &data).unwrap();
    let pw = QTensor {
        packed: true,
        ..QTensor::new(ty, rows, cols, &p).unwrap()
    };
    let x = rng.vec(cols, 1.0);
    let mut a = QActs::new();
    let mut out = vec![0f32; rows];
    for (name, w) in [("simd", &w), ("packed", &pw), ("simd", &w), ("packed", &pw)] {
        let iters = 10;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            a.quantize(vec_dot_type(ty), &x, 1, cols);
            matmul(&mut out, w, &a);
        }
        let ns = t.elapsed().as_nanos() as f64 / iters as f64;
        println!(
            "{ty} {rows}x{cols} n=1 {name}: {:.2} ms/matmul, {:.2} GMAC/s, {:.1} GB/s",
            ns / 1e6,
            (rows * cols) as f64 / ns,
            data.len() as f64 / ns
        );
    }
}

/// On wasm32 the tests must exercise the simd128 dots.
#[test]
fn simd_path_is_compiled_on_wasm() {
    let simd = cfg!(target_feature = "simd128");
    assert!(simd || !cfg!(target_arch = "wasm32"));
}

const PACKED_TYPES: &[GgmlType] = &[GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];
/// The layouts of `packed_k`.
const PACKED_K_TYPES: &[GgmlType] = &[
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Packs `data` (`rows` x `cols` of `ty`) in place; a copy. Packing
/// into another buffer ([`pack_into`]) gives the same bytes.
fn packed_copy(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let mut p = data.to_vec();
    assert!(pack_in_place(ty, &mut p, rows, cols), "{ty} packs");
    let mut q = vec![0xa5u8; data.len()];
    assert!(pack_into(ty, data, &mut q, rows, cols), "{ty} packs into");
    assert_eq!(p, q, "{ty}: pack_into and pack_in_place differ");
    p
}

/// Checks that the packed `matmul` (SIMD on wasm32) of `data` gives the
/// bits of the scalar reference on the unpacked rows, for one vector and a
/// batch, and that packed rows dequantize as before.
fn check_packed(ty: GgmlType, rows: usize, cols: usize, data: &[u8], x: &[f32], n: usize) {
    let w = QTensor::new(ty, rows, cols, data).unwrap();
    let p = packed_copy(ty, rows, cols, data);
    assert_eq!(p.len(), data.len());
    let pw = QTensor {
        packed: true,
        ..QTensor::new(ty, rows, cols, &p).unwrap()
    };
    let mut a = QActs::new();
    a.quantize(vec_dot_type(ty), x, n, cols);
    let mut want = vec![0f32; n * rows];
    matmul_scalar(&mut want, &w, &a);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    let mut got = vec![0f32; n * rows];
    matmul(&mut got, &pw, &a);
    assert_eq!(
        bits(&got),
        bits(&want),
        "{ty} {rows}x{cols} n={n}: packed matmul"
    );
    // Unpacked (a streamed layer): the SIMD dots give the same bits too.
    matmul(&mut got, &w, &a);
    assert_eq!(bits(&got), bits(&want), "{ty}: unpacked matmul");
    let mut got_scalar = vec![0f32; n * rows];
    matmul_scalar(&mut got_scalar, &pw, &a);
    assert_eq!(bits(&got_scalar), bits(&want), "{ty}: packed scalar matmul");
    for b in 0..n {
        let mut one = QActs::new();
        one.quantize(vec_dot_type(ty), &x[b * cols..(b + 1) * cols], 1, cols);
        let mut o = vec![0f32; rows];
        matmul(&mut o, &pw, &one);
        assert_eq!(
            bits(&o),
            bits(&want[b * rows..(b + 1) * rows]),
            "{ty} vector {b}"
        );
    }
    let (mut u, mut v) = (vec![0f32; cols], vec![0f32; cols]);
    for r in 0..rows {
        dequantize_row(&w, r, &mut u);
        dequantize_row(&pw, r, &mut v);
        assert_eq!(bits(&u), bits(&v), "{ty} row {r} dequantized");
    }
}

/// The packed matmul is bit-identical to the scalar reference on random
/// rows, row counts not divisible by 4 included.
#[test]
fn packed_matmul_bit_identical_to_scalar() {
    let mut rng = Lcg(11);
    for &ty in PACKED_TYPES.iter().chain(PACKED_K_TYPES) {
        for rows in [1, 3, 4, 5, 7, 8, 13, 64] {
            let cols = unit(ty) * 9;
            let data = random_matrix(ty, rows, cols, &mut rng);
            // 6 = one batch of 4 vectors and one of 2; 11 = 8 (the wide
            // tiles of the relaxed k-quant and Q5_0 dots) + 3, else 4 + 4 + 3;
            // 37 = a full tile of 32 vectors, then 5.
            for n in [1, 3, 6, 11, 37] {
                let x = rng.vec(n * cols, 3.0);
                check_packed(ty, rows, cols, &data, &x, n);
            }
        }
    }
}

/// `d` (with an Inf or NaN scale at `at`) is refused by both packings,
/// and packing it in place leaves it as it was.
fn assert_refuses(ty: GgmlType, mut d: Vec<u8>, rows: usize, cols: usize, at: &str) {
    let before = d.clone();
    assert!(
        !pack_in_place(ty, &mut d, rows, cols),
        "{ty}: packed an Inf/NaN scale at {at}"
    );
    assert_eq!(d, before, "{ty}: refused packing changed the bytes");
    assert!(
        !pack_into(ty, &d, &mut vec![0; d.len()], rows, cols),
        "{ty}: packed an Inf/NaN scale at {at} into another buffer"
    );
}

/// Blocks of a tensor of `rows` (9) rows of `nb` blocks where a test puts
/// an Inf/NaN scale: in the first group of 4 rows, in the second (which
/// [`pack_in_place`] meets after packing the first) and in the tail row.
fn bad_scale_blocks(rows: usize, nb: usize) -> [usize; 3] {
    assert_eq!(rows, 9, "two groups of 4 rows and a tail row");
    [nb + 1, 4 * nb + 2, 8 * nb + nb - 1]
}

/// Extreme quants and finite scales (f16 subnormals, the largest f16,
/// signed zeros) keep the same bits through the packed path; a tensor with
/// an Inf or NaN scale is left unpacked.
#[test]
fn packed_matmul_extreme_bytes() {
    let mut rng = Lcg(12);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for &ty in PACKED_TYPES {
        let (rows, cols) = (9, 32 * 4);
        let mut data = vec![0u8; rows * cols / 32 * ty.type_size()];
        for b in data.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        // Some block scales are special f16 values.
        let specials: [u16; 7] = [0x0000, 0x8000, 0x0001, 0x83ff, 0x7bff, 0xfbff, 0x0400];
        for (i, blk) in data.chunks_exact_mut(ty.type_size()).enumerate() {
            if i % 3 == 0 {
                blk[..2].copy_from_slice(&specials[i / 3 % specials.len()].to_le_bytes());
            }
            // Random scales with the top exponent are Inf/NaN: make them finite.
            if u16::from_le_bytes([blk[0], blk[1]]) & 0x7c00 == 0x7c00 {
                blk[1] ^= 0x40;
            }
            if ty == GgmlType::Q4_1 && u16::from_le_bytes([blk[2], blk[3]]) & 0x7c00 == 0x7c00 {
                blk[3] ^= 0x40;
            }
        }
        // In the first group of 4 rows, in the second (after one was
        // packed), and in the tail row.
        for at in bad_scale_blocks(rows, cols / 32) {
            for bad in [0x7c00u16, 0xfc00, 0x7e00] {
                let mut d = data.clone();
                d[ty.type_size() * at..][..2].copy_from_slice(&bad.to_le_bytes());
                assert_refuses(ty, d, rows, cols, &format!("block {at}"));
            }
        }
        let x = rng.vec(2 * cols, 1.0);
        let w = QTensor::new(ty, rows, cols, &data).unwrap();
        let mut a = QActs::new();
        a.quantize(vec_dot_type(ty), &x, 2, cols);
        let mut want = vec![0f32; 2 * rows];
        matmul_scalar(&mut want, &w, &a);
        let p = packed_copy(ty, rows, cols, &data);
        let pw = QTensor {
            packed: true,
            ..QTensor::new(ty, rows, cols, &p).unwrap()
        };
        let mut got = vec![0f32; 2 * rows];
        matmul(&mut got, &pw, &a);
        for (g, w) in got.iter().zip(&want) {
            assert!(g.to_bits() == w.to_bits(), "{ty}: {g} vs {w}");
        }
        matmul(&mut got, &w, &a);
        for (g, w) in got.iter().zip(&want) {
            assert!(g.to_bits() == w.to_bits(), "{ty} unpacked: {g} vs {w}");
        }
    }
}

/// The largest integer sums of a block: every nibble 15 (and 0) against
/// activations of one sign (all +127 or all -127 after quantizing), which
/// the relaxed prompt block sums in i16 (8 pair sums of at most 3840 a lane),
/// keep the bits of the scalar reference for every batch size.
#[test]
fn packed_matmul_largest_sums() {
    let (rows, cols) = (8, 32 * 3);
    for &ty in &[GgmlType::Q4_0, GgmlType::Q4_1] {
        let bs = ty.type_size();
        for nibbles in [0xffu8, 0x00, 0x0f, 0xf0] {
            let mut data = vec![nibbles; rows * cols / 32 * bs];
            for blk in data.chunks_exact_mut(bs) {
                blk[..2].copy_from_slice(&0x3c00u16.to_le_bytes()); // 1.0
                if ty == GgmlType::Q4_1 {
                    blk[2..4].copy_from_slice(&0xbc00u16.to_le_bytes()); // -1.0
                }
            }
            for sign in [1.0f32, -1.0] {
                for n in [1, 2, 3, 4, 5] {
                    let x = vec![sign * 2.5; n * cols];
                    check_packed(ty, rows, cols, &data, &x, n);
                }
            }
        }
    }
}

/// Q5_0's packed dots at the ends of their ranges (every code 31 or 0,
/// random bytes; activations at +-127) keep the bits of the reference: the
/// relaxed-SIMD path's i16 sums must not overflow.
#[test]
fn packed_q5_0_extreme_codes() {
    let ty = GgmlType::Q5_0;
    let (rows, cols) = (8, 32 * 3);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    let nblk = rows * cols / 32;
    for fill in [Some(0xffu8), Some(0x00), None] {
        let mut data = vec![0u8; nblk * 22];
        for blk in data.chunks_exact_mut(22) {
            blk[..2].copy_from_slice(&0x3c00u16.to_le_bytes());
            for b in &mut blk[2..] {
                *b = fill.unwrap_or_else(&mut random);
            }
        }
        for n in [1, 2, 5] {
            for sign in [1.0f32, -1.0, 0.0] {
                // sign 0: alternating +-1.
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| {
                        if sign == 0.0 {
                            [1.0, -1.0][i % 2]
                        } else {
                            sign
                        }
                    })
                    .collect();
                check_packed(ty, rows, cols, &data, &x, n);
            }
        }
    }
}

/// Real rows (SmolLM2's Q4_1 matrices and Q8_0 embedding, at
/// `$WASM_CHORD_SMOLLM2`; skipped without it): the packed matmul has the
/// bits of the scalar reference.
#[test]
fn packed_matmul_real_rows() {
    let Ok(path) = std::env::var("WASM_CHORD_SMOLLM2") else {
        eprintln!("WASM_CHORD_SMOLLM2 not set; skipped");
        return;
    };
    let bytes = std::fs::read(&path).expect("read the GGUF");
    let src = crate::store::MemSource::new(bytes.clone());
    let g = crate::gguf::GgufFile::parse(&src).expect("parse the GGUF");
    let mut rng = Lcg(13);
    let mut seen = Vec::new();
    for name in [
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.3.ffn_down.weight",
        "blk.5.ffn_gate.weight",
        "token_embd.weight",
    ] {
        let t = g.tensor(name).expect(name);
        if !packed::has_layout(t.ty) {
            continue;
        }
        let cols = t.ne0() as usize;
        let rows = (t.n_rows() as usize).min(203);
        let rb = t.ty.row_bytes(cols as u64).unwrap() as usize;
        let data = &bytes[t.offset as usize..t.offset as usize + rows * rb];
        let x = rng.vec(5 * cols, 2.0);
        check_packed(t.ty, rows, cols, data, &x, 5);
        seen.push(t.ty);
    }
    assert!(seen.contains(&GgmlType::Q4_1) && seen.contains(&GgmlType::Q8_0));
}

/// The Q8_0 decode mat-vec (four rows at a time in simd128) gives every row
/// the bits of the scalar reference, also with subnormal, zero, negative,
/// Inf and NaN scales and -128 bytes, for row counts that leave a tail and
/// rows of several spans of blocks (the simd128 dot's SPAN is 32) with a
/// partial last one, read side by side (in cache) and, past [`IN_CACHE`]
/// bytes, by spans.
#[test]
fn q8_0_matvec_four_rows_bit_identical() {
    let mut rng = Lcg(11);
    let big = [(12, 700), (5, 1600)];
    assert!(big.iter().all(|&(rows, nb)| rows * nb * 34 > IN_CACHE));
    for (rows, nb) in [(1usize, 9usize), (4, 9), (7, 9), (13, 9), (8, 32), (9, 75)]
        .into_iter()
        .chain(big)
    {
        let cols = 32 * nb;
        let mut data = random_matrix(GgmlType::Q8_0, rows, cols, &mut rng);
        let specials: [u16; 8] = [
            0x0001, 0x03ff, 0x0000, 0x8000, 0xbc00, 0x7c00, 0xfc00, 0x7e01,
        ];
        for (i, &h) in specials.iter().enumerate() {
            let b = (i * 5) % (rows * nb);
            data[b * 34..b * 34 + 2].copy_from_slice(&h.to_le_bytes());
            data[b * 34 + 2 + i] = 0x80;
        }
        // A block of -128 only, in the last span of a row.
        let b = rows * nb - 2;
        data[b * 34 + 2..b * 34 + 34].fill(0x80);
        let w = QTensor::new(GgmlType::Q8_0, rows, cols, &data).unwrap();
        let x = rng.vec(cols, 2.0);
        let mut a = QActs::new();
        a.quantize(GgmlType::Q8_0, &x, 1, cols);
        let mut fast = vec![0f32; rows];
        let mut slow = vec![0f32; rows];
        matmul(&mut fast, &w, &a);
        matmul_scalar(&mut slow, &w, &a);
        for (r, (f, s)) in fast.iter().zip(&slow).enumerate() {
            assert_eq!(f.to_bits(), s.to_bits(), "rows {rows}, row {r}: {f} vs {s}");
        }
    }
}

/// Real rows (Gemma 3's Q5_0, Q4_K and Q6_K matrices at
/// `$WASM_CHORD_GEMMA3`; skipped without it): the packed matmul has the
/// bits of the scalar reference.
#[test]
fn packed_k_matmul_real_rows() {
    let Ok(path) = std::env::var("WASM_CHORD_GEMMA3") else {
        eprintln!("WASM_CHORD_GEMMA3 not set; skipped");
        return;
    };
    let bytes = std::fs::read(&path).expect("read the GGUF");
    let src = crate::store::MemSource::new(bytes.clone());
    let g = crate::gguf::GgufFile::parse(&src).expect("parse the GGUF");
    let mut rng = Lcg(14);
    let mut seen = Vec::new();
    for name in [
        "blk.0.attn_q.weight",
        "blk.0.attn_output.weight",
        "blk.0.ffn_down.weight",
        "blk.1.ffn_down.weight",
        "blk.2.ffn_down.weight",
    ] {
        let t = g.tensor(name).expect(name);
        if !PACKED_K_TYPES.contains(&t.ty) {
            continue;
        }
        let cols = t.ne0() as usize;
        let rows = (t.n_rows() as usize).min(203);
        let rb = t.ty.row_bytes(cols as u64).unwrap() as usize;
        let data = &bytes[t.offset as usize..t.offset as usize + rows * rb];
        let x = rng.vec(5 * cols, 2.0);
        check_packed(t.ty, rows, cols, data, &x, 5);
        seen.push(t.ty);
    }
    // Gemma 3 has no Q5_K matrix (the random rows below cover it).
    for ty in [GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        assert!(seen.contains(&ty), "no {ty} matrix checked");
    }
}

/// Random bytes (every quant and scale pattern) with finite scales keep
/// the reference's bits through the `packed_k` layouts; an Inf or NaN
/// scale (or Q4_K minimum scale) leaves the tensor unpacked.
#[test]
fn packed_k_matmul_random_bytes() {
    let mut rng = Lcg(15);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for &ty in PACKED_K_TYPES {
        // Offsets of the block's f16 scales.
        let scales: &[usize] = match ty {
            GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[0],
        };
        let (rows, cols) = (9, unit(ty) * 3);
        let mut data = vec![0u8; rows * cols / ty.block_size() * ty.type_size()];
        for b in data.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let specials: [u16; 7] = [0x0000, 0x8000, 0x0001, 0x83ff, 0x7bff, 0xfbff, 0x0400];
        for (i, blk) in data.chunks_exact_mut(ty.type_size()).enumerate() {
            for &o in scales {
                if i % 3 == 0 {
                    blk[o..o + 2]
                        .copy_from_slice(&specials[(i / 3 + o) % specials.len()].to_le_bytes());
                }
                if u16::from_le_bytes([blk[o], blk[o + 1]]) & 0x7c00 == 0x7c00 {
                    blk[o + 1] ^= 0x40;
                }
            }
        }
        for &o in scales {
            for at in bad_scale_blocks(rows, cols / ty.block_size()) {
                for bad in [0x7c00u16, 0xfc00, 0x7e00] {
                    let mut d = data.clone();
                    d[ty.type_size() * at + o..][..2].copy_from_slice(&bad.to_le_bytes());
                    assert_refuses(ty, d, rows, cols, &format!("{o} of block {at}"));
                }
            }
        }
        // 33: past a tile of vectors.
        for n in [1, 2, 5, 33] {
            let x = rng.vec(n * cols, 1.0);
            check_packed(ty, rows, cols, &data, &x, n);
        }
    }
}

/// The k-quants with batched dots (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): one
/// vector and batches (over a tile of 32 vectors included) give the bits of
/// the scalar reference, as wasm32 SIMD and natively.
#[test]
fn kquant_batched_matmul_bit_identical_to_scalar() {
    let mut rng = Lcg(13);
    for ty in [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        for rows in [1, 5, 16] {
            let cols = unit(ty) * 3;
            let data = random_matrix(ty, rows, cols, &mut rng);
            let w = QTensor::new(ty, rows, cols, &data).unwrap();
            for n in [1, 2, 7, 33] {
                let x = rng.vec(n * cols, 3.0);
                let mut a = QActs::new();
                a.quantize(vec_dot_type(ty), &x, n, cols);
                let mut want = vec![0f32; n * rows];
                matmul_scalar(&mut want, &w, &a);
                let mut got = vec![1f32; n * rows];
                matmul(&mut got, &w, &a);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{ty} {rows}x{cols} n={n}");
            }
        }
    }
}

/// Q8_0 quants of `rows` rows of `nb` blocks (scale 1/64 each) from `q(i)`
/// (i: the quant's index in the matrix), in the GGUF layout.
fn q8_0_rows(rows: usize, nb: usize, q: impl Fn(usize) -> i8) -> Vec<u8> {
    let mut data = Vec::with_capacity(rows * nb * 34);
    for b in 0..rows * nb {
        data.extend_from_slice(&f32_to_f16_le(1.0 / 64.0));
        data.extend((0..32).map(|j| q(32 * b + j) as u8));
    }
    data
}

/// The Q8_0 decode mat-vec at the ends of its ranges: weights all 127,
/// all -127, all -128, alternating 127 / -128, random with a few -128;
/// activations that quantize to all +127, all -127, alternating +-127, or
/// random (negative ones included); rows of 1, 2 and 3 spans of the
/// simd128 dot (32 blocks), row counts with a tail. Every row has the bits
/// of the scalar reference, unpacked and packed, for one vector (in the
/// relaxed-SIMD build the split dot, [`q8::vec_dot4_split`]) and two.
#[test]
fn q8_0_decode_extreme_quants() {
    let mut state = 0x853c_49e6_748f_ea9bu64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut rng = Lcg(21);
    for (rows, nb) in [(4usize, 1usize), (6, 9), (4, 33), (5, 70)] {
        let cols = 32 * nb;
        let seeds: Vec<u64> = (0..rows * cols).map(|_| random()).collect();
        let some_min = |i: usize| {
            if seeds[i].is_multiple_of(997) {
                -128
            } else {
                seeds[i] as i8
            }
        };
        let fills: [(&str, &dyn Fn(usize) -> i8); 5] = [
            ("127", &|_| 127),
            ("-127", &|_| -127),
            ("-128", &|_| -128),
            ("127/-128", &|i| if i % 2 == 0 { 127 } else { -128 }),
            ("random, some -128", &some_min),
        ];
        for (what, q) in &fills {
            let data = q8_0_rows(rows, nb, q);
            let random_x = rng.vec(2 * cols, 3.0);
            let xs: [(&str, Vec<f32>); 4] = [
                ("+", vec![1.5; 2 * cols]),
                ("-", vec![-1.5; 2 * cols]),
                ("+-", (0..2 * cols).map(|i| [2.0, -2.0][i % 2]).collect()),
                ("random", random_x),
            ];
            for (xw, x) in &xs {
                eprintln!("{rows}x{cols} weights {what}, activations {xw}");
                check_packed(GgmlType::Q8_0, rows, cols, &data, &x[..cols], 1);
                check_packed(GgmlType::Q8_0, rows, cols, &data, x, 2);
            }
        }
    }
}

/// The relaxed-SIMD split dot (activations split by sign) has the scalar
/// reference's bits on rows with negative activations and with -128
/// weights anywhere (the sign trick it replaced had to refuse those).
#[cfg(target_feature = "relaxed-simd")]
#[test]
fn q8_0_split_dot_serves_minus_128() {
    let mut rng = Lcg(22);
    let nb = 40;
    let cols = 32 * nb;
    let data = random_matrix(GgmlType::Q8_0, 4, cols, &mut rng);
    let x = rng.vec(cols, 2.0);
    let mut a = QActs::new();
    a.quantize(GgmlType::Q8_0, &x, 1, cols);
    let y = a.vec::<q8::Q8_0Act>(0);
    assert!(y.iter().any(|b| b.qs.iter().any(|&q| q < 0)));
    let ypn = a.split();
    assert_eq!(
        ypn.len(),
        nb,
        "the relaxed build computes the split operands"
    );
    let dot = |data: &[u8]| {
        let blocks: &[q8::BlockQ8_0] = bytemuck::cast_slice(data);
        let rows: [&[q8::BlockQ8_0]; 4] = std::array::from_fn(|r| &blocks[r * nb..(r + 1) * nb]);
        let want = rows.map(|r| q8::Q8_0::vec_dot_scalar(r, y).to_bits());
        (q8::vec_dot4_split(rows, y, ypn).map(f32::to_bits), want)
    };
    let (got, want) = dot(&data);
    assert_eq!(got, want);
    let mut d = data.clone();
    for (r, b, j) in [(0, 0, 0), (1, 17, 31), (2, 39, 16), (3, 20, 5)] {
        d[(r * nb + b) * 34 + 2 + j] = 0x80;
        let (got, want) = dot(&d);
        assert_eq!(got, want, "-128 at row {r} block {b} quant {j}");
    }
    // Every quant of every row -128, against activations of both signs.
    for r in 0..4 {
        for b in 0..nb {
            d[(r * nb + b) * 34 + 2..(r * nb + b + 1) * 34].fill(0x80);
        }
    }
    let (got, want) = dot(&d);
    assert_eq!(got, want, "all -128");
}

/// One Q8_0 decode mat-vec, unpacked and packed, has the same bits in every
/// build (native, wasm32 simd128, wasm32 relaxed SIMD): a hash of them is
/// pinned (each build also checks them against its scalar reference).
#[test]
fn q8_0_decode_same_bits_in_every_build() {
    let mut rng = Lcg(23);
    let (rows, cols) = (22, 32 * 45);
    let mut data = random_matrix(GgmlType::Q8_0, rows, cols, &mut rng);
    data[34 * 50 + 7] = 0x80; // row 1: the i16 dots in the relaxed build
    let x = rng.vec(cols, 2.0);
    let mut a = QActs::new();
    a.quantize(GgmlType::Q8_0, &x, 1, cols);
    let p = packed_copy(GgmlType::Q8_0, rows, cols, &data);
    let w = QTensor::new(GgmlType::Q8_0, rows, cols, &data).unwrap();
    let pw = QTensor {
        packed: true,
        ..QTensor::new(GgmlType::Q8_0, rows, cols, &p).unwrap()
    };
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in [&w, &pw] {
        let mut out = vec![0f32; rows];
        matmul(&mut out, w, &a);
        for v in out {
            for byte in v.to_bits().to_le_bytes() {
                h = (h ^ byte as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    assert_eq!(h, 0x1d09_e97f_8e12_b425, "hash {h:#x}");
}

/// Prompt (32 vectors) Q8_0 matmuls on packed streamed-chunk shapes of the
/// 5.7 GB model (60 x 4032, 20 x 10752) against a resident 1536 x 1536:
/// the median of 9 runs, activations quantized once, as GMAC/s.
#[test]
#[ignore]
fn bench_q8_0_chunk_batch() {
    let mut rng = Lcg(11);
    for (rows, cols) in [(60, 4032), (20, 10752), (1536, 1536)] {
        bench_packed_batch(GgmlType::Q8_0, rows, cols, 32, &mut rng);
    }
}

/// Prompt (32 vectors) matmuls of every type with a packed layout, packed,
/// 2048 x 2048: the median of 9 runs, as GMAC/s. `BENCH_TY=Q4_0`: that
/// type only.
#[test]
#[ignore]
fn bench_packed_prompt() {
    let mut rng = Lcg(14);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        if std::env::var("BENCH_TY").is_ok_and(|t| t != ty.to_string()) {
            continue;
        }
        bench_packed_batch(ty, 2048, 2048, 32, &mut rng);
    }
}

/// Decode (1 vector) and prompt (32 vectors) matmuls of Gemma-3-270M
/// Q4_K_M's packed types and shapes (Q5_0 for the 640-column matrices,
/// Q4_K and Q6_K for the 2048-column FFN down): the median of 9 runs, as
/// GMAC/s.
#[test]
#[ignore]
fn bench_gemma_batch() {
    let mut rng = Lcg(12);
    for (ty, rows, cols) in [
        (GgmlType::Q5_0, 2048, 640),
        (GgmlType::Q4_K, 640, 2048),
        (GgmlType::Q6_K, 640, 2048),
    ] {
        if std::env::var("BENCH_TY").is_ok_and(|t| t != ty.to_string()) {
            continue;
        }
        for n in [1, 32] {
            bench_packed_batch(ty, rows, cols, n, &mut rng);
        }
    }
}

/// Decode (one vector) mat-vecs of every quantized type, as a 1B model's
/// 2048 x 2048 matrices hold them (also packed where the type has a
/// layout, as resident layers run): the median of 9 runs, as GMAC/s.
/// `BENCH_TY=Q4_K`: that type only; `Q8ROWS=16384 Q8COLS=4096`: a matrix
/// beyond the last-level cache, read from memory as a large model's are.
#[test]
#[ignore]
fn bench_kquant_decode() {
    let mut rng = Lcg(13);
    for ty in [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_XS,
        GgmlType::IQ4_NL,
        GgmlType::Q5_1,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
    ] {
        if std::env::var("BENCH_TY").is_ok_and(|t| t != ty.to_string()) {
            continue;
        }
        // `Q8ROWS` / `Q8COLS`: another shape.
        let env = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let (rows, cols) = (env("Q8ROWS", 2048), env("Q8COLS", 2048));
        let data = random_matrix(ty, rows, cols, &mut rng);
        let w = QTensor::new(ty, rows, cols, &data).unwrap();
        let p = packed::has_layout(ty).then(|| packed_copy(ty, rows, cols, &data));
        let pw = p.as_deref().map(|p| QTensor {
            packed: true,
            ..QTensor::new(ty, rows, cols, p).unwrap()
        });
        let mut a = QActs::new();
        a.quantize(vec_dot_type(ty), &rng.vec(cols, 1.0), 1, cols);
        let mut out = vec![0f32; rows];
        let mut paths = vec![("unpacked", &w)];
        if let Some(pw) = &pw {
            paths.push(("packed", pw));
        }
        for (name, w) in paths {
            print_median_gmacs(
                &format!("{ty} {rows}x{cols} n=1 {name}"),
                rows * cols,
                50,
                || matmul(&mut out, w, &a),
            );
        }
    }
}

/// Prints the median speed of 9 runs of packed `ty` matmuls (`rows` x
/// `cols`, `n` vectors, activations quantized once).
fn bench_packed_batch(ty: GgmlType, rows: usize, cols: usize, n: usize, rng: &mut Lcg) {
    let data = random_matrix(ty, rows, cols, rng);
    let p = packed_copy(ty, rows, cols, &data);
    let pw = QTensor {
        packed: true,
        ..QTensor::new(ty, rows, cols, &p).unwrap()
    };
    let mut a = QActs::new();
    a.quantize(vec_dot_type(ty), &rng.vec(n * cols, 1.0), n, cols);
    let mut out = vec![0f32; n * rows];
    let iters = (200_000_000 / (rows * cols * n)).max(1);
    print_median_gmacs(
        &format!("{ty} {rows}x{cols} n={n} packed"),
        rows * cols * n,
        iters,
        || matmul(&mut out, &pw, &a),
    );
}

/// Prints `label`, then the median (min, max) speed of 9 runs of `iters`
/// calls of `f`, each `macs` multiply-adds, as GMAC/s.
fn print_median_gmacs(label: &str, macs: usize, iters: usize, mut f: impl FnMut()) {
    let mut runs: Vec<f64> = (0..9)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..iters {
                f();
            }
            macs as f64 * iters as f64 / t.elapsed().as_nanos() as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    println!(
        "{label}: median {:.2} GMAC/s (min {:.2}, max {:.2})",
        runs[4], runs[0], runs[8]
    );
}
