//! A runtime with System, Balances, the real Attribution pallet (the settlement) and Channels,
//! for the tests.

use crate::{self as pallet_channels, AdapterCharge, ContextCharge, VoucherOf, VoucherPayload};
use ed25519_dalek::{Signer, SigningKey};
use frame_support::{
    assert_ok, derive_impl, parameter_types,
    traits::{
        fungible::{Inspect, InspectHold},
        ConstU128, ConstU32, ConstU64, VariantCountOf,
    },
    PalletId,
};
use openledger_primitives::market::{AdapterId, DataNetId, DataNetShare};
use sp_core::{ed25519, H256};
use sp_runtime::{BuildStorage, Permill};

pub type AccountId = u64;
pub type Balance = u128;
type Block = frame_system::mocking::MockBlock<Test>;

frame_support::construct_runtime!(
    pub enum Test {
        System: frame_system,
        Balances: pallet_balances,
        Attribution: pallet_attribution,
        Channels: pallet_channels,
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

pub const ED: Balance = 1;
pub const TREASURY: AccountId = 999;

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
    type DataNetDeposit = ConstU128<100>;
    type ContributionDeposit = ConstU128<10>;
    type AdapterDepositBase = ConstU128<50>;
    type AdapterDepositPerByte = ConstU128<0>;
    type MaxMetadataLen = ConstU32<16>;
    type MaxCurators = ConstU32<4>;
    type MaxTrainingDataNets = ConstU32<4>;
    type MaxContextDataNets = ConstU32<MAX_CONTEXTS>;
    type MaxRecordWeight = ConstU128<1_000_000>;
    type MaxRank = ConstU32<256>;
    type WeightInfo = ();
}

pub const CHALLENGE_WINDOW: u64 = 10;
pub const MAX_ADAPTERS: u32 = 4;
pub const MAX_CONTEXTS: u32 = 4;

thread_local! {
    /// Every redemption offered for verification, in order.
    pub static OFFERED: core::cell::RefCell<Vec<openledger_primitives::market::RedeemedWork<AccountId, Balance>>> =
        const { core::cell::RefCell::new(Vec::new()) };
}

/// Records what redemptions offer for verification.
pub struct RecordingAudit;

impl openledger_primitives::market::WorkAudit<AccountId, Balance> for RecordingAudit {
    fn offer(
        _work: openledger_primitives::market::SettledWork<AccountId, Balance>,
    ) -> frame_support::weights::Weight {
        Self::offer_weight()
    }

    fn offer_weight() -> frame_support::weights::Weight {
        frame_support::weights::Weight::from_parts(1_000, 0)
    }

    fn offer_redemption(
        work: openledger_primitives::market::RedeemedWork<AccountId, Balance>,
    ) -> frame_support::weights::Weight {
        OFFERED.with(|o| o.borrow_mut().push(work));
        Self::offer_weight()
    }
}

impl pallet_channels::Config for Test {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type Settlement = Attribution;
    type Audit = RecordingAudit;
    type ChallengeWindow = ConstU64<CHALLENGE_WINDOW>;
    type MaxAdaptersPerVoucher = ConstU32<MAX_ADAPTERS>;
    type MaxContextsPerVoucher = ConstU32<MAX_CONTEXTS>;
    type WeightInfo = ();
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = BenchmarkWorld;
}

/// Payers.
pub const ALICE: AccountId = 1;
pub const BOB: AccountId = 2;
/// Providers.
pub const P1: AccountId = 10;
pub const P2: AccountId = 11;
/// Owners of adapters 0 and 1.
pub const OWNER_A: AccountId = 20;
pub const OWNER_B: AccountId = 21;
/// Owner of the DataNets, and their one contributor.
pub const CURATOR: AccountId = 30;
/// Someone who redeems on a provider's behalf.
pub const RELAYER: AccountId = 40;
pub const ENDOWMENT: Balance = 10_000_000;
pub const ACCOUNTS: [AccountId; 9] =
    [ALICE, BOB, P1, P2, OWNER_A, OWNER_B, CURATOR, RELAYER, TREASURY];

/// Adapter 0 (owner A) trained on DataNet 0; adapter 1 (owner B) on DataNet 1. DataNets 2
/// and 3 exist for retrieval context only. Every DataNet has one approved record.
pub const ADAPTER_A: AdapterId = 0;
pub const ADAPTER_B: AdapterId = 1;
pub const CONTEXT_1: DataNetId = 2;
pub const CONTEXT_2: DataNetId = 3;

pub fn new_test_ext() -> sp_io::TestExternalities {
    let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
    pallet_balances::GenesisConfig::<Test> {
        balances: ACCOUNTS.iter().map(|who| (*who, ENDOWMENT)).collect(),
        ..Default::default()
    }
    .assimilate_storage(&mut storage)
    .unwrap();
    pallet_attribution::GenesisConfig::<Test>::default().assimilate_storage(&mut storage).unwrap();
    let mut ext = sp_io::TestExternalities::new(storage);
    // Benchmarks sign vouchers with keys from the keystore.
    ext.register_extension(sp_keystore::KeystoreExt::new(
        sp_keystore::testing::MemoryKeystore::new(),
    ));
    ext.execute_with(|| {
        System::set_block_number(1);
        for n in 0..4u8 {
            datanet(n);
        }
        adapter(OWNER_A, 0);
        adapter(OWNER_B, 1);
    });
    ext
}

/// A DataNet owned by the curator with one approved record.
fn datanet(n: u8) -> DataNetId {
    let id = pallet_attribution::NextDataNetId::<Test>::get();
    let origin = || RuntimeOrigin::signed(CURATOR);
    assert_ok!(Attribution::create_datanet(origin(), Default::default()));
    assert_ok!(Attribution::contribute(origin(), id, H256::repeat_byte(n), 1_000));
    assert_ok!(Attribution::approve_contribution(origin(), id, H256::repeat_byte(n)));
    id
}

/// An adapter of `owner` trained on DataNet `training` alone.
fn adapter(owner: AccountId, training: DataNetId) -> AdapterId {
    let id = pallet_attribution::NextAdapterId::<Test>::get();
    assert_ok!(Attribution::register_adapter(
        RuntimeOrigin::signed(owner),
        1,
        H256::repeat_byte(7),
        16,
        pallet_attribution::target::ALL,
        5,
        vec![DataNetShare::new(training, Permill::one())].try_into().unwrap(),
    ));
    id
}

/// Run `test` in a fresh externality, then check the invariants.
pub fn build_and_execute(test: impl FnOnce()) {
    new_test_ext().execute_with(|| {
        let issuance = Balances::total_issuance();
        test();
        check_invariants(issuance);
    });
}

/// The pallet's `try_state`, attribution's accounting, every account's hold against the
/// channels it pays for, and OPEN
/// neither created nor destroyed: total issuance is `issuance` and equals the sum of every
/// account's balance (free and held).
pub fn check_invariants(issuance: Balance) {
    Channels::do_try_state().expect("channels invariants hold");
    // Attribution's own `try_state` is compiled for its tests only; its first invariant, which
    // every settlement must keep: the pallet account holds exactly the DataNets' balances plus
    // its existential deposit.
    let datanets: Balance =
        pallet_attribution::DataNets::<Test>::iter().map(|(_, d)| d.balance).sum();
    assert_eq!(
        Balances::balance(&Attribution::account_id()),
        datanets + ED,
        "attribution's account differs from its DataNets' balances"
    );
    assert_eq!(Balances::total_issuance(), issuance, "OPEN created or destroyed");
    let sum: Balance = frame_system::Account::<Test>::iter()
        .map(|(_, info)| info.data.free + info.data.reserved)
        .sum();
    assert_eq!(sum, issuance, "balances do not add up to the issuance");
    let held_by_channels: Balance = ACCOUNTS
        .iter()
        .map(|who| {
            Balances::balance_on_hold(&pallet_channels::HoldReason::ChannelDeposit.into(), who)
        })
        .sum();
    assert_eq!(held_by_channels, crate::TotalHeld::<Test>::get(), "stray channel holds");
}

/// The signing key of signer number `n`.
pub fn signing_key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub fn public(key: &SigningKey) -> ed25519::Public {
    ed25519::Public::from_raw(key.verifying_key().to_bytes())
}

pub fn genesis_hash() -> H256 {
    System::block_hash(0)
}

/// Signs `voucher` with `key` for the chain whose genesis hash is `genesis`.
pub fn sign_for(key: &SigningKey, genesis: H256, voucher: &VoucherOf<Test>) -> ed25519::Signature {
    let payload = VoucherPayload::new(genesis, voucher);
    ed25519::Signature::from_raw(key.sign(&payload.signing_bytes()).to_bytes())
}

/// Signs `voucher` with `key` for this chain.
pub fn sign(key: &SigningKey, voucher: &VoucherOf<Test>) -> ed25519::Signature {
    sign_for(key, genesis_hash(), voucher)
}

/// A voucher on `channel` with `sequence`, `cumulative`, and the breakdown given as
/// (adapter, amount) and (adapter, DataNet, amount) lists.
pub fn voucher(
    channel: u64,
    sequence: u64,
    cumulative: Balance,
    adapters: &[(AdapterId, Balance)],
    contexts: &[(AdapterId, DataNetId, Balance)],
) -> VoucherOf<Test> {
    VoucherOf::<Test> {
        channel,
        sequence,
        cumulative,
        inferences: 1_000,
        receipts_root: H256::repeat_byte(sequence as u8),
        adapters: adapters
            .iter()
            .map(|(adapter, amount)| AdapterCharge { adapter: *adapter, amount: *amount })
            .collect::<Vec<_>>()
            .try_into()
            .expect("adapters within bounds"),
        contexts: contexts
            .iter()
            .map(|(adapter, datanet, amount)| ContextCharge {
                adapter: *adapter,
                datanet: *datanet,
                amount: *amount,
            })
            .collect::<Vec<_>>()
            .try_into()
            .expect("contexts within bounds"),
    }
}

/// Open a channel from `payer` to `provider` with `deposit`, signed by signer key 1.
pub fn open(payer: AccountId, provider: AccountId, deposit: Balance) -> u64 {
    let channel = crate::NextChannelId::<Test>::get();
    assert_ok!(Channels::open(
        RuntimeOrigin::signed(payer),
        provider,
        deposit,
        public(&signing_key(1))
    ));
    channel
}

/// `redeem` from the relayer, its post-dispatch weight dropped so errors compare by name.
pub fn redeem(
    voucher: VoucherOf<Test>,
    signature: ed25519::Signature,
) -> sp_runtime::DispatchResult {
    Channels::redeem(RuntimeOrigin::signed(RELAYER), voucher, signature)
        .map(|_| ())
        .map_err(|e| e.error)
}

/// `voucher` signed by signer key 1 and redeemed.
pub fn redeem_signed(voucher: VoucherOf<Test>) -> sp_runtime::DispatchResult {
    let signature = sign(&signing_key(1), &voucher);
    redeem(voucher, signature)
}

/// Free balance of `who`.
pub fn free(who: AccountId) -> Balance {
    Balances::balance(&who)
}

/// What the channels pallet holds from `who`.
pub fn held(who: AccountId) -> Balance {
    Balances::balance_on_hold(&pallet_channels::HoldReason::ChannelDeposit.into(), &who)
}

/// What contributors of DataNet `d` have been credited, not yet claimed.
pub fn datanet_balance(d: DataNetId) -> Balance {
    pallet_attribution::DataNets::<Test>::get(d).map(|d| d.balance).unwrap_or(0)
}

/// Events of the channels pallet emitted so far.
pub fn channel_events() -> Vec<crate::Event<Test>> {
    System::events()
        .into_iter()
        .filter_map(|record| match record.event {
            RuntimeEvent::Channels(event) => Some(event),
            _ => None,
        })
        .collect()
}

pub fn run_to_block(n: u64) {
    System::set_block_number(n);
}

/// Adapters and context DataNets for the benchmarks, through the real attribution pallet.
#[cfg(feature = "runtime-benchmarks")]
pub struct BenchmarkWorld;

#[cfg(feature = "runtime-benchmarks")]
impl crate::BenchmarkHelper for BenchmarkWorld {
    // Self-contained: between component runs the benchmark wipes storage back to genesis,
    // which drops the DataNets and adapters `new_test_ext` sets up.
    fn adapters(n: u32) -> Vec<AdapterId> {
        (0..n).map(|i| adapter(OWNER_A, datanet(0x20 + i as u8))).collect()
    }

    fn datanets(n: u32) -> Vec<DataNetId> {
        (0..n).map(|i| datanet(0x40 + i as u8)).collect()
    }
}
