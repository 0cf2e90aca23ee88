//! What travels on the two request-response protocols, and how it is framed.
//!
//! Every message is one frame: a 4-byte big-endian length, then that many bytes of body. The
//! length is checked against the protocol's limit *before* anything is allocated, so a peer
//! announcing a 4 GiB message costs us four bytes of reading, not four gigabytes of memory.
//! The body is the message SCALE-encoded, as the chain's own types are: the derived layout is
//! the whole schema, since gateway and worker ship together. A body must decode exactly: a
//! truncated one, or one with bytes left over, is refused as malformed.

use std::{fmt, io, marker::PhantomData};

use async_trait::async_trait;
use codec::{Compact, CompactLen, Decode, DecodeAll, Encode};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};
use serde::{Deserialize, Serialize};

/// The protocol a worker uses to pull a job's payload from its gateway.
pub const PAYLOAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/openledger/payload/1");
/// The protocol a worker uses to stream a job's output tokens back to its gateway.
pub const TOKENS_PROTOCOL: StreamProtocol = StreamProtocol::new("/openledger/tokens/1");

/// The payment-channel path's protocol: a gateway asks a worker to serve a request on a
/// channel, a worker sends the gateway the signed receipt of what it served and gets the
/// channel's next voucher back.
pub const CHANNEL_PROTOCOL: StreamProtocol = StreamProtocol::new("/openledger/channel/1");
/// Upper bound of a channel response: a voucher with a full breakdown is under 1 KiB, a kept
/// answer record of a long job (its prompt's and output's token ids and commitment, as JSON)
/// tens of KiB.
pub(crate) const CHANNEL_RESPONSE_MAX: usize = 1 << 20;

/// Upper bound of every fixed-size message (payload requests, token acknowledgements).
pub(crate) const SMALL_MESSAGE_MAX: usize = 64;
/// The largest body a frame can announce: its length is a `u32`.
const FRAME_MAX: usize = u32::MAX as usize;

/// One piece of a job's output, streamed from the worker to the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct TokenChunk {
    /// The on-chain job this output belongs to.
    pub job: u64,
    /// Position of this chunk in the job's stream, from 0; the worker sends them in order.
    pub seq: u32,
    /// The decoded text of the tokens in this chunk.
    pub text: String,
    /// Set on the last chunk of the job only.
    pub finish: Option<Finish>,
}

/// What a final token chunk's [`Finish::reason`] starts with when the worker refused the job
/// on chain; the rest is the refusal's code (the chain client's `RefusalReason::code`).
pub const REFUSED_PREFIX: &str = "refused:";

/// How a job's output ended, carried by its last [`TokenChunk`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Finish {
    /// Why generation stopped (`"stop"`, `"length"`, ...).
    pub reason: String,
    /// Prompt tokens the worker processed.
    pub input_tokens: u32,
    /// Tokens the worker generated.
    pub output_tokens: u32,
    /// Hash of the full output, as it will appear in the job's on-chain receipt.
    pub output_hash: [u8; 32],
}

/// The bit set in the id of every channel request ([`ChannelRequest::Serve`]'s `request`),
/// which its token chunks carry as their [`TokenChunk::job`]: chain job ids count up from 0
/// and never reach it, so both kinds of stream share the tokens protocol without meeting.
pub const CHANNEL_ROUTE_BIT: u64 = 1 << 63;

