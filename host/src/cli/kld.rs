//! llama.cpp's KL-divergence base file (`llama-perplexity --kl-divergence-base`)
//! and the statistics of `--kl-divergence`.
//!
//! Layout (little-endian): the 8 bytes `_logits_`; `n_ctx`, `n_vocab` and
//! `n_chunk` as i32; the `n_chunk * n_ctx` evaluated tokens as i32 (as
//! tokenized: the first token of a chunk is not replaced by BOS); then per
//! chunk, `n_ctx - 1 - n_ctx/2` rows (the positions `n_ctx/2 .. n_ctx-2`, each
//! predicting the next token) of `nv = 2*((n_vocab+1)/2) + 4` u16 each: the
//! row's `scale` and `min_log_prob` as two f32, then every token's
//! log-probability quantized as `min_log_prob + scale * q` (q = 0 below
//! `max - 16`), padded to an even count.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The file's magic.
const MAGIC: &[u8; 8] = b"_logits_";

/// u16 words per stored row for a vocabulary of `n_vocab`.
pub fn row_words(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Rows stored per chunk of `n_ctx` tokens.
pub fn rows_per_chunk(n_ctx: usize) -> usize {
    n_ctx - 1 - n_ctx / 2
}

/// Quantize one log-probability row (any log-softmax input works: only
/// differences matter) into `out` (`row_words(row.len())` words), as llama.cpp does.
pub fn quantize_row(row: &[f32], out: &mut [u16]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = row
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min)
        .max(max - 16.0);
    let sum_exp: f64 = row.iter().map(|&v| f64::from((v - max).exp())).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
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

/// The header of a base file.
#[derive(Debug, Clone)]
pub struct Header {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    /// `n_chunk * n_ctx` tokens.
    pub tokens: Vec<u32>,
}

/// Writes a base file chunk by chunk.
pub struct Writer {
    out: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    n_vocab: usize,
    words: Vec<u16>,
}

impl Writer {
    /// Create `path` and write the header.
    pub fn create(path: &Path, header: &Header) -> Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create '{}'", path.display()))?;
        let mut w = Writer {
            out: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
            n_vocab: header.n_vocab,
            words: vec![0; row_words(header.n_vocab)],
        };
        let mut head = Vec::with_capacity(20 + 4 * header.tokens.len());
        head.extend_from_slice(MAGIC);
        for v in [header.n_ctx, header.n_vocab, header.n_chunk] {
            head.extend_from_slice(&i32::try_from(v)?.to_le_bytes());
        }
        for &t in &header.tokens {
            head.extend_from_slice(&t.to_le_bytes());
        }
        w.write(&head)?;
        Ok(w)
    }

    /// Append the log-probability rows of one chunk (row-major, n_vocab each).
    pub fn write_rows(&mut self, rows: &[f32]) -> Result<()> {
        let mut bytes = Vec::with_capacity(rows.len() / self.n_vocab * self.words.len() * 2);
        let mut words = std::mem::take(&mut self.words);
        for row in rows.chunks_exact(self.n_vocab) {
            quantize_row(row, &mut words);
            for w in &words {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
        }
        self.words = words;
        self.write(&bytes)
    }

    /// Flush to disk.
    pub fn finish(mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("cannot write '{}'", self.path.display()))
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out
            .write_all(b)
            .with_context(|| format!("cannot write '{}'", self.path.display()))
    }
}

/// Reads a base file: header first, then the rows chunk by chunk.
pub struct Reader {
    input: std::io::BufReader<std::fs::File>,
    pub header: Header,
    chunk: Vec<u16>,
}

