//! The one `NetworkBehaviour` of a node: what it speaks on each connection.

use libp2p::{
    identify, identity::PublicKey, ping, request_response, request_response::ProtocolSupport,
    swarm::NetworkBehaviour,
};

use crate::{
    wire::{
        channel_request_max, payload_response_max, ChannelRequest, ChannelResponse, FrameCodec,
        PayloadRequest, PayloadResponse, TokenChunk, TokensResponse, CHANNEL_PROTOCOL,
        CHANNEL_RESPONSE_MAX, PAYLOAD_PROTOCOL, SMALL_MESSAGE_MAX, TOKENS_PROTOCOL,
    },
    P2pConfig,
};

/// Protocol version announced through identify: peers on another major version are visible
/// in logs before any request fails.
const IDENTIFY_PROTOCOL: &str = "/openledger/1.0.0";

pub(crate) type PayloadCodec = FrameCodec<PayloadRequest, PayloadResponse>;
pub(crate) type TokensCodec = FrameCodec<TokenChunk, TokensResponse>;
pub(crate) type ChannelCodec = FrameCodec<ChannelRequest, ChannelResponse>;

/// Gateway and worker run the same behaviour: both sides of both protocols are cheap to
/// support, and one node may well be both (a gateway that also serves).
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub payload: request_response::Behaviour<PayloadCodec>,
    pub tokens: request_response::Behaviour<TokensCodec>,
    pub channel: request_response::Behaviour<ChannelCodec>,
}

impl Behaviour {
    pub(crate) fn new(public: PublicKey, config: &P2pConfig) -> Self {
        let requests =
            request_response::Config::default().with_request_timeout(config.request_timeout);
        let payload_codec =
            PayloadCodec::new(SMALL_MESSAGE_MAX, payload_response_max(config.max_payload_bytes));
        let tokens_codec = TokensCodec::new(config.max_chunk_bytes, SMALL_MESSAGE_MAX);
        let channel_codec =
            ChannelCodec::new(channel_request_max(config.max_payload_bytes), CHANNEL_RESPONSE_MAX);
        Self {
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.to_owned(),
                public,
            )),
            ping: ping::Behaviour::default(),
            payload: request_response::Behaviour::with_codec(
                payload_codec,
                [(PAYLOAD_PROTOCOL, ProtocolSupport::Full)],
                requests.clone(),
            ),
            tokens: request_response::Behaviour::with_codec(
                tokens_codec,
                [(TOKENS_PROTOCOL, ProtocolSupport::Full)],
                requests.clone(),
            ),
            channel: request_response::Behaviour::with_codec(
                channel_codec,
                [(CHANNEL_PROTOCOL, ProtocolSupport::Full)],
                requests,
            ),
        }
    }
}
