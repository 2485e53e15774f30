//! Parsing ingest bodies into events, without copying the event text.
//!
//! Accepted forms: one JSON value; a JSON array of values; NDJSON (one value per
//! line); the envelope `{"records":[{"value", "key"?, "partition"?, "headers"?,
//! "timestamp"?}]}` (Confluent REST Proxy v2's produce shape); and one binary event
//! (`application/octet-stream`). Every event is validated before any is written:
//! errors name the event's index and, for syntax errors, the byte position.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{ApiError, EventError};

/// Most per-event errors listed in one problem document.
pub const MAX_LISTED_ERRORS: usize = 100;

/// How the body is framed (from `Content-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON value, a JSON array, the envelope, or (if it has several top-level
    /// values) NDJSON. `application/json`, `text/plain` (sendBeacon), none.
    Json,
    /// One JSON value per line: `application/x-ndjson`, `application/jsonl`.
    Ndjson,
    /// The whole body is one binary event: `application/octet-stream`.
    Binary,
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Largest event value in bytes.
    pub max_event_bytes: usize,
    /// Most events per request.
    pub max_events: usize,
    /// Deepest nesting of arrays and objects in a JSON event.
    pub max_depth: usize,
}

/// Whether JSON text nests arrays and objects deeper than `max` levels. Text with fewer
/// than `max` brackets in all cannot (one vectorised count, nearly every event); only
/// the rest is walked, skipping strings.
pub fn nests_deeper_than(text: &[u8], max: usize) -> bool {
    if memchr::memchr2_iter(b'[', b'{', text).count() <= max {
        return false;
    }
    let mut depth = 0usize;
    for (_, b) in outside_strings(text) {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The error of an event nested too deeply.
fn too_deep(max: usize) -> String {
    format!("the event nests arrays and objects deeper than {max} levels (setting max_event_depth)")
}

/// Byte offset in JSON text (already parsed: escapes occur only inside strings) of a
/// `\u` escape that leaves a UTF-16 surrogate unpaired. Such a string is not Unicode
/// (RFC 8259 §8.2) and strict parsers, serde_json's among them, refuse to decode it.
/// Text without a backslash (nearly every event) costs one vectorised search.
pub fn lone_surrogate(text: &[u8]) -> Option<usize> {
    let unit = |at: usize| -> Option<u16> {
        let hex = std::str::from_utf8(text.get(at..at + 4)?).ok()?;
        u16::from_str_radix(hex, 16).ok()
    };
    let mut paired_until = 0;
    for i in memchr::memchr_iter(b'\\', text) {
        if i < paired_until || text.get(i + 1) != Some(&b'u') {
            continue;
        }
        // A backslash starts an escape only after an even run of backslashes.
        if text[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1 {
            continue;
        }
        match unit(i + 2) {
            Some(0xD800..=0xDBFF) => {
                if text.get(i + 6..i + 8) == Some(&b"\\u"[..]) && matches!(unit(i + 8), Some(0xDC00..=0xDFFF)) {
                    paired_until = i + 12;
                } else {
                    return Some(i);
                }
            }
            Some(0xDC00..=0xDFFF) => return Some(i),
            _ => {}
        }
    }
    None
}

/// The first number in JSON text (already parsed) too large for a 64-bit float
/// (`1e400`, 309 nines), which JSON does not forbid but strict parsers such as
/// serde_json refuse and JavaScript reads as `Infinity`.
pub fn infinite_number(text: &[u8]) -> Option<&str> {
    // Only two shapes can be out of range: an exponent that, with the digits before it,
    // reaches 308 (`1e400`, `123.4e306`), and a run of 309 digits or more. Look
    // further only when the text has one of those, outside or inside strings; hex ids
    // (`"3e5a"`) and ordinary numbers are passed over with a few instructions.
    let exponent = memchr::memchr2_iter(b'e', b'E', text).any(|i| large_exponent(text, i));
    if !exponent && !has_digit_run(text, 309) {
        return None;
    }
    let is_number_byte = |c: &u8| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E');
    let mut numbers_end = 0;
    for (i, b) in outside_strings(text) {
        if i < numbers_end || !(b == b'-' || b.is_ascii_digit()) {
            continue;
        }
        numbers_end = i + text[i..].iter().position(|c| !is_number_byte(c)).unwrap_or(text.len() - i);
        let number = std::str::from_utf8(&text[i..numbers_end]).unwrap_or_default();
        if number.parse::<f64>().is_ok_and(|n| n.is_infinite()) {
            return Some(number);
        }
    }
    None
}

/// The bytes of JSON text that are outside strings, with their positions (quotes are
/// inside; escapes occur only inside strings).
fn outside_strings(text: &[u8]) -> impl Iterator<Item = (usize, u8)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    text.iter().enumerate().filter_map(move |(i, &b)| {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            return None;
        }
        in_string = b == b'"';
        (!in_string).then_some((i, b))
    })
}

/// Whether the `e`/`E` at `at` may end a number's mantissa whose exponent, plus the
/// mantissa's digits, reaches 308 (a conservative test: the exact one follows). A JSON
/// number starts the text or follows `[`, `:`, `,` or white space, and ends the text or
/// comes before `]`, `}`, `,` or white space: an `e` inside a word or an id
/// (`"ab-0001e8480"`) is passed over without the exact test's walk of the whole text.
fn large_exponent(text: &[u8], at: usize) -> bool {
    if at == 0 || !text[at - 1].is_ascii_digit() {
        return false;
    }
    let mantissa = text[..at].iter().rev().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
    let mut start = at - mantissa;
    if start > 0 && text[start - 1] == b'-' {
        start -= 1;
    }
    if start > 0 && !matches!(text[start - 1], b'[' | b':' | b',' | b' ' | b'\t' | b'\n' | b'\r') {
        return false;
    }
    let mut j = at + 1;
    if text.get(j) == Some(&b'+') {
        j += 1;
    }
    let digits = text[j.min(text.len())..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return false;
    }
    if text.get(j + digits).is_some_and(|b| !matches!(b, b']' | b'}' | b',' | b' ' | b'\t' | b'\n' | b'\r')) {
        return false;
    }
    if digits > 4 {
        return true;
    }
    let exponent: usize = text[j..j + digits].iter().fold(0, |n, b| n * 10 + usize::from(b - b'0'));
    mantissa + exponent >= 308
}

/// Whether `text` has a run of at least `len` ASCII digits. Any such run covers an
/// index that is a multiple of `len`: only those are looked at first.
fn has_digit_run(text: &[u8], len: usize) -> bool {
    (0..text.len()).step_by(len).any(|k| {
        text[k].is_ascii_digit() && {
            let before = text[..k].iter().rev().take_while(|b| b.is_ascii_digit()).count();
            let after = text[k..].iter().take_while(|b| b.is_ascii_digit()).count();
            before + after >= len
        }
    })
}

/// Why a JSON event is refused although it parses: nesting deeper than `max_depth`, an
/// unpaired surrogate escape, or a number out of a 64-bit float's range (each breaks
/// consumers' parsers).
pub fn json_refusal(text: &[u8], max_depth: usize) -> Option<String> {
    if nests_deeper_than(text, max_depth) {
        return Some(too_deep(max_depth));
    }
    if let Some(number) = infinite_number(text) {
        let shown: String = number.chars().take(40).collect();
        return Some(format!(
            "the number {shown} is too large for a 64-bit float: strict JSON parsers refuse it and JavaScript reads \
             it as Infinity"
        ));
    }
    lone_surrogate(text).map(|at| {
        format!(
            "the escape {} at byte {at} of the event is an unpaired UTF-16 surrogate: not Unicode text, and \
             strict JSON parsers refuse it",
            String::from_utf8_lossy(&text[at..(at + 6).min(text.len())])
        )
    })
}

/// One event of a request, borrowing from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEvent<'a> {
    /// The value: JSON text exactly as sent, or binary bytes.
    pub value: &'a [u8],
    /// Whether `value` is JSON.
    pub json: bool,
    /// Record key, if the envelope gave one.
    pub key: Option<Cow<'a, [u8]>>,
    /// Explicit partition, if the envelope gave one.
    pub partition: Option<u32>,
    /// Record headers from the envelope.
    pub headers: Vec<(String, String)>,
    /// Producer timestamp (ms since the epoch), if given.
    pub timestamp: Option<i64>,
}

