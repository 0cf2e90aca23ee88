//! The OpenLedger runtime.
//!
//! A FRAME runtime for a standalone chain whose native token is OPEN (18 decimals):
//! Aura produces blocks, GRANDPA finalizes them, Balances holds OPEN, TransactionPayment
//! charges fees in OPEN, Sudo governs the testnet and Utility batches calls. The GPU
//! marketplace and attribution pallets are added to this runtime as they land.
//!
//! Layout: [`common`] holds what this runtime shares with the parachain's
//! (`openledger-parachain-runtime`): the token, the transaction format, the marketplace
//! pallets' configuration, the runtime APIs and the genesis accounts; [`configs`] configures
//! this chain's own pallets, [`apis`] adds its consensus APIs to the shared ones,
//! [`genesis_config_presets`] holds the `development` and `local_testnet` presets.
#![cfg_attr(not(feature = "std"), no_std)]
// `construct_runtime` expands to large types.
#![recursion_limit = "256"]

#[cfg(feature = "std")]
include!(concat!(env!("OUT_DIR"), "/wasm_binary.rs"));

extern crate alloc;

#[macro_use]
pub mod common;

pub mod apis;
#[cfg(feature = "runtime-benchmarks")]
mod benchmarks;
pub mod configs;
pub mod genesis_config_presets;

use alloc::{borrow::Cow, vec::Vec};
use sp_runtime::impl_opaque_keys;
use sp_version::RuntimeVersion;

pub use common::{
    opaque, token, AccountId, Address, Balance, BalancesCall, Block, BlockNumber, Executive, Hash,
    Header, Nonce, Signature, SignedPayload, SystemCall, TxExtension, UncheckedExtrinsic,
    EXISTENTIAL_DEPOSIT,
};
#[cfg(any(feature = "std", test))]
pub use sp_runtime::BuildStorage;

impl_opaque_keys! {
    /// The keys a validator holds: Aura for authoring, GRANDPA for finality votes.
    pub struct SessionKeys {
        pub aura: Aura,
        pub grandpa: Grandpa,
    }
}

#[sp_version::runtime_version]
pub const VERSION: RuntimeVersion = RuntimeVersion {
    spec_name: Cow::Borrowed("openledger"),
    impl_name: Cow::Borrowed("openledger-runtime"),
    authoring_version: 1,
    spec_version: 105,
    impl_version: 1,
    apis: apis::RUNTIME_API_VERSIONS,
    transaction_version: 1,
    system_version: 1,
};

/// Target block time. Aura slots last this long; GRANDPA finalizes a few blocks behind.
///
/// Three seconds keeps job acknowledgement and settlement latency low for interactive
/// inference while leaving ample room for block propagation on a small validator set.
/// It cannot be changed once a chain has started.
pub const MILLISECS_PER_BLOCK: u64 = 3_000;
/// Aura slot duration (equal to the block time).
pub const SLOT_DURATION: u64 = MILLISECS_PER_BLOCK;

/// Blocks per minute, hour and day at the target block time.
pub const MINUTES: BlockNumber = 60_000 / (MILLISECS_PER_BLOCK as BlockNumber);
pub const HOURS: BlockNumber = MINUTES * 60;
pub const DAYS: BlockNumber = HOURS * 24;

/// Storage migrations run on the next runtime upgrade.
type Migrations = ();

#[frame_support::runtime]
mod runtime {
    #[runtime::runtime]
    #[runtime::derive(
        RuntimeCall,
        RuntimeEvent,
        RuntimeError,
        RuntimeOrigin,
        RuntimeFreezeReason,
        RuntimeHoldReason,
        RuntimeSlashReason,
        RuntimeLockId,
        RuntimeTask,
        RuntimeViewFunction
    )]
    pub struct Runtime;

    #[runtime::pallet_index(0)]
    pub type System = frame_system;

    #[runtime::pallet_index(1)]
    pub type Timestamp = pallet_timestamp;

    #[runtime::pallet_index(2)]
    pub type Aura = pallet_aura;

    #[runtime::pallet_index(3)]
    pub type Grandpa = pallet_grandpa;

    #[runtime::pallet_index(4)]
    pub type Balances = pallet_balances;

    #[runtime::pallet_index(5)]
    pub type TransactionPayment = pallet_transaction_payment;

    #[runtime::pallet_index(6)]
    pub type Sudo = pallet_sudo;

    #[runtime::pallet_index(7)]
    pub type Utility = pallet_utility;

    #[runtime::pallet_index(8)]
    pub type Compute = pallet_compute;

    #[runtime::pallet_index(9)]
    pub type Jobs = pallet_jobs;

    #[runtime::pallet_index(10)]
    pub type Attribution = pallet_attribution;

    #[runtime::pallet_index(11)]
    pub type Channels = pallet_channels;

    #[runtime::pallet_index(12)]
    pub type Verification = pallet_verification;
}

#[cfg(test)]
mod tests;
