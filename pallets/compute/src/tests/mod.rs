//! Tests of `pallet-compute`, by feature.

mod base_models;
mod lifecycle;
mod registry;
