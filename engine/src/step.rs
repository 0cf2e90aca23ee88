//! What one engine step hands the model: the input both model paths take (the host path in
//! `model.rs`, the tensor path in `tensor_model.rs`), so that neither imports the other.

use candle_core::DType;
use openledger_kernels::BatchSegments;

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
