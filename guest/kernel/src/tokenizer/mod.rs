//! Tokenizer from GGUF metadata, as llama.cpp's `llama_vocab`: byte-level BPE
//! (`tokenizer.ggml.model = gpt2`) with llama.cpp's pre-tokenizers, and
//! SentencePiece (`llama`); special tokens split out of the text first; a
//! streaming detokenizer that reassembles UTF-8 across tokens; chat templates.

mod bpe;
mod chat;
mod load;
mod pretok;
mod special;
mod spm;
mod unicode;

pub use chat::{apply_chat_template, ChatMessage};
pub use load::from_gguf;

use crate::{Error, Result};
use special::Frag;

/// The largest text [`Tokenizer::try_encode`] accepts: 16 MiB, some four
/// million tokens, beyond the largest context (2^20) several times over.
/// Tokenizing it takes seconds (about 0.15 s per MiB natively).
pub const MAX_TEXT_BYTES: usize = 16 << 20;

/// Token text → id (first id of a repeated text).
type Ids = rustc_hash::FxHashMap<String, u32>;

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
    /// "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    pub pre: Option<String>,
    /// `general.name` (llama.cpp sets per-token attributes by model name).
    pub name: Option<String>,
    pub tokens: Vec<String>,
    /// May be empty (all normal).
    pub token_types: Vec<i32>,
    /// "left right" pairs, best first (BPE).
    pub merges: Vec<String>,
    /// May be empty (SentencePiece merge priorities).
    pub scores: Vec<f32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// SentencePiece: prefix a space to text at the start and after special tokens.
    pub add_space_prefix: bool,
}

/// The algorithm behind `tokenizer.ggml.model`.
enum Kind {
    Bpe {
        bpe: bpe::Bpe,
        pre: pretok::PreTokenizer,
    },
    Spm(spm::Spm),
}

