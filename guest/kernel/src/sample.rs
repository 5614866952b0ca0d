//! Sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty,
//! with a seeded generator so the same seed gives the same tokens everywhere.
//!
//! The chain follows llama.cpp's default order: penalties → top-k → top-p →
//! min-p → temperature → draw.

use crate::{Error, Result};
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64;

/// Sampler settings. `temperature == 0` picks the most likely token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// Keep the k most likely tokens (0: off).
    pub top_k: u32,
    /// Keep the smallest set whose probability reaches top_p (1.0: off).
    pub top_p: f32,
    /// Drop tokens below min_p × the top probability (0: off).
    pub min_p: f32,
    /// Penalty of tokens among the last `repeat_last_n` (1.0: off).
    pub repeat_penalty: f32,
    pub repeat_last_n: u32,
    pub seed: u64,
}

impl SamplerConfig {
    /// Reject settings that cannot mean anything.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(format!(
                "repeat-penalty must be a finite number > 0, got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// A sampler with its own random state.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Pcg64,
    /// Scratch: (token, logit or probability).
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Result<Sampler> {
        cfg.validate()?;
        Ok(Sampler {
            rng: Pcg64::seed_from_u64(cfg.seed),
            cfg,
            cand: Vec::new(),
        })
    }

    /// Pick the next token from `logits` (modified in place by penalties).
    /// `history` feeds the repetition penalty; `banned` tokens are never picked.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], banned: &[u32]) -> u32 {
        let n = logits.len();
        // 1. Repetition penalty, once per distinct token of the window.
        if self.cfg.repeat_penalty != 1.0 && self.cfg.repeat_last_n > 0 {
            let start = history
                .len()
                .saturating_sub(self.cfg.repeat_last_n as usize);
            let mut seen: Vec<u32> = history[start..]
                .iter()
                .copied()
                .filter(|&t| (t as usize) < n)
                .collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 {
                    *l / self.cfg.repeat_penalty
                } else {
                    *l * self.cfg.repeat_penalty
                };
            }
        }
        for &t in banned {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        // 2. Greedy: the first maximum.
        if self.cfg.temperature == 0.0 {
            return argmax(logits);
        }
        // 3. Candidates sorted by logit, best first; top-k.
        let cand = &mut self.cand;
        cand.clear();
        cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l)),
        );
        if cand.is_empty() {
            return argmax(logits);
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = if self.cfg.top_k == 0 {
            cand.len()
        } else {
            (self.cfg.top_k as usize).min(cand.len())
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, by_logit);
            cand.truncate(k);
        }
        cand.sort_unstable_by(by_logit);
        // 4. Probabilities (softmax at temperature 1, as llama.cpp's top-p/min-p see them).
        softmax_in_place(cand, 1.0);
        // 5. top-p: the smallest prefix whose mass reaches top_p.
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0f64;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                acc += c.1 as f64;
                if acc >= self.cfg.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        // 6. min-p: drop tokens below min_p × the best probability.
        if self.cfg.min_p > 0.0 {
            let floor = cand[0].1 * self.cfg.min_p;
            let keep = cand.iter().take_while(|c| c.1 >= floor).count();
            cand.truncate(keep.max(1));
        }
        // 7. Temperature on the survivors' logits, then draw.
        for c in cand.iter_mut() {
            c.1 = logits[c.0 as usize];
        }
        softmax_in_place(cand, self.cfg.temperature);
        let r = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0f64;
        for c in cand.iter() {
            acc += c.1 as f64;
            if r < acc {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }
}

