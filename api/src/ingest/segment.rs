//! Segment's tracking API payloads: the calls, the checks Segment makes, the fields
//! its servers add, and which topic each event goes to.
//!
//! Per event: `type` is the call's (single calls) or must be one of Segment's six
//! (batch items); it needs a `userId` or an `anonymousId`, a `track` needs an
//! `event` name, a `group` a `groupId` and an `alias` a `previousId`. The gateway adds what Segment's servers add: a `messageId` when the
//! client sent none, `receivedAt`, and — when the client sent both `timestamp` and
//! `sentAt` — the clock-skew correction `timestamp = receivedAt - (sentAt -
//! originalTimestamp)`, keeping the client's value as `originalTimestamp`; without a
//! `timestamp`, it is `receivedAt`. A batch's top-level `context` and `integrations` are
//! merged into each item (the item's own keys win). `writeKey` is taken out of the
//! stored events. The record key is `userId`, else `anonymousId`.

use std::collections::BTreeMap;

use std::borrow::Cow;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::privacy::ClientIpMode;
use super::rawjson::{RawObject, as_str, quote, scalar_text};

use super::time::{format_rfc3339_ms, parse_rfc3339_ms};
use crate::error::{ApiError, EventError};

/// Segment's event types.
pub const TYPES: [&str; 6] = ["track", "page", "screen", "identify", "group", "alias"];

/// A call type as a JSON string: one of [`TYPES`] without an allocation per event.
fn quoted_type(kind: &'static str) -> Cow<'static, str> {
    Cow::Borrowed(match kind {
        "track" => "\"track\"",
        "page" => "\"page\"",
        "screen" => "\"screen\"",
        "identify" => "\"identify\"",
        "group" => "\"group\"",
        "alias" => "\"alias\"",
        other => return Cow::Owned(quote(other)),
    })
}

/// One call of the tracking API, by its path (`/v1/track` or analytics.js's `/v1/t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// One event of this type (one of [`TYPES`]).
    Single(&'static str),
    /// `{"batch": [...]}`.
    Batch,
}

impl Call {
    /// The call posted to `/v1/{name}`.
    pub fn from_path(name: &str) -> Option<Call> {
        Some(match name {
            "track" | "t" => Call::Single("track"),
            "page" | "p" => Call::Single("page"),
            "screen" | "s" => Call::Single("screen"),
            "identify" | "i" => Call::Single("identify"),
            "group" | "g" => Call::Single("group"),
            "alias" | "a" => Call::Single("alias"),
            // `/v1/import`: the batch call under the name Segment's mobile libraries
            // (analytics-android, analytics-ios) post their queued batches to.
            "batch" | "b" | "import" => Call::Batch,
            _ => return None,
        })
    }

    /// The call's long name (`track`... `batch`): `/v1/t` and `/v1/track` are one call.
    pub fn name(self) -> &'static str {
        match self {
            Call::Single(kind) => kind,
            Call::Batch => "batch",
        }
    }
}

/// The `segment_topics` setting: event type (and name) to topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SegmentTopics(pub BTreeMap<String, String>);

impl std::str::FromStr for SegmentTopics {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(s).map_err(|e| format!("segment_topics must be a JSON object of strings: {e}"))
    }
}

impl SegmentTopics {
    /// Checks keys (`*`, a type, or `type:event name`) and topic names.
    pub fn validate(&self) -> Result<(), String> {
        for (key, topic) in &self.0 {
            let kind = key.split_once(':').map_or(key.as_str(), |(k, _)| k);
            if key != "*" && !TYPES.contains(&kind) {
                return Err(format!(
                    "key {key:?}: expected \"*\", a type ({}) or \"type:event name\"",
                    TYPES.join(", ")
                ));
            }
            tidegate_storage::validate_topic_name(topic).map_err(|e| format!("key {key:?}: {e}"))?;
        }
        Ok(())
    }

    /// The topic of an event of type `kind` named `event`.
    pub fn topic_for(&self, kind: &str, event: Option<&str>) -> String {
        let specific = event.and_then(|e| self.0.get(&format!("{kind}:{e}")));
        specific
            .or_else(|| self.0.get(kind))
            .or_else(|| self.0.get("*"))
            .cloned()
            .unwrap_or_else(|| format!("segment.{kind}"))
    }
}

/// Size limits of Segment calls, and what happens to an event's own `context.ip`.
#[derive(Debug, Clone, Copy)]
pub struct SegmentOptions {
    /// Largest event (and body of a single call).
    pub max_event_bytes: usize,
    /// Largest batch body.
    pub max_batch_bytes: usize,
    /// Most events in a batch.
    pub max_events: usize,
    /// Deepest nesting of arrays and objects in an event.
    pub max_depth: usize,
    /// Largest event once completed by the gateway (batch context merged, fields added):
    /// `max_event_bytes` of the events route.
    pub max_stored_bytes: usize,
    /// Most bytes all events of one request may come to once completed
    /// (`max_body_bytes`): a batch context merged into every event is bounded.
    pub max_request_bytes: usize,
    /// What is kept of the `context.ip` a library reported (server-side ones do): the
    /// request's [`ClientIpMode::for_request`], the rule of the `client-ip` header.
    pub context_ip: ClientIpMode,
    /// With an `Idempotency-Key`, the seed of the `messageId`s made for events that
    /// have none ([`super::ids::message_id_seed`]): `idem-<seed hex>-<index>`, so a
    /// retried request gets the same ids. Without one, made ids are random.
    pub message_id_seed: Option<[u8; 16]>,
}