/// What one side of a payment channel asks the other.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ChannelRequest {
    /// Gateway to worker: serve `payload` (a job payload's bytes) on `channel` for at most
    /// `max_charge` planck; the output streams back as token chunks under `request`, then
    /// the worker sends its receipt.
    Serve {
        /// The channel that pays.
        channel: u64,
        /// The gateway's id of the request, unique per channel. Token chunks of the answer
        /// carry it in [`TokenChunk::job`]; ids of channel requests have their top bit set
        /// ([`CHANNEL_ROUTE_BIT`]), so they never meet an on-chain job id.
        request: u64,
        /// The on-chain adapter the request is for.
        adapter: u32,
        /// The most the request may charge, planck.
        max_charge: u128,
        /// The job payload's bytes.
        payload: Vec<u8>,
    },
    /// Worker to gateway: the signed receipt of a served request; answered with the voucher
    /// that pays it.
    Receipt(openledger_channel::SignedReceipt),
    /// Verifier to worker: the kept answer record of on-chain job `job`, which the chain
    /// opened for verification; answered with [`ChannelResponse::AnswerRecord`] only to a
    /// verifier of that audit.
    AnswerRecord {
        /// The audited job.
        job: u64,
    },
    /// Verifier to worker: the kept answer record of request `request` on `channel`, whose
    /// receipt the chain drew from a redeemed voucher for verification; answered as
    /// [`ChannelRequest::AnswerRecord`] is.
    RequestAnswerRecord {
        /// The channel.
        channel: u64,
        /// The gateway's id of the request.
        request: u64,
    },
}

/// The answer to a [`ChannelRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ChannelResponse {
    /// The worker takes the request.
    Accepted,
    /// Refused, with the reason (a [`openledger_channel::ChannelError`]'s message, or the
    /// worker's).
    Refused(String),
    /// The channel's next voucher, paying the receipt.
    Voucher(openledger_channel::SignedVoucher),
    /// An audited job's kept answer record (the worker's JSON answer record).
    AnswerRecord(Vec<u8>),
    /// The sender exceeded its rate limit.
    RateLimited,
    /// The application is not keeping up (or not listening): try again later.
    Busy,
}

/// A worker's request for a job's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub(crate) struct PayloadRequest {
    pub job: u64,
}

/// The gateway's answer to a [`PayloadRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub(crate) enum PayloadResponse {
    Payload(Vec<u8>),
    Denied,
    Unknown,
    RateLimited,
}

/// The gateway's answer to a [`TokenChunk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub(crate) enum TokensResponse {
    /// The chunk was handed to the gateway application.
    Ack,
    RateLimited,
    /// The gateway application is not keeping up; the chunk was dropped.
    Busy,
    /// The job was cancelled (its client went away or asked to stop): the chunk was dropped
    /// and no more are wanted.
    Cancelled,
}

/// A frame announced a body larger than the protocol allows. Carried inside an
/// [`io::Error`] so that request-response hands it back to us intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameTooLarge {
    pub size: usize,
    pub max: usize,
}

impl fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message of {} bytes exceeds the {}-byte limit", self.size, self.max)
    }
}

impl std::error::Error for FrameTooLarge {}

impl FrameTooLarge {
    /// Finds a [`FrameTooLarge`] inside an I/O error, if that is what it is.
    pub(crate) fn find(error: &io::Error) -> Option<Self> {
        error.get_ref()?.downcast_ref::<Self>().copied()
    }
}

/// A message of one of the two protocols: SCALE-encoded, and named in the error a malformed
/// one gives.
pub(crate) trait Message: Encode + Decode + Send + Sync {
    /// What the message is, as an error names it.
    const NAME: &'static str;
}

impl Message for PayloadRequest {
    const NAME: &'static str = "payload request";
}

impl Message for PayloadResponse {
    const NAME: &'static str = "payload response";
}

impl Message for TokenChunk {
    const NAME: &'static str = "token chunk";
}

impl Message for TokensResponse {
    const NAME: &'static str = "tokens response";
}

impl Message for ChannelRequest {
    const NAME: &'static str = "channel request";
}

impl Message for ChannelResponse {
    const NAME: &'static str = "channel response";
}

/// The largest [`ChannelRequest`] body: a `Serve` with a payload of at most `max_payload`
/// bytes (its fixed fields, the payload's compact length and a variant index).
pub(crate) fn channel_request_max(max_payload: usize) -> usize {
    payload_response_max(max_payload).saturating_add(8 + 8 + 4 + 16)
}

