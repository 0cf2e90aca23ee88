//! CUDA path: the kernels of `cuda/sgmv_fused.cu` and `cuda/sgmv_two_stage.cu`, compiled at build
//! time and embedded, launched through cudarc on candle's stream.
//!
//! Per step, [`DeviceSegments`] uploads the segment map once (one copy) with the tile lists
//! of both kernel versions and the per-tile counters the two-stage kernels' shrink reduction uses; per table,
//! [`DeviceTable`] is the device array of `(lora_A, lora_B)` pointers per slot.
//!
//! The fused kernel (bf16 / f16, ranks up to 128) does shrink and expand in one launch of thread-block
//! clusters; the two-stage kernels (two launches) serves f32, larger ranks, and comparison runs
//! (`OPENLEDGER_SGMV_KERNEL=two-stage`). See kernels/NOTES.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Storage};
use half::{bf16, f16};

use crate::candle_ops::BatchSegments;
use crate::error::{KernelError, Result};
use crate::segments::SegmentMap;
use crate::table::AdapterTable;

mod fused;

/// The second version, for what the fused kernel does not cover and for comparison runs.
static FATBIN_TWO_STAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sgmv_two_stage.fatbin"));

/// Tokens per two-stage tile (`TILE_M` in sgmv_two_stage.cu).
const TILE_TOKENS: usize = 64;
/// Columns per two-stage block (`TILE_N` in sgmv_two_stage.cu).
const TILE_N: usize = 128;
/// d_in per two-stage shrink block (`KSPLIT_K` in sgmv_two_stage.cu); fixed so that the reduction order,
/// and so the result, depends on d_in alone.
const KSPLIT_K: usize = 256;
const THREADS: u32 = 128;

/// two-stage kernel parameters, laid out as `SgmvParams` in sgmv_two_stage.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SgmvParams {
    x: u64,
    y: u64,
    partial: u64,
    v: u64,
    counters: u64,
    table: u64,
    rows: u64,
    tiles: u64,
    seg_slot: u64,
    seg_rank: u64,
    seg_scale: u64,
    d_in: i32,
    d_out: i32,
    num_tokens: i32,
    width: i32,
    ksplit: i32,
    vec_ok: i32,
}

// SAFETY: plain old data with the C layout of the kernel's parameter struct.
unsafe impl DeviceRepr for SgmvParams {}

pub(crate) fn cuda_err(e: impl std::fmt::Display) -> KernelError {
    KernelError::Cuda(e.to_string())
}

struct Kernels {
    shrink: [CudaFunction; 3],
    expand: [CudaFunction; 3],
    /// Variants for batches whose segments all have <= 16 tokens.
    small: ([CudaFunction; 3], [CudaFunction; 3]),
    /// The fused kernel; `None` when `OPENLEDGER_SGMV_KERNEL=two-stage`.
    fused: Option<fused::Kernels>,
}

/// What `load` builds from a CUDA context (a kernel module, the functions looked up in it),
/// built once per context and kept in `cache` for the process.
pub(crate) fn per_context<T: Clone>(
    cache: &'static OnceLock<Mutex<HashMap<usize, T>>>,
    dev: &CudaDevice,
    load: impl FnOnce(&Arc<CudaContext>, &Arc<CudaStream>) -> Result<T>,
) -> Result<T> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let key = Arc::as_ptr(ctx) as usize;
    let mut loaded = cache.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = loaded.get(&key) {
        return Ok(v.clone());
    }
    let v = load(ctx, &stream)?;
    loaded.insert(key, v.clone());
    Ok(v)
}

/// Loads an embedded fatbin into `ctx`.
pub(crate) fn load_fatbin(ctx: &Arc<CudaContext>, fatbin: &[u8]) -> Result<Arc<CudaModule>> {
    ctx.load_module(Ptx::from_binary(fatbin.to_vec())).map_err(cuda_err)
}

