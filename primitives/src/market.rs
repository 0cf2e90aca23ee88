//! Identifiers and the narrow interfaces through which the marketplace pallets talk.
//!
//! `pallet-jobs` needs three things it does not own: the registry of GPU providers
//! (`pallet-compute`), the catalogue of adapters and their prices (`pallet-attribution`), and
//! the place a settled job's charge goes (also `pallet-attribution`, which splits it). Each is
//! a trait here, so neither pallet depends on the other and the runtime wires them together.

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use scale_info::TypeInfo;
use sp_runtime::{BoundedVec, DispatchError, DispatchResult, Permill};

/// Identifier of an inference job, assigned in submission order starting at 0.
pub type JobId = u64;

/// Identifier of a registered LoRA adapter.
pub type AdapterId = u32;

/// Identifier of a base model (the shared weights an adapter is trained against).
pub type BaseModelId = u32;

/// Identifier of a DataNet (a curated dataset whose contributors share in the fees of the
/// adapters trained on it and of the answers that retrieve its records as context).
pub type DataNetId = u32;

/// A provider's reputation, in parts per million: 0 is the worst, [`Reputation::MAX`] the best.
pub type Reputation = u32;

/// A DataNet and its share of something: of an adapter's training attribution, or of the
/// DataNets' portion of a charge when the DataNet's records were retrieved as context.
///
/// SCALE-encoded exactly as the pair `(DataNetId, Permill)`: the DataNet id as `u32`
/// little-endian, then the share in parts per million as `u32` little-endian.
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
    Debug,
    TypeInfo,
    MaxEncodedLen,
)]
pub struct DataNetShare {
    /// The DataNet.
    pub datanet: DataNetId,
    /// Its share, in parts per million (`1_000_000` is all of it).
    pub share: Permill,
}

impl DataNetShare {
    /// `datanet` with `share`.
    pub const fn new(datanet: DataNetId, share: Permill) -> Self {
        Self { datanet, share }
    }
}

/// The numeric format a worker computes a base model in. Verification compares like with
/// like: a verifier recomputes audited work in the format it was served in, under tolerances
/// fitted to that format, so a base model id stands for one weights file in one format.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    Debug,
    TypeInfo,
    MaxEncodedLen,
)]
pub enum NumericFormat {
    /// The CPU engine's host path: f32 activations over the file's own (GGUF block or f32)
    /// weights.
    #[codec(index = 0)]
    Host,
    /// bf16 activations and weights on a CUDA GPU.
    #[codec(index = 1)]
    CudaBf16,
    /// The host path on the packed integer kernels (AVX-512 VNNI or AMX, which give the same
    /// bits) over block-quantized weights: every provider of the id computes the same bits,
    /// so its verifiers replay a job's tokens exactly (no near tie forgiven). A worker on
    /// this path also serves ids registered as [`Self::Host`].
    #[codec(index = 2)]
    HostVnni,
}

impl NumericFormat {
    /// Every format, in code order.
    pub const ALL: [Self; 3] = [Self::Host, Self::CudaBf16, Self::HostVnni];

    /// The format's code, its SCALE encoding (`0` host, `1` CUDA bf16, `2` host on the
    /// VNNI / AMX kernels).
    pub const fn code(self) -> u8 {
        match self {
            Self::Host => 0,
            Self::CudaBf16 => 1,
            Self::HostVnni => 2,
        }
    }

    /// The format with `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == code)
    }

    /// The name operators see (`host`, `cuda-bf16`, `host-vnni`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::CudaBf16 => "cuda-bf16",
            Self::HostVnni => "host-vnni",
        }
    }

    /// Whether a worker computing in `self` may serve an id registered in `registered`: the
    /// same format, or the VNNI / AMX host path under [`Self::Host`] (whose verifiers'
    /// tolerance covers every CPU kernel path).
    pub const fn serves(self, registered: Self) -> bool {
        matches!(
            (self, registered),
            (Self::Host, Self::Host)
                | (Self::CudaBf16, Self::CudaBf16)
                | (Self::HostVnni, Self::HostVnni)
                | (Self::HostVnni, Self::Host)
        )
    }
}

