//! Architectures beyond llama, through the component in wasmtime, against
//! llama.cpp's outputs on the same files.
//!
//! The files are SmolLM2-135M's real weights re-laid as phi3, qwen2 and
//! qwen3 (`cargo xtask fetch relaid`, xtask/src/relay.rs), found in
//! `WASM_CHORD_VARIANTS_DIR`; llama.cpp's greedy outputs on them are in
//! `fixtures/archs/`. Each file is held to the rules of the SmolLM2 golden:
//! teacher-forced scoring (top-1 equals llama.cpp's greedy token at >= 90% of
//! positions, |Δ logprob| over llama.cpp's top-5: median <= 0.15, max <= 1.0)
//! and greedy decoding under the fixture rule.

use std::path::{Path, PathBuf};

use wasm_chord_tests::*;

fn variant(file: &str) -> PathBuf {
    let dir = match std::env::var_os("WASM_CHORD_VARIANTS_DIR") {
        Some(d) => PathBuf::from(d),
        None => panic!(
            "WASM_CHORD_VARIANTS_DIR is not set: run the tests with `cargo xtask test`, which generates the files"
        ),
    };
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "{} is missing: `cargo xtask fetch relaid` generates it",
        path.display()
    );
    path
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasm-chord-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Teacher-forced agreement of one model with its golden.
struct Agreement {
    same_top1: usize,
    total: usize,
    median: f64,
    max: f64,
    worst: String,
}

/// Score each golden path (prompt + llama.cpp's greedy tokens) with
/// `wasm-chord perplexity --tokens F --json --top-k 50`.
fn teacher_forced(model: &Path, golden: &Golden, tag: &str) -> Agreement {
    let dir = tmp_dir(&format!("archs-{tag}"));
    let (mut total, mut same_top1) = (0usize, 0usize);
    let mut diffs: Vec<f64> = Vec::new();
    let mut worst = (0.0f64, String::new());
    for case in &golden.cases {
        let mut seq = case.prompt_tokens.clone();
        seq.extend(&case.greedy_tokens);
        let f = dir.join(format!("{}.json", case.id));
        std::fs::write(&f, serde_json::to_vec(&seq).unwrap()).unwrap();
        let out = run_cli(&[
            "perplexity".as_ref(),
            "-m".as_ref(),
            model.as_os_str(),
            "--tokens".as_ref(),
            f.as_os_str(),
            "--json".as_ref(),
            "--top-k".as_ref(),
            "50".as_ref(),
        ]);
        assert!(
            out.status.success(),
            "{tag} {}: {}",
            case.id,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        let (_summary, scored) = lines.split_last().unwrap();
        assert_eq!(scored.len(), seq.len() - 1, "{tag} {}", case.id);
        let n_prompt = case.prompt_tokens.len();
        for (step, &want) in case.greedy_tokens.iter().enumerate() {
            let s = &scored[n_prompt + step - 1];
            assert_eq!(s["token"].as_u64(), Some(u64::from(want)));
            let top: Vec<(u32, f64)> = serde_json::from_value(s["top"].clone()).unwrap();
            total += 1;
            if top[0].0 == want {
                same_top1 += 1;
            }
            let Some(theirs) = &case.top5_logprobs[step] else {
                continue;
            };
            for &(tok, lp) in theirs {
                let ours = if tok == want {
                    s["logprob"].as_f64().unwrap()
                } else {
                    match top.iter().find(|e| e.0 == tok) {
                        Some(e) => e.1,
                        None => panic!(
                            "{tag} {} step {step}: llama.cpp's top-5 token {tok} not in our top-50",
                            case.id
                        ),
                    }
                };
                let d = (ours - lp).abs();
                if d > worst.0 {
                    worst = (
                        d,
                        format!(
                            "{} step {step} token {tok}: ours {ours:.4}, llama.cpp {lp:.4}",
                            case.id
                        ),
                    );
                }
                diffs.push(d);
            }
        }
    }
    diffs.sort_by(f64::total_cmp);
    Agreement {
        same_top1,
        total,
        median: diffs[diffs.len() / 2],
        max: *diffs.last().unwrap(),
        worst: worst.1,
    }
}

/// Greedy decoding of every case under the fixture rule; returns how many
/// cases equal llama.cpp's tokens exactly.
fn greedy(model: &Path, golden: &Golden, tag: &str) -> usize {
    let dir = tmp_dir(&format!("archs-greedy-{tag}"));
    let mut exact = 0;
    for case in &golden.cases {
        let mut args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "-m".into(),
            model.into(),
            "-n".into(),
            golden.n_predict.to_string().into(),
        ];
        args.extend(["--temp", "0", "--ignore-eos", "--json"].map(Into::into));
        if let Some(messages) = &case.messages {
            let f = dir.join(format!("{}.json", case.id));
            std::fs::write(&f, serde_json::to_vec(messages).unwrap()).unwrap();
            args.extend(["--messages".into(), f.into()]);
        } else {
            args.extend(["-p".into(), case.prompt.clone().into()]);
        }
        let out = run_cli(&args);
        assert!(
            out.status.success(),
            "{tag} {}: {}",
            case.id,
            String::from_utf8_lossy(&out.stderr)
        );
        let (tokens, text, stats) = parse_run_json(&out.stdout);
        assert_eq!(
            stats["prompt_tokens"].as_u64(),
            Some(case.prompt_tokens.len() as u64),
            "{tag} {}: prompt tokens",
            case.id
        );
        match check_greedy(case, &tokens, golden.near_tie()) {
            Ok(None) => {
                exact += 1;
                assert_eq!(text, case.greedy_text, "{tag} {}", case.id);
            }
            Ok(Some(i)) => eprintln!("{tag} {}: parted at step {i} (a near tie)", case.id),
            Err(e) => panic!("{tag}: {e}\nours: {tokens:?}\ntext: {text:?}"),
        }
    }
    exact
}