/// The module, loaded once per CUDA context.
fn kernels(dev: &CudaDevice) -> Result<Arc<Kernels>> {
    static LOADED: OnceLock<Mutex<HashMap<usize, Arc<Kernels>>>> = OnceLock::new();
    per_context(&LOADED, dev, |ctx, stream| {
        let two_stage_only = crate::options::options().sgmv_two_stage_only;
        let two_stage = load_fatbin(ctx, FATBIN_TWO_STAGE)?;
        let f = |stage: &str, ty: &str| {
            two_stage.load_function(&format!("sgmv_{stage}_{ty}")).map_err(cuda_err)
        };
        let all = |stage: &str| -> Result<[CudaFunction; 3]> {
            Ok([f(stage, "f32")?, f(stage, "bf16")?, f(stage, "f16")?])
        };
        let fused = if two_stage_only { None } else { Some(fused::load(ctx, stream)?) };
        Ok(Arc::new(Kernels {
            shrink: all("shrink")?,
            expand: all("expand")?,
            small: (all("shrink_small")?, all("expand_small")?),
            fused,
        }))
    })
}

/// Index of a kernel family's f32 / bf16 / f16 instance.
pub(crate) fn dtype_index(dtype: DType) -> Result<usize> {
    match dtype {
        DType::F32 => Ok(0),
        DType::BF16 => Ok(1),
        DType::F16 => Ok(2),
        other => Err(KernelError::UnsupportedDType(other)),
    }
}

/// Device address of the first element of a CUDA storage of element type `T`.
fn address<T: CudaDType>(s: &CudaStorage, l: &Layout, stream: &CudaStream) -> Result<u64> {
    let slice = s.as_cuda_slice::<T>()?;
    let (ptr, _sync) = slice.device_ptr(stream);
    Ok(ptr + (l.start_offset() * std::mem::size_of::<T>()) as u64)
}

pub(crate) fn storage_address(s: &CudaStorage, l: &Layout, stream: &CudaStream) -> Result<u64> {
    match s.dtype() {
        DType::F32 => address::<f32>(s, l, stream),
        DType::BF16 => address::<bf16>(s, l, stream),
        DType::F16 => address::<f16>(s, l, stream),
        other => Err(KernelError::UnsupportedDType(other)),
    }
}

pub(crate) fn slice_address<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    s.device_ptr(stream).0
}

/// The segment map on the device, uploaded on the first CUDA call of a step.
pub(crate) struct DeviceSegments {
    /// rows | tiles (segment, start, end) | slots | ranks | scales (f32 bits); for a CUDA
    /// graph's segments ([`GraphSegments`]) rows | the fused kernel's tile records alone.
    _meta: Arc<CudaSlice<u32>>,
    meta_ptr: u64,
    /// One per (tile, rank chunk); zero between launches (the shrink's last block resets).
    _counters: Arc<CudaSlice<u32>>,
    counters_ptr: u64,
    /// The buffers of a [`GraphSegments`]: only the fused kernel reads them.
    graph: bool,
    num_tiles: usize,
    rank_chunks: usize,
    offsets: [usize; 5],
    /// Every tile has at most 16 tokens: the small kernels apply.
    small_tiles: bool,
    /// The fused kernel: the tile records and their device address.
    fused_tiles: fused::Tiles,
    fused_records: u64,
    /// v and the shrink partials, grown to the largest d_in seen and reused by every layer
    /// (no allocation per call). Held locked for the two launches of one call.
    scratch: Mutex<Option<Scratch>>,
}

struct Scratch {
    buf: CudaSlice<f32>,
    ptr: u64,
}

impl DeviceSegments {
    /// Scratch of at least `len` f32, locked; returns the guard and the device address.
    fn scratch(
        &self,
        dev: &CudaDevice,
        len: usize,
    ) -> Result<(std::sync::MutexGuard<'_, Option<Scratch>>, u64)> {
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_none_or(|s| s.buf.len() < len) {
            // SAFETY (uninitialised memory): kernels read back only what they wrote.
            let buf = unsafe { dev.alloc::<f32>(len.max(1)) }?;
            let ptr = slice_address(&buf, &dev.cuda_stream());
            *guard = Some(Scratch { buf, ptr });
        }
        let ptr = guard.as_ref().map_or(0, |s| s.ptr);
        Ok((guard, ptr))
    }
}

