// The overview is README.md: rustdoc shows it as the crate's documentation and
// `#[pallet_doc]` puts it in the runtime metadata, where wallets and explorers read it.
#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub use pallet::*;
pub use types::*;
pub use weights::WeightInfo;

#[cfg(feature = "runtime-benchmarks")]
pub mod benchmarking;
mod impls;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
pub mod types;
pub mod weights;

use frame_support::traits::fungible::Inspect;
pub use openledger_primitives::market::ProviderRegistry;

/// The balance type of the pallet's currency.
pub type BalanceOf<T> =
    <<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

#[frame_support::pallet]
#[pallet_doc("../README.md")]
pub mod pallet {
    use super::*;
    use frame_support::{
        pallet_prelude::*,
        traits::{
            fungible::{Mutate, MutateHold},
            tokens::Precision,
        },
    };
    use frame_system::pallet_prelude::*;
    use openledger_primitives::{
        market::{AdapterId, BaseModelId, BaseModelSpec, NumericFormat, ProviderOffer},
        receipt::is_small_order_encoding,
    };
    use sp_runtime::{traits::Zero, Perbill, Saturating};

    /// The layout of this pallet's storage; a change to it comes with a migration that
    /// bumps it.
    const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// OPEN: the currency bonds are held in.
        type Currency: Mutate<Self::AccountId>
            + MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>;

        /// The overarching hold reason.
        type RuntimeHoldReason: From<HoldReason>;

        /// Smallest bond a provider must keep to get jobs.
        #[pallet::constant]
        type MinProviderBond: Get<BalanceOf<Self>>;

        /// Blocks between `unregister` and the earliest `withdraw_unbonded`.
        #[pallet::constant]
        type UnbondingPeriod: Get<BlockNumberFor<Self>>;

        /// A provider whose last heartbeat is older than this many blocks gets no new jobs.
        #[pallet::constant]
        type HeartbeatTimeout: Get<BlockNumberFor<Self>>;

        /// Share of its bond a provider loses, to the user, for each job it lets expire.
        #[pallet::constant]
        type SlashFraction: Get<Perbill>;

        /// Reputation (parts per million) gained per settled job.
        #[pallet::constant]
        type ReputationReward: Get<u32>;

        /// Reputation (parts per million) lost per expired job.
        #[pallet::constant]
        type ReputationPenalty: Get<u32>;

        /// Reputation (parts per million) lost per refused job: less than an expiry (the user
        /// waited one block, not a timeout), enough that refusing everything loses priority.
        #[pallet::constant]
        type RefusalPenalty: Get<u32>;

        /// Blocks over which a reputation's distance from neutral halves.
        #[pallet::constant]
        type ReputationHalfLife: Get<BlockNumberFor<Self>>;

        /// Most providers per base model: bounds the matching work of one job submission.
        #[pallet::constant]
        type MaxProvidersPerModel: Get<u32>;

        /// Most base models one provider serves.
        #[pallet::constant]
        type MaxBaseModels: Get<u32>;

        /// Most adapters a heartbeat may report as hot.
        #[pallet::constant]
        type MaxHotAdapters: Get<u32>;

        /// Most adapters one provider may declare it serves.
        #[pallet::constant]
        type MaxServedAdapters: Get<u32>;

        /// Longest GPU model name, in bytes.
        #[pallet::constant]
        type MaxGpuNameLen: Get<u32>;

        /// Longest libp2p peer id, in bytes.
        #[pallet::constant]
        type MaxPeerIdLen: Get<u32>;

        /// Most multiaddresses of an endpoint.
        #[pallet::constant]
        type MaxMultiaddrs: Get<u32>;

        /// Longest multiaddress, in bytes.
        #[pallet::constant]
        type MaxMultiaddrLen: Get<u32>;

