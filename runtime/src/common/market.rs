//! Configuration of the pallets both runtimes share: OPEN balances and fees, sudo, utility,
//! and the marketplace (providers, jobs, attribution, payment channels, verification).

use frame_support::{
    parameter_types,
    traits::{ConstU32, ConstU8, VariantCountOf},
    weights::ConstantMultiplier,
};
#[cfg(feature = "runtime-benchmarks")]
use openledger_primitives::market::AdapterId;
use openledger_primitives::market::BaseModelId;
use pallet_transaction_payment::{ConstFeeMultiplier, FungibleAdapter, Multiplier};
use sp_runtime::{traits::One, Perbill};

#[cfg(feature = "runtime-benchmarks")]
use crate::RuntimeOrigin;
use crate::{
    token, AccountId, Attribution, Balance, Balances, BlockNumber, Compute, OriginCaller, Runtime,
    RuntimeCall, RuntimeEvent, RuntimeFreezeReason, RuntimeHoldReason, System, Verification, DAYS,
    EXISTENTIAL_DEPOSIT, MINUTES,
};

impl pallet_balances::Config for Runtime {
    type MaxLocks = ConstU32<50>;
    type MaxReserves = ();
    type ReserveIdentifier = [u8; 8];
    type Balance = Balance;
    type RuntimeEvent = RuntimeEvent;
    type DustRemoval = ();
    type ExistentialDeposit = frame_support::traits::ConstU128<EXISTENTIAL_DEPOSIT>;
    type AccountStore = System;
    type WeightInfo = pallet_balances::weights::SubstrateWeight<Runtime>;
    type FreezeIdentifier = RuntimeFreezeReason;
    type MaxFreezes = VariantCountOf<RuntimeFreezeReason>;
    type RuntimeHoldReason = RuntimeHoldReason;
    type RuntimeFreezeReason = RuntimeFreezeReason;
    type DoneSlashHandler = ();
}

/// Fee per unit of weight (one unit = one picosecond of reference compute).
///
/// A balance transfer weighs about 3 * 10^8 units with the base extrinsic weight, so it costs
/// about 0.0003 OPEN in weight fee; together with the length fee below a transfer costs
/// well under 0.001 OPEN, while filling a whole block costs about 1,000 OPEN.
pub const FEE_PER_WEIGHT_UNIT: Balance = 1_000_000;
/// Fee per byte of an extrinsic: one millionth of an OPEN.
pub const FEE_PER_BYTE: Balance = token::MICRO_OPEN;

parameter_types! {
    pub FeeMultiplier: Multiplier = Multiplier::one();
    pub const WeightFee: Balance = FEE_PER_WEIGHT_UNIT;
    pub const LengthFee: Balance = FEE_PER_BYTE;
}

impl pallet_transaction_payment::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    /// Fees are paid in OPEN and burned (no treasury yet).
    type OnChargeTransaction = FungibleAdapter<Balances, ()>;
    type OperationalFeeMultiplier = ConstU8<5>;
    type WeightToFee = ConstantMultiplier<Balance, WeightFee>;
    type LengthToFee = ConstantMultiplier<Balance, LengthFee>;
    type FeeMultiplierUpdate = ConstFeeMultiplier<FeeMultiplier>;
    type WeightInfo = pallet_transaction_payment::weights::SubstrateWeight<Runtime>;
}

impl pallet_sudo::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type RuntimeCall = RuntimeCall;
    type WeightInfo = pallet_sudo::weights::SubstrateWeight<Runtime>;
}

impl pallet_utility::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type RuntimeCall = RuntimeCall;
    type PalletsOrigin = OriginCaller;
    type WeightInfo = pallet_utility::weights::SubstrateWeight<Runtime>;
}

// ---- Marketplace: GPU providers and inference jobs. ----

