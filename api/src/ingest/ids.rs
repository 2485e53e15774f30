//! Event ids for deduplication: read from the event at the topic's JSON pointer
//! (`/messageId`, `/eid`...), or derived from the request's `Idempotency-Key` header.
//!
//! The pointer is followed through the raw JSON text without building a tree: only
//! the values on the path are looked at. An id is a string's content or a number's
//! text; a missing, `null`, boolean, object or array value means the event has none.
//! Ids are namespaced (`e:` from the event, `k:` from the header, `u:` and `b:` for
//! the request a header names, see [`request_ids`]) so a header-derived id never equals
//! an event's own id.

use std::borrow::Cow;

use tidegate_storage::MAX_EVENT_ID;

use super::rawjson::scalar_text;
use crate::error::ApiError;

/// Request header naming the request: each event gets the id `<key>:<index>`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The request's `Idempotency-Key`, if it sent one: 1 to [`MAX_ID_BYTES`] bytes of
/// printable ASCII (space and tab allowed), in one header; else 400
/// `invalid_idempotency_key`.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    use super::decode::{HeaderFault, one_value};
    let value = match one_value(headers, IDEMPOTENCY_KEY) {
        Ok(None) => return Ok(None),
        Err(HeaderFault::Repeated) => {
            return Err(ApiError::invalid("invalid_idempotency_key", "send one Idempotency-Key header, not several"));
        }
        Ok(Some(value)) => Some(value),
        Err(HeaderFault::NotText) => None,
    };
    let key = value.filter(|k| !k.is_empty() && k.len() <= MAX_ID_BYTES).ok_or_else(|| {
        ApiError::invalid(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_ID_BYTES} bytes of printable ASCII (space and tab allowed)"),
        )
    })?;
    Ok(Some(key.to_owned()))
}

/// The seed of the `messageId`s the gateway makes for a Segment request's events that
/// have none, when the request names itself with `key`: the same key, call and body
/// give the same ids (a retry is deduplicated); another body, or the same body sent to
/// another call (`/v1/page` and `/v1/screen`), under the key gives other ids.
pub fn message_id_seed(key: &str, call: &str, body: &[u8]) -> [u8; 16] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(key.as_bytes());
    hasher.update([0]);
    hasher.update(call.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    let digest = hasher.finalize();
    let mut seed = [0; 16];
    seed.copy_from_slice(&digest[..16]);
    seed
}

/// Length of the JSON string starting at `b[0]` (a `"`), quotes included.
fn string_len(b: &[u8]) -> Option<usize> {
    let mut i = 1;
    loop {
        let j = i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[j] == b'"' {
            return Some(j + 1);
        }
        i = j + 2;
    }
}

/// Length of the JSON value starting at `b[0]`.
fn value_len(b: &[u8]) -> Option<usize> {
    match *b.first()? {
        b'"' => string_len(b),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = 0;
            while let Some(&c) = b.get(i) {
                match c {
                    b'"' => {
                        i += string_len(&b[i..])?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => Some(b.iter().position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace()).unwrap_or(b.len())),
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Whether the JSON string `quoted` (quotes included) holds `name`.
fn key_is(quoted: &str, name: &str) -> bool {
    let inner = &quoted[1..quoted.len() - 1];
    if inner.contains('\\') {
        serde_json::from_str::<Cow<'_, str>>(quoted).is_ok_and(|k| k == name)
    } else {
        inner == name
    }
}

/// The raw text of one member of the object (by name; the first of that name) or one
/// element of the array (by index) at the start of `text`.
fn step<'a>(text: &'a str, segment: &str) -> Option<&'a str> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    match *b.get(i)? {
        b'{' => loop {
            i = skip_ws(b, i + 1);
            if *b.get(i)? != b'"' {
                return None;
            }
            let key_end = i + string_len(&b[i..])?;
            let key = &text[i..key_end];
            i = skip_ws(b, key_end);
            if *b.get(i)? != b':' {
                return None;
            }
            i = skip_ws(b, i + 1);
            let end = i + value_len(&b[i..])?;
            if key_is(key, segment) {
                return Some(&text[i..end]);
            }
            i = skip_ws(b, end);
            if *b.get(i)? != b',' {
                return None;
            }
        },
        b'[' => {
            let index = segment.parse::<usize>().ok()?;
            for n in 0.. {
                i = skip_ws(b, i + 1);
                if matches!(b.get(i)?, b']') {
                    return None;
                }
                let end = i + value_len(&b[i..])?;
                if n == index {
                    return Some(&text[i..end]);
                }
                i = skip_ws(b, end);
                if *b.get(i)? != b',' {
                    return None;
                }
            }
            None
        }
        _ => None,
    }
}

/// The raw text of the value at RFC 6901 `pointer` in `raw`, which must be valid JSON
/// (the events are validated before): only the bytes up to the value are scanned,
/// without building a tree or parsing what is skipped.
pub fn value_at<'a>(raw: &'a str, pointer: &str) -> Option<&'a str> {
    let mut current: &'a str = raw;
    let mut value = None;
    for segment in pointer.split('/').skip(1) {
        let segment = if segment.contains('~') {
            Cow::Owned(segment.replace("~1", "/").replace("~0", "~"))
        } else {
            Cow::Borrowed(segment)
        };
        current = step(current, &segment)?;
        value = Some(current);
    }
    value
}

/// The id at `pointer`: a string's content or a number's text.
pub fn id_at<'a>(raw: &'a str, pointer: &str) -> Option<Cow<'a, str>> {
    scalar_text(value_at(raw, pointer)?)
}

