//! Where adapters live: registered on disk, parsed in host memory (LRU under a byte budget),
//! and installed in compute slots (LRU among slots no running sequence uses).
//!
//! On the CPU path the compute tier is the SGMV tables in host memory; with a CUDA device the
//! same slots hold device tensors, under a byte budget of GPU memory as well as a slot count.
//! Parsed adapters always stay in host memory (the host tier), whatever the model's device,
//! and are copied to the device when installed. An adapter pinned by a running sequence is
//! never evicted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;

use candle_core::Device;

use crate::adapters::{LoraAdapter, LoraSlots, PendingUpload};
use crate::error::{EngineError, Result};
use crate::host_weights::HostAlloc;
use openledger_model::ModelConfig;

/// Budgets of the cache tiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterCacheConfig {
    /// Adapters installed for compute at once.
    pub compute_slots: usize,
    /// Bytes of adapter weights installed for compute at once, counted as bf16 (GPU memory
    /// on a GPU; on the CPU the installed tensors share the host tier's memory, and quantized
    /// tables add their byte rows, half that count).
    pub compute_bytes: usize,
    /// Bytes of parsed adapters kept in host memory beyond those installed, counted as
    /// they are held there ([`LoraAdapter::host_bytes`]: bf16, not the file's size).
    pub host_bytes: usize,
    /// On a GPU, admit a queued request whose adapter is still being copied to the device,
    /// the step that first reads it waiting on the GPU for the rest of the copy (the
    /// default), rather than hold it back until the copy has ended. Measured side by side on
    /// one H100 under churn (density-bench, 2,000 adapters over 128 slots,
    /// docs/benchmarks.md "Adapter density"): admitting gave 2-4% more throughput and a
    /// median first token ~17 ms lower (one step fewer), though a step that admits one may
    /// start late by what is left of the copy.
    pub admit_while_copying: bool,
    /// On a GPU, an adapter's copy to the device goes in this many runs of consecutive
    /// layers, and the step that first reads it waits for each run only before its first
    /// layer, so its first layers compute while the later ones arrive (1: one copy, waited
    /// for before the step).
    pub copy_runs: usize,
}

impl Default for AdapterCacheConfig {
    fn default() -> Self {
        Self {
            compute_slots: 16,
            compute_bytes: 4 << 30,
            host_bytes: 1 << 30,
            admit_while_copying: true,
            copy_runs: 1,
        }
    }
}

struct SlotEntry {
    name: String,
    pins: usize,
    last_used: u64,
    /// [`LoraAdapter::weight_bytes`], charged to the compute budget.
    bytes: usize,
    /// The copy to the device, while it may still be under way (GPU engines): the slot is
    /// not evicted before it has ended.
    upload: Option<PendingUpload>,
    /// Installed ahead of its request (for a queued request) and not acquired since:
    /// another such installation does not evict it.
    staged: bool,
}

impl SlotEntry {
    /// Whether the slot may be evicted: no running sequence uses it and no copy to it is
    /// under way (a finished copy's record is dropped here).
    fn evictable(&mut self) -> bool {
        if self.upload.as_ref().is_some_and(PendingUpload::is_done) {
            self.upload = None;
        }
        self.pins == 0 && self.upload.is_none()
    }
}

/// The three tiers and the compute tables.
pub struct AdapterCache {
    config: AdapterCacheConfig,
    base: ModelConfig,
    /// The compute tables are on the CPU: parsed adapters keep lora_B rank-major, so that
    /// installing one shares its memory ([`LoraAdapter::with_rank_major_b`]).
    cpu_tables: bool,
    /// Where parsed adapters are kept: CPU tensors, or (CUDA) one page-locked buffer each,
    /// copied to the device asynchronously.
    alloc: HostAlloc,
    disk: HashMap<String, PathBuf>,
    host: HashMap<String, (Arc<LoraAdapter>, u64)>,
    slots: Vec<Option<SlotEntry>>,
    tables: LoraSlots,
    tick: u64,
    /// Adapters being read from disk on background threads (prefetched for queued requests).
    loading: HashMap<String, Receiver<Result<LoraAdapter>>>,
}

