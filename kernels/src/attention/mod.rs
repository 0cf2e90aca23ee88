//! Decode attention over the paged KV cache: one new query token per sequence attends to
//! every cached position of that sequence, reading keys and values block by block through
//! the sequence's block table.
//!
//! Layouts are the engine's (`engine/src/kv_cache.rs`):
//! - `q`: `[num_seqs, num_heads, head_dim]`;
//! - `k_cache`, `v_cache`: `[num_blocks, block_size, num_kv_heads, head_dim]`, one layer's
//!   pool; position `p` of a sequence lives in block `block_tables[seq][p / block_size]`, slot
//!   `p % block_size`;
//! - `block_tables`: u32 `[num_seqs, max_blocks_per_seq]` (entries past a sequence's last
//!   block are never read, so they may hold anything);
//! - `context_lens`: u32 `[num_seqs]`, positions `0..context_len` attended (a context of 0
//!   gives a zero output, for padding rows).
//!
//! Query head `h` reads key/value head `h / (num_heads / num_kv_heads)` (grouped-query
//! attention). Head sizes 64 and 128, block sizes that are powers of two; f32, bf16 and f16
//! everywhere, arithmetic in f32.
//!
//! Three implementations compute the same function: `cpu` (rayon over sequences and
//! key/value heads), a CUDA kernel (feature `cuda`, `cuda/paged_attention.cu`: the context
//! split into fixed 512-position partitions, each read once by one block for all the query
//! heads of a key/value head, whose partial softmax results a second launch merges with the
//! online-softmax rescaling, so a few long sequences still fill the GPU) and the f64
//! [`reference`] the tests compare both against. Results never depend on what else is in the
//! batch: the partitioning and every reduction order are fixed by the sequence's own length
//! and the model's shape.
//!
//! The engine validates a step's block tables once ([`DecodeBlocks::new`], or
//! [`DecodeBlocks::from_host`]) and calls [`paged_decode_attention_with`] for every layer;
//! [`paged_decode_attention`] does both in one call. The CPU engine's host path, whose
//! activations and cache are plain f32 buffers, calls the same CPU implementation through
//! [`paged_decode_attention_host`]: prefill rows are rows whose context ends at their own
//! position, so one function serves both.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod op;
mod prefill;
#[cfg(feature = "cuda")]
mod prefill_cuda;
pub mod reference;

#[cfg(feature = "cuda")]
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::element::Element;
use crate::error::{check_shape, KernelError, Result};

pub use op::{paged_decode_attention_into, paged_decode_attention_with};
pub use prefill::{paged_prefill_attention, PrefillBlocks, PrefillChunk};

/// Head sizes with a kernel.
pub const HEAD_DIMS: [usize; 2] = [64, 128];

/// One decode step's block tables and context lengths, validated once and shared by every
/// layer's attention call (the tables are read back to the host here, not per layer). On
/// CUDA the first call uploads them, with the scratch for partial results, and later calls
/// reuse both: use one `DecodeBlocks` with one CUDA device.
pub struct DecodeBlocks {
    num_seqs: usize,
    max_blocks_per_seq: usize,
    block_size: usize,
    max_context_len: usize,
    tables: Vec<u32>,
    context_lens: Vec<u32>,
    /// The largest cache block any sequence reads, with the sequence and table index
    /// naming it (for the error when a cache is smaller).
    max_block: Option<(u32, usize, usize)>,
    /// Whether the CUDA launches take their shape from the bounds alone
    /// ([`DecodeBlocks::fixed_launch`]).
    fixed_launch: bool,
    /// Device copies of `tables` and `context_lens`, uploaded on the first CUDA call.
    #[cfg(feature = "cuda")]
    pub(crate) gpu: Mutex<Option<std::sync::Arc<cuda::DeviceBlocks>>>,
}

impl DecodeBlocks {
    /// Validates `block_tables` (u32 `[num_seqs, max_blocks_per_seq]`) and `context_lens`
    /// (u32 `[num_seqs]`), on any device, for a cache of `block_size` positions per block:
    /// every context fits its table and `max_context_len`. Block indices are checked against
    /// the cache at each call.
    pub fn new(
        block_tables: &Tensor,
        context_lens: &Tensor,
        block_size: usize,
        max_context_len: usize,
    ) -> Result<Self> {
        if !block_size.is_power_of_two() {
            return Err(KernelError::BlockSize(block_size));
        }
        for (t, name) in [(block_tables, "block_tables"), (context_lens, "context_lens")] {
            if t.dtype() != DType::U32 {
                return Err(KernelError::DType {
                    tensor: name.to_string(),
                    expected: DType::U32,
                    actual: t.dtype(),
                });
            }
        }
        let &[num_seqs, max_blocks_per_seq] = block_tables.dims() else {
            return Err(KernelError::Shape {
                tensor: "block_tables (expected [num_seqs, max_blocks_per_seq])".into(),
                expected: vec![context_lens.dims().first().copied().unwrap_or(0), 0],
                actual: block_tables.dims().to_vec(),
            });
        };
        check_shape("context_lens", &[num_seqs], context_lens.dims())?;
        let tables: Vec<u32> = block_tables.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
        let lens: Vec<u32> = context_lens.to_device(&Device::Cpu)?.to_vec1()?;
        Self::from_host(tables, lens, max_blocks_per_seq, block_size, max_context_len)
    }

