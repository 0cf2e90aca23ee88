//! What one engine step hands the model and what it gives back: the input both model paths
//! take (the host path in `model.rs`, the tensor path in `tensor_model.rs`) and their output,
//! so that neither imports the other.

use candle_core::{DType, Tensor};
use openledger_kernels::BatchSegments;

use crate::commitment;
use crate::error::{EngineError, Result};
use crate::kv_cache::BlockTable;

/// One sequence's share of a step: its new tokens, at positions `start..start + tokens.len()`.
#[derive(Clone, Copy)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// The sequence's blocks, already reserved for `start + tokens.len()` positions.
    pub table: &'a BlockTable,
    pub start: usize,
    /// Adapter slot ([`LoraSlots`](crate::LoraSlots)), or `None` for the base model alone.
    pub adapter: Option<u32>,
}

/// Activations' dtype of the tensor path on a GPU.
pub const GPU_DTYPE: DType = DType::BF16;

/// Segment maps of a step, one per projection kind (`None` where no adapter in the batch
/// targets it).
pub(crate) type StepSegments = Vec<Option<BatchSegments>>;

/// The rows a step is asked for beyond its logits, each a list of the step's row indices (the
/// chunks' tokens one after another), in the order their results come back.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepRows<'a> {
    /// Final-norm rows returned whole (what a verifier compares with a commitment).
    pub hidden: &'a [u32],
    /// Final-norm rows whose commitment entries come back ([`commitment::row_words`]).
    pub commit: &'a [u32],
    /// Rows whose LoRA delta at the commitment's layer ([`commitment::delta_layer`], the
    /// first projection the row's adapter targets) comes back whole (a verifier's picks).
    /// Every such row must have an adapter.
    pub delta: &'a [u32],
    /// Rows whose LoRA delta's commitment entries come back (a generator's adapted rows).
    pub delta_commit: &'a [u32],
}

/// What a step computed: each chunk's last-token logits, the asked final-norm rows, and the
/// commitment entries of the rows asked for those.
pub struct StepOutput {
    /// `[chunks, vocab]` f32.
    pub logits: Tensor,
    /// `[hidden_rows, hidden]`, f32 on the host path, the model's dtype on a device.
    pub hidden: Tensor,
    /// The commitment entries of each of the `commit_rows`.
    pub entries: StepEntries,
    /// The delta rows asked ([`StepRows::delta`]), f32, each its projection's width.
    pub delta: Vec<Vec<f32>>,
    /// The commitment entries of each of the [`StepRows::delta_commit`] rows' deltas.
    pub delta_entries: StepEntries,
}

/// The activation-commitment entries of a step's committed rows, [`commitment::TOP_K`]
/// encoded words a row ([`commitment::row_words`]). On a CUDA device they are computed
/// there and their copy to the host is queued behind the step: [`StepEntries::wait`] returns
/// at once when the caller has already waited for the step's logits.
pub struct StepEntries {
    rows: usize,
    words: EntryWords,
}

enum EntryWords {
    /// Encoded on the host, row by row.
    Host(Vec<Vec<u32>>),
    /// `[rows, TOP_K]` words on their way from the device.
    Copying(openledger_kernels::HostCopy),
    /// Parts computed apart (delta rows of different widths), each with the positions its
    /// rows take in the whole.
    Parts(Vec<(StepEntries, Vec<usize>)>),
}

impl StepEntries {
    /// No committed rows.
    pub(crate) fn none() -> Self {
        Self { rows: 0, words: EntryWords::Host(Vec::new()) }
    }

    /// Each row encoded on the host.
    pub(crate) fn of_host_rows<'r>(rows: impl Iterator<Item = &'r [f32]>) -> Result<Self> {
        let words = rows.map(commitment::row_words).collect::<Result<Vec<_>>>()?;
        Ok(Self { rows: words.len(), words: EntryWords::Host(words) })
    }

    /// `[rows, TOP_K]` u32 words computed on a device; their copy to the host starts now.
    pub(crate) fn copying(words: &Tensor) -> Result<Self> {
        let rows = words.dim(0)?;
        if rows == 0 {
            return Ok(Self::none());
        }
        Ok(Self { rows, words: EntryWords::Copying(openledger_kernels::HostCopy::start(words)?) })
    }

    /// Entries assembled from parts: part `k`'s row `i` becomes row `parts[k].1[i]`.
    pub(crate) fn parts(parts: Vec<(StepEntries, Vec<usize>)>) -> Self {
        let rows = parts.iter().map(|(_, at)| at.len()).sum();
        Self { rows, words: EntryWords::Parts(parts) }
    }

    /// Rows committed.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Each committed row's words, in the order the rows were asked.
    pub fn wait(self) -> Result<Vec<Vec<u32>>> {
        match self.words {
            EntryWords::Host(w) => Ok(w),
            EntryWords::Copying(copy) => {
                let flat = copy.wait()?;
                if flat.len() != self.rows * commitment::TOP_K {
                    return Err(EngineError::Backend(format!(
                        "{} commitment words came back for {} rows",
                        flat.len(),
                        self.rows
                    )));
                }
                Ok(flat.chunks_exact(commitment::TOP_K).map(<[u32]>::to_vec).collect())
            },
            EntryWords::Parts(parts) => {
                let mut out = vec![Vec::new(); self.rows];
                for (part, at) in parts {
                    let words = part.wait()?;
                    if words.len() != at.len() {
                        return Err(EngineError::Backend(format!(
                            "{} commitment rows came back for {} asked",
                            words.len(),
                            at.len()
                        )));
                    }
                    for (w, &i) in words.into_iter().zip(&at) {
                        let slot = out.get_mut(i).ok_or_else(|| {
                            EngineError::Backend(format!("commitment row {i} out of range"))
                        })?;
                        *slot = w;
                    }
                }
                Ok(out)
            },
        }
    }
}
