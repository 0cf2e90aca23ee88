//! The engine's API: SGMV on candle tensors, on the CPU or (feature `cuda`) on a CUDA device.
//!
//! The engine keeps one [`AdapterTable`] per (layer, projection) and one [`BatchSegments`]
//! per step, and calls [`lora_delta`] after each base projection. Tensors stay where they
//! are: the table records where each adapter's weights live, and kernels read them there.

use std::cell::RefCell;
#[cfg(feature = "cuda")]
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Shape, Tensor};
use half::{bf16, f16};

use crate::cpu::{self, CpuWorkspace};
use crate::element::{AdapterWeights, Element, Widen};
use crate::error::{check_shape, KernelError, Result};
use crate::segments::SegmentMap;
use crate::table::{with_cpu_weights, AdapterTable};

/// Calls `$body` with `$t` bound to the element type of `$dtype`.
macro_rules! with_element {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            },
            DType::BF16 => {
                type $t = bf16;
                $body
            },
            DType::F16 => {
                type $t = f16;
                $body
            },
            other => Err(KernelError::UnsupportedDType(other)),
        }
    };
}
pub(crate) use with_element;

/// The segments of one step, with their device copy made on first use and shared by every
/// layer's call.
pub struct BatchSegments {
    map: SegmentMap,
    #[cfg(feature = "cuda")]
    pub(crate) gpu: Mutex<Option<std::sync::Arc<crate::cuda::DeviceSegments>>>,
}

impl BatchSegments {
    /// Wraps a segment map for the tensor API.
    pub fn new(map: SegmentMap) -> Self {
        Self {
            map,
            #[cfg(feature = "cuda")]
            gpu: Mutex::new(None),
        }
    }

    /// The host segment map.
    pub fn map(&self) -> &SegmentMap {
        &self.map
    }
}

thread_local! {
    static WORKSPACE: RefCell<CpuWorkspace> = RefCell::new(CpuWorkspace::new());
}

fn check_operand(
    t: &Tensor,
    name: &str,
    table: &AdapterTable,
    dtype: DType,
    dims: &[usize],
) -> Result<()> {
    check_kind(t, name, table, dtype, dims)?;
    if !t.is_contiguous() {
        return Err(KernelError::NotContiguous { tensor: name.to_string() });
    }
    Ok(())
}

/// dtype, device and shape.
fn check_kind(
    t: &Tensor,
    name: &str,
    table: &AdapterTable,
    dtype: DType,
    dims: &[usize],
) -> Result<()> {
    if t.dtype() != dtype {
        return Err(KernelError::DType {
            tensor: name.to_string(),
            expected: dtype,
            actual: t.dtype(),
        });
    }
    if !t.device().same_device(&table.device) {
        return Err(KernelError::Device {
            tensor: name.to_string(),
            expected: format!("{:?}", table.device.location()),
            actual: format!("{:?}", t.device().location()),
        });
    }
    check_shape(name, dims, t.dims())
}

/// [`check_operand`] for a `[rows, cols]` operand whose rows may lie further apart than
/// `cols` (some columns of a wider tensor); returns the row stride.
fn check_row_strided(
    t: &Tensor,
    name: &str,
    table: &AdapterTable,
    dtype: DType,
    dims: [usize; 2],
) -> Result<usize> {
    check_kind(t, name, table, dtype, &dims)?;
    if t.is_contiguous() {
        return Ok(dims[1]);
    }
    match t.stride() {
        [ld, 1] if *ld >= dims[1] => Ok(*ld),
        _ => Err(KernelError::NotContiguous { tensor: name.to_string() }),
    }
}

