//! Plain data types of verification.

use crate::{BalanceOf, Config};
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{
    pallet_prelude::{BoundedVec, ConstU32},
    CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound,
};
use frame_system::pallet_prelude::BlockNumberFor;
use openledger_primitives::market::{AdapterId, BaseModelId, JobId, RedeemedWork, SettledWork};
use openledger_primitives::voucher::ChannelId;
use scale_info::TypeInfo;
use sp_core::H256;

/// Most verifiers one audit has: the first, and two more if the provider contests.
pub const MAX_VERIFIERS: u32 = 3;

/// Most confirmed audits whose scores are kept per provider (`DriftWindow` is at most this).
pub const MAX_DRIFT_WINDOW: u32 = 64;

/// How far a verifier's recomputation fell from the commitment, in thousandths of the typical
/// honest error of the work's numeric format (1,000: as far as an honest worker's usually is;
/// the verifier's tolerance, fitted to measured honest runs, says what that is). One job's
/// score cannot tell a cheat that stays inside the per-job tolerance from honest rounding;
/// the median of many can (`DriftLimit`).
pub type Score = u32;

/// What a verifier found when it recomputed a job.
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
pub enum Verdict {
    /// The recomputed activations match the commitment within tolerance: the work stands.
    #[codec(index = 0)]
    Match,
    /// They do not: the provider ran another model, adapter or precision than it registered.
    #[codec(index = 1)]
    Mismatch,
    /// The provider's worker could not hand over the job's prompt, output and commitment, or
    /// the commitment it handed over does not hash to the receipt's: treated as a mismatch.
    #[codec(index = 2)]
    Unavailable,
}

impl Verdict {
    /// Whether this verdict finds against the provider.
    pub fn faults(self) -> bool {
        !matches!(self, Verdict::Match)
    }
}

/// One verifier of an audit.
#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound, Encode, Decode, TypeInfo, MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct Assignment<T: Config> {
    /// The provider (operator account) assigned to verify; its worker answers.
    pub verifier: T::AccountId,
    /// The last block in which its verdict is accepted.
    pub deadline: BlockNumberFor<T>,
    /// Its verdict and the hash of the evidence it recomputed, once given.
    pub verdict: Option<(Verdict, H256)>,
    /// The score it gave with its verdict (0 until then).
    pub score: Score,
}

/// Where an audit is.
#[derive(Clone, Copy, PartialEq, Eq, Encode, Decode, TypeInfo, MaxEncodedLen, Debug)]
pub enum Stage<BlockNumber> {
    /// One verifier is recomputing the job.
    Open,
    /// The verifier found against the provider, which may contest until the block given;
    /// after it, the provider is slashed.
    Accused {
        /// The last block in which `contest` is accepted.
        until: BlockNumber,
    },
    /// The provider contested: two more verifiers recompute it, and the majority of all
    /// verdicts decides (a tie clears the provider).
    Contested,
}

/// Settled work (a job, or a request on a channel) opened for verification.
#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound, Encode, Decode, TypeInfo, MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct Audit<T: Config> {
    /// The provider whose work is checked.
    pub provider: T::AccountId,
    /// Who paid for the work, refunded if it is found wrong.
    pub payer: T::AccountId,
    /// The adapter the work ran.
    pub adapter: AdapterId,
    /// Its base model: verifiers are providers that serve it too.
    pub base_model: BaseModelId,
    /// What the payer was charged.
    pub charged: BalanceOf<T>,
    /// The receipt's hash of the activation commitment the verifiers check.
    pub commitment_hash: H256,
    /// The verifiers, in the order they were assigned.
    pub verifiers: BoundedVec<Assignment<T>, ConstU32<MAX_VERIFIERS>>,
    /// Verifiers replaced for not answering in time (never assigned again to this audit).
    pub dismissed: BoundedVec<T::AccountId, ConstU32<MAX_DISMISSED>>,
    /// Where it is.
    pub stage: Stage<BlockNumberFor<T>>,
    /// The block at which the chain looks at it next (a verdict or contest deadline); it is
    /// indexed under this block in `AuditsByWake`.
    pub wake: BlockNumberFor<T>,
}

/// Most verifiers an audit replaces for not answering before it is abandoned.
pub const MAX_DISMISSED: u32 = 4;

/// What an audit checks.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Encode,
    Decode,
    DecodeWithMemTracking,
    TypeInfo,
    MaxEncodedLen,
    Debug,
)]
pub enum Subject {
    /// A job of the per-job path (`pallet-jobs`), settled by its receipt.
    #[codec(index = 0)]
    Job(JobId),
    /// One request served on a payment channel (`pallet-channels`): a receipt of a redeemed
    /// voucher, drawn by its leaf and revealed by the provider.
    #[codec(index = 1)]
    Request {
        /// The channel.
        channel: ChannelId,
        /// The gateway's id of the request (unique per channel).
        request: u64,
    },
}

/// One leaf of a redeemed voucher's receipts tree.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Encode,
    Decode,
    DecodeWithMemTracking,
    TypeInfo,
    MaxEncodedLen,
    Debug,
)]
pub struct Leaf {
    /// The channel.
    pub channel: ChannelId,
    /// The sequence of the redeemed voucher.
    pub sequence: u64,
    /// The leaf's index in its tree (the order the voucher's signer vouched for them).
    pub index: u64,
}

/// A leaf drawn for an audit whose receipt the provider has not revealed yet.
#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound, Encode, Decode, TypeInfo, MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct PendingReveal<T: Config> {
    /// The channel's provider, which must reveal it.
    pub provider: T::AccountId,
    /// The channel's payer, refunded if the request is found served wrong.
    pub payer: T::AccountId,
    /// The redeemed voucher's Merkle root of its receipts.
    pub receipts_root: H256,
    /// The tree's leaves.
    pub inferences: u64,
    /// What the redemption paid in all (a missed reveal refunds the mean request's share).
    pub amount: BalanceOf<T>,
    /// The last block in which `reveal` is accepted.
    pub until: BlockNumberFor<T>,
}

/// Work offered for verification in a block, drawn in the next.
#[derive(Clone, PartialEq, Eq, Encode, Decode, TypeInfo, MaxEncodedLen, Debug)]
pub enum Offer<AccountId, Balance> {
    /// A settled job.
    #[codec(index = 0)]
    Job(SettledWork<AccountId, Balance>),
    /// A redeemed channel voucher, its requests drawn by leaf.
    #[codec(index = 1)]
    Redemption(RedeemedWork<AccountId, Balance>),
}

/// Work that an audit opens on: a settled job, or a revealed channel request.
pub(crate) struct Work<AccountId, Balance> {
    pub subject: Subject,
    pub payer: AccountId,
    pub provider: AccountId,
    pub adapter: AdapterId,
    pub charged: Balance,
    pub commitment_hash: H256,
}
