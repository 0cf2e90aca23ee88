//! CUDA path: the kernels of `cuda/paged_attention.cu` (kernels/NOTES.md), compiled at build
//! time and embedded, launched through cudarc on candle's stream: one launch for the batch,
//! and a second that merges the partitions of sequences longer than one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Storage, Tensor};
use half::{bf16, f16};

use super::{DecodeBlocks, Geometry};
use crate::cuda::{cuda_err, load_fatbin, per_context};
use crate::error::{KernelError, Result};

static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/paged_attention.fatbin"));

/// Threads per block (`NT` in the kernel).
const THREADS: u32 = 128;
/// Largest partition the kernel's shared memory holds (`MAX_PART`).
const MAX_PART: usize = 512;
/// Positions per partition unless `OPENLEDGER_ATTN_PARTITION` says otherwise: 512 gave the
/// best bandwidth on every large batch of the benchmark (H200, kernels/NOTES.md); 128 and 256
/// are faster for a single sequence of 512-2048 positions.
const DEFAULT_PART: usize = 512;
/// Query heads one block serves, at most (kernels exist for 1..=8).
const MAX_HEADS_PER_BLOCK: usize = 8;

/// Kernel parameters, laid out as `AttnParams` in paged_attention.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct AttnParams {
    q: u64,
    k_cache: u64,
    v_cache: u64,
    tables: u64,
    context_lens: u64,
    out: u64,
    part_acc: u64,
    part_ml: u64,
    scale_log2: f32,
    num_heads: i32,
    num_kv_heads: i32,
    table_width: i32,
    max_parts: i32,
    log2_block: i32,
    part: i32,
}

// SAFETY: plain old data with the C layout of the kernel's parameter struct.
unsafe impl DeviceRepr for AttnParams {}

/// Positions per partition. Fixed for the process (so a sequence's result does not depend
/// on its batch); `OPENLEDGER_ATTN_PARTITION` (a power of two from 32 to 512) overrides it
/// for benchmark runs.
fn partition() -> usize {
    static PART: OnceLock<usize> = OnceLock::new();
    *PART.get_or_init(|| {
        crate::options::options()
            .attn_partition
            .filter(|&p| p.is_power_of_two() && (32..=MAX_PART).contains(&p))
            .unwrap_or(DEFAULT_PART.min(MAX_PART))
    })
}

/// The module, loaded once per CUDA context.
fn module(dev: &CudaDevice) -> Result<Arc<CudaModule>> {
    static LOADED: OnceLock<Mutex<HashMap<usize, Arc<CudaModule>>>> = OnceLock::new();
    per_context(&LOADED, dev, |ctx, _| load_fatbin(ctx, FATBIN))
}

/// The attention and merge kernels for a dtype, head size and heads per block.
fn functions(
    dev: &CudaDevice,
    dtype: DType,
    head_dim: usize,
    heads_per_block: usize,
) -> Result<(CudaFunction, CudaFunction)> {
    let ty = match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => return Err(KernelError::UnsupportedDType(other)),
    };
    let m = module(dev)?;
    let attn = m
        .load_function(&format!("paged_attn_{ty}_hd{head_dim}_g{heads_per_block}"))
        .map_err(cuda_err)?;
    let reduce =
        m.load_function(&format!("paged_attn_reduce_{ty}_hd{head_dim}")).map_err(cuda_err)?;
    Ok((attn, reduce))
}

/// Query heads per block: the whole group when it has at most 8 heads, else the largest
/// divisor of the group that is at most 8.
fn heads_per_block(group: usize) -> usize {
    (1..=MAX_HEADS_PER_BLOCK.min(group)).rev().find(|d| group.is_multiple_of(*d)).unwrap_or(1)
}

/// A step's tables and context lengths on the device, with the partials of long sequences
/// that every layer's call reuses (grown on demand).
pub(crate) struct DeviceBlocks {
    tables: CudaSlice<u32>,
    lens: CudaSlice<u32>,
    work: Mutex<Work>,
}

#[derive(Default)]
struct Work {
    /// Partial sums (f32), then max and sum per partition.
    scratch: Option<CudaSlice<f32>>,
}

