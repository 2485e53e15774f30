//! Every failure the API reports, and its one mapping to RFC 7807
//! `application/problem+json` with a stable `code`.
//!
//! The mapping is an exhaustive match (no catch-all): 4xx for what the client can
//! fix, 5xx only for server faults. Responses produced outside our handlers (axum's
//! extractor rejections, unknown routes, wrong methods) are rewritten into the same
//! shape by [`problem_layer`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tidegate_storage::StorageError;
use utoipa::ToSchema;

use crate::groups::coordinator::GroupError;

/// Media type of error bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One bad event of an ingest request.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema, PartialEq, Eq)]
pub struct EventError {
    /// Index of the event in the request (0-based; line order for NDJSON).
    pub index: usize,
    /// Byte position in the (decompressed) body where parsing failed, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// JSON pointer to the value that failed the topic's JSON Schema (`""`: the event itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What is wrong with it.
    pub detail: String,
}

impl EventError {
    /// An error about event `index` with no position or path.
    pub fn new(index: usize, detail: impl Into<String>) -> EventError {
        EventError { index, position: None, path: None, detail: detail.into() }
    }
}

/// An RFC 7807 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// URI naming the problem type: `urn:tidegate:problem:<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary (the HTTP reason phrase).
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Human-readable explanation of this occurrence.
    pub detail: String,
    /// Stable machine-readable code (snake_case).
    pub code: String,
    /// Per-event errors of a rejected ingest request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<EventError>>,
    /// For `offset_out_of_range`: the first readable offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_offset: Option<u64>,
    /// For `offset_out_of_range`: the high watermark (next offset to be readable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_offset: Option<u64>,
    /// For `*_too_large`: the limit that was exceeded, and the setting that holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Name of the setting behind a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
}

/// Errors of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A storage-layer failure.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// One or more events of an ingest request are invalid; nothing was written.
    #[error("{} invalid event(s); nothing was written", errors.len())]
    InvalidEvents { errors: Vec<EventError> },
    /// A query parameter, header or body field is invalid.
    #[error("{detail}")]
    InvalidRequest { code: &'static str, detail: String },
    /// The body, an event or the event count is over a configured limit.
    #[error("{detail}")]
    TooLarge { code: &'static str, detail: String, limit: u64, setting: &'static str, index: Option<usize> },
    /// The body's media type or encoding is not accepted.
    #[error("{detail}")]
    UnsupportedMediaType { detail: String },
    /// No route or resource at this path; `code` names what is missing (`not_found` for
    /// a route, `group_not_found`, `write_key_not_found`).
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },
    /// The request body stalled for `http_body_timeout_ms`.
    #[error("the request body stalled: no byte for {timeout_ms} ms (setting http_body_timeout_ms)")]
    RequestTimeout { timeout_ms: u64 },
    /// The request body took longer than `http_body_total_timeout_ms` to arrive.
    #[error(
        "the request body took more than {limit_ms} ms to arrive (setting http_body_total_timeout_ms); send it \
         faster or in smaller requests"
    )]
    BodyTooSlow { limit_ms: u64 },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Request bodies in flight already take `request_memory_bytes`; nothing was written.
    #[error(
        "request bodies in flight already take the {budget} bytes of memory they may use (setting \
         request_memory_bytes); nothing was written, retry later"
    )]
    Overloaded { budget: u64 },
    /// `max_subscriptions` subscriptions are open.
    #[error("{limit} subscriptions are open (setting max_subscriptions); retry later")]
    TooManySubscriptions { limit: u64 },
    /// A consumer-group operation was refused.
    #[error(transparent)]
    Group(#[from] crate::groups::coordinator::GroupError),
    /// Authentication, permission or rate-limit refusal.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// An `Idempotency-Key` already used for a request with another body (IETF
    /// draft-ietf-httpapi-idempotency-key-header: 422); nothing was written.
    #[error(
        "this Idempotency-Key was used before for a request with a different body; nothing was written (use a new \
         key for each request, and resend the same body on a retry)"
    )]
    IdempotencyKeyReused,
    /// A WebSocket handshake asked for a protocol version other than 13 (RFC 6455):
    /// answered 426 with `Sec-WebSocket-Version: 13`.
    #[error("WebSocket version {offered:?} is not supported; this server speaks version 13 (RFC 6455)")]
    WebSocketVersion { offered: String },
}

