//! Causal prefill attention over the paged KV cache: each row of a prompt chunk attends to
//! its sequence's cached positions up to its own (the chunk's own keys and values already in
//! the pool), several chunks of different sequences and lengths in one call.
//!
//! Layouts are the decode kernel's ([`super`]): `q` `[q_rows, num_heads, head_dim]` holding
//! every chunk's rows at the chunk's `q_row`, the caches one layer's pool `[num_blocks,
//! block_size, num_kv_heads, head_dim]`; the output is `[rows, num_heads, head_dim]`, the
//! chunks' rows in chunk order. Chunk `c`'s row `i` is the token at position `start + i` and
//! sees positions `0..=start + i` of its sequence through the chunk's block table, so a
//! prompt that continues a cached prefix attends to the prefix too.
//!
//! On CUDA (bf16 and f16, head sizes 64 and 128) one flash-style launch
//! (`cuda/prefill_attention.cu`: online softmax, tensor cores, f32 accumulation, GQA heads
//! sharing each key/value tile); elsewhere, and for f32, each row goes through the decode
//! attention as a one-token sequence whose context ends at its own position (the same
//! function, one row at a time). The f64 [`super::reference::paged_prefill_attention`] is
//! what the tests compare both against.

#[cfg(feature = "cuda")]
use std::sync::Mutex;

use candle_core::Tensor;

use super::{check_heads, check_operands, DecodeBlocks};
use crate::error::{check_shape, KernelError, Result};

/// One prompt chunk of a prefill call.
#[derive(Clone, Copy, Debug)]
pub struct PrefillChunk<'a> {
    /// The chunk's first row in `q`.
    pub q_row: usize,
    /// Tokens in the chunk (at least one).
    pub len: usize,
    /// Positions of the sequence cached before the chunk.
    pub start: usize,
    /// The sequence's block table: at least `(start + len).div_ceil(block_size)` blocks.
    pub table: &'a [u32],
}

/// A step's prefill chunks with their block tables, validated once and shared by every
/// layer's call (like [`DecodeBlocks`]). On CUDA the first call uploads them and later calls
/// reuse the upload: use one `PrefillBlocks` with one CUDA device.
pub struct PrefillBlocks {
    block_size: usize,
    /// Per chunk: q_row, out_row, len, start, offset of its table in `tables`.
    chunks: Vec<[u32; 5]>,
    tables: Vec<u32>,
    /// Rows of the output (the chunks' lengths summed).
    rows: usize,
    /// Rows q must have (the furthest chunk end).
    q_rows: usize,
    /// The largest cache block read, with the chunk and table index naming it.
    max_block: Option<(u32, usize, usize)>,
    #[cfg(feature = "cuda")]
    pub(crate) gpu: Mutex<Option<(usize, std::sync::Arc<super::prefill_cuda::DevicePrefill>)>>,
}

