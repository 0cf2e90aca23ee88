//! Host side of SGMV v3 (`cuda/sgmv.cu`): loading its cluster kernels, the tile records of a
//! step, the choice of tile size, and the cluster launch. See kernels/NOTES.md.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::sys::{self, CUfunction_attribute};
use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;

use super::cuda_err;
use crate::error::Result;
use crate::SegmentMap;

static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sgmv.fatbin"));

/// Blocks per tile (`CLUSTER` in sgmv.cu), threads per block.
const CLUSTER: u32 = 8;
const THREADS: u32 = 256;
/// The largest rank v3 takes (v2 serves larger ones).
pub(super) const MAX_RANK: usize = 128;
/// Tiles hold up to 16 * MT tokens, MT = 1 or 4; MT = 4 only for ranks up to 64 (its
/// reduction buffer holds two groups of 32 ranks).
const MT: [usize; 2] = [1, 4];
const MT4_MAX_RANK: usize = 64;
/// Dynamic shared memory of the kernels (`Layout<MT>::BYTES` in sgmv.cu: the load ring, the
/// block's partial v, the rounded v).
const SMEM: [u32; 2] = [
    4 * 6 * 256 * 16 + 4 * 4 * 512 + 16 * 160 * 2,
    3 * 12 * 256 * 16 + 2 * 4 * 4 * 512 + 64 * 160 * 2,
];
/// Relative time of a 64-token tile against a 16-token one (the host's choice of MT: each
/// block moves up to 4x the activations but re-reads the weights a quarter as often).
const MT4_COST: f64 = 2.5;

/// Kernel parameters, laid out as `Params` in sgmv.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Params {
    x: u64,
    y: u64,
    v: u64,
    table: u64,
    rows: u64,
    tiles: u64,
    d_in: i32,
    d_out: i32,
    width: i32,
    /// 0: lora_delta, 1: shrink alone, 2: expand alone.
    mode: i32,
    /// 1: x rows 16-byte loadable, 2: lora_A rows, 4: lora_B starts, 8: y rows.
    flags: i32,
}

/// The v3 kernels of one CUDA context.
pub(super) struct Kernels {
    /// By [dtype: bf16, f16][tile size: `MT`].
    functions: [[CudaFunction; 2]; 2],
    /// Clusters of each tile size that the device runs at once (the tile size is chosen
    /// from these).
    clusters: [usize; 2],
    /// `OPENLEDGER_SGMV_TILE=16|64` forces the tile size where it applies (tests).
    forced_tile: Option<usize>,
}

impl Kernels {
    /// The kernel for element type `dtype` (0: bf16, 1: f16) and tile size `mt` (index
    /// into `MT`).
    pub(super) fn function(&self, dtype: usize, mt: usize) -> CudaFunction {
        self.functions[dtype][mt].clone()
    }
}

pub(super) fn load(ctx: &Arc<CudaContext>, stream: &CudaStream) -> Result<Kernels> {
    let module = ctx.load_module(Ptx::from_binary(FATBIN.to_vec())).map_err(cuda_err)?;
    let f = |ty: &str, m: usize| -> Result<CudaFunction> {
        let name = format!("sgmv_v3_{ty}_mt{}", MT[m]);
        let func = module.load_function(&name).map_err(cuda_err)?;
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM[m] as i32,
        )
        .map_err(cuda_err)?;
        Ok(func)
    };
    let functions = [[f("bf16", 0)?, f("bf16", 1)?], [f("f16", 0)?, f("f16", 1)?]];
    let mut clusters = [1, 1];
    for (m, c) in clusters.iter_mut().enumerate() {
        *c = max_active_clusters(&functions[0][m], SMEM[m], stream)?.max(1);
    }
    if std::env::var_os("OPENLEDGER_SGMV_DEBUG").is_some() {
        eprintln!(
            "sgmv v3: clusters of {CLUSTER} blocks at once: {clusters:?} (16-, 64-token tiles)"
        );
    }
    let forced_tile = std::env::var("OPENLEDGER_SGMV_TILE").ok().and_then(|v| v.parse().ok());
    Ok(Kernels { functions, clusters, forced_tile })
}

/// How many clusters of `CLUSTER` blocks of `f` the device holds at once.
fn max_active_clusters(f: &CudaFunction, smem: u32, stream: &CudaStream) -> Result<usize> {
    let mut attr = cluster_attribute();
    let cfg = launch_config(CLUSTER, smem, stream, &mut attr);
    let mut n: std::ffi::c_int = 0;
    // SAFETY: `cfg` and the attribute it points to live across the call.
    unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &cfg) }
        .result()
        .map_err(cuda_err)?;
    Ok(n as usize)
}

