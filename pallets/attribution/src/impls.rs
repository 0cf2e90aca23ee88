//! The fee split ([`Settlement`]), the adapter catalogue ([`AdapterCatalog`]), quotes and the
//! pallet's invariants.

use alloc::vec::Vec;

use frame_support::{
    ensure,
    traits::{fungible::Mutate, tokens::Preservation, Get},
    weights::Weight,
    BoundedVec,
};
use openledger_primitives::{
    market::{AdapterCatalog, AdapterId, AdapterTerms, JobId, Settlement},
    voucher::ChannelId,
};
use sp_core::U256;
use sp_runtime::{
    traits::{CheckedAdd, CheckedSub, Saturating, Zero},
    ArithmeticError, DispatchError, DispatchResult,
};

use crate::{
    Adapter, Adapters, BalanceOf, Config, DataNetId, DataNetShare, DataNets, Error, Event,
    MaxPayoutsOf, Pallet, Payee, Split, REWARD_SCALE,
};

impl<T: Config> AdapterCatalog<BalanceOf<T>> for Pallet<T> {
    fn adapter(adapter: AdapterId) -> Option<AdapterTerms<BalanceOf<T>>> {
        Adapters::<T>::get(adapter)
            .filter(|a| !a.retired)
            .map(|a| AdapterTerms { base_model: a.base_model, price_per_1k: a.price_per_1k })
    }
}

impl<T: Config> Pallet<T> {
    /// How `charge` for a job on `adapter` with retrieval `context` would be split now:
    /// every payee and amount (summing to `charge`).
    pub fn split_of(
        adapter: &Adapter<T>,
        provider: &T::AccountId,
        charge: BalanceOf<T>,
        context: &[DataNetShare],
    ) -> Result<Vec<(Payee<T::AccountId>, BalanceOf<T>)>, DispatchError> {
        ensure!(
            context.len() <= T::MaxContextDataNets::get() as usize && Self::valid_shares(context),
            Error::<T>::BadContextShares
        );
        let split = Split::<T>::get();
        let provider_part = split.provider * charge;
        let owner_part = split.adapter_owner * charge;
        let datanet_part = split.datanets * charge;
        let mut out = Vec::new();
        out.push((Payee::Provider(provider.clone()), provider_part));
        out.push((Payee::AdapterOwner(adapter.owner.clone()), owner_part));
        let mut given = provider_part.saturating_add(owner_part);
        // Context DataNets first, by their shares of the DataNet part; the training DataNets
        // share what is left, by theirs.
        let mut context_total: BalanceOf<T> = Zero::zero();
        for &DataNetShare { datanet, share } in context {
            let amount = share * datanet_part;
            if Self::can_credit(datanet) {
                out.push((Payee::ContextDataNet(datanet), amount));
                given = given.saturating_add(amount);
            }
            context_total = context_total.saturating_add(amount);
        }
        let training_part = datanet_part.saturating_sub(context_total);
        for &DataNetShare { datanet, share } in &adapter.training {
            let amount = share * training_part;
            if Self::can_credit(datanet) {
                out.push((Payee::TrainingDataNet(datanet), amount));
                given = given.saturating_add(amount);
            }
        }
        // The treasury's part and every remainder: parts below 100%, DataNets without weight,
        // rounding.
        let treasury = charge.checked_sub(&given).ok_or(ArithmeticError::Underflow)?;
        out.push((Payee::Treasury(T::Treasury::get()), treasury));
        Ok(out)
    }

    /// The benchmarked weight of a settlement that looks up `datanets` DataNets (at least one,
    /// the benchmark's lower bound), at the largest contributor count benchmarked.
    fn settle_weight_of(datanets: u32) -> Weight {
        use crate::WeightInfo;
        T::WeightInfo::settle(datanets.max(1), 100)
    }

    /// Whether a DataNet exists and has approved weight to credit.
    fn can_credit(d: DataNetId) -> bool {
        DataNets::<T>::get(d).is_some_and(|d| d.total_weight > 0)
    }

    /// Credits `amount` (already in the pallet account) to `datanet`'s contributors.
    fn credit(datanet: DataNetId, amount: BalanceOf<T>) -> DispatchResult {
        DataNets::<T>::try_mutate(datanet, |d| -> DispatchResult {
            let d = d.as_mut().ok_or(Error::<T>::UnknownDataNet)?;
            ensure!(d.total_weight > 0, Error::<T>::UnknownDataNet);
            let raw: u128 = amount.try_into().map_err(|_| ArithmeticError::Overflow)?;
            let increment = U256::from(raw)
                .checked_mul(U256::from(REWARD_SCALE))
                .ok_or(ArithmeticError::Overflow)?
                / U256::from(d.total_weight);
            d.reward_per_weight =
                d.reward_per_weight.checked_add(increment).ok_or(ArithmeticError::Overflow)?;
            d.balance = d.balance.checked_add(&amount).ok_or(ArithmeticError::Overflow)?;
            Ok(())
        })
    }

    /// A quote of the split of `charge` for `adapter` with `context`, as if `provider` ran it
    /// (the `quote_split` view function and runtime API).
    pub fn split_quote(
        adapter: AdapterId,
        provider: T::AccountId,
        charge: BalanceOf<T>,
        context: Vec<DataNetShare>,
    ) -> Option<Vec<(Payee<T::AccountId>, BalanceOf<T>)>> {
        let record = Adapters::<T>::get(adapter)?;
        Self::split_of(&record, &provider, charge, &context).ok()
    }

