//! qwen2, qwen3 and phi3 on a synthetic llama model re-laid by
//! [`crate::relay`]: fused views, biases, q/k norms, NEOX RoPE, metadata errors.

use super::config::{Arch, RopeStyle};
use super::*;
use crate::ggml_type::GgmlType;
use crate::gguf::{GgufFile, GgufWriter, Value};
use crate::relay::{self, Layout};
use crate::store::MemSource;
use crate::synth::{self, SynthArch, SynthSpec, SynthVocab};

fn llama_bytes() -> Vec<u8> {
    let spec = SynthSpec {
        n_layers: 2,
        n_embd: 64,
        n_ff: 128,
        n_head: 4,
        n_head_kv: 2,
        weight_type: GgmlType::Q8_0,
        separate_output: false,
        seed: 5,
        arch: SynthArch::Llama,
    };
    synth::to_bytes(&spec, &SynthVocab::bytes())
}

fn relaid(layout: Layout) -> GgufWriter {
    let bytes = llama_bytes();
    let g = GgufFile::parse(&MemSource::new(bytes.clone())).unwrap();
    relay::relay(&bytes, &g, layout).unwrap()
}

fn load(bytes: Vec<u8>) -> Result<Model> {
    Model::load(Box::new(MemSource::new(bytes)), &LoadOptions::default())
}

/// Logits of every position of a fixed token list, in one batch.
fn logits(m: &Model) -> Vec<f32> {
    logits_ctx(m, 20)
}

/// [`logits`] in a session of `n_ctx` positions.
fn logits_ctx(m: &Model, n_ctx: u32) -> Vec<f32> {
    let toks: Vec<u32> = (0..20u32).map(|i| (i * 29 + 3) % 256).collect();
    let mut s = Session::new(m, n_ctx).unwrap();
    let mut out = Vec::new();
    s.eval(m, &toks, 0, &mut |_, l| out.extend_from_slice(l))
        .unwrap();
    out
}

#[test]
fn configs_follow_the_architecture() {
    let phi3 = load(relaid(Layout::Phi3).to_bytes()).unwrap();
    let c = &phi3.cfg;
    assert_eq!((c.kind, c.rope_style), (Arch::Phi3, RopeStyle::Neox));
    assert!(c.fused_qkv && c.fused_gate_up && !c.qk_norm);
    assert_eq!(c.n_swa, 0, "llama.cpp disables phi3's sliding window");

    let qwen2 = load(relaid(Layout::Qwen2 { bias_scale: 0.05 }).to_bytes()).unwrap();
    let c = &qwen2.cfg;
    assert_eq!((c.kind, c.rope_style), (Arch::Qwen2, RopeStyle::Neox));
    assert!(!c.fused_qkv && !c.fused_gate_up && !c.qk_norm);

    let qwen3 = load(relaid(Layout::Qwen3).to_bytes()).unwrap();
    let c = &qwen3.cfg;
    assert_eq!((c.kind, c.rope_style), (Arch::Qwen3, RopeStyle::Neox));
    assert!(c.qk_norm && !c.fused_qkv);
}

#[test]
fn fused_views_equal_separate_tensors_bit_for_bit() {
    // phi3's fused rows are the same bytes as qwen2's separate tensors, and
    // zero biases add nothing: the two files compute the same logits.
    let phi3 = logits(&load(relaid(Layout::Phi3).to_bytes()).unwrap());
    let qwen2 = logits(&load(relaid(Layout::Qwen2 { bias_scale: 0.0 }).to_bytes()).unwrap());
    assert!(phi3.iter().all(|x| x.is_finite()));
    assert_eq!(phi3, qwen2);
}

#[test]
fn neox_on_unpermuted_rows_is_the_llama_function() {
    // Un-permuting Q/K rows turns NORM RoPE into NEOX RoPE exactly (up to the
    // order of float sums): the re-laid model is the source model.
    let llama = logits(&load(llama_bytes()).unwrap());
    let qwen2 = logits(&load(relaid(Layout::Qwen2 { bias_scale: 0.0 }).to_bytes()).unwrap());
    let max = llama
        .iter()
        .zip(&qwen2)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-3, "max |Δ logit| {max}");
}

