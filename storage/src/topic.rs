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
}

/// A change to a topic's settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfigPatch {
    /// New time retention; `Some(None)` removes it.
    pub retention_ms: Option<Option<u64>>,
    /// New size retention; `Some(None)` removes it.
    pub retention_bytes: Option<Option<u64>>,
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
        let ok = TopicConfig { partitions: 3, retention_ms: None, retention_bytes: Some(1) };
        ok.validate().unwrap();
        assert!(TopicConfig { partitions: 0, ..ok.clone() }.validate().is_err());
        assert!(TopicConfig { retention_ms: Some(0), ..ok.clone() }.validate().is_err());
        let p = TopicConfigPatch { retention_ms: Some(Some(5)), retention_bytes: Some(None) };
        let n = ok.patched(&p);
        assert_eq!((n.retention_ms, n.retention_bytes), (Some(5), None));
    }
}
