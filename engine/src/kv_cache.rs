//! Paged KV cache: keys and values in fixed-size blocks from one pool, so sequences of any
//! length share memory without fragmentation, and a block budget bounds what is admitted.
//!
//! The pool lives where the model runs: buffers in host memory for the CPU path, f16 for a
//! block-quantized model (half the memory and memory traffic of f32, which is what attention
//! over a long context waits on; attention widens rows to f32 in registers and computes in
//! f32) and f32 for an f32 model (the reference paths stay f32 throughout), or one tensor per
//! layer on the model's device (CUDA: in the activations' dtype, the
//! layout the kernels crate's paged attention reads). Block bookkeeping is the same for both.

use candle_core::{DType, Device, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::error::{EngineError, Result};

/// Sizes of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Token positions per block.
    pub block_size: usize,
    /// Blocks in the pool (the budget shared by all running sequences).
    pub num_blocks: usize,
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        Self { block_size: 16, num_blocks: 512 }
    }
}

/// The blocks of one sequence, in position order, and how many positions hold data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub(crate) blocks: Vec<u32>,
    pub(crate) len: usize,
}

impl BlockTable {
    /// Positions written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The pool: per layer, keys and values laid out `[block][slot][kv_head][head_dim]`.
pub struct KvCache {
    config: KvCacheConfig,
    row: usize,
    /// Host buffers (CPU path); empty for a device pool.
    host: HostPool,
    /// Device tensors, one `[num_blocks * block_size, num_kv_heads * head_dim]` pair per layer.
    device: Option<DevicePool>,
    free: Vec<u32>,
    /// A block no sequence holds, taken from the pool once (on a CUDA device, by a graphed
    /// decode step or by an engine that replays them): the padding rows of a step padded up
    /// to its graph's batch size write their keys and values there and read them back, so
    /// they never touch a sequence's positions.
    padding: Option<u32>,
}

/// Per layer, the host keys and values.
enum HostPool {
    F32 { keys: Vec<Vec<f32>>, values: Vec<Vec<f32>> },
    F16 { keys: Vec<Vec<f16>>, values: Vec<Vec<f16>> },
}

/// One layer's host keys and values (`[num_blocks, block_size, num_kv_heads, head_dim]` each).
pub(crate) enum HostLayer<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
}

/// Per layer, a zeroed buffer of the pool's positions.
fn zeroed<T: Clone>(config: KvCacheConfig, num_layers: usize, row: usize, zero: T) -> Vec<Vec<T>> {
    let len = config.num_blocks * config.block_size * row;
    (0..num_layers).map(|_| vec![zero.clone(); len]).collect()
}

/// The pool's tensors on a device.
pub(crate) struct DevicePool {
    pub keys: Vec<Tensor>,
    pub values: Vec<Tensor>,
}

impl KvCache {
    /// An empty f32 host pool for `num_layers` layers of `num_kv_heads * head_dim` values
    /// per token.
    pub fn new(
        config: KvCacheConfig,
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let row = num_kv_heads * head_dim;
        let layers = || zeroed(config, num_layers, row, 0f32);
        Self::host(config, row, HostPool::F32 { keys: layers(), values: layers() })
    }

    /// An empty f16 host pool (the CPU engine's, for a block-quantized model): keys and values
    /// rounded to f16 when written.
    pub fn new_f16(
        config: KvCacheConfig,
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let row = num_kv_heads * head_dim;
        let layers = || zeroed(config, num_layers, row, f16::ZERO);
        Self::host(config, row, HostPool::F16 { keys: layers(), values: layers() })
    }

    fn host(config: KvCacheConfig, row: usize, host: HostPool) -> Self {
        Self {
            config,
            row,
            host,
            device: None,
            // Popped from the end: block 0 is handed out first.
            free: (0..config.num_blocks as u32).rev().collect(),
            padding: None,
        }
    }

    /// An empty pool of `dtype` tensors on `device` (zero-filled, so a position never
    /// written reads as zero rather than as stale memory).
    pub fn on_device(
        config: KvCacheConfig,
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let row = num_kv_heads * head_dim;
        let shape = (config.num_blocks * config.block_size, row);
        let mut keys = Vec::with_capacity(num_layers);
        let mut values = Vec::with_capacity(num_layers);
        for _ in 0..num_layers {
            keys.push(Tensor::zeros(shape, dtype, device)?);
            values.push(Tensor::zeros(shape, dtype, device)?);
        }
        Ok(Self {
            config,
            row,
            host: HostPool::F32 { keys: Vec::new(), values: Vec::new() },
            device: Some(DevicePool { keys, values }),
            free: (0..config.num_blocks as u32).rev().collect(),
            padding: None,
        })
    }

    /// The device tensors, for a pool made by [`KvCache::on_device`].
    pub(crate) fn device_pool(&self) -> Option<&DevicePool> {
        self.device.as_ref()
    }

