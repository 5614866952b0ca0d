//! `cargo xtask fetch relaid`: SmolLM2-135M's real weights re-laid in the
//! tensor layouts and metadata of other architectures, as test models.
//!
//! Random weights are useless to test a forward pass (a random network is
//! chaotic: any rounding flips its tokens), and no small real checkpoint of
//! these architectures is at hand. So the generator moves SmolLM2's quantized
//! rows around — moving whole rows of a quantized matrix is exact — and
//! writes files that llama.cpp runs, so its outputs on them are real goldens:
//!
//! - `smollm2-as-phi3.gguf`: fused `attn_qkv` (rows of Q, then K, then V) and
//!   fused `ffn_up` (rows of gate, then up); the same function as SmolLM2.
//! - `smollm2-as-qwen2.gguf`: Q/K/V biases, all zero; the same function.
//! - `smollm2-as-qwen2-bias.gguf`: small deterministic pseudo-random F32
//!   biases: another function, still a working model.
//! - `smollm2-as-qwen3.gguf`: per-head Q/K RMSNorm with unit weights: another
//!   function (q and k are normalized per head), still a working model.
//!
//! llama uses NORM RoPE (rotating pairs 2i, 2i+1) while these architectures
//! use NEOX RoPE (pairs i, i + d/2). llama.cpp's converter permutes the Q/K
//! rows of llama checkpoints so that NORM RoPE computes what HF's rotate-half
//! does; the generator undoes that permutation on Q and K rows, which makes
//! NEOX RoPE compute SmolLM2's function again.
//!
//! No window: llama.cpp reads no `attention.sliding_window` for `llama`
//! (Mistral files are `llama`), `qwen2` or `qwen3`, and disables it for
//! `phi3` — so no sliding-window variant is made.
//!
//! The output is a pure function of the input file: every file is checked
//! against its pinned sha256.

use anyhow::{bail, Context, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use wasm_chord_kernel::ggml_type::GgmlType;
use wasm_chord_kernel::gguf::{GgufFile, GgufWriter, TensorInfo, Value};
use wasm_chord_kernel::store::MemSource;

/// The tensor layout a variant is written in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// Fused `attn_qkv`, fused gate-up `ffn_up`.
    Phi3,
    /// Q/K/V biases; `bias_scale` 0 writes zero biases.
    Qwen2 { bias_scale: f32 },
    /// Per-head Q/K RMSNorm weights (all ones).
    Qwen3,
}

impl Layout {
    fn arch(self) -> &'static str {
        match self {
            Layout::Phi3 => "phi3",
            Layout::Qwen2 { .. } => "qwen2",
            Layout::Qwen3 => "qwen3",
        }
    }
}

/// One generated file.
pub struct Variant {
    pub file: &'static str,
    pub layout: Layout,
    pub sha256: &'static str,
}

/// Amplitude of the pseudo-random biases of `smollm2-as-qwen2-bias.gguf`.
const BIAS_SCALE: f32 = 0.05;

/// The files made from SmolLM2-135M-Instruct Q4_1.
pub const VARIANTS: [Variant; 4] = [
    Variant {
        file: "smollm2-as-phi3.gguf",
        layout: Layout::Phi3,
        sha256: "ac6d2ce40530bee7dc4b29a000ef880f46b6cc47155a9cf8a1e137acede39aa2",
    },
    Variant {
        file: "smollm2-as-qwen2.gguf",
        layout: Layout::Qwen2 { bias_scale: 0.0 },
        sha256: "3b318c4b73dc1894c49c43572c009e13a3a4a99fc3beae008f8c1aaee74ae048",
    },
    Variant {
        file: "smollm2-as-qwen2-bias.gguf",
        layout: Layout::Qwen2 {
            bias_scale: BIAS_SCALE,
        },
        sha256: "34b6e889c614d283fdaaaf9dd9706fe1273dab79c94ad7dd7ece9ef62024affb",
    },
    Variant {
        file: "smollm2-as-qwen3.gguf",
        layout: Layout::Qwen3,
        sha256: "02ef5a5f57b7304b3aca55c81e8b3c43189aa117ca6cee2da0dcf282f2762632",
    },
];

