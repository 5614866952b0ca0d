//! Model-level tests on synthetic models: one forward path for resident and
//! streamed weights, batched == token-by-token, sessions, generation.

use super::*;
use crate::ggml_type::GgmlType;
use crate::sample::SamplerConfig;
use crate::store::MemSource;
use crate::synth::{self, SynthArch, SynthSpec, SynthVocab};

const UBATCH_FOR_TESTS: usize = super::forward::UBATCH;

fn spec(ty: GgmlType) -> SynthSpec {
    SynthSpec {
        n_layers: 5,
        n_embd: 64,
        n_ff: 160,
        n_head: 4,
        n_head_kv: 2,
        weight_type: ty,
        separate_output: false,
        seed: 7,
        arch: SynthArch::Llama,
    }
}

fn load(bytes: &[u8], opts: &LoadOptions) -> Model {
    Model::load(Box::new(MemSource::new(bytes.to_vec())), opts).expect("load synthetic model")
}

/// Logits of every position of `tokens`, evaluated `step` tokens at a time.
fn all_logits(m: &Model, tokens: &[u32], step: usize) -> Vec<f32> {
    let mut s = Session::new(m, 64).unwrap();
    let mut out = Vec::new();
    for chunk in tokens.chunks(step) {
        s.eval(m, chunk, 0, &mut |_, l| out.extend_from_slice(l))
            .unwrap();
    }
    out
}

const TOKENS: [u32; 40] = [
    256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101, 32, 113,
    117, 105, 99, 107, 32, 98, 114, 111, 119, 110, 32, 102, 111, 120, 32, 106, 117, 109, 112, 115,
];

#[test]
fn streamed_equals_resident_for_both_policies() {
    for ty in [
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::Q5_1,
        GgmlType::IQ4_NL,
    ] {
        let bytes = synth::to_bytes(&spec(ty), &SynthVocab::bytes());
        let resident = load(&bytes, &LoadOptions::default());
        assert!(!resident.info.streamed);
        let want = all_logits(&resident, &TOKENS, 40);
        assert!(want.iter().all(|x| x.is_finite()));
        for policy in [Policy::Pinned, Policy::Lru] {
            let opts = LoadOptions {
                residency: Residency::Stream,
                cache_layers: 2,
                policy,
                ..Default::default()
            };
            let streamed = load(&bytes, &opts);
            assert!(streamed.info.streamed);
            assert_eq!(all_logits(&streamed, &TOKENS, 40), want, "{ty} {policy:?}");
            let (stats, resident_layers, _) = streamed.cache_stats();
            assert!(
                resident_layers <= 2 + 1,
                "{policy:?}: {resident_layers} layers resident"
            );
            assert!(stats.evictions > 0);
        }
    }
}

#[test]
fn batched_equals_token_by_token() {
    let bytes = synth::to_bytes(&spec(GgmlType::Q4_1), &SynthVocab::bytes());
    let m = load(&bytes, &LoadOptions::default());
    let batched = all_logits(&m, &TOKENS, 40);
    assert_eq!(all_logits(&m, &TOKENS, 1), batched);
    assert_eq!(all_logits(&m, &TOKENS, 7), batched);
}

/// A model whose every matrix is a k-quant (256-wide rows, Q8_K
/// activations): batched == token by token, and its logits track the same
/// model in Q8_0 (k-quant weights are coarser, so only loosely).
#[test]
fn k_quant_models_run() {
    let kspec = |ty| SynthSpec {
        n_embd: 256,
        n_ff: 512,
        ..spec(ty)
    };
    let base = load(
        &synth::to_bytes(&kspec(GgmlType::Q8_0), &SynthVocab::bytes()),
        &LoadOptions::default(),
    );
    let want = all_logits(&base, &TOKENS[..12], 12);
    for ty in [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_XS,
    ] {
        // Each type dots against Q8_K, not Q8_0.
        assert_eq!(crate::quant::vec_dot_type(ty), GgmlType::Q8_K);
        let m = load(
            &synth::to_bytes(&kspec(ty), &SynthVocab::bytes()),
            &LoadOptions::default(),
        );
        let batched = all_logits(&m, &TOKENS[..12], 12);
        assert!(batched.iter().all(|x| x.is_finite()), "{ty}");
        assert_eq!(all_logits(&m, &TOKENS[..12], 1), batched, "{ty}");
        // Relative distance to the Q8_0 model's logits.
        let d2: f32 = batched
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
        let n2: f32 = want.iter().map(|b| b * b).sum();
        let rel = (d2 / n2).sqrt();
        // Measured: Q2_K 0.63, Q3_K 0.35, Q4_K 0.17, Q5_K 0.085, Q6_K 0.046,
        // IQ4_XS 0.18: the error falls with the bits, as it should.
        let bound = match ty {
            GgmlType::Q2_K => 0.9,
            GgmlType::Q3_K => 0.5,
            GgmlType::Q4_K | GgmlType::IQ4_XS => 0.27,
            GgmlType::Q5_K => 0.13,
            _ => 0.07,
        };
        assert!(rel < bound, "{ty}: logits {rel} away from Q8_0's");
    }
}