/// Index of the first maximum: the index [`argmax_ref`]'s scan ends on
/// (NaNs never win; a NaN first element wins). That scan's running maximum
/// only grows, and the index it ends on is the first holding the final
/// maximum's value, so the maximum is found in independent lanes (SIMD)
/// and then its first position.
pub fn argmax(v: &[f32]) -> u32 {
    const LANES: usize = 16;
    let Some(&first) = v.first() else {
        return 0;
    };
    if first.is_nan() {
        return 0;
    }
    let mut lanes = [first; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut m = first;
    for &x in lanes.iter().chain(rest) {
        if x > m {
            m = x;
        }
    }
    v.iter().position(|&x| x == m).unwrap_or(0) as u32
}

/// [`argmax`] as a plain scan (the reference).
#[cfg(test)]
fn argmax_ref(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Replace each logit by its probability at temperature `t`.
fn softmax_in_place(c: &mut [(u32, f32)], t: f32) {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for x in c.iter_mut() {
        x.1 = ((x.1 - max) / t).exp();
        sum += x.1 as f64;
    }
    for x in c.iter_mut() {
        x.1 = (x.1 as f64 / sum) as f32;
    }
}

/// The log-sum-exp of `row` in two parts, as llama.cpp's perplexity tool
/// computes it: the maximum `m` and `ln(sum(exp(x - m)))` (each term's `expf`
/// in f32, the sum in f64). `log(sum(exp(x))) = m + the second part`.
pub fn log_sum_exp(row: &[f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&l| f64::from((l - max).exp())).sum();
    (max, sum.ln())
}

/// Numerically stable log-softmax of `logits` into `out`.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let (max, ln_sum) = log_sum_exp(logits);
    let lse = f64::from(max) + ln_sum;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l as f64 - lse) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_is_the_reference_scan() {
        let mut state = 0x853c_49e6_748f_ea9bu64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let specials = [
            f32::NAN,
            -f32::NAN,
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.0,
            -1.0,
        ];
        for len in [0usize, 1, 2, 15, 16, 17, 31, 33, 100, 1000] {
            for round in 0..200 {
                let v: Vec<f32> = (0..len)
                    .map(|_| {
                        let r = next();
                        match (r % 8, round % 3) {
                            // Few distinct values: ties.
                            (_, 0) => (r >> 8) as f32 % 4.0 - 2.0,
                            (0, _) => specials[(r >> 8) as usize % specials.len()],
                            _ => f32::from_bits((r >> 16) as u32 & 0x807f_ffff | 0x3f00_0000),
                        }
                    })
                    .collect();
                assert_eq!(argmax(&v), argmax_ref(&v), "{v:?}");
            }
        }
        assert_eq!(argmax(&[f32::NAN, 1.0, 2.0]), 0);
        assert_eq!(argmax(&[-0.0, 0.0, -0.0]), 0);
        assert_eq!(argmax(&[-1.0, 0.0, -0.0, 0.0]), 1);
    }

    fn cfg(temperature: f32) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 1,
        }
    }

    fn logits() -> Vec<f32> {
        vec![0.5, 2.0, 1.9, -1.0, 2.0, 0.0, 1.0, -3.0]
    }

    #[test]
    fn greedy_is_first_argmax_and_respects_bans() {
        let mut s = Sampler::new(cfg(0.0)).unwrap();
        assert_eq!(s.sample(&mut logits(), &[], &[]), 1);
        assert_eq!(s.sample(&mut logits(), &[], &[1, 4]), 2);
    }

    #[test]
    fn same_seed_same_sequence_other_seed_differs() {
        let draw = |seed: u64| {
            let mut s = Sampler::new(SamplerConfig { seed, ..cfg(1.5) }).unwrap();
            (0..64)
                .map(|_| s.sample(&mut logits(), &[], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        assert!(
            draw(3)
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 2
        );
    }

    #[test]
    fn top_k_one_is_greedy_and_filters_hold() {
        let mut s = Sampler::new(SamplerConfig {
            top_k: 1,
            ..cfg(2.0)
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[], &[]), 1);
        }
        // top-k 3 keeps {1, 4, 2}.
        let mut s = Sampler::new(SamplerConfig {
            top_k: 3,
            ..cfg(5.0)
        })
        .unwrap();
        for _ in 0..200 {
            assert!([1, 2, 4].contains(&s.sample(&mut logits(), &[], &[])));
        }
        // min-p 0.5 keeps tokens with p >= 0.5 p_max: 1, 4, 2 (e^-0.1 ≈ 0.90), not 6 (e^-1 ≈ 0.37).
        let mut s = Sampler::new(SamplerConfig {
            min_p: 0.5,
            ..cfg(5.0)
        })
        .unwrap();
        for _ in 0..200 {
            assert!([1, 2, 4].contains(&s.sample(&mut logits(), &[], &[])));
        }
        // top-p 0.5: the two tied best (p ≈ 0.28 each) reach it.
        let mut s = Sampler::new(SamplerConfig {
            top_p: 0.5,
            ..cfg(5.0)
        })
        .unwrap();
        for _ in 0..200 {
            assert!([1, 4].contains(&s.sample(&mut logits(), &[], &[])));
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            ..cfg(0.0)
        })
        .unwrap();
        let mut l = logits();
        // Token 1 (2.0) and 4 (2.0) penalised to 1.0: token 2 (1.9) wins.
        assert_eq!(s.sample(&mut l, &[1, 4, 3, 1], &[]), 2);
        assert_eq!(l[1], 1.0);
        assert_eq!(l[3], -2.0);
        // Outside the window: no effect.
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            repeat_last_n: 1,
            ..cfg(0.0)
        })
        .unwrap();
        assert_eq!(s.sample(&mut logits(), &[1, 7], &[]), 1);
    }

    #[test]
    fn invalid_settings_are_errors() {
        for c in [
            cfg(f32::NAN),
            cfg(-1.0),
            cfg(f32::INFINITY),
            SamplerConfig {
                top_p: 0.0,
                ..cfg(1.0)
            },
            SamplerConfig {
                top_p: 1.5,
                ..cfg(1.0)
            },
            SamplerConfig {
                min_p: -0.1,
                ..cfg(1.0)
            },
            SamplerConfig {
                repeat_penalty: 0.0,
                ..cfg(1.0)
            },
            SamplerConfig {
                repeat_penalty: f32::NAN,
                ..cfg(1.0)
            },
        ] {
            assert!(matches!(Sampler::new(c), Err(Error::InvalidInput(_))));
        }
    }

    #[test]
    fn log_softmax_normalises() {
        let mut out = vec![0.0; 8];
        log_softmax(&logits(), &mut out);
        let total: f64 = out.iter().map(|&x| (x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((out[1] - out[4]).abs() < 1e-7);
    }
}
