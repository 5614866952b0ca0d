//! A tokenizer from a GGUF header: the `tokenizer.ggml.*` metadata, with
//! llama.cpp's defaults where a key is absent. Needs no tensors, so llama.cpp's
//! vocabulary-only files load too.

use super::{Tokenizer, TokenizerData};
use crate::gguf::{GgufFile, Value};
use crate::store::ByteSource;
use crate::{Error, Result};

fn string_array(g: &GgufFile, key: &str) -> Result<Vec<String>> {
    match g.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::InvalidModel(format!("{key}: expected strings")))
            })
            .collect(),
        Some(v) => Err(Error::InvalidModel(format!(
            "{key}: expected an array, found {}",
            v.type_name()
        ))),
    }
}

/// A numeric array (`None` where the key is absent).
fn number_array<T>(g: &GgufFile, key: &str, conv: impl Fn(&Value) -> Option<T>) -> Result<Vec<T>> {
    match g.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| conv(v).ok_or_else(|| Error::InvalidModel(format!("{key}: expected numbers"))))
            .collect(),
        Some(v) => Err(Error::InvalidModel(format!(
            "{key}: expected an array, found {}",
            v.type_name()
        ))),
    }
}

fn id(g: &GgufFile, key: &str) -> Result<Option<u32>> {
    Ok(g.get_u64(key)?.and_then(|v| u32::try_from(v).ok()))
}

/// Pre-tokenizers for which llama.cpp adds BOS unless the metadata says otherwise.
const BOS_BY_DEFAULT: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
];

/// The tokenizer described by `g`'s `tokenizer.ggml.*` metadata.
pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
    let model = g
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| Error::InvalidModel("missing tokenizer.ggml.model".into()))?
        .to_string();
    let tokens = string_array(g, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(Error::InvalidModel("missing tokenizer.ggml.tokens".into()));
    }
    let token_types = number_array(g, "tokenizer.ggml.token_type", |v| {
        v.as_i64().and_then(|x| i32::try_from(x).ok())
    })?;
    // Scores are f32, or i32 in some conversions.
    let scores = number_array(g, "tokenizer.ggml.scores", |v| {
        v.as_f32().or_else(|| v.as_i64().map(|x| x as f32))
    })?;
    let pre = g.get_str("tokenizer.ggml.pre")?.map(str::to_string);
    let is_spm = model == "llama";
    // SentencePiece vocabularies default to <unk> <s> </s> at 0 1 2.
    let n = tokens.len() as u32;
    let default = |key: &str, spm_id: u32| -> Result<Option<u32>> {
        Ok(id(g, key)?.or(Some(spm_id).filter(|&i| is_spm && i < n)))
    };
    let add_bos_default = is_spm || pre.as_deref().is_some_and(|p| BOS_BY_DEFAULT.contains(&p));
    Tokenizer::new(TokenizerData {
        merges: string_array(g, "tokenizer.ggml.merges")?,
        name: g.get_str("general.name")?.map(str::to_string),
        pre,
        tokens,
        token_types,
        scores,
        bos: default("tokenizer.ggml.bos_token_id", 1)?,
        eos: default("tokenizer.ggml.eos_token_id", 2)?,
        eot: id(g, "tokenizer.ggml.eot_token_id")?,
        unk: default("tokenizer.ggml.unknown_token_id", 0)?,
        pad: id(g, "tokenizer.ggml.padding_token_id")?,
        add_bos: g
            .get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(add_bos_default),
        add_eos: g.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        add_space_prefix: g
            .get_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(is_spm),
        model,
    })
}

impl Tokenizer {
    /// The tokenizer of the GGUF file behind `src`, from its header alone
    /// (no tensor is read; vocabulary-only files work).
    pub fn from_source(src: &dyn ByteSource) -> Result<Tokenizer> {
        from_gguf(&GgufFile::parse(src)?)
    }
}
