//! The engine's API: SGMV on candle tensors, on the CPU or (feature `cuda`) on a CUDA device.
//!
//! The engine keeps one [`AdapterTable`] per (layer, projection) and one [`BatchSegments`]
//! per step, and calls [`lora_delta`] after each base projection. Tensors stay where they
//! are: the table records where each adapter's weights live, and kernels read them there.

use std::cell::RefCell;
#[cfg(feature = "cuda")]
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, DType, Device, Layout, Shape, Storage, Tensor};
use half::{bf16, f16};

use crate::cpu::{self, CpuWorkspace};
use crate::element::{AdapterWeights, Element, LoraWeights};
use crate::error::{check_shape, KernelError, Result};
use crate::segments::SegmentMap;

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

/// One slot of an [`AdapterTable`]. The tensors are kept so that the addresses stay valid.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct TableEntry {
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) rank: usize,
    /// Host address of the first element of `a` / `b` (CPU tables only).
    a_host: usize,
    b_host: usize,
}

/// The adapters of one projection (for example layer 3's `q_proj`), addressed by slot.
///
/// Each slot holds PEFT's `lora_A.weight` (`[rank, d_in]`) and `lora_B.weight`
/// (`[d_out, rank]`) as they were loaded, no copy into a packed buffer; except that a CPU
/// table stores `lora_B` transposed, the layout its expand reads fastest (one copy at
/// insertion, none when `lora_B` is already a transposed view of rank-major memory, as a CPU
/// engine's adapter cache parses it). On CUDA the kernels read them through a device array of per-slot pointers,
/// rebuilt after each change.
pub struct AdapterTable {
    device: Device,
    dtype: DType,
    d_in: usize,
    d_out: usize,
    entries: Vec<Option<TableEntry>>,
    #[cfg(feature = "cuda")]
    pub(crate) gpu: Mutex<Option<crate::cuda::DeviceTable>>,
}

impl AdapterTable {
    /// An empty table of `num_slots` slots for a projection `d_in -> d_out`.
    pub fn new(device: &Device, dtype: DType, d_in: usize, d_out: usize, num_slots: usize) -> Self {
        Self {
            device: device.clone(),
            dtype,
            d_in,
            d_out,
            entries: (0..num_slots).map(|_| None).collect(),
            #[cfg(feature = "cuda")]
            gpu: Mutex::new(None),
        }
    }

    /// Puts an adapter in `slot`, replacing what was there. `a` must be `[rank, d_in]` and
    /// `b` `[d_out, rank]`, of the table's dtype and device; they are made contiguous in the
    /// table's layout (one copy at load time where they are not: on the CPU `lora_B` is held
    /// transposed, so a `b` that is a transposed view of rank-major memory is taken as is).
    pub fn insert(&mut self, slot: u32, a: &Tensor, b: &Tensor) -> Result<()> {
        let slots = self.entries.len();
        if slot as usize >= slots {
            return Err(KernelError::SlotOutOfRange { slot, slots });
        }
        let (a_name, b_name) = (format!("lora_A of slot {slot}"), format!("lora_B of slot {slot}"));
        for (t, name) in [(a, &a_name), (b, &b_name)] {
            self.check_tensor(t, name)?;
        }
        let rank = a.dims().first().copied().unwrap_or(0);
        if rank == 0 {
            return Err(KernelError::ZeroRank { slot });
        }
        check_shape(&a_name, &[rank, self.d_in], a.dims())?;
        check_shape(&b_name, &[self.d_out, rank], b.dims())?;
        let a = a.contiguous()?;
        // On the CPU lora_B is kept transposed, `[rank, d_out]` (see `BLayout::RankByOut`),
        // and both are read in place through their host addresses.
        let (b, a_host, b_host) = match self.device {
            Device::Cpu => {
                let b = b.t()?.contiguous()?;
                let (a_host, b_host) = (host_address(&a)?, host_address(&b)?);
                (b, a_host, b_host)
            },
            _ => (b.contiguous()?, 0, 0),
        };
        self.entries[slot as usize] = Some(TableEntry { a, b, rank, a_host, b_host });
        self.invalidate_device_table();
        Ok(())
    }

    /// Empties `slot` (the adapter was evicted).
    pub fn remove(&mut self, slot: u32) {
        if let Some(e) = self.entries.get_mut(slot as usize) {
            *e = None;
            self.invalidate_device_table();
        }
    }

    /// Rank of the adapter in `slot`, if any.
    pub fn rank(&self, slot: u32) -> Option<usize> {
        self.entry(slot).map(|e| e.rank)
    }

