//! Bad input through the CLI and the component: each case must end with one
//! clean `error: ...` line and a non-zero exit, never a panic, trap dump or hang.
//! The GGUF files are built here, byte by byte, so each defect is exact.

use std::path::PathBuf;
use wasm_chord_tests::*;

/// A minimal GGUF v3 builder that can also write nonsense on purpose.
#[derive(Default)]
struct Raw {
    b: Vec<u8>,
}

impl Raw {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.b.extend_from_slice(s.as_bytes());
        self
    }
    fn header(&mut self, n_tensors: u64, n_kv: u64) -> &mut Self {
        self.b.extend_from_slice(b"GGUF");
        self.u32(3).u64(n_tensors).u64(n_kv)
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.str(k).u32(8).str(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn align(&mut self) -> &mut Self {
        while !self.b.len().is_multiple_of(32) {
            self.b.push(0);
        }
        self
    }
}

/// A valid file: one kv, one F32 tensor of 8 elements. Returns (bytes, offsets
/// of: end of header, start of tensor table, data start).
fn valid(arch: &str) -> (Vec<u8>, usize, usize) {
    let mut r = Raw::default();
    r.header(1, 1).kv_str("general.architecture", arch);
    let table = r.b.len();
    r.tensor("t", &[8], 0, 0).align();
    let data = r.b.len();
    r.b.extend(std::iter::repeat_n(0u8, 32));
    (r.b, table, data)
}

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
    let mut r = Raw::default();
    r.header(0, 1).u64(1 << 63);
    r.b.extend([0u8; 64]);
    expect_model_error(&t.file("strlen.gguf", &r.b), "string length 2^63", "length");

    let mut r = Raw::default();
    r.header(0, 1).str("a").u32(9).u32(4).u64(1 << 63);
    r.b.extend([0u8; 64]);
    expect_model_error(&t.file("arrlen.gguf", &r.b), "array length 2^63", "length");

    let cases: [(&str, &[u64], u32, &str); 4] = [
        ("ndims5", &[2, 2, 2, 2, 2], 0, "dimensions"),
        ("zerodim", &[8, 0], 0, "dim"),
        ("overflow", &[1 << 40, 1 << 40], 0, "overflow"),
        ("type99", &[8], 99, "type"),
    ];
    for (name, dims, ty, needle) in cases {
        let mut r = Raw::default();
        r.header(1, 1)
            .kv_str("general.architecture", "llama")
            .tensor("t", dims, ty, 0)
            .align();
        r.b.extend(std::iter::repeat_n(0u8, 64));
        expect_model_error(&t.file(&format!("{name}.gguf"), &r.b), name, needle);
    }

    let mut r = Raw::default();
    r.header(1, 1)
        .kv_str("general.architecture", "llama")
        .tensor("t", &[8], 0, 1 << 20)
        .align();
    r.b.extend(std::iter::repeat_n(0u8, 32));
    expect_model_error(
        &t.file("pastend.gguf", &r.b),
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
    for mode in ["--resident", "--stream"] {
        expect_error(
            &["run", "-m", &cut, "-p", "hi", "-n", "4", mode],
            "truncated in a layer",
            "past the end",
        );
    }
}
