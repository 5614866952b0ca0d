//! Gemma 3 (270M, Q4_K_M) through the component in wasmtime, against
//! llama.cpp: greedy parity with the golden file, teacher-forced
//! log-probabilities on its greedy paths, and a prompt longer than the
//! sliding window (`fixtures/gemma-3-270m-q4_k_m.long.json`).

use std::ffi::OsString;
use std::path::PathBuf;

use serde::Deserialize;
use wasm_chord_tests::*;

const GOLDEN: &str = "gemma-3-270m-q4_k_m.golden.json";

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasm-chord-gemma3-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `wasm-chord perplexity --tokens` on `seq`: one JSON object per scored
/// position (1..len), with its top 50.
fn score(seq: &[u32], file: PathBuf) -> Vec<serde_json::Value> {
    std::fs::write(&file, serde_json::to_vec(seq).unwrap()).unwrap();
    let args: Vec<OsString> = vec![
        "perplexity".into(),
        "-m".into(),
        gemma3().into(),
        "--tokens".into(),
        file.clone().into(),
        "--json".into(),
        "--top-k".into(),
        "50".into(),
    ];
    let out = run_cli(&args);
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let (summary, scored) = lines.split_last().expect("a summary line");
    assert_eq!(summary["n_tokens"].as_u64(), Some(seq.len() as u64 - 1));
    assert_eq!(scored.len(), seq.len() - 1);
    scored.to_vec()
}

/// How our teacher-forced log-probabilities compare with llama.cpp's.
#[derive(Default)]
struct Agreement {
    positions: usize,
    same_top1: usize,
    diffs: Vec<f64>,
    worst: (f64, String),
}

impl Agreement {
    /// Our scored position `s` against llama.cpp's choice `want` there and its top 5.
    fn add(&mut self, what: &str, s: &serde_json::Value, want: u32, theirs: Option<&[(u32, f64)]>) {
        let top: Vec<(u32, f64)> = serde_json::from_value(s["top"].clone()).unwrap();
        assert_eq!(top.len(), 50, "{what}");
        self.positions += 1;
        if top[0].0 == want {
            self.same_top1 += 1;
        }
        let token = s["token"].as_u64().unwrap() as u32;
        for &(tok, lp) in theirs.unwrap_or_default() {
            let ours = if tok == token {
                s["logprob"].as_f64().unwrap()
            } else {
                top.iter()
                    .find(|e| e.0 == tok)
                    .map(|e| e.1)
                    .unwrap_or_else(|| {
                        panic!("{what}: llama.cpp's top-5 token {tok} not in our top-50")
                    })
            };
            let d = (ours - lp).abs();
            if d > self.worst.0 {
                self.worst = (
                    d,
                    format!("{what} token {tok}: ours {ours:.4}, llama.cpp {lp:.4}"),
                );
            }
            self.diffs.push(d);
        }
    }

    /// Top-1 = llama.cpp's at >= 90% of positions; |Δ logprob| median <= 0.15, max <= `max`.
    fn check(mut self, label: &str, max_bound: f64) {
        self.diffs.sort_by(f64::total_cmp);
        let median = self.diffs[self.diffs.len() / 2];
        let max = *self.diffs.last().unwrap();
        let pct = 100.0 * self.same_top1 as f64 / self.positions as f64;
        eprintln!(
            "{label}: top-1 = llama.cpp's at {}/{} ({pct:.1}%); |logprob - llama.cpp's| over {} top-5 entries: median {median:.4}, max {max:.4} ({})",
            self.same_top1,
            self.positions,
            self.diffs.len(),
            self.worst.1
        );
        assert!(pct >= 90.0, "{label}: top-1 agreement {pct:.1}% < 90%");
        assert!(
            median <= 0.15,
            "{label}: median |Δ logprob| {median} > 0.15"
        );
        assert!(
            max <= max_bound,
            "{label}: max |Δ logprob| {max} > {max_bound}"
        );
    }
}

