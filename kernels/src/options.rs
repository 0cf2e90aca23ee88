//! The run-time switches of the kernels and the engine, read once per process from the
//! environment, and the CPU's SIMD level, detected once. Every switch is for comparisons,
//! checks and benchmarks: a worker never needs one. Unset, each leaves the default on
//! (SIMD, the fused SGMV kernel, CUDA graphs for decode) or the extra off.
//!
//! | variable | effect |
//! |---|---|
//! | `OPENLEDGER_NO_SIMD=1` | portable CPU code everywhere (no AVX2 or AVX-512) |
//! | `OPENLEDGER_NO_AVX512=1` | AVX2 where AVX-512 VNNI or AMX would be used (the quantized matmul) |
//! | `OPENLEDGER_NO_AMX=1` | AVX-512 VNNI where AMX tiles would be used (the quantized matmul) |
//! | `OPENLEDGER_SGMV_KERNEL=two-stage` | the two-stage CUDA SGMV kernels for every call, not the fused one |
//! | `OPENLEDGER_SGMV_VARIANT=cluster\|pair\|solo` | force one variant of the fused kernel where it applies |
//! | `OPENLEDGER_SGMV_DEBUG=1` | print the fused kernel's occupancy and variant choices |
//! | `OPENLEDGER_ATTN_PARTITION=N` | positions per partition of CUDA decode attention (a power of two, 32-512) |
//! | `OPENLEDGER_CUDA_EVENTS=on` | keep cudarc's per-buffer event tracking (the engine turns it off) |
//! | `OPENLEDGER_CUDA_GRAPHS=0` | the engine runs every decode step eagerly; by default a CUDA engine replays its decode steps (with or without adapters) from CUDA graphs, one per batch-size bucket and set of adapted projections (`Model::forward_step_graphed`) |
//! | `OPENLEDGER_ADAPTER_READ_SERIAL=1` | an adapter file is read with one `read` call, not in parallel chunks straight into the reused buffer |
//! | `OPENLEDGER_ADAPTERS_BF16=1` | a CPU engine on a block-quantized model computes LoRA from the adapters' bf16 weights, not from row-quantized bytes |

use std::sync::OnceLock;

/// The switches in effect for this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `OPENLEDGER_NO_SIMD`.
    pub no_simd: bool,
    /// `OPENLEDGER_NO_AVX512`.
    pub no_avx512: bool,
    /// `OPENLEDGER_NO_AMX`.
    pub no_amx: bool,
    /// `OPENLEDGER_SGMV_KERNEL=two-stage` (or its old name, `v2`).
    pub sgmv_two_stage_only: bool,
    /// `OPENLEDGER_SGMV_VARIANT`, as given.
    pub sgmv_variant: Option<String>,
    /// `OPENLEDGER_SGMV_DEBUG`.
    pub sgmv_debug: bool,
    /// `OPENLEDGER_SGMV_SPLIT`: whether the fused kernel's lora_delta runs in two launches
    /// (the shrink, then an expand spread over a tile's columns). The bits are the same
    /// either way.
    pub sgmv_split: SgmvSplit,
    /// `OPENLEDGER_ATTN_PARTITION`, when it is a number.
    pub attn_partition: Option<usize>,
    /// `OPENLEDGER_CUDA_EVENTS=on`.
    pub cuda_events: bool,
    /// `OPENLEDGER_ADAPTERS_BF16`.
    pub adapters_bf16: bool,
    /// Decode steps from CUDA graphs: on unless `OPENLEDGER_CUDA_GRAPHS=0`. The engine with
    /// graphs per batch-size bucket decoded 1.5-10.5% faster than eager at batch 1-64 without
    /// adapters (H100, 2026-12-06, `docs/benchmarks.md`); steps with adapters replay graphs
    /// too since issue 21's adapter-table-as-data change.
    pub cuda_graphs: bool,
    /// `OPENLEDGER_ADAPTER_READ_SERIAL`.
    pub adapter_read_serial: bool,
    /// `OPENLEDGER_PREFILL_ATTENTION=materialized`: the engine's CUDA prefill attends with
    /// gathered keys, matmuls and an f32 softmax under a mask (the path before the fused
    /// prefill kernel), for comparison runs.
    pub prefill_materialized: bool,
}

/// When the fused SGMV kernel's lora_delta runs split (`OPENLEDGER_SGMV_SPLIT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgmvSplit {
    /// One fused launch (`0`).
    Never,
    /// Always split (`1`): tests and comparison runs.
    Always,
    /// Where the cost model estimates the split faster (unset or `auto`): fitted on an H100
    /// run of both launches forced on every benchmark shape (kernels/NOTES.md).
    ByCost,
}

impl Default for Options {
    /// What an empty environment gives.
    fn default() -> Self {
        Self {
            no_simd: false,
            no_avx512: false,
            no_amx: false,
            sgmv_two_stage_only: false,
            sgmv_variant: None,
            sgmv_debug: false,
            sgmv_split: SgmvSplit::ByCost,
            attn_partition: None,
            cuda_events: false,
            adapters_bf16: false,
            cuda_graphs: true,
            adapter_read_serial: false,
            prefill_materialized: false,
        }
    }
}

