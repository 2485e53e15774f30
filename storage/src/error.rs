//! The storage layer's one error type.

use std::path::PathBuf;

/// Everything the log can refuse or fail at. Variants carry the facts a caller needs
/// to explain the failure; none of them knows about HTTP.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The topic name does not match `[A-Za-z0-9._-]{1,249}` (or is `.`/`..`).
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    /// The consumer group name is not valid.
    #[error("invalid group name {0:?}: use 1-249 ASCII letters, digits, '.', '_' or '-'")]
    InvalidGroupName(String),
    /// A topic setting is out of range.
    #[error("invalid topic config: {0}")]
    InvalidConfig(String),
    /// No topic by that name.
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    /// A topic by that name already exists.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// The partition index is not below the topic's partition count.
    #[error("topic {topic:?} has no partition {partition} (it has {count})")]
    PartitionNotFound { topic: String, partition: u32, count: u32 },
    /// Partition counts can only grow.
    #[error("topic {topic:?} has {current} partitions; the count can only grow (asked for {requested})")]
    PartitionCountNotIncreased { topic: String, current: u32, requested: u32 },
    /// A topic may have at most [`crate::MAX_PARTITIONS`] partitions.
    #[error("topic {topic:?} may have at most {max} partitions (asked for {requested})")]
    PartitionCountTooLarge { topic: String, requested: u32, max: u32 },
    /// The requested offset is outside `[log_start, high_watermark]`.
    #[error("offset {offset} is out of range for {topic}/{partition}: valid offsets are {start}..={end}")]
    OffsetOutOfRange { topic: String, partition: u32, offset: u64, start: u64, end: u64 },
    /// A create or add would take the node past `max_partitions`.
    #[error(
        "this node holds {current} partitions and may hold at most {limit} (setting max_partitions); {requested} more asked for"
    )]
    PartitionLimit { limit: u32, current: u32, requested: u32 },
    /// The topic was deleted while the operation was in flight; nothing was written.
    #[error("topic {0:?} was deleted")]
    TopicDeleted(String),
    /// Free disk space is below `min_free_disk_bytes`: the append was refused and
    /// nothing was written (see [`crate::disk`]).
    #[error(
        "only {free} bytes are free on the data directory's disk, below min_free_disk_bytes ({min}): appends are refused until space is freed (delete a topic, shorten retention, or grow the disk)"
    )]
    DiskLow { free: u64, min: u64 },
    /// The store is shutting down and takes no more writes.
    #[error("the store is shutting down")]
    ShuttingDown,
    /// A stored batch failed its checksum or could not be decoded.
    #[error("corrupt batch at {cf} offset {offset}: {reason}")]
    Corrupt { cf: String, offset: u64, reason: String },
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    /// Another process holds the data directory's RocksDB lock.
    #[error(
        "data directory {0} is in use by another process (another tidegate node?); RocksDB holds one lock per directory"
    )]
    DataDirInUse(PathBuf),
    /// RocksDB reported an error (I/O, corruption...).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A background task panicked or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
}

/// Result alias for the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
