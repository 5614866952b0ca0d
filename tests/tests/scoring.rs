//! Scoring through the component in wasmtime: `wasm-chord perplexity` against
//! llama.cpp's `llama-perplexity` figures and its greedy top-5 log-probabilities,
//! KL-divergence base files, and clean errors on bad input.

use std::ffi::OsString;
use std::path::PathBuf;

use wasm_chord_tests::*;

fn perplexity(extra: &[OsString]) -> std::process::Output {
    let mut args: Vec<OsString> = vec!["perplexity".into(), "-m".into(), smollm2().into()];
    args.extend(extra.iter().cloned());
    run_cli(&args)
}

fn stdout_ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Parse "Final estimate: PPL = x +/- y" and the number of running estimates.
fn final_estimate(stdout: &str) -> (f64, f64, usize) {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Final estimate: PPL = "))
        .unwrap_or_else(|| panic!("no final estimate in {stdout:?}"));
    let (ppl, unc) = line.split_once(" +/- ").expect("x +/- y");
    let chunks = stdout
        .lines()
        .find(|l| l.starts_with("[1]"))
        .map_or(0, |l| l.matches('[').count());
    (ppl.parse().unwrap(), unc.trim().parse().unwrap(), chunks)
}

#[test]
fn ppl_text_matches_llama_perplexity() {
    let file = fixtures().join("ppl-text.md");
    // llama.cpp's llama-perplexity on the same model and text.
    for (n_ctx, want, want_unc, want_chunks) in
        [(128, 100.5309, 9.91842, 21), (256, 72.8833, 7.06164, 10)]
    {
        let out = perplexity(&[
            "-f".into(),
            file.clone().into(),
            "--n-ctx".into(),
            n_ctx.to_string().into(),
        ]);
        let stdout = stdout_ok(&out, "perplexity");
        let (ppl, unc, chunks) = final_estimate(&stdout);
        let rel = (ppl - want).abs() / want;
        eprintln!(
            "-c {n_ctx}: ours PPL = {ppl:.4} +/- {unc:.5} ({chunks} chunks), llama.cpp {want} +/- {want_unc} ({want_chunks}): {:.3}% apart; {}",
            100.0 * rel,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert_eq!(chunks, want_chunks, "-c {n_ctx}: chunk count");
        assert!(rel < 0.01, "-c {n_ctx}: PPL {ppl} vs llama.cpp {want}");
        assert!(
            (unc - want_unc).abs() / want_unc < 0.05,
            "-c {n_ctx}: uncertainty {unc} vs llama.cpp {want_unc}"
        );
    }
}

#[test]
fn teacher_forced_matches_llama_cpp_greedy() {
    let golden = Golden::load("smollm2-135m-instruct-q4_1.golden.json");
    let report = teacher_forced(&smollm2(), &golden);
    eprintln!("{report}");
    // The max is held at 1.25, not 1.0: with llama.cpp's decode attention
    // arithmetic (f16 q and accumulator) and x86 activation rounding, one
    // far-tail entry (chat-mountain step 26, at logprob -8.6) lies 1.08 from
    // llama.cpp's (0.66 with plain f32 attention, when the k-quant files had
    // 1.09-1.33 instead). The max over ~960 entries is at llama.cpp's own
    // noise floor: see `max_bound` in tests/tests/coverage.rs. Median 0.061.
    if let Err(e) = report.check(90.0, 0.15, 1.25) {
        panic!("{e}");
    }
}

/// A short text for the KL-divergence tests: the start of the fixture.
fn short_text(dir: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(fixtures().join("ppl-text.md")).unwrap();
    let cut = text.char_indices().nth(3000).map_or(text.len(), |(i, _)| i);
    let f = dir.join("short.txt");
    std::fs::write(&f, &text[..cut]).unwrap();
    f
}

#[test]
fn kl_divergence_file_round_trips() {
    let dir = tmp_dir("kld");
    let text = short_text(&dir);
    let base = dir.join("base.kld");
    let out = perplexity(&[
        "-f".into(),
        text.clone().into(),
        "--n-ctx".into(),
        "64".into(),
        "--kl-divergence-base".into(),
        base.clone().into(),
    ]);
    let (ppl, _, chunks) = final_estimate(&stdout_ok(&out, "write base"));
    assert!(chunks >= 4, "{chunks} chunks");

    // Read back, with the text (checked against the file's tokens) and without.
    for with_text in [true, false] {
        let mut args: Vec<OsString> = vec![
            "--kl-divergence-base".into(),
            base.clone().into(),
            "--kl-divergence".into(),
            "--json".into(),
        ];
        if with_text {
            args.extend(["-f".into(), text.clone().into()]);
        }
        let stdout = stdout_ok(&perplexity(&args), "read base");
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let kl = &summary["kl_divergence"];
        let mean = kl["mean"].as_f64().unwrap();
        let same_top = kl["same_top_percent"].as_f64().unwrap();
        eprintln!(
            "KLD self-test: mean KLD {mean:.3e} ± {:.3e}, same top {same_top}%, RMS Δp {:.5}%, PPL {} (base {}, written run {ppl})",
            kl["uncertainty"].as_f64().unwrap(),
            kl["rms_dp_percent"].as_f64().unwrap(),
            kl["ppl"].as_f64().unwrap(),
            kl["ppl_base"].as_f64().unwrap(),
        );
        assert!(mean.abs() < 1e-6, "mean KLD {mean}");
        assert_eq!(same_top, 100.0);
        assert_eq!(
            summary["n_tokens"].as_u64(),
            Some(chunks as u64 * (64 - 1 - 32))
        );
        assert!((summary["perplexity"].as_f64().unwrap() - ppl).abs() / ppl < 1e-3);
    }

    // A truncated copy and a wrong magic are refused cleanly.
    let bytes = std::fs::read(&base).unwrap();
    let truncated = dir.join("truncated.kld");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let mut wrong = bytes.clone();
    wrong[..8].copy_from_slice(b"_logitz_");
    let bad_magic = dir.join("magic.kld");
    std::fs::write(&bad_magic, &wrong).unwrap();
    for (f, what, needle) in [
        (&truncated, "truncated", "truncated"),
        (&bad_magic, "bad magic", "magic"),
    ] {
        let out = perplexity(&[
            "--kl-divergence-base".into(),
            f.into(),
            "--kl-divergence".into(),
        ]);
        let err = assert_clean_error(&out, what);
        assert!(err.contains(needle), "{what}: {err}");
    }
    // The file's context size is checked against --n-ctx.
    let out = perplexity(&[
        "--kl-divergence-base".into(),
        base.clone().into(),
        "--kl-divergence".into(),
        "--n-ctx".into(),
        "128".into(),
    ]);
    assert_clean_error(&out, "n_ctx mismatch");
    // And its tokens against the text.
    let other = dir.join("other.txt");
    std::fs::write(&other, "Completely different words. ".repeat(100)).unwrap();
    let out = perplexity(&[
        "--kl-divergence-base".into(),
        base.into(),
        "--kl-divergence".into(),
        "-f".into(),
        other.into(),
    ]);
    let err = assert_clean_error(&out, "token mismatch");
    assert!(err.contains("differs"), "{err}");
}

#[test]
fn bad_input_is_refused_cleanly() {
    let dir = tmp_dir("ppl-bad");
    let oov = dir.join("oov.json");
    std::fs::write(&oov, "[1, 2, 4000000]").unwrap();
    let out = perplexity(&["--tokens".into(), oov.into()]);
    let err = assert_clean_error(&out, "out-of-vocabulary token");
    assert!(err.contains("vocabulary"), "{err}");

    let not_json = dir.join("bad.json");
    std::fs::write(&not_json, "[1, 2,").unwrap();
    let out = perplexity(&["--tokens".into(), not_json.into()]);
    assert_clean_error(&out, "not JSON");

    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let out = perplexity(&["-f".into(), empty.into()]);
    assert_clean_error(&out, "empty file");
    let out = perplexity(&["-p".into(), "".into()]);
    assert_clean_error(&out, "empty prompt");

    for n in ["0", "1"] {
        let out = perplexity(&[
            "-p".into(),
            "Hello world".into(),
            "--n-ctx".into(),
            n.into(),
        ]);
        let err = assert_clean_error(&out, "tiny n_ctx");
        assert!(err.contains("n-ctx"), "{err}");
    }
    // Too little text for one chunk.
    let out = perplexity(&["-p".into(), "Hello world".into()]);
    assert_clean_error(&out, "text shorter than a chunk");
    let out = perplexity(&[]);
    assert_clean_error(&out, "no input");
}
