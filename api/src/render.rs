//! JSON rendering of stored records, shared by every read path.
//!
//! A JSON value is written inline, exactly as stored (not as an escaped string);
//! binary values and keys are base64 with a `*_encoding: "base64"` marker. Header
//! values are text (lossy UTF-8).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tidegate_storage::Record;
use utoipa::ToSchema;

/// Serialises a [`Record`] as the API's record object.
#[derive(Debug)]
pub struct RecordView<'a>(pub &'a Record);

struct HeadersView<'a>(&'a [(String, bytes::Bytes)]);

impl Serialize for HeadersView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            m.serialize_entry(name, &String::from_utf8_lossy(value))?;
        }
        m.end()
    }
}

impl Serialize for RecordView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("offset", &r.offset)?;
        m.serialize_entry("timestamp", &r.timestamp)?;
        match r.key.as_deref().map(std::str::from_utf8) {
            None => m.serialize_entry("key", &None::<&str>)?,
            Some(Ok(text)) => m.serialize_entry("key", text)?,
            Some(Err(_)) => {
                m.serialize_entry("key", &B64.encode(r.key.as_deref().unwrap_or_default()))?;
                m.serialize_entry("key_encoding", "base64")?;
            }
        }
        m.serialize_entry("headers", &HeadersView(&r.headers))?;
        let json = if r.value_is_json { serde_json::from_slice::<&RawValue>(&r.value).ok() } else { None };
        match json {
            Some(raw) => m.serialize_entry("value", raw)?,
            None => {
                m.serialize_entry("value", &B64.encode(&r.value))?;
                m.serialize_entry("value_encoding", "base64")?;
            }
        }
        m.end()
    }
}

/// `serialize_with` helper: a list of records in the API's record shape.
pub fn records<S: Serializer>(records: &[Record], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(records.iter().map(RecordView))
}

/// Schema of a record as the API renders it (documentation only).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordJson {
    /// Offset in the partition.
    pub offset: u64,
    /// Producer's timestamp, else the gateway's receive time (ms since the epoch).
    pub timestamp: i64,
    /// Key as text, or base64 when `key_encoding` is `base64`; `null` when absent.
    pub key: Option<String>,
    /// Present (`"base64"`) when the key is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_encoding: Option<String>,
    /// Header name to value. The gateway adds `received-at`, `client-ip`, `user-agent`.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The event: JSON inline as sent, or base64 when `value_encoding` is `base64`.
    pub value: serde_json::Value,
    /// Present (`"base64"`) when the value is binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_encoding: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn json_inline_binary_as_base64() {
        let rec = Record {
            offset: 3,
            timestamp: 9,
            key: Some(Bytes::from_static(b"\xff")),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
            value: Bytes::from_static(br#"{"a": [1, 2]}"#),
            value_is_json: true,
        };
        let out = serde_json::to_value(RecordView(&rec)).unwrap();
        assert_eq!(out["value"], serde_json::json!({"a": [1, 2]}));
        assert_eq!(out["key"], "/w==");
        assert_eq!(out["key_encoding"], "base64");
        assert_eq!(out["headers"]["h"], "v");
        let bin = Record { value: Bytes::from_static(b"\x00\x01"), value_is_json: false, key: None, ..rec };
        let out = serde_json::to_value(RecordView(&bin)).unwrap();
        assert_eq!(out["value"], "AAE=");
        assert_eq!(out["value_encoding"], "base64");
        assert!(out["key"].is_null());
    }
}