        /// Weights of this pallet's calls.
        type WeightInfo: WeightInfo;
    }

    /// Why this pallet holds OPEN.
    #[pallet::composite_enum]
    pub enum HoldReason {
        /// A provider's bond.
        #[codec(index = 0)]
        ProviderBond,
    }

    /// What each provider declared.
    #[pallet::storage]
    pub type Providers<T: Config> = StorageMap<_, Blake2_128Concat, T::AccountId, ProviderTerms<T>>;

    /// Each provider's bond, status, load and reputation.
    #[pallet::storage]
    pub type ProviderStates<T: Config> =
        StorageMap<_, Blake2_128Concat, T::AccountId, ProviderState<T>>;

    /// Adapters each provider's worker reported loaded on its GPU in its last heartbeat.
    #[pallet::storage]
    pub type HotAdapters<T: Config> = StorageMap<
        _,
        Blake2_128Concat,
        T::AccountId,
        BoundedVec<AdapterId, T::MaxHotAdapters>,
        ValueQuery,
    >;

    /// Adapters each provider declared it can serve: matching offers a job only to providers
    /// listed here for its adapter.
    #[pallet::storage]
    pub type ServedAdapters<T: Config> = StorageDoubleMap<
        _,
        Blake2_128Concat,
        T::AccountId,
        Twox64Concat,
        AdapterId,
        (),
        OptionQuery,
    >;

    /// How many adapters each provider declared (the size of its [`ServedAdapters`] prefix, at
    /// most `MaxServedAdapters`).
    #[pallet::storage]
    pub type ServedAdapterCount<T: Config> =
        StorageMap<_, Blake2_128Concat, T::AccountId, u32, ValueQuery>;

    /// Active providers serving each base model: the candidates of matching.
    #[pallet::storage]
    pub type ProvidersByModel<T: Config> = StorageMap<
        _,
        Twox64Concat,
        BaseModelId,
        BoundedVec<T::AccountId, T::MaxProvidersPerModel>,
        ValueQuery,
    >;

    /// Sum of all provider bonds.
    #[pallet::storage]
    pub type TotalBonded<T: Config> = StorageValue<_, BalanceOf<T>, ValueQuery>;

    /// What each registered base model id stands for (its weights and numeric format), as
    /// governance set it. Workers check their own model against it before serving the id;
    /// an id without an entry is served on its providers' word.
    #[pallet::storage]
    pub type BaseModels<T: Config> = StorageMap<_, Twox64Concat, BaseModelId, BaseModelSpec>;

    #[pallet::genesis_config]
    #[derive(frame_support::DefaultNoBound)]
    pub struct GenesisConfig<T: Config> {
        /// Base models registered at genesis: (id, BLAKE2b-256 of the weights file, numeric
        /// format code: 0 host, 1 CUDA bf16).
        pub base_models: alloc::vec::Vec<(BaseModelId, [u8; 32], u8)>,
        #[serde(skip)]
        pub _config: core::marker::PhantomData<T>,
    }

    #[pallet::genesis_build]
    impl<T: Config> BuildGenesisConfig for GenesisConfig<T> {
        fn build(&self) {
            for (id, weights, code) in &self.base_models {
                let format = NumericFormat::from_code(*code);
                assert!(format.is_some(), "genesis base model {id}: unknown numeric format {code}");
                if let Some(format) = format {
                    BaseModels::<T>::insert(id, BaseModelSpec { weights: *weights, format });
                }
            }
        }
    }

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// A provider registered and bonded.
        ProviderRegistered {
            /// The provider (its operator account).
            provider: T::AccountId,
            /// The bond now held from it.
            bond: BalanceOf<T>,
        },
        /// A provider changed its terms.
        ProviderUpdated {
            /// The provider.
            provider: T::AccountId,
        },
        /// A provider added to its bond.
        Bonded {
            /// The provider.
            provider: T::AccountId,
            /// What it added.
            amount: BalanceOf<T>,
            /// Its bond now.
            bond: BalanceOf<T>,
        },
        /// A provider's worker reported in.
        HeartbeatReceived {
            /// The provider.
            provider: T::AccountId,
            /// How many adapters the worker reported loaded on its GPU.
            hot_adapters: u32,
            /// How many more jobs the worker says it can take now.
            free_slots: u32,
        },
        /// A provider stopped taking jobs; its bond unbonds from `unbonds_at`.
        ProviderUnregistered {
            /// The provider.
            provider: T::AccountId,
            /// The first block at which `withdraw_unbonded` releases its bond.
            unbonds_at: BlockNumberFor<T>,
        },
        /// A provider withdrew its bond and left the registry.
        Withdrawn {
            /// The former provider.
            provider: T::AccountId,
            /// The bond released to it.
            amount: BalanceOf<T>,
        },
        /// A provider declared the adapters it serves; `served` is how many (duplicates once).
        AdaptersServed {
            /// The provider.
            provider: T::AccountId,
            /// How many distinct adapters it now serves.
            served: u32,
        },
        /// Governance set (or, with `None`, removed) what a base model id stands for.
        BaseModelSet {
            /// The base model id.
            base_model: BaseModelId,
            /// Its weights and numeric format now.
            spec: Option<BaseModelSpec>,
        },
        /// A provider's bond was slashed to compensate the user of an expired job.
        Slashed {
            /// The provider.
            provider: T::AccountId,
            /// Who received the slashed amount (the expired job's submitter).
            victim: T::AccountId,
            /// What was taken from the bond.
            amount: BalanceOf<T>,
        },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// The account is already a provider. Use `update_provider` or `bond_extra` instead.
        AlreadyRegistered,
        /// The account is not a provider. Register with `register_provider` first.
        NotRegistered,
        /// The provider has unregistered. Withdraw with `withdraw_unbonded` and register again.
        ProviderLeaving,
        /// The provider is still active. Call `unregister` first.
        NotLeaving,
        /// The unbonding period has not passed. Wait until the `unbonds_at` block of
        /// `ProviderUnregistered`.
        StillUnbonding,
        /// Jobs assigned to the provider are still open. Wait until they are settled or expired.
        JobsOpen,
        /// The bond is below `MinProviderBond`. Bond at least that much.
        BondTooLow,
        /// The base-model list is empty. Declare at least one base model.
        NoBaseModels,
        /// A base model is listed twice. List each once.
        DuplicateBaseModel,
        /// `max_concurrent` is zero. Declare how many jobs the worker can run at once.
        ZeroConcurrency,
        /// The worker key is a point of small order, which can sign nothing verifiable. Use the
        /// public key of a freshly generated ed25519 key pair.
        WeakWorkerKey,
        /// A base model already has `MaxProvidersPerModel` providers. Serve another model or
        /// wait until one leaves.
        TooManyProviders,
        /// The sender is neither the provider's operator nor its worker account. Send from one
        /// of them.
        NotAuthorised,
        /// `bond_extra` was called with zero. Bond a positive amount.
        ZeroAmount,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        #[cfg(feature = "try-runtime")]
        fn try_state(_n: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Register the sender as a provider with `terms`, holding `bond` from its balance.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::register_provider(terms.base_models.len() as u32))]
        pub fn register_provider(
            origin: OriginFor<T>,
            terms: ProviderTerms<T>,
            #[pallet::compact] bond: BalanceOf<T>,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            ensure!(!ProviderStates::<T>::contains_key(&who), Error::<T>::AlreadyRegistered);
            Self::check_terms(&terms)?;
            ensure!(bond >= T::MinProviderBond::get(), Error::<T>::BondTooLow);

            for model in terms.base_models.iter() {
                Self::index_provider(*model, &who)?;
            }
            T::Currency::hold(&HoldReason::ProviderBond.into(), &who, bond)?;
            TotalBonded::<T>::mutate(|total| *total = total.saturating_add(bond));

            let now = frame_system::Pallet::<T>::block_number();
            ProviderStates::<T>::insert(
                &who,
                ProviderState {
                    worker_key: terms.worker_key,
                    worker_account: terms.worker_account.clone(),
                    price_per_1k: terms.price_per_1k,
                    max_concurrent: terms.max_concurrent,
                    bond,
                    status: ProviderStatus::Active,
                    open_jobs: 0,
                    free_slots: terms.max_concurrent,
                    last_heartbeat: now,
                    reputation: NEUTRAL_REPUTATION,
                    reputation_at: now,
                },
            );
            Providers::<T>::insert(&who, terms);
            Self::deposit_event(Event::ProviderRegistered { provider: who, bond });
            Ok(())
        }

        /// Replace the sender's terms. Open jobs keep their price; their receipts are checked
        /// against the new worker key.
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::update_provider(T::MaxBaseModels::get()))]
        pub fn update_provider(origin: OriginFor<T>, terms: ProviderTerms<T>) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut state = Self::active_state(&who)?;
            Self::check_terms(&terms)?;
            let old = Providers::<T>::get(&who).ok_or(Error::<T>::NotRegistered)?;

            for model in old.base_models.iter() {
                if !terms.base_models.contains(model) {
                    Self::unindex_provider(*model, &who);
                }
            }
            for model in terms.base_models.iter() {
                if !old.base_models.contains(model) {
                    Self::index_provider(*model, &who)?;
                }
            }
            state.worker_key = terms.worker_key;
            state.worker_account = terms.worker_account.clone();
            state.price_per_1k = terms.price_per_1k;
            state.max_concurrent = terms.max_concurrent;
            ProviderStates::<T>::insert(&who, state);
            Providers::<T>::insert(&who, terms);
            Self::deposit_event(Event::ProviderUpdated { provider: who });
            Ok(())
        }

        /// Hold `amount` more of the sender's balance as its bond.
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::bond_extra())]
        pub fn bond_extra(
            origin: OriginFor<T>,
            #[pallet::compact] amount: BalanceOf<T>,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            ensure!(!amount.is_zero(), Error::<T>::ZeroAmount);
            let mut state = Self::active_state(&who)?;
            T::Currency::hold(&HoldReason::ProviderBond.into(), &who, amount)?;
            state.bond = state.bond.saturating_add(amount);
            TotalBonded::<T>::mutate(|total| *total = total.saturating_add(amount));
            let bond = state.bond;
            ProviderStates::<T>::insert(&who, state);
            Self::deposit_event(Event::Bonded { provider: who, amount, bond });
            Ok(())
        }

        /// Report `provider`'s worker alive, with the adapters it has loaded on its GPU and the
        /// number of jobs it can take now.
        #[pallet::call_index(3)]
        #[pallet::weight(T::WeightInfo::heartbeat(hot_adapters.len() as u32))]
        pub fn heartbeat(
            origin: OriginFor<T>,
            provider: T::AccountId,
            hot_adapters: BoundedVec<AdapterId, T::MaxHotAdapters>,
            free_slots: u32,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut state = ProviderStates::<T>::get(&provider).ok_or(Error::<T>::NotRegistered)?;
            ensure!(
                who == provider || state.worker_account.as_ref() == Some(&who),
                Error::<T>::NotAuthorised
            );
            state.last_heartbeat = frame_system::Pallet::<T>::block_number();
            state.free_slots = free_slots;
            ProviderStates::<T>::insert(&provider, state);
            let hot = hot_adapters.len() as u32;
            HotAdapters::<T>::insert(&provider, hot_adapters);
            Self::deposit_event(Event::HeartbeatReceived {
                provider,
                hot_adapters: hot,
                free_slots,
            });
            Ok(())
        }

        /// Declare the adapters `provider`'s worker can serve, replacing the previous
        /// declaration. Matching gives the provider only jobs for these adapters.
        #[pallet::call_index(6)]
        #[pallet::weight(T::WeightInfo::set_served_adapters(
            T::MaxServedAdapters::get(),
            adapters.len() as u32
        ))]
        pub fn set_served_adapters(
            origin: OriginFor<T>,
            provider: T::AccountId,
            adapters: BoundedVec<AdapterId, T::MaxServedAdapters>,
        ) -> DispatchResultWithPostInfo {
            let who = ensure_signed(origin)?;
            let state = ProviderStates::<T>::get(&provider).ok_or(Error::<T>::NotRegistered)?;
            ensure!(
                who == provider || state.worker_account.as_ref() == Some(&who),
                Error::<T>::NotAuthorised
            );
            let old = Self::clear_served_adapters(&provider);
            let mut served = 0u32;
            for adapter in adapters.iter() {
                if !ServedAdapters::<T>::contains_key(&provider, adapter) {
                    ServedAdapters::<T>::insert(&provider, adapter, ());
                    served = served.saturating_add(1);
                }
            }
            if served > 0 {
                ServedAdapterCount::<T>::insert(&provider, served);
            }
            Self::deposit_event(Event::AdaptersServed { provider, served });
            Ok(Some(T::WeightInfo::set_served_adapters(old, adapters.len() as u32)).into())
        }

        /// Stop taking new jobs and start unbonding.
        #[pallet::call_index(4)]
        #[pallet::weight(T::WeightInfo::unregister(T::MaxBaseModels::get()))]
        pub fn unregister(origin: OriginFor<T>) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut state = Self::active_state(&who)?;
            let terms = Providers::<T>::get(&who).ok_or(Error::<T>::NotRegistered)?;
            for model in terms.base_models.iter() {
                Self::unindex_provider(*model, &who);
            }
            let unbonds_at =
                frame_system::Pallet::<T>::block_number().saturating_add(T::UnbondingPeriod::get());
            state.status = ProviderStatus::Leaving { unbonds_at };
            ProviderStates::<T>::insert(&who, state);
            HotAdapters::<T>::remove(&who);
            Self::deposit_event(Event::ProviderUnregistered { provider: who, unbonds_at });
            Ok(())
        }

        /// Release the bond of a provider that has unregistered, once the unbonding period has
        /// passed and none of its jobs is open, and delete its records.
        #[pallet::call_index(5)]
        #[pallet::weight(T::WeightInfo::withdraw_unbonded(T::MaxServedAdapters::get()))]
        pub fn withdraw_unbonded(origin: OriginFor<T>) -> DispatchResultWithPostInfo {
            let who = ensure_signed(origin)?;
            let state = ProviderStates::<T>::get(&who).ok_or(Error::<T>::NotRegistered)?;
            let ProviderStatus::Leaving { unbonds_at } = state.status else {
                return Err(Error::<T>::NotLeaving.into());
            };
            ensure!(
                frame_system::Pallet::<T>::block_number() >= unbonds_at,
                Error::<T>::StillUnbonding
            );
            ensure!(state.open_jobs == 0, Error::<T>::JobsOpen);

            let released = T::Currency::release(
                &HoldReason::ProviderBond.into(),
                &who,
                state.bond,
                Precision::BestEffort,
            )?;
            TotalBonded::<T>::mutate(|total| *total = total.saturating_sub(state.bond));
            ProviderStates::<T>::remove(&who);
            Providers::<T>::remove(&who);
            // A leaving provider's worker may still have sent heartbeats.
            HotAdapters::<T>::remove(&who);
            let served = Self::clear_served_adapters(&who);
            Self::deposit_event(Event::Withdrawn { provider: who, amount: released });
            Ok(Some(T::WeightInfo::withdraw_unbonded(served)).into())
        }

        /// Set what base model id `base_model` stands for (its weights file's BLAKE2b-256 and
        /// the numeric format it is served in), or with `None` remove the entry. Root only
        /// (governance). Workers of the id check their model against it when they start, and
        /// refuse to serve the id with another weights file or numeric format.
        #[pallet::call_index(7)]
        #[pallet::weight(T::WeightInfo::set_base_model())]
        pub fn set_base_model(
            origin: OriginFor<T>,
            base_model: BaseModelId,
            spec: Option<BaseModelSpec>,
        ) -> DispatchResult {
            ensure_root(origin)?;
            match spec {
                Some(spec) => BaseModels::<T>::insert(base_model, spec),
                None => BaseModels::<T>::remove(base_model),
            }
            Self::deposit_event(Event::BaseModelSet { base_model, spec });
            Ok(())
        }
    }

    /// Reads for clients, answered from the chain's state (metadata V16 view functions).
    #[pallet::view_functions]
    impl<T: Config> Pallet<T> {
        /// What base model id `base_model` stands for, if governance registered it.
        pub fn base_model(base_model: BaseModelId) -> Option<BaseModelSpec> {
            BaseModels::<T>::get(base_model)
        }

        /// `provider`'s terms and state, its reputation now, whether it is eligible for jobs now
        /// (active, heartbeat fresh, bond at least `MinProviderBond`, a free slot) and the
        /// adapters its worker reported loaded. `None` for an account that is not a provider.
        pub fn provider(provider: T::AccountId) -> Option<ProviderInfo<T>> {
            Self::provider_info(&provider)
        }

        /// Whether `provider` would be offered a job on `adapter` (of base model `base_model`)
        /// now, and on what terms: its price, bond, reputation now and whether the adapter is
        /// loaded on its GPU. `None` when it would not: not a provider, leaving, heartbeat
        /// stale, bond too low, no free slot, or `adapter` not among those it declared. Matching
        /// (`pallet-jobs`) also requires it to serve the adapter's base model and its price to
        /// be within the job's `max_fee`.
        pub fn provider_offer(
            provider: T::AccountId,
            base_model: BaseModelId,
            adapter: AdapterId,
        ) -> Option<ProviderOffer<BalanceOf<T>>> {
            <Self as ProviderRegistry<T::AccountId, BalanceOf<T>>>::offer(
                &provider, base_model, adapter,
            )
        }
    }

    impl<T: Config> Pallet<T> {
        /// The state of `who` if it is an active provider.
        pub(crate) fn active_state(who: &T::AccountId) -> Result<ProviderState<T>, DispatchError> {
            let state = ProviderStates::<T>::get(who).ok_or(Error::<T>::NotRegistered)?;
            ensure!(state.status == ProviderStatus::Active, Error::<T>::ProviderLeaving);
            Ok(state)
        }

        /// Delete `who`'s declared adapters; returns how many there were (at most
        /// `MaxServedAdapters`, which bounds the work).
        fn clear_served_adapters(who: &T::AccountId) -> u32 {
            let count = ServedAdapterCount::<T>::take(who);
            if count > 0 {
                // `try_state` checks that the count is the prefix's size; one more than the
                // count costs nothing when it is.
                let _ = ServedAdapters::<T>::clear_prefix(who, count.saturating_add(1), None);
            }
            count
        }

        fn check_terms(terms: &ProviderTerms<T>) -> DispatchResult {
            ensure!(!terms.base_models.is_empty(), Error::<T>::NoBaseModels);
            for (i, model) in terms.base_models.iter().enumerate() {
                let earlier = terms.base_models.get(..i).unwrap_or_default();
                ensure!(!earlier.contains(model), Error::<T>::DuplicateBaseModel);
            }
            ensure!(terms.max_concurrent > 0, Error::<T>::ZeroConcurrency);
            ensure!(!is_small_order_encoding(&terms.worker_key.0), Error::<T>::WeakWorkerKey);
            Ok(())
        }

        fn index_provider(model: BaseModelId, who: &T::AccountId) -> DispatchResult {
            ProvidersByModel::<T>::try_mutate(model, |providers| {
                providers.try_push(who.clone()).map_err(|_| Error::<T>::TooManyProviders.into())
            })
        }

        fn unindex_provider(model: BaseModelId, who: &T::AccountId) {
            ProvidersByModel::<T>::mutate_exists(model, |maybe| {
                if let Some(providers) = maybe {
                    providers.retain(|p| p != who);
                    if providers.is_empty() {
                        *maybe = None;
                    }
                }
            });
        }
    }
}
