//! Tokenize and detokenize on real vocabularies: llama.cpp's test
//! vocabularies (`ggml-vocab-*.gguf`, loaded once from
//! `$WASM_CHORD_FUZZ_VOCAB` or `~/.cache/wasm-chord/vocab`) and a synthetic
//! byte-level one that is always there.
//!
//! Input: one byte of options (vocabulary, `add_special`, `parse_special`),
//! then the text (lossy UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use wasm_chord_kernel::gguf::GgufFile;
use wasm_chord_kernel::store::MemSource;
use wasm_chord_kernel::synth::SynthVocab;
use wasm_chord_kernel::tokenizer::{Detokenizer, Tokenizer};

/// llama.cpp's vocabularies used: byte-level BPE (several pre-tokenizers)
/// and SentencePiece.
const VOCABS: [&str; 5] = ["qwen2", "llama-spm", "llama-bpe", "gpt-2", "phi-3"];

/// (name, tokenizer, byte-level BPE whose decode inverts encode).
type Vocab = (String, Tokenizer, bool);

fn vocabs() -> &'static [Vocab] {
    static V: OnceLock<Vec<Vocab>> = OnceLock::new();
    V.get_or_init(|| {
        let dir = std::env::var_os("WASM_CHORD_FUZZ_VOCAB")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wasm-chord/vocab"))
            });
        // The synthetic byte vocabulary, written and read back as a GGUF file.
        let v = SynthVocab::bytes();
        let mut w = wasm_chord_kernel::gguf::GgufWriter::new();
        w.kv("tokenizer.ggml.model", "gpt2".into())
            .kv("tokenizer.ggml.pre", v.pre.clone().into())
            .kv(
                "tokenizer.ggml.tokens",
                wasm_chord_kernel::gguf::Value::Array(
                    v.tokens.iter().map(|t| t.clone().into()).collect(),
                ),
            )
            .kv(
                "tokenizer.ggml.token_type",
                wasm_chord_kernel::gguf::Value::Array(
                    v.token_types
                        .iter()
                        .map(|&t| wasm_chord_kernel::gguf::Value::I32(t))
                        .collect(),
                ),
            )
            .kv("tokenizer.ggml.bos_token_id", v.bos.into())
            .kv("tokenizer.ggml.eos_token_id", v.eos.into());
        let synth = Tokenizer::from_source(&MemSource::new(w.to_bytes()))
            .expect("the synthetic vocabulary loads");
        let mut out = vec![("synthetic-bytes".to_string(), synth, true)];
        for name in VOCABS {
            let Some(path) = dir
                .as_ref()
                .map(|d| d.join(format!("ggml-vocab-{name}.gguf")))
            else {
                continue;
            };
            let Ok(bytes) = std::fs::read(&path) else {
                eprintln!("fuzz tokenize: {} not found, skipped", path.display());
                continue;
            };
            let src = MemSource::new(bytes);
            let g = GgufFile::parse(&src).expect("llama.cpp's vocabulary parses");
            let tok = wasm_chord_kernel::tokenizer::from_gguf(&g)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let byte_level = g.get_str("tokenizer.ggml.model").ok().flatten() == Some("gpt2");
            out.push((name.to_string(), tok, byte_level));
        }
        eprintln!(
            "fuzz tokenize: vocabularies {:?}",
            out.iter().map(|v| v.0.as_str()).collect::<Vec<_>>()
        );
        out
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, text)) = data.split_first() else {
        return;
    };
    let vocabs = vocabs();
    let (name, tok, byte_level) = &vocabs[(opts as usize >> 2) % vocabs.len()];
    let (add_special, parse_special) = (opts & 1 != 0, opts & 2 != 0);
    let text = String::from_utf8_lossy(text);
    let ids = tok.encode(&text, add_special, parse_special);
    let n = tok.n_vocab();
    assert!(
        ids.iter().all(|&t| (t as usize) < n),
        "{name}: a token outside the vocabulary"
    );
    let _ = tok.decode(&ids);
    let mut d = Detokenizer::new();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&d.push(tok, id));
    }
    streamed.push_str(&d.flush());
    // Byte-level BPE without special tokens is lossless: the streamed pieces
    // (no SentencePiece prefix to strip, no space clean-up) give the text back.
    if *byte_level && !add_special && !parse_special {
        assert_eq!(streamed, text, "{name}: detokenize(tokenize(text)) != text");
    }
});