/// What a base model id stands for, as governance registered it: the weights every provider
/// of that id serves and the numeric format it computes them in. Workers refuse to serve an
/// id whose registered weights or format differ from their own, so that any provider of the
/// id can verify any other.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    Debug,
    TypeInfo,
    MaxEncodedLen,
)]
pub struct BaseModelSpec {
    /// BLAKE2b-256 of the model's weights file (a GGUF file as distributed).
    pub weights: [u8; 32],
    /// The numeric format.
    pub format: NumericFormat,
}

/// What the catalogue says about an adapter that a job may run.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, Debug, TypeInfo, MaxEncodedLen,
)]
pub struct AdapterTerms<Balance> {
    /// The base model the adapter is applied to; only providers serving it can run the job.
    pub base_model: BaseModelId,
    /// The adapter's own price per 1,000 tokens, paid on top of the provider's price.
    pub price_per_1k: Balance,
}

/// Looks up adapters. Implemented by `pallet-attribution`.
pub trait AdapterCatalog<Balance> {
    /// Terms of `adapter`, or `None` if it is unknown or may not be used.
    fn adapter(adapter: AdapterId) -> Option<AdapterTerms<Balance>>;
}

/// A provider's standing offer for one job, as the registry sees it right now.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, Debug, TypeInfo, MaxEncodedLen,
)]
pub struct ProviderOffer<Balance> {
    /// Price per 1,000 tokens (input and output).
    pub price_per_1k: Balance,
    /// Bond currently held.
    pub bond: Balance,
    /// Reputation after decay, in parts per million.
    pub reputation: Reputation,
    /// Whether the worker reported the requested adapter as loaded on its GPU.
    pub adapter_hot: bool,
}

/// The GPU provider registry as the job marketplace uses it. Implemented by `pallet-compute`.
///
/// The marketplace calls `job_assigned` exactly once per job and then exactly one of
/// `job_settled` / `job_refused` / `job_abandoned` / `job_expired`, so the registry can count
/// open jobs per provider.
pub trait ProviderRegistry<AccountId, Balance> {
    /// Upper bound on the number of providers [`Self::candidates`] returns.
    type MaxCandidates: sp_core::Get<u32>;

    /// Providers that declared `base_model`, eligible or not.
    fn candidates(base_model: BaseModelId) -> BoundedVec<AccountId, Self::MaxCandidates>;

    /// The offer of `provider`, one of `candidates(base_model)`, for a job with `adapter`, or
    /// `None` if it cannot take that job now (unknown, leaving, heartbeat stale, bond too low, no
    /// free capacity, `adapter` not among those it declared it serves). Whether it serves `base_model` is the caller's to know from
    /// [`Self::candidates`]; implementations need not check it again.
    fn offer(
        provider: &AccountId,
        base_model: BaseModelId,
        adapter: AdapterId,
    ) -> Option<ProviderOffer<Balance>>;

    /// The ed25519 key with which `provider`'s worker signs receipts.
    fn worker_key(provider: &AccountId) -> Option<sp_core::ed25519::Public>;

    /// Whether `who` may act for `provider`'s worker (the operator or its authorised worker).
    fn is_worker(provider: &AccountId, who: &AccountId) -> bool;

    /// A job was assigned to `provider`: count it against its capacity.
    fn job_assigned(provider: &AccountId) -> DispatchResult;

    /// A job of `provider` was settled: release its slot and credit its reputation.
    fn job_settled(provider: &AccountId);

    /// A job of `provider` was refused by its worker with a reason (the escrow went back to the
    /// user): release its slot and lower its reputation a little. No slash.
    fn job_refused(provider: &AccountId);

    /// A job of `provider` expired before its worker acknowledged it (the worker never took
    /// it on, which may be the request's fault: a payload never delivered): release its slot
    /// and lower its reputation. No slash.
    fn job_abandoned(provider: &AccountId);

    /// A job `provider`'s worker acknowledged expired without a receipt: release its slot,
    /// lower its reputation and slash its bond to `victim`. Returns the amount slashed.
    fn job_expired(provider: &AccountId, victim: &AccountId) -> Result<Balance, DispatchError>;