impl<'a> ParsedEvent<'a> {
    fn json(value: &'a RawValue) -> Self {
        ParsedEvent {
            value: value.get().as_bytes(),
            json: true,
            key: None,
            partition: None,
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// What the event weighs against `max_event_bytes`: value, key and the producer's
    /// headers (names and values), as Kafka's `max.message.bytes` counts a record.
    pub fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.value.len() + self.key.as_ref().map_or(0, |k| k.len()) + headers
    }
}

/// Parses a (decompressed) body into events. Fails without side effects.
pub fn parse_body<'a>(
    body: &'a [u8],
    format: BodyFormat,
    limits: ParseLimits,
) -> Result<Vec<ParsedEvent<'a>>, ApiError> {
    let events = match format {
        BodyFormat::Binary => {
            if body.is_empty() {
                return Err(no_events());
            }
            vec![ParsedEvent { json: false, ..ParsedEvent::json(empty_raw()) }.with_value(body)]
        }
        BodyFormat::Ndjson => parse_ndjson(body, limits.max_events)?,
        BodyFormat::Json => parse_json(body, limits.max_events)?,
    };
    check_limits(&events, limits)?;
    Ok(events)
}

impl<'a> ParsedEvent<'a> {
    fn with_value(mut self, value: &'a [u8]) -> Self {
        self.value = value;
        self
    }
}