/// `y[row] += scale_s * lora_B_s @ (lora_A_s @ x[row])` for every row of every segment, in
/// place. `x` is `[num_rows, d_in]`, contiguous; `y` `[num_rows, d_out]`, contiguous rows
/// that may lie further apart (`y` may be some columns of a wider output, as a projection's
/// part of several stacked projections); both on the table's device and of the table's
/// dtype (on the CPU: of one dtype, which may differ from the table's). Rows in no segment
/// are left as they were, and so are the columns outside `y`.
pub fn lora_delta(
    x: &Tensor,
    y: &Tensor,
    segments: &BatchSegments,
    table: &AdapterTable,
) -> Result<()> {
    let map = &segments.map;
    // On the CPU the activations may be of another dtype than the adapters (f32 activations
    // with bf16 adapters); x and y always share one.
    let act = if table.device.is_cpu() { x.dtype() } else { table.dtype };
    check_operand(x, "x", table, act, &[map.num_rows(), table.d_in])?;
    let ldy = check_row_strided(y, "y", table, act, [map.num_rows(), table.d_out])?;
    table.check_segments(map)?;
    if map.num_tokens() == 0 {
        return Ok(());
    }
    y.inplace_op2(x, &LoraDeltaOp { segments, table, ldy, stacked: &[] })?;
    Ok(())
}

/// One projection of a stacked output for [`lora_delta_stacked`]: its columns start at
/// `offset`, its deltas come from `table` over `segments`.
pub struct StackedPart<'a> {
    pub offset: usize,
    pub segments: &'a BatchSegments,
    pub table: &'a AdapterTable,
}

/// [`lora_delta`] for projections that read the same `x` and whose outputs lie side by side
/// in one `y` (`[num_rows, width]`, contiguous; part `i` in columns `parts[i].offset ..
/// parts[i].offset + parts[i].table.d_out`): q, k and v, or gate and up, of a stacked GEMM.
/// On CUDA, two or three parts the fused kernel takes go in one launch over every part's
/// tiles; otherwise each part is its own call. Either way each element gets the bits its
/// part's own [`lora_delta`] gives it.
pub fn lora_delta_stacked(x: &Tensor, y: &Tensor, parts: &[StackedPart<'_>]) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        let one_launch = y.device().is_cuda()
            && y.is_contiguous()
            && parts.iter().all(|p| p.table.dtype == y.dtype())
            && crate::cuda::stacked_supported(
                y.dtype(),
                parts.iter().map(|p| p.segments.map.max_rank()),
                parts.len(),
            );
        if one_launch {
            let (rows, width) = y.dims2()?;
            for p in parts {
                let map = &p.segments.map;
                check_operand(x, "x", p.table, p.table.dtype, &[map.num_rows(), p.table.d_in])?;
                if map.num_rows() != rows || p.offset + p.table.d_out > width {
                    return Err(KernelError::Shape {
                        tensor: "y (a stacked part's columns)".into(),
                        expected: vec![map.num_rows(), p.offset + p.table.d_out],
                        actual: vec![rows, width],
                    });
                }
                check_kind(y, "y", p.table, p.table.dtype, &[rows, width])?;
                p.table.check_segments(map)?;
            }
            let first = &parts[0];
            let op = LoraDeltaOp {
                segments: first.segments,
                table: first.table,
                ldy: width,
                stacked: parts,
            };
            y.inplace_op2(x, &op)?;
            return Ok(());
        }
    }
    for p in parts {
        lora_delta(x, &y.narrow(1, p.offset, p.table.d_out)?, p.segments, p.table)?;
    }
    Ok(())
}

/// [`lora_delta`] on host f32 slices, for a table on the CPU: the CPU engine's path, which
/// holds its activations in plain buffers (no tensor made or copied per projection).
pub fn lora_delta_host(
    x: &[f32],
    y: &mut [f32],
    segments: &BatchSegments,
    table: &AdapterTable,
) -> Result<()> {
    let map = &segments.map;
    if !table.device.is_cpu() {
        return Err(KernelError::Device {
            tensor: "adapter table (lora_delta_host)".into(),
            expected: "cpu".into(),
            actual: format!("{:?}", table.device.location()),
        });
    }
    table.check_segments(map)?;
    if map.num_tokens() == 0 {
        return Ok(());
    }
    cpu_lora_delta::<f32>(x, y, map, table)
}

/// [`cpu::lora_delta`] with this thread's workspace, taken out for the call rather than
/// borrowed: a rayon worker waiting inside the call may run another task that calls
/// lora_delta on the same thread.
fn cpu_lora_delta<A: Element>(
    x: &[A],
    y: &mut [A],
    map: &SegmentMap,
    table: &AdapterTable,
) -> Result<()> {
    with_cpu_weights!(table, E, w => with_workspace::<A, E, _>(x, y, map, table, &w))
}

