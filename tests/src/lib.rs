//! Shared helpers of the cross-host tests in `tests/tests/`.
//!
//! The tests run the real product: the `wasm-chord` binary hosting the kernel
//! component in wasmtime. `cargo xtask test` builds both, fetches the
//! reference model and sets the environment variables read here.

use serde::Deserialize;
use std::path::PathBuf;
use std::process::{Command, Output};

fn env_path(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => panic!("{var} is not set: run the tests with `cargo xtask test`, which builds the kernel, fetches the models and sets it"),
    }
}

/// The `wasm-chord` binary.
pub fn bin() -> PathBuf {
    env_path("WASM_CHORD_BIN")
}

/// The kernel component.
pub fn kernel() -> PathBuf {
    env_path("WASM_CHORD_KERNEL")
}

/// SmolLM2-135M-Instruct Q4_1.
pub fn smollm2() -> PathBuf {
    env_path("WASM_CHORD_SMOLLM2")
}

/// Gemma-3-270M Q4_K_M (gemma3 architecture, SentencePiece vocabulary).
pub fn gemma3() -> PathBuf {
    env_path("WASM_CHORD_GEMMA3")
}

/// The project's fixtures folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Run `wasm-chord ARGS` with the kernel set; returns the output.
pub fn run_cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(bin())
        .args(args)
        .env("WASM_CHORD_KERNEL", kernel())
        .output()
        .expect("spawn wasm-chord")
}

/// One case of a golden file (llama.cpp's outputs).
#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub id: String,
    pub prompt: String,
    #[serde(default)]
    pub messages: Option<serde_json::Value>,
    pub prompt_tokens: Vec<u32>,
    pub greedy_tokens: Vec<u32>,
    pub greedy_text: String,
    pub top5_logprobs: Vec<Option<Vec<(u32, f64)>>>,
}

/// A golden file.
#[derive(Debug, Deserialize)]
pub struct Golden {
    pub model: String,
    pub n_predict: usize,
    #[serde(default)]
    pub near_tie: Option<f64>,
    pub cases: Vec<GoldenCase>,
}

impl Golden {
    pub fn load(name: &str) -> Golden {
        let path = fixtures().join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn near_tie(&self) -> f64 {
        self.near_tie.unwrap_or(0.75)
    }
}

/// The fixture rule (fixtures/README.md): greedy tokens equal llama.cpp's
/// until the first difference; there, ours must be one that llama.cpp's top-5
/// rates within `near_tie` of its choice (or the step has no top-5). Returns
/// the index of the first difference, if any.
pub fn check_greedy(
    case: &GoldenCase,
    ours: &[u32],
    near_tie: f64,
) -> Result<Option<usize>, String> {
    let n = case.greedy_tokens.len();
    if ours.len() < n {
        return Err(format!(
            "{}: generated {} tokens, expected {n}",
            case.id,
            ours.len()
        ));
    }
    for (i, (&got, &want)) in ours.iter().zip(&case.greedy_tokens).enumerate() {
        if got == want {
            continue;
        }
        let Some(top5) = &case.top5_logprobs[i] else {
            return Ok(Some(i)); // parting at a null step passes
        };
        let lp = |t: u32| top5.iter().find(|e| e.0 == t).map(|e| e.1);
        let chosen = lp(want).ok_or_else(|| {
            format!(
                "{}: step {i}: llama.cpp's token {want} missing from its top-5",
                case.id
            )
        })?;
        return match lp(got) {
            Some(l) if chosen - l <= near_tie => Ok(Some(i)),
            Some(l) => Err(format!(
                "{}: step {i}: we chose {} (llama.cpp logprob {l:.3}), llama.cpp chose {want} ({chosen:.3}): gap {:.3} > {near_tie}",
                case.id,
                got,
                chosen - l
            )),
            None => Err(format!(
                "{}: step {i}: we chose {}, not in llama.cpp's top-5 {:?} (it chose {want})",
                case.id, got, top5
            )),
        };
    }
    Ok(None)
}

/// Parse `--json` output of `wasm-chord run`: the token ids and the stats line.
pub fn parse_run_json(stdout: &[u8]) -> (Vec<u32>, String, serde_json::Value) {
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut stats = serde_json::Value::Null;
    for line in String::from_utf8_lossy(stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        if let Some(s) = v.get("stats") {
            stats = s.clone();
        } else {
            tokens.push(v["token"].as_u64().expect("token") as u32);
            text.push_str(v["text"].as_str().expect("text"));
        }
    }
    (tokens, text, stats)
}

/// Assert that a failed command printed one clean error line.
pub fn assert_clean_error(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "{what}: expected failure, got success; stderr: {stderr}"
    );
    assert!(
        stderr.starts_with("error: "),
        "{what}: stderr should start with 'error: ': {stderr:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: expected one line: {stderr:?}"
    );
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "wasm backtrace",
        "wasm trap",
        "stack backtrace",
    ] {
        assert!(
            !stderr.contains(bad),
            "{what}: stderr contains {bad:?}: {stderr}"
        );
    }
    stderr
}
