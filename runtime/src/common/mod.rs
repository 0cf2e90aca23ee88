//! What the solo chain's runtime and the parachain's runtime share.
//!
//! This folder is compiled into both crates (`openledger-runtime` declares it as a module;
//! `openledger-parachain-runtime` includes the same files by path), so the two chains have
//! one definition of the OPEN token's constants, the transaction format, the marketplace
//! pallets and their configuration, the runtime APIs clients call, and the endowed genesis
//! accounts. Each runtime defines its consensus pallets, block time and block limits
//! itself, and gives the shared pallets the same names and indices (4 to 12), which the code
//! here reaches through `crate::`.

#[macro_use]
pub mod apis;
pub mod genesis;
pub mod market;

use sp_runtime::{generic, traits::BlakeTwo256};

pub use frame_system::Call as SystemCall;
pub use openledger_primitives::{token, AccountId, Balance, BlockNumber, Hash, Nonce, Signature};
pub use pallet_balances::Call as BalancesCall;

/// Types the node and other clients use without knowing the runtime's extrinsic format.
pub mod opaque {
    use super::*;
    pub use sp_runtime::OpaqueExtrinsic as UncheckedExtrinsic;

    /// Block header.
    pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
    /// Block with opaque extrinsics.
    pub type Block = generic::Block<Header, UncheckedExtrinsic>;
}

/// Share of a block that ordinary (non-operational) extrinsics may fill, on both chains.
pub const NORMAL_DISPATCH_RATIO: sp_runtime::Perbill = sp_runtime::Perbill::from_percent(75);

/// Maximum encoded size of a block, on both chains.
pub const MAX_BLOCK_LENGTH: u32 = 5 * 1024 * 1024;

/// The block length limits of both chains: [`MAX_BLOCK_LENGTH`], of which ordinary
/// extrinsics may fill [`NORMAL_DISPATCH_RATIO`].
pub fn block_length() -> frame_system::limits::BlockLength {
    frame_system::limits::BlockLength::builder()
        .max_length(MAX_BLOCK_LENGTH)
        .modify_max_length_for_class(frame_support::dispatch::DispatchClass::Normal, |m| {
            *m = NORMAL_DISPATCH_RATIO * MAX_BLOCK_LENGTH
        })
        .build()
}

/// Existential deposit: 0.001 OPEN.
///
/// An account holding less is reaped, which bounds the state a spammer can create: opening
/// a million dust accounts costs 1,000 OPEN. It stays small enough that contributors who
/// earn tiny attribution rewards can still hold them once claimed.
pub const EXISTENTIAL_DEPOSIT: Balance = token::MILLI_OPEN;

/// Address format of extrinsics.
pub type Address = sp_runtime::MultiAddress<AccountId, ()>;
/// Block header.
pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
/// Block of this runtime.
pub type Block = generic::Block<Header, UncheckedExtrinsic>;

/// The checks every signed transaction goes through, in order (the same on both chains, so
/// wallets and clients sign for either alike).
pub type TxExtension = (
    frame_system::CheckNonZeroSender<crate::Runtime>,
    frame_system::CheckSpecVersion<crate::Runtime>,
    frame_system::CheckTxVersion<crate::Runtime>,
    frame_system::CheckGenesis<crate::Runtime>,
    frame_system::CheckEra<crate::Runtime>,
    frame_system::CheckNonce<crate::Runtime>,
    frame_system::CheckWeight<crate::Runtime>,
    pallet_transaction_payment::ChargeTransactionPayment<crate::Runtime>,
    frame_metadata_hash_extension::CheckMetadataHash<crate::Runtime>,
    frame_system::WeightReclaim<crate::Runtime>,
);

/// Extrinsic as it appears in a block.
pub type UncheckedExtrinsic =
    generic::UncheckedExtrinsic<Address, crate::RuntimeCall, Signature, TxExtension>;

/// The payload signed by a transaction's author.
pub type SignedPayload = generic::SignedPayload<crate::RuntimeCall, TxExtension>;

/// Dispatches blocks and extrinsics to the pallets.
pub type Executive = frame_executive::Executive<
    crate::Runtime,
    Block,
    frame_system::ChainContext<crate::Runtime>,
    crate::Runtime,
    crate::AllPalletsWithSystem,
    crate::Migrations,
>;
