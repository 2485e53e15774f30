//! `GET /v1/topics/{topic}/stream`: the same subscription as the WebSocket one, as
//! Server-Sent Events (for `EventSource` and `curl -N`). Each event's `event:` is the
//! frame type and `data:` the frame's JSON; `records` events carry an `id:` listing
//! every position (`topic:partition:offset,...`), so a reconnecting `EventSource`
//! (which sends `Last-Event-ID`) resumes exactly where it stopped. With a group,
//! positions are committed automatically (an SSE client cannot send commits).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use crate::routes::names::NamePath;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream;

use super::subscribe::{SubscribeParams, prepare};
use crate::auth::Caller;
use crate::consume::session;
use crate::error::{ApiError, Problem};
use crate::state::SharedState;

/// Subscribe as Server-Sent Events.
#[utoipa::path(get, path = "/v1/topics/{topic}/stream", tag = "consume",
    params(
        ("topic" = String, Path, description = "Topic name"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume positions (sent by EventSource on reconnect)"),
        SubscribeParams,
    ),
    responses(
        (status = 200, description = "An event stream: assignment, revoked, records, gap, error events", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required, or the token is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token does not grant consume on a topic", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many subscriptions (`max_subscriptions`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn stream(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(topic): NamePath<String>,
    Query(mut params): Query<SubscribeParams>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if params.group.is_some() {
        params.auto_commit = Some(true);
    }
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let (session_params, permit) = prepare(&state, &topic, params, last_event_id, peer, &caller)?;
    if let Some(group) = &session_params.group {
        crate::routes::groups::require_group_access(&state, &caller, group).await?;
    }
    // One event in flight: the session reads the next frame only when the response
    // has taken the previous one, i.e. at the client's pace.
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(1);
    let joined = session::Joined::join(&state, &session_params);
    state.spawn_session(permit, |state| session::run_sse(state, tx, session_params, joined));
    let events = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