    /// [`DecodeBlocks::from_host`] from one block list per row (each a prefix of its
    /// sequence's blocks), padded to the longest into the row-major table.
    pub fn from_tables(
        tables: &[&[u32]],
        context_lens: Vec<u32>,
        block_size: usize,
        max_context_len: usize,
    ) -> Result<Self> {
        let width = tables.iter().map(|t| t.len()).max().unwrap_or(1).max(1);
        let mut flat = vec![0u32; tables.len() * width];
        for (row, t) in flat.chunks_exact_mut(width).zip(tables) {
            row[..t.len()].copy_from_slice(t);
        }
        Self::from_host(flat, context_lens, width, block_size, max_context_len)
    }

    /// [`DecodeBlocks::new`] from host vectors: `tables` is `[num_seqs, max_blocks_per_seq]`
    /// row-major, `context_lens` `[num_seqs]`. Any block size of at least one position is
    /// accepted here; the tensor calls also need a power of two.
    pub fn from_host(
        tables: Vec<u32>,
        context_lens: Vec<u32>,
        max_blocks_per_seq: usize,
        block_size: usize,
        max_context_len: usize,
    ) -> Result<Self> {
        if block_size == 0 {
            return Err(KernelError::BlockSize(block_size));
        }
        let num_seqs = context_lens.len();
        check_shape(
            "block_tables (expected [num_seqs, max_blocks_per_seq])",
            &[num_seqs * max_blocks_per_seq],
            &[tables.len()],
        )?;
        let lens = context_lens;
        let mut max_block: Option<(u32, usize, usize)> = None;
        for (seq, &len) in lens.iter().enumerate() {
            let len = len as usize;
            if len > max_context_len {
                return Err(KernelError::ContextOverMax { seq, context_len: len, max_context_len });
            }
            let capacity = max_blocks_per_seq * block_size;
            if len > capacity {
                return Err(KernelError::ContextOverCapacity {
                    seq,
                    context_len: len,
                    capacity,
                    blocks: max_blocks_per_seq,
                    block_size,
                });
            }
            let row = &tables[seq * max_blocks_per_seq..(seq + 1) * max_blocks_per_seq];
            for (index, &block) in row.iter().take(len.div_ceil(block_size)).enumerate() {
                if max_block.is_none_or(|(b, _, _)| block > b) {
                    max_block = Some((block, seq, index));
                }
            }
        }
        Ok(Self {
            num_seqs,
            max_blocks_per_seq,
            block_size,
            max_context_len,
            tables,
            context_lens: lens,
            max_block,
            fixed_launch: false,
            #[cfg(feature = "cuda")]
            gpu: Mutex::new(None),
        })
    }

    /// The same tables, launched on CUDA with a shape that depends on `max_context_len` and
    /// the table's width alone, never on the current lengths (the partitions' merge runs
    /// whenever `max_context_len` spans more than one partition; it skips sequences that
    /// have one). For a step captured in a CUDA graph and replayed after
    /// [`DecodeBlocks::overwrite`] with other lengths. Results are the same bits either way.
    pub fn fixed_launch(mut self) -> Self {
        self.fixed_launch = true;
        self
    }

    /// Whether [`DecodeBlocks::fixed_launch`] was asked for.
    pub fn is_fixed_launch(&self) -> bool {
        self.fixed_launch
    }

