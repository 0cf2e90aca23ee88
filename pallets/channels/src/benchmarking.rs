//! Benchmarks of `pallet-channels`, each at the worst case its weight function covers.
//!
//! Vouchers are signed inside the benchmark with a key from the keystore extension (the
//! `benchmark pallet` command and the test externality both provide one), so every redemption
//! pays for a real signature check. The number of inferences a voucher covers is a field like
//! any other: the benchmark uses a million, and nothing in `redeem` depends on it.

use super::*;
use crate::Pallet as Channels;
use alloc::vec::Vec;
use frame_benchmarking::v2::*;
use frame_support::{
    pallet_prelude::*,
    traits::fungible::{Inspect, Mutate},
};
use frame_system::{pallet_prelude::BlockNumberFor, RawOrigin};
use openledger_primitives::market::{AdapterId, DataNetId};
use sp_core::{crypto::KeyTypeId, ed25519, H256};
use sp_runtime::traits::{Saturating, Zero};

/// Sets up the world the benchmarks need; implemented by the runtime (and the mock).
pub trait BenchmarkHelper {
    /// `n` distinct adapters the settlement accepts, each at its costliest to settle (trained
    /// on as many DataNets with approved weight as the settlement allows).
    fn adapters(n: u32) -> Vec<AdapterId>;

    /// `n` distinct DataNets with approved weight, to name as retrieval context.
    fn datanets(n: u32) -> Vec<DataNetId>;
}

const KEY_TYPE: KeyTypeId = KeyTypeId(*b"olvc");

/// What each adapter of a benchmark voucher charges: large enough that every payee's share of
/// it is non-zero, whatever the split.
fn per_adapter<T: Config>() -> BalanceOf<T> {
    1_000_000_000u32.into()
}

fn funded<T: Config>(name: &'static str, index: u32) -> T::AccountId {
    let who: T::AccountId = account(name, index, 0);
    let funds = per_adapter::<T>()
        .saturating_mul(1_000u32.into())
        .saturating_add(T::Currency::minimum_balance().saturating_mul(1_000u32.into()));
    T::Currency::set_balance(&who, funds);
    who
}

/// A channel from a funded payer to a provider, with a deposit covering a full voucher, signed
/// by a fresh keystore key.
fn channel<T: Config>() -> (ChannelId, T::AccountId, T::AccountId, ed25519::Public) {
    let payer = funded::<T>("payer", 0);
    let provider = funded::<T>("provider", 0);
    let signer = sp_io::crypto::ed25519_generate(KEY_TYPE, None);
    let channel = NextChannelId::<T>::get();
    let deposit = per_adapter::<T>().saturating_mul(T::MaxAdaptersPerVoucher::get().into());
    Channels::<T>::open(RawOrigin::Signed(payer.clone()).into(), provider.clone(), deposit, signer)
        .unwrap();
    (channel, payer, provider, signer)
}

/// A voucher on `channel` naming `a` adapters and `c` context entries (spread over the
/// adapters), covering a million inferences, and its signature by `signer`.
fn signed_voucher<T: Config>(
    channel: ChannelId,
    signer: &ed25519::Public,
    a: u32,
    c: u32,
) -> (VoucherOf<T>, ed25519::Signature) {
    let adapters = T::BenchmarkHelper::adapters(a);
    let datanets = T::BenchmarkHelper::datanets(c);
    let amount = per_adapter::<T>();
    let context_amount = amount / 16u32.into();
    let adapter_list: Vec<_> =
        adapters.iter().map(|adapter| AdapterCharge { adapter: *adapter, amount }).collect();
    let contexts: Vec<_> = datanets
        .iter()
        .zip(adapters.iter().cycle())
        .map(|(datanet, adapter)| ContextCharge {
            adapter: *adapter,
            datanet: *datanet,
            amount: context_amount,
        })
        .collect();
    let voucher = VoucherOf::<T> {
        channel,
        sequence: 1,
        cumulative: amount.saturating_mul(a.into()),
        inferences: 1_000_000,
        receipts_root: H256::repeat_byte(3),
        adapters: BoundedVec::truncate_from(adapter_list),
        contexts: BoundedVec::truncate_from(contexts),
    };
    let genesis = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
    let payload = VoucherPayload::new(genesis, &voucher);
    let signature =
        sp_io::crypto::ed25519_sign(KEY_TYPE, signer, &payload.signing_bytes()).unwrap();
    (voucher, signature)
}

