//! The decoder layer's elementwise steps, fused: fewer launches per layer for a decode step
//! that is bound by the host's launch rate (each candle operation costs ~13 us of host time
//! on the engine's GPU path, several times what its kernel takes at decode sizes).
//!
//! - [`add_rms_norm`]: the residual add and the RMSNorm that follows it, one pass;
//! - [`silu_mul`]: SwiGLU's `silu(gate) * up` from one gate|up projection;
//! - [`rope_store_kv`]: the rotary embedding of q and k, and the writes of k and v into
//!   their paged-cache rows, from one q|k|v projection.
//!
//! On CUDA (`cuda/layer_ops.cu`) each output element is computed with the operations, in the
//! element type and order, of the candle kernels they replace (binary add, rmsnorm, silu,
//! mul, rope), so a row's result depends on that row alone. On the CPU (the tensor path's
//! tests) they compute the same functions in f32.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Shape, Tensor};
use half::{bf16, f16};

use crate::candle_ops::{cpu_slice, to_candle, with_element};
use crate::element::{Element, Widen};
use crate::error::{check_shape, KernelError, Result};
use crate::scatter::{scatter_rows, RowIndex};

/// Which dimensions of a head the rotary embedding rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotaryPairs {
    /// Dimension `i` with `i + head_dim / 2` (Hugging Face checkpoints).
    Halves,
    /// Dimension `2i` with `2i + 1` (GGUF).
    Adjacent,
}

/// The head layout of a q|k|v projection's rows: `heads` query heads, then `kv_heads` key
/// heads, then `kv_heads` value heads, `head_dim` each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvHeads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl QkvHeads {
    fn width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

fn same_dtype(t: &Tensor, name: &str, dtype: DType) -> Result<()> {
    if t.dtype() != dtype {
        return Err(KernelError::DType { tensor: name.into(), expected: dtype, actual: t.dtype() });
    }
    Ok(())
}

fn same_device(t: &Tensor, name: &str, other: &Tensor) -> Result<()> {
    if !t.device().same_device(other.device()) {
        return Err(KernelError::Device {
            tensor: name.into(),
            expected: format!("{:?}", other.device().location()),
            actual: format!("{:?}", t.device().location()),
        });
    }
    Ok(())
}

fn contiguous(t: &Tensor, name: &str) -> Result<()> {
    if !t.is_contiguous() {
        return Err(KernelError::NotContiguous { tensor: name.into() });
    }
    Ok(())
}

/// `x + delta` and `rms_norm(x + delta) * weight` in one pass: `x`, `delta` `[rows, width]`,
/// `weight` `[width]`, one dtype and device, contiguous. Returns `(new residual, normed)`,
/// both `[rows, width]` (views of one buffer).
pub fn add_rms_norm(
    x: &Tensor,
    delta: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let (rows, width) = x.dims2().map_err(|_| KernelError::Shape {
        tensor: "x (expected [rows, width])".into(),
        expected: vec![0, 0],
        actual: x.dims().to_vec(),
    })?;
    check_shape("delta", &[rows, width], delta.dims())?;
    check_shape("weight", &[width], weight.dims())?;
    for (t, name) in [(x, "x"), (delta, "delta"), (weight, "weight")] {
        same_dtype(t, name, x.dtype())?;
        same_device(t, name, x)?;
        contiguous(t, name)?;
    }
    let out = x.apply_op3_no_bwd(delta, weight, &AddRmsNorm { eps })?;
    Ok((out.get(0)?, out.get(1)?))
}

/// `silu(gate) * up` of a `[rows, 2 f]` gate|up projection (gate in the first `f` columns):
/// returns `[rows, f]`.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    let (_, cols) = gate_up.dims2().map_err(|_| KernelError::Shape {
        tensor: "gate_up (expected [rows, 2 f])".into(),
        expected: vec![0, 0],
        actual: gate_up.dims().to_vec(),
    })?;
    if cols % 2 != 0 {
        return Err(KernelError::Shape {
            tensor: "gate_up (expected an even number of columns)".into(),
            expected: vec![gate_up.dims()[0], cols + 1],
            actual: gate_up.dims().to_vec(),
        });
    }
    contiguous(gate_up, "gate_up")?;
    Ok(gate_up.apply_op1_no_bwd(&SiluMul)?)
}

