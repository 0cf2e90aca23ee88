//! Records of DataNets, contributions and adapters, and the fee split.

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{BoundedVec, CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound};
use openledger_primitives::market::{BaseModelId, DataNetId, DataNetShare};
use scale_info::TypeInfo;
use sp_core::{H256, U256};
use sp_runtime::Permill;

use crate::{BalanceOf, Config};

/// Fixed-point scale of [`DataNet::reward_per_weight`]: rewards per unit of weight are kept
/// in units of 10^-18 planck, so a settlement's rounding costs each contributor less than
/// `weight / 10^18` planck.
pub const REWARD_SCALE: u128 = 1_000_000_000_000_000_000;

/// A curated dataset and the reward pool of its contributors.
#[derive(
    Encode, Decode, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound, TypeInfo, MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
pub struct DataNet<T: Config> {
    /// Creator: adds and removes curators.
    pub owner: T::AccountId,
    /// What the DataNet holds (free-form, e.g. a name and a URL), set at creation.
    pub metadata: BoundedVec<u8, T::MaxMetadataLen>,
    /// Accounts that approve, reject and remove contributions (besides the owner).
    pub curators: BoundedVec<T::AccountId, T::MaxCurators>,
    /// Sum of the weights of approved contributions.
    pub total_weight: u128,
    /// Rewards per unit of weight since creation, times [`REWARD_SCALE`]: a contributor is owed
    /// `weight x (reward_per_weight - its snapshot) / REWARD_SCALE` for the time it held
    /// `weight` (the accumulator of staking pools).
    pub reward_per_weight: U256,
    /// OPEN the pallet account holds for this DataNet's contributors: credited at settlement,
    /// debited at claims. Includes rounding dust (less than one planck per contributor).
    pub balance: BalanceOf<T>,
    /// Contributions pending or approved.
    pub records: u32,
    /// Held from the owner while the DataNet exists.
    pub deposit: BalanceOf<T>,
}

/// Where a contribution stands.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
    TypeInfo,
    MaxEncodedLen,
)]
pub enum RecordStatus {
    /// Submitted; its weight counts once a curator approves it.
    Pending,
    /// Approved; its weight earns rewards.
    Approved,
}

/// One contributed record of a DataNet.
#[derive(
    Encode, Decode, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound, TypeInfo, MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
pub struct Record<T: Config> {
    /// Who contributed it (and paid its deposit); earns by its weight once approved.
    pub contributor: T::AccountId,
    /// Its weight: its share of the DataNet's rewards, against the sum of approved weights.
    pub weight: u128,
    /// Pending a curator, or approved.
    pub status: RecordStatus,
    /// Held from the contributor while the record exists.
    pub deposit: BalanceOf<T>,
}

/// A contributor's share of one DataNet.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    Clone,
    PartialEq,
    Eq,
    Debug,
    Default,
    TypeInfo,
    MaxEncodedLen,
)]
pub struct Stake {
    /// Sum of the contributor's approved weights.
    pub weight: u128,
    /// The DataNet's `reward_per_weight` when `owed_scaled` was last brought up to date.
    pub snapshot: U256,
    /// Rewards owed and not yet claimed, times [`REWARD_SCALE`] (the fraction below one
    /// planck is kept, never dropped).
    pub owed_scaled: U256,
}

/// The projections an adapter may target, as bits (shared with the engine and clients).
pub use openledger_primitives::market::target;

/// A registered LoRA adapter.
#[derive(
    Encode, Decode, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound, TypeInfo, MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
pub struct Adapter<T: Config> {
    /// Registrant; receives the adapter owner's share of every fee.
    pub owner: T::AccountId,
    /// The base model the adapter is trained against.
    pub base_model: BaseModelId,
    /// BLAKE2b-256 of the adapter's `adapter_model.safetensors` (what workers load and check).
    pub content_hash: H256,
    /// LoRA rank.
    pub rank: u32,
    /// The projections the adapter targets, one bit each ([`target`]): bit 0 `q_proj`, 1
    /// `k_proj`, 2 `v_proj`, 3 `o_proj`, 4 `gate_proj`, 5 `up_proj`, 6 `down_proj` (PEFT's
    /// module names); at least one bit set, bit 7 never.
    pub target_modules: u8,
    /// Price per 1,000 tokens, paid on top of the provider's price.
    pub price_per_1k: BalanceOf<T>,
    /// The DataNets the adapter was trained on and their shares of the DataNet portion of its
    /// fees (summing to at most 100%; the rest of that portion goes to the treasury).
    pub training: BoundedVec<DataNetShare, T::MaxTrainingDataNets>,
    /// Held from the owner until the adapter is retired.
    pub deposit: BalanceOf<T>,
    /// Retired adapters take no new jobs; the record stays so open jobs still settle.
    pub retired: bool,
}

/// How a fee is split. The four parts sum to 100%.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
    TypeInfo,
    MaxEncodedLen,
)]
pub struct FeeSplit {
    /// To the GPU provider that ran the job.
    pub provider: Permill,
    /// To the adapter's owner.
    pub adapter_owner: Permill,
    /// To DataNets: the context DataNets of the receipt by their shares, the rest to the
    /// adapter's training DataNets by theirs.
    pub datanets: Permill,
    /// To the treasury (which also receives every rounding remainder of the split).
    pub treasury: Permill,
}

impl FeeSplit {
    /// Whether the parts sum to exactly 100%.
    pub fn is_valid(&self) -> bool {
        let parts = [self.provider, self.adapter_owner, self.datanets, self.treasury];
        parts.iter().map(|p| u64::from(p.deconstruct())).sum::<u64>()
            == u64::from(Permill::one().deconstruct())
    }
}

impl FeeSplit {
    /// From parts per million: provider, adapter owner, DataNets, treasury.
    pub fn from_ppm(parts: [u32; 4]) -> Self {
        Self {
            provider: Permill::from_parts(parts[0]),
            adapter_owner: Permill::from_parts(parts[1]),
            datanets: Permill::from_parts(parts[2]),
            treasury: Permill::from_parts(parts[3]),
        }
    }
}

impl Default for FeeSplit {
    /// 70% provider (the machine and its power), 10% adapter owner, 15% DataNets, 5% treasury.
    fn default() -> Self {
        Self {
            provider: Permill::from_percent(70),
            adapter_owner: Permill::from_percent(10),
            datanets: Permill::from_percent(15),
            treasury: Permill::from_percent(5),
        }
    }
}

/// Who received a part of a fee.
#[derive(
    Encode, Decode, DecodeWithMemTracking, Clone, PartialEq, Eq, Debug, TypeInfo, MaxEncodedLen,
)]
pub enum Payee<AccountId> {
    /// The GPU provider that ran the job.
    Provider(AccountId),
    /// The adapter's owner.
    AdapterOwner(AccountId),
    /// A DataNet the adapter was trained on (its contributors, pro rata to weight).
    TrainingDataNet(DataNetId),
    /// A DataNet whose records the answer used as context.
    ContextDataNet(DataNetId),
    /// The treasury.
    Treasury(AccountId),
}
