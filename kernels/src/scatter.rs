//! Row scatter into a paged KV cache, in place: `dst[index[i]] = src[i]` for every row `i`.
//!
//! The engine writes each step's keys and values into their cache slots with this, once per
//! layer. candle's `scatter_set` does the same job but loops over the rows inside each
//! thread (one thread per column), so its time grows with the number of rows: for a
//! 512-token prefill of a Llama-3-8B layer that is 512 dependent iterations per thread.
//! Here (CUDA, `cuda/scatter_rows.cu`) every row element is its own thread, 16-byte vectors
//! where alignment allows.
//!
//! The index is validated once on the host ([`RowIndex`]: the largest row is kept, and each
//! call checks it against the destination in O(1)), and uploaded to the device on the
//! first CUDA call, then shared by every layer.

#[cfg(feature = "cuda")]
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Tensor};
use half::{bf16, f16};

use crate::candle_ops::{cpu_slice, cpu_slice_mut, to_candle, with_element};
use crate::error::{check_shape, KernelError, Result};

/// The destination rows of one step's scatter, checked on the host.
pub struct RowIndex {
    rows: Vec<u32>,
    max: Option<u32>,
    #[cfg(feature = "cuda")]
    gpu: Mutex<Option<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>>>>,
}

impl RowIndex {
    /// Row `rows[i]` of the destination receives row `i` of the source.
    pub fn new(rows: Vec<u32>) -> Self {
        let max = rows.iter().copied().max();
        Self {
            rows,
            max,
            #[cfg(feature = "cuda")]
            gpu: Mutex::new(None),
        }
    }

    /// Number of source rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The destination rows.
    pub fn rows(&self) -> &[u32] {
        &self.rows
    }

    /// Replaces the rows with as many others, on the host and, when they were uploaded, in
    /// place on the device (the same device buffer: a captured CUDA graph that reads it sees
    /// the new rows on its next replay). The copy is ordered on candle's stream after the
    /// work already queued there.
    pub fn overwrite(&mut self, rows: Vec<u32>) -> Result<()> {
        check_shape("rows (a RowIndex keeps its length)", &[self.rows.len()], &[rows.len()])?;
        #[cfg(feature = "cuda")]
        if let Some(gpu) = self.gpu.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            crate::graph_inputs::upload_into(gpu, &rows)?;
        }
        self.max = rows.iter().copied().max();
        self.rows = rows;
        Ok(())
    }

    /// The largest destination row.
    pub fn max_row(&self) -> Option<u32> {
        self.max
    }

    /// The rows on `dev`, uploaded on the first call and shared by every later one.
    #[cfg(feature = "cuda")]
    pub(crate) fn device_rows(
        &self,
        dev: &candle_core::CudaDevice,
    ) -> Result<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>>> {
        let mut cached = self.gpu.lock().unwrap_or_else(|e| e.into_inner());
        match cached.as_ref() {
            Some(r) => Ok(r.clone()),
            None => {
                let r = std::sync::Arc::new(dev.clone_htod(&self.rows)?);
                *cached = Some(r.clone());
                Ok(r)
            },
        }
    }
}

/// `dst[index[i], ..] = src[i, ..]`: `dst` is `[num_rows, width]`, `src` `[index.len(),
/// width]`, both contiguous, of one dtype (f32, bf16, f16) and device. Rows of `dst` not in
/// the index keep their values; an index naming one row twice leaves either source row there.
pub fn scatter_rows(dst: &Tensor, index: &RowIndex, src: &Tensor) -> Result<()> {
    let (num_rows, width) = dst.dims2().map_err(|_| KernelError::Shape {
        tensor: "dst (expected [num_rows, width])".into(),
        expected: vec![0, 0],
        actual: dst.dims().to_vec(),
    })?;
    check_shape("src", &[index.len(), width], src.dims())?;
    if src.dtype() != dst.dtype() {
        return Err(KernelError::DType {
            tensor: "src".into(),
            expected: dst.dtype(),
            actual: src.dtype(),
        });
    }
    if !src.device().same_device(dst.device()) {
        return Err(KernelError::Device {
            tensor: "src".into(),
            expected: format!("{:?}", dst.device().location()),
            actual: format!("{:?}", src.device().location()),
        });
    }
    for (t, name) in [(dst, "dst"), (src, "src")] {
        if !t.is_contiguous() {
            return Err(KernelError::NotContiguous { tensor: name.into() });
        }
    }
    if let Some(max) = index.max.filter(|&m| m as usize >= num_rows) {
        return Err(KernelError::RowOutOfRange { row: max, rows: num_rows });
    }
    if index.is_empty() || width == 0 {
        return Ok(());
    }
    dst.inplace_op2(src, &ScatterOp { index, width })?;
    Ok(())
}

struct ScatterOp<'a> {
    index: &'a RowIndex,
    width: usize,
}

