//! Byte-level BPE: GPT-2's byte↔unicode mapping and ranked merges.

use crate::{Error, Result};
use std::collections::HashMap;

/// GPT-2's byte encoder: printable bytes stand for themselves, the others map
/// to U+0100.. in byte order, so every byte is one visible character.
pub fn byte_char(b: u8) -> char {
    BYTE_CHARS.with(|t| t[b as usize])
}

fn printable(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
}

thread_local! {
    static BYTE_CHARS: [char; 256] = {
        let mut t = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            t[b as usize] = if printable(b) {
                b as char
            } else {
                let c = char::from_u32(next).unwrap_or('\u{FFFD}');
                next += 1;
                c
            };
        }
        t
    };
}

/// The byte a GPT-2 unicode character stands for, if any.
fn char_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 256 && printable(u as u8) {
        return Some(u as u8);
    }
    if (256..256 + 68).contains(&u) {
        // The n-th non-printable byte.
        return (0..=255u8)
            .filter(|&b| !printable(b))
            .nth((u - 256) as usize);
    }
    None
}

/// Bytes of a byte-level token text (characters outside the mapping are kept as UTF-8).
pub fn decode_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// Merge ranks keyed by the merge line "left right".
pub struct Bpe {
    ranks: HashMap<String, u32>,
}

impl Bpe {
    pub fn new(_ids: &HashMap<String, u32>, merges: &[String]) -> Result<Bpe> {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            if !m.contains(' ') {
                return Err(Error::InvalidModel(format!(
                    "merge {i} ({m:?}) is not 'left right'"
                )));
            }
            ranks.entry(m.clone()).or_insert(i as u32);
        }
        Ok(Bpe { ranks })
    }

    fn rank(&self, key: &mut String, left: &str, right: &str) -> Option<u32> {
        key.clear();
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        self.ranks.get(key.as_str()).copied()
    }

    /// BPE of one pre-tokenized word, appended to `out`.
    pub fn encode_word(
        &self,
        word: &str,
        ids: &HashMap<String, u32>,
        ignore_merges: bool,
        out: &mut Vec<u32>,
    ) {
        if word.is_empty() {
            return;
        }
        let encoded: String = word.bytes().map(byte_char).collect();
        if ignore_merges {
            if let Some(&id) = ids.get(&encoded) {
                out.push(id);
                return;
            }
        }
        let mut syms: Vec<String> = encoded.chars().map(String::from).collect();
        let mut key = String::new();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(r) = self.rank(&mut key, &syms[i], &syms[i + 1]) {
                    if best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        for s in &syms {
            match ids.get(s) {
                Some(&id) => out.push(id),
                // Not in the vocabulary: fall back to one token per byte.
                None => {
                    for b in decode_bytes(s) {
                        if let Some(&id) = ids.get(byte_char(b).to_string().as_str()) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}
