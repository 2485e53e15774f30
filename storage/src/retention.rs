//! Background upkeep: retention by time and size, the WAL sync for `fsync = interval`
//! (on a thread of its own), and the expiry of remembered event ids (a compaction of
//! the `dedup` column family through its expiry filter every `dedup_expiry_interval`).
//!
//! Retention deletes whole batches from the start of a partition: a batch goes when
//! its newest record is older than `retention_ms`, or while the partition is larger
//! than `retention_bytes` and the batch is not the newest one (as Kafka keeps the
//! active segment). It never deletes at or above the high watermark. The cut
//! itself (range delete plus the new start offset) is made by the writer thread, so
//! it is atomic and ordered with appends.

use std::sync::Weak;
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::{key_offset, offset_key, read_header};
use crate::config::{FsyncPolicy, StoreConfig};
use crate::error::{Result, StorageError};
use crate::partition::PartitionLog;
use crate::store::{Inner, Store, now_ms};

/// The background threads and what stops them (dropping the senders).
pub(crate) struct Background {
    pub threads: Vec<JoinHandle<()>>,
    pub stops: Vec<Sender<()>>,
}

impl Background {
    /// Runs `work` with the store every `period` on a thread named `name`, until its
    /// sender is dropped or the store is gone (the thread holds only a weak reference).
    fn every(
        &mut self,
        name: &str,
        period: Duration,
        store: Weak<Inner>,
        mut work: impl FnMut(&Store) + Send + 'static,
    ) -> Result<()> {
        let (stop_tx, stop) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(period) {
                    let Some(inner) = store.upgrade() else { return };
                    work(&Store { inner });
                }
            })
            .map_err(|e| StorageError::Internal(format!("spawn thread {name}: {e}")))?;
        self.threads.push(thread);
        self.stops.push(stop_tx);
        Ok(())
    }
}

/// Starts the upkeep thread (retention, expiry of remembered ids) and, for
/// `fsync = interval`, the WAL sync thread. The sync has a thread of its own so a long
/// retention pass or dedup compaction never stretches the window of unsynced writes
/// past `fsync_interval`.
pub(crate) fn spawn(store: Weak<Inner>, config: &StoreConfig) -> Result<Background> {
    let (retention_every, dedup_every) = (config.retention_check_interval, config.dedup_expiry_interval);
    let mut background = Background { threads: Vec::new(), stops: Vec::new() };
    let (mut last_retention, mut last_dedup_expiry) = (Instant::now(), Instant::now());
    background.every("tidegate-upkeep", retention_every.min(dedup_every), store.clone(), move |store| {
        if last_retention.elapsed() >= retention_every {
            last_retention = Instant::now();
            store.apply_retention_all();
        }
        if last_dedup_expiry.elapsed() >= dedup_every {
            last_dedup_expiry = Instant::now();
            if let Err(e) = store.expire_dedup_blocking() {
                tracing::warn!(error = %e, "expiring remembered event ids failed");
            }
        }
    })?;
    if config.min_free_disk_bytes > 0 {
        background.every("tidegate-disk", Duration::from_secs(1), store.clone(), Store::relieve_disk)?;
    }
    if config.fsync == FsyncPolicy::Interval {
        background.every("tidegate-wal-sync", config.fsync_interval, store, |store| {
            let began = Instant::now();
            if let Err(e) = store.inner.db.flush_wal(true) {
                tracing::error!(error = %e, "interval WAL sync failed");
                store.inner.health.failed(&format!("interval WAL sync: {e}"));
            }
            metrics::histogram!("tidegate_storage_fsync_seconds").record(began.elapsed().as_secs_f64());
        })?;
    }
    Ok(background)
}

impl Store {
    /// Applies every topic's retention now (the background thread calls this on its
    /// period). Blocking. Returns the number of records deleted.
    pub fn apply_retention_all(&self) -> u64 {
        let mut deleted = 0;
        for topic in self.topics() {
            let config = topic.config();
            if config.retention_ms.is_none() && config.retention_bytes.is_none() {
                continue;
            }
            for part in topic.partitions() {
                match self.apply_retention(&part, config.retention_ms, config.retention_bytes) {
                    Ok(n) => deleted += n,
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, partition = part.index, error = %e, "retention failed")
                    }
                }
            }
        }
        if deleted > 0 {
            metrics::counter!("tidegate_retention_deleted_records_total").increment(deleted);
        }
        deleted
    }

    /// Async form of [`Store::apply_retention_all`].
    pub async fn apply_retention_now(&self) -> Result<u64> {
        self.blocking(|s| Ok(s.apply_retention_all())).await
    }

    fn apply_retention(
        &self,
        part: &std::sync::Arc<PartitionLog>,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> Result<u64> {
        let db = &self.inner.db;
        let Some(cf) = db.cf_handle(&part.cf) else { return Ok(0) };
        let start = part.start_offset();
        let hw = part.high_watermark();
        let stats = part.stats();
        let cutoff = retention_ms.map(|ms| now_ms().saturating_sub(ms.min(i64::MAX as u64) as i64));
        let mut remaining = stats.bytes;
        let mut cut = start;
        let mut removed = 0u64;
        let mut it = db.raw_iterator_cf(&cf);
        it.seek(offset_key(start));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let base = key_offset(k, &part.cf)?;
            let header =
                read_header(v).map_err(|reason| StorageError::Corrupt { cf: part.cf.clone(), offset: base, reason })?;
            let next = base + u64::from(header.count);
            if next > hw {
                break;
            }
            let expired = cutoff.is_some_and(|c| header.max_ts < c);
            // Size retention keeps the newest batch, however large (as Kafka keeps the
            // active segment): a request larger than the limit stays readable.
            let oversize = retention_bytes.is_some_and(|limit| remaining > limit) && next < hw;
            if !expired && !oversize {
                break;
            }
            remaining = remaining.saturating_sub(v.len() as u64);
            removed += v.len() as u64;
            cut = next;
            it.next();
        }
        it.status()?;
        drop(it);
        if cut <= start {
            return Ok(0);
        }
        self.truncate_blocking(part.clone(), cut, removed)?;
        // Reclaim the space of the deleted range now rather than at some later compaction.
        db.compact_range_cf(&cf, None::<&[u8]>, Some(&offset_key(cut)[..]));
        tracing::debug!(topic = %part.topic, partition = part.index, from = start, to = cut, "retention deleted records");
        Ok(cut - start)
    }
}
