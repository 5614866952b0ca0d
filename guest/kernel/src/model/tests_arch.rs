//! Per-architecture options on synthetic models: gemma3's head width, sliding
//! window, soft-capping, and its metadata errors.

use super::config::{Arch, Config, FfnAct, RopeStyle};
use super::*;
use crate::ggml_type::GgmlType;
use crate::gguf::{GgufFile, GgufWriter};
use crate::store::MemSource;
use crate::synth::{self, SynthArch, SynthSpec, SynthVocab};

/// A gemma3 model whose heads (32 wide, 4 of them) are not n_embd / n_head.
fn gemma(n_layers: usize, n_swa: u32, swa_period: u32, cap: Option<f32>) -> SynthSpec {
    SynthSpec {
        n_layers,
        n_embd: 64,
        n_ff: 128,
        n_head: 4,
        n_head_kv: 2,
        weight_type: GgmlType::Q8_0,
        separate_output: false,
        seed: 11,
        arch: SynthArch::Gemma3 {
            head_dim: 32,
            n_swa,
            swa_period,
            final_softcap: cap,
        },
    }
}

fn load(spec: &SynthSpec, opts: &LoadOptions) -> Model {
    let bytes = synth::to_bytes(spec, &SynthVocab::bytes());
    Model::load(Box::new(MemSource::new(bytes)), opts).expect("load synthetic model")
}

/// Logits of every position of `tokens`, evaluated `step` tokens at a time.
fn all_logits(m: &Model, tokens: &[u32], step: usize) -> Vec<f32> {
    let mut s = Session::new(m, tokens.len() as u32).unwrap();
    let mut out = Vec::new();
    for chunk in tokens.chunks(step) {
        s.eval(m, chunk, 0, &mut |_, l| out.extend_from_slice(l))
            .unwrap();
    }
    out
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % 256).collect()
}

#[test]
fn gemma3_config_from_metadata() {
    let m = load(&gemma(7, 5, 3, Some(30.0)), &LoadOptions::default());
    let c = &m.cfg;
    assert_eq!(c.kind, Arch::Gemma3);
    assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (32, 128, 64));
    assert_eq!(c.rope_style, RopeStyle::Neox);
    assert_eq!(c.ffn_act, FfnAct::GeluTanh);
    assert!(c.qk_norm && c.post_norms);
    assert_eq!(c.embd_scale, 8.0);
    assert_eq!(c.attn_scale, 1.0 / 32f32.sqrt());
    assert_eq!(c.final_softcap, Some(30.0));
    assert_eq!(c.attn_softcap, None);
    // Period 3: layers 2 and 5 are global, the others slide.
    let swa: Vec<bool> = (0..7).map(|l| c.window(l).is_some()).collect();
    assert_eq!(swa, [true, true, false, true, true, false, true]);
    assert_eq!(c.rope_of(0), (10000.0, 1.0));
    assert_eq!(c.rope_of(2), (1e6, 1.0));
    assert_eq!(c.window(0), Some(5));
}

#[test]
fn gemma3_batched_equals_token_by_token_past_the_window() {
    let spec = gemma(4, 6, 2, None);
    let m = load(&spec, &LoadOptions::default());
    let toks = tokens(45);
    let batched = all_logits(&m, &toks, 45);
    assert!(batched.iter().all(|x| x.is_finite()));
    assert_eq!(all_logits(&m, &toks, 1), batched);
    assert_eq!(all_logits(&m, &toks, 7), batched);
    let streamed = load(
        &spec,
        &LoadOptions {
            residency: Residency::Stream,
            cache_layers: 2,
            ..Default::default()
        },
    );
    assert!(streamed.info.streamed);
    assert_eq!(all_logits(&streamed, &toks, 45), batched);
}

/// With every layer sliding (period 0) over a window of W, position p sees
/// positions down to p - L (W - 1) and no further: changing token 0 changes
/// the logits at p = L (W - 1), and leaves those after it bit for bit alone.
#[test]
fn sliding_window_reach_is_exact() {
    let (n_layers, w) = (3usize, 5usize);
    let m = load(&gemma(n_layers, w as u32, 0, None), &LoadOptions::default());
    assert!((0..n_layers).all(|l| m.cfg.window(l) == Some(w)));
    let a = tokens(24);
    let mut b = a.clone();
    b[0] = (a[0] + 1) % 256;
    let (la, lb) = (all_logits(&m, &a, 24), all_logits(&m, &b, 24));
    let v = m.cfg.n_vocab;
    let row = |x: &[f32], p: usize| x[p * v..(p + 1) * v].to_vec();
    let reach = n_layers * (w - 1);
    for p in 0..a.len() {
        if p <= reach {
            assert_ne!(row(&la, p), row(&lb, p), "position {p} should see token 0");
        } else {
            assert_eq!(
                row(&la, p),
                row(&lb, p),
                "position {p} should not see token 0"
            );
        }
    }
}

