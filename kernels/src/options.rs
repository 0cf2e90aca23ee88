//! The run-time switches of the kernels and the engine, read once per process from the
//! environment, and the CPU's SIMD level, detected once. Every switch is for comparisons,
//! checks and benchmarks: a worker never needs one.
//!
//! | variable | effect |
//! |---|---|
//! | `OPENLEDGER_NO_SIMD=1` | portable CPU code everywhere (no AVX2 or AVX-512) |
//! | `OPENLEDGER_NO_AVX512=1` | AVX2 where AVX-512 VNNI would be used (the quantized matmul) |
//! | `OPENLEDGER_SGMV_KERNEL=two-stage` | the two-stage CUDA SGMV kernels for every call, not the fused one |
//! | `OPENLEDGER_SGMV_VARIANT=cluster\|pair\|solo` | force one variant of the fused kernel where it applies |
//! | `OPENLEDGER_SGMV_DEBUG=1` | print the fused kernel's occupancy and variant choices |
//! | `OPENLEDGER_ATTN_PARTITION=N` | positions per partition of CUDA decode attention (a power of two, 32-512) |
//! | `OPENLEDGER_CUDA_EVENTS=on` | keep cudarc's per-buffer event tracking (the engine turns it off) |

use std::sync::OnceLock;

/// The switches in effect for this process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `OPENLEDGER_NO_SIMD`.
    pub no_simd: bool,
    /// `OPENLEDGER_NO_AVX512`.
    pub no_avx512: bool,
    /// `OPENLEDGER_SGMV_KERNEL=two-stage` (or its old name, `v2`).
    pub sgmv_two_stage_only: bool,
    /// `OPENLEDGER_SGMV_VARIANT`, as given.
    pub sgmv_variant: Option<String>,
    /// `OPENLEDGER_SGMV_DEBUG`.
    pub sgmv_debug: bool,
    /// `OPENLEDGER_ATTN_PARTITION`, when it is a number.
    pub attn_partition: Option<usize>,
    /// `OPENLEDGER_CUDA_EVENTS=on`.
    pub cuda_events: bool,
}

impl Options {
    /// The switches `var` reports (the environment, for [`options`]).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let on = |name: &str| var(name).is_some_and(|v| !v.is_empty() && v != "0");
        Self {
            no_simd: on("OPENLEDGER_NO_SIMD"),
            no_avx512: on("OPENLEDGER_NO_AVX512"),
            sgmv_two_stage_only: var("OPENLEDGER_SGMV_KERNEL")
                .is_some_and(|v| v == "two-stage" || v == "v2"),
            sgmv_variant: var("OPENLEDGER_SGMV_VARIANT"),
            sgmv_debug: var("OPENLEDGER_SGMV_DEBUG").is_some(),
            attn_partition: var("OPENLEDGER_ATTN_PARTITION").and_then(|v| v.parse().ok()),
            cuda_events: var("OPENLEDGER_CUDA_EVENTS").is_some_and(|v| v == "on"),
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
    /// AVX2 plus AVX-512 VNNI and VL (the quantized matmul's integer dot products).
    Avx512Vnni,
}

/// The most this CPU supports, whatever the switches say.
pub fn supported_simd() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            if has!("avx512vnni") && has!("avx512vl") {
                return SimdLevel::Avx512Vnni;
            }
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Portable
}

/// The level the SIMD paths run at: what the CPU supports, lowered by `OPENLEDGER_NO_SIMD`
/// and `OPENLEDGER_NO_AVX512`. Detected once per process.
pub fn simd() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let o = options();
        let cap = if o.no_simd {
            SimdLevel::Portable
        } else if o.no_avx512 {
            SimdLevel::Avx2
        } else {
            SimdLevel::Avx512Vnni
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
            ("OPENLEDGER_SGMV_KERNEL", "two-stage"),
            ("OPENLEDGER_SGMV_VARIANT", "pair"),
            ("OPENLEDGER_ATTN_PARTITION", "128"),
            ("OPENLEDGER_CUDA_EVENTS", "on"),
        ]));
        assert!(o.no_simd && !o.no_avx512 && o.sgmv_two_stage_only && o.cuda_events);
        assert_eq!((o.sgmv_variant.as_deref(), o.attn_partition), (Some("pair"), Some(128)));
        assert!(!o.sgmv_debug);
    }

    #[test]
    fn the_level_in_use_never_exceeds_the_cpus() {
        assert!(simd() <= supported_simd());
    }
}
