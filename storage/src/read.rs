//! Reading the log: ranged reads, long-poll fetches and offset lookup by timestamp.
//!
//! Readers only ever see records below the high watermark. A read at offset X seeks
//! to the batch holding X (`seek_for_prev` on the big-endian base offset) and walks
//! forward.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::batch::{Record, decode_into, key_offset, offset_key, read_header};
use crate::error::{Result, StorageError};
use crate::partition::PartitionLog;
use crate::store::Store;

/// Records read from one partition.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Records in offset order, starting at the requested offset.
    pub records: Vec<Record>,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// Partition's high watermark at the time of the read.
    pub high_watermark: u64,
    /// Partition's log start offset at the time of the read.
    pub log_start_offset: u64,
}

/// Limits of one read.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// At most this many records.
    pub max_records: usize,
    /// Stop once keys and values add up to this many bytes (at least one record is
    /// always returned, as in Kafka, so a large record cannot block a reader).
    pub max_bytes: usize,
}

/// Result of a timestamp lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    /// First offset whose record timestamp is at or after the asked time, or the
    /// high watermark when no such record exists yet.
    pub offset: u64,
    /// That record's timestamp (`None` when `offset` is the high watermark).
    pub timestamp: Option<i64>,
}

impl Store {
    /// Reads from `offset` (which must be within `[log_start, high_watermark]`).
    /// Blocking: call from a blocking thread, or use [`Store::fetch`].
    pub fn read_blocking(&self, part: &PartitionLog, offset: u64, limits: ReadLimits) -> Result<ReadResult> {
        let start = part.start_offset();
        let hw = part.high_watermark();
        if part.is_deleted() {
            return Err(StorageError::TopicDeleted(part.topic.clone()));
        }
        if offset < start || offset > hw {
            return Err(out_of_range(part, offset, start, hw));
        }
        let mut records = Vec::new();
        if offset < hw && limits.max_records > 0 {
            let db = &self.inner.db;
            let cf = db.cf_handle(&part.cf).ok_or_else(|| StorageError::TopicDeleted(part.topic.clone()))?;
            let mut it = db.raw_iterator_cf(&cf);
            it.seek_for_prev(offset_key(offset));
            if !it.valid() {
                it.seek(offset_key(offset));
            }
            let mut size = 0usize;
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let base = key_offset(k, &part.cf)?;
                if base >= hw || records.len() >= limits.max_records || size >= limits.max_bytes {
                    break;
                }
                let value = Bytes::copy_from_slice(v);
                let before = records.len();
                decode_into(base, &value, offset, hw, limits.max_records, &mut records)
                    .map_err(|reason| StorageError::Corrupt { cf: part.cf.clone(), offset: base, reason })?;
                // Trim to the byte budget, keeping at least one record overall.
                let mut keep = records.len();
                for (i, r) in records.iter().enumerate().skip(before) {
                    let len = r.value.len() + r.key.as_ref().map_or(0, |k| k.len());
                    if size + len > limits.max_bytes && i > 0 {
                        keep = i;
                        break;
                    }
                    size += len;
                }
                if keep < records.len() {
                    records.truncate(keep);
                    size = limits.max_bytes;
                }
                it.next();
            }
            it.status()?;
            if records.first().is_some_and(|r| r.offset != offset) || (records.is_empty() && offset < hw) {
                // Retention removed the batch under us.
                let start = part.start_offset();
                if offset < start {
                    return Err(out_of_range(part, offset, start, hw));
                }
            }
        }
        let next_offset = records.last().map_or(offset, |r| r.offset + 1);
        Ok(ReadResult { records, next_offset, high_watermark: hw, log_start_offset: part.start_offset() })
    }

    /// Long-poll read: waits up to `wait` for records at `offset` to be committed,
    /// then reads. Returns an empty result when the wait ends (or shutdown begins)
    /// before any arrive. Never polls: it sleeps on the high-watermark notifier.
    pub async fn fetch(
        &self,
        part: Arc<PartitionLog>,
        offset: u64,
        limits: ReadLimits,
        wait: Duration,
    ) -> Result<ReadResult> {
        let deadline = Instant::now() + wait;
        let mut hw_rx = part.watch_high_watermark();
        let mut closing = self.closing();
        loop {
            let hw = *hw_rx.borrow_and_update();
            if part.is_deleted() {
                return Err(StorageError::TopicDeleted(part.topic.clone()));
            }
            if offset != hw || wait.is_zero() || Instant::now() >= deadline || *closing.borrow() {
                break;
            }
            tokio::select! {
                changed = hw_rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = closing.changed() => break,
            }
        }
        let store = self.clone();
        self.blocking(move |_| store.read_blocking(&part, offset, limits)).await
    }

    /// First offset whose timestamp is at or after `timestamp_ms`. Uses the batches'
    /// running maximum timestamp for a binary search (O(log n) seeks), then scans
    /// one batch.
    pub async fn offset_for_timestamp(&self, part: Arc<PartitionLog>, timestamp_ms: i64) -> Result<TimestampOffset> {
        self.blocking(move |s| s.offset_for_timestamp_blocking(&part, timestamp_ms)).await
    }

    fn offset_for_timestamp_blocking(&self, part: &PartitionLog, ts: i64) -> Result<TimestampOffset> {
        let db = &self.inner.db;
        let cf = db.cf_handle(&part.cf).ok_or_else(|| StorageError::TopicDeleted(part.topic.clone()))?;
        let hw = part.high_watermark();
        let (mut lo, mut hi) = (part.start_offset(), hw);
        let mut candidate = None;
        let mut it = db.raw_iterator_cf(&cf);
        let corrupt = |offset, reason| StorageError::Corrupt { cf: part.cf.clone(), offset, reason };
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            it.seek_for_prev(offset_key(mid));
            if !it.valid() {
                it.seek(offset_key(mid));
            }
            let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
            let base = key_offset(k, &part.cf)?;
            let header = read_header(v).map_err(|r| corrupt(base, r))?;
            if header.running_max_ts >= ts {
                candidate = Some(base);
                hi = base;
            } else {
                lo = base + u64::from(header.count);
            }
        }
        it.status()?;
        if let Some(base) = candidate {
            it.seek(offset_key(base));
            let mut records = Vec::new();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let base = key_offset(k, &part.cf)?;
                if base >= hw {
                    break;
                }
                records.clear();
                let value = Bytes::copy_from_slice(v);
                decode_into(base, &value, 0, hw, usize::MAX, &mut records).map_err(|r| corrupt(base, r))?;
                if let Some(r) = records.iter().find(|r| r.timestamp >= ts) {
                    return Ok(TimestampOffset { offset: r.offset, timestamp: Some(r.timestamp) });
                }
                it.next();
            }
        }
        Ok(TimestampOffset { offset: hw, timestamp: None })
    }
}

fn out_of_range(part: &PartitionLog, offset: u64, start: u64, end: u64) -> StorageError {
    StorageError::OffsetOutOfRange { topic: part.topic.clone(), partition: part.index, offset, start, end }
}
