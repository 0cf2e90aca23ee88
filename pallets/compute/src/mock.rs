//! A runtime with System, Balances and Compute, for the tests.

use crate::{self as pallet_compute, Endpoint, GpuSpec, ProviderTerms};
use frame_support::{
    derive_impl, parameter_types,
    traits::{ConstU32, ConstU64, VariantCountOf},
};
use sp_core::ed25519;
use sp_runtime::{BuildStorage, Perbill};

pub type AccountId = u64;
pub type Balance = u128;
type Block = frame_system::mocking::MockBlock<Test>;

frame_support::construct_runtime!(
    pub enum Test {
        System: frame_system,
        Balances: pallet_balances,
        Compute: pallet_compute,
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
    type ExistentialDeposit = frame_support::traits::ConstU128<1>;
    type RuntimeHoldReason = RuntimeHoldReason;
    type MaxFreezes = VariantCountOf<RuntimeFreezeReason>;
}

pub const MIN_BOND: Balance = 1_000;
pub const UNBONDING: u64 = 10;
pub const HEARTBEAT_TIMEOUT: u64 = 5;
pub const REWARD: u32 = 10_000;
pub const PENALTY: u32 = 50_000;
pub const REFUSAL_PENALTY: u32 = 5_000;
pub const MAX_SERVED: u32 = 4;
pub const HALF_LIFE: u64 = 100;

parameter_types! {
    pub const SlashFraction: Perbill = Perbill::from_percent(10);
}

impl pallet_compute::Config for Test {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type MinProviderBond = frame_support::traits::ConstU128<MIN_BOND>;
    type UnbondingPeriod = ConstU64<UNBONDING>;
    type HeartbeatTimeout = ConstU64<HEARTBEAT_TIMEOUT>;
    type SlashFraction = SlashFraction;
    type ReputationReward = ConstU32<REWARD>;
    type ReputationPenalty = ConstU32<PENALTY>;
    type RefusalPenalty = ConstU32<REFUSAL_PENALTY>;
    type ReputationHalfLife = ConstU64<HALF_LIFE>;
    type MaxProvidersPerModel = ConstU32<3>;
    type MaxBaseModels = ConstU32<4>;
    type MaxHotAdapters = ConstU32<8>;
    type MaxServedAdapters = ConstU32<MAX_SERVED>;
    type MaxGpuNameLen = ConstU32<32>;
    type MaxPeerIdLen = ConstU32<64>;
    type MaxMultiaddrs = ConstU32<4>;
    type MaxMultiaddrLen = ConstU32<64>;
    type WeightInfo = ();
}

/// Accounts endowed at genesis, each with `ENDOWMENT`.
pub const ENDOWED: [AccountId; 6] = [1, 2, 3, 4, 5, 6];
pub const ENDOWMENT: Balance = 1_000_000;

/// A worker key that is a valid, non-weak ed25519 public key for `seed`.
pub fn worker_key(seed: u8) -> ed25519::Public {
    use sp_core::Pair;
    ed25519::Pair::from_seed(&[seed; 32]).public()
}

/// Terms serving `models` at `price`, with a worker key derived from `seed`.
pub fn terms(seed: u8, models: &[u32], price: Balance) -> ProviderTerms<Test> {
    ProviderTerms {
        spec: GpuSpec {
            model: b"NVIDIA H100 80GB HBM3".to_vec().try_into().unwrap(),
            memory_gib: 80,
            gpu_count: 8,
            bf16_tflops: Some(989),
        },
        region: *b"DE",
        endpoint: Endpoint {
            peer_id: vec![0x00, 0x24, seed].try_into().unwrap(),
            multiaddrs: vec![b"/ip4/10.0.0.1/tcp/30333".to_vec().try_into().unwrap()]
                .try_into()
                .unwrap(),
        },
        worker_key: worker_key(seed),
        worker_account: None,
        base_models: models.to_vec().try_into().unwrap(),
        price_per_1k: price,
        max_concurrent: 2,
    }
}

pub fn new_test_ext() -> sp_io::TestExternalities {
    let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
    pallet_balances::GenesisConfig::<Test> {
        balances: ENDOWED.iter().map(|who| (*who, ENDOWMENT)).collect(),
        ..Default::default()
    }
    .assimilate_storage(&mut storage)
    .unwrap();
    let mut ext = sp_io::TestExternalities::new(storage);
    ext.execute_with(|| System::set_block_number(1));
    ext
}

/// Run `test` in a fresh externality, then check the pallet's invariants.
pub fn build_and_execute(test: impl FnOnce()) {
    new_test_ext().execute_with(|| {
        test();
        Compute::do_try_state().expect("invariants hold after the test");
    });
}

/// Events of this pallet emitted so far.
pub fn compute_events() -> Vec<crate::Event<Test>> {
    System::events()
        .into_iter()
        .filter_map(|record| match record.event {
            RuntimeEvent::Compute(event) => Some(event),
            _ => None,
        })
        .collect()
}

pub fn run_to_block(n: u64) {
    System::set_block_number(n);
}
