//! LoRA adapters in PEFT format, validated against the base model, and the per-projection
//! SGMV tables they are installed into (never merged into the base weights).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use openledger_kernels::{
    lora_delta, lora_delta_host, lora_delta_stacked, AdapterSlot, AdapterTable, BatchSegments,
    SegmentMap, StackedPart,
};

use crate::adapter_check::read_adapter;
pub use crate::adapter_check::ADAPTER_DTYPE;
use crate::error::{EngineError, Result};
use crate::host_weights::{HostAlloc, HostWeights};
use crate::step::StepSegments;
use openledger_model::{ModelConfig, Projection};

/// A PEFT LoRA adapter loaded into host memory.
pub struct LoraAdapter {
    pub(crate) dir: PathBuf,
    pub(crate) rank: usize,
    pub(crate) scale: f32,
    pub(crate) targets: [bool; 7],
    /// `lora_A [r, d_in]` and `lora_B [d_out, r]` in [`ADAPTER_DTYPE`] for targeted
    /// projections: CPU tensors, or one packed buffer (a GPU engine's host tier).
    pub(crate) weights: HostWeights,
    pub(crate) bytes: usize,
}

impl LoraAdapter {
    /// Loads `adapter_config.json` and `adapter_model.safetensors` from `dir`, with every
    /// check of [`validate_adapter_dir`](super::validate_adapter_dir) (the same function),
    /// as tensors on `device`.
    pub fn load(dir: &Path, base: &ModelConfig, device: &Device) -> Result<Self> {
        let mut adapter = Self::load_into(dir, base, &HostAlloc::Tensors)?;
        if let HostWeights::Tensors(w) = &mut adapter.weights {
            if !device.is_cpu() {
                for (a, b) in w.iter_mut().flatten().flatten() {
                    *a = a.to_device(device)?;
                    *b = b.to_device(device)?;
                }
            }
        }
        Ok(adapter)
    }

    /// Loads the adapter into host memory in the form an engine on `device` keeps it: CPU
    /// tensors for the CPU; for a CUDA device (feature `cuda`) one packed bf16 buffer in
    /// page-locked memory, which [`LoraSlots::install`] copies with one asynchronous copy.
    pub fn load_for(dir: &Path, base: &ModelConfig, device: &Device) -> Result<Self> {
        match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => Self::load_into(dir, base, &HostAlloc::Pinned(dev.clone())),
            _ => Self::load_into(dir, base, &HostAlloc::Tensors),
        }
    }

    /// [`LoraAdapter::load`] with the weights where `alloc` says.
    pub(crate) fn load_into(dir: &Path, base: &ModelConfig, alloc: &HostAlloc) -> Result<Self> {
        let checked = read_adapter(dir, base, alloc, false)?;
        tracing::debug!(dir = %dir.display(), rank = checked.rank, "loaded adapter");
        Ok(Self {
            dir: dir.to_path_buf(),
            rank: checked.rank,
            scale: checked.scale,
            targets: checked.targets,
            weights: checked.weights,
            bytes: checked.file_bytes,
        })
    }

    /// LoRA rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Multiplier of the delta (`lora_alpha / r`, or `/ sqrt(r)` with rsLoRA).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Size of its weights file.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes its parsed weights hold in host memory, the unit of the host budget
    /// ([`AdapterCacheConfig::host_bytes`](crate::AdapterCacheConfig::host_bytes)): bf16
    /// values whatever the file's dtype (half an f32 file), and for a GPU engine's
    /// page-locked buffer its whole allocation.
    pub fn host_bytes(&self) -> usize {
        self.weights.held_bytes()
    }

    /// Bytes of its weights as installed for compute ([`ADAPTER_DTYPE`]), the unit of the
    /// compute (GPU) budget.
    pub fn weight_bytes(&self) -> usize {
        self.weights.elem_count() * self.weights.dtype().size_in_bytes()
    }

    /// Keeps each `lora_B` (`[d_out, rank]`) as a transposed view of rank-major storage
    /// (`[rank, d_out]` contiguous), the layout CPU SGMV tables compute with
    /// (`BLayout::RankByOut`): a CPU table then takes the tensor as it is instead of making a
    /// transposed copy, so an adapter installed on a CPU engine is held in memory once. (A
    /// GPU table makes its own contiguous copy at upload either way.) A packed adapter
    /// becomes CPU tensors.
    pub fn with_rank_major_b(mut self) -> Result<Self> {
        let mut layers = Vec::new();
        for l in 0..self.layers() {
            let mut layer = Vec::with_capacity(7);
            for p in 0..7 {
                layer.push(match self.weights.pair(l, p)? {
                    Some((a, b)) => Some((a, b.t()?.contiguous()?.t()?)),
                    None => None,
                });
            }
            layers.push(layer);
        }
        self.weights = HostWeights::Tensors(layers);
        Ok(self)
    }

    /// Whether every `lora_B` lies in rank-major storage ([`Self::with_rank_major_b`]).
    pub fn b_is_rank_major(&self) -> bool {
        match &self.weights {
            HostWeights::Tensors(w) => {
                w.iter().flatten().flatten().all(|(_, b)| b.t().is_ok_and(|t| t.is_contiguous()))
            },
            HostWeights::Packed(_) => false,
        }
    }

    /// The f32 delta `scale * B @ A` (`[d_out, d_in]`) of one projection, for references.
    pub fn merged_delta(&self, layer: usize, proj: Projection) -> Result<Option<Tensor>> {
        match self.weights.pair(layer, proj.index())? {
            Some((a, b)) => {
                let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
                Ok(Some((b.matmul(&a)? * self.scale as f64)?))
            },
            None => Ok(None),
        }
    }

    /// Layers the adapter's weights cover (the base model's).
    fn layers(&self) -> usize {
        match &self.weights {
            HostWeights::Tensors(w) => w.len(),
            HostWeights::Packed(p) => p.parts.len(),
        }
    }
}

