//! A runtime with System, Balances, the real Compute registry and Jobs, for the tests.

use crate::{self as pallet_jobs, Receipt, ReceiptPayload};
use ed25519_dalek::{Signer, SigningKey};
use frame_support::{
    assert_ok, derive_impl, parameter_types,
    traits::{ConstU128, ConstU32, ConstU64, VariantCountOf},
};
use openledger_primitives::market::{AdapterCatalog, AdapterId, AdapterTerms, DataNetShare, JobId};
use sp_core::{ed25519, H256};
use sp_runtime::{BuildStorage, Perbill};

pub type AccountId = u64;
pub type Balance = u128;
type Block = frame_system::mocking::MockBlock<Test>;

frame_support::construct_runtime!(
    pub enum Test {
        System: frame_system,
        Balances: pallet_balances,
        Compute: pallet_compute,
        Jobs: pallet_jobs,
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
pub const UNBONDING: u64 = 10;
pub const HEARTBEAT_TIMEOUT: u64 = 20;
pub const ACK_TIMEOUT: u64 = 3;
pub const JOB_TIMEOUT: u64 = 5;

parameter_types! {
    pub const SlashFraction: Perbill = Perbill::from_percent(10);
}

impl pallet_compute::Config for Test {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type MinProviderBond = ConstU128<MIN_BOND>;
    type UnbondingPeriod = ConstU64<UNBONDING>;
    type HeartbeatTimeout = ConstU64<HEARTBEAT_TIMEOUT>;
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

/// Adapter 1 runs on base model 3 at 5 per 1k tokens; adapter 2 on base model 4 for free.
pub struct TestAdapters;
impl AdapterCatalog<Balance> for TestAdapters {
    fn adapter(adapter: AdapterId) -> Option<AdapterTerms<Balance>> {
        match adapter {
            1 => Some(AdapterTerms { base_model: 3, price_per_1k: ADAPTER_PRICE }),
            2 => Some(AdapterTerms { base_model: 4, price_per_1k: 0 }),
            _ => None,
        }
    }
}
pub const ADAPTER_PRICE: Balance = 5;

std::thread_local! {
    /// The retrieval context of each settlement, in order.
    pub static SETTLED_CONTEXTS: core::cell::RefCell<Vec<(JobId, Vec<DataNetShare>)>> =
        const { core::cell::RefCell::new(Vec::new()) };
}

/// Pays the provider (as [`pallet_jobs::PayProvider`]) and records the context it was given.
pub struct RecordingSettlement;

impl openledger_primitives::market::Settlement<AccountId, Balance> for RecordingSettlement {
    fn settle(
        job: JobId,
        payer: &AccountId,
        provider: &AccountId,
        adapter: AdapterId,
        charge: Balance,
        context: &[DataNetShare],
    ) -> Result<frame_support::weights::Weight, sp_runtime::DispatchError> {
        SETTLED_CONTEXTS.with(|c| c.borrow_mut().push((job, context.to_vec())));
        pallet_jobs::PayProvider::<Balances>::settle(job, payer, provider, adapter, charge, context)
    }

    fn settle_voucher(
        channel: openledger_primitives::voucher::ChannelId,
        sequence: u64,
        payer: &AccountId,
        provider: &AccountId,
        adapter: AdapterId,
        charge: Balance,
        context: &[DataNetShare],
    ) -> Result<frame_support::weights::Weight, sp_runtime::DispatchError> {
        pallet_jobs::PayProvider::<Balances>::settle_voucher(
            channel, sequence, payer, provider, adapter, charge, context,
        )
    }

    fn settle_weight() -> frame_support::weights::Weight {
        pallet_jobs::PayProvider::<Balances>::settle_weight()
    }
}

std::thread_local! {
    /// Every settled job offered for verification, in order.
    pub static OFFERED: core::cell::RefCell<Vec<openledger_primitives::market::SettledWork<AccountId, Balance>>> =
        const { core::cell::RefCell::new(Vec::new()) };
}

/// Records what the marketplace offers for verification.
pub struct RecordingAudit;

impl openledger_primitives::market::WorkAudit<AccountId, Balance> for RecordingAudit {
    fn offer(
        work: openledger_primitives::market::SettledWork<AccountId, Balance>,
    ) -> frame_support::weights::Weight {
        OFFERED.with(|o| o.borrow_mut().push(work));
        Self::offer_weight()
    }

    fn offer_weight() -> frame_support::weights::Weight {
        frame_support::weights::Weight::from_parts(1_000, 0)
    }

    fn offer_redemption(
        _work: openledger_primitives::market::RedeemedWork<AccountId, Balance>,
    ) -> frame_support::weights::Weight {
        Self::offer_weight()
    }
}

impl pallet_jobs::Config for Test {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type Providers = Compute;
    type Adapters = TestAdapters;
    type Settlement = RecordingSettlement;
    type Audit = RecordingAudit;
    type Randomness = pallet_jobs::ParentHashRandomness<Test>;
    type AckTimeout = ConstU64<ACK_TIMEOUT>;
    type JobTimeout = ConstU64<JOB_TIMEOUT>;
    type MaxReceiptsPerBatch = ConstU32<16>;
    type MaxPeerIdLen = ConstU32<64>;
    type WeightInfo = ();
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = BenchmarkProviders;
}

/// Registers benchmark providers with the real compute pallet.
#[cfg(feature = "runtime-benchmarks")]
pub struct BenchmarkProviders;

#[cfg(feature = "runtime-benchmarks")]
impl crate::BenchmarkHelper<AccountId> for BenchmarkProviders {
    fn adapter() -> AdapterId {
        1
    }

    fn provider(who: &AccountId, worker_key: ed25519::Public, adapter: AdapterId) {
        pallet_compute::benchmarking::register_eligible::<Test>(who, worker_key, 3, adapter);
    }
}

/// Users.
pub const ALICE: AccountId = 1;
pub const BOB: AccountId = 2;
/// Providers; each one's worker key is derived from its account id.
pub const P1: AccountId = 10;
pub const P2: AccountId = 11;
pub const P3: AccountId = 12;
/// The worker account P1 authorises.
pub const WORKER: AccountId = 20;
pub const ENDOWMENT: Balance = 1_000_000;

pub fn new_test_ext() -> sp_io::TestExternalities {
    let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
    pallet_balances::GenesisConfig::<Test> {
        balances: [ALICE, BOB, P1, P2, P3, WORKER].iter().map(|who| (*who, ENDOWMENT)).collect(),
        ..Default::default()
    }
    .assimilate_storage(&mut storage)
    .unwrap();
    let mut ext = sp_io::TestExternalities::new(storage);
    // Benchmarks sign receipts with keys from the keystore.
    ext.register_extension(sp_keystore::KeystoreExt::new(
        sp_keystore::testing::MemoryKeystore::new(),
    ));
    ext.execute_with(|| System::set_block_number(1));
    ext
}

/// Run `test` in a fresh externality, then check both pallets' invariants.
pub fn build_and_execute(test: impl FnOnce()) {
    new_test_ext().execute_with(|| {
        test();
        check_invariants();
    });
}

pub fn check_invariants() {
    Jobs::do_try_state().expect("jobs invariants hold");
    Compute::do_try_state().expect("compute invariants hold");
}

/// The worker signing key of provider `who`.
pub fn signing_key(who: AccountId) -> SigningKey {
    SigningKey::from_bytes(&[who as u8; 32])
}

/// Register `who` serving `models` at `price` per 1k tokens, with `max_concurrent` slots.
pub fn register(who: AccountId, models: &[u32], price: Balance, max_concurrent: u32) {
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
        worker_key: ed25519::Public::from_raw(signing_key(who).verifying_key().to_bytes()),
        worker_account: (who == P1).then_some(WORKER),
        base_models: models.to_vec().try_into().unwrap(),
        price_per_1k: price,
        max_concurrent,
    };
    assert_ok!(Compute::register_provider(RuntimeOrigin::signed(who), terms, MIN_BOND));
    serve(who, &[1, 2]);
}

/// Declare that `who` serves `adapters` (replacing its declaration).
pub fn serve(who: AccountId, adapters: &[AdapterId]) {
    assert_ok!(Compute::set_served_adapters(
        RuntimeOrigin::signed(who),
        who,
        adapters.to_vec().try_into().unwrap()
    ));
}

pub fn genesis_hash() -> H256 {
    System::block_hash(0)
}

/// A receipt for `job` of provider `provider` with `adapter`, signed with `key`.
pub fn receipt_signed_by(
    key: &SigningKey,
    provider: AccountId,
    adapter: AdapterId,
    job: JobId,
    input_tokens: u32,
    output_tokens: u32,
) -> Receipt {
    let mut receipt = Receipt {
        job,
        output_hash: H256::repeat_byte(0x0f),
        input_tokens,
        output_tokens,
        context: Default::default(),
        commitment_hash: H256::repeat_byte(0xc0),
        signature: ed25519::Signature::from_raw([0; 64]),
    };
    sign(key, provider, adapter, &mut receipt);
    receipt
}

/// Signs `receipt` (for a job of `provider` with `adapter`) with `key`.
pub fn sign(key: &SigningKey, provider: AccountId, adapter: AdapterId, receipt: &mut Receipt) {
    let payload = ReceiptPayload::new(genesis_hash(), provider, adapter, receipt);
    receipt.signature = ed25519::Signature::from_raw(key.sign(&payload.signing_bytes()).to_bytes());
}

/// A valid receipt for open job `job` naming retrieval `context`, signed by its provider's
/// worker.
pub fn receipt_with_context(
    job: JobId,
    input_tokens: u32,
    output_tokens: u32,
    context: Vec<DataNetShare>,
) -> Receipt {
    let record = crate::Jobs::<Test>::get(job).expect("job is open");
    let mut receipt = receipt(job, input_tokens, output_tokens);
    receipt.context = context.try_into().expect("context within bounds");
    sign(&signing_key(record.provider), record.provider, record.adapter, &mut receipt);
    receipt
}

/// `submit_receipts` from Bob, its post-dispatch weight dropped so errors compare by name.
pub fn submit_receipts(receipts: Vec<Receipt>) -> sp_runtime::DispatchResult {
    Jobs::submit_receipts(RuntimeOrigin::signed(BOB), receipts.try_into().expect("batch fits"))
        .map(|_| ())
        .map_err(|e| e.error)
}

/// A valid receipt for open job `job`, signed by its provider's worker.
pub fn receipt(job: JobId, input_tokens: u32, output_tokens: u32) -> Receipt {
    let record = crate::Jobs::<Test>::get(job).expect("job is open");
    receipt_signed_by(
        &signing_key(record.provider),
        record.provider,
        record.adapter,
        job,
        input_tokens,
        output_tokens,
    )
}

pub fn submit(
    who: AccountId,
    adapter: AdapterId,
    max_output_tokens: u32,
    max_fee: Balance,
) -> JobId {
    let job = crate::NextJobId::<Test>::get();
    assert_ok!(Jobs::submit_job(
        RuntimeOrigin::signed(who),
        adapter,
        H256::repeat_byte(0xab),
        max_output_tokens,
        max_fee,
        vec![0x12; 4]
    ));
    job
}

/// Events of the jobs pallet emitted so far.
pub fn job_events() -> Vec<crate::Event<Test>> {
    System::events()
        .into_iter()
        .filter_map(|record| match record.event {
            RuntimeEvent::Jobs(event) => Some(event),
            _ => None,
        })
        .collect()
}

pub fn run_to_block(n: u64) {
    System::set_block_number(n);
}
