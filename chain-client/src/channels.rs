//! Payment channels (`pallet-channels`): opening one, redeeming a voucher, and a channel's
//! state through the `ChannelsApi` runtime API. The vouchers themselves are made and checked
//! off chain (`openledger-channel`); these calls carry them.

use subxt::dynamic;
use subxt::ext::{scale_decode::DecodeAsType, scale_encode::EncodeAsType};
use subxt::utils::{AccountId32, H256};
use subxt_signer::sr25519::Keypair;

use crate::types::{AdapterId, Balance, DataNetId};
use crate::{find_event, rpc_err, ChainClient, ChainError};

/// A channel id.
pub type ChannelId = u64;

/// `pallet_channels::Voucher`, as `redeem` takes it.
#[derive(Clone, Debug, PartialEq, Eq, EncodeAsType)]
#[encode_as_type(crate_path = "subxt::ext::scale_encode")]
pub struct VoucherArg {
    pub channel: ChannelId,
    pub sequence: u64,
    pub cumulative: Balance,
    pub inferences: u64,
    pub receipts_root: H256,
    pub adapters: Vec<AdapterChargeArg>,
    pub contexts: Vec<ContextChargeArg>,
}

/// One adapter's part of a voucher's increment.
#[derive(Clone, Debug, PartialEq, Eq, EncodeAsType)]
#[encode_as_type(crate_path = "subxt::ext::scale_encode")]
pub struct AdapterChargeArg {
    pub adapter: AdapterId,
    pub amount: Balance,
}

/// One context DataNet's part of an adapter's amount.
#[derive(Clone, Debug, PartialEq, Eq, EncodeAsType)]
#[encode_as_type(crate_path = "subxt::ext::scale_encode")]
pub struct ContextChargeArg {
    pub adapter: AdapterId,
    pub datanet: DataNetId,
    pub amount: Balance,
}

impl<A, C> From<&openledger_primitives::voucher::Voucher<Balance, A, C>> for VoucherArg
where
    A: sp_core::Get<u32>,
    C: sp_core::Get<u32>,
{
    fn from(v: &openledger_primitives::voucher::Voucher<Balance, A, C>) -> Self {
        Self {
            channel: v.channel,
            sequence: v.sequence,
            cumulative: v.cumulative,
            inferences: v.inferences,
            receipts_root: H256(v.receipts_root.0),
            adapters: v
                .adapters
                .iter()
                .map(|a| AdapterChargeArg { adapter: a.adapter, amount: a.amount })
                .collect(),
            contexts: v
                .contexts
                .iter()
                .map(|c| ContextChargeArg {
                    adapter: c.adapter,
                    datanet: c.datanet,
                    amount: c.amount,
                })
                .collect(),
        }
    }
}

/// `channels.ChannelOpened`.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct ChannelOpened {
    pub channel: ChannelId,
    pub payer: AccountId32,
    pub provider: AccountId32,
    pub signer: [u8; 32],
    pub deposit: Balance,
}

/// `channels.VoucherRedeemed`.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct VoucherRedeemed {
    pub channel: ChannelId,
    pub provider: AccountId32,
    pub sequence: u64,
    pub paid: Balance,
    pub redeemed: Balance,
    pub covered: u64,
    pub inferences: u64,
    pub receipts_root: H256,
}

/// Whether a channel is open or in its challenge window (`pallet_channels::ChannelPhase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub enum ChannelPhase {
    Open,
    Closing { until: u32 },
}

/// A channel's record (`pallet_channels::Channel`).
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct Channel {
    pub payer: AccountId32,
    pub provider: AccountId32,
    pub signer: [u8; 32],
    pub deposit: Balance,
    pub redeemed: Balance,
    pub sequence: u64,
    pub receipts_root: H256,
    pub inferences: u64,
    pub phase: ChannelPhase,
}

/// What `ChannelsApi::channel` says of an id.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub enum ChannelStatus {
    Unknown,
    Open(Channel),
    Closed,
}

impl ChainClient {
    /// Opens a channel from `payer` to `provider` with `deposit` held, honouring vouchers
    /// signed by the ed25519 key `signer`; returns the event with its id.
    pub async fn open_channel(
        &self,
        payer: &Keypair,
        provider: &AccountId32,
        deposit: Balance,
        signer: [u8; 32],
    ) -> Result<ChannelOpened, ChainError> {
        let events = self.submit("Channels", "open", (*provider, deposit, signer), payer).await?;
        find_event::<ChannelOpened>(&events, "Channels", "ChannelOpened")?.into_iter().next().ok_or(
            ChainError::MissingEvent {
                call: "Channels.open".into(),
                event: "Channels.ChannelOpened",
            },
        )
    }

    /// Adds `amount` to the deposit of `channel` (sent by its payer, while it is open).
    pub async fn top_up_channel(
        &self,
        payer: &Keypair,
        channel: ChannelId,
        amount: Balance,
    ) -> Result<(), ChainError> {
        self.submit("Channels", "top_up", (channel, amount), payer).await?;
        Ok(())
    }

    /// Starts the close of `channel` (sent by its payer): its provider may still redeem during
    /// the challenge window, after which `finalize_close` returns the rest of the deposit.
    pub async fn request_close_channel(
        &self,
        payer: &Keypair,
        channel: ChannelId,
    ) -> Result<(), ChainError> {
        self.submit("Channels", "request_close", (channel,), payer).await?;
        Ok(())
    }

    /// Redeems `voucher` with the channel signer's `signature` (sent by `sender`, the provider
    /// or anyone on its behalf); returns what the chain paid.
    pub async fn redeem_voucher(
        &self,
        sender: &Keypair,
        voucher: VoucherArg,
        signature: [u8; 64],
    ) -> Result<VoucherRedeemed, ChainError> {
        let events = self.submit("Channels", "redeem", (voucher, signature), sender).await?;
        find_event::<VoucherRedeemed>(&events, "Channels", "VoucherRedeemed")?
            .into_iter()
            .next()
            .ok_or(ChainError::MissingEvent {
                call: "Channels.redeem".into(),
                event: "Channels.VoucherRedeemed",
            })
    }

    /// A channel's state at the best block (`ChannelsApi::channel`).
    pub async fn channel(&self, channel: ChannelId) -> Result<ChannelStatus, ChainError> {
        let at = self.best().await?;
        let call =
            dynamic::runtime_api_call::<_, ChannelStatus>("ChannelsApi", "channel", (channel,));
        at.runtime_apis().call(call).await.map_err(rpc_err("calling ChannelsApi.channel"))
    }
}
