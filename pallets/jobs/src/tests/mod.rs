//! Tests of `pallet-jobs`, by feature.

mod lifecycle;
mod matching;
mod properties;
mod receipts;
mod signatures;
