//! Vocabulary-only GGUF files (llama.cpp's `ggml-vocab-*.gguf`) through the
//! product: `tokenize` and `info` work, `run` fails cleanly ("no weights").

use std::path::PathBuf;
use wasm_chord_kernel::gguf::{GgufWriter, Value};
use wasm_chord_tests::*;

/// A GPT-2-style vocabulary: four tokens, the merge "h i", no tensors.
fn vocab_file() -> PathBuf {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::from("gpt2"))
        .kv("tokenizer.ggml.model", Value::from("gpt2"))
        .kv("tokenizer.ggml.pre", Value::from("gpt-2"))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(["h", "i", "!", "hi"].map(Value::from).to_vec()),
        )
        .kv(
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::from("h i")]),
        );
    let p = std::env::temp_dir().join(format!("wasm-chord-vocab-{}.gguf", std::process::id()));
    std::fs::write(&p, w.to_bytes()).unwrap();
    p
}

fn stdout_of(args: &[&str]) -> String {
    let out = run_cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn vocabulary_only_file_tokenizes_and_refuses_to_run() {
    let path = vocab_file();
    let m = path.to_str().unwrap();
    assert_eq!(stdout_of(&["tokenize", "-m", m, "hi!"]).trim(), "[3,2]");
    let info = stdout_of(&["info", "-m", m]);
    assert!(
        info.contains("gpt2") && info.contains("vocabulary-only"),
        "{info}"
    );
    let out = run_cli(&["run", "-m", m, "-p", "hi", "-n", "1"]);
    let err = assert_clean_error(&out, "run on a vocabulary-only file");
    assert!(err.contains("no weights"), "{err}");
    std::fs::remove_file(path).ok();
}

/// llama.cpp's own vocabulary file, when `WASM_CHORD_VOCAB_DIR` provides it.
#[test]
fn llama_cpp_gpt2_vocabulary_tokenizes() {
    let Some(dir) = std::env::var_os("WASM_CHORD_VOCAB_DIR") else {
        eprintln!("WASM_CHORD_VOCAB_DIR not set: skipped");
        return;
    };
    let path = PathBuf::from(dir).join("ggml-vocab-gpt-2.gguf");
    let m = path.to_str().unwrap();
    // As llama.cpp's ggml-vocab-gpt-2.gguf.out says for "Hello world".
    assert_eq!(
        stdout_of(&["tokenize", "-m", m, "Hello world"]).trim(),
        "[15496,995]"
    );
}
