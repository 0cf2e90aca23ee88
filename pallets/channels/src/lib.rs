//! # Channels pallet: payment channels paid by signed aggregate vouchers
//!
//! The volume path of paying for inference. A payer opens a one-way channel to a provider with
//! a deposit, held from its account, and authorises an ed25519 *signer* (a key the gateway
//! holds, never the payer's account key). Requests then run off chain: the provider's worker
//! serves them at once and signs a receipt for each, and the gateway answers each receipt with
//! a new [`Voucher`](openledger_primitives::voucher::Voucher) signed by the channel's signer,
//! saying how much the channel owes in all. The provider redeems the latest voucher now and
//! then: one transaction pays for any number of inferences, and the payment is split through
//! [`Config::Settlement`] (`pallet-attribution`) exactly as a job's charge is, once per adapter
//! the voucher names (with its context DataNets), not once per inference. This is the pattern
//! of The Graph's Timeline Aggregation Protocol and Livepeer's tickets; the per-job path of
//! `pallet-jobs` stays for clients that want every job on chain.
//!
//! A provider's risk is the amount it served but holds no voucher for; a payer's is its
//! deposit. The chain never sees a request, only the sums.
//!
//! ## Lifecycle of a channel
//!
//! 1. [`Pallet::open`]: the sender (the payer) names the `provider`, a `deposit` and the
//!    `signer`. The deposit is held under [`HoldReason::ChannelDeposit`]; the channel gets the
//!    next [`ChannelId`] ([`Event::ChannelOpened`]).
//! 2. While the channel is open, the payer may add to the deposit with [`Pallet::top_up`] and
//!    replace the signer with [`Pallet::rotate_signer`] (vouchers signed by the old key are no
//!    longer accepted; a provider should redeem before serving under a new key).
//! 3. Anyone may [`Pallet::redeem`] a voucher on the provider's behalf, while the channel is open
//!    or within the challenge window of a close. A voucher is accepted when it is signed by the
//!    channel's signer over its [`VoucherPayload`] for this chain's genesis hash, its sequence
//!    is above the last redeemed one, its cumulative amount is above the redeemed amount and at
//!    most the deposit, and its breakdown by adapter sums to the increment (see *Vouchers*).
//!    The increment `cumulative - redeemed` is released from the payer's hold and paid out
//!    through the settlement; the channel records the new redeemed amount, sequence, Merkle
//!    root and inference count ([`Event::VoucherRedeemed`]).
//! 4. The payer ends the channel with [`Pallet::request_close`]: the channel enters its
//!    challenge window of [`Config::ChallengeWindow`] blocks, during which the provider can still
//!    redeem its latest voucher ([`Event::CloseRequested`]). From the block after the window,
//!    anyone may [`Pallet::finalize_close`], which releases what is left of the deposit to the
//!    payer and deletes the channel ([`Event::ChannelClosed`]).
//! 5. The provider may close at once with [`Pallet::close_by_provider`] (after redeeming what it
//!    holds): the rest of the deposit goes back to the payer the same way.
//!
//! Closed channels are deleted. Channel ids are assigned in order, so an id below
//! [`NextChannelId`] with no record is a closed channel: anything sent to it fails with
//! [`Error::ChannelClosed`].
//!
//! ## Vouchers
//!
//! A voucher carries the channel, a sequence number, the cumulative amount owed since the
//! channel opened, the number of inferences and the Merkle root of the receipts that make up
//! the *increment* over the channel's redeemed amount, and the increment's breakdown: one
//! [`AdapterCharge`] per adapter (summing to the increment) and one [`ContextCharge`] per
//! (adapter, DataNet) whose records the adapter's receipts retrieved (summing, per adapter, to
//! at most its amount). The exact signed bytes, for clients in any language, are documented in
//! `openledger_primitives::voucher`.
//!
//! On redemption each adapter's amount is one settlement: the settlement gets the adapter's
//! amount as the charge and each of its context DataNets at the share `context amount /
//! adapter amount` (rounded down to the ppm), exactly the arguments a receipt with that charge
//! and context would give it. So the provider, the adapter's owner, its training DataNets, the
//! context DataNets and the treasury receive what the per-job path would have paid them for the
//! same receipts, up to rounding.
//!
//! A voucher made before another voucher was redeemed describes an increment that no longer
//! exists and fails with [`Error::AmountsDoNotSumToIncrement`]; a voucher with a sequence at or
//! below the last redeemed one fails with [`Error::StaleSequence`], so no voucher is paid twice.
//!
//! ## Weights
//!
//! A redemption's cost grows with the adapters and context DataNets its voucher names (each a
//! settlement), never with the number of inferences it covers: redeeming a voucher for one
//! inference and for a million costs the same.
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
pub use openledger_primitives::market::Settlement;

/// The balance type of the pallet's currency.
pub type BalanceOf<T> =
    <<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

#[frame_support::pallet]
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
            channel: ChannelId,
            payer: T::AccountId,
            provider: T::AccountId,
            signer: ed25519::Public,
            deposit: BalanceOf<T>,
        },
        /// The payer added `amount` to the channel's deposit, now `deposit`.
        ChannelToppedUp { channel: ChannelId, amount: BalanceOf<T>, deposit: BalanceOf<T> },
        /// The payer replaced the channel's signer with `signer`.
        SignerRotated { channel: ChannelId, signer: ed25519::Public },
        /// A voucher was redeemed: `paid` (the increment, for `covered` inferences) went through
        /// the settlement, once per adapter; the channel has now paid out `redeemed` for
        /// `inferences` inferences in all.
        VoucherRedeemed {
            channel: ChannelId,
            provider: T::AccountId,
            sequence: u64,
            paid: BalanceOf<T>,
            redeemed: BalanceOf<T>,
            covered: u64,
            inferences: u64,
            receipts_root: H256,
        },
        /// The payer asked to close the channel: the provider may redeem until block `until`.
        CloseRequested { channel: ChannelId, until: BlockNumberFor<T> },
        /// The channel closed: it paid out `redeemed` in all and `refunded` went back to the
        /// payer.
        ChannelClosed {
            channel: ChannelId,
            payer: T::AccountId,
            provider: T::AccountId,
            redeemed: BalanceOf<T>,
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
}