/// Write every variant of [`VARIANTS`] made from `smol` into `dir` unless a
/// file with the pinned sha256 is already there. Returns the directory.
pub fn generate_all(smol: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let mut src: Option<(Vec<u8>, GgufFile)> = None;
    let mut wrong = Vec::new();
    for v in &VARIANTS {
        let dest = dir.join(v.file);
        if dest.is_file() && crate::sha256_file(&dest)? == v.sha256 {
            println!("    {} (verified)", dest.display());
            continue;
        }
        if src.is_none() {
            let bytes =
                std::fs::read(smol).with_context(|| format!("cannot read '{}'", smol.display()))?;
            let g = GgufFile::parse(&MemSource::new(bytes.clone()))
                .map_err(|e| anyhow::anyhow!("{}: {e}", smol.display()))?;
            src = Some((bytes, g));
        }
        let (bytes, g) = src.as_ref().expect("parsed above");
        let w = relay(bytes, g, v.layout)?;
        let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create '{}'", tmp.display()))?;
        let mut out = BufWriter::with_capacity(8 << 20, file);
        w.write_with(&mut out, &mut |_, _| Ok(()))?;
        out.flush()?;
        drop(out);
        let got = crate::sha256_file(&tmp)?;
        if got != v.sha256 {
            let _ = std::fs::remove_file(&tmp);
            wrong.push(format!(
                "{} has sha256 {got}, expected {}",
                v.file, v.sha256
            ));
            continue;
        }
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("cannot move the file to '{}'", dest.display()))?;
        println!("    {} (generated)", dest.display());
    }
    if !wrong.is_empty() {
        bail!("the generator or its input changed: {}", wrong.join("; "));
    }
    Ok(dir.to_path_buf())
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
            .get_u64(k)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_context(|| format!("the source has no {k}"))?;
        Ok(v as usize)
    };
    let n_embd = get("llama.embedding_length")?;
    let n_head = get("llama.attention.head_count")?;
    let n_head_kv = get("llama.attention.head_count_kv")?;
    if n_head == 0 || n_embd % n_head != 0 || (n_embd / n_head) % 2 != 0 {
        bail!("unexpected heads: n_embd {n_embd}, n_head {n_head}");
    }
    Ok(Shape {
        n_head,
        n_head_kv,
        head_dim: n_embd / n_head,
    })
}

/// The data of tensor `t` inside the file bytes.
fn data<'a>(bytes: &'a [u8], t: &TensorInfo) -> &'a [u8] {
    &bytes[t.offset as usize..(t.offset + t.n_bytes) as usize]
}

/// Undo llama.cpp's llama Q/K row permutation: within each head, NEOX row
/// `k < d/2` is the converter's row `2k`, row `d/2 + i` is row `2i + 1`.
fn unpermute_rows(t: &TensorInfo, src: &[u8], n_heads: usize, head_dim: usize) -> Result<Vec<u8>> {
    let rows = t.n_rows() as usize;
    if rows != n_heads * head_dim {
        bail!(
            "{}: {rows} rows, expected {n_heads} heads of {head_dim}",
            t.name
        );
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
        bail!("the source must be a llama model");
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
        .get_u64("llama.context_length")
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .context("the source has no llama.context_length")?;
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
        Layout::Qwen3 => {
            let hd = Value::U32(shape.head_dim as u32);
            w.kv("qwen3.attention.key_length", hd.clone());
            w.kv("qwen3.attention.value_length", hd);
        }
        Layout::Qwen2 { .. } => {}
    }

    let tensor = |name: &str| -> Result<&TensorInfo> {
        g.tensor(name)
            .with_context(|| format!("the source has no tensor {name}"))
    };
    for t in &g.tensors {
        let name = t.name.as_str();
        let Some(rest) = name.strip_prefix("blk.") else {
            w.tensor(name, &t.dims, t.ty, data(bytes, t).to_vec());
            continue;
        };
        let (l, suffix) = rest.split_once('.').context("tensor name")?;
        let l: usize = l.parse().with_context(|| format!("tensor {name}"))?;
        let blk = |s: &str| format!("blk.{l}.{s}");
        let q_rows =
            |t: &TensorInfo| unpermute_rows(t, data(bytes, t), shape.n_head, shape.head_dim);
        let k_rows =
            |t: &TensorInfo| unpermute_rows(t, data(bytes, t), shape.n_head_kv, shape.head_dim);
        match (layout, suffix) {
            (Layout::Phi3, "attn_q.weight") => {
                let (k, v) = (
                    tensor(&blk("attn_k.weight"))?,
                    tensor(&blk("attn_v.weight"))?,
                );
                if k.ty != t.ty || v.ty != t.ty || k.dims[0] != t.dims[0] || v.dims[0] != t.dims[0]
                {
                    bail!("block {l}: Q, K and V differ in type or width: cannot fuse");
                }
                let mut qkv = q_rows(t)?;
                qkv.extend(k_rows(k)?);
                qkv.extend_from_slice(data(bytes, v));
                let rows = t.n_rows() + k.n_rows() + v.n_rows();
                w.tensor(&blk("attn_qkv.weight"), &[t.dims[0], rows], t.ty, qkv);
            }
            (Layout::Phi3, "attn_k.weight" | "attn_v.weight" | "ffn_gate.weight") => {}
            (Layout::Phi3, "ffn_up.weight") => {
                let gate = tensor(&blk("ffn_gate.weight"))?;
                if gate.ty != t.ty || gate.dims != t.dims {
                    bail!("block {l}: gate and up differ in type or shape: cannot fuse");
                }
                let mut gu = data(bytes, gate).to_vec();
                gu.extend_from_slice(data(bytes, t));
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
                w.tensor(name, &t.dims, t.ty, data(bytes, t).to_vec());
                extra_after(&mut w, layout, l, 2, t.n_rows() as usize, shape.head_dim);
            }
            _ => {
                w.tensor(name, &t.dims, t.ty, data(bytes, t).to_vec());
            }
        }
    }
    Ok(w)
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
        Layout::Qwen3 if which < 2 => {
            w.tensor(
                &format!("blk.{l}.{part}_norm.weight"),
                &[hd as u64],
                GgmlType::F32,
                f32_bytes(std::iter::repeat_n(1.0f32, hd)),
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
