//! Activation commitments: what a worker records while it generates, so that another worker
//! can check later, in one prefill pass over the prompt and the output, that the tokens came
//! from the model, adapter and numeric format the provider registered.
//!
//! **Encoding, version 2.** For every generated token, the row the LM head read to pick it
//! (the final RMSNorm's output at the position before the token) contributes its
//! [`TOP_K`] entries of largest magnitude, largest first (ties: the lower dimension). An
//! entry is [`ENTRY_BITS`] = 30 bits: the dimension in its low [`DIM_BITS`], and above them
//! the value in 16 bits: sign, a 6-bit exponent (bias 31: magnitudes from 2^-30 to just
//! under 2^32; smaller ones are committed as zero, larger ones as infinite) and 9 mantissa
//! bits, rounded to nearest even. In memory (and from a GPU's top-2 kernel) an entry is a
//! `u32` word ([`row_words`]): the same dimension bits, and above them the f32 shortened to
//! [`VALUE_BITS`] (sign, 8 exponent bits, 9 mantissa bits); sealing narrows the exponent.
//! The output is committed in chunks of [`CHUNK_TOKENS`] tokens; a chunk's entries are
//! packed one after the other, least significant bit first, into the fewest bytes that hold
//! them (zero bits pad the last byte): **240 bytes per 32 tokens** without an adapter. The
//! commitment is the concatenation of the chunks in order, so its length (with whether the
//! output was served with an adapter, below) names the number of tokens it covers.
//!
//! **Adapted requests** (a request served with an adapter) commit also to the adapter's own
//! contribution, which bf16 rounding on a GPU cannot hide: at layer [`delta_layer`] (the
//! middle of the model), the LoRA delta of the first projection the adapter targets in
//! [`Projection::ALL`](openledger_model::Projection::ALL)'s order (`B·A·x`, the delta alone,
//! before it is added to the base projection's output). Every generated token's delta row is
//! computed and kept; when a chunk of [`CHUNK_TOKENS`] tokens ends (or the output does), the
//! [`DELTA_PICKS`] positions [`delta_picks`] derives from a hash of the chunk's tokens
//! (unknown until its last token is sampled, so the delta must be computed for every token)
//! contribute the [`TOP_K`] entries of their delta rows, encoded as the hidden rows' are. A
//! chunk's entries are its tokens' hidden entries, then its picks' delta entries in position
//! order: **255 bytes per 32 tokens** for an adapted request ([`encoded_len`]). A skipped
//! adapter makes the delta zero and another adapter points it at other dimensions with other
//! values, while an honest recomputation moves it by the rounding of its input: its own,
//! looser bounds ([`Tolerance::delta_relative`]) catch both.
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
/// Bits of an entry's dimension (rows up to 16,384 wide).
pub const DIM_BITS: u32 = 14;
/// Bits of an in-memory word's value: the top bits of its f32 (sign, exponent, 9 mantissa
/// bits).
pub const VALUE_BITS: u32 = 32 - DIM_BITS;
/// Bits of a committed entry's value: sign, [`EXPONENT_BITS`], 9 mantissa bits.
pub const PACKED_VALUE_BITS: u32 = 16;
/// Exponent bits of a committed value (bias 31).
pub const EXPONENT_BITS: u32 = 6;
/// Bits of one committed entry: its dimension and its value.
pub const ENTRY_BITS: usize = (DIM_BITS + PACKED_VALUE_BITS) as usize;
/// The widest row the encoding takes.
pub const MAX_DIMS: usize = 1 << DIM_BITS;
/// Tokens per chunk: the unit the encoding's size is counted in and delta rows are picked
/// from.
pub const CHUNK_TOKENS: usize = 32;
/// How far down the recomputed row's ranking a committed dimension may sit and still count
/// as agreeing (honest near ties swap places).
pub const INDEX_SLACK: usize = 2;
/// Delta rows committed per chunk of an adapted request (fewer when the chunk is shorter).
pub const DELTA_PICKS: usize = 2;

/// The layer whose LoRA delta an adapted request commits to: the middle one, deep enough that
/// its input carries the adapter's effect on the layers before it.
pub fn delta_layer(num_layers: usize) -> usize {
    num_layers / 2
}

/// Bytes of the commitment to `tokens` generated tokens, with or without an adapter.
pub fn encoded_len(tokens: usize, adapted: bool) -> usize {
    let (full, rest) = (tokens / CHUNK_TOKENS, tokens % CHUNK_TOKENS);
    full * chunk_bytes(CHUNK_TOKENS, adapted) + chunk_bytes(rest, adapted)
}

/// Delta picks of a chunk of `n` tokens.
fn picks_in(n: usize, adapted: bool) -> usize {
    if adapted {
        n.min(DELTA_PICKS)
    } else {
        0
    }
}

/// Bits of one chunk of `n` tokens' entries.
fn chunk_bits(n: usize, adapted: bool) -> usize {
    (n + picks_in(n, adapted)) * TOP_K * ENTRY_BITS
}

/// Bytes of one chunk of `n` tokens: its entries packed, rounded up to whole bytes.
fn chunk_bytes(n: usize, adapted: bool) -> usize {
    chunk_bits(n, adapted).div_ceil(8)
}