#[test]
fn biases_and_qk_norms_change_the_function() {
    let zero = logits(&load(relaid(Layout::Qwen2 { bias_scale: 0.0 }).to_bytes()).unwrap());
    let bias = logits(&load(relaid(Layout::Qwen2 { bias_scale: 0.5 }).to_bytes()).unwrap());
    let qwen3 = logits(&load(relaid(Layout::Qwen3).to_bytes()).unwrap());
    let differs = |a: &[f32], b: &[f32]| a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-3);
    assert!(bias.iter().chain(&qwen3).all(|x| x.is_finite()));
    assert!(differs(&zero, &bias), "the biases were not applied");
    assert!(differs(&zero, &qwen3), "the q/k norms were not applied");
    let weighted = logits(&load(relaid(Layout::Qwen3Norms).to_bytes()).unwrap());
    assert!(weighted.iter().all(|x| x.is_finite()));
    assert!(
        differs(&qwen3, &weighted),
        "the q/k norm weights were not applied"
    );
}

/// `w` with metadata `key` set to `v` (replacing it when present).
fn with_kv(w: &GgufWriter, key: &str, v: Value) -> Vec<u8> {
    let bytes = w.to_bytes();
    let g = GgufFile::parse(&MemSource::new(bytes.clone())).unwrap();
    let mut out = GgufWriter::new();
    for (k, val) in g.metadata.iter().filter(|(k, _)| k != key) {
        out.kv(k, val.clone());
    }
    out.kv(key, v);
    for t in &g.tensors {
        let d = &bytes[t.offset as usize..(t.offset + t.n_bytes) as usize];
        out.tensor(&t.name, &t.dims, t.ty, d.to_vec());
    }
    out.to_bytes()
}

fn load_err(bytes: Vec<u8>) -> Error {
    match load(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn unsupported_and_invalid_metadata_are_typed_errors() {
    let phi3 = relaid(Layout::Phi3);
    // LongRoPE factors of the wrong length, or not positive, are named.
    for (dims, value) in [(4u64, 1.0f32), (8, 0.0)] {
        let mut w = phi3.clone();
        w.tensor(
            "rope_factors_long.weight",
            &[dims],
            GgmlType::F32,
            value
                .to_le_bytes()
                .repeat(dims as usize)
                .into_iter()
                .collect(),
        );
        let e = load_err(w.to_bytes());
        assert!(
            matches!(&e, Error::InvalidModel(m) if m.contains("rope_factors_long")),
            "{e}"
        );
    }
    // An attention factor alone loads (Phi-3 128k's rope.scaling.attn_factor).
    let m = load(with_kv(
        &phi3,
        "phi3.rope.scaling.attn_factor",
        Value::F32(1.19),
    ))
    .unwrap();
    assert_eq!(m.cfg.yarn.attn_factor, 1.19);
    // Unknown RoPE scaling and mixtures of experts are refused by name.
    let e = load_err(with_kv(
        &phi3,
        "phi3.rope.scaling.type",
        Value::String("dynamic".into()),
    ));
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("dynamic")),
        "{e}"
    );
    let e = load_err(with_kv(&phi3, "phi3.expert_count", Value::U32(8)));
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("mixture-of-experts")),
        "{e}"
    );
    // mistral3's temperature must be a number.
    let m3 = relaid(Layout::Mistral3);
    let e = load_err(with_kv(
        &m3,
        "mistral3.attention.temperature_scale",
        Value::F32(f32::NAN),
    ));
    assert!(
        matches!(&e, Error::InvalidModel(m) if m.contains("temperature_scale")),
        "{e}"
    );

    // qwen rotates whole heads.
    let qwen2 = relaid(Layout::Qwen2 { bias_scale: 0.0 });
    let e = load_err(with_kv(&qwen2, "qwen2.rope.dimension_count", Value::U32(8)));
    assert!(
        matches!(&e, Error::InvalidModel(m) if m.contains("rope.dimension_count")),
        "{e}"
    );

    // A bias of the wrong length is named.
    let bytes = qwen2.to_bytes();
    let g = GgufFile::parse(&MemSource::new(bytes.clone())).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.kv(k, v.clone());
    }
    for t in &g.tensors {
        let d = bytes[t.offset as usize..(t.offset + t.n_bytes) as usize].to_vec();
        if t.name == "blk.1.attn_k.bias" {
            w.tensor(&t.name, &[8], t.ty, vec![0; 32]);
        } else {
            w.tensor(&t.name, &t.dims, t.ty, d);
        }
    }
    let e = load_err(w.to_bytes());
    assert!(
        matches!(&e, Error::InvalidModel(m) if m.contains("blk.1.attn_k.bias")),
        "{e}"
    );
}