impl ApiError {
    /// Shorthand for an invalid parameter.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::InvalidRequest { code, detail: detail.into() }
    }

    /// Builds the problem document and status.
    pub fn to_problem(&self) -> Problem {
        use StorageError as S;
        let (status, code) = match self {
            ApiError::Storage(e) => match e {
                S::InvalidTopicName { .. } => (StatusCode::BAD_REQUEST, "invalid_topic_name"),
                S::InvalidGroupName(_) => (StatusCode::BAD_REQUEST, "invalid_group_name"),
                S::InvalidConfig(_) => (StatusCode::BAD_REQUEST, "invalid_topic_config"),
                S::TopicNotFound(_) => (StatusCode::NOT_FOUND, "topic_not_found"),
                S::TopicExists(_) => (StatusCode::CONFLICT, "topic_exists"),
                S::PartitionLimit { .. } => (StatusCode::CONFLICT, "partition_limit"),
                S::PartitionNotFound { .. } => (StatusCode::NOT_FOUND, "partition_not_found"),
                S::PartitionCountNotIncreased { .. } | S::PartitionCountTooLarge { .. } => {
                    (StatusCode::BAD_REQUEST, "invalid_partition_count")
                }
                S::OffsetOutOfRange { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "offset_out_of_range"),
                S::TopicDeleted(_) => (StatusCode::NOT_FOUND, "topic_deleted"),
                S::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
                S::DiskLow { .. } => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
                S::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "storage_corrupt"),
                S::DataDir { .. } | S::DataDirInUse(_) | S::Rocks(_) | S::Internal(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "storage_error")
                }
            },
            ApiError::InvalidEvents { .. } => (StatusCode::BAD_REQUEST, "invalid_events"),
            ApiError::InvalidRequest { code, .. } => (StatusCode::BAD_REQUEST, *code),
            ApiError::TooLarge { code, .. } => (StatusCode::PAYLOAD_TOO_LARGE, *code),
            ApiError::UnsupportedMediaType { .. } => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::NotFound { code, .. } => (StatusCode::NOT_FOUND, *code),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::RequestTimeout { .. } | ApiError::BodyTooSlow { .. } => {
                (StatusCode::REQUEST_TIMEOUT, "request_timeout")
            }
            ApiError::TooManySubscriptions { .. } => (StatusCode::SERVICE_UNAVAILABLE, "too_many_subscriptions"),
            ApiError::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            ApiError::WebSocketVersion { .. } => (StatusCode::UPGRADE_REQUIRED, "unsupported_websocket_version"),
            ApiError::Group(e) => match e {
                GroupError::GroupActive(_) => (StatusCode::CONFLICT, "group_active"),
                GroupError::MemberInUse(_) => (StatusCode::CONFLICT, "member_in_use"),
                GroupError::StaleGeneration { .. } => (StatusCode::CONFLICT, "stale_generation"),
                GroupError::NotOwner(..) => (StatusCode::CONFLICT, "not_owner"),
            },
            ApiError::Auth(e) => {
                use crate::auth::AuthError as A;
                // The code is the refusal's reason, as `/metrics` counts it.
                let status = match e {
                    A::MissingCredentials
                    | A::InvalidToken(_)
                    | A::TokenExpired
                    | A::TokenNotYetValid
                    | A::InvalidAudience
                    | A::InvalidIssuer
                    | A::UnknownWriteKey => StatusCode::UNAUTHORIZED,
                    A::Forbidden(_)
                    | A::OriginNotAllowed(_)
                    | A::PageNotAllowed(_)
                    | A::CrossSiteWithoutOrigin
                    | A::HostNotAllowed(_) => StatusCode::FORBIDDEN,
                    A::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                };
                (status, e.reason())
            }
        };
        let detail = match self {
            ApiError::Storage(e) => storage_detail(e),
            _ => self.to_string(),
        };
        let mut problem = Problem::new(status, code, detail);
        match self {
            ApiError::InvalidEvents { errors } => problem.errors = Some(errors.clone()),
            ApiError::TooLarge { limit, setting, index, .. } => {
                problem.limit = Some(*limit);
                problem.setting = Some((*setting).to_string());
                if let Some(index) = index {
                    problem.errors = Some(vec![EventError::new(*index, self.to_string())]);
                }
            }
            ApiError::Overloaded { budget } => {
                problem.limit = Some(*budget);
                problem.setting = Some("request_memory_bytes".to_string());
            }
            ApiError::Storage(S::OffsetOutOfRange { start, end, .. }) => {
                problem.start_offset = Some(*start);
                problem.end_offset = Some(*end);
            }
            _ => {}
        }
        // A disk below the floor is a state, not a fault: the store logs when appends
        // stop and resume, not each refusal. Nor is a surge that fills
        // `request_memory_bytes` (counted by `tidegate_request_memory_refused_total`): a
        // line per refusal would flood the log when it matters most.
        if status.is_server_error()
            && status != StatusCode::INSUFFICIENT_STORAGE
            && !matches!(self, ApiError::Overloaded { .. })
        {
            tracing::error!(code, error = %self, "request failed");
        }
        problem
    }
}

