//! One request inside the engine: its tokens, KV blocks, adapter pin and sampler, and the
//! text it has streamed so far.
//!
//! Text is produced incrementally ([`Detokenizer`]): each step decodes a window of a few
//! tokens, never the whole generation, and holds back an incomplete UTF-8 character until
//! the token that completes it. Stop strings are searched only in text not streamed yet.

use std::sync::mpsc::Sender;

use tokenizers::Tokenizer;

use crate::commitment::{ActivationCommitment, Tolerance, VerifyReport};
use crate::kv_cache::BlockTable;
use crate::sampling::Sampler;
use crate::step::SeqChunk;

/// Turns generated token ids into text a piece at a time, with two offsets into the tokens:
/// `prefix`, where the decoded window starts (the token before the new ones, so a tokenizer
/// that drops a leading space at the start of a decode drops it from both texts it
/// compares), and `read`, the end of what has been turned into text.
///
/// The pieces concatenate to the decode of all the tokens at once, for byte-level and
/// SentencePiece-style tokenizers alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detokenizer {
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// The text that `tokens` (all generated so far; earlier calls saw a prefix of them)
    /// add, or `""` while they end inside a multi-byte character.
    pub fn next(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> String {
        self.advance(tokenizer, tokens, false)
    }

    /// Whatever [`Detokenizer::next`] still holds back (an unfinished character decodes to
    /// U+FFFD): for the last piece of a finished sequence.
    pub fn flush(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> String {
        self.advance(tokenizer, tokens, true)
    }

    fn advance(&mut self, tokenizer: &Tokenizer, tokens: &[u32], flush: bool) -> String {
        let read = self.read.min(tokens.len());
        let prefix = self.prefix.min(read);
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
        let before = decode(&tokens[prefix..read]);
        let now = decode(&tokens[prefix..]);
        if now.len() <= before.len() || (!flush && now.ends_with('\u{FFFD}')) {
            return String::new();
        }
        let Some(new) = now.get(before.len()..) else { return String::new() };
        self.prefix = read;
        self.read = tokens.len();
        new.to_string()
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token.
    Eos,
    /// A stop string.
    Stop,
    /// `max_tokens`, or the model's context length.
    Length,
}

/// What the engine streams back for a request.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// A generated token and the text it completes (may be empty while a multi-byte
    /// character or a possible stop string is pending).
    Token { id: u32, text: String },
    /// The request is done; no more events follow. `activations` is the commitment to the
    /// generated tokens' activations ([`crate::commitment`]) when the engine commits.
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        activations: Option<ActivationCommitment>,
    },
    /// A verification request ([`crate::Engine::submit_verification`]) is done: how the
    /// recomputed activations compare with the commitment. No more events follow.
    Verified(VerifyReport),
    /// The request failed; no more events follow.
    Failed(String),
}

/// Identifies a submitted request.
pub type RequestId = u64;

/// A running request.
pub(crate) struct Sequence {
    pub id: RequestId,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    pub processed: usize,
    pub table: BlockTable,
    /// The adapter's name and compute slot, while pinned.
    pub adapter: Option<(String, u32)>,
    pub sampler: Sampler,
    pub tx: Sender<StreamEvent>,
    /// Generated tokens already streamed as events.
    emitted: usize,
    detokenizer: Detokenizer,
    /// The generated text so far (complete characters).
    text: String,
    /// Bytes of `text` already streamed.
    sent: usize,
    /// The commitment to the generated tokens' activations so far, when committing.
    pub activations: Option<ActivationCommitment>,
    /// A verification request's claim and findings so far.
    pub verify: Option<Verification>,
}

/// A verification in progress: the claimed commitment, the position of the row that picked
/// the output's first token (the prompt's last), and what the recomputed rows showed so far.
pub(crate) struct Verification {
    pub claimed: ActivationCommitment,
    pub first_row: usize,
    /// Rows to compare (the output's tokens).
    pub rows: usize,
    /// The bounds each row and replayed token is compared within.
    pub tolerance: Tolerance,
    pub report: VerifyReport,
    /// The request's sampling, replayed over the recomputed logits, when it is known.
    pub replay: Option<Replay>,
    /// The output checked (what the delta picks and the recomputed commitment's seal hash).
    pub output: Vec<u32>,
    /// For each output token, its place among the delta picks (chunk, pick) when the claim
    /// has an adapter and the token is one ([`crate::commitment::delta_picks`]).
    pub picks: Vec<Option<(usize, usize)>>,
}

