//! Inputs rewritten in place between replays of a captured CUDA graph. A graph records the
//! device addresses its kernels read, so a step replayed with new token ids, positions or
//! block tables needs those written into the very buffers it was captured with: these
//! copies do that, ordered on candle's stream after the work already queued there (a replay
//! still running reads the old values; the next one the new).

use candle_core::cuda_backend::cudarc::driver::{result, CudaSlice, DevicePtr, DeviceRepr};
use candle_core::{DType, Storage, Tensor};

use crate::cuda::cuda_err;
use crate::error::{check_shape, KernelError, Result};

/// Copies `data` from the host into the first `data.len()` elements of `dst`.
pub(crate) fn upload_into<T: DeviceRepr>(dst: &CudaSlice<T>, data: &[T]) -> Result<()> {
    if data.len() > dst.len() {
        return Err(KernelError::Shape {
            tensor: "upload (at most the device buffer's length)".into(),
            expected: vec![dst.len()],
            actual: vec![data.len()],
        });
    }
    let stream = dst.stream();
    let (ptr, _sync) = dst.device_ptr(stream);
    stream.context().bind_to_thread().map_err(cuda_err)?;
    // SAFETY: `ptr` addresses `dst`, which holds at least `data.len()` elements (checked above)
    // and outlives the copy, which the driver stages from pageable host memory before it
    // returns (so `data` may be dropped after); the copy is ordered on `dst`'s stream.
    unsafe { result::memcpy_htod_async(ptr, data, stream.cu_stream()) }.map_err(cuda_err)
}

/// Writes `data` into a contiguous u32 tensor on a CUDA device, in place (its storage keeps
/// its address). `data` has the tensor's element count.
pub fn overwrite_u32(t: &Tensor, data: &[u32]) -> Result<()> {
    if t.dtype() != DType::U32 {
        return Err(KernelError::DType {
            tensor: "overwrite".into(),
            expected: DType::U32,
            actual: t.dtype(),
        });
    }
    if !t.is_contiguous() {
        return Err(KernelError::NotContiguous { tensor: "overwrite".into() });
    }
    check_shape("overwrite (the tensor's element count)", &[t.elem_count()], &[data.len()])?;
    let (s, l) = t.storage_and_layout();
    let Storage::Cuda(s) = &*s else {
        return Err(KernelError::UnsupportedDevice("overwrite_u32 needs a CUDA tensor".into()));
    };
    let slice = s.as_cuda_slice::<u32>()?;
    let stream = slice.stream();
    let (base, _sync) = slice.device_ptr(stream);
    let ptr = base + (l.start_offset() * 4) as u64;
    stream.context().bind_to_thread().map_err(cuda_err)?;
    // SAFETY: the tensor is contiguous from `start_offset` with `data.len()` elements
    // (checked above) in a storage kept alive by `s` for the call; the driver stages the
    // pageable source before returning; the copy is ordered on the storage's stream.
    unsafe { result::memcpy_htod_async(ptr, data, stream.cu_stream()) }.map_err(cuda_err)
}