/// A tokenizer: the vocabulary and the algorithm that maps text onto it.
pub struct Tokenizer {
    tokens: Vec<String>,
    /// Token types after llama.cpp's fix-ups (see `special::fix_types`).
    types: Vec<i32>,
    scores: Vec<f32>,
    ids: Ids,
    kind: Kind,
    specials: special::Specials,
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

/// The byte of a `<0xXX>` token.
fn hex_byte(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    pub fn new(d: TokenizerData) -> Result<Tokenizer> {
        let is_spm = match d.model.as_str() {
            "gpt2" => false,
            "llama" => true,
            other => {
                return Err(Error::Unsupported(format!(
                "tokenizer model '{other}' (supported: gpt2 byte-level BPE, llama SentencePiece)"
            )))
            }
        };
        let n = d.tokens.len();
        if n == 0 || n > (1 << 24) {
            return Err(Error::InvalidModel(format!("vocabulary of {n} tokens")));
        }
        for (what, len) in [
            ("token types", d.token_types.len()),
            ("scores", d.scores.len()),
        ] {
            if len != 0 && len < n {
                return Err(Error::InvalidModel(format!("{len} {what} for {n} tokens")));
            }
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
        let mut types = if d.token_types.is_empty() {
            vec![token_type::NORMAL; n]
        } else {
            d.token_types[..n].to_vec()
        };
        // Scores order SentencePiece merges; -0.0 and 0.0 tie, as in C++.
        let scores: Vec<f32> = d.scores.iter().take(n).map(|s| s + 0.0).collect();
        // As llama.cpp, an empty token gets a placeholder text.
        let tokens: Vec<String> = d
            .tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t
                }
            })
            .collect();
        let mut ids = Ids::default();
        ids.reserve(n);
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let mut eot = d.eot;
        let eog = special::fix_types(&tokens, &mut types, d.eos, &mut eot);
        // Phi-3: special tokens swallow the whitespace after them (llama.cpp's RSTRIP).
        let name = d.name.unwrap_or_default().to_lowercase();
        let mut strip = vec![(false, false); n];
        if name.contains("phi-3") || name.contains("phi3") {
            for (i, t) in tokens.iter().enumerate() {
                let special = matches!(
                    types[i],
                    token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN
                );
                let kept = ["<unk>", "<s>", "<|endoftext|>"].contains(&t.as_str());
                strip[i].1 = (special || t == "</s>") && !kept;
            }
        }
        let specials = special::Specials::new(&tokens, &types, &strip)?;
        let kind = if is_spm {
            Kind::Spm(spm::Spm::new(&ids, d.unk))
        } else {
            Kind::Bpe {
                bpe: bpe::Bpe::new(&ids, n, &d.merges),
                pre: pretok::PreTokenizer::new(d.pre.as_deref())?,
            }
        };
        Ok(Tokenizer {
            tokens,
            types,
            scores,
            ids,
            kind,
            specials,
            eog,
            bos: d.bos,
            eos: d.eos,
            add_bos: d.add_bos,
            add_eos: d.add_eos,
            add_space_prefix: d.add_space_prefix,
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

    /// [`Tokenizer::encode`] with the text's size checked against
    /// [`MAX_TEXT_BYTES`]: the entry point for text from outside.
    pub fn try_encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(Error::InvalidInput(format!(
                "the text to tokenize is {} bytes; the limit is {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        Ok(self.encode(text, add_special, parse_special))
    }

    /// Text to token ids. `add_special`: BOS/EOS as the metadata says;
    /// `parse_special`: control tokens written in the text become those tokens
    /// (user-defined tokens always do).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let frags = self.specials.split(text, parse_special);
        match &self.kind {
            Kind::Bpe { bpe, pre } => {
                let mut scratch = bpe::Scratch::default();
                for f in frags {
                    match f {
                        Frag::Token(id) => out.push(id),
                        Frag::Text(t) => {
                            for word in pre.split(t) {
                                bpe.encode_word(
                                    word,
                                    &self.ids,
                                    pre.ignore_merges,
                                    &mut scratch,
                                    &mut out,
                                );
                            }
                        }
                    }
                }
            }
            Kind::Spm(spm) => {
                // A space is prefixed to the text at the start and after a special token.
                let mut after_special = true;
                for f in frags {
                    match f {
                        Frag::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                        Frag::Text(t) => {
                            let mut escaped = String::with_capacity(t.len() + 3);
                            if self.add_space_prefix && after_special {
                                escaped.push(spm::SPACE);
                            }
                            escaped
                                .extend(t.chars().map(|c| if c == ' ' { spm::SPACE } else { c }));
                            spm.encode(&escaped, &self.ids, &self.scores, &mut out);
                            after_special = false;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// The bytes a token stands for, as llama.cpp's `token_to_piece` with
    /// `special`: byte-level decoding (BPE) or "▁" as a space (SentencePiece)
    /// for normal tokens, the byte of `<0xXX>` tokens, the text itself for
    /// user-defined and control tokens; nothing for unused ones.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let text = self.tokens.get(id as usize)?;
        let normal = |text: &str| match self.kind {
            Kind::Bpe { .. } => bpe::decode_bytes(text),
            Kind::Spm(_) => text.replace(spm::SPACE, " ").into_bytes(),
        };
        Some(match self.types[id as usize] {
            token_type::NORMAL => normal(text),
            token_type::BYTE => hex_byte(text).map_or_else(|| normal(text), |b| vec![b]),
            token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN => {
                text.as_bytes().to_vec()
            }
            _ => Vec::new(),
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
    /// As llama.cpp's `detokenize`: with a space prefix (SentencePiece) the
    /// first token loses its leading space; most BPE vocabularies tidy spaces
    /// before punctuation and contractions.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            if !self.renders(id) {
                continue;
            }
            let piece = self.token_bytes(id).unwrap_or_default();
            let strip = i == 0 && self.add_space_prefix && piece.first() == Some(&b' ');
            bytes.extend_from_slice(&piece[usize::from(strip)..]);
        }
        if matches!(&self.kind, Kind::Bpe { pre, .. } if pre.clean_spaces) {
            bytes = clean_spaces(bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// llama.cpp's `clean_spaces`, three in-place passes ported as they are:
/// " ?" " !" " ." " ," lose the space; " ' " becomes "'"; " 's" " 'm" " 're"
/// " 've" lose the space.
fn clean_spaces(mut t: Vec<u8>) -> Vec<u8> {
    // First pass: a space before ? ! . ,
    let n = t.len();
    let mut total = n.min(1);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
    // Second pass: a single apostrophe between spaces.
    let n = t.len();
    let mut total = n.min(1);
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            total -= 1;
            i += 1;
            t[i] = 0;
        }
        t[total] = x;
        total += 1;
        i += 1;
    }
    t.truncate(total);
    // Third pass: contractions.
    let n = t.len();
    let mut total = n.min(1);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            let x2 = if i + 2 < n { t[i + 2] } else { 0 };
            if matches!(x1, b's' | b'm') || matches!((x1, x2), (b'r', b'e') | (b'v', b'e')) {
                total -= 1;
            }
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
    t
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
