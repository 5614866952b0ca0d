//! Sessions (a KV cache and the tokens in it), streaming generation, and
//! teacher-forced scoring.

use super::forward::{KvCache, Pass, State, UBATCH};
use super::Model;
use crate::sample::{log_softmax, Sampler, SamplerConfig};
use crate::tokenizer::Detokenizer;
use crate::{Error, Result};

/// Context size when the caller asks for the default.
pub const DEFAULT_N_CTX: usize = 4096;
/// The default context shrinks to fit a memory budget, in steps of this, but
/// not below it.
const MIN_DEFAULT_N_CTX: usize = 256;

/// A conversation: the KV cache and the tokens it holds.
pub struct Session {
    kv: KvCache,
    state: State,
    /// Tokens evaluated into the KV cache, in order.
    tokens: Vec<u32>,
    /// Sampled tokens not yet evaluated (the last token of a generation).
    pending: Vec<u32>,
    /// A sharded pass in progress and its tokens (see [`Session::begin_step`]).
    pass: Option<(Pass, Vec<u32>)>,
}

/// What [`Session::continue_step`] returns.
#[derive(Debug)]
pub enum Step<'a> {
    /// The next partial sum to add up across shards (n * n_embd).
    Partial(&'a [f32]),
    /// The pass is done: the logits of this shard's vocabulary rows, for the
    /// positions from `logits_from` on (row-major).
    Logits(Vec<f32>),
}

/// The default context: 4096 positions capped at the training context, and
/// at what the load's memory budget leaves for the KV cache.
fn default_n_ctx(model: &Model) -> Result<usize> {
    let n = DEFAULT_N_CTX.min(model.cfg.n_ctx_train);
    let Some(budget) = model.kv_budget() else {
        return Ok(n);
    };
    let per_position = KvCache::bytes_per_position(&model.cfg, model.kv_type());
    let fit = usize::try_from(budget / per_position.max(1)).unwrap_or(usize::MAX);
    if fit >= n {
        return Ok(n);
    }
    if fit < MIN_DEFAULT_N_CTX.min(n) {
        return Err(Error::OutOfMemory(format!(
            "the memory budget leaves {} MiB for the KV cache: {fit} positions of {per_position} bytes, \
             under the {} a default context needs (raise the budget or ask for a smaller context)",
            budget >> 20,
            MIN_DEFAULT_N_CTX.min(n)
        )));
    }
    Ok(fit / MIN_DEFAULT_N_CTX * MIN_DEFAULT_N_CTX)
}

impl Session {
    /// A new session of `n_ctx` positions (0: default, capped by the training context).
    pub fn new(model: &Model, n_ctx: u32) -> Result<Session> {
        if !model.has_weights() {
            return Err(Error::Unsupported(super::vocab_only::NO_WEIGHTS.into()));
        }
        let n_ctx = if n_ctx == 0 {
            default_n_ctx(model)?
        } else {
            n_ctx as usize
        };
        if n_ctx > (1 << 20) {
            return Err(Error::InvalidInput(format!(
                "n_ctx {n_ctx} is too large (max 1048576)"
            )));
        }
        let kv_bytes =
            (n_ctx as u64).saturating_mul(KvCache::bytes_per_position(&model.cfg, model.kv_type()));
        model.check_kv_budget(kv_bytes)?;
        Ok(Session {
            kv: KvCache::new(&model.cfg, n_ctx, model.kv_type())?,
            state: State::default(),
            tokens: Vec::new(),
            pending: Vec::new(),
            pass: None,
        })
    }