impl Work {
    /// Device address of scratch of at least `floats` f32.
    fn reserve(&mut self, dev: &CudaDevice, floats: usize) -> Result<u64> {
        let stream = dev.cuda_stream();
        if self.scratch.as_ref().is_none_or(|s| s.len() < floats) {
            // SAFETY (uninitialised memory): the merge reads only partitions the attention
            // kernel wrote (those below each sequence's partition count).
            self.scratch = Some(unsafe { dev.alloc::<f32>(floats.max(1)) }?);
        }
        self.scratch
            .as_ref()
            .map(|s| s.device_ptr(&stream).0)
            .ok_or_else(|| KernelError::Cuda("scratch was not allocated".into()))
    }
}

fn device_blocks(blocks: &DecodeBlocks, dev: &CudaDevice) -> Result<Arc<DeviceBlocks>> {
    let mut cached = blocks.gpu.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = cached.as_ref() {
        return Ok(d.clone());
    }
    // Never empty, so that the device pointers are valid.
    let mut tables = blocks.tables().to_vec();
    tables.push(0);
    let mut lens = blocks.context_lens().to_vec();
    lens.push(0);
    let d = Arc::new(DeviceBlocks {
        tables: dev.clone_htod(&tables)?,
        lens: dev.clone_htod(&lens)?,
        work: Mutex::new(Work::default()),
    });
    *cached = Some(d.clone());
    Ok(d)
}

/// Rewrites the uploaded tables and lengths of `blocks` in place (nothing when they were
/// never uploaded: the next call uploads the host copies).
pub(crate) fn overwrite_device(blocks: &DecodeBlocks, tables: &[u32], lens: &[u32]) -> Result<()> {
    let cached = blocks.gpu.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = cached.as_ref() {
        crate::graph_inputs::upload_into(&d.tables, tables)?;
        crate::graph_inputs::upload_into(&d.lens, lens)?;
    }
    Ok(())
}

/// Device address of the first element of a CUDA storage of element type `T`.
fn address<T: CudaDType>(s: &CudaStorage, l: &Layout, stream: &CudaStream) -> Result<u64> {
    let slice = s.as_cuda_slice::<T>()?;
    let (ptr, _sync) = slice.device_ptr(stream);
    Ok(ptr + (l.start_offset() * std::mem::size_of::<T>()) as u64)
}

fn storage_address(s: &CudaStorage, l: &Layout, stream: &CudaStream) -> Result<u64> {
    match s.dtype() {
        DType::F32 => address::<f32>(s, l, stream),
        DType::BF16 => address::<bf16>(s, l, stream),
        DType::F16 => address::<f16>(s, l, stream),
        other => Err(KernelError::UnsupportedDType(other)),
    }
}

fn tensor_address(t: &Tensor, stream: &CudaStream) -> Result<u64> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cuda(s) = &*s else {
        return Err(KernelError::UnsupportedDevice("cache tensor is not on CUDA".into()));
    };
    storage_address(s, l, stream)
}

