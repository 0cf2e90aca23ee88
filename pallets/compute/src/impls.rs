//! Reputation arithmetic, the [`ProviderRegistry`] the marketplace uses, queries for the runtime
//! API, and the storage invariants.

use crate::{
    pallet::*, BalanceOf, ProviderInfo, ProviderState, ProviderStatus, MAX_REPUTATION,
    NEUTRAL_REPUTATION,
};
use frame_support::{
    pallet_prelude::*,
    traits::{
        fungible::MutateHold,
        tokens::{Fortitude, Precision, Restriction},
    },
};
use frame_system::pallet_prelude::BlockNumberFor;
use openledger_primitives::market::{
    AdapterId, BaseModelId, ProviderOffer, ProviderRegistry, Reputation,
};
use sp_core::ed25519;
use sp_runtime::{
    traits::{Saturating, UniqueSaturatedInto, Zero},
    DispatchError,
};

/// How a closed job moves its provider's reputation.
#[derive(Clone, Copy)]
enum ReputationChange {
    Reward,
    Penalty(u32),
}

/// Shifting the distance to neutral by this many bits or more leaves nothing of it.
const FULL_DECAY_SHIFT: u32 = 20;

impl<T: Config> Pallet<T> {
    /// `state`'s reputation decayed to block `now`: the distance from neutral halves every
    /// `ReputationHalfLife` blocks (whole half-lives only).
    pub fn reputation_at(state: &ProviderState<T>, now: BlockNumberFor<T>) -> Reputation {
        let half_life = T::ReputationHalfLife::get();
        if half_life.is_zero() {
            return NEUTRAL_REPUTATION;
        }
        let elapsed = now.saturating_sub(state.reputation_at);
        let halvings: u32 = (elapsed / half_life).unique_saturated_into();
        if halvings >= FULL_DECAY_SHIFT {
            return NEUTRAL_REPUTATION;
        }
        if state.reputation >= NEUTRAL_REPUTATION {
            NEUTRAL_REPUTATION.saturating_add((state.reputation - NEUTRAL_REPUTATION) >> halvings)
        } else {
            NEUTRAL_REPUTATION.saturating_sub((NEUTRAL_REPUTATION - state.reputation) >> halvings)
        }
    }

    /// Decay `state`'s reputation to now, then add the reward or subtract the penalty (clamped
    /// to the valid range).
    fn adjust_reputation(state: &mut ProviderState<T>, change: ReputationChange) {
        let now = frame_system::Pallet::<T>::block_number();
        let current = Self::reputation_at(state, now);
        state.reputation = match change {
            ReputationChange::Reward => {
                current.saturating_add(T::ReputationReward::get()).min(MAX_REPUTATION)
            },
            ReputationChange::Penalty(by) => current.saturating_sub(by),
        };
        state.reputation_at = now;
    }

    /// A job of `provider` closed: its slot is free again before the next heartbeat reports it
    /// (never above what the provider declared), and its reputation changes by `change`.
    fn close_job(provider: &T::AccountId, change: ReputationChange) -> Option<ProviderState<T>> {
        ProviderStates::<T>::mutate(provider, |maybe| {
            let state = maybe.as_mut()?;
            state.open_jobs = state.open_jobs.saturating_sub(1);
            state.free_slots = state.free_slots.saturating_add(1).min(state.max_concurrent);
            Self::adjust_reputation(state, change);
            Some(state.clone())
        })
    }

    /// Whether `state` may be assigned a new job at block `now`.
    pub fn is_eligible(state: &ProviderState<T>, now: BlockNumberFor<T>) -> bool {
        state.status == ProviderStatus::Active
            && now.saturating_sub(state.last_heartbeat) <= T::HeartbeatTimeout::get()
            && state.bond >= T::MinProviderBond::get()
            && state.open_jobs < state.max_concurrent
            && state.free_slots > 0
    }

    /// Everything known about `provider`, for the runtime API.
    pub fn provider_info(provider: &T::AccountId) -> Option<ProviderInfo<T>> {
        let terms = Providers::<T>::get(provider)?;
        let state = ProviderStates::<T>::get(provider)?;
        let now = frame_system::Pallet::<T>::block_number();
        Some(ProviderInfo {
            reputation_now: Self::reputation_at(&state, now),
            eligible: Self::is_eligible(&state, now),
            hot_adapters: HotAdapters::<T>::get(provider),
            terms,
            state,
        })
    }

