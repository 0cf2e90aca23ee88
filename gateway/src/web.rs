//! Open Chat: the web page the gateway serves at `/` (built into `web/dist` by
//! `scripts/build-web.sh`), and the three routes it needs besides the OpenAI ones.
//!
//! - `GET /chat/config`: where the page's browser reads the chain, whether the gateway pays
//!   for the page's requests itself, and the base model's context;
//! - `POST /chat/v1/chat/completions`: `/v1/chat/completions` paid with the API key the
//!   operator gave the page (`--web-key`); the key never reaches the browser. Without one the
//!   page sends each visitor's own key to `/v1/chat/completions`;
//! - `GET /v1/channels/{channel}/requests/{request}`: what an answer on a channel was charged
//!   and which voucher covers it (the page shows who it pays).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::openai::ApiError;
use crate::routes::chat_completions;
use crate::Gateway;

/// How the gateway serves Open Chat.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// The built page (`web/dist`).
    pub dir: PathBuf,
    /// The API key (one of the gateway's) that pays for the page's requests, if the operator
    /// chose one.
    pub key: Option<String>,
    /// The chain RPC the page's browser connects to.
    pub chain_url: String,
}

/// `GET /chat/config`.
pub(crate) async fn config(State(gateway): State<Arc<Gateway>>) -> Response {
    let Some(web) = &gateway.config.web else { return not_enabled().await.into_response() };
    Json(json!({
        "chain_url": web.chain_url,
        "server_key": web.key.is_some(),
        "channels": gateway.channels.is_some(),
        "context_tokens": gateway.config.model.as_ref().map(|m| m.context()),
        "base_model": gateway.config.model.as_ref().map(|m| m.base_model),
    }))
    .into_response()
}

/// `POST /chat/v1/chat/completions`: the page's chat, paid with the operator's key.
pub(crate) async fn chat(
    state: State<Arc<Gateway>>,
    mut headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = state.config.web.as_ref().and_then(|w| w.key.as_deref());
    let Some(bearer) = key.and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok()) else {
        return ApiError::unauthorized_because(
            "this gateway pays for no page's requests (no --web-key): send your API key to \
             /v1/chat/completions",
        )
        .into_response();
    };
    headers.insert(header::AUTHORIZATION, bearer);
    chat_completions(state, headers, body).await
}

/// `GET /v1/channels/{channel}/requests/{request}`.
pub(crate) async fn channel_request(
    State(gateway): State<Arc<Gateway>>,
    Path((channel, request)): Path<(u64, u64)>,
) -> Response {
    let Some(book) = &gateway.channels else {
        return ApiError::not_found("channels_off", "this gateway pays on no channels")
            .into_response();
    };
    match book.request_status(channel, request).await {
        Some(status) => Json(status).into_response(),
        None => ApiError::not_found(
            "unknown_request",
            format!(
                "this gateway knows no request {request} on channel {channel} (never sent here, \
                 or its voucher was redeemed)"
            ),
        )
        .into_response(),
    }
}

/// Any other `GET`: a file of the built page (`index.html` for `/`), or 404.
pub(crate) async fn asset(State(gateway): State<Arc<Gateway>>, uri: Uri) -> Response {
    let Some(web) = &gateway.config.web else {
        return if uri.path() == "/" {
            not_enabled().await.into_response()
        } else {
            ApiError::not_found("not_found", format!("no route {}", uri.path())).into_response()
        };
    };
    let name = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        name => name,
    };
    // Plain names below the folder only: nothing climbs out of it.
    let plain = name
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'));
    if !plain {
        return ApiError::not_found("not_found", format!("no file {name}")).into_response();
    }
    let path = web.dir.join(name);
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => (
            [(header::CONTENT_TYPE, content_type(name)), (header::CACHE_CONTROL, "no-cache")],
            bytes,
        )
            .into_response(),
        _ => ApiError::not_found("not_found", format!("no file {name} in Open Chat's page"))
            .into_response(),
    }
}

/// The media type of a file of the page, by its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("map" | "json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `/` when the gateway serves no page.
pub(crate) async fn not_enabled() -> impl IntoResponse {
    (
        axum::http::StatusCode::NOT_FOUND,
        "Open Chat is not enabled on this gateway: build it with scripts/build-web.sh and start \
         the gateway with --web web/dist (and --web-key KEY to pay for the page's requests with \
         one of its API keys). The API is under /v1.\n",
    )
}
