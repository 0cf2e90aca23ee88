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
            // Sampled: the draw falls at the edge of the claimed token's interval (looked for
            // in the whole list when the head does not hold it).
            Some(Draw { r, dist }) => {
                let full = if dist.complete || dist.cand.iter().any(|c| c.0 == claimed) {
                    Some(dist)
                } else {
                    full_distribution(logits, &self.params)
                };
                let Some(dist) = full else { return refused };
                let mut lo = 0.0;
                for (&(t, _), &q) in dist.cand.iter().zip(&dist.probs) {
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
    ///
    /// The result is bit for bit that of [`full_distribution`]'s whole sorted vocabulary
    /// (a replay on another machine, or of another version, must draw the same), but only
    /// the head of the distribution is sorted ([`head_distribution`]): the candidates far
    /// enough below the largest scaled logit weigh under half an ulp of every sum they would
    /// join, so they change no sum, no probability of the head and no draw that lands in the
    /// head. A draw that reaches past the head (a `top_p` beyond its mass, or a walk that
    /// rounding carries to its end) is made again on the whole list with the same uniform
    /// number.
    fn draw(&mut self, logits: &[f32]) -> (u32, Option<Draw>) {
        if self.params.temperature <= 0.0 || logits.len() < 2 {
            return (argmax(logits), None);
        }
        let Some(dist) = head_distribution(logits, &self.params)
            .or_else(|| full_distribution(logits, &self.params))
        else {
            return (argmax(logits), None);
        };
        let u = self.rng.random::<f32>();
        match dist.walk(u) {
            Some((picked, r)) => (picked, Some(Draw { r, dist })),
            // Past the head: the whole list decides (where it always picks).
            None => match full_distribution(logits, &self.params) {
                Some(full) => {
                    let (picked, r) = full.walk(u).unwrap_or((full.last(), 0.0));
                    (picked, Some(Draw { r, dist: full }))
                },
                None => (argmax(logits), None),
            },
        }
    }
}

/// The widest head (in nats of scaled logit below the largest) [`head_distribution`] cuts:
/// `exp(-20)` is 2.1e-9, under half an ulp of any sum the sampler forms with weights that
/// small (the sum of weights starts at 1, the cumulative probability is near 1 by the tail).
const HEAD_SPAN: f32 = 20.0;

/// ln(2^-25): half an ulp of an f32 sum, relative to the sum (at least; up to twice that).
const LN_HALF_ULP: f64 = -17.328_679_513_998_633;

/// The candidates a draw is made from, most likely first (ties by token id), and their
/// probabilities after `top_k` and `top_p`.
struct Distribution {
    cand: Vec<(u32, f32)>,
    probs: Vec<f32>,
    /// Whether `cand` is the whole kept list (else its head: the rest adds nothing to any
    /// sum, but a draw may still land there).
    complete: bool,
}

impl Distribution {
    /// The token the uniform number `u` picks and the point `r` in the cumulative
    /// probabilities it fell at; `None` when the walk passes the end of a head.
    fn walk(&self, u: f32) -> Option<(u32, f32)> {
        let total: f32 = self.probs.iter().sum();
        let r = u * total;
        let mut left = r;
        for (i, p) in self.probs.iter().enumerate() {
            if left < *p {
                return Some((self.cand[i].0, r));
            }
            left -= p;
        }
        self.complete.then(|| (self.last(), r))
    }

    fn last(&self) -> u32 {
        self.cand.last().map_or(0, |c| c.0)
    }
}

/// A candidate's sort key: most likely first (`f32::total_cmp` of the scaled logit,
/// descending), ties by token id, as one integer. The value's bits map to total_cmp's order
/// as unsigned integers (negative values' magnitude bits flipped, then the sign bit), which
/// is inverted above the id.
fn likelihood_key(id: u32, v: f32) -> u64 {
    let b = v.to_bits() as i32;
    let order = ((b ^ ((((b >> 31) as u32) >> 1) as i32)) as u32) ^ 0x8000_0000;
    (u64::from(!order) << 32) | u64::from(id)
}

/// The candidates of sorted [`likelihood_key`]s (the map inverted).
fn candidates(keys: &[u64]) -> Vec<(u32, f32)> {
    keys.iter()
        .map(|&k| {
            let t = (!((k >> 32) as u32) ^ 0x8000_0000) as i32;
            (k as u32, f32::from_bits((t ^ ((((t >> 31) as u32) >> 1) as i32)) as u32))
        })
        .collect()
}

/// Weights, `top_p` cut and normalisation of sorted candidates; `None` when the cut would
/// need the candidates past an incomplete head, or when the head's tail, every weight at
/// most `exp(-span)`, could move its sums.
fn weigh(mut cand: Vec<(u32, f32)>, complete: bool, top_p: f32, span: f32) -> Option<Distribution> {
    let max = cand.first()?.1;
    let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| (l - max).exp()).collect();
    let sum: f32 = probs.iter().sum();
    // ln(2^-25): the sums' half ulp relative to their size; 0.1 nat of margin for the
    // tail weights' own rounding.
    if !complete && f64::from(-span) + 0.1 >= f64::from(sum).ln() + LN_HALF_ULP {
        return None;
    }
    probs.iter_mut().for_each(|p| *p /= sum);
    let mut complete = complete;
    if top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = None;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= top_p {
                keep = Some(i + 1);
                break;
            }
        }
        match keep {
            Some(keep) => {
                probs.truncate(keep);
                cand.truncate(keep);
                complete = true;
            },
            None if !complete => return None,
            None => {},
        }
    }
    Some(Distribution { cand, probs, complete })
}

