//! Plain data types of payment channels.

use crate::{BalanceOf, Config};
use codec::{Decode, Encode, MaxEncodedLen};
use frame_support::{CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound};
use frame_system::pallet_prelude::BlockNumberFor;
use scale_info::TypeInfo;
use sp_core::{ed25519, H256};

pub use openledger_primitives::voucher::{
    AdapterCharge, ChannelId, ContextCharge, Voucher as GenericVoucher, VoucherPayload,
};

/// A voucher as this runtime's `redeem` takes it.
pub type VoucherOf<T> = GenericVoucher<
    BalanceOf<T>,
    <T as Config>::MaxAdaptersPerVoucher,
    <T as Config>::MaxContextsPerVoucher,
>;

/// Whether a channel takes new vouchers for ever or is closing.
#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound, Encode, Decode, TypeInfo, MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
pub enum ChannelPhase<T: Config> {
    /// Open: the payer may top it up and rotate its signer; the provider redeems.
    Open,
    /// The payer asked to close it: the provider may redeem until block `until` included;
    /// from the block after, anyone may finalize the close.
    Closing {
        /// The last block of the challenge window.
        until: BlockNumberFor<T>,
    },
}

/// An open (or closing) channel.
#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound, Encode, Decode, TypeInfo, MaxEncodedLen,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct Channel<T: Config> {
    /// Who deposited, and gets back what is not redeemed.
    pub payer: T::AccountId,
    /// Who is paid by redeeming vouchers.
    pub provider: T::AccountId,
    /// The ed25519 key whose vouchers the channel honours.
    pub signer: ed25519::Public,
    /// Everything the payer ever deposited into it.
    pub deposit: BalanceOf<T>,
    /// Everything paid out of it by redemptions: the last redeemed voucher's cumulative amount.
    /// `deposit - redeemed` is on hold from the payer.
    pub redeemed: BalanceOf<T>,
    /// Sequence of the last redeemed voucher (0 before the first: vouchers start at 1).
    pub sequence: u64,
    /// Merkle root of the receipts the last redeemed voucher covered (zero before the first).
    pub receipts_root: H256,
    /// Inferences paid for by all redemptions so far.
    pub inferences: u64,
    /// Open or closing.
    pub phase: ChannelPhase<T>,
}

impl<T: Config> Channel<T> {
    /// What is still on hold for the channel: `deposit - redeemed`.
    pub fn remaining(&self) -> BalanceOf<T> {
        use sp_runtime::Saturating;
        self.deposit.saturating_sub(self.redeemed)
    }
}

/// What the runtime API says about a channel id.
#[derive(CloneNoBound, PartialEqNoBound, DebugNoBound, Encode, Decode, TypeInfo)]
#[scale_info(skip_type_params(T))]
pub enum ChannelStatus<T: Config> {
    /// No channel has this id yet.
    Unknown,
    /// The channel is open or closing, with its record.
    Open(Channel<T>),
    /// The channel was closed (its events say how) and its record deleted.
    Closed,
}