fn device_segments(segments: &BatchSegments, dev: &CudaDevice) -> Result<Arc<DeviceSegments>> {
    let mut cached = segments.gpu.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = cached.as_ref() {
        return Ok(d.clone());
    }
    let map = segments.map();
    let mut tiles = Vec::new();
    for s in 0..map.num_segments() {
        let r = map.segment_range(s);
        let mut p = r.start;
        while p < r.end {
            let end = r.end.min(p + TILE_TOKENS);
            tiles.extend([s as u32, p as u32, end as u32]);
            p = end;
        }
    }
    let num_tiles = tiles.len() / 3;
    let fused = fused::Tiles::new(map);
    let mut meta: Vec<u32> = map.rows().to_vec();
    let mut offsets = [0; 5];
    offsets[0] = meta.len();
    meta.extend(&tiles);
    offsets[1] = meta.len();
    meta.extend(map.slots());
    offsets[2] = meta.len();
    meta.extend(map.ranks());
    offsets[3] = meta.len();
    meta.extend(map.scales().iter().map(|s| s.to_bits()));
    offsets[4] = meta.len();
    meta.resize(meta.len().next_multiple_of(4), 0); // fused records are read as 16-byte vectors
    let fused_offset = meta.len();
    meta.extend(&fused.records);
    meta.push(0); // never empty
    let rank_chunks = map.max_rank().div_ceil(TILE_N).max(1);
    let meta = dev.clone_htod(&meta)?;
    let counters = dev.alloc_zeros::<u32>((num_tiles * rank_chunks).max(1))?;
    let stream = dev.cuda_stream();
    let meta_ptr = slice_address(&meta, &stream);
    let d = Arc::new(DeviceSegments {
        meta_ptr,
        counters_ptr: slice_address(&counters, &stream),
        _meta: Arc::new(meta),
        _counters: Arc::new(counters),
        graph: false,
        num_tiles,
        rank_chunks,
        offsets,
        small_tiles: tiles.chunks(3).all(|t| t[2] - t[1] <= 16),
        fused_records: meta_ptr + 4 * fused_offset as u64,
        fused_tiles: fused,
        scratch: Mutex::new(None),
    });
    *cached = Some(d.clone());
    Ok(d)
}

/// A step's segment metadata at fixed device addresses, for a step captured in a CUDA
/// graph: the rows of up to `rows` tokens and the fused kernel's tile records padded with
/// empty tiles to `rows` tiles (a segment of `t` tokens makes `ceil(t / 16)` tiles, so no
/// map of `rows` rows makes more), so the captured launch's grid serves any mix of
/// adapters of ranks up to the buffers' rank bound ([`graph_rank_bound`]).
/// [`GraphSegments::write`] rewrites them before a replay. Only the fused kernel takes them
/// (bf16 / f16, ranks up to 128: [`graph_segments_supported`]); other calls through them are
/// refused.
pub struct GraphSegments {
    meta: Arc<CudaSlice<u32>>,
    counters: Arc<CudaSlice<u32>>,
    device: CudaDevice,
    rows: usize,
    max_rank: usize,
}

/// Whether [`GraphSegments`] can serve tables of `dtype` with adapters of ranks up to
/// `max_rank`: the fused kernel's cases, and the fused kernel loaded (not turned off with
/// `OPENLEDGER_SGMV_KERNEL=two-stage`).
pub fn graph_segments_supported(dtype: DType, max_rank: usize) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
        && graph_rank_bound(max_rank).is_some()
        && !crate::options::options().sgmv_two_stage_only
}

/// The rank bound of graph segments for adapters of ranks up to `max_rank` (`None` past
/// the fused kernel's): a graph captured for one bound serves every map of ranks within
/// it, and launches the variant an eager launch of those ranks could choose (64 lets every
/// variant in, 128 all but one). Steps whose bound differs need graphs of their own.
pub fn graph_rank_bound(max_rank: usize) -> Option<usize> {
    fused::rank_bound(max_rank)
}