#[test]
fn score_matches_eval() {
    let bytes = synth::to_bytes(&spec(GgmlType::Q8_0), &SynthVocab::bytes());
    let m = load(&bytes, &LoadOptions::default());
    let logits = all_logits(&m, &TOKENS, 40);
    let mut s = Session::new(&m, 64).unwrap();
    let scores = s.score(&m, &TOKENS, 1, 3).unwrap();
    assert_eq!(scores.len(), TOKENS.len() - 1);
    let v = m.cfg.n_vocab;
    let mut lp = vec![0f32; v];
    for sc in &scores {
        let p = sc.pos as usize;
        crate::sample::log_softmax(&logits[(p - 1) * v..p * v], &mut lp);
        assert_eq!(sc.token, TOKENS[p]);
        assert!((sc.logprob - lp[TOKENS[p] as usize]).abs() < 1e-5);
        assert_eq!(sc.top.len(), 3);
        assert!(sc.top[0].1 >= sc.top[1].1 && sc.top[1].1 >= sc.top[2].1);
    }
    assert!(matches!(
        s.score(&m, &TOKENS, 0, 1),
        Err(Error::InvalidInput(_))
    ));
}

fn greedy(max_tokens: u32, stop: Vec<String>) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplerConfig {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 1,
        },
        ignore_eos: true,
        stop,
    }
}