parameter_types! {
    /// The base model of the benchmark adapters (the embedded SmolLM2-135M-Instruct).
    pub const DefaultBaseModel: BaseModelId = 0;
    /// A provider loses 10% of its bond, to the user, per job it lets expire.
    pub const ProviderSlashFraction: Perbill = Perbill::from_percent(10);
    /// Blocks a provider waits after unregistering before its bond is released: 7 days.
    /// Kept in storage (well-known key `twox128(":ProviderUnbondingPeriod:")`, a `u32`) so
    /// root can change it with `system.set_storage`; a change applies to providers that
    /// unregister afterwards.
    pub storage ProviderUnbondingPeriod: BlockNumber = 7 * DAYS;
    /// Blocks a worker has to acknowledge a job: 1 minute. Root may change it at
    /// `twox128(":JobAckTimeout:")`, for jobs submitted afterwards.
    pub storage JobAckTimeout: BlockNumber = MINUTES;
    /// Blocks a worker has, after acknowledging, to settle a job: 10 minutes. Root may
    /// change it at `twox128(":JobReceiptTimeout:")`, for jobs acknowledged afterwards.
    pub storage JobReceiptTimeout: BlockNumber = 10 * MINUTES;
}

impl pallet_compute::Config for Runtime {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type MinProviderBond = frame_support::traits::ConstU128<{ 1_000 * token::OPEN }>;
    type UnbondingPeriod = ProviderUnbondingPeriod;
    type HeartbeatTimeout = ConstU32<{ 2 * MINUTES }>;
    type SlashFraction = ProviderSlashFraction;
    type ReputationReward = ConstU32<1_000>;
    type ReputationPenalty = ConstU32<25_000>;
    type RefusalPenalty = ConstU32<2_500>;
    type ReputationHalfLife = ConstU32<{ 7 * DAYS }>;
    type MaxProvidersPerModel = ConstU32<64>;
    type MaxBaseModels = ConstU32<8>;
    type MaxHotAdapters = ConstU32<64>;
    type MaxServedAdapters = ConstU32<1_024>;
    type MaxGpuNameLen = ConstU32<64>;
    type MaxPeerIdLen = ConstU32<64>;
    type MaxMultiaddrs = ConstU32<8>;
    type MaxMultiaddrLen = ConstU32<128>;
    type WeightInfo = pallet_compute::weights::SubstrateWeight<Runtime>;
}

impl pallet_jobs::Config for Runtime {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type Providers = Compute;
    type Adapters = Attribution;
    type Settlement = Attribution;
    type Audit = Verification;
    type Randomness = pallet_jobs::ParentHashRandomness<Runtime>;
    type AckTimeout = JobAckTimeout;
    type JobTimeout = JobReceiptTimeout;
    type MaxReceiptsPerBatch = ConstU32<512>;
    type MaxPeerIdLen = ConstU32<64>;
    type WeightInfo = pallet_jobs::weights::SubstrateWeight<Runtime>;
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = JobsBenchmarkHelper;
}

/// Registers benchmark providers through `pallet-compute` for `pallet-jobs`' benchmarks.
#[cfg(feature = "runtime-benchmarks")]
pub struct JobsBenchmarkHelper;

#[cfg(feature = "runtime-benchmarks")]
impl pallet_jobs::BenchmarkHelper<AccountId> for JobsBenchmarkHelper {
    fn adapter() -> AdapterId {
        // The costliest settlement: an adapter trained on the most DataNets, each with
        // approved weight, so every receipt credits them all.
        use frame_support::traits::{fungible::Mutate, Get};
        let owner: AccountId = frame_benchmarking::account("adapter owner", 0, 0);
        let _ = Balances::set_balance(&owner, 1_000_000 * token::OPEN);
        let datanets = <Runtime as pallet_attribution::Config>::MaxTrainingDataNets::get();
        let mut training = alloc::vec::Vec::new();
        for n in 0..datanets {
            let id = pallet_attribution::NextDataNetId::<Runtime>::get();
            let origin = || RuntimeOrigin::signed(owner.clone());
            let record = sp_core::H256::repeat_byte(n as u8);
            let ok = Attribution::create_datanet(origin(), Default::default()).is_ok()
                && Attribution::contribute(origin(), id, record, 1).is_ok()
                && Attribution::approve_contribution(origin(), id, record).is_ok();
            assert!(ok, "benchmark DataNet set up");
            training.push(pallet_attribution::DataNetShare::new(
                id,
                sp_runtime::Permill::from_rational(1, datanets),
            ));
        }
        let id = pallet_attribution::NextAdapterId::<Runtime>::get();
        let registered = Attribution::register_adapter(
            RuntimeOrigin::signed(owner),
            DefaultBaseModel::get(),
            sp_core::H256::repeat_byte(1),
            16,
            pallet_attribution::target::ALL,
            // Within the benchmarks' budget, and large enough that every DataNet's share of a
            // charge is non-zero (so each is credited: the costliest path).
            100_000,
            training.try_into().unwrap_or_default(),
        );
        assert!(registered.is_ok(), "benchmark adapter registers");
        id
    }

