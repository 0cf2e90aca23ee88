//! The OpenAI-compatible request and response bodies the gateway speaks.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    /// The adapter: `adapter-<id>` or `<id>`.
    pub model: String,
    /// The prompt.
    pub prompt: String,
    /// Most tokens to generate.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// How to sample, and whether to stream.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    /// The adapter.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate (`max_completion_tokens` is accepted too; 256 when absent).
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<u32>,
    /// How to sample, and whether to stream.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// The sampling fields both endpoints share.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Sampling {
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
}

/// One chat message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
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

fn default_max_tokens() -> u32 {
    16
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
    /// The on-chain job id.
    pub job: u64,
    /// The provider (SS58) that ran it.
    pub provider: String,
    /// Escrow held for it, in plancks.
    pub escrow: String,
    /// Milliseconds from submitting the job to its assignment being in a best block.
    pub assigned_after_ms: f64,
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
}

impl ApiError {
    /// 400 invalid_request_error.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code,
            message: message.into(),
        }
    }

    /// 401: missing or unknown API key.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            code: "invalid_api_key",
            message: "missing or unknown API key: send `Authorization: Bearer <key>`".into(),
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
        }
    }

    /// 503: no provider can take the job now.
    pub fn no_provider(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            code: "no_provider_available",
            message: message.into(),
        }
    }

    /// 504: the worker did not finish in time (the job will expire and be refunded).
    pub fn timeout(job: u64) -> Self {
        Self {
            status: StatusCode::GATEWAY_TIMEOUT,
            kind: "server_error",
            code: "job_expired",
            message: format!(
                "job {job} got no complete answer in time; it expires on chain and its escrow \
                 is refunded in full"
            ),
        }
    }

    /// 502: the chain or the network failed.
    pub fn upstream(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            kind: "server_error",
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "message": self.message, "type": self.kind, "code": self.code, "param": null }
        });
        (self.status, Json(body)).into_response()
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
        let one: CompletionRequest =
            serde_json::from_str(r#"{"model":"1","prompt":"x","stop":"\n"}"#).expect("parses");
        assert_eq!(one.sampling.stop.map(Stop::into_vec), Some(vec!["\n".to_string()]));
        let many: CompletionRequest =
            serde_json::from_str(r#"{"model":"1","prompt":"x","stop":["a","b"]}"#).expect("parses");
        assert_eq!(many.sampling.stop.map(Stop::into_vec).map(|v| v.len()), Some(2));
        assert_eq!(many.max_tokens, 16);
    }

    #[test]
    fn both_endpoints_read_the_same_sampling_fields() {
        let fields = r#""temperature":1,"top_p":0.5,"top_k":40,"seed":9,"stream":true"#;
        let text: CompletionRequest =
            serde_json::from_str(&format!(r#"{{"model":"1","prompt":"x",{fields}}}"#))
                .expect("parses");
        let chat: ChatRequest = serde_json::from_str(&format!(
            r#"{{"model":"1","messages":[],"max_completion_tokens":7,{fields}}}"#
        ))
        .expect("parses");
        for s in [&text.sampling, &chat.sampling] {
            assert_eq!(
                (s.temperature, s.top_p, s.top_k, s.seed, s.stream),
                (Some(1.0), Some(0.5), Some(40), Some(9), true)
            );
        }
        assert_eq!(chat.max_tokens, Some(7));
        let wrong = serde_json::from_str::<CompletionRequest>(
            r#"{"model":"1","prompt":"x","top_k":"many"}"#,
        );
        assert!(wrong.is_err(), "a mistyped field is refused");
    }
}
