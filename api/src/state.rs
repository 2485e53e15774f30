//! Shared state of one gateway node: a cheap handle cloned into every request.

use crate::ingest::pipeline::Create;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tidegate_storage::{StorageError, Store, Topic, TopicConfig};

use crate::config::Config;
use crate::error::ApiError;
use crate::groups::coordinator::Coordinator;
use crate::ingest::partitioner::Spreader;
use crate::ingest::rules::RulesCache;
use std::time::Duration;

/// Everything a handler needs. Held behind an `Arc`; no locks of its own.
#[derive(Debug)]
pub struct AppState {
    /// Resolved settings.
    pub config: Config,
    /// The log.
    pub store: Store,
    /// Round-robin source for keyless events.
    pub spreader: Spreader,
    /// Consumer groups of this node.
    pub coordinator: Coordinator,
    /// Records frames shared by subscriptions.
    pub frames: crate::consume::cache::FrameCache,
    /// Open subscriptions, bounded by `max_subscriptions`.
    pub subscriptions: Arc<tokio::sync::Semaphore>,
    /// False until start-up is done and again once shutdown begins (`/readyz`).
    pub ready: AtomicBool,
    /// Authentication, permissions and rate limits.
    pub security: Arc<crate::auth::Security>,
    /// The address the HTTP listener is bound to (the real port when `addr` asked for 0).
    pub local_addr: SocketAddr,
    /// When the node started, for uptime.
    pub started: Instant,
    /// When the node started, ms since the epoch.
    pub started_ms: i64,
    /// Compiled per-topic ingest rules (event-id pointer, JSON Schema, dead letters).
    pub rules: RulesCache,
    /// The runtime WebSocket and SSE subscriptions run on.
    pub delivery: crate::delivery::Delivery,
    /// Memory for request bodies in flight (`request_memory_bytes`).
    pub request_memory: Arc<crate::request_memory::RequestMemory>,
    /// Bodies decoded and parsed off the async workers at once (see
    /// [`AppState::body_job`]).
    body_jobs: tokio::sync::Semaphore,
}

/// The handle handlers receive.
pub type SharedState = Arc<AppState>;

impl AppState {
    /// New state around an open store, with the security settings already loaded, for a
    /// node listening on `local_addr`.
    pub fn new(
        config: Config,
        store: Store,
        security: crate::auth::Security,
        local_addr: SocketAddr,
        delivery: crate::delivery::Delivery,
    ) -> SharedState {
        let coordinator = Coordinator::new(store.clone(), Duration::from_millis(config.session_timeout_ms));
        let subscriptions = Arc::new(tokio::sync::Semaphore::new(config.max_subscriptions as usize));
        let frames = crate::consume::cache::FrameCache::new(config.subscription_cache_bytes as usize);
        let request_memory = Arc::new(crate::request_memory::RequestMemory::new(
            config.request_memory_bytes,
            config.max_body_bytes,
            Duration::from_millis(config.request_memory_wait_ms),
        ));
        // Two per core: enough to keep the cores busy with large bodies, few enough
        // that a burst of them does not start hundreds of threads (each with its own
        // allocator cache) while the first ones run.
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Arc::new(AppState {
            request_memory,
            body_jobs: tokio::sync::Semaphore::new(2 * cores),
            frames,
            config,
            store,
            spreader: Spreader::default(),
            coordinator,
            subscriptions,
            ready: AtomicBool::new(false),
            security: Arc::new(security),
            local_addr,
            started: Instant::now(),
            started_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
            rules: RulesCache::default(),
            delivery,
        })
    }

    /// Runs `job` (decoding and parsing a large request body) on a blocking thread, at
    /// most two per core at once; the others wait their turn (holding their memory
    /// reservation, so the bodies waiting are within `request_memory_bytes`).
    pub async fn body_job<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _turn = self.body_jobs.acquire().await.map_err(|_| ApiError::ShuttingDown)?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| ApiError::Storage(tidegate_storage::StorageError::Internal(e.to_string())))?
    }

    /// Runs a subscription session on the delivery runtime; `permit` (its place under
    /// `max_subscriptions`) is held until the session ends.
    pub fn spawn_session<F>(
        self: &Arc<Self>,
        permit: tokio::sync::OwnedSemaphorePermit,
        session: impl FnOnce(SharedState) -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let session = session(self.clone());
        self.delivery.spawn(async move {
            let _permit = permit;
            session.await;
        });
    }

    /// Why the node does not take traffic now, as `/readyz` answers it (problem code
    /// and detail): starting or shutting down, the last write to storage failed, or
    /// free disk space is below `min_free_disk_bytes`. `None` when it is ready. The one
    /// place readiness is decided.
    pub fn not_ready(&self) -> Option<(&'static str, &'static str)> {
        if !self.ready.load(Ordering::Acquire) || self.store.is_closing() {
            Some(("not_ready", "the node is starting or shutting down"))
        } else if self.store.write_failure().is_some() {
            Some((
                "storage_failing",
                "the last write to storage failed; appends fail until one succeeds (after some failures, until a restart)",
            ))
        } else if self.store.disk_space().low {
            Some((
                "insufficient_storage",
                "free disk space is below min_free_disk_bytes; appends are refused until space is freed",
            ))
        } else {
            None
        }
    }

    /// A topic for ingest: created with the defaults when it is unknown and `create`
    /// allows it ([`Create`]).
    pub async fn topic_for_ingest(&self, name: &str, create: Create) -> Result<Arc<Topic>, ApiError> {
        match self.existing_for_ingest(name, create)? {
            Some(t) => Ok(t),
            None => self.create_for_ingest(name).await,
        }
    }

    /// A topic for ingest if it exists; `None` when it does not but may be created (as
    /// [`AppState::topic_for_ingest`] would); an error when it may not (404) or the name
    /// is invalid.
    pub fn existing_for_ingest(&self, name: &str, create: Create) -> Result<Option<Arc<Topic>>, ApiError> {
        let may_create = match create {
            Create::Always => true,
            Create::IfConfigured => self.config.auto_create_topics,
            Create::Never => false,
        };
        match self.store.topic(name) {
            Ok(t) => Ok(Some(t)),
            Err(StorageError::TopicNotFound(_)) if may_create => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The settings a topic created by ingest gets: `default_partitions` and the
    /// default retention, nothing else.
    pub fn ingest_topic_config(&self) -> TopicConfig {
        let (retention_ms, retention_bytes) = self.config.default_retention();
        TopicConfig { retention_ms, retention_bytes, ..TopicConfig::with_partitions(self.config.default_partitions) }
    }

    /// Creates a topic for ingest with [`AppState::ingest_topic_config`] (or takes the one
    /// created meanwhile by another request).
    pub async fn create_for_ingest(&self, name: &str) -> Result<Arc<Topic>, ApiError> {
        // The append would be refused: leave no topic behind for it.
        let space = self.store.disk_space();
        if space.low {
            return Err(StorageError::DiskLow { free: space.free_bytes.unwrap_or(0), min: space.min_free_bytes }.into());
        }
        match self.store.create_topic(name, self.ingest_topic_config()).await {
            Ok(_) | Err(StorageError::TopicExists(_)) => Ok(self.store.topic(name)?),
            Err(e) => Err(e.into()),
        }
    }
}