    fn provider(who: &AccountId, worker_key: sp_core::ed25519::Public, adapter: AdapterId) {
        pallet_compute::benchmarking::register_eligible::<Runtime>(
            who,
            worker_key,
            DefaultBaseModel::get(),
            adapter,
        );
    }
}

parameter_types! {
    pub const AttributionPalletId: frame_support::PalletId = frame_support::PalletId(*b"ol/attrb");
    /// Receives the treasury part of every fee: a keyless account derived from its own id
    /// (spent by governance through root calls).
    pub TreasuryAccount: AccountId =
        sp_runtime::traits::AccountIdConversion::into_account_truncating(
            &frame_support::PalletId(*b"ol/trsry"),
        );
}

impl pallet_attribution::Config for Runtime {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type AdminOrigin = frame_system::EnsureRoot<AccountId>;
    type PalletId = AttributionPalletId;
    type Treasury = TreasuryAccount;
    type DataNetDeposit = frame_support::traits::ConstU128<{ 10 * token::OPEN }>;
    type ContributionDeposit = frame_support::traits::ConstU128<{ 10 * token::MILLI_OPEN }>;
    type AdapterDepositBase = frame_support::traits::ConstU128<{ token::OPEN }>;
    type AdapterDepositPerByte = frame_support::traits::ConstU128<{ 10 * token::MICRO_OPEN }>;
    type MaxMetadataLen = ConstU32<256>;
    type MaxCurators = ConstU32<16>;
    type MaxTrainingDataNets = ConstU32<8>;
    type MaxContextDataNets = ConstU32<{ openledger_primitives::receipt::MAX_RECEIPT_CONTEXT }>;
    type MaxRecordWeight = frame_support::traits::ConstU128<1_000_000_000_000>;
    type MaxRank = ConstU32<1024>;
    type WeightInfo = pallet_attribution::weights::SubstrateWeight<Runtime>;
}

// ---- Payment channels: deposits, aggregate vouchers, the fee split per adapter. ----

parameter_types! {
    /// Blocks a provider has, after a payer asks to close a channel, to redeem its latest
    /// voucher: 1 hour. Root may change it at `twox128(":ChannelChallengeWindow:")` (a `u32`),
    /// for closes requested afterwards.
    pub storage ChannelChallengeWindow: BlockNumber = 60 * MINUTES;
}

impl pallet_channels::Config for Runtime {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type Settlement = Attribution;
    type Audit = Verification;
    type ChallengeWindow = ChannelChallengeWindow;
    type MaxAdaptersPerVoucher = ConstU32<16>;
    // Each adapter's context entries go to the settlement as one receipt's context.
    type MaxContextsPerVoucher = ConstU32<{ openledger_primitives::receipt::MAX_RECEIPT_CONTEXT }>;
    type WeightInfo = pallet_channels::weights::SubstrateWeight<Runtime>;
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = ChannelsBenchmarkHelper;
}

/// Registers benchmark adapters and DataNets through `pallet-attribution` for
/// `pallet-channels`' benchmarks.
#[cfg(feature = "runtime-benchmarks")]
pub struct ChannelsBenchmarkHelper;

#[cfg(feature = "runtime-benchmarks")]
impl pallet_channels::BenchmarkHelper for ChannelsBenchmarkHelper {
    fn adapters(n: u32) -> alloc::vec::Vec<AdapterId> {
        (0..n)
            .map(|_| <JobsBenchmarkHelper as pallet_jobs::BenchmarkHelper<AccountId>>::adapter())
            .collect()
    }

    fn datanets(n: u32) -> alloc::vec::Vec<openledger_primitives::market::DataNetId> {
        use frame_support::traits::fungible::Mutate;
        let owner: AccountId = frame_benchmarking::account("context owner", 0, 0);
        let _ = Balances::set_balance(&owner, 1_000_000 * token::OPEN);
        (0..n)
            .map(|n| {
                let id = pallet_attribution::NextDataNetId::<Runtime>::get();
                let origin = || RuntimeOrigin::signed(owner.clone());
                let record = sp_core::H256::repeat_byte(0x80 | n as u8);
                let ok = Attribution::create_datanet(origin(), Default::default()).is_ok()
                    && Attribution::contribute(origin(), id, record, 1).is_ok()
                    && Attribution::approve_contribution(origin(), id, record).is_ok();
                assert!(ok, "benchmark context DataNet set up");
                id
            })
            .collect()
    }
}