/// Launches attention for the batch into `out` (device address).
#[allow(clippy::too_many_arguments)]
fn launch(
    dev: &CudaDevice,
    out: u64,
    q: u64,
    k: &Tensor,
    v: &Tensor,
    g: &Geometry,
    blocks: &DecodeBlocks,
    scale: f32,
    dtype: DType,
) -> Result<()> {
    if g.num_seqs == 0 {
        return Ok(());
    }
    let stream = dev.cuda_stream();
    let part = partition();
    let max_parts = blocks.max_context_len().div_ceil(part).max(1);
    let gh = heads_per_block(g.group());
    let (attn, reduce) = functions(dev, dtype, g.head_dim, gh)?;
    let device_blocks = device_blocks(blocks, dev)?;
    let long = (blocks.is_fixed_launch() && max_parts > 1)
        || blocks.context_lens().iter().any(|&l| l as usize > part);
    let grid_y = g.num_kv_heads * (g.group() / gh);
    // Partials of sequences longer than one partition (f32 sums, then max and sum), held
    // for the launches (the stream orders later calls after them).
    let mut work = device_blocks.work.lock().unwrap_or_else(|e| e.into_inner());
    let partials = g.num_seqs * g.num_heads * max_parts;
    let (part_acc, part_ml) = if long {
        let scratch = work.reserve(dev, partials * (g.head_dim + 2))?;
        (scratch, scratch + 4 * (partials * g.head_dim) as u64)
    } else {
        (0, 0)
    };
    let (k_cache, v_cache) = (tensor_address(k, &stream)?, tensor_address(v, &stream)?);
    for (addr, name) in [(k_cache, "k_cache"), (v_cache, "v_cache")] {
        if !addr.is_multiple_of(16) {
            return Err(KernelError::Misaligned { tensor: name.into() });
        }
    }
    let p = AttnParams {
        q,
        k_cache,
        v_cache,
        tables: device_blocks.tables.device_ptr(&stream).0,
        context_lens: device_blocks.lens.device_ptr(&stream).0,
        out,
        part_acc,
        part_ml,
        scale_log2: scale * std::f32::consts::LOG2_E,
        num_heads: g.num_heads as i32,
        num_kv_heads: g.num_kv_heads as i32,
        table_width: blocks.max_blocks_per_seq() as i32,
        max_parts: max_parts as i32,
        log2_block: g.block_size.trailing_zeros() as i32,
        part: part as i32,
    };
    let grid_y = grid_y as u32;
    // Grid y and z are limited to 65535.
    if g.num_seqs > 65535 || grid_y > 65535 {
        return Err(KernelError::Cuda(format!(
            "{} sequences x {grid_y} head groups exceed one launch (at most 65535 each)",
            g.num_seqs
        )));
    }
    let seqs = g.num_seqs as u32;
    let cfg = LaunchConfig {
        grid_dim: (max_parts as u32, grid_y, seqs),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(&attn);
    b.arg(&p);
    // SAFETY: every pointer in `p` is live device memory of the sizes the kernel indexes:
    // shapes checked in `check_call`, block numbers below the cache's block count and
    // context lengths within the tables and max_context_len (`DecodeBlocks`), scratch sized
    // for this batch and max_context_len and kept alive by `blocks`; the stream orders the
    // launch with candle's other work.
    unsafe { b.launch(cfg) }.map_err(cuda_err)?;
    if long {
        let cfg = LaunchConfig {
            grid_dim: (g.num_heads as u32, seqs, 1),
            block_dim: (g.head_dim as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(&reduce);
        b.arg(&p);
        // SAFETY: as above; the merge reads the partials the first launch wrote.
        unsafe { b.launch(cfg) }.map_err(cuda_err)?;
    }
    Ok(())
}

/// Attention into a new, uninitialised output (every element is written).
pub(crate) fn decode_alloc(
    q: &CudaStorage,
    ql: &Layout,
    k: &Tensor,
    v: &Tensor,
    g: &Geometry,
    blocks: &DecodeBlocks,
    scale: f32,
) -> Result<CudaStorage> {
    let dev = q.device.clone();
    let stream = dev.cuda_stream();
    let n = (g.num_seqs * g.num_heads * g.head_dim).max(1);
    let q_addr = storage_address(q, ql, &stream)?;
    macro_rules! run {
        ($t:ty) => {{
            // SAFETY (uninitialised memory): the kernels write every output element.
            let out = unsafe { dev.alloc::<$t>(n) }?;
            let out_addr = out.device_ptr(&stream).0;
            launch(&dev, out_addr, q_addr, k, v, g, blocks, scale, q.dtype())?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }};
    }
    match q.dtype() {
        DType::F32 => run!(f32),
        DType::BF16 => run!(bf16),
        DType::F16 => run!(f16),
        other => Err(KernelError::UnsupportedDType(other)),
    }
}

/// Attention into `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_into(
    out: &mut CudaStorage,
    ol: &Layout,
    q: &CudaStorage,
    ql: &Layout,
    k: &Tensor,
    v: &Tensor,
    g: &Geometry,
    blocks: &DecodeBlocks,
    scale: f32,
) -> Result<()> {
    let dev = q.device.clone();
    let stream = dev.cuda_stream();
    let out_addr = storage_address(out, ol, &stream)?;
    let q_addr = storage_address(q, ql, &stream)?;
    launch(&dev, out_addr, q_addr, k, v, g, blocks, scale, q.dtype())
}