fn with_workspace<A: Element, E: Widen, W: AdapterWeights<E>>(
    x: &[A],
    y: &mut [A],
    map: &SegmentMap,
    table: &AdapterTable,
    weights: &W,
) -> Result<()> {
    let mut ws = WORKSPACE.take();
    let done = cpu::lora_delta(x, y, table.d_in, table.d_out, map, weights, &mut ws);
    WORKSPACE.set(ws);
    done
}

/// The shrink half alone: returns `v`, f32 `[num_tokens, max_rank]` in sorted order
/// (`v[p, j] = lora_A_s[j] . x[rows[p]]`, zero for `j >= rank_s`).
pub fn sgmv_shrink(x: &Tensor, segments: &BatchSegments, table: &AdapterTable) -> Result<Tensor> {
    let map = &segments.map;
    check_operand(x, "x", table, table.dtype, &[map.num_rows(), table.d_in])?;
    table.check_segments(map)?;
    Ok(x.apply_op1_no_bwd(&ShrinkOp { segments, table })?)
}

/// The expand half alone: `y[rows[p]] += scale_s * lora_B_s @ v[p, ..rank_s]`, in place,
/// with `v` as [`sgmv_shrink`] returns it.
pub fn sgmv_expand(
    v: &Tensor,
    y: &Tensor,
    segments: &BatchSegments,
    table: &AdapterTable,
) -> Result<()> {
    let map = &segments.map;
    check_operand(v, "v", table, DType::F32, &[map.num_tokens(), map.max_rank()])?;
    check_operand(y, "y", table, table.dtype, &[map.num_rows(), table.d_out])?;
    table.check_segments(map)?;
    if map.num_tokens() == 0 {
        return Ok(());
    }
    y.inplace_op2(v, &ExpandOp { segments, table })?;
    Ok(())
}

pub(crate) fn to_candle(e: KernelError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

pub(crate) fn cpu_slice<'s, T: Element>(
    s: &'s CpuStorage,
    l: &Layout,
    name: &str,
) -> Result<&'s [T]> {
    let data = T::storage(s).ok_or_else(|| KernelError::DType {
        tensor: name.to_string(),
        expected: T::DTYPE,
        actual: s.dtype(),
    })?;
    let (start, end) =
        l.contiguous_offsets().ok_or(KernelError::NotContiguous { tensor: name.to_string() })?;
    Ok(&data[start..end])
}

pub(crate) fn cpu_slice_mut<'s, T: Element>(
    s: &'s mut CpuStorage,
    l: &Layout,
    name: &str,
) -> Result<&'s mut [T]> {
    let dtype = s.dtype();
    let data = T::storage_mut(s).ok_or_else(|| KernelError::DType {
        tensor: name.to_string(),
        expected: T::DTYPE,
        actual: dtype,
    })?;
    let (start, end) =
        l.contiguous_offsets().ok_or(KernelError::NotContiguous { tensor: name.to_string() })?;
    Ok(&mut data[start..end])
}

struct LoraDeltaOp<'a> {
    segments: &'a BatchSegments,
    table: &'a AdapterTable,
    /// Row stride of y.
    ldy: usize,
    /// When not empty, the parts of one stacked launch on CUDA ([`lora_delta_stacked`]),
    /// `y` the whole stacked output; `segments` and `table` are then its first part's.
    stacked: &'a [StackedPart<'a>],
}

