//! `POST /v1/topics/{topic}/events`: the ingest endpoint browsers and servers post to.
//!
//! A request is atomic: every event is validated and encoded first, then all of
//! them are appended in one storage write (one batch per partition touched), or the
//! request fails and nothing is stored. The answer lists each event's partition and
//! offset in request order.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tidegate_storage::{BatchBuilder, EncodedBatch};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Action, Caller};
use crate::error::{ApiError, EventError, Problem};
use crate::ingest::decode::{body_format, body_too_large, decode_body};
use crate::ingest::parse::{ParseLimits, ParsedEvent, parse_body};
use crate::ingest::partitioner::partition_for_key;
use crate::state::SharedState;

/// Bodies at least this large are decoded and parsed on a blocking thread, so the
/// async workers never spend more than a fraction of a millisecond on one request.
const INLINE_PARSE_BYTES: usize = 64 * 1024;
/// Most headers one envelope record may carry.
pub const MAX_RECORD_HEADERS: usize = 256;
/// Longest header name.
pub const MAX_HEADER_NAME: usize = 256;

/// When to answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Answer 200 with offsets once the write met the fsync policy.
    #[default]
    All,
    /// Answer 202 as soon as the events are validated and queued (fire and forget).
    None,
}

/// Query parameters of the ingest endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProduceParams {
    /// Record key for every event of the request (an envelope record's own key wins).
    pub record_key: Option<String>,
    /// Browser write key (also accepted as `X-Write-Key`, the HTTP Basic user name, or a
    /// top-level `writeKey` field of a JSON object body).
    pub key: Option<String>,
    /// Partition for every event (an envelope record's own partition wins).
    pub partition: Option<u32>,
    /// `all` (default) or `none`.
    pub acks: Option<Acks>,
}

/// Where one event was stored.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EventOffset {
    /// Partition the event went to.
    pub partition: u32,
    /// Its offset in that partition.
    pub offset: u64,
}

/// Answer to an acknowledged ingest request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProduceResponse {
    /// One entry per event, in request order.
    pub offsets: Vec<EventOffset>,
}

/// Answer to an `acks=none` request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// Number of events queued.
    pub accepted: usize,
}

/// Header names the gateway adds to every ingested record.
pub mod headers {
    /// Receive time at the gateway, ms since the Unix epoch (decimal).
    pub const RECEIVED_AT: &str = "received-at";
    /// The client's IP address (setting `record_client_ip`).
    pub const CLIENT_IP: &str = "client-ip";
    /// The request's `User-Agent` (setting `record_user_agent`).
    pub const USER_AGENT: &str = "user-agent";
}

