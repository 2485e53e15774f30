//! Event ids for deduplication: read from the event at the topic's JSON pointer
//! (`/messageId`, `/eid`...), or derived from the request's `Idempotency-Key` header.
//!
//! The pointer is followed through the raw JSON text without building a tree: only
//! the values on the path are looked at. An id is a string's content or a number's
//! text; a missing, `null`, boolean, object or array value means the event has none.
//! Ids are namespaced (`e:` from the event, `k:` from the header) so a header-derived
//! id never equals an event's own id.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tidegate_storage::MAX_EVENT_ID;

use super::rawjson::{Key, scalar_text};

/// Request header naming the request: each event gets the id `<key>:<index>`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Finds one member of an object (by name) or element of an array (by index).
struct Step<'s>(&'s str);

impl<'de> Visitor<'de> for Step<'_> {
    type Value = Option<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object or array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            if found.is_none() && k == self.0 {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Ok(index) = self.0.parse::<usize>() else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(None);
        };
        let mut i = 0;
        let mut found = None;
        while let Some(v) = seq.next_element::<&'de RawValue>()? {
            if i == index {
                found = Some(v);
            }
            i += 1;
        }
        Ok(found)
    }
}

/// The raw value at RFC 6901 `pointer` in the JSON text `raw`.
pub fn value_at<'a>(raw: &'a str, pointer: &str) -> Option<&'a RawValue> {
    let mut current: &'a str = raw;
    let mut value = None;
    for segment in pointer.split('/').skip(1) {
        let segment = if segment.contains('~') {
            Cow::Owned(segment.replace("~1", "/").replace("~0", "~"))
        } else {
            Cow::Borrowed(segment)
        };
        let first = current.trim_start().as_bytes().first().copied();
        if !matches!(first, Some(b'{' | b'[')) {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(current);
        let next = de.deserialize_any(Step(&segment)).ok().flatten()?;
        current = next.get();
        value = Some(next);
    }
    value
}

/// The id at `pointer`: a string's content or a number's text.
pub fn id_at<'a>(raw: &'a str, pointer: &str) -> Option<Cow<'a, str>> {
    scalar_text(value_at(raw, pointer)?.get())
}

/// The dedup id of an event's own id.
pub fn event_id(id: &str) -> Result<Vec<u8>, String> {
    namespaced("e:", id, "")
}

/// The dedup id of event `index` of a request carrying `Idempotency-Key: key`.
pub fn header_id(key: &str, index: usize) -> Result<Vec<u8>, String> {
    namespaced("k:", key, &format!(":{index}"))
}

fn namespaced(prefix: &str, id: &str, suffix: &str) -> Result<Vec<u8>, String> {
    if id.is_empty() {
        return Err("the event id is empty".into());
    }
    let len = prefix.len() + id.len() + suffix.len();
    if len > MAX_EVENT_ID {
        return Err(format!("the event id is {} bytes long; at most {} are allowed", id.len(), MAX_EVENT_ID - 16));
    }
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
    }

    #[test]
    fn ids_are_namespaced_and_bounded() {
        assert_eq!(event_id("abc").unwrap(), b"e:abc");
        assert_eq!(header_id("req-1", 3).unwrap(), b"k:req-1:3");
        assert!(event_id("").is_err());
        assert!(event_id(&"x".repeat(600)).is_err());
    }
}
