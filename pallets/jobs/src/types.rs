//! Plain data types of the marketplace.

use crate::{BalanceOf, Config};
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{
    pallet_prelude::BoundedVec, CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound,
};
use frame_system::pallet_prelude::BlockNumberFor;
use openledger_primitives::market::AdapterId;
use scale_info::TypeInfo;
use sp_core::H256;

/// Where a job is in its life. Closed jobs (settled, refused or expired) are deleted; see
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

/// Why a worker refused a job it was assigned: what the user sees through the gateway.
///
/// All but [`RefusalReason::WorkerFault`] are faults of the request or of its delivery, which
/// the worker can show from the payload (once verification exists, a refusal the payload
/// disproves will be slashable).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    TypeInfo,
    MaxEncodedLen,
    Debug,
)]
pub enum RefusalReason {
    /// The gateway never delivered the payload (or denied it to this worker).
    #[codec(index = 0)]
    PayloadUnavailable,
    /// The payload's BLAKE2b-256 differs from the job's `input_hash`.
    #[codec(index = 1)]
    PayloadMismatch,
    /// The payload is not a job payload the worker can read.
    #[codec(index = 2)]
    MalformedPayload,
    /// The payload is larger than the worker accepts.
    #[codec(index = 3)]
    PayloadTooLarge,
    /// The prompt has no tokens.
    #[codec(index = 4)]
    EmptyPrompt,
    /// The prompt plus the requested tokens do not fit the model's context.
    #[codec(index = 5)]
    PromptTooLong,
    /// A sampling parameter is out of range, or the payload asks for more tokens than the job.
    #[codec(index = 6)]
    InvalidParameters,
    /// The worker does not serve the job's adapter.
    #[codec(index = 7)]
    AdapterNotServed,
    /// The worker could not load the job's adapter.
    #[codec(index = 8)]
    AdapterUnavailable,
    /// The worker failed while running the job (its own fault; the user is refunded in full).
    #[codec(index = 9)]
    WorkerFault,
}

/// What the runtime API says about a job id.
#[derive(CloneNoBound, PartialEqNoBound, DebugNoBound, Encode, Decode, TypeInfo)]
#[scale_info(skip_type_params(T))]
pub enum JobStatus<T: Config> {
    /// No job has this id yet.
    Unknown,
    /// The job is open.
    Open(Job<T>),
    /// The job was settled, refused or expired (its events say which) and its record deleted.
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
