//! The OpenLedger runtime.
//!
//! A FRAME runtime for a standalone chain whose native token is OPEN (18 decimals):
//! Aura produces blocks, GRANDPA finalizes them, Balances holds OPEN, TransactionPayment
//! charges fees in OPEN, Sudo governs the testnet and Utility batches calls. The GPU
//! marketplace and attribution pallets are added to this runtime as they land.
//!
//! Layout: [`configs`] configures each pallet, [`apis`] implements the runtime APIs a client
//! needs, [`genesis_config_presets`] holds the `development` and `local_testnet` presets.
#![cfg_attr(not(feature = "std"), no_std)]
// `construct_runtime` expands to large types.
#![recursion_limit = "256"]

#[cfg(feature = "std")]
include!(concat!(env!("OUT_DIR"), "/wasm_binary.rs"));

extern crate alloc;

pub mod apis;
#[cfg(feature = "runtime-benchmarks")]
mod benchmarks;
pub mod configs;
pub mod genesis_config_presets;

use alloc::{borrow::Cow, vec::Vec};
use sp_runtime::{generic, impl_opaque_keys, traits::BlakeTwo256};
use sp_version::RuntimeVersion;

pub use frame_system::Call as SystemCall;
pub use openledger_primitives::{token, AccountId, Balance, BlockNumber, Hash, Nonce, Signature};
pub use pallet_balances::Call as BalancesCall;
#[cfg(any(feature = "std", test))]
pub use sp_runtime::BuildStorage;

/// Types the node and other clients use without knowing the runtime's extrinsic format.
pub mod opaque {
    use super::*;
    pub use sp_runtime::OpaqueExtrinsic as UncheckedExtrinsic;

    /// Block header.
    pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
    /// Block with opaque extrinsics.
    pub type Block = generic::Block<Header, UncheckedExtrinsic>;
}

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
    spec_version: 104,
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

/// Existential deposit: 0.001 OPEN.
///
/// An account holding less is reaped, which bounds the state a spammer can create: opening
/// a million dust accounts costs 1,000 OPEN. It stays small enough that contributors who
/// earn tiny attribution rewards can still hold them once claimed.
pub const EXISTENTIAL_DEPOSIT: Balance = token::MILLI_OPEN;

/// Address format of extrinsics.
pub type Address = sp_runtime::MultiAddress<AccountId, ()>;
/// Block header.
pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
/// Block of this runtime.
pub type Block = generic::Block<Header, UncheckedExtrinsic>;

/// The checks every signed transaction goes through, in order.
pub type TxExtension = (
    frame_system::CheckNonZeroSender<Runtime>,
    frame_system::CheckSpecVersion<Runtime>,
    frame_system::CheckTxVersion<Runtime>,
    frame_system::CheckGenesis<Runtime>,
    frame_system::CheckEra<Runtime>,
    frame_system::CheckNonce<Runtime>,
    frame_system::CheckWeight<Runtime>,
    pallet_transaction_payment::ChargeTransactionPayment<Runtime>,
    frame_metadata_hash_extension::CheckMetadataHash<Runtime>,
    frame_system::WeightReclaim<Runtime>,
);

/// Extrinsic as it appears in a block.
pub type UncheckedExtrinsic =
    generic::UncheckedExtrinsic<Address, RuntimeCall, Signature, TxExtension>;

/// The payload signed by a transaction's author.
pub type SignedPayload = generic::SignedPayload<RuntimeCall, TxExtension>;

/// Storage migrations run on the next runtime upgrade.
type Migrations = ();

/// Dispatches blocks and extrinsics to the pallets.
pub type Executive = frame_executive::Executive<
    Runtime,
    Block,
    frame_system::ChainContext<Runtime>,
    Runtime,
    AllPalletsWithSystem,
    Migrations,
>;

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
