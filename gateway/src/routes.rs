//! The HTTP routes: OpenAI's completions and chat completions, models, and the job routes
//! (payload upload, cancellation).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use subxt::utils::AccountId32;

use crate::openai::{ApiError, ChainInfo, GenerationRequest, Usage};
use crate::relay::{relay_worker, Outcome, Relay, Route};
use crate::Gateway;
use openledger_chain_client::{ss58, JobAssigned};
use openledger_p2p::payload::{self as job_payload, ChatMessage, JobPayload};

pub(crate) fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn usage(finish: &openledger_p2p::Finish) -> Usage {
    Usage {
        prompt_tokens: finish.input_tokens,
        completion_tokens: finish.output_tokens,
        total_tokens: finish.input_tokens.saturating_add(finish.output_tokens),
    }
}

pub(crate) fn chain_info(relay: &Relay) -> ChainInfo {
    match &relay.route {
        Route::Job(job) => ChainInfo {
            job: Some(job.job),
            channel: None,
            request: None,
            provider: ss58(&job.provider),
            escrow: job.escrow.to_string(),
            assigned_after_ms: relay.assigned_after.as_secs_f64() * 1e3,
            price_per_1k: relay.price_per_1k.map(|p| p.to_string()),
        },
        Route::Channel(route) => ChainInfo {
            job: None,
            channel: Some(route.channel),
            request: Some(route.request.to_string()),
            provider: ss58(&route.provider),
            escrow: route.max_charge.to_string(),
            assigned_after_ms: relay.assigned_after.as_secs_f64() * 1e3,
            price_per_1k: relay.price_per_1k.map(|p| p.to_string()),
        },
    }
}

pub(crate) fn sampling(
    prompt: String,
    max_tokens: u32,
    sampling: &GenerationRequest,
) -> Result<JobPayload, ApiError> {
    if max_tokens == 0 {
        return Err(ApiError::bad_request("invalid_max_tokens", "max_tokens must be at least 1"));
    }
    let temperature = sampling.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request("invalid_temperature", "temperature must be in [0, 2]"));
    }
    let top_p = sampling.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request("invalid_top_p", "top_p must be in (0, 1]"));
    }
    Ok(JobPayload {
        prompt,
        messages: Vec::new(),
        context: sampling.context.clone(),
        max_tokens,
        temperature,
        top_p,
        top_k: sampling.top_k.unwrap_or(0),
        seed: sampling.seed.unwrap_or(0),
        stop: sampling.stop.clone().map(crate::openai::Stop::into_vec).unwrap_or_default(),
    })
}

pub(crate) async fn list_models(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.chain.adapters().await {
        Ok(adapters) => {
            let data: Vec<_> = adapters
                .into_iter()
                .filter(|(_, a)| !a.retired)
                .map(|(id, a)| {
                    json!({
                        "id": format!("adapter-{id}"),
                        "object": "model",
                        "created": 0,
                        "owned_by": ss58(&a.owner),
                        "base_model": a.base_model,
                        "rank": a.rank,
                        "price_per_1k_tokens": a.price_per_1k.to_string(),
                    })
                })
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        },
        Err(e) => ApiError::upstream("chain_error", e.to_string()).into_response(),
    }
}

pub(crate) async fn completions(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: GenerationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request("invalid_json", e.to_string()).into_response(),
    };
    let result = async {
        let payer = gateway.payer(&headers)?;
        let prompt = req.prompt.clone().ok_or_else(|| {
            ApiError::bad_request("missing_prompt", "completions take a `prompt` string")
        })?;
        if prompt.is_empty() {
            return Err(ApiError::bad_request("empty_prompt", "the prompt is empty"));
        }
        let payload = sampling(prompt, req.max_tokens.unwrap_or(16), &req)?;
        gateway.start_job(payer, &req.model, &payload, req.settle).await
    }
    .await;
    let relay = match result {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    answer(gateway, relay, req.model, req.stream, Flavor::Text).await
}

pub(crate) async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: GenerationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request("invalid_json", e.to_string()).into_response(),
    };
    let result = async {
        let payer = gateway.payer(&headers)?;
        let messages: Vec<ChatMessage> = match &req.messages {
            Some(list) if !list.is_empty() => list.clone(),
            _ => {
                return Err(ApiError::bad_request(
                    "empty_messages",
                    "chat completions take a non-empty `messages` list",
                ))
            },
        };
        let mut payload = sampling(String::new(), req.max_tokens.unwrap_or(256), &req)?;
        payload.messages = messages;
        gateway.start_job(payer, &req.model, &payload, req.settle).await
    }
    .await;
    let relay = match result {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    answer(gateway, relay, req.model, req.stream, Flavor::Chat).await
}

/// Which OpenAI endpoint an answer is for: the shapes of its ids, objects and choices.
#[derive(Clone, Copy)]
pub(crate) enum Flavor {
    /// `/v1/completions`.
    Text,
    /// `/v1/chat/completions`.
    Chat,
}

impl Flavor {
    fn id(self, job: u64) -> String {
        match self {
            Flavor::Text => format!("cmpl-{job}"),
            Flavor::Chat => format!("chatcmpl-{job}"),
        }
    }

