//! The WebSocket protocol's frames (JSON text, one object per frame, `type` first)
//! and subscription parameters. Documented in docs/websocket.md.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::groups::assign::TopicPartition;
use crate::render;

/// Close codes the server uses.
pub mod close {
    /// Normal close (client asked, or the subscription ended).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client sent a frame over `max_client_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// No frame or pong from the client within the session timeout.
    pub const SESSION_TIMEOUT: u16 = 4000;
    /// A subscribed topic was deleted.
    pub const TOPIC_DELETED: u16 = 4001;
    /// The member id is in use by another live session.
    pub const MEMBER_IN_USE: u16 = 4002;
    /// The access token the subscription was opened with has expired; reconnect
    /// with a fresh one (a group member resumes from its committed offsets).
    pub const TOKEN_EXPIRED: u16 = 4003;
}

/// Where to start a partition that has no committed offset (or, for ephemeral
/// subscriptions, always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(u64),
    Timestamp(i64),
}

impl StartFrom {
    /// Parses `earliest`, `latest`, a number (an offset), `offset:N` or `timestamp:MS`.
    pub fn parse(s: &str) -> Result<StartFrom, String> {
        let bad = || format!("from={s:?}: expected earliest, latest, an offset, offset:N or timestamp:MS");
        match s {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            _ => {
                if let Some(ms) = s.strip_prefix("timestamp:") {
                    ms.parse().map(StartFrom::Timestamp).map_err(|_| bad())
                } else {
                    s.strip_prefix("offset:").unwrap_or(s).parse().map(StartFrom::Offset).map_err(|_| bad())
                }
            }
        }
    }
}

/// One `topic`/`partition`/`offset` triple in client frames (topic defaults to the
/// subscription's first topic).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsetRef {
    pub topic: Option<String>,
    pub partition: u32,
    pub offset: u64,
}

/// A partition named in pause/resume frames.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionRef {
    pub topic: Option<String>,
    pub partition: u32,
}

/// Frames a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame {
    /// Commit offsets (offset = next to read). Groups only.
    Commit { offsets: Vec<OffsetRef>, generation: Option<u64> },
    /// Move a partition's read position.
    Seek { topic: Option<String>, partition: u32, offset: Option<u64>, timestamp: Option<i64>, to: Option<String> },
    /// Stop delivering (all, or the listed partitions).
    Pause { partitions: Option<Vec<PartitionRef>> },
    /// Deliver again.
    Resume { partitions: Option<Vec<PartitionRef>> },
}

/// `{"type":"assignment"}`: the partitions this session now reads and from where;
/// group sessions also name their `member` id (as the group description shows it).
pub fn assignment(generation: u64, member: Option<&str>, parts: &[(TopicPartition, u64)]) -> String {
    let partitions: Vec<Value> =
        parts.iter().map(|((t, p), o)| json!({"topic": t, "partition": p, "offset": o})).collect();
    let mut frame = json!({"type": "assignment", "generation": generation});
    if let Some(member) = member {
        frame["member"] = json!(member);
    }
    frame["partitions"] = json!(partitions);
    frame.to_string()
}

/// `{"type":"revoked"}`.
pub fn revoked(generation: u64, parts: &[TopicPartition]) -> String {
    let partitions: Vec<Value> = parts.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect();
    json!({"type": "revoked", "generation": generation, "partitions": partitions}).to_string()
}

/// `{"type":"committed"}`.
pub fn committed(offsets: &[(TopicPartition, u64)]) -> String {
    let offsets: Vec<Value> =
        offsets.iter().map(|((t, p), o)| json!({"topic": t, "partition": p, "offset": o})).collect();
    json!({"type": "committed", "offsets": offsets}).to_string()
}

/// `{"type":"gap"}`: records `from..to` are gone through retention.
pub fn gap(topic: &str, partition: u32, from: u64, to: u64) -> String {
    json!({"type": "gap", "topic": topic, "partition": partition, "from": from, "to": to}).to_string()
}

/// `{"type":"error"}` with a stable code.
pub fn error(code: &str, detail: &str) -> String {
    json!({"type": "error", "code": code, "detail": detail}).to_string()
}

/// `{"type":"records"}` for one partition: the frame's text, rendered once and shared
/// by every subscriber that reads the same records (see `consume::cache`).
pub fn records(topic: &str, partition: u32, records: &[tidegate_storage::Record]) -> String {
    let mut out = Vec::with_capacity(topic.len() + 64);
    out.extend_from_slice(br#"{"type":"records","#);
    render::write_partition_records(&mut out, topic, partition, records);
    out.push(b'}');
    // Everything written is UTF-8: string literals from `str`s, JSON values that
    // were parsed (hence valid UTF-8) when they were appended, base64 and digits.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parses_every_form() {
        assert_eq!(StartFrom::parse("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(StartFrom::parse("12"), Ok(StartFrom::Offset(12)));
        assert_eq!(StartFrom::parse("offset:3"), Ok(StartFrom::Offset(3)));
        assert_eq!(StartFrom::parse("timestamp:99"), Ok(StartFrom::Timestamp(99)));
        assert!(StartFrom::parse("soon").is_err());
    }

    #[test]
    fn records_frames_start_with_their_type_and_inline_json() {
        let rec = tidegate_storage::Record {
            offset: 7,
            timestamp: 1,
            key: None,
            headers: Default::default(),
            value: bytes::Bytes::from_static(br#"{"n":1}"#),
            value_is_json: true,
        };
        let text = records("clicks", 2, &[rec]);
        assert!(text.starts_with(r#"{"type":"records","#), "type first: {text}");
        let frame: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            frame,
            json!({"type":"records","topic":"clicks","partition":2,
                   "records":[{"offset":7,"timestamp":1,"key":null,"headers":{},"value":{"n":1}}]})
        );
    }

    #[test]
    fn group_assignments_name_the_member() {
        let parts = [(("t".to_string(), 1), 5)];
        let group: Value = serde_json::from_str(&assignment(3, Some("m-1"), &parts)).unwrap();
        assert_eq!(
            group,
            json!({"type":"assignment","generation":3,"member":"m-1","partitions":[{"topic":"t","partition":1,"offset":5}]})
        );
        assert!(assignment(0, None, &parts).starts_with(r#"{"type":"assignment","generation":0,"partitions""#));
    }

    #[test]
    fn client_frames_parse_and_unknown_fields_are_refused() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"commit","offsets":[{"partition":1,"offset":5}]}"#).unwrap();
        assert!(matches!(f, ClientFrame::Commit { ref offsets, generation: None } if offsets[0].offset == 5));
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"pause"}"#).is_ok());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"commit","offsets":[],"x":1}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"dance"}"#).is_err());
    }
}
