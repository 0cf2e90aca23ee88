//! Plain data types of the provider registry.

use crate::{BalanceOf, Config};
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{
    pallet_prelude::BoundedVec, CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound,
};
use frame_system::pallet_prelude::BlockNumberFor;
use openledger_primitives::market::{BaseModelId, Reputation};
use scale_info::TypeInfo;
use sp_core::ed25519;

/// A two-letter region code, ISO 3166-1 alpha-2 in upper case (for example `*b"DE"`).
pub type RegionCode = [u8; 2];

/// The hardware a provider declares.
#[derive(
    CloneNoBound,
    PartialEqNoBound,
    EqNoBound,
    DebugNoBound,
    Encode,
    Decode,
    DecodeWithMemTracking,
    TypeInfo,
    MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct GpuSpec<T: Config> {
    /// Marketing name of the GPU, UTF-8 (for example `NVIDIA H100 80GB HBM3`).
    pub model: BoundedVec<u8, T::MaxGpuNameLen>,
    /// Memory per GPU, in GiB.
    pub memory_gib: u32,
    /// Number of GPUs behind the worker.
    pub gpu_count: u32,
    /// Dense bf16 throughput per GPU measured by the worker, in TFLOP/s, if it measured it.
    pub bf16_tflops: Option<u32>,
}

/// Where gateways reach the worker over libp2p.
#[derive(
    CloneNoBound,
    PartialEqNoBound,
    EqNoBound,
    DebugNoBound,
    Encode,
    Decode,
    DecodeWithMemTracking,
    TypeInfo,
    MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct Endpoint<T: Config> {
    /// The worker's libp2p peer id, in its binary (multihash) form.
    pub peer_id: BoundedVec<u8, T::MaxPeerIdLen>,
    /// Addresses the worker listens on, each a multiaddr in its binary encoding (the bytes of
    /// `/ip4/203.0.113.7/tcp/4001`, as libp2p's `Multiaddr::to_vec` gives them).
    pub multiaddrs: BoundedVec<BoundedVec<u8, T::MaxMultiaddrLen>, T::MaxMultiaddrs>,
}

/// Everything a provider declares about itself: the argument of `register_provider` and
/// `update_provider`.
#[derive(
    CloneNoBound,
    PartialEqNoBound,
    EqNoBound,
    DebugNoBound,
    Encode,
    Decode,
    DecodeWithMemTracking,
    TypeInfo,
    MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct ProviderTerms<T: Config> {
    /// The hardware.
    pub spec: GpuSpec<T>,
    /// Where the hardware is: an ISO 3166-1 alpha-2 country code, two upper-case ASCII
    /// letters (`DE` is `[0x44, 0x45]`).
    pub region: RegionCode,
    /// How to reach the worker.
    pub endpoint: Endpoint<T>,
    /// The ed25519 key the worker signs receipts with. Not the operator's account key: the
    /// worker signs, the operator holds the funds.
    pub worker_key: ed25519::Public,
    /// An account the worker may use to send heartbeats and acknowledgements, if not the
    /// operator itself.
    pub worker_account: Option<T::AccountId>,
    /// Base models the worker serves.
    pub base_models: BoundedVec<BaseModelId, T::MaxBaseModels>,
    /// Price per 1,000 tokens, input and output alike.
    pub price_per_1k: BalanceOf<T>,
    /// Jobs the provider runs at once at most.
    pub max_concurrent: u32,
}

/// Whether a provider takes new jobs.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
    Encode,
    Decode,
    DecodeWithMemTracking,
    TypeInfo,
    MaxEncodedLen,
)]
pub enum ProviderStatus<BlockNumber> {
    /// Registered and matched to jobs when eligible.
    Active,
    /// Unregistered: gets no new jobs; its bond can be withdrawn from block `unbonds_at` on,
    /// once no job of it is open.
    Leaving {
        /// The first block at which `withdraw_unbonded` may release the bond.
        unbonds_at: BlockNumber,
    },
}

/// The part of a provider's record that the marketplace touches on every job: kept apart from
/// the (larger) declared terms so assigning and settling a job reads and writes little.
#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound, Encode, Decode, TypeInfo, MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct ProviderState<T: Config> {
    /// Copied from the terms: the receipt signing key.
    pub worker_key: ed25519::Public,
    /// Copied from the terms: the account allowed to act for the worker.
    pub worker_account: Option<T::AccountId>,
    /// Copied from the terms.
    pub price_per_1k: BalanceOf<T>,
    /// Copied from the terms.
    pub max_concurrent: u32,
    /// OPEN held under [`crate::HoldReason::ProviderBond`].
    pub bond: BalanceOf<T>,
    /// Active or leaving.
    pub status: ProviderStatus<BlockNumberFor<T>>,
    /// Jobs assigned and neither settled nor expired.
    pub open_jobs: u32,
    /// Free job slots the worker reported in its last heartbeat, less jobs assigned since.
    pub free_slots: u32,
    /// Block of the last heartbeat (registration counts as one).
    pub last_heartbeat: BlockNumberFor<T>,
    /// Reputation as of `reputation_at`, in parts per million; decays toward
    /// [`NEUTRAL_REPUTATION`] from there.
    pub reputation: Reputation,
    /// When `reputation` was last written.
    pub reputation_at: BlockNumberFor<T>,
}

/// Reputation of a new provider, and the value every reputation decays toward.
pub const NEUTRAL_REPUTATION: Reputation = 500_000;

/// The highest reputation.
pub const MAX_REPUTATION: Reputation = 1_000_000;

/// Everything known about a provider, as the runtime API returns it.
#[derive(CloneNoBound, PartialEqNoBound, DebugNoBound, Encode, Decode, TypeInfo)]
#[scale_info(skip_type_params(T))]
pub struct ProviderInfo<T: Config> {
    /// What it declared.
    pub terms: ProviderTerms<T>,
    /// Its bond, status, load and reputation (reputation as stored, before decay).
    pub state: ProviderState<T>,
    /// Reputation decayed to the current block.
    pub reputation_now: Reputation,
    /// Adapters its worker reported hot in its last heartbeat.
    pub hot_adapters: BoundedVec<openledger_primitives::market::AdapterId, T::MaxHotAdapters>,
    /// Whether it can be assigned a job now (active, fresh heartbeat, bond, a free slot);
    /// matching also needs its price to fit the job's budget.
    pub eligible: bool,
}