    fn object(self, streamed: bool) -> &'static str {
        match (self, streamed) {
            (Flavor::Text, _) => "text_completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
            (Flavor::Chat, false) => "chat.completion",
        }
    }

    /// The one choice of a response (`streamed`: a chunk's delta) with `text`.
    fn choice(self, text: &str, finish_reason: Option<&str>, streamed: bool) -> serde_json::Value {
        match (self, streamed) {
            (Flavor::Text, _) => json!({"index": 0, "text": text, "logprobs": null,
                "finish_reason": finish_reason}),
            (Flavor::Chat, true) => json!({"index": 0,
                "delta": {"role": "assistant", "content": text}, "finish_reason": finish_reason}),
            (Flavor::Chat, false) => json!({"index": 0,
                "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}),
        }
    }
}

/// Relay a started job's answer: server-sent events when `stream`, else one JSON body.
pub(crate) async fn answer(
    gateway: Arc<Gateway>,
    relay: Relay,
    model: String,
    stream: bool,
    flavor: Flavor,
) -> Response {
    let id = flavor.id(relay.id);
    let chain = chain_info(&relay);
    if stream {
        let events = Arc::clone(&gateway).stream(relay, move |chunk| {
            let reason = chunk.finish.as_ref().map(|f| f.reason.as_str());
            let mut event = json!({
                "id": id, "object": flavor.object(true), "created": created(), "model": model,
                "choices": [flavor.choice(&chunk.text, reason, true)],
                "openledger": chain,
            });
            // The last chunk says what the answer counted (what it is charged for).
            if let Some(finish) = &chunk.finish {
                event["usage"] = json!(usage(finish));
            }
            event
        });
        return Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    }
    match gateway.collect(relay).await {
        Ok(Outcome::Answer(text, finish)) => Json(json!({
            "id": id, "object": flavor.object(false), "created": created(), "model": model,
            "choices": [flavor.choice(&text, Some(&finish.reason), false)],
            "usage": usage(&finish),
            "openledger": chain,
        }))
        .into_response(),
        Ok(Outcome::Refused(e)) | Err(e) => e.into_response(),
    }
}

/// `PUT /v1/jobs/{id}/payload`: the payload of a job submitted elsewhere (polkadot.js) that
/// names this gateway. Checked against the job's on-chain hash; answered with the completion.
pub(crate) async fn upload_payload(
    State(gateway): State<Arc<Gateway>>,
    Path(job): Path<u64>,
    body: Bytes,
) -> Response {
    let result = async {
        let record = gateway
            .chain
            .job(job)
            .await
            .map_err(|e| ApiError::upstream("chain_error", e.to_string()))?
            .ok_or_else(|| ApiError {
                status: axum::http::StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                code: "job_not_open",
                message: format!("job {job} is not open on chain (unknown, settled or expired)"),
                retry_after: None,
            })?;
        if record.gateway != gateway.p2p.local_peer_id().to_bytes() {
            return Err(ApiError::bad_request(
                "wrong_gateway",
                format!("job {job} names another gateway's peer id"),
            ));
        }
        if job_payload::hash(&body) != record.input_hash.0 {
            return Err(ApiError::bad_request(
                "payload_hash_mismatch",
                format!("the payload's BLAKE2b-256 differs from job {job}'s input_hash on chain"),
            ));
        }
        if JobPayload::from_bytes(&body).is_err() {
            return Err(ApiError::bad_request(
                "invalid_payload",
                "the payload is not a JSON job payload (see worker/src/job_payload.rs)",
            ));
        }
        let assigned = JobAssigned {
            job,
            submitter: record.submitter,
            provider: record.provider,
            adapter: record.adapter,
            input_hash: record.input_hash,
            max_output_tokens: record.max_output_tokens,
            escrow: record.escrow,
            gateway: record.gateway.clone(),
            deadline: record.deadline,
        };
        let relay = gateway.relay(assigned).await?;
        let worker = relay_worker(&gateway.jobs, job).await?;
        gateway
            .p2p
            .offer_payload(job, body.to_vec(), worker)
            .await
            .map_err(|e| ApiError::upstream("p2p_error", e.to_string()))?;
        gateway.collect(relay).await
    }
    .await;
    match result {
        Ok(Outcome::Answer(text, finish)) => Json(json!({
            "job": job, "text": text, "finish_reason": finish.reason, "usage": usage(&finish),
            "output_hash": format!("0x{}", hex_string(&finish.output_hash)),
        }))
        .into_response(),
        Ok(Outcome::Refused(e)) | Err(e) => e.into_response(),
    }
}

/// `POST /v1/jobs/{id}/cancel`: stop a job this gateway is relaying, paid by the caller's API
/// key. Its worker stops within a chunk and charges only the tokens already delivered; the
/// request that is waiting for it ends with `finish_reason` = `cancelled`.
pub(crate) async fn cancel_job(
    State(gateway): State<Arc<Gateway>>,
    Path(job): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let payer = gateway.payer(&headers)?;
        let account = AccountId32(payer.public_key().0);
        let jobs = gateway.jobs.lock().await;
        let sink = jobs.get(&job).ok_or_else(|| ApiError {
            status: axum::http::StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "job_not_running",
            message: format!("this gateway is not relaying job {job} (finished, or never here)"),
            retry_after: None,
        })?;
        if sink.submitter != account {
            return Err(ApiError {
                status: axum::http::StatusCode::FORBIDDEN,
                kind: "invalid_request_error",
                code: "not_your_job",
                message: format!("job {job} is paid by another account than this API key's"),
                retry_after: None,
            });
        }
        drop(jobs);
        // The waiting request ends when the p2p node reports the cancellation (after every
        // chunk already delivered); the worker hears of it at its next chunk.
        gateway
            .p2p
            .cancel_job(job)
            .await
            .map_err(|e| ApiError::upstream("p2p_error", e.to_string()))?;
        Ok(Json(json!({"job": job, "cancelled": true})))
    }
    .await;
    match result {
        Ok(body) => body.into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
