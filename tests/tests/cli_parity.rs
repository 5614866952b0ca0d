//! One CLI, three launchers: the same arguments through the native
//! `wasm-chord` launcher, stock `wasmtime run` of the composed
//! `wasm-chord-cli.wasm`, and the Node launcher (`host-js/bin/wasm-chord.mjs`,
//! the composed component transpiled by jco) must print byte-identical stdout
//! and exit alike. Lines that hold wall-clock timings (`run --json`'s stats)
//! are compared with the timing fields removed; everything else is compared
//! byte for byte.
//!
//! `cargo xtask test` sets WASM_CHORD_BIN, WASM_CHORD_KERNEL, WASM_CHORD_SMOLLM2,
//! WASMTIME_BIN and WASM_CHORD_CLI_WASM, and transpiles host-js first.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;

use wasm_chord_tests::*;

fn models_dir() -> PathBuf {
    smollm2().parent().unwrap().to_path_buf()
}

fn args(list: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    list.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// The launchers, in the order `launch` returns their outputs.
const LAUNCHERS: [&str; 3] = ["native", "wasmtime run", "node"];

/// Run `a` through every launcher (the stock-wasmtime guest with `dirs`
/// preopened; the others preopen what the arguments name themselves).
fn launch(dirs: &[&Path], a: &[OsString]) -> [Output; 3] {
    let mut all = vec![models_dir()];
    all.extend(dirs.iter().map(|d| d.to_path_buf()));
    let refs: Vec<&Path> = all.iter().map(PathBuf::as_path).collect();
    [run_cli(a), wasmtime_run(&refs, a), node_run(a)]
}

/// Every launcher exits like the native one, with byte-identical stdout.
fn assert_same(what: &str, outs: &[Output; 3]) {
    let native = &outs[0];
    for (name, o) in LAUNCHERS.iter().zip(outs).skip(1) {
        assert_eq!(
            native.status.code(),
            o.status.code(),
            "{what}: exit codes differ\nnative: {}\n{name}: {}",
            show(native),
            show(o)
        );
        assert!(
            native.stdout == o.stdout,
            "{what}: stdout differs\nnative: {}\n{name}: {}",
            show(native),
            show(o)
        );
    }
}

fn assert_ok(what: &str, o: &Output) {
    assert!(o.status.success(), "{what}: {}", show(o));
}

#[test]
fn tokenize_info_and_sampled_run_are_identical() {
    let m = smollm2();
    for a in [
        args(&[&"tokenize", &"-m", &m, &"Hello world, <|im_start|>user\nhi"]),
        args(&[&"tokenize", &"--no-special", &"-m", &m, &"<|im_start|> x"]),
        args(&[&"info", &"--json", &"-m", &m]),
        args(&[&"info", &"-m", &m]),
        args(&[&"info", &"--json", &"--stream", &"-m", &m]),
        args(&[
            &"run",
            &"-m",
            &m,
            &"-p",
            &"Once upon a time",
            &"-n",
            &"12",
            &"--seed",
            &"7",
            &"--temp",
            &"0.9",
        ]),
    ] {
        let outs = launch(&[], &a);
        assert_ok("native", &outs[0]);
        assert_same(&format!("{a:?}"), &outs);
    }
}

/// The `--json` stats line without its wall-clock fields.
fn untimed(line: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(line).expect("stats line is JSON");
    let s = v["stats"].as_object_mut().expect("a stats object");
    for k in [
        "prompt_tokens_per_second",
        "generated_tokens_per_second",
        "load_time_ms",
    ] {
        assert!(s.remove(k).is_some(), "stats lack {k}: {line}");
    }
    assert!(s["cache"]
        .as_object_mut()
        .unwrap()
        .remove("load_nanos")
        .is_some());
    assert!(s["store"]
        .as_object_mut()
        .unwrap()
        .remove("read_nanos")
        .is_some());
    v
}

#[test]
fn run_json_is_identical_but_for_timings() {
    let m = smollm2();
    for extra in [&[][..], &["--stream", "--cache-layers", "4"][..]] {
        let mut a = args(&[
            &"run",
            &"-m",
            &m,
            &"-p",
            &"The capital of France is",
            &"-n",
            &"6",
            &"--temp",
            &"0",
            &"--seed",
            &"7",
            &"--json",
        ]);
        a.extend(extra.iter().map(OsString::from));
        let outs = launch(&[], &a);
        assert_ok("native", &outs[0]);
        let native = String::from_utf8(outs[0].stdout.clone()).unwrap();
        let nl: Vec<&str> = native.lines().collect();
        assert_eq!(nl.len(), 7, "{native}");
        for (name, o) in LAUNCHERS.iter().zip(&outs).skip(1) {
            assert_ok(name, o);
            let text = String::from_utf8(o.stdout.clone()).unwrap();
            let gl: Vec<&str> = text.lines().collect();
            assert_eq!(
                nl[..6],
                gl[..gl.len().saturating_sub(1)],
                "{name}: token lines ({extra:?})"
            );
            assert_eq!(
                untimed(nl[6]),
                untimed(gl[gl.len() - 1]),
                "{name}: stats ({extra:?})"
            );
        }
    }
}

#[test]
fn perplexity_of_the_fixture_text_is_identical() {
    let f = fixtures().join("ppl-text.md");
    let a = args(&[&"perplexity", &"-m", &smollm2(), &"-c", &"128", &"-f", &f]);
    let outs = launch(&[&fixtures()], &a);
    assert_ok("native", &outs[0]);
    assert_same("perplexity -c 128 -f ppl-text.md", &outs);
    assert!(String::from_utf8_lossy(&outs[0].stdout).contains("Final estimate: PPL = "));
}

#[test]
fn perplexity_json_scores_of_tokens_are_identical() {
    let dir = tmp_dir("parity-tokens");
    let m = smollm2();
    let tok = run_cli(&args(&[
        &"tokenize",
        &"-m",
        &m,
        &"The quick brown fox jumps over the lazy dog. It was not amused, and said so at length.",
    ]));
    assert_ok("tokenize", &tok);
    let file = dir.join("tokens.json");
    std::fs::write(&file, &tok.stdout).unwrap();
    for extra in [
        &["--json", "--top-k", "5"][..],
        &[][..],
        &["--json", "--top-k", "0", "-c", "64"][..],
    ] {
        let mut a = args(&[&"perplexity", &"-m", &m, &"--tokens", &file]);
        a.extend(extra.iter().map(OsString::from));
        let outs = launch(&[&dir], &a);
        assert_ok("native", &outs[0]);
        assert_same(&format!("--tokens {extra:?}"), &outs);
    }
}

/// A text of a few 64-token chunks: the first lines of the fixture text.
fn short_text(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(fixtures().join("ppl-text.md")).unwrap();
    let mut end = 1400.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let path = dir.join("short.txt");
    std::fs::write(&path, &text[..end]).unwrap();
    path
}

#[test]
fn kl_divergence_base_files_cross_launchers() {
    let dir = tmp_dir("parity-kld");
    let m = smollm2();
    let text = short_text(&dir);
    let files: Vec<PathBuf> = LAUNCHERS
        .iter()
        .map(|l| dir.join(format!("{}.kld", l.replace(' ', "-"))))
        .collect();
    let write = |base: &Path| {
        args(&[
            &"perplexity",
            &"-m",
            &m,
            &"-c",
            &"64",
            &"-f",
            &text,
            &"--kl-divergence-base",
            &base,
        ])
    };
    // Each launcher writes its own base file.
    let written = [
        run_cli(&write(&files[0])),
        wasmtime_run(&[&models_dir(), &dir], &write(&files[1])),
        node_run(&write(&files[2])),
    ];
    assert_ok("native writes", &written[0]);
    assert_same("writing a base file", &written);
    let native = std::fs::read(&files[0]).unwrap();
    assert!(native.len() > 20 && native.starts_with(b"_logits_"));
    for (name, f) in LAUNCHERS.iter().zip(&files).skip(1) {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{name} wrote no base file: {e}"));
        assert!(
            bytes == native,
            "{name}'s base file differs from native's ({} vs {} bytes)",
            bytes.len(),
            native.len()
        );
    }

    // Every launcher reads every launcher's file, as a report and as JSON
    // (with and without the text).
    for (writer, file) in LAUNCHERS.iter().zip(&files) {
        for extra in [&[][..], &["--json", "--top-k", "3"][..]] {
            let mut a = args(&[
                &"perplexity",
                &"-m",
                &m,
                &"--kl-divergence-base",
                file,
                &"--kl-divergence",
            ]);
            a.extend(extra.iter().map(OsString::from));
            let outs = launch(&[&dir], &a);
            assert_ok("native reads", &outs[0]);
            assert_same(&format!("reading {writer}'s file {extra:?}"), &outs);
        }
    }
    let a = args(&[
        &"perplexity",
        &"-m",
        &m,
        &"-f",
        &text,
        &"--kl-divergence-base",
        &files[2],
        &"--kl-divergence",
    ]);
    let outs = launch(&[&dir], &a);
    assert_ok("native with text", &outs[0]);
    assert_same("--kl-divergence with the text", &outs);
    let report = String::from_utf8_lossy(&outs[1].stdout);
    assert!(
        report.contains("====== KL divergence statistics ======"),
        "{report}"
    );
}

#[test]
fn bad_input_fails_alike() {
    let dir = tmp_dir("parity-bad");
    let m = smollm2();
    let missing = dir.join("missing.gguf");
    let not_gguf = fixtures().join("ppl-text.md");
    let truncated = dir.join("truncated.kld");
    let mut head = b"_logits_".to_vec();
    for v in [64i32, 49152, 1] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&truncated, &head).unwrap();
    let not_kld = dir.join("not.kld");
    std::fs::write(&not_kld, b"GGUF and then some").unwrap();
    let cases: Vec<(&str, Vec<OsString>)> = vec![
        (
            "missing model",
            args(&[&"tokenize", &"-m", &missing, &"hi"]),
        ),
        (
            "missing model (run)",
            args(&[&"run", &"-m", &missing, &"-p", &"hi"]),
        ),
        ("not a model", args(&[&"info", &"-m", &not_gguf])),
        (
            "not a model (json)",
            args(&[&"info", &"--json", &"-m", &not_gguf]),
        ),
        ("a directory as model", args(&[&"info", &"-m", &dir])),
        (
            "missing -f",
            args(&[&"perplexity", &"-m", &m, &"-f", &dir.join("none.txt")]),
        ),
        (
            "missing --tokens",
            args(&[
                &"perplexity",
                &"-m",
                &m,
                &"--tokens",
                &dir.join("none.json"),
            ]),
        ),
        (
            "bad -n",
            args(&[&"run", &"-m", &m, &"-p", &"hi", &"-n", &"0"]),
        ),
        (
            "bad --top-p",
            args(&[&"run", &"-m", &m, &"-p", &"hi", &"--top-p", &"2"]),
        ),
        (
            "too small -c",
            args(&[&"perplexity", &"-m", &m, &"-c", &"3", &"-p", &"hello there"]),
        ),
        ("nothing to score", args(&[&"perplexity", &"-m", &m])),
        (
            "truncated base file",
            args(&[
                &"perplexity",
                &"-m",
                &m,
                &"--kl-divergence-base",
                &truncated,
                &"--kl-divergence",
            ]),
        ),
        (
            "not a base file",
            args(&[
                &"perplexity",
                &"-m",
                &m,
                &"--kl-divergence-base",
                &not_kld,
                &"--kl-divergence",
            ]),
        ),
        ("bench -r 0", args(&[&"bench", &"-m", &m, &"-r", &"0"])),
        (
            "bad --temp",
            args(&[&"run", &"-m", &m, &"-p", &"hi", &"--temp", &"-1"]),
        ),
        (
            "missing --messages",
            args(&[&"run", &"-m", &m, &"--messages", &dir.join("none.json")]),
        ),
    ];
    for (what, a) in cases {
        let outs = launch(&[&dir, &fixtures()], &a);
        assert_same(what, &outs);
        for (name, o) in LAUNCHERS.iter().zip(&outs) {
            assert_clean_error(o, &format!("{name}: {what}"));
        }
    }
    // Usage errors: clap would exit 2, but WASI 0.2's `exit` carries only
    // success or failure, so under every launcher the code is 1. Both fail
    // with nothing on stdout.
    for a in [
        args(&[&"run", &"--bogus"]),
        args(&[
            &"perplexity",
            &"-m",
            &m,
            &"-f",
            &not_gguf,
            &"--tokens",
            &not_gguf,
        ]),
    ] {
        for (name, o) in LAUNCHERS.iter().zip(&launch(&[], &a)) {
            assert_eq!(o.status.code(), Some(1), "{name}: {}", show(o));
            assert!(o.stdout.is_empty(), "{name}: {}", show(o));
            assert!(o.stderr.starts_with(b"error: "), "{name}: {}", show(o));
        }
    }
}

