//! An adapter's weights in host memory, in the form the one-pass loader
//! ([`crate::adapter_check`]) writes them: one CPU tensor per `lora_A` / `lora_B` (CPU
//! engines, whose SGMV tables read them in place), or one packed bf16 buffer holding every
//! tensor (GPU engines: page-locked memory, uploaded with one asynchronous copy on a stream
//! of its own while the compute stream keeps running).

use candle_core::{DType, Device, Result, Tensor};
use half::bf16;

/// Where the loader puts an adapter's bf16 weights.
#[derive(Clone, Debug)]
pub(crate) enum HostAlloc {
    /// One candle CPU tensor per `lora_A` / `lora_B`.
    Tensors,
    /// One packed buffer in ordinary memory (the packed layout, testable without a GPU).
    #[cfg_attr(not(test), allow(dead_code))]
    PackedVec,
    /// One packed buffer in page-locked memory of this device's context.
    #[cfg(feature = "cuda")]
    Pinned(candle_core::CudaDevice),
}

/// Elements each tensor of a packed buffer is aligned to: 8 bf16 = 16 bytes, so that the
/// SGMV kernels' vector loads apply to every slot.
pub(crate) const PACK_ALIGN: usize = 8;

/// Where one tensor lies in a packed buffer: `rows x cols` elements from `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Part {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// A packed buffer of bf16 values.
pub(crate) enum HostBuf {
    Vec(Vec<bf16>),
    #[cfg(feature = "cuda")]
    Pinned(pinned::PinnedBuf),
}

impl HostBuf {
    /// A buffer of at least `len` elements (the elements are unset: the loader writes them).
    pub fn alloc(alloc: &HostAlloc, len: usize) -> std::result::Result<Self, String> {
        match alloc {
            HostAlloc::Tensors | HostAlloc::PackedVec => Ok(Self::Vec(vec![bf16::ZERO; len])),
            #[cfg(feature = "cuda")]
            HostAlloc::Pinned(dev) => pinned::PinnedBuf::take(dev, len).map(Self::Pinned),
        }
    }

    pub fn as_slice(&self) -> &[bf16] {
        match self {
            Self::Vec(v) => v,
            #[cfg(feature = "cuda")]
            Self::Pinned(p) => p.as_slice(),
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [bf16] {
        match self {
            Self::Vec(v) => v,
            #[cfg(feature = "cuda")]
            Self::Pinned(p) => p.as_mut_slice(),
        }
    }

    /// Bytes the buffer holds in host memory: its whole allocation (a reused page-locked
    /// buffer may be up to twice what the adapter needs).
    pub fn held_bytes(&self) -> usize {
        match self {
            Self::Vec(v) => v.capacity() * std::mem::size_of::<bf16>(),
            #[cfg(feature = "cuda")]
            Self::Pinned(p) => p.held_bytes(),
        }
    }

    /// The values as a vector, if they are in ordinary memory.
    pub fn into_vec(self) -> Option<Vec<bf16>> {
        match self {
            Self::Vec(v) => Some(v),
            #[cfg(feature = "cuda")]
            Self::Pinned(_) => None,
        }
    }
}

/// Every tensor of an adapter in one buffer: `parts[layer][projection]` = `(lora_A
/// [rank, d_in], lora_B [d_out, rank])`, each row-major at its offset.
pub(crate) struct PackedWeights {
    pub buf: HostBuf,
    /// Elements in use (the buffer may be longer: page-locked buffers are reused).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub len: usize,
    pub parts: Vec<Vec<Option<(Part, Part)>>>,
}

impl PackedWeights {
    /// One tensor's values.
    pub fn values(&self, part: Part) -> &[bf16] {
        &self.buf.as_slice()[part.offset..part.offset + part.len()]
    }

    /// One tensor as a CPU tensor (a copy).
    pub fn tensor(&self, part: Part) -> Result<Tensor> {
        Tensor::from_slice(self.values(part), (part.rows, part.cols), &Device::Cpu)
    }

    /// The buffer cut into at most `runs` runs of consecutive layers, for copies that the
    /// first layers' compute need not wait for in full: `(first layer, first element)` of
    /// each run, in layer order, the first `(0, 0)`. The tensors lie in layer order (as the
    /// loader packs them), so a run holds every tensor of its layers; runs that would hold
    /// none are left out.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn layer_runs(&self, runs: usize) -> Vec<(usize, usize)> {
        let layers = self.parts.len();
        let per = layers.div_ceil(runs.max(1)).max(1);
        let mut out = vec![(0, 0)];
        for first in (per..layers).step_by(per) {
            let start = self
                .parts
                .iter()
                .skip(first)
                .flatten()
                .flatten()
                .map(|(a, b)| a.offset.min(b.offset))
                .min();
            if let Some(start) = start.filter(|&s| out.last().is_some_and(|&(_, at)| s > at)) {
                out.push((first, start));
            }
        }
        out
    }
}

/// An adapter's weights in host memory.
pub(crate) enum HostWeights {
    /// `[layer][projection]`: `(lora_A [r, d_in], lora_B [d_out, r])` as CPU tensors.
    Tensors(Vec<Vec<Option<(Tensor, Tensor)>>>),
    Packed(PackedWeights),
}

impl HostWeights {
    /// `(lora_A, lora_B)` of one layer's projection as CPU tensors (shared for
    /// [`HostWeights::Tensors`], copied out of a packed buffer).
    pub fn pair(&self, layer: usize, proj: usize) -> Result<Option<(Tensor, Tensor)>> {
        match self {
            Self::Tensors(w) => Ok(w.get(layer).and_then(|l| l[proj].clone())),
            Self::Packed(p) => match p.parts.get(layer).and_then(|l| l[proj]) {
                Some((a, b)) => Ok(Some((p.tensor(a)?, p.tensor(b)?))),
                None => Ok(None),
            },
        }
    }

