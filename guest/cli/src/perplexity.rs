//! `wasm-chord perplexity`: teacher-forced scoring with llama.cpp's
//! `llama-perplexity` semantics (chunking, running estimate, uncertainty,
//! KL-divergence base files), so figures compare with llama.cpp's. The
//! arithmetic is the kernel crate's `eval` module; this file reads the
//! arguments and files, drives the kernel's `score`, and prints.
//!
//! `--tokens` scores a given token sequence in one pass instead of chunks.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use wasm_chord_kernel::eval::kld::{self, Header, Reader, Writer};
use wasm_chord_kernel::eval::kld_stats::{KldStats, CHUNK_HEADER};
use wasm_chord_kernel::eval::perplexity::{out_of_vocab, Chunking, Nll, DEFAULT_N_CTX};
use wasm_chord_kernel::eval::EvalError;
use wasm_chord_kernel::model::session::top_of;

use crate::args::{check_model, file_error, kernel_error, LoadArgs};
use crate::wasm_chord::runtime::inference::{Model, ModelInfo, Session};

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Text file to score (tokenized once, cut into chunks of --n-ctx tokens).
    #[arg(short = 'f', long = "file", value_name = "FILE", group = "input")]
    file: Option<PathBuf>,
    /// Text to score, like -f.
    #[arg(short = 'p', long = "prompt", value_name = "TEXT", group = "input")]
    prompt: Option<String>,
    /// JSON array of token ids, scored as is (no tokenization, no BOS) from
    /// the second token on, in one pass.
    #[arg(long, value_name = "FILE.json", group = "input")]
    tokens: Option<PathBuf>,
    /// Chunk length in tokens (default 512, like llama-perplexity; with
    /// --tokens: the context is the larger of this and the sequence).
    #[arg(
        short = 'c',
        long = "n-ctx",
        visible_alias = "ctx-size",
        value_name = "N"
    )]
    n_ctx: Option<u32>,
    /// Alternatives printed per scored token with --json.
    #[arg(long, value_name = "K", default_value_t = 5)]
    top_k: u32,
    /// One JSON line per scored token, then a summary line.
    #[arg(long)]
    json: bool,
    /// llama.cpp KL-divergence base file: written (the scaled log-probabilities
    /// of every scored position), or read with --kl-divergence.
    #[arg(long, value_name = "FILE")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare with the base file: score its chunks and print KL-divergence
    /// statistics (the text is optional: the file holds the tokens).
    #[arg(long, requires = "kl_divergence_base")]
    kl_divergence: bool,
}

/// What is printed for the scored tokens.
struct Output {
    json: bool,
    top_k: usize,
}

impl Output {
    /// Print (JSON) one scored token.
    fn token(&self, pos: usize, token: u32, logprob: f32, top: &[(u32, f32)]) {
        if !self.json {
            return;
        }
        let top: Vec<(u32, f32)> = top.iter().take(self.top_k).copied().collect();
        let line = serde_json::json!({"pos": pos, "token": token, "logprob": logprob, "top": top});
        println!("{line}");
    }

    /// Print text (not in JSON mode).
    fn text(&self, s: &str) {
        if self.json {
            return;
        }
        print!("{s}");
        let _ = std::io::stdout().flush();
    }
}

/// A base-file error, naming the file.
fn kld_error(path: &Path, e: EvalError) -> anyhow::Error {
    let shown = path.display();
    match e {
        EvalError::TokenOutOfRange { .. } | EvalError::Io(_) | EvalError::BadLength { .. } => {
            anyhow::anyhow!("'{shown}': {e}")
        }
        e => anyhow::anyhow!("'{shown}' {e}"),
    }
}

/// Open and check a base file (header, size, tokens) before any scoring.
fn open_base(path: &Path) -> Result<Reader<BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|e| file_error("cannot open", path, &e))?;
    let size = file
        .metadata()
        .map_err(|e| file_error("cannot open", path, &e))?
        .len();
    Reader::new(BufReader::new(file), size).map_err(|e| kld_error(path, e))
}

pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    if let Some(n) = a.n_ctx {
        if n < 2 {
            bail!("--n-ctx must be at least 2 (got {n})");
        }
    }
    if a.file.is_none() && a.prompt.is_none() && a.tokens.is_none() && !a.kl_divergence {
        bail!("nothing to score: give -f FILE, -p TEXT or --tokens FILE.json");
    }
    if a.tokens.is_some() && a.kl_divergence_base.is_some() {
        bail!("--kl-divergence-base works on chunked text (-f or -p), not with --tokens");
    }
    // Read the inputs before loading the model: their errors come first.
    let text = match (&a.file, &a.prompt) {
        (Some(f), _) => {
            Some(std::fs::read_to_string(f).map_err(|e| file_error("cannot read", f, &e))?)
        }
        (_, Some(p)) => Some(p.clone()),
        _ => None,
    };
    if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
        bail!("the text to score is empty");
    }
    let given_tokens = match &a.tokens {
        Some(f) => Some(read_tokens(f)?),
        None => None,
    };
    let base = match (&a.kl_divergence_base, a.kl_divergence) {
        (Some(p), true) => Some((p, open_base(p)?)),
        _ => None,
    };
    check_model(&a.load.model)?;
    let (model, _) = a.load.load()?;
    let info = model.info();
    let n_vocab = info.n_vocab as usize;
    let out = Output {
        json: a.json,
        top_k: a.top_k as usize,
    };

    if let Some(tokens) = given_tokens {
        if let Some((i, t)) = out_of_vocab(&tokens, n_vocab) {
            bail!("token {i} is {t}, outside the model's vocabulary of {n_vocab}");
        }
        return score_sequence(&model, &tokens, a.n_ctx.unwrap_or(0), &out);
    }

    if let Some((path, mut base)) = base {
        let h = &base.header;
        if h.n_vocab != n_vocab {
            bail!(
                "the KL-divergence base file has a vocabulary of {}, the model {n_vocab}",
                h.n_vocab
            );
        }
        if let Some(n) = a.n_ctx.filter(|&n| n as usize != h.n_ctx) {
            bail!(
                "the KL-divergence base file was computed with --n-ctx {}, not {n}",
                h.n_ctx
            );
        }
        if let Some(text) = &text {
            let ours = model.tokenize(text, true, false).map_err(kernel_error)?;
            let theirs = &h.tokens;
            if ours.len() < theirs.len() {
                bail!("the text differs from the KL-divergence base file: it tokenizes to {} tokens, the file holds {}", ours.len(), theirs.len());
            }
            if let Some(i) = (0..theirs.len()).find(|&i| ours[i] != theirs[i]) {
                bail!("the text differs from the KL-divergence base file's tokens at token {i} ({} vs {})", ours[i], theirs[i]);
            }
        }
        let chunking = Chunking {
            n_ctx: h.n_ctx,
            n_chunk: h.n_chunk,
        };
        let tokens = h.tokens.clone();
        return compare(&model, &info, &tokens, chunking, path, &mut base, &out);
    }

    let text = text.context("nothing to score: give -f FILE or -p TEXT")?;
    let n_ctx = a.n_ctx.unwrap_or(DEFAULT_N_CTX) as usize;
    if n_ctx < 4 {
        return Err(EvalError::ContextTooSmall(n_ctx).into());
    }
    let tokens = model.tokenize(&text, true, false).map_err(kernel_error)?;
    let chunking = Chunking::new(tokens.len(), n_ctx)?;
    let n_chunk = chunking.n_chunk;
    let mut writer = match &a.kl_divergence_base {
        Some(p) => {
            let file = std::fs::File::create(p).map_err(|e| file_error("cannot create", p, &e))?;
            let header = Header {
                n_ctx,
                n_vocab,
                n_chunk,
                tokens: tokens[..chunking.n_evaluated()].to_vec(),
            };
            Some((
                p,
                Writer::new(BufWriter::new(file), &header).map_err(|e| kld_error(p, e))?,
            ))
        }
        None => None,
    };
    let session = model.new_session(n_ctx as u32).map_err(kernel_error)?;
    let first = chunking.first();
    let bos = bos_of(&info);
    let mut nll = Nll::default();
    let started = Instant::now();
    for c in 0..n_chunk {
        let chunk = chunking.chunk(&tokens, c, bos);
        if let Some((p, w)) = writer.as_mut() {
            let rows = session
                .score_full(&chunk, first as u32)
                .map_err(kernel_error)?;
            check_rows(&rows, chunking.scored_per_chunk(), n_vocab)?;
            for (r, row) in rows.chunks_exact(n_vocab).enumerate() {
                let pos = first + r;
                let lp = row[chunk[pos] as usize];
                nll.add(lp);
                let top = if a.json {
                    top_of(row, a.top_k as usize)
                } else {
                    Vec::new()
                };
                out.token(c * n_ctx + pos, chunk[pos], lp, &top);
            }
            w.write_rows(&rows).map_err(|e| kld_error(p, e))?;
        } else {
            let k = if a.json { a.top_k } else { 0 };
            for s in session
                .score(&chunk, first as u32, k)
                .map_err(kernel_error)?
            {
                nll.add(s.logprob);
                out.token(c * n_ctx + s.pos as usize, s.token, s.logprob, &s.top);
            }
        }
        out.text(&format!("[{}]{:.4},", c + 1, nll.ppl()));
    }
    if let Some((p, w)) = writer {
        w.finish().map_err(|e| kld_error(p, e))?;
    }
    out.text("\n");
    finish(&out, &nll, chunking.n_evaluated(), started.elapsed());
    Ok(())
}

/// The BOS token that replaces each chunk's first token, if the vocabulary adds one.
fn bos_of(info: &ModelInfo) -> Option<u32> {
    if info.add_bos {
        info.bos_token
    } else {
        None
    }
}

