//! Opening, redeeming and closing, queries for the runtime API, and the storage invariants.
// The pallet's logic never panics: no unwrap, expect, indexing or unchecked arithmetic. (The
// crate as a whole cannot deny them: FRAME's macros expand to code that uses them.)
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::{
    pallet::*, BalanceOf, Channel, ChannelPhase, ChannelStatus, VoucherOf, VoucherPayload,
};
use alloc::{collections::btree_map::BTreeMap, vec::Vec};
use frame_support::{
    pallet_prelude::*,
    traits::{fungible::MutateHold, tokens::Precision},
};
use frame_system::pallet_prelude::BlockNumberFor;
use openledger_primitives::{
    market::{AdapterId, DataNetShare, RedeemedWork, Settlement, WorkAudit},
    receipt::{is_canonical_signature, is_small_order_encoding},
    voucher::ChannelId,
};
use sp_core::ed25519;
use sp_runtime::{
    traits::{CheckedAdd, Saturating, UniqueSaturatedInto, Zero},
    ArithmeticError, DispatchError, Permill,
};

use crate::weights::WeightInfo;

/// One adapter's part of a voucher, checked: its amount and its context shares.
struct AdapterPayment {
    adapter: AdapterId,
    amount: u128,
    context: Vec<DataNetShare>,
}

impl<T: Config> Pallet<T> {
    /// The declared weight of `redeem` for a voucher naming `adapters` adapters and `contexts`
    /// context entries: the pallet's own measured cost plus a worst-case settlement per adapter.
    pub fn redeem_weight(adapters: u32, contexts: u32) -> Weight {
        T::WeightInfo::redeem(adapters, contexts)
            .saturating_add(T::Settlement::settle_weight().saturating_mul(adapters.into()))
            .saturating_add(T::Audit::offer_weight())
    }

    /// Refuse small-order signer keys (see `openledger_primitives::receipt`).
    pub(crate) fn ensure_valid_signer(signer: &ed25519::Public) -> DispatchResult {
        ensure!(!is_small_order_encoding(&signer.0), Error::<T>::BadSigner);
        Ok(())
    }

    /// The open or closing channel `channel`, or the error saying why there is none.
    pub(crate) fn channel(channel: ChannelId) -> Result<Channel<T>, DispatchError> {
        Channels::<T>::get(channel).ok_or_else(|| {
            if channel < NextChannelId::<T>::get() {
                Error::<T>::ChannelClosed.into()
            } else {
                Error::<T>::UnknownChannel.into()
            }
        })
    }

    /// `channel`, if `who` is its payer and it is not closing.
    pub(crate) fn payers_open_channel(
        channel: ChannelId,
        who: &T::AccountId,
    ) -> Result<Channel<T>, DispatchError> {
        let record = Self::channel(channel)?;
        ensure!(record.payer == *who, Error::<T>::NotPayer);
        ensure!(record.phase == ChannelPhase::Open, Error::<T>::ChannelClosing);
        Ok(record)
    }

    pub(crate) fn do_open(
        payer: T::AccountId,
        provider: T::AccountId,
        deposit: BalanceOf<T>,
        signer: ed25519::Public,
    ) -> DispatchResult {
        ensure!(!deposit.is_zero(), Error::<T>::ZeroAmount);
        Self::ensure_valid_signer(&signer)?;
        let channel = NextChannelId::<T>::get();
        T::Currency::hold(&HoldReason::ChannelDeposit.into(), &payer, deposit)?;
        NextChannelId::<T>::put(channel.checked_add(1).ok_or(ArithmeticError::Overflow)?);
        TotalHeld::<T>::try_mutate(|total| -> DispatchResult {
            *total = total.checked_add(&deposit).ok_or(ArithmeticError::Overflow)?;
            Ok(())
        })?;
        Channels::<T>::insert(
            channel,
            Channel {
                payer: payer.clone(),
                provider: provider.clone(),
                signer,
                deposit,
                redeemed: Zero::zero(),
                sequence: 0,
                receipts_root: Default::default(),
                inferences: 0,
                phase: ChannelPhase::Open,
            },
        );
        Self::deposit_event(Event::ChannelOpened { channel, payer, provider, signer, deposit });
        Ok(())
    }

