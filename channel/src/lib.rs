//! `openledger-channel`: payment channels off chain, the volume path beside per-job
//! settlement.
//!
//! A payer opens a channel to a provider in `pallet-channels` with a deposit and names an
//! ed25519 signer key that its gateway holds. For each request served on the channel:
//!
//! 1. the worker checks the channel has room ([`ProviderChannel::admit`]: its unvouched
//!    amount stays under the credit limit the worker sets, everything owed within the
//!    deposit), serves the request, signs a [`ServiceReceipt`] and records it
//!    ([`ProviderChannel::served`]);
//! 2. the gateway checks the receipt and answers with the channel's next voucher
//!    ([`PayerChannel::vouch`]): the cumulative amount owed, its breakdown by adapter and
//!    context DataNet since the last redemption, the [`merkle`] root of those receipts;
//! 3. the worker checks the voucher as the chain will and keeps it
//!    ([`ProviderChannel::accept`]), and now and then redeems the latest on chain.
//!
//! Both sides write to their [`Store`] before they answer, so a restart loses nothing. No
//! network and no chain client here: the worker and gateway carry these messages over libp2p
//! and read the chain themselves.

pub mod error;
pub mod merkle;
pub mod payer;
pub mod provider;
pub mod receipt;
pub mod store;

use codec::{Decode, Encode};
use sp_core::ConstU32;

pub use error::ChannelError;
pub use payer::{Entry, PayerChannel};
pub use provider::{ProviderChannel, RedeemPolicy, RedeemReason};
pub use receipt::{ContextShare, ServiceReceipt, SignedReceipt};
pub use store::{RedeemedTree, Revealed, Store};

/// Adapters one voucher's breakdown names (the runtime's `MaxAdaptersPerVoucher`).
pub const MAX_VOUCHER_ADAPTERS: usize = 16;
/// Context entries one voucher's breakdown names (the runtime's `MaxContextsPerVoucher`).
pub const MAX_VOUCHER_CONTEXTS: usize =
    openledger_primitives::receipt::MAX_RECEIPT_CONTEXT as usize;

/// A voucher as the runtime takes it (OPEN's `u128` balance, the runtime's bounds).
pub type Voucher = openledger_primitives::voucher::Voucher<
    u128,
    ConstU32<{ MAX_VOUCHER_ADAPTERS as u32 }>,
    ConstU32<{ MAX_VOUCHER_CONTEXTS as u32 }>,
>;

/// A voucher with the channel signer's signature, what `pallet-channels::redeem` takes.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SignedVoucher {
    pub voucher: Voucher,
    pub signature: [u8; 64],
}