/// Applies `mode` to `item`'s `context.ip`: kept, truncated, or dropped (also when it
/// is not an address and cannot be truncated).
fn apply_context_ip(item: &mut RawObject<'_>, mode: ClientIpMode) {
    if mode == ClientIpMode::Full {
        return;
    }
    let Some(context) = item.get("context").filter(|c| c.starts_with('{')) else { return };
    let Ok(mut context) = RawObject::parse(context) else { return };
    let kept =
        context.get_str("ip").and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok()).and_then(|a| mode.apply(a));
    if context.remove("ip").is_none() {
        return;
    }
    if let Some(addr) = kept {
        context.set("ip", Cow::Owned(quote(&addr.to_string())));
    }
    let edited = context.to_json();
    item.set("context", Cow::Owned(edited));
}

/// One event, normalised, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentEvent {
    /// Its type.
    pub kind: &'static str,
    /// `event` of a track call.
    pub name: Option<String>,
    /// `userId`, else `anonymousId`.
    pub key: String,
    /// Its `messageId` (the client's, or one the gateway made).
    pub message_id: String,
    /// The event as stored (JSON).
    pub value: Vec<u8>,
}

/// An event of a batch that cannot be accepted: it is set aside instead of failing its
/// batch (trackers drop a batch answered 400).
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidItem {
    /// Its index in the batch.
    pub index: usize,
    /// Why it was refused.
    pub detail: String,
    /// The item as read (without `writeKey`); an item that is not an object as compact
    /// JSON (numbers as serde_json writes them).
    pub value: Vec<u8>,
    /// Whether `value` may be stored as JSON (not when nested too deeply or holding an
    /// unpaired surrogate escape: it is then stored as bytes).
    pub json: bool,
    /// For an event that failed its topic's schema: that topic and the failing path.
    pub source: Option<(String, String)>,
}

impl InvalidItem {
    fn new(index: usize, detail: String, value: Vec<u8>, max_depth: usize) -> InvalidItem {
        let json = super::parse::json_refusal(&value, max_depth).is_none();
        InvalidItem { index, detail, value, json, source: None }
    }
}

/// A request's events and the write key it carried in its body.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRequest {
    /// `writeKey` of the body (top level, else of the first batch item).
    pub write_key: Option<String>,
    /// The events, in order (with their index in the request).
    pub events: Vec<(usize, SegmentEvent)>,
    /// The batch items that cannot be accepted (always empty for single calls, which
    /// fail instead).
    pub invalid: Vec<InvalidItem>,
}

fn too_large(what: &str, limit: usize) -> ApiError {
    ApiError::invalid("payload_too_large", format!("{what} is larger than {limit} bytes (Segment's limit)"))
}

/// A string, or a number's text; `None` for anything else or an empty string.
fn id_text(raw: Option<&str>) -> Option<String> {
    scalar_text(raw?).filter(|s| !s.is_empty()).map(Cow::into_owned)
}

/// Merges the batch's `top` object into `item[field]` (the item's keys win); an item
/// without the field gets the batch's as it is.
fn merge_object<'a>(item: &mut RawObject<'a>, field: &'static str, top: Option<&(RawObject<'a>, &'a str)>) {
    let Some((top, top_text)) = top else { return };
    match item.get(field) {
        Some(own) if own.starts_with('{') => {
            if let Some(merged) = merged_json(own, top) {
                item.set(field, Cow::Owned(merged));
            }
        }
        Some(_) => {}
        None => item.set(field, Cow::Borrowed(*top_text)),
    }
}

/// `own` (an object's JSON text) completed with `top`'s members, deeply: a member both
/// hold as objects is merged the same way (`context.device.type` from the batch joins
/// the item's `context.device.identifier`); otherwise the item's own value wins. `None`
/// when `own` does not parse.
fn merged_json(own: &str, top: &RawObject<'_>) -> Option<String> {
    let mut own = RawObject::parse(own).ok()?;
    for (k, v) in top.members() {
        match own.get(k) {
            None => own.set(k.to_string(), Cow::Owned(v.to_string())),
            Some(mine) if mine.starts_with('{') && v.starts_with('{') => {
                let theirs = RawObject::parse(v).ok()?;
                let merged = merged_json(mine, &theirs)?;
                own.set(k.to_string(), Cow::Owned(merged));
            }
            Some(_) => {}
        }
    }
    Some(own.to_json())
}

/// The batch-level fields merged into every item.
struct BatchTop<'a> {
    context: Option<(RawObject<'a>, &'a str)>,
    integrations: Option<(RawObject<'a>, &'a str)>,
    sent_at: Option<&'a str>,
}