impl AdapterCache {
    /// Tiers for adapters of `base`, installed for compute on `device`; with `quantized` (CPU
    /// only), computed with from row-quantized bytes ([`LoraSlots::new`]).
    pub fn new(
        config: AdapterCacheConfig,
        base: &ModelConfig,
        device: &Device,
        quantized: bool,
    ) -> Self {
        Self {
            tables: LoraSlots::new(base, device, config.compute_slots, quantized),
            slots: (0..config.compute_slots).map(|_| None).collect(),
            config,
            base: base.clone(),
            cpu_tables: device.is_cpu(),
            alloc: host_alloc(device),
            disk: HashMap::new(),
            host: HashMap::new(),
            tick: 0,
            loading: HashMap::new(),
        }
    }

    /// Registers an adapter directory under `name`, validating it now so that a malformed
    /// adapter is refused here rather than when a request needs it.
    pub fn register(&mut self, name: &str, dir: &Path) -> Result<()> {
        let adapter = Arc::new(parse(dir, &self.base, &self.alloc, self.cpu_tables)?);
        self.disk.insert(name.to_string(), dir.to_path_buf());
        self.tick += 1;
        self.host.insert(name.to_string(), (adapter, self.tick));
        self.trim_host();
        tracing::info!(adapter = name, dir = %dir.display(), "registered adapter");
        Ok(())
    }

    /// Whether `name` was registered.
    pub fn contains(&self, name: &str) -> bool {
        self.disk.contains_key(name)
    }

    /// The compute tables.
    pub fn tables(&self) -> &LoraSlots {
        &self.tables
    }

    /// Names installed in compute slots, slot by slot.
    pub fn resident(&self) -> Vec<Option<&str>> {
        self.slots.iter().map(|s| s.as_ref().map(|e| e.name.as_str())).collect()
    }

    /// Names held parsed in host memory.
    pub fn host_resident(&self) -> Vec<&str> {
        self.host.keys().map(String::as_str).collect()
    }

    /// Installs `name` in a compute slot if needed and pins it for one sequence.
    /// [`EngineError::AdapterSlotsFull`] when every slot is pinned, or when the compute byte
    /// budget cannot hold it without evicting a pinned adapter: try again later. On a GPU
    /// the compute stream is ordered after the adapter's copy to the device.
    pub fn acquire(&mut self, name: &str) -> Result<u32> {
        let slot = self.place(name, false)?;
        if let Some(e) = self.slots[slot].as_mut() {
            e.pins += 1;
            e.staged = false;
            if let Some(upload) = &e.upload {
                self.tables.order_upload(upload)?;
            }
        }
        Ok(slot as u32)
    }

