//! A runtime with System, Balances, the real Compute registry and Verification, for the tests.

use crate::{self as pallet_verification, RedeemedWork, SettledWork, WorkAudit};
use codec::Encode;
use frame_support::{
    assert_ok, derive_impl, parameter_types,
    traits::{ConstU128, ConstU32, ConstU64, Hooks, Randomness, VariantCountOf},
};
use openledger_primitives::market::{AdapterCatalog, AdapterId, AdapterTerms, JobId};
use openledger_primitives::service_receipt::{self, ServiceReceiptMessage, SERVICE_RECEIPT_DOMAIN};
use sp_core::{ed25519, H256};
use sp_runtime::{traits::Hash as _, BuildStorage, Perbill};

pub type AccountId = u64;
pub type Balance = u128;
type Block = frame_system::mocking::MockBlock<Test>;

frame_support::construct_runtime!(
    pub enum Test {
        System: frame_system,
        Balances: pallet_balances,
        Compute: pallet_compute,
        Verification: pallet_verification,
    }
);

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
    type Block = Block;
    type AccountId = AccountId;
    type AccountData = pallet_balances::AccountData<Balance>;
}

#[derive_impl(pallet_balances::config_preludes::TestDefaultConfig)]
impl pallet_balances::Config for Test {
    type Balance = Balance;
    type AccountStore = System;
    type ExistentialDeposit = ConstU128<1>;
    type RuntimeHoldReason = RuntimeHoldReason;
    type MaxFreezes = VariantCountOf<RuntimeFreezeReason>;
}

pub const MIN_BOND: Balance = 10_000;

parameter_types! {
    pub const SlashFraction: Perbill = Perbill::from_percent(10);
    pub const FaultSlash: Perbill = Perbill::from_percent(20);
    pub const VerifierReward: Perbill = Perbill::from_percent(50);
    pub const VerifierSlash: Perbill = Perbill::from_percent(2);
    pub const DefaultShare: Perbill = Perbill::from_percent(100);
    pub const TreasuryAccount: AccountId = TREASURY;
}

impl pallet_compute::Config for Test {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type MinProviderBond = ConstU128<MIN_BOND>;
    type UnbondingPeriod = ConstU64<10>;
    type HeartbeatTimeout = ConstU64<20>;
    type SlashFraction = SlashFraction;
    type ReputationReward = ConstU32<10_000>;
    type ReputationPenalty = ConstU32<50_000>;
    type RefusalPenalty = ConstU32<5_000>;
    type ReputationHalfLife = ConstU64<1_000>;
    type MaxProvidersPerModel = ConstU32<8>;
    type MaxBaseModels = ConstU32<4>;
    type MaxHotAdapters = ConstU32<8>;
    type MaxServedAdapters = ConstU32<8>;
    type MaxGpuNameLen = ConstU32<32>;
    type MaxPeerIdLen = ConstU32<64>;
    type MaxMultiaddrs = ConstU32<4>;
    type MaxMultiaddrLen = ConstU32<64>;
    type WeightInfo = ();
}

/// Adapter 1 runs on base model 3, adapter 2 on base model 4; no other adapter exists.
pub struct TestAdapters;
impl AdapterCatalog<Balance> for TestAdapters {
    fn adapter(adapter: AdapterId) -> Option<AdapterTerms<Balance>> {
        match adapter {
            1 => Some(AdapterTerms { base_model: 3, price_per_1k: 5 }),
            2 => Some(AdapterTerms { base_model: 4, price_per_1k: 0 }),
            _ => None,
        }
    }
}

