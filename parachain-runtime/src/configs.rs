//! Configuration of the parachain's own pallets: System and its block limits, Timestamp,
//! Aura, the cumulus pallets and the collators' (authorship, collator selection, session).
//! The pallets it shares with the solo chain are configured in [`crate::common::market`],
//! re-exported here.

use cumulus_pallet_parachain_system::RelayNumberMonotonicallyIncreases;
use frame_support::{
    derive_impl, parameter_types,
    traits::{ConstBool, ConstU32, ConstU64},
    weights::{
        constants::{RocksDbWeight, WEIGHT_REF_TIME_PER_SECOND},
        Weight,
    },
    PalletId,
};
use frame_system::limits::{BlockLength, BlockWeights};
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_version::RuntimeVersion;

pub use crate::common::market::*;
use crate::common::NORMAL_DISPATCH_RATIO;
use crate::{
    token, AccountId, Aura, Balance, Balances, Block, BlockNumber, CollatorSelection, Hash, Nonce,
    PalletInfo, Runtime, RuntimeCall, RuntimeEvent, RuntimeOrigin, RuntimeTask, Session,
    SessionKeys, BLOCK_PROCESSING_VELOCITY, HOURS, RELAY_CHAIN_SLOT_DURATION_MILLIS, SLOT_DURATION,
    UNINCLUDED_SEGMENT_CAPACITY, VERSION,
};

/// What one block may use: two seconds of compute (asynchronous backing gives a parachain
/// block that long on the relay chain's validators) and the relay chain's bound on a
/// block's proof of validity.
pub const MAXIMUM_BLOCK_WEIGHT: Weight = Weight::from_parts(
    WEIGHT_REF_TIME_PER_SECOND.saturating_mul(2),
    cumulus_primitives_core::relay_chain::MAX_POV_SIZE as u64,
);

parameter_types! {
    pub const BlockHashCount: BlockNumber = 4096;
    pub const Version: RuntimeVersion = VERSION;
    pub RuntimeBlockWeights: BlockWeights =
        BlockWeights::with_sensible_defaults(MAXIMUM_BLOCK_WEIGHT, NORMAL_DISPATCH_RATIO);
    pub RuntimeBlockLength: BlockLength = crate::common::block_length();
    pub const SS58Prefix: u16 = token::SS58_PREFIX;
}

#[derive_impl(frame_system::config_preludes::ParaChainDefaultConfig)]
impl frame_system::Config for Runtime {
    type Block = Block;
    type BlockWeights = RuntimeBlockWeights;
    type BlockLength = RuntimeBlockLength;
    type AccountId = AccountId;
    type Nonce = Nonce;
    type Hash = Hash;
    type BlockHashCount = BlockHashCount;
    /// Collators store state in RocksDB (polkadot-omni-node's default).
    type DbWeight = RocksDbWeight;
    type Version = Version;
    type AccountData = pallet_balances::AccountData<Balance>;
    type SS58Prefix = SS58Prefix;
    type MaxConsumers = ConstU32<16>;
    /// Code upgrades go through the relay chain (it must validate blocks with the new code).
    type OnSetCode = cumulus_pallet_parachain_system::ParachainSetCode<Self>;
}

impl pallet_timestamp::Config for Runtime {
    type Moment = u64;
    type OnTimestampSet = Aura;
    // Aura checks the slot; several blocks may carry close timestamps under asynchronous
    // backing, so no minimum period of its own.
    type MinimumPeriod = ConstU64<0>;
    type WeightInfo = ();
}

impl pallet_aura::Config for Runtime {
    type AuthorityId = AuraId;
    type DisabledValidators = ();
    type MaxAuthorities = ConstU32<100>;
    type AllowMultipleBlocksPerSlot = ConstBool<true>;
    type SlotDuration = ConstU64<SLOT_DURATION>;
}

/// Decides, from the relay chain's state, whether a collator may build on a block yet: at
/// most `BLOCK_PROCESSING_VELOCITY` blocks per relay slot, at most
/// `UNINCLUDED_SEGMENT_CAPACITY` waiting for inclusion.
pub type ConsensusHook = cumulus_pallet_aura_ext::FixedVelocityConsensusHook<
    Runtime,
    RELAY_CHAIN_SLOT_DURATION_MILLIS,
    BLOCK_PROCESSING_VELOCITY,
    UNINCLUDED_SEGMENT_CAPACITY,
>;

impl cumulus_pallet_parachain_system::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type OnSystemEvent = ();
    type SelfParaId = parachain_info::Pallet<Runtime>;
    // No XCM: nothing to send, and the relay chain's and siblings' messages are not queued.
    type OutboundXcmpMessageSource = ();
    type DmpQueue = ();
    type ReservedDmpWeight = ();
    type XcmpMessageHandler = ();
    type ReservedXcmpWeight = ();
    type CheckAssociatedRelayNumber = RelayNumberMonotonicallyIncreases;
    type WeightInfo = ();
    type ConsensusHook = ConsensusHook;
    type RelayParentOffset = ConstU32<0>;
    type SchedulingSignatureVerifier = ();
}

impl parachain_info::Config for Runtime {}

impl cumulus_pallet_aura_ext::Config for Runtime {}

impl pallet_authorship::Config for Runtime {
    type FindAuthor = pallet_session::FindAccountFromAuthorIndex<Self, Aura>;
    type EventHandler = (CollatorSelection,);
}

parameter_types! {
    /// A session (and the collator set) lasts 6 hours.
    pub const Period: BlockNumber = 6 * HOURS;
    pub const Offset: BlockNumber = 0;
    /// Holds the candidates' bonds and the authors' share of fees.
    pub const PotId: PalletId = PalletId(*b"ol/colpt");
}

impl pallet_session::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    // Collators are accounts: no stash and controller.
    type ValidatorId = AccountId;
    type ValidatorIdOf = pallet_collator_selection::IdentityCollator;
    type ShouldEndSession = pallet_session::PeriodicSessions<Period, Offset>;
    type NextSessionRotation = pallet_session::PeriodicSessions<Period, Offset>;
    type SessionManager = CollatorSelection;
    type SessionHandler = <SessionKeys as sp_runtime::traits::OpaqueKeys>::KeyTypeIdProviders;
    type Keys = SessionKeys;
    type DisablingStrategy = ();
    type WeightInfo = ();
    type Currency = Balances;
    type KeyDeposit = ();
}

impl pallet_collator_selection::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type Currency = Balances;
    type UpdateOrigin = frame_system::EnsureRoot<AccountId>;
    type PotId = PotId;
    type MaxCandidates = ConstU32<64>;
    type MinEligibleCollators = ConstU32<1>;
    type MaxInvulnerables = ConstU32<16>;
    // A candidate that authored nothing for a whole session is removed.
    type KickThreshold = Period;
    type ValidatorId = AccountId;
    type ValidatorIdOf = pallet_collator_selection::IdentityCollator;
    type ValidatorRegistration = Session;
    type WeightInfo = ();
}