/// The positions (offsets into the chunk, ascending) whose delta rows chunk `chunk` of an
/// adapted output commits, from a BLAKE2 hash of the chunk's index and its `tokens`: the
/// generator learns them only once the chunk's last token is sampled, the verifier derives
/// them from the output it checks.
pub fn delta_picks(chunk: usize, tokens: &[u32]) -> Vec<usize> {
    let mut bytes = Vec::with_capacity(8 + 4 * tokens.len());
    bytes.extend_from_slice(&(chunk as u64).to_le_bytes());
    for t in tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    let hash = sp_crypto_hashing::blake2_256(&bytes);
    let n = tokens.len();
    let k = n.min(DELTA_PICKS);
    // A partial Fisher-Yates shuffle of 0..n, one 64-bit word of the hash per pick.
    let mut order: Vec<usize> = (0..n).collect();
    for (i, word) in hash.chunks_exact(8).take(k).enumerate() {
        let r = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        let j = i + (r % (n - i) as u64) as usize;
        order.swap(i, j);
    }
    let mut picks = order[..k].to_vec();
    picks.sort_unstable();
    picks
}

/// The committed rows of one output, in the encoding above.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivationCommitment {
    /// Sealed chunks, packed.
    bytes: Vec<u8>,
    /// Whether the output was served with an adapter (delta entries per chunk).
    adapted: bool,
    /// Tokens in `bytes`.
    sealed: usize,
    /// The tokens of the chunk not yet sealed: hidden words, and (adapted) the delta words
    /// where computed (a generator computes every token's, a verifier its picks').
    open: Vec<([u32; TOP_K], Option<[u32; TOP_K]>)>,
}

/// One committed entry: a dimension of the row and its value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    pub dim: u32,
    pub value: f32,
}

impl ActivationCommitment {
    /// An empty commitment for an output served with an adapter (`adapted`) or without.
    pub fn new(adapted: bool) -> Self {
        Self { adapted, ..Self::default() }
    }

    /// Decodes a commitment to an output served with an adapter (`adapted`) or without; its
    /// length must be [`encoded_len`] of some number of tokens, and every chunk's padding
    /// bits zero.
    pub fn from_bytes(bytes: Vec<u8>, adapted: bool) -> Result<Self> {
        let per_chunk = chunk_bytes(CHUNK_TOKENS, adapted);
        let full = bytes.len() / per_chunk;
        let tokens = (0..CHUNK_TOKENS)
            .map(|rest| full * CHUNK_TOKENS + rest)
            .find(|&n| encoded_len(n, adapted) == bytes.len())
            .ok_or_else(|| {
                EngineError::BadCommitment(format!(
                    "{} bytes is not the length of a commitment {} an adapter",
                    bytes.len(),
                    if adapted { "with" } else { "without" }
                ))
            })?;
        let c = Self { bytes, adapted, sealed: tokens, open: Vec::new() };
        for chunk in 0..tokens.div_ceil(CHUNK_TOKENS) {
            let Some((at, n)) = c.chunk_at(chunk) else { break };
            let used = chunk_bits(n, adapted);
            let last = c.bytes.get(at + chunk_bytes(n, adapted) - 1).copied().unwrap_or(0);
            if !used.is_multiple_of(8) && last >> (used % 8) != 0 {
                return Err(EngineError::BadCommitment(format!(
                    "chunk {chunk} of the commitment has padding bits set"
                )));
            }
        }
        Ok(c)
    }

    /// The encoded bytes (what a receipt's hash covers): the sealed chunks.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether this commits to an adapter's delta rows (an output served with an adapter).
    pub fn is_adapted(&self) -> bool {
        self.adapted
    }

    /// Tokens covered (those of a chunk not yet sealed included).
    pub fn tokens(&self) -> usize {
        self.sealed + self.open.len()
    }

    /// Appends the entries of one generated token's row. Rows wider than [`MAX_DIMS`]
    /// cannot be committed.
    pub fn push_row(&mut self, row: &[f32]) -> Result<()> {
        self.push_words(&row_words(row)?);
        Ok(())
    }

    /// Appends one token's encoded hidden entries ([`row_words`], or the same words computed
    /// on a device: `openledger_kernels::packed_top2` with [`DIM_BITS`]), [`TOP_K`] of them
    /// (a slice of several tokens' words appends them all, in order). The token stays open
    /// until its chunk is sealed: at once when an output without an adapter fills a chunk,
    /// by [`ActivationCommitment::seal`] otherwise.
    pub fn push_words(&mut self, words: &[u32]) {
        for token in words.chunks(TOP_K) {
            let mut w = [0u32; TOP_K];
            w[..token.len()].copy_from_slice(token);
            self.open.push((w, None));
            if !self.adapted && self.open.len() == CHUNK_TOKENS {
                self.seal_chunk(&[]);
            }
        }
    }

    /// Sets the delta words ([`row_words`] of the delta row) of the newest open token of an
    /// adapted commitment (nothing otherwise).
    pub fn push_delta_words(&mut self, words: &[u32]) {
        if !self.adapted {
            return;
        }
        if let Some((_, delta)) = self.open.last_mut() {
            let mut w = [0u32; TOP_K];
            let n = words.len().min(TOP_K);
            w[..n].copy_from_slice(&words[..n]);
            *delta = Some(w);
        }
    }

