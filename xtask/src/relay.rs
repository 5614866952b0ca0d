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
//! - `smollm2-as-qwen3-norms.gguf`: Q/K norm weights near SmolLM2's per-layer
//!   q/k head RMS (with a ripple): normalizing keeps the attention's scale,
//!   a model that writes varied text, and non-unit weights are tested.
//! - `smollm2-as-llama3-ropefreqs.gguf`, `smollm2-as-qwen2-yarn.gguf`: RoPE
//!   scaling (Llama 3.x factors; YaRN).
//! - `smollm2-as-mistral3.gguf`: mistral3 with YaRN (its own betas and log
//!   multiplier), the Llama-4 attention temperature and a declared sliding
//!   window (not enforced by llama.cpp for mistral3 or llama).
//! - `smollm2-as-phi3-longrope.gguf`: phi3 with LongRoPE long/short factors
//!   and attention factor (original context 1024: a context above it takes
//!   the long factors).
//!
//! The rows move in the kernel's `relay` module (Q/K rows are un-permuted
//! for NEOX RoPE there); this file names the variants and pins their hashes.
//!
//! No enforced window: llama.cpp reads no `attention.sliding_window` for
//! `llama` (Mistral 7B files), `mistral3`, `qwen2` or `qwen3`, and disables
//! it for `phi3` — so no variant can test a window against it (Gemma 3's
//! real file does).
//!
//! The output is a pure function of the input file: every file is checked
//! against its pinned sha256.

use anyhow::{bail, Context, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use wasm_chord_kernel::gguf::GgufFile;
use wasm_chord_kernel::relay::{self, Layout};
use wasm_chord_kernel::store::MemSource;

/// One generated file.
pub struct Variant {
    pub file: &'static str,
    pub layout: Layout,
    pub sha256: &'static str,
}

/// Amplitude of the pseudo-random biases of `smollm2-as-qwen2-bias.gguf`.
const BIAS_SCALE: f32 = 0.05;

/// The files made from SmolLM2-135M-Instruct Q4_1.
pub const VARIANTS: [Variant; 9] = [
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
    Variant {
        file: "smollm2-as-qwen3-norms.gguf",
        layout: Layout::Qwen3Norms,
        sha256: "dea66224f004dc25d5e359585e259a07c29ea2fb5c8b37a6dc85f09804343cbf",
    },
    Variant {
        file: "smollm2-as-llama3-ropefreqs.gguf",
        layout: Layout::LlamaRopeFreqs { old_ctx: 128 },
        sha256: "afbcec1f58373b7e835b06b03389805f05f8852be42c1f9de58ff3dea47acbf2",
    },
    Variant {
        file: "smollm2-as-qwen2-yarn.gguf",
        layout: Layout::Qwen2Yarn,
        sha256: "223a3eb8edb919f612f81bed305a729e64b05223dcb0e9fed6d804427831af36",
    },
    Variant {
        file: "smollm2-as-mistral3.gguf",
        layout: Layout::Mistral3,
        sha256: "d39a1c4e3e2aec583e0cf39563a0ed1fa120a49bafe61eadc51a3292326dbcd1",
    },
    Variant {
        file: "smollm2-as-phi3-longrope.gguf",
        layout: Layout::Phi3LongRope,
        sha256: "d8258f826b0812010d120ecbae5165cabbab4d0b3d0914e17c9f56f35ce89e0d",
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
        let w = relay::relay(bytes, g, v.layout).map_err(|e| anyhow::anyhow!("{e}"))?;
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