impl candle_core::InplaceOp2 for LoraDeltaOp<'_> {
    fn name(&self) -> &'static str {
        "sgmv-lora-delta"
    }

    fn cpu_fwd(
        &self,
        y: &mut CpuStorage,
        yl: &Layout,
        x: &CpuStorage,
        xl: &Layout,
    ) -> candle_core::Result<()> {
        let t = self.table;
        let mut run = || -> Result<()> {
            if !self.stacked.is_empty() {
                return Err(KernelError::UnsupportedDevice("a stacked launch is CUDA only".into()));
            }
            // Activations (`A`) may differ from the adapters' dtype on the CPU.
            with_element!(x.dtype(), A => {
                {
                    let x = cpu_slice::<A>(x, xl, "x")?;
                    let map = &self.segments.map;
                    let run = |y: &mut [A]| cpu_lora_delta::<A>(x, y, map, t);
                    if self.ldy == t.d_out {
                        run(cpu_slice_mut::<A>(y, yl, "y")?)
                    } else {
                        // Rows further apart: through a packed copy (the same arithmetic).
                        let actual = y.dtype();
                        let all = A::storage_mut(y).ok_or(KernelError::DType {
                            tensor: "y".into(),
                            expected: A::DTYPE,
                            actual,
                        })?;
                        let (start, d) = (yl.start_offset(), t.d_out);
                        let row = |r: usize| start + r * self.ldy..start + r * self.ldy + d;
                        let mut packed = Vec::with_capacity(map.num_rows() * d);
                        for r in 0..map.num_rows() {
                            packed.extend_from_slice(&all[row(r)]);
                        }
                        let done = run(&mut packed);
                        for (r, src) in packed.chunks_exact(d).enumerate() {
                            all[row(r)].copy_from_slice(src);
                        }
                        done
                    }
                }
            })
        };
        run().map_err(to_candle)
    }

    fn cuda_fwd(
        &self,
        y: &mut CudaStorage,
        yl: &Layout,
        x: &CudaStorage,
        xl: &Layout,
    ) -> candle_core::Result<()> {
        #[cfg(feature = "cuda")]
        {
            match self.stacked {
                [] => crate::cuda::lora_delta(x, xl, y, yl, self.ldy, self.segments, self.table),
                parts => crate::cuda::lora_delta_stacked(x, xl, y, yl, self.ldy, parts),
            }
            .map_err(to_candle)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (y, yl, x, xl);
            Err(to_candle(KernelError::UnsupportedDevice("cuda (feature `cuda` is off)".into())))
        }
    }
}

struct ShrinkOp<'a> {
    segments: &'a BatchSegments,
    table: &'a AdapterTable,
}

impl candle_core::CustomOp1 for ShrinkOp<'_> {
    fn name(&self) -> &'static str {
        "sgmv-shrink"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let t = self.table;
        let map = &self.segments.map;
        let run = || -> Result<Vec<f32>> {
            // NaN-filled: an element the kernel failed to write cannot pass for a result.
            let mut v = vec![f32::NAN; map.num_tokens() * map.max_rank()];
            with_element!(t.dtype, A => {
                let x = cpu_slice::<A>(x, xl, "x")?;
                with_cpu_weights!(t, E, w => cpu::sgmv_shrink::<A, E, _>(x, t.d_in, map, &w, &mut v))
            })?;
            Ok(v)
        };
        let v = run().map_err(to_candle)?;
        Ok((CpuStorage::F32(v), Shape::from((map.num_tokens(), map.max_rank()))))
    }

    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        {
            let map = &self.segments.map;
            let v = crate::cuda::shrink(x, xl, self.segments, self.table).map_err(to_candle)?;
            Ok((v, Shape::from((map.num_tokens(), map.max_rank()))))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (x, xl);
            Err(to_candle(KernelError::UnsupportedDevice("cuda (feature `cuda` is off)".into())))
        }
    }
}

struct ExpandOp<'a> {
    segments: &'a BatchSegments,
    table: &'a AdapterTable,
}

impl candle_core::InplaceOp2 for ExpandOp<'_> {
    fn name(&self) -> &'static str {
        "sgmv-expand"
    }

    fn cpu_fwd(
        &self,
        y: &mut CpuStorage,
        yl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        let t = self.table;
        let mut run = || -> Result<()> {
            let v = cpu_slice::<f32>(v, vl, "v")?;
            with_element!(t.dtype, A => {
                let y = cpu_slice_mut::<A>(y, yl, "y")?;
                with_cpu_weights!(t, E, w => {
                    cpu::sgmv_expand::<A, E, _>(v, y, t.d_out, &self.segments.map, &w)
                })
            })
        };
        run().map_err(to_candle)
    }

    fn cuda_fwd(
        &self,
        y: &mut CudaStorage,
        yl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        #[cfg(feature = "cuda")]
        {
            crate::cuda::expand(v, vl, y, yl, self.segments, self.table).map_err(to_candle)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (y, yl, v, vl);
            Err(to_candle(KernelError::UnsupportedDevice("cuda (feature `cuda` is off)".into())))
        }
    }
}