    /// The slot holding `name`, installing it if needed (evicting least recently used
    /// slots that no sequence uses; with `staging`, never one staged for another queued
    /// request). The new slot is left unpinned.
    fn place(&mut self, name: &str, staging: bool) -> Result<usize> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(slot) =
            self.slots.iter().position(|s| s.as_ref().is_some_and(|e| e.name == name))
        {
            if let Some(e) = self.slots[slot].as_mut() {
                e.last_used = tick;
            }
            return Ok(slot);
        }
        let full = EngineError::AdapterSlotsFull { slots: self.slots.len() };
        let may_evict = |e: &mut SlotEntry| e.evictable() && !(staging && e.staged);
        if !self.slots.iter_mut().any(|s| s.as_mut().is_none_or(may_evict)) {
            return Err(full);
        }
        let adapter = self.host_get(name)?;
        let need = adapter.weight_bytes();
        if need > self.config.compute_bytes {
            return Err(EngineError::BadConfig {
                path: adapter.dir().to_path_buf(),
                message: format!(
                    "the adapter's {need} bytes of weights exceed the compute budget of {} bytes",
                    self.config.compute_bytes
                ),
            });
        }
        // Least recently used evictable slots, oldest first: evicted until the new adapter
        // fits the byte budget and has a slot. Nothing is evicted unless both can be met.
        let mut idle: Vec<(u64, usize)> = self
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| {
                let e = s.as_mut()?;
                may_evict(e).then_some((e.last_used, i))
            })
            .collect();
        idle.sort_unstable();
        let mut used = self.compute_bytes_used();
        let mut free_slot = self.slots.iter().position(Option::is_none);
        let mut evict = Vec::new();
        for &(_, i) in &idle {
            if free_slot.is_some() && used + need <= self.config.compute_bytes {
                break;
            }
            used -= self.slots[i].as_ref().map_or(0, |e| e.bytes);
            evict.push(i);
            free_slot = free_slot.or(Some(i));
        }
        let Some(slot) = free_slot.filter(|_| used + need <= self.config.compute_bytes) else {
            return Err(full);
        };
        for i in evict {
            if let Some(old) = self.slots[i].take() {
                self.tables.remove(i as u32);
                tracing::debug!(adapter = %old.name, slot = i, "evicted adapter from compute");
            }
        }
        let upload = self.tables.install_async(slot as u32, &adapter, self.config.copy_runs)?;
        self.slots[slot] = Some(SlotEntry {
            name: name.to_string(),
            pins: 0,
            last_used: tick,
            bytes: need,
            upload,
            staged: staging,
        });
        Ok(slot)
    }

    /// On a GPU, starts copying `name` to a compute slot ahead of the request that needs
    /// it, when it is parsed in host memory, not yet installed, and a slot can be had
    /// without evicting an adapter in use or staged for another queued request. Returns
    /// whether a copy is (now) under way or done.
    fn stage(&mut self, name: &str) -> bool {
        if self.cpu_tables || !self.host.contains_key(name) {
            return false;
        }
        match self.place(name, true) {
            Ok(_) => {
                tracing::debug!(
                    adapter = name,
                    "copying adapter to the device ahead of its request"
                );
                true
            },
            Err(e) => {
                tracing::debug!(adapter = name, error = %e, "adapter not staged");
                false
            },
        }
    }

    /// Bytes of adapter weights installed for compute.
    pub fn compute_bytes_used(&self) -> usize {
        self.slots.iter().flatten().map(|e| e.bytes).sum()
    }

    /// Pins held by running sequences, over all slots.
    pub fn pins(&self) -> usize {
        self.slots.iter().flatten().map(|e| e.pins).sum()
    }

    /// Unpins a slot acquired for a sequence that has finished.
    pub fn release(&mut self, slot: u32) {
        if let Some(Some(e)) = self.slots.get_mut(slot as usize) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// Starts loading `name` for a queued request, so that it is ready when the request is
    /// admitted while the running batch keeps stepping: read from disk on a background
    /// thread unless it is in host memory, installed, or already loading; on a GPU, once
    /// parsed, copied to a compute slot on the upload stream (see [`Self::is_loading`]).
    pub fn prefetch(&mut self, name: &str) {
        let installed = self.slots.iter().flatten().any(|e| e.name == name);
        if installed || self.loading.contains_key(name) {
            return;
        }
        if self.host.contains_key(name) {
            self.stage(name);
            return;
        }
        let Some(dir) = self.disk.get(name).cloned() else { return };
        let (tx, rx) = channel();
        let (base, alloc, cpu_tables) = (self.base.clone(), self.alloc.clone(), self.cpu_tables);
        let spawned =
            std::thread::Builder::new().name(format!("adapter-load-{name}")).spawn(move || {
                let _ = tx.send(parse(&dir, &base, &alloc, cpu_tables));
            });
        match spawned {
            Ok(_) => {
                tracing::debug!(adapter = name, "prefetching adapter from disk");
                self.loading.insert(name.to_string(), rx);
            },
            // Without a thread the adapter is read when admitted, as without prefetching.
            Err(e) => tracing::warn!(adapter = name, error = %e, "cannot start a prefetch thread"),
        }
    }

    /// Waits for every prefetch under way and keeps what it read.
    pub fn wait_for_prefetches(&mut self) {
        let names: Vec<String> = self.loading.keys().cloned().collect();
        for name in names {
            self.wait_prefetch(&name);
        }
    }

    /// Whether `name` is still being loaded: read from disk by a prefetch or, on a GPU (unless
    /// [`AdapterCacheConfig::admit_while_copying`]), copied to the device. Admitting its
    /// request now would make the running batch's next step wait for it. An adapter parsed
    /// in host memory but not installed starts its copy here (when a slot can be had), and
    /// counts as loading until the copy has ended.
    pub fn is_loading(&mut self, name: &str) -> bool {
        self.collect_prefetches();
        if self.loading.contains_key(name) {
            return true;
        }
        if self.cpu_tables {
            return false;
        }
        let admit = self.config.admit_while_copying;
        match self.slots.iter_mut().flatten().find(|e| e.name == name) {
            Some(e) => {
                if e.upload.as_ref().is_some_and(PendingUpload::is_done) {
                    e.upload = None;
                }
                e.upload.is_some() && !admit
            },
            None => self.stage(name) && !admit,
        }
    }

    /// Moves finished prefetches into host memory.
    fn collect_prefetches(&mut self) {
        let mut done = Vec::new();
        for (name, rx) in &self.loading {
            match rx.try_recv() {
                Err(TryRecvError::Empty) => {},
                Ok(result) => done.push((name.clone(), Some(result))),
                Err(TryRecvError::Disconnected) => done.push((name.clone(), None)),
            }
        }
        for (name, result) in done {
            self.loading.remove(&name);
            self.keep_prefetched(&name, result);
            self.stage(&name);
        }
    }

    /// Waits for `name`'s prefetch, if one is running, and keeps its result.
    fn wait_prefetch(&mut self, name: &str) {
        if let Some(rx) = self.loading.remove(name) {
            self.keep_prefetched(name, rx.recv().ok());
        }
    }

    /// Keeps a prefetched adapter in host memory; a failure is logged and left for
    /// `host_get` to report (by reading the disk again) when a request needs it.
    fn keep_prefetched(&mut self, name: &str, result: Option<Result<LoraAdapter>>) {
        match result {
            Some(Ok(adapter)) => {
                self.tick += 1;
                self.host.insert(name.to_string(), (Arc::new(adapter), self.tick));
                self.trim_host();
            },
            Some(Err(e)) => tracing::warn!(adapter = name, error = %e, "prefetch failed"),
            None => {},
        }
    }

    /// The parsed adapter, from host memory, a prefetch, or else from disk.
    fn host_get(&mut self, name: &str) -> Result<Arc<LoraAdapter>> {
        self.wait_prefetch(name);
        self.tick += 1;
        if let Some((a, used)) = self.host.get_mut(name) {
            *used = self.tick;
            return Ok(a.clone());
        }
        let dir = self.disk.get(name).ok_or_else(|| EngineError::UnknownAdapter(name.into()))?;
        let adapter = Arc::new(parse(dir, &self.base, &self.alloc, self.cpu_tables)?);
        self.host.insert(name.to_string(), (adapter.clone(), self.tick));
        self.trim_host();
        Ok(adapter)
    }

    /// Drops least recently used host copies beyond the budget (installed adapters keep their
    /// tensors alive through the tables, so dropping the host copy is always safe).
    fn trim_host(&mut self) {
        loop {
            let used: usize = self.host.values().map(|(a, _)| a.host_bytes()).sum();
            if used <= self.config.host_bytes || self.host.len() <= 1 {
                return;
            }
            let Some(oldest) =
                self.host.iter().min_by_key(|(_, (_, t))| *t).map(|(n, _)| n.clone())
            else {
                return;
            };
            self.host.remove(&oldest);
        }
    }
}

/// Where a cache on `device` keeps parsed adapters.
fn host_alloc(device: &Device) -> HostAlloc {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => HostAlloc::Pinned(dev.clone()),
        _ => HostAlloc::Tensors,
    }
}

/// Parses the adapter in `dir` into host memory (the host tier lives there whatever the
/// model's device), with lora_B rank-major when the compute tables are on the CPU.
fn parse(
    dir: &Path,
    base: &ModelConfig,
    alloc: &HostAlloc,
    cpu_tables: bool,
) -> Result<LoraAdapter> {
    let adapter = LoraAdapter::load_into(dir, base, alloc)?;
    if cpu_tables {
        adapter.with_rank_major_b()
    } else {
        Ok(adapter)
    }
}
