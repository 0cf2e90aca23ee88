//! LoRA adapters in PEFT format, validated against the base model, and the per-projection
//! SGMV tables they are installed into (never merged into the base weights).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use openledger_kernels::{
    lora_delta, lora_delta_host, AdapterSlot, AdapterTable, BatchSegments, SegmentMap,
};

use crate::adapter_check::read_adapter;
pub use crate::adapter_check::ADAPTER_DTYPE;
use crate::error::{EngineError, Result};
use crate::step::StepSegments;
use openledger_model::{ModelConfig, Projection};

/// A PEFT LoRA adapter loaded into host memory.
pub struct LoraAdapter {
    pub(crate) dir: PathBuf,
    pub(crate) rank: usize,
    pub(crate) scale: f32,
    pub(crate) targets: [bool; 7],
    /// `[layer][projection]`: `(lora_A [r, d_in], lora_B [d_out, r])` in [`ADAPTER_DTYPE`] for
    /// targeted projections.
    pub(crate) weights: Vec<Vec<Option<(Tensor, Tensor)>>>,
    pub(crate) bytes: usize,
}

impl LoraAdapter {
    /// Loads `adapter_config.json` and `adapter_model.safetensors` from `dir`, with every
    /// check of [`validate_adapter_dir`](super::validate_adapter_dir) (the same function).
    pub fn load(dir: &Path, base: &ModelConfig, device: &Device) -> Result<Self> {
        let checked = read_adapter(dir, base, ADAPTER_DTYPE, device)?;
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

    /// Size of its weights file, the unit of the host budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of its weights as installed for compute ([`ADAPTER_DTYPE`]), the unit of the
    /// compute (GPU) budget.
    pub fn weight_bytes(&self) -> usize {
        self.weights
            .iter()
            .flatten()
            .flatten()
            .map(|(a, b)| (a.elem_count() + b.elem_count()) * ADAPTER_DTYPE.size_in_bytes())
            .sum()
    }

    /// Keeps each `lora_B` (`[d_out, rank]`) as a transposed view of rank-major storage
    /// (`[rank, d_out]` contiguous), the layout CPU SGMV tables compute with
    /// (`BLayout::RankByOut`): a CPU table then takes the tensor as it is instead of making a
    /// transposed copy, so an adapter installed on a CPU engine is held in memory once. (A
    /// GPU table makes its own contiguous copy at upload either way.)
    pub fn with_rank_major_b(mut self) -> Result<Self> {
        for (_, b) in self.weights.iter_mut().flatten().flatten() {
            *b = b.t()?.contiguous()?.t()?;
        }
        Ok(self)
    }

    /// Whether every `lora_B` lies in rank-major storage ([`Self::with_rank_major_b`]).
    pub fn b_is_rank_major(&self) -> bool {
        self.weights.iter().flatten().flatten().all(|(_, b)| b.t().is_ok_and(|t| t.is_contiguous()))
    }

    /// The f32 delta `scale * B @ A` (`[d_out, d_in]`) of one projection, for references.
    pub fn merged_delta(&self, layer: usize, proj: Projection) -> Result<Option<Tensor>> {
        match self.weights.get(layer).and_then(|l| l[proj.index()].as_ref()) {
            Some((a, b)) => {
                let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
                Ok(Some((b.matmul(&a)? * self.scale as f64)?))
            },
            None => Ok(None),
        }
    }
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
        Self { tables, slots: vec![None; num_slots], device: device.clone() }
    }

    /// Number of slots.
    pub fn num_slots(&self) -> usize {
        self.slots.len()
    }

    /// Puts `adapter` in `slot`: its tensors are shared when they already live on the
    /// tables' device (the CPU path), copied there otherwise (host memory to GPU).
    pub fn install(&mut self, slot: u32, adapter: &LoraAdapter) -> Result<()> {
        if slot as usize >= self.slots.len() {
            return Err(EngineError::Kernel(openledger_kernels::KernelError::SlotOutOfRange {
                slot,
                slots: self.slots.len(),
            }));
        }
        // Empty first, so that a failed upload leaves the slot empty, never half-replaced.
        self.remove(slot);
        let (tables, device) = (&mut self.tables, &self.device);
        let mut upload = || -> Result<()> {
            for (layer, tables) in adapter.weights.iter().zip(tables.iter_mut()) {
                for p in Projection::ALL {
                    if let Some((a, b)) = &layer[p.index()] {
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
