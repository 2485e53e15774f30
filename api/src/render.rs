//! JSON rendering of stored records, shared by every read path.
//!
//! A JSON value is written inline, exactly as stored (not as an escaped string);
//! binary values and keys are base64 with a `*_encoding: "base64"` marker. Header
//! values are text (lossy UTF-8).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tidegate_storage::Record;
use utoipa::ToSchema;

/// Appends the members `"topic":…,"partition":…,"records":[…]` (no braces): what a
/// WebSocket or SSE `records` frame and an HTTP read answer have in common.
pub fn write_partition_records(out: &mut Vec<u8>, topic: &str, partition: u32, records: &[Record]) {
    out.extend_from_slice(br#""topic":"#);
    write_str(out, topic);
    out.extend_from_slice(br#","partition":"#);
    write_int(out, partition);
    out.extend_from_slice(br#","records":"#);
    write_records(out, records);
}

/// Appends `records` to `out` as a JSON array of the API's record objects.
///
/// Written by hand rather than through serde: a JSON value is copied as stored
/// (appenders flag a value as JSON only after parsing it, see
/// [`Record::value_is_json`]), where serde's `RawValue` would parse every value
/// again on every read, and the object keys are constant bytes.
pub fn write_records(out: &mut Vec<u8>, records: &[Record]) {
    out.reserve(records.iter().map(record_size_hint).sum::<usize>() + 2);
    out.push(b'[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_record(out, r);
    }
    out.push(b']');
}

/// Appends one record object.
fn write_record(out: &mut Vec<u8>, r: &Record) {
    out.extend_from_slice(b"{\"offset\":");
    write_int(out, r.offset);
    out.extend_from_slice(b",\"timestamp\":");
    write_int(out, r.timestamp);
    out.extend_from_slice(b",\"key\":");
    match r.key.as_deref().map(|k| (k, std::str::from_utf8(k))) {
        None => out.extend_from_slice(b"null"),
        Some((_, Ok(text))) => write_str(out, text),
        Some((raw, Err(_))) => {
            write_str(out, &B64.encode(raw));
            out.extend_from_slice(b",\"key_encoding\":\"base64\"");
        }
    }
    out.extend_from_slice(b",\"headers\":{");
    for (i, (name, value)) in r.headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        match std::str::from_utf8(value) {
            Ok(text) => write_str(out, text),
            Err(_) => write_str(out, &String::from_utf8_lossy(value)),
        }
    }
    out.extend_from_slice(b"},\"value\":");
    if r.value_is_json {
        out.extend_from_slice(&r.value);
    } else {
        write_str(out, &B64.encode(&r.value));
        out.extend_from_slice(b",\"value_encoding\":\"base64\"");
    }
    out.push(b'}');
}

/// Bytes one record is likely to take (exact for ASCII that needs no escapes).
fn record_size_hint(r: &Record) -> usize {
    let headers: usize = r.headers.iter().map(|(n, v)| n.len() + v.len() + 6).sum();
    let value = if r.value_is_json { r.value.len() } else { r.value.len() * 4 / 3 + 30 };
    80 + r.key.as_ref().map_or(0, |k| k.len() * 4 / 3 + 20) + headers + value
}

/// Appends an integer in decimal.
pub fn write_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends a JSON string literal (quoted and escaped as serde_json escapes it).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Most strings here (header names and values, keys, topic names) need no escape:
    // copy them between quotes. serde_json escapes exactly these bytes, so the output
    // is the same either way.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a `str` to a `Vec` cannot fail: serde_json errors only when the
        // writer does, and a `Vec` never does.
        let _ = serde_json::to_writer(&mut *out, s);
    }
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
    use serde_json::{Value, json};

    fn render(records: &[Record]) -> Value {
        let mut out = Vec::new();
        write_records(&mut out, records);
        serde_json::from_slice(&out).expect("the renderer writes valid JSON")
    }

    #[test]
    fn json_inline_binary_as_base64() {
        let rec = Record {
            offset: 3,
            timestamp: 9,
            key: Some(Bytes::from_static(b"\xff")),
            headers: vec![("h".into(), Bytes::from_static(b"v"))].into(),
            value: Bytes::from_static(br#"{"a": [1, 2]}"#),
            value_is_json: true,
        };
        let bin = Record { value: Bytes::from_static(b"\x00\x01"), value_is_json: false, key: None, ..rec.clone() };
        let out = render(&[rec, bin]);
        assert_eq!(
            out,
            json!([
                {"offset": 3, "timestamp": 9, "key": "/w==", "key_encoding": "base64",
                 "headers": {"h": "v"}, "value": {"a": [1, 2]}},
                {"offset": 3, "timestamp": 9, "key": null, "headers": {"h": "v"},
                 "value": "AAE=", "value_encoding": "base64"},
            ])
        );
    }

    #[test]
    fn strings_are_escaped_and_headers_lossy() {
        let rec = Record {
            offset: u64::MAX,
            timestamp: -1,
            key: Some(Bytes::from_static("k\"\\\n\u{1}é".as_bytes())),
            headers: vec![
                ("q\"uote".into(), Bytes::from_static(b"a\tb")),
                ("bin".into(), Bytes::from_static(b"x\xffy")),
                ("empty".into(), Bytes::new()),
            ]
            .into(),
            value: Bytes::from_static(b" \"text\" "),
            value_is_json: true,
        };
        let out = render(std::slice::from_ref(&rec));
        assert_eq!(
            out,
            json!([{
                "offset": u64::MAX, "timestamp": -1, "key": "k\"\\\n\u{1}é",
                "headers": {"q\"uote": "a\tb", "bin": "x\u{fffd}y", "empty": ""},
                "value": "text",
            }])
        );
        assert_eq!(render(&[]), json!([]));
    }

    #[test]
    fn write_str_matches_serde_json_byte_for_byte() {
        let mut samples: Vec<String> = ["", "plain", "a\"b", "back\\slash", "tab\t", "\u{7f}", "é ü 😀", "\u{1f}x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        samples.extend((0u8..128).map(|b| format!("x{}y", b as char)));
        for s in samples {
            let mut out = Vec::new();
            write_str(&mut out, &s);
            assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }
}