/// Decodes a complete, size-checked body; bytes left over make it malformed, as does a
/// truncation.
fn decode_body<M: Message>(mut body: &[u8]) -> io::Result<M> {
    M::decode_all(&mut body).map_err(|error| {
        io::Error::new(io::ErrorKind::InvalidData, format!("malformed {}: {error}", M::NAME))
    })
}

/// The encoded size of a message, frame header excluded.
pub(crate) fn encoded_len<M: Encode>(message: &M) -> usize {
    // SCALE cannot length-prefix a string or vector longer than `u32::MAX` (encoding one
    // panics), and no frame could carry it anyway. The size hint counts every such length in
    // full, so a hint beyond a frame's reach stands in for the size, without encoding.
    match message.size_hint() {
        hint if hint > FRAME_MAX => hint,
        _ => message.encoded_size(),
    }
}

/// The largest [`PayloadResponse`] body that carries a payload of at most `max_payload`
/// bytes: the payload, its compact length and the variant index.
pub(crate) fn payload_response_max(max_payload: usize) -> usize {
    let len = u32::try_from(max_payload).unwrap_or(u32::MAX);
    max_payload.saturating_add(1 + Compact::<u32>::compact_len(&len))
}

async fn read_frame<T>(io: &mut T, max: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut header = [0u8; 4];
    io.read_exact(&mut header).await?;
    let size = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if size > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, FrameTooLarge { size, max }));
    }
    let mut body = vec![0u8; size];
    io.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame<T, M>(io: &mut T, message: &M, max: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Message,
{
    let size = encoded_len(message);
    let header = match u32::try_from(size) {
        Ok(header) if size <= max => header,
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, FrameTooLarge { size, max })),
    };
    let mut frame = Vec::with_capacity(4 + size);
    frame.extend_from_slice(&header.to_be_bytes());
    message.encode_to(&mut frame);
    io.write_all(&frame).await?;
    io.flush().await
}

/// A request-response codec for one protocol: length-prefixed frames, each direction with
/// its own size limit.
pub(crate) struct FrameCodec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    messages: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> FrameCodec<Req, Resp> {
    pub(crate) fn new(max_request: usize, max_response: usize) -> Self {
        Self { max_request, max_response, messages: PhantomData }
    }
}

impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new(self.max_request, self.max_response)
    }
}