fn cluster_attribute() -> sys::CUlaunchAttribute {
    // SAFETY: a plain C struct, for which all zeros is a valid value.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim =
        sys::CUlaunchAttributeValue_union__bindgen_ty_1 { x: CLUSTER, y: 1, z: 1 };
    attr
}

fn launch_config(
    blocks: u32,
    smem: u32,
    stream: &CudaStream,
    attr: &mut sys::CUlaunchAttribute,
) -> sys::CUlaunchConfig {
    sys::CUlaunchConfig {
        gridDimX: blocks,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: THREADS,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream.cu_stream(),
        attrs: attr,
        numAttrs: 1,
    }
}

/// A step's tiles: the tile size (index into `MT`) and the records (sgmv.cu's
/// `Params::tiles`, 8 words a tile).
pub(super) struct Tiles {
    pub(super) mt: usize,
    pub(super) records: Vec<u32>,
}

/// The tiles of `map`: 64-token tiles where they take fewer rounds of clusters, weighted by
/// their larger work (long segments: a quarter of the weights' re-reads), else 16-token
/// tiles. The choice changes no result: each token row is computed on its own.
pub(super) fn tiles(map: &SegmentMap, kernels: Option<&Kernels>) -> Tiles {
    let narrow = Tiles { mt: 0, records: records(map, MT[0]) };
    let Some(k) = kernels.filter(|_| map.max_rank() <= MT4_MAX_RANK) else {
        return narrow;
    };
    let wide = Tiles { mt: 1, records: records(map, MT[1]) };
    let rounds = |t: &Tiles| (t.records.len() / 8).div_ceil(k.clusters[t.mt]) as f64;
    let wider = match k.forced_tile {
        Some(t) => t == 16 * MT[1],
        None => MT4_COST * rounds(&wide) < rounds(&narrow),
    };
    if wider {
        wide
    } else {
        narrow
    }
}

/// Per tile of up to `16 * mt` tokens of one segment, 8 words: slot, rank, scale (f32
/// bits), start, end, 3 of padding.
fn records(map: &SegmentMap, mt: usize) -> Vec<u32> {
    let mut tiles = Vec::new();
    for s in 0..map.num_segments() {
        let r = map.segment_range(s);
        let mut p = r.start;
        while p < r.end {
            let end = r.end.min(p + 16 * mt);
            tiles.extend([
                map.slots()[s],
                map.ranks()[s],
                map.scales()[s].to_bits(),
                p as u32,
                end as u32,
                0,
                0,
                0,
            ]);
            p = end;
        }
    }
    tiles
}

/// What one launch needs: device addresses, shapes, and which operands allow 16-byte loads.
pub(super) struct Launch {
    /// 0: lora_delta, 1: shrink alone into `v`, 2: expand alone from `v`.
    pub(super) mode: i32,
    pub(super) x: u64,
    pub(super) y: u64,
    pub(super) v: u64,
    pub(super) table: u64,
    pub(super) rows: u64,
    pub(super) tiles: u64,
    pub(super) num_tiles: usize,
    pub(super) mt: usize,
    pub(super) d_in: usize,
    pub(super) d_out: usize,
    pub(super) width: usize,
    /// Every lora_A / lora_B starts on a 16-byte boundary.
    pub(super) a_aligned: bool,
    pub(super) b_aligned: bool,
}

/// Launches `f` on `stream`: one cluster of `CLUSTER` blocks per tile.
pub(super) fn launch(f: &CudaFunction, stream: &CudaStream, l: &Launch) -> Result<()> {
    let bit = |on: bool, value: i32| if on { value } else { 0 };
    let flags = bit(l.x.is_multiple_of(16) && l.d_in.is_multiple_of(8), 1)
        | bit(l.a_aligned && l.d_in.is_multiple_of(8), 2)
        | bit(l.b_aligned, 4)
        | bit(l.y.is_multiple_of(16) && l.d_out.is_multiple_of(8), 8);
    let mut p = Params {
        x: l.x,
        y: l.y,
        v: l.v,
        table: l.table,
        rows: l.rows,
        tiles: l.tiles,
        d_in: l.d_in as i32,
        d_out: l.d_out as i32,
        width: l.width as i32,
        mode: l.mode,
        flags,
    };
    let mut attr = cluster_attribute();
    let cfg = launch_config(l.num_tiles as u32 * CLUSTER, SMEM[l.mt], stream, &mut attr);
    let mut args = [&mut p as *mut Params as *mut std::ffi::c_void];
    stream.context().bind_to_thread().map_err(cuda_err)?;
    // SAFETY: `args` holds one pointer to a `Params`, the kernel's one parameter; every
    // address in it refers to live device memory of the sizes the kernel indexes (checked
    // shapes, the uploaded map and table), and the launch goes on candle's stream.
    unsafe { sys::cuLaunchKernelEx(&cfg, f.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()) }
        .result()
        .map_err(cuda_err)
}
