//! Vocabulary-only files (llama.cpp's `ggml-vocab-*.gguf`: tokenizer metadata,
//! no tensors). They load as a model whose tokenizer works and whose sessions
//! (generation, scoring) are `unsupported`.

use super::residency::{LayerCache, Policy};
use super::{Config, Model, ModelInfo};
use crate::gguf::GgufFile;
use crate::store::ByteSource;
use crate::Result;
use std::cell::RefCell;

/// Why a vocabulary-only model cannot run.
pub const NO_WEIGHTS: &str = "this file has a vocabulary but no weights \
     (tokenize and detokenize work; generation and scoring need a model with tensors)";

impl Model {
    /// The model of a GGUF file without tensors: any architecture, the tokenizer only.
    pub(super) fn vocab_only(g: &GgufFile, src: Box<dyn ByteSource>) -> Result<Model> {
        let tokenizer = crate::tokenizer::from_gguf(g)?;
        let arch = g.get_str("general.architecture")?.unwrap_or("").to_string();
        let info = ModelInfo {
            architecture: arch.clone(),
            name: g.get_str("general.name")?.unwrap_or("").to_string(),
            n_vocab: tokenizer.n_vocab() as u32,
            file_size: src.size(),
            bos_token: tokenizer.bos(),
            eos_token: tokenizer.eos(),
            add_bos: tokenizer.add_bos(),
            chat_template: g.get_str("tokenizer.chat_template")?.map(str::to_string),
            ..ModelInfo::default()
        };
        let cfg = Config {
            arch,
            n_vocab: tokenizer.n_vocab(),
            ..Config::default()
        };
        Ok(Model {
            cfg,
            tokenizer,
            info,
            cache: RefCell::new(LayerCache::new(Vec::new(), 0, Policy::Pinned)),
            src,
            kv_budget: None,
            max_memory: 0,
            weights_cap: 0,
            shard: super::shard::ShardSlice {
                index: 0,
                count: 1,
                heads: 0..0,
                kv_heads: 0..0,
                ff: 0..0,
                vocab: 0..0,
            },
            kv_type: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::writer::GgufWriter;
    use crate::gguf::Value;
    use crate::model::{LoadOptions, Model, Session};
    use crate::store::MemSource;
    use crate::Error;

    /// A GPT-2-style vocabulary file: four tokens, one merge, no tensors.
    fn vocab_file() -> Vec<u8> {
        let tokens = ["h", "i", "!", "hi"]
            .map(|t| Value::String(t.into()))
            .to_vec();
        let mut w = GgufWriter::new();
        w.kv("general.architecture", Value::String("gpt2".into()))
            .kv("general.name", Value::String("vocab".into()))
            .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
            .kv("tokenizer.ggml.pre", Value::String("gpt-2".into()))
            .kv("tokenizer.ggml.tokens", Value::Array(tokens))
            .kv(
                "tokenizer.ggml.merges",
                Value::Array(vec![Value::String("h i".into())]),
            );
        w.to_bytes()
    }

    #[test]
    fn vocabulary_only_file_tokenizes_but_does_not_run() {
        let src = Box::new(MemSource::new(vocab_file()));
        let m = Model::load(src, &LoadOptions::default()).expect("vocab-only load");
        assert!(!m.has_weights());
        assert_eq!(m.info.architecture, "gpt2");
        assert_eq!((m.info.n_vocab, m.info.n_tensors), (4, 0));
        let ids = m.tokenizer.encode("hi!", false, false);
        assert_eq!(ids, [3, 2]);
        assert_eq!(m.tokenizer.decode(&ids), "hi!");
        match Session::new(&m, 16) {
            Err(Error::Unsupported(msg)) => assert!(msg.contains("no weights"), "{msg}"),
            other => panic!("expected unsupported, got {:?}", other.map(|s| s.n_ctx())),
        }
    }
}