#[test]
fn generation_lengths_context_and_stop_strings() {
    let bytes = synth::to_bytes(&spec(GgmlType::Q4_1), &SynthVocab::bytes());
    let m = load(&bytes, &LoadOptions::default());
    let mut s = Session::new(&m, 32).unwrap();
    let mut g = Generation::start(&m, &mut s, &TOKENS[..5], greedy(6, vec![])).unwrap();
    let mut pieces = Vec::new();
    while let Some(p) = g.next(&m, &mut s).unwrap() {
        pieces.push(p);
    }
    assert_eq!(pieces.len(), 6);
    assert_eq!(g.stop_reason(), Some(StopReason::Length));
    let text: String = pieces.iter().map(|p| p.text.as_str()).collect();

    // The same run with a stop string taken from the middle of that text stops before it.
    if let Some(cut) = text.char_indices().nth(3).map(|(i, _)| i) {
        let stop = text[cut..].chars().take(2).collect::<String>();
        let mut s = Session::new(&m, 32).unwrap();
        let mut g =
            Generation::start(&m, &mut s, &TOKENS[..5], greedy(6, vec![stop.clone()])).unwrap();
        let mut out = String::new();
        while let Some(p) = g.next(&m, &mut s).unwrap() {
            out.push_str(&p.text);
        }
        assert_eq!(g.stop_reason(), Some(StopReason::Stop));
        assert_eq!(out, text[..text.find(&stop).unwrap()]);
    }

    // A prompt longer than the context is refused; generation stops at a full context.
    let mut s = Session::new(&m, 8).unwrap();
    assert!(matches!(
        Generation::start(&m, &mut s, &TOKENS[..9], greedy(4, vec![])),
        Err(Error::ContextFull(_))
    ));
    let mut g = Generation::start(&m, &mut s, &TOKENS[..5], greedy(100, vec![])).unwrap();
    let mut n = 0;
    while g.next(&m, &mut s).unwrap().is_some() {
        n += 1;
    }
    assert_eq!(g.stop_reason(), Some(StopReason::Context));
    assert!(n >= 2 && s.n_past() <= 8);
    assert!(matches!(
        Generation::start(&m, &mut s, &TOKENS[..1], greedy(0, vec![])),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn truncate_rewinds_the_kv_cache() {
    let bytes = synth::to_bytes(&spec(GgmlType::Q8_0), &SynthVocab::bytes());
    let m = load(&bytes, &LoadOptions::default());
    // A fresh session fed TOKENS[..10] then TOKENS[20..30] ...
    let mut fresh = TOKENS[..10].to_vec();
    fresh.extend_from_slice(&TOKENS[20..30]);
    let want = all_logits(&m, &fresh, 20);
    // ... equals one that held TOKENS[..20], was cut back to 10 and fed the rest.
    let mut s = Session::new(&m, 64).unwrap();
    s.eval(&m, &TOKENS[..20], 20, &mut |_, _| {}).unwrap();
    s.truncate(10).unwrap();
    assert_eq!(s.n_past(), 10);
    assert_eq!(s.tokens(), TOKENS[..10]);
    let mut got = Vec::new();
    s.eval(&m, &TOKENS[20..30], 0, &mut |_, l| got.extend_from_slice(l))
        .unwrap();
    assert_eq!(got, want[10 * m.cfg.n_vocab..]);
    assert_eq!(s.tokens(), fresh);
    // Beyond what it holds is refused; truncating to everything is a no-op.
    assert!(matches!(s.truncate(21), Err(Error::InvalidInput(_))));
    s.truncate(20).unwrap();
    assert_eq!(s.tokens(), fresh);

    // A generation's last sampled token is held (pending) and can be cut too.
    let mut s = Session::new(&m, 64).unwrap();
    let mut g = Generation::start(&m, &mut s, &TOKENS[..5], greedy(3, vec![])).unwrap();
    let mut gen = Vec::new();
    while let Some(p) = g.next(&m, &mut s).unwrap() {
        gen.push(p.token);
    }
    assert_eq!(gen.len(), 3);
    let mut held = TOKENS[..5].to_vec();
    held.extend_from_slice(&gen);
    assert_eq!(s.tokens(), held);
    assert_eq!(s.n_past(), 7, "the last sampled token is not evaluated yet");
    s.truncate(7).unwrap();
    assert_eq!(s.tokens(), held[..7]);
    s.truncate(3).unwrap();
    assert_eq!((s.n_past(), s.tokens()), (3, TOKENS[..3].to_vec()));
}

#[test]
fn out_of_vocabulary_token_is_an_error() {
    let bytes = synth::to_bytes(&spec(GgmlType::Q8_0), &SynthVocab::bytes());
    let m = load(&bytes, &LoadOptions::default());
    let mut s = Session::new(&m, 16).unwrap();
    let r = s.eval(&m, &[1, 99999], 0, &mut |_, _| {});
    assert!(matches!(r, Err(Error::InvalidInput(_))));
}

#[test]
fn kv_cache_counts_against_max_memory() {
    let bytes = synth::to_bytes(&spec(GgmlType::Q8_0), &SynthVocab::bytes());
    let opts = LoadOptions {
        max_memory: 4 << 20,
        ..LoadOptions::default()
    };
    let m = load(&bytes, &opts);
    // 8192 positions x kv_dim 32 x (K + V) x 2 bytes (f16) x 5 layers = 5 MiB.
    let r = Session::new(&m, 8192);
    assert!(
        matches!(&r, Err(Error::OutOfMemory(e)) if e.contains("KV cache") && e.contains("4194304")),
        "{:?}",
        r.as_ref().err()
    );
    assert!(Session::new(&m, 256).is_ok());
    // f16 values take half of it: 4096 positions fit in f16, not in f32.
    assert!(Session::new(&m, 4096).is_ok());
    let m32 = load(
        &bytes,
        &LoadOptions {
            kv_type: KvType::F32,
            ..opts
        },
    );
    assert!(matches!(
        Session::new(&m32, 4096),
        Err(Error::OutOfMemory(_))
    ));
    assert!(Session::new(&m32, 2048).is_ok());
    // Without a budget only the host's memory cap applies.
    let m = load(&bytes, &LoadOptions::default());
    assert!(Session::new(&m, 8192).is_ok());
}

#[test]
fn a_failing_prompt_commits_nothing() {
    // The bad token sits in the second micro-batch: the first must not stay
    // in the session.
    let bytes = synth::to_bytes(&spec(GgmlType::Q8_0), &SynthVocab::bytes());
    let m = load(&bytes, &LoadOptions::default());
    let mut s = Session::new(&m, 64).unwrap();
    s.eval(&m, &TOKENS[..3], 0, &mut |_, _| {}).unwrap();
    let mut bad = TOKENS.to_vec();
    bad[UBATCH_FOR_TESTS + 1] = 99999;
    let r = s.eval(&m, &bad, 0, &mut |_, _| {});
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    assert_eq!(s.n_past(), 3, "the failed prompt left tokens behind");
    // The session continues as if the bad prompt never came.
    let mut a = Vec::new();
    s.eval(&m, &TOKENS[3..6], 0, &mut |_, l| a.extend_from_slice(l))
        .unwrap();
    let all = all_logits(&m, &TOKENS[..6], 6);
    let v = m.cfg.n_vocab;
    assert_eq!(a, all[3 * v..6 * v]);
}

#[test]
fn score_rejects_a_bad_last_token_and_an_absurd_top_k() {
    let bytes = synth::to_bytes(&spec(GgmlType::Q8_0), &SynthVocab::bytes());
    let m = load(&bytes, &LoadOptions::default());
    let mut s = Session::new(&m, 16).unwrap();
    // Only the last token is out of the vocabulary: it is never evaluated.
    let r = s.score(&m, &[1, 2, u32::MAX], 1, 1);
    assert!(
        matches!(&r, Err(Error::InvalidInput(e)) if e.contains("4294967295")),
        "{r:?}"
    );
    let r = s.score_with(&m, &[1, 2, 99999], 1, &mut |_, _, _| {});
    assert!(matches!(&r, Err(Error::InvalidInput(_))), "{r:?}");
    for k in [u32::MAX as usize, usize::MAX, m.cfg.n_vocab + 1] {
        let r = s.score(&m, &[1, 2, 3], 1, k);
        assert!(
            matches!(&r, Err(Error::InvalidInput(e)) if e.contains("top-k")),
            "{k}: {r:?}"
        );
    }
    // The session still works afterwards, and top-k = n_vocab is allowed.
    let ok = s.score(&m, &[1, 2, 3], 1, m.cfg.n_vocab).unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[0].top.len(), m.cfg.n_vocab);
}

/// The real SmolLM2 file, when the test runner provides it (`cargo xtask test` does).
fn smollm2() -> Option<Model> {
    let Some(path) = std::env::var_os("WASM_CHORD_SMOLLM2") else {
        eprintln!("WASM_CHORD_SMOLLM2 not set: run through `cargo xtask test`");
        return None;
    };
    let bytes = std::fs::read(path).expect("read SmolLM2");
    Some(load(&bytes, &LoadOptions::default()))
}

#[derive(serde::Deserialize)]
struct Case {
    id: String,
    prompt: String,
    messages: Option<Vec<std::collections::BTreeMap<String, String>>>,
    prompt_tokens: Vec<u32>,
}

#[test]
fn smollm2_tokenizer_and_template_match_llama_cpp() {
    let Some(m) = smollm2() else { return };
    let path = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
    .join("../../tests/fixtures/smollm2-135m-instruct-q4_1.golden.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases: Vec<Case> = serde_json::from_value(golden["cases"].clone()).unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        assert_eq!(
            m.tokenizer.encode(&c.prompt, true, true),
            c.prompt_tokens,
            "case {}",
            c.id
        );
        if let Some(msgs) = c.messages {
            let msgs: Vec<crate::tokenizer::ChatMessage> = msgs
                .iter()
                .map(|x| crate::tokenizer::ChatMessage {
                    role: x["role"].clone(),
                    content: x["content"].clone(),
                })
                .collect();
            assert_eq!(
                m.apply_chat_template(&msgs, true).unwrap(),
                c.prompt,
                "case {}",
                c.id
            );
        }
    }
    assert!(m.tokenizer.is_eog(2) && m.tokenizer.is_eog(0) && !m.tokenizer.is_eog(1));
}

/// `summarize` reads the same facts as `load` from the header alone.
#[test]
fn summary_of_a_loadable_model_matches_its_info() {
    let bytes = synth::to_bytes(&spec(GgmlType::Q5_1), &SynthVocab::bytes());
    let m = load(&bytes, &LoadOptions::default());
    let s = summary::summarize(&MemSource::new(bytes.clone())).unwrap();
    assert_eq!(s.architecture, m.info.architecture);
    assert_eq!(s.name, m.info.name);
    assert_eq!(s.file_size, m.info.file_size);
    assert_eq!(s.n_tensors, m.info.n_tensors);
    assert_eq!(s.n_params, m.info.n_params);
    let names: Vec<(String, u32)> = s.tensor_types.iter().map(|(t, n)| (t.name(), *n)).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, m.info.tensor_types);
    assert!(s.tensor_types.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(s.unsupported().count(), 0);
}

/// A file with tensor types the kernel cannot compute with: `load` refuses
/// it, `summarize` names every type and which are unsupported.
#[test]
fn summary_names_unsupported_types() {
    use crate::gguf::{GgufWriter, Value};
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::from("llama"));
    w.kv("general.name", Value::from("mixed"));
    w.tensor("a", &[32], GgmlType::F32, vec![0; 128]);
    w.tensor("b", &[256, 2], GgmlType::Q4_K, vec![0; 2 * 144]);
    w.tensor("c", &[256], GgmlType::Q4_K, vec![0; 144]);
    w.tensor("d", &[256], GgmlType::IQ2_XXS, vec![0; 66]);
    w.tensor("e", &[32], GgmlType::IQ4_NL, vec![0; 18]);
    let bytes = w.to_bytes();
    assert!(Model::load(
        Box::new(MemSource::new(bytes.clone())),
        &LoadOptions::default()
    )
    .is_err());
    let s = summary::summarize(&MemSource::new(bytes)).unwrap();
    assert_eq!(
        (s.architecture.as_str(), s.name.as_str()),
        ("llama", "mixed")
    );
    assert_eq!(s.n_tensors, 5);
    assert_eq!(s.n_params, 32 + 512 + 256 + 256 + 32);
    assert_eq!(s.tensor_bytes, 128 + 288 + 144 + 66 + 18);
    assert_eq!(
        s.tensor_types,
        [
            (GgmlType::F32, 1),
            (GgmlType::Q4_K, 2),
            (GgmlType::IQ2_XXS, 1),
            (GgmlType::IQ4_NL, 1)
        ]
    );
    let bad: Vec<_> = s.unsupported().collect();
    assert_eq!(bad, [(GgmlType::IQ2_XXS, 1)]);
}

