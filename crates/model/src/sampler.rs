//! Token sampling: greedy, temperature, top-k, top-p, repetition penalty, seeded.
//!
//! Order as in llama.cpp's default chain: repetition penalty over the last `repeat_last_n`
//! tokens, then top-k, then top-p (on the untempered distribution), then temperature, then a
//! draw from a seeded `StdRng`. `temperature <= 0` is greedy (argmax after the penalty; ties go
//! to the lowest id). The same seed and logits always give the same tokens.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling parameters. Defaults follow llama.cpp: temperature 0.8, top-k 40, top-p 0.95,
/// repetition penalty 1.0 (off) over the last 64 tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `<= 0` means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; `>= 1` disables.
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens; 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// A seeded sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded with `cfg.seed`.
    pub fn new(cfg: SamplerConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Self { cfg, rng }
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from `logits` given the tokens so far (`history`). Non-finite
    /// logits are treated as impossible; an all-impossible vector yields token 0.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        // Greedy draws nothing, so a greedy run leaves the RNG where it was.
        let r = if self.cfg.temperature <= 0.0 {
            0.0
        } else {
            self.rng.random::<f32>()
        };
        sample_with_draw(&self.cfg, logits, history, r)
    }
}

/// What [`Sampler::sample`] picks when its RNG yields `r` (uniform in `[0, 1)`): the same
/// chain, with the draw supplied by the caller. A pipeline's last stage samples with this, the
/// gateway holding the seeded RNG, so a seeded request gives the same tokens as `generate`.
pub fn sample_with_draw(cfg: &SamplerConfig, logits: &[f32], history: &[u32], r: f32) -> u32 {
    let mut logits = logits.to_vec();
    apply_penalty(cfg, &mut logits, history);
    if cfg.temperature <= 0.0 {
        return argmax(&logits);
    }
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, l))
        .collect();
    if cand.is_empty() {
        return 0;
    }
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if cfg.top_k > 0 {
        cand.truncate(cfg.top_k);
    }
    if cfg.top_p < 1.0 {
        let probs = softmax(cand.iter().map(|c| c.1), 1.0);
        let mut acc = 0.0;
        let mut keep = cand.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }
    let probs = softmax(cand.iter().map(|c| c.1), cfg.temperature);
    let mut acc = 0.0;
    for (c, p) in cand.iter().zip(&probs) {
        acc += p;
        if r < acc {
            return c.0;
        }
    }
    cand.last().map_or(0, |c| c.0)
}

fn apply_penalty(cfg: &SamplerConfig, logits: &mut [f32], history: &[u32]) {
    let p = cfg.repeat_penalty;
    if p == 1.0 || cfg.repeat_last_n == 0 {
        return;
    }
    let start = history.len().saturating_sub(cfg.repeat_last_n);
    let mut seen: Vec<u32> = history[start..].to_vec();
    seen.sort_unstable();
    seen.dedup();
    for id in seen {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l > 0.0 { *l / p } else { *l * p };
        }
    }
}

/// Index of the largest finite logit (lowest index on ties; 0 when none is finite).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.map(|l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_argmax_and_lowest_on_ties() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0], &[]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5], &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p = softmax([10, 0, 0, 0]) ≈ [0.9999, ...]: top_p 0.5 keeps only token 0.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&[10.0, 0.0, 0.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn repetition_penalty_changes_the_greedy_choice() {
        let cfg = SamplerConfig {
            repeat_penalty: 2.0,
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(cfg);
        // 2.0 / 2 = 1.0 < 1.5
        assert_eq!(s.sample(&[2.0, 1.5], &[0]), 1);
        // negative logits are multiplied: -1 * 2 = -2 < -1.5
        assert_eq!(s.sample(&[-1.0, -1.5, -9.0], &[0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_temperature_spreads() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 42,
            ..Default::default()
        };
        let logits = [1.0, 1.0, 1.0, 1.0];
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..64).map(|_| s.sample(&logits, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..64).map(|_| s.sample(&logits, &[])).collect()
        };
        assert_eq!(a, b);
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            4,
            "uniform logits should reach every token in 64 draws"
        );
    }

    #[test]
    fn non_finite_logits_are_never_sampled() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&[f32::NEG_INFINITY, 0.0, f32::NAN], &[]), 1);
        }
    }
}