impl GraphSegments {
    /// Buffers for steps of up to `rows` rows, with adapters of ranks up to `max_rank` (a
    /// [`graph_rank_bound`]), on `device` (a CUDA device).
    pub fn new(device: &candle_core::Device, rows: usize, max_rank: usize) -> Result<Self> {
        let candle_core::Device::Cuda(dev) = device else {
            return Err(KernelError::UnsupportedDevice("graph segments need a CUDA device".into()));
        };
        let rows = rows.max(1);
        let meta = dev.alloc_zeros::<u32>(Self::records_at(rows) + 8 * rows)?;
        let counters = dev.alloc_zeros::<u32>(1)?;
        Ok(Self {
            meta: Arc::new(meta),
            counters: Arc::new(counters),
            device: dev.clone(),
            rows,
            max_rank,
        })
    }

    /// Rows (and tiles) the buffers hold.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Where the tile records start in the buffer (16-byte aligned: read as vectors).
    fn records_at(rows: usize) -> usize {
        rows.next_multiple_of(4)
    }

    /// Writes `map` into the buffers, ordered on the stream after the work queued there (a
    /// replay still running reads the old metadata, the next one the new).
    pub fn write(&self, map: &SegmentMap) -> Result<()> {
        let tiles = fused::Tiles::padded(map, self.rows, self.max_rank)?;
        let mut meta = vec![0u32; Self::records_at(self.rows)];
        if map.num_tokens() > self.rows || map.num_rows() > self.rows {
            return Err(KernelError::Shape {
                tensor: "graph segments (rows at most the buffers')".into(),
                expected: vec![self.rows],
                actual: vec![map.num_rows().max(map.num_tokens())],
            });
        }
        meta[..map.num_tokens()].copy_from_slice(map.rows());
        meta.extend(&tiles.records);
        crate::graph_inputs::upload_into(&self.meta, &meta)
    }

    /// Writes `map` ([`Self::write`]) and returns segments whose launches read these buffers:
    /// a launch captured through them serves every map written later.
    pub fn bind(&self, map: SegmentMap) -> Result<BatchSegments> {
        self.write(&map)?;
        let tiles = fused::Tiles::padded(&map, self.rows, self.max_rank)?;
        let stream = self.device.cuda_stream();
        let meta_ptr = slice_address(&self.meta, &stream);
        let d = DeviceSegments {
            _meta: self.meta.clone(),
            meta_ptr,
            _counters: self.counters.clone(),
            counters_ptr: slice_address(&self.counters, &stream),
            graph: true,
            num_tiles: self.rows,
            rank_chunks: 1,
            offsets: [0; 5],
            small_tiles: false,
            fused_records: meta_ptr + 4 * Self::records_at(self.rows) as u64,
            fused_tiles: tiles,
            scratch: Mutex::new(None),
        };
        let segments = BatchSegments::new(map);
        *segments.gpu.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(d));
        Ok(segments)
    }
}

/// The per-slot pointer array of an adapter table on the device. Made on the table's first
/// CUDA launch and rewritten in place when the table has changed since (`stale`): its
/// address is fixed, so a CUDA graph that captured it reads the slots' current adapters.
pub(crate) struct DeviceTable {
    ptrs: CudaSlice<u64>,
    ptrs_addr: u64,
    /// Every lora_A / lora_B starts on a 16-byte boundary (vector loads allowed).
    a_aligned: bool,
    b_aligned: bool,
    /// The table changed after the array was written.
    pub(crate) stale: bool,
}

