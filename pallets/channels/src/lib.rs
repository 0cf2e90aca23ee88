// The overview is README.md: rustdoc shows it as the crate's documentation and
// `#[pallet_doc]` puts it in the runtime metadata, where wallets and explorers read it.
#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]
// FRAME's generic types read better spelled out than behind one-use aliases.
#![allow(clippy::type_complexity)]

extern crate alloc;

pub use pallet::*;
pub use types::*;
pub use weights::WeightInfo;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
#[cfg(feature = "runtime-benchmarks")]
pub use benchmarking::BenchmarkHelper;
mod impls;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
pub mod types;
pub mod weights;

use frame_support::traits::fungible::Inspect;
pub use openledger_primitives::market::{RedeemedWork, Settlement, WorkAudit};

/// The balance type of the pallet's currency.
pub type BalanceOf<T> =
    <<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

#[frame_support::pallet]
#[pallet_doc("../README.md")]
pub mod pallet {
    use super::*;
    use frame_support::{
        pallet_prelude::*,
        traits::fungible::{Mutate, MutateHold},
    };
    use frame_system::pallet_prelude::*;
    use sp_core::{ed25519, H256};
    use sp_runtime::traits::{CheckedAdd, Saturating, Zero};

    /// The layout of this pallet's storage; a change to it comes with a migration that
    /// bumps it.
    const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// OPEN: the currency of deposits.
        type Currency: Mutate<Self::AccountId>
            + MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>;

        /// The overarching hold reason.
        type RuntimeHoldReason: From<HoldReason>;

        /// Where a redeemed voucher's payment goes, per adapter (`pallet-attribution`).
        type Settlement: Settlement<Self::AccountId, BalanceOf<Self>>;

        /// Where each redemption is offered for verification (`pallet-verification` draws a
        /// share of the requests it paid for and has their receipts revealed).
        type Audit: WorkAudit<Self::AccountId, BalanceOf<Self>>;

        /// Blocks after [`Pallet::request_close`] during which the provider may still redeem.
        #[pallet::constant]
        type ChallengeWindow: Get<BlockNumberFor<Self>>;

        /// Most adapters one voucher may name.
        #[pallet::constant]
        type MaxAdaptersPerVoucher: Get<u32>;

        /// Most (adapter, context DataNet) entries one voucher may name. Each adapter's entries
        /// go to the settlement as one receipt's context, so this must not exceed what the
        /// settlement accepts for a receipt.
        #[pallet::constant]
        type MaxContextsPerVoucher: Get<u32>;

        /// Weights of this pallet's calls.
        type WeightInfo: WeightInfo;