    /// Check `voucher` against its channel and pay its increment through the settlement.
    ///
    /// The call is transactional: on any error nothing of it persists.
    pub(crate) fn do_redeem(
        voucher: VoucherOf<T>,
        signature: ed25519::Signature,
    ) -> DispatchResultWithPostInfo {
        let mut record = Self::channel(voucher.channel)?;
        if let ChannelPhase::Closing { until } = record.phase {
            ensure!(
                frame_system::Pallet::<T>::block_number() <= until,
                Error::<T>::ChallengeWindowEnded
            );
        }
        ensure!(voucher.sequence > record.sequence, Error::<T>::StaleSequence);
        ensure!(voucher.cumulative >= record.redeemed, Error::<T>::CumulativeBelowRedeemed);
        ensure!(voucher.cumulative > record.redeemed, Error::<T>::NothingToRedeem);
        ensure!(voucher.cumulative <= record.deposit, Error::<T>::ExceedsDeposit);
        let increment = voucher.cumulative.saturating_sub(record.redeemed);
        let payments = Self::breakdown(&voucher, increment)?;

        ensure!(is_canonical_signature(&signature), Error::<T>::MalformedSignature);
        let genesis_hash = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
        let payload = VoucherPayload::new(genesis_hash, &voucher);
        ensure!(
            sp_io::crypto::ed25519_verify(&signature, &payload.signing_bytes(), &record.signer),
            Error::<T>::BadSignature
        );

        T::Currency::release(
            &HoldReason::ChannelDeposit.into(),
            &record.payer,
            increment,
            Precision::Exact,
        )?;
        let mut used =
            T::WeightInfo::redeem(voucher.adapters.len() as u32, voucher.contexts.len() as u32);
        for payment in payments {
            if payment.amount == 0 {
                continue;
            }
            let charge: BalanceOf<T> = payment.amount.unique_saturated_into();
            let weight = T::Settlement::settle_voucher(
                voucher.channel,
                voucher.sequence,
                &record.payer,
                &record.provider,
                payment.adapter,
                charge,
                &payment.context,
            )?;
            used = used.saturating_add(weight);
        }

        record.redeemed = voucher.cumulative;
        record.sequence = voucher.sequence;
        record.receipts_root = voucher.receipts_root;
        record.inferences = record.inferences.saturating_add(voucher.inferences);
        TotalHeld::<T>::mutate(|total| *total = total.saturating_sub(increment));
        let (provider, redeemed, inferences) =
            (record.provider.clone(), record.redeemed, record.inferences);
        let offered = T::Audit::offer_redemption(RedeemedWork {
            channel: voucher.channel,
            sequence: voucher.sequence,
            payer: record.payer.clone(),
            provider: provider.clone(),
            receipts_root: voucher.receipts_root,
            inferences: voucher.inferences,
            amount: increment,
        });
        used = used.saturating_add(offered);
        Channels::<T>::insert(voucher.channel, record);
        Self::deposit_event(Event::VoucherRedeemed {
            channel: voucher.channel,
            provider,
            sequence: voucher.sequence,
            paid: increment,
            redeemed,
            covered: voucher.inferences,
            inferences,
            receipts_root: voucher.receipts_root,
        });
        Ok(Some(used).into())
    }

