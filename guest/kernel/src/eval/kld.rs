//! llama.cpp's KL-divergence base file (`llama-perplexity --kl-divergence-base`).
//!
//! Layout (little-endian): the 8 bytes `_logits_`; `n_ctx`, `n_vocab` and
//! `n_chunk` as i32; the `n_chunk * n_ctx` evaluated tokens as i32 (as
//! tokenized: the first token of a chunk is not replaced by BOS); then per
//! chunk, `n_ctx - 1 - n_ctx/2` rows (the positions `n_ctx/2 .. n_ctx-2`, each
//! predicting the next token) of `nv = 2*((n_vocab+1)/2) + 4` u16 each: the
//! row's `scale` and `min_log_prob` as two f32, then every token's
//! log-probability quantized as `min_log_prob + scale * q` (q = 0 below
//! `max - 16`), padded to an even count.
//!
//! Every size derived from the header is computed with checked arithmetic
//! and compared with the file's size before anything is allocated.

use std::io::{Read, Write};

use super::perplexity::rows_per_chunk;
use super::EvalError;
use crate::sample::log_sum_exp;

/// The file's magic.
pub const MAGIC: &[u8; 8] = b"_logits_";

/// Bytes of the header (magic and three i32).
pub const HEADER_BYTES: u64 = 20;

/// u16 words per stored row for a vocabulary of `n_vocab`.
pub fn row_words(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Quantize one log-probability row (any log-softmax input works: only
/// differences matter) into `out` (`row_words(row.len())` words), as llama.cpp does.
pub fn quantize_row(row: &[f32], out: &mut [u16]) {
    let (max, ln_sum) = log_sum_exp(row);
    let min = row
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min)
        .max(max - 16.0);
    let min_log_prob = min - max - ln_sum as f32;
    let scale = (max - min) / 65535.0;
    let s = scale.to_le_bytes();
    let m = min_log_prob.to_le_bytes();
    out[0] = u16::from_le_bytes([s[0], s[1]]);
    out[1] = u16::from_le_bytes([s[2], s[3]]);
    out[2] = u16::from_le_bytes([m[0], m[1]]);
    out[3] = u16::from_le_bytes([m[2], m[3]]);
    let q = &mut out[4..];
    q.fill(0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (d, &v) in q.iter_mut().zip(row) {
            if v > min {
                *d = (inv * (v - min)).round_ties_even() as u16;
            }
        }
    }
}

/// The `scale` and `min_log_prob` of a stored row.
pub fn row_params(row: &[u16]) -> (f32, f32) {
    let f = |a: u16, b: u16| {
        let [x, y] = a.to_le_bytes();
        let [z, w] = b.to_le_bytes();
        f32::from_le_bytes([x, y, z, w])
    };
    (f(row[0], row[1]), f(row[2], row[3]))
}

/// The header of a base file.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    /// `n_chunk * n_ctx` tokens.
    pub tokens: Vec<u32>,
}

/// Sizes a header implies, all checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Tokens stored after the header.
    pub n_tokens: u64,
    /// u16 words of one chunk's rows.
    pub chunk_words: u64,
    /// Total file size in bytes.
    pub file_bytes: u64,
}

/// The sizes of a file with these header fields, or `TooLarge` if any
/// overflows 64-bit arithmetic or this platform's `usize`.
pub fn layout(n_ctx: u64, n_vocab: u64, n_chunk: u64) -> Result<Layout, EvalError> {
    let too_large = EvalError::TooLarge {
        n_ctx,
        n_vocab,
        n_chunk,
        limit: u64::MAX,
    };
    let go = || -> Option<Layout> {
        let n_tokens = n_ctx.checked_mul(n_chunk)?;
        let words = n_vocab.checked_add(1)? / 2 * 2 + 4;
        let rows = n_ctx.checked_sub(1 + n_ctx / 2)?;
        let chunk_words = rows.checked_mul(words)?;
        let rows_bytes = chunk_words.checked_mul(2)?.checked_mul(n_chunk)?;
        let file_bytes = HEADER_BYTES
            .checked_add(n_tokens.checked_mul(4)?)?
            .checked_add(rows_bytes)?;
        // Buffers of one chunk and of the tokens must be addressable here.
        usize::try_from(chunk_words.checked_mul(2)?).ok()?;
        usize::try_from(n_tokens.checked_mul(4)?).ok()?;
        usize::try_from(n_vocab).ok()?;
        usize::try_from(n_ctx).ok()?;
        Some(Layout {
            n_tokens,
            chunk_words,
            file_bytes,
        })
    };
    go().ok_or(too_large)
}

/// Writes a base file chunk by chunk.
pub struct Writer<W: Write> {
    out: W,
    n_vocab: usize,
    rows_per_chunk: usize,
    words: Vec<u16>,
}

