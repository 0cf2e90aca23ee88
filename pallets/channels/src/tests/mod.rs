//! Tests of `pallet-channels`, by feature.

mod lifecycle;
mod properties;
mod redeem;