impl Reader {
    /// Open `path`, read and check the header and the file's size.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        let file = std::fs::File::open(path).with_context(|| format!("cannot open '{shown}'"))?;
        let size = file.metadata()?.len();
        let mut input = std::io::BufReader::new(file);
        let mut head = [0u8; 20];
        let got = read_up_to(&mut input, &mut head)?;
        if got < 8 || &head[..8] != MAGIC {
            bail!("'{shown}' is not a KL-divergence base file (no '_logits_' magic)");
        }
        if got < 20 {
            bail!("'{shown}' is truncated: its header is {got} bytes, expected 20");
        }
        let field = |i: usize| i32::from_le_bytes(head[8 + 4 * i..12 + 4 * i].try_into().unwrap());
        let (n_ctx, n_vocab, n_chunk) = (field(0), field(1), field(2));
        if n_ctx < 4 || n_vocab < 1 || n_chunk < 1 {
            bail!("'{shown}' has an invalid header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}");
        }
        let (n_ctx, n_vocab, n_chunk) = (n_ctx as usize, n_vocab as usize, n_chunk as usize);
        let n_tokens = n_ctx as u64 * n_chunk as u64;
        let expected = 20
            + 4 * n_tokens
            + n_chunk as u64 * rows_per_chunk(n_ctx) as u64 * row_words(n_vocab) as u64 * 2;
        if size < expected {
            bail!("'{shown}' is truncated: {size} bytes, expected {expected} for {n_chunk} chunks of {n_ctx} tokens and a vocabulary of {n_vocab}");
        }
        if size > expected {
            bail!("'{shown}' has {} bytes of trailing data after {n_chunk} chunks of {n_ctx} tokens and a vocabulary of {n_vocab}", size - expected);
        }
        let mut raw = vec![0u8; 4 * n_tokens as usize];
        input
            .read_exact(&mut raw)
            .with_context(|| format!("cannot read '{shown}'"))?;
        let mut tokens = Vec::with_capacity(raw.len() / 4);
        for (i, b) in raw.chunks_exact(4).enumerate() {
            let t = i32::from_le_bytes(b.try_into().unwrap());
            if t < 0 || t as usize >= n_vocab {
                bail!("'{shown}': token {i} is {t}, outside the vocabulary of {n_vocab}");
            }
            tokens.push(t as u32);
        }
        Ok(Reader {
            input,
            header: Header {
                n_ctx,
                n_vocab,
                n_chunk,
                tokens,
            },
            chunk: vec![0; rows_per_chunk(n_ctx) * row_words(n_vocab)],
        })
    }

    /// The stored rows of the next chunk (`rows_per_chunk` rows of `row_words`).
    pub fn next_chunk(&mut self) -> Result<&[u16]> {
        let mut raw = vec![0u8; self.chunk.len() * 2];
        self.input
            .read_exact(&mut raw)
            .context("the KL-divergence base file ended early")?;
        for (d, b) in self.chunk.iter_mut().zip(raw.chunks_exact(2)) {
            *d = u16::from_le_bytes([b[0], b[1]]);
        }
        Ok(&self.chunk)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Running sums of `--kl-divergence`, as llama.cpp keeps them.
#[derive(Debug, Default, Clone)]
pub struct KldStats {
    pub sum_nll: f64,
    pub sum_nll2: f64,
    pub sum_nll_base: f64,
    pub sum_nll_base2: f64,
    pub sum_nll_nll_base: f64,
    pub sum_kld: f64,
    pub sum_kld2: f64,
    pub sum_p_diff: f64,
    pub sum_p_diff2: f64,
    pub sum_p_diff4: f64,
    pub max_p_diff: f32,
    pub n_same_top: usize,
    pub count: usize,
    /// Every position's KL divergence (for the median and percentiles).
    pub klds: Vec<f32>,
    /// Every position's probability difference of the right token (ours - base).
    pub p_diffs: Vec<f32>,
}

/// Mean and its standard error, as llama.cpp computes them (0 below 11 samples).
pub fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let f = sum / n;
    let df = sum2 / n - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (f, df)
}

impl KldStats {
    /// Add one position: our log-probability row `lp`, the stored base row
    /// `base` (`row_words` words) and the token that came next.
    pub fn add(&mut self, lp: &[f32], base: &[u16], tok: usize) {
        let mut max = lp[0];
        let mut imax = 0;
        for (i, &v) in lp.iter().enumerate().skip(1) {
            if v > max {
                max = v;
                imax = i;
            }
        }
        let sum_exp: f64 = lp.iter().map(|&v| f64::from((v - max).exp())).sum();
        let log_sum_exp = sum_exp.ln() as f32;
        let f = |a: u16, b: u16| {
            let [x, y] = a.to_le_bytes();
            let [z, w] = b.to_le_bytes();
            f32::from_le_bytes([x, y, z, w])
        };
        let scale = f(base[0], base[1]);
        let min_log_prob = f(base[2], base[3]);
        let q = &base[4..];

        let nll = max + log_sum_exp - lp[tok];
        self.sum_nll += f64::from(nll);
        self.sum_nll2 += f64::from(nll * nll);
        let nll_base = -(scale * f32::from(q[tok]) + min_log_prob);
        self.sum_nll_base += f64::from(nll_base);
        self.sum_nll_base2 += f64::from(nll_base * nll_base);
        self.sum_nll_nll_base += f64::from(nll * nll_base);

        let norm = max + log_sum_exp;
        let mut kld = 0f64;
        let mut imax_base = 0;
        let mut base_max = 0f32;
        for (i, (&qi, &v)) in q.iter().zip(lp).enumerate() {
            let p_log_base = scale * f32::from(qi) + min_log_prob;
            if i == 0 || p_log_base > base_max {
                base_max = p_log_base;
                imax_base = i;
            }
            if p_log_base > -16.0 {
                kld += f64::from(p_log_base.exp()) * f64::from(p_log_base - v + norm);
            }
        }
        self.sum_kld += kld;
        self.sum_kld2 += kld * kld;
        self.count += 1;
        if imax == imax_base {
            self.n_same_top += 1;
        }
        let p_diff = (-nll).exp() - (-nll_base).exp();
        self.sum_p_diff += f64::from(p_diff);
        let d2 = f64::from(p_diff) * f64::from(p_diff);
        self.sum_p_diff2 += d2;
        self.sum_p_diff4 += d2 * d2;
        self.max_p_diff = self.max_p_diff.max(p_diff.abs());
        self.klds.push(kld as f32);
        self.p_diffs.push(p_diff);
    }

