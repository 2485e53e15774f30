//! `GET /v1/topics/{topic}/subscribe`: the WebSocket subscription (protocol in
//! docs/websocket.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::routes::names::NamePath;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use utoipa::IntoParams;

use crate::auth::{Action, Caller};
use crate::consume::protocol::StartFrom;
use crate::consume::session::{self, SessionParams};
use crate::error::{ApiError, Problem};
use crate::groups::assign::TopicPartition;
use crate::state::SharedState;

/// Bytes read from a subscriber's socket per attempt. Clients send small frames
/// (commits, seeks, pongs); tungstenite zero-fills this much before every read attempt,
/// and a session makes one per wake-up, so a small buffer saves CPU and idle memory.
/// Larger client frames are read in several steps.
const CLIENT_READ_BUFFER: usize = 1024;

/// Query parameters of a subscription.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubscribeParams {
    /// Consumer group; without it the subscription is ephemeral (every partition, nothing committed).
    pub group: Option<String>,
    /// Static member id: reconnecting with it within `session_timeout_ms` keeps the partitions.
    pub member: Option<String>,
    /// Start when nothing is committed: `earliest`, `latest` (default), an offset, `offset:N` or `timestamp:MS`.
    pub from: Option<String>,
    /// Commit delivered positions automatically (default true with a group).
    pub auto_commit: Option<bool>,
    /// More topics to subscribe to, comma-separated.
    pub topics: Option<String>,
    /// Ephemeral resume positions: `partition:offset` (first topic) or `topic:partition:offset`, comma-separated.
    pub offsets: Option<String>,
    /// Bearer token, for clients that cannot set headers (browsers' WebSocket and
    /// EventSource). The subscription is closed (code 4003) when it expires.
    pub access_token: Option<String>,
}

/// Parses resume positions: `partition:offset` (of the first topic),
/// `topic:partition:offset`, or `topic:partition:offset:incarnation` as SSE event ids
/// carry them. A position whose incarnation is not the live topic's (the topic was
/// deleted and created again since) is left out: it is no position in the new topic.
fn parse_resume(state: &SharedState, first_topic: &str, text: &str) -> Result<BTreeMap<TopicPartition, u64>, ApiError> {
    let mut out = BTreeMap::new();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let parts: Vec<&str> = item.split(':').collect();
        let (topic, p, o, incarnation) = match parts.as_slice() {
            [p, o] => (first_topic, *p, *o, None),
            [t, p, o] => (*t, *p, *o, None),
            [t, p, o, i] => (*t, *p, *o, Some(*i)),
            _ => {
                return Err(ApiError::invalid(
                    "invalid_parameter",
                    format!("offsets item {item:?} is not partition:offset"),
                ));
            }
        };
        let p = p.parse().map_err(|_| ApiError::invalid("invalid_parameter", format!("bad partition in {item:?}")))?;
        let o = o.parse().map_err(|_| ApiError::invalid("invalid_parameter", format!("bad offset in {item:?}")))?;
        if let Some(i) = incarnation {
            let i: u64 = i
                .parse()
                .map_err(|_| ApiError::invalid("invalid_parameter", format!("bad incarnation in {item:?}")))?;
            if state.store.partition(topic, p).is_ok_and(|log| log.incarnation() != i) {
                continue;
            }
        }
        out.insert((topic.to_string(), p), o);
    }
    Ok(out)
}