fn empty_raw() -> &'static RawValue {
    serde_json::from_str::<&RawValue>("null").expect("null is JSON")
}

fn no_events() -> ApiError {
    ApiError::invalid("no_events", "the body holds no events")
}

fn check_limits(events: &[ParsedEvent<'_>], limits: ParseLimits) -> Result<(), ApiError> {
    if events.is_empty() {
        return Err(no_events());
    }
    if events.len() > limits.max_events {
        return Err(too_many_events(limits.max_events));
    }
    if let Some((index, size)) =
        events.iter().map(ParsedEvent::size).enumerate().find(|(_, size)| *size > limits.max_event_bytes)
    {
        return Err(ApiError::TooLarge {
            code: "event_too_large",
            detail: format!(
                "event {index} is {size} bytes (value, key and headers); the limit is {}",
                limits.max_event_bytes
            ),
            limit: limits.max_event_bytes as u64,
            setting: "max_event_bytes",
            index: Some(index),
        });
    }
    let refused: Vec<EventError> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.json)
        .filter_map(|(index, e)| json_refusal(e.value, limits.max_depth).map(|detail| EventError::new(index, detail)))
        .take(MAX_LISTED_ERRORS)
        .collect();
    if !refused.is_empty() {
        return Err(ApiError::InvalidEvents { errors: refused });
    }
    Ok(())
}

/// Byte offset of serde_json's 1-based line/column in `body`.
fn byte_position(body: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        body.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(line - 2).map_or(body.len(), |(i, _)| i + 1)
    };
    (line_start + column.saturating_sub(1)).min(body.len())
}

fn syntax_error(body: &[u8], base: usize, index: usize, e: &serde_json::Error) -> EventError {
    EventError {
        index,
        position: Some(base + byte_position(body, e.line(), e.column())),
        path: None,
        detail: format!("malformed JSON: {e}"),
    }
}

fn offset_in(body: &[u8], part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(body.as_ptr() as usize)
}

fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

fn parse_json(body: &[u8], max_events: usize) -> Result<Vec<ParsedEvent<'_>>, ApiError> {
    match first_byte(body) {
        None => Err(no_events()),
        Some(b'[') => parse_array(body, max_events),
        Some(_) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let single = <&RawValue>::deserialize(&mut de).and_then(|v| de.end().map(|()| v));
            match single {
                Ok(value) => match as_envelope(body, value, max_events)? {
                    Some(events) => Ok(events),
                    None => Ok(vec![ParsedEvent::json(value)]),
                },
                Err(e) if e.is_syntax() && looks_like_ndjson(body) => parse_ndjson(body, max_events),
                Err(e) => Err(ApiError::InvalidEvents { errors: vec![syntax_error(body, 0, 0, &e)] }),
            }
        }
    }
}

/// A body with a complete JSON value on its first line and more after it.
fn looks_like_ndjson(body: &[u8]) -> bool {
    let first_line = body.split(|b| *b == b'\n').find(|l| l.iter().any(|b| !b.is_ascii_whitespace()));
    first_line.is_some_and(|l| serde_json::from_slice::<&RawValue>(l).is_ok())
}