/// Every finite logit, scaled by the temperature and sorted: the definition of a draw.
fn full_distribution(logits: &[f32], params: &SamplingParams) -> Option<Distribution> {
    let t = params.temperature;
    let mut keys: Vec<u64> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| likelihood_key(i as u32, l / t))
        .collect();
    keys.sort_unstable();
    if params.top_k > 0 {
        keys.truncate(params.top_k);
    }
    weigh(candidates(&keys), true, params.top_p, f32::INFINITY)
}

/// The head of [`full_distribution`]: the candidates close enough to the largest to move a
/// sum, the only ones sorted. `None` where it cannot stand in for the whole list (no finite
/// logit, a scaled logit that overflowed, a `top_p` beyond the head's mass, a sum too small
/// for the span the head was cut at).
///
/// Why the tail can be left unsorted: the weights `exp(v - max)` are summed largest first from
/// 1 (the largest's), and the normalised probabilities (cumulated near 1 by the tail) the same
/// way; a weight under `S * 2^-25` (S the sum of weights) is under half an ulp of either sum,
/// so adding it, and every smaller one after it, changes neither. The head is cut where
/// `exp(-span) < S * 2^-25`, with S estimated (unsorted) first and checked exactly after.
fn head_distribution(logits: &[f32], params: &SamplingParams) -> Option<Distribution> {
    let t = params.temperature;
    // Scaled once (NaN marks a logit that is not a candidate).
    let scaled: Vec<f32> =
        logits.iter().map(|&l| if l.is_finite() { l / t } else { f32::NAN }).collect();
    let (mut max, mut finite) = (f32::NEG_INFINITY, 0usize);
    for &v in &scaled {
        if !v.is_nan() {
            max = max.max(v);
            finite += 1;
        }
    }
    if !max.is_finite() {
        return None;
    }
    // A lower bound of the sum of weights from whole-nat bins: a weight exp(d) with d in
    // (-k-1, -k] is at least exp(-k-1).
    let mut bins = [0usize; HEAD_SPAN as usize + 1];
    for &v in &scaled {
        let d = v - max;
        if d >= -HEAD_SPAN {
            bins[(-d) as usize] += 1;
        }
    }
    let lower: f64 =
        bins.iter().enumerate().map(|(k, &n)| n as f64 * (-(k as f64) - 1.0).exp()).sum();
    // Where the weights fall under the sums' half ulp (`LN_HALF_ULP`), with 0.5 nat of margin.
    let span = (-LN_HALF_ULP - lower.max(1.0).ln() + 0.5).min(f64::from(HEAD_SPAN)) as f32;
    let mut keys: Vec<u64> = scaled
        .iter()
        .enumerate()
        .filter(|&(_, &v)| v - max >= -span)
        .map(|(i, &v)| likelihood_key(i as u32, v))
        .collect();
    keys.sort_unstable();
    let kept = if params.top_k > 0 { params.top_k.min(finite) } else { finite };
    keys.truncate(kept);
    let complete = keys.len() == kept;
    weigh(candidates(&keys), complete, params.top_p, span)
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
    dist: Distribution,
}