/// Validates subscription parameters (WebSocket and SSE share them) and takes a
/// subscription slot.
pub fn prepare(
    state: &SharedState,
    topic: &str,
    params: SubscribeParams,
    last_event_id: Option<&str>,
    peer: SocketAddr,
    caller: &Caller,
) -> Result<(SessionParams, OwnedSemaphorePermit), ApiError> {
    let mut topics = vec![topic.to_string()];
    for t in params.topics.as_deref().unwrap_or("").split(',').filter(|t| !t.is_empty()) {
        if !topics.iter().any(|x| x == t) {
            topics.push(t.to_string());
        }
    }
    for t in &topics {
        caller.require(Action::Consume, t)?;
    }
    for t in &topics {
        state.store.topic(t)?;
    }
    if let Some(g) = &params.group {
        tidegate_storage::validate_group_name(g)?;
    }
    if params.group.is_none() && params.member.is_some() {
        return Err(ApiError::invalid("invalid_parameter", "member needs a group"));
    }
    if let Some(m) = &params.member
        && tidegate_storage::validate_topic_name(m).is_err()
    {
        return Err(ApiError::invalid("invalid_parameter", "member must be 1 to 249 of A-Z a-z 0-9 . _ -"));
    }
    let from = StartFrom::parse(params.from.as_deref().unwrap_or("latest"))
        .map_err(|e| ApiError::invalid("invalid_parameter", e))?;
    let resume = match last_event_id {
        // A reconnecting EventSource resends the id of the last event it got, and stops
        // reconnecting for good after a 4xx: positions that no longer fit (the topic was
        // re-created with fewer partitions) or an id it cannot read are dropped, and
        // the subscription starts as without them.
        Some(id) => {
            let mut resume = parse_resume(state, topic, id).unwrap_or_default();
            resume.retain(|(t, p), _| topics.contains(t) && state.store.partition(t, *p).is_ok());
            resume
        }
        None => {
            let resume = parse_resume(state, topic, params.offsets.as_deref().unwrap_or(""))?;
            for (t, p) in resume.keys() {
                if !topics.contains(t) {
                    return Err(ApiError::invalid(
                        "invalid_parameter",
                        format!("offsets names {t:?}, which is not subscribed"),
                    ));
                }
                state.store.partition(t, *p)?;
            }
            resume
        }
    };
    let permit = state
        .subscriptions
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManySubscriptions { limit: state.config.max_subscriptions })?;
    let auto_commit = params.auto_commit.unwrap_or(params.group.is_some());
    let session_params = SessionParams {
        topics,
        group: params.group,
        member: params.member,
        from,
        auto_commit,
        resume,
        client: peer.to_string(),
        expires_at: caller.expires_at(),
    };
    Ok((session_params, permit))
}

/// The answer to a request that is not a usable WebSocket handshake: 426 with
/// `Sec-WebSocket-Version: 13` for another protocol version (RFC 6455, section 4.2.2),
/// else axum's 400, which the problem layer turns into a problem document.
fn handshake_refused(rejection: WebSocketUpgradeRejection, headers: &HeaderMap) -> Response {
    let offered =
        headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match (rejection, offered) {
        (WebSocketUpgradeRejection::InvalidWebSocketVersionHeader(_), Some(offered)) if !offered.trim().is_empty() => {
            ApiError::WebSocketVersion { offered }.into_response()
        }
        (rejection, _) => rejection.into_response(),
    }
}

/// Sets `Allow: GET` on the path's 405 answers (HEAD included: it cannot upgrade).
pub async fn allow_get_only(mut response: Response) -> Response {
    if response.status() == axum::http::StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(header::ALLOW, axum::http::HeaderValue::from_static("GET"));
    }
    response
}

/// Subscribe over WebSocket.
///
/// Server frames: `assignment`, `revoked`, `records`, `committed`, `gap`, `error`.
/// Client frames: `commit`, `seek`, `pause`, `resume`. See docs/websocket.md.
#[utoipa::path(get, path = "/v1/topics/{topic}/subscribe", tag = "consume",
    params(("topic" = String, Path, description = "Topic name"), SubscribeParams),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Invalid parameter or not a WebSocket request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required, or the token is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token does not grant consume on a topic", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
        (status = 426, description = "A `Sec-WebSocket-Version` other than 13 (the answer's `Sec-WebSocket-Version` header names 13)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many subscriptions (`max_subscriptions`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn subscribe(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(topic): NamePath<String>,
    Query(params): Query<SubscribeParams>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return Ok(handshake_refused(rejection, &headers)),
    };
    let (session_params, permit) = prepare(&state, &topic, params, None, peer, &caller)?;
    if let Some(group) = &session_params.group {
        crate::routes::groups::require_group_access(&state, &caller, group).await?;
    }
    let joined = session::Joined::join(&state, &session_params);
    let frame_bytes = state.config.subscription_frame_bytes as usize;
    Ok(ws
        .max_message_size(state.config.max_client_frame_bytes as usize)
        .max_frame_size(state.config.max_client_frame_bytes as usize)
        .read_buffer_size(CLIENT_READ_BUFFER)
        .write_buffer_size(frame_bytes)
        .max_write_buffer_size(frame_bytes * 2 + 64 * 1024)
        .on_upgrade(move |socket| async move {
            state.spawn_session(permit, |state| session::run(state, socket, session_params, joined));
        }))
}
