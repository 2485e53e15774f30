//! Segment-compatible tracking API: analytics.js and Segment's server libraries send
//! here by changing only their API host.
//!
//! - `POST /v1/track|page|screen|identify|group|alias|batch` and analytics.js's short
//!   paths `/v1/t|p|s|i|g|a|b` (any content type is read as JSON: analytics.js posts
//!   `text/plain` to avoid a CORS preflight; gzip, deflate and br bodies are decoded).
//! - `GET /v1/projects/{writeKey}/settings`: the settings analytics.js loads at start,
//!   pointing its Segment.io integration back at this gateway.
//!
//! Each event goes to the topic `segment_topics` picks (created on first use), keyed by
//! `userId`, else `anonymousId`, deduplicated by `messageId`, through the same write
//! path as `/v1/topics/{t}/events` (schemas and dead letters included). A batch's
//! events that cannot be accepted go to `segment_invalid_topic` instead of failing the
//! batch (trackers drop a batch answered 400). A request is atomic: all it writes is
//! stored in one write. Accepted requests answer 200 `{"success": true}`; only
//! malformed ones get 400 (Segment's trackers retry any other status).

use axum::Json;
use axum::extract::rejection::BytesRejection;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::{Action, Caller};
use crate::error::{ApiError, Problem};
use crate::ingest::decode::decode_body;
use crate::ingest::ids::event_id;
use crate::ingest::parse::MAX_LISTED_ERRORS;
use crate::ingest::pipeline::{Answer, Create, Outgoing, Screened, TopicSet, commit, dead_letter_headers, screen};
use crate::ingest::privacy::gateway_headers;
use crate::ingest::privacy::{ClientIpMode, is_anonymous};
use crate::ingest::segment::{Call, InvalidItem, SegmentOptions, normalize};
use crate::request_memory::MemoryGrant;
use crate::routes::events::now_ms;
use crate::state::SharedState;

/// The paths of the Segment calls (each routed to [`segment_call`]).
pub const CALL_PATHS: [&str; 15] = [
    "/v1/track",
    "/v1/page",
    "/v1/screen",
    "/v1/identify",
    "/v1/group",
    "/v1/alias",
    "/v1/batch",
    "/v1/import",
    "/v1/t",
    "/v1/p",
    "/v1/s",
    "/v1/i",
    "/v1/g",
    "/v1/a",
    "/v1/b",
];

/// Segment's answer to an accepted call.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SegmentAccepted {
    /// Always `true`.
    pub success: bool,
    /// The events of a batch that could not be accepted (by index; the first 100 are
    /// listed, `invalid_count` counts them all): written to `invalid_topic` instead, or
    /// dropped when `segment_invalid_topic` is empty. The batch's other events are
    /// stored.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub invalid: Option<Vec<crate::error::EventError>>,
    /// How many events of the batch could not be accepted (listed in `invalid` or not).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub invalid_count: Option<u64>,
    /// The topic that received them (`segment_invalid_topic`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub invalid_topic: Option<String>,
}

/// Checks that the caller may produce to every topic of `topics`: with a token, or a
/// write key from the `Authorization: Basic` user name, `X-Write-Key`, `?key=` (read by
/// the authentication middleware) or the body's `writeKey` (`body_key`). A write key
/// takes one request from its rate limit, however many topics the batch writes to.
pub fn authorize_write_key(caller: &Caller, body_key: Option<&str>, topics: &[String]) -> Result<(), ApiError> {
    caller.clone().with_body_write_key(body_key).require_each(Action::Produce, topics)
}

/// Send Segment events: a single call (`track`, `page`, `screen`, `identify`, `group`,
/// `alias`, or analytics.js's `t`, `p`, `s`, `i`, `g`, `a`) or a `batch` (`b`).
///
/// The write key comes from HTTP Basic auth (user name) or the body's `writeKey`.
/// Limits: 32 KB per event and single call, 500 KB per batch (settings
/// `segment_max_event_bytes`, `segment_max_batch_bytes`), answered with 400 like Segment.
/// A refusal of the Segment API: what the events route answers 413 or 415 is 400 here,
/// since Segment's trackers retry every other status and resending cannot fix a body
/// that is too large or encoded in a way the gateway does not read.
pub(crate) fn as_segment_refusal(e: ApiError) -> ApiError {
    match e {
        ApiError::TooLarge { detail, setting, .. } => {
            ApiError::invalid("payload_too_large", format!("{detail} (setting {setting})"))
        }
        ApiError::UnsupportedMediaType { detail } => ApiError::invalid("unsupported_encoding", detail),
        other => other,
    }
}

