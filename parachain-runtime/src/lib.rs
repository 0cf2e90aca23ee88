//! The OpenLedger runtime as a parachain.
//!
//! The same chain as `openledger-runtime` (OPEN with 18 decimals, fees in OPEN, sudo,
//! utility, and the marketplace: compute, jobs, attribution, channels, verification) built
//! from the same code (`runtime/src/common`, compiled into both crates), under cumulus: Aura
//! collators chosen by collator selection author blocks, which a relay chain validates and
//! finalizes; GRANDPA is the relay chain's, not ours. Every pallet the two runtimes share
//! sits at the same index (4 to 12), and both sign transactions with the same extensions,
//! so wallets, the worker, the gateway and the clients work against either unchanged.
//!
//! No XCM: nothing here sends or receives cross-chain messages yet, so downward and
//! horizontal messages are not queued (the relay chain's messages to us are dropped).
//!
//! Layout: [`configs`] configures the pallets of the parachain form, [`apis`] adds the
//! collation APIs to the shared ones, [`genesis_config_presets`] holds `development` (one
//! collator, Alice) and `local_testnet` (Alice and Bob).
#![cfg_attr(not(feature = "std"), no_std)]
// `construct_runtime` expands to large types.
#![recursion_limit = "256"]

#[cfg(feature = "std")]
include!(concat!(env!("OUT_DIR"), "/wasm_binary.rs"));

extern crate alloc;

#[macro_use]
#[path = "../../runtime/src/common/mod.rs"]
pub mod common;

pub mod apis;
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
    /// The keys a collator holds: Aura, for authoring.
    pub struct SessionKeys {
        pub aura: Aura,
    }
}

#[sp_version::runtime_version]
pub const VERSION: RuntimeVersion = RuntimeVersion {
    spec_name: Cow::Borrowed("openledger-parachain"),
    impl_name: Cow::Borrowed("openledger-parachain-runtime"),
    authoring_version: 1,
    spec_version: 1,
    impl_version: 1,
    apis: apis::RUNTIME_API_VERSIONS,
    transaction_version: 1,
    system_version: 1,
};

/// Target block time: one block per relay-chain slot (6 s), each built on a relay parent
/// while up to two earlier ones wait for inclusion (asynchronous backing).
pub const MILLISECS_PER_BLOCK: u64 = 6_000;
/// Aura slot duration (equal to the block time).
pub const SLOT_DURATION: u64 = MILLISECS_PER_BLOCK;
/// The relay chain's slot duration.
pub const RELAY_CHAIN_SLOT_DURATION_MILLIS: u32 = 6_000;
/// Blocks authored per relay-chain block.
pub const BLOCK_PROCESSING_VELOCITY: u32 = 1;
/// Blocks that may be authored before their predecessors are included in the relay chain.
pub const UNINCLUDED_SEGMENT_CAPACITY: u32 = 3;

/// Blocks per minute, hour and day at the target block time. The shared pallets' periods
/// (deadlines, windows, unbonding) are written in these, so they last as long in wall time
/// on either chain.
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

    // Index 3 is GRANDPA on the solo chain: here finality is the relay chain's.
    #[runtime::pallet_index(3)]
    pub type ParachainSystem = cumulus_pallet_parachain_system;

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

    #[runtime::pallet_index(13)]
    pub type ParachainInfo = parachain_info;

    // Collators: Authorship credits the author, CollatorSelection picks the set, Session
    // hands it to Aura (whose authorities AuraExt keeps for the relay chain's checks).
    #[runtime::pallet_index(14)]
    pub type Authorship = pallet_authorship;

    #[runtime::pallet_index(15)]
    pub type CollatorSelection = pallet_collator_selection;

    #[runtime::pallet_index(16)]
    pub type Session = pallet_session;

    #[runtime::pallet_index(17)]
    pub type AuraExt = cumulus_pallet_aura_ext;
}

// The relay chain's validators check each block by calling the runtime's `validate_block`
// (exported from the WASM build only): the block executed against the storage proof in its
// PoV, its Aura seal checked by AuraExt's executor.
cumulus_pallet_parachain_system::register_validate_block! {
    Runtime = Runtime,
    BlockExecutor = cumulus_pallet_aura_ext::BlockExecutor::<Runtime, Executive>,
}

#[cfg(test)]
mod tests;
