//! The adapters of one projection, addressed by slot: where each adapter's weights live, in
//! the form the kernels read them (as loaded, or on the CPU quantized to signed bytes).

#[cfg(feature = "cuda")]
use std::sync::Mutex;

use candle_core::{DType, Device, Storage, Tensor};
use half::{bf16, f16};

use crate::candle_ops::with_element;
use crate::element::{AdapterWeights, Element, LoraWeights};
use crate::error::{check_shape, KernelError, Result};
use crate::segments::SegmentMap;

/// One slot of an [`AdapterTable`]. The tensors are kept so that the addresses stay valid.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct TableEntry {
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) rank: usize,
    /// Host address of the first element of `a` / `b` (CPU tables only).
    a_host: usize,
    b_host: usize,
    /// The rows as signed bytes with their scales (quantized CPU tables only).
    q8: Option<Q8Rows>,
}

/// An adapter's rows quantized to signed bytes, one f32 scale per row (symmetric: the
/// largest magnitude of a row maps to 127): `lora_A` `[rank, d_in]` and `lora_B` transposed,
/// `[rank, d_out]`. Half the bytes of bf16, which is what a CPU decode step with many
/// distinct adapters reads.
struct Q8Rows {
    a: Vec<i8>,
    a_scale: Vec<f32>,
    bt: Vec<i8>,
    bt_scale: Vec<f32>,
}

/// Quantizes `rows` rows of `len` values each: the bytes and one scale per row.
pub fn quantize_rows(values: &[f32], len: usize) -> (Vec<i8>, Vec<f32>) {
    let rows = values.len().checked_div(len).unwrap_or(0);
    let mut q = Vec::with_capacity(rows * len);
    let mut scales = Vec::with_capacity(rows);
    for row in values.chunks_exact(len.max(1)).take(rows) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 && max.is_finite() { max / 127.0 } else { 1.0 };
        q.extend(row.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    (q, scales)
}

/// The adapters of one projection (for example layer 3's `q_proj`), addressed by slot.
///
/// Each slot holds PEFT's `lora_A.weight` (`[rank, d_in]`) and `lora_B.weight`
/// (`[d_out, rank]`) as they were loaded, no copy into a packed buffer; except that a CPU
/// table stores `lora_B` transposed, the layout its expand reads fastest (one copy at
/// insertion, none when `lora_B` is already a transposed view of rank-major memory, as a CPU
/// engine's adapter cache parses it). On CUDA the kernels read them through a device array
/// of per-slot pointers, rewritten in place after each change (its address fixed for the
/// table's life, so that a CUDA graph serves any adapters in the slots).
///
/// A quantized table ([`AdapterTable::new_quantized`], CPU only) also keeps each adapter's
/// rows as signed bytes with a scale per row, made once at insertion, and its kernels read
/// those: half the bytes per step, at a relative error of at most 1/254 of a row's largest
/// weight per weight.
pub struct AdapterTable {
    pub(crate) device: Device,
    pub(crate) dtype: DType,
    pub(crate) d_in: usize,
    pub(crate) d_out: usize,
    quantized: bool,
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
            quantized: false,
            entries: (0..num_slots).map(|_| None).collect(),
            #[cfg(feature = "cuda")]
            gpu: Mutex::new(None),
        }
    }

    /// An empty CPU table whose adapters are inserted as `dtype` tensors and computed with as
    /// row-quantized signed bytes (see [`AdapterTable`]).
    pub fn new_quantized(dtype: DType, d_in: usize, d_out: usize, num_slots: usize) -> Self {
        Self { quantized: true, ..Self::new(&Device::Cpu, dtype, d_in, d_out, num_slots) }
    }

    /// Whether the kernels read this table's adapters as row-quantized bytes.
    pub fn is_quantized(&self) -> bool {
        self.quantized
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
        // On CUDA every lora_A and lora_B starts on a 16-byte boundary (copied where a view
        // does not), so the kernels' 16-byte loads hold for every slot whatever is inserted
        // later: a CUDA graph records them at capture and replays them with any adapters.
        #[cfg(feature = "cuda")]
        let (a, b) = match self.device {
            Device::Cuda(_) => (crate::cuda::aligned16(a)?, crate::cuda::aligned16(b)?),
            _ => (a, b),
        };
        let q8 = if self.quantized {
            let (a_f32, bt_f32) = (host_f32(&a)?, host_f32(&b)?);
            let ((a, a_scale), (bt, bt_scale)) =
                (quantize_rows(&a_f32, self.d_in), quantize_rows(&bt_f32, self.d_out));
            Some(Q8Rows { a, a_scale, bt, bt_scale })
        } else {
            None
        };
        self.entries[slot as usize] = Some(TableEntry { a, b, rank, a_host, b_host, q8 });
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

    /// On a CUDA device, brings the device array of per-slot pointers up to date with the
    /// slots (a copy ordered on candle's stream, when they changed since it was written); its
    /// address never changes. A launch does this itself; a replayed CUDA graph does not, so
    /// call it before each replay. Nothing to do elsewhere.
    pub fn sync_device(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(dev) = &self.device {
            crate::cuda::device_table(self, dev)?;
        }
        Ok(())
    }

    fn invalidate_device_table(&mut self) {
        #[cfg(feature = "cuda")]
        {
            // The pointer array keeps its device address (graphs captured with it read the
            // new pointers); it is rewritten before the next launch.
            if let Some(t) = self.gpu.get_mut().unwrap_or_else(|e| e.into_inner()).as_mut() {
                t.stale = true;
            }
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
    pub(crate) fn check_segments(&self, map: &SegmentMap) -> Result<()> {
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

/// The values of a contiguous CPU tensor as f32.
fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Reads a CPU table's weights in place, as slices of `T`.
pub(crate) struct CpuTableView<'t, T> {
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

pub(crate) fn view<T>(table: &AdapterTable) -> CpuTableView<'_, T> {
    CpuTableView { table, _elem: std::marker::PhantomData }
}

/// Reads a quantized CPU table's byte rows and scales.
pub(crate) struct Q8View<'t>(pub(crate) &'t AdapterTable);

impl AdapterWeights<i8> for Q8View<'_> {
    fn weights(&self, slot: u32) -> Option<LoraWeights<'_, i8>> {
        let q = self.0.entry(slot)?.q8.as_ref()?;
        Some(LoraWeights::quantized(&q.a, &q.a_scale, &q.bt, &q.bt_scale))
    }
    fn num_slots(&self) -> usize {
        self.0.num_slots()
    }
}

/// Calls `$body` with `$w` bound to a CPU table's weights as the kernels read them (an
/// [`AdapterWeights`] of element `$e`): the quantized rows, or the tensors in place.
macro_rules! with_cpu_weights {
    ($table:expr, $e:ident, $w:ident => $body:expr) => {{
        let table: &$crate::table::AdapterTable = $table;
        if table.is_quantized() {
            type $e = i8;
            let $w = $crate::table::Q8View(table);
            $body
        } else {
            $crate::candle_ops::with_element!(table.dtype, $e => {
                let $w = $crate::table::view::<$e>(table);
                $body
            })
        }
    }};
}
pub(crate) use with_cpu_weights;