/// The final estimate (stdout) and the speed (stderr).
fn finish(out: &Output, nll: &Nll, evaluated: usize, elapsed: Duration) {
    if out.json {
        let line = serde_json::json!({"perplexity": nll.ppl(), "n_tokens": nll.count});
        println!("{line}");
    } else {
        println!("{}", nll.final_estimate());
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "scored {} tokens ({evaluated} evaluated) in {secs:.2} s: {:.2} tokens/s",
        nll.count,
        evaluated as f64 / secs
    );
}

fn check_rows(rows: &[f32], n: usize, n_vocab: usize) -> Result<()> {
    if rows.len() != n * n_vocab {
        bail!(
            "the kernel returned {} log-probabilities, expected {n} rows of {n_vocab}",
            rows.len()
        );
    }
    Ok(())
}

/// Read a JSON array of token ids.
fn read_tokens(path: &Path) -> Result<Vec<u32>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| file_error("cannot read", path, &e))?;
    let tokens: Vec<u32> = serde_json::from_str(&text)
        .with_context(|| format!("'{shown}' is not a JSON array of token ids"))?;
    if tokens.len() < 2 {
        bail!(
            "'{shown}' holds {} token(s); scoring needs at least 2",
            tokens.len()
        );
    }
    Ok(tokens)
}

/// `--tokens`: score the whole sequence from its second token on, in one pass.
fn score_sequence(model: &Model, tokens: &[u32], n_ctx: u32, out: &Output) -> Result<()> {
    let n_ctx = n_ctx.max(u32::try_from(tokens.len())?);
    let session: Session = model.new_session(n_ctx).map_err(kernel_error)?;
    let started = Instant::now();
    let k = if out.json { out.top_k as u32 } else { 0 };
    let mut nll = Nll::default();
    for s in session.score(tokens, 1, k).map_err(kernel_error)? {
        nll.add(s.logprob);
        out.token(s.pos as usize, s.token, s.logprob, &s.top);
    }
    out.text(&format!("[1]{:.4},\n", nll.ppl()));
    finish(out, &nll, tokens.len(), started.elapsed());
    Ok(())
}

/// `--kl-divergence`: score the base file's chunks and compare.
fn compare(
    model: &Model,
    info: &ModelInfo,
    tokens: &[u32],
    chunking: Chunking,
    path: &Path,
    base: &mut Reader<BufReader<std::fs::File>>,
    out: &Output,
) -> Result<()> {
    let n_vocab = info.n_vocab as usize;
    let n_ctx = chunking.n_ctx;
    let words = kld::row_words(n_vocab);
    let session = model.new_session(n_ctx as u32).map_err(kernel_error)?;
    let first = chunking.first();
    let bos = bos_of(info);
    let mut stats = KldStats::default();
    let started = Instant::now();
    out.text(CHUNK_HEADER);
    for c in 0..chunking.n_chunk {
        let chunk = chunking.chunk(tokens, c, bos);
        let rows = session
            .score_full(&chunk, first as u32)
            .map_err(kernel_error)?;
        check_rows(&rows, chunking.scored_per_chunk(), n_vocab)?;
        let stored = base.next_chunk().map_err(|e| kld_error(path, e))?;
        for (r, (row, b)) in rows
            .chunks_exact(n_vocab)
            .zip(stored.chunks_exact(words))
            .enumerate()
        {
            let pos = first + r;
            let tok = chunk[pos];
            if !stats.add(row, b, tok as usize) {
                bail!(
                    "'{}': row {r} of chunk {c} does not match the model",
                    path.display()
                );
            }
            let top = if out.json {
                top_of(row, out.top_k)
            } else {
                Vec::new()
            };
            out.token(c * n_ctx + pos, tok, row[tok as usize], &top);
        }
        out.text(&stats.chunk_line(c));
    }
    let elapsed = started.elapsed();
    let s = stats.summary();
    if out.json {
        let line = serde_json::json!({
            "perplexity": s.ppl,
            "n_tokens": s.count,
            "kl_divergence": {
                "ppl": s.ppl, "ppl_uncertainty": s.ppl_unc,
                "ppl_base": s.ppl_base, "ppl_base_uncertainty": s.ppl_base_unc,
                "ln_ppl_ratio": s.ln_ppl_ratio.0, "ln_ppl_ratio_uncertainty": s.ln_ppl_ratio.1,
                "mean": s.kld.0, "uncertainty": s.kld.1, "median": s.kld_median, "max": s.kld_max,
                "mean_dp_percent": 100.0 * s.mean_p_diff.0, "mean_dp_uncertainty": 100.0 * s.mean_p_diff.1,
                "rms_dp_percent": 100.0 * s.rms_p_diff.0, "rms_dp_uncertainty": 100.0 * s.rms_p_diff.1,
                "same_top_percent": 100.0 * s.same_top.0, "same_top_uncertainty": 100.0 * s.same_top.1,
            }
        });
        println!("{line}");
    } else {
        out.text(&stats.report(&s));
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    let evaluated = chunking.n_evaluated();
    eprintln!(
        "scored {} tokens ({evaluated} evaluated) in {secs:.2} s: {:.2} tokens/s",
        stats.count,
        evaluated as f64 / secs
    );
    Ok(())
}