    /// Checks the pallet's invariants: the pallet account holds exactly the DataNets'
    /// balances plus its existential deposit; each balance covers what its contributors are owed (the difference is dust
    /// of less than one planck per settlement); weights add up; every split is valid.
    #[cfg(any(feature = "try-runtime", test))]
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use crate::{RecordStatus, Records, Stakes};
        ensure!(Split::<T>::get().is_valid(), "fee split does not sum to 100%");
        let mut balances: BalanceOf<T> = Zero::zero();
        for (id, d) in DataNets::<T>::iter() {
            balances = balances.saturating_add(d.balance);
            let approved: u128 = Records::<T>::iter_prefix(id)
                .filter(|(_, r)| r.status == RecordStatus::Approved)
                .map(|(_, r)| r.weight)
                .sum();
            ensure!(approved == d.total_weight, "DataNet weight differs from its records");
            let records = Records::<T>::iter_prefix(id).count() as u32;
            ensure!(records == d.records, "DataNet record count differs from its records");
            let mut owed = U256::zero();
            for (_, mut stake) in Stakes::<T>::iter_prefix(id) {
                Self::bring_up_to_date(&d, &mut stake).map_err(|_| "stake ahead of its DataNet")?;
                owed = owed.saturating_add(stake.owed_scaled);
            }
            let owed_planck = owed / U256::from(REWARD_SCALE);
            let balance: u128 = d.balance.try_into().map_err(|_| "balance overflow")?;
            ensure!(owed_planck <= U256::from(balance), "DataNet owes more than it holds");
        }
        use frame_support::traits::fungible::Inspect;
        let held = T::Currency::balance(&Self::account_id());
        let ed = T::Currency::minimum_balance();
        ensure!(
            held == balances.saturating_add(ed),
            "pallet account differs from the DataNets' balances plus its existential deposit"
        );
        for (_, a) in Adapters::<T>::iter() {
            ensure!(Self::valid_shares(&a.training), "adapter with invalid training shares");
        }
        Ok(())
    }
}

impl<T: Config> Pallet<T> {
    /// Split `charge` for `adapter` with `context` and move it out of `payer`: the body of
    /// both settlements. Returns the payouts and the weight used.
    fn pay_split(
        payer: &T::AccountId,
        provider: &T::AccountId,
        adapter: AdapterId,
        charge: BalanceOf<T>,
        context: &[DataNetShare],
    ) -> Result<
        (BoundedVec<(Payee<T::AccountId>, BalanceOf<T>), MaxPayoutsOf<T>>, Weight),
        DispatchError,
    > {
        let record = Adapters::<T>::get(adapter).ok_or(Error::<T>::UnknownAdapter)?;
        let payouts = Self::split_of(&record, provider, charge, context)?;
        // The benchmark's `d`: every DataNet the split looked up (training and context).
        let looked_up = record.training.len().saturating_add(context.len()) as u32;
        // Accounts are paid one transfer each; all DataNet shares go to the pallet account in
        // one transfer (a transfer costs far more than the DataNet's accumulator update).
        let mut to_pallet: BalanceOf<T> = Zero::zero();
        for (payee, amount) in &payouts {
            if amount.is_zero() {
                continue;
            }
            match payee {
                Payee::Provider(to) | Payee::AdapterOwner(to) | Payee::Treasury(to) => {
                    if to != payer {
                        T::Currency::transfer(payer, to, *amount, Preservation::Expendable)?;
                    }
                },
                Payee::TrainingDataNet(d) | Payee::ContextDataNet(d) => {
                    Self::credit(*d, *amount)?;
                    to_pallet = to_pallet.checked_add(amount).ok_or(ArithmeticError::Overflow)?;
                },
            }
        }
        if !to_pallet.is_zero() {
            T::Currency::transfer(payer, &Self::account_id(), to_pallet, Preservation::Expendable)?;
        }
        let payouts: BoundedVec<_, MaxPayoutsOf<T>> =
            payouts.try_into().map_err(|_| Error::<T>::BadContextShares)?;
        Ok((payouts, Self::settle_weight_of(looked_up)))
    }
}

impl<T: Config> Settlement<T::AccountId, BalanceOf<T>> for Pallet<T> {
    fn settle(
        job: JobId,
        payer: &T::AccountId,
        provider: &T::AccountId,
        adapter: AdapterId,
        charge: BalanceOf<T>,
        context: &[DataNetShare],
    ) -> Result<Weight, DispatchError> {
        let (payouts, weight) = Self::pay_split(payer, provider, adapter, charge, context)?;
        Self::deposit_event(Event::FeeSplit { job, adapter, charge, payouts });
        Ok(weight)
    }

    fn settle_voucher(
        channel: ChannelId,
        sequence: u64,
        payer: &T::AccountId,
        provider: &T::AccountId,
        adapter: AdapterId,
        charge: BalanceOf<T>,
        context: &[DataNetShare],
    ) -> Result<Weight, DispatchError> {
        let (payouts, weight) = Self::pay_split(payer, provider, adapter, charge, context)?;
        Self::deposit_event(Event::VoucherFeeSplit { channel, sequence, adapter, charge, payouts });
        Ok(weight)
    }

    /// The benchmarked settlement crediting the most DataNets a receipt can name (training
    /// and context). Storage reads and writes do not depend on the number of contributors
    /// (component `c`); the measured time grows by ~0.7 us per contributor of the benchmark's
    /// DataNets (a larger state trie, not iteration), so the bound takes the largest `c`
    /// benchmarked.
    fn settle_weight() -> Weight {
        Self::settle_weight_of(
            T::MaxTrainingDataNets::get().saturating_add(T::MaxContextDataNets::get()),
        )
    }
}
