//! Synthetic GGUF models (llama, or gemma3) with seeded random weights.
//!
//! For tests (a tiny model that loads in milliseconds) and for the large-model
//! benchmark (a multi-GiB file whose tensors sit beyond 4 GiB), written
//! tensor by tensor so a huge file never sits in memory.

use crate::ggml_type::GgmlType;
use crate::gguf::{GgufFile, GgufWriter, Value};
use crate::quant;
use crate::{Error, Result};
use std::io::Write;

/// Shape and weight type of a synthetic model.
#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub n_layers: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Type of the 2-D weights (norms are F32).
    pub weight_type: GgmlType,
    /// Write a separate `output.weight` (else the embedding is tied).
    pub separate_output: bool,
    pub seed: u64,
    /// Architecture and its options.
    pub arch: SynthArch,
}

/// The architecture of a synthetic model.
#[derive(Clone, Debug, PartialEq)]
pub enum SynthArch {
    /// llama: head width n_embd / n_head.
    Llama,
    /// gemma3 with heads of `head_dim` (any width), q/k norms and post-norms;
    /// a sliding window of `n_swa` (0: none) on the layers that
    /// `sliding_window_pattern = swa_period` selects; optional final soft cap.
    Gemma3 {
        head_dim: usize,
        n_swa: u32,
        swa_period: u32,
        final_softcap: Option<f32>,
    },
}

impl SynthArch {
    fn name(&self) -> &'static str {
        match self {
            SynthArch::Llama => "llama",
            SynthArch::Gemma3 { .. } => "gemma3",
        }
    }
}

/// Tokenizer metadata to embed.
#[derive(Clone, Debug)]
pub struct SynthVocab {
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: u32,
    pub eos: u32,
    pub chat_template: Option<String>,
}

impl SynthVocab {
    /// A byte-level GPT-2 vocabulary of 256 byte tokens plus `<s>` and `</s>`, no merges.
    pub fn bytes() -> SynthVocab {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_byte_char(b).to_string()).collect();
        tokens.push("<s>".into());
        tokens.push("</s>".into());
        let mut token_types = vec![1; 256];
        token_types.extend([3, 3]);
        SynthVocab {
            pre: "gpt2".into(),
            tokens,
            token_types,
            merges: vec![],
            bos: 256,
            eos: 257,
            chat_template: None,
        }
    }

    /// The tokenizer metadata of an existing GGUF model (gpt2 vocabularies).
    pub fn from_gguf(g: &GgufFile) -> Result<SynthVocab> {
        let strings = |k: &str| -> Vec<String> {
            g.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let tokens = strings("tokenizer.ggml.tokens");
        if tokens.is_empty() {
            return Err(Error::InvalidModel(
                "source model has no tokenizer.ggml.tokens".into(),
            ));
        }
        Ok(SynthVocab {
            pre: g
                .get_str("tokenizer.ggml.pre")?
                .unwrap_or("default")
                .to_string(),
            token_types: g
                .get("tokenizer.ggml.token_type")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_i64().map(|x| x as i32))
                        .collect()
                })
                .unwrap_or_default(),
            merges: strings("tokenizer.ggml.merges"),
            bos: g.get_u64("tokenizer.ggml.bos_token_id")?.unwrap_or(1) as u32,
            eos: g.get_u64("tokenizer.ggml.eos_token_id")?.unwrap_or(2) as u32,
            chat_template: g.get_str("tokenizer.chat_template")?.map(String::from),
            tokens,
        })
    }
}