    /// Check that `voucher`'s breakdown describes `increment` and turn it into one payment per
    /// adapter, in the voucher's order.
    fn breakdown(
        voucher: &VoucherOf<T>,
        increment: BalanceOf<T>,
    ) -> Result<Vec<AdapterPayment>, DispatchError> {
        // Amounts in u128: sums of up to `MaxAdaptersPerVoucher` balances, checked.
        let to_u128 = |b: BalanceOf<T>| -> u128 { b.unique_saturated_into() };
        let mut payments: Vec<AdapterPayment> = Vec::with_capacity(voucher.adapters.len());
        let mut index = BTreeMap::new();
        let mut total: u128 = 0;
        for charge in &voucher.adapters {
            ensure!(
                index.insert(charge.adapter, payments.len()).is_none(),
                Error::<T>::DuplicateAdapter
            );
            let amount = to_u128(charge.amount);
            total = total.checked_add(amount).ok_or(Error::<T>::AmountsDoNotSumToIncrement)?;
            payments.push(AdapterPayment { adapter: charge.adapter, amount, context: Vec::new() });
        }
        ensure!(total == to_u128(increment), Error::<T>::AmountsDoNotSumToIncrement);

        let mut context_sums = BTreeMap::<AdapterId, u128>::new();
        let mut seen = alloc::collections::btree_set::BTreeSet::new();
        for entry in &voucher.contexts {
            ensure!(seen.insert((entry.adapter, entry.datanet)), Error::<T>::DuplicateContext);
            let position =
                *index.get(&entry.adapter).ok_or(Error::<T>::ContextForUnlistedAdapter)?;
            let payment =
                payments.get_mut(position).ok_or(Error::<T>::ContextForUnlistedAdapter)?;
            let amount = to_u128(entry.amount);
            let sum = context_sums.entry(entry.adapter).or_insert(0);
            *sum = sum.checked_add(amount).ok_or(Error::<T>::ContextExceedsAdapterAmount)?;
            ensure!(*sum <= payment.amount, Error::<T>::ContextExceedsAdapterAmount);
            if payment.amount > 0 {
                payment.context.push(DataNetShare::new(
                    entry.datanet,
                    Permill::from_rational(amount, payment.amount),
                ));
            }
        }
        Ok(payments)
    }

    /// The exact bytes a channel's signer signs for `voucher` on this chain (the
    /// `voucher_signing_payload` view function).
    pub(crate) fn voucher_payload_of(voucher: &VoucherOf<T>) -> Vec<u8> {
        let genesis_hash = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
        VoucherPayload::new(genesis_hash, voucher).signing_bytes()
    }

    /// Release what is left of `record`'s deposit to its payer and delete the channel.
    pub(crate) fn close(channel: ChannelId, record: Channel<T>) -> DispatchResult {
        let remaining = record.remaining();
        let refunded = if remaining.is_zero() {
            Zero::zero()
        } else {
            T::Currency::release(
                &HoldReason::ChannelDeposit.into(),
                &record.payer,
                remaining,
                Precision::Exact,
            )?
        };
        TotalHeld::<T>::mutate(|total| *total = total.saturating_sub(remaining));
        Channels::<T>::remove(channel);
        Self::deposit_event(Event::ChannelClosed {
            channel,
            payer: record.payer,
            provider: record.provider,
            redeemed: record.redeemed,
            refunded,
        });
        Ok(())
    }

    /// What is known about channel id `channel` (the `channel_status` view function and
    /// runtime API).
    pub(crate) fn status_of(channel: ChannelId) -> ChannelStatus<T> {
        match Channels::<T>::get(channel) {
            Some(record) => ChannelStatus::Open(record),
            None if channel < NextChannelId::<T>::get() => ChannelStatus::Closed,
            None => ChannelStatus::Unknown,
        }
    }

    /// Check the pallet's invariants:
    /// - every channel has `redeemed <= deposit` and an id below `NextChannelId`;
    /// - `TotalHeld` is the sum over channels of `deposit - redeemed`;
    /// - every payer has exactly that sum over its channels on hold.
    #[cfg(any(feature = "try-runtime", feature = "std"))]
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use frame_support::traits::fungible::InspectHold;
        let mut total = BalanceOf::<T>::zero();
        let mut per_payer = BTreeMap::new();
        for (id, record) in Channels::<T>::iter() {
            ensure!(id < NextChannelId::<T>::get(), "channel with an unassigned id");
            ensure!(record.redeemed <= record.deposit, "channel redeemed more than its deposit");
            total = total.saturating_add(record.remaining());
            let held = per_payer.entry(record.payer.clone()).or_insert_with(Zero::zero);
            *held = record.remaining().saturating_add(*held);
        }
        ensure!(total == TotalHeld::<T>::get(), "TotalHeld is not the sum of unredeemed deposits");
        for (payer, remaining) in per_payer {
            let held = T::Currency::balance_on_hold(&HoldReason::ChannelDeposit.into(), &payer);
            ensure!(held == remaining, "held deposit differs from the payer's unredeemed deposits");
        }
        Ok(())
    }
}
