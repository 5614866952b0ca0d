//! SentencePiece (`tokenizer.ggml.model = "llama"`), as llama.cpp's
//! `llm_tokenizer_spm`: the text (spaces already escaped to U+2581) starts as
//! one symbol per character; adjacent pairs whose concatenation is a token go
//! into a priority queue (best token score first, leftmost on ties); merging
//! stops when no pair is left. Symbols that are not tokens fall back to their
//! bytes (`<0xXX>` tokens) or UNK. O(n log n) in the text length.

use super::Ids;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The escaped space.
pub const SPACE: char = '\u{2581}';

/// End of the symbol list.
const END: u32 = u32::MAX;
/// Symbol indices are u32: longer texts are merged in pieces of this many bytes.
const MAX_TEXT: usize = (u32::MAX - 1) as usize;

/// Byte fallback of a vocabulary.
pub struct Spm {
    /// `<0xXX>` for each of the 256 bytes (or the byte itself as a token, as llama.cpp).
    byte_tokens: Vec<Option<u32>>,
    unk: Option<u32>,
}

/// A symbol: bytes `at..at + len` of the text.
#[derive(Clone, Copy)]
struct Sym {
    at: u32,
    len: u32,
    prev: u32,
    next: u32,
}

/// A candidate merge of symbol `left` with the next one, ordered best first:
/// higher score, then leftmost.
struct Bigram {
    score: f32,
    left: u32,
    len: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl Spm {
    pub fn new(ids: &Ids, unk: Option<u32>) -> Spm {
        let mut byte_tokens = vec![None; 256];
        for (b, t) in byte_tokens.iter_mut().enumerate() {
            *t = ids.get(&format!("<0x{b:02X}>")).copied().or_else(|| {
                char::from_u32(b as u32)
                    .filter(char::is_ascii)
                    .and_then(|c| ids.get(c.to_string().as_str()).copied())
            });
        }
        Spm { byte_tokens, unk }
    }

    /// Tokens of `text` (escaped), appended to `out`. `scores` has one entry
    /// per token id (missing scores count as 0).
    pub fn encode(&self, text: &str, ids: &Ids, scores: &[f32], out: &mut Vec<u32>) {
        if text.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.encode(&text[..cut], ids, scores, out);
            self.encode(&text[cut..], ids, scores, out);
            return;
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        for (at, c) in text.char_indices() {
            let i = syms.len() as u32;
            syms.push(Sym {
                at: at as u32,
                len: c.len_utf8() as u32,
                prev: i.wrapping_sub(1),
                next: i + 1,
            });
        }
        if let Some(last) = syms.last_mut() {
            last.next = END;
        }
        // The merge of `left` with the next symbol, if that is a token.
        let bigram = |syms: &[Sym], left: u32| -> Option<Bigram> {
            let l = syms[left as usize];
            let r = syms.get(l.next as usize)?;
            let len = l.len + r.len;
            let &id = ids.get(&text[l.at as usize..(l.at + len) as usize])?;
            Some(Bigram {
                score: scores.get(id as usize).copied().unwrap_or(0.0),
                left,
                len,
            })
        };
        // Heapify the first pairs at once (linear).
        let first: Vec<Bigram> = (0..syms.len() as u32)
            .filter_map(|i| bigram(&syms, i))
            .collect();
        let mut queue = BinaryHeap::from(first);
        while let Some(b) = queue.pop() {
            let l = syms[b.left as usize];
            // Stale: merged away, or either side changed since it was queued
            // (a symbol only grows, by absorbing its next one).
            if l.len == 0 || l.next == END || l.len + syms[l.next as usize].len != b.len {
                continue;
            }
            let r = syms[l.next as usize];
            syms[l.next as usize].len = 0;
            syms[b.left as usize].len = b.len;
            syms[b.left as usize].next = r.next;
            if r.next != END {
                syms[r.next as usize].prev = b.left;
            }
            if l.prev != END {
                queue.extend(bigram(&syms, l.prev));
            }
            queue.extend(bigram(&syms, b.left));
        }
        let mut i = if syms.is_empty() { END } else { 0 };
        while i != END {
            let s = syms[i as usize];
            let piece = &text[s.at as usize..(s.at + s.len) as usize];
            match ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        out.extend(self.byte_tokens[b as usize].or(self.unk));
                    }
                }
            }
            i = s.next;
        }
    }
}
