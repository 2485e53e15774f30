//! Live state of one partition: offsets, size and the high-watermark notifier.
//!
//! Invariants: `start <= high_watermark <= end`. `end` and `bytes` change only on
//! the writer thread (appends and retention); readers load them atomically. On a
//! single node the writer moves the high watermark to `end` once the group commit
//! meets the fsync policy, so readers never see data that was not acknowledged-able.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

use tokio::sync::watch;

/// Where a partition's log stands when it is opened (recovered or new).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub start: u64,
    pub end: u64,
    pub bytes: u64,
    pub running_max_ts: i64,
}

impl Bounds {
    /// A new, empty partition.
    pub const EMPTY: Bounds = Bounds { start: 0, end: 0, bytes: 0, running_max_ts: i64::MIN };
}

/// A topic's append signal, shared by its partitions: a counter that [`AppendSignal::fire`]
/// moves and whose receivers wake on every move. Fired by the writer (once per commit
/// that touched the topic, after its high watermarks moved; on deletion) and by
/// [`crate::Store::begin_shutdown`].
#[derive(Debug)]
pub(crate) struct AppendSignal(watch::Sender<u64>);

impl AppendSignal {
    pub(crate) fn new() -> Arc<AppendSignal> {
        Arc::new(AppendSignal(watch::Sender::new(0)))
    }

    /// Wakes every receiver.
    pub(crate) fn fire(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// One partition's log state. Shared by the writer, readers and retention.
#[derive(Debug)]
pub struct PartitionLog {
    /// Topic name (for errors and metrics).
    pub topic: String,
    /// Partition index within the topic.
    pub index: u32,
    /// Column family holding this partition's batches.
    pub(crate) cf: String,
    /// See [`PartitionLog::incarnation`] (read from `cf` once).
    incarnation: u64,
    pub(crate) start: AtomicU64,
    pub(crate) end: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) running_max_ts: AtomicI64,
    pub(crate) leader_epoch: AtomicU32,
    pub(crate) deleted: AtomicBool,
    /// High watermark: readers see offsets below it; changes wake long-polls.
    pub(crate) hw: watch::Sender<u64>,
    /// The topic's append signal, shared by all its partitions.
    pub(crate) appends: Arc<AppendSignal>,
}

/// A snapshot of a partition's offsets and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStats {
    /// Partition index.
    pub partition: u32,
    /// First offset still stored (moves forward with retention).
    pub start_offset: u64,
    /// Next offset to be written.
    pub end_offset: u64,
    /// Offsets below this are readable (equals `end_offset` on one node).
    pub high_watermark: u64,
    /// Bytes of stored batches (the size retention measures).
    pub bytes: u64,
    /// Leader epoch stamped on new batches.
    pub leader_epoch: u32,
}

impl PartitionLog {
    pub(crate) fn new(topic: &str, index: u32, cf: String, bounds: Bounds, appends: Arc<AppendSignal>) -> Self {
        let Bounds { start, end, bytes, running_max_ts } = bounds;
        debug_assert!(start <= end);
        // `p/{topic}/{incarnation}/{partition}`; topic names hold no '/'.
        let incarnation = cf.rsplit('/').nth(1).and_then(|id| id.parse().ok()).unwrap_or(0);
        Self {
            topic: topic.to_string(),
            index,
            cf,
            incarnation,
            start: AtomicU64::new(start),
            end: AtomicU64::new(end),
            bytes: AtomicU64::new(bytes),
            running_max_ts: AtomicI64::new(running_max_ts),
            leader_epoch: AtomicU32::new(0),
            deleted: AtomicBool::new(false),
            hw: watch::Sender::new(end),
            appends,
        }
    }

    /// Identity of this partition's storage, unique per topic incarnation (a deleted
    /// and re-created topic gets new ids).
    pub fn storage_id(&self) -> &str {
        &self.cf
    }

    /// The incarnation of the partition's topic: different for a topic deleted and
    /// created again under the same name, so a position saved in one can be told from a
    /// position in the other.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// First stored offset.
    pub fn start_offset(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }
    /// Next offset to be written.
    pub fn end_offset(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }
    /// Offsets below this are visible to readers.
    pub fn high_watermark(&self) -> u64 {
        *self.hw.borrow()
    }
    /// Whether the partition's topic has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// A receiver that changes whenever the high watermark moves (or the topic goes).
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.hw.subscribe()
    }

    /// A receiver that changes once per group commit that appended to any partition
    /// of this partition's topic (after all of that commit's high watermarks moved),
    /// when the topic is deleted, and when the store begins shutting down. One wait
    /// covers a whole topic: a subscriber of N partitions wakes once per commit instead
    /// of up to N times.
    pub fn watch_topic_appends(&self) -> watch::Receiver<u64> {
        self.appends.0.subscribe()
    }

    /// Whether `other` belongs to the same topic incarnation (shares its append signal).
    pub fn same_topic(&self, other: &PartitionLog) -> bool {
        Arc::ptr_eq(&self.appends, &other.appends)
    }

    /// Current offsets and size.
    pub fn stats(&self) -> PartitionStats {
        PartitionStats {
            partition: self.index,
            start_offset: self.start_offset(),
            end_offset: self.end_offset(),
            high_watermark: self.high_watermark(),
            bytes: self.bytes.load(Ordering::Acquire),
            leader_epoch: self.leader_epoch.load(Ordering::Acquire),
        }
    }

    /// Persisted part of the state: start offset and byte count (16 bytes).
    pub(crate) fn encode_state(start: u64, bytes: u64) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&start.to_be_bytes());
        out[8..].copy_from_slice(&bytes.to_be_bytes());
        out
    }

    pub(crate) fn decode_state(raw: &[u8]) -> Option<(u64, u64)> {
        let raw: &[u8; 16] = raw.try_into().ok()?;
        let start = u64::from_be_bytes(raw[..8].try_into().ok()?);
        let bytes = u64::from_be_bytes(raw[8..].try_into().ok()?);
        Some((start, bytes))
    }
}

/// Prefix of the meta-CF keys that hold partitions' persisted state.
pub(crate) const STATE_PREFIX: &str = "pstate/";

/// Meta-CF key of a partition's persisted state.
pub(crate) fn state_key(cf: &str) -> Vec<u8> {
    format!("{STATE_PREFIX}{cf}").into_bytes()
}

/// Column family name of a partition: `p/{topic}/{incarnation}/{partition}`.
pub(crate) fn cf_name(topic: &str, topic_id: u64, partition: u32) -> String {
    format!("p/{topic}/{topic_id}/{partition}")
}