impl<'a> BatchTop<'a> {
    fn of(top: &RawObject<'a>) -> BatchTop<'a> {
        let object = |field: &str| {
            let raw = top.get_input(field)?;
            raw.starts_with('{').then(|| RawObject::parse(raw).ok().map(|o| (o, raw))).flatten()
        };
        BatchTop { context: object("context"), integrations: object("integrations"), sent_at: top.get_input("sentAt") }
    }
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z: the times RFC 3339 can write.
const MIN_RFC3339_MS: i64 = -62_167_219_200_000;
const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// Checks and completes one event; `Err` is the reason it is malformed (`item` then
/// holds the event as far as it was completed).
fn normalize_event<'a>(
    item: &mut RawObject<'a>,
    call_type: Option<&'static str>,
    batch: Option<&BatchTop<'a>>,
    received_ms: i64,
    received: &'a str,
    options: &SegmentOptions,
    index: usize,
) -> Result<SegmentEvent, String> {
    let max_event_bytes = options.max_event_bytes;
    item.remove("writeKey");
    // Segment's limit applies to the event as its library sent it.
    let sent_len = item.compact_len();
    if sent_len > max_event_bytes {
        return Err(format!("the event is {sent_len} bytes; Segment's limit is {max_event_bytes}"));
    }
    let kind = match call_type {
        Some(kind) => {
            item.set("type", quoted_type(kind));
            kind
        }
        None => match item.get_str("type") {
            Some(t) => TYPES
                .iter()
                .copied()
                .find(|k| *k == t)
                .ok_or_else(|| format!("type {t:?} is not one of {}", TYPES.join(", ")))?,
            None => return Err(format!("no \"type\" (one of {})", TYPES.join(", "))),
        },
    };
    let key = id_text(item.get("userId"))
        .or_else(|| id_text(item.get("anonymousId")))
        .ok_or("no userId or anonymousId (no_user_anon_id)")?;
    let name = match item.get_str("event") {
        Some(e) if !e.is_empty() => Some(e.into_owned()),
        _ if kind == "track" => return Err("a track event needs an \"event\" name".into()),
        _ => None,
    };
    let required = match kind {
        "group" => Some(("a group", "groupId")),
        "alias" => Some(("an alias", "previousId")),
        _ => None,
    };
    if let Some((call, field)) = required
        && id_text(item.get(field)).is_none()
    {
        return Err(format!("{call} event needs a \"{field}\" (a non-empty string or number)"));
    }
    if let Some(top) = batch {
        merge_object(item, "context", top.context.as_ref());
        merge_object(item, "integrations", top.integrations.as_ref());
        if !item.contains("sentAt")
            && let Some(sent) = top.sent_at
        {
            item.set("sentAt", Cow::Borrowed(sent));
        }
    }
    apply_context_ip(item, options.context_ip);
    let message_id = match id_text(item.get("messageId")) {
        Some(id) => id,
        // A value that is no id (not a string or a number): replacing it would lose
        // what the client meant to deduplicate on.
        None if item.get("messageId").is_some_and(|v| v != "null" && v != "\"\"") => {
            return Err("messageId must be a string or a number".into());
        }
        None => {
            let id = match options.message_id_seed {
                Some(seed) => format!("idem-{}-{index}", uuid::Uuid::from_bytes(seed).simple()),
                None => format!("tidegate-{}", uuid::Uuid::new_v4()),
            };
            item.set("messageId", Cow::Owned(quote(&id)));
            id
        }
    };
    let original = item.get_str("timestamp").and_then(|t| parse_rfc3339_ms(&t));
    let sent = item.get_str("sentAt").and_then(|t| parse_rfc3339_ms(&t));
    match (original, sent) {
        (Some(original), Some(sent)) => {
            let corrected = received_ms.saturating_sub(sent.saturating_sub(original));
            // A correction past the years RFC 3339 can write (absurd client clocks)
            // leaves the timestamp as sent.
            let in_range = (MIN_RFC3339_MS..=MAX_RFC3339_MS).contains(&corrected);
            if in_range && let Some(ts) = item.remove("timestamp") {
                item.set("originalTimestamp", ts);
                item.set("timestamp", Cow::Owned(quote(&format_rfc3339_ms(corrected))));
            }
        }
        // Missing or null (some libraries send `"timestamp": null`): the receive time.
        _ if item.get("timestamp").is_none_or(|t| t == "null") => item.set("timestamp", Cow::Borrowed(received)),
        _ => {}
    }
    item.set("receivedAt", Cow::Borrowed(received));
    let mut value = Vec::with_capacity(item.compact_len());
    item.write(&mut value);
    if value.len() > options.max_stored_bytes {
        return Err(format!(
            "the event is {} bytes once completed with the batch's context; the limit is {} (setting \
             max_event_bytes)",
            value.len(),
            options.max_stored_bytes
        ));
    }
    if let Some(refusal) = super::parse::json_refusal(&value, options.max_depth) {
        return Err(refusal);
    }
    Ok(SegmentEvent { kind, name, key, message_id, value })
}

/// A batch call's body: its members other than `batch`, and `batch` (the last one when
/// repeated) as parsed by [`Shallow`].
struct BatchBody<'a> {
    top: RawObject<'a>,
    batch: Option<Shallow<'a>>,
}