    /// Context size.
    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx
    }

    /// Positions used.
    pub fn n_past(&self) -> usize {
        self.tokens.len()
    }

    /// Forget everything.
    pub fn reset(&mut self) {
        self.tokens.clear();
        self.pending.clear();
        self.pass = None;
    }

    /// The tokens the session holds, in order: those evaluated into the KV
    /// cache, then the last sampled token of a finished generation (evaluated
    /// at the start of the next one).
    pub fn tokens(&self) -> Vec<u32> {
        let mut all = Vec::with_capacity(self.tokens.len() + self.pending.len());
        all.extend_from_slice(&self.tokens);
        all.extend_from_slice(&self.pending);
        all
    }

    /// Keep only the first `len` of [`Session::tokens`]: the next evaluation
    /// continues after them (the KV cache rows beyond are overwritten).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        let held = self.tokens.len() + self.pending.len();
        if len > held {
            return Err(Error::InvalidInput(format!(
                "cannot truncate the session to {len} tokens: it holds {held}"
            )));
        }
        if len <= self.tokens.len() {
            self.tokens.truncate(len);
            self.pending.clear();
        } else {
            self.pending.truncate(len - self.tokens.len());
        }
        Ok(())
    }

    /// Evaluate `tokens` after what the session holds; `sink(i, logits)` for
    /// every index `i >= logits_from` of `tokens`.
    ///
    /// Attention follows llama.cpp's choice of kernel per micro-batch
    /// ([`prompt_attention`]), so like llama.cpp's, a token's last bits can
    /// depend on how the tokens were batched.
    pub fn eval(
        &mut self,
        model: &Model,
        tokens: &[u32],
        logits_from: usize,
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.eval_with(model, tokens, logits_from, sink, true)
    }

    /// [`Session::eval`]; `prompt_kernel` false attends with llama.cpp's
    /// one-query kernel (f16 value sums) throughout, as it does when it
    /// generates.
    fn eval_with(
        &mut self,
        model: &Model,
        tokens: &[u32],
        logits_from: usize,
        sink: &mut dyn FnMut(usize, &[f32]),
        prompt_kernel: bool,
    ) -> Result<()> {
        if !model.shard.is_whole() {
            return Err(Error::InvalidInput(format!(
                "this model is shard {} of {}: it evaluates with begin-step and continue-step",
                model.shard.index, model.shard.count
            )));
        }
        let need = self.tokens.len() + tokens.len();
        if need > self.kv.n_ctx {
            return Err(Error::ContextFull(format!(
                "{} tokens in the session + {} new exceed n_ctx {}",
                self.tokens.len(),
                tokens.len(),
                self.kv.n_ctx
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= model.cfg.n_vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {t} is outside the vocabulary ({})",
                model.cfg.n_vocab
            )));
        }
        // All or nothing: a micro-batch that fails (a store error while
        // streaming) takes the ones before it back out of the session; their
        // KV entries past `n_past` are simply overwritten later.
        let start = self.tokens.len();
        for (b, chunk) in tokens.chunks(UBATCH).enumerate() {
            let base = b * UBATCH;
            let from = logits_from.saturating_sub(base).min(chunk.len());
            let pos0 = self.tokens.len();
            self.state
                .set_prompt_attention(prompt_kernel && prompt_attention(tokens.len(), base));
            let done = model.forward(
                &mut self.kv,
                &mut self.state,
                chunk,
                pos0,
                from,
                &mut |i, l| sink(base + i, l),
            );
            if let Err(e) = done {
                self.tokens.truncate(start);
                return Err(e);
            }
            self.tokens.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// Start a sharded evaluation of `tokens` (1..=UBATCH of them) after
    /// what the session holds: runs to the first partial sum (layer 0's
    /// attention output, n * n_embd) and returns it. The host adds the
    /// shards' partials up (in shard order) and passes the sum to
    /// [`Session::continue_step`] until that returns the logits. Works on a
    /// whole model too (one shard: the sum is the partial itself).
    pub fn begin_step(
        &mut self,
        model: &Model,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<&[f32]> {
        self.pass = None;
        if tokens.is_empty() || tokens.len() > UBATCH {
            return Err(Error::InvalidInput(format!(
                "begin-step takes 1 to {UBATCH} tokens (got {})",
                tokens.len()
            )));
        }
        if !self.pending.is_empty() {
            return Err(Error::InvalidInput(
                "the session holds a generated token not yet evaluated; truncate it first".into(),
            ));
        }
        if self.tokens.len() + tokens.len() > self.kv.n_ctx {
            return Err(Error::ContextFull(format!(
                "{} tokens in the session + {} new exceed n_ctx {}",
                self.tokens.len(),
                tokens.len(),
                self.kv.n_ctx
            )));
        }
        // A sharded step is a micro-batch of at most UBATCH tokens (the
        // host batches; the total is not known here), which llama.cpp
        // attends with its one-query kernel.
        self.state.set_prompt_attention(false);
        let pass = model.begin_pass(
            &mut self.kv,
            &mut self.state,
            tokens,
            self.tokens.len(),
            logits_from,
        )?;
        let n = pass.n;
        self.pass = Some((pass, tokens.to_vec()));
        Ok(self.state.partial(n, model.cfg.n_embd))
    }

    /// Continue a sharded evaluation with the sum over shards of the last
    /// partial: returns the next partial, or (at the end) the logits of this
    /// shard's vocabulary rows, and then the tokens are in the session.
    pub fn continue_step(&mut self, model: &Model, reduced: &[f32]) -> Result<Step<'_>> {
        let Some((mut pass, tokens)) = self.pass.take() else {
            return Err(Error::InvalidInput(
                "continue-step without a begin-step in progress".into(),
            ));
        };
        let mut out = Vec::new();
        let done = model.resume_pass(
            &mut pass,
            &mut self.kv,
            &mut self.state,
            reduced,
            &mut |_, l| out.extend_from_slice(l),
        )?;
        if done {
            self.tokens.extend_from_slice(&tokens);
            return Ok(Step::Logits(out));
        }
        let n = pass.n;
        self.pass = Some((pass, tokens));
        Ok(Step::Partial(self.state.partial(n, model.cfg.n_embd)))
    }

    /// Teacher-forced: reset, evaluate `tokens`, score positions `first..`:
    /// each token's log-probability given those before it, and the top-k.
    pub fn score(
        &mut self,
        model: &Model,
        tokens: &[u32],
        first: usize,
        top_k: usize,
    ) -> Result<Vec<TokenScore>> {
        if top_k > model.cfg.n_vocab {
            return Err(Error::InvalidInput(format!(
                "score: top-k {top_k} exceeds the vocabulary ({})",
                model.cfg.n_vocab
            )));
        }
        // Each row's top-k list is allocated as it comes: check up front that
        // all of them fit (the freed reservation is what they then use).
        let rows = tokens.len().saturating_sub(first.max(1));
        let per_row = std::mem::size_of::<TokenScore>() + top_k * 8;
        reserve_output::<u8>(&mut Vec::new(), rows, per_row, "score")?;
        let mut out = Vec::new();
        reserve_output(&mut out, rows, 1, "score")?;
        self.score_with(model, tokens, first, &mut |pos, tok, lp| {
            out.push(TokenScore {
                pos: pos as u32,
                token: tok,
                logprob: lp[tok as usize],
                top: top_of(lp, top_k),
            });
        })?;
        Ok(out)
    }

    /// Like [`Session::score`], returning every scored position's full
    /// log-probability row (`n_vocab` each, concatenated). Rows that do not
    /// fit in guest memory are an [`Error::OutOfMemory`] before any work.
    pub fn score_full(&mut self, model: &Model, tokens: &[u32], first: usize) -> Result<Vec<f32>> {
        let rows = tokens.len().saturating_sub(first.max(1));
        let mut out = Vec::new();
        reserve_output(&mut out, rows, model.cfg.n_vocab, "score-full")?;
        self.score_with(model, tokens, first, &mut |_, _, lp| {
            out.extend_from_slice(lp)
        })?;
        Ok(out)
    }

    /// Like [`Session::score`], calling `f(pos, token, logprobs)` with the full vector.
    pub fn score_with(
        &mut self,
        model: &Model,
        tokens: &[u32],
        first: usize,
        f: &mut dyn FnMut(usize, u32, &[f32]),
    ) -> Result<()> {
        if first == 0 || first >= tokens.len() {
            return Err(Error::InvalidInput(format!(
                "score: first ({first}) must be in 1..{} (the number of tokens)",
                tokens.len()
            )));
        }
        // The last token is scored but never evaluated: check it here.
        let last = tokens[tokens.len() - 1];
        if last as usize >= model.cfg.n_vocab {
            return Err(Error::InvalidInput(format!(
                "score: token {last} at position {} is out of the vocabulary ({})",
                tokens.len() - 1,
                model.cfg.n_vocab
            )));
        }
        self.reset();
        let mut lp = vec![0f32; model.cfg.n_vocab];
        // Logits of index i predict token i + 1. Teacher-forced scores are
        // held to what llama.cpp computes when it generates each token (one
        // at a time: its one-query kernel, f16 value sums), so every
        // position attends that way. Measured on the re-laid qwen3 file with
        // Q/K norms: the tiled kernel here moved the far tail of |Δ logprob|
        // against llama.cpp's generation from 0.83 to 1.32.
        self.eval_with(
            model,
            &tokens[..tokens.len() - 1],
            first - 1,
            &mut |i, logits| {
                log_softmax(logits, &mut lp);
                f(i + 1, tokens[i + 1], &lp);
            },
            false,
        )
    }
}

/// llama.cpp's default micro-batch (`n_ubatch`): it evaluates a call's
/// tokens in micro-batches of this many.
const LLAMA_UBATCH: usize = 512;

/// The smallest micro-batch llama.cpp runs through its tiled prompt
/// attention (`GGML_FA_TILE_Q`); smaller ones, and every single-token
/// decode, go through its one-query kernel.
const LLAMA_FA_TILE_Q: usize = 64;

/// Whether the token at index `at` of an evaluation of `len` tokens attends
/// as llama.cpp's prompt kernel does: it does when llama.cpp's micro-batch
/// holding that index has at least [`LLAMA_FA_TILE_Q`] tokens. The two
/// kernels round differently (f32 vs f16 value sums); following llama.cpp's
/// choice keeps each token's arithmetic as close to its as we can, and a
/// long prompt is several times cheaper to attend in f32.
fn prompt_attention(len: usize, at: usize) -> bool {
    let ub = at / LLAMA_UBATCH * LLAMA_UBATCH;
    (len - ub).min(LLAMA_UBATCH) >= LLAMA_FA_TILE_Q
}

/// Reserve `rows × per_row` elements in `out`, or a clear error: a scoring
/// call's output is as large as its caller asks, and an allocation that fails
/// would trap the guest.
fn reserve_output<T>(out: &mut Vec<T>, rows: usize, per_row: usize, what: &str) -> Result<()> {
    let too_large = |n: Option<usize>| {
        let mib = n.map_or(u64::MAX, |n| {
            (n as u64).saturating_mul(std::mem::size_of::<T>() as u64) >> 20
        });
        Error::OutOfMemory(format!(
            "{what}: {rows} positions need {mib} MiB of output, more than the guest memory \
             has; score fewer positions per call"
        ))
    };
    let n = rows.checked_mul(per_row).ok_or_else(|| too_large(None))?;
    out.try_reserve_exact(n).map_err(|_| too_large(Some(n)))
}

/// The `k` largest entries of `lp` as (index, value), best first.
pub fn top_of(lp: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(lp.len());
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (i, &v) in lp.iter().enumerate() {
        if top.len() < k || v > top[top.len() - 1].1 {
            let at = top.partition_point(|&(_, x)| x >= v);
            top.insert(at, (i as u32, v));
            top.truncate(k);
        }
    }
    top
}

/// One scored position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenScore {
    pub pos: u32,
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Options of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: u32,
    pub sampling: SamplerConfig,
    pub ignore_eos: bool,
    pub stop: Vec<String>,
}

