//! `POST /v1/topics/{topic}/events`: the ingest endpoint browsers and servers post to.
//!
//! A request is atomic: every event is validated (and checked against the topic's
//! schema) first, then all of them are appended in one storage write (one batch per
//! partition touched, dead letters and remembered ids included), or the request fails
//! and nothing is stored. The answer lists each event's partition and offset in
//! request order. The write path itself is [`crate::ingest::pipeline`].

use std::time::{SystemTime, UNIX_EPOCH};

use crate::routes::names::NamePath;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Action, Caller};
use crate::error::{ApiError, EventError, Problem};
use crate::ingest::decode::{body_format, decode_body, single_header};
use crate::ingest::ids::{RequestIds, event_id, header_id, id_at, idempotency_key, request_ids};
use crate::ingest::parse::{ParseLimits, ParsedEvent, parse_body};
use crate::ingest::pipeline::{
    Answer, Create, Outgoing, Placement, Screened, TopicSet, commit, is_reserved_header, screen,
};
use crate::ingest::privacy::gateway_headers;
use crate::request_memory::MemoryGrant;
use crate::state::SharedState;

/// Bodies at least this large are decoded and parsed on a blocking thread, so the
/// async workers never spend more than a fraction of a millisecond on one request.
pub(crate) const INLINE_PARSE_BYTES: usize = 64 * 1024;

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
    #[param(inline)]
    pub acks: Option<Acks>,
}

/// Where one event was stored.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EventOffset {
    /// Partition the event went to (of the dead-letter topic when `dead_letter` is set).
    pub partition: u32,
    /// Its offset in that partition.
    pub offset: u64,
    /// True when a copy with the same event id (or the same `Idempotency-Key` and index)
    /// was stored before within the dedup window, or earlier in this request: nothing was
    /// written for it now, and `partition`/`offset` are the first copy's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Set when the event failed the topic's JSON Schema and was written to the topic's
    /// dead-letter topic instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLettered>,
}

/// Where and why an event was dead-lettered.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DeadLettered {
    /// The dead-letter topic holding the event.
    pub topic: String,
    /// The schema error (absent when answering a retry of an event dead-lettered before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// JSON pointer to the failing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
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