impl BatchBody<'_> {
    /// Whether `batch` is absent, not an array, or an array of objects only (every item
    /// a possible event: the common case, parsed in one pass).
    fn all_objects(&self) -> bool {
        match &self.batch {
            Some(Shallow::Array(items)) => items.iter().all(|i| matches!(i, Shallow::Object(_))),
            _ => true,
        }
    }
}

/// A JSON value parsed only as deep as a batch needs: an object's members (values kept
/// raw), an array's elements, or anything else.
enum Shallow<'a> {
    Object(RawObject<'a>),
    Array(Vec<Shallow<'a>>),
    /// A string, number, boolean or null, as JSON text (as sent when a batch has such
    /// items: see [`raw_batch`]).
    Scalar(String),
}

impl Shallow<'_> {
    /// The value as compact JSON text, every object in it under the `context.ip` rule
    /// (an item that is not an event may still hold events: a nested batch).
    fn write(&mut self, out: &mut Vec<u8>, context_ip: ClientIpMode) {
        match self {
            Shallow::Object(object) => {
                apply_context_ip(object, context_ip);
                object.write(out);
            }
            Shallow::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter_mut().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out, context_ip);
                }
                out.push(b']');
            }
            Shallow::Scalar(text) => out.extend_from_slice(text.as_bytes()),
        }
    }
}

impl<'de> Deserialize<'de> for Shallow<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shallow<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawObject::from_map(map).map(Shallow::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(64).min(4096));
                while let Some(v) = seq.next_element::<Shallow<'de>>()? {
                    out.push(v);
                }
                Ok(Shallow::Array(out))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Shallow::Scalar(b.to_string()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Shallow::Scalar(n.to_string()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Shallow::Scalar(n.to_string()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
                // serde_json parses only finite numbers.
                Ok(Shallow::Scalar(serde_json::Number::from_f64(n).map_or_else(|| "null".into(), |n| n.to_string())))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Shallow::Scalar(quote(text)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Shallow::Scalar("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for BatchBody<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BatchBody<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let (top, batch) = RawObject::from_map_taking(map, Some("batch"))?;
                Ok(BatchBody { top, batch })
            }
        }
        d.deserialize_map(V)
    }
}

/// [`BatchBody`] with `batch` kept as raw text: the slow path for a batch whose items
/// are not all objects (see [`raw_batch`]).
struct RawBatchBody<'a> {
    top: RawObject<'a>,
    batch: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for RawBatchBody<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBatchBody<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let (top, batch) = RawObject::from_map_taking(map, Some("batch"))?;
                Ok(RawBatchBody { top, batch })
            }
        }
        d.deserialize_map(V)
    }
}

/// A value as [`Shallow`] parses it, except that scalars keep their exact text.
fn shallow_from_raw(raw: &RawValue) -> Result<Shallow<'_>, serde_json::Error> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => RawObject::parse(text).map(Shallow::Object),
        Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(text)?
            .into_iter()
            .map(shallow_from_raw)
            .collect::<Result<Vec<_>, _>>()
            .map(Shallow::Array),
        _ => Ok(Shallow::Scalar(text.to_string())),
    }
}

/// A batch body parsed with its items kept as written: for a batch with an item that is
/// not an object (an invalid item, stored as it was sent), where the one-pass parse
/// would refuse a number beyond a float's range (`1e400`: the whole batch, valid
/// events too) or turn an integer past 64 bits into a float.
fn raw_batch(text: &str) -> Result<(RawObject<'_>, Option<Shallow<'_>>), serde_json::Error> {
    let body: RawBatchBody<'_> = serde_json::from_str(text)?;
    let batch = body.batch.map(shallow_from_raw).transpose()?;
    Ok((body.top, batch))
}