/// A request turned into batches, ready to append.
struct Prepared {
    batches: Vec<(u32, EncodedBatch)>,
    /// For each event: (index into `batches`, position within that batch).
    slots: Vec<(usize, u32)>,
    payload_bytes: u64,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Post events to a topic.
///
/// Body forms: one JSON event; a JSON array of events; NDJSON; the envelope
/// `{"records":[{"value","key"?,"partition"?,"headers"?,"timestamp"?}]}`; or, with
/// `application/octet-stream`, one binary event. `text/plain` is parsed as JSON (for
/// `navigator.sendBeacon`). `Content-Encoding: gzip | deflate | br` is accepted.
#[utoipa::path(post, path = "/v1/topics/{topic}/events", tag = "events",
    params(("topic" = String, Path, description = "Topic name"), ProduceParams),
    request_body(description = "Events", content(
        (serde_json::Value = "application/json"),
        (String = "text/plain"),
        (String = "application/x-ndjson"),
        (Vec<u8> = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "Stored durably; offsets in request order", body = ProduceResponse),
        (status = 202, description = "Queued (`acks=none`)", body = Accepted),
        (status = 400, description = "Malformed events (each listed with index and byte position), bad parameters or encoding; nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic (unless `auto_create_topics`), or unknown partition", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body, event or event count over its limit; nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported content type or encoding", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Storage failure; nothing was acknowledged", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn produce(
    State(state): State<SharedState>,
    caller: Caller,
    Path(topic): Path<String>,
    Query(params): Query<ProduceParams>,
    request_headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body_key = caller.needs_credentials();
    if !body_key {
        caller.require(Action::Produce, &topic)?;
    }
    let max_body = state.config.max_body_bytes as usize;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => body_too_large(max_body),
        _ => ApiError::invalid("invalid_body", rejection.body_text()),
    })?;
    let header_str = |name| request_headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
    let format = body_format(header_str(header::CONTENT_TYPE))?;
    let encoding = header_str(header::CONTENT_ENCODING).map(str::to_owned);
    if body_key {
        // The write key may be in the body: decode it first (bounded by max_body_bytes).
        let (enc, raw) = (encoding.clone(), body.clone());
        let probe = move || decode_body(enc.as_deref(), raw, max_body).map(|d| body_write_key(&d));
        let key = if body.len() < INLINE_PARSE_BYTES {
            probe()?
        } else {
            tokio::task::spawn_blocking(probe)
                .await
                .map_err(|e| ApiError::Storage(tidegate_storage::StorageError::Internal(e.to_string())))??
        };
        caller.clone().with_body_write_key(key.as_deref()).require(Action::Produce, &topic)?;
    }
    let topic_handle = state.topic_for_ingest(&topic).await?;
    let partitions = topic_handle.partition_count();

    let received = now_ms();
    let mut shared: Vec<(&'static str, Vec<u8>)> = vec![(headers::RECEIVED_AT, received.to_string().into_bytes())];
    if state.config.record_client_ip {
        shared.push((headers::CLIENT_IP, caller.ip.to_string().into_bytes()));
    }
    if state.config.record_user_agent
        && let Some(ua) = request_headers.get(header::USER_AGENT)
    {
        shared.push((headers::USER_AGENT, ua.as_bytes().to_vec()));
    }
    let limits = ParseLimits {
        max_event_bytes: state.config.max_event_bytes as usize,
        max_events: state.config.max_events_per_request as usize,
    };
    let sticky = state.spreader.next(partitions);
    let acks = params.acks.unwrap_or_default();
    let job = move || -> Result<Prepared, ApiError> {
        let body = decode_body(encoding.as_deref(), body, max_body)?;
        let events = parse_body(&body, format, limits)?;
        prepare(&events, &params, &shared, partitions, sticky, received)
    };
    let prepared = if body_len_hint(&request_headers) < INLINE_PARSE_BYTES {
        job()?
    } else {
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| ApiError::Storage(tidegate_storage::StorageError::Internal(e.to_string())))??
    };
    let events = prepared.slots.len();
    let payload = prepared.payload_bytes;
    let batch_parts: Vec<u32> = prepared.batches.iter().map(|(p, _)| *p).collect();
    let response = if acks == Acks::None {
        state.store.append_detached(&topic, prepared.batches).await?;
        (StatusCode::ACCEPTED, Json(Accepted { accepted: events })).into_response()
    } else {
        let bases = state.store.append(&topic, prepared.batches).await?;
        let offsets = prepared
            .slots
            .iter()
            .map(|&(b, i)| EventOffset { partition: batch_parts[b], offset: bases[b] + u64::from(i) })
            .collect();
        Json(ProduceResponse { offsets }).into_response()
    };
    metrics::counter!("tidegate_events_appended_total", "topic" => topic.clone()).increment(events as u64);
    metrics::counter!("tidegate_bytes_appended_total", "topic" => topic).increment(payload);
    Ok(response)
}

/// The `writeKey` field of a JSON object body (a single event or the envelope).
fn body_write_key(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'{' {
        return None;
    }
    serde_json::from_slice::<Probe>(&body[start..]).ok()?.write_key
}

/// Size of the body as announced, to decide where to parse it.
fn body_len_hint(headers: &HeaderMap) -> usize {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(usize::MAX)
}

/// Chooses partitions and encodes one batch per partition, keeping request order.
fn prepare(
    events: &[ParsedEvent<'_>],
    params: &ProduceParams,
    shared: &[(&'static str, Vec<u8>)],
    partitions: u32,
    sticky: u32,
    received: i64,
) -> Result<Prepared, ApiError> {
    let shared: Vec<(&str, &[u8])> = shared.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let default_key = params.record_key.as_deref().map(str::as_bytes);
    let mut errors = Vec::new();
    let mut builders: Vec<(u32, BatchBuilder)> = Vec::new();
    let mut slots = Vec::with_capacity(events.len());
    let mut payload_bytes = 0u64;
    let per_batch = events.iter().map(|e| e.value.len() + 32).sum::<usize>().min(4 << 20);
    for (index, event) in events.iter().enumerate() {
        let key = event.key.as_deref().or(default_key);
        let partition = match event.partition.or(params.partition) {
            Some(p) if p >= partitions => {
                errors.push(EventError {
                    index,
                    position: None,
                    detail: format!("partition {p} does not exist (the topic has {partitions})"),
                });
                continue;
            }
            Some(p) => p,
            None => key.map_or(sticky, |k| partition_for_key(k, partitions)),
        };
        if event.headers.len() > MAX_RECORD_HEADERS || event.headers.iter().any(|(n, _)| n.len() > MAX_HEADER_NAME) {
            errors.push(EventError {
                index,
                position: None,
                detail: format!(
                    "at most {MAX_RECORD_HEADERS} headers per record, names at most {MAX_HEADER_NAME} bytes"
                ),
            });
            continue;
        }
        let b = match builders.iter().position(|(p, _)| *p == partition) {
            Some(b) => b,
            None => {
                builders.push((partition, BatchBuilder::new(&shared, per_batch)));
                builders.len() - 1
            }
        };
        let own: Vec<(&str, &[u8])> = event.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        let builder = &mut builders[b].1;
        slots.push((b, builder.count()));
        builder.push(event.timestamp.unwrap_or(received), key, &own, event.value, event.json);
        payload_bytes += event.value.len() as u64;
    }
    if !errors.is_empty() {
        errors.truncate(crate::ingest::parse::MAX_LISTED_ERRORS);
        return Err(ApiError::InvalidEvents { errors });
    }
    let batches = builders.into_iter().map(|(p, b)| (p, b.finish(0))).collect();
    Ok(Prepared { batches, slots, payload_bytes })
}
