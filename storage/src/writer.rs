//! The single writer thread: group commit of appends, retention truncation and
//! column-family drops, all serialised so offsets are assigned in one place.
//!
//! Guarantees:
//! - Offsets in a partition are dense and increasing: the writer is the only code
//!   that assigns them, and it advances `end` only after RocksDB accepted the write.
//! - An append request is atomic: all its batches (to any partitions) go into one
//!   RocksDB `WriteBatch`, or the request fails and nothing of it is stored.
//! - Acknowledgements (the reply) are sent only after the write met the fsync policy.
//! - Concurrent requests waiting in the queue are gathered into one `WriteBatch` and
//!   one WAL sync (group commit), up to `max_group_commit_bytes`.
//! - An append's remembered event ids (see [`crate::dedup`]) go into the same
//!   `WriteBatch` as its records; its claims end only after the write's outcome is known.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};

use crate::batch::{EncodedBatch, offset_key};
use crate::config::FsyncPolicy;
use crate::dedup::{IdWrites, Remembered, dedup_cf, put_entries, topic_range};
use crate::disk::DiskGuard;
use crate::error::{Result, StorageError};
use crate::partition::{AppendSignal, PartitionLog, state_key};
use crate::store::{Db, META_CF};

/// Work for the writer thread.
pub(crate) enum WriterCmd {
    /// Append batches atomically (with their event ids' dedup entries); reply with
    /// each batch's base offset, in order.
    Append { batches: AppendBatches, ids: Option<IdWrites>, reply: AppendReply },
    /// Move a partition's start offset forward and delete the batches below it.
    Truncate { part: Arc<PartitionLog>, new_start: u64, removed_bytes: u64, reply: oneshot::Sender<Result<()>> },
    /// Mark a deleted topic's partitions deleted (no append after this one writes to
    /// them) and delete its remembered ids; its column families are dropped after the
    /// reply, off this thread.
    Forget { topic_id: u64, parts: Vec<Arc<PartitionLog>>, reply: oneshot::Sender<Result<()>> },
    /// Finish everything queued before this, sync the WAL and stop.
    Shutdown { reply: oneshot::Sender<Result<()>> },
}

impl WriterCmd {
    fn size(&self) -> usize {
        match self {
            WriterCmd::Append { batches, .. } => batches.iter().map(|(_, b)| b.len()).sum(),
            _ => 0,
        }
    }
}

/// Batches of one append request, each with its partition.
type AppendBatches = Vec<(Arc<PartitionLog>, EncodedBatch)>;
/// Where an append's base offsets (or its error) go (dropped unheard with `acks=none`).
type AppendReply = oneshot::Sender<Result<Vec<u64>>>;

/// Tentative state of a partition within one group commit.
struct Pending {
    part: Arc<PartitionLog>,
    end: u64,
    bytes: u64,
    running_max_ts: i64,
}

pub(crate) struct Writer {
    pub db: Arc<Db>,
    pub fsync: FsyncPolicy,
    pub max_group_commit_bytes: usize,
    pub health: Arc<WriteHealth>,
    pub disk: Arc<DiskGuard>,
}

/// Whether writes to RocksDB are failing: set by a failed group commit or interval WAL
/// sync, cleared by the next successful commit. What readiness reports.
#[derive(Debug, Default)]
pub(crate) struct WriteHealth {
    failing: std::sync::atomic::AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
}

impl WriteHealth {
    /// Records a failed write (or sync) with its error.
    pub(crate) fn failed(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_string());
        self.failing.store(true, Ordering::Release);
    }

    /// Records a successful commit (one atomic load when nothing had failed).
    pub(crate) fn succeeded(&self) {
        if self.failing.load(Ordering::Acquire) {
            self.failing.store(false, Ordering::Release);
        }
    }

    /// Passes a write's (or column-family change's) outcome through: a success clears the
    /// failure, an I/O error or corruption records it (as a failed group commit does) and
    /// counts in `tidegate_storage_write_errors_total`. Other errors (an invalid argument)
    /// say nothing about the disk and change nothing.
    pub(crate) fn observe<T>(
        &self,
        what: &str,
        result: std::result::Result<T, rocksdb::Error>,
    ) -> std::result::Result<T, rocksdb::Error> {
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) if matches!(e.kind(), rocksdb::ErrorKind::IOError | rocksdb::ErrorKind::Corruption) => {
                tracing::error!(error = %e, "{what} failed");
                metrics::counter!("tidegate_storage_write_errors_total").increment(1);
                self.failed(&format!("{what}: {e}"));
            }
            Err(_) => {}
        }
        result
    }

    /// The error of the last write when it failed and none has succeeded since.
    pub(crate) fn failure(&self) -> Option<String> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// One request of a group commit, accepted into the `WriteBatch`.
struct Accepted {
    bases: Vec<u64>,
    ids: Option<(IdWrites, Vec<(usize, Remembered)>)>,
    reply: AppendReply,
}

