//! SentencePiece (`tokenizer.ggml.model = "llama"`), as llama.cpp's
//! `llm_tokenizer_spm`: the text (spaces already escaped to U+2581) starts as
//! one symbol per character; adjacent pairs whose concatenation is a token go
//! into a priority queue (best token score first, leftmost on ties); merging
//! stops when no pair is left. Symbols that are not tokens fall back to their
//! bytes (`<0xXX>` tokens) or UNK. O(n log n) in the text length.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The escaped space.
pub const SPACE: char = '\u{2581}';

/// End of the symbol list.
const END: usize = usize::MAX;

/// Byte fallback of a vocabulary.
pub struct Spm {
    /// `<0xXX>` for each of the 256 bytes (or the byte itself as a token, as llama.cpp).
    byte_tokens: Vec<Option<u32>>,
    unk: Option<u32>,
}

/// A symbol: bytes `at..at + len` of the text (its index is its first character).
#[derive(Clone, Copy)]
struct Sym {
    at: usize,
    len: usize,
    prev: usize,
    next: usize,
}

/// A candidate merge, ordered best first: higher score, then leftmost.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
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
    pub fn new(ids: &HashMap<String, u32>, unk: Option<u32>) -> Spm {
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
    pub fn encode(
        &self,
        text: &str,
        ids: &HashMap<String, u32>,
        scores: &[f32],
        out: &mut Vec<u32>,
    ) {
        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        let mut last = END;
        for (at, c) in text.char_indices() {
            let i = syms.len();
            syms.push(Sym {
                at,
                len: c.len_utf8(),
                prev: last,
                next: END,
            });
            if last != END {
                syms[last].next = i;
            }
            last = i;
        }
        let mut queue = BinaryHeap::new();
        let try_add = |queue: &mut BinaryHeap<Bigram>, syms: &[Sym], left: usize, right: usize| {
            if left == END || right == END {
                return;
            }
            let (l, r) = (syms[left], syms[right]);
            let len = l.len + r.len;
            if let Some(&id) = ids.get(&text[l.at..l.at + len]) {
                queue.push(Bigram {
                    score: scores.get(id as usize).copied().unwrap_or(0.0),
                    left,
                    right,
                    len,
                });
            }
        };
        for i in 1..syms.len() {
            try_add(&mut queue, &syms, i - 1, i);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            // Stale: one side was merged away or grew since the pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            syms[b.left].len = b.len;
            syms[b.left].next = r.next;
            syms[b.right].len = 0;
            if r.next != END {
                syms[r.next].prev = b.left;
            }
            try_add(&mut queue, &syms, l.prev, b.left);
            try_add(&mut queue, &syms, b.left, r.next);
        }
        let mut i = if syms.is_empty() { END } else { 0 };
        while i != END {
            let s = syms[i];
            let piece = &text[s.at..s.at + s.len];
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