    /// Elements of all `lora_A` and `lora_B`.
    pub fn elem_count(&self) -> usize {
        match self {
            Self::Tensors(w) => {
                w.iter().flatten().flatten().map(|(a, b)| a.elem_count() + b.elem_count()).sum()
            },
            Self::Packed(p) => {
                p.parts.iter().flatten().flatten().map(|(a, b)| a.len() + b.len()).sum()
            },
        }
    }

    /// Bytes held in host memory: the tensors' values, or the packed buffer's allocation.
    pub fn held_bytes(&self) -> usize {
        match self {
            Self::Tensors(_) => self.elem_count() * self.dtype().size_in_bytes(),
            Self::Packed(p) => p.buf.held_bytes(),
        }
    }

    /// The dtype the weights are kept in.
    pub fn dtype(&self) -> DType {
        DType::BF16
    }
}

#[cfg(feature = "cuda")]
pub(crate) mod pinned {
    //! Page-locked buffers, kept for reuse once their adapter leaves host memory: allocating
    //! (and freeing) page-locked memory costs milliseconds per adapter, and freeing it may
    //! wait for the device.

    use std::sync::{Arc, Mutex, OnceLock};

    use candle_core::cuda_backend::cudarc::driver::{
        result, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtrMut, PinnedHostSlice,
    };
    use candle_core::CudaDevice;
    use half::bf16;

    /// Idle page-locked bytes kept for reuse at most (beyond, a returned buffer is freed).
    const POOL_BYTES: usize = 2 << 30;

    struct Pool {
        idle: Vec<(usize, PinnedHostSlice<bf16>)>,
    }

    fn pool() -> &'static Mutex<Pool> {
        static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
        POOL.get_or_init(|| Mutex::new(Pool { idle: Vec::new() }))
    }

    fn context_key(ctx: &Arc<CudaContext>) -> usize {
        Arc::as_ptr(ctx) as usize
    }

    /// A page-locked buffer of at least `len` bf16; back to the pool when dropped.
    pub(crate) struct PinnedBuf {
        slice: Option<PinnedHostSlice<bf16>>,
        /// Host address of the first element (the slice's, read once).
        ptr: usize,
        len: usize,
        context: usize,
    }