/// Collects a JSON array's elements, counting them so a syntax error can name
/// the failing element.
struct ArrayVisitor<'a, 'b> {
    out: &'b mut Vec<&'a RawValue>,
    /// Most elements collected: one more stops the parse (see [`raw_array`]).
    cap: usize,
}

impl<'de, 'b> Visitor<'de> for ArrayVisitor<'de, 'b> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(v) = seq.next_element::<&'de RawValue>()? {
            self.out.push(v);
            if self.out.len() > self.cap {
                return Err(serde::de::Error::custom("too many elements"));
            }
        }
        Ok(())
    }
}

/// A JSON array's elements, raw; more than `max_events` of them is `too_many_events`,
/// found without collecting the rest (a body of tiny events would otherwise cost many
/// times its size in memory).
fn raw_array(base: usize, text: &[u8], max_events: usize) -> Result<Vec<&RawValue>, ApiError> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(text);
    let visitor = ArrayVisitor { out: &mut out, cap: max_events };
    let result = serde::Deserializer::deserialize_seq(&mut de, visitor).and_then(|()| de.end());
    match result {
        Ok(()) => Ok(out),
        Err(_) if out.len() > max_events => Err(too_many_events(max_events)),
        Err(e) => Err(ApiError::InvalidEvents { errors: vec![syntax_error(text, base, out.len(), &e)] }),
    }
}

fn too_many_events(max_events: usize) -> ApiError {
    ApiError::TooLarge {
        code: "too_many_events",
        detail: format!("more than {max_events} events in one request; the limit is {max_events}"),
        limit: max_events as u64,
        setting: "max_events_per_request",
        index: None,
    }
}

fn parse_array(body: &[u8], max_events: usize) -> Result<Vec<ParsedEvent<'_>>, ApiError> {
    Ok(raw_array(0, body, max_events)?.into_iter().map(ParsedEvent::json).collect())
}

/// NDJSON lines, stopping (`too_many_events`) past `max_events` of them.
fn parse_ndjson(body: &[u8], max_events: usize) -> Result<Vec<ParsedEvent<'_>>, ApiError> {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    let mut line_start = 0;
    for line in body.split(|b| *b == b'\n') {
        let start = line_start;
        line_start += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let index = events.len() + errors.len();
        if index >= max_events {
            return Err(too_many_events(max_events));
        }
        match serde_json::from_slice::<&RawValue>(line) {
            Ok(v) => events.push(ParsedEvent::json(v)),
            Err(e) => {
                if errors.len() < MAX_LISTED_ERRORS {
                    errors.push(EventError {
                        index,
                        position: Some(start + e.column().saturating_sub(1).min(line.len())),
                        path: None,
                        detail: format!("malformed JSON: {e}"),
                    });
                } else {
                    break;
                }
            }
        }
    }
    if errors.is_empty() { Ok(events) } else { Err(ApiError::InvalidEvents { errors }) }
}

/// One record of the envelope form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeRecord<'a> {
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    timestamp: Option<i64>,
}