/// Both checks on `file` against `fixtures/archs/<file stem>.golden.json`.
fn check(file: &str, arch: &str) {
    let stem = file.trim_end_matches(".gguf");
    let golden = Golden::load(&format!("archs/{stem}.golden.json"));
    assert_eq!(golden.model, file, "the golden was made on another file");
    let model = variant(file);

    let out = run_cli(&[
        "info".as_ref(),
        "-m".as_ref(),
        model.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info --json");
    assert_eq!(info["architecture"].as_str(), Some(arch), "{info}");

    let a = teacher_forced(&model, &golden, stem);
    let pct = 100.0 * a.same_top1 as f64 / a.total as f64;
    eprintln!(
        "{stem}: teacher-forced top-1 = llama.cpp's greedy at {}/{} ({pct:.1}%); |Δ logprob| over its top-5: median {:.4}, max {:.4} ({})",
        a.same_top1, a.total, a.median, a.max, a.worst
    );
    assert!(pct >= 90.0, "{stem}: top-1 agreement {pct:.1}% < 90%");
    assert!(
        a.median <= 0.15,
        "{stem}: median |Δ logprob| {} > 0.15",
        a.median
    );
    assert!(
        a.max <= 1.0,
        "{stem}: max |Δ logprob| {} > 1.0 ({})",
        a.max,
        a.worst
    );

    let exact = greedy(&model, &golden, stem);
    eprintln!(
        "{stem}: {exact}/{} cases token-for-token equal to llama.cpp",
        golden.cases.len()
    );
}

#[test]
fn phi3_fused_qkv_and_gate_up() {
    check("smollm2-as-phi3.gguf", "phi3");
}

#[test]
fn qwen2_zero_biases() {
    check("smollm2-as-qwen2.gguf", "qwen2");
}

#[test]
fn qwen2_biases() {
    check("smollm2-as-qwen2-bias.gguf", "qwen2");
}

#[test]
fn qwen3_qk_norms() {
    check("smollm2-as-qwen3.gguf", "qwen3");
}
