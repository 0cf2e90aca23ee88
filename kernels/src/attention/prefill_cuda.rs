//! CUDA path of the prefill attention: `cuda/prefill_attention.cu`, compiled at build time
//! and embedded, one launch per call on candle's stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::{CudaDevice, DType, Layout, Shape, Storage, Tensor};

use super::prefill::{PrefillBlocks, PrefillGeometry};
use crate::cuda::{
    alloc_uninit, cuda_err, load_fatbin, per_context, slice_address, storage_address,
};
use crate::error::{KernelError, Result};

static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/prefill_attention.fatbin"));

/// Threads per block (`NT` in the kernel) and rows per tile (`BM`).
const THREADS: u32 = 128;
const TILE_ROWS: usize = 64;
/// Key positions per shared-memory tile (`BN`).
const KEY_TILE: usize = 64;
/// u32 words of one chunk record (`Chunk` in the kernel, 32 bytes).
const CHUNK_WORDS: usize = 8;

/// Kernel parameters, laid out as `PrefillParams` in prefill_attention.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PrefillParams {
    q: u64,
    k_cache: u64,
    v_cache: u64,
    tables: u64,
    chunks: u64,
    tiles: u64,
    out: u64,
    scale_log2: f32,
    q_stride: i32,
    num_heads: i32,
    num_kv_heads: i32,
    log2_block: i32,
}

// SAFETY: plain old data with the C layout of the kernel's parameter struct.
unsafe impl DeviceRepr for PrefillParams {}

fn module(dev: &CudaDevice) -> Result<Arc<CudaModule>> {
    static LOADED: OnceLock<Mutex<HashMap<usize, Arc<CudaModule>>>> = OnceLock::new();
    per_context(&LOADED, dev, |ctx, _| load_fatbin(ctx, FATBIN))
}

fn function(dev: &CudaDevice, dtype: DType, head_dim: usize) -> Result<CudaFunction> {
    let ty = match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => return Err(KernelError::UnsupportedDType(other)),
    };
    module(dev)?.load_function(&format!("prefill_attn_{ty}_hd{head_dim}")).map_err(cuda_err)
}

/// The chunks on the device for one GQA group size: chunk records, work tiles (chunk,
/// first row) longest first, block tables; one buffer.
pub(crate) struct DevicePrefill {
    words: CudaSlice<u32>,
    num_tiles: usize,
    tiles_at: usize,
    tables_at: usize,
}

/// The work tiles of `blocks` for `group` query heads per key/value head, the ones that
/// read the most key tiles first (so the longest work starts in the first wave).
fn tiles(blocks: &PrefillBlocks, group: usize) -> Vec<[u32; 2]> {
    let mut tiles = Vec::new();
    for (c, &[_, _, len, start, _]) in blocks.chunk_records().iter().enumerate() {
        let rows = len as usize * group;
        for m0 in (0..rows).step_by(TILE_ROWS) {
            let last = (m0 + TILE_ROWS).min(rows) - 1;
            let keys = start as usize + last / group + 1;
            tiles.push((keys.div_ceil(KEY_TILE), [c as u32, m0 as u32]));
        }
    }
    tiles.sort_by_key(|&(work, _)| std::cmp::Reverse(work));
    tiles.into_iter().map(|(_, t)| t).collect()
}

fn device_prefill(
    blocks: &PrefillBlocks,
    dev: &CudaDevice,
    group: usize,
) -> Result<Arc<DevicePrefill>> {
    let mut cached = blocks.gpu.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((g, d)) = cached.as_ref() {
        if *g == group {
            return Ok(d.clone());
        }
    }
    let tiles = tiles(blocks, group);
    let mut words = Vec::with_capacity(
        blocks.num_chunks() * CHUNK_WORDS + 2 * tiles.len() + blocks.tables().len() + 1,
    );
    for r in blocks.chunk_records() {
        words.extend_from_slice(r);
        words.resize(words.len() + CHUNK_WORDS - r.len(), 0);
    }
    let tiles_at = words.len();
    words.extend(tiles.iter().flatten());
    let tables_at = words.len();
    words.extend_from_slice(blocks.tables());
    // Never empty, so that the device pointer is valid.
    words.push(0);
    let d = Arc::new(DevicePrefill {
        words: dev.clone_htod(&words)?,
        num_tiles: tiles.len(),
        tiles_at,
        tables_at,
    });
    *cached = Some((group, d.clone()));
    Ok(d)
}

fn address(t: &Tensor, dev: &CudaDevice, name: &str) -> Result<u64> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cuda(s) = &*s else {
        return Err(KernelError::UnsupportedDevice(format!("{name} is not on CUDA")));
    };
    let a = storage_address(s, l, &dev.cuda_stream())?;
    if !a.is_multiple_of(16) {
        return Err(KernelError::Misaligned { tensor: name.into() });
    }
    Ok(a)
}

pub(crate) fn prefill(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    blocks: &PrefillBlocks,
    g: &PrefillGeometry,
    scale: f32,
) -> Result<Tensor> {
    let Some(dev) = q.device().as_cuda_device().ok() else {
        return Err(KernelError::UnsupportedDevice("q is not on CUDA".into()));
    };
    let dev = dev.clone();
    let stream = dev.cuda_stream();
    let f = function(&dev, q.dtype(), g.head_dim)?;
    let group = g.num_heads / g.num_kv_heads;
    let d = device_prefill(blocks, &dev, group)?;
    if d.num_tiles > i32::MAX as usize || g.num_kv_heads > 65535 {
        return Err(KernelError::Cuda(format!(
            "{} tiles x {} key/value heads exceed one launch",
            d.num_tiles, g.num_kv_heads
        )));
    }
    let n = blocks.rows() * g.num_heads * g.head_dim;
    let out = alloc_uninit(&dev, q.dtype(), n)?;
    let base = slice_address(&d.words, &stream);
    let p = PrefillParams {
        q: address(q, &dev, "q")?,
        k_cache: address(k, &dev, "k_cache")?,
        v_cache: address(v, &dev, "v_cache")?,
        tables: base + 4 * d.tables_at as u64,
        chunks: base,
        tiles: base + 4 * d.tiles_at as u64,
        out: storage_address(&out, &Layout::contiguous(n.max(1)), &stream)?,
        scale_log2: scale * std::f32::consts::LOG2_E,
        q_stride: (g.num_heads * g.head_dim) as i32,
        num_heads: g.num_heads as i32,
        num_kv_heads: g.num_kv_heads as i32,
        log2_block: blocks.block_size().trailing_zeros() as i32,
    };
    if d.num_tiles > 0 {
        let cfg = LaunchConfig {
            grid_dim: (d.num_tiles as u32, g.num_kv_heads as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(&f);
        b.arg(&p);
        // SAFETY: q holds every chunk's rows (checked against the chunks), the caches every
        // block the tables name (checked against their block count), the tables cover every
        // chunk's last position (`PrefillBlocks::new`), all three 16-byte aligned; `out` has
        // rows x heads x head_dim elements and the kernel writes each of them; `d` stays
        // alive in `blocks`; the stream orders the launch after the work that wrote q and the
        // caches.
        unsafe { b.launch(cfg) }.map_err(cuda_err)?;
    }
    let shape = Shape::from((blocks.rows(), g.num_heads, g.head_dim));
    Ok(Tensor::from_storage(Storage::Cuda(out), shape, candle_core::op::BackpropOp::none(), false))
}