/// If `value` is an object whose only key is `records` holding an array (beside an
/// optional `writeKey` string), parses it as the envelope; otherwise returns `None`
/// (it is a plain event).
fn as_envelope<'a>(
    body: &'a [u8],
    value: &'a RawValue,
    max_events: usize,
) -> Result<Option<Vec<ParsedEvent<'a>>>, ApiError> {
    let text = value.get();
    if !text.starts_with('{') {
        return Ok(None);
    }
    let Ok(map) = serde_json::from_str::<BTreeMap<Cow<'a, str>, &'a RawValue>>(text) else { return Ok(None) };
    let write_key = map.get("writeKey").is_some_and(|k| k.get().starts_with('"'));
    let records = match (map.len() - usize::from(write_key), map.get("records")) {
        (1, Some(r)) if r.get().starts_with('[') => *r,
        _ => return Ok(None),
    };
    let base = offset_in(body, records.get());
    let raws = raw_array(base, records.get().as_bytes(), max_events)?;
    let mut events = Vec::with_capacity(raws.len());
    let mut errors = Vec::new();
    for (index, raw) in raws.into_iter().enumerate() {
        let position = Some(offset_in(body, raw.get()));
        let bad = |detail: String| EventError { index, position, path: None, detail };
        let rec: EnvelopeRecord<'a> = match serde_json::from_str(raw.get()) {
            Ok(r) => r,
            Err(e) => {
                errors.push(bad(format!("invalid record: {e}")));
                continue;
            }
        };
        let Some(value) = rec.value else {
            errors.push(bad("record has no \"value\" (null is not an event)".into()));
            continue;
        };
        let key = match rec.key {
            // `"key": null` is no key (a record keyed by the text "null" would land on
            // that key's partition).
            None => None,
            Some(k) if k.get() == "null" => None,
            Some(k) if k.get().starts_with('"') => match serde_json::from_str::<Cow<'a, str>>(k.get()) {
                Ok(Cow::Borrowed(s)) => Some(Cow::Borrowed(s.as_bytes())),
                Ok(Cow::Owned(s)) => Some(Cow::Owned(s.into_bytes())),
                Err(e) => {
                    errors.push(bad(format!("invalid key: {e}")));
                    continue;
                }
            },
            Some(k) => Some(Cow::Borrowed(k.get().as_bytes())),
        };
        if rec.timestamp.is_some_and(|t| t < 0) {
            errors.push(bad("timestamp must be milliseconds since the Unix epoch (>= 0)".into()));
            continue;
        }
        events.push(ParsedEvent {
            value: value.get().as_bytes(),
            json: true,
            key,
            partition: rec.partition,
            headers: rec.headers.unwrap_or_default().into_iter().collect(),
            timestamp: rec.timestamp,
        });
    }
    if errors.is_empty() {
        Ok(Some(events))
    } else {
        errors.truncate(MAX_LISTED_ERRORS);
        Err(ApiError::InvalidEvents { errors })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_out_of_float_range_are_found() {
        use super::infinite_number;
        let long = format!("[{}]", "9".repeat(309));
        for (text, found) in [
            (r#"{"a":1e400}"#, Some("1e400")),
            (r#"[-2.5E+309, 1]"#, Some("-2.5E+309")),
            (long.as_str(), Some(&long[1..310])),
            (r#"{"a":1e308,"b":1e-400,"c":"1e400","d":"x\"1e999"}"#, None),
            (r#"{"event":"1e5 sale","n":12e3}"#, None),
            (&format!("[{}]", "9".repeat(308)), None),
            (&format!("[1{}]", "0".repeat(308)), None),
            (r#"{"id":"3e5a9f-8e7","n":1e10}"#, None),
            (r#"[1234567890123e296, 2234567890123e296]"#, Some("2234567890123e296")),
            (r#"[12.5e307, 1.0e-400, 18.5e307]"#, Some("18.5e307")),
            (&format!("[{}e10]", "1".repeat(300)), Some(&format!("{}e10", "1".repeat(300))[..])),
        ] {
            assert_eq!(infinite_number(text.as_bytes()), found, "{text}");
        }
    }

    #[test]
    fn exponents_inside_words_and_ids_skip_the_exact_test() {
        use super::large_exponent;
        let at = |text: &str| text.find(['e', 'E']).unwrap();
        for text in ["[1e400]", "[-1e400]", "{\"a\":1E+400}", "[1, 2.5e999 ]", "1e400", "[\n-12.5e400\n]"] {
            assert!(large_exponent(text.as_bytes(), at(text)), "{text}");
        }
        for text in [
            "[\"ab-0001e8480\"]",
            "[\"x1e400\"]",
            "[\"1e400x\"]",
            "[\"--1e400\"]",
            "[\"a.1e400\"]",
            "[1e40]",
            "[1e-400]",
            "[1e400",
        ] {
            let expected = text == "[1e400";
            assert_eq!(large_exponent(text.as_bytes(), at(text)), expected, "{text}");
        }
    }

    use super::*;

    const LIMITS: ParseLimits = ParseLimits { max_event_bytes: 1000, max_events: 10, max_depth: 128 };

    #[test]
    fn nesting_depth_is_counted_outside_strings() {
        assert!(!nests_deeper_than(b"[[1]]", 2));
        assert!(nests_deeper_than(b"[[[1]]]", 2));
        assert!(!nests_deeper_than(br#"{"a":"[[[[{{{{","b":[1]}"#, 2), "brackets in strings do not count");
        assert!(!nests_deeper_than(br#"{"a":"\"[[[[","b":[1]}"#, 2), "nor after an escaped quote");
        assert!(nests_deeper_than(br#"{"a":"\\","b":[[1]]}"#, 2), "an escaped backslash ends the escape");
        assert!(!nests_deeper_than(b"[1],[2],[3],[4]", 1), "siblings are not nesting");
    }

    #[test]
    fn unpaired_surrogate_escapes_are_found() {
        assert_eq!(lone_surrogate(br#""\ud83d\ude00 ok""#), None, "a pair is one character");
        assert_eq!(lone_surrogate(br#""\u00e9\n\\""#), None);
        assert_eq!(lone_surrogate(br#"{"a":"x\ud800"}"#), Some(7), "a high surrogate at the end");
        assert_eq!(lone_surrogate(br#""\uD800\u0041""#), Some(1), "a high surrogate before a non-surrogate");
        assert_eq!(lone_surrogate(br#""\udc00""#), Some(1), "a low surrogate alone");
        assert_eq!(lone_surrogate(br#""\ud83d\ude00\ude00""#), Some(13), "a second low surrogate");
        assert_eq!(lone_surrogate(br#""\\ud800""#), None, "an escaped backslash, then text");
        assert_eq!(lone_surrogate(br#""\\\ud800""#), Some(3), "an escaped backslash, then the escape");
        assert!(json_refusal(br#"["\udfff"]"#, 128).unwrap().contains("\\udfff at byte 2"));
    }

    fn values(events: &[ParsedEvent<'_>]) -> Vec<String> {
        events.iter().map(|e| String::from_utf8_lossy(e.value).into_owned()).collect()
    }

    fn errors(r: Result<Vec<ParsedEvent<'_>>, ApiError>) -> Vec<EventError> {
        match r {
            Err(ApiError::InvalidEvents { errors }) => errors,
            other => panic!("expected invalid events, got {other:?}"),
        }
    }

    #[test]
    fn single_array_and_ndjson_forms() {
        let one = parse_body(br#" {"a": 1} "#, BodyFormat::Json, LIMITS).unwrap();
        assert_eq!(values(&one), vec![r#"{"a": 1}"#]);
        let arr = parse_body(br#"[{"a":1}, 2, "x"]"#, BodyFormat::Json, LIMITS).unwrap();
        assert_eq!(values(&arr), vec![r#"{"a":1}"#, "2", "\"x\""]);
        let nd = parse_body(b"{\"a\":1}\n\n{\"b\":2}\r\n", BodyFormat::Ndjson, LIMITS).unwrap();
        assert_eq!(values(&nd), vec![r#"{"a":1}"#, r#"{"b":2}"#]);
        // NDJSON sent as application/json or text/plain is recognised too.
        let nd = parse_body(b"{\"a\":1}\n{\"b\":2}", BodyFormat::Json, LIMITS).unwrap();
        assert_eq!(nd.len(), 2);
        // A pretty-printed single object is one event, not NDJSON.
        let pretty = parse_body(b"{\n  \"a\": 1\n}\n", BodyFormat::Json, LIMITS).unwrap();
        assert_eq!(pretty.len(), 1);
    }

    #[test]
    fn envelope_form_carries_key_partition_headers_timestamp() {
        let body = br#"{"records":[{"value":{"x":1},"key":"u1","partition":2,"headers":{"h":"v"},"timestamp":5},{"value":[1]}]}"#;
        let ev = parse_body(body, BodyFormat::Json, LIMITS).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].value, br#"{"x":1}"#);
        assert_eq!(ev[0].key.as_deref(), Some(&b"u1"[..]));
        assert_eq!(ev[0].partition, Some(2));
        assert_eq!(ev[0].headers, vec![("h".to_string(), "v".to_string())]);
        assert_eq!(ev[0].timestamp, Some(5));
        assert_eq!(ev[1].key, None);
        let other = br#"{"records":[{"value":1,"key":null},{"value":2,"key":5},{"value":3,"key":{"a":1}}]}"#;
        let ev = parse_body(other, BodyFormat::Json, LIMITS).unwrap();
        let keys: Vec<Option<&[u8]>> = ev.iter().map(|e| e.key.as_deref()).collect();
        assert_eq!(keys, [None, Some(&b"5"[..]), Some(&br#"{"a":1}"#[..])], "null is no key; others their JSON text");
        let keyed = parse_body(br#"{"writeKey":"pk","records":[{"value":1}]}"#, BodyFormat::Json, LIMITS).unwrap();
        assert_eq!(keyed.len(), 1);
        assert_eq!(keyed[0].value, b"1");
        // An object with `records` and other keys is a plain event.
        let plain = parse_body(br#"{"records":[1],"other":true}"#, BodyFormat::Json, LIMITS).unwrap();
        assert_eq!(plain.len(), 1);
        assert!(plain[0].value.starts_with(b"{\"records\""));
    }

    #[test]
    fn envelope_errors_name_each_bad_record() {
        let body = br#"{"records":[{"value":1},{"key":"k"},{"value":2,"bogus":1}]}"#;
        let errs = errors(parse_body(body, BodyFormat::Json, LIMITS));
        assert_eq!(errs.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2]);
        assert!(errs[1].detail.contains("bogus"), "{}", errs[1].detail);
        let record_1 = body.windows(6).position(|w| w == br#"{"key""#).unwrap();
        assert_eq!(errs[0].position, Some(record_1), "position points at the record");
    }

    #[test]
    fn syntax_errors_give_index_and_byte_position() {
        let body = b"[{\"a\":1},\n {\"b\":}]";
        let errs = errors(parse_body(body, BodyFormat::Json, LIMITS));
        assert_eq!(errs[0].index, 1);
        let pos = errs[0].position.unwrap();
        assert_eq!(body[pos], b'}', "position {pos} points at {:?}", body[pos] as char);
        let nd = b"{\"a\":1}\n{\"b\" 2}\n{\"c\":3}\n{oops}";
        let errs = errors(parse_body(nd, BodyFormat::Ndjson, LIMITS));
        assert_eq!(errs.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(nd[errs[0].position.unwrap()], b'2');
        let errs = errors(parse_body(b"{\"a\":", BodyFormat::Json, LIMITS));
        assert_eq!(errs[0].index, 0);
    }

    #[test]
    fn limits_and_empty_bodies() {
        let big = format!("[\"{}\"]", "x".repeat(2000));
        assert!(matches!(
            parse_body(big.as_bytes(), BodyFormat::Json, LIMITS),
            Err(ApiError::TooLarge { code: "event_too_large", index: Some(0), .. })
        ));
        let many = format!("[{}]", ["1"; 11].join(","));
        assert!(matches!(
            parse_body(many.as_bytes(), BodyFormat::Json, LIMITS),
            Err(ApiError::TooLarge { code: "too_many_events", .. })
        ));
        // Found without parsing the rest: what follows the 11th element is never read
        // (a body of tiny events would otherwise cost many times its size in memory).
        let cut = format!("[{}, this is not JSON", ["1"; 11].join(","));
        let envelope = format!(r#"{{"records":[{}]}}"#, [r#"{"value":1}"#; 11].join(","));
        let ndjson = format!("{}\nnot JSON\n", ["1"; 11].join("\n"));
        for (body, format) in [
            (cut.as_str(), BodyFormat::Json),
            (envelope.as_str(), BodyFormat::Json),
            (ndjson.as_str(), BodyFormat::Ndjson),
        ] {
            let refused = parse_body(body.as_bytes(), format, LIMITS);
            assert!(matches!(refused, Err(ApiError::TooLarge { code: "too_many_events", .. })), "{body}");
        }
        let ten = ["1"; 10].join("\n");
        assert_eq!(parse_body(ten.as_bytes(), BodyFormat::Ndjson, LIMITS).unwrap().len(), 10, "exactly the limit");
        for empty in [&b""[..], b"  ", b"[]"] {
            assert!(matches!(
                parse_body(empty, BodyFormat::Json, LIMITS),
                Err(ApiError::InvalidRequest { code: "no_events", .. })
            ));
        }
        let bin = parse_body(b"\x00\xff", BodyFormat::Binary, LIMITS).unwrap();
        assert!(!bin[0].json);
        assert_eq!(bin[0].value, b"\x00\xff");
    }
}
