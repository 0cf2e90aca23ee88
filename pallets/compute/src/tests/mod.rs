//! Tests of `pallet-compute`, by feature.

mod lifecycle;
mod registry;
