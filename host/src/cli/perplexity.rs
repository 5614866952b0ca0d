//! `wasm-chord perplexity`: teacher-forced scoring with llama.cpp's
//! `llama-perplexity` semantics (chunking, running estimate, uncertainty,
//! KL-divergence base files), so figures compare with llama.cpp's.
//!
//! Text (`-f`/`-p`) is tokenized once, BOS added as the vocabulary says, and
//! cut into `n_tokens / n_ctx` chunks of `n_ctx` tokens. Each chunk is
//! evaluated from an empty context, its first token replaced by BOS when the
//! vocabulary adds one; only its second half is scored: the positions
//! `n_ctx/2 .. n_ctx-2` predict the tokens `n_ctx/2+1 .. n_ctx-1`.
//! `--tokens` scores a given token sequence in one pass instead.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wasm_chord::{Model, Runtime, Session};

use super::kld::{self, KldStats};
use super::{check_model, start, KernelArgs, LoadArgs};

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
    #[command(flatten)]
    kernel: KernelArgs,
}

/// Default chunk length, as llama-perplexity's.
const DEFAULT_N_CTX: u32 = 512;

/// Running negative log-likelihood sums.
#[derive(Debug, Default)]
struct Nll {
    sum: f64,
    sum2: f64,
    count: usize,
}

impl Nll {
    fn add(&mut self, logprob: f32) {
        let v = -f64::from(logprob);
        self.sum += v;
        self.sum2 += v * v;
        self.count += 1;
    }

    fn ppl(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }

    /// llama.cpp's uncertainty of the perplexity (None when it cannot be estimated).
    fn uncertainty(&self) -> Option<f64> {
        if self.count < 2 {
            return None;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        (var > 0.0).then(|| (var / (n - 1.0)).sqrt() * mean.exp())
    }
}

/// What is printed for the scored tokens.
struct Output {
    json: bool,
    top_k: usize,
    bar: ProgressBar,
}

impl Output {
    /// Print (JSON) one scored token.
    fn token(&self, pos: usize, token: u32, logprob: f32, top: &[(u32, f32)]) {
        if !self.json {
            return;
        }
        let top: Vec<(u32, f32)> = top.iter().take(self.top_k).copied().collect();
        let line = serde_json::json!({"pos": pos, "token": token, "logprob": logprob, "top": top});
        self.bar.suspend(|| println!("{line}"));
    }