/// Parses and normalises the body of a call. Every failure is a 400: Segment's
/// trackers retry other statuses. Events are edited as raw JSON (see
/// [`super::rawjson`]): only their top-level members are parsed.
pub fn normalize(
    call: Call,
    body: &[u8],
    received_ms: i64,
    limits: SegmentOptions,
) -> Result<SegmentRequest, ApiError> {
    let limit = match call {
        Call::Single(_) => limits.max_event_bytes,
        Call::Batch => limits.max_batch_bytes,
    };
    if body.len() > limit {
        return Err(too_large("the body", limit));
    }
    let malformed = |detail: String| {
        let error = EventError { index: 0, position: None, path: None, detail };
        ApiError::InvalidEvents { errors: vec![error] }
    };
    let text = std::str::from_utf8(body).map_err(|e| malformed(format!("malformed JSON: not UTF-8: {e}")))?;
    let not_object = || ApiError::invalid("invalid_segment_payload", "the body must be a JSON object");
    let (mut top, batch) = match call {
        Call::Single(_) => match RawObject::parse(text) {
            Ok(top) => (top, None),
            Err(e) if e.is_data() => return Err(not_object()),
            Err(e) => return Err(malformed(format!("malformed JSON: {e}"))),
        },
        // One pass over the whole body: the batch items' members are collected as the
        // top object is parsed.
        Call::Batch => match serde_json::from_str::<BatchBody<'_>>(text) {
            Ok(body) if body.all_objects() => (body.top, body.batch),
            Err(e) if e.is_data() => return Err(not_object()),
            // Items that are not objects, or a number the one-pass parse refused (it
            // can only be in such an item: members are kept raw): parsed again, keeping
            // them as written.
            first => match (raw_batch(text), first) {
                (Ok(parsed), _) => parsed,
                (Err(_), Err(e)) => return Err(malformed(format!("malformed JSON: {e}"))),
                (Err(e), Ok(_)) => return Err(malformed(format!("malformed JSON: {e}"))),
            },
        },
    };
    let mut write_key = top.remove("writeKey").and_then(|k| as_str(&k).map(Cow::into_owned)).filter(|k| !k.is_empty());
    // (index, the item if it is an object else what it is, the type of a single call)
    let items: Vec<(usize, Result<RawObject<'_>, Shallow<'_>>, Option<&'static str>)> = match call {
        // The event is the body itself (`top` is read again only for batches).
        Call::Single(kind) => vec![(0, Ok(std::mem::take(&mut top)), Some(kind))],
        Call::Batch => {
            let Some(Shallow::Array(batch)) = batch else {
                return Err(ApiError::invalid("invalid_segment_payload", "a batch call needs a \"batch\" array"));
            };
            if batch.len() > limits.max_events {
                return Err(ApiError::invalid(
                    "too_many_events",
                    format!("the batch has {} events; at most {} are accepted", batch.len(), limits.max_events),
                ));
            }
            let mut items = Vec::with_capacity(batch.len());
            for (index, item) in batch.into_iter().enumerate() {
                match item {
                    Shallow::Object(item) => {
                        if write_key.is_none() {
                            write_key = item.get_str("writeKey").filter(|k| !k.is_empty()).map(Cow::into_owned);
                        }
                        items.push((index, Ok(item), None));
                    }
                    other => items.push((index, Err(other), None)),
                }
            }
            items
        }
    };
    if items.is_empty() {
        return Err(ApiError::invalid("no_events", "the batch is empty"));
    }
    let batch_top = matches!(call, Call::Batch).then(|| BatchTop::of(&top));
    // The receive time, quoted: the same for every event of the request.
    let received = quote(&format_rfc3339_ms(received_ms));
    let mut events = Vec::with_capacity(items.len());
    let mut invalid = Vec::new();
    let mut stored = 0usize;
    for (index, item, kind) in items {
        let mut item = match item {
            Ok(item) => item,
            Err(mut other) => {
                // Set aside as read, under the same privacy rule as the events.
                let mut value = Vec::new();
                other.write(&mut value, limits.context_ip);
                stored += value.len();
                let detail = "a batch item must be a JSON object".to_string();
                invalid.push(InvalidItem::new(index, detail, value, limits.max_depth));
                continue;
            }
        };
        match normalize_event(&mut item, kind, batch_top.as_ref(), received_ms, &received, &limits, index) {
            Ok(e) => {
                stored += e.value.len();
                events.push((index, e));
            }
            // A single call's one event fails the call.
            Err(detail) if kind.is_some() => {
                return Err(ApiError::InvalidEvents { errors: vec![EventError::new(index, detail)] });
            }
            Err(detail) => {
                // Set aside as sent, but under the same privacy rule as the valid events.
                apply_context_ip(&mut item, limits.context_ip);
                let mut value = Vec::new();
                item.write(&mut value);
                stored += value.len();
                invalid.push(InvalidItem::new(index, detail, value, limits.max_depth));
            }
        }
    }
    if stored > limits.max_request_bytes {
        return Err(ApiError::invalid(
            "payload_too_large",
            format!(
                "the batch's events come to {stored} bytes once completed with its context; the limit is {} \
                 (setting max_body_bytes)",
                limits.max_request_bytes
            ),
        ));
    }
    Ok(SegmentRequest { write_key, events, invalid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const LIMITS: SegmentOptions = SegmentOptions {
        max_event_bytes: 32 * 1024,
        max_batch_bytes: 500 * 1024,
        max_depth: 128,
        max_events: 2500,
        context_ip: ClientIpMode::Full,
        message_id_seed: None,
        max_stored_bytes: 1024 * 1024,
        max_request_bytes: 8 * 1024 * 1024,
    };
    /// 2012-12-02T00:30:20.000Z
    const RECEIVED: i64 = 1_354_408_220_000;

    fn stored(e: &SegmentEvent) -> Value {
        serde_json::from_slice(&e.value).unwrap()
    }

    #[test]
    fn call_types_are_quoted_as_json() {
        for kind in TYPES.iter().chain(&["odd\"one"]) {
            assert_eq!(quoted_type(kind), quote(kind));
        }
    }

    #[test]
    fn context_ip_follows_the_privacy_rule() {
        let body = json!({"userId": "u", "event": "E", "context": {"ip": " 24.5.68.47", "locale": "en"}});
        let ip = |rule| {
            let options = SegmentOptions { context_ip: rule, ..LIMITS };
            let r = normalize(Call::Single("track"), body.to_string().as_bytes(), RECEIVED, options).unwrap();
            stored(&r.events[0].1)["context"].clone()
        };
        assert_eq!(ip(ClientIpMode::Full), json!({"ip": " 24.5.68.47", "locale": "en"}));
        assert_eq!(ip(ClientIpMode::Truncated), json!({"ip": "24.5.68.0", "locale": "en"}));
        assert_eq!(ip(ClientIpMode::None), json!({"locale": "en"}));
        let odd = json!({"userId": "u", "event": "E", "context": {"ip": "unknown"}});
        let options = SegmentOptions { context_ip: ClientIpMode::Truncated, ..LIMITS };
        let r = normalize(Call::Single("track"), odd.to_string().as_bytes(), RECEIVED, options).unwrap();
        assert_eq!(stored(&r.events[0].1)["context"], json!({}), "what is not an address cannot be truncated");
        // A batch item set aside as invalid (no userId nor anonymousId) follows the rule too.
        let batch = json!({"batch": [{"type": "track", "event": "E", "context": {"ip": "24.5.68.47"}}]});
        for (rule, context) in [(ClientIpMode::None, json!({})), (ClientIpMode::Truncated, json!({"ip": "24.5.68.0"}))]
        {
            let options = SegmentOptions { context_ip: rule, ..LIMITS };
            let r = normalize(Call::Batch, batch.to_string().as_bytes(), RECEIVED, options).unwrap();
            let set_aside: Value = serde_json::from_slice(&r.invalid[0].value).unwrap();
            assert_eq!(set_aside["context"], context, "{rule:?}");
        }
        // So do events inside an item that is not one (a nested batch).
        let nested = json!({"batch": [[{"type": "track", "context": {"ip": "24.5.68.47", "l": 1}}, 2]]});
        let options = SegmentOptions { context_ip: ClientIpMode::None, ..LIMITS };
        let r = normalize(Call::Batch, nested.to_string().as_bytes(), RECEIVED, options).unwrap();
        let set_aside: Value = serde_json::from_slice(&r.invalid[0].value).unwrap();
        assert_eq!(set_aside, json!([{"type": "track", "context": {"l": 1}}, 2]));
    }

    #[test]
    fn batch_items_that_are_not_objects_are_kept_as_read() {
        let body = r#"{"batch": ["page \"x\"", 1.50, -7, 18446744073709551615, true, null, [], [1, {"a": "b"}]]}"#;
        let r = normalize(Call::Batch, body.as_bytes(), RECEIVED, LIMITS).unwrap();
        let kept: Vec<&str> = r.invalid.iter().map(|i| std::str::from_utf8(&i.value).unwrap()).collect();
        let expected =
            [r#""page \"x\"""#, "1.50", "-7", "18446744073709551615", "true", "null", "[]", r#"[1,{"a":"b"}]"#];
        assert_eq!(kept, expected);
        assert!(r.invalid.iter().all(|i| i.json && i.detail.contains("must be a JSON object")));
        // Numbers serde_json would refuse (the whole batch with them) or round.
        let body =
            r#"{"batch": [{"type": "track", "event": "e", "userId": "u"}, 1e400, 123456789012345678901234567890]}"#;
        let r = normalize(Call::Batch, body.as_bytes(), RECEIVED, LIMITS).unwrap();
        assert_eq!(r.events.len(), 1, "the event is kept");
        let kept: Vec<&str> = r.invalid.iter().map(|i| std::str::from_utf8(&i.value).unwrap()).collect();
        assert_eq!(kept, ["1e400", "123456789012345678901234567890"]);
    }

    #[test]
    fn track_from_segment_docs_is_completed_like_segment_does() {
        // The Track example of Segment's HTTP API documentation.
        let body = json!({
            "userId": "019mr8mf4r",
            "event": "Item Purchased",
            "properties": {"name": "Leap to Conclusions Mat", "revenue": 14.99},
            "context": {"ip": "24.5.68.47"},
            "timestamp": "2012-12-02T00:30:12.984Z",
            "writeKey": "YOUR_WRITE_KEY"
        });
        let r = normalize(Call::Single("track"), body.to_string().as_bytes(), RECEIVED, LIMITS).unwrap();
        assert_eq!(r.write_key.as_deref(), Some("YOUR_WRITE_KEY"));
        let e = &r.events[0].1;
        assert_eq!((e.kind, e.name.as_deref(), e.key.as_str()), ("track", Some("Item Purchased"), "019mr8mf4r"));
        let v = stored(e);
        assert_eq!(v["type"], "track");
        assert!(v.get("writeKey").is_none());
        assert_eq!(v["timestamp"], "2012-12-02T00:30:12.984Z", "no sentAt: no correction");
        assert_eq!(v["receivedAt"], "2012-12-02T00:30:20.000Z");
        assert!(e.message_id.starts_with("tidegate-") && v["messageId"] == e.message_id.as_str());
    }

    #[test]
    fn clock_skew_is_corrected_with_sent_at() {
        // The client's clock is 10 s ahead: it says it sent at :30, the gateway got it at :20.
        let body = json!({"anonymousId": "a1", "timestamp": "2012-12-02T00:30:25.000Z",
                          "sentAt": "2012-12-02T00:30:30.000Z", "messageId": "m-1"});
        let r = normalize(Call::Single("page"), body.to_string().as_bytes(), RECEIVED, LIMITS).unwrap();
        let v = stored(&r.events[0].1);
        let null = json!({"anonymousId": "a1", "timestamp": null});
        let n = normalize(Call::Single("page"), null.to_string().as_bytes(), RECEIVED, LIMITS).unwrap();
        assert_eq!(stored(&n.events[0].1)["timestamp"], "2012-12-02T00:30:20.000Z", "null is the receive time");
        assert_eq!(v["originalTimestamp"], "2012-12-02T00:30:25.000Z");
        assert_eq!(v["timestamp"], "2012-12-02T00:30:15.000Z");
        assert_eq!((r.events[0].1.key.as_str(), r.events[0].1.message_id.as_str()), ("a1", "m-1"));
        // A correction past what RFC 3339 can write leaves the timestamp as sent.
        for (ts, sent) in
            [("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"), ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z")]
        {
            let body = json!({"anonymousId": "a1", "timestamp": ts, "sentAt": sent});
            let r = normalize(Call::Single("page"), body.to_string().as_bytes(), RECEIVED, LIMITS).unwrap();
            let v = stored(&r.events[0].1);
            assert_eq!((v["timestamp"].as_str(), v.get("originalTimestamp")), (Some(ts), None), "{v}");
        }
    }

    #[test]
    fn a_message_id_that_is_no_id_is_refused_not_replaced() {
        for id in ["true", "{\"a\":1}", "[1]"] {
            let body = format!(r#"{{"anonymousId": "a1", "messageId": {id}}}"#);
            let refused = normalize(Call::Single("page"), body.as_bytes(), RECEIVED, LIMITS).unwrap_err();
            assert!(refused.to_string().contains("1 invalid event"), "{id}: {refused}");
            let batch = format!(r#"{{"batch": [{{"type": "page", "anonymousId": "a1", "messageId": {id}}}]}}"#);
            let r = normalize(Call::Batch, batch.as_bytes(), RECEIVED, LIMITS).unwrap();
            assert!(r.events.is_empty(), "{id}");
            assert!(r.invalid[0].detail.contains("messageId must be a string or a number"), "{id}");
        }
        // Missing, null, empty: the gateway makes one; a number is an id.
        for id in ["null", "\"\"", "42"] {
            let body = format!(r#"{{"anonymousId": "a1", "messageId": {id}}}"#);
            let r = normalize(Call::Single("page"), body.as_bytes(), RECEIVED, LIMITS).unwrap();
            let made = r.events[0].1.message_id.as_str();
            assert!(if id == "42" { made == "42" } else { made.starts_with("tidegate-") }, "{id}: {made}");
        }
    }

    #[test]
    fn batch_from_segment_docs_merges_context_and_keeps_bad_timestamps() {
        let body = json!({
            "batch": [
                {"type": "identify", "userId": "019mr8mf4r",
                 "traits": {"email": "jake@yahoo.com", "name": "Jake Peterson", "age": 26},
                 "timestamp": "2012-12-02T00:30:08.276Z"},
                {"type": "track", "userId": "971mj8mk7p", "event": "Song Played",
                 "properties": {"name": "Get Right", "artist": "Jennifer Lopez"},
                 "timestamp": "2015-2-02T00:30:12.984Z", "context": {"ip": "1.2.3.4"}}
            ],
            "writeKey": "YOUR_WRITE_KEY",
            "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}}
        });
        let r = normalize(Call::Batch, body.to_string().as_bytes(), RECEIVED, LIMITS).unwrap();
        assert_eq!(r.events.len(), 2);
        let (a, b) = (stored(&r.events[0].1), stored(&r.events[1].1));
        assert_eq!(a["context"]["device"]["name"], "Apple iPhone 6");
        assert_eq!(b["context"], json!({"ip": "1.2.3.4", "device": {"type": "phone", "name": "Apple iPhone 6"}}));
        assert_eq!(b["timestamp"], "2015-2-02T00:30:12.984Z", "unparseable timestamps are kept as sent");
        assert_eq!((r.events[1].1.kind, r.events[1].1.key.as_str()), ("track", "971mj8mk7p"));
        // Objects in both merge deeply; the item's own values win.
        let body = json!({"batch": [{"type": "track", "userId": "u", "event": "E",
            "context": {"device": {"identifier": "aae5", "type": "tablet"}, "locale": "fr"}}],
            "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}, "locale": "en", "library": {"name": "x"}}});
        let deep = normalize(Call::Batch, body.to_string().as_bytes(), RECEIVED, LIMITS).unwrap();
        assert_eq!(
            stored(&deep.events[0].1)["context"],
            json!({"device": {"identifier": "aae5", "type": "tablet", "name": "Apple iPhone 6"}, "locale": "fr",
                   "library": {"name": "x"}})
        );
    }

    #[test]
    fn malformed_events_are_named() {
        let body = json!({"batch": [{"type": "track", "userId": "u"}, {"type": "nope", "userId": "u"},
                                    {"type": "page"}, 5]});
        // A batch sets its malformed events aside, each with its reason and as it was read.
        let r = normalize(Call::Batch, body.to_string().as_bytes(), RECEIVED, LIMITS).unwrap();
        assert!(r.events.is_empty());
        assert_eq!(r.invalid.iter().map(|e| e.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert!(r.invalid[0].detail.contains("\"event\" name"), "{}", r.invalid[0].detail);
        assert!(r.invalid[2].detail.contains("no_user_anon_id"), "{}", r.invalid[2].detail);
        let first: Value = serde_json::from_slice(&r.invalid[0].value).unwrap();
        assert_eq!(first, json!({"type": "track", "userId": "u"}));
        assert_eq!((r.invalid[3].value.as_slice(), r.invalid[3].json), (&b"5"[..], true));
        // A single call's malformed event fails the call.
        match normalize(Call::Single("page"), br#"{"name":"Home"}"#, RECEIVED, LIMITS) {
            Err(ApiError::InvalidEvents { errors }) => assert!(errors[0].detail.contains("no_user_anon_id")),
            other => panic!("{other:?}"),
        }
        // Segment's 32 KB counts the event as sent; what the gateway adds does not count.
        let near = |n: usize| json!({"type": "track", "userId": "u", "event": "E", "properties": {"p": "x".repeat(n)}});
        let exact = 32 * 1024 - near(0).to_string().len();
        let body = json!({"batch": [near(exact), near(exact + 1)], "context": {"pad": "c".repeat(2000)}});
        let r = normalize(Call::Batch, body.to_string().as_bytes(), RECEIVED, LIMITS).unwrap();
        assert_eq!((r.events.len(), r.invalid.len(), r.invalid[0].index), (1, 1, 1), "{:?}", r.invalid);
        assert!(r.events[0].1.value.len() > 32 * 1024);
        // A batch context merged into every event is bounded by the request's limit.
        let tight = SegmentOptions { max_request_bytes: 64 * 1024, ..LIMITS };
        let many = json!({"batch": vec![near(0); 40], "context": {"pad": "c".repeat(2000)}});
        assert!(matches!(
            normalize(Call::Batch, many.to_string().as_bytes(), RECEIVED, tight),
            Err(ApiError::InvalidRequest { code: "payload_too_large", .. })
        ));
        let big = json!({"userId": "u", "properties": {"x": "y".repeat(40_000)}});
        assert!(matches!(
            normalize(Call::Single("identify"), big.to_string().as_bytes(), RECEIVED, LIMITS),
            Err(ApiError::InvalidRequest { code: "payload_too_large", .. })
        ));
        assert!(normalize(Call::Single("page"), b"[1]", RECEIVED, LIMITS).is_err());
        assert!(normalize(Call::Batch, b"{\"batch\":[]}", RECEIVED, LIMITS).is_err());
    }

    #[test]
    fn batch_bodies_are_parsed_in_one_pass_with_every_shape_checked() {
        let ok = |e: &Value| json!({"type": "track", "event": "E", "userId": e});
        let body =
            json!({"batch": [ok(&json!("u")), 5, [1, {"a": 1}], "x", null, true, {"type": "page", "userId": "v"}]});
        let r = normalize(Call::Batch, body.to_string().as_bytes(), RECEIVED, LIMITS).unwrap();
        assert_eq!(r.invalid.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(r.events.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 6]);
        let repeated = r#"{"batch":[{"type":"page","userId":"a"}],"writeKey":"k","batch":[{"type":"page","userId":"b"},{"type":"page","userId":"c"}]}"#;
        let r = normalize(Call::Batch, repeated.as_bytes(), RECEIVED, LIMITS).unwrap();
        assert_eq!(
            r.events.iter().map(|(_, e)| e.key.as_str()).collect::<Vec<_>>(),
            vec!["b", "c"],
            "the last batch counts"
        );
        assert_eq!(r.write_key.as_deref(), Some("k"));
        let code = |body: &[u8]| match normalize(Call::Batch, body, RECEIVED, LIMITS) {
            Err(ApiError::InvalidRequest { code, .. }) => code.to_string(),
            Err(ApiError::InvalidEvents { errors }) => errors[0].detail.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(code(br#"{"batch":"x"}"#), "invalid_segment_payload");
        assert_eq!(code(br#"{"writeKey":"k"}"#), "invalid_segment_payload");
        assert_eq!(code(br#"[{"batch":[]}]"#), "invalid_segment_payload");
        assert!(code(br#"{"batch":[{"type":"page","userId":"a"}"#).starts_with("malformed JSON"));
        assert!(code(br#"{"batch":[{"type":"page","userId":"a"}],}"#).starts_with("malformed JSON"));
    }

    #[test]
    fn topics_follow_the_mapping() {
        let t: SegmentTopics = r#"{"track:Order Completed":"orders","track":"tracks","*":"segment"}"#.parse().unwrap();
        t.validate().unwrap();
        assert_eq!(t.topic_for("track", Some("Order Completed")), "orders");
        assert_eq!(t.topic_for("track", Some("Other")), "tracks");
        assert_eq!(t.topic_for("page", None), "segment");
        assert_eq!(SegmentTopics::default().topic_for("identify", None), "segment.identify");
        assert!(r#"{"view":"x"}"#.parse::<SegmentTopics>().unwrap().validate().is_err());
        assert_eq!(Call::from_path("b"), Some(Call::Batch));
        assert_eq!(Call::from_path("import"), Some(Call::Batch));
        assert_eq!(Call::from_path("t"), Some(Call::Single("track")));
        assert_eq!(Call::from_path("projects"), None);
    }
}
