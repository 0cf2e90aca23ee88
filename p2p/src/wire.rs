//! What travels on the two request-response protocols, and how it is framed.
//!
//! Every message is one frame: a 4-byte big-endian length, then that many bytes of body. The
//! length is checked against the protocol's limit *before* anything is allocated, so a peer
//! announcing a 4 GiB message costs us four bytes of reading, not four gigabytes of memory.
//! Bodies use a small fixed binary layout (the schemas are tiny and stable; a self-describing
//! format would only add bytes to the payloads and a dependency).

use std::{fmt, io, marker::PhantomData};

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};
use serde::{Deserialize, Serialize};

/// The protocol a worker uses to pull a job's payload from its gateway.
pub const PAYLOAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/openledger/payload/1");
/// The protocol a worker uses to stream a job's output tokens back to its gateway.
pub const TOKENS_PROTOCOL: StreamProtocol = StreamProtocol::new("/openledger/tokens/1");

/// Bytes a [`PayloadResponse`] adds around the payload itself (its tag).
pub(crate) const PAYLOAD_RESPONSE_OVERHEAD: usize = 1;
/// Upper bound of every fixed-size message (payload requests, token acknowledgements).
pub(crate) const SMALL_MESSAGE_MAX: usize = 64;

/// One piece of a job's output, streamed from the worker to the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// A worker's request for a job's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PayloadRequest {
    pub job: u64,
}

/// The gateway's answer to a [`PayloadRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PayloadResponse {
    Payload(Vec<u8>),
    Denied,
    Unknown,
    RateLimited,
}

/// The gateway's answer to a [`TokenChunk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// A message body: encodes itself, and decodes from a complete, size-checked body.
pub(crate) trait Message: Sized + Send + Sync {
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(body: &[u8]) -> io::Result<Self>;
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed {what}"))
}

/// Reads fields off the front of a body, failing on truncation instead of panicking.
struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(malformed(self.what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| malformed(self.what))
    }

    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn string(&mut self) -> io::Result<String> {
        let len = usize::try_from(self.u32()?).map_err(|_| malformed(self.what))?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed(self.what))
    }

    fn finish(self) -> io::Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.what))
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    // Strings are bounded by the frame limit (u32), checked before sending.
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Message for PayloadRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.job.to_be_bytes());
    }

    fn decode(body: &[u8]) -> io::Result<Self> {
        let mut r = Reader { rest: body, what: "payload request" };
        let job = r.u64()?;
        r.finish()?;
        Ok(Self { job })
    }
}

impl Message for PayloadResponse {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Payload(bytes) => {
                out.push(0);
                out.extend_from_slice(bytes);
            },
            Self::Denied => out.push(1),
            Self::Unknown => out.push(2),
            Self::RateLimited => out.push(3),
        }
    }

    fn decode(body: &[u8]) -> io::Result<Self> {
        match body.split_first() {
            Some((0, payload)) => Ok(Self::Payload(payload.to_vec())),
            Some((1, [])) => Ok(Self::Denied),
            Some((2, [])) => Ok(Self::Unknown),
            Some((3, [])) => Ok(Self::RateLimited),
            _ => Err(malformed("payload response")),
        }
    }
}

impl Message for TokenChunk {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.job.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        put_string(out, &self.text);
        match &self.finish {
            None => out.push(0),
            Some(finish) => {
                out.push(1);
                put_string(out, &finish.reason);
                out.extend_from_slice(&finish.input_tokens.to_be_bytes());
                out.extend_from_slice(&finish.output_tokens.to_be_bytes());
                out.extend_from_slice(&finish.output_hash);
            },
        }
    }

    fn decode(body: &[u8]) -> io::Result<Self> {
        let mut r = Reader { rest: body, what: "token chunk" };
        let job = r.u64()?;
        let seq = r.u32()?;
        let text = r.string()?;
        let finish = match r.u8()? {
            0 => None,
            1 => Some(Finish {
                reason: r.string()?,
                input_tokens: r.u32()?,
                output_tokens: r.u32()?,
                output_hash: r.array()?,
            }),
            _ => return Err(malformed("token chunk")),
        };
        r.finish()?;
        Ok(Self { job, seq, text, finish })
    }
}

impl Message for TokensResponse {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self {
            Self::Ack => 0,
            Self::RateLimited => 1,
            Self::Busy => 2,
            Self::Cancelled => 3,
        });
    }

    fn decode(body: &[u8]) -> io::Result<Self> {
        match body {
            [0] => Ok(Self::Ack),
            [1] => Ok(Self::RateLimited),
            [2] => Ok(Self::Busy),
            [3] => Ok(Self::Cancelled),
            _ => Err(malformed("tokens response")),
        }
    }
}

/// The encoded size of a message, frame header excluded.
pub(crate) fn encoded_len<M: Message>(message: &M) -> usize {
    let mut body = Vec::new();
    message.encode(&mut body);
    body.len()
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
    let mut frame = vec![0u8; 4];
    message.encode(&mut frame);
    let size = frame.len() - 4;
    let header = match u32::try_from(size) {
        Ok(header) if size <= max => header,
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, FrameTooLarge { size, max })),
    };
    frame[..4].copy_from_slice(&header.to_be_bytes());
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
        Req::decode(&read_frame(io, self.max_request).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        Resp::decode(&read_frame(io, self.max_response).await?)
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

    fn round_trip<M: Message + fmt::Debug + PartialEq>(message: M) -> Vec<u8> {
        let mut body = Vec::new();
        message.encode(&mut body);
        assert_eq!(M::decode(&body).unwrap(), message);
        body
    }

    /// Round trip, and every strict prefix is rejected rather than misread. (Not for a
    /// payload, whose bytes run to the end of the frame.)
    fn round_trip_strict<M: Message + fmt::Debug + PartialEq>(message: M) {
        let body = round_trip(message);
        for cut in 0..body.len() {
            assert!(M::decode(&body[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
    }

    #[test]
    fn messages_round_trip_and_reject_truncation() {
        round_trip_strict(PayloadRequest { job: u64::MAX - 3 });
        round_trip(PayloadResponse::Payload(vec![0, 1, 2, 255]));
        round_trip(PayloadResponse::Payload(Vec::new()));
        round_trip_strict(PayloadResponse::Denied);
        round_trip_strict(PayloadResponse::Unknown);
        round_trip_strict(PayloadResponse::RateLimited);
        round_trip_strict(TokensResponse::Ack);
        round_trip_strict(TokensResponse::Busy);
        round_trip_strict(TokensResponse::Cancelled);
        round_trip_strict(TokenChunk { job: 7, seq: 0, text: "héllo".into(), finish: None });
        round_trip_strict(TokenChunk {
            job: 7,
            seq: 9,
            text: String::new(),
            finish: Some(Finish {
                reason: "stop".into(),
                input_tokens: 12,
                output_tokens: 34,
                output_hash: [0xab; 32],
            }),
        });
    }

    #[test]
    fn trailing_bytes_and_bad_utf8_are_rejected() {
        assert!(PayloadRequest::decode(&[0; 9]).is_err());
        assert!(TokensResponse::decode(&[0, 0]).is_err());
        let mut body = Vec::new();
        TokenChunk { job: 1, seq: 1, text: "ab".into(), finish: None }.encode(&mut body);
        body[16] = 0xff; // first byte of the text
        assert!(TokenChunk::decode(&body).is_err());
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
        assert_eq!(FrameTooLarge::find(&err), Some(FrameTooLarge { size: 2049, max: 1024 }));
        assert!(sink.into_inner().is_empty(), "nothing written for an oversize message");
    }
}
