//! Topic metadata: names, per-topic settings and their validation.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// Longest topic name, as in Kafka.
pub const MAX_TOPIC_NAME: usize = 249;
/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// Settings of one topic, persisted with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Number of partitions (grows, never shrinks).
    pub partitions: u32,
    /// Records older than this (by their batch's newest timestamp) are deleted; `None` keeps them.
    pub retention_ms: Option<u64>,
    /// Each partition is trimmed (oldest batches first) to at most this many bytes; `None` is unbounded.
    pub retention_bytes: Option<u64>,
    /// JSON pointer (RFC 6901) to each event's id, used to deduplicate retried events
    /// (e.g. `/messageId`, `/eid`); `None` deduplicates only by `Idempotency-Key`.
    /// Added after the first release: older metadata decodes without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// JSON Schema every event must satisfy; `None` accepts any event. The storage
    /// layer keeps it as data; the API layer compiles and applies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// Topic that receives events failing `schema` (with the reason in headers)
    /// instead of the request being refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
}

/// A change to a topic's settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfigPatch {
    /// New time retention; `Some(None)` removes it.
    pub retention_ms: Option<Option<u64>>,
    /// New size retention; `Some(None)` removes it.
    pub retention_bytes: Option<Option<u64>>,
    /// New event-id pointer; `Some(None)` removes it.
    pub event_id: Option<Option<String>>,
    /// New JSON Schema; `Some(None)` removes it.
    pub schema: Option<Option<serde_json::Value>>,
    /// New dead-letter topic; `Some(None)` removes it.
    pub dead_letter_topic: Option<Option<String>>,
}

/// What is persisted for a topic in the meta column family.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TopicMeta {
    pub name: String,
    /// Incarnation id: a re-created topic gets new column families.
    pub id: u64,
    pub created_ms: i64,
    pub config: TopicConfig,
}

/// Checks a topic name: `[A-Za-z0-9._-]{1,249}`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let invalid = |reason| Err(StorageError::InvalidTopicName { name: name.to_string(), reason });
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_TOPIC_NAME {
        return invalid("it is longer than 249 characters");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are reserved");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

impl TopicConfig {
    /// `partitions` partitions, no retention, no event id, schema or dead-letter topic.
    pub fn with_partitions(partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            retention_ms: None,
            retention_bytes: None,
            event_id: None,
            schema: None,
            dead_letter_topic: None,
        }
    }

    /// Checks the settings' ranges.
    pub fn validate(&self) -> Result<()> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(StorageError::InvalidConfig(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {}",
                self.partitions
            )));
        }
        if self.retention_ms == Some(0) {
            return Err(StorageError::InvalidConfig("retention_ms must be positive (or null for no limit)".into()));
        }
        if self.retention_bytes == Some(0) {
            return Err(StorageError::InvalidConfig("retention_bytes must be positive (or null for no limit)".into()));
        }
        if let Some(pointer) = &self.event_id
            && !(pointer.starts_with('/') && pointer.len() > 1 && pointer.len() <= 1024)
        {
            return Err(StorageError::InvalidConfig(format!(
                "event_id must be a JSON pointer such as \"/messageId\" (1-1024 bytes, starting with '/'), got {pointer:?}"
            )));
        }
        if let Some(dlq) = &self.dead_letter_topic {
            validate_topic_name(dlq).map_err(|e| StorageError::InvalidConfig(format!("dead_letter_topic: {e}")))?;
            if self.schema.is_none() {
                return Err(StorageError::InvalidConfig(
                    "dead_letter_topic needs a schema: only events failing the schema are dead-lettered".into(),
                ));
            }
        }
        Ok(())
    }

    /// Applies a patch, returning the new settings.
    pub fn patched(&self, patch: &TopicConfigPatch) -> TopicConfig {
        let mut next = self.clone();
        if let Some(v) = patch.retention_ms {
            next.retention_ms = v;
        }
        if let Some(v) = patch.retention_bytes {
            next.retention_bytes = v;
        }
        if let Some(v) = &patch.event_id {
            next.event_id = v.clone();
        }
        if let Some(v) = &patch.schema {
            next.schema = v.clone();
        }
        if let Some(v) = &patch.dead_letter_topic {
            next.dead_letter_topic = v.clone();
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "page_views", "a.b-c_D9", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(250), "a%2f"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_ranges_are_checked() {
        let ok = TopicConfig { partitions: 3, retention_bytes: Some(1), ..TopicConfig::with_partitions(3) };
        ok.validate().unwrap();
        assert!(TopicConfig { partitions: 0, ..ok.clone() }.validate().is_err());
        assert!(TopicConfig { retention_ms: Some(0), ..ok.clone() }.validate().is_err());
        assert!(TopicConfig { event_id: Some("messageId".into()), ..ok.clone() }.validate().is_err());
        TopicConfig { event_id: Some("/messageId".into()), ..ok.clone() }.validate().unwrap();
        let dlq = TopicConfig { dead_letter_topic: Some("dlq".into()), ..ok.clone() };
        assert!(dlq.validate().is_err(), "a dead-letter topic without a schema");
        TopicConfig { schema: Some(serde_json::json!({})), ..dlq }.validate().unwrap();
        let p = TopicConfigPatch {
            retention_ms: Some(Some(5)),
            retention_bytes: Some(None),
            event_id: Some(Some("/eid".into())),
            ..Default::default()
        };
        let n = ok.patched(&p);
        assert_eq!((n.retention_ms, n.retention_bytes, n.event_id.as_deref()), (Some(5), None, Some("/eid")));
    }

    #[test]
    fn metadata_without_the_newer_fields_still_decodes() {
        let old = br#"{"partitions":2,"retention_ms":1000,"retention_bytes":null}"#;
        let c: TopicConfig = serde_json::from_slice(old).unwrap();
        assert_eq!(c, TopicConfig { retention_ms: Some(1000), ..TopicConfig::with_partitions(2) });
        // Unset optional settings are not written, so older readers see the old shape.
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"partitions":2,"retention_ms":1000,"retention_bytes":null}"#
        );
    }
}