#[test]
fn gemma3_greedy_matches_llama_cpp() {
    let golden = Golden::load(GOLDEN);
    let greedy = greedy_parity(&gemma3(), &golden);
    eprintln!("gemma3: {greedy}");
    assert!(greedy.failures.is_empty(), "{}", greedy.failures.join("\n"));
}

#[test]
fn gemma3_teacher_forced_matches_llama_cpp_greedy() {
    let golden = Golden::load(GOLDEN);
    let scored = teacher_forced(&gemma3(), &golden);
    eprintln!("gemma3: {scored}");
    // Max 1.01 here (python step 21, an entry at logprob -2.8): Gemma-3's
    // large activations put its far tail at llama.cpp's own noise floor
    // (fixtures/README.md: its outputs move by up to ~1 between llama.cpp
    // builds); the 1.0 is held with that margin. Median: 0.074.
    // Since the Q8_0 (and Q4_0/Q4_1) dots sum each row's blocks in the
    // scalar reference's order (packed kernels) instead of 4 SIMD lanes,
    // that same entry is at 1.15 (ours -1.64, was -1.78; median unchanged,
    // top-1 97.5% -> 96.9%).
    if let Err(e) = scored.check(90.0, 0.15, 1.2) {
        panic!("gemma3 teacher-forced: {e}");
    }
}

#[test]
fn gemma3_teacher_forced_with_an_f32_kv_cache() {
    // As coverage.rs's kv_f32 tests: the goldens are llama.cpp's f16-cache
    // numbers, so the far tail is held to 1.5. Measured: top-1 97.5%,
    // median 0.0805, max 1.15 (python step 12, an entry at logprob -5.5);
    // the default f16 cache in the same run: 98.1%, 0.0734, 0.63.
    let golden = Golden::load(GOLDEN);
    let scored = teacher_forced_with(&gemma3(), &golden, None, &["--kv-cache", "f32"]);
    eprintln!("gemma3 --kv-cache f32: {scored}");
    if let Err(e) = scored.check(90.0, 0.15, 1.5) {
        panic!("gemma3 teacher-forced, f32 cache: {e}");
    }
}

/// llama.cpp's teacher-forced log-probabilities on a prompt longer than the
/// sliding window (see the fixture's `made_with`).
#[derive(Deserialize)]
struct Long {
    n_swa: usize,
    tokens: Vec<u32>,
    scored: Vec<LongPos>,
}

#[derive(Deserialize)]
struct LongPos {
    pos: usize,
    token: u32,
    top5: Vec<(u32, f64)>,
}

#[test]
fn gemma3_beyond_the_sliding_window_matches_llama_cpp() {
    let path = fixtures().join("gemma-3-270m-q4_k_m.long.json");
    let long: Long = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // The premise: every checked position lies beyond the window, where the
    // local layers no longer see the start of the prompt.
    assert!(!long.scored.is_empty());
    assert!(long.scored.iter().all(|p| p.pos > long.n_swa));
    let scored = score(&long.tokens, tmp_dir("long").join("long.json"));
    let mut agree = Agreement::default();
    for p in &long.scored {
        let s = &scored[p.pos - 1];
        assert_eq!(s["pos"].as_u64(), Some(p.pos as u64));
        assert_eq!(s["token"].as_u64(), Some(u64::from(p.token)));
        assert_eq!(long.tokens[p.pos], p.token);
        let what = format!("position {}", p.pos);
        agree.add(&what, s, p.top5[0].0, Some(p.top5.as_slice()));
    }
    // 0.92 (position 883, at logprob -8.8) while the Q5_0/Q4_K/Q6_K dots
    // summed 4 SIMD lanes; 1.08 (position 807, at -7.6) since they sum each
    // row's blocks in the scalar reference's order (packed kernels), the
    // same run moving the median 0.0915 -> 0.0872 and top-1 agreement
    // 95.5% -> 95.7%: the far tail of a 900-token context, not a drift.
    agree.check("gemma3 beyond the sliding window", 1.25);
}
