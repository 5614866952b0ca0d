//! SmolLM2-style llama models re-laid in the tensor layouts and metadata of
//! other architectures: phi3 (fused `attn_qkv`, fused gate-up `ffn_up`;
//! with LongRoPE factors), qwen2 (Q/K/V biases), qwen3 (per-head Q/K
//! RMSNorm), mistral3 (llama's layout, its YaRN and temperature keys).
//!
//! Moving whole rows of a quantized matrix is exact, so a re-laid file
//! computes the source's function where the layout allows (phi3, qwen2 with
//! zero biases) — a way to test other architectures with real weights
//! (`cargo xtask fetch relaid`) and to compare layouts on synthetic ones.
//!
//! llama uses NORM RoPE (rotating pairs 2i, 2i+1) while these architectures
//! use NEOX RoPE (pairs i, i + d/2). llama.cpp's converter permutes the Q/K
//! rows of llama checkpoints so that NORM RoPE computes what HF's rotate-half
//! does; [`relay`] undoes that permutation on Q and K rows, which makes NEOX
//! RoPE compute the source's function again.

use crate::ggml_type::GgmlType;
use crate::gguf::{GgufFile, GgufWriter, TensorInfo, Value};
use crate::{Error, Result};

/// The tensor layout a variant is written in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// Fused `attn_qkv`, fused gate-up `ffn_up`.
    Phi3,
    /// Q/K/V biases; `bias_scale` 0 writes zero biases.
    Qwen2 { bias_scale: f32 },
    /// Per-head Q/K RMSNorm weights (all ones).
    Qwen3,
    /// Per-head Q/K RMSNorm weights near the RMS that SmolLM2's q and k
    /// heads have in each layer ([`QWEN3_Q_RMS`], [`QWEN3_K_RMS`]) with a
    /// ±10% ripple over the dimensions: normalizing q and k then keeps the
    /// attention's scale, so the model writes varied text (unit weights
    /// flatten attention into a model that repeats newlines), and a kernel
    /// ignoring the weights or their order is caught.
    Qwen3Norms,
    /// qwen2 with zero biases plus YaRN keys (factor 4, original context
    /// 2048): a different function that tests a kernel's YaRN.
    Qwen2Yarn,
    /// Still llama (NORM RoPE, rows untouched) plus a `rope_freqs.weight`
    /// holding Llama 3.x frequency factors ([`llama3_rope_factors`] with
    /// `old_ctx`), which changes the function: tests that a kernel applies them.
    LlamaRopeFreqs { old_ctx: u32 },
    /// mistral3 (llama rows untouched) with Ministral-3-style keys:
    /// [`MISTRAL3_KEYS`] — YaRN with its own betas and log multiplier, the
    /// Llama-4 attention temperature stepping every original context, and a
    /// sliding window that llama.cpp does not enforce for mistral3.
    Mistral3,
    /// [`Layout::Phi3`] plus LongRoPE: `rope_factors_long`/`_short`
    /// ([`longrope_factors`]), an original context of
    /// [`LONGROPE_ORIG_CTX`] and the attention factor Phi-3's converter
    /// derives from it.
    Phi3LongRope,
}

/// Mean per-head RMS of q, per layer, of SmolLM2-135M (Q4_1) before RoPE,
/// measured with an exact float64 forward pass over the first three cases
/// of the re-laid goldens (prompt and llama.cpp's greedy tokens).
pub const QWEN3_Q_RMS: [f32; 30] = [
    1.083, 1.457, 1.418, 1.658, 1.585, 1.618, 1.581, 1.733, 1.655, 1.641, 1.626, 1.447, 1.761,
    1.908, 1.773, 1.797, 2.056, 1.98, 2.0, 2.059, 1.872, 1.829, 1.846, 1.703, 1.758, 2.097, 2.039,
    2.216, 1.886, 1.993,
];
/// The same for k.
pub const QWEN3_K_RMS: [f32; 30] = [
    1.279, 2.207, 2.116, 1.967, 2.045, 1.973, 2.048, 1.96, 1.936, 2.178, 2.294, 2.589, 2.107,
    2.235, 1.987, 2.114, 2.243, 1.906, 2.264, 2.241, 1.986, 2.065, 2.151, 2.004, 1.782, 2.136,
    2.069, 2.274, 1.897, 1.853,
];