    /// Bytes the pool holds (keys and values of every layer).
    pub fn bytes(&self) -> usize {
        match &self.device {
            Some(p) => p
                .keys
                .iter()
                .chain(&p.values)
                .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                .sum(),
            None => match &self.host {
                HostPool::F32 { keys, values } => {
                    keys.iter().chain(values).map(|v| v.len() * 4).sum()
                },
                HostPool::F16 { keys, values } => {
                    keys.iter().chain(values).map(|v| v.len() * 2).sum()
                },
            },
        }
    }

    /// Cache slot (`block * block_size + offset`) of each position `start..start + n` of a
    /// sequence, for the device pool's scatter and gather.
    pub(crate) fn slots(&self, table: &BlockTable, start: usize, n: usize) -> Vec<u32> {
        let bs = self.config.block_size;
        (start..start + n).map(|p| table.blocks[p / bs] * bs as u32 + (p % bs) as u32).collect()
    }

    /// The cache's sizes.
    pub fn config(&self) -> KvCacheConfig {
        self.config
    }

    /// Blocks not held by any sequence.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks a sequence needs to hold `len` positions.
    pub fn blocks_for(&self, len: usize) -> usize {
        len.div_ceil(self.config.block_size)
    }

    /// Extra blocks `table` needs to grow to `new_len` positions.
    pub fn blocks_to_grow(&self, table: &BlockTable, new_len: usize) -> usize {
        self.blocks_for(new_len).saturating_sub(table.blocks.len())
    }

    /// Gives `table` enough blocks for `new_len` positions, all or nothing.
    pub fn reserve(&mut self, table: &mut BlockTable, new_len: usize) -> Result<()> {
        let need = self.blocks_to_grow(table, new_len);
        if need > self.free.len() {
            return Err(EngineError::OutOfBlocks { total: self.config.num_blocks });
        }
        for _ in 0..need {
            if let Some(b) = self.free.pop() {
                table.blocks.push(b);
            }
        }
        Ok(())
    }

    /// The padding block (see the field), taken from the free blocks on the first call;
    /// `None` when every block is held. It stays out of the pool for the cache's life.
    pub(crate) fn padding_block(&mut self) -> Option<u32> {
        if self.padding.is_none() {
            self.padding = self.free.pop();
        }
        self.padding
    }

    /// Returns a finished sequence's blocks to the pool.
    pub fn release(&mut self, table: &mut BlockTable) {
        self.free.extend(table.blocks.drain(..).rev());
        table.len = 0;
    }

    /// Offset of position `pos` of a sequence in a layer's buffers.
    fn offset(&self, table: &BlockTable, pos: usize) -> usize {
        let bs = self.config.block_size;
        (table.blocks[pos / bs] as usize * bs + pos % bs) * self.row
    }

    /// Writes the keys and values (`[n, row]`, row-major) of positions `start..start + n`
    /// (rounded to f16 in an f16 pool). The table must already hold blocks for them
    /// ([`KvCache::reserve`]).
    pub(crate) fn write(
        &mut self,
        layer: usize,
        table: &BlockTable,
        start: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let n = k.len() / self.row;
        for i in 0..n {
            let off = self.offset(table, start + i);
            let src = i * self.row..(i + 1) * self.row;
            let (k, v) = (&k[src.clone()], &v[src]);
            match &mut self.host {
                HostPool::F32 { keys, values } => {
                    keys[layer][off..off + self.row].copy_from_slice(k);
                    values[layer][off..off + self.row].copy_from_slice(v);
                },
                HostPool::F16 { keys, values } => {
                    keys[layer][off..off + self.row].convert_from_f32_slice(k);
                    values[layer][off..off + self.row].convert_from_f32_slice(v);
                },
            }
        }
    }

    /// One layer's host keys and values, or `None` for a pool on a device.
    pub(crate) fn host_layer(&self, layer: usize) -> Option<HostLayer<'_>> {
        Some(match &self.host {
            HostPool::F32 { keys, values } => HostLayer::F32(keys.get(layer)?, values.get(layer)?),
            HostPool::F16 { keys, values } => HostLayer::F16(keys.get(layer)?, values.get(layer)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_padding_block_is_taken_once_and_never_handed_to_a_sequence() {
        let mut cache = KvCache::new(KvCacheConfig { block_size: 4, num_blocks: 3 }, 1, 1, 2);
        let pad = cache.padding_block().unwrap();
        assert_eq!(cache.padding_block(), Some(pad), "the same block on every call");
        assert_eq!(cache.free_blocks(), 2);
        let mut table = BlockTable::default();
        cache.reserve(&mut table, 8).unwrap();
        assert!(!table.blocks.contains(&pad));
        assert!(cache.reserve(&mut BlockTable::default(), 1).is_err(), "the pool is spent");
        cache.release(&mut table);
        assert_eq!(cache.free_blocks(), 2, "release gives back the sequence's blocks alone");

        let mut full = KvCache::new(KvCacheConfig { block_size: 4, num_blocks: 1 }, 1, 1, 2);
        full.reserve(&mut BlockTable::default(), 4).unwrap();
        assert_eq!(full.padding_block(), None, "no block free, no padding block");
    }
}