    /// Replaces the tables and lengths with others of the same shape and bounds, checked as
    /// [`DecodeBlocks::from_host`] checks them and against a cache of `num_blocks` blocks;
    /// when they were uploaded, the device copies are rewritten in place (the buffers a
    /// captured CUDA graph reads), ordered on candle's stream after the work queued there.
    pub fn overwrite(
        &mut self,
        tables: Vec<u32>,
        context_lens: Vec<u32>,
        num_blocks: usize,
    ) -> Result<()> {
        check_shape(
            "context_lens (DecodeBlocks keeps its rows)",
            &[self.num_seqs],
            &[context_lens.len()],
        )?;
        let new = Self::from_host(
            tables,
            context_lens,
            self.max_blocks_per_seq,
            self.block_size,
            self.max_context_len,
        )?;
        new.check_cache(num_blocks, self.block_size)?;
        #[cfg(feature = "cuda")]
        cuda::overwrite_device(self, &new.tables, &new.context_lens)?;
        self.tables = new.tables;
        self.context_lens = new.context_lens;
        self.max_block = new.max_block;
        Ok(())
    }

    /// Number of sequences.
    pub fn num_seqs(&self) -> usize {
        self.num_seqs
    }

    /// Positions per cache block these tables were checked for.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Columns of the block table.
    pub fn max_blocks_per_seq(&self) -> usize {
        self.max_blocks_per_seq
    }

    /// The bound every context length was checked against.
    pub fn max_context_len(&self) -> usize {
        self.max_context_len
    }

    /// Context length of each sequence.
    pub fn context_lens(&self) -> &[u32] {
        &self.context_lens
    }

    /// The block table, row-major `[num_seqs, max_blocks_per_seq]`.
    pub fn tables(&self) -> &[u32] {
        &self.tables
    }

    /// Positions read over the whole batch (the sum of the context lengths).
    pub fn total_positions(&self) -> usize {
        self.context_lens.iter().map(|&l| l as usize).sum()
    }

    /// Checks that a cache of `num_blocks` blocks of `block_size` holds every block read.
    fn check_cache(&self, num_blocks: usize, block_size: usize) -> Result<()> {
        check_cache(self.block_size, self.max_block, num_blocks, block_size)
    }
}

/// Checks that a cache of `num_blocks` blocks of `block_size` positions fits tables built for
/// blocks of `expected` positions whose largest entry is `max_block` ((block, sequence or
/// chunk, index in its table), none for tables that read nothing).
pub(crate) fn check_cache(
    expected: usize,
    max_block: Option<(u32, usize, usize)>,
    num_blocks: usize,
    block_size: usize,
) -> Result<()> {
    if block_size != expected {
        return Err(KernelError::BlockSizeMismatch { expected, actual: block_size });
    }
    match max_block {
        Some((block, seq, index)) if block as usize >= num_blocks => {
            Err(KernelError::BlockOutOfRange { seq, index, block, num_blocks })
        },
        _ => Ok(()),
    }
}

/// The sizes of one call, read off the tensors and checked against each other.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub num_seqs: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

impl Geometry {
    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

fn check_tensor(t: &Tensor, name: &str, dtype: DType, device: &Device) -> Result<()> {
    if t.dtype() != dtype {
        return Err(KernelError::DType {
            tensor: name.to_string(),
            expected: dtype,
            actual: t.dtype(),
        });
    }
    if !t.device().same_device(device) {
        return Err(KernelError::Device {
            tensor: name.to_string(),
            expected: format!("{:?}", device.location()),
            actual: format!("{:?}", t.device().location()),
        });
    }
    if !t.is_contiguous() {
        return Err(KernelError::NotContiguous { tensor: name.to_string() });
    }
    Ok(())
}

/// The operand checks decode and prefill calls share: q and the caches in one supported
/// dtype (f32, bf16, f16), contiguous, on q's device.
pub(crate) fn check_operands(q: &Tensor, k_cache: &Tensor, v_cache: &Tensor) -> Result<()> {
    let dtype = q.dtype();
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(KernelError::UnsupportedDType(dtype));
    }
    let device = q.device();
    check_tensor(q, "q", dtype, device)?;
    check_tensor(k_cache, "k_cache", dtype, device)?;
    check_tensor(v_cache, "v_cache", dtype, device)
}

/// The head checks decode and prefill calls share: a head size the kernels take and
/// query heads in whole groups per KV head.
pub(crate) fn check_heads(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> Result<()> {
    if !HEAD_DIMS.contains(&head_dim) {
        return Err(KernelError::UnsupportedHeadDim(head_dim));
    }
    if num_kv_heads == 0 || num_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
        return Err(KernelError::HeadGroups { num_heads, num_kv_heads });
    }
    Ok(())
}