/// One generated token and the text it completed.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub token: u32,
    pub text: String,
}

/// One token with its log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    /// The bytes the token stands for ([`crate::tokenizer::Tokenizer::token_bytes`]).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// The log-probabilities of a sampled token's position: the log-softmax of
/// the raw logits, before penalties, temperature and truncation (what
/// llama-server reports).
#[derive(Clone, Debug, PartialEq)]
pub struct PieceLogprobs {
    /// The sampled token.
    pub chosen: TokenLogprob,
    /// The most likely tokens of the same distribution, best first.
    pub top: Vec<TokenLogprob>,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    Stop,
    Length,
    Context,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::Stop => "stop",
            StopReason::Length => "length",
            StopReason::Context => "context",
        }
    }
}

/// A running generation: call [`Generation::next`] until it returns `None`.
pub struct Generation {
    sampler: Sampler,
    opts: GenerateOptions,
    banned: Vec<u32>,
    logits: Vec<f32>,
    /// Scratch for the log-probabilities of [`Generation::next_with_logprobs`].
    logprobs: Vec<f32>,
    detok: Detokenizer,
    /// Text not yet emitted because it may begin a stop string.
    held: String,
    generated: u32,
    prompt_tokens: u32,
    done: Option<StopReason>,
}

impl Generation {
    /// Evaluate `prompt` after what `session` holds and prepare to sample.
    pub fn start(
        model: &Model,
        session: &mut Session,
        prompt: &[u32],
        opts: GenerateOptions,
    ) -> Result<Generation> {
        if opts.max_tokens == 0 {
            return Err(Error::InvalidInput("max-tokens must be at least 1".into()));
        }
        let sampler = Sampler::new(opts.sampling.clone())?;
        let mut input = std::mem::take(&mut session.pending);
        input.extend_from_slice(prompt);
        if input.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        if session.n_past() + input.len() > session.n_ctx() {
            return Err(Error::ContextFull(format!(
                "the prompt has {} tokens; with {} already in the session that exceeds n_ctx {}",
                input.len(),
                session.n_past(),
                session.n_ctx()
            )));
        }
        let mut logits = Vec::new();
        session.eval(model, &input, input.len() - 1, &mut |_, l| {
            logits = l.to_vec()
        })?;
        let banned = if opts.ignore_eos {
            (0..model.cfg.n_vocab as u32)
                .filter(|&t| model.tokenizer.is_eog(t))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Generation {
            sampler,
            banned,
            logits,
            logprobs: Vec::new(),
            detok: Detokenizer::new(),
            held: String::new(),
            generated: 0,
            prompt_tokens: input.len() as u32,
            done: None,
            opts,
        })
    }