pub(crate) fn device_table(table: &AdapterTable, dev: &CudaDevice) -> Result<TableAddress> {
    let stream = dev.cuda_stream();
    let mut cached = table.gpu.lock().unwrap_or_else(|e| e.into_inner());
    if cached.as_ref().is_none_or(|t| t.stale) {
        let mut ptrs = Vec::with_capacity(2 * table.num_slots() + 1);
        let (mut a_aligned, mut b_aligned) = (true, true);
        for entry in table.entries() {
            let (a, b) = match entry {
                Some(e) => {
                    let (sa, la) = e.a.storage_and_layout();
                    let (sb, lb) = e.b.storage_and_layout();
                    let (Storage::Cuda(ca), Storage::Cuda(cb)) = (&*sa, &*sb) else {
                        return Err(KernelError::UnsupportedDevice("adapter not on CUDA".into()));
                    };
                    (storage_address(ca, la, &stream)?, storage_address(cb, lb, &stream)?)
                },
                None => (0, 0),
            };
            a_aligned &= a.is_multiple_of(16);
            b_aligned &= b.is_multiple_of(16);
            ptrs.extend([a, b]);
        }
        ptrs.push(0); // never empty
        match cached.as_mut() {
            // Rewritten in place, ordered on the stream after the launches that read the old
            // pointers (the table's slot count, so the length, never changes).
            Some(t) => {
                crate::graph_inputs::upload_into(&t.ptrs, &ptrs)?;
                (t.a_aligned, t.b_aligned, t.stale) = (a_aligned, b_aligned, false);
            },
            None => {
                let ptrs = dev.clone_htod(&ptrs)?;
                let ptrs_addr = slice_address(&ptrs, &stream);
                *cached = Some(DeviceTable { ptrs, ptrs_addr, a_aligned, b_aligned, stale: false });
            },
        }
    }
    Ok(cached.as_ref().map_or((0, false, false), |t| (t.ptrs_addr, t.a_aligned, t.b_aligned)))
}

/// `t` itself when its first element lies on a 16-byte boundary of its CUDA storage, else a
/// copy that does (a fresh allocation).
pub(crate) fn aligned16(t: candle_core::Tensor) -> Result<candle_core::Tensor> {
    let addr = {
        let (s, l) = t.storage_and_layout();
        match &*s {
            Storage::Cuda(c) => storage_address(c, l, &c.device.cuda_stream())?,
            _ => return Ok(t.clone()),
        }
    };
    if addr.is_multiple_of(16) {
        Ok(t)
    } else {
        Ok(t.copy()?)
    }
}

/// Device address of the pointer array, and whether all lora_A / lora_B are 16-byte aligned.
pub(crate) type TableAddress = (u64, bool, bool);

/// Parameters shared by both stages, with the segment and table pointers filled in.
fn params(
    segments: &BatchSegments,
    table: &AdapterTable,
    dev: &CudaDevice,
) -> Result<(SgmvParams, Arc<DeviceSegments>, Arc<Kernels>)> {
    let map = segments.map();
    let kernels = kernels(dev)?;
    let seg = device_segments(segments, dev)?;
    let (table_ptr, a_aligned, b_aligned) = device_table(table, dev)?;
    let at = |i: usize| seg.meta_ptr + 4 * i as u64;
    let vec_elems = 16 / table.dtype().size_in_bytes();
    let p = SgmvParams {
        counters: seg.counters_ptr,
        table: table_ptr,
        rows: at(0),
        tiles: at(seg.offsets[0]),
        seg_slot: at(seg.offsets[1]),
        seg_rank: at(seg.offsets[2]),
        seg_scale: at(seg.offsets[3]),
        d_in: table.d_in() as i32,
        d_out: table.d_out() as i32,
        num_tokens: map.num_tokens() as i32,
        width: map.max_rank() as i32,
        ksplit: table.d_in().div_ceil(KSPLIT_K) as i32,
        vec_ok: (a_aligned && table.d_in().is_multiple_of(vec_elems)) as i32
            | ((b_aligned as i32) << 1),
        ..Default::default()
    };
    Ok((p, seg, kernels))
}