/// The q (`which` 0) or k (1) norm weights of block `l` of
/// [`Layout::Qwen3Norms`] for heads of `hd`.
pub fn qwen3_norm_weights(l: usize, which: u64, hd: usize) -> Vec<f32> {
    let table = if which == 0 {
        &QWEN3_Q_RMS
    } else {
        &QWEN3_K_RMS
    };
    let c = table[l % table.len()];
    (0..hd)
        .map(|d| c * (1.0 + 0.1 * ((d % 7) as f32 - 3.0) / 3.0))
        .collect()
}

/// The original context of [`Layout::Mistral3`]: small, so that the
/// temperature steps within short prompts (at 32, 64, ...).
pub const MISTRAL3_ORIG_CTX: u32 = 32;

/// The keys of [`Layout::Mistral3`] beyond llama's (after the arch prefix).
pub fn mistral3_keys() -> Vec<(&'static str, Value)> {
    vec![
        ("rope.scaling.type", Value::String("yarn".into())),
        ("rope.scaling.factor", Value::F32(4.0)),
        (
            "rope.scaling.original_context_length",
            Value::U32(MISTRAL3_ORIG_CTX),
        ),
        ("rope.scaling.yarn_beta_fast", Value::F32(16.0)),
        ("rope.scaling.yarn_beta_slow", Value::F32(2.0)),
        ("rope.scaling.yarn_log_multiplier", Value::F32(1.0)),
        ("attention.temperature_scale", Value::F32(0.5)),
        ("attention.sliding_window", Value::U32(16)),
    ]
}

/// The original context of [`Layout::Phi3LongRope`]: llama.cpp uses the
/// long factors in a context larger than this, the short ones otherwise.
pub const LONGROPE_ORIG_CTX: u32 = 1024;

/// LongRoPE factors of a head of `dim`: (long, short), rising with the pair
/// index as Phi-3-128k's do (long 1 to 8, short 1 to 2, quadratically),
/// large enough in the middle pairs to change short prompts.
pub fn longrope_factors(dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = dim / 2;
    let ramp = |top: f32| -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32 / (n - 1).max(1) as f32;
                1.0 + (top - 1.0) * t * t
            })
            .collect()
    };
    (ramp(8.0), ramp(2.0))
}

impl Layout {
    fn arch(self) -> &'static str {
        match self {
            Layout::Phi3 | Layout::Phi3LongRope => "phi3",
            Layout::Mistral3 => "mistral3",
            Layout::Qwen2 { .. } | Layout::Qwen2Yarn => "qwen2",
            Layout::Qwen3 | Layout::Qwen3Norms => "qwen3",
            Layout::LlamaRopeFreqs { .. } => "llama",
        }
    }
}

/// Hyperparameters of the source needed to move rows.
struct Shape {
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
}

fn read_shape(g: &GgufFile) -> Result<Shape> {
    let get = |k: &str| -> Result<usize> {
        let v = g
            .get_u64(k)?
            .ok_or_else(|| bad(format!("the source has no {k}")))?;
        Ok(v as usize)
    };
    let n_embd = get("llama.embedding_length")?;
    let n_head = get("llama.attention.head_count")?;
    let n_head_kv = get("llama.attention.head_count_kv")?;
    if n_head == 0 || n_embd % n_head != 0 || (n_embd / n_head) % 2 != 0 {
        return Err(bad(format!(
            "unexpected heads: n_embd {n_embd}, n_head {n_head}"
        )));
    }
    Ok(Shape {
        n_head,
        n_head_kv,
        head_dim: n_embd / n_head,
    })
}

fn bad(msg: String) -> Error {
    Error::InvalidModel(format!("relay: {msg}"))
}

/// The data of tensor `t` inside the file bytes.
fn data<'a>(bytes: &'a [u8], t: &TensorInfo) -> Result<&'a [u8]> {
    usize::try_from(t.offset)
        .ok()
        .and_then(|o| bytes.get(o..o.checked_add(t.n_bytes as usize)?))
        .ok_or_else(|| bad(format!("tensor {} is outside the file", t.name)))
}

