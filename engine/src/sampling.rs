//! Choosing the next token from logits: greedy, or temperature with top-k and top-p, driven
//! by a per-request seeded generator so a request replays identically.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a request picks tokens and when it stops.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0: all).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Seed of the request's generator.
    pub seed: u64,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Generation ends when the text produced so far ends with one of these (the stop
    /// string is not returned).
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks; vLLM's `ignore_eos`).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            max_tokens: 64,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Why no sampler can use these parameters, if so: a temperature that is negative or
    /// not a finite number, a top_p outside (0, 1], or no token to generate.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be a finite number >= 0 (0: greedy), got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.max_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        Ok(())
    }
}

/// A request's sampler: its parameters and generator.
pub(crate) struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub(crate) fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    pub(crate) fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Whether this sampler takes the argmax (so the logits row itself is not needed).
    pub(crate) fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0
    }

    /// Picks a token from one row of logits.
    pub(crate) fn sample(&mut self, logits: &[f32]) -> u32 {
        self.draw(logits).0
    }

    /// Replays the pick of one row against the token `claimed` (a verifier's recomputed
    /// logits, a generator's token): whether `claimed` is what this sampler picks, or sits
    /// within a rounding of the pick (a greedy near tie within `tie` of the largest logit,
    /// relative; a draw within `tie` of the claimed token's share of the distribution),
    /// which another machine's arithmetic can honestly flip
    /// ([`crate::commitment::CPU_REPLAY_TIE`] on the CPU; a
    /// GPU's bf16 needs more, `commitment::Tolerance`). Also returns how far the claim sat
    /// from the pick, in those units (0 when it is the pick; infinite when it cannot be
    /// one), so that the rule can be fitted to measured runs. Draws as [`Self::sample`] does,
    /// so the rows must come in order.
    pub(crate) fn replay(&mut self, logits: &[f32], claimed: u32, tie: f32) -> Replayed {
        let (picked, draw) = self.draw(logits);
        if picked == claimed {
            return Replayed { accepted: true, gap: 0.0 };
        }
        let refused = Replayed { accepted: false, gap: f32::INFINITY };
        let Some(&c) = logits.get(claimed as usize) else { return refused };
        let Some(&p) = logits.get(picked as usize) else { return refused };
        match draw {
            // Greedy: the claimed logit is the largest but for rounding.
            None => {
                let scale = p.abs().max(1.0);
                Replayed { accepted: p - c <= tie * scale, gap: (p - c) / scale }
            },
            // Sampled: the draw falls at the edge of the claimed token's interval.
            Some(Draw { r, ref cand, ref probs }) => {
                let mut lo = 0.0;
                for (&(t, _), &q) in cand.iter().zip(probs) {
                    if t == claimed {
                        return Replayed {
                            accepted: r >= lo - tie && r < lo + q + tie,
                            gap: (lo - r).max(r - (lo + q)).max(0.0),
                        };
                    }
                    lo += q;
                }
                refused
            },
        }
    }

    /// The pick, and for a sampled one the draw and the distribution it was made from.
    fn draw(&mut self, logits: &[f32]) -> (u32, Option<Draw>) {
        if self.params.temperature <= 0.0 || logits.len() < 2 {
            return (argmax(logits), None);
        }
        let t = self.params.temperature;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / t))
            .collect();
        if cand.is_empty() {
            return (argmax(logits), None);
        }
        // Ties broken by token id, so the order (and the draw) is fully determined.
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            cand.truncate(self.params.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| (l - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            cand.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let r = self.rng.random::<f32>() * total;
        let mut left = r;
        let mut picked = cand[cand.len() - 1].0;
        for (i, p) in probs.iter().enumerate() {
            if left < *p {
                picked = cand[i].0;
                break;
            }
            left -= p;
        }
        (picked, Some(Draw { r, cand, probs }))
    }
}

/// What replaying one pick found ([`Sampler::replay`]).
pub(crate) struct Replayed {
    /// The claimed token is the pick, or within the near-tie rule of it.
    pub accepted: bool,
    /// How far the claim sat from the pick (0 when it is the pick).
    pub gap: f32,
}

/// A sampled pick's draw: the point `r` in the distribution's cumulative probabilities and
/// the candidates (sorted as drawn) with their probabilities.
struct Draw {
    r: f32,
    cand: Vec<(u32, f32)>,
    probs: Vec<f32>,
}

/// Index of the largest logit (the first on ties; NaN never wins).
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let params = SamplingParams { temperature: 5.0, top_k: 1, seed: 7, ..Default::default() };
        let mut s = Sampler::new(params);
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5, 0.9]), 1);
        }
    }

    #[test]
    fn top_p_excludes_the_tail_and_seeds_replay() {
        let logits = [4.0, 3.9, -10.0, -10.0];
        let params =
            SamplingParams { temperature: 1.0, top_p: 0.9, seed: 42, ..Default::default() };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert!(a.iter().all(|&t| t < 2), "tail token drawn: {a:?}");
        assert!(a.contains(&0) && a.contains(&1));
        assert_eq!(a, draw(&params));
    }

    #[test]
    fn a_replay_accepts_the_pick_and_near_ties_only() {
        use crate::commitment::CPU_REPLAY_TIE;
        let mut greedy = Sampler::new(SamplingParams::default());
        let replays = |s: &mut Sampler, l: &[f32], t: u32| s.replay(l, t, CPU_REPLAY_TIE).accepted;
        assert!(replays(&mut greedy, &[0.1, 3.0, -1.0], 1));
        assert!(!replays(&mut greedy, &[0.1, 3.0, 2.9], 2), "a clear second is not the pick");
        assert!(replays(&mut greedy, &[0.1, 3.0, 2.99999], 2), "a near tie may flip");
        let gap = greedy.replay(&[0.1, 3.0, 2.9], 2, CPU_REPLAY_TIE).gap;
        assert!((gap - 0.1 / 3.0).abs() < 1e-6, "{gap}");
        assert!(greedy.replay(&[0.1, 3.0, 2.9], 2, 0.04).accepted, "a looser rule forgives it");
        // A recommitted cheat's flipped token 1e-4 (relative) from the pick: forgiven as
        // another kernel path's last bits under `host`, refused by `host-vnni` (one path, no
        // tie); an exact tie is no cheat (either index is accepted).
        use crate::commitment::{NumericFormat, Tolerance};
        let exact = Tolerance::for_format(NumericFormat::HostVnni).replay_tie;
        let flipped = [0.1, 3.0, 3.0 * (1.0 - 1e-4)];
        assert!(replays(&mut greedy, &flipped, 2));
        assert!(!greedy.replay(&flipped, 2, exact).accepted);
        assert!(greedy.replay(&[0.1, 3.0, 3.0], 2, exact).accepted);
        // Sampled: the same seed accepts its own draws, and refuses a token far from them.
        let params = SamplingParams { temperature: 1.0, seed: 3, ..Default::default() };
        let logits = [2.0, 1.0, 0.0, -30.0];
        let mut generator = Sampler::new(params.clone());
        let picks: Vec<u32> = (0..50).map(|_| generator.sample(&logits)).collect();
        let mut verifier = Sampler::new(params.clone());
        assert!(picks.iter().all(|&t| replays(&mut verifier, &logits, t)));
        let mut verifier = Sampler::new(params);
        assert!(picks.iter().any(|_| !replays(&mut verifier, &logits, 3)), "an improbable token");
    }
}
