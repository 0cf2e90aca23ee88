//! The two entries of largest magnitude of each row, packed, on the device
//! ([`packed_top2`], `cuda/row_top.cu`), and a copy of such small results to the host that
//! does not wait for the device ([`HostCopy`]).
//!
//! The engine's activation commitments (`engine/src/commitment.rs` defines the encoding)
//! keep, for every generated token, the two largest entries of the final-norm row. Copying
//! whole rows to the host and scanning them there cost a batch-64 decode step of the 8B
//! shape 1.3-2.0 ms; computed on the device (inside a captured decode step) only 8 bytes a
//! row cross, queued behind the step, and are read once the step's logits have arrived.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::candle_ops::to_candle;
use crate::error::{KernelError, Result};

/// Entries per row of [`packed_top2`].
pub const TOP_ENTRIES: usize = 2;

/// For each row of `rows` (`[n, width]`, f32 / bf16 / f16, contiguous, on a CUDA device):
/// its two entries of largest magnitude, largest first (equal magnitudes: the lower column
/// first; NaN below every number), each as a `u32` whose low `index_bits` bits hold the
/// column and whose high bits hold the entry's f32 bits shortened to `32 - index_bits`
/// (rounded to nearest even; NaN stays NaN). Returns `[n, 2]` u32 on the same device.
/// Rows must have at least two and at most `2^index_bits` columns; `index_bits` is 1 to 30.
pub fn packed_top2(rows: &Tensor, index_bits: u32) -> Result<Tensor> {
    let (_, width) = rows.dims2().map_err(|_| KernelError::Shape {
        tensor: "rows (expected [n, width])".into(),
        expected: vec![0, 0],
        actual: rows.dims().to_vec(),
    })?;
    if !(1..=30).contains(&index_bits) || width < TOP_ENTRIES || width > 1 << index_bits {
        return Err(KernelError::Shape {
            tensor: format!(
                "rows (width from {TOP_ENTRIES} to 2^{index_bits} columns, index_bits 1-30)"
            ),
            expected: vec![rows.dims()[0], width.clamp(TOP_ENTRIES, 1 << index_bits.min(30))],
            actual: rows.dims().to_vec(),
        });
    }
    if !rows.is_contiguous() {
        return Err(KernelError::NotContiguous { tensor: "rows".into() });
    }
    if !rows.device().is_cuda() {
        return Err(KernelError::UnsupportedDevice(
            "packed_top2 runs on a CUDA device (the engine encodes host rows itself)".into(),
        ));
    }
    Ok(rows.apply_op1_no_bwd(&PackedTop2 { index_bits })?)
}

struct PackedTop2 {
    index_bits: u32,
}

impl CustomOp1 for PackedTop2 {
    fn name(&self) -> &'static str {
        "packed-top2"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(to_candle(KernelError::UnsupportedDevice(format!(
            "packed_top2 (index bits {}) on the CPU",
            self.index_bits
        ))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, width) = l.shape().dims2()?;
        let out = cuda::packed_top2(s, l, n, width, self.index_bits).map_err(to_candle)?;
        Ok((out, Shape::from((n, TOP_ENTRIES))))
    }
}

/// A copy of a `u32` tensor to the host. On a CUDA device it is queued on the tensor's
/// stream into page-locked memory and [`HostCopy::wait`] returns once it has landed (by then,
/// usually, because something else the caller needed has already waited for that stream);
/// elsewhere it is made at once.
pub struct HostCopy {
    state: State,
}

enum State {
    Done(Vec<u32>),
    #[cfg(feature = "cuda")]
    Queued(cuda::Staged),
}

impl HostCopy {
    /// Starts copying `t` (contiguous `u32`, any shape) to the host.
    pub fn start(t: &Tensor) -> Result<Self> {
        if t.dtype() != DType::U32 {
            return Err(KernelError::DType {
                tensor: "host copy".into(),
                expected: DType::U32,
                actual: t.dtype(),
            });
        }
        #[cfg(feature = "cuda")]
        if t.device().is_cuda() {
            if !t.is_contiguous() {
                return Err(KernelError::NotContiguous { tensor: "host copy".into() });
            }
            return Ok(Self { state: State::Queued(cuda::Staged::start(t)?) });
        }
        Ok(Self { state: State::Done(t.flatten_all()?.to_vec1::<u32>()?) })
    }

