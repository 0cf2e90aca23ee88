//! Activation commitments: what a worker records while it generates, so that another worker
//! can check later, in one prefill pass over the prompt and the output, that the tokens came
//! from the model, adapter and numeric format the provider registered.
//!
//! **Encoding, version 1.** For every generated token, the row the LM head read to pick it
//! (the final RMSNorm's output at the position before the token) contributes its
//! [`TOP_K`] entries of largest magnitude, largest first (ties: the lower dimension). An
//! entry is one little-endian `u32`: the dimension in its low [`DIM_BITS`] bits, and above
//! them the value's f32 bits shortened to [`VALUE_BITS`] (sign, 8 exponent bits, 9 mantissa
//! bits; rounded to nearest even): [`ENTRY_BYTES`] bytes an entry, [`TOKEN_BYTES`] a token,
//! 256 bytes per [`CHUNK_TOKENS`] tokens. The commitment is the concatenation over the
//! output in order, so its length names the number of tokens it covers.
//!
//! Why these bits: the largest entries of that row are few fixed "massive" dimensions, which
//! an adapter moves by well under 1% (bfloat16's 7 mantissa bits, 0.4-0.8% a step, hid most
//! of it); 9 mantissa bits resolve 0.1-0.2%, and 14 dimension bits cover every Llama-family
//! width up to 16,384.
//!
//! **Checking.** The verifier recomputes the rows with the same model, adapter and format
//! and compares ([`compare_row`]): each committed value against the recomputed value of its
//! dimension (relative error), and each committed dimension against the recomputed row's
//! largest entries (an index outside the top [`TOP_K`] + [`INDEX_SLACK`] is a mismatch; near
//! ties may swap places honestly). The counts go into a [`VerifyReport`], judged against a
//! [`Tolerance`] fitted to measured honest runs.

use crate::error::{EngineError, Result};

/// Entries committed per token.
pub const TOP_K: usize = 2;
/// Bytes of one entry: a `u32` of [`DIM_BITS`] dimension bits and [`VALUE_BITS`] value bits.
pub const ENTRY_BYTES: usize = 4;
/// Bits of an entry's dimension (rows up to 16,384 wide).
pub const DIM_BITS: u32 = 14;
/// Bits of an entry's value: the top bits of its f32 (sign, exponent, 9 mantissa bits).
pub const VALUE_BITS: u32 = 32 - DIM_BITS;
/// The widest row the encoding takes.
pub const MAX_DIMS: usize = 1 << DIM_BITS;
/// Bytes committed per generated token.
pub const TOKEN_BYTES: usize = TOP_K * ENTRY_BYTES;
/// Tokens per chunk in the encoding's size budget (256 bytes a chunk).
pub const CHUNK_TOKENS: usize = 32;
/// How far down the recomputed row's ranking a committed dimension may sit and still count
/// as agreeing (honest near ties swap places).
pub const INDEX_SLACK: usize = 2;

/// The committed rows of one output, in the encoding above.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivationCommitment {
    bytes: Vec<u8>,
}

/// One committed entry: a dimension of the row and its value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    pub dim: u32,
    pub value: f32,
}