    /// Tokens of the prompt that were evaluated.
    pub fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }

    /// Why generation stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.done
    }

    /// The next piece, or `None` once generation has stopped.
    pub fn next(&mut self, model: &Model, session: &mut Session) -> Result<Option<Piece>> {
        Ok(self.step(model, session, None)?.map(|(p, _)| p))
    }

    /// Like [`Generation::next`], with the sampled token's log-probability and
    /// the `top_k` most likely tokens at its position (`None` for the piece
    /// that ends the generation at end-of-sequence, which only flushes text).
    pub fn next_with_logprobs(
        &mut self,
        model: &Model,
        session: &mut Session,
        top_k: usize,
    ) -> Result<Option<(Piece, Option<PieceLogprobs>)>> {
        if top_k > model.cfg.n_vocab {
            return Err(Error::InvalidInput(format!(
                "top-k {top_k} exceeds the vocabulary ({})",
                model.cfg.n_vocab
            )));
        }
        self.step(model, session, Some(top_k))
    }

    fn step(
        &mut self,
        model: &Model,
        session: &mut Session,
        logprobs_top_k: Option<usize>,
    ) -> Result<Option<(Piece, Option<PieceLogprobs>)>> {
        if self.done.is_some() {
            return Ok(None);
        }
        // Before sampling: the sampler modifies the logits in place.
        if logprobs_top_k.is_some() {
            self.logprobs.resize(self.logits.len(), 0.0);
            log_softmax(&self.logits, &mut self.logprobs);
        }
        let token = self
            .sampler
            .sample(&mut self.logits, &session.tokens, &self.banned);
        let entry = |t: u32, lp: &[f32]| TokenLogprob {
            token: t,
            bytes: model.tokenizer.token_bytes(t).unwrap_or_default(),
            logprob: lp[t as usize],
        };
        let logprobs = logprobs_top_k.map(|k| PieceLogprobs {
            chosen: entry(token, &self.logprobs),
            top: top_of(&self.logprobs, k)
                .into_iter()
                .map(|(t, _)| entry(t, &self.logprobs))
                .collect(),
        });
        if !self.opts.ignore_eos && model.tokenizer.is_eog(token) {
            self.done = Some(StopReason::Eos);
            session.pending.push(token);
            let rest = std::mem::take(&mut self.held) + &self.detok.flush();
            return Ok(if rest.is_empty() {
                None
            } else {
                Some((Piece { token, text: rest }, None))
            });
        }
        self.generated += 1;
        self.held
            .push_str(&self.detok.push(&model.tokenizer, token));
        let mut text = self.take_emittable();
        if self.done.is_none() {
            if self.generated >= self.opts.max_tokens {
                self.done = Some(StopReason::Length);
            } else if session.n_past() + 1 >= session.n_ctx() {
                self.done = Some(StopReason::Context);
            }
            if self.done.is_some() {
                self.held.push_str(&self.detok.flush());
                text += &self.take_emittable_final();
            }
        }
        if self.done.is_some() {
            session.pending.push(token);
        } else {
            // The next logits into the same buffer (no allocation per token).
            let logits = &mut self.logits;
            logits.clear();
            session.eval(model, &[token], 0, &mut |_, l| {
                logits.clear();
                logits.extend_from_slice(l);
            })?;
        }
        Ok(Some((Piece { token, text }, logprobs)))
    }

    /// Text of `held` that can no longer be part of a stop string; sets
    /// `done` and drops the rest when a stop string is complete.
    fn take_emittable(&mut self) -> String {
        if self.opts.stop.is_empty() {
            return std::mem::take(&mut self.held);
        }
        if let Some(at) = self
            .opts
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.done = Some(StopReason::Stop);
            let out = self.held[..at].to_string();
            self.held.clear();
            return out;
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                self.opts
                    .stop
                    .iter()
                    .any(|s| s.starts_with(&self.held[i..]))
            })
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        out
    }

    /// At the end: a stop string may still complete inside `held`; else emit it all.
    fn take_emittable_final(&mut self) -> String {
        let out = self.take_emittable();
        out + &std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod prompt_attention_tests {
    use super::prompt_attention;

    #[test]
    fn follows_llama_cpp_micro_batches() {
        // A decode and a short prompt: the one-query kernel.
        assert!(!prompt_attention(1, 0));
        assert!(!prompt_attention(63, 32));
        // 64 tokens or more in one micro-batch: the prompt kernel.
        assert!(prompt_attention(64, 0) && prompt_attention(64, 32));
        assert!(prompt_attention(1024, 992));
        // 530 tokens: 512 in the prompt kernel, the last 18 in the other.
        assert!(prompt_attention(530, 480));
        assert!(!prompt_attention(530, 512));
        // 600: the second micro-batch has 88 tokens.
        assert!(prompt_attention(600, 576));
    }
}
