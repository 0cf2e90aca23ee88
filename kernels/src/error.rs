//! Errors of the kernels (SGMV, paged attention): every variant names what was wrong and how
//! to avoid it.

/// Everything that can go wrong when building a segment map, applying LoRA deltas or
/// attending over the paged KV cache.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `adapters` and `tokens_per_request` must have one entry per request.
    #[error("{adapters} adapter ids but {tokens} token counts: give one of each per request")]
    RequestCountMismatch { adapters: usize, tokens: usize },

    /// The resolver given to [`crate::SegmentMap::new`] did not know an adapter of the batch.
    #[error("adapter {adapter} of request {request} is not loaded (the resolver returned None)")]
    UnknownAdapter { adapter: String, request: usize },

    /// Ranks must be at least 1.
    #[error("adapter in slot {slot} has rank 0")]
    ZeroRank { slot: u32 },

    /// A segment's rank must equal the rank of the adapter stored in its slot.
    #[error("segment {segment} expects rank {expected} but slot {slot} holds an adapter of rank {actual}")]
    RankMismatch { segment: usize, slot: u32, expected: usize, actual: usize },

    /// Segment boundaries must start at 0, never decrease and end at the number of tokens.
    #[error("segment starts {starts:?} are not a non-decreasing sequence from 0 to {tokens}")]
    BadSegmentStarts { starts: Vec<u32>, tokens: usize },

    /// Per-segment arrays (slots, ranks, scales) must have one entry per segment.
    #[error("{what} has {actual} entries but there are {segments} segments")]
    SegmentArrayLength { what: &'static str, actual: usize, segments: usize },

    /// Each row of x / y may belong to at most one segment token.
    #[error("row {row} appears twice in the segment map (each row may take one adapter)")]
    DuplicateRow { row: u32 },

    /// A segment refers to a row beyond the batch.
    #[error("row {row} is out of range for a batch of {rows} rows")]
    RowOutOfRange { row: u32, rows: usize },

    /// A quantized matrix or activation batch of inconsistent size (the message says which).
    #[error("quantized matmul: {0}")]
    Quantized(String),

    /// Row-quantized adapter weights in a form the kernels do not read (the message says which).
    #[error("quantized adapter: {0}")]
    QuantizedAdapter(String),

    /// A tensor or buffer has the wrong shape.
    #[error("{tensor}: expected shape {expected:?}, got {actual:?}")]
    Shape { tensor: String, expected: Vec<usize>, actual: Vec<usize> },

    /// A segment names a slot that holds no adapter.
    #[error(
        "segment {segment} uses slot {slot}, which holds no adapter (table has {slots} slots)"
    )]
    EmptySlot { segment: usize, slot: u32, slots: usize },

    /// All tensors of one call must share one dtype.
    #[error("{tensor} has dtype {actual:?}, expected {expected:?}")]
    DType { tensor: String, expected: candle_core::DType, actual: candle_core::DType },

    /// All tensors of one call must live on one device.
    #[error("{tensor} is on {actual}, expected {expected}")]
    Device { tensor: String, expected: String, actual: String },

    /// Kernels read rows in place: pass a contiguous tensor (`Tensor::contiguous`).
    #[error("{tensor} is not contiguous (call .contiguous() first)")]
    NotContiguous { tensor: String },

    /// Slots are indices into the adapter table.
    #[error("slot {slot} is out of range for an adapter table of {slots} slots")]
    SlotOutOfRange { slot: u32, slots: usize },

    /// The dtype is not one of f32, bf16, f16.
    #[error("dtype {0:?} is not supported by these kernels (use f32, bf16 or f16)")]
    UnsupportedDType(candle_core::DType),

    /// The device is not supported (CUDA without the `cuda` feature, or Metal).
    #[error("device {0} is not supported by this build of openledger-kernels")]
    UnsupportedDevice(String),

    /// Paged attention: the head size has no kernel (64 and 128 are supported).
    #[error("paged attention: head_dim {0} is not supported (use 64 or 128)")]
    UnsupportedHeadDim(usize),

    /// Paged attention: query heads must split evenly over the key/value heads (GQA).
    #[error("paged attention: {num_heads} query heads do not split evenly over {num_kv_heads} key/value heads")]
    HeadGroups { num_heads: usize, num_kv_heads: usize },

    /// Paged attention: block sizes must be powers of two (positions are split with shifts).
    #[error("paged attention: block_size {0} is not a power of two")]
    BlockSize(usize),

    /// Paged attention: a sequence's block table names a block beyond the cache.
    #[error("paged attention: sequence {seq} maps positions of its block {index} to cache block {block}, but the cache has {num_blocks} blocks")]
    BlockOutOfRange { seq: usize, index: usize, block: u32, num_blocks: usize },

    /// Paged attention: a context longer than its block table covers.
    #[error("paged attention: sequence {seq} has context_len {context_len} but its block table covers {capacity} positions ({blocks} blocks of {block_size})")]
    ContextOverCapacity {
        seq: usize,
        context_len: usize,
        capacity: usize,
        blocks: usize,
        block_size: usize,
    },

    /// Paged attention: a context longer than the `max_context_len` given for the batch.
    #[error("paged attention: sequence {seq} has context_len {context_len} > max_context_len {max_context_len}")]
    ContextOverMax { seq: usize, context_len: usize, max_context_len: usize },

    /// Paged attention: the block tables were validated for another cache geometry.
    #[error("paged attention: block tables were checked for block_size {expected}, the cache has block_size {actual}")]
    BlockSizeMismatch { expected: usize, actual: usize },

    /// The CUDA kernels read cache rows as 16-byte vectors: a view that starts mid-vector
    /// cannot be read in place.
    #[error("{tensor} does not start on a 16-byte boundary (pass the whole cache tensor)")]
    Misaligned { tensor: String },

    /// An error from candle while reading or creating a tensor.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),

    /// An error from the CUDA driver or runtime.
    #[error("cuda: {0}")]
    Cuda(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, KernelError>;

/// Checks that `actual` equals `expected`, naming `tensor` otherwise.
pub(crate) fn check_shape(tensor: &str, expected: &[usize], actual: &[usize]) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::Shape {
            tensor: tensor.to_string(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        })
    }
}