    /// Seals every chunk whose tokens are all in `output` (the generated tokens so far; an
    /// output without an adapter needs none), and with `finished` the last, partial one
    /// too: its hidden entries, then (adapted) the delta entries of its [`delta_picks`] (a
    /// pick without delta words, which only a broken caller leaves, commits zero entries).
    pub fn seal(&mut self, output: &[u32], finished: bool) {
        while !self.open.is_empty() {
            let n = self.open.len().min(CHUNK_TOKENS);
            if n < CHUNK_TOKENS && !finished {
                return;
            }
            let tokens = if self.adapted {
                match output.get(self.sealed..self.sealed + n) {
                    Some(t) => t,
                    None => return,
                }
            } else {
                &[]
            };
            let tokens = tokens.to_vec();
            self.seal_chunk(&tokens);
        }
    }

    /// Packs the first (up to) [`CHUNK_TOKENS`] open tokens as a chunk; `tokens` are its
    /// output tokens (an adapted chunk's picks come from them).
    fn seal_chunk(&mut self, tokens: &[u32]) {
        let n = self.open.len().min(CHUNK_TOKENS);
        let chunk: Vec<_> = self.open.drain(..n).collect();
        let mut words: Vec<u32> = chunk.iter().flat_map(|(hidden, _)| *hidden).collect();
        if self.adapted {
            for p in delta_picks(self.sealed / CHUNK_TOKENS, tokens) {
                words.extend(chunk.get(p).and_then(|t| t.1).unwrap_or([0; TOP_K]));
            }
        }
        let mut acc: u64 = 0;
        let mut bits = 0;
        for w in words {
            acc |= u64::from(pack_word(w)) << bits;
            bits += ENTRY_BITS;
            while bits >= 8 {
                self.bytes.push(acc as u8);
                acc >>= 8;
                bits -= 8;
            }
        }
        if bits > 0 {
            self.bytes.push(acc as u8);
        }
        self.sealed += n;
    }

    /// This commitment's hidden entries laid out as an adapted output's (`output` its
    /// tokens), every token's delta words `delta`: what a worker that skipped the adapter
    /// could claim (a zero delta row's words: [`row_words`] of zeros), for tests and
    /// benchmarks of the verifier.
    pub fn with_every_delta(&self, output: &[u32], delta: &[u32]) -> Self {
        let mut out = Self::new(true);
        for t in 0..self.sealed {
            let Some(entries) = self.entries(t) else { break };
            let words: Vec<u32> =
                entries.iter().map(|e| (shorten(e.value) << DIM_BITS) | e.dim).collect();
            out.push_words(&words);
            out.push_delta_words(delta);
        }
        out.seal(output, true);
        out
    }

    /// This commitment with `nudge` of every ten hidden entries (by their position in the
    /// output) moved one step of the encoding's mantissa away from zero, the delta entries
    /// kept (`output`: the output's tokens). What a worker whose numbers are slightly off on
    /// every job could claim, each job inside the verifier's tolerance but its score above an
    /// honest one's: for tests of the chain's drift judgement.
    pub fn nudged(&self, output: &[u32], nudge: usize) -> Self {
        let word = |e: &Entry, step: u32| {
            ((shorten(e.value).saturating_add(step) & ((1 << VALUE_BITS) - 1)) << DIM_BITS) | e.dim
        };
        let mut out = Self::new(self.adapted);
        for t in 0..self.sealed {
            let Some(entries) = self.entries(t) else { break };
            let words: Vec<u32> = entries
                .iter()
                .enumerate()
                .map(|(j, e)| word(e, u32::from((t * TOP_K + j) % 10 < nudge)))
                .collect();
            out.push_words(&words);
            if self.adapted {
                let (chunk, at) = (t / CHUNK_TOKENS, t % CHUNK_TOKENS);
                let first = chunk * CHUNK_TOKENS;
                let end = (first + CHUNK_TOKENS).min(self.sealed);
                let tokens = output.get(first..end).unwrap_or(&[]);
                let pick = delta_picks(chunk, tokens).iter().position(|&p| p == at);
                if let Some(delta) = pick.and_then(|i| self.delta_entries(chunk, i)) {
                    let words: Vec<u32> = delta.iter().map(|e| word(e, 0)).collect();
                    out.push_delta_words(&words);
                }
            }
        }
        out.seal(output, true);
        out
    }

    /// Where chunk `chunk` starts in the sealed bytes, and its tokens.
    fn chunk_at(&self, chunk: usize) -> Option<(usize, usize)> {
        let first = chunk.checked_mul(CHUNK_TOKENS)?;
        if first >= self.sealed {
            return None;
        }
        let n = (self.sealed - first).min(CHUNK_TOKENS);
        Some((chunk * chunk_bytes(CHUNK_TOKENS, self.adapted), n))
    }

    /// Entry `i` of the chunk starting at byte `at`.
    fn entry(&self, at: usize, i: usize) -> Option<Entry> {
        let bit = i * ENTRY_BITS;
        let start = at + bit / 8;
        let mut acc: u64 = 0;
        for (k, b) in self.bytes.get(start..)?.iter().take(5).enumerate() {
            acc |= u64::from(*b) << (8 * k);
        }
        let packed = (acc >> (bit % 8)) as u32 & ((1u32 << ENTRY_BITS) - 1);
        Some(Entry {
            dim: packed & (MAX_DIMS as u32 - 1),
            value: lengthen(widen(packed >> DIM_BITS)),
        })
    }