/// `t` in f32 (exact from bf16 and f16). On CUDA a 16-bit tensor of whole, aligned 8-element
/// vectors goes through one vectorized launch (`widen_f32_vec8`: 16-byte loads and stores);
/// anything else through candle's cast. The logits of a decode step cross here every step:
/// at batch 64 over the 8B shape's 128,256-entry vocabulary, candle's element-wise cast took
/// 86 us on an H100, 11% of the copy rate (docs/benchmarks.md, "Decode step, kernel by
/// kernel").
pub fn to_f32(t: &Tensor) -> Result<Tensor> {
    if t.device().is_cuda() && matches!(t.dtype(), DType::BF16 | DType::F16) {
        return Ok(t.apply_op1_no_bwd(&WidenF32)?);
    }
    Ok(t.to_dtype(DType::F32)?)
}

/// From a q|k|v projection `qkv` (`[rows, (heads + 2 kv_heads) * head_dim]`, contiguous):
/// rotates q and k by each row's angles (`cos`, `sin`: `[rows, head_dim / 2]`), writes
/// row `i`'s rotated k and its v into row `slots[i]` of `keys` and `values`
/// (`[cache_rows, kv_heads * head_dim]`, in place), and returns the rotated q
/// (`[rows, heads * head_dim]`).
#[allow(clippy::too_many_arguments)]
pub fn rope_store_kv(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    pairs: RotaryPairs,
    heads: QkvHeads,
    slots: &RowIndex,
    keys: &Tensor,
    values: &Tensor,
) -> Result<Tensor> {
    let rows = slots.len();
    let (hd, kv_width) = (heads.head_dim, heads.kv_heads * heads.head_dim);
    check_shape("qkv", &[rows, heads.width()], qkv.dims())?;
    check_shape("cos", &[rows, hd / 2], cos.dims())?;
    check_shape("sin", &[rows, hd / 2], sin.dims())?;
    let cache_rows = keys.dims2().map(|(r, _)| r).unwrap_or(0);
    check_shape("keys", &[cache_rows, kv_width], keys.dims())?;
    check_shape("values", &[cache_rows, kv_width], values.dims())?;
    if hd % 2 != 0 {
        return Err(KernelError::Shape {
            tensor: "head_dim (expected even)".into(),
            expected: vec![hd + 1],
            actual: vec![hd],
        });
    }
    for (t, name) in [(qkv, "qkv"), (cos, "cos"), (sin, "sin"), (keys, "keys"), (values, "values")]
    {
        same_dtype(t, name, qkv.dtype())?;
        same_device(t, name, qkv)?;
        contiguous(t, name)?;
    }
    if let Some(max) = slots.rows().iter().copied().max().filter(|&m| m as usize >= cache_rows) {
        return Err(KernelError::RowOutOfRange { row: max, rows: cache_rows });
    }
    if qkv.device().is_cpu() {
        // Rotated q|k|v, then the scatter: the tests' path, no launch count to save.
        let rotated = qkv.apply_op3_no_bwd(cos, sin, &Rope { pairs, heads })?;
        let part = |start: usize, len: usize| -> Result<Tensor> {
            Ok(rotated.narrow(1, start, len)?.contiguous()?)
        };
        let q_width = heads.heads * hd;
        scatter_rows(keys, slots, &part(q_width, kv_width)?)?;
        scatter_rows(values, slots, &part(q_width + kv_width, kv_width)?)?;
        return part(0, q_width);
    }
    #[cfg(feature = "cuda")]
    {
        let caches = cuda::CacheAddresses::of(keys, values)?;
        Ok(qkv.apply_op3_no_bwd(cos, sin, &RopeStore { pairs, heads, slots, caches })?)
    }
    #[cfg(not(feature = "cuda"))]
    Err(KernelError::UnsupportedDevice(format!("{:?}", qkv.device().location())))
}

struct AddRmsNorm {
    eps: f32,
}

impl candle_core::CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        d: &CpuStorage,
        dl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = xl.shape().dims2()?;
        let run = || -> Result<CpuStorage> {
            with_element!(x.dtype(), T => {
                let x = cpu_slice::<T>(x, xl, "x")?;
                let d = cpu_slice::<T>(d, dl, "delta")?;
                let w = cpu_slice::<T>(w, wl, "weight")?;
                let mut out = vec![T::from_f32(0.0); 2 * rows * width];
                let (res, normed) = out.split_at_mut(rows * width);
                for r in 0..rows {
                    let span = r * width..(r + 1) * width;
                    let mut sum = 0f32;
                    for ((o, &a), &b) in res[span.clone()].iter_mut().zip(&x[span.clone()]).zip(&d[span.clone()]) {
                        *o = T::from_f32(a.to_f32() + b.to_f32());
                        let v = o.to_f32();
                        sum += v * v;
                    }
                    let scale = 1.0 / (sum / width as f32 + self.eps).sqrt();
                    for ((o, &v), &g) in normed[span.clone()].iter_mut().zip(&res[span]).zip(w) {
                        *o = T::from_f32(scale * v.to_f32() * g.to_f32());
                    }
                }
                Ok(T::into_storage(out))
            })
        };
        Ok((run().map_err(to_candle)?, Shape::from((2, rows, width))))
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        d: &CudaStorage,
        dl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        {
            let (rows, width) = xl.shape().dims2()?;
            let out = cuda::add_rms_norm(x, xl, d, dl, w, wl, rows, width, self.eps)
                .map_err(to_candle)?;
            Ok((out, Shape::from((2, rows, width))))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (x, xl, d, dl, w, wl);
            Err(to_candle(KernelError::UnsupportedDevice("cuda (feature `cuda` is off)".into())))
        }
    }
}