    /// Input width of the projection.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output width of the projection.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Element type of x, y and the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of slots.
    pub fn num_slots(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn entry(&self, slot: u32) -> Option<&TableEntry> {
        self.entries.get(slot as usize).and_then(Option::as_ref)
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn entries(&self) -> &[Option<TableEntry>] {
        &self.entries
    }

    fn invalidate_device_table(&mut self) {
        #[cfg(feature = "cuda")]
        {
            *self.gpu.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn check_tensor(&self, t: &Tensor, name: &str) -> Result<()> {
        if t.dtype() != self.dtype {
            return Err(KernelError::DType {
                tensor: name.to_string(),
                expected: self.dtype,
                actual: t.dtype(),
            });
        }
        if !t.device().same_device(&self.device) {
            return Err(KernelError::Device {
                tensor: name.to_string(),
                expected: format!("{:?}", self.device.location()),
                actual: format!("{:?}", t.device().location()),
            });
        }
        Ok(())
    }

    /// Checks that every segment's slot holds an adapter of the segment's rank.
    fn check_segments(&self, map: &SegmentMap) -> Result<()> {
        for s in 0..map.num_segments() {
            let slot = map.slots()[s];
            let expected = map.ranks()[s] as usize;
            match self.rank(slot) {
                None => {
                    return Err(KernelError::EmptySlot {
                        segment: s,
                        slot,
                        slots: self.num_slots(),
                    })
                },
                Some(actual) if actual != expected => {
                    return Err(KernelError::RankMismatch { segment: s, slot, expected, actual })
                },
                Some(_) => {},
            }
        }
        Ok(())
    }
}

/// Address of the first element of a contiguous CPU tensor.
fn host_address(t: &Tensor) -> Result<usize> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(KernelError::UnsupportedDevice(format!("{:?}", t.device().location())));
    };
    with_element!(t.dtype(), E => {
        let data = E::storage(cpu).ok_or(KernelError::UnsupportedDType(t.dtype()))?;
        Ok(data[layout.start_offset()..].as_ptr() as usize)
    })
}

/// Reads a CPU table's weights in place, as slices of `T`.
struct CpuTableView<'t, T> {
    table: &'t AdapterTable,
    _elem: std::marker::PhantomData<T>,
}

impl<T: Element> AdapterWeights<T> for CpuTableView<'_, T> {
    fn weights(&self, slot: u32) -> Option<LoraWeights<'_, T>> {
        let e = self.table.entry(slot)?;
        let (a_len, b_len) = (e.rank * self.table.d_in, self.table.d_out * e.rank);
        // SAFETY: the addresses point into the CPU storages of `e.a` and `e.b`, contiguous
        // tensors of dtype T with these element counts (checked in `insert`); the entry owns
        // those tensors, so the storages live as long as the borrow of the table, and candle
        // never reallocates a storage in place.
        unsafe {
            Some(LoraWeights::with_b_transposed(
                std::slice::from_raw_parts(e.a_host as *const T, a_len),
                std::slice::from_raw_parts(e.b_host as *const T, b_len),
            ))
        }
    }
    fn num_slots(&self) -> usize {
        self.table.num_slots()
    }
}

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
    y.inplace_op2(x, &LoraDeltaOp { segments, table, ldy })?;
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
    with_element!(table.dtype, E => cpu_lora_delta::<f32, E>(x, y, map, table))
}

/// [`cpu::lora_delta`] with this thread's workspace, taken out for the call rather than
/// borrowed: a rayon worker waiting inside the call may run another task that calls
/// lora_delta on the same thread.
fn cpu_lora_delta<A: Element, E: Element>(
    x: &[A],
    y: &mut [A],
    map: &SegmentMap,
    table: &AdapterTable,
) -> Result<()> {
    let mut ws = WORKSPACE.take();
    let done = cpu::lora_delta(x, y, table.d_in, table.d_out, map, &view::<E>(table), &mut ws);
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

fn view<T>(table: &AdapterTable) -> CpuTableView<'_, T> {
    CpuTableView { table, _elem: std::marker::PhantomData }
}

struct LoraDeltaOp<'a> {
    segments: &'a BatchSegments,
    table: &'a AdapterTable,
    /// Row stride of y.
    ldy: usize,
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
            // Activations (`A`) may differ from the adapters' dtype (`E`) on the CPU.
            with_element!(x.dtype(), A => {
                with_element!(t.dtype, E => {
                    let x = cpu_slice::<A>(x, xl, "x")?;
                    let map = &self.segments.map;
                    let run = |y: &mut [A]| cpu_lora_delta::<A, E>(x, y, map, t);
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
                })
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
            crate::cuda::lora_delta(x, xl, y, yl, self.ldy, self.segments, self.table)
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
            with_element!(t.dtype, E => {
                let x = cpu_slice::<E>(x, xl, "x")?;
                cpu::sgmv_shrink(x, t.d_in, map, &view::<E>(t), &mut v)
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
            with_element!(t.dtype, E => {
                let y = cpu_slice_mut::<E>(y, yl, "y")?;
                cpu::sgmv_expand(v, y, t.d_out, &self.segments.map, &view::<E>(t))
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
