//! Tensor-parallel shards (issue 19) on SmolLM2 Q4_1: `run --shards 2`
//! against llama.cpp's golden outputs under the fixture rule, teacher-forced
//! log-probabilities of 2 shards within the scoring tests' bounds, the same
//! split giving bit-identical logits run to run, and clean fallbacks.

use std::sync::Arc;

use wasm_chord::{FileStore, Kernel, KernelOptions, LoadOptions, Sharded};
use wasm_chord_kernel::model::session::top_of;
use wasm_chord_kernel::sample::log_softmax;
use wasm_chord_tests::*;

fn sharded(model: &std::path::Path, n: u32, n_ctx: u32) -> Sharded {
    let kernel = Kernel::from_file(kernel(), &KernelOptions::default()).expect("kernel");
    Sharded::new(
        &kernel,
        Arc::new(FileStore::new()),
        &LoadOptions::new(model.to_string_lossy().into_owned()),
        n,
        n_ctx,
    )
    .expect("load shards")
}

#[test]
fn two_shards_greedy_pass_the_fixture_rule() {
    let golden = Golden::load("smollm2-135m-instruct-q4_1.golden.json");
    let report = greedy_parity_with(&smollm2(), &golden, None, &["--shards", "2"]);
    eprintln!("--shards 2: {report}");
    assert!(report.failures.is_empty(), "{}", report.failures.join("\n"));
    // It did run in two shards.
    let out = run_cli(&[
        "run",
        "-m",
        smollm2().to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "3",
        "--temp",
        "0",
        "--json",
        "--shards",
        "2",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let (tokens, _, stats) = parse_run_json(&out.stdout);
    assert_eq!(stats["shards"].as_u64(), Some(2), "{}", show(&out));
    assert!(!tokens.is_empty());
}

#[test]
fn two_shards_teacher_forced_within_scoring_bounds_and_deterministic() {
    let golden = Golden::load("smollm2-135m-instruct-q4_1.golden.json");
    let mut sh = sharded(&smollm2(), 2, 512);
    assert_eq!(sh.count(), 2);
    // 3 kv heads: 2 and 1; the vocabulary halves.
    let s = sh.shards().to_vec();
    assert_eq!((s[0].n_head_kv, s[1].n_head_kv), (2, 1));
    assert_eq!(s[0].vocab_len + s[1].vocab_len, sh.info().n_vocab);
    let n_vocab = sh.info().n_vocab as usize;
    let mut r = TeacherForced {
        steps: 0,
        same_top1: 0,
        diffs: Vec::new(),
        worst: String::new(),
        missing: Vec::new(),
    };
    let mut worst = 0.0f64;
    let mut first_logits: Option<Vec<u32>> = None;
    for case in &golden.cases {
        let mut seq = case.prompt_tokens.clone();
        seq.extend(&case.greedy_tokens);
        sh.reset().unwrap();
        let mut rows: Vec<Vec<f32>> = Vec::new();
        sh.eval(&seq[..seq.len() - 1], 0, &mut |_, l| rows.push(l.to_vec()))
            .unwrap();
        assert_eq!(rows.len(), seq.len() - 1);
        if first_logits.is_none() {
            first_logits = Some(rows.concat().iter().map(|v| v.to_bits()).collect());
        }
        let n_prompt = case.prompt_tokens.len();
        let mut lp = vec![0f32; n_vocab];
        for (step, &want) in case.greedy_tokens.iter().enumerate() {
            log_softmax(&rows[n_prompt + step - 1], &mut lp);
            let top = top_of(&lp, 50);
            r.steps += 1;
            if top[0].0 == want {
                r.same_top1 += 1;
            }
            let Some(theirs) = &case.top5_logprobs[step] else {
                continue;
            };
            for &(tok, want_lp) in theirs {
                let ours = if tok == want {
                    Some(lp[tok as usize])
                } else {
                    top.iter().find(|e| e.0 == tok).map(|e| e.1)
                };
                let Some(ours) = ours else {
                    r.missing
                        .push(format!("{} step {step} token {tok}", case.id));
                    continue;
                };
                let d = (f64::from(ours) - want_lp).abs();
                if d > worst {
                    worst = d;
                    r.worst = format!(
                        "{} step {step} token {tok}: ours {ours:.4}, llama.cpp {want_lp:.4}",
                        case.id
                    );
                }
                r.diffs.push(d);
            }
        }
    }
    r.diffs.sort_by(f64::total_cmp);
    eprintln!("--shards 2: {r}");
    // The bounds of tests/tests/scoring.rs (teacher_forced_matches_llama_cpp_greedy).
    r.check(90.0, 0.15, 1.25).unwrap();

    // The same split, a fresh set of instances: bit-identical logits.
    let case = &golden.cases[0];
    let mut seq = case.prompt_tokens.clone();
    seq.extend(&case.greedy_tokens);
    drop(sh);
    let mut again = sharded(&smollm2(), 2, 512);
    let mut rows: Vec<f32> = Vec::new();
    again
        .eval(&seq[..seq.len() - 1], 0, &mut |_, l| {
            rows.extend_from_slice(l)
        })
        .unwrap();
    let bits: Vec<u32> = rows.iter().map(|v| v.to_bits()).collect();
    assert!(
        Some(bits) == first_logits,
        "two runs of 2 shards gave different logits"
    );
}

#[test]
fn a_model_that_does_not_split_falls_back_to_one_shard() {
    // Gemma-3-270M has one key/value head: no split keeps heads whole.
    let out = run_cli(&[
        "run",
        "-m",
        gemma3().to_str().unwrap(),
        "-p",
        "The capital of France is",
        "-n",
        "4",
        "--temp",
        "0",
        "--json",
        "--shards",
        "2",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let (tokens, _, stats) = parse_run_json(&out.stdout);
    assert_eq!(stats["shards"].as_u64(), Some(1), "{}", show(&out));
    assert_eq!(tokens.len(), 4);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("splits into 1 shard"), "{err}");
    // The same tokens as the guest CLI's single instance.
    let single = run_cli(&[
        "run",
        "-m",
        gemma3().to_str().unwrap(),
        "-p",
        "The capital of France is",
        "-n",
        "4",
        "--temp",
        "0",
        "--json",
    ]);
    assert!(single.status.success(), "{}", show(&single));
    assert_eq!(parse_run_json(&single.stdout).0, tokens);
}

#[test]
fn bad_shard_flags_are_usage_errors() {
    let m = smollm2();
    for bad in ["0", "x", "65"] {
        let out = run_cli(&["bench", "-m", m.to_str().unwrap(), "--shards", bad]);
        assert_eq!(out.status.code(), Some(2), "--shards {bad}: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--shards must be a number"), "{err}");
    }
    // An option the sharded run does not have is refused, not ignored.
    let out = run_cli(&[
        "run",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "hi",
        "--shards",
        "2",
        "--stop",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    // --shards 1 is the guest CLI as usual.
    let out = run_cli(&[
        "run",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "hi",
        "-n",
        "2",
        "--temp",
        "0",
        "--shards",
        "1",
    ]);
    assert!(out.status.success(), "{}", show(&out));
}
