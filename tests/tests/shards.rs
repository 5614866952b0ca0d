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
    // 9 query heads: 5 and 4, reading kv heads 0..2 and 1..3 (kv head 1 on
    // both); the vocabulary halves.
    let s = sh.shards().to_vec();
    assert_eq!((s[0].n_head, s[1].n_head), (5, 4));
    assert_eq!((s[0].n_head_kv, s[1].n_head_kv), (2, 2));
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
fn perplexity_with_two_shards_within_scoring_bounds_and_deterministic() {
    // `wasm-chord perplexity --tokens … --json --shards 2`, as the scoring
    // tests run one instance, under their bounds.
    let golden = Golden::load("smollm2-135m-instruct-q4_1.golden.json");
    let report = teacher_forced_with(&smollm2(), &golden, None, &["--shards", "2"]);
    eprintln!("perplexity --shards 2: {report}");
    report.check(90.0, 0.15, 1.25).unwrap();
    // Two runs: the same bits (JSON numbers print f32s exactly).
    let dir = tmp_dir("perplexity-shards-twice");
    let case = &golden.cases[5];
    let mut seq = case.prompt_tokens.clone();
    seq.extend(&case.greedy_tokens);
    let f = dir.join("seq.json");
    std::fs::write(&f, serde_json::to_vec(&seq).unwrap()).unwrap();
    let model = smollm2();
    let args = [
        "perplexity",
        "-m",
        model.to_str().unwrap(),
        "--tokens",
        f.to_str().unwrap(),
        "--json",
        "--top-k",
        "50",
        "--shards",
        "2",
    ];
    let a = run_cli(&args);
    let b = run_cli(&args);
    assert!(a.status.success() && b.status.success(), "{}", show(&a));
    assert_eq!(
        String::from_utf8_lossy(&a.stdout).lines().count(),
        seq.len()
    );
    assert!(
        a.stdout == b.stdout,
        "two runs of 2 shards scored differently"
    );
    // Chunked text: within 1 % of llama-perplexity (as one instance, in
    // tests/tests/scoring.rs).
    let out = run_cli(&[
        "perplexity",
        "-m",
        smollm2().to_str().unwrap(),
        "-f",
        fixtures().join("ppl-text.md").to_str().unwrap(),
        "--n-ctx",
        "256",
        "--shards",
        "2",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ppl: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Final estimate: PPL = "))
        .and_then(|l| l.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no final estimate in {stdout:?}"));
    assert!(
        (ppl - 72.8833).abs() / 72.8833 < 0.01,
        "PPL {ppl} vs llama.cpp 72.8833"
    );
}

/// The 5.7 GB padded SmolLM2 (`make_padded_gguf.py`: SmolLM2 Q8_0 in layers
/// 7x as wide) held fully resident by 2 shards, its greedy tokens against
/// llama.cpp's under the fixture rule. Ignored by default: the file is
/// 5.7 GB and the run holds ~6 GB; `cargo xtask large --padded` runs it.
#[test]
#[ignore = "needs the 5.7 GB padded model and ~12 GB of free memory: `cargo xtask large --padded`"]
fn padded_model_resident_in_two_shards_matches_llama_cpp() {
    let model = std::env::var_os("WASM_CHORD_PADDED").map(std::path::PathBuf::from);
    let Some(model) = model.filter(|m| m.is_file()) else {
        panic!("set WASM_CHORD_PADDED to padded-smollm2-x7-q8_0.gguf (`cargo xtask large --padded` makes it)");
    };
    let golden = Golden::load("padded-smollm2-x7-q8_0.golden.json");
    let report = greedy_parity_with(&model, &golden, Some(128), &["--shards", "2", "--resident"]);
    eprintln!("padded model, --shards 2 --resident: {report}");
    assert!(report.failures.is_empty(), "{}", report.failures.join("\n"));
    // Two shards, not streamed.
    let out = run_cli(&[
        "run",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "1",
        "--n-ctx",
        "16",
        "--json",
        "--shards",
        "2",
        "--resident",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let (_, _, stats) = parse_run_json(&out.stdout);
    assert_eq!(stats["shards"].as_u64(), Some(2), "{}", show(&out));
    assert_eq!(stats["streamed"].as_bool(), Some(false), "{}", show(&out));
}

/// The same model streamed through a 1 GiB guest (the acceptance setting of
/// the streaming benchmark, no other flag): its greedy tokens against
/// llama.cpp's under the fixture rule, and the run really streamed.
/// Ignored by default like the resident case (5.7 GB file).
#[test]
#[ignore = "needs the 5.7 GB padded model and ~7 GB of free memory: set WASM_CHORD_PADDED"]
fn padded_model_streamed_through_1_gib_matches_llama_cpp() {
    let model = std::env::var_os("WASM_CHORD_PADDED").map(std::path::PathBuf::from);
    let Some(model) = model.filter(|m| m.is_file()) else {
        panic!("set WASM_CHORD_PADDED to padded-smollm2-x7-q8_0.gguf (`cargo xtask large --padded` makes it)");
    };
    let golden = Golden::load("padded-smollm2-x7-q8_0.golden.json");
    let budget = ["--max-guest-memory", "1073741824"];
    let report = greedy_parity_with(&model, &golden, None, &budget);
    eprintln!("padded model, streamed through 1 GiB: {report}");
    assert!(report.failures.is_empty(), "{}", report.failures.join("\n"));
    let mut args = vec![
        "run",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "1",
    ];
    args.extend(["--json"]);
    args.extend(budget);
    let out = run_cli(&args);
    assert!(out.status.success(), "{}", show(&out));
    let (_, _, stats) = parse_run_json(&out.stdout);
    // Streamed: most layers are not resident, and the guest stayed in 1 GiB.
    let cache = &stats["cache"];
    let (resident, total) = (
        cache["resident_layers"].as_u64(),
        cache["total_layers"].as_u64(),
    );
    assert!(
        matches!((resident, total), (Some(r), Some(t)) if r < t),
        "{}",
        show(&out)
    );
    let peak = stats["peak_guest_memory_bytes"].as_u64();
    assert!(matches!(peak, Some(p) if p <= 1 << 30), "{}", show(&out));
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

/// Log-softmax rows of every position of `seq`, through `n` shards.
fn logprob_rows(model: &std::path::Path, n: u32, seq: &[u32]) -> (Vec<Vec<f32>>, usize) {
    let mut sh = sharded(model, n, 256);
    let n_vocab = sh.info().n_vocab as usize;
    let mut rows = Vec::new();
    sh.eval(seq, 0, &mut |_, l| {
        let mut lp = vec![0f32; n_vocab];
        log_softmax(l, &mut lp);
        rows.push(lp);
    })
    .unwrap();
    (rows, sh.count())
}

#[test]
fn relaid_architectures_shard_like_one_instance() {
    // SmolLM2 re-laid as each architecture (cargo xtask fetch variants):
    // 2 shards against the same driver with one, over a prompt longer than
    // one micro-batch. Within the rounding of another summation order: the
    // same top token everywhere, log-probabilities of the likely tokens close.
    let golden = Golden::load("smollm2-135m-instruct-q4_1.golden.json");
    let case = golden.cases.last().unwrap();
    let mut seq = case.prompt_tokens.clone();
    seq.extend(&case.greedy_tokens);
    assert!(seq.len() > 32);
    let dir = variants_dir();
    let mut bad = Vec::new();
    for (file, want_shards) in [
        ("smollm2-Q4_1.gguf", 2),
        ("smollm2-as-qwen2-bias.gguf", 2),
        ("smollm2-as-qwen3-norms.gguf", 2),
        ("smollm2-as-mistral3.gguf", 2),
        ("smollm2-as-llama3-ropefreqs.gguf", 2),
        ("smollm2-Q8_0.gguf", 2),
        ("smollm2-Q4_K_M.gguf", 0),
    ] {
        let model = dir.join(file);
        let (one, _) = logprob_rows(&model, 1, &seq);
        let (two, count) = logprob_rows(&model, 2, &seq);
        if want_shards > 0 {
            assert_eq!(count, want_shards, "{file}");
        }
        let mut diffs = Vec::new();
        let mut same_top = 0;
        for (a, b) in one.iter().zip(&two) {
            let top = |r: &[f32]| wasm_chord_kernel::sample::argmax(r);
            if top(a) == top(b) {
                same_top += 1;
            }
            // The tokens that carry probability (the 5 best of one instance).
            for (t, _) in top_of(a, 5) {
                diffs.push((a[t as usize] - b[t as usize]).abs());
            }
        }
        diffs.sort_by(f32::total_cmp);
        let (median, worst) = (diffs[diffs.len() / 2], diffs[diffs.len() - 1]);
        let pct = 100.0 * same_top as f64 / one.len() as f64;
        eprintln!(
            "{file}: {count} shard(s); against one: same top-1 at {same_top}/{} ({pct:.1}%), top-5 |Δ logprob| median {median:.4}, max {worst:.4}",
            one.len()
        );
        // Each layer's partial sums agree with one instance's to 1e-5 of
        // their scale (guest/kernel/src/model/tests_shard.rs); over 30 layers
        // and 70 positions the f16 and 8-bit activation roundings promote
        // those last-bit differences to about the distance between us and
        // llama.cpp (median ~0.06), so the bounds are the scoring tests'
        // (tests/tests/scoring.rs: top-1 >= 90 %, median 0.15, max 1.25).
        if pct < 90.0 || median > 0.15 || worst > 1.25 {
            bad.push(format!(
                "{file}: top-1 {pct:.1}%, median {median}, max {worst}"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // phi3's fused q/k/v and gate/up are not sliced: a clear refusal.
    let kernel = Kernel::from_file(kernel(), &KernelOptions::default()).unwrap();
    let e = Sharded::new(
        &kernel,
        Arc::new(FileStore::new()),
        &LoadOptions::new(
            dir.join("smollm2-as-phi3.gguf")
                .to_string_lossy()
                .into_owned(),
        ),
        2,
        64,
    )
    .unwrap_err();
    assert!(e.to_string().contains("sharding"), "{e}");
}