#[async_trait]
impl<Req, Resp> request_response::Codec for FrameCodec<Req, Resp>
where
    Req: Message + 'static,
    Resp: Message + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode_body(&read_frame(io, self.max_request).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode_body(&read_frame(io, self.max_response).await?)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &resp, self.max_response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished_chunk() -> TokenChunk {
        TokenChunk {
            job: 7,
            seq: 9,
            text: String::new(),
            finish: Some(Finish {
                reason: "stop".into(),
                input_tokens: 12,
                output_tokens: 34,
                output_hash: [0xab; 32],
            }),
        }
    }

    /// Round trip; the size is the one [`encoded_len`] announces; every strict prefix and
    /// the body with a byte appended are refused rather than misread.
    fn round_trip<M: Message + fmt::Debug + PartialEq>(message: M) {
        let body = message.encode();
        assert_eq!(encoded_len(&message), body.len());
        assert_eq!(decode_body::<M>(&body).unwrap(), message);
        for cut in 0..body.len() {
            assert!(decode_body::<M>(&body[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
        let mut trailing = body;
        trailing.push(0);
        let error = decode_body::<M>(&trailing).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().starts_with(&format!("malformed {}", M::NAME)), "{error}");
    }

    #[test]
    fn every_message_round_trips_and_refuses_truncation_and_trailing_bytes() {
        round_trip(PayloadRequest { job: u64::MAX - 3 });
        round_trip(PayloadResponse::Payload(vec![0, 1, 2, 255]));
        round_trip(PayloadResponse::Payload(Vec::new()));
        round_trip(PayloadResponse::Denied);
        round_trip(PayloadResponse::Unknown);
        round_trip(PayloadResponse::RateLimited);
        round_trip(TokensResponse::Ack);
        round_trip(TokensResponse::RateLimited);
        round_trip(TokensResponse::Busy);
        round_trip(TokensResponse::Cancelled);
        round_trip(TokenChunk { job: 7, seq: 0, text: "héllo".into(), finish: None });
        round_trip(finished_chunk());
    }

    #[test]
    fn bad_utf8_and_unknown_variants_are_refused() {
        let mut body = TokenChunk { job: 1, seq: 1, text: "ab".into(), finish: None }.encode();
        // job (8 bytes), seq (4), the text's compact length (1), then its first byte.
        body[13] = 0xff;
        let error = decode_body::<TokenChunk>(&body).unwrap_err();
        assert!(error.to_string().starts_with("malformed token chunk"), "{error}");
        assert!(decode_body::<TokensResponse>(&[4]).is_err());
        assert!(decode_body::<PayloadResponse>(&[4]).is_err());
    }

    #[test]
    fn fixed_size_messages_fit_the_small_limit() {
        assert!(encoded_len(&PayloadRequest { job: u64::MAX }) <= SMALL_MESSAGE_MAX);
        assert!(encoded_len(&TokensResponse::Cancelled) <= SMALL_MESSAGE_MAX);
    }

    #[test]
    fn the_payload_response_limit_is_exact() {
        for len in [0, 63, 64, (1 << 14) - 1, 1 << 14, 1 << 20, (1 << 30) - 1] {
            let response = PayloadResponse::Payload(vec![0; len]);
            assert_eq!(payload_response_max(len), encoded_len(&response), "{len}-byte payload");
        }
    }

    #[tokio::test]
    async fn messages_cross_the_codec_framed() {
        use request_response::Codec;

        let mut codec = FrameCodec::<TokenChunk, TokensResponse>::new(1024, SMALL_MESSAGE_MAX);
        let protocol = TOKENS_PROTOCOL;
        let mut wire = futures::io::Cursor::new(Vec::new());
        codec.write_request(&protocol, &mut wire, finished_chunk()).await.unwrap();
        let frame = wire.into_inner();
        let body_len = u32::from_be_bytes(frame[..4].try_into().unwrap());
        assert_eq!(usize::try_from(body_len).unwrap(), frame.len() - 4);

        let mut wire = futures::io::Cursor::new(frame);
        let read = codec.read_request(&protocol, &mut wire).await.unwrap();
        assert_eq!(read, finished_chunk());
    }

    #[tokio::test]
    async fn truncated_frames_are_refused() {
        let mut frame = 100u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0; 60]);
        let error = read_frame(&mut futures::io::Cursor::new(frame), 1024).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let error = read_frame(&mut futures::io::Cursor::new(vec![0, 0]), 1024).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn oversize_frames_are_refused_before_reading_the_body() {
        // A header announcing 1 GiB, followed by nothing: must fail on the header alone.
        let announced = (1u32 << 30).to_be_bytes();
        let mut io = futures::io::Cursor::new(announced.to_vec());
        let err = read_frame(&mut io, 1024).await.unwrap_err();
        assert_eq!(FrameTooLarge::find(&err), Some(FrameTooLarge { size: 1 << 30, max: 1024 }));

        let mut sink = futures::io::Cursor::new(Vec::new());
        let big = PayloadResponse::Payload(vec![0; 2048]);
        let err = write_frame(&mut sink, &big, 1024).await.unwrap_err();
        // The payload, its two-byte compact length and the variant index.
        assert_eq!(FrameTooLarge::find(&err), Some(FrameTooLarge { size: 2051, max: 1024 }));
        assert!(sink.into_inner().is_empty(), "nothing written for an oversize message");
    }
}
