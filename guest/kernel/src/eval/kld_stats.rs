//! The statistics of `--kl-divergence` and their report, as llama.cpp's
//! `llama-perplexity` keeps and prints them.

use super::kld::row_params;
use crate::model::session::top_of;
use crate::sample::log_sum_exp;

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
    /// `base` (`row_words(lp.len())` words) and the token that came next.
    /// Rows of other lengths and tokens outside the row are ignored
    /// (`false`): the caller checks them.
    pub fn add(&mut self, lp: &[f32], base: &[u16], tok: usize) -> bool {
        if lp.is_empty() || tok >= lp.len() || base.len() < 4 + lp.len() {
            return false;
        }
        let imax = top_of(lp, 1)[0].0 as usize;
        let (max, ln_sum) = log_sum_exp(lp);
        let log_sum_exp = ln_sum as f32;
        let (scale, min_log_prob) = row_params(base);
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
        true
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

    /// The per-chunk line after chunk `c` (0-based) was added.
    pub fn chunk_line(&self, c: usize) -> String {
        let (ppl, ppl_unc) = self.ppl();
        let ratio = self.log_ppl_ratio();
        let kl = self.kld();
        let rms = self.rms_p_diff();
        let top = self.same_top();
        format!(
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
        )
    }

    /// Sort the per-position values and summarize (call once, at the end).
    pub fn summary(&mut self) -> KldSummary {
        self.klds.sort_by(f32::total_cmp);
        self.p_diffs.sort_by(f32::total_cmp);
        let (ppl, ppl_unc) = self.ppl();
        let (ppl_base, ppl_base_unc) = self.ppl_base();
        KldSummary {
            count: self.count,
            ppl,
            ppl_unc,
            ppl_base,
            ppl_base_unc,
            ln_ppl_ratio: self.log_ppl_ratio(),
            kld: self.kld(),
            kld_median: median(&self.klds),
            kld_max: self.klds.last().copied().unwrap_or(0.0),
            mean_p_diff: mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, self.count),
            rms_p_diff: self.rms_p_diff(),
            same_top: self.same_top(),
        }
    }

    /// llama.cpp's report after the chunks (call after [`KldStats::summary`]).
    pub fn report(&self, s: &KldSummary) -> String {
        let (ppl, ppl_unc, ppl_base, ppl_base_unc) = (s.ppl, s.ppl_unc, s.ppl_base, s.ppl_base_unc);
        let (ratio, kl, rms, top, dp) = (
            s.ln_ppl_ratio,
            s.kld,
            s.rms_p_diff,
            s.same_top,
            s.mean_p_diff,
        );
        let cov = self.log_ppl_cov();
        let lp = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count);
        let lb = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count);
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
        t += &format!("Maximum KLD: {:10.6}\n", s.kld_max);
        let klds = &self.klds;
        for (label, f) in [
            ("99.9%", 0.999),
            ("99.0%", 0.99),
            ("95.0%", 0.95),
            ("90.0%", 0.9),
        ] {
            t += &format!("{label}   KLD: {:10.6}\n", percentile(klds, f));
        }
        t += &format!("Median  KLD: {:10.6}\n", s.kld_median);
        for (label, f) in [
            ("10.0%", 0.1),
            (" 5.0%", 0.05),
            (" 1.0%", 0.01),
            (" 0.1%", 0.001),
        ] {
            t += &format!("{label}   KLD: {:10.6}\n", percentile(klds, f));
        }
        t += &format!(
            "Minimum KLD: {:10.6}\n",
            klds.first().copied().unwrap_or(0.0)
        );
        t += "\n====== Token probability statistics ======\n";
        t += &format!(
            "Mean    Δp: {:6.3} ± {:5.3} %\n",
            100.0 * dp.0,
            100.0 * dp.1
        );
        let pd = &self.p_diffs;
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
            t += &format!("{label}   Δp: {:6.3}%\n", 100.0 * percentile(pd, f));
        }
        t += &format!("Median  Δp: {:6.3}%\n", 100.0 * median(pd));
        for (label, f) in [
            ("25.0%", 0.25),
            ("10.0%", 0.1),
            (" 5.0%", 0.05),
            (" 1.0%", 0.01),
            (" 0.1%", 0.001),
        ] {
            t += &format!("{label}   Δp: {:6.3}%\n", 100.0 * percentile(pd, f));
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
        t
    }
}

/// The header line of the per-chunk table.
pub const CHUNK_HEADER: &str = "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p\n";

/// The summary figures of `--kl-divergence` (fractions, not percent).
#[derive(Clone, Debug, PartialEq)]
pub struct KldSummary {
    pub count: usize,
    pub ppl: f64,
    pub ppl_unc: f64,
    pub ppl_base: f64,
    pub ppl_base_unc: f64,
    /// Mean ln(PPL(Q)/PPL(base)) and its uncertainty.
    pub ln_ppl_ratio: (f64, f64),
    /// Mean KL divergence and its uncertainty.
    pub kld: (f64, f64),
    pub kld_median: f32,
    pub kld_max: f32,
    /// Mean probability difference of the right token and its uncertainty.
    pub mean_p_diff: (f64, f64),
    /// RMS of that difference and its uncertainty.
    pub rms_p_diff: (f64, f64),
    /// Fraction with the same most likely token and its uncertainty.
    pub same_top: (f64, f64),
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
