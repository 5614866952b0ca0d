//! Tokenizer from GGUF metadata: byte-level BPE (`tokenizer.ggml.model = gpt2`)
//! with llama.cpp's pre-tokenizers and special-token handling; a streaming
//! detokenizer that reassembles UTF-8 across tokens; chat templates.

mod bpe;
mod chat;
mod pretok;

pub use chat::{apply_chat_template, ChatMessage};

use crate::{Error, Result};
use std::collections::HashMap;

/// GGUF token types.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Everything the tokenizer needs, as read from `tokenizer.ggml.*`.
#[derive(Clone, Debug, Default)]
pub struct TokenizerData {
    /// "gpt2" (byte-level BPE).
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// May be empty (all normal).
    pub token_types: Vec<i32>,
    /// "left right" pairs, best first.
    pub merges: Vec<String>,
    /// May be empty.
    pub scores: Vec<f32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
}

/// Texts that mark the end of a generation in common vocabularies (llama.cpp's list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
    "<|return|>",
    "<|call|>",
    "<|calls|>",
    "<|flush|>",
];

/// A byte-level BPE tokenizer.
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<i32>,
    ids: HashMap<String, u32>,
    bpe: bpe::Bpe,
    pre: pretok::PreTokenizer,
    /// Tokens matched in raw text before BPE, longest first: (text, id, is_control).
    specials: Vec<(String, u32, bool)>,
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl Tokenizer {
    pub fn new(d: TokenizerData) -> Result<Tokenizer> {
        if d.model != "gpt2" {
            return Err(Error::Unsupported(format!(
                "tokenizer model '{}' (supported: gpt2 byte-level BPE; SentencePiece 'llama' comes later)",
                d.model
            )));
        }
        let n = d.tokens.len();
        if n == 0 || n > (1 << 24) {
            return Err(Error::InvalidModel(format!("vocabulary of {n} tokens")));
        }
        if !d.token_types.is_empty() && d.token_types.len() != n {
            return Err(Error::InvalidModel(format!(
                "{} token types for {n} tokens",
                d.token_types.len()
            )));
        }
        for (name, id) in [
            ("bos", d.bos),
            ("eos", d.eos),
            ("eot", d.eot),
            ("unk", d.unk),
            ("pad", d.pad),
        ] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(Error::InvalidModel(format!(
                        "{name} token id {id} is outside the vocabulary ({n})"
                    )));
                }
            }
        }
        let types = if d.token_types.is_empty() {
            vec![token_type::NORMAL; n]
        } else {
            d.token_types
        };
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in d.tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let bpe = bpe::Bpe::new(&ids, &d.merges)?;
        let pre = pretok::PreTokenizer::new(d.pre.as_deref())?;
        let mut specials: Vec<(String, u32, bool)> = types
            .iter()
            .enumerate()
            .filter(|(i, &t)| {
                matches!(
                    t,
                    token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN
                ) && !d.tokens[*i].is_empty()
            })
            .map(|(i, &t)| (d.tokens[i].clone(), i as u32, t != token_type::USER_DEFINED))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut eog: Vec<u32> = [d.eos, d.eot].into_iter().flatten().collect();
        for (i, t) in d.tokens.iter().enumerate() {
            if EOG_TEXTS.contains(&t.as_str()) && types[i] != token_type::NORMAL {
                eog.push(i as u32);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        Ok(Tokenizer {
            tokens: d.tokens,
            types,
            ids,
            bpe,
            pre,
            specials,
            eog,
            bos: d.bos,
            eos: d.eos,
            add_bos: d.add_bos,
            add_eos: d.add_eos,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether `id` ends a generation (EOS, EOT, `<|im_end|>`-style tokens).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    /// The token's text as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Text to token ids. `add_special`: BOS/EOS as the metadata says;
    /// `parse_special`: control tokens written in the text become those tokens.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token in `rest` (longest wins at the same place).
            let mut found: Option<(usize, &(String, u32, bool))> = None;
            for sp in &self.specials {
                if sp.2 && !parse_special {
                    continue;
                }
                if let Some(at) = rest.find(sp.0.as_str()) {
                    if found.is_none_or(|(best, _)| at < best) {
                        found = Some((at, sp));
                    }
                }
            }
            let (plain, special) = match found {
                Some((at, sp)) => (&rest[..at], Some(sp)),
                None => (rest, None),
            };
            for word in self.pre.split(plain) {
                self.bpe
                    .encode_word(word, &self.ids, self.pre.ignore_merges, &mut out);
            }
            match special {
                Some(sp) => {
                    out.push(sp.1);
                    rest = &rest[plain.len() + sp.0.len()..];
                }
                None => break,
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// The bytes a token stands for: byte-level decoding for normal tokens,
    /// the text itself for user-defined and control tokens.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let text = self.tokens.get(id as usize)?;
        Some(match self.types[id as usize] {
            token_type::NORMAL | token_type::BYTE => bpe::decode_bytes(text),
            _ => text.as_bytes().to_vec(),
        })
    }

    /// Whether a token renders as text in generated output (control tokens do not).
    fn renders(&self, id: u32) -> bool {
        matches!(
            self.types.get(id as usize),
            Some(&token_type::NORMAL) | Some(&token_type::BYTE) | Some(&token_type::USER_DEFINED)
        )
    }

    /// Token ids to text (invalid UTF-8 replaced); control tokens are omitted.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if self.renders(id) {
                bytes.extend(self.token_bytes(id).unwrap_or_default());
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Streaming detokenizer: text is released only once its UTF-8 is complete.
#[derive(Default)]
pub struct Detokenizer {
    pending: Vec<u8>,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add token `id`; returns the text that became complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        if tok.renders(id) {
            self.pending.extend(tok.token_bytes(id).unwrap_or_default());
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // An invalid sequence: replace it and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..good + bad);
                        }
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left (an incomplete sequence becomes U+FFFD).
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests;