struct SiluMul;

impl candle_core::CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        let f = cols / 2;
        let run = || -> Result<CpuStorage> {
            with_element!(s.dtype(), T => {
                let gu = cpu_slice::<T>(s, l, "gate_up")?;
                let mut out = Vec::with_capacity(rows * f);
                for row in gu.chunks_exact(cols) {
                    let (gate, up) = row.split_at(f);
                    out.extend(gate.iter().zip(up).map(|(&g, &u)| {
                        let g = g.to_f32();
                        let s = T::from_f32(g / (1.0 + (-g).exp()));
                        T::from_f32(s.to_f32() * u.to_f32())
                    }));
                }
                Ok(T::into_storage(out))
            })
        };
        Ok((run().map_err(to_candle)?, Shape::from((rows, f))))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        {
            let (rows, cols) = l.shape().dims2()?;
            let out = cuda::silu_mul(s, l, rows, cols / 2).map_err(to_candle)?;
            Ok((out, Shape::from((rows, cols / 2))))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (s, l);
            Err(to_candle(KernelError::UnsupportedDevice("cuda (feature `cuda` is off)".into())))
        }
    }
}

/// [`to_f32`]'s CUDA launch (the CPU widens through candle before it gets here).
struct WidenF32;

impl candle_core::CustomOp1 for WidenF32 {
    fn name(&self) -> &'static str {
        "widen-f32"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((s.to_dtype(l, DType::F32)?, l.shape().clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        {
            Ok((cuda::widen_f32(s, l).map_err(to_candle)?, l.shape().clone()))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (s, l);
            Err(to_candle(KernelError::UnsupportedDevice("cuda (feature `cuda` is off)".into())))
        }
    }
}

/// The CPU half of [`rope_store_kv`]: q|k|v with q and k rotated.
struct Rope {
    pairs: RotaryPairs,
    heads: QkvHeads,
}

/// Rotates the pairs of one head in place, as candle's rope: `x1 c - x2 s`, `x1 s + x2 c`.
fn rotate_head<T: Element>(head: &mut [T], cos: &[T], sin: &[T], pairs: RotaryPairs) {
    let half = head.len() / 2;
    for i in 0..half {
        let (i1, i2) = match pairs {
            RotaryPairs::Halves => (i, i + half),
            RotaryPairs::Adjacent => (2 * i, 2 * i + 1),
        };
        let (c, s) = (cos[i].to_f32(), sin[i].to_f32());
        let (x1, x2) = (head[i1].to_f32(), head[i2].to_f32());
        head[i1] = T::from_f32(x1 * c - x2 * s);
        head[i2] = T::from_f32(x1 * s + x2 * c);
    }
}

impl candle_core::CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope-qk"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        ql: &Layout,
        cos: &CpuStorage,
        cl: &Layout,
        sin: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = self.heads;
        let (half, width) = (h.head_dim / 2, h.width());
        let run = || -> Result<CpuStorage> {
            with_element!(qkv.dtype(), T => {
                let mut out = cpu_slice::<T>(qkv, ql, "qkv")?.to_vec();
                let cos = cpu_slice::<T>(cos, cl, "cos")?;
                let sin = cpu_slice::<T>(sin, sl, "sin")?;
                for (r, row) in out.chunks_exact_mut(width).enumerate() {
                    let (c, s) = (&cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half]);
                    let rotated = (h.heads + h.kv_heads) * h.head_dim;
                    for head in row[..rotated].chunks_exact_mut(h.head_dim) {
                        rotate_head(head, c, s, self.pairs);
                    }
                }
                Ok(T::into_storage(out))
            })
        };
        Ok((run().map_err(to_candle)?, ql.shape().clone()))
    }
}

/// The CUDA [`rope_store_kv`]: q out, k and v written into the caches.
#[cfg(feature = "cuda")]
struct RopeStore<'a> {
    pairs: RotaryPairs,
    heads: QkvHeads,
    slots: &'a RowIndex,
    caches: cuda::CacheAddresses,
}