    /// Print text outside the progress bar (not in JSON mode).
    fn text(&self, s: &str) {
        if self.json {
            return;
        }
        self.bar.suspend(|| {
            print!("{s}");
            let _ = std::io::stdout().flush();
        });
    }
}

/// The `k` best entries of a log-probability row, best first.
fn top_of(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (i, &v) in row.iter().enumerate() {
        if top.len() < k || v > top[top.len() - 1].1 {
            let at = top.partition_point(|&(_, x)| x >= v);
            top.insert(at, (i as u32, v));
            top.truncate(k);
        }
    }
    top
}

fn progress(n: u64, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(n);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} chunk {pos}/{len} [{elapsed_precise} < {eta}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
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
    // Read the inputs before starting the kernel: their errors come first.
    let text = match (&a.file, &a.prompt) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f).with_context(|| format!("cannot read '{}'", f.display()))?,
        ),
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
        (Some(p), true) => Some(kld::Reader::open(p)?),
        _ => None,
    };
    check_model(&a.load.model)?;
    let (mut rt, model, _) = start(&a.kernel, &a.load)?;
    let info = rt.info(model)?.clone();
    let n_vocab = info.n_vocab as usize;
    let out = Output {
        json: a.json,
        top_k: a.top_k as usize,
        bar: ProgressBar::hidden(),
    };

    if let Some(tokens) = given_tokens {
        check_vocab(&tokens, n_vocab)?;
        return score_sequence(&mut rt, model, &tokens, a.n_ctx.unwrap_or(0), out);
    }

    if let Some(mut base) = base {
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
            let ours = rt.tokenize(model, text, true, false)?;
            let theirs = &h.tokens;
            if ours.len() < theirs.len() {
                bail!("the text differs from the KL-divergence base file: it tokenizes to {} tokens, the file holds {}", ours.len(), theirs.len());
            }
            if let Some(i) = (0..theirs.len()).find(|&i| ours[i] != theirs[i]) {
                bail!("the text differs from the KL-divergence base file's tokens at token {i} ({} vs {})", ours[i], theirs[i]);
            }
        }
        let (n_ctx, n_chunk) = (h.n_ctx, h.n_chunk);
        let tokens = h.tokens.clone();
        let bar = progress(n_chunk as u64, a.json);
        let out = Output { bar, ..out };
        return compare(&mut rt, model, &tokens, n_ctx, n_chunk, &mut base, &out);
    }

    let text = text.context("nothing to score: give -f FILE or -p TEXT")?;
    let n_ctx = a.n_ctx.unwrap_or(DEFAULT_N_CTX) as usize;
    if n_ctx < 4 {
        bail!("--n-ctx must be at least 4 to score the second half of each chunk (got {n_ctx})");
    }
    let tokens = rt.tokenize(model, &text, true, false)?;
    let n_chunk = tokens.len() / n_ctx;
    if n_chunk == 0 {
        bail!(
            "the text tokenizes to {} tokens, fewer than one chunk of --n-ctx {n_ctx}",
            tokens.len()
        );
    }
    let mut writer = match &a.kl_divergence_base {
        Some(p) => Some(kld::Writer::create(
            p,
            &kld::Header {
                n_ctx,
                n_vocab,
                n_chunk,
                tokens: tokens[..n_chunk * n_ctx].to_vec(),
            },
        )?),
        None => None,
    };
    let bar = progress(n_chunk as u64, a.json);
    let out = Output { bar, ..out };
    let session = rt.new_session(model, n_ctx as u32)?;
    let first = n_ctx / 2 + 1;
    let mut nll = Nll::default();
    let started = Instant::now();
    for c in 0..n_chunk {
        let chunk = chunk_tokens(&tokens, c, n_ctx, &info);
        if let Some(w) = writer.as_mut() {
            let rows = rt.score_full(session, &chunk, first as u32)?;
            check_rows(&rows, n_ctx - first, n_vocab)?;
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
            w.write_rows(&rows)?;
        } else {
            let k = if a.json { a.top_k } else { 0 };
            for s in rt.score(session, &chunk, first as u32, k)? {
                nll.add(s.logprob);
                out.token(c * n_ctx + s.pos as usize, s.token, s.logprob, &s.top);
            }
        }
        out.text(&format!("[{}]{:.4},", c + 1, nll.ppl()));
        out.bar.inc(1);
    }
    out.bar.finish_and_clear();
    if let Some(w) = writer {
        w.finish()?;
    }
    out.text("\n");
    finish(&out, &nll, n_chunk * n_ctx, started.elapsed());
    Ok(())
}

/// Chunk `c` of `tokens`, its first token replaced by BOS if the vocabulary adds one.
fn chunk_tokens(tokens: &[u32], c: usize, n_ctx: usize, info: &wasm_chord::ModelInfo) -> Vec<u32> {
    let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
    if let (true, Some(bos)) = (info.add_bos, info.bos_token) {
        chunk[0] = bos;
    }
    chunk
}