impl Options {
    /// The switches `var` reports (the environment, for [`options`]).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let on = |name: &str| var(name).is_some_and(|v| !v.is_empty() && v != "0");
        Self {
            no_simd: on("OPENLEDGER_NO_SIMD"),
            no_avx512: on("OPENLEDGER_NO_AVX512"),
            no_amx: on("OPENLEDGER_NO_AMX"),
            sgmv_two_stage_only: var("OPENLEDGER_SGMV_KERNEL")
                .is_some_and(|v| v == "two-stage" || v == "v2"),
            sgmv_variant: var("OPENLEDGER_SGMV_VARIANT"),
            sgmv_debug: var("OPENLEDGER_SGMV_DEBUG").is_some(),
            sgmv_split: match var("OPENLEDGER_SGMV_SPLIT").as_deref() {
                None | Some("" | "auto") => SgmvSplit::ByCost,
                Some("0") => SgmvSplit::Never,
                Some(_) => SgmvSplit::Always,
            },
            attn_partition: var("OPENLEDGER_ATTN_PARTITION").and_then(|v| v.parse().ok()),
            cuda_events: var("OPENLEDGER_CUDA_EVENTS").is_some_and(|v| v == "on"),
            adapters_bf16: on("OPENLEDGER_ADAPTERS_BF16"),
            cuda_graphs: var("OPENLEDGER_CUDA_GRAPHS").is_none_or(|v| v != "0"),
            adapter_read_serial: on("OPENLEDGER_ADAPTER_READ_SERIAL"),
            prefill_materialized: var("OPENLEDGER_PREFILL_ATTENTION")
                .is_some_and(|v| v == "materialized"),
        }
    }
}

/// The switches of this process, read from the environment on first use.
pub fn options() -> &'static Options {
    static OPTIONS: OnceLock<Options> = OnceLock::new();
    OPTIONS.get_or_init(|| Options::from_vars(|name| std::env::var(name).ok()))
}

/// How much of the CPU's vector hardware the SIMD paths use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Portable code (with the same reduction order as the vector code).
    Portable,
    /// AVX2 with FMA and F16C (every x86-64-v3 CPU).
    Avx2,
    /// AVX2 plus AVX-512 F, BW, VL and VNNI (the quantized matmul's integer dot products).
    Avx512Vnni,
    /// All of the above plus AMX-INT8 tiles, which the kernel (Linux 5.16+) let this process
    /// use.
    Amx,
}

/// The most this CPU supports, whatever the switches say. Detected once; on a CPU with AMX
/// this asks Linux for the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), without which an
/// AMX instruction would kill the process.
pub fn supported_simd() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                    if amx_int8() && amx_permitted() {
                        return SimdLevel::Amx;
                    }
                    return SimdLevel::Avx512Vnni;
                }
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Portable
    })
}

/// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-INT8 (bit 25).
#[cfg(target_arch = "x86_64")]
fn amx_int8() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // Leaf 7 exists where the maximum leaf (leaf 0's eax) reaches it.
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << 25) != 0
}

/// Asks Linux for permission to use the AMX tile data (state component 18) in this process.
#[cfg(target_arch = "x86_64")]
fn amx_permitted() -> bool {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: usize = 158;
        const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
        const XFEATURE_XTILEDATA: usize = 18;
        let ret: isize;
        // SAFETY: a plain system call; it changes only which register state the kernel saves
        // for this process, and returns an error where the kernel or CPU lacks AMX.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The level the SIMD paths run at: what the CPU supports, lowered by `OPENLEDGER_NO_SIMD`,
/// `OPENLEDGER_NO_AVX512` and `OPENLEDGER_NO_AMX`. Detected once per process.
pub fn simd() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let o = options();
        let cap = if o.no_simd {
            SimdLevel::Portable
        } else if o.no_avx512 {
            SimdLevel::Avx2
        } else if o.no_amx {
            SimdLevel::Avx512Vnni
        } else {
            SimdLevel::Amx
        };
        supported_simd().min(cap)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_are_read_by_name() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(Options::from_vars(vars(&[])), Options::default());
        let o = Options::from_vars(vars(&[
            ("OPENLEDGER_NO_SIMD", "1"),
            ("OPENLEDGER_NO_AVX512", "0"),
            ("OPENLEDGER_NO_AMX", "1"),
            ("OPENLEDGER_SGMV_KERNEL", "two-stage"),
            ("OPENLEDGER_SGMV_VARIANT", "pair"),
            ("OPENLEDGER_ATTN_PARTITION", "128"),
            ("OPENLEDGER_CUDA_EVENTS", "on"),
        ]));
        assert!(o.no_simd && !o.no_avx512 && o.no_amx && o.sgmv_two_stage_only && o.cuda_events);
        assert_eq!((o.sgmv_variant.as_deref(), o.attn_partition), (Some("pair"), Some(128)));
        assert!(!o.sgmv_debug);
        assert!(o.cuda_graphs, "graphs stay on unless turned off");
        let off = Options::from_vars(vars(&[("OPENLEDGER_CUDA_GRAPHS", "0")]));
        assert!(!off.cuda_graphs);
        assert!(Options::from_vars(vars(&[("OPENLEDGER_CUDA_GRAPHS", "1")])).cuda_graphs);
        assert_eq!(o.sgmv_split, SgmvSplit::ByCost, "the cost model decides unless told");
        let split = |v: &'static str| {
            let pairs: &'static [(&'static str, &'static str)] = match v {
                "1" => &[("OPENLEDGER_SGMV_SPLIT", "1")],
                "auto" => &[("OPENLEDGER_SGMV_SPLIT", "auto")],
                _ => &[("OPENLEDGER_SGMV_SPLIT", "0")],
            };
            Options::from_vars(vars(pairs)).sgmv_split
        };
        assert_eq!(
            (split("1"), split("auto"), split("0")),
            (SgmvSplit::Always, SgmvSplit::ByCost, SgmvSplit::Never)
        );
    }

    #[test]
    fn the_level_in_use_never_exceeds_the_cpus() {
        assert!(simd() <= supported_simd());
    }
}
