//! llama-perplexity's chunking and negative log-likelihood statistics.
//!
//! Text is tokenized once (BOS added as the vocabulary says) and cut into
//! `n_tokens / n_ctx` chunks of `n_ctx` tokens. Each chunk is evaluated from
//! an empty context, its first token replaced by BOS when the vocabulary adds
//! one; only its second half is scored: the positions `n_ctx/2 .. n_ctx-2`
//! predict the tokens `n_ctx/2+1 .. n_ctx-1` (the first scored token is
//! [`Chunking::first`]).

use super::EvalError;

/// Default chunk length, as llama-perplexity's.
pub const DEFAULT_N_CTX: u32 = 512;

/// How a token stream is cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Whole chunks in the stream (the rest is dropped).
    pub n_chunk: usize,
}

impl Chunking {
    /// Chunks of `n_ctx` tokens over `n_tokens` tokens; at least one.
    pub fn new(n_tokens: usize, n_ctx: usize) -> Result<Self, EvalError> {
        if n_ctx < 4 {
            return Err(EvalError::ContextTooSmall(n_ctx));
        }
        let n_chunk = n_tokens / n_ctx;
        if n_chunk == 0 {
            return Err(EvalError::TooFewTokens { n_tokens, n_ctx });
        }
        Ok(Chunking { n_ctx, n_chunk })
    }

    /// Index in a chunk of the first scored token (`n_ctx/2 + 1`).
    pub fn first(&self) -> usize {
        first_scored(self.n_ctx)
    }

    /// Scored tokens per chunk.
    pub fn scored_per_chunk(&self) -> usize {
        rows_per_chunk(self.n_ctx)
    }

    /// Tokens evaluated in all (`n_chunk * n_ctx`).
    pub fn n_evaluated(&self) -> usize {
        self.n_chunk * self.n_ctx
    }

    /// Chunk `c` of `tokens`, its first token replaced by `bos` if given
    /// (pass the BOS token when the vocabulary adds one).
    pub fn chunk(&self, tokens: &[u32], c: usize, bos: Option<u32>) -> Vec<u32> {
        let mut chunk = tokens[c * self.n_ctx..(c + 1) * self.n_ctx].to_vec();
        if let Some(bos) = bos {
            chunk[0] = bos;
        }
        chunk
    }
}

/// Index in a chunk of `n_ctx` of the first scored token.
pub fn first_scored(n_ctx: usize) -> usize {
    n_ctx / 2 + 1
}

/// Scored positions (and stored KL-divergence rows) per chunk of `n_ctx`.
pub fn rows_per_chunk(n_ctx: usize) -> usize {
    n_ctx.saturating_sub(1 + n_ctx / 2)
}

/// Running negative log-likelihood sums.
#[derive(Clone, Debug, Default)]
pub struct Nll {
    pub sum: f64,
    pub sum2: f64,
    pub count: usize,
}

impl Nll {
    /// Add one scored token's log-probability.
    pub fn add(&mut self, logprob: f32) {
        let v = -f64::from(logprob);
        self.sum += v;
        self.sum2 += v * v;
        self.count += 1;
    }

    /// The perplexity so far.
    pub fn ppl(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }

    /// llama.cpp's uncertainty of the perplexity (None when it cannot be estimated).
    pub fn uncertainty(&self) -> Option<f64> {
        if self.count < 2 {
            return None;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        (var > 0.0).then(|| (var / (n - 1.0)).sqrt() * mean.exp())
    }

    /// llama-perplexity's last line: `Final estimate: PPL = 12.3456 +/- 0.12345`.
    pub fn final_estimate(&self) -> String {
        match self.uncertainty() {
            Some(u) => format!("Final estimate: PPL = {:.4} +/- {:.5}", self.ppl(), u),
            None => format!("Final estimate: PPL = {:.4}", self.ppl()),
        }
    }
}

/// The first token outside a vocabulary of `n_vocab`, as (index, token).
pub fn out_of_vocab(tokens: &[u32], n_vocab: usize) -> Option<(usize, u32)> {
    tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= n_vocab)
        .map(|(i, &t)| (i, t))
}