/// The final estimate (stdout) and the speed (stderr).
fn finish(out: &Output, nll: &Nll, evaluated: usize, elapsed: Duration) {
    if out.json {
        let line = serde_json::json!({"perplexity": nll.ppl(), "n_tokens": nll.count});
        println!("{line}");
    } else {
        match nll.uncertainty() {
            Some(u) => println!("Final estimate: PPL = {:.4} +/- {:.5}", nll.ppl(), u),
            None => println!("Final estimate: PPL = {:.4}", nll.ppl()),
        }
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
fn read_tokens(path: &std::path::Path) -> Result<Vec<u32>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read '{shown}'"))?;
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

fn check_vocab(tokens: &[u32], n_vocab: usize) -> Result<()> {
    if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= n_vocab)
    {
        bail!("token {i} is {t}, outside the model's vocabulary of {n_vocab}");
    }
    Ok(())
}

/// `--tokens`: score the whole sequence from its second token on, in one pass.
fn score_sequence(
    rt: &mut Runtime,
    model: Model,
    tokens: &[u32],
    n_ctx: u32,
    out: Output,
) -> Result<()> {
    let n_ctx = n_ctx.max(u32::try_from(tokens.len())?);
    let session: Session = rt.new_session(model, n_ctx)?;
    let started = Instant::now();
    let k = if out.json { out.top_k as u32 } else { 0 };
    let mut nll = Nll::default();
    for s in rt.score(session, tokens, 1, k)? {
        nll.add(s.logprob);
        out.token(s.pos as usize, s.token, s.logprob, &s.top);
    }
    out.text(&format!("[1]{:.4},\n", nll.ppl()));
    finish(&out, &nll, tokens.len(), started.elapsed());
    Ok(())
}

/// `--kl-divergence`: score the base file's chunks and compare.
fn compare(
    rt: &mut Runtime,
    model: Model,
    tokens: &[u32],
    n_ctx: usize,
    n_chunk: usize,
    base: &mut kld::Reader,
    out: &Output,
) -> Result<()> {
    let info = rt.info(model)?.clone();
    let n_vocab = info.n_vocab as usize;
    let words = kld::row_words(n_vocab);
    let session = rt.new_session(model, n_ctx as u32)?;
    let first = n_ctx / 2 + 1;
    let mut stats = KldStats::default();
    let started = Instant::now();
    out.text("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p\n");
    for c in 0..n_chunk {
        let chunk = chunk_tokens(tokens, c, n_ctx, &info);
        let rows = rt.score_full(session, &chunk, first as u32)?;
        check_rows(&rows, n_ctx - first, n_vocab)?;
        let stored = base.next_chunk()?;
        for (r, (row, b)) in rows
            .chunks_exact(n_vocab)
            .zip(stored.chunks_exact(words))
            .enumerate()
        {
            let pos = first + r;
            let tok = chunk[pos];
            stats.add(row, b, tok as usize);
            let top = if out.json {
                top_of(row, out.top_k)
            } else {
                Vec::new()
            };
            out.token(c * n_ctx + pos, tok, row[tok as usize], &top);
        }
        let (ppl, ppl_unc) = stats.ppl();
        let ratio = stats.log_ppl_ratio();
        let kl = stats.kld();
        let rms = stats.rms_p_diff();
        let top = stats.same_top();
        out.text(&format!(
            "{:4}    {:9.4} ± {:9.4}    {:10.5} ± {:10.5}    {:10.5} ± {:10.5}    {:6.3} ± {:6.3} %    {:6.3} ± {:6.3} %\n",
            c + 1,
            ppl,
            ppl_unc,
            ratio.0,
            ratio.1,
            kl.0,
            kl.1,
            100.0 * rms.0,
            100.0 * rms.1,
            100.0 * top.0,
            100.0 * top.1
        ));
        out.bar.inc(1);
    }
    out.bar.finish_and_clear();
    let elapsed = started.elapsed();
    report_kld(out, &mut stats);
    let secs = elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "scored {} tokens ({} evaluated) in {secs:.2} s: {:.2} tokens/s",
        stats.count,
        n_chunk * n_ctx,
        (n_chunk * n_ctx) as f64 / secs
    );
    Ok(())
}