impl ActivationCommitment {
    /// Decodes a commitment; its length must be a whole number of tokens.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        if !bytes.len().is_multiple_of(TOKEN_BYTES) {
            return Err(EngineError::BadCommitment(format!(
                "{} bytes is not a whole number of {TOKEN_BYTES}-byte tokens",
                bytes.len()
            )));
        }
        Ok(Self { bytes })
    }

    /// The encoded bytes (what a receipt's hash covers).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Tokens covered.
    pub fn tokens(&self) -> usize {
        self.bytes.len() / TOKEN_BYTES
    }

    /// Appends the entries of one generated token's row. Rows wider than [`MAX_DIMS`]
    /// cannot be committed.
    pub fn push_row(&mut self, row: &[f32]) -> Result<()> {
        self.push_words(&row_words(row)?);
        Ok(())
    }

    /// Appends encoded entries ([`row_words`], or the same words computed on a device:
    /// `openledger_kernels::packed_top2` with [`DIM_BITS`]), [`TOP_K`] per token.
    pub fn push_words(&mut self, words: &[u32]) {
        for w in words {
            self.bytes.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// The committed entries of token `t` (`None` past the end).
    pub fn entries(&self, t: usize) -> Option<[Entry; TOP_K]> {
        let at = t.checked_mul(TOKEN_BYTES)?;
        let token = self.bytes.get(at..at + TOKEN_BYTES)?;
        let mut out = [Entry { dim: 0, value: 0.0 }; TOP_K];
        for (e, b) in out.iter_mut().zip(token.chunks_exact(ENTRY_BYTES)) {
            let word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            e.dim = word & (MAX_DIMS as u32 - 1);
            e.value = lengthen(word >> DIM_BITS);
        }
        Some(out)
    }
}

/// The encoded entries of one row, largest first: what [`ActivationCommitment::push_row`]
/// appends. Rows wider than [`MAX_DIMS`] cannot be committed.
pub fn row_words(row: &[f32]) -> Result<Vec<u32>> {
    if row.len() > MAX_DIMS {
        return Err(too_wide(row.len()));
    }
    Ok(top_dims(row, TOP_K).into_iter().map(|d| (shorten(row[d]) << DIM_BITS) | d as u32).collect())
}

/// The error for a row of `width` dimensions, wider than the encoding takes.
pub(crate) fn too_wide(width: usize) -> EngineError {
    EngineError::BadCommitment(format!(
        "a row of {width} dimensions is wider than the encoding's {MAX_DIMS}"
    ))
}

/// The dimensions of the `k` largest magnitudes of `row`, largest first, ties to the lower
/// dimension (NaN counts as the smallest).
pub fn top_dims(row: &[f32], k: usize) -> Vec<usize> {
    let mut top: Vec<usize> = Vec::with_capacity(k + 1);
    let mag = |d: usize| {
        let v = row[d].abs();
        if v.is_nan() {
            -1.0
        } else {
            v
        }
    };
    for d in 0..row.len() {
        let m = mag(d);
        // Insert after every entry at least as large (earlier dimensions win ties).
        let at = top.iter().position(|&o| mag(o) < m).unwrap_or(top.len());
        if at < k {
            top.insert(at, d);
            top.truncate(k);
        }
    }
    top
}

/// The top [`VALUE_BITS`] bits of `v`'s f32, rounded to nearest even (NaN stays NaN; a
/// value that rounds past the largest finite one becomes infinite, as in any float format).
pub fn shorten(v: f32) -> u32 {
    let drop = 32 - VALUE_BITS;
    let bits = v.to_bits();
    if v.is_nan() {
        return (bits >> drop) | (1 << (VALUE_BITS - 2));
    }
    let half = (1u32 << (drop - 1)) - 1;
    let round = half + ((bits >> drop) & 1);
    (bits.wrapping_add(round)) >> drop
}

/// The f32 of [`VALUE_BITS`] shortened bits.
pub fn lengthen(b: u32) -> f32 {
    f32::from_bits(b << (32 - VALUE_BITS))
}

/// How far a recomputation may stray from a commitment and still be honest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// A committed value further than this (relative to the larger magnitude) from the
    /// recomputed one is a value mismatch.
    pub relative: f32,
    /// Share of entries allowed to be value mismatches.
    pub max_value_mismatch_share: f32,
    /// Share of entries allowed to be index mismatches.
    pub max_index_mismatch_share: f32,
    /// Largest mean relative error of the committed values: the statistic that separates
    /// small but systematic changes (an adapter skipped) from rounding.
    pub max_mean_relative_error: f32,
    /// Share of replayed output tokens allowed to differ from what the request's own sampler
    /// picks from the recomputed logits (see [`VerifyReport::replay_mismatches`]).
    pub max_replay_mismatch_share: f32,
    /// The replay's near-tie rule: a claimed token that is not the replayed pick still
    /// counts as it when its logit is within this much of the pick's (relative to the
    /// larger of the pick's magnitude and 1; greedy), or the draw within this much of the
    /// claimed token's share of the distribution (sampled).
    pub replay_tie: f32,
}

/// The numeric format a provider registers and its verifiers reproduce (like with like):
/// how far an honest recomputation can stray depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumericFormat {
    /// The CPU engine's host path (f32 activations over f32 or GGUF block weights): a
    /// prefill recomputes a decode step's rows bit for bit, whatever the batch or threads.
    Host,
    /// bf16 activations and weights on a CUDA GPU (the tensor path): cuBLAS picks its
    /// GEMM by the number of rows, so a prefill's rows differ from the decode steps' by bf16
    /// roundings, which grow through the layers.
    CudaBf16,
}

