//! Byte-level BPE: GPT-2's byte↔unicode mapping and ranked merges.
//!
//! Merging is llama.cpp's `llm_tokenizer_bpe_session`: the symbols of a word
//! form a linked list, the candidate pairs sit in a priority queue (lowest
//! merge rank first, leftmost on ties), and a popped pair is merged only if
//! both of its symbols still exist unchanged. O(n log n) in the word length.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

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

/// No symbol (a byte whose character is neither a token nor a merge operand).
const NONE: u32 = u32::MAX;
/// End of the symbol list.
const END: usize = usize::MAX;

/// Ranked merges over symbol ids: a symbol is a vocabulary token (its id), or
/// a merge operand that is not a token (ids from `n_vocab` on).
pub struct Bpe {
    /// (left, right) → (rank, merged symbol).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The symbol of each byte's GPT-2 character (256 entries).
    byte_sym: Vec<u32>,
    n_vocab: u32,
}

/// A symbol of the word being merged: bytes `at..at + len` (its index is `at`).
#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    len: usize,
    prev: usize,
    next: usize,
}

/// A candidate merge: (rank, left, right, merged length in bytes, merged symbol).
type Pair = Reverse<(u32, usize, usize, usize, u32)>;

/// Buffers reused across the words of one text.
#[derive(Default)]
pub struct Scratch {
    syms: Vec<Sym>,
    queue: BinaryHeap<Pair>,
    encoded: String,
}

impl Bpe {
    /// `merges` are llama.cpp's "left right" lines, best first (a line
    /// without a separating space merges nothing, as in llama.cpp).
    pub fn new(ids: &HashMap<String, u32>, n_vocab: usize, merges: &[String]) -> Bpe {
        let mut extra: HashMap<String, u32> = HashMap::new();
        let mut intern = |s: &str| -> u32 {
            if let Some(&id) = ids.get(s) {
                return id;
            }
            let next = (n_vocab + extra.len()) as u32;
            *extra.entry(s.to_string()).or_insert(next)
        };
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            // The first space after the first byte separates the operands.
            let Some(sp) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&m[..sp], &m[sp + 1..]);
            let key = (intern(left), intern(right));
            let merged = intern(&format!("{left}{right}"));
            table.entry(key).or_insert((rank as u32, merged));
        }
        let mut byte_sym = vec![NONE; 256];
        for (b, sym) in byte_sym.iter_mut().enumerate() {
            let c = byte_char(b as u8).to_string();
            if let Some(&id) = ids.get(&c).or_else(|| extra.get(&c)) {
                *sym = id;
            }
        }
        Bpe {
            merges: table,
            byte_sym,
            n_vocab: n_vocab as u32,
        }
    }

    fn push_pair(&self, s: &mut Scratch, left: usize, right: usize) {
        let (l, r) = (s.syms[left], s.syms[right]);
        if let Some(&(rank, merged)) = self.merges.get(&(l.id, r.id)) {
            s.queue
                .push(Reverse((rank, left, right, l.len + r.len, merged)));
        }
    }

    /// BPE of one pre-tokenized word, appended to `out`.
    pub fn encode_word(
        &self,
        word: &str,
        ids: &HashMap<String, u32>,
        ignore_merges: bool,
        s: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        if word.is_empty() {
            return;
        }
        if ignore_merges {
            s.encoded.clear();
            s.encoded.extend(word.bytes().map(byte_char));
            if let Some(&id) = ids.get(s.encoded.as_str()) {
                out.push(id);
                return;
            }
        }
        // One symbol per byte: its GPT-2 character.
        let bytes = word.as_bytes();
        let n = bytes.len();
        s.syms.clear();
        s.queue.clear();
        s.syms.extend(bytes.iter().enumerate().map(|(i, &b)| Sym {
            id: self.byte_sym[b as usize],
            len: 1,
            prev: if i == 0 { END } else { i - 1 },
            next: if i + 1 == n { END } else { i + 1 },
        }));
        for i in 1..n {
            self.push_pair(s, i - 1, i);
        }
        while let Some(Reverse((_, left, right, len, merged))) = s.queue.pop() {
            let (l, r) = (s.syms[left], s.syms[right]);
            // Stale: one side was merged away or grew since the pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != len {
                continue;
            }
            s.syms[left] = Sym {
                id: merged,
                len,
                prev: l.prev,
                next: r.next,
            };
            s.syms[right].len = 0;
            if r.next != END {
                s.syms[r.next].prev = left;
            }
            if l.prev != END {
                self.push_pair(s, l.prev, left);
            }
            if r.next != END {
                self.push_pair(s, left, r.next);
            }
        }
        let mut i = 0;
        while i != END {
            let sym = s.syms[i];
            if sym.id < self.n_vocab {
                out.push(sym.id);
            } else {
                // Not a token: as llama.cpp, each byte of the encoded text
                // that is a token by itself (printable ASCII), the rest dropped.
                for &b in &bytes[i..i + sym.len] {
                    let id = self.byte_sym[b as usize];
                    if (b'!'..=b'~').contains(&b) && id < self.n_vocab {
                        out.push(id);
                    }
                }
            }
            i = sym.next;
        }
    }
}