impl Verification {
    /// Each output token's place among the delta picks of an adapted claim (`adapted`).
    pub fn picks_of(output: &[u32], adapted: bool) -> Vec<Option<(usize, usize)>> {
        let mut picks = vec![None; output.len()];
        if adapted {
            let chunk = crate::commitment::CHUNK_TOKENS;
            for (c, tokens) in output.chunks(chunk).enumerate() {
                for (i, p) in crate::commitment::delta_picks(c, tokens).into_iter().enumerate() {
                    picks[c * chunk + p] = Some((c, i));
                }
            }
        }
        picks
    }
}

/// A generation's sampling run again by its verifier: the sampler seeded as the request's
/// was, and the output it has to reproduce.
pub(crate) struct Replay {
    pub sampler: Sampler,
    pub output: Vec<u32>,
}

/// What finishing a sequence needs from the model.
pub(crate) struct Limits<'a> {
    pub eos: &'a [u32],
    pub max_position: usize,
}

impl Sequence {
    pub fn new(
        id: RequestId,
        tokens: Vec<u32>,
        table: BlockTable,
        adapter: Option<(String, u32)>,
        sampler: Sampler,
        tx: Sender<StreamEvent>,
    ) -> Self {
        Self {
            id,
            prompt_len: tokens.len(),
            tokens,
            processed: 0,
            table,
            adapter,
            sampler,
            tx,
            emitted: 0,
            detokenizer: Detokenizer::default(),
            text: String::new(),
            sent: 0,
            activations: None,
            verify: None,
        }
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Which rows of this step's chunk of `n` tokens (offsets into the chunk) the sequence
    /// needs through the final norm: a verification every row it checks, a committing
    /// generation the row that samples its next token.
    pub fn rows_to_read(&self, n: usize) -> std::ops::Range<usize> {
        let start = self.processed;
        if let Some(v) = &self.verify {
            let from = v.first_row.clamp(start, start + n);
            let to = (v.first_row + v.rows).clamp(start, start + n);
            return from - start..to - start;
        }
        if self.activations.is_some() && start + n == self.tokens.len() && n > 0 {
            return n - 1..n;
        }
        0..0
    }

    /// Whether the row at offset `r` of this step's chunk (one [`Self::rows_to_read`] named)
    /// also needs its adapter delta: every committed row of an adapted generation, a
    /// verification's delta picks.
    pub fn reads_delta(&self, r: usize) -> bool {
        if let Some(v) = &self.verify {
            let token = (self.processed + r).checked_sub(v.first_row);
            return token.and_then(|t| v.picks.get(t).copied().flatten()).is_some();
        }
        self.adapter.is_some() && self.activations.as_ref().is_some_and(|c| c.is_adapted())
    }

    /// Takes the delta row at offset `r` of this step's chunk ([`Self::reads_delta`]; after
    /// [`Self::take_row`] of the same row) into a verification.
    pub fn take_delta_row(&mut self, r: usize, row: &[f32]) {
        if let Some(v) = &mut self.verify {
            let Some(token) = (self.processed + r).checked_sub(v.first_row) else { return };
            if let Some(Some(pick)) = v.picks.get(token).copied() {
                let tol = v.tolerance.delta_relative;
                crate::commitment::compare_delta_row(&v.claimed, pick, row, tol, &mut v.report);
            }
        }
    }

    /// Whether this is a verification that replays the request's sampling (its rows' logits
    /// are needed too).
    pub fn replays(&self) -> bool {
        self.verify.as_ref().is_some_and(|v| v.replay.is_some())
    }

    /// Takes the final-norm row at offset `r` of this step's chunk (one
    /// [`Self::rows_to_read`] named; called before `processed` moves on), and its logits
    /// when [`Self::replays`], into a verification (a generation takes its rows' commitment
    /// entries instead, computed where the rows are).
    pub fn take_row(
        &mut self,
        r: usize,
        row: &[f32],
        logits: Option<&[f32]>,
    ) -> crate::error::Result<()> {
        if let Some(v) = &mut self.verify {
            let token = self.processed + r - v.first_row;
            let tol = &v.tolerance;
            crate::commitment::compare_row(&v.claimed, token, row, tol.relative, &mut v.report);
            if let (Some(replay), Some(logits)) = (&mut v.replay, logits) {
                // Rows arrive in position order, so the sampler draws as the generator did.
                v.report.replayed_tokens += 1;
                let found = replay
                    .output
                    .get(token)
                    .map(|&t| replay.sampler.replay(logits, t, tol.replay_tie));
                let (accepted, gap) = found.map_or((false, f32::INFINITY), |r| (r.accepted, r.gap));
                if !accepted {
                    v.report.replay_mismatches += 1;
                }
                v.report.max_replay_gap = v.report.max_replay_gap.max(gap);
            }
        }
        Ok(())
    }

    /// Whether this is a generation whose next step is greedy decode: one token left to
    /// process (the one its last step picked), drawn by argmax.
    pub fn decodes_greedily(&self) -> bool {
        self.processed + 1 == self.tokens.len() && self.verify.is_none() && self.sampler.is_greedy()
    }

    /// Takes a committed row's commitment entries (`words`) and, for an adapted row, its
    /// delta's (`delta`), when this sequence commits.
    pub fn push_entries(&mut self, words: &[u32], delta: Option<&[u32]>) {
        if let Some(c) = self.activations.as_mut() {
            c.push_words(words);
            if let Some(d) = delta {
                c.push_delta_words(d);
            }
        }
    }

    /// Appends the token this step picked; a commitment chunk it completes is sealed.
    pub fn push_token(&mut self, t: u32) {
        self.tokens.push(t);
        if let Some(c) = self.activations.as_mut() {
            c.seal(&self.tokens[self.prompt_len..], false);
        }
    }

    /// The next `n` unprocessed tokens as a step's chunk.
    pub fn chunk(&self, n: usize) -> SeqChunk<'_> {
        SeqChunk {
            tokens: &self.tokens[self.processed..self.processed + n],
            table: &self.table,
            start: self.processed,
            adapter: self.adapter.as_ref().map(|a| a.1),
        }
    }