    /// The bond `provider` has at stake now (zero when it is not registered).
    fn bond_of(provider: &AccountId) -> Balance;

    /// Whether `provider` declared that it serves `adapter` (whatever its load now).
    fn serves(provider: &AccountId, adapter: AdapterId) -> bool;

    /// Move up to `amount` of `provider`'s bond to `to`, for work a verification found wrong
    /// (or a verification it did not answer). Returns what was moved: less than `amount`
    /// when the bond is smaller. Its reputation is not touched here.
    fn slash_bond(
        provider: &AccountId,
        amount: Balance,
        to: &AccountId,
    ) -> Result<Balance, DispatchError>;
}

/// A job that settled: what a verification of it needs to know. `charged` is what the payer
/// paid for it, refunded from the provider's bond if a verification finds the work wrong.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, Debug, TypeInfo, MaxEncodedLen,
)]
pub struct SettledWork<AccountId, Balance> {
    /// The job.
    pub job: JobId,
    /// Who paid for it.
    pub payer: AccountId,
    /// The provider that served it.
    pub provider: AccountId,
    /// The adapter it ran (and through it, the base model).
    pub adapter: AdapterId,
    /// What the payer was charged.
    pub charged: Balance,
    /// The receipt's hash of the answer's activation commitment (zeros: none).
    pub commitment_hash: sp_core::H256,
}

/// A redeemed payment-channel voucher: what a verification of the requests it paid for needs
/// to know. The requests themselves stay off chain; `receipts_root` commits to their receipts
/// (`crate::service_receipt`), so a sampled one can be revealed and proven.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, Debug, TypeInfo, MaxEncodedLen,
)]
pub struct RedeemedWork<AccountId, Balance> {
    /// The channel.
    pub channel: crate::voucher::ChannelId,
    /// The redeemed voucher's sequence.
    pub sequence: u64,
    /// The channel's payer, refunded if a request is found served wrong.
    pub payer: AccountId,
    /// The channel's provider.
    pub provider: AccountId,
    /// The Merkle root of the receipts the redemption paid for.
    pub receipts_root: sp_core::H256,
    /// How many receipts (leaves) that is.
    pub inferences: u64,
    /// What the redemption paid in all.
    pub amount: Balance,
}

/// Settled work offered for verification (`pallet-verification` samples a share of it).
/// Implemented by `()` for a chain that verifies nothing.
pub trait WorkAudit<AccountId, Balance> {
    /// `work` settled in this block. Returns the weight used, at most [`Self::offer_weight`].
    fn offer(work: SettledWork<AccountId, Balance>) -> sp_runtime::Weight;

    /// Upper bound on the weight of one [`Self::offer`].
    fn offer_weight() -> sp_runtime::Weight;

    /// A channel voucher was redeemed in this block, paying for `work.inferences` requests.
    /// Returns the weight used, at most [`Self::offer_weight`].
    fn offer_redemption(work: RedeemedWork<AccountId, Balance>) -> sp_runtime::Weight;
}

impl<AccountId, Balance> WorkAudit<AccountId, Balance> for () {
    fn offer(_work: SettledWork<AccountId, Balance>) -> sp_runtime::Weight {
        sp_runtime::Weight::zero()
    }

    fn offer_weight() -> sp_runtime::Weight {
        sp_runtime::Weight::zero()
    }

    fn offer_redemption(_work: RedeemedWork<AccountId, Balance>) -> sp_runtime::Weight {
        sp_runtime::Weight::zero()
    }
}

/// Where the charge of a settled job, or of a redeemed channel voucher, goes. Implemented by
/// `pallet-attribution`, which splits it between provider, adapter owner, DataNets and
/// treasury.
///
/// `context` lists the DataNets whose records the answer retrieved as context, each with its
/// share of the DataNets' portion of the charge (shares sum to at most 100%).
pub trait Settlement<AccountId, Balance> {
    /// Pay out `charge` for `job`. When this is called, `charge` has been released from the
    /// job's escrow and is free balance of `payer`; the implementation moves all of it out of
    /// `payer` (with `Preservation::Expendable`) or fails, in which case the receipt is rejected
    /// and nothing of it persists. A rejected receipt leaves the job to expire, which slashes a
    /// provider that did the work: implementations should fail only on broken invariants, never
    /// on amounts too small for a recipient's existential deposit (accrue those instead).
    ///
    /// Returns the weight the settlement actually used (at most [`Self::settle_weight`]), so
    /// the marketplace refunds what the worst-case bound over-charged.
    fn settle(
        job: JobId,
        payer: &AccountId,
        provider: &AccountId,
        adapter: AdapterId,
        charge: Balance,
        context: &[DataNetShare],
    ) -> Result<sp_runtime::Weight, sp_runtime::DispatchError>;