/// A 20-byte base file whose header sizes overflow 64-bit arithmetic: the
/// one CLI rejects it cleanly (today's native CLI aborts on a huge allocation).
#[test]
fn overflowing_base_file_is_a_clean_error() {
    let dir = tmp_dir("parity-overflow");
    let file = dir.join("overflow.kld");
    let mut b = b"_logits_".to_vec();
    for v in [1145324614i32, 22, 1 << 30] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&file, &b).unwrap();
    let a = args(&[
        &"perplexity",
        &"-m",
        &smollm2(),
        &"--kl-divergence-base",
        &file,
        &"--kl-divergence",
    ]);
    for (name, o) in LAUNCHERS.iter().zip(&launch(&[&dir], &a)) {
        let err = assert_clean_error(o, &format!("{name}: overflowing base file"));
        assert!(err.contains("impossible header"), "{name}: {err}");
        assert!(o.stdout.is_empty(), "{name}: {}", show(o));
    }
}

#[test]
fn help_names_the_launcher_flags() {
    let g = wasmtime_run(&[], &args(&[&"--help"]));
    assert_ok("--help", &g);
    let s = String::from_utf8_lossy(&g.stdout);
    for w in [
        "run",
        "tokenize",
        "info",
        "bench",
        "perplexity",
        "--app",
        "--max-guest-memory",
    ] {
        assert!(s.contains(w), "--help lacks {w}: {s}");
    }
}

