//! Bad input through the CLI and the component: each case must end with one
//! clean `error: ...` line and a non-zero exit, never a panic, trap dump or hang.
//! The GGUF files are built with the project's GGUF writer, then patched
//! byte by byte where a defect cannot be written directly.

use std::path::PathBuf;
use wasm_chord_kernel::ggml_type::GgmlType;
use wasm_chord_kernel::gguf::{GgufWriter, Value};
use wasm_chord_tests::*;

/// A valid file built with the project's GGUF writer: one kv, one F32
/// tensor `t` of `dims`. Returns the bytes and where the tensor's entry in the
/// table starts (its name's length field).
fn valid_with(arch: &str, dims: &[u64]) -> (Vec<u8>, usize) {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::from(arch));
    let n: u64 = dims.iter().product();
    w.tensor("t", dims, GgmlType::F32, vec![0u8; 4 * n as usize]);
    let bytes = w.to_bytes();
    let entry = bytes
        .windows(9)
        .position(|x| x == [1, 0, 0, 0, 0, 0, 0, 0, b't'])
        .expect("tensor entry");
    (bytes, entry)
}

/// The valid file, where its tensor table starts, and where its data starts.
fn valid(arch: &str) -> (Vec<u8>, usize, usize) {
    let (bytes, entry) = valid_with(arch, &[8]);
    let data = bytes.len() - 32;
    (bytes, entry, data)
}

fn patch_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn patch_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Offset of the first key's length field (after magic, version, two counts).
const FIRST_KEY: usize = 24;