impl<W: Write> Writer<W> {
    /// Write the header to `out`.
    pub fn new(mut out: W, header: &Header) -> Result<Self, EvalError> {
        let field = |what: &'static str, v: usize| {
            i32::try_from(v).map_err(|_| EvalError::FieldTooLarge {
                what,
                value: v as u64,
            })
        };
        let fields = [
            field("n_ctx", header.n_ctx)?,
            field("n_vocab", header.n_vocab)?,
            field("n_chunk", header.n_chunk)?,
        ];
        if header.n_ctx < 4 || header.n_vocab < 1 || header.n_chunk < 1 {
            return Err(EvalError::InvalidHeader {
                n_ctx: header.n_ctx as i64,
                n_vocab: header.n_vocab as i64,
                n_chunk: header.n_chunk as i64,
            });
        }
        let l = layout(
            header.n_ctx as u64,
            header.n_vocab as u64,
            header.n_chunk as u64,
        )?;
        if header.tokens.len() as u64 != l.n_tokens {
            return Err(EvalError::BadLength {
                got: header.tokens.len(),
                expected: l.n_tokens as usize,
            });
        }
        let mut head = Vec::with_capacity(20 + 4 * header.tokens.len());
        head.extend_from_slice(MAGIC);
        for v in fields {
            head.extend_from_slice(&v.to_le_bytes());
        }
        for &t in &header.tokens {
            let t = field("token", t as usize)?;
            head.extend_from_slice(&t.to_le_bytes());
        }
        out.write_all(&head)?;
        Ok(Writer {
            out,
            n_vocab: header.n_vocab,
            rows_per_chunk: rows_per_chunk(header.n_ctx),
            words: vec![0; row_words(header.n_vocab)],
        })
    }

    /// Append the log-probability rows of one chunk (row-major, n_vocab each).
    pub fn write_rows(&mut self, rows: &[f32]) -> Result<(), EvalError> {
        let expected = self.rows_per_chunk * self.n_vocab;
        if rows.len() != expected {
            return Err(EvalError::BadLength {
                got: rows.len(),
                expected,
            });
        }
        let mut bytes = Vec::with_capacity(self.rows_per_chunk * self.words.len() * 2);
        let mut words = std::mem::take(&mut self.words);
        for row in rows.chunks_exact(self.n_vocab) {
            quantize_row(row, &mut words);
            for w in &words {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
        }
        self.words = words;
        self.out.write_all(&bytes)?;
        Ok(())
    }

    /// Flush and return the output.
    pub fn finish(mut self) -> Result<W, EvalError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a base file: header first, then the rows chunk by chunk.
pub struct Reader<R: Read> {
    input: R,
    pub header: Header,
    chunk: Vec<u16>,
    raw: Vec<u8>,
    chunks_read: usize,
}

impl<R: Read> Reader<R> {
    /// Read and check the header of a file of `size` bytes: its fields, the
    /// size they imply (checked arithmetic) against `size`, and every token.
    /// Nothing is allocated before the sizes are known to be consistent.
    pub fn new(mut input: R, size: u64) -> Result<Self, EvalError> {
        let mut head = [0u8; 20];
        let got = read_up_to(&mut input, &mut head)?;
        if got < 8 || &head[..8] != MAGIC {
            return Err(EvalError::NotKldFile);
        }
        if got < 20 {
            return Err(EvalError::TruncatedHeader { got });
        }
        let field = |i: usize| {
            i32::from_le_bytes([
                head[8 + 4 * i],
                head[9 + 4 * i],
                head[10 + 4 * i],
                head[11 + 4 * i],
            ])
        };
        let (n_ctx, n_vocab, n_chunk) = (field(0), field(1), field(2));
        if n_ctx < 4 || n_vocab < 1 || n_chunk < 1 {
            return Err(EvalError::InvalidHeader {
                n_ctx: n_ctx.into(),
                n_vocab: n_vocab.into(),
                n_chunk: n_chunk.into(),
            });
        }
        let (n_ctx, n_vocab, n_chunk) = (n_ctx as u64, n_vocab as u64, n_chunk as u64);
        let l = layout(n_ctx, n_vocab, n_chunk)?;
        if size < l.file_bytes {
            return Err(EvalError::Truncated {
                size,
                expected: l.file_bytes,
                n_chunk,
                n_ctx,
                n_vocab,
            });
        }
        if size > l.file_bytes {
            return Err(EvalError::TrailingData {
                extra: size - l.file_bytes,
                n_chunk,
                n_ctx,
                n_vocab,
            });
        }
        // `layout` checked that these fit in usize; the file holds them.
        let n_tokens = l.n_tokens as usize;
        let mut raw = vec![0u8; 4 * n_tokens];
        read_exact(&mut input, &mut raw)?;
        let mut tokens = Vec::with_capacity(n_tokens);
        for (index, b) in raw.chunks_exact(4).enumerate() {
            let t = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if t < 0 || t as u64 >= n_vocab {
                return Err(EvalError::TokenOutOfRange {
                    index,
                    token: t.into(),
                    n_vocab,
                });
            }
            tokens.push(t as u32);
        }
        let words = l.chunk_words as usize;
        Ok(Reader {
            input,
            header: Header {
                n_ctx: n_ctx as usize,
                n_vocab: n_vocab as usize,
                n_chunk: n_chunk as usize,
                tokens,
            },
            chunk: vec![0; words],
            raw: vec![0; 2 * words],
            chunks_read: 0,
        })
    }

    /// The stored rows of the next chunk (`rows_per_chunk` rows of `row_words`).
    pub fn next_chunk(&mut self) -> Result<&[u16], EvalError> {
        if self.chunks_read >= self.header.n_chunk {
            return Err(EvalError::NoMoreChunks);
        }
        read_exact(&mut self.input, &mut self.raw)?;
        for (d, b) in self.chunk.iter_mut().zip(self.raw.chunks_exact(2)) {
            *d = u16::from_le_bytes([b[0], b[1]]);
        }
        self.chunks_read += 1;
        Ok(&self.chunk)
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), EvalError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => EvalError::Io("the file ended early".into()),
        _ => e.into(),
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, EvalError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}
