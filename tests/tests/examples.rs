//! The embedding examples build (by `cargo xtask build`) and run.

use std::process::Command;

use wasm_chord_tests::*;

#[test]
fn embed_rust_prints_a_continuation() {
    let bin = std::env::var_os("WASM_CHORD_EMBED_BIN")
        .expect("WASM_CHORD_EMBED_BIN is not set: run the tests with `cargo xtask test`");
    let out = Command::new(bin)
        .arg(kernel())
        .arg(smollm2())
        .arg("The capital of France is")
        .output()
        .expect("spawn embed-rust");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Greedy SmolLM2 continues with " Paris." (tests/fixtures golden).
    assert!(
        stdout.starts_with("The capital of France is Paris."),
        "{stdout:?}"
    );
    assert!(stdout.trim_end().len() > "The capital of France is Paris.".len());
}