/// Undo llama.cpp's llama Q/K row permutation: within each head, NEOX row
/// `k < d/2` is the converter's row `2k`, row `d/2 + i` is row `2i + 1`.
fn unpermute_rows(t: &TensorInfo, src: &[u8], n_heads: usize, head_dim: usize) -> Result<Vec<u8>> {
    let rows = t.n_rows() as usize;
    if rows != n_heads * head_dim {
        return Err(bad(format!(
            "{}: {rows} rows, expected {n_heads} heads of {head_dim}",
            t.name
        )));
    }
    let rb = src.len() / rows;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(src.len());
    for h in 0..n_heads {
        for k in 0..head_dim {
            let from = h * head_dim + if k < half { 2 * k } else { 2 * (k - half) + 1 };
            out.extend_from_slice(&src[from * rb..(from + 1) * rb]);
        }
    }
    Ok(out)
}

/// SplitMix64: a tiny deterministic generator for the biases.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale), exactly representable (24-bit grid).
    fn uniform(&mut self, scale: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * scale
    }
}

fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// Bias of `n` values for tensor `which` (0 q, 1 k, 2 v) of block `l`.
fn bias(l: usize, which: u64, n: usize, scale: f32) -> Vec<u8> {
    if scale == 0.0 {
        return vec![0; n * 4];
    }
    let mut rng = SplitMix(0x5EED_0000 ^ ((l as u64) << 8) ^ which);
    f32_bytes((0..n).map(|_| rng.uniform(scale)))
}