/// Checks shapes, dtypes, devices and the block tables against the cache.
pub(crate) fn check_call(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    blocks: &DecodeBlocks,
) -> Result<Geometry> {
    if !blocks.block_size.is_power_of_two() {
        return Err(KernelError::BlockSize(blocks.block_size));
    }
    check_operands(q, k_cache, v_cache)?;
    let &[num_seqs, num_heads, head_dim] = q.dims() else {
        return Err(KernelError::Shape {
            tensor: "q (expected [num_seqs, num_heads, head_dim])".into(),
            expected: vec![blocks.num_seqs, 0, 0],
            actual: q.dims().to_vec(),
        });
    };
    let &[num_blocks, block_size, num_kv_heads, kv_head_dim] = k_cache.dims() else {
        return Err(KernelError::Shape {
            tensor: "k_cache (expected [num_blocks, block_size, num_kv_heads, head_dim])".into(),
            expected: vec![0, blocks.block_size, 0, head_dim],
            actual: k_cache.dims().to_vec(),
        });
    };
    check_shape("v_cache (must match k_cache)", k_cache.dims(), v_cache.dims())?;
    check_shape(
        "q (one row per block-table row)",
        &[blocks.num_seqs, num_heads, head_dim],
        q.dims(),
    )?;
    check_shape(
        "k_cache head_dim (must match q)",
        &[num_blocks, block_size, num_kv_heads, head_dim],
        &[num_blocks, block_size, num_kv_heads, kv_head_dim],
    )?;
    check_heads(num_heads, num_kv_heads, head_dim)?;
    blocks.check_cache(num_blocks, block_size)?;
    Ok(Geometry { num_seqs, num_heads, num_kv_heads, head_dim, block_size })
}

/// The heads of a host call ([`paged_decode_attention_host`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// [`paged_decode_attention_with`] on host slices, the CPU engine's path: `q` and `out` are
/// f32 `[num_seqs, num_heads, head_dim]`, the caches one layer's pool
/// `[num_blocks, block_size, num_kv_heads, head_dim]` in f32, f16 or bf16. Any head size and any block size
/// (the tensor calls take head sizes 64 and 128 and power-of-two blocks).
pub fn paged_decode_attention_host<C: Element>(
    q: &[f32],
    k_cache: &[C],
    v_cache: &[C],
    out: &mut [f32],
    heads: HeadShape,
    blocks: &DecodeBlocks,
    scale: f32,
) -> Result<()> {
    let HeadShape { num_heads, num_kv_heads, head_dim } = heads;
    if num_kv_heads == 0 || num_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
        return Err(KernelError::HeadGroups { num_heads, num_kv_heads });
    }
    let num_seqs = blocks.num_seqs;
    check_shape(
        "q (elements of [num_seqs, num_heads, head_dim])",
        &[num_seqs * num_heads * head_dim],
        &[q.len()],
    )?;
    check_shape("out (elements)", &[q.len()], &[out.len()])?;
    check_shape("v_cache (elements, must match k_cache)", &[k_cache.len()], &[v_cache.len()])?;
    let block = blocks.block_size * num_kv_heads * head_dim;
    if block == 0 || !k_cache.len().is_multiple_of(block) {
        return Err(KernelError::Shape {
            tensor: "k_cache (expected [num_blocks, block_size, num_kv_heads, head_dim])".into(),
            expected: vec![k_cache.len() / block.max(1), blocks.block_size, num_kv_heads, head_dim],
            actual: vec![k_cache.len()],
        });
    }
    blocks.check_cache(k_cache.len() / block, blocks.block_size)?;
    let geometry =
        Geometry { num_seqs, num_heads, num_kv_heads, head_dim, block_size: blocks.block_size };
    cpu::decode(q, k_cache, v_cache, out, &geometry, blocks, scale);
    Ok(())
}

/// `softmax(q . K^T * scale) . V` for each sequence and query head over the sequence's
/// cached positions; returns `[num_seqs, num_heads, head_dim]` of q's dtype.
///
/// Validates the tables first (one read-back to the host when they live on a GPU); an
/// engine that calls this for every layer of a step should build [`DecodeBlocks`] once and
/// call [`paged_decode_attention_with`].
pub fn paged_decode_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    block_tables: &Tensor,
    context_lens: &Tensor,
    scale: f32,
    max_context_len: usize,
) -> Result<Tensor> {
    let block_size = match k_cache.dims() {
        &[_, block_size, _, _] => block_size,
        other => {
            return Err(KernelError::Shape {
                tensor: "k_cache (expected [num_blocks, block_size, num_kv_heads, head_dim])"
                    .into(),
                expected: vec![0, 0, 0, 0],
                actual: other.to_vec(),
            })
        },
    };
    let blocks = DecodeBlocks::new(block_tables, context_lens, block_size, max_context_len)?;
    paged_decode_attention_with(q, k_cache, v_cache, &blocks, scale)
}