#[test]
fn bench_runs_in_the_guest() {
    let a = args(&[
        &"bench",
        &"-m",
        &smollm2(),
        &"-p",
        &"16",
        &"-n",
        &"4",
        &"-r",
        &"1",
        &"--json",
    ]);
    let outs = launch(&[], &a);
    let parse =
        |o: &Output| -> Vec<serde_json::Value> { serde_json::from_slice(&o.stdout).unwrap() };
    for (name, o) in LAUNCHERS.iter().zip(&outs) {
        assert_ok(name, o);
    }
    let nr = parse(&outs[0]);
    assert_eq!(nr.len(), 2);
    for (name, o) in LAUNCHERS.iter().zip(&outs).skip(1) {
        for (x, y) in nr.iter().zip(&parse(o)) {
            for k in ["model", "size_bytes", "params", "test", "n_prompt", "n_gen"] {
                assert_eq!(x[k], y[k], "{name}: {k}");
            }
            assert!(y["median_ts"].as_f64().unwrap() > 0.0, "{name}: {y}");
        }
    }
}

/// The relaxed-SIMD kernel and the simd128 one give bit-identical logits:
/// the native launcher with each app (`cargo xtask build` puts both next to
/// the executable) writes a KL-divergence base file (every logit of every
/// scored token), and the two files are the same bytes.
#[test]
fn relaxed_simd_and_simd128_logits_are_identical() {
    let dir = tmp_dir("parity-relaxed");
    let text = short_text(&dir);
    // SmolLM2 (Q4_1, Q8_0 output) and Gemma 3 (Q5_0, Q4_K, Q6_K, Q8_0).
    for m in [smollm2(), gemma3()] {
        let name = m.file_stem().unwrap().to_string_lossy().into_owned();
        let apps = ["wasm-chord-app.wasm", "wasm-chord-app-relaxed.wasm"];
        let mut files = Vec::new();
        for app in apps {
            let app = bin().with_file_name(app);
            assert!(
                app.is_file(),
                "no '{}': run `cargo xtask build`",
                app.display()
            );
            let base = dir.join(format!(
                "{name}-{}.kld",
                app.file_stem().unwrap().to_string_lossy()
            ));
            let out = cli_command(&args(&[
                &"perplexity",
                &"-m",
                &m,
                &"-c",
                &"64",
                &"-f",
                &text,
                &"--kl-divergence-base",
                &base,
            ]))
            .env("WASM_CHORD_APP", &app)
            .output()
            .expect("spawn wasm-chord");
            assert_ok(&app.display().to_string(), &out);
            files.push(std::fs::read(&base).unwrap());
            std::fs::remove_file(&base).unwrap();
        }
        assert!(files[0].len() > 20 && files[0].starts_with(b"_logits_"));
        assert!(
            files[0] == files[1],
            "{name}: the relaxed-SIMD kernel's logits differ from simd128's ({} vs {} bytes)",
            files[1].len(),
            files[0].len()
        );
    }
}