    /// `TOP_K` entries starting at entry `first` of the chunk at byte `at`.
    fn entries_from(&self, at: usize, first: usize) -> Option<[Entry; TOP_K]> {
        let mut out = [Entry { dim: 0, value: 0.0 }; TOP_K];
        for (k, e) in out.iter_mut().enumerate() {
            *e = self.entry(at, first + k)?;
        }
        Some(out)
    }

    /// The committed entries of token `t` (`None` past the sealed end).
    pub fn entries(&self, t: usize) -> Option<[Entry; TOP_K]> {
        let (at, _) = self.chunk_at(t / CHUNK_TOKENS)?;
        self.entries_from(at, (t % CHUNK_TOKENS) * TOP_K)
    }

    /// The committed delta entries of the `i`-th pick of chunk `chunk` (`None` without an
    /// adapter, or past the sealed end).
    pub fn delta_entries(&self, chunk: usize, i: usize) -> Option<[Entry; TOP_K]> {
        let (at, n) = self.chunk_at(chunk)?;
        if i >= picks_in(n, self.adapted) {
            return None;
        }
        self.entries_from(at, (n + i) * TOP_K)
    }
}

/// A word's [`ENTRY_BITS`]: its dimension, and its value narrowed to [`PACKED_VALUE_BITS`]
/// (the exponent rebiased from 8 bits to [`EXPONENT_BITS`]; out of range: zero or infinite).
fn pack_word(word: u32) -> u32 {
    let v = word >> DIM_BITS;
    let (sign, exponent, mantissa) = (v >> 17 & 1, v >> 9 & 0xff, v & 0x1ff);
    let max = (1 << EXPONENT_BITS) - 1;
    let (e, m) = match exponent {
        0xff => (max, mantissa),
        e if e <= EXPONENT_SHIFT => (0, 0),
        e if e - EXPONENT_SHIFT >= max => (max, 0),
        e => (e - EXPONENT_SHIFT, mantissa),
    };
    let packed = sign << (PACKED_VALUE_BITS - 1) | e << 9 | m;
    packed << DIM_BITS | (word & (MAX_DIMS as u32 - 1))
}

/// What f32 exponents lose when narrowed: 127 - 31.
const EXPONENT_SHIFT: u32 = 96;

/// A packed value's [`VALUE_BITS`] (the inverse of [`pack_word`]'s narrowing).
fn widen(packed: u32) -> u32 {
    let (sign, e, m) = (packed >> 15 & 1, packed >> 9 & 0x3f, packed & 0x1ff);
    let exponent = match e {
        0 => 0,
        0x3f => 0xff,
        e => e + EXPONENT_SHIFT,
    };
    sign << 17 | exponent << 9 | m
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
        // The top mantissa bit, so that the shortened NaN is still a NaN.
        return (bits >> drop) | (1 << (VALUE_BITS - 10));
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
    /// A committed delta value (adapted requests) further than this from the recomputed one
    /// is a delta value mismatch.
    pub delta_relative: f32,
    /// Share of delta entries allowed to be value mismatches.
    pub max_delta_value_mismatch_share: f32,
    /// Share of delta entries allowed to be index mismatches.
    pub max_delta_index_mismatch_share: f32,
    /// Largest mean relative error of the committed delta values.
    pub max_delta_mean_relative_error: f32,
    /// The mean relative error an honest recomputation typically shows (the median of
    /// measured honest jobs): the unit of a verdict's score ([`VerifyReport::score`]), whose
    /// median over a provider's audits the chain judges (`pallet-verification`'s
    /// `DriftLimit`).
    pub typical_mean_error: f32,
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
    /// The host path on the packed integer kernels (AVX-512 VNNI or AMX, the same bits)
    /// over block-quantized weights: one kernel path for every server of the format, so a
    /// verifier's replay is exact and no near tie is forgiven.
    HostVnni,
}

impl NumericFormat {
    /// The format whose tolerance covers work in `self` verified anywhere it may be served:
    /// [`NumericFormat::Host`] for the VNNI / AMX path (its jobs may be verified on AVX2),
    /// else the format itself. What a verifier applies when the chain registers no format.
    pub fn general(self) -> Self {
        match self {
            NumericFormat::HostVnni => NumericFormat::Host,
            other => other,
        }
    }
}