/// What a client is told of a storage error. A server fault's own text names files and
/// internals: it goes to the log (every caller logs it), and the client learns only
/// that storage failed and nothing was acknowledged. Other errors keep their text.
pub fn storage_detail(e: &StorageError) -> String {
    match e {
        StorageError::DataDir { .. }
        | StorageError::Rocks(_)
        | StorageError::Internal(_)
        | StorageError::Corrupt { .. } => {
            "storage failed: nothing was acknowledged (the server log has the error)".to_string()
        }
        other => other.to_string(),
    }
}

impl Problem {
    /// A problem with no extension fields.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Problem {
        Problem {
            type_uri: format!("urn:tidegate:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_string(),
            errors: None,
            start_offset: None,
            end_offset: None,
            limit: None,
            setting: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).expect("problem serialises");
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        } else if status == StatusCode::INSUFFICIENT_STORAGE {
            // Space comes back when an operator frees it: retry in a while, not at once.
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = self.to_problem().into_response();
        match &self {
            ApiError::Auth(crate::auth::AuthError::RateLimited { retry_after, .. }) => {
                let secs = crate::auth::retry_after_secs(*retry_after);
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ApiError::Auth(e) if resp.status() == StatusCode::UNAUTHORIZED => {
                // RFC 6750: tell the client which scheme, and whether its token was bad.
                let value = match e {
                    crate::auth::AuthError::MissingCredentials => HeaderValue::from_static("Bearer"),
                    _ => HeaderValue::from_static("Bearer error=\"invalid_token\""),
                };
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
            }
            ApiError::WebSocketVersion { .. } => {
                // RFC 6455 section 4.2.2: name the versions this server understands.
                resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            }
            _ => {}
        }
        resp
    }
}

/// What a request body read fails with when it stalls for `http_body_timeout_ms`
/// (the error of the connection loop's body wrapper, as extractors report it).
pub const BODY_TIMEOUT_TEXT: &str = "no byte of the request body arrived within http_body_timeout_ms";

/// What a request body read fails with when its bytes take longer than
/// `http_body_total_timeout_ms` to arrive (as [`BODY_TIMEOUT_TEXT`]).
pub const BODY_TOO_SLOW_TEXT: &str = "the request body took longer than http_body_total_timeout_ms to arrive";

/// What a request body read fails with when its bytes find no room in
/// `request_memory_bytes` within `request_memory_wait_ms` (see
/// [`crate::request_memory::MeteredBody`]).
pub const BODY_OVERLOADED_TEXT: &str =
    "the request body found no room in request_memory_bytes within request_memory_wait_ms";

/// The problem for a request body that could not be read: over `max_body_bytes`
/// (413), stalled or too slow (408), without room in `request_memory_bytes` (503 `overloaded`), or
/// broken off (400 `invalid_body`).
pub fn body_rejection(
    rejection: &axum::extract::rejection::BytesRejection,
    state: &crate::state::AppState,
) -> ApiError {
    let text = rejection.body_text();
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        crate::ingest::decode::body_too_large(usize::try_from(state.config.max_body_bytes).unwrap_or(usize::MAX))
    } else if text.contains(BODY_TIMEOUT_TEXT) {
        ApiError::RequestTimeout { timeout_ms: state.config.http_body_timeout_ms }
    } else if text.contains(BODY_TOO_SLOW_TEXT) {
        ApiError::BodyTooSlow { limit_ms: state.config.http_body_total_timeout_ms }
    } else if text.contains(BODY_OVERLOADED_TEXT) {
        ApiError::Overloaded { budget: state.request_memory.budget_bytes() }
    } else {
        ApiError::invalid("invalid_body", text)
    }
}

/// Largest body of a non-problem error response that is carried into `detail`.
const MAX_REWRITTEN_DETAIL: usize = 16 * 1024;

/// Rewrites error responses that did not come from [`ApiError`] (axum rejections,
/// body-limit and routing errors) into problem+json, keeping their status and text.
pub async fn problem_layer(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    if is_problem {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_REWRITTEN_DETAIL).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    // A body that stalled (tower-http's body timeout) fails extractors with a 400.
    let status = if text.contains(BODY_TIMEOUT_TEXT) { StatusCode::REQUEST_TIMEOUT } else { status };
    let (code, detail) = match status {
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", text),
        StatusCode::NOT_FOUND => ("not_found", if text.is_empty() { "no such route".to_string() } else { text }),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed on this path".to_string()),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
        StatusCode::BAD_REQUEST => ("invalid_request", text),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_body", text),
        s if s.is_server_error() => ("internal_error", text),
        _ => ("client_error", text),
    };
    let detail = if detail.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { detail };
    let mut out = Problem::new(status, code, detail).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