#[cfg(feature = "cuda")]
type Event = std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaEvent>;
#[cfg(feature = "cuda")]
type Stream = std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>;

/// A copy queued on the upload stream, in runs of consecutive layers: each run's first
/// layer and end event (in layer order; the last event marks the end of the whole copy),
/// and the compute stream that must wait for them.
#[cfg(feature = "cuda")]
struct QueuedCopy {
    runs: Vec<(usize, Event)>,
    compute: Stream,
}

#[cfg(feature = "cuda")]
impl QueuedCopy {
    fn synchronize(&self) -> Result<()> {
        for (_, e) in &self.runs {
            e.synchronize().map_err(|e| EngineError::Backend(format!("adapter upload: {e}")))?;
        }
        Ok(())
    }
}

/// A copy of an adapter to the device still under way (see [`LoraSlots::install_async`]):
/// keeps the adapter's page-locked host buffer alive until the copy has ended.
pub(crate) struct PendingUpload {
    #[cfg(feature = "cuda")]
    copy: QueuedCopy,
    _host: std::sync::Arc<LoraAdapter>,
}

impl PendingUpload {
    /// Whether the copy has ended (the device has the weights).
    pub fn is_done(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.copy.runs.iter().all(|(_, e)| e.is_complete())
        }
        #[cfg(not(feature = "cuda"))]
        true
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        // The host buffer must outlive the copy: wait for it here in the rare case (a cache
        // dropped with a copy under way) that nobody saw it end.
        #[cfg(feature = "cuda")]
        if !self.is_done() {
            let _ = self.copy.synchronize();
        }
    }
}

/// A wait the compute stream owes a copy: before the first launch of layer `layer` (or of
/// any step that is not run layer by layer), the stream waits for `event`.
#[cfg(feature = "cuda")]
struct LayerWait {
    layer: usize,
    event: Event,
    compute: Stream,
}

#[cfg(feature = "cuda")]
fn wait(compute: &Stream, event: &Event) -> Result<()> {
    compute.wait(event).map_err(|e| EngineError::Backend(format!("adapter upload: wait: {e}")))
}

#[derive(Clone, Copy)]
struct SlotInfo {
    rank: usize,
    scale: f32,
    targets: [bool; 7],
}

/// The adapters resident for compute: one [`AdapterTable`] per (layer, projection), all
/// sharing slot numbers, on the model's device.
pub struct LoraSlots {
    tables: Vec<Vec<AdapterTable>>,
    slots: Vec<Option<SlotInfo>>,
    device: Device,
    /// The stream packed adapters are copied to the device on (made at the first copy).
    #[cfg(feature = "cuda")]
    upload: Option<Stream>,
    /// Runs of copies still owed a wait by the compute stream ([`Self::order_upload`]),
    /// issued by the forward pass as it reaches their first layer ([`Self::order_layer`]).
    #[cfg(feature = "cuda")]
    waits: std::sync::Mutex<Vec<LayerWait>>,
}

