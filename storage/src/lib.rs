//! Tidegate's storage layer: a Kafka-style partitioned log on RocksDB.
//!
//! Map of the crate:
//! - [`store`]: opening, recovery, topic admin, appends ([`Store`]).
//! - [`writer`]: the single writer thread (group commit, fsync policy, offsets).
//! - [`read`]: ranged reads, long-poll fetches, timestamp lookup.
//! - [`retention`]: background retention, interval WAL sync, expiry of remembered ids.
//! - [`disk`]: the free-space floor below which appends are refused.
//! - [`dedup`]: the idempotency memory (event id -> first partition and offset).
//! - [`batch`]: the binary batch format stored under each RocksDB key.
//! - `db`: the RocksDB handle with a column-family map that creates and drops never lock
//!   for long (the crate's only `unsafe`, explained there).
//! - [`partition`], [`topic`], [`config`], [`error`]: state, metadata, settings, errors.
//!
//! Guarantees: offsets in a partition are dense, start at 0, and are never reused;
//! an append is atomic across partitions and acknowledged only after the fsync policy
//! is met; readers see only records below the high watermark; nothing here knows HTTP.

pub mod batch;
pub mod config;
mod db;
pub mod dedup;
pub mod disk;
pub mod error;
pub mod groups;
pub mod partition;
pub mod read;
pub mod retention;
pub mod store;
pub mod topic;
mod writer;

pub use batch::{BatchBuilder, EncodedBatch, Headers, MAX_HEADER_NAME, Record};
pub use config::{FsyncPolicy, StoreConfig};
pub use dedup::{Claims, DedupStats, IdState, IdWrite, IdWrites, MAX_EVENT_ID, Remembered};
pub use disk::DiskSpace;
pub use error::{Result, StorageError};
pub use groups::{CommittedOffset, validate_group_name};
pub use partition::{PartitionLog, PartitionStats};
pub use read::{ReadLimits, ReadResult, TimestampOffset};
pub use store::{Store, Topic, TopicInfo};
pub use topic::{MAX_PARTITIONS, TopicConfig, TopicConfigPatch, validate_topic_name};