/// The dedup id of an event's own id.
pub fn event_id(id: &str) -> Result<Vec<u8>, String> {
    namespaced("e:", id, "")
}

/// The dedup id of event `index` of a request carrying `Idempotency-Key: key`.
pub fn header_id(key: &str, index: usize) -> Result<Vec<u8>, String> {
    namespaced("k:", key, &format!(":{index}"))
}

/// The two ids that remember a request sent with `Idempotency-Key: key`: one saying the
/// key was used (`u:<key>`), one saying it was used with this body (`b:<key>:` and the
/// first 12 bytes of the SHA-256 of the decoded body). A key seen with another body
/// has the first and not the second. Stable across restarts: both are stored with the
/// request's events.
pub fn request_ids(key: &str, body: &[u8]) -> Result<RequestIds, String> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    let mut with_body = namespaced("b:", key, ":")?;
    with_body.extend_from_slice(&digest[..BODY_FINGERPRINT_BYTES]);
    Ok(RequestIds { used: namespaced("u:", key, "")?, with_body })
}

/// See [`request_ids`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIds {
    /// `u:<key>`: the key was used.
    pub used: Vec<u8>,
    /// `b:<key>:<digest>`: the key was used with this body.
    pub with_body: Vec<u8>,
}

/// Bytes of the body digest kept in [`RequestIds::with_body`] (96 bits: within the 16
/// bytes the namespace and suffix may take).
const BODY_FINGERPRINT_BYTES: usize = 12;

/// Longest event id or `Idempotency-Key`: what the stored id may hold (`MAX_EVENT_ID`)
/// less 16 bytes for the namespace and the `:<index>` of header ids.
pub const MAX_ID_BYTES: usize = MAX_EVENT_ID - 16;

fn namespaced(prefix: &str, id: &str, suffix: &str) -> Result<Vec<u8>, String> {
    if id.is_empty() {
        return Err("the event id is empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!("the event id is {} bytes long; at most {MAX_ID_BYTES} are allowed", id.len()));
    }
    let len = prefix.len() + id.len() + suffix.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_fit_the_stored_id_and_follow_the_body() {
        let key = "k".repeat(MAX_ID_BYTES);
        let ids = request_ids(&key, b"[1,2]").unwrap();
        assert!(ids.with_body.len() <= MAX_EVENT_ID && ids.used.len() <= MAX_EVENT_ID, "{ids:?}");
        assert_eq!(ids, request_ids(&key, b"[1,2]").unwrap(), "stable");
        let other = request_ids(&key, b"[1,3]").unwrap();
        assert_eq!(ids.used, other.used);
        assert_ne!(ids.with_body, other.with_body);
        assert_ne!(request_ids("a", b"x").unwrap().with_body, request_ids("b", b"x").unwrap().with_body);
        let all = [ids.used, ids.with_body, header_id(&key, 0).unwrap(), event_id(&key).unwrap()];
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| a != b), "namespaces keep them apart");
        }
    }

    #[test]
    fn follows_pointers_through_raw_json() {
        let raw = r#"{"type":"track","messageId":"ajs-1","n":{"a/b":[10,{"eid":42}],"x~y":"t"},"s":"q\"uote"}"#;
        assert_eq!(id_at(raw, "/messageId").as_deref(), Some("ajs-1"));
        assert_eq!(id_at(raw, "/n/a~1b/1/eid").as_deref(), Some("42"));
        assert_eq!(id_at(raw, "/n/a~1b/0").as_deref(), Some("10"));
        assert_eq!(id_at(raw, "/n/x~0y").as_deref(), Some("t"));
        assert_eq!(id_at(raw, "/s").as_deref(), Some("q\"uote"));
        assert_eq!(id_at(raw, "/n").as_deref(), None, "objects are not ids");
        assert_eq!(id_at(raw, "/missing"), None);
        assert_eq!(id_at(raw, "/n/a~1b/9"), None);
        assert_eq!(id_at(raw, "/type/0"), None);
        assert_eq!(id_at(r#"{"messageId":null}"#, "/messageId"), None);
        assert_eq!(id_at(r#"{"m\u0065ssageId":"esc"}"#, "/messageId").as_deref(), Some("esc"));
        assert_eq!(id_at("[1,2]", "/1").as_deref(), Some("2"));
        assert_eq!(id_at("not json", "/a"), None);
        assert_eq!(id_at(r#"{"id":"first","id":"second"}"#, "/id").as_deref(), Some("first"), "the first member wins");
        assert_eq!(id_at(r#"{"a":[1,2],"id":7,"z":{"deep":[true]}}"#, "/id").as_deref(), Some("7"));
        assert_eq!(id_at(r#" { "s" : "a\"}]" , "t" : [ {"u":"}"} , -1.5e3 ] } "#, "/t/1").as_deref(), Some("-1.5e3"));
        assert_eq!(id_at(r#"{"s":"a\\","id":"after"}"#, "/id").as_deref(), Some("after"), "escaped backslash");
        assert_eq!(id_at("[]", "/0"), None);
        assert_eq!(id_at("{}", "/a"), None);
        for broken in ["{", "{\"a\"", "{\"a\":", "{\"a\":\"x", "[1,", "{\"a\":1 \"b\":2}", "{\"a\\"] {
            assert_eq!(id_at(broken, "/b"), None, "{broken}");
        }
    }

    #[test]
    fn ids_are_namespaced_and_bounded() {
        assert_eq!(event_id("abc").unwrap(), b"e:abc");
        assert_eq!(header_id("req-1", 3).unwrap(), b"k:req-1:3");
        assert!(event_id("").is_err());
        assert!(event_id(&"x".repeat(600)).is_err());
    }
}