#[utoipa::path(post, path = "/v1/{call}", tag = "segment",
    params(
        ("call" = String, Path, description = "track, page, screen, identify, group, alias, batch (also `import`, where Segment's mobile libraries post batches), or t, p, s, i, g, a, b"),
        ("Idempotency-Key" = Option<String>, Header, description = "Names the request: events without a `messageId` get `idem-<hash of key and body>-<index>`, so a retry with the same body is not written again"),
    ),
    request_body(description = "A Segment call: one event, or `{\"batch\": [...], \"context\"?, \"integrations\"?, \"sentAt\"?, \"writeKey\"?}`", content(
        (Object = "application/json"),
        (String = "text/plain"),
    )),
    responses(
        (status = 200, description = "Stored durably", body = SegmentAccepted),
        (status = 400, description = "Malformed: not JSON, no userId/anonymousId, a track without event, a group without groupId, an alias without previousId, unknown type, over a size limit, an unknown or repeated Content-Encoding, a malformed `Idempotency-Key` (`invalid_idempotency_key`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such call", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`partition_limit`: creating a topic the events map to would pass `max_partitions`; nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Storage failure; nothing was acknowledged", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down (`shutting_down`), or `overloaded`: request bodies in flight fill `request_memory_bytes`; nothing was written (retry after `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "`insufficient_storage`: free disk space is below `min_free_disk_bytes`; nothing was written (retry later)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn segment_call(
    State(state): State<SharedState>,
    caller: Caller,
    uri: Uri,
    request_headers: HeaderMap,
    memory: Option<Extension<MemoryGrant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SegmentAccepted>, ApiError> {
    // Routed only for the call paths (see [`CALL_PATHS`]), so the last segment names one.
    let name = uri.path().rsplit('/').next().unwrap_or_default();
    let Some(call) = Call::from_path(name) else {
        return Err(ApiError::NotFound { code: "not_found", detail: format!("no Segment call {name:?}") });
    };
    let config = &state.config;
    let body = body.map_err(|r| as_segment_refusal(crate::error::body_rejection(&r, &state)))?;
    let encoding = crate::ingest::decode::single_header(&request_headers, header::CONTENT_ENCODING)
        .map_err(as_segment_refusal)?
        .map(str::to_owned);
    let limits = SegmentOptions {
        max_event_bytes: config.segment_max_event_bytes as usize,
        max_batch_bytes: config.segment_max_batch_bytes as usize,
        max_events: config.max_events_per_request as usize,
        max_depth: config.max_event_depth as usize,
        context_ip: ClientIpMode::for_request(config, is_anonymous(&request_headers)),
        max_stored_bytes: config.max_event_bytes as usize,
        max_request_bytes: config.max_body_bytes as usize,
        message_id_seed: None,
    };
    let idempotency_key = crate::ingest::ids::idempotency_key(&request_headers)?;
    let received = now_ms();
    let max_body = config.max_body_bytes as usize;
    // A compressed body may grow to `max_body` when decoded: always off the workers.
    let inline = encoding.is_none() && body.len() < super::events::INLINE_PARSE_BYTES;
    let job = move || {
        let grant = memory.as_ref().map(|Extension(grant)| grant);
        let body = decode_body(encoding.as_deref(), body, max_body, grant).map_err(as_segment_refusal)?;
        let seed = idempotency_key.map(|key| crate::ingest::ids::message_id_seed(&key, call.name(), &body));
        normalize(call, &body, received, SegmentOptions { message_id_seed: seed, ..limits })
    };
    let request = if inline { job()? } else { state.body_job(job).await? };

    // Each distinct (type, event name) is mapped to its topic once per request.
    let mut distinct: Vec<String> = Vec::new();
    let mut chosen: Vec<(&'static str, Option<&str>, usize)> = Vec::new();
    let mut picks = Vec::with_capacity(request.events.len());
    for (_, e) in &request.events {
        let pair = (e.kind, e.name.as_deref());
        let pick = match chosen.iter().find(|(k, n, _)| (*k, *n) == pair) {
            Some(&(_, _, pick)) => pick,
            None => {
                let topic = config.segment_topics.topic_for(e.kind, e.name.as_deref());
                let pick = distinct.iter().position(|t| *t == topic).unwrap_or_else(|| {
                    distinct.push(topic);
                    distinct.len() - 1
                });
                chosen.push((pair.0, pair.1, pick));
                pick
            }
        };
        picks.push(pick);
    }
    // Authorise before anything is created: a refused caller leaves no topic behind.
    // (The invalid-events topic is the gateway's choice, as dead-letter topics are.)
    authorize_write_key(&caller, request.write_key.as_deref(), &distinct)?;
    let mut set = TopicSet::default();
    let mut in_set = Vec::with_capacity(distinct.len());
    for topic in &distinct {
        in_set.push(set.add(&state, topic, Create::Always)?);
    }
    let routed: Vec<usize> = picks.iter().map(|&p| in_set[p]).collect();

    let mut aside = SetAside { items: request.invalid };
    // Batch events failing their topic's schema, with their ids: set aside unless a
    // retry of an event accepted before the schema was set (looked up below).
    let mut failed_at: Vec<usize> = Vec::new();
    let mut failed_ids: Vec<(Arc<tidegate_storage::Topic>, Vec<u8>)> = Vec::new();
    let mut errors = Vec::new();
    let mut events = Vec::with_capacity(routed.len());
    for ((index, e), topic) in request.events.into_iter().zip(routed) {
        let value = Bytes::from(e.value);
        let id = match event_id(&e.message_id) {
            Ok(id) => id,
            Err(detail) => {
                let detail = format!("messageId: {detail}");
                if call == Call::Batch {
                    aside.push(index, detail, value, None);
                    continue;
                }
                errors.push(crate::error::EventError::new(index, detail));
                continue;
            }
        };
        let event = Outgoing {
            key: Some(Bytes::from(e.key.into_bytes())),
            id: Some(id),
            ..Outgoing::json(topic, value.clone())
        };
        match screen(&set, index, event) {
            Screened::Passed(event) => events.push(event),
            // Failed its topic's schema, and the topic has no dead-letter topic.
            Screened::Failed(event, failure) if call == Call::Batch => {
                if let (Some(existing), Some(id)) = (set.list[topic].existing(), event.id) {
                    failed_at.push(index);
                    failed_ids.push((existing.clone(), id));
                }
                let source = Some((set.list[topic].name.clone(), failure.path.unwrap_or_default()));
                aside.push(index, failure.detail, value, source);
            }
            // A single call: refused in `commit`, unless its messageId was stored before
            // (a retry of an event accepted before the schema was set).
            Screened::Failed(event, failure) => events.push(Outgoing { refusal: Some(failure), ..event }),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::InvalidEvents { errors });
    }
    if !failed_ids.is_empty() {
        // The claims are only looked at, and released at once.
        let (states, _claims) = state.store.dedup_claim(failed_ids).await?;
        let stored: Vec<usize> = failed_at
            .into_iter()
            .zip(&states)
            .filter(|(_, s)| matches!(s, tidegate_storage::IdState::Seen(_)))
            .map(|(i, _)| i)
            .collect();
        if !stored.is_empty() {
            aside.items.retain(|item| item.source.is_none() || !stored.contains(&item.index));
            metrics::counter!("tidegate_events_deduplicated_total").increment(stored.len() as u64);
        }
    }
    aside.items.sort_by_key(|i| i.index);
    let invalid_topic = match config.segment_invalid_topic.as_str() {
        _ if aside.items.is_empty() => None,
        "" => None,
        name => {
            let topic = set.add(&state, name, Create::Always)?;
            events.extend(aside.outgoing(topic));
            Some(name.to_string())
        }
    };
    let shared = gateway_headers(config, caller.ip, &request_headers, received);
    commit(&state, &mut set, events, shared, received, Answer::AfterWrite, None).await?;
    if !aside.items.is_empty() {
        metrics::counter!("tidegate_segment_invalid_events_total").increment(aside.items.len() as u64);
    }
    let invalid = aside.errors();
    let count = (!invalid.is_empty()).then_some(aside.items.len() as u64);
    Ok(Json(SegmentAccepted {
        success: true,
        invalid: (!invalid.is_empty()).then_some(invalid),
        invalid_count: count,
        invalid_topic,
    }))
}

/// The events of a batch set aside (see [`InvalidItem`]): written to
/// `segment_invalid_topic`, or dropped when it is empty, instead of failing their batch.
struct SetAside {
    items: Vec<InvalidItem>,
}

impl SetAside {
    fn push(&mut self, index: usize, detail: String, value: Bytes, source: Option<(String, String)>) {
        self.items.push(InvalidItem { index, detail, value: value.to_vec(), json: true, source });
    }

    /// The answer's entry of each, in request order.
    fn errors(&self) -> Vec<crate::error::EventError> {
        let error = |i: &InvalidItem| crate::error::EventError {
            index: i.index,
            position: None,
            path: i.source.as_ref().map(|(_, path)| path.clone()),
            detail: i.detail.clone(),
        };
        self.items.iter().take(MAX_LISTED_ERRORS).map(error).collect()
    }

    /// The records for the invalid-events topic (index `topic` of the request's set):
    /// the event as read, the reason in `dlq-reason` (and, for schema failures, the path
    /// and the topic it was meant for).
    fn outgoing(&self, topic: usize) -> impl Iterator<Item = Outgoing> + '_ {
        self.items.iter().map(move |item| {
            let mut headers = vec![(dead_letter_headers::REASON.to_string(), item.detail.clone().into_bytes())];
            if let Some((source, path)) = &item.source {
                headers.push((dead_letter_headers::PATH.to_string(), path.clone().into_bytes()));
                headers.push((dead_letter_headers::SOURCE_TOPIC.to_string(), source.clone().into_bytes()));
            }
            Outgoing { json: item.json, headers, ..Outgoing::json(topic, Bytes::from(item.value.clone())) }
        })
    }
}

/// The settings analytics.js loads at start (`cdnURL` pointed at this gateway), telling
/// its Segment.io integration to post back here.
///
/// `apiHost` is this request's host with `/v1`, and `protocol` is `http`. When the TCP
/// peer is in `trusted_proxies`, `X-Forwarded-Host` and `X-Forwarded-Proto` override
/// them; from anyone else they are ignored, so a client cannot get an answer naming
/// another host into a shared cache (the answer is cacheable for 60 s). Metrics
/// collection is off.
#[utoipa::path(get, path = "/v1/projects/{write_key}/settings", tag = "segment",
    params(("write_key" = String, Path, description = "The source's write key")),
    responses(
        (status = 200, description = "analytics.js settings", body = Object),
        (status = 404, description = "Authentication is on and the write key is not configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn segment_settings(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(write_key): Path<String>,
    request_headers: HeaderMap,
) -> Result<(StatusCode, HeaderMap, Json<Value>), ApiError> {
    if state.security.enabled() && !state.security.is_write_key(&write_key) {
        return Err(ApiError::NotFound { code: "write_key_not_found", detail: "unknown write key".into() });
    }
    let from_proxy = crate::auth::client_ip::is_trusted_proxy(peer.ip(), &state.config.trusted_proxies);
    let header_str = |name: &str| request_headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let forwarded = |name: &str| if from_proxy { header_str(name) } else { None };
    let host = forwarded("x-forwarded-host")
        .or_else(|| header_str("host"))
        .map(|h| h.split(',').next().unwrap_or(h).trim().to_string())
        .unwrap_or_else(|| state.config.addr.to_string());
    // Proxies in a chain may each add theirs: the first is what the browser used, as
    // for the host.
    let protocol = match forwarded("x-forwarded-proto").map(|p| p.split(',').next().unwrap_or(p).trim()) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("public, max-age=60"));
    headers.insert(header::VARY, header::HeaderValue::from_static("host, x-forwarded-host, x-forwarded-proto"));
    let settings = json!({
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": format!("{host}/v1"),
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": true,
                "maybeBundledConfigIds": {},
                "versionSettings": {"componentTypes": []}
            }
        },
        "plan": {
            "track": {"__default": {"enabled": true, "integrations": {}}},
            "identify": {"__default": {"enabled": true}},
            "group": {"__default": {"enabled": true}}
        },
        "edgeFunction": {},
        "analyticsNextEnabled": true,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": false,
        "remotePlugins": []
    });
    Ok((StatusCode::OK, headers, Json(settings)))
}