/// The re-laid file, in memory.
pub fn relay(bytes: &[u8], g: &GgufFile, layout: Layout) -> Result<GgufWriter> {
    if g.architecture() != Some("llama") {
        return Err(bad("the source must be a llama model".into()));
    }
    let shape = read_shape(g)?;
    let arch = layout.arch();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        if k == "general.alignment" {
            continue;
        }
        let v = if k == "general.architecture" {
            Value::String(arch.into())
        } else {
            v.clone()
        };
        match k.strip_prefix("llama.") {
            Some(rest) => w.kv(&format!("{arch}.{rest}"), v),
            None => w.kv(k, v),
        };
    }
    let ctx = g
        .get_u64("llama.context_length")?
        .ok_or_else(|| bad("the source has no llama.context_length".into()))?;
    match layout {
        Layout::Phi3 => {
            // What Phi-3-mini-4k's conversion declares: the original context
            // and a sliding window (which llama.cpp disables for phi3).
            w.kv(
                "phi3.rope.scaling.original_context_length",
                Value::U32(ctx as u32),
            );
            w.kv("phi3.attention.sliding_window", Value::U32(2047));
        }
        Layout::Phi3LongRope => {
            // What Phi-3-128k's conversion declares: the original context,
            // attn_factor sqrt(1 + ln(ctx / orig) / ln(orig)), the factors.
            let orig = LONGROPE_ORIG_CTX as f64;
            let scale = ctx as f64 / orig;
            let attn = if scale > 1.0 {
                (1.0 + scale.ln() / orig.ln()).sqrt()
            } else {
                1.0
            };
            w.kv(
                "phi3.rope.scaling.original_context_length",
                Value::U32(LONGROPE_ORIG_CTX),
            );
            w.kv("phi3.rope.scaling.attn_factor", Value::F32(attn as f32));
            w.kv("phi3.attention.sliding_window", Value::U32(262144));
            let (long, short) = longrope_factors(shape.head_dim);
            for (name, f) in [
                ("rope_factors_long.weight", long),
                ("rope_factors_short.weight", short),
            ] {
                w.tensor(name, &[f.len() as u64], GgmlType::F32, f32_bytes(f));
            }
        }
        Layout::Mistral3 => {
            for (k, v) in mistral3_keys() {
                w.kv(&format!("mistral3.{k}"), v);
            }
        }
        Layout::Qwen3 | Layout::Qwen3Norms => {
            let hd = Value::U32(shape.head_dim as u32);
            w.kv("qwen3.attention.key_length", hd.clone());
            w.kv("qwen3.attention.value_length", hd);
        }
        Layout::Qwen2Yarn => {
            w.kv("qwen2.rope.scaling.type", Value::String("yarn".into()));
            w.kv("qwen2.rope.scaling.factor", Value::F32(4.0));
            w.kv(
                "qwen2.rope.scaling.original_context_length",
                Value::U32(2048),
            );
        }
        Layout::Qwen2 { .. } | Layout::LlamaRopeFreqs { .. } => {}
    }
    if let Layout::LlamaRopeFreqs { old_ctx } = layout {
        let base = g.get_f32("llama.rope.freq_base")?.unwrap_or(10000.0);
        let f = llama3_rope_factors(base, shape.head_dim, 8.0, 1.0, 4.0, old_ctx as f32);
        w.tensor(
            "rope_freqs.weight",
            &[f.len() as u64],
            GgmlType::F32,
            f32_bytes(f),
        );
    }

    let tensor = |name: &str| -> Result<&TensorInfo> {
        g.tensor(name)
            .ok_or_else(|| bad(format!("the source has no tensor {name}")))
    };
    for t in &g.tensors {
        let name = t.name.as_str();
        let Some(rest) = name.strip_prefix("blk.") else {
            w.tensor(name, &t.dims, t.ty, data(bytes, t)?.to_vec());
            continue;
        };
        let (l, suffix) = rest
            .split_once('.')
            .ok_or_else(|| bad(format!("tensor {name}: no block index")))?;
        let l: usize = l
            .parse()
            .map_err(|_| bad(format!("tensor {name}: bad block index")))?;
        let blk = |s: &str| format!("blk.{l}.{s}");
        let q_rows =
            |t: &TensorInfo| unpermute_rows(t, data(bytes, t)?, shape.n_head, shape.head_dim);
        let k_rows =
            |t: &TensorInfo| unpermute_rows(t, data(bytes, t)?, shape.n_head_kv, shape.head_dim);
        match (layout, suffix) {
            (Layout::LlamaRopeFreqs { .. } | Layout::Mistral3, _) => {
                w.tensor(name, &t.dims, t.ty, data(bytes, t)?.to_vec());
            }
            (Layout::Phi3 | Layout::Phi3LongRope, "attn_q.weight") => {
                let (k, v) = (
                    tensor(&blk("attn_k.weight"))?,
                    tensor(&blk("attn_v.weight"))?,
                );
                if k.ty != t.ty || v.ty != t.ty || k.dims[0] != t.dims[0] || v.dims[0] != t.dims[0]
                {
                    return Err(bad(format!(
                        "block {l}: Q, K and V differ in type or width: cannot fuse"
                    )));
                }
                let mut qkv = q_rows(t)?;
                qkv.extend(k_rows(k)?);
                qkv.extend_from_slice(data(bytes, v)?);
                let rows = t.n_rows() + k.n_rows() + v.n_rows();
                w.tensor(&blk("attn_qkv.weight"), &[t.dims[0], rows], t.ty, qkv);
            }
            (
                Layout::Phi3 | Layout::Phi3LongRope,
                "attn_k.weight" | "attn_v.weight" | "ffn_gate.weight",
            ) => {}
            (Layout::Phi3 | Layout::Phi3LongRope, "ffn_up.weight") => {
                let gate = tensor(&blk("ffn_gate.weight"))?;
                if gate.ty != t.ty || gate.dims != t.dims {
                    return Err(bad(format!(
                        "block {l}: gate and up differ in type or shape: cannot fuse"
                    )));
                }
                let mut gu = data(bytes, gate)?.to_vec();
                gu.extend_from_slice(data(bytes, t)?);
                w.tensor(name, &[t.dims[0], 2 * t.n_rows()], t.ty, gu);
            }
            (_, "attn_q.weight") => {
                w.tensor(name, &t.dims, t.ty, q_rows(t)?);
                extra_after(&mut w, layout, l, 0, t.n_rows() as usize, shape.head_dim);
            }
            (_, "attn_k.weight") => {
                w.tensor(name, &t.dims, t.ty, k_rows(t)?);
                extra_after(&mut w, layout, l, 1, t.n_rows() as usize, shape.head_dim);
            }
            (_, "attn_v.weight") => {
                w.tensor(name, &t.dims, t.ty, data(bytes, t)?.to_vec());
                extra_after(&mut w, layout, l, 2, t.n_rows() as usize, shape.head_dim);
            }
            _ => {
                w.tensor(name, &t.dims, t.ty, data(bytes, t)?.to_vec());
            }
        }
    }
    Ok(w)
}