/// A malformed header is an error from `summarize` too, not a panic.
#[test]
fn summary_of_a_malformed_file_is_an_error() {
    assert!(summary::summarize(&MemSource::new(b"GGUF".to_vec())).is_err());
    assert!(summary::summarize(&MemSource::new(Vec::new())).is_err());
}

/// Dev check on a real file (not in CI): llama-perplexity's figure for the
/// frozen text with the model at `$WASM_CHORD_PPL_GGUF` (e.g. a k-quant
/// requantization of SmolLM2), chunks of `$WASM_CHORD_PPL_CTX` (128)
/// tokens, first token of each replaced by BOS, second half scored:
/// `WASM_CHORD_PPL_GGUF=path cargo test -p wasm-chord-kernel --release
/// real_model_perplexity -- --ignored --nocapture`, to compare with
/// `llama-perplexity -m path -f tests/fixtures/ppl-text.md -c 128`.
#[cfg(not(target_arch = "wasm32"))]
#[test]
#[ignore]
fn real_model_perplexity() {
    let path = std::env::var("WASM_CHORD_PPL_GGUF").expect("set WASM_CHORD_PPL_GGUF");
    let n_ctx: usize = std::env::var("WASM_CHORD_PPL_CTX").map_or(128, |v| v.parse().unwrap());
    let text_path = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
    .join("../../tests/fixtures/ppl-text.md");
    let text = std::fs::read_to_string(text_path).expect("read ppl-text.md");
    let m = load(
        &std::fs::read(&path).expect("read the GGUF"),
        &LoadOptions::default(),
    );
    let tokens = m.tokenizer.encode(&text, true, false);
    let n_chunk = tokens.len() / n_ctx;
    assert!(n_chunk > 0, "{} tokens", tokens.len());
    let mut s = Session::new(&m, n_ctx as u32).unwrap();
    let (mut nll, mut count) = (0f64, 0usize);
    for c in 0..n_chunk {
        let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let (true, Some(bos)) = (m.tokenizer.add_bos(), m.tokenizer.bos()) {
            chunk[0] = bos;
        }
        for sc in s.score(&m, &chunk, n_ctx / 2 + 1, 0).unwrap() {
            nll -= sc.logprob as f64;
            count += 1;
        }
        println!("[{}] {:.4}", c + 1, (nll / count as f64).exp());
    }
    let ppl = (nll / count as f64).exp();
    println!("Final estimate: PPL = {ppl:.4} ({count} tokens, {n_chunk} chunks of {n_ctx})");
    assert!(ppl.is_finite() && ppl > 1.0);
}