    impl PinnedBuf {
        /// A pooled buffer of this context with room for `len` (at most twice as large, so
        /// that small adapters do not hold large buffers), or a new one.
        pub fn take(dev: &CudaDevice, len: usize) -> std::result::Result<Self, String> {
            let ctx = dev.cuda_stream().context().clone();
            let key = context_key(&ctx);
            let len = len.max(1);
            let reused = {
                let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
                let best = p
                    .idle
                    .iter()
                    .enumerate()
                    .filter(|(_, (k, s))| *k == key && s.len() >= len && s.len() <= 2 * len)
                    .min_by_key(|(_, (_, s))| s.len())
                    .map(|(i, _)| i);
                best.map(|i| p.idle.swap_remove(i).1)
            };
            let mut slice = match reused {
                Some(s) => s,
                // SAFETY: the loader writes every element it hands out before any read.
                None => unsafe { ctx.alloc_pinned_with_flags::<bf16>(len, 0) }
                    .map_err(|e| format!("cannot allocate {len} page-locked bf16: {e}"))?,
            };
            let ptr = slice.as_mut_ptr().map_err(|e| e.to_string())? as usize;
            Ok(Self { slice: Some(slice), ptr, len, context: key })
        }

        /// Bytes of the page-locked allocation this value owns.
        pub fn held_bytes(&self) -> usize {
            self.slice.as_ref().map_or(0, |s| s.num_bytes())
        }

        pub fn as_slice(&self) -> &[bf16] {
            // SAFETY: `ptr` addresses at least `len` elements of the page-locked allocation
            // this value owns; nothing writes it while it is borrowed (copies to the device
            // only read it).
            unsafe { std::slice::from_raw_parts(self.ptr as *const bf16, self.len) }
        }

        pub fn as_mut_slice(&mut self) -> &mut [bf16] {
            // SAFETY: as above, and `&mut self` makes this the only borrow; the loader writes
            // the buffer before any copy of it is queued.
            unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut bf16, self.len) }
        }
    }

    impl Drop for PinnedBuf {
        fn drop(&mut self) {
            let Some(slice) = self.slice.take() else { return };
            let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
            let idle: usize = p.idle.iter().map(|(_, s)| s.num_bytes()).sum();
            if idle + slice.num_bytes() <= POOL_BYTES {
                p.idle.push((self.context, slice));
            }
        }
    }

    /// Copies the first `len` elements of `host` to a new device buffer: allocated in the
    /// order of `dev`'s compute stream (so freed in that order too), copied on `upload`,
    /// which waits for the allocation, one copy per run that `starts` begins (ascending
    /// element offsets; the first run from 0 whatever `starts` says, one run when it is
    /// empty). Returns the buffer and one event per run, recorded when that run's copy has
    /// ended (the last one marks the end of the whole copy); the caller keeps `host` alive
    /// and unchanged until the last event has passed, and makes the compute stream wait for
    /// a run's event before reading that run.
    pub fn upload(
        host: &PinnedBuf,
        len: usize,
        starts: &[usize],
        dev: &CudaDevice,
        upload: &Arc<CudaStream>,
    ) -> Result<(CudaSlice<bf16>, Vec<CudaEvent>), String> {
        let err = |what: &str, e: &dyn std::fmt::Display| format!("adapter upload: {what}: {e}");
        let compute = dev.cuda_stream();
        let len = len.min(host.len);
        // SAFETY: every element is written by the copies below before the compute stream,
        // which waits for their events, reads any.
        let mut dst = unsafe { compute.alloc::<bf16>(len.max(1)) }.map_err(|e| err("alloc", &e))?;
        upload.join(&compute).map_err(|e| err("order after the allocation", &e))?;
        let runs = starts.len().max(1);
        let mut events = Vec::with_capacity(runs);
        {
            let (dptr, _record) = dst.device_ptr_mut(upload);
            for i in 0..runs {
                let from = if i == 0 { 0 } else { starts.get(i).map_or(len, |&s| s.min(len)) };
                let to = starts.get(i + 1).map_or(len, |&s| s.min(len));
                if to > from {
                    let at = dptr + (from * std::mem::size_of::<bf16>()) as u64;
                    // SAFETY: `at` addresses `to - from` of the `len` bf16 allocated above; the
                    // source is that many page-locked elements, which the caller keeps alive
                    // until the last event recorded here has passed.
                    unsafe {
                        result::memcpy_htod_async(
                            at,
                            &host.as_slice()[from..to],
                            upload.cu_stream(),
                        )
                    }
                    .map_err(|e| err("copy", &e))?;
                }
                events.push(upload.record_event(None).map_err(|e| err("event", &e))?);
            }
        }
        Ok((dst, events))
    }
}