#[benchmarks]
mod benchmarks {
    use super::*;

    #[benchmark]
    fn open() {
        let payer = funded::<T>("payer", 0);
        let provider: T::AccountId = account("provider", 0, 0);
        let signer = sp_io::crypto::ed25519_generate(KEY_TYPE, None);

        #[extrinsic_call]
        _(RawOrigin::Signed(payer), provider, per_adapter::<T>(), signer);

        assert!(Channels::<T>::channel(0).is_ok());
    }

    #[benchmark]
    fn top_up() {
        let (channel, payer, _, _) = channel::<T>();

        #[extrinsic_call]
        _(RawOrigin::Signed(payer), channel, per_adapter::<T>());

        assert!(Channels::<T>::channel(channel).unwrap().deposit > per_adapter::<T>());
    }

    #[benchmark]
    fn rotate_signer() {
        let (channel, payer, _, _) = channel::<T>();
        let signer = sp_io::crypto::ed25519_generate(KEY_TYPE, None);

        #[extrinsic_call]
        _(RawOrigin::Signed(payer), channel, signer);

        assert_eq!(Channels::<T>::channel(channel).unwrap().signer, signer);
    }

    /// A voucher naming `a` adapters and `c` context entries, every one settled.
    #[benchmark]
    fn redeem(
        a: Linear<1, { T::MaxAdaptersPerVoucher::get() }>,
        c: Linear<0, { T::MaxContextsPerVoucher::get() }>,
    ) {
        let (channel, _, provider, signer) = channel::<T>();
        let (voucher, signature) = signed_voucher::<T>(channel, &signer, a, c);
        let caller = funded::<T>("caller", 0);

        #[extrinsic_call]
        _(RawOrigin::Signed(caller), voucher, signature);

        let record = Channels::<T>::channel(channel).unwrap();
        assert_eq!(record.sequence, 1);
        assert!(!record.redeemed.is_zero());
        assert!(T::Currency::balance(&provider) > Zero::zero());
    }

    #[benchmark]
    fn request_close() {
        let (channel, payer, _, _) = channel::<T>();

        #[extrinsic_call]
        _(RawOrigin::Signed(payer), channel);

        assert!(Channels::<T>::channel(channel).unwrap().phase != ChannelPhase::Open);
    }

    #[benchmark]
    fn finalize_close() {
        let (channel, payer, _, _) = channel::<T>();
        Channels::<T>::request_close(RawOrigin::Signed(payer.clone()).into(), channel).unwrap();
        let now = frame_system::Pallet::<T>::block_number();
        frame_system::Pallet::<T>::set_block_number(
            now.saturating_add(T::ChallengeWindow::get()).saturating_add(1u32.into()),
        );

        #[extrinsic_call]
        _(RawOrigin::Signed(payer), channel);

        assert!(Channels::<T>::channel(channel).is_err());
        assert!(TotalHeld::<T>::get().is_zero());
    }

    #[benchmark]
    fn close_by_provider() {
        let (channel, _, provider, _) = channel::<T>();

        #[extrinsic_call]
        _(RawOrigin::Signed(provider), channel);

        assert!(Channels::<T>::channel(channel).is_err());
        assert!(TotalHeld::<T>::get().is_zero());
    }

    impl_benchmark_test_suite!(Channels, crate::mock::new_test_ext(), crate::mock::Test);
}
