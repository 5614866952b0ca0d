//! Byte-level BPE: GPT-2's byte↔unicode mapping and ranked merges.
//!
//! Merging is llama.cpp's `llm_tokenizer_bpe_session`: the symbols of a word
//! form a linked list, the candidate pairs sit in a priority queue (lowest
//! merge rank first, leftmost on ties), and a popped pair is merged only if
//! both of its symbols still exist unchanged. O(n log n) in the word length.

use super::Ids;
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

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
const END: u32 = u32::MAX;
/// Symbol indices are u32: longer words are merged in pieces of this many bytes.
const MAX_WORD: usize = (u32::MAX - 1) as usize;

/// Ranked merges over symbol ids: a symbol is a vocabulary token (its id), or
/// a merge operand that is not a token (ids from `n_vocab` on).
pub struct Bpe {
    /// (left << 32 | right) → (rank, merged symbol).
    merges: FxHashMap<u64, (u32, u32)>,
    /// The symbol of each byte's GPT-2 character (256 entries).
    byte_sym: Vec<u32>,
    n_vocab: u32,
}

/// Two u32 in one u64, the first one high (merge keys, queue order).
fn pack(hi: u32, lo: u32) -> u64 {
    u64::from(hi) << 32 | u64::from(lo)
}

/// A symbol of the word being merged: bytes `i..i + len` where `i` is its index.
#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    len: u32,
    prev: u32,
    next: u32,
}

/// A candidate merge of symbol `left` with the next one: (rank << 32 | left,
/// merged length in bytes, merged symbol). Lowest rank first, then leftmost.
type Pair = Reverse<(u64, u32, u32)>;

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
    pub fn new(ids: &Ids, n_vocab: usize, merges: &[String]) -> Bpe {
        let mut extra = Ids::default();
        let mut intern = |s: &str| -> u32 {
            if let Some(&id) = ids.get(s) {
                return id;
            }
            let next = (n_vocab + extra.len()) as u32;
            *extra.entry(s.to_string()).or_insert(next)
        };
        let mut table = FxHashMap::default();
        table.reserve(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            // The first space after the first byte separates the operands.
            let Some(sp) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&m[..sp], &m[sp + 1..]);
            let key = pack(intern(left), intern(right));
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

    /// The merge of symbol `left` with the next one, if any.
    fn pair(&self, syms: &[Sym], left: u32) -> Option<Pair> {
        let l = syms[left as usize];
        let r = syms[l.next as usize];
        let &(rank, merged) = self.merges.get(&pack(l.id, r.id))?;
        Some(Reverse((pack(rank, left), l.len + r.len, merged)))
    }

    /// BPE of one pre-tokenized word, appended to `out`.
    pub fn encode_word(
        &self,
        word: &str,
        ids: &Ids,
        ignore_merges: bool,
        s: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        if word.is_empty() {
            return;
        }
        if word.len() > MAX_WORD {
            let mut cut = MAX_WORD;
            while !word.is_char_boundary(cut) {
                cut -= 1;
            }
            self.encode_word(&word[..cut], ids, ignore_merges, s, out);
            self.encode_word(&word[cut..], ids, ignore_merges, s, out);
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
        let n = bytes.len() as u32;
        s.syms.clear();
        s.syms.extend((0..n).map(|i| Sym {
            id: self.byte_sym[bytes[i as usize] as usize],
            len: 1,
            prev: if i == 0 { END } else { i - 1 },
            next: if i + 1 == n { END } else { i + 1 },
        }));
        // Heapify the first pairs at once (linear).
        let mut first = std::mem::take(&mut s.queue).into_vec();
        first.clear();
        first.extend((0..n - 1).filter_map(|i| self.pair(&s.syms, i)));
        s.queue = BinaryHeap::from(first);
        while let Some(Reverse((key, len, merged))) = s.queue.pop() {
            let left = key as u32;
            let l = s.syms[left as usize];
            // Stale: merged away, or either side changed since it was queued
            // (a symbol only grows, by absorbing its next one).
            if l.len == 0 || l.next == END || l.len + s.syms[l.next as usize].len != len {
                continue;
            }
            let r = s.syms[l.next as usize];
            s.syms[l.next as usize].len = 0;
            s.syms[left as usize] = Sym {
                id: merged,
                len,
                prev: l.prev,
                next: r.next,
            };
            if r.next != END {
                s.syms[r.next as usize].prev = left;
                s.queue.extend(self.pair(&s.syms, left));
            }
            if l.prev != END {
                s.queue.extend(self.pair(&s.syms, l.prev));
            }
        }
        let mut i = 0;
        while i != END {
            let sym = s.syms[i as usize];
            if sym.id < self.n_vocab {
                out.push(sym.id);
            } else {
                // Not a token: as llama.cpp, each byte of the encoded text
                // that is a token by itself (printable ASCII), the rest dropped.
                for &b in &bytes[i as usize..(i + sym.len) as usize] {
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