impl Default for Tolerance {
    /// For the CPU engine, where an honest recomputation differs from the commitment by the
    /// rounding of the committed value alone (at most 2^-10 relative: `docs/benchmarks.md`,
    /// "Verifiable inference", has the measured errors).
    fn default() -> Self {
        Self {
            relative: 0.004,
            max_value_mismatch_share: 0.05,
            max_index_mismatch_share: 0.10,
            max_mean_relative_error: 0.001,
            // An honest replay on the CPU reproduces every token (near ties aside, which
            // the replay itself forgives: `docs/benchmarks.md`).
            max_replay_mismatch_share: 0.0,
            replay_tie: crate::sampling::REPLAY_TIE,
        }
    }
}

impl Tolerance {
    /// The tolerance fitted to honest runs in `format` (`docs/benchmarks.md`, "Verifiable
    /// inference"): [`Tolerance::default`] for the host path; for bf16 on a GPU, bounds
    /// fitted to honest jobs generated at batch sizes 1 to 64 with and without CUDA graphs
    /// and verified by a prefill.
    pub fn for_format(format: NumericFormat) -> Self {
        match format {
            NumericFormat::Host => Self::default(),
            NumericFormat::CudaBf16 => CUDA_BF16,
        }
    }
}

/// [`Tolerance::for_format`]'s bounds for [`NumericFormat::CudaBf16`], fitted on an H100
/// (`docs/benchmarks.md`, "Verifiable inference on the GPU"): 4,000 honest jobs of
/// SmolLM2-135M in bf16 (32 greedy tokens, with and without adapters, generated at batch
/// sizes 1 to 64 with CUDA graphs on and off, verified by a prefill) strayed up to 0.0161 in
/// mean relative error (median 0.0044), up to 28% of their values beyond 0.016 (bf16 keeps
/// 8 significant bits: 0.4-0.8% a rounding, and a prefill's GEMMs round differently from
/// decode steps'), 1.6% of their dimensions out of the top four, and one replayed token of
/// 32 beyond a 0.02 near tie (one job in 3,000; its gap 0.069). Each bound sits above those
/// worst honest figures; cheats that change the model (another checkpoint, layers
/// skipped, lower precision) land far beyond them, while an adapter skipped or swapped
/// (a random rank-16 adapter moves the committed entries 0.3-5%) mostly does not.
const CUDA_BF16: Tolerance = Tolerance {
    relative: 0.016,
    max_value_mismatch_share: 0.35,
    max_index_mismatch_share: 0.10,
    max_mean_relative_error: 0.025,
    // One token of a 32-token job.
    max_replay_mismatch_share: 0.04,
    replay_tie: 0.02,
};

/// What comparing recomputed rows with a commitment found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifyReport {
    /// Tokens the commitment covers.
    pub committed_tokens: usize,
    /// Rows recomputed (the output's tokens).
    pub recomputed_tokens: usize,
    /// Entries compared.
    pub entries: usize,
    /// Entries whose value differs by more than the comparison's relative tolerance.
    pub value_mismatches: usize,
    /// Entries whose dimension is not among the recomputed row's largest.
    pub index_mismatches: usize,
    /// Largest relative error of a committed value.
    pub max_relative_error: f32,
    /// Sum of the relative errors (mean = sum / entries).
    pub sum_relative_error: f64,
    /// Output tokens replayed: the request's sampler (its temperature, top-k, top-p and seed)
    /// run again over the logits the verifier recomputed at each output position.
    pub replayed_tokens: usize,
    /// Replayed output tokens that differ from the output beyond a near tie
    /// (the sampler's `REPLAY_TIE`): the tokens did not come from this
    /// model and adapter under the claimed sampling, even where the commitment was computed
    /// honestly afterwards (a cheater that generates with a cheaper model, then prefills
    /// the output once with the registered one to commit).
    pub replay_mismatches: usize,
    /// The largest distance of a replayed token from the pick, in the near-tie rule's units
    /// ([`Tolerance::replay_tie`]; 0 when every claimed token was the pick): what fitting
    /// that rule to honest runs reads.
    pub max_replay_gap: f32,
    /// The commitment the verifier's own rows make (the evidence it recomputed).
    pub recomputed: ActivationCommitment,
}