impl Default for Tolerance {
    /// For the CPU engine. On one kernel path (AVX-512 VNNI, AMX, AVX2 or portable) an honest
    /// recomputation differs from the commitment by the rounding of the committed value alone
    /// (at most 2^-10 relative); across kernel paths (a job generated with AVX-512 VNNI,
    /// verified on AVX2) the rows differ in their last bits too: 1,000 such jobs reached a
    /// job mean error of 0.00053, single values 0.0033 off, delta means 0.00079 and one
    /// greedy near tie flipped at a relative gap of 1.5e-4 (`docs/benchmarks.md`,
    /// "Verifiable inference", "Encoding version 2"). The bounds sit above those.
    fn default() -> Self {
        Self {
            relative: 0.004,
            max_value_mismatch_share: 0.05,
            max_index_mismatch_share: 0.10,
            max_mean_relative_error: 0.001,
            // An honest replay reproduces every token but near ties, which another kernel
            // path's last bits can flip (1.5e-4 seen): those within 2e-4 are forgiven.
            max_replay_mismatch_share: 0.0,
            replay_tie: CPU_REPLAY_TIE,
            // The delta rows: the encoding's rounding on one kernel path, up to 0.0008 in
            // mean across paths.
            delta_relative: 0.004,
            max_delta_value_mismatch_share: 0.0,
            max_delta_index_mismatch_share: 0.0,
            max_delta_mean_relative_error: 0.002,
            // Honest jobs, one kernel path: median 3.6e-4 (AVX-512 VNNI), 3.8e-4 across
            // paths (AVX2 verifying VNNI work); the encoding's rounding, mostly.
            typical_mean_error: 0.00036,
        }
    }
}

/// The CPU's near-tie rule for replayed tokens ([`Tolerance::replay_tie`]), a thin margin
/// on both sides: above the largest honest gap measured across kernel paths (1.5e-4, a job
/// generated with AVX-512 VNNI verified on AVX2), below a recommitted adapter-swap cheat's
/// only flipped token in `tests/commitment.rs` (2.8e-4; with a tie of 5e-4 it passed).
pub const CPU_REPLAY_TIE: f32 = 2e-4;