struct Tmp(PathBuf);
impl Tmp {
    fn new() -> Tmp {
        let d = std::env::temp_dir().join(format!("wasm-chord-malformed-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_string_lossy().into_owned()
    }
}

fn expect_error(args: &[&str], what: &str, needle: &str) {
    let out = run_cli(args);
    let err = assert_clean_error(&out, what);
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: error should mention {needle:?}: {err}"
    );
}

fn expect_model_error(path: &str, what: &str, needle: &str) {
    expect_error(&["info", "-m", path], what, needle);
    expect_error(&["run", "-m", path, "-p", "hi", "-n", "1"], what, needle);
}

#[test]
fn missing_and_empty_files() {
    let t = Tmp::new();
    expect_model_error("/nonexistent/model.gguf", "missing file", "model.gguf");
    let empty = t.file("empty.gguf", b"");
    expect_model_error(&empty, "empty file", "truncated");
    expect_model_error(t.0.to_str().unwrap(), "a directory", "not a regular file");
}

#[test]
fn bad_magic_and_truncations() {
    let t = Tmp::new();
    let (ok, table, data) = valid("llama");
    let mut magic = ok.clone();
    magic[..4].copy_from_slice(b"PK\x03\x04");
    expect_model_error(&t.file("magic.gguf", &magic), "bad magic", "magic");
    expect_model_error(
        &t.file("hdr.gguf", &ok[..10]),
        "truncated header",
        "truncated",
    );
    expect_model_error(
        &t.file("table.gguf", &ok[..table + 6]),
        "truncated tensor table",
        "tensors",
    );
    expect_model_error(
        &t.file("data.gguf", &ok[..data + 8]),
        "truncated data",
        "past the end",
    );
}

#[test]
fn absurd_lengths_and_dims() {
    let t = Tmp::new();
    let (ok, entry, _) = valid("llama");

    let mut b = ok.clone();
    patch_u64(&mut b, FIRST_KEY, 1 << 63);
    expect_model_error(&t.file("strlen.gguf", &b), "string length 2^63", "length");

    let mut w = GgufWriter::new();
    w.kv("a", Value::Array(vec![Value::U32(1); 4]));
    let mut b = w.to_bytes();
    b.extend([0u8; 64]);
    // key length (8) + "a" + value type (4) + element type (4), then the count.
    patch_u64(&mut b, FIRST_KEY + 8 + 1 + 4 + 4, 1 << 63);
    expect_model_error(&t.file("arrlen.gguf", &b), "array length 2^63", "length");

    let (b, _) = valid_with("llama", &[2, 2, 2, 2, 2]);
    expect_model_error(&t.file("ndims5.gguf", &b), "n_dims 5", "dimensions");

    let mut b = ok.clone();
    // name length (8) + "t" + n_dims (4), then ne0.
    patch_u64(&mut b, entry + 13, 0);
    expect_model_error(&t.file("zerodim.gguf", &b), "zero dimension", "dim");

    let (mut b, e) = valid_with("llama", &[8, 2]);
    patch_u64(&mut b, e + 13, 1 << 40);
    patch_u64(&mut b, e + 21, 1 << 40);
    expect_model_error(
        &t.file("overflow.gguf", &b),
        "overflowing dimensions",
        "overflow",
    );

    let mut b = ok.clone();
    // ... one dim (8), then the type id.
    patch_u32(&mut b, entry + 21, 99);
    expect_model_error(&t.file("type99.gguf", &b), "unknown type", "type");

    let mut b = ok.clone();
    patch_u64(&mut b, entry + 25, 1 << 20);
    expect_model_error(
        &t.file("pastend.gguf", &b),
        "tensor past the end",
        "past the end",
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let t = Tmp::new();
    let (bytes, _, _) = valid("mamba9");
    expect_model_error(
        &t.file("arch.gguf", &bytes),
        "unsupported architecture",
        "mamba9",
    );
}

/// Names from the file (architecture, model name) reach the terminal with
/// their control characters escaped: no escape sequence from a file runs.
#[test]
fn file_supplied_names_are_printed_escaped() {
    let t = Tmp::new();
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::from("evil\x1b[2J\u{9b}31m"));
    w.kv("general.name", Value::from("n\x1b]0;pwned\x07\r\u{202e}x"));
    w.tensor("t", &[8], GgmlType::F32, vec![0u8; 32]);
    let path = t.file("escapes.gguf", &w.to_bytes());
    for args in [
        vec!["info", "-m", &path],
        vec!["run", "-m", &path, "-p", "hi", "-n", "1"],
    ] {
        let out = run_cli(&args);
        let err = assert_clean_error(&out, "control characters in names");
        assert!(err.contains("evil\\u{1b}[2J\\u{9b}31m"), "{err}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout
                .chars()
                .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
            "{stdout:?}"
        );
        if args[0] == "info" {
            assert!(
                stdout.contains("n\\u{1b}]0;pwned\\u{7}\\r\\u{202e}x"),
                "{stdout}"
            );
        }
    }
}

#[test]
fn bad_generation_arguments() {
    let m = smollm2();
    let m = m.to_str().unwrap();
    expect_error(&["run", "-m", m, "-p", "hi", "-n", "0"], "-n 0", "-n");
    expect_error(
        &["run", "-m", m, "-p", "hi", "--temp", "-1"],
        "negative temperature",
        "temp",
    );
    expect_error(
        &["run", "-m", m, "-p", "hi", "--temp", "nan"],
        "NaN temperature",
        "temp",
    );
    let long = "word ".repeat(64);
    expect_error(
        &["run", "-m", m, "-p", &long, "--n-ctx", "16"],
        "prompt longer than n_ctx",
        "n_ctx",
    );
}

#[test]
fn model_truncated_mid_layer_fails_at_load_in_both_modes() {
    let t = Tmp::new();
    let bytes = std::fs::read(smollm2()).unwrap();
    // Cut inside the tensor data (a block's weights), far from the header.
    let cut = t.file("smol-cut.gguf", &bytes[..bytes.len() / 2]);
    for mode in ["resident", "stream"] {
        expect_error(
            &[
                "run",
                "-m",
                &cut,
                "-p",
                "hi",
                "-n",
                "4",
                "--residency",
                mode,
            ],
            "truncated in a layer",
            "past the end",
        );
    }
}