fn launch(
    f: &CudaFunction,
    stream: &CudaStream,
    grid: (u32, u32, u32),
    p: &SgmvParams,
) -> Result<()> {
    let cfg = LaunchConfig { grid_dim: grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let mut b = stream.launch_builder(f);
    b.arg(p);
    // SAFETY: every pointer in `p` refers to live device memory of the sizes the kernel
    // indexes (checked shapes, the uploaded map and table), and the stream orders the
    // launches with candle's other work.
    unsafe { b.launch(cfg) }.map_err(cuda_err)?;
    Ok(())
}

/// One call's launch parameters and what they point into.
struct Call {
    p: SgmvParams,
    seg: Arc<DeviceSegments>,
    kernels: Arc<Kernels>,
    stream: Arc<CudaStream>,
    dtype: usize,
    vec_elems: usize,
    /// The fused kernel's element type (0: bf16, 1: f16), if the fused kernel covers this call.
    fused: Option<usize>,
}

fn prepare(segments: &BatchSegments, table: &AdapterTable, dev: &CudaDevice) -> Result<Call> {
    let (p, seg, kernels) = params(segments, table, dev)?;
    let dtype = dtype_index(table.dtype())?;
    let fused =
        (kernels.fused.is_some() && dtype > 0 && segments.map().max_rank() <= fused::MAX_RANK)
            .then(|| dtype - 1);
    Ok(Call {
        p,
        seg,
        kernels,
        stream: dev.cuda_stream(),
        dtype,
        vec_elems: 16 / table.dtype().size_in_bytes(),
        fused,
    })
}

/// Launches the fused kernel in `mode` (0: lora_delta, 1: shrink alone into `v`, 2: expand alone from
/// `v`).
#[allow(clippy::too_many_arguments)]
fn launch_fused(
    call: &Call,
    dtype: usize,
    mode: i32,
    x: u64,
    y: u64,
    ldy: usize,
    v: u64,
) -> Result<()> {
    let Some(k) = &call.kernels.fused else {
        return Err(KernelError::Cuda("the fused SGMV kernel is not loaded".into()));
    };
    let launch = fused_launch(call, mode, (x, y, v), ldy);
    fused::launch(k, &call.seg.fused_tiles, call.seg.fused_records, dtype, &call.stream, &launch)
}

/// The fused kernel's launch of `call` in `mode` on device addresses `x`, `y` (rows `ldy`
/// elements apart) and `v`.
fn fused_launch(call: &Call, mode: i32, (x, y, v): (u64, u64, u64), ldy: usize) -> fused::Launch {
    fused::Launch {
        mode,
        x,
        y,
        v,
        table: call.p.table,
        rows: call.p.rows,
        d_in: call.p.d_in as usize,
        d_out: call.p.d_out as usize,
        ldy,
        width: call.p.width as usize,
        a_aligned: (call.p.vec_ok & 1) != 0,
        b_aligned: (call.p.vec_ok & 2) != 0,
    }
}

/// Launches the shrink of x (device address) into v, with the partials at `partial`.
fn shrink_into(call: &mut Call, x: u64, v: u64, partial: u64) -> Result<()> {
    call.p.x = x;
    if !x.is_multiple_of(16) {
        call.p.vec_ok &= !1;
    }
    call.p.v = v;
    call.p.partial = partial;
    let grid = (call.seg.num_tiles as u32, call.p.ksplit as u32, call.seg.rank_chunks as u32);
    let f = if call.seg.small_tiles {
        &call.kernels.small.0[call.dtype]
    } else {
        &call.kernels.shrink[call.dtype]
    };
    launch(f, &call.stream, grid, &call.p)
}

/// Launches the expand of v into y (device addresses).
fn expand_from(call: &mut Call, v: u64, y: u64) -> Result<()> {
    call.p.v = v;
    call.p.y = y;
    if y.is_multiple_of(16) && (call.p.d_out as usize).is_multiple_of(call.vec_elems) {
        call.p.vec_ok |= 4;
    }
    let grid = (call.seg.num_tiles as u32, (call.p.d_out as usize).div_ceil(TILE_N) as u32, 1);
    let f = if call.seg.small_tiles {
        &call.kernels.small.1[call.dtype]
    } else {
        &call.kernels.expand[call.dtype]
    };
    launch(f, &call.stream, grid, &call.p)
}

/// `y += delta` on the device: the fused kernel in one launch, or the two-stage kernels' shrink then expand (two launches,
/// with v and the partials in the step's scratch buffer). `y`'s rows are `ldy` elements apart;
/// the two-stage kernels write contiguous rows, so there a `y` of wider rows goes through a
/// contiguous copy.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lora_delta(
    x: &CudaStorage,
    xl: &Layout,
    y: &mut CudaStorage,
    yl: &Layout,
    ldy: usize,
    segments: &BatchSegments,
    table: &AdapterTable,
) -> Result<()> {
    let dev = y.device.clone();
    let mut call = prepare(segments, table, &dev)?;
    if call.seg.num_tiles == 0 {
        return Ok(());
    }
    let x = storage_address(x, xl, &call.stream)?;
    if let Some(dtype) = call.fused {
        let y = storage_address(y, yl, &call.stream)?;
        let Some(k) = &call.kernels.fused else {
            return Err(KernelError::Cuda("the fused SGMV kernel is not loaded".into()));
        };
        let (d_in, d_out) = (call.p.d_in as usize, call.p.d_out as usize);
        // A graph's segments keep one launch (the split's scratch is allocated on demand).
        let split = if call.seg.graph { None } else { call.seg.fused_tiles.split(k, d_in, d_out) };
        let Some(blocks) = split else {
            return launch_fused(&call, dtype, 0, x, y, ldy, 0);
        };
        let v_len = call.p.num_tokens as usize * call.p.width as usize;
        let seg = call.seg.clone();
        let (_guard, v) = seg.scratch(&dev, v_len)?;
        let shrink = fused_launch(&call, 1, (x, 0, v), 0);
        let expand = fused_launch(&call, 2, (0, y, v), ldy);
        return fused::launch_split(
            k,
            &call.seg.fused_tiles,
            call.seg.fused_records,
            dtype,
            &call.stream,
            (&shrink, &expand),
            blocks,
        );
    }
    refuse_graph_segments(&call)?;
    let (rows, d_out) = (segments.map().num_rows(), call.p.d_out as usize);
    let mut packed = (ldy != d_out)
        .then(|| -> Result<CudaStorage> {
            let mut t = alloc_uninit(&dev, y.dtype(), rows * d_out)?;
            y.copy2d(&mut t, rows, d_out, ldy, d_out, yl.start_offset(), 0)?;
            Ok(t)
        })
        .transpose()?;
    let y_addr = match &packed {
        Some(t) => storage_address(t, &Layout::contiguous(rows * d_out), &call.stream)?,
        None => storage_address(y, yl, &call.stream)?,
    };
    let v_len = call.p.num_tokens as usize * call.p.width as usize;
    let seg = call.seg.clone();
    let (_guard, v) = seg.scratch(&dev, v_len * (1 + call.p.ksplit as usize))?;
    shrink_into(&mut call, x, v, v + 4 * v_len as u64)?;
    expand_from(&mut call, v, y_addr)?;
    if let Some(t) = packed.take() {
        t.copy2d(y, rows, d_out, d_out, ldy, 0, yl.start_offset())?;
    }
    Ok(())
}

