//! Settings the storage layer needs; the API layer fills them from its own config.

use std::path::PathBuf;
use std::time::Duration;

/// When appended batches are synced to disk, and so when an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// The WAL is synced before any append of the group commit is acknowledged:
    /// acknowledged data survives power loss.
    #[default]
    Always,
    /// Appends are acknowledged once written to the WAL (they survive a process
    /// crash); a background thread syncs the WAL every `fsync_interval`.
    Interval,
    /// Appends are acknowledged once written to the WAL; syncing is left to the OS.
    Never,
}

/// Storage settings. See the README's configuration reference for each one.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding the RocksDB instance (created if missing).
    pub data_dir: PathBuf,
    /// Durability of appends.
    pub fsync: FsyncPolicy,
    /// Sync period for [`FsyncPolicy::Interval`].
    pub fsync_interval: Duration,
    /// Appends waiting for the writer; producers wait (backpressure) when it is full.
    pub write_queue_depth: usize,
    /// Upper bound on the bytes gathered into one group commit.
    pub max_group_commit_bytes: usize,
    /// How often retention runs.
    pub retention_check_interval: Duration,
    /// RocksDB block cache shared by all partitions.
    pub block_cache_bytes: usize,
    /// Total memtable budget across all column families.
    pub write_buffer_bytes: usize,
    /// How long an event id is remembered (a retry within it is not written again).
    pub dedup_window: Duration,
    /// Memory budget of the cache of recently remembered ids (0: every lookup reads disk).
    pub dedup_cache_bytes: usize,
    /// How often the upkeep thread drops expired ids from disk.
    pub dedup_expiry_interval: Duration,
    /// Most partitions (column families) of all topics together. Creating a column
    /// family costs RocksDB time in proportion to how many exist (it rewrites its
    /// OPTIONS file each time), so this bounds every topic create and partition add.
    pub max_partitions: u32,
    /// Appends are refused while the data directory's file system has fewer bytes free
    /// (see [`crate::disk`]); 0 turns the check off.
    pub min_free_disk_bytes: u64,
}

impl StoreConfig {
    /// Defaults for a data directory (used by tests and benchmarks).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_millis(100),
            write_queue_depth: 4096,
            max_group_commit_bytes: 16 << 20,
            retention_check_interval: Duration::from_secs(30),
            block_cache_bytes: 128 << 20,
            write_buffer_bytes: 256 << 20,
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_cache_bytes: 64 << 20,
            dedup_expiry_interval: Duration::from_secs(3600),
            max_partitions: 1000,
            min_free_disk_bytes: 1 << 30,
        }
    }
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::Interval),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!("unknown fsync policy {other:?}: expected always, interval or never")),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Interval => "interval",
            FsyncPolicy::Never => "never",
        })
    }
}
