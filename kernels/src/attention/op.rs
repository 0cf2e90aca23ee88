//! The attention call on candle tensors: validation, then the CPU or CUDA path through
//! candle's custom-op hooks (which hand each path its storage).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Shape, Storage, Tensor, WithDType};
use half::{bf16, f16};

use super::{check_call, cpu, DecodeBlocks, Geometry};
use crate::candle_ops::{cpu_slice, cpu_slice_mut, to_candle, with_element};
use crate::element::Element;
use crate::error::{KernelError, Result};

/// [`super::paged_decode_attention`] with tables validated beforehand: `blocks` is checked
/// against the cache's size here (O(1)), so one [`DecodeBlocks`] serves every layer.
pub fn paged_decode_attention_with(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    blocks: &DecodeBlocks,
    scale: f32,
) -> Result<Tensor> {
    let geometry = check_call(q, k_cache, v_cache, blocks)?;
    let op = AttentionOp { q: None, k: k_cache, v: v_cache, blocks, geometry, scale };
    Ok(q.apply_op1_no_bwd(&op)?)
}

/// [`paged_decode_attention_with`] writing into `out` (`[num_seqs, num_heads, head_dim]`,
/// contiguous, q's dtype and device; it must not share storage with q or the caches).
/// Every element of `out` is written.
pub fn paged_decode_attention_into(
    out: &Tensor,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    blocks: &DecodeBlocks,
    scale: f32,
) -> Result<()> {
    let geometry = check_call(q, k_cache, v_cache, blocks)?;
    super::check_tensor(out, "out", q.dtype(), q.device())?;
    crate::error::check_shape("out", q.dims(), out.dims())?;
    let op = AttentionOp { q: Some(q), k: k_cache, v: v_cache, blocks, geometry, scale };
    Ok(out.inplace_op1(&op)?)
}

/// One call's operands besides the storage candle hands to the hook: for the allocating op
/// that storage is q; for the in-place op it is `out`, and q is read here.
struct AttentionOp<'a> {
    q: Option<&'a Tensor>,
    k: &'a Tensor,
    v: &'a Tensor,
    blocks: &'a DecodeBlocks,
    geometry: Geometry,
    scale: f32,
}

fn not_cpu(name: &str) -> KernelError {
    KernelError::Device {
        tensor: name.into(),
        expected: "Cpu".into(),
        actual: "another device".into(),
    }
}

impl AttentionOp<'_> {
    fn out_len(&self) -> usize {
        let g = &self.geometry;
        g.num_seqs * g.num_heads * g.head_dim
    }

    /// Runs the CPU path with q given as a storage.
    fn cpu_run(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        out: &mut CpuStorage,
        ol: &Layout,
    ) -> Result<()> {
        let (ks, kl) = self.k.storage_and_layout();
        let (vs, vl) = self.v.storage_and_layout();
        let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&*ks, &*vs) else {
            return Err(not_cpu("k_cache / v_cache"));
        };
        with_element!(q.dtype(), T => {
            let q = cpu_slice::<T>(q, ql, "q")?;
            let k = cpu_slice::<T>(ks, kl, "k_cache")?;
            let v = cpu_slice::<T>(vs, vl, "v_cache")?;
            let out = cpu_slice_mut::<T>(out, ol, "out")?;
            cpu::decode(q, k, v, out, &self.geometry, self.blocks, self.scale);
            Ok(())
        })
    }

    /// A NaN-filled output storage: an element the kernel failed to write cannot pass.
    fn cpu_output(&self, dtype: DType) -> Result<CpuStorage> {
        let n = self.out_len();
        with_element!(dtype, T => {
            Ok(<T as WithDType>::to_cpu_storage_owned(vec![<T as Element>::from_f32(f32::NAN); n]))
        })
    }
}

impl candle_core::CustomOp1 for AttentionOp<'_> {
    fn name(&self) -> &'static str {
        "paged-decode-attention"
    }

    fn cpu_fwd(&self, q: &CpuStorage, ql: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let run = || -> Result<CpuStorage> {
            let mut out = self.cpu_output(q.dtype())?;
            let ol = Layout::contiguous(self.out_len());
            self.cpu_run(q, ql, &mut out, &ol)?;
            Ok(out)
        };
        let g = &self.geometry;
        Ok((run().map_err(to_candle)?, Shape::from((g.num_seqs, g.num_heads, g.head_dim))))
    }

    fn cuda_fwd(&self, q: &CudaStorage, ql: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        {
            let g = &self.geometry;
            let out = super::cuda::decode_alloc(q, ql, self.k, self.v, g, self.blocks, self.scale)
                .map_err(to_candle)?;
            Ok((out, Shape::from((g.num_seqs, g.num_heads, g.head_dim))))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (q, ql);
            Err(to_candle(KernelError::UnsupportedDevice("cuda (feature `cuda` is off)".into())))
        }
    }
}

impl candle_core::InplaceOp1 for AttentionOp<'_> {
    fn name(&self) -> &'static str {
        "paged-decode-attention-into"
    }

    fn cpu_fwd(&self, out: &mut CpuStorage, ol: &Layout) -> candle_core::Result<()> {
        let mut run = || -> Result<()> {
            let q =
                self.q.ok_or_else(|| KernelError::Cuda("in-place attention without q".into()))?;
            let (qs, ql) = q.storage_and_layout();
            let Storage::Cpu(qs) = &*qs else { return Err(not_cpu("q")) };
            self.cpu_run(qs, ql, out, ol)
        };
        run().map_err(to_candle)
    }

    fn cuda_fwd(&self, out: &mut CudaStorage, ol: &Layout) -> candle_core::Result<()> {
        #[cfg(feature = "cuda")]
        {
            let mut run = || -> Result<()> {
                let q = self
                    .q
                    .ok_or_else(|| KernelError::Cuda("in-place attention without q".into()))?;
                let (qs, ql) = q.storage_and_layout();
                let Storage::Cuda(qs) = &*qs else {
                    return Err(KernelError::UnsupportedDevice("q is not on CUDA".into()));
                };
                super::cuda::decode_into(
                    out,
                    ol,
                    qs,
                    ql,
                    self.k,
                    self.v,
                    &self.geometry,
                    self.blocks,
                    self.scale,
                )
            };
            run().map_err(to_candle)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (out, ol);
            Err(to_candle(KernelError::UnsupportedDevice("cuda (feature `cuda` is off)".into())))
        }
    }
}