#[test]
fn final_softcap_caps_the_logits() {
    let cap = 0.5;
    let plain = load(&gemma(2, 0, 6, None), &LoadOptions::default());
    let capped = load(&gemma(2, 0, 6, Some(cap)), &LoadOptions::default());
    let toks = tokens(9);
    let (lp, lc) = (all_logits(&plain, &toks, 9), all_logits(&capped, &toks, 9));
    assert!(lp.iter().any(|x| x.abs() > cap));
    for (&p, &c) in lp.iter().zip(&lc) {
        assert!(c.abs() <= cap);
        assert_eq!(c, (p * (1.0 / cap)).tanh() * cap);
    }
}

/// Config of a gemma3 header (no tensors) with `extra` keys set or replaced.
fn gemma_meta(extra: &[(&str, crate::gguf::Value)]) -> Result<Config> {
    let mut kvs: Vec<(&str, crate::gguf::Value)> = vec![
        ("general.architecture", "gemma3".into()),
        ("gemma3.block_count", 4u32.into()),
        ("gemma3.embedding_length", 64u32.into()),
        ("gemma3.feed_forward_length", 128u32.into()),
        ("gemma3.attention.head_count", 4u32.into()),
        ("gemma3.attention.key_length", 32u32.into()),
        ("gemma3.attention.value_length", 32u32.into()),
        ("gemma3.attention.sliding_window", 8u32.into()),
    ];
    for (k, v) in extra {
        match kvs.iter_mut().find(|(name, _)| name == k) {
            Some(kv) => kv.1 = v.clone(),
            None => kvs.push((k, v.clone())),
        }
    }
    let mut w = GgufWriter::new();
    for (k, v) in kvs {
        w.kv(k, v);
    }
    let g = GgufFile::parse(&MemSource::new(w.to_bytes()))?;
    Config::from_gguf(&g, 100)
}

#[test]
fn gemma3_metadata_errors_are_typed() {
    use crate::gguf::Value;
    let c = gemma_meta(&[]).unwrap();
    assert_eq!(c.window(5 % 4), Some(8));
    assert_eq!(c.n_head_kv, 4);
    let bools = |n: usize| Value::Array((0..n).map(|i| Value::Bool(i % 2 == 0)).collect());
    let c = gemma_meta(&[("gemma3.attention.sliding_window_pattern", bools(4))]).unwrap();
    assert_eq!(c.swa_layers, [true, false, true, false]);
    let bad = [
        ("gemma3.attention.sliding_window_pattern", bools(3)),
        (
            "gemma3.attention.sliding_window_pattern",
            Value::Array(vec![Value::U32(1); 4]),
        ),
        ("gemma3.final_logit_softcapping", Value::F32(-1.0)),
        ("gemma3.rope.freq_base_swa", Value::F32(f32::NAN)),
        ("gemma3.attention.key_length", Value::U32(0)),
    ];
    for (k, v) in bad {
        let r = gemma_meta(&[(k, v.clone())]);
        assert!(
            matches!(r, Err(Error::InvalidModel(_))),
            "{k} = {v:?}: {r:?}"
        );
    }
    let r = gemma_meta(&[("gemma3.attention.value_length", Value::U32(16))]);
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
}

#[test]
fn gemma3_without_its_q_norm_is_an_invalid_model() {
    let mut bytes = synth::to_bytes(&gemma(2, 0, 6, None), &SynthVocab::bytes());
    // Rename blk.0's attn_q_norm (same length) so that the block lacks it.
    let at = bytes.windows(11).position(|w| w == b"attn_q_norm").unwrap();
    bytes[at..at + 11].copy_from_slice(b"attn_x_norm");
    let r = Model::load(Box::new(MemSource::new(bytes)), &LoadOptions::default());
    match r {
        Err(Error::InvalidModel(e)) => assert!(e.contains("blk.0.attn_q_norm.weight"), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded a gemma3 model without attn_q_norm"),
    }
}