impl LoraSlots {
    /// Empty tables of `num_slots` slots for `base`; with `quantized` (CPU only), tables that
    /// compute with row-quantized bytes ([`AdapterTable::new_quantized`]).
    pub fn new(base: &ModelConfig, device: &Device, num_slots: usize, quantized: bool) -> Self {
        let quantized = quantized && device.is_cpu();
        let tables = (0..base.num_layers)
            .map(|_| {
                Projection::ALL
                    .iter()
                    .map(|&p| {
                        let (d_in, d_out) = base.proj_dims(p);
                        if quantized {
                            AdapterTable::new_quantized(ADAPTER_DTYPE, d_in, d_out, num_slots)
                        } else {
                            AdapterTable::new(device, ADAPTER_DTYPE, d_in, d_out, num_slots)
                        }
                    })
                    .collect()
            })
            .collect();
        Self {
            tables,
            slots: vec![None; num_slots],
            device: device.clone(),
            #[cfg(feature = "cuda")]
            upload: None,
            #[cfg(feature = "cuda")]
            waits: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Number of slots.
    pub fn num_slots(&self) -> usize {
        self.slots.len()
    }

    /// Puts `adapter` in `slot`: its tensors are shared when they already live on the
    /// tables' device (the CPU path), copied there otherwise (host memory to GPU; a packed
    /// adapter, [`LoraAdapter::load_for`] a CUDA device, with one copy on the upload stream).
    /// The copy has ended when this returns.
    pub fn install(&mut self, slot: u32, adapter: &LoraAdapter) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(copy) = self.install_packed(slot, adapter, 1)? {
            return copy.synchronize();
        }
        self.install_tensors(slot, adapter)
    }

    /// Puts `adapter` in `slot`. A packed adapter (a GPU engine's host tier, page-locked)
    /// goes to the device asynchronously on the tables' upload stream, in at most `runs`
    /// copies of consecutive layers; the returned [`PendingUpload`] says when it has ended,
    /// and no segment may name the slot before [`Self::order_upload`] has been called with it.
    /// Anything else is installed as by [`LoraSlots::install`] (no pending copy).
    pub(crate) fn install_async(
        &mut self,
        slot: u32,
        adapter: &std::sync::Arc<LoraAdapter>,
        runs: usize,
    ) -> Result<Option<PendingUpload>> {
        #[cfg(feature = "cuda")]
        if let Some(copy) = self.install_packed(slot, adapter, runs)? {
            return Ok(Some(PendingUpload { copy, _host: adapter.clone() }));
        }
        let _ = runs;
        self.install_tensors(slot, adapter).map(|()| None)
    }

    /// Orders the compute stream after `upload`: at once for its first run (the first
    /// layers), and for each later run before the first launch that reads its layers
    /// ([`Self::order_layer`], which the eager forward calls layer by layer) or before any
    /// step not run layer by layer ([`Self::order_all`]). So the step that first reads a
    /// freshly copied adapter computes its first layers while the later ones still arrive.
    pub(crate) fn order_upload(&self, upload: &PendingUpload) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            let copy = &upload.copy;
            let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
            for (layer, event) in copy.runs.iter().filter(|(_, e)| !e.is_complete()) {
                if *layer == 0 {
                    wait(&copy.compute, event)?;
                } else {
                    waits.push(LayerWait {
                        layer: *layer,
                        event: event.clone(),
                        compute: copy.compute.clone(),
                    });
                }
            }
        }
        #[cfg(not(feature = "cuda"))]
        let _ = upload;
        Ok(())
    }

    /// Issues the compute stream's waits owed to copies of layers up to `layer`: called
    /// before the first launch of each layer of an eager step. Nothing when none is owed.
    pub(crate) fn order_layer(&self, layer: usize) -> Result<()> {
        #[cfg(feature = "cuda")]
        self.issue_waits(|w| w.layer <= layer)?;
        #[cfg(not(feature = "cuda"))]
        let _ = layer;
        Ok(())
    }

    /// Issues every wait still owed: before a step that is not run layer by layer (a CUDA
    /// graph's replay or capture, which must hold no wait on another stream's event).
    pub(crate) fn order_all(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        self.issue_waits(|_| true)?;
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn issue_waits(&self, due: impl Fn(&LayerWait) -> bool) -> Result<()> {
        let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        if waits.is_empty() {
            return Ok(());
        }
        let mut kept = Vec::with_capacity(waits.len());
        let mut failed = None;
        for w in waits.drain(..) {
            if !due(&w) {
                kept.push(w);
            } else if let Err(e) = wait(&w.compute, &w.event) {
                // Kept, so that a later call issues it again; the error ends the step.
                failed.get_or_insert(e);
                kept.push(w);
            }
        }
        *waits = kept;
        failed.map_or(Ok(()), Err)
    }

    /// The asynchronous copy of a packed, page-locked adapter to a CUDA device, its slot
    /// filled with views of the copy; `None` (nothing done) for any other adapter or device.
    #[cfg(feature = "cuda")]
    fn install_packed(
        &mut self,
        slot: u32,
        adapter: &LoraAdapter,
        runs: usize,
    ) -> Result<Option<QueuedCopy>> {
        let (HostWeights::Packed(p), Device::Cuda(dev)) = (&adapter.weights, &self.device) else {
            return Ok(None);
        };
        let dev = dev.clone();
        let crate::host_weights::HostBuf::Pinned(host) = &p.buf else {
            return Ok(None);
        };
        self.check_slot(slot)?;
        // Empty first, so that a failed upload leaves the slot empty, never half-replaced.
        self.remove(slot);
        let upload = match &self.upload {
            Some(s) => s.clone(),
            None => {
                let s = dev.cuda_stream().context().new_stream().map_err(|e| {
                    EngineError::Backend(format!("adapter upload: new stream: {e}"))
                })?;
                self.upload = Some(s.clone());
                s
            },
        };
        let layer_runs = p.layer_runs(runs);
        let starts: Vec<usize> = layer_runs.iter().map(|&(_, at)| at).collect();
        let (slice, events) =
            crate::host_weights::pinned::upload(host, p.len, &starts, &dev, &upload)
                .map_err(EngineError::Backend)?;
        // One event per run (`layer_runs` is never empty).
        let copied =
            layer_runs.iter().map(|&(layer, _)| layer).zip(events.into_iter().map(Event::new));
        let copy = QueuedCopy { runs: copied.collect(), compute: dev.cuda_stream() };
        let all = Tensor::from_storage(
            candle_core::Storage::Cuda(candle_core::CudaStorage::wrap_cuda_slice(slice, dev)),
            p.len.max(1),
            candle_core::op::BackpropOp::none(),
            false,
        );
        let view = |part: crate::host_weights::Part| -> Result<Tensor> {
            Ok(all.narrow(0, part.offset, part.len())?.reshape((part.rows, part.cols))?)
        };
        let tables = &mut self.tables;
        let mut insert = || -> Result<()> {
            for (layer, tables) in p.parts.iter().zip(tables.iter_mut()) {
                for (i, part) in layer.iter().enumerate() {
                    if let Some((a, b)) = part {
                        tables[i].insert(slot, &view(*a)?, &view(*b)?)?;
                    }
                }
            }
            Ok(())
        };
        if let Err(e) = insert() {
            // The views are gone with the slot; the copy may still be reading the host
            // buffer, which the caller keeps alive only on success: wait for it.
            let _ = copy.synchronize();
            self.remove(slot);
            return Err(e);
        }
        self.slots[slot as usize] =
            Some(SlotInfo { rank: adapter.rank, scale: adapter.scale, targets: adapter.targets });
        Ok(Some(copy))
    }

    fn check_slot(&self, slot: u32) -> Result<()> {
        if slot as usize >= self.slots.len() {
            return Err(EngineError::Kernel(openledger_kernels::KernelError::SlotOutOfRange {
                slot,
                slots: self.slots.len(),
            }));
        }
        Ok(())
    }

    /// Installs from CPU tensors (a packed adapter's copied out), each moved to the
    /// tables' device.
    fn install_tensors(&mut self, slot: u32, adapter: &LoraAdapter) -> Result<()> {
        self.check_slot(slot)?;
        // Empty first, so that a failed upload leaves the slot empty, never half-replaced.
        self.remove(slot);
        let (tables, device) = (&mut self.tables, &self.device);
        let mut upload = || -> Result<()> {
            for (l, tables) in tables.iter_mut().enumerate() {
                for p in Projection::ALL {
                    if let Some((a, b)) = adapter.weights.pair(l, p.index())? {
                        let (a, b) = (a.to_device(device)?, b.to_device(device)?);
                        tables[p.index()].insert(slot, &a, &b)?;
                    }
                }
            }
            Ok(())
        };
        if let Err(e) = upload() {
            self.remove(slot);
            return Err(e);
        }
        self.slots[slot as usize] =
            Some(SlotInfo { rank: adapter.rank, scale: adapter.scale, targets: adapter.targets });
        Ok(())
    }

    /// Empties `slot`.
    pub fn remove(&mut self, slot: u32) {
        for layer in &mut self.tables {
            for t in layer {
                t.remove(slot);
            }
        }
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = None;
        }
    }

    /// One segment map per projection kind for a step whose request `i` has `lens[i]` rows
    /// and adapter slot `adapters[i]`.
    pub(crate) fn segments(
        &self,
        adapters: &[Option<u32>],
        lens: &[usize],
    ) -> Result<StepSegments> {
        let resolve = |slot: u32| {
            self.slots.get(slot as usize).copied().flatten().map(|s| AdapterSlot {
                slot,
                rank: s.rank as u32,
                scale: s.scale,
            })
        };
        let mut out = Vec::with_capacity(7);
        for p in Projection::ALL {
            let keys: Vec<Option<u32>> = adapters
                .iter()
                .map(|a| {
                    a.filter(|&s| {
                        self.slots
                            .get(s as usize)
                            .copied()
                            .flatten()
                            .is_none_or(|i| i.targets[p.index()])
                    })
                })
                .collect();
            if keys.iter().all(Option::is_none) {
                out.push(None);
                continue;
            }
            let map = SegmentMap::new(&keys, lens, resolve)?;
            out.push(Some(BatchSegments::new(map)));
        }
        Ok(out)
    }

    /// The first projection, in [`Projection::ALL`]'s order, the adapter in `slot` targets
    /// (what an adapted request's commitment takes the delta of).
    pub(crate) fn first_target(&self, slot: u32) -> Option<Projection> {
        let info = self.slots.get(slot as usize).copied().flatten()?;
        Projection::ALL.into_iter().find(|p| info.targets[p.index()])
    }

    /// Plans the LoRA deltas a step computes apart for the commitment
    /// ([`crate::commitment::delta_layer`] of `num_layers`): each of `asked` (step rows, in
    /// the order their results come back) with the adapter slot `slot_of` gives it, grouped
    /// by the first projection that adapter targets. Each group's segments are over its rows
    /// gathered (`step_rows` `None`, the host path) or over the step's `step_rows` rows read
    /// in place ([`Self::delta_segments`]; the tensor path, which needs no gather launch).
    pub(crate) fn delta_plan(
        &self,
        num_layers: usize,
        asked: &[u32],
        slot_of: impl Fn(u32) -> Option<u32>,
        step_rows: Option<usize>,
    ) -> Result<DeltaPlan> {
        let mut groups: Vec<DeltaGroup> = Vec::new();
        for (at, &row) in asked.iter().enumerate() {
            let slot = slot_of(row).ok_or_else(|| {
                EngineError::Backend(format!("an adapter delta asked of row {row}, which has none"))
            })?;
            let proj = self.first_target(slot).ok_or_else(|| {
                EngineError::Backend(format!("adapter slot {slot} is empty or targets nothing"))
            })?;
            let g = match groups.iter().position(|g| g.proj == proj) {
                Some(g) => g,
                None => {
                    groups.push(DeltaGroup {
                        proj,
                        rows: Vec::new(),
                        slots: Vec::new(),
                        at: Vec::new(),
                        segments: None,
                    });
                    groups.len() - 1
                },
            };
            groups[g].rows.push(row);
            groups[g].slots.push(slot);
            groups[g].at.push(at);
        }
        for g in &mut groups {
            g.segments = self.delta_segments(g.proj, &g.rows, &g.slots, step_rows)?;
        }
        Ok(DeltaPlan {
            layer: crate::commitment::delta_layer(num_layers),
            asked: asked.len(),
            groups,
        })
    }

    /// The segments of one delta launch of projection `proj` for the step rows `rows` on
    /// adapter slots `slots`: over those rows gathered (`over` `None`: launch row `i` is step
    /// row `rows[i]`), or over a step of `over` rows read in place, the rows on their slots
    /// and every other row on none (no tile, its delta stays zero). A row's delta is the same
    /// either way: the SGMV computes each row from that row alone.
    pub(crate) fn delta_segments(
        &self,
        proj: Projection,
        rows: &[u32],
        slots: &[u32],
        over: Option<usize>,
    ) -> Result<Option<BatchSegments>> {
        let keys: Vec<Option<u32>> = match over {
            None => slots.iter().map(|&s| Some(s)).collect(),
            Some(n) => {
                let mut keys = vec![None; n];
                for (&r, &s) in rows.iter().zip(slots) {
                    let key = keys.get_mut(r as usize).ok_or_else(|| {
                        EngineError::Backend(format!("a delta asked of row {r} of a {n}-row step"))
                    })?;
                    *key = Some(s);
                }
                keys
            },
        };
        let mut segments = self.segments(&keys, &vec![1; keys.len()])?;
        Ok(segments.swap_remove(proj.index()))
    }

    /// Brings the device pointer arrays of every layer's tables of `projections` up to date
    /// with the slots: a replayed CUDA graph reads them without a launch from the host, which
    /// would otherwise do it (`AdapterTable::sync_device`).
    #[cfg(feature = "cuda")]
    pub(crate) fn sync_device_tables(&self, projections: &[Projection]) -> Result<()> {
        for layer in &self.tables {
            for &p in projections {
                layer[p.index()].sync_device()?;
            }
        }
        Ok(())
    }

    /// `y += delta(x)` for layer `layer`'s projection `proj`, one SGMV call for the batch.
    pub(crate) fn apply(
        &self,
        layer: usize,
        proj: Projection,
        x: &Tensor,
        y: &Tensor,
        segments: &BatchSegments,
    ) -> Result<()> {
        lora_delta(x, y, segments, &self.tables[layer][proj.index()])?;
        Ok(())
    }

    /// `y += delta(x)` for layer `layer`'s projections `parts` (each with the column its
    /// output starts at in `y` and its segments), which read the same `x` and write side by
    /// side columns of one stacked output: one SGMV launch on CUDA where the kernel takes
    /// them all (`openledger_kernels::lora_delta_stacked`), one call each elsewhere.
    pub(crate) fn apply_stacked(
        &self,
        layer: usize,
        parts: &[(Projection, usize, &BatchSegments)],
        x: &Tensor,
        y: &Tensor,
    ) -> Result<()> {
        let parts: Vec<StackedPart<'_>> = parts
            .iter()
            .map(|&(p, offset, segments)| StackedPart {
                offset,
                segments,
                table: &self.tables[layer][p.index()],
            })
            .collect();
        lora_delta_stacked(x, y, &parts)?;
        Ok(())
    }

    /// [`LoraSlots::apply`] on host f32 rows (`x` `[rows, d_in]`, `y` `[rows, d_out]`), for
    /// tables on the CPU: the host path's buffers used in place.
    pub(crate) fn apply_host(
        &self,
        layer: usize,
        proj: Projection,
        x: &[f32],
        y: &mut [f32],
        segments: &BatchSegments,
    ) -> Result<()> {
        lora_delta_host(x, y, segments, &self.tables[layer][proj.index()])?;
        Ok(())
    }
}

/// The LoRA deltas a step computes apart, not added to anything, for activation
/// commitments: at layer `layer`, each group's rows through its projection's adapter tables,
/// on the rows' own inputs gathered (so a row's delta is the same whatever the batch).
#[derive(Default)]
pub(crate) struct DeltaPlan {
    pub layer: usize,
    /// Rows asked in all.
    pub asked: usize,
    pub groups: Vec<DeltaGroup>,
}

/// The rows of a [`DeltaPlan`] whose adapters' first target is `proj`.
pub(crate) struct DeltaGroup {
    pub proj: Projection,
    /// Step rows, whose inputs are gathered.
    pub rows: Vec<u32>,
    pub slots: Vec<u32>,
    /// Each row's position among the asked rows.
    pub at: Vec<usize>,
    /// The launch's segments ([`LoraSlots::delta_segments`]): over the gathered rows (host
    /// path) or over the step's rows, the group's on their slots (tensor path).
    pub segments: Option<BatchSegments>,
}

impl DeltaPlan {
    /// Whether no delta is asked.
    pub fn is_empty(&self) -> bool {
        self.asked == 0
    }
}
