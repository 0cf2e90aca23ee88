//! CUDA launchers of the fused layer steps (`cuda/layer_ops.cu`), on candle's stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Storage, Tensor};

use super::{QkvHeads, RotaryPairs};
use crate::cuda::{
    alloc_uninit, cuda_err, dtype_index, load_fatbin, per_context, slice_address, storage_address,
};
use crate::error::{KernelError, Result};
use crate::scatter::RowIndex;

static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/layer_ops.fatbin"));

/// The module's kernels, loaded once per context.
struct Functions {
    /// Per dtype (f32, bf16, f16): add_rms_norm, silu_mul, rope_store_kv, and the 16-byte
    /// silu_mul (bf16 and f16; for f32 the scalar one again).
    per_dtype: [[CudaFunction; 4]; 3],
    /// The 16-byte widening to f32 of bf16 and f16.
    widen: [CudaFunction; 2],
}

fn functions(dev: &CudaDevice) -> Result<Arc<Functions>> {
    static LOADED: OnceLock<Mutex<HashMap<usize, Arc<Functions>>>> = OnceLock::new();
    per_context(&LOADED, dev, |ctx, _| {
        let module = load_fatbin(ctx, FATBIN)?;
        let f = |name: &str| module.load_function(name).map_err(cuda_err);
        let per = |s: &str| -> Result<[CudaFunction; 4]> {
            let vec8 =
                if s == "f32" { format!("silu_mul_{s}") } else { format!("silu_mul_vec8_{s}") };
            Ok([
                f(&format!("add_rms_norm_{s}"))?,
                f(&format!("silu_mul_{s}"))?,
                f(&format!("rope_store_kv_{s}"))?,
                f(&vec8)?,
            ])
        };
        Ok(Arc::new(Functions {
            per_dtype: [per("f32")?, per("bf16")?, per("f16")?],
            widen: [f("widen_f32_vec8_bf16")?, f("widen_f32_vec8_f16")?],
        }))
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn add_rms_norm(
    x: &CudaStorage,
    xl: &Layout,
    d: &CudaStorage,
    dl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    rows: usize,
    width: usize,
    eps: f32,
) -> Result<CudaStorage> {
    let dev = x.device().clone();
    let stream = dev.cuda_stream();
    let f = &functions(&dev)?.per_dtype[dtype_index(x.dtype())?][0];
    let out = alloc_uninit(&dev, x.dtype(), 2 * rows * width)?;
    let (xa, da, wa) = (
        storage_address(x, xl, &stream)?,
        storage_address(d, dl, &stream)?,
        storage_address(w, wl, &stream)?,
    );
    let oa = storage_address(&out, &Layout::contiguous(2 * rows * width), &stream)?;
    // candle's rmsnorm launch: one warp for short rows, 1024 threads otherwise.
    let threads = if width < 1024 { 32 } else { 1024 };
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let (r, c) = (rows as i32, width as i32);
    let mut b = stream.launch_builder(f);
    b.arg(&xa).arg(&da).arg(&wa).arg(&oa).arg(&r).arg(&c).arg(&eps);
    if rows > 0 {
        // SAFETY: x and delta address rows x width contiguous elements, w width, out
        // 2 x rows x width (allocated above); all on this stream.
        unsafe { b.launch(cfg) }.map_err(cuda_err)?;
    }
    Ok(out)
}

pub(super) fn silu_mul(s: &CudaStorage, l: &Layout, rows: usize, f: usize) -> Result<CudaStorage> {
    let dev = s.device().clone();
    let stream = dev.cuda_stream();
    let func = &functions(&dev)?.per_dtype[dtype_index(s.dtype())?][1];
    let out = alloc_uninit(&dev, s.dtype(), rows * f)?;
    let (ga, oa) = (
        storage_address(s, l, &stream)?,
        storage_address(&out, &Layout::contiguous(rows * f), &stream)?,
    );
    let total = (rows * f) as u64;
    if total == 0 {
        return Ok(out);
    }
    // 16-bit rows of whole 16-byte vectors: the vectorized kernel (same bits).
    let vec8 = s.dtype() != DType::F32
        && f.is_multiple_of(8)
        && ga.is_multiple_of(16)
        && oa.is_multiple_of(16)
        && i32::try_from(rows).is_ok()
        && i32::try_from(f).is_ok();
    if vec8 {
        let func = &functions(&dev)?.per_dtype[dtype_index(s.dtype())?][3];
        let vecs = (f / 8) as u32;
        let cfg = LaunchConfig {
            grid_dim: (vecs.div_ceil(256).max(1), rows.min(65_535) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (r, fi) = (rows as i32, f as i32);
        let mut b = stream.launch_builder(func);
        b.arg(&ga).arg(&oa).arg(&r).arg(&fi);
        // SAFETY: gu addresses rows x 2f contiguous elements, out rows x f, both 16-byte
        // aligned with f a multiple of 8, so every 16-byte access is in bounds and aligned.
        unsafe { b.launch(cfg) }.map_err(cuda_err)?;
        return Ok(out);
    }
    let blocks = total.div_ceil(256).clamp(1, 65_535) as u32;
    let cfg =
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (r, fi) = (rows as i64, f as i32);
    let mut b = stream.launch_builder(func);
    b.arg(&ga).arg(&oa).arg(&r).arg(&fi);
    // SAFETY: gu addresses rows x 2f contiguous elements, out rows x f.
    unsafe { b.launch(cfg) }.map_err(cuda_err)?;
    Ok(out)
}

/// `s` (bf16 or f16, laid out by `l`) widened to f32: the 16-byte kernel for contiguous
/// storage of whole, aligned 8-element vectors, candle's cast otherwise (the same values:
/// the conversion is exact).
pub(super) fn widen_f32(s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let dev = s.device().clone();
    let stream = dev.cuda_stream();
    let n = l.shape().elem_count();
    let index = match s.dtype() {
        DType::BF16 => Some(0),
        DType::F16 => Some(1),
        _ => None,
    };
    let address = storage_address(s, l, &stream)?;
    let (Some(index), true) =
        (index, l.is_contiguous() && n > 0 && n.is_multiple_of(8) && address.is_multiple_of(16))
    else {
        return Ok(s.to_dtype(l, DType::F32)?);
    };
    let functions = functions(&dev)?;
    let out = alloc_uninit(&dev, DType::F32, n)?;
    let out_address = storage_address(&out, &Layout::contiguous(n), &stream)?;
    if !out_address.is_multiple_of(16) {
        return Ok(s.to_dtype(l, DType::F32)?);
    }
    let vecs = (n / 8) as i64;
    let blocks = (vecs as u64).div_ceil(256).clamp(1, 4096) as u32;
    let cfg =
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let mut b = stream.launch_builder(&functions.widen[index]);
    b.arg(&address).arg(&out_address).arg(&vecs);
    // SAFETY: the input holds vecs x 8 contiguous 16-bit elements from a 16-byte aligned
    // address, the output vecs x 8 f32 from another: every 16-byte access is in bounds and
    // aligned.
    unsafe { b.launch(cfg) }.map_err(cuda_err)?;
    Ok(out)
}

/// Device addresses of the two caches [`super::rope_store_kv`] writes. The kernel writes
/// them through these addresses: candle's storage locks are not taken, which is sound
/// because all work runs on candle's one stream, in order, and the tensors outlive the
/// launch (the caller holds them).
pub(super) struct CacheAddresses {
    keys: u64,
    values: u64,
}

impl CacheAddresses {
    pub(super) fn of(keys: &Tensor, values: &Tensor) -> Result<Self> {
        let address = |t: &Tensor| -> Result<u64> {
            let (storage, layout) = t.storage_and_layout();
            match &*storage {
                Storage::Cuda(s) => storage_address(s, layout, &s.device().cuda_stream()),
                _ => Err(KernelError::Device {
                    tensor: "keys / values".into(),
                    expected: "cuda".into(),
                    actual: format!("{:?}", t.device().location()),
                }),
            }
        };
        Ok(Self { keys: address(keys)?, values: address(values)? })
    }
}

pub(super) fn rope_store_kv(
    (qkv, ql): (&CudaStorage, &Layout),
    (cos, cl): (&CudaStorage, &Layout),
    (sin, sl): (&CudaStorage, &Layout),
    pairs: RotaryPairs,
    h: QkvHeads,
    slots: &RowIndex,
    caches: &CacheAddresses,
) -> Result<CudaStorage> {
    let dev = qkv.device().clone();
    let stream = dev.cuda_stream();
    let func = &functions(&dev)?.per_dtype[dtype_index(qkv.dtype())?][2];
    let rows = slots.len();
    let q_len = rows * h.heads * h.head_dim;
    let out = alloc_uninit(&dev, qkv.dtype(), q_len)?;
    let index = slots.device_rows(&dev)?;
    let (qa, ca, sa, oa) = (
        storage_address(qkv, ql, &stream)?,
        storage_address(cos, cl, &stream)?,
        storage_address(sin, sl, &stream)?,
        storage_address(&out, &Layout::contiguous(q_len), &stream)?,
    );
    let ia = slice_address(&index, &stream);
    let ld = h.width() as i64;
    let (nh, nkv, hd) = (h.heads as i32, h.kv_heads as i32, h.head_dim as i32);
    let interleaved = i32::from(pairs == RotaryPairs::Adjacent);
    // One item (a rotation pair or two value elements) a thread: a row's items over grid x,
    // rows over grid y (looped past its 65,535).
    let items = (h.heads + 2 * h.kv_heads) * (h.head_dim / 2);
    let cfg = LaunchConfig {
        grid_dim: (items.div_ceil(256).max(1) as u32, rows.clamp(1, 65_535) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let r = i32::try_from(rows).map_err(|_| KernelError::Shape {
        tensor: "qkv (rows past i32)".into(),
        expected: vec![i32::MAX as usize],
        actual: vec![rows],
    })?;
    let mut b = stream.launch_builder(func);
    b.arg(&qa).arg(&ca).arg(&sa).arg(&ia).arg(&oa).arg(&caches.keys).arg(&caches.values);
    b.arg(&ld).arg(&r).arg(&nh).arg(&nkv).arg(&hd).arg(&interleaved);
    if rows > 0 {
        // SAFETY: qkv addresses rows x ld contiguous elements, cos / sin rows x hd / 2,
        // out rows x nh x hd (allocated above); every slot was checked against the
        // caches' rows by `rope_store_kv`, and the index (rows u32) is kept alive by the
        // RowIndex.
        unsafe { b.launch(cfg) }.map_err(cuda_err)?;
    }
    Ok(out)
}
