//! The OpenAI-compatible request and response bodies the gateway speaks.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
pub use openledger_model::ChatMessage;
use openledger_p2p::payload::ContextShare;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The body of `POST /v1/completions` (which takes `prompt`) and `POST /v1/chat/completions`
/// (which takes `messages`): one type, so both endpoints read the sampling fields the same
/// way. (Not two types sharing a flattened part: serde's flatten cannot read numbers when
/// serde_json keeps arbitrary precision, which a dependency turns on.)
#[derive(Clone, Debug, Deserialize)]
pub struct GenerationRequest {
    /// The adapter: `adapter-<id>` or `<id>`.
    pub model: String,
    /// The prompt (completions).
    #[serde(default)]
    pub prompt: Option<String>,
    /// The conversation (chat).
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// Most tokens to generate (`max_completion_tokens` is accepted too); 16 for
    /// completions and 256 for chat when absent.
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0: greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Top-k (an extension most servers accept).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop strings: one or a list.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Stream tokens as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// OpenLedger's extension: DataNets whose records were retrieved as context for this
    /// request, with their shares (`[{"datanet": 3, "share_ppm": 250000}]`); each is paid its
    /// share of the charge's DataNet part when the job settles.
    #[serde(default)]
    pub context: Vec<ContextShare>,
    /// OpenLedger's extension: how this request is paid, `"job"` (a job on chain, settled by
    /// its receipt) or `"channel"` (the payer's payment channel to the provider). Absent: on a
    /// channel where the gateway pays on channels, else as a job.
    #[serde(default)]
    pub settle: Option<Settle>,
}

/// How a request is paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Settle {
    /// A job on chain, settled by the worker's receipt (the per-job path).
    Job,
    /// The payer's payment channel to the provider (the channel path).
    Channel,
}

/// `stop`: a string or a list of strings.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// As a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// Token counts of a response.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// Both.
    pub total_tokens: u32,
}

/// What happened on chain for a response: the job and where to see its settlement.
#[derive(Clone, Debug, Serialize)]
pub struct ChainInfo {
    /// The on-chain job id (per-job path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
    /// The payment channel that pays for it (channel path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<u64>,
    /// The request's id on that channel, a decimal string (over 2^53) (channel path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The provider (SS58) that ran it.
    pub provider: String,
    /// What it may cost at most, in plancks: the escrow held on chain (per-job path), or the
    /// most the channel's voucher may grow by (channel path).
    pub escrow: String,
    /// Milliseconds from submitting the job to its assignment being in a best block (zero
    /// on the channel path: nothing waits for a block).
    pub assigned_after_ms: f64,
    /// The price per 1,000 tokens (prompt and output) it was quoted at, in plancks: its charge
    /// is `ceil(tokens x price / 1000)`. Absent for a job submitted elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_per_1k: Option<String>,
}

/// An OpenAI-style error: `{"error": {"message", "type", "code"}}` with an HTTP status.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// A machine-readable code.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Seconds the client should wait before retrying (`Retry-After`), for 503s.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400 invalid_request_error.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 401: missing or unknown API key.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            code: "invalid_api_key",
            message: "missing or unknown API key: send `Authorization: Bearer <key>`".into(),
            retry_after: None,
        }
    }

    /// 401 with a reason of its own.
    pub fn unauthorized_because(message: impl Into<String>) -> Self {
        Self { message: message.into(), ..Self::unauthorized() }
    }

    /// 404: nothing by that name.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 404: no such adapter.
    pub fn unknown_model(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "model_not_found",
            message: format!(
                "the model `{model}` is not a registered adapter (see GET /v1/models)"
            ),
            retry_after: None,
        }
    }

    /// 503: no provider can take the job now; retry after `retry_after` seconds. Nothing was
    /// submitted or paid.
    pub fn no_provider(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            code: "no_provider_available",
            message: message.into(),
            retry_after: Some(retry_after),
        }
    }

    /// The job's worker refused it with the reason `code` (`detail` says more): 400 when the
    /// request was at fault, 502 when the worker was. The job is closed on chain with the whole
    /// escrow refunded.
    pub fn refused(job: u64, code: &'static str, request_fault: bool, detail: &str) -> Self {
        Self {
            status: if request_fault { StatusCode::BAD_REQUEST } else { StatusCode::BAD_GATEWAY },
            kind: if request_fault { "invalid_request_error" } else { "server_error" },
            code,
            message: format!(
                "job {job} was refused by its worker ({code}): {detail}. The worker closes the job \
                 on chain and the whole escrow is refunded; only the submission's transaction fee \
                 was spent (if the refusal does not reach the chain, the job expires unacknowledged \
                 with the same full refund)."
            ),
            retry_after: None,
        }
    }

    /// 504: no complete answer in time. The gateway cancelled the job; `message` says what
    /// happens to its escrow.
    pub fn timeout(message: String) -> Self {
        Self {
            status: StatusCode::GATEWAY_TIMEOUT,
            kind: "server_error",
            code: "job_timeout",
            message,
            retry_after: None,
        }
    }

    /// 502: the chain or the network failed.
    pub fn upstream(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            kind: "server_error",
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The operator sees every failure the gateway answered; a client's own mistakes only
        // at debug level.
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, message = %self.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, code = self.code, message = %self.message, "request refused");
        }
        let body = json!({
            "error": { "message": self.message, "type": self.kind, "code": self.code, "param": null }
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// Parse `adapter-<id>` or `<id>`.
pub fn adapter_id(model: &str) -> Option<u32> {
    model.strip_prefix("adapter-").unwrap_or(model).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_parse() {
        assert_eq!(adapter_id("adapter-3"), Some(3));
        assert_eq!(adapter_id("12"), Some(12));
        assert_eq!(adapter_id("gpt-4"), None);
    }

    #[test]
    fn stop_accepts_a_string_or_a_list() {
        let one: GenerationRequest =
            serde_json::from_str(r#"{"model":"1","prompt":"x","stop":"\n"}"#).expect("parses");
        assert_eq!(one.stop.map(Stop::into_vec), Some(vec!["\n".to_string()]));
        let many: GenerationRequest =
            serde_json::from_str(r#"{"model":"1","prompt":"x","stop":["a","b"]}"#).expect("parses");
        assert_eq!(many.stop.map(Stop::into_vec).map(|v| v.len()), Some(2));
        assert_eq!(many.max_tokens, None);
    }

    #[test]
    fn both_endpoints_read_the_same_sampling_fields() {
        let fields = r#""temperature":0.8,"top_p":0.5,"top_k":40,"seed":9,"stream":true"#;
        let text: GenerationRequest =
            serde_json::from_str(&format!(r#"{{"model":"1","prompt":"x",{fields}}}"#))
                .expect("parses");
        let chat: GenerationRequest = serde_json::from_str(&format!(
            r#"{{"model":"1","messages":[],"max_completion_tokens":7,{fields}}}"#
        ))
        .expect("parses");
        for r in [&text, &chat] {
            assert_eq!(
                (r.temperature, r.top_p, r.top_k, r.seed, r.stream),
                (Some(0.8), Some(0.5), Some(40), Some(9), true)
            );
        }
        assert_eq!((text.prompt.as_deref(), text.messages.is_none()), (Some("x"), true));
        assert_eq!(chat.max_tokens, Some(7));
        let wrong = serde_json::from_str::<GenerationRequest>(
            r#"{"model":"1","prompt":"x","top_k":"many"}"#,
        );
        assert!(wrong.is_err(), "a mistyped field is refused");
    }
}