/// The summary of `--kl-divergence`, as llama.cpp prints it (or one JSON line).
fn report_kld(out: &Output, s: &mut KldStats) {
    s.klds.sort_by(f32::total_cmp);
    s.p_diffs.sort_by(f32::total_cmp);
    let (ppl, ppl_unc) = s.ppl();
    let (ppl_base, ppl_base_unc) = s.ppl_base();
    let ratio = s.log_ppl_ratio();
    let kl = s.kld();
    let rms = s.rms_p_diff();
    let top = s.same_top();
    let dp = kld::mean_and_uncertainty(s.sum_p_diff, s.sum_p_diff2, s.count);
    let kmed = kld::median(&s.klds);
    let kmax = s.klds.last().copied().unwrap_or(0.0);
    if out.json {
        let line = serde_json::json!({
            "perplexity": ppl,
            "n_tokens": s.count,
            "kl_divergence": {
                "ppl": ppl, "ppl_uncertainty": ppl_unc,
                "ppl_base": ppl_base, "ppl_base_uncertainty": ppl_base_unc,
                "ln_ppl_ratio": ratio.0, "ln_ppl_ratio_uncertainty": ratio.1,
                "mean": kl.0, "uncertainty": kl.1, "median": kmed, "max": kmax,
                "mean_dp_percent": 100.0 * dp.0, "mean_dp_uncertainty": 100.0 * dp.1,
                "rms_dp_percent": 100.0 * rms.0, "rms_dp_uncertainty": 100.0 * rms.1,
                "same_top_percent": 100.0 * top.0, "same_top_uncertainty": 100.0 * top.1,
            }
        });
        println!("{line}");
        return;
    }
    let cov = s.log_ppl_cov();
    let lp = kld::mean_and_uncertainty(s.sum_nll, s.sum_nll2, s.count);
    let lb = kld::mean_and_uncertainty(s.sum_nll_base, s.sum_nll_base2, s.count);
    let mut t = String::from("\n====== Perplexity statistics ======\n");
    t += &format!("Mean PPL(Q)                   : {ppl:10.6} ± {ppl_unc:10.6}\n");
    t += &format!("Mean PPL(base)                : {ppl_base:10.6} ± {ppl_base_unc:10.6}\n");
    t += &format!(
        "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%\n",
        100.0 * cov / (lp.1 * lb.1)
    );
    t += &format!(
        "Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}\n",
        ratio.0, ratio.1
    );
    let r = ratio.0.exp();
    t += &format!(
        "Mean PPL(Q)/PPL(base)         : {r:10.6} ± {:10.6}\n",
        r * ratio.1
    );
    let ppl_cov = ppl * ppl_base * cov;
    let diff_unc = (ppl_unc * ppl_unc + ppl_base_unc * ppl_base_unc - 2.0 * ppl_cov)
        .max(0.0)
        .sqrt();
    t += &format!(
        "Mean PPL(Q)-PPL(base)         : {:10.6} ± {diff_unc:10.6}\n",
        ppl - ppl_base
    );
    t += "\n====== KL divergence statistics ======\n";
    t += &format!("Mean    KLD: {:10.6} ± {:10.6}\n", kl.0, kl.1);
    t += &format!("Maximum KLD: {kmax:10.6}\n");
    for (label, f) in [
        ("99.9%", 0.999),
        ("99.0%", 0.99),
        ("95.0%", 0.95),
        ("90.0%", 0.9),
    ] {
        t += &format!("{label}   KLD: {:10.6}\n", kld::percentile(&s.klds, f));
    }
    t += &format!("Median  KLD: {kmed:10.6}\n");
    for (label, f) in [
        ("10.0%", 0.1),
        (" 5.0%", 0.05),
        (" 1.0%", 0.01),
        (" 0.1%", 0.001),
    ] {
        t += &format!("{label}   KLD: {:10.6}\n", kld::percentile(&s.klds, f));
    }
    t += &format!(
        "Minimum KLD: {:10.6}\n",
        s.klds.first().copied().unwrap_or(0.0)
    );
    t += "\n====== Token probability statistics ======\n";
    t += &format!(
        "Mean    Δp: {:6.3} ± {:5.3} %\n",
        100.0 * dp.0,
        100.0 * dp.1
    );
    let pd = &s.p_diffs;
    t += &format!(
        "Maximum Δp: {:6.3}%\n",
        100.0 * pd.last().copied().unwrap_or(0.0)
    );
    for (label, f) in [
        ("99.9%", 0.999),
        ("99.0%", 0.99),
        ("95.0%", 0.95),
        ("90.0%", 0.9),
        ("75.0%", 0.75),
    ] {
        t += &format!("{label}   Δp: {:6.3}%\n", 100.0 * kld::percentile(pd, f));
    }
    t += &format!("Median  Δp: {:6.3}%\n", 100.0 * kld::median(pd));
    for (label, f) in [
        ("25.0%", 0.25),
        ("10.0%", 0.1),
        (" 5.0%", 0.05),
        (" 1.0%", 0.01),
        (" 0.1%", 0.001),
    ] {
        t += &format!("{label}   Δp: {:6.3}%\n", 100.0 * kld::percentile(pd, f));
    }
    t += &format!(
        "Minimum Δp: {:6.3}%\n",
        100.0 * pd.first().copied().unwrap_or(0.0)
    );
    t += &format!(
        "RMS Δp    : {:6.3} ± {:5.3} %\n",
        100.0 * rms.0,
        100.0 * rms.1
    );
    t += &format!(
        "Same top p: {:6.3} ± {:5.3} %\n",
        100.0 * top.0,
        100.0 * top.1
    );
    out.text(&t);
}