impl VerifyReport {
    /// An empty report on `claimed`, before any row is compared.
    pub fn new(claimed: &ActivationCommitment) -> Self {
        Self { committed_tokens: claimed.tokens(), ..Self::default() }
    }

    /// Whether the commitment is one an honest worker could have made: it covers exactly the
    /// output's tokens and its mismatches are within `tol`.
    pub fn passes(&self, tol: &Tolerance) -> bool {
        let share = |n: usize| if self.entries == 0 { 0.0 } else { n as f32 / self.entries as f32 };
        let replay_share = if self.replayed_tokens == 0 {
            0.0
        } else {
            self.replay_mismatches as f32 / self.replayed_tokens as f32
        };
        self.committed_tokens == self.recomputed_tokens
            && replay_share <= tol.max_replay_mismatch_share
            && share(self.value_mismatches) <= tol.max_value_mismatch_share
            && share(self.index_mismatches) <= tol.max_index_mismatch_share
            && self.mean_relative_error() <= f64::from(tol.max_mean_relative_error)
    }

    /// The findings in words: the commitment's coverage, its mismatches and errors, and the
    /// replay's.
    pub fn summary(&self) -> String {
        format!(
            "{} of {} tokens committed; {} value and {} index mismatches in {} entries, mean \
             error {:.5}, max {:.5}; {} of {} replayed tokens differ",
            self.committed_tokens,
            self.recomputed_tokens,
            self.value_mismatches,
            self.index_mismatches,
            self.entries,
            self.mean_relative_error(),
            self.max_relative_error,
            self.replay_mismatches,
            self.replayed_tokens
        )
    }

    /// Mean relative error of the committed values.
    pub fn mean_relative_error(&self) -> f64 {
        if self.entries == 0 {
            0.0
        } else {
            self.sum_relative_error / self.entries as f64
        }
    }
}

