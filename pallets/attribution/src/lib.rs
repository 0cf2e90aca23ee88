// The overview is README.md: rustdoc shows it as the crate's documentation and
// `#[pallet_doc]` puts it in the runtime metadata, where wallets and explorers read it.
#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]
// FRAME's generic types (payouts of `Payee<T::AccountId>` and `BalanceOf<T>`) read better
// spelled out than behind one-use aliases.
#![allow(clippy::type_complexity)]

extern crate alloc;

pub use pallet::*;
pub use types::*;
pub use weights::WeightInfo;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
mod impls;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
pub mod types;
pub mod weights;

use frame_support::traits::fungible::Inspect;
pub use openledger_primitives::market::{
    AdapterCatalog, AdapterId, DataNetId, DataNetShare, Settlement,
};

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
            tokens::{Precision, Preservation},
        },
        PalletId,
    };
    use frame_system::pallet_prelude::*;
    use openledger_primitives::market::BaseModelId;
    use sp_core::H256;
    use sp_runtime::{
        traits::{AccountIdConversion, CheckedSub, Saturating, Zero},
        ArithmeticError, Permill,
    };

    /// The layout of this pallet's storage; a change to it comes with a migration that
    /// bumps it.
    const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// OPEN.
        type Currency: Mutate<Self::AccountId>
            + MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>;

        /// The overarching hold reason.
        type RuntimeHoldReason: From<HoldReason>;

        /// Who may change the fee split ([`Pallet::set_split`]): root on a development chain,
        /// a governance origin on a network.
        type AdminOrigin: EnsureOrigin<Self::RuntimeOrigin>;

        /// The pallet's account, which holds contributors' rewards until claimed.
        #[pallet::constant]
        type PalletId: Get<PalletId>;

        /// Receives the treasury part of fees and every rounding remainder.
        #[pallet::constant]
        type Treasury: Get<Self::AccountId>;

        /// Held from a DataNet's owner while it exists.
        #[pallet::constant]
        type DataNetDeposit: Get<BalanceOf<Self>>;

        /// Held from a contributor per record.
        #[pallet::constant]
        type ContributionDeposit: Get<BalanceOf<Self>>;

        /// Held from an adapter's owner: a base amount ...
        #[pallet::constant]
        type AdapterDepositBase: Get<BalanceOf<Self>>;

        /// ... plus this much per byte of the stored adapter record.
        #[pallet::constant]
        type AdapterDepositPerByte: Get<BalanceOf<Self>>;

        /// Longest DataNet metadata, in bytes.
        #[pallet::constant]
        type MaxMetadataLen: Get<u32>;

        /// Most curators per DataNet.
        #[pallet::constant]
        type MaxCurators: Get<u32>;

        /// Most training DataNets per adapter.
        #[pallet::constant]
        type MaxTrainingDataNets: Get<u32>;

        /// Most context DataNets per settlement.
        #[pallet::constant]
        type MaxContextDataNets: Get<u32>;

        /// Largest weight of one record.
        #[pallet::constant]
        type MaxRecordWeight: Get<u128>;

        /// Largest LoRA rank an adapter may declare.
        #[pallet::constant]
        type MaxRank: Get<u32>;

        /// Weights of this pallet's calls.
        type WeightInfo: WeightInfo;
    }

    /// Why this pallet holds OPEN.
    #[pallet::composite_enum]
    pub enum HoldReason {
        /// A DataNet owner's deposit.
        #[codec(index = 0)]
        DataNetDeposit,
        /// A contributor's deposit for one record.
        #[codec(index = 1)]
        ContributionDeposit,
        /// An adapter owner's deposit.
        #[codec(index = 2)]
        AdapterDeposit,
    }

    /// Id the next DataNet gets.
    #[pallet::storage]
    pub type NextDataNetId<T: Config> = StorageValue<_, DataNetId, ValueQuery>;

    /// DataNets.
    #[pallet::storage]
    pub type DataNets<T: Config> = StorageMap<_, Twox64Concat, DataNetId, DataNet<T>>;

    /// Contributed records by DataNet and record hash.
    #[pallet::storage]
    pub type Records<T: Config> =
        StorageDoubleMap<_, Twox64Concat, DataNetId, Identity, H256, Record<T>>;

    /// Contributors' stakes by DataNet and account.
    #[pallet::storage]
    pub type Stakes<T: Config> =
        StorageDoubleMap<_, Twox64Concat, DataNetId, Blake2_128Concat, T::AccountId, Stake>;

    /// Id the next adapter gets.
    #[pallet::storage]
    pub type NextAdapterId<T: Config> = StorageValue<_, AdapterId, ValueQuery>;

    /// Registered adapters (retired ones included, so their open jobs settle).
    #[pallet::storage]
    pub type Adapters<T: Config> = StorageMap<_, Twox64Concat, AdapterId, Adapter<T>>;

    /// The fee split in force.
    #[pallet::storage]
    pub type Split<T: Config> = StorageValue<_, FeeSplit, ValueQuery>;

    #[pallet::genesis_config]
    #[derive(frame_support::DefaultNoBound)]
    pub struct GenesisConfig<T: Config> {
        /// The initial split in parts per million (provider, adapter owner, DataNets,
        /// treasury); [`FeeSplit::default`] when `None`.
        pub split: Option<[u32; 4]>,
        #[serde(skip)]
        pub _config: core::marker::PhantomData<T>,
    }

    #[pallet::genesis_build]
    impl<T: Config> BuildGenesisConfig for GenesisConfig<T> {
        fn build(&self) {
            let split = self.split.map(FeeSplit::from_ppm).unwrap_or_default();
            assert!(split.is_valid(), "genesis fee split must sum to 100%");
            Split::<T>::put(split);
            Pallet::<T>::ensure_accounts_exist();
        }
    }

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// A DataNet was created.
        DataNetCreated {
            /// Its id.
            datanet: DataNetId,
            /// Its owner, who paid its deposit.
            owner: T::AccountId,
        },
        /// A curator was added to a DataNet.
        CuratorAdded {
            /// The DataNet.
            datanet: DataNetId,
            /// The new curator.
            curator: T::AccountId,
        },
        /// A curator was removed from a DataNet.
        CuratorRemoved {
            /// The DataNet.
            datanet: DataNetId,
            /// The former curator.
            curator: T::AccountId,
        },
        /// A record was contributed and awaits a curator.
        ContributionSubmitted {
            /// The DataNet.
            datanet: DataNetId,
            /// The record's content hash.
            record: H256,
            /// Who contributed it and paid its deposit.
            contributor: T::AccountId,
            /// Its weight: its share of the DataNet's rewards once approved.
            weight: u128,
        },
        /// A curator approved a record: its weight earns from now on.
        ContributionApproved {
            /// The DataNet.
            datanet: DataNetId,
            /// The record's content hash.
            record: H256,
            /// Its contributor.
            contributor: T::AccountId,
        },
        /// A curator rejected a pending record; its deposit went back.
        ContributionRejected {
            /// The DataNet.
            datanet: DataNetId,
            /// The record's content hash.
            record: H256,
            /// Its contributor, refunded.
            contributor: T::AccountId,
        },
        /// A record was removed; its deposit went back.
        ContributionRemoved {
            /// The DataNet.
            datanet: DataNetId,
            /// The record's content hash.
            record: H256,
            /// Its contributor, refunded.
            contributor: T::AccountId,
        },
        /// A contributor claimed its rewards.
        RewardsClaimed {
            /// The DataNet paid from.
            datanet: DataNetId,
            /// The contributor.
            who: T::AccountId,
            /// What it received.
            amount: BalanceOf<T>,
        },
        /// An adapter was registered.
        AdapterRegistered {
            /// Its id.
            adapter: AdapterId,
            /// Its owner, who receives the owner's share of its fees.
            owner: T::AccountId,
            /// The base model it applies to.
            base_model: BaseModelId,
            /// Its price per 1,000 tokens, on top of the provider's.
            price_per_1k: BalanceOf<T>,
            /// The deposit held from its owner.
            deposit: BalanceOf<T>,
        },
        /// An adapter's price changed.
        AdapterPriceUpdated {
            /// The adapter.
            adapter: AdapterId,
            /// Its new price per 1,000 tokens.
            price_per_1k: BalanceOf<T>,
        },
        /// An adapter was retired: no new jobs; its deposit went back.
        AdapterRetired {
            /// The adapter.
            adapter: AdapterId,
        },
        /// The fee split changed.
        SplitUpdated {
            /// The new split.
            split: FeeSplit,
        },
        /// A job's charge was split: every payee and its amount (they sum to `charge`).
        FeeSplit {
            /// The settled job.
            job: openledger_primitives::market::JobId,
            /// The adapter it ran.
            adapter: AdapterId,
            /// What the job was charged.
            charge: BalanceOf<T>,
            /// Every payee and what it got.
            payouts: BoundedVec<(Payee<T::AccountId>, BalanceOf<T>), MaxPayoutsOf<T>>,
        },
        /// A redeemed channel voucher's charge for one adapter was split, as a job's is: every
        /// payee and its amount (they sum to `charge`).
        VoucherFeeSplit {
            /// The channel the voucher drew on.
            channel: openledger_primitives::voucher::ChannelId,
            /// The voucher's sequence number.
            sequence: u64,
            /// The adapter this part of the voucher paid for.
            adapter: AdapterId,
            /// The adapter's amount in the voucher.
            charge: BalanceOf<T>,
            /// Every payee and what it got.
            payouts: BoundedVec<(Payee<T::AccountId>, BalanceOf<T>), MaxPayoutsOf<T>>,
        },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// No DataNet has this id.
        UnknownDataNet,
        /// The sender is not the DataNet's owner.
        NotDataNetOwner,
        /// The sender is neither a curator nor the owner of the DataNet.
        NotCurator,
        /// The account already curates this DataNet.
        AlreadyCurator,
        /// The account does not curate this DataNet.
        NotACurator,
        /// The DataNet has `MaxCurators` curators already. Remove one first.
        TooManyCurators,
        /// A contribution's weight must be between 1 and `MaxRecordWeight`.
        BadWeight,
        /// This record hash is already contributed to the DataNet.
        DuplicateRecord,
        /// No such record in the DataNet.
        UnknownRecord,
        /// The record is already approved (reject applies to pending records only).
        NotPending,
        /// The sender is neither the record's contributor nor a curator of the DataNet.
        NotContributorOrCurator,
        /// Nothing to claim.
        NothingToClaim,
        /// No adapter has this id.
        UnknownAdapter,
        /// The sender is not the adapter's owner.
        NotAdapterOwner,
        /// The adapter is retired.
        AdapterRetired,
        /// The rank must be between 1 and `MaxRank`.
        BadRank,
        /// `target_modules` must name at least one of the seven projections and nothing else.
        BadTargetModules,
        /// Training shares must sum to at most 100%, name existing DataNets, each once.
        BadTrainingShares,
        /// The split's parts must sum to exactly 100%.
        BadSplit,
        /// Context shares must sum to at most 100% and name existing DataNets.
        BadContextShares,
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
        /// Create a DataNet described by `metadata`; the sender owns it. Holds
        /// `DataNetDeposit`.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::create_datanet())]
        pub fn create_datanet(
            origin: OriginFor<T>,
            metadata: BoundedVec<u8, T::MaxMetadataLen>,
        ) -> DispatchResult {
            let owner = ensure_signed(origin)?;
            let datanet = NextDataNetId::<T>::get();
            let deposit = T::DataNetDeposit::get();
            T::Currency::hold(&HoldReason::DataNetDeposit.into(), &owner, deposit)?;
            NextDataNetId::<T>::put(datanet.checked_add(1).ok_or(ArithmeticError::Overflow)?);
            DataNets::<T>::insert(
                datanet,
                DataNet {
                    owner: owner.clone(),
                    metadata,
                    curators: BoundedVec::new(),
                    total_weight: 0,
                    reward_per_weight: sp_core::U256::zero(),
                    balance: Zero::zero(),
                    records: 0,
                    deposit,
                },
            );
            Self::deposit_event(Event::DataNetCreated { datanet, owner });
            Ok(())
        }

        /// Add `curator` to `datanet` (its owner only).
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::add_curator())]
        pub fn add_curator(
            origin: OriginFor<T>,
            datanet: DataNetId,
            curator: T::AccountId,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            DataNets::<T>::try_mutate(datanet, |d| -> DispatchResult {
                let d = d.as_mut().ok_or(Error::<T>::UnknownDataNet)?;
                ensure!(d.owner == who, Error::<T>::NotDataNetOwner);
                ensure!(!d.curators.contains(&curator), Error::<T>::AlreadyCurator);
                d.curators.try_push(curator.clone()).map_err(|_| Error::<T>::TooManyCurators)?;
                Ok(())
            })?;
            Self::deposit_event(Event::CuratorAdded { datanet, curator });
            Ok(())
        }

        /// Remove `curator` from `datanet` (its owner only).
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::remove_curator())]
        pub fn remove_curator(
            origin: OriginFor<T>,
            datanet: DataNetId,
            curator: T::AccountId,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            DataNets::<T>::try_mutate(datanet, |d| -> DispatchResult {
                let d = d.as_mut().ok_or(Error::<T>::UnknownDataNet)?;
                ensure!(d.owner == who, Error::<T>::NotDataNetOwner);
                let at = d.curators.iter().position(|c| c == &curator);
                let at = at.ok_or(Error::<T>::NotACurator)?;
                d.curators.remove(at);
                Ok(())
            })?;
            Self::deposit_event(Event::CuratorRemoved { datanet, curator });
            Ok(())
        }

        /// Contribute the record `record` with `weight` to `datanet`; it earns once a curator
        /// approves it. Holds `ContributionDeposit`.
        #[pallet::call_index(3)]
        #[pallet::weight(T::WeightInfo::contribute())]
        pub fn contribute(
            origin: OriginFor<T>,
            datanet: DataNetId,
            record: H256,
            weight: u128,
        ) -> DispatchResult {
            let contributor = ensure_signed(origin)?;
            ensure!(weight > 0 && weight <= T::MaxRecordWeight::get(), Error::<T>::BadWeight);
            let mut d = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
            ensure!(!Records::<T>::contains_key(datanet, record), Error::<T>::DuplicateRecord);
            let deposit = T::ContributionDeposit::get();
            T::Currency::hold(&HoldReason::ContributionDeposit.into(), &contributor, deposit)?;
            d.records = d.records.checked_add(1).ok_or(ArithmeticError::Overflow)?;
            DataNets::<T>::insert(datanet, d);
            Records::<T>::insert(
                datanet,
                record,
                Record {
                    contributor: contributor.clone(),
                    weight,
                    status: RecordStatus::Pending,
                    deposit,
                },
            );
            Self::deposit_event(Event::ContributionSubmitted {
                datanet,
                record,
                contributor,
                weight,
            });
            Ok(())
        }

        /// Approve a pending record (a curator or the owner): its weight earns from now on.
        #[pallet::call_index(4)]
        #[pallet::weight(T::WeightInfo::approve_contribution())]
        pub fn approve_contribution(
            origin: OriginFor<T>,
            datanet: DataNetId,
            record: H256,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let (mut d, mut r) = Self::pending_for_curator(datanet, record, &who)?;
            Self::change_weight(datanet, &mut d, &r.contributor, r.weight, true)?;
            r.status = RecordStatus::Approved;
            let contributor = r.contributor.clone();
            Records::<T>::insert(datanet, record, r);
            DataNets::<T>::insert(datanet, d);
            Self::deposit_event(Event::ContributionApproved { datanet, record, contributor });
            Ok(())
        }

        /// Reject a pending record (a curator or the owner); the contributor's deposit is
        /// released.
        #[pallet::call_index(5)]
        #[pallet::weight(T::WeightInfo::reject_contribution())]
        pub fn reject_contribution(
            origin: OriginFor<T>,
            datanet: DataNetId,
            record: H256,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let (mut d, r) = Self::pending_for_curator(datanet, record, &who)?;
            Self::drop_record(datanet, &mut d, record, &r)?;
            DataNets::<T>::insert(datanet, d);
            Self::deposit_event(Event::ContributionRejected {
                datanet,
                record,
                contributor: r.contributor,
            });
            Ok(())
        }

        /// Remove a record (its contributor, a curator or the owner). An approved record's
        /// weight stops earning; what it earned stays claimable. The deposit is released.
        #[pallet::call_index(6)]
        #[pallet::weight(T::WeightInfo::remove_contribution())]
        pub fn remove_contribution(
            origin: OriginFor<T>,
            datanet: DataNetId,
            record: H256,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut d = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
            let r = Records::<T>::get(datanet, record).ok_or(Error::<T>::UnknownRecord)?;
            ensure!(
                r.contributor == who || Self::curates(&d, &who),
                Error::<T>::NotContributorOrCurator
            );
            if r.status == RecordStatus::Approved {
                Self::change_weight(datanet, &mut d, &r.contributor, r.weight, false)?;
            }
            Self::drop_record(datanet, &mut d, record, &r)?;
            DataNets::<T>::insert(datanet, d);
            Self::deposit_event(Event::ContributionRemoved {
                datanet,
                record,
                contributor: r.contributor,
            });
            Ok(())
        }

        /// Pay the sender what it earned in `datanet`.
        #[pallet::call_index(7)]
        #[pallet::weight(T::WeightInfo::claim_rewards())]
        pub fn claim_rewards(origin: OriginFor<T>, datanet: DataNetId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut d = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
            let mut stake = Stakes::<T>::get(datanet, &who).ok_or(Error::<T>::NothingToClaim)?;
            Self::bring_up_to_date(&d, &mut stake)?;
            let (whole, rest) = stake.owed_scaled.div_mod(REWARD_SCALE.into());
            let amount: BalanceOf<T> = u128::try_from(whole)
                .map_err(|_| ArithmeticError::Overflow)?
                .try_into()
                .map_err(|_| ArithmeticError::Overflow)?;
            ensure!(!amount.is_zero(), Error::<T>::NothingToClaim);
            // The DataNet's balance always covers its contributors' whole planck.
            d.balance = d.balance.checked_sub(&amount).ok_or(ArithmeticError::Underflow)?;
            T::Currency::transfer(&Self::account_id(), &who, amount, Preservation::Preserve)?;
            stake.owed_scaled = rest;
            Self::store_stake(datanet, &who, stake);
            DataNets::<T>::insert(datanet, d);
            Self::deposit_event(Event::RewardsClaimed { datanet, who, amount });
            Ok(())
        }

        /// Register a LoRA adapter; the sender owns it and receives the owner's share of its
        /// fees. Holds `AdapterDepositBase + AdapterDepositPerByte x (record size)`.
        #[pallet::call_index(8)]
        #[pallet::weight(T::WeightInfo::register_adapter(training.len() as u32))]
        pub fn register_adapter(
            origin: OriginFor<T>,
            base_model: BaseModelId,
            content_hash: H256,
            rank: u32,
            target_modules: u8,
            #[pallet::compact] price_per_1k: BalanceOf<T>,
            training: BoundedVec<DataNetShare, T::MaxTrainingDataNets>,
        ) -> DispatchResult {
            let owner = ensure_signed(origin)?;
            ensure!(rank >= 1 && rank <= T::MaxRank::get(), Error::<T>::BadRank);
            ensure!(target::is_valid(target_modules), Error::<T>::BadTargetModules);
            ensure!(Self::valid_shares(&training), Error::<T>::BadTrainingShares);
            let adapter = NextAdapterId::<T>::get();
            let mut record = Adapter {
                owner: owner.clone(),
                base_model,
                content_hash,
                rank,
                target_modules,
                price_per_1k,
                training,
                deposit: Zero::zero(),
                retired: false,
            };
            let bytes: BalanceOf<T> = (record.encoded_size() as u32).into();
            let deposit = T::AdapterDepositBase::get()
                .saturating_add(T::AdapterDepositPerByte::get().saturating_mul(bytes));
            T::Currency::hold(&HoldReason::AdapterDeposit.into(), &owner, deposit)?;
            record.deposit = deposit;
            NextAdapterId::<T>::put(adapter.checked_add(1).ok_or(ArithmeticError::Overflow)?);
            Adapters::<T>::insert(adapter, record);
            Self::deposit_event(Event::AdapterRegistered {
                adapter,
                owner,
                base_model,
                price_per_1k,
                deposit,
            });
            Ok(())
        }

        /// Change an adapter's price (its owner only); jobs already submitted keep theirs.
        #[pallet::call_index(9)]
        #[pallet::weight(T::WeightInfo::update_adapter_price())]
        pub fn update_adapter_price(
            origin: OriginFor<T>,
            adapter: AdapterId,
            #[pallet::compact] price_per_1k: BalanceOf<T>,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Adapters::<T>::try_mutate(adapter, |a| -> DispatchResult {
                let a = a.as_mut().ok_or(Error::<T>::UnknownAdapter)?;
                ensure!(a.owner == who, Error::<T>::NotAdapterOwner);
                ensure!(!a.retired, Error::<T>::AdapterRetired);
                a.price_per_1k = price_per_1k;
                Ok(())
            })?;
            Self::deposit_event(Event::AdapterPriceUpdated { adapter, price_per_1k });
            Ok(())
        }

        /// Retire an adapter (its owner only): no new jobs, the deposit is released. Jobs
        /// already running still settle and pay the owner.
        #[pallet::call_index(10)]
        #[pallet::weight(T::WeightInfo::retire_adapter())]
        pub fn retire_adapter(origin: OriginFor<T>, adapter: AdapterId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Adapters::<T>::try_mutate(adapter, |a| -> DispatchResult {
                let a = a.as_mut().ok_or(Error::<T>::UnknownAdapter)?;
                ensure!(a.owner == who, Error::<T>::NotAdapterOwner);
                ensure!(!a.retired, Error::<T>::AdapterRetired);
                T::Currency::release(
                    &HoldReason::AdapterDeposit.into(),
                    &who,
                    a.deposit,
                    Precision::BestEffort,
                )?;
                a.deposit = Zero::zero();
                a.retired = true;
                Ok(())
            })?;
            Self::deposit_event(Event::AdapterRetired { adapter });
            Ok(())
        }

        /// Set the fee split (the `AdminOrigin` only); its parts must sum to exactly 100%.
        #[pallet::call_index(11)]
        #[pallet::weight(T::WeightInfo::set_split())]
        pub fn set_split(origin: OriginFor<T>, split: FeeSplit) -> DispatchResult {
            T::AdminOrigin::ensure_origin(origin)?;
            ensure!(split.is_valid(), Error::<T>::BadSplit);
            Split::<T>::put(split);
            Self::deposit_event(Event::SplitUpdated { split });
            Ok(())
        }
    }

    #[pallet::extra_constants]
    impl<T: Config> Pallet<T> {
        /// The pallet's account (derived from `PalletId`): it holds DataNets' rewards until
        /// their contributors claim them, plus its existential deposit.
        #[pallet::constant_name(PalletAccount)]
        fn pallet_account() -> T::AccountId {
            Self::account_id()
        }
    }

    /// Reads for clients, answered from the chain's state (metadata V16 view functions).
    #[pallet::view_functions]
    impl<T: Config> Pallet<T> {
        /// What `who` could claim from `datanet` now with `claim`, in planck: its share of the
        /// DataNet's rewards since it contributed, by the weight of its approved records. Zero
        /// for an unknown DataNet or a non-contributor.
        pub fn pending_rewards(datanet: DataNetId, who: T::AccountId) -> BalanceOf<T> {
            Self::rewards_owed(datanet, &who)
        }

        /// How `charge` for a job on `adapter` run by `provider`, with retrieval `context`,
        /// would be split now: every payee and its amount, summing to `charge`. `None` for an
        /// unknown adapter or an invalid context (too many entries, a DataNet named twice or
        /// unknown, shares above 100%).
        pub fn quote_split(
            adapter: AdapterId,
            provider: T::AccountId,
            charge: BalanceOf<T>,
            context: BoundedVec<DataNetShare, T::MaxContextDataNets>,
        ) -> Option<alloc::vec::Vec<(Payee<T::AccountId>, BalanceOf<T>)>> {
            Self::split_quote(adapter, provider, charge, context.into_inner())
        }
    }

    impl<T: Config> Pallet<T> {
        /// The account holding contributors' rewards.
        pub fn account_id() -> T::AccountId {
            T::PalletId::get().into_account_truncating()
        }

        /// Endows the pallet and treasury accounts with the existential deposit (at genesis),
        /// so they exist whatever amounts they receive, and the pallet account never dips
        /// below it when contributors claim (which would burn its last planck as dust).
        pub(crate) fn ensure_accounts_exist() {
            let ed = T::Currency::minimum_balance();
            for who in [Self::account_id(), T::Treasury::get()] {
                let have = T::Currency::balance(&who);
                if have < ed {
                    let _ = T::Currency::mint_into(&who, ed.saturating_sub(have));
                }
            }
        }

        /// The DataNet and its pending `record`, if `who` curates it.
        fn pending_for_curator(
            datanet: DataNetId,
            record: H256,
            who: &T::AccountId,
        ) -> Result<(DataNet<T>, Record<T>), DispatchError> {
            let d = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
            ensure!(Self::curates(&d, who), Error::<T>::NotCurator);
            let r = Records::<T>::get(datanet, record).ok_or(Error::<T>::UnknownRecord)?;
            ensure!(r.status == RecordStatus::Pending, Error::<T>::NotPending);
            Ok((d, r))
        }

        pub(crate) fn curates(d: &DataNet<T>, who: &T::AccountId) -> bool {
            &d.owner == who || d.curators.contains(who)
        }

        pub(crate) fn valid_shares(shares: &[DataNetShare]) -> bool {
            let total: u64 = shares.iter().map(|s| u64::from(s.share.deconstruct())).sum();
            let unique = shares
                .iter()
                .enumerate()
                .all(|(i, a)| shares.iter().skip(i + 1).all(|b| b.datanet != a.datanet));
            total <= u64::from(Permill::one().deconstruct())
                && unique
                && shares.iter().all(|s| DataNets::<T>::contains_key(s.datanet))
        }

        /// Removes a record, releasing its deposit.
        fn drop_record(
            datanet: DataNetId,
            d: &mut DataNet<T>,
            record: H256,
            r: &Record<T>,
        ) -> DispatchResult {
            T::Currency::release(
                &HoldReason::ContributionDeposit.into(),
                &r.contributor,
                r.deposit,
                Precision::BestEffort,
            )?;
            d.records = d.records.saturating_sub(1);
            Records::<T>::remove(datanet, record);
            Ok(())
        }

        /// Adds (`add`) or removes `weight` of `who` in `datanet`, after bringing its stake up
        /// to date so past rewards are neither gained nor lost.
        fn change_weight(
            datanet: DataNetId,
            d: &mut DataNet<T>,
            who: &T::AccountId,
            weight: u128,
            add: bool,
        ) -> DispatchResult {
            let mut stake = Stakes::<T>::get(datanet, who).unwrap_or_default();
            Self::bring_up_to_date(d, &mut stake)?;
            if add {
                stake.weight = stake.weight.checked_add(weight).ok_or(ArithmeticError::Overflow)?;
                d.total_weight =
                    d.total_weight.checked_add(weight).ok_or(ArithmeticError::Overflow)?;
            } else {
                stake.weight =
                    stake.weight.checked_sub(weight).ok_or(ArithmeticError::Underflow)?;
                d.total_weight =
                    d.total_weight.checked_sub(weight).ok_or(ArithmeticError::Underflow)?;
            }
            Self::store_stake(datanet, who, stake);
            Ok(())
        }

        /// Stores a stake, or deletes it once it has no weight and nothing owed.
        fn store_stake(datanet: DataNetId, who: &T::AccountId, stake: Stake) {
            if stake.weight == 0 && stake.owed_scaled.is_zero() {
                Stakes::<T>::remove(datanet, who);
            } else {
                Stakes::<T>::insert(datanet, who, stake);
            }
        }

        /// Moves what `stake` earned since its snapshot into `owed_scaled`.
        pub(crate) fn bring_up_to_date(d: &DataNet<T>, stake: &mut Stake) -> DispatchResult {
            let delta = d
                .reward_per_weight
                .checked_sub(stake.snapshot)
                .ok_or(ArithmeticError::Underflow)?;
            let earned = delta.checked_mul(stake.weight.into()).ok_or(ArithmeticError::Overflow)?;
            stake.owed_scaled =
                stake.owed_scaled.checked_add(earned).ok_or(ArithmeticError::Overflow)?;
            stake.snapshot = d.reward_per_weight;
            Ok(())
        }

        /// Rewards `who` could claim from `datanet` now, in planck (the `pending_rewards` view
        /// function and runtime API).
        pub(crate) fn rewards_owed(datanet: DataNetId, who: &T::AccountId) -> BalanceOf<T> {
            let (Some(d), Some(mut stake)) =
                (DataNets::<T>::get(datanet), Stakes::<T>::get(datanet, who))
            else {
                return Zero::zero();
            };
            if Self::bring_up_to_date(&d, &mut stake).is_err() {
                return Zero::zero();
            }
            let whole = stake.owed_scaled / sp_core::U256::from(REWARD_SCALE);
            u128::try_from(whole).ok().and_then(|w| w.try_into().ok()).unwrap_or_else(Zero::zero)
        }

        /// An adapter's record.
        pub fn adapter_info(adapter: AdapterId) -> Option<Adapter<T>> {
            Adapters::<T>::get(adapter)
        }
    }
}

/// Upper bound on the payees of one settlement: provider, adapter owner, treasury, every
/// training DataNet and every context DataNet.
pub struct MaxPayoutsOf<T>(core::marker::PhantomData<T>);

impl<T: Config> frame_support::traits::Get<u32> for MaxPayoutsOf<T> {
    fn get() -> u32 {
        T::MaxTrainingDataNets::get().saturating_add(T::MaxContextDataNets::get()).saturating_add(3)
    }
}