    /// Pay out `charge` for `adapter` from a redeemed payment channel voucher (channel
    /// `channel`, sequence `sequence`): the same split, with the same rules, as
    /// [`Self::settle`] gives a job's charge, the payout named by the voucher instead of a job.
    /// `charge` is free balance of `payer` when this is called; `context` is as for a receipt.
    fn settle_voucher(
        channel: crate::voucher::ChannelId,
        sequence: u64,
        payer: &AccountId,
        provider: &AccountId,
        adapter: AdapterId,
        charge: Balance,
        context: &[DataNetShare],
    ) -> Result<sp_runtime::Weight, sp_runtime::DispatchError>;

    /// Upper bound on the weight of one [`Self::settle`] call, whatever accounts and DataNets
    /// it touches: what the marketplace charges per receipt on top of its own measured cost,
    /// so batches of receipts for different adapters never exceed their declared weight.
    fn settle_weight() -> sp_runtime::Weight;
}

/// The projections of a Llama-family block an adapter may target, as the bits of the
/// `target_modules` byte an adapter is registered with: bit `i` is the projection whose PEFT
/// module name is [`target::MODULE_NAMES`]`[i]`. The pallet checks the byte, the engine
/// computes it from `adapter_config.json`, and clients read it back, all from here.
pub mod target {
    /// The query projection, `q_proj`.
    pub const Q: u8 = 1 << 0;
    /// The key projection, `k_proj`.
    pub const K: u8 = 1 << 1;
    /// The value projection, `v_proj`.
    pub const V: u8 = 1 << 2;
    /// The attention output projection, `o_proj`.
    pub const O: u8 = 1 << 3;
    /// The MLP gate projection, `gate_proj`.
    pub const GATE: u8 = 1 << 4;
    /// The MLP up projection, `up_proj`.
    pub const UP: u8 = 1 << 5;
    /// The MLP down projection, `down_proj`.
    pub const DOWN: u8 = 1 << 6;
    /// Every valid bit.
    pub const ALL: u8 = 0x7f;
    /// PEFT's module name of each bit, lowest bit first.
    pub const MODULE_NAMES: [&str; 7] =
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// The bit of a PEFT module name (`q_proj`, ...), if it is one of the seven.
    pub fn bit_of(module: &str) -> Option<u8> {
        MODULE_NAMES.iter().position(|m| *m == module).map(|i| 1 << i)
    }

    /// Whether `bits` names at least one projection and nothing else.
    pub fn is_valid(bits: u8) -> bool {
        bits != 0 && bits & !ALL == 0
    }

    /// The module names of `bits`, lowest bit first (invalid bits ignored).
    pub fn modules(bits: u8) -> impl Iterator<Item = &'static str> {
        MODULE_NAMES
            .into_iter()
            .enumerate()
            .filter(move |(i, _)| bits & (1 << i) != 0)
            .map(|(_, m)| m)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_and_bits_agree() {
            let bits = [Q, K, V, O, GATE, UP, DOWN];
            for (name, bit) in MODULE_NAMES.iter().zip(bits) {
                assert_eq!(bit_of(name), Some(bit));
                assert_eq!(modules(bit).collect::<Vec<_>>(), [*name]);
            }
            assert_eq!(bits.iter().fold(0, |a, b| a | b), ALL);
            assert_eq!(bit_of("lm_head"), None);
            assert!(is_valid(Q | DOWN) && is_valid(ALL));
            assert!(!is_valid(0) && !is_valid(0x80) && !is_valid(Q | 0x80));
            assert_eq!(modules(ALL).count(), 7);
        }
    }
}