#[test]
fn generation_logprobs_equal_teacher_forced_scores() {
    let bytes = synth::to_bytes(&spec(GgmlType::Q8_0), &SynthVocab::bytes());
    let m = load(&bytes, &LoadOptions::default());
    // Sampled with temperature, a repetition penalty and top-k: the reported
    // log-probabilities are still those of the raw logits.
    let mut opts = greedy(6, vec![]);
    opts.sampling.temperature = 1.3;
    opts.sampling.repeat_penalty = 1.5;
    opts.sampling.top_k = 5;
    let mut s = Session::new(&m, 64).unwrap();
    let mut g = Generation::start(&m, &mut s, &TOKENS[..5], opts.clone()).unwrap();
    let mut got = Vec::new();
    while let Some((p, lp)) = g.next_with_logprobs(&m, &mut s, 4).unwrap() {
        let lp = lp.expect("logprobs of a generated token");
        assert_eq!(lp.chosen.token, p.token);
        assert_eq!(lp.chosen.bytes, m.tokenizer.token_bytes(p.token).unwrap());
        got.push((p.token, lp));
    }
    assert_eq!(got.len(), 6);
    let mut all = TOKENS[..5].to_vec();
    all.extend(got.iter().map(|(t, _)| *t));
    let mut s2 = Session::new(&m, 64).unwrap();
    let want = s2.score(&m, &all, 5, 4).unwrap();
    assert_eq!(want.len(), 6);
    for ((tok, lp), w) in got.iter().zip(&want) {
        assert_eq!(*tok, w.token);
        assert!(
            (lp.chosen.logprob - w.logprob).abs() < 1e-4,
            "{lp:?} vs {w:?}"
        );
        assert!(lp.chosen.logprob <= 0.0);
        let top: Vec<u32> = lp.top.iter().map(|e| e.token).collect();
        let wtop: Vec<u32> = w.top.iter().map(|e| e.0).collect();
        assert_eq!(top, wtop);
        for (e, (_, wl)) in lp.top.iter().zip(&w.top) {
            assert!((e.logprob - wl).abs() < 1e-4);
        }
    }
    // The same seed without logprobs samples the same tokens.
    let mut s = Session::new(&m, 64).unwrap();
    let mut g = Generation::start(&m, &mut s, &TOKENS[..5], opts).unwrap();
    let mut plain = Vec::new();
    while let Some(p) = g.next(&m, &mut s).unwrap() {
        plain.push(p.token);
    }
    assert_eq!(plain, all[5..]);
    // A top-k beyond the vocabulary is bad input.
    let mut s = Session::new(&m, 64).unwrap();
    let mut g = Generation::start(&m, &mut s, &TOKENS[..5], greedy(2, vec![])).unwrap();
    assert!(matches!(
        g.next_with_logprobs(&m, &mut s, m.cfg.n_vocab + 1),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn an_f32_kv_cache_is_batch_independent_and_near_the_f16_one() {
    // With an f32 cache every token's attention runs the f32 kernel, so a
    // token's logits are the same bits however the tokens were batched;
    // they differ from the f16 cache's by its rounding (and the f16
    // kernel's) only.
    let bytes = synth::to_bytes(&spec(GgmlType::Q8_0), &SynthVocab::bytes());
    let m32 = load(
        &bytes,
        &LoadOptions {
            kv_type: KvType::F32,
            ..LoadOptions::default()
        },
    );
    let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    let whole = all_logits(&m32, &TOKENS, 40);
    assert_eq!(bits(&whole), bits(&all_logits(&m32, &TOKENS, 1)));
    assert_eq!(bits(&whole), bits(&all_logits(&m32, &TOKENS, 7)));
    let f16 = all_logits(&load(&bytes, &LoadOptions::default()), &TOKENS, 1);
    assert_ne!(
        bits(&whole),
        bits(&f16),
        "the caches differ by f16 rounding"
    );
    let worst = whole
        .iter()
        .zip(&f16)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = f16.iter().map(|x| x.abs()).fold(0f32, f32::max);
    // A sanity bound (a random model amplifies rounding: measured 1.3%);
    // real models are held to llama.cpp's scores in tests/tests/coverage.rs.
    assert!(worst <= 0.05 * scale, "{worst} of {scale}");
}