    /// Check the pallet's invariants:
    /// - every provider's recorded bond is exactly what is held from it as a bond;
    /// - `TotalBonded` is the sum of all bonds;
    /// - every provider has both records, hot adapters are kept only for providers, and the
    ///   model index lists exactly the active providers under each model they declared.
    #[cfg(any(feature = "try-runtime", feature = "std"))]
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use frame_support::traits::fungible::InspectHold;
        let mut total = BalanceOf::<T>::zero();
        for (who, state) in ProviderStates::<T>::iter() {
            let held = T::Currency::balance_on_hold(&HoldReason::ProviderBond.into(), &who);
            ensure!(held == state.bond, "provider bond differs from its hold");
            total = total.saturating_add(state.bond);
            let terms = Providers::<T>::get(&who).ok_or("provider state without terms")?;
            for model in terms.base_models.iter() {
                let listed = ProvidersByModel::<T>::get(model).contains(&who);
                ensure!(
                    listed == (state.status == ProviderStatus::Active),
                    "model index out of step with provider status"
                );
            }
        }
        ensure!(total == TotalBonded::<T>::get(), "TotalBonded is not the sum of bonds");
        ensure!(
            Providers::<T>::iter_keys().all(|who| ProviderStates::<T>::contains_key(&who)),
            "provider terms without state"
        );
        ensure!(
            HotAdapters::<T>::iter_keys().all(|who| ProviderStates::<T>::contains_key(&who)),
            "hot adapters of an unknown provider"
        );
        let mut served = alloc::collections::btree_map::BTreeMap::<T::AccountId, u32>::new();
        for who in ServedAdapters::<T>::iter_keys().map(|(who, _)| who) {
            ensure!(
                ProviderStates::<T>::contains_key(&who),
                "served adapters of an unknown provider"
            );
            let n = served.entry(who).or_insert(0);
            *n = n.saturating_add(1);
        }
        for (who, count) in ServedAdapterCount::<T>::iter() {
            ensure!(count > 0, "a zero served-adapter count is stored");
            ensure!(count <= T::MaxServedAdapters::get(), "more served adapters than the bound");
            ensure!(
                served.remove(&who) == Some(count),
                "served-adapter count differs from the list"
            );
        }
        ensure!(served.is_empty(), "served adapters without a count");
        for (model, providers) in ProvidersByModel::<T>::iter() {
            for who in providers.iter() {
                let terms = Providers::<T>::get(who).ok_or("indexed provider unknown")?;
                ensure!(terms.base_models.contains(&model), "indexed under undeclared model");
            }
        }
        Ok(())
    }
}

impl<T: Config> ProviderRegistry<T::AccountId, BalanceOf<T>> for Pallet<T> {
    type MaxCandidates = T::MaxProvidersPerModel;

    fn candidates(base_model: BaseModelId) -> BoundedVec<T::AccountId, Self::MaxCandidates> {
        ProvidersByModel::<T>::get(base_model)
    }

    fn offer(
        provider: &T::AccountId,
        _base_model: BaseModelId,
        adapter: AdapterId,
    ) -> Option<ProviderOffer<BalanceOf<T>>> {
        let state = ProviderStates::<T>::get(provider)?;
        let now = frame_system::Pallet::<T>::block_number();
        if !Self::is_eligible(&state, now) || !ServedAdapters::<T>::contains_key(provider, adapter)
        {
            return None;
        }
        Some(ProviderOffer {
            price_per_1k: state.price_per_1k,
            bond: state.bond,
            reputation: Self::reputation_at(&state, now),
            adapter_hot: HotAdapters::<T>::get(provider).contains(&adapter),
        })
    }

    fn worker_key(provider: &T::AccountId) -> Option<ed25519::Public> {
        ProviderStates::<T>::get(provider).map(|state| state.worker_key)
    }

    fn is_worker(provider: &T::AccountId, who: &T::AccountId) -> bool {
        provider == who
            || ProviderStates::<T>::get(provider)
                .is_some_and(|state| state.worker_account.as_ref() == Some(who))
    }

    fn job_assigned(provider: &T::AccountId) -> DispatchResult {
        ProviderStates::<T>::try_mutate(provider, |maybe| {
            let state = maybe.as_mut().ok_or(Error::<T>::NotRegistered)?;
            state.open_jobs = state.open_jobs.saturating_add(1);
            state.free_slots = state.free_slots.saturating_sub(1);
            Ok(())
        })
    }

    fn job_settled(provider: &T::AccountId) {
        Self::close_job(provider, ReputationChange::Reward);
    }

    fn job_refused(provider: &T::AccountId) {
        Self::close_job(provider, ReputationChange::Penalty(T::RefusalPenalty::get()));
    }

    fn job_abandoned(provider: &T::AccountId) {
        Self::close_job(provider, ReputationChange::Penalty(T::ReputationPenalty::get()));
    }

    fn job_expired(
        provider: &T::AccountId,
        victim: &T::AccountId,
    ) -> Result<BalanceOf<T>, DispatchError> {
        let state =
            Self::close_job(provider, ReputationChange::Penalty(T::ReputationPenalty::get()))
                .ok_or(Error::<T>::NotRegistered)?;
        let due = T::SlashFraction::get().mul_floor(state.bond);
        Self::slash_bond(provider, due, victim)
    }

    fn serves(provider: &T::AccountId, adapter: AdapterId) -> bool {
        ServedAdapters::<T>::contains_key(provider, adapter)
    }

    fn bond_of(provider: &T::AccountId) -> BalanceOf<T> {
        ProviderStates::<T>::get(provider).map_or_else(Zero::zero, |state| state.bond)
    }

    fn slash_bond(
        provider: &T::AccountId,
        amount: BalanceOf<T>,
        to: &T::AccountId,
    ) -> Result<BalanceOf<T>, DispatchError> {
        let mut state = ProviderStates::<T>::get(provider).ok_or(Error::<T>::NotRegistered)?;
        let due = amount.min(state.bond);
        let slashed = if due.is_zero() {
            due
        } else {
            T::Currency::transfer_on_hold(
                &HoldReason::ProviderBond.into(),
                provider,
                to,
                due,
                Precision::BestEffort,
                Restriction::Free,
                Fortitude::Force,
            )?
        };
        state.bond = state.bond.saturating_sub(slashed);
        TotalBonded::<T>::mutate(|total| *total = total.saturating_sub(slashed));
        ProviderStates::<T>::insert(provider, state);
        if !slashed.is_zero() {
            Self::deposit_event(Event::Slashed {
                provider: provider.clone(),
                victim: to.clone(),
                amount: slashed,
            });
        }
        Ok(slashed)
    }
}