/// Index of the largest logit (the first on ties; NaN never wins; the last index when every
/// logit is NaN). Two passes: the largest value lane by lane (a vector maximum: a NaN never
/// compares greater), then the first index holding it.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            if v > *m {
                *m = v;
            }
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(rest) {
        if v > max {
            max = v;
        }
    }
    match logits.iter().position(|&v| v == max) {
        Some(i) => i as u32,
        None => logits.len().saturating_sub(1) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler as first written (every finite logit sorted and weighed, a scalar argmax):
    /// the definition the faster one must match bit for bit.
    mod reference {
        use super::super::SamplingParams;
        use rand::rngs::StdRng;
        use rand::Rng;

        pub fn argmax(logits: &[f32]) -> u32 {
            let mut best = 0usize;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] || logits[best].is_nan() {
                    best = i;
                }
            }
            best as u32
        }

        pub type Drawn = (u32, Option<(f32, Vec<(u32, f32)>, Vec<f32>)>);

        pub fn draw(params: &SamplingParams, rng: &mut StdRng, logits: &[f32]) -> Drawn {
            if params.temperature <= 0.0 || logits.len() < 2 {
                return (argmax(logits), None);
            }
            let t = params.temperature;
            let mut cand: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l / t))
                .collect();
            if cand.is_empty() {
                return (argmax(logits), None);
            }
            cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            if params.top_k > 0 {
                cand.truncate(params.top_k);
            }
            let max = cand[0].1;
            let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| (l - max).exp()).collect();
            let sum: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= sum);
            if params.top_p < 1.0 {
                let mut acc = 0.0;
                let mut keep = probs.len();
                for (i, p) in probs.iter().enumerate() {
                    acc += p;
                    if acc >= params.top_p {
                        keep = i + 1;
                        break;
                    }
                }
                probs.truncate(keep);
                cand.truncate(keep);
            }
            let total: f32 = probs.iter().sum();
            let r = rng.random::<f32>() * total;
            let mut left = r;
            let mut picked = cand[cand.len() - 1].0;
            for (i, p) in probs.iter().enumerate() {
                if left < *p {
                    picked = cand[i].0;
                    break;
                }
                left -= p;
            }
            (picked, Some((r, cand, probs)))
        }

        /// `Sampler::replay`'s sampled branch over a reference draw: (accepted, gap).
        pub fn replay_sampled(drawn: &Drawn, claimed: u32, tie: f32) -> Option<(bool, f32)> {
            let (picked, Some((r, cand, probs))) = drawn else { return None };
            let r = *r;
            if *picked == claimed {
                return Some((true, 0.0));
            }
            let mut lo = 0.0;
            for (&(t, _), &q) in cand.iter().zip(probs) {
                if t == claimed {
                    return Some((
                        r >= lo - tie && r < lo + q + tie,
                        (lo - r).max(r - (lo + q)).max(0.0),
                    ));
                }
                lo += q;
            }
            Some((false, f32::INFINITY))
        }
    }

    /// Logits of `n` tokens in a spread of `scale`, some of them tied (rounded to a grid),
    /// and with `specials` NaN and infinite values scattered in.
    fn logits(rng: &mut StdRng, n: usize, scale: f32, grid: bool, specials: usize) -> Vec<f32> {
        let mut l: Vec<f32> = (0..n)
            .map(|_| {
                let v = (rng.random::<f32>() - 0.5) * scale + (rng.random::<f32>() - 0.5) * scale;
                if grid {
                    (v * 4.0).round() / 4.0
                } else {
                    v
                }
            })
            .collect();
        for _ in 0..specials {
            let i = rng.random_range(0..n);
            l[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0][rng.random_range(0..4)];
        }
        l
    }

    #[test]
    fn argmax_matches_the_scalar_scan() {
        let mut rng = StdRng::seed_from_u64(1);
        let fixed: [&[f32]; 8] = [
            &[],
            &[f32::NAN],
            &[f32::NAN, f32::NAN, f32::NAN],
            &[f32::NAN, -1.0, 2.0, 2.0, f32::NAN],
            &[f32::NEG_INFINITY, f32::NEG_INFINITY],
            &[f32::NAN, f32::NEG_INFINITY, f32::NAN],
            &[-0.0, 0.0, -0.0],
            &[1.0, f32::INFINITY, f32::NAN, f32::INFINITY],
        ];
        for l in fixed {
            assert_eq!(argmax(l), reference::argmax(l), "{l:?}");
        }
        for case in 0..2000 {
            let n = [1, 2, 15, 16, 17, 33, 1000, 49_152][case % 8];
            let l = logits(&mut rng, n, 10.0, case % 3 == 0, case % 5);
            assert_eq!(argmax(&l), reference::argmax(&l), "case {case}: n {n}");
        }
    }

    /// The sampler draws exactly what the full-vocabulary definition draws (token and the
    /// point in the cumulative probabilities, to the bit) and replays claims the same, over
    /// temperatures, top-k, top-p, vocabulary sizes, spreads, ties and non-finite logits:
    /// generators and verifiers of any version must agree.
    #[test]
    fn the_head_sampler_draws_as_the_full_vocabulary_does() {
        use crate::commitment::CPU_REPLAY_TIE;
        let mut rng = StdRng::seed_from_u64(2);
        let mut partial_heads = 0;
        for case in 0..600u64 {
            let n = [2usize, 3, 40, 1000, 49_152][(case % 5) as usize];
            let scale = [0.5f32, 3.0, 12.0, 60.0][(case / 5 % 4) as usize];
            let params = SamplingParams {
                temperature: [0.3f32, 0.7, 1.0, 1.7, 1e-3, 40.0][(case / 20 % 6) as usize],
                top_k: [0usize, 1, 5, 60, 5000][(case / 3 % 5) as usize],
                top_p: [1.0f32, 0.9, 0.5, 0.999_999_9, 1e-3][(case / 7 % 5) as usize],
                seed: case,
                ..Default::default()
            };
            let l = logits(&mut rng, n, scale, case % 4 == 0, (case % 3) as usize);
            let mut fast = Sampler::new(params.clone());
            let mut slow = StdRng::seed_from_u64(params.seed);
            for round in 0..4 {
                let (picked, draw) = fast.draw(&l);
                let want = reference::draw(&params, &mut slow, &l);
                assert_eq!(picked, want.0, "case {case} round {round}: {params:?}");
                let r = draw.as_ref().map(|d| d.r.to_bits());
                assert_eq!(r, want.1.as_ref().map(|w| w.0.to_bits()), "case {case}: r");
                if draw.as_ref().is_some_and(|d| !d.dist.complete) {
                    partial_heads += 1;
                }
            }
            // Replays of the pick, of tokens near it and of improbable ones.
            let claims = [0u32, 1, (n - 1) as u32, rng.random_range(0..n as u32)];
            for &claimed in &claims {
                let mut verifier = Sampler::new(params.clone());
                let mut slow = StdRng::seed_from_u64(params.seed);
                let got = verifier.replay(&l, claimed, CPU_REPLAY_TIE);
                let want = reference::draw(&params, &mut slow, &l);
                if let Some((accepted, gap)) =
                    reference::replay_sampled(&want, claimed, CPU_REPLAY_TIE)
                {
                    assert_eq!(
                        (got.accepted, got.gap.to_bits()),
                        (accepted, gap.to_bits()),
                        "case {case}: replay of {claimed}"
                    );
                }
            }
        }
        // The head really stands in for the tail in most draws (the speed this buys).
        assert!(partial_heads >= 50, "only {partial_heads} draws used a partial list");
    }

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
