//! Types shared by everything that speaks to the OpenLedger chain.
//!
//! The runtime, the node and the off-chain worker agree on these definitions: account and
//! balance types, block numbers, and the properties of the native token OPEN. Keeping them in
//! one `no_std` crate means a change here is a change everywhere, checked by the compiler.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod market;
pub mod receipt;
pub mod service_receipt;
pub mod voucher;

use sp_runtime::{
    traits::{IdentifyAccount, Verify},
    MultiSignature,
};

/// Signature of a transaction: sr25519, ed25519 or ecdsa, like the rest of the Polkadot world.
pub type Signature = MultiSignature;

/// An account: the public key of the scheme that signs its transactions.
pub type AccountId = <<Signature as Verify>::Signer as IdentifyAccount>::AccountId;

/// An amount of OPEN, in its smallest unit (10^-18 OPEN).
pub type Balance = u128;

/// Height of a block.
pub type BlockNumber = u32;

/// Transaction counter of an account.
pub type Nonce = u32;

/// Hash of blocks, extrinsics and content.
pub type Hash = sp_core::H256;

/// Properties of the native token, OPEN.
pub mod token {
    use super::Balance;

    /// Ticker shown by wallets.
    pub const SYMBOL: &str = "OPEN";
    /// Number of decimals of one OPEN.
    pub const DECIMALS: u8 = 18;
    /// One OPEN in the smallest unit.
    pub const OPEN: Balance = 1_000_000_000_000_000_000;
    /// A thousandth of an OPEN.
    pub const MILLI_OPEN: Balance = OPEN / 1_000;
    /// A millionth of an OPEN.
    pub const MICRO_OPEN: Balance = OPEN / 1_000_000;
    /// The SS58 address prefix of OpenLedger accounts.
    ///
    /// A two-byte prefix outside the range the well-known networks use, so an OpenLedger
    /// address is never mistaken for a Polkadot, Kusama or generic Substrate one.
    pub const SS58_PREFIX: u16 = 7011;
}

#[cfg(test)]
mod tests {
    use super::token::*;

    #[test]
    fn units_are_consistent_with_decimals() {
        assert_eq!(OPEN, 10u128.pow(u32::from(DECIMALS)));
        assert_eq!(MILLI_OPEN * 1_000, OPEN);
        assert_eq!(MICRO_OPEN * 1_000_000, OPEN);
    }

    #[test]
    fn ss58_prefix_is_valid_and_not_generic() {
        // SS58 allows prefixes up to 16383; 42 is the generic Substrate one.
        const { assert!(SS58_PREFIX <= 16_383) };
        assert_ne!(SS58_PREFIX, 42);
    }
}
