//! Element types the kernels accept, and the adapter weight views they read.

use candle_core::CpuStorage;
use half::{bf16, f16};

/// How an element is stored, which decides how the SIMD loads widen it to f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    F32,
    F16,
    BF16,
    /// A signed byte, the quantized adapter rows of a CPU table (their scale kept apart).
    I8,
}

/// An element the kernels read and widen to f32: the float types of [`Element`], and the
/// signed bytes of quantized adapter rows.
pub trait Widen: Copy + Send + Sync + 'static {
    /// How it is stored.
    const FORMAT: Format;
    /// Widens to f32 (exact for every type).
    fn to_f32(self) -> f32;
}

/// A floating-point element the kernels read and write; arithmetic is done in f32.
pub trait Element: Widen {
    /// The matching candle dtype.
    const DTYPE: candle_core::DType;
    /// Rounds an f32 to this type (round to nearest even).
    fn from_f32(v: f32) -> Self;
    /// The elements of a candle CPU storage of this dtype.
    fn storage(s: &CpuStorage) -> Option<&[Self]>;
    /// The elements of a candle CPU storage of this dtype, mutably.
    fn storage_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

impl Widen for i8 {
    const FORMAT: Format = Format::I8;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
}

macro_rules! storage_access {
    ($variant:ident) => {
        fn storage(s: &CpuStorage) -> Option<&[Self]> {
            match s {
                CpuStorage::$variant(v) => Some(v),
                _ => None,
            }
        }
        fn storage_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
            match s {
                CpuStorage::$variant(v) => Some(v),
                _ => None,
            }
        }
    };
}

impl Widen for f32 {
    const FORMAT: Format = Format::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for f32 {
    storage_access!(F32);
    const DTYPE: candle_core::DType = candle_core::DType::F32;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Widen for bf16 {
    const FORMAT: Format = Format::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // A bf16 is the top half of an f32: widening is a shift, which vectorises.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

impl Element for bf16 {
    storage_access!(BF16);
    const DTYPE: candle_core::DType = candle_core::DType::BF16;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        // Round to nearest even without branches, so that loops over rows vectorise; NaN
        // stays a (quiet) NaN.
        let bits = v.to_bits();
        let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
        let nan = ((bits >> 16) as u16) | 0x0040;
        bf16::from_bits(if v.is_nan() { nan } else { rounded })
    }
}

impl Widen for f16 {
    const FORMAT: Format = Format::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Element for f16 {
    storage_access!(F16);
    const DTYPE: candle_core::DType = candle_core::DType::F16;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// How an adapter's `lora_B` lies in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BLayout {
    /// PEFT's `lora_B.weight` as loaded: `[d_out, rank]`, row-major.
    OutByRank,
    /// Its transpose, `[rank, d_out]`, row-major: each rank index's output columns are
    /// contiguous, so the CPU expand accumulates whole column runs with vector FMAs. CPU
    /// [`AdapterTable`](crate::AdapterTable)s store this (a transposing copy at insertion,
    /// unless `lora_B` already lies in this layout).
    RankByOut,
}

/// One adapter's weights for one projection: `a` is PEFT's `lora_A.weight`, `[rank, d_in]`
/// row-major; `b` is `lora_B.weight` in the layout `b_layout` says. The delta of a row `x` is
/// `scale * B @ (A @ x)`.
///
/// Quantized weights ([`LoraWeights::quantized`]) carry one f32 scale per row of `a` and per
/// row of the transposed `b`: the value of `a[j][k]` is `a_scale[j] * a[j][k]`, that of
/// `bt[j][o]` is `bt_scale[j] * bt[j][o]`. Float weights carry none (both scale slices empty).
#[derive(Debug)]
pub struct LoraWeights<'a, T> {
    /// `[rank, d_in]`, row-major.
    pub a: &'a [T],
    /// `d_out x rank` values, laid out as `b_layout` says.
    pub b: &'a [T],
    pub b_layout: BLayout,
    /// Per row of `a` (`rank` values), or empty.
    pub a_scale: &'a [f32],
    /// Per rank index of `b` (`rank` values, `b` transposed), or empty.
    pub b_scale: &'a [f32],
}

impl<'a, T> LoraWeights<'a, T> {
    /// Weights in PEFT's layout (`b` is `[d_out, rank]`).
    pub fn new(a: &'a [T], b: &'a [T]) -> Self {
        Self { a, b, b_layout: BLayout::OutByRank, a_scale: &[], b_scale: &[] }
    }

    /// Weights whose `lora_B` is stored transposed (`bt` is `[rank, d_out]`).
    pub fn with_b_transposed(a: &'a [T], bt: &'a [T]) -> Self {
        Self { a, b: bt, b_layout: BLayout::RankByOut, a_scale: &[], b_scale: &[] }
    }

    /// Row-quantized weights: `a` `[rank, d_in]` and `bt` `[rank, d_out]` (lora_B
    /// transposed), each row with its scale.
    pub fn quantized(a: &'a [T], a_scale: &'a [f32], bt: &'a [T], b_scale: &'a [f32]) -> Self {
        Self { a, b: bt, b_layout: BLayout::RankByOut, a_scale, b_scale }
    }
}

impl<T> Clone for LoraWeights<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for LoraWeights<'_, T> {}

/// Adapter weights addressed by slot, wherever they are stored.
pub trait AdapterWeights<T>: Sync {
    /// The weights in `slot`, or `None` when the slot is empty.
    fn weights(&self, slot: u32) -> Option<LoraWeights<'_, T>>;
    /// Number of slots (for error messages).
    fn num_slots(&self) -> usize;
}

impl<T: Sync> AdapterWeights<T> for [LoraWeights<'_, T>] {
    fn weights(&self, slot: u32) -> Option<LoraWeights<'_, T>> {
        self.get(slot as usize).copied()
    }
    fn num_slots(&self) -> usize {
        self.len()
    }
}

impl<T: Sync> AdapterWeights<T> for [Option<LoraWeights<'_, T>>] {
    fn weights(&self, slot: u32) -> Option<LoraWeights<'_, T>> {
        self.get(slot as usize).copied().flatten()
    }
    fn num_slots(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The branch-free bf16 rounding agrees with `half` on every class of input.
    #[test]
    fn bf16_rounding_matches_half() {
        let mut specials = vec![0.0f32, -0.0, 1.0, -1.5, f32::MAX, f32::MIN, f32::MIN_POSITIVE];
        specials.extend([f32::INFINITY, f32::NEG_INFINITY, 1e-40, -3.4e38, 65504.0]);
        // Every 2^16-th bit pattern plus ties (low half exactly 0x8000) around it.
        let patterns = (0..=u16::MAX as u32).flat_map(|hi| {
            [hi << 16, (hi << 16) | 0x8000, (hi << 16) | 0x7fff, (hi << 16) | 0x8001]
        });
        for v in specials.into_iter().chain(patterns.map(f32::from_bits)) {
            let ours = <bf16 as Element>::from_f32(v);
            let theirs = bf16::from_f32(v);
            if v.is_nan() {
                assert!(ours.is_nan(), "{v:e} ({:#x}) must stay NaN", v.to_bits());
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{v:e} ({:#x})", v.to_bits());
            }
        }
    }
}
