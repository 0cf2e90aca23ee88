//! Runtime API of `pallet-channels`: what gateways and workers ask about payment channels.
//!
//! The runtime implements it with `ChannelStatus = pallet_channels::ChannelStatus<Runtime>`:
//!
//! ```ignore
//! impl pallet_channels_runtime_api::ChannelsApi<Block, pallet_channels::ChannelStatus<Runtime>>
//!     for Runtime
//! {
//!     fn channel(channel: ChannelId) -> pallet_channels::ChannelStatus<Runtime> {
//!         Channels::channel_status(channel)
//!     }
//! }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

use codec::Codec;
pub use openledger_primitives::voucher::ChannelId;

sp_api::decl_runtime_apis! {
    /// Queries about payment channels.
    pub trait ChannelsApi<ChannelStatus>
    where
        ChannelStatus: Codec,
    {
        /// Whether `channel` is unknown, open or closing (with its record: payer, provider,
        /// signer, deposit, redeemed amount, last sequence and Merkle root, inferences paid,
        /// phase), or closed. A gateway builds its next voucher's breakdown over the record's
        /// `redeemed` amount and a sequence above its `sequence`.
        fn channel(channel: ChannelId) -> ChannelStatus;
    }
}