/// [`lora_delta`] for the parts of one stacked output (`y`: `[rows, ldy]`, part `i`'s
/// columns from `parts[i].offset`), all reading `x`: one launch of the fused kernel over
/// every part's tiles. The caller checked the shapes and that the fused kernel takes every
/// part ([`stacked_supported`]).
pub(crate) fn lora_delta_stacked(
    x: &CudaStorage,
    xl: &Layout,
    y: &mut CudaStorage,
    yl: &Layout,
    ldy: usize,
    parts: &[crate::candle_ops::StackedPart<'_>],
) -> Result<()> {
    let dev = y.device.clone();
    let stream = dev.cuda_stream();
    let x = storage_address(x, xl, &stream)?;
    let y_base = storage_address(y, yl, &stream)?;
    let elem = y.dtype().size_in_bytes() as u64;
    let mut calls = Vec::with_capacity(parts.len());
    for part in parts {
        let call = prepare(part.segments, part.table, &dev)?;
        if call.seg.num_tiles > 0 {
            calls.push((call, part.offset));
        }
    }
    let Some((first, _)) = calls.first() else { return Ok(()) };
    let (Some(dtype), Some(kernels)) = (first.fused, &first.kernels.fused) else {
        return Err(KernelError::Cuda("a stacked SGMV launch needs the fused kernel".into()));
    };
    let mut launches = Vec::with_capacity(calls.len());
    for (call, offset) in &calls {
        if call.fused != Some(dtype) {
            return Err(KernelError::Cuda("a stacked SGMV launch of mixed kernels".into()));
        }
        let launch = fused_launch(call, 0, (x, y_base + elem * *offset as u64, 0), ldy);
        launches.push((&call.seg.fused_tiles, call.seg.fused_records, launch));
    }
    fused::launch_stacked(kernels, &launches, dtype, &stream)
}

/// Whether one stacked launch ([`lora_delta_stacked`]) takes these maps of tables of
/// `dtype`: the fused kernel loaded, bf16 / f16, ranks up to 128, at most 3 parts.
pub(crate) fn stacked_supported(
    dtype: DType,
    max_ranks: impl Iterator<Item = usize>,
    n: usize,
) -> bool {
    let mut ranks = max_ranks;
    (2..=fused::MAX_PARTS).contains(&n)
        && matches!(dtype, DType::BF16 | DType::F16)
        && !crate::options::options().sgmv_two_stage_only
        && ranks.all(|r| r <= fused::MAX_RANK)
}

/// An uninitialised buffer of `len` (at least one) elements of `dtype`, for a launch that
/// writes every element before anything reads it.
pub(crate) fn alloc_uninit(dev: &CudaDevice, dtype: DType, len: usize) -> Result<CudaStorage> {
    let len = len.max(1);
    // SAFETY: the callers' next launch (or copy) writes every element before any read.
    Ok(unsafe {
        match dtype {
            DType::F32 => CudaStorage::wrap_cuda_slice(dev.alloc::<f32>(len)?, dev.clone()),
            DType::BF16 => CudaStorage::wrap_cuda_slice(dev.alloc::<bf16>(len)?, dev.clone()),
            DType::F16 => CudaStorage::wrap_cuda_slice(dev.alloc::<f16>(len)?, dev.clone()),
            other => return Err(KernelError::UnsupportedDType(other)),
        }
    })
}

/// The shrink alone; the output starts NaN-filled so that an unwritten element shows.
pub(crate) fn shrink(
    x: &CudaStorage,
    xl: &Layout,
    segments: &BatchSegments,
    table: &AdapterTable,
) -> Result<CudaStorage> {
    let dev = x.device.clone();
    let map = segments.map();
    let v = dev.clone_htod(&vec![f32::NAN; (map.num_tokens() * map.max_rank()).max(1)])?;
    let mut call = prepare(segments, table, &dev)?;
    if call.seg.num_tiles > 0 {
        let x = storage_address(x, xl, &call.stream)?;
        let v_addr = slice_address(&v, &call.stream);
        if let Some(dtype) = call.fused {
            launch_fused(&call, dtype, 1, x, 0, 0, v_addr)?;
            return Ok(CudaStorage::wrap_cuda_slice(v, dev));
        }
        refuse_graph_segments(&call)?;
        let seg = call.seg.clone();
        let v_len = map.num_tokens() * map.max_rank();
        let (_guard, partial) = seg.scratch(&dev, v_len * call.p.ksplit as usize)?;
        shrink_into(&mut call, x, v_addr, partial)?;
    }
    Ok(CudaStorage::wrap_cuda_slice(v, dev))
}

/// The expand alone, from a `v` as [`shrink`] returns it.
pub(crate) fn expand(
    v: &CudaStorage,
    vl: &Layout,
    y: &mut CudaStorage,
    yl: &Layout,
    segments: &BatchSegments,
    table: &AdapterTable,
) -> Result<()> {
    let dev = y.device.clone();
    let mut call = prepare(segments, table, &dev)?;
    if call.seg.num_tiles == 0 {
        return Ok(());
    }
    let v = address::<f32>(v, vl, &call.stream)?;
    let y = storage_address(y, yl, &call.stream)?;
    if let Some(dtype) = call.fused {
        return launch_fused(&call, dtype, 2, 0, y, call.p.d_out as usize, v);
    }
    refuse_graph_segments(&call)?;
    expand_from(&mut call, v, y)
}

/// The two-stage kernels read the segment layout of [`device_segments`], which a
/// [`GraphSegments`]' buffers do not hold.
fn refuse_graph_segments(call: &Call) -> Result<()> {
    if call.seg.graph {
        return Err(KernelError::Cuda(
            "graph segments serve the fused SGMV kernel only (bf16 / f16, ranks up to 128)".into(),
        ));
    }
    Ok(())
}