std::thread_local! {
    /// Mixed into every draw, so tests can try other outcomes.
    pub static SEED: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// The hash of the subject, the block number and [`SEED`].
pub struct TestRandomness;
impl Randomness<H256, u64> for TestRandomness {
    fn random(subject: &[u8]) -> (H256, u64) {
        let block = System::block_number();
        let seed = SEED.with(|s| s.get());
        (sp_runtime::traits::BlakeTwo256::hash_of(&(subject, block, seed)), block)
    }
}

pub const VERDICT_TIMEOUT: u64 = 5;
pub const CONTEST_WINDOW: u64 = 4;
pub const MAX_OPEN: u32 = 160;
pub const MAX_SAMPLES: u32 = 4;
pub const DRIFT_WINDOW: u32 = 5;
pub const DRIFT_LIMIT: u32 = 1_500;

impl pallet_verification::Config for Test {
    type Currency = Balances;
    type Providers = Compute;
    type Adapters = TestAdapters;
    type Randomness = TestRandomness;
    type Treasury = TreasuryAccount;
    type DefaultSampleShare = DefaultShare;
    type VerdictTimeout = ConstU64<VERDICT_TIMEOUT>;
    type ContestWindow = ConstU64<CONTEST_WINDOW>;
    type FaultSlash = FaultSlash;
    type VerifierReward = VerifierReward;
    type VerifierSlash = VerifierSlash;
    type MaxOffersPerBlock = ConstU32<64>;
    type MaxOpenAudits = ConstU32<MAX_OPEN>;
    type MaxSamplesPerRedemption = ConstU32<MAX_SAMPLES>;
    type DriftWindow = ConstU32<DRIFT_WINDOW>;
    type DriftLimit = ConstU32<DRIFT_LIMIT>;
    type WeightInfo = ();
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = BenchmarkProviders;
}

/// Registers benchmark providers with the real compute pallet, on adapter 1's base model.
#[cfg(feature = "runtime-benchmarks")]
pub struct BenchmarkProviders;

#[cfg(feature = "runtime-benchmarks")]
impl crate::BenchmarkHelper<AccountId> for BenchmarkProviders {
    fn adapter() -> AdapterId {
        1
    }

    fn provider(who: &AccountId, adapter: AdapterId) {
        use sp_core::Pair as _;
        let key = ed25519::Pair::from_seed(&[*who as u8 ^ 0x5c; 32]).public();
        pallet_compute::benchmarking::register_eligible::<Test>(who, key, 3, adapter);
    }
}

/// The payer.
pub const ALICE: AccountId = 1;
/// Providers of base model 3; P1 serves the audited jobs in most tests.
pub const P1: AccountId = 10;
pub const P2: AccountId = 11;
pub const P3: AccountId = 12;
pub const P4: AccountId = 13;
/// A provider of base model 4 only.
pub const P9: AccountId = 19;
/// The worker account P1 authorises.
pub const WORKER: AccountId = 20;
pub const TREASURY: AccountId = 99;
pub const ENDOWMENT: Balance = 1_000_000;
pub const ACCOUNTS: [AccountId; 8] = [ALICE, P1, P2, P3, P4, P9, WORKER, TREASURY];

pub fn new_test_ext() -> sp_io::TestExternalities {
    let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
    pallet_balances::GenesisConfig::<Test> {
        balances: ACCOUNTS.iter().map(|who| (*who, ENDOWMENT)).collect(),
        ..Default::default()
    }
    .assimilate_storage(&mut storage)
    .unwrap();
    let mut ext = sp_io::TestExternalities::new(storage);
    ext.execute_with(|| System::set_block_number(1));
    ext
}

/// Run `test` in a fresh externality with P1, P2 and P3 on base model 3 and P9 on model 4,
/// then check the pallets' invariants.
pub fn build_and_execute(test: impl FnOnce()) {
    new_test_ext().execute_with(|| {
        SEED.with(|s| s.set(0));
        for who in [P1, P2, P3] {
            register(who, &[3]);
        }
        register(P9, &[4]);
        test();
        check_invariants();
    });
}

pub fn check_invariants() {
    Verification::do_try_state().expect("verification invariants hold");
    Compute::do_try_state().expect("compute invariants hold");
}

/// Register `who` for `models` with the minimum bond.
pub fn register(who: AccountId, models: &[u32]) {
    let terms = pallet_compute::ProviderTerms::<Test> {
        spec: pallet_compute::GpuSpec {
            model: b"NVIDIA H200".to_vec().try_into().unwrap(),
            memory_gib: 141,
            gpu_count: 1,
            bf16_tflops: None,
        },
        region: *b"FR",
        endpoint: pallet_compute::Endpoint {
            peer_id: vec![who as u8; 8].try_into().unwrap(),
            multiaddrs: Default::default(),
        },
        worker_key: ed25519::Public::from_raw([who as u8; 32]),
        worker_account: (who == P1).then_some(WORKER),
        base_models: models.to_vec().try_into().unwrap(),
        price_per_1k: 10,
        max_concurrent: 4,
    };
    assert_ok!(Compute::register_provider(RuntimeOrigin::signed(who), terms, MIN_BOND));
    assert_ok!(Compute::set_served_adapters(
        RuntimeOrigin::signed(who),
        who,
        vec![1, 2].try_into().unwrap()
    ));
}

/// Offer job `job` (adapter 1, served by P1, paid `charged` by Alice) for verification.
pub fn offer(job: JobId, charged: Balance) {
    offer_work(job, P1, 1, charged);
}

pub fn offer_work(job: JobId, provider: AccountId, adapter: AdapterId, charged: Balance) {
    Verification::offer(SettledWork {
        job,
        payer: ALICE,
        provider,
        adapter,
        charged,
        commitment_hash: H256::repeat_byte(job as u8),
    });
}

/// The signed bytes of a version 2 receipt of request `request` on `channel`, for adapter
/// `adapter` and `charge`, on this chain (or the chain with `genesis`).
pub fn receipt_bytes(
    channel: u64,
    request: u64,
    adapter: AdapterId,
    charge: Balance,
    genesis: Option<H256>,
) -> Vec<u8> {
    ServiceReceiptMessage {
        domain: SERVICE_RECEIPT_DOMAIN,
        genesis_hash: genesis.unwrap_or_else(|| System::block_hash(0)),
        channel,
        request,
        adapter,
        input_hash: H256::repeat_byte(1),
        output_hash: H256::repeat_byte(2),
        input_tokens: 20,
        output_tokens: 30,
        charge,
        contexts: Default::default(),
        commitment_hash: H256::repeat_byte(request as u8),
    }
    .encode()
}

/// A voucher of `channel` (sequence `sequence`, P1 paid by Alice) redeemed for `receipts`:
/// offered for verification; returns the leaves of its tree.
pub fn redeem(channel: u64, sequence: u64, receipts: &[Vec<u8>], amount: Balance) -> Vec<[u8; 32]> {
    let leaves: Vec<[u8; 32]> = receipts.iter().map(|r| service_receipt::leaf(r)).collect();
    Verification::offer_redemption(RedeemedWork {
        channel,
        sequence,
        payer: ALICE,
        provider: P1,
        receipts_root: H256(service_receipt::root(&leaves)),
        inferences: leaves.len() as u64,
        amount,
    });
    leaves
}

/// Move to block `n`, running the verification hook of each block on the way.
pub fn run_to_block(n: u64) {
    while System::block_number() < n {
        let next = System::block_number() + 1;
        System::set_block_number(next);
        Verification::on_initialize(next);
    }
}

/// Events of the verification pallet emitted so far.
pub fn events() -> Vec<crate::Event<Test>> {
    System::events()
        .into_iter()
        .filter_map(|record| match record.event {
            RuntimeEvent::Verification(event) => Some(event),
            _ => None,
        })
        .collect()
}

/// Free plus held balance of `who`.
pub fn total(who: AccountId) -> Balance {
    use frame_support::traits::fungible::{Inspect, InspectHold};
    Balances::balance(&who) + Balances::total_balance_on_hold(&who)
}

/// The bond `who` has at stake.
pub fn bond(who: AccountId) -> Balance {
    pallet_compute::ProviderStates::<Test>::get(who).map_or(0, |s| s.bond)
}
