//! Plain data types of the marketplace.

use crate::{BalanceOf, Config};
use codec::{Decode, Encode, MaxEncodedLen};
use frame_support::{
    pallet_prelude::BoundedVec, CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound,
};
use frame_system::pallet_prelude::BlockNumberFor;
use openledger_primitives::market::AdapterId;
use scale_info::TypeInfo;
use sp_core::H256;

/// Where a job is in its life. Closed jobs (settled or expired) are deleted; see
/// [`JobStatus::Closed`] for how the runtime API reports them.
#[derive(Clone, Copy, PartialEq, Eq, Encode, Decode, TypeInfo, MaxEncodedLen, DebugNoBound)]
pub enum JobPhase {
    /// Assigned to a provider, waiting for its worker to acknowledge it.
    Assigned,
    /// The worker acknowledged it and is running it.
    Acknowledged,
}

/// An open job.
#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound, Encode, Decode, TypeInfo, MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct Job<T: Config> {
    /// Who submitted it and whose escrow pays for it.
    pub submitter: T::AccountId,
    /// The provider it was assigned to.
    pub provider: T::AccountId,
    /// The adapter to run.
    pub adapter: AdapterId,
    /// Hash of the prompt payload the gateway holds.
    pub input_hash: H256,
    /// Most tokens the submitter wants generated.
    pub max_output_tokens: u32,
    /// Held from the submitter: the most the job can cost.
    pub escrow: BalanceOf<T>,
    /// Provider price plus adapter price per 1,000 tokens, fixed when the job was assigned.
    pub price_per_1k: BalanceOf<T>,
    /// libp2p peer id of the gateway holding the payload.
    pub gateway: BoundedVec<u8, T::MaxPeerIdLen>,
    /// Assigned or acknowledged.
    pub phase: JobPhase,
    /// Block after which anyone may expire the job: the acknowledgement deadline while
    /// [`JobPhase::Assigned`], the receipt deadline once acknowledged.
    pub deadline: BlockNumberFor<T>,
}

/// What the runtime API says about a job id.
#[derive(CloneNoBound, PartialEqNoBound, DebugNoBound, Encode, Decode, TypeInfo)]
#[scale_info(skip_type_params(T))]
pub enum JobStatus<T: Config> {
    /// No job has this id yet.
    Unknown,
    /// The job is open.
    Open(Job<T>),
    /// The job was settled or expired (its events say which) and its record deleted.
    Closed,
}

/// A price quote: which provider would take a job now, and what it would cost at most.
#[derive(CloneNoBound, PartialEqNoBound, DebugNoBound, Encode, Decode, TypeInfo)]
#[scale_info(skip_type_params(T))]
pub struct Quote<T: Config> {
    /// The provider matching would pick.
    pub provider: T::AccountId,
    /// Provider plus adapter price per 1,000 tokens.
    pub price_per_1k: BalanceOf<T>,
    /// Charge for `max_output_tokens` output tokens and no input: the least `max_fee` that
    /// this provider accepts. Input tokens are charged too, up to `max_fee`.
    pub min_max_fee: BalanceOf<T>,
}
