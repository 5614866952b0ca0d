//! Teacher-forced evaluation with llama.cpp's `llama-perplexity` semantics:
//! how a token stream is cut into chunks and which positions are scored
//! ([`perplexity`]), the negative log-likelihood statistics, the
//! KL-divergence base file (`--kl-divergence-base`, read and write: [`kld`])
//! and the statistics and report of `--kl-divergence` ([`kld_stats`]).
//!
//! Pure Rust over `std::io`: no WIT, no files of its own. The `wasm-chord`
//! command line (`guest/cli`) drives it with the kernel's `score` results.

pub mod kld;
pub mod kld_stats;
pub mod perplexity;

#[cfg(test)]
mod tests;

use thiserror::Error;

/// Why a scoring input (a token stream, a base file) was rejected.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum EvalError {
    /// The file does not start with llama.cpp's `_logits_` magic.
    #[error("is not a KL-divergence base file (no '_logits_' magic)")]
    NotKldFile,
    /// The file ends inside its 20-byte header.
    #[error("is truncated: its header is {got} bytes, expected 20")]
    TruncatedHeader { got: usize },
    /// A header field is out of range.
    #[error("has an invalid header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}")]
    InvalidHeader {
        n_ctx: i64,
        n_vocab: i64,
        n_chunk: i64,
    },
    /// The sizes the header implies overflow 64-bit (or this platform's) arithmetic.
    #[error("has an impossible header: n_ctx {n_ctx}, n_vocab {n_vocab} and n_chunk {n_chunk} describe more than {limit} bytes")]
    TooLarge {
        n_ctx: u64,
        n_vocab: u64,
        n_chunk: u64,
        limit: u64,
    },
    /// The file is shorter than its header says.
    #[error("is truncated: {size} bytes, expected {expected} for {n_chunk} chunks of {n_ctx} tokens and a vocabulary of {n_vocab}")]
    Truncated {
        size: u64,
        expected: u64,
        n_chunk: u64,
        n_ctx: u64,
        n_vocab: u64,
    },
    /// The file is longer than its header says.
    #[error("has {extra} bytes of trailing data after {n_chunk} chunks of {n_ctx} tokens and a vocabulary of {n_vocab}")]
    TrailingData {
        extra: u64,
        n_chunk: u64,
        n_ctx: u64,
        n_vocab: u64,
    },
    /// A stored token is not in the vocabulary.
    #[error("token {index} is {token}, outside the vocabulary of {n_vocab}")]
    TokenOutOfRange {
        index: usize,
        token: i64,
        n_vocab: u64,
    },
    /// Every chunk was already read.
    #[error("has no more chunks")]
    NoMoreChunks,
    /// A header value does not fit the file's 32-bit fields.
    #[error("cannot be written: {what} {value} does not fit in a 32-bit field")]
    FieldTooLarge { what: &'static str, value: u64 },
    /// A row or chunk of the wrong length.
    #[error("got {got} values, expected {expected}")]
    BadLength { got: usize, expected: usize },
    /// --n-ctx too small to score the second half of a chunk.
    #[error("--n-ctx must be at least 4 to score the second half of each chunk (got {0})")]
    ContextTooSmall(usize),
    /// Fewer tokens than one chunk.
    #[error("the text tokenizes to {n_tokens} tokens, fewer than one chunk of --n-ctx {n_ctx}")]
    TooFewTokens { n_tokens: usize, n_ctx: usize },
    /// Reading or writing failed.
    #[error("I/O error: {0}")]
    Io(String),
}

impl From<std::io::Error> for EvalError {
    fn from(e: std::io::Error) -> Self {
        EvalError::Io(e.to_string())
    }
}