impl PrefillBlocks {
    /// Validates the chunks for a cache of `block_size` positions per block (a power of
    /// two): each has at least one token, its table covers its last position, and every
    /// count fits the kernel's 32-bit indices. Block numbers are checked against the cache at
    /// each call.
    pub fn new(chunks: &[PrefillChunk<'_>], block_size: usize) -> Result<Self> {
        if !block_size.is_power_of_two() {
            return Err(KernelError::BlockSize(block_size));
        }
        let mut out = Vec::with_capacity(chunks.len());
        let mut tables = Vec::new();
        let (mut rows, mut q_rows) = (0usize, 0usize);
        let mut max_block: Option<(u32, usize, usize)> = None;
        for (i, c) in chunks.iter().enumerate() {
            if c.len == 0 {
                return Err(KernelError::Shape {
                    tensor: format!("prefill chunk {i} (expected at least one token)"),
                    expected: vec![1],
                    actual: vec![0],
                });
            }
            let context = c.start + c.len;
            let needed = context.div_ceil(block_size);
            if c.table.len() < needed {
                return Err(KernelError::ContextOverCapacity {
                    seq: i,
                    context_len: context,
                    capacity: c.table.len() * block_size,
                    blocks: c.table.len(),
                    block_size,
                });
            }
            for (index, &block) in c.table[..needed].iter().enumerate() {
                if max_block.is_none_or(|(b, _, _)| block > b) {
                    max_block = Some((block, i, index));
                }
            }
            let narrow = |v: usize, what: &str| {
                u32::try_from(v).map_err(|_| KernelError::Shape {
                    tensor: format!("prefill chunk {i} {what} (over 32 bits)"),
                    expected: vec![u32::MAX as usize],
                    actual: vec![v],
                })
            };
            out.push([
                narrow(c.q_row, "q_row")?,
                narrow(rows, "output row")?,
                narrow(c.len, "len")?,
                narrow(c.start, "start")?,
                narrow(tables.len(), "table offset")?,
            ]);
            tables.extend_from_slice(&c.table[..needed]);
            rows += c.len;
            q_rows = q_rows.max(c.q_row + c.len);
        }
        Ok(Self {
            block_size,
            chunks: out,
            tables,
            rows,
            q_rows,
            max_block,
            #[cfg(feature = "cuda")]
            gpu: Mutex::new(None),
        })
    }

    /// Rows of the output: every chunk's tokens.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of chunks.
    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Positions per cache block these chunks were checked for.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Query-key pairs the causal attention scores (each row's context summed), for FLOP
    /// counts: `4 * pairs * num_heads * head_dim` FLOPs.
    pub fn causal_pairs(&self) -> usize {
        self.chunks
            .iter()
            .map(|&[_, _, len, start, _]| {
                let (len, start) = (len as usize, start as usize);
                len * start + len * (len + 1) / 2
            })
            .sum()
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn chunk_records(&self) -> &[[u32; 5]] {
        &self.chunks
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn tables(&self) -> &[u32] {
        &self.tables
    }

    /// One decode row per query row: row `i` of a chunk is a one-token sequence whose
    /// context ends at its own position (the CPU path).
    fn decode_rows(&self) -> Result<DecodeBlocks> {
        let width = self
            .chunks
            .iter()
            .map(|&[_, _, len, start, _]| (len + start) as usize)
            .max()
            .unwrap_or(1)
            .div_ceil(self.block_size)
            .max(1);
        let mut tables = Vec::with_capacity(self.rows * width);
        let mut lens = Vec::with_capacity(self.rows);
        let mut longest = 1;
        for &[_, _, len, start, off] in &self.chunks {
            let needed = (start + len) as usize;
            let table = &self.tables[off as usize..off as usize + needed.div_ceil(self.block_size)];
            for i in 0..len {
                tables.extend_from_slice(table);
                tables.resize(tables.len() + width - table.len(), 0);
                lens.push(start + i + 1);
                longest = longest.max((start + i + 1) as usize);
            }
        }
        DecodeBlocks::from_host(tables, lens, width, self.block_size, longest)
    }

    fn check_cache(&self, num_blocks: usize, block_size: usize) -> Result<()> {
        super::check_cache(self.block_size, self.max_block, num_blocks, block_size)
    }
}

/// The sizes of one call, checked against each other.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct PrefillGeometry {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

fn check_prefill(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    blocks: &PrefillBlocks,
) -> Result<PrefillGeometry> {
    check_operands(q, k_cache, v_cache)?;
    let &[q_rows, num_heads, head_dim] = q.dims() else {
        return Err(KernelError::Shape {
            tensor: "q (expected [q_rows, num_heads, head_dim])".into(),
            expected: vec![blocks.q_rows, 0, 0],
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
    check_shape("k_cache head_dim (must match q)", &[head_dim], &[kv_head_dim])?;
    if q_rows < blocks.q_rows {
        return Err(KernelError::Shape {
            tensor: "q (rows: the chunks reach further)".into(),
            expected: vec![blocks.q_rows, num_heads, head_dim],
            actual: q.dims().to_vec(),
        });
    }
    check_heads(num_heads, num_kv_heads, head_dim)?;
    blocks.check_cache(num_blocks, block_size)?;
    Ok(PrefillGeometry { num_heads, num_kv_heads, head_dim })
}

/// Causal attention of every chunk's rows (`q` `[q_rows, num_heads, head_dim]`) over their
/// sequences' cached positions up to each row's own, `softmax(q . K^T * scale) . V`; returns
/// `[blocks.rows(), num_heads, head_dim]` of q's dtype, the chunks' rows in chunk order.
/// A row's result depends on its chunk alone, never on the other chunks of the call.
pub fn paged_prefill_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    blocks: &PrefillBlocks,
    scale: f32,
) -> Result<Tensor> {
    let g = check_prefill(q, k_cache, v_cache, blocks)?;
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() && q.dtype() != candle_core::DType::F32 && blocks.rows > 0 {
        return super::prefill_cuda::prefill(q, k_cache, v_cache, blocks, &g, scale);
    }
    // Each row as a decode row whose context ends at its own position.
    let rows: Vec<u32> =
        blocks.chunks.iter().flat_map(|&[q_row, _, len, _, _]| q_row..q_row + len).collect();
    let index = Tensor::from_vec(rows, blocks.rows, q.device())?;
    let q_rows = q.index_select(&index, 0)?;
    let decode = blocks.decode_rows()?;
    let _ = g;
    super::paged_decode_attention_with(&q_rows, k_cache, v_cache, &decode, scale)
}