    /// Streams the newest token and the text it settles; returns why the sequence finished,
    /// if it did.
    ///
    /// Text that could still become the start of a stop string is held back until the next
    /// token settles it; a stop string ends the text where it begins.
    pub fn emit(&mut self, tokenizer: &Tokenizer, limits: &Limits<'_>) -> Option<FinishReason> {
        let generated = &self.tokens[self.prompt_len..];
        let &last = generated.last()?;
        if generated.len() <= self.emitted {
            return None;
        }
        self.emitted = generated.len();
        let params = self.sampler.params();
        let piece = self.detokenizer.next(tokenizer, generated);
        self.text.push_str(&piece);
        // A stop string that began in streamed text would have been complete, and found,
        // before that text was streamed (enough characters are always held back).
        let unsent = self.text.get(self.sent..).unwrap_or_default();
        let stop_at = params
            .stop
            .iter()
            .filter(|p| !p.is_empty())
            .filter_map(|p| unsent.find(p.as_str()))
            .min()
            .map(|at| self.sent + at);
        let reason = if stop_at.is_some() {
            Some(FinishReason::Stop)
        } else if limits.eos.contains(&last) && !params.ignore_eos {
            Some(FinishReason::Eos)
        } else if generated.len() >= params.max_tokens || self.tokens.len() >= limits.max_position {
            Some(FinishReason::Length)
        } else {
            None
        };
        let text = &mut self.text;
        let end = match (reason, stop_at) {
            (_, Some(at)) => at,
            (Some(_), None) => {
                text.push_str(&self.detokenizer.flush(tokenizer, &self.tokens[self.prompt_len..]));
                text.len()
            },
            (None, None) => {
                let hold = params.stop.iter().map(|p| p.chars().count()).max().unwrap_or(1);
                if hold > 1 {
                    text.char_indices().rev().nth(hold - 1).map_or(0, |(b, _)| b)
                } else {
                    text.len()
                }
            },
        };
        let end = end.max(self.sent.min(text.len()));
        let new = text.get(self.sent..end).unwrap_or_default().to_string();
        self.sent = end;
        let _ = self.tx.send(StreamEvent::Token { id: last, text: new });
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SentencePiece-style tokenizer (Metaspace: a word's leading space is part of its
    /// token, and dropped at the start of a decode).
    fn metaspace() -> Tokenizer {
        let json = r#"{
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "post_processor": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
            "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
            "model": {"type": "WordLevel", "unk_token": "<unk>",
                      "vocab": {"<unk>": 0, "▁hello": 1, "▁world": 2, "▁grüße": 3, "!": 4}}
        }"#;
        json.parse().expect("tokenizer")
    }

    #[test]
    fn pieces_keep_the_spaces_a_window_decode_would_drop() {
        let tok = metaspace();
        let ids = [1u32, 2, 3, 4, 2];
        let full = tok.decode(&ids, true).expect("decode");
        assert_eq!(full, "hello world grüße! world");
        assert_eq!(
            tok.decode(&ids[1..2], true).expect("decode"),
            "world",
            "the space a window drops"
        );
        let mut d = Detokenizer::default();
        let pieces: Vec<String> = (1..=ids.len()).map(|n| d.next(&tok, &ids[..n])).collect();
        assert_eq!(pieces, ["hello", " world", " grüße", "!", " world"]);
        assert_eq!(d.flush(&tok, &ids), "");
    }
}