// ---- Verification: a sampled share of settled jobs recomputed by another provider. ----

parameter_types! {
    /// The share of settled jobs audited until governance sets another
    /// (`verification.set_sample_share`).
    pub const DefaultSampleShare: Perbill = Perbill::from_percent(2);
    /// A provider whose work is found wrong loses 20% of its bond (the payer's refund, the
    /// verifiers' reward and the treasury's share come out of it).
    pub const FaultSlash: Perbill = Perbill::from_percent(20);
    /// Half of what a fault slash leaves after the refund goes to the verifiers who found it.
    pub const VerifierReward: Perbill = Perbill::from_percent(50);
    /// A verifier that answers late, or whose verdict the majority overturns, loses 1%.
    pub const VerifierSlash: Perbill = Perbill::from_percent(1);
    /// Blocks a verifier has to post its verdict: 10 minutes. Root may change it at
    /// `twox128(":VerdictTimeout:")` (a `u32`), for verifiers assigned afterwards.
    pub storage VerdictTimeout: BlockNumber = 10 * MINUTES;
    /// Blocks a provider found at fault has to contest: 10 minutes. Root may change it at
    /// `twox128(":ContestWindow:")` (a `u32`), for accusations made afterwards.
    pub storage ContestWindow: BlockNumber = 10 * MINUTES;
}

impl pallet_verification::Config for Runtime {
    type Currency = Balances;
    type Providers = Compute;
    type Adapters = Attribution;
    // Drawn in the block after the receipt's: its hash was unknown when the receipt was sent.
    type Randomness = pallet_jobs::ParentHashRandomness<Runtime>;
    type Treasury = TreasuryAccount;
    type DefaultSampleShare = DefaultSampleShare;
    type VerdictTimeout = VerdictTimeout;
    type ContestWindow = ContestWindow;
    type FaultSlash = FaultSlash;
    type VerifierReward = VerifierReward;
    type VerifierSlash = VerifierSlash;
    type MaxOffersPerBlock = ConstU32<1_024>;
    type MaxOpenAudits = ConstU32<4_096>;
    type MaxSamplesPerRedemption = ConstU32<4>;
    // The median score of a provider's last 16 confirmed audits above 1.5x the typical honest
    // error: on an H100's measured audits, P(an honest provider's median passes) <= 1.1e-8
    // per judgement at any batch size; an adapter applied at one layer only (each job inside
    // its own tolerance) is found in 99.999% of windows (docs/benchmarks.md, "Drift").
    type DriftWindow = ConstU32<16>;
    type DriftLimit = ConstU32<1_500>;
    type WeightInfo = pallet_verification::weights::SubstrateWeight<Runtime>;
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = VerificationBenchmarkHelper;
}

/// Registers benchmark providers through `pallet-compute` for `pallet-verification`'s
/// benchmarks, all serving one adapter of the default base model.
#[cfg(feature = "runtime-benchmarks")]
pub struct VerificationBenchmarkHelper;

#[cfg(feature = "runtime-benchmarks")]
impl pallet_verification::BenchmarkHelper<AccountId> for VerificationBenchmarkHelper {
    fn adapter() -> AdapterId {
        let next = pallet_attribution::NextAdapterId::<Runtime>::get();
        match next.checked_sub(1) {
            // One adapter for every benchmark run in this state.
            Some(last) if pallet_attribution::Adapters::<Runtime>::contains_key(last) => last,
            _ => <JobsBenchmarkHelper as pallet_jobs::BenchmarkHelper<AccountId>>::adapter(),
        }
    }

    fn provider(who: &AccountId, adapter: AdapterId) {
        // Any key of full order: the benchmarks never sign with it.
        use codec::Encode;
        use sp_runtime::traits::Hash;
        let seed = sp_runtime::traits::BlakeTwo256::hash(&who.encode());
        let key = sp_core::ed25519::Public::from_raw(seed.0);
        pallet_compute::benchmarking::register_eligible::<Runtime>(
            who,
            key,
            DefaultBaseModel::get(),
            adapter,
        );
    }
}