    /// Our perplexity and its uncertainty.
    pub fn ppl(&self) -> (f64, f64) {
        let (m, u) = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count);
        (m.exp(), m.exp() * u)
    }

    /// The base's perplexity and its uncertainty.
    pub fn ppl_base(&self) -> (f64, f64) {
        let (m, u) = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count);
        (m.exp(), m.exp() * u)
    }

    /// Covariance of ln(PPL(Q)) and ln(PPL(base)) (0 below 10 samples).
    pub fn log_ppl_cov(&self) -> f64 {
        if self.count < 10 {
            return 0.0;
        }
        let n = self.count as f64;
        (self.sum_nll_nll_base / n - (self.sum_nll / n) * (self.sum_nll_base / n)) / (n - 1.0)
    }

    /// Mean ln(PPL(Q)/PPL(base)) and its uncertainty.
    pub fn log_ppl_ratio(&self) -> (f64, f64) {
        let a = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count);
        let b = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count);
        let var = a.1 * a.1 + b.1 * b.1 - 2.0 * self.log_ppl_cov();
        (a.0 - b.0, var.max(0.0).sqrt())
    }

    /// Mean KL divergence and its uncertainty.
    pub fn kld(&self) -> (f64, f64) {
        mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)
    }

    /// RMS of the probability difference of the right token, and its uncertainty.
    pub fn rms_p_diff(&self) -> (f64, f64) {
        let (mse, unc) = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, self.count);
        let rms = mse.sqrt();
        (rms, if rms > 0.0 { 0.5 / rms * unc } else { 0.0 })
    }

    /// Fraction of positions where both pick the same most likely token, and its uncertainty.
    pub fn same_top(&self) -> (f64, f64) {
        if self.count == 0 {
            return (0.0, 0.0);
        }
        let p = self.n_same_top as f64 / self.count as f64;
        let unc = if self.count > 1 {
            (p * (1.0 - p) / (self.count as f64 - 1.0)).sqrt()
        } else {
            0.0
        };
        (p, unc)
    }
}

/// Median of sorted values (llama.cpp's way).
pub fn median(sorted: &[f32]) -> f32 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    if n.is_multiple_of(2) {
        0.5 * (sorted[n / 2] + sorted[n / 2 - 1])
    } else {
        sorted[n / 2]
    }
}

/// Linear-interpolated percentile of sorted values (llama.cpp's way).
pub fn percentile(sorted: &[f32], fraction: f32) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f32;
    let ip = p as usize;
    let p = p - ip as f32;
    (1.0 - p) * sorted[ip] + p * sorted[(ip + 1).min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_softmax(x: &[f32]) -> Vec<f32> {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = x.iter().map(|v| (v - m).exp()).sum();
        x.iter().map(|v| v - m - s.ln()).collect()
    }

    #[test]
    fn quantized_row_round_trips() {
        let row = log_softmax(&[1.0, 3.0, -2.0, 0.5, -30.0]);
        let mut w = vec![0u16; row_words(row.len())];
        assert_eq!(w.len(), 6 + 4);
        quantize_row(&row, &mut w);
        let mut s = KldStats::default();
        s.add(&row, &w, 1);
        assert!(s.kld().0.abs() < 1e-5, "{:?}", s.kld());
        assert_eq!(s.n_same_top, 1);
        assert!((s.sum_nll - s.sum_nll_base).abs() < 1e-3);
    }

    #[test]
    fn percentiles() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(median(&v), 2.5);
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert_eq!(percentile(&v, 1.0), 4.0);
    }
}