impl Tolerance {
    /// The tolerance fitted to honest runs in `format` (`docs/benchmarks.md`, "Verifiable
    /// inference"): [`Tolerance::default`] for the host path; for bf16 on a GPU, bounds
    /// fitted to honest jobs generated at batch sizes 1 to 64 with and without CUDA graphs
    /// and verified by a prefill.
    pub fn for_format(format: NumericFormat) -> Self {
        match format {
            NumericFormat::Host => Self::default(),
            NumericFormat::CudaBf16 => CUDA_BF16,
            // One kernel path: an honest replay picks every token (0 of 32,000 differed on
            // one path, `docs/benchmarks.md`); the near tie exists for other paths' last bits.
            NumericFormat::HostVnni => Self { replay_tie: 0.0, ..Self::default() },
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
/// (a random rank-16 adapter moves the committed entries 0.3-5%) mostly does not: the
/// adapted requests' delta rows catch those. Fitted on an H100 from 2,500 honest jobs (1,500
/// adapted, batch 1 to 64, graphs on and off): the delta entries' mean relative error
/// reached 0.016 (median 0.0035), up to 2 of a job's 8 delta values strayed beyond 0.05 and
/// 1 of 8 dimensions out of the recomputed top four; an adapter skipped (a zero delta) or
/// swapped had a mean error of 0.57 or more, 7 of 8 values and 6 of 8 dimensions off.
/// With encoding version 2 (2 delta rows a chunk, 4 entries a 32-token job; H100,
/// 1,500 honest adapted jobs again) the delta mean reached 0.029 (median 0.0035), and a
/// batch-64 job had 2 of its 4 values beyond 0.05 and 1 of 4 dimensions out of the top
/// four: at the old share bounds of one half, one rounding more would have refused it.
/// The bounds: mean 0.1 (3.4x the worst honest job, 4.3x below the closest cheat, 0.43),
/// three quarters of the values and of the dimensions (a 32-token job is refused by them
/// only when all four entries are off; every adapter skipped or swapped is refused by the
/// mean alone).
const CUDA_BF16: Tolerance = Tolerance {
    relative: 0.016,
    max_value_mismatch_share: 0.35,
    max_index_mismatch_share: 0.10,
    max_mean_relative_error: 0.025,
    // One token of a 32-token job.
    max_replay_mismatch_share: 0.04,
    replay_tie: 0.02,
    delta_relative: 0.05,
    max_delta_value_mismatch_share: 0.75,
    max_delta_index_mismatch_share: 0.75,
    max_delta_mean_relative_error: 0.1,
    // 3,000 honest jobs on an H100 (batch 1-64, graphs on and off): median 0.0044-0.0045.
    typical_mean_error: 0.0045,
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
    /// ([`CPU_REPLAY_TIE`] on the CPU): the tokens did not come from this
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
    /// The commitment's layout does not match the claim: delta entries without an adapter
    /// claimed, or none with one.
    pub layout_mismatch: bool,
    /// Delta entries compared (adapted claims: [`DELTA_PICKS`] rows a chunk, [`TOP_K`]
    /// entries a row).
    pub delta_entries: usize,
    /// Delta entries whose value differs by more than [`Tolerance::delta_relative`].
    pub delta_value_mismatches: usize,
    /// Delta entries whose dimension is not among the recomputed delta row's largest.
    pub delta_index_mismatches: usize,
    /// Largest relative error of a committed delta value.
    pub delta_max_relative_error: f32,
    /// Sum of the delta values' relative errors (mean = sum / delta entries).
    pub delta_sum_relative_error: f64,
}

impl VerifyReport {
    /// An empty report on `claimed`, before any row is compared.
    pub fn new(claimed: &ActivationCommitment) -> Self {
        Self {
            committed_tokens: claimed.tokens(),
            recomputed: ActivationCommitment::new(claimed.is_adapted()),
            ..Self::default()
        }
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
        let delta_share = |n: usize| {
            if self.delta_entries == 0 {
                0.0
            } else {
                n as f32 / self.delta_entries as f32
            }
        };
        self.committed_tokens == self.recomputed_tokens
            && !self.layout_mismatch
            && delta_share(self.delta_value_mismatches) <= tol.max_delta_value_mismatch_share
            && delta_share(self.delta_index_mismatches) <= tol.max_delta_index_mismatch_share
            && self.delta_mean_relative_error() <= f64::from(tol.max_delta_mean_relative_error)
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
             error {:.5}, max {:.5}; {} value and {} index mismatches in {} delta entries, \
             mean error {:.5}{}; {} of {} replayed tokens differ",
            self.committed_tokens,
            self.recomputed_tokens,
            self.value_mismatches,
            self.index_mismatches,
            self.entries,
            self.mean_relative_error(),
            self.max_relative_error,
            self.delta_value_mismatches,
            self.delta_index_mismatches,
            self.delta_entries,
            self.delta_mean_relative_error(),
            if self.layout_mismatch { " (layout does not match the adapter claim)" } else { "" },
            self.replay_mismatches,
            self.replayed_tokens
        )
    }

    /// Mean relative error of the committed delta values.
    pub fn delta_mean_relative_error(&self) -> f64 {
        if self.delta_entries == 0 {
            0.0
        } else {
            self.delta_sum_relative_error / self.delta_entries as f64
        }
    }

    /// Mean relative error of the committed values.
    pub fn mean_relative_error(&self) -> f64 {
        if self.entries == 0 {
            0.0
        } else {
            self.sum_relative_error / self.entries as f64
        }
    }

    /// The job's score for the chain: its mean relative error in thousandths of `tol`'s
    /// typical honest error (1,000: as far as honest work usually is), saturating.
    pub fn score(&self, tol: &Tolerance) -> u32 {
        let typical = f64::from(tol.typical_mean_error);
        if typical <= 0.0 {
            return 0;
        }
        let s = (1000.0 * self.mean_relative_error() / typical).round();
        if s.is_nan() {
            u32::MAX
        } else {
            s.clamp(0.0, f64::from(u32::MAX)) as u32
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
    let found = compare_entries(&entries, row, relative);
    report.entries += TOP_K;
    report.value_mismatches += found.value_mismatches;
    report.index_mismatches += found.index_mismatches;
    report.max_relative_error = report.max_relative_error.max(found.max_error);
    report.sum_relative_error += found.sum_error;
}

/// Compares the recomputed delta row of the `pick`-th delta pick of chunk `chunk` with the
/// commitment's delta entries for it (an adapted claim), adding to `report`'s delta counts;
/// the row's own words go to `report.recomputed` (whose open token is the pick's). A claim
/// without such entries counts every entry a mismatch.
pub fn compare_delta_row(
    commitment: &ActivationCommitment,
    (chunk, pick): (usize, usize),
    row: &[f32],
    relative: f32,
    report: &mut VerifyReport,
) {
    if let Ok(words) = row_words(row) {
        report.recomputed.push_delta_words(&words);
    }
    report.delta_entries += TOP_K;
    let Some(entries) = commitment.delta_entries(chunk, pick) else {
        report.delta_value_mismatches += TOP_K;
        report.delta_index_mismatches += TOP_K;
        report.delta_max_relative_error = f32::INFINITY;
        report.delta_sum_relative_error += TOP_K as f64;
        return;
    };
    let found = compare_entries(&entries, row, relative);
    report.delta_value_mismatches += found.value_mismatches;
    report.delta_index_mismatches += found.index_mismatches;
    report.delta_max_relative_error = report.delta_max_relative_error.max(found.max_error);
    report.delta_sum_relative_error += found.sum_error;
}

/// What comparing one row's committed entries with the recomputed row found.
struct RowFindings {
    value_mismatches: usize,
    index_mismatches: usize,
    max_error: f32,
    sum_error: f64,
}

/// Each committed value against the recomputed value of its dimension (relative error), and
/// each committed dimension against the recomputed row's top [`TOP_K`] + [`INDEX_SLACK`].
fn compare_entries(entries: &[Entry; TOP_K], row: &[f32], relative: f32) -> RowFindings {
    let mut f =
        RowFindings { value_mismatches: 0, index_mismatches: 0, max_error: 0.0, sum_error: 0.0 };
    let top = top_dims(row, TOP_K + INDEX_SLACK);
    for e in entries {
        let dim = e.dim as usize;
        if !top.contains(&dim) {
            f.index_mismatches += 1;
        }
        let Some(&r) = row.get(dim) else {
            f.value_mismatches += 1;
            continue;
        };
        let scale = r.abs().max(e.value.abs()).max(f32::MIN_POSITIVE);
        let err = (r - e.value).abs() / scale;
        let err = if err.is_nan() { f32::INFINITY } else { err };
        if err > relative {
            f.value_mismatches += 1;
        }
        f.max_error = f.max_error.max(err);
        f.sum_error += f64::from(err.min(1e6));
    }
    f
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
    fn committed_values_keep_their_words_within_the_packed_range() {
        // In range (2^-30 up to 2^32): the word comes back unchanged; below: zero (sign
        // kept); above, and infinities: infinite; NaN stays NaN.
        for v in [1.0f32, -3.5, 1e-9, -2e9, 0.0, 0.000_123_4, 65_504.0] {
            let word = shorten(v) << DIM_BITS | 7;
            assert_eq!(pack_word(word) & (MAX_DIMS as u32 - 1), 7);
            assert_eq!(widen(pack_word(word) >> DIM_BITS), shorten(v), "{v}");
        }
        let back = |v: f32| lengthen(widen(pack_word(shorten(v) << DIM_BITS) >> DIM_BITS));
        assert_eq!(back(1e-12), 0.0);
        assert_eq!(back(-1e-12).to_bits(), (-0.0f32).to_bits());
        assert_eq!(back(1e12), f32::INFINITY);
        assert_eq!(back(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert!(back(f32::NAN).is_nan());
        assert!(back(f32::from_bits(0x7f80_0001)).is_nan(), "a NaN with low mantissa bits");
        assert!(pack_word(u32::MAX) < 1 << ENTRY_BITS);
    }

    #[test]
    fn entries_pack_dimension_and_value() {
        let mut row = vec![0.0f32; MAX_DIMS];
        row[MAX_DIMS - 1] = -9.25;
        row[3] = 7.0;
        let mut c = ActivationCommitment::new(false);
        c.push_row(&row).unwrap();
        c.seal(&[], true);
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
    fn the_vnni_host_format_replays_exactly_and_falls_back_to_the_host_one_in_general() {
        let (host, vnni) = (
            Tolerance::for_format(NumericFormat::Host),
            Tolerance::for_format(NumericFormat::HostVnni),
        );
        assert_eq!(vnni, Tolerance { replay_tie: 0.0, ..host }, "only the near tie differs");
        assert_eq!(NumericFormat::HostVnni.general(), NumericFormat::Host);
        assert_eq!(NumericFormat::CudaBf16.general(), NumericFormat::CudaBf16);
        // What the two ties do to a replay: `sampling`'s a_replay_accepts_the_pick_and_near_ties_only.
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
    fn adapted_commitments_seal_delta_picks_per_chunk() {
        // 255 bytes per 32 tokens with an adapter ((32 + 2) x 2 entries of 30 bits), 240
        // without; a partial chunk rounds up to whole bytes.
        assert_eq!(encoded_len(32, true), 255);
        assert_eq!(encoded_len(32, false), 240);
        assert_eq!(encoded_len(40, true), 255 + (8 + 2) * 60 / 8);
        assert_eq!(encoded_len(3, true), 38, "(3 + 2) x 60 bits = 300 bits, in 38 bytes");
        assert_eq!(encoded_len(1, false), 8);
        // Every length decodes back to its token count, and no other length decodes.
        for n in 0..100 {
            for adapted in [false, true] {
                let c = ActivationCommitment::from_bytes(vec![0; encoded_len(n, adapted)], adapted)
                    .unwrap();
                assert_eq!(c.tokens(), n, "{n} {adapted}");
            }
        }
        assert!(ActivationCommitment::from_bytes(vec![0; 24], true).is_err());

        // Picks: distinct, ascending, inside the chunk, a function of the chunk's tokens.
        let tokens: Vec<u32> = (0..40).map(|t| t * 31 % 17 + 100).collect();
        let picks = delta_picks(0, &tokens[..32]);
        assert_eq!(picks.len(), DELTA_PICKS);
        assert!(picks.windows(2).all(|w| w[0] < w[1]) && picks[1] < 32, "{picks:?}");
        assert_eq!(picks, delta_picks(0, &tokens[..32]));
        let moved: Vec<Vec<usize>> =
            (0..8u32).map(|t| delta_picks(0, &[&tokens[..31], &[t][..]].concat())).collect();
        assert!(moved.iter().any(|p| *p != picks), "the last token moves the picks");
        assert_eq!(delta_picks(1, &tokens[32..33]), vec![0]);
        assert_eq!(delta_picks(1, &tokens[32..34]), vec![0, 1]);

        // A generator pushes every token's hidden and delta words; the picks are sealed.
        let w = |v: f32, d: u32| (shorten(v) << DIM_BITS) | d;
        let hidden = |t: usize| [w(1.0 + t as f32 / 512.0, 1), w(-2.0, 2)];
        let delta = |t: usize| [w(-0.25 - t as f32 / 2048.0, 5), w(1e-3, MAX_DIMS as u32 - 1)];
        let mut c = ActivationCommitment::new(true);
        for t in 0..40 {
            c.push_words(&hidden(t));
            c.push_delta_words(&delta(t));
            c.seal(&tokens[..t + 1], false);
            assert_eq!(c.tokens(), t + 1);
        }
        assert_eq!(c.as_bytes().len(), encoded_len(32, true), "the partial chunk stays open");
        c.seal(&tokens, true);
        assert_eq!(c.as_bytes().len(), encoded_len(40, true));
        let word = |e: Entry| (shorten(e.value) << DIM_BITS) | e.dim;
        for t in 0..40 {
            assert_eq!(c.entries(t).map(|[a, b]| [word(a), word(b)]), Some(hidden(t)), "{t}");
        }
        for (chunk, range) in [(0, 0..32), (1, 32..40)] {
            for (i, p) in delta_picks(chunk, &tokens[range.clone()]).into_iter().enumerate() {
                let got = c.delta_entries(chunk, i).map(|[a, b]| [word(a), word(b)]);
                assert_eq!(got, Some(delta(range.start + p)), "chunk {chunk} pick {i}");
            }
        }
        assert_eq!(c.delta_entries(1, DELTA_PICKS), None);
        let again = ActivationCommitment::from_bytes(c.as_bytes().to_vec(), true).unwrap();
        assert_eq!(again, c);
        assert!(ActivationCommitment::new(false).delta_entries(0, 0).is_none());
    }

    #[test]
    fn delta_checks_catch_a_zero_or_foreign_delta() {
        let tol = Tolerance::for_format(NumericFormat::CudaBf16);
        let delta: Vec<f32> = (0..64).map(|d| ((d * 37 % 23) as f32 - 11.0) * 0.01).collect();
        let other: Vec<f32> = delta.iter().rev().map(|v| v * 1.7).collect();
        let claim = |row: &[f32]| {
            let mut c = ActivationCommitment::new(true);
            c.push_row(&[1.0, 2.0, 3.0]).unwrap();
            c.push_delta_words(&row_words(row).unwrap());
            c.seal(&[5], true);
            c
        };
        let check = |c: &ActivationCommitment, recomputed: &[f32]| {
            let mut r = VerifyReport::new(c);
            compare_row(c, 0, &[1.0, 2.0, 3.0], tol.relative, &mut r);
            compare_delta_row(c, (0, 0), recomputed, tol.delta_relative, &mut r);
            r
        };
        // Honest, with a recomputed delta 2% off: passes.
        let near: Vec<f32> = delta.iter().map(|v| v * 1.02).collect();
        let honest = check(&claim(&delta), &near);
        assert_eq!(honest.delta_entries, TOP_K);
        assert!(honest.passes(&tol), "{honest:?}");
        // The adapter skipped (a zero delta) or another adapter's: refused.
        for (what, row) in [("zero", vec![0.0; 64]), ("other", other)] {
            let r = check(&claim(&row), &delta);
            assert!(!r.passes(&tol), "{what}: {r:?}");
            assert!(r.delta_value_mismatches > 0, "{what}: {r:?}");
        }
        // A claim without delta entries checked as adapted counts as mismatches.
        let mut bare = ActivationCommitment::new(false);
        bare.push_row(&[1.0, 2.0, 3.0]).unwrap();
        bare.seal(&[], true);
        let r = check(&bare, &delta);
        assert_eq!(r.delta_value_mismatches, TOP_K);
        assert!(!r.passes(&tol));
    }

    #[test]
    fn a_commitment_round_trips_and_checks_its_own_rows() {
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|t| {
                (0..64).map(|d| ((t * 7 + d * 13) % 29) as f32 - 14.0 + d as f32 * 0.01).collect()
            })
            .collect();
        let mut c = ActivationCommitment::new(false);
        for r in &rows {
            c.push_row(r).unwrap();
        }
        assert_eq!(c.tokens(), 40);
        assert_eq!(c.as_bytes().len(), encoded_len(32, false), "a full chunk seals at once");
        c.seal(&[], true);
        assert_eq!(c.as_bytes().len(), encoded_len(40, false));
        // 32 tokens fit the 256-byte budget, with an adapter too.
        assert!(encoded_len(CHUNK_TOKENS, false) <= 256 && encoded_len(CHUNK_TOKENS, true) <= 256);
        let again = ActivationCommitment::from_bytes(c.as_bytes().to_vec(), false).unwrap();
        assert_eq!(again, c);
        assert!(ActivationCommitment::from_bytes(vec![0; 9], false).is_err());
        // Padding bits must be zero: one token is 60 bits, in 8 bytes.
        let mut one = ActivationCommitment::new(false);
        one.push_row(&rows[0]).unwrap();
        one.seal(&[], true);
        let mut bytes = one.as_bytes().to_vec();
        assert_eq!(bytes.len(), 8);
        assert!(ActivationCommitment::from_bytes(bytes.clone(), false).is_ok());
        bytes[7] |= 0x80;
        let e = ActivationCommitment::from_bytes(bytes, false).unwrap_err();
        assert!(e.to_string().contains("padding"), "{e}");

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

    #[test]
    fn a_score_is_the_mean_error_in_thousandths_of_the_typical_one() {
        let gpu = Tolerance::for_format(NumericFormat::CudaBf16);
        let mut report = VerifyReport::default();
        // Nothing compared: no error.
        assert_eq!(report.score(&gpu), 0);
        report.entries = 64;
        report.sum_relative_error = 64.0 * f64::from(gpu.typical_mean_error);
        assert_eq!(report.score(&gpu), 1_000);
        report.sum_relative_error *= 2.0;
        assert_eq!(report.score(&gpu), 2_000);
        // The CPU's typical error is smaller: the same error scores higher there.
        assert!(report.score(&Tolerance::default()) > 20_000);
        // Saturating, never wrapping.
        report.sum_relative_error = f64::INFINITY;
        assert_eq!(report.score(&gpu), u32::MAX);
        report.sum_relative_error = f64::NAN;
        assert_eq!(report.score(&gpu), u32::MAX);
    }
}
