//! A runtime with System, Balances and Attribution, for the tests.

use crate as pallet_attribution;
use frame_support::{
    derive_impl, parameter_types,
    traits::{ConstU128, ConstU32, VariantCountOf},
    PalletId,
};
use sp_runtime::BuildStorage;

pub type AccountId = u64;
pub type Balance = u128;
type Block = frame_system::mocking::MockBlock<Test>;

frame_support::construct_runtime!(
    pub enum Test {
        System: frame_system,
        Balances: pallet_balances,
        Attribution: pallet_attribution,
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
    type ExistentialDeposit = ConstU128<ED>;
    type RuntimeHoldReason = RuntimeHoldReason;
    type MaxFreezes = VariantCountOf<RuntimeFreezeReason>;
}

pub const ED: Balance = 10;
pub const TREASURY: AccountId = 999;
pub const DATANET_DEPOSIT: Balance = 1_000;
pub const CONTRIBUTION_DEPOSIT: Balance = 100;
pub const ADAPTER_BASE: Balance = 500;
pub const ADAPTER_PER_BYTE: Balance = 2;
pub const MAX_WEIGHT: u128 = 1_000_000_000_000;

parameter_types! {
    pub const AttributionPalletId: PalletId = PalletId(*b"ol/attrb");
    pub const Treasury: AccountId = TREASURY;
}

impl pallet_attribution::Config for Test {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type AdminOrigin = frame_system::EnsureRoot<AccountId>;
    type PalletId = AttributionPalletId;
    type Treasury = Treasury;
    type DataNetDeposit = ConstU128<DATANET_DEPOSIT>;
    type ContributionDeposit = ConstU128<CONTRIBUTION_DEPOSIT>;
    type AdapterDepositBase = ConstU128<ADAPTER_BASE>;
    type AdapterDepositPerByte = ConstU128<ADAPTER_PER_BYTE>;
    type MaxMetadataLen = ConstU32<64>;
    type MaxCurators = ConstU32<4>;
    type MaxTrainingDataNets = ConstU32<4>;
    type MaxContextDataNets = ConstU32<4>;
    type MaxRecordWeight = ConstU128<MAX_WEIGHT>;
    type MaxRank = ConstU32<256>;
    type WeightInfo = ();
}

/// Accounts 1..=20 hold 10^12 each; the payer 100 holds 10^15.
pub fn new_test_ext() -> sp_io::TestExternalities {
    let mut t = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
    let mut balances: Vec<(AccountId, Balance)> =
        (1..=20).map(|a| (a, 1_000_000_000_000)).collect();
    balances.push((PAYER, 1_000_000_000_000_000));
    pallet_balances::GenesisConfig::<Test> { balances, ..Default::default() }
        .assimilate_storage(&mut t)
        .unwrap();
    pallet_attribution::GenesisConfig::<Test>::default().assimilate_storage(&mut t).unwrap();
    let mut ext = sp_io::TestExternalities::new(t);
    ext.execute_with(|| System::set_block_number(1));
    ext
}

pub const PAYER: AccountId = 100;

/// Runs `test`, then checks the pallet's invariants.
pub fn build_and_execute(test: impl FnOnce()) {
    new_test_ext().execute_with(|| {
        test();
        Attribution::do_try_state().expect("attribution invariants hold");
    });
}