impl candle_core::InplaceOp2 for ScatterOp<'_> {
    fn name(&self) -> &'static str {
        "scatter-rows"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<()> {
        let w = self.width;
        let mut run = || -> Result<()> {
            with_element!(src.dtype(), T => {
                let src = cpu_slice::<T>(src, sl, "src")?;
                let dst = cpu_slice_mut::<T>(dst, dl, "dst")?;
                for (row, &to) in src.chunks_exact(w).zip(&self.index.rows) {
                    let to = to as usize * w;
                    dst[to..to + w].copy_from_slice(row);
                }
                Ok(())
            })
        };
        run().map_err(to_candle)
    }

    fn cuda_fwd(
        &self,
        dst: &mut CudaStorage,
        dl: &Layout,
        src: &CudaStorage,
        sl: &Layout,
    ) -> candle_core::Result<()> {
        #[cfg(feature = "cuda")]
        {
            cuda::scatter(dst, dl, src, sl, self.index, self.width).map_err(to_candle)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (dst, dl, src, sl);
            Err(to_candle(KernelError::UnsupportedDevice("cuda (feature `cuda` is off)".into())))
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
    use candle_core::{CudaDevice, CudaStorage, Layout};

    use super::RowIndex;
    use crate::cuda::{cuda_err, slice_address, storage_address};
    use crate::error::Result;

    static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/scatter_rows.fatbin"));

    /// The three vector widths' kernels (16, 4, 2 bytes), loaded once per CUDA context.
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
        let f = |name: &str| module.load_function(name).map_err(cuda_err);
        let fs = Arc::new([f("scatter_rows_16")?, f("scatter_rows_4")?, f("scatter_rows_2")?]);
        loaded.insert(key, fs.clone());
        Ok(fs)
    }

    pub(super) fn scatter(
        dst: &mut CudaStorage,
        dl: &Layout,
        src: &CudaStorage,
        sl: &Layout,
        index: &RowIndex,
        width: usize,
    ) -> Result<()> {
        let dev = dst.device().clone();
        let stream = dev.cuda_stream();
        let rows = index.device_rows(&dev)?;
        let (d, s) = (storage_address(dst, dl, &stream)?, storage_address(src, sl, &stream)?);
        let row_bytes = width * src.dtype().size_in_bytes();
        let (f, vec) = match (row_bytes % 16, d % 16, s % 16, row_bytes % 4) {
            (0, 0, 0, _) => (0, 16),
            (_, _, _, 0) if d % 4 == 0 && s % 4 == 0 => (1, 4),
            _ => (2, 2),
        };
        let fs = functions(&dev)?;
        let (n, w) = (index.rows.len() as i64, (row_bytes / vec) as i64);
        let total = (n * w) as u64;
        let blocks = total.div_ceil(256).clamp(1, 65_535) as u32;
        let cfg =
            LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let idx = slice_address(&rows, &stream);
        let mut b = stream.launch_builder(&fs[f]);
        b.arg(&s).arg(&d).arg(&idx).arg(&n).arg(&w);
        // SAFETY: `s` and `d` address contiguous storages of n x width and (checked by
        // `scatter_rows`) more than every index row x width elements; `idx` addresses the
        // uploaded index of n u32, kept alive by the RowIndex; the stream orders this launch
        // after the work that produced `src`.
        unsafe { b.launch(cfg) }.map_err(cuda_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn writes_each_row_to_its_index_and_leaves_the_rest() {
        let dst = Tensor::zeros((6, 3), DType::F32, &Device::Cpu).unwrap();
        let src = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap();
        scatter_rows(&dst, &RowIndex::new(vec![4, 1]), &src).unwrap();
        let got = dst.to_vec2::<f32>().unwrap();
        assert_eq!(got[4], [1., 2., 3.]);
        assert_eq!(got[1], [4., 5., 6.]);
        for r in [0, 2, 3, 5] {
            assert_eq!(got[r], [0., 0., 0.], "row {r}");
        }
    }

    #[test]
    fn rejects_rows_past_the_end_and_mismatched_shapes() {
        let dst = Tensor::zeros((6, 3), DType::BF16, &Device::Cpu).unwrap();
        let src = Tensor::zeros((2, 3), DType::BF16, &Device::Cpu).unwrap();
        let err = scatter_rows(&dst, &RowIndex::new(vec![0, 6]), &src).unwrap_err();
        assert!(matches!(err, KernelError::RowOutOfRange { row: 6, rows: 6 }), "{err}");
        let err = scatter_rows(&dst, &RowIndex::new(vec![0]), &src).unwrap_err();
        assert!(matches!(err, KernelError::Shape { .. }), "{err}");
        let f32_src = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let err = scatter_rows(&dst, &RowIndex::new(vec![0, 1]), &f32_src).unwrap_err();
        assert!(matches!(err, KernelError::DType { .. }), "{err}");
    }
}