/// Compares the recomputed row of token `t` with the commitment's entries for it, adding to
/// `report` (a token past the commitment's end adds nothing but the recomputed count).
pub fn compare_row(
    commitment: &ActivationCommitment,
    t: usize,
    row: &[f32],
    relative: f32,
    report: &mut VerifyReport,
) {
    report.recomputed_tokens += 1;
    // A row wider than the encoding is left out, which leaves `recomputed` short of the
    // output: no claim could have been committed from such a model either.
    let _ = report.recomputed.push_row(row);
    let Some(entries) = commitment.entries(t) else { return };
    let top = top_dims(row, TOP_K + INDEX_SLACK);
    for e in entries {
        report.entries += 1;
        let dim = e.dim as usize;
        if !top.contains(&dim) {
            report.index_mismatches += 1;
        }
        let Some(&r) = row.get(dim) else {
            report.value_mismatches += 1;
            continue;
        };
        let scale = r.abs().max(e.value.abs()).max(f32::MIN_POSITIVE);
        let err = (r - e.value).abs() / scale;
        let err = if err.is_nan() { f32::INFINITY } else { err };
        if err > relative {
            report.value_mismatches += 1;
        }
        report.max_relative_error = report.max_relative_error.max(err);
        report.sum_relative_error += f64::from(err.min(1e6));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_nine_mantissa_bits_rounded_to_nearest_even() {
        assert_eq!(lengthen(shorten(1.0)), 1.0);
        assert_eq!(lengthen(shorten(-3.5)), -3.5);
        // 1 + 2^-10 is halfway between 1 and 1 + 2^-9: ties to the even mantissa (1.0).
        assert_eq!(lengthen(shorten(1.0 + 1.0 / 1024.0)), 1.0);
        assert_eq!(lengthen(shorten(1.0 + 3.0 / 1024.0)), 1.0 + 4.0 / 1024.0);
        assert!(lengthen(shorten(f32::NAN)).is_nan());
        assert!(shorten(f32::MAX) < 1 << VALUE_BITS);
        for v in [0.123_456_7f32, -57.3, 1e-20, 3e30] {
            assert!((lengthen(shorten(v)) - v).abs() / v.abs() <= 1.0 / 1024.0, "{v}");
        }
    }

    #[test]
    fn entries_pack_dimension_and_value() {
        let mut row = vec![0.0f32; MAX_DIMS];
        row[MAX_DIMS - 1] = -9.25;
        row[3] = 7.0;
        let mut c = ActivationCommitment::default();
        c.push_row(&row).unwrap();
        let [a, b] = c.entries(0).unwrap();
        assert_eq!((a.dim, a.value, b.dim, b.value), (MAX_DIMS as u32 - 1, -9.25, 3, 7.0));
        assert!(c.push_row(&vec![0.0; MAX_DIMS + 1]).is_err());
    }

    #[test]
    fn top_dims_by_magnitude_ties_to_the_lower_dimension() {
        let row = [0.5, -4.0, 3.0, 4.0, f32::NAN, -0.1];
        assert_eq!(top_dims(&row, 2), vec![1, 3]);
        assert_eq!(top_dims(&row, 4), vec![1, 3, 2, 0]);
        assert_eq!(top_dims(&[1.0], 3), vec![0]);
    }

    #[test]
    fn the_gpu_tolerance_forgives_bf16_rounding_the_cpu_one_does_not() {
        let (cpu, gpu) = (
            Tolerance::for_format(NumericFormat::Host),
            Tolerance::for_format(NumericFormat::CudaBf16),
        );
        assert_eq!(cpu, Tolerance::default());
        // An honest bf16 job at the measured extremes: mean error 0.016, 18 of 64 values
        // beyond the relative bound, one of 32 replayed tokens past the near tie.
        let bf16 = VerifyReport {
            committed_tokens: 32,
            recomputed_tokens: 32,
            entries: 64,
            value_mismatches: 18,
            sum_relative_error: 0.016 * 64.0,
            replayed_tokens: 32,
            replay_mismatches: 1,
            ..VerifyReport::default()
        };
        assert!(bf16.passes(&gpu), "{bf16:?}");
        assert!(!bf16.passes(&cpu), "the CPU recomputes bit for bit: no such slack");
        // Another checkpoint served on the GPU: mean error 0.0186 but 23 values off.
        let other = VerifyReport { value_mismatches: 23, ..bf16.clone() };
        assert!(!other.passes(&gpu));
        let tokens = VerifyReport { replay_mismatches: 2, ..bf16.clone() };
        assert!(!tokens.passes(&gpu), "two tokens of 32 past the tie");
        let mean = VerifyReport { sum_relative_error: 0.026 * 64.0, ..bf16 };
        assert!(!mean.passes(&gpu));
    }

    #[test]
    fn a_commitment_round_trips_and_checks_its_own_rows() {
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|t| {
                (0..64).map(|d| ((t * 7 + d * 13) % 29) as f32 - 14.0 + d as f32 * 0.01).collect()
            })
            .collect();
        let mut c = ActivationCommitment::default();
        for r in &rows {
            c.push_row(r).unwrap();
        }
        assert_eq!(c.tokens(), 40);
        assert_eq!(c.as_bytes().len(), 40 * TOKEN_BYTES);
        // 32 tokens fit the 256-byte budget.
        assert_eq!(CHUNK_TOKENS * TOKEN_BYTES, 256);
        let again = ActivationCommitment::from_bytes(c.as_bytes().to_vec()).unwrap();
        assert_eq!(again, c);
        assert!(ActivationCommitment::from_bytes(vec![0; TOKEN_BYTES + 1]).is_err());

        let tol = Tolerance::default();
        let mut honest = VerifyReport::new(&c);
        for (t, r) in rows.iter().enumerate() {
            compare_row(&c, t, r, tol.relative, &mut honest);
        }
        assert_eq!((honest.entries, honest.value_mismatches, honest.index_mismatches), (80, 0, 0));
        assert!(honest.passes(&tol), "{honest:?}");

        // Other rows: values and dimensions disagree.
        let mut other = VerifyReport::new(&c);
        for (t, r) in rows.iter().enumerate() {
            let shifted: Vec<f32> = r.iter().rev().map(|v| v * 0.9).collect();
            compare_row(&c, t, &shifted, tol.relative, &mut other);
        }
        assert!(!other.passes(&tol), "{other:?}");

        // One token short: refused whatever the values.
        let mut short = VerifyReport::new(&c);
        for (t, r) in rows.iter().take(39).enumerate() {
            compare_row(&c, t, r, tol.relative, &mut short);
        }
        assert!(!short.passes(&tol));
    }
}