impl Writer {
    /// Runs until a `Shutdown` command or until every sender is gone.
    pub fn run(self, mut rx: mpsc::Receiver<WriterCmd>) {
        while let Some(first) = rx.blocking_recv() {
            let mut size = first.size();
            let mut appends = Vec::new();
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    WriterCmd::Append { batches, ids, reply } => appends.push((batches, ids, reply)),
                    other => {
                        // Keep order: flush the appends gathered so far first.
                        self.commit(std::mem::take(&mut appends));
                        if self.control(other) {
                            return;
                        }
                    }
                }
                if size < self.max_group_commit_bytes
                    && let Ok(cmd) = rx.try_recv()
                {
                    size += cmd.size();
                    next = Some(cmd);
                }
            }
            self.commit(appends);
        }
        let _ = self.sync();
    }

    fn sync(&self) -> Result<()> {
        if self.fsync != FsyncPolicy::Never {
            self.db.flush_wal(true)?;
        }
        Ok(())
    }

    /// Handles a non-append command; returns true when the writer must stop.
    fn control(&self, cmd: WriterCmd) -> bool {
        match cmd {
            WriterCmd::Append { .. } => unreachable!("appends are gathered by run"),
            WriterCmd::Truncate { part, new_start, removed_bytes, reply } => {
                let _ = reply.send(self.truncate(&part, new_start, removed_bytes));
                false
            }
            WriterCmd::Forget { topic_id, parts, reply } => {
                for part in &parts {
                    part.deleted.store(true, Ordering::Release);
                }
                let result = self.forget_topic(topic_id, &parts);
                for part in &parts {
                    // Wake long-polls so they notice the deletion.
                    part.hw.send_modify(|_| {});
                }
                // The partitions share one signal: subscriptions notice the deletion.
                if let Some(part) = parts.first() {
                    part.appends.fire();
                }
                let _ = reply.send(result);
                false
            }
            WriterCmd::Shutdown { reply } => {
                let _ = reply.send(self.sync().and_then(|()| self.flush_on_stop()));
                true
            }
        }
    }

    /// Flushes the default and `dedup` column families' memtables on a clean stop, so
    /// the next start replays less of the WAL and finds remembered ids in table files.
    fn flush_on_stop(&self) -> Result<()> {
        self.db.flush()?;
        self.db.flush_cf(&dedup_cf(&self.db)?)?;
        Ok(())
    }

    /// Deletes a topic incarnation's remembered ids and its partitions' persisted state
    /// from disk, in one write, after its partitions are marked deleted (so no later
    /// append can add either again: an append queued between the topic's metadata
    /// deletion and this command wrote a state key that goes here). Cached ids age out:
    /// no later lookup can match them.
    fn forget_topic(&self, topic_id: u64, parts: &[Arc<PartitionLog>]) -> Result<()> {
        let cf = dedup_cf(&self.db)?;
        let meta = self.db.cf_handle(META_CF).ok_or_else(|| StorageError::Internal("meta cf missing".into()))?;
        let (from, to) = topic_range(topic_id);
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(&cf, from, to);
        for part in parts {
            wb.delete_cf(&meta, state_key(&part.cf));
        }
        self.health.observe("forgetting a deleted topic", self.db.write_opt(wb, &self.write_options()))?;
        Ok(())
    }

    fn truncate(&self, part: &PartitionLog, new_start: u64, removed_bytes: u64) -> Result<()> {
        let start = part.start.load(Ordering::Acquire);
        let hw = *part.hw.borrow();
        if part.is_deleted() || new_start <= start {
            return Ok(());
        }
        if new_start > hw {
            return Err(StorageError::Internal(format!("retention cut {new_start} above high watermark {hw}")));
        }
        let cf = self.db.cf_handle(&part.cf).ok_or_else(|| StorageError::TopicDeleted(part.topic.clone()))?;
        let meta = self.db.cf_handle(META_CF).ok_or_else(|| StorageError::Internal("meta cf missing".into()))?;
        let bytes = part.bytes.load(Ordering::Acquire).saturating_sub(removed_bytes);
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(&cf, offset_key(0), offset_key(new_start));
        wb.put_cf(&meta, state_key(&part.cf), PartitionLog::encode_state(new_start, bytes));
        // The start moves before the records go: a read that finds them missing then also
        // finds the new start and reports the gap (moved after, a read in between
        // returned the records past the cut as if they came right at its offset). The
        // size moves with it, so no one sees the new start with the old size.
        let old_bytes = part.bytes.load(Ordering::Acquire);
        part.start.store(new_start, Ordering::Release);
        part.bytes.store(bytes, Ordering::Release);
        if let Err(e) = self.health.observe("retention", self.db.write_opt(wb, &self.write_options())) {
            part.bytes.store(old_bytes, Ordering::Release);
            part.start.store(start, Ordering::Release);
            return Err(e.into());
        }
        Ok(())
    }

    fn write_options(&self) -> WriteOptions {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.fsync == FsyncPolicy::Always);
        opts
    }

    /// Writes the gathered appends as one `WriteBatch` and answers each request.
    fn commit(&self, appends: Vec<(AppendBatches, Option<IdWrites>, AppendReply)>) {
        if appends.is_empty() {
            return;
        }
        let (Some(meta), Ok(dedup)) = (self.db.cf_handle(META_CF), dedup_cf(&self.db)) else {
            for (_, _, reply) in appends {
                reply_to(reply, Err(StorageError::Internal("meta or dedup cf missing".into())));
            }
            return;
        };
        // Free space above the floor: each request takes its share in turn, and one
        // that does not fit is refused alone (see `crate::disk`).
        let mut room = self.disk.room();
        let free = room.map(|(free, _)| free);
        let mut short = false;
        let now = crate::store::now_ms();
        let mut wb = WriteBatch::default();
        let mut pending: HashMap<*const PartitionLog, Pending> = HashMap::new();
        let mut accepted = Vec::with_capacity(appends.len());
        let mut events = 0u64;
        for (batches, ids, reply) in appends {
            if let Some((free, left)) = room.as_mut() {
                let bytes: u64 = batches.iter().map(|(_, b)| b.bytes.len() as u64).sum();
                if bytes > *left {
                    // Dropping the claims releases them: nothing of it was stored.
                    short = true;
                    reply_to(reply, Err(self.disk.refusal(*free)));
                    continue;
                }
                *left -= bytes;
            }
            // Check the whole request before adding any of it: it is all or nothing.
            let mut cfs = Vec::with_capacity(batches.len());
            let mut refused = None;
            for (part, _) in &batches {
                match self.db.cf_handle(&part.cf) {
                    Some(cf) if !part.is_deleted() => cfs.push(cf),
                    _ => {
                        refused = Some(StorageError::TopicDeleted(part.topic.clone()));
                        break;
                    }
                }
            }
            if let Some(err) = refused {
                reply_to(reply, Err(err));
                continue;
            }
            let mut bases = Vec::with_capacity(batches.len());
            let mut places = Vec::with_capacity(batches.len());
            for ((part, mut batch), cf) in batches.into_iter().zip(cfs) {
                let p = pending.entry(Arc::as_ptr(&part)).or_insert_with(|| Pending {
                    end: part.end.load(Ordering::Acquire),
                    bytes: part.bytes.load(Ordering::Acquire),
                    running_max_ts: part.running_max_ts.load(Ordering::Acquire),
                    part: part.clone(),
                });
                p.running_max_ts = p.running_max_ts.max(batch.max_ts);
                batch.set_running_max_ts(p.running_max_ts);
                wb.put_cf(&cf, offset_key(p.end), &batch.bytes);
                bases.push(p.end);
                places.push((part.index, p.end));
                p.end += u64::from(batch.count);
                p.bytes += batch.bytes.len() as u64;
                events += u64::from(batch.count);
            }
            let ids = ids.map(|ids| {
                let remembered = put_entries(&mut wb, &dedup, &ids, &places, now);
                (ids, remembered)
            });
            accepted.push(Accepted { bases, ids, reply });
        }
        if let Some(free) = free {
            self.disk.verdict(free, short);
        }
        if accepted.is_empty() {
            return;
        }
        for p in pending.values() {
            let start = p.part.start.load(Ordering::Acquire);
            wb.put_cf(&meta, state_key(&p.part.cf), PartitionLog::encode_state(start, p.bytes));
        }
        let began = Instant::now();
        let written = self.db.write_opt(wb, &self.write_options());
        metrics::histogram!("tidegate_storage_write_seconds").record(began.elapsed().as_secs_f64());
        metrics::histogram!("tidegate_storage_group_commit_requests").record(accepted.len() as f64);
        match written {
            Ok(()) => {
                self.health.succeeded();
                metrics::counter!("tidegate_storage_records_written_total").increment(events);
                // Topics touched by this commit (usually one): their append signals
                // fire once, after every high watermark of the commit has moved.
                let mut signals: Vec<&Arc<AppendSignal>> = Vec::new();
                for p in pending.values() {
                    p.part.end.store(p.end, Ordering::Release);
                    p.part.bytes.store(p.bytes, Ordering::Release);
                    p.part.running_max_ts.store(p.running_max_ts, Ordering::Release);
                    // One node: everything durable is committed. Replication will
                    // move this to the in-sync replicas' minimum instead.
                    p.part.hw.send_replace(p.end);
                    if !signals.iter().any(|s| Arc::ptr_eq(s, &p.part.appends)) {
                        signals.push(&p.part.appends);
                    }
                }
                for signal in signals {
                    signal.fire();
                }
                for Accepted { bases, ids, reply } in accepted {
                    if let Some((mut ids, remembered)) = ids {
                        ids.claims.complete(&remembered);
                    }
                    reply_to(reply, Ok(bases));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = accepted.len(), "group commit failed");
                metrics::counter!("tidegate_storage_write_errors_total").increment(1);
                let msg = e.to_string();
                self.health.failed(&msg);
                // Dropping the claims releases them: nothing of these requests was stored.
                for Accepted { reply, .. } in accepted {
                    reply_to(reply, Err(StorageError::Internal(format!("write failed: {msg}"))));
                }
            }
        }
    }
}

fn reply_to(reply: AppendReply, result: Result<Vec<u64>>) {
    let _ = reply.send(result);
}