    /// The values, once the copy has landed.
    pub fn wait(self) -> Result<Vec<u32>> {
        match self.state {
            State::Done(v) => Ok(v),
            #[cfg(feature = "cuda")]
            State::Queued(s) => s.wait(),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        result, CudaContext, CudaEvent, CudaFunction, DevicePtr, LaunchConfig, PinnedHostSlice,
        PushKernelArg,
    };
    use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
    use candle_core::{CudaDevice, CudaStorage, Layout, Storage, Tensor};

    use crate::cuda::{cuda_err, dtype_index, slice_address, storage_address};
    use crate::error::{KernelError, Result};

    static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/row_top.fatbin"));

    /// Threads per row (the kernel's `THREADS`).
    const THREADS: u32 = 256;

    fn functions(dev: &CudaDevice) -> Result<Arc<[CudaFunction; 3]>> {
        static LOADED: OnceLock<Mutex<HashMap<usize, Arc<[CudaFunction; 3]>>>> = OnceLock::new();
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        let key = Arc::as_ptr(ctx) as usize;
        let mut loaded =
            LOADED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = loaded.get(&key) {
            return Ok(f.clone());
        }
        let module = ctx.load_module(Ptx::from_binary(FATBIN.to_vec())).map_err(cuda_err)?;
        let f = |s: &str| module.load_function(&format!("packed_top2_{s}")).map_err(cuda_err);
        let fs = Arc::new([f("f32")?, f("bf16")?, f("f16")?]);
        loaded.insert(key, fs.clone());
        Ok(fs)
    }

    pub(super) fn packed_top2(
        s: &CudaStorage,
        l: &Layout,
        n: usize,
        width: usize,
        index_bits: u32,
    ) -> Result<CudaStorage> {
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let func = &functions(&dev)?[dtype_index(s.dtype())?];
        let len = (n * super::TOP_ENTRIES).max(1);
        // SAFETY: the launch below writes both entries of every row before any read.
        let out = CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<u32>(len)? }, dev.clone());
        let xa = storage_address(s, l, &stream)?;
        let oa = slice_address(out.as_cuda_slice::<u32>()?, &stream);
        let (cols, bits) = (width as i32, index_bits as i32);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(func);
        b.arg(&xa).arg(&oa).arg(&cols).arg(&bits);
        if n > 0 {
            // SAFETY: x addresses n x width contiguous elements (width >= 2, checked by the
            // caller), out 2 n u32 (allocated above); all on this stream.
            unsafe { b.launch(cfg) }.map_err(cuda_err)?;
        }
        Ok(out)
    }

    /// A page-locked buffer and the event that marks the end of the last copy into it.
    struct Staging {
        context: usize,
        buf: PinnedHostSlice<u32>,
        done: CudaEvent,
    }

    /// Page-locked buffers kept for reuse (allocating one costs far more than a copy),
    /// per CUDA context.
    struct Pool(Mutex<Vec<Staging>>);

    fn pool() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool(Mutex::new(Vec::new())))
    }

    /// Buffers of at least this many `u32` (a decode step of 256 rows, two entries each,
    /// fits several times).
    const MIN_STAGING: usize = 4096;

    pub(super) struct Staged {
        staging: Option<Staging>,
        len: usize,
    }

    impl Staged {
        pub(super) fn start(t: &Tensor) -> Result<Self> {
            let (storage, layout) = t.storage_and_layout();
            let Storage::Cuda(s) = &*storage else {
                return Err(KernelError::UnsupportedDevice("a host copy of a CUDA tensor".into()));
            };
            let slice = s.as_cuda_slice::<u32>()?;
            let stream = s.device().cuda_stream();
            let ctx: &Arc<CudaContext> = stream.context();
            let key = Arc::as_ptr(ctx) as usize;
            let len = t.elem_count();
            let start = layout.start_offset();
            let taken = {
                let mut p = pool().0.lock().unwrap_or_else(|e| e.into_inner());
                p.iter()
                    .position(|b| b.context == key && b.buf.len() >= len)
                    .map(|i| p.swap_remove(i))
            };
            let mut staging = match taken {
                Some(b) => b,
                None => Staging {
                    context: key,
                    // SAFETY: only the first `len` elements are read, after the copy below
                    // has written them.
                    buf: unsafe { ctx.alloc_pinned_with_flags::<u32>(len.max(MIN_STAGING), 0) }
                        .map_err(cuda_err)?,
                    done: ctx.new_event(None).map_err(cuda_err)?,
                },
            };
            if len > 0 {
                // The last copy into this buffer was waited for before it came back to the
                // pool; cudarc's own event on it is never recorded, so this returns at once.
                let host = staging.buf.as_mut_ptr().map_err(cuda_err)?;
                let view = slice.slice(start..start + len);
                let (src, _sync) = view.device_ptr(&stream);
                ctx.bind_to_thread().map_err(cuda_err)?;
                // SAFETY: `host` addresses at least `len` page-locked u32 that nothing else
                // reads or writes until `done` has passed (`wait`, or the drop below); `src`
                // addresses `len` u32 of `t`, which the stream's order keeps valid until the
                // copy has run. (cudarc's `memcpy_dtoh` copies the whole destination buffer,
                // hence the sized copy here.)
                unsafe {
                    let dst = std::slice::from_raw_parts_mut(host, len);
                    result::memcpy_dtoh_async(dst, src, stream.cu_stream()).map_err(cuda_err)?;
                }
                staging.done.record(&stream).map_err(cuda_err)?;
            }
            Ok(Self { staging: Some(staging), len })
        }

        pub(super) fn wait(self) -> Result<Vec<u32>> {
            let Some(staging) = &self.staging else { return Ok(Vec::new()) };
            if self.len == 0 {
                return Ok(Vec::new());
            }
            staging.done.synchronize().map_err(cuda_err)?;
            let host = staging.buf.as_ptr().map_err(cuda_err)?;
            // SAFETY: the copy of `len` u32 into the buffer has completed (the event above).
            Ok(unsafe { std::slice::from_raw_parts(host, self.len) }.to_vec())
        }
    }

    impl Drop for Staged {
        fn drop(&mut self) {
            // Back to the pool once no copy into it is in flight (a copy still running
            // when its result is dropped unread is waited for here).
            if let Some(b) = self.staging.take() {
                if b.done.synchronize().is_ok() {
                    pool().0.lock().unwrap_or_else(|e| e.into_inner()).push(b);
                }
            }
        }
    }
}
