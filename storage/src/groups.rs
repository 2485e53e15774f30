//! Committed consumer-group offsets, in the `groups` column family.
//!
//! Key: `{group}\0{topic}\0` + partition (big-endian u32); value: offset (u64) and
//! commit time (i64), big-endian. The committed offset is the next offset the group
//! will read (Kafka's convention). Commits are synced to disk before they return, so
//! an acknowledged commit survives a crash.

use std::sync::Arc;

use crate::error::{Result, StorageError};
use crate::partition::PartitionLog;
use crate::store::{Store, now_ms};

pub(crate) const GROUPS_CF: &str = "groups";
/// Longest group name.
pub const MAX_GROUP_NAME: usize = 249;

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Next offset the group will read.
    pub offset: u64,
    /// When it was committed, ms since the epoch.
    pub committed_ms: i64,
}

/// Checks a group name: same alphabet as topic names.
pub fn validate_group_name(name: &str) -> Result<()> {
    crate::topic::validate_topic_name(name).map_err(|_| StorageError::InvalidGroupName(name.to_string()))
}

fn group_prefix(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + 1);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k
}

fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = group_prefix(group);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn decode(key: &[u8], value: &[u8]) -> Option<(String, CommittedOffset)> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let group = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let topic = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let partition = u32::from_be_bytes(parts.next()?.try_into().ok()?);
    let offset = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let committed_ms = i64::from_be_bytes(value.get(8..16)?.try_into().ok()?);
    Some((group, CommittedOffset { topic, partition, offset, committed_ms }))
}

impl Store {
    fn groups_cf(&self) -> Result<std::sync::Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.inner.db.cf_handle(GROUPS_CF).ok_or_else(|| StorageError::Internal("groups column family missing".into()))
    }

    /// Stores committed offsets for a group atomically and durably (synced), each for the
    /// partition log it was read from. Refused when a log's topic no longer exists
    /// (`TopicNotFound`) or is another incarnation under the same name (`TopicDeleted`:
    /// the topic was deleted and created again). Checked under the offsets guard, so no
    /// commit lands after its topic's deletion removed the topic's offsets, and a
    /// position in a deleted topic never becomes one in its successor.
    pub async fn commit_offsets(&self, group: &str, offsets: Vec<(Arc<PartitionLog>, u64)>) -> Result<()> {
        validate_group_name(group)?;
        let group = group.to_string();
        self.blocking(move |s| {
            let _offsets = s.inner.offsets_guard.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (log, _) in &offsets {
                let live = s.topic(&log.topic)?.partition(log.index)?;
                if !Arc::ptr_eq(&live, log) {
                    return Err(StorageError::TopicDeleted(log.topic.clone()));
                }
            }
            let cf = s.groups_cf()?;
            let now = now_ms();
            let mut wb = rocksdb::WriteBatch::default();
            for (log, offset) in &offsets {
                let mut v = [0u8; 16];
                v[..8].copy_from_slice(&offset.to_be_bytes());
                v[8..].copy_from_slice(&now.to_be_bytes());
                wb.put_cf(&cf, offset_key(&group, &log.topic, log.index), v);
            }
            s.write_meta(wb)?;
            Ok(())
        })
        .await
    }

    /// Every committed offset of a group, ordered by topic and partition.
    pub async fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>> {
        let group = group.to_string();
        self.blocking(move |s| {
            let cf = s.groups_cf()?;
            let prefix = group_prefix(&group);
            let mut out = Vec::new();
            for item in s.inner.db.prefix_iterator_cf(&cf, &prefix) {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                if let Some((_, c)) = decode(&k, &v) {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Names of every group with committed offsets, sorted.
    pub async fn group_names(&self) -> Result<Vec<String>> {
        self.blocking(|s| {
            let cf = s.groups_cf()?;
            let mut names: Vec<String> = Vec::new();
            for item in s.inner.db.iterator_cf(&cf, rocksdb::IteratorMode::Start) {
                let (k, v) = item?;
                if let Some((g, _)) = decode(&k, &v)
                    && names.last() != Some(&g)
                {
                    names.push(g);
                }
            }
            Ok(names)
        })
        .await
    }

    /// Adds to `wb` the deletion of every group's committed offsets for `topic` (for the
    /// topic's deletion: a topic re-created under the same name starts with none).
    pub(crate) fn forget_topic_offsets(&self, wb: &mut rocksdb::WriteBatch, topic: &str) -> Result<()> {
        let cf = self.groups_cf()?;
        for item in self.inner.db.iterator_cf(&cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            if decode(&k, &v).is_some_and(|(_, c)| c.topic == topic) {
                wb.delete_cf(&cf, k);
            }
        }
        Ok(())
    }

    /// Deletes every committed offset of a group (durably).
    pub async fn delete_group_offsets(&self, group: &str) -> Result<()> {
        let group = group.to_string();
        self.blocking(move |s| {
            let cf = s.groups_cf()?;
            let from = group_prefix(&group);
            let mut to = group.as_bytes().to_vec();
            to.push(1);
            let mut wb = rocksdb::WriteBatch::default();
            wb.delete_range_cf(&cf, from, to);
            s.write_meta(wb)?;
            Ok(())
        })
        .await
    }
}
