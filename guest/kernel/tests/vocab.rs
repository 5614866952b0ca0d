//! llama.cpp's tokenizer test vectors (`tests/test-tokenizer-0.cpp`): for each
//! vocabulary-only file `ggml-vocab-NAME.gguf`, the strings of `NAME.gguf.inp`
//! (separated by `__ggml_vocab_test__` lines) must tokenize to the ids on the
//! matching line of `NAME.gguf.out`, with `add_special` and `parse_special`
//! both false, as llama.cpp tests them.
//!
//! The files come from `WASM_CHORD_VOCAB_DIR`; without it the test says it
//! was skipped. With it, a missing file of `VOCABS` is a failure.

use wasm_chord_kernel::model::{LoadOptions, Model};
use wasm_chord_kernel::store::{ByteRange, ByteSource, MemSource, StoreError};
use wasm_chord_kernel::tokenizer::{Detokenizer, Tokenizer};

/// The vocabularies this kernel must tokenize exactly as llama.cpp.
const VOCABS: &[&str] = &[
    "llama-spm",
    "phi-3",
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "starcoder",
    "deepseek-llm",
    "falcon",
    "command-r",
];

/// Also checked when their files are there.
const EXTRA_VOCABS: &[&str] = &["mpt", "refact", "deepseek-coder", "qwen35"];

/// (input, expected ids) pairs of one vocabulary's test files.
fn cases(inp: &str, out: &str) -> Vec<(String, Vec<u32>)> {
    const SEP: &str = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(SEP) {
            Some(i) => {
                inputs.push(inp[pos..pos + i].to_string());
                pos += i + SEP.len();
            }
            None => {
                inputs.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("token id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "inputs and outputs differ in number"
    );
    inputs.into_iter().zip(outputs).collect()
}

#[test]
fn llama_cpp_vocab_test_vectors() {
    let Some(dir) = std::env::var_os("WASM_CHORD_VOCAB_DIR") else {
        eprintln!("WASM_CHORD_VOCAB_DIR not set: llama.cpp vocabulary tests skipped");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut failures = Vec::new();
    let extra = EXTRA_VOCABS
        .iter()
        .filter(|n| dir.join(format!("ggml-vocab-{n}.gguf.out")).exists());
    for name in VOCABS.iter().chain(extra) {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let read = |ext: &str| {
            let p = path.with_extension(format!("gguf{ext}"));
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let tok = Tokenizer::from_source(&MemSource::new(read(""))).expect(name);
        let inp = String::from_utf8(read(".inp")).expect("utf-8 .inp");
        let out = String::from_utf8(read(".out")).expect("utf-8 .out");
        let cases = cases(&inp, &out);
        let mut passed = 0;
        for (text, want) in &cases {
            let got = tok.encode(text, false, false);
            if &got == want {
                passed += 1;
            } else {
                failures.push(format!("{name}: {text:?}\n  want {want:?}\n  got  {got:?}"));
            }
        }
        eprintln!("{name}: {passed}/{} strings", cases.len());
        // The product path: such a file loads as a model without weights.
        let m =
            Model::load(Box::new(MemSource::new(read(""))), &LoadOptions::default()).expect(name);
        assert!(!m.has_weights() && m.tokenizer.n_vocab() == tok.n_vocab());
        if *name == "qwen2" {
            // Tens of thousands of special tokens in a row (one pass).
            let im_end = tok.encode("<|im_end|>", false, true);
            assert_eq!(im_end.len(), 1);
            let many = tok.encode(&"<|im_end|>".repeat(30_000), false, true);
            assert_eq!(many, vec![im_end[0]; 30_000]);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A GGUF file read on demand (the tokenizer needs only its header).
struct FileSource(std::cell::RefCell<std::fs::File>, u64);

impl ByteSource for FileSource {
    fn size(&self) -> u64 {
        self.1
    }
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = self.0.borrow_mut();
        let mut buf = vec![0; len as usize];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(buf)
    }
    fn load_layer(&self, _layer: u32, ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        for r in ranges {
            out.extend(self.read(r.offset, r.len)?);
        }
        Ok(out)
    }
}

/// Gemma 3's SentencePiece vocabulary (no space prefix): the golden prompt
/// tokens, as llama.cpp's server tokenized them (add_special, parse_special).
#[test]
fn gemma3_prompt_tokens_match_llama_cpp() {
    let Some(path) = std::env::var_os("WASM_CHORD_GEMMA3") else {
        eprintln!("WASM_CHORD_GEMMA3 not set: Gemma 3 tokenizer test skipped");
        return;
    };
    let f = std::fs::File::open(&path).expect("open Gemma 3");
    let size = f.metadata().expect("stat").len();
    let tok = Tokenizer::from_source(&FileSource(f.into(), size)).expect("Gemma 3 tokenizer");
    let golden = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
    .join("../../tests/fixtures/gemma-3-270m-q4_k_m.golden.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden).expect("golden")).expect("json");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    for c in cases {
        let want: Vec<u32> = serde_json::from_value(c["prompt_tokens"].clone()).expect("ids");
        let prompt = c["prompt"].as_str().expect("prompt");
        assert_eq!(tok.encode(prompt, true, true), want, "case {}", c["id"]);
        // Decoding gives the prompt back (BOS is a control token).
        assert_eq!(tok.decode(&want), prompt, "case {}", c["id"]);
        // The streaming detokenizer renders llama.cpp's generated text.
        let greedy: Vec<u32> = serde_json::from_value(c["greedy_tokens"].clone()).expect("ids");
        let mut d = Detokenizer::new();
        let mut text: String = greedy.iter().map(|&t| d.push(&tok, t)).collect();
        text.push_str(&d.flush());
        assert_eq!(
            text,
            c["greedy_text"].as_str().expect("text"),
            "case {}",
            c["id"]
        );
    }
}

/// Huge and adversarial prompts finish (tokenization is near-linear; the
/// speed itself is measured by `cargo xtask bench`, not asserted here), and
/// round-trip where the vocabulary allows.
#[test]
fn huge_and_adversarial_prompts_tokenize() {
    for var in ["WASM_CHORD_SMOLLM2", "WASM_CHORD_GEMMA3"] {
        let Some(path) = std::env::var_os(var) else {
            eprintln!("{var} not set: skipped");
            continue;
        };
        let f = std::fs::File::open(&path).expect("open model");
        let size = f.metadata().expect("stat").len();
        let tok = Tokenizer::from_source(&FileSource(f.into(), size)).expect("tokenizer");
        let texts = [
            "a".repeat(1 << 20),
            " ".repeat(1 << 20),
            "1".repeat(1 << 20),
            "\u{e4}".repeat(1 << 18),
            "<|im_end|>".repeat(50_000),
            "<start_of_turn>".repeat(50_000),
            "<|im_end|>a".repeat(50_000),
        ];
        for text in &texts {
            let ids = tok.try_encode(text, false, false).expect("tokenize");
            assert!(!ids.is_empty() && ids.len() <= text.len());
            assert_eq!(tok.decode(&ids), *text, "{var}: {:?}...", &text[..16]);
            // Special tokens parsed: no fewer ids than one per special token.
            let ids = tok.try_encode(text, false, true).expect("tokenize");
            assert!(!ids.is_empty() && ids.len() <= text.len());
        }
    }
}