#[test]
fn longrope_takes_the_long_factors_above_the_original_context() {
    let m = load(relaid(Layout::Phi3LongRope).to_bytes()).unwrap();
    let c = &m.cfg;
    let (long, short) = relay::longrope_factors(c.head_dim);
    assert!(c.longrope && c.rope_freq_factors.is_empty());
    assert_eq!(
        (&c.rope_factors_long, &c.rope_factors_short),
        (&long, &short)
    );
    assert_eq!(c.yarn.n_ctx_orig, relay::LONGROPE_ORIG_CTX as usize);
    let orig = relay::LONGROPE_ORIG_CTX as usize;
    assert_eq!(c.rope_factors(orig), &short[..]);
    assert_eq!(c.rope_factors(orig + 1), &long[..]);
    // The session's context decides: the same tokens, other logits.
    let a = logits_ctx(&m, orig as u32);
    let b = logits_ctx(&m, orig as u32 + 1);
    assert!(a.iter().chain(&b).all(|x| x.is_finite()));
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
    // Without LongRoPE factors phi3 uses none (rope_freqs is not phi3's).
    let plain = load(relaid(Layout::Phi3).to_bytes()).unwrap();
    assert!(plain.cfg.rope_factors(1 << 20).is_empty());
}

#[test]
fn mistral3_reads_yarn_and_temperature_keys() {
    let m = load(relaid(Layout::Mistral3).to_bytes()).unwrap();
    let c = &m.cfg;
    assert_eq!((c.kind, c.rope_style), (Arch::Mistral3, RopeStyle::Norm));
    assert_eq!((c.yarn.beta_fast, c.yarn.beta_slow), (16.0, 2.0));
    assert_eq!(c.yarn.ext_factor, 1.0);
    // log multiplier 1: get_mscale(4, 1) / get_mscale(4, 1), over the
    // 1 + 0.1 ln 4 that ggml's rope_yarn multiplies in again.
    let want = 1.0 / (1.0 + 0.1 * 4f32.ln());
    assert!(
        (c.yarn.attn_factor - want).abs() < 1e-6,
        "{}",
        c.yarn.attn_factor
    );
    assert_eq!(c.rope_freq_scale, 0.25);
    let t = c.attn_temp.expect("temperature");
    assert_eq!(t.floor, relay::MISTRAL3_ORIG_CTX as usize);
    assert_eq!((t.at(0), t.at(31)), (1.0, 1.0));
    assert!((t.at(32) - (1.0 + 0.5 * 2f32.ln())).abs() < 1e-6);
    assert!((t.at(64) - (1.0 + 0.5 * 3f32.ln())).abs() < 1e-6);
    // The declared window is not enforced (as llama.cpp: no SWA for mistral3).
    assert_eq!(c.n_swa, 0);
    // Without the log multiplier, YaRN's own magnitude scaling stays.
    let plain = load(with_kv(
        &relaid(Layout::Mistral3),
        "mistral3.rope.scaling.yarn_log_multiplier",
        Value::F32(0.0),
    ))
    .unwrap();
    assert_eq!(plain.cfg.yarn.attn_factor, 1.0);
}

#[test]
fn llama_reads_rope_scaling_as_llama_cpp() {
    let llama = relaid(Layout::LlamaRopeFreqs { old_ctx: 128 });
    // No scaling type: llama.cpp's default is linear, so a factor alone scales.
    let m = load(with_kv(
        &llama,
        "llama.rope.scaling.factor",
        Value::F32(2.0),
    ))
    .unwrap();
    assert_eq!(m.cfg.rope_freq_scale, 0.5);
    assert!(!m.cfg.longrope && !m.cfg.rope_freq_factors.is_empty());
    // longrope: the long/short factors, and not rope_freqs (which llama.cpp
    // does not create then).
    let bytes = with_kv(
        &llama,
        "llama.rope.scaling.type",
        Value::String("longrope".into()),
    );
    let g = GgufFile::parse(&MemSource::new(bytes.clone())).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.kv(k, v.clone());
    }
    for t in &g.tensors {
        let d = &bytes[t.offset as usize..(t.offset + t.n_bytes) as usize];
        w.tensor(&t.name, &t.dims, t.ty, d.to_vec());
    }
    let n = g.tensor("rope_freqs.weight").unwrap().dims[0] as usize;
    let long: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
    w.tensor(
        "rope_factors_long.weight",
        &[n as u64],
        GgmlType::F32,
        long.iter().flat_map(|f| f.to_le_bytes()).collect(),
    );
    let m = load(w.to_bytes()).unwrap();
    let c = &m.cfg;
    assert!(c.longrope && c.rope_freq_factors.is_empty());
    assert_eq!(c.rope_factors_long, long);
    assert!(c.rope_factors_short.is_empty());
    assert_eq!(c.rope_factors(c.yarn.n_ctx_orig + 1), &long[..]);
    assert!(c.rope_factors(c.yarn.n_ctx_orig).is_empty());
}
