//! `GET /v1/status`: this node at a glance (version, address, uptime, readiness,
//! storage size, totals), for the dashboard's node page and for curl.
//!
//! There is one node today; the answer describes the node that serves the request,
//! so a cluster can later list every node's status without changing this shape.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Action, Caller};
use crate::error::{ApiError, Problem};
use crate::state::SharedState;

/// The status of the node answering the request.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeStatus {
    /// Tidegate version of this binary.
    pub version: &'static str,
    /// Address the node serves HTTP on.
    pub addr: String,
    /// Whether the node takes traffic (what `/readyz` answers).
    pub ready: bool,
    /// The error of the last write to storage when it failed and none has succeeded
    /// since (`/readyz` then answers 503 `storage_failing`).
    pub storage_error: Option<String>,
    /// Start time, ms since the epoch.
    pub started_ms: i64,
    /// Time since start, in ms.
    pub uptime_ms: u64,
    /// Data directory.
    pub data_dir: String,
    /// Durability policy of appends (`always`, `interval`, `never`).
    pub fsync: String,
    /// Bytes RocksDB holds for all partitions (SST files and memtables).
    pub disk_bytes: u64,
    /// Bytes free on the data directory's file system (`null` where it does not tell).
    pub disk_free_bytes: Option<u64>,
    /// Appends are refused below this many free bytes (`min_free_disk_bytes`; 0: off).
    pub min_free_disk_bytes: u64,
    /// Resident memory of the process, where the platform tells (Linux).
    pub resident_memory_bytes: Option<u64>,
    /// Number of topics.
    pub topics: usize,
    /// Number of partitions over all topics.
    pub partitions: u64,
    /// Records stored over all partitions (end minus start offsets).
    pub records: u64,
    /// Bytes of stored batches over all partitions (what retention measures).
    pub bytes: u64,
    /// Consumer groups with members or committed offsets.
    pub groups: usize,
    /// Open WebSocket and SSE subscriptions.
    pub subscriptions: u64,
    /// Most concurrent subscriptions (`max_subscriptions`).
    pub max_subscriptions: u64,
}

/// Status of this node: version, address, uptime, readiness, storage and totals.
///
/// With authentication on it needs `admin` on every topic (`*`), like `/metrics`: the
/// totals cover topics the caller may not see, and the data directory is a host path.
#[utoipa::path(get, path = "/v1/status", tag = "ops",
    responses((status = 200, description = "This node", body = NodeStatus),
    (status = 400, description = "A query parameter: this route takes none (`invalid_request`)", body = Problem, content_type = "application/problem+json")))]
pub async fn status(
    State(state): State<SharedState>,
    caller: Caller,
    _: super::no_query::NoQuery,
) -> Result<Json<NodeStatus>, ApiError> {
    caller.require_everywhere(Action::Admin)?;
    let groups = super::groups::group_names(&state).await?.len();
    let s = state.clone();
    // RocksDB size properties are read on a blocking thread, off the async workers.
    let (disk_bytes, partitions, records, bytes, topics) = tokio::task::spawn_blocking(move || {
        let topics = s.store.topics();
        let (mut partitions, mut records, mut bytes) = (0u64, 0u64, 0u64);
        for t in &topics {
            for p in t.partitions() {
                let stats = p.stats();
                partitions += 1;
                records += stats.end_offset - stats.start_offset;
                bytes += stats.bytes;
            }
        }
        (s.store.disk_bytes(), partitions, records, bytes, topics.len())
    })
    .await
    .map_err(|e| ApiError::Storage(tidegate_storage::StorageError::Internal(e.to_string())))?;
    let storage_error = state.store.write_failure();
    let space = state.store.disk_space();
    let max_subscriptions = state.config.max_subscriptions;
    let open = max_subscriptions.saturating_sub(state.subscriptions.available_permits() as u64);
    Ok(Json(NodeStatus {
        version: env!("CARGO_PKG_VERSION"),
        addr: state.local_addr.to_string(),
        ready: state.not_ready().is_none(),
        storage_error,
        started_ms: state.started_ms,
        uptime_ms: state.started.elapsed().as_millis() as u64,
        data_dir: state.config.data_dir.display().to_string(),
        fsync: state.config.fsync.to_string(),
        disk_bytes,
        disk_free_bytes: space.free_bytes,
        min_free_disk_bytes: space.min_free_bytes,
        resident_memory_bytes: crate::metrics::resident_memory_bytes(),
        topics,
        partitions,
        records,
        bytes,
        groups,
        subscriptions: open,
        max_subscriptions,
    }))
}
