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

use wasm_chord_tests::*;

/// Both checks on `file` against `fixtures/archs/<file stem>.golden.json`.
fn check(file: &str, arch: &str) {
    check_ctx(file, arch, "golden", None, 1.0);
}

/// Both checks on `file` against `fixtures/archs/<file stem>.<kind>.json`,
/// in sessions of `n_ctx` positions where given (llama.cpp's goldens were
/// made with `-c 2048` unless the test says otherwise), with `max` as the
/// bound of the teacher-forced max |Δ logprob|.
fn check_ctx(file: &str, arch: &str, kind: &str, n_ctx: Option<u32>, max: f64) {
    let stem = file.trim_end_matches(".gguf");
    let golden = Golden::load(&format!("archs/{stem}.{kind}.json"));
    assert_eq!(golden.model, file, "the golden was made on another file");
    let model = variants_dir().join(file);
    assert!(
        model.is_file(),
        "{} is missing: `cargo xtask fetch relaid` generates it",
        model.display()
    );

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

    let scored = teacher_forced_ctx(&model, &golden, n_ctx);
    eprintln!("{stem}: {scored}");
    let greedy = greedy_parity_ctx(&model, &golden, n_ctx);
    eprintln!("{stem}: {greedy}");
    let mut failures = Vec::new();
    if let Err(e) = scored.check(90.0, 0.15, max) {
        failures.push(format!("teacher-forced: {e}"));
    }
    failures.extend(greedy.failures.iter().map(|e| format!("greedy: {e}")));
    assert!(failures.is_empty(), "{stem}:\n{}", failures.join("\n"));
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

/// Unit q/k norm weights: attention flattened, a model that mostly repeats
/// newlines; still far from a kernel that skips the norms.
#[test]
fn qwen3_qk_norms() {
    check("smollm2-as-qwen3.gguf", "qwen3");
}

/// q/k norm weights near SmolLM2's per-layer head RMS, with a ±10% ripple
/// over the dimensions: varied text; a kernel ignoring the weights, or only
/// the ripple, fails (see fixtures/archs/README.md).
#[test]
fn qwen3_qk_norm_weights() {
    check("smollm2-as-qwen3-norms.gguf", "qwen3");
}

/// llama with Llama 3.x `rope_freqs.weight` factors (1 to 8, old context 512
/// so that the prompts' positions reach the scaled pairs).
#[test]
fn llama3_rope_freqs() {
    check("smollm2-as-llama3-ropefreqs.gguf", "llama");
}

/// qwen2 (NEOX RoPE) with YaRN: factor 4, original context 2048.
///
/// One far-tail entry: max |Δ logprob| 1.48 (python step 30, at logprob
/// -9.8) since the Q4_1/Q8_0 dots sum each row's blocks in the scalar
/// reference's order (packed kernels) instead of 4 SIMD lanes; before, 0.96
/// (median 0.079 then, 0.084 now; top-1 98.4% both). See coverage.rs on
/// llama.cpp's own noise floor in the far tail.
#[test]
fn qwen2_yarn() {
    check_ctx("smollm2-as-qwen2-yarn.gguf", "qwen2", "golden", None, 1.5);
}

/// mistral3 (Ministral 3's keys): YaRN factor 4 from an original context of
/// 32 with its own betas (16, 2) and log multiplier 1, the Llama-4 attention
/// temperature 0.5 (q scaled by 1 + 0.5 ln(floor(pos / 32) + 1)), and a
/// declared sliding window of 16 that llama.cpp does not enforce.
#[test]
fn mistral3_yarn_temperature() {
    check("smollm2-as-mistral3.gguf", "mistral3");
}

/// phi3 with LongRoPE, original context 1024: llama.cpp's server with
/// `-c 2048` takes the long factors (and the attention factor).
///
/// The max is held at 2.0, not 1.0: the python case's last steps (a peaked
/// code completion, entries at logprob -8 to -12) lie far from llama.cpp's
/// for an exact float64 forward pass too (max 1.315 there, ours 1.77, in the
/// same direction); median 0.074 for both. The same kernel with the short
/// factors scores median 0.152, max 5.17 here; without the attention factor
/// 0.312, 3.52.
#[test]
fn phi3_longrope_long_factors() {
    check_ctx(
        "smollm2-as-phi3-longrope.gguf",
        "phi3",
        "golden",
        Some(2048),
        2.0,
    );
}

/// The same file in a context of 1024 (llama-server `-c 1024`): the short
/// factors.
#[test]
fn phi3_longrope_short_factors() {
    check_ctx(
        "smollm2-as-phi3-longrope.gguf",
        "phi3",
        "short.golden",
        Some(1024),
        1.0,
    );
}