        /// Sets up adapters and DataNets for the benchmarks.
        #[cfg(feature = "runtime-benchmarks")]
        type BenchmarkHelper: BenchmarkHelper;
    }

    /// Why this pallet holds OPEN.
    #[pallet::composite_enum]
    pub enum HoldReason {
        /// A channel's deposit not yet redeemed, held from its payer until the channel closes.
        #[codec(index = 0)]
        ChannelDeposit,
    }

    /// Id the next channel gets.
    #[pallet::storage]
    pub type NextChannelId<T: Config> = StorageValue<_, ChannelId, ValueQuery>;

    /// Open and closing channels.
    #[pallet::storage]
    pub type Channels<T: Config> = StorageMap<_, Twox64Concat, ChannelId, Channel<T>>;

    /// Sum over open and closing channels of `deposit - redeemed`: everything on hold.
    #[pallet::storage]
    pub type TotalHeld<T: Config> = StorageValue<_, BalanceOf<T>, ValueQuery>;

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// A channel was opened and `deposit` held from `payer`; vouchers signed by `signer`
        /// pay `provider`.
        ChannelOpened {
            /// Its id.
            channel: ChannelId,
            /// Who deposited.
            payer: T::AccountId,
            /// Who redeems its vouchers.
            provider: T::AccountId,
            /// The ed25519 key whose vouchers it honours.
            signer: ed25519::Public,
            /// The deposit held from the payer.
            deposit: BalanceOf<T>,
        },
        /// The payer added `amount` to the channel's deposit, now `deposit`.
        ChannelToppedUp {
            /// The channel.
            channel: ChannelId,
            /// What was added.
            amount: BalanceOf<T>,
            /// Everything deposited into it now.
            deposit: BalanceOf<T>,
        },
        /// The payer replaced the channel's signer with `signer`.
        SignerRotated {
            /// The channel.
            channel: ChannelId,
            /// The new signer key.
            signer: ed25519::Public,
        },
        /// A voucher was redeemed: `paid` (the increment, for `covered` inferences) went through
        /// the settlement, once per adapter; the channel has now paid out `redeemed` for
        /// `inferences` inferences in all.
        VoucherRedeemed {
            /// The channel.
            channel: ChannelId,
            /// Its provider.
            provider: T::AccountId,
            /// The voucher's sequence number.
            sequence: u64,
            /// What this redemption paid: the voucher's cumulative amount less what the channel
            /// had paid before.
            paid: BalanceOf<T>,
            /// Everything the channel has paid out now.
            redeemed: BalanceOf<T>,
            /// Inferences this redemption paid for.
            covered: u64,
            /// Inferences the channel has paid for in all.
            inferences: u64,
            /// Merkle root of the receipts this redemption covered.
            receipts_root: H256,
        },
        /// The payer asked to close the channel: the provider may redeem until block `until`.
        CloseRequested {
            /// The channel.
            channel: ChannelId,
            /// The last block of the challenge window.
            until: BlockNumberFor<T>,
        },
        /// The channel closed: it paid out `redeemed` in all and `refunded` went back to the
        /// payer.
        ChannelClosed {
            /// The channel.
            channel: ChannelId,
            /// Its payer.
            payer: T::AccountId,
            /// Its provider.
            provider: T::AccountId,
            /// Everything it paid out.
            redeemed: BalanceOf<T>,
            /// What was left of the deposit, released to the payer.
            refunded: BalanceOf<T>,
        },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// A deposit or top-up of zero. Deposit at least one unit.
        ZeroAmount,
        /// The signer key is a small-order point, which no honest key is and which some
        /// verifiers accept any signature for. Authorise a key from a standard ed25519 key
        /// generator.
        BadSigner,
        /// No channel has this id. Check the id in `ChannelOpened`.
        UnknownChannel,
        /// The channel was closed and its record deleted. Open a new channel.
        ChannelClosed,
        /// Only the channel's payer may do this. Send from the payer's account.
        NotPayer,
        /// Only the channel's provider may do this. Send from the provider's account.
        NotProvider,
        /// The payer already asked to close the channel: no top-up, signer change or second
        /// request. Wait for the window to end and finalize, or open a new channel.
        ChannelClosing,
        /// The voucher's signature is not in canonical form (`s` not reduced, or `R` of small
        /// order). Sign with a standard ed25519 implementation.
        MalformedSignature,
        /// The signature does not verify against the channel's signer for this chain and the
        /// voucher's fields: signed by another key (or before a signer rotation), for another
        /// chain, or a field was altered. Sign the exact `VoucherPayload` with the channel's
        /// current signer.
        BadSignature,
        /// The voucher's sequence is not above the last redeemed one (a replayed or older
        /// voucher). Redeem only vouchers newer than the channel's `sequence`.
        StaleSequence,
        /// The voucher's cumulative amount is below what the channel already paid out. Redeem a
        /// voucher issued after the last redeemed one.
        CumulativeBelowRedeemed,
        /// The voucher's cumulative amount equals what the channel already paid out: nothing to
        /// pay. Wait for a voucher that owes more.
        NothingToRedeem,
        /// The voucher's cumulative amount is above the channel's deposit. The signer must not
        /// vouch for more than the deposit; the payer may top the channel up first.
        ExceedsDeposit,
        /// The adapter amounts do not sum to the increment `cumulative - redeemed` (the voucher
        /// was made before another redemption, or its breakdown is wrong). Ask the signer for a
        /// voucher over the channel's current redeemed amount.
        AmountsDoNotSumToIncrement,
        /// An adapter appears twice in the voucher. Name each adapter once.
        DuplicateAdapter,
        /// An (adapter, DataNet) pair appears twice in the voucher's contexts. Name each once.
        DuplicateContext,
        /// A context entry names an adapter missing from the voucher's adapter list. Name only
        /// adapters the voucher charges.
        ContextForUnlistedAdapter,
        /// An adapter's context amounts sum to more than its amount. A context amount is a part
        /// of its adapter's amount.
        ContextExceedsAdapterAmount,
        /// The channel's challenge window is over: no more redemptions. Redeem within
        /// `ChallengeWindow` blocks of the close request.
        ChallengeWindowEnded,
        /// The payer has not asked to close the channel. Call `request_close` first.
        NotClosing,
        /// The challenge window has not ended yet. Finalize from the block after `until` of
        /// `CloseRequested`.
        ChallengeWindowOpen,
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
        /// Open a channel to `provider` with `deposit`, held from the sender, honouring
        /// vouchers signed by `signer`.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::open())]
        pub fn open(
            origin: OriginFor<T>,
            provider: T::AccountId,
            #[pallet::compact] deposit: BalanceOf<T>,
            signer: ed25519::Public,
        ) -> DispatchResult {
            let payer = ensure_signed(origin)?;
            Self::do_open(payer, provider, deposit, signer)
        }

        /// Add `amount`, held from the sender, to the deposit of `channel` (its payer only,
        /// while it is open).
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::top_up())]
        pub fn top_up(
            origin: OriginFor<T>,
            channel: ChannelId,
            #[pallet::compact] amount: BalanceOf<T>,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            ensure!(!amount.is_zero(), Error::<T>::ZeroAmount);
            let mut record = Self::payers_open_channel(channel, &who)?;
            T::Currency::hold(&HoldReason::ChannelDeposit.into(), &who, amount)?;
            record.deposit =
                record.deposit.checked_add(&amount).ok_or(sp_runtime::ArithmeticError::Overflow)?;
            TotalHeld::<T>::try_mutate(|total| -> DispatchResult {
                *total = total.checked_add(&amount).ok_or(sp_runtime::ArithmeticError::Overflow)?;
                Ok(())
            })?;
            let deposit = record.deposit;
            Channels::<T>::insert(channel, record);
            Self::deposit_event(Event::ChannelToppedUp { channel, amount, deposit });
            Ok(())
        }

        /// Replace the signer of `channel` with `signer` (its payer only, while it is open).
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::rotate_signer())]
        pub fn rotate_signer(
            origin: OriginFor<T>,
            channel: ChannelId,
            signer: ed25519::Public,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Self::ensure_valid_signer(&signer)?;
            let mut record = Self::payers_open_channel(channel, &who)?;
            record.signer = signer;
            Channels::<T>::insert(channel, record);
            Self::deposit_event(Event::SignerRotated { channel, signer });
            Ok(())
        }

        /// Redeem `voucher`, signed by its channel's signer with `signature`: pay the provider
        /// the increment over what the channel already paid, split per adapter. Anyone may
        /// send it.
        #[pallet::call_index(3)]
        #[pallet::weight(Pallet::<T>::redeem_weight(
            voucher.adapters.len() as u32,
            voucher.contexts.len() as u32,
        ))]
        pub fn redeem(
            origin: OriginFor<T>,
            voucher: VoucherOf<T>,
            signature: ed25519::Signature,
        ) -> DispatchResultWithPostInfo {
            ensure_signed(origin)?;
            Self::do_redeem(voucher, signature)
        }

        /// Ask to close `channel` (its payer only): the provider may redeem for
        /// `ChallengeWindow` more blocks, then anyone may finalize.
        #[pallet::call_index(4)]
        #[pallet::weight(T::WeightInfo::request_close())]
        pub fn request_close(origin: OriginFor<T>, channel: ChannelId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut record = Self::payers_open_channel(channel, &who)?;
            let until =
                frame_system::Pallet::<T>::block_number().saturating_add(T::ChallengeWindow::get());
            record.phase = ChannelPhase::Closing { until };
            Channels::<T>::insert(channel, record);
            Self::deposit_event(Event::CloseRequested { channel, until });
            Ok(())
        }

        /// Close `channel` after its challenge window: release the rest of the deposit to the
        /// payer. Anyone may send it.
        #[pallet::call_index(5)]
        #[pallet::weight(T::WeightInfo::finalize_close())]
        pub fn finalize_close(origin: OriginFor<T>, channel: ChannelId) -> DispatchResult {
            ensure_signed(origin)?;
            let record = Self::channel(channel)?;
            let ChannelPhase::Closing { until } = record.phase else {
                return Err(Error::<T>::NotClosing.into());
            };
            ensure!(
                frame_system::Pallet::<T>::block_number() > until,
                Error::<T>::ChallengeWindowOpen
            );
            Self::close(channel, record)
        }

        /// Close `channel` at once as its provider, open or closing: the rest of the deposit
        /// goes back to the payer. Redeem the latest voucher first.
        #[pallet::call_index(6)]
        #[pallet::weight(T::WeightInfo::close_by_provider())]
        pub fn close_by_provider(origin: OriginFor<T>, channel: ChannelId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let record = Self::channel(channel)?;
            ensure!(record.provider == who, Error::<T>::NotProvider);
            Self::close(channel, record)
        }
    }

    /// Reads for clients, answered from the chain's state (metadata V16 view functions).
    #[pallet::view_functions]
    impl<T: Config> Pallet<T> {
        /// The exact bytes a channel's signer signs for `voucher` on this chain: the SCALE
        /// encoding of `VoucherPayload` (domain `openledger/voucher/v1`, this chain's genesis
        /// hash, the channel, sequence, cumulative amount, inferences, receipts root, and the
        /// BLAKE2b-256 of the SCALE-encoded adapter and context lists). Sign them as they are
        /// with ed25519 (no pre-hashing) and pass the signature to `redeem` beside the voucher.
        /// The bytes depend on the voucher and the chain only: whether `redeem` accepts it
        /// depends on the channel's state when it runs.
        pub fn voucher_signing_payload(voucher: VoucherOf<T>) -> alloc::vec::Vec<u8> {
            Self::voucher_payload_of(&voucher)
        }

        /// What is known about channel id `channel`: open or closing (with its record: payer,
        /// provider, signer, deposit, redeemed amount, last sequence), closed, or unknown.
        pub fn channel_status(channel: ChannelId) -> ChannelStatus<T> {
            Self::status_of(channel)
        }
    }
}