pub use crate::ingest::privacy::headers;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Post events to a topic.
///
/// Body forms: one JSON event; a JSON array of events; NDJSON; the envelope
/// `{"records":[{"value","key"?,"partition"?,"headers"?,"timestamp"?}]}`; or, with
/// `application/octet-stream`, one binary event. `text/plain` is parsed as JSON (for
/// `navigator.sendBeacon`). `Content-Encoding: gzip | deflate | br` is accepted.
///
/// Deduplication: when the topic has an `event_id` pointer, each JSON event's id is read
/// there; else, with an `Idempotency-Key` header, event *i* gets the id `<key>:<i>`. An id
/// stored within `dedup_window_ms` is not written again and is answered with the first
/// copy's partition and offset (`duplicate: true`).
///
/// Schema: when the topic has a JSON Schema, an invalid event fails the request (400,
/// `errors[].path` names the failing value) or, when the topic has a `dead_letter_topic`,
/// is written there (headers `dlq-reason`, `dlq-path`, `dlq-source-topic`) in the same
/// atomic write as the valid ones, and its answer entry carries `dead_letter`.
#[utoipa::path(post, path = "/v1/topics/{topic}/events", tag = "events",
    params(("topic" = String, Path, description = "Topic name"), ProduceParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Names the request: a retry with the same key and the same body is not written again; the same key with another body is refused (422)"),
        ("SP-Anonymous" = Option<String>, Header, description = "Any value: store no client IP for this request (also `Tidegate-Anonymous`)"),
    ),
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
        (status = 422, description = "`idempotency_key_reused`: the Idempotency-Key was used before with another body; nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Storage failure; nothing was acknowledged", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down (`shutting_down`), or `overloaded`: request bodies in flight fill `request_memory_bytes`; nothing was written (retry after `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "`insufficient_storage`: free disk space is below `min_free_disk_bytes`; nothing was written (retry later)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn produce(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(topic): NamePath<String>,
    Query(params): Query<ProduceParams>,
    request_headers: HeaderMap,
    memory: Option<Extension<MemoryGrant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let memory = memory.map(|Extension(grant)| grant);
    let body_key = caller.needs_credentials();
    if !body_key {
        caller.require(Action::Produce, &topic)?;
    }
    let max_body = state.config.max_body_bytes as usize;
    let mut body = body.map_err(|r| crate::error::body_rejection(&r, &state))?;
    let format = body_format(single_header(&request_headers, header::CONTENT_TYPE)?)?;
    let mut encoding = single_header(&request_headers, header::CONTENT_ENCODING)?.map(str::to_owned);
    let idempotency_key = idempotency_key(&request_headers)?;
    if body_key {
        // The write key may be in the body: decode it here (bounded by max_body_bytes),
        // once; parsing below then takes the decoded body.
        let (enc, raw, grant) = (encoding.take(), std::mem::take(&mut body), memory.clone());
        let probe = move || {
            let decoded = decode_body(enc.as_deref(), raw, max_body, grant.as_ref())?;
            Ok::<_, ApiError>((body_write_key(&decoded), decoded))
        };
        let (key, decoded) =
            if body_len_hint(&request_headers) < INLINE_PARSE_BYTES { probe()? } else { state.body_job(probe).await? };
        body = decoded;
        caller.clone().with_body_write_key(key.as_deref()).require(Action::Produce, &topic)?;
    }
    let mut set = TopicSet::default();
    // Creating a topic is administration (Kafka's Create ACL): a token that may only
    // produce, or a write key, gets 404 for an unknown topic whatever
    // `auto_create_topics` says.
    let create = if !body_key && caller.may(Action::Admin, &topic) { Create::IfConfigured } else { Create::Never };
    set.add(&state, &topic, create)?;
    // `?partition=` names a resource of the URL: 404 when it does not exist (an
    // envelope record's own `partition` is a field of one event: 400 with its index).
    if let Some(partition) = params.partition {
        let count = set.list[0].partition_count(&state);
        if partition >= count {
            return Err(ApiError::Storage(tidegate_storage::StorageError::PartitionNotFound {
                topic: topic.clone(),
                partition,
                count,
            }));
        }
    }

    let received = now_ms();
    let shared = gateway_headers(&state.config, caller.ip, &request_headers, received);
    let limits = ParseLimits {
        max_event_bytes: state.config.max_event_bytes as usize,
        max_depth: state.config.max_event_depth as usize,
        max_events: state.config.max_events_per_request as usize,
    };
    let acks = params.acks.unwrap_or_default();
    let job = {
        let (set, grant) = (set.clone(), memory.clone());
        move || -> Result<(Vec<Outgoing>, Option<RequestIds>), ApiError> {
            let body = decode_body(encoding.as_deref(), body, max_body, grant.as_ref())?;
            let events = parse_body(&body, format, limits)?;
            let request = match idempotency_key.as_deref() {
                Some(key) => {
                    Some(request_ids(key, &body).map_err(|d| ApiError::invalid("invalid_idempotency_key", d))?)
                }
                None => None,
            };
            Ok((outgoing(&set, &body, &events, &params, idempotency_key.as_deref(), body_key)?, request))
        }
    };
    let (events, request) =
        if body_len_hint(&request_headers) < INLINE_PARSE_BYTES { job()? } else { state.body_job(job).await? };
    let count = events.len();
    let answer = match acks {
        Acks::None => Answer::OnceQueued { hold: memory },
        _ => Answer::AfterWrite,
    };
    let placements = commit(&state, &mut set, events, shared, received, answer, request).await?;
    let response = match placements {
        None => (StatusCode::ACCEPTED, Json(Accepted { accepted: count })).into_response(),
        Some(placements) => {
            let offsets = placements.into_iter().map(|p| event_offset(&set, p)).collect();
            Json(ProduceResponse { offsets }).into_response()
        }
    };
    Ok(response)
}

/// The answer entry of one placed event.
pub(crate) fn event_offset(set: &TopicSet, p: Placement) -> EventOffset {
    EventOffset {
        partition: p.partition,
        offset: p.offset,
        duplicate: p.duplicate,
        dead_letter: p.dead_letter.map(|note| DeadLettered {
            topic: set.list[p.topic].name.clone(),
            reason: note.reason,
            path: note.path,
        }),
    }
}

/// Turns parsed events into owned events for the topic: ids, schema check, dead letters.
fn outgoing(
    set: &TopicSet,
    body: &Bytes,
    events: &[ParsedEvent<'_>],
    params: &ProduceParams,
    idempotency_key: Option<&str>,
    body_write_key: bool,
) -> Result<Vec<Outgoing>, ApiError> {
    let rules = &set.list[0].rules;
    let default_key = params.record_key.as_deref().map(|k| Bytes::copy_from_slice(k.as_bytes()));
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        // Before anything reads the event: its id and its schema see what is stored.
        let value = match body_write_key && events.len() == 1 {
            true => without_write_key(body, event),
            false => None,
        }
        .unwrap_or_else(|| body.slice_ref(event.value));
        let own_id = match (&rules.event_id, event.json) {
            // An empty id counts as none (as Segment's empty messageId does): the
            // Idempotency-Key, if any, names the event instead.
            (Some(pointer), true) => {
                std::str::from_utf8(&value).ok().and_then(|raw| id_at(raw, pointer)).filter(|id| !id.is_empty())
            }
            _ => None,
        };
        let id = match (own_id, idempotency_key) {
            (Some(id), _) => Some(event_id(&id)),
            (None, Some(key)) => Some(header_id(key, index)),
            (None, None) => None,
        };
        let id = match id.transpose() {
            Ok(id) => id,
            Err(detail) => {
                errors.push(EventError::new(index, detail));
                continue;
            }
        };
        if let Some((name, _)) = event.headers.iter().find(|(n, _)| n.is_empty() || is_reserved_header(n)) {
            errors.push(EventError::new(
                index,
                if name.is_empty() {
                    "a header name is empty".to_string()
                } else {
                    format!("header {name:?} is set by the gateway and may not be sent")
                },
            ));
            continue;
        }
        let key = match &event.key {
            Some(std::borrow::Cow::Borrowed(k)) => Some(body.slice_ref(k)),
            Some(std::borrow::Cow::Owned(k)) => Some(Bytes::copy_from_slice(k)),
            None => default_key.clone(),
        };
        let e = Outgoing {
            key,
            partition: event.partition.or(params.partition),
            headers: event.headers.iter().map(|(n, v)| (n.clone(), v.as_bytes().to_vec())).collect(),
            timestamp: event.timestamp,
            id,
            json: event.json,
            ..Outgoing::json(0, value)
        };
        let mut e = match screen(set, index, e) {
            Screened::Passed(e) => e,
            // Refused in `commit`, unless a retry of an event stored before.
            Screened::Failed(e, failure) if e.id.is_some() => {
                out.push(Outgoing { refusal: Some(failure), ..e });
                continue;
            }
            Screened::Failed(_, failure) => {
                errors.push(failure);
                continue;
            }
        };
        if e.dead_letter.is_some()
            && let Some(key) = idempotency_key
        {
            // Remembered as `K:<index>` with its dead-letter place (see
            // `Outgoing::replay_id`); an id of its own stays unremembered.
            let replay = header_id(key, index).map_err(|d| ApiError::invalid("invalid_idempotency_key", d))?;
            if e.id.as_ref() == Some(&replay) {
                e.id = None;
            }
            e.replay_id = Some(replay);
        }
        out.push(e);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        // Refused anyway: list the schema failures that waited for the dedup lookup too.
        errors.extend(out.into_iter().filter_map(|e| e.refusal));
        errors.sort_by_key(|e| e.index);
        errors.truncate(crate::ingest::parse::MAX_LISTED_ERRORS);
        Err(ApiError::InvalidEvents { errors })
    }
}

/// Without its `writeKey` member, an event that is the whole body (a single JSON
/// object that carried the write key): the key is a credential of the request, not a
/// field of the event (as the Segment routes do). The envelope's `writeKey` sits beside
/// its records and is never part of them.
fn without_write_key(body: &Bytes, event: &ParsedEvent<'_>) -> Option<Bytes> {
    let whole = body.trim_ascii();
    if !event.json || event.value.as_ptr() != whole.as_ptr() || event.value.len() != whole.len() {
        return None;
    }
    let mut object = crate::ingest::rawjson::RawObject::parse(std::str::from_utf8(event.value).ok()?).ok()?;
    object.remove("writeKey")?;
    Some(Bytes::from(object.to_json()))
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