/// GPT-2's byte encoder: printable bytes map to themselves, the rest to U+0100.. in order.
fn gpt2_byte_char(b: u8) -> char {
    let printable = |c: u8| {
        (b'!'..=b'~').contains(&c) || (0xA1..=0xAC).contains(&c) || (0xAE..=0xFF).contains(&c)
    };
    if printable(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

/// The tensors of the model: (name, dims ne0-first, type).
fn tensor_list(s: &SynthSpec, n_vocab: usize) -> Vec<(String, Vec<u64>, GgmlType)> {
    let hd = match s.arch {
        SynthArch::Llama => s.n_embd / s.n_head,
        SynthArch::Gemma3 { head_dim, .. } => head_dim,
    } as u64;
    let gemma = s.arch != SynthArch::Llama;
    let (d, ff) = (s.n_embd as u64, s.n_ff as u64);
    let (q, kv) = (hd * s.n_head as u64, hd * s.n_head_kv as u64);
    let w = s.weight_type;
    let mut t = vec![("token_embd.weight".to_string(), vec![d, n_vocab as u64], w)];
    for l in 0..s.n_layers {
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        t.push((p("attn_norm"), vec![d], GgmlType::F32));
        t.push((p("attn_q"), vec![d, q], w));
        t.push((p("attn_k"), vec![d, kv], w));
        t.push((p("attn_v"), vec![d, kv], w));
        if gemma {
            t.push((p("attn_q_norm"), vec![hd], GgmlType::F32));
            t.push((p("attn_k_norm"), vec![hd], GgmlType::F32));
        }
        t.push((p("attn_output"), vec![q, d], w));
        if gemma {
            t.push((p("post_attention_norm"), vec![d], GgmlType::F32));
        }
        t.push((p("ffn_norm"), vec![d], GgmlType::F32));
        t.push((p("ffn_gate"), vec![d, ff], w));
        t.push((p("ffn_up"), vec![d, ff], w));
        t.push((p("ffn_down"), vec![ff, d], w));
        if gemma {
            t.push((p("post_ffw_norm"), vec![d], GgmlType::F32));
        }
    }
    t.push(("output_norm.weight".into(), vec![d], GgmlType::F32));
    if s.separate_output {
        t.push(("output.weight".into(), vec![d, n_vocab as u64], w));
    }
    t
}

/// The writer with all metadata and tensor declarations (data comes from [`write`]).
pub fn writer(s: &SynthSpec, v: &SynthVocab) -> GgufWriter {
    let a = s.arch.name();
    let key = |k: &str| format!("{a}.{k}");
    let mut w = GgufWriter::new();
    w.kv("general.architecture", a.into())
        .kv(
            "general.name",
            format!("synthetic-{}L-{}d-{}", s.n_layers, s.n_embd, s.weight_type).into(),
        )
        .kv(&key("block_count"), (s.n_layers as u32).into())
        .kv(&key("context_length"), 4096u32.into())
        .kv(&key("embedding_length"), (s.n_embd as u32).into())
        .kv(&key("feed_forward_length"), (s.n_ff as u32).into())
        .kv(&key("attention.head_count"), (s.n_head as u32).into())
        .kv(&key("attention.head_count_kv"), (s.n_head_kv as u32).into());
    match s.arch {
        SynthArch::Llama => {
            w.kv(&key("rope.freq_base"), 10000.0f32.into())
                .kv(&key("attention.layer_norm_rms_epsilon"), 1e-5f32.into());
        }
        SynthArch::Gemma3 {
            head_dim,
            n_swa,
            swa_period,
            final_softcap,
        } => {
            w.kv(&key("rope.freq_base"), 1e6f32.into())
                .kv(&key("attention.layer_norm_rms_epsilon"), 1e-6f32.into())
                .kv(&key("attention.key_length"), (head_dim as u32).into())
                .kv(&key("attention.value_length"), (head_dim as u32).into())
                .kv(&key("attention.sliding_window"), n_swa.into())
                .kv(&key("attention.sliding_window_pattern"), swa_period.into());
            if let Some(cap) = final_softcap {
                w.kv(&key("final_logit_softcapping"), cap.into());
            }
        }
    }
    w.kv("tokenizer.ggml.model", "gpt2".into())
        .kv("tokenizer.ggml.pre", v.pre.clone().into())
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(v.tokens.iter().map(|t| Value::String(t.clone())).collect()),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(v.token_types.iter().map(|&t| Value::I32(t)).collect()),
        )
        .kv(
            "tokenizer.ggml.merges",
            Value::Array(v.merges.iter().map(|t| Value::String(t.clone())).collect()),
        )
        .kv("tokenizer.ggml.bos_token_id", v.bos.into())
        .kv("tokenizer.ggml.eos_token_id", v.eos.into())
        .kv("tokenizer.ggml.add_bos_token", false.into());
    if let Some(t) = &v.chat_template {
        w.kv("tokenizer.chat_template", t.clone().into());
    }
    for (name, dims, ty) in tensor_list(s, v.tokens.len()) {
        w.tensor_decl(&name, &dims, ty);
    }
    w
}

/// A small, fast, seeded generator (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Write the whole model to `out`, tensor by tensor (bounded memory).
pub fn write<W: Write>(s: &SynthSpec, v: &SynthVocab, out: &mut W) -> std::io::Result<()> {
    let list = tensor_list(s, v.tokens.len());
    let w = writer(s, v);
    let mut rng = Rng(s.seed);
    w.write_with(out, &mut |i, out| {
        let (name, dims, ty) = &list[i];
        let cols = dims[0] as usize;
        let rows = dims.get(1).copied().unwrap_or(1) as usize;
        if dims.len() == 1 {
            let x: Vec<f32> = (0..cols).map(|_| 1.0 + 0.1 * rng.next_f32()).collect();
            return out.write_all(&quant::quantize_weights(*ty, &x));
        }
        // Scaled so activations neither vanish nor explode through the layers.
        let scale = if name == "token_embd.weight" {
            1.0
        } else {
            1.5 / (cols as f32).sqrt()
        };
        let chunk_rows = (1 << 20) / cols.max(1) + 1;
        let mut r = 0;
        while r < rows {
            let n = chunk_rows.min(rows - r);
            let x: Vec<f32> = (0..n * cols).map(|_| scale * rng.next_f32()).collect();
            out.write_all(&quant::quantize_weights(*ty, &x))?;
            r += n;
        }
        Ok(())
    })
}

/// The whole model in memory (small models).
pub fn to_bytes(s: &SynthSpec, v: &SynthVocab) -> Vec<u8> {
    let mut out = Vec::new();
    write(s, v, &mut out).expect("writing to a Vec cannot fail");
    out
}
