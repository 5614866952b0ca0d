//! Command-line validation: these fail before the kernel is needed.

use std::process::{Command, Output};

fn wasm_chord(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasm-chord"))
        .args(args)
        .env_remove("WASM_CHORD_KERNEL")
        .output()
        .expect("run wasm-chord")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 1 and exactly one `error: ...` line.
fn assert_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn zero_tokens_is_rejected() {
    assert_error(
        &wasm_chord(&["run", "-m", "x.gguf", "-p", "hi", "-n", "0"]),
        "-n must be at least 1",
    );
}

#[test]
fn nan_temperature_is_rejected() {
    assert_error(
        &wasm_chord(&["run", "-m", "x.gguf", "-p", "hi", "--temp", "nan"]),
        "--temp",
    );
}

#[test]
fn negative_temperature_is_rejected() {
    assert_error(
        &wasm_chord(&["run", "-m", "x.gguf", "-p", "hi", "--temp", "-1"]),
        "--temp",
    );
}

#[test]
fn bad_top_p_is_rejected() {
    assert_error(
        &wasm_chord(&["run", "-m", "x.gguf", "-p", "hi", "--top-p", "1.5"]),
        "--top-p",
    );
}

#[test]
fn missing_model_is_reported_before_the_kernel() {
    assert_error(
        &wasm_chord(&["run", "-m", "x.gguf", "-p", "hi"]),
        "cannot open model 'x.gguf': No such file or directory",
    );
    assert_error(
        &wasm_chord(&["info", "-m", "x.gguf"]),
        "cannot open model 'x.gguf'",
    );
    assert_error(
        &wasm_chord(&["tokenize", "-m", "x.gguf", "hello"]),
        "cannot open model 'x.gguf'",
    );
}

#[test]
fn directory_model_is_reported() {
    let dir = std::env::temp_dir();
    let dir = dir.to_str().expect("utf8 temp dir");
    assert_error(
        &wasm_chord(&["run", "-m", dir, "-p", "hi"]),
        "Is a directory",
    );
}

#[test]
fn missing_kernel_is_explained() {
    let model = env!("CARGO_MANIFEST_DIR").to_string() + "/Cargo.toml";
    let o = wasm_chord(&["info", "-m", &model, "--kernel", "/nonexistent/kernel.wasm"]);
    assert_error(
        &o,
        "cannot read kernel component '/nonexistent/kernel.wasm'",
    );
}

#[test]
fn usage_errors_exit_2() {
    let o = wasm_chord(&["run", "-p", "hi"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = wasm_chord(&["run", "-m", "x.gguf"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "prompt or messages required: {}",
        stderr(&o)
    );
}

#[test]
fn help_describes_every_flag() {
    for sub in ["run", "tokenize", "info", "bench"] {
        let o = wasm_chord(&[sub, "--help"]);
        assert!(o.status.success());
        let text = String::from_utf8_lossy(&o.stdout);
        for line in text.lines().filter(|l| l.trim_start().starts_with('-')) {
            // "  -m, --model <MODEL>  Model file (GGUF)": a description follows the flag.
            let parts: Vec<&str> = line.trim().splitn(2, "  ").collect();
            assert!(
                parts.len() == 2 && !parts[1].trim().is_empty(),
                "{sub}: undocumented flag: {line}"
            );
        }
    }
}