/// Llama 3.x RoPE frequency factors (what HF's `_compute_llama3_parameters`
/// and llama.cpp's converter write to `rope_freqs`): 1 where the wavelength
/// is below `old_ctx / high`, `factor` above `old_ctx / low`, a smooth blend
/// between. One per rotated pair of a head of `dim`.
pub fn llama3_rope_factors(
    base: f32,
    dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f32,
) -> Vec<f32> {
    let old_ctx = old_ctx as f64;
    let (low_wl, high_wl) = (old_ctx / low, old_ctx / high);
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / (base as f64).powf(2.0 * i as f64 / dim as f64);
            let wl = 2.0 * std::f64::consts::PI / freq;
            let f = if wl < high_wl {
                1.0
            } else if wl > low_wl {
                factor
            } else {
                let smooth = (old_ctx / wl - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// The tensors a layout adds after Q (`which` 0), K (1) or V (2) of block `l`
/// with `rows` output rows: qwen2's biases, qwen3's per-head norms.
fn extra_after(w: &mut GgufWriter, layout: Layout, l: usize, which: u64, rows: usize, hd: usize) {
    let part = ["attn_q", "attn_k", "attn_v"][which as usize];
    match layout {
        Layout::Qwen2 { bias_scale } => {
            w.tensor(
                &format!("blk.{l}.{part}.bias"),
                &[rows as u64],
                GgmlType::F32,
                bias(l, which, rows, bias_scale),
            );
        }
        Layout::Qwen2Yarn => {
            w.tensor(
                &format!("blk.{l}.{part}.bias"),
                &[rows as u64],
                GgmlType::F32,
                bias(l, which, rows, 0.0),
            );
        }
        Layout::Qwen3 if which < 2 => {
            w.tensor(
                &format!("blk.{l}.{part}_norm.weight"),
                &[hd as u64],
                GgmlType::F32,
                f32_bytes(std::iter::repeat_n(1.0f32, hd)),
            );
        }
        Layout::Qwen3Norms if which < 2 => {
            w.tensor(
                &format!("blk.{l}.{part}_norm.weight"),
                &[hd as u64],
                GgmlType::F32,
                f32_bytes(qwen3_norm_weights(l, which, hd)),
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_moves_whole_rows() {
        // 1 head of 4 rows, 1 byte each: converter rows [a0 b0 a1 b1] -> [a0 a1 b0 b1].
        let t = TensorInfo {
            name: "t".into(),
            dims: vec![1, 4],
            ty: GgmlType::F32,
            offset: 0,
            n_bytes: 4,
        };
        let out = unpermute_rows(&t, &[10, 20, 11, 21], 1, 4).unwrap();
        assert_eq!(out, vec![10, 11, 20, 21]);
    }

    #[test]
    fn llama3_factors_match_hf() {
        // Llama 3.1's rope_scaling (factor 8, low 1, high 4, old context
        // 8192), base 500000, head 128: HF's inv_freq / scaled inv_freq.
        let f = llama3_rope_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        // A pair in the blend: wavelength 2π·500000^(2i/128) between 2048 and 8192.
        let i = (0..64)
            .find(|&i| {
                let wl = 2.0 * std::f64::consts::PI * 500000f64.powf(2.0 * i as f64 / 128.0);
                wl > 2048.0 && wl < 8192.0
            })
            .unwrap();
        let wl = 2.0 * std::f64::consts::PI * 500000f64.powf(2.0 * i as f64 / 128.0);
        let smooth = (8192.0 / wl - 1.0) / 3.0;
        let want = 1.0 / ((1.0 - smooth) / 8.0 + smooth);
        assert!((f[i] as f64 - want).abs() < 1e-5 && f[i] > 1.0 && f[i] < 8.0);
    }

    #[test]
    fn biases_are_deterministic_and_small() {
        let a = bias(3, 1, 64, 0.5);
        assert_eq!(a, bias(3, 1, 64, 0.5));
        assert_ne!(a, bias(3, 2, 64, 0.5));
        let vals: Vec<f32> = a
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(vals.iter().all(|v| v.abs() <= 0.5));
        assert!(vals.iter().any(|v| *v != 0.0));
        assert!(bias(0, 0, 8, 0.0).iter().all(|&b| b == 0));
    }
}