#[cfg(feature = "cuda")]
impl candle_core::CustomOp3 for RopeStore<'_> {
    fn name(&self) -> &'static str {
        "rope-store-kv"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(to_candle(KernelError::UnsupportedDevice("cpu (rope_store_kv's CUDA op)".into())))
    }

    fn cuda_fwd(
        &self,
        qkv: &CudaStorage,
        ql: &Layout,
        cos: &CudaStorage,
        cl: &Layout,
        sin: &CudaStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let h = self.heads;
        let rows = self.slots.len();
        let q = cuda::rope_store_kv(
            (qkv, ql),
            (cos, cl),
            (sin, sl),
            self.pairs,
            h,
            self.slots,
            &self.caches,
        )
        .map_err(to_candle)?;
        Ok((q, Shape::from((rows, h.heads * h.head_dim))))
    }
}

/// Element types with a CPU storage constructor.
trait IntoStorage: Sized {
    fn into_storage(v: Vec<Self>) -> CpuStorage;
}

impl IntoStorage for f32 {
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl IntoStorage for bf16 {
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::BF16(v)
    }
}

impl IntoStorage for f16 {
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F16(v)
    }
}

#[cfg(feature = "cuda")]
mod cuda;

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> =
            (0..n).map(|i| ((i as f64 * 0.37 + seed as f64 * 0.91).sin() * 1.3) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn add_rms_norm_matches_add_then_candle_rms_norm() {
        let (x, d, w) = (rand(&[5, 48], 1), rand(&[5, 48], 2), rand(&[48], 3));
        let (res, h) = add_rms_norm(&x, &d, &w, 1e-5).unwrap();
        let sum = (&x + &d).unwrap();
        let want = candle_nn::ops::rms_norm(&sum, &w, 1e-5).unwrap();
        let diff =
            (h - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
        assert_eq!(res.to_vec2::<f32>().unwrap(), sum.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn silu_mul_matches_silu_times_up() {
        let gu = rand(&[3, 2 * 40], 4);
        let (g, u) = (gu.narrow(1, 0, 40).unwrap(), gu.narrow(1, 40, 40).unwrap());
        let want = (candle_nn::ops::silu(&g).unwrap() * u).unwrap();
        let got = silu_mul(&gu).unwrap();
        let diff =
            (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn rope_store_kv_matches_candle_rope_and_scatter() {
        let heads = QkvHeads { heads: 4, kv_heads: 2, head_dim: 8 };
        let rows = 3;
        let qkv = rand(&[rows, heads.width()], 5);
        let (cos, sin) = (rand(&[rows, 4], 6), rand(&[rows, 4], 7));
        for pairs in [RotaryPairs::Halves, RotaryPairs::Adjacent] {
            let keys = Tensor::zeros((10, 16), DType::F32, &Device::Cpu).unwrap();
            let values = Tensor::zeros((10, 16), DType::F32, &Device::Cpu).unwrap();
            let slots = RowIndex::new(vec![7, 2, 4]);
            let q = rope_store_kv(&qkv, &cos, &sin, pairs, heads, &slots, &keys, &values).unwrap();
            let rope = |x: Tensor, h: usize| {
                let x4 = x.reshape((rows, h, 1, 8)).unwrap();
                let (c, s) =
                    (cos.reshape((rows, 1, 4)).unwrap(), sin.reshape((rows, 1, 4)).unwrap());
                let out = match pairs {
                    RotaryPairs::Halves => candle_nn::rotary_emb::rope(&x4, &c, &s),
                    RotaryPairs::Adjacent => candle_nn::rotary_emb::rope_i(&x4, &c, &s),
                };
                out.unwrap().reshape((rows, h * 8)).unwrap()
            };
            let part = |s: usize, l: usize| qkv.narrow(1, s, l).unwrap().contiguous().unwrap();
            let (want_q, want_k) = (rope(part(0, 32), 4), rope(part(32, 16), 2));
            assert_eq!(q.to_vec2::<f32>().unwrap(), want_q.to_vec2::<f32>().unwrap());
            let (k, v) = (keys.to_vec2::<f32>().unwrap(), values.to_vec2::<f32>().unwrap());
            let (want_k, want_v) =
                (want_k.to_vec2::<f32>().unwrap(), part(48, 16).to_vec2::<f32>().unwrap());
            for (i, &slot) in [7usize, 2, 4].iter().enumerate() {
                assert_eq!(k[slot], want_k[i]);
                assert_eq!(v[slot], want_v[i]);
            }
            assert!(k[0].iter().all(|&e| e == 0.0));
        }
    }
}
