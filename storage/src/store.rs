//! The store: opens RocksDB, recovers topics and partitions, and is the handle every
//! other layer uses for topic admin, appends and reads.
//!
//! Column families: `meta` (topics, per-partition start offset and size, id counter),
//! `groups` (committed offsets), `dedup` (remembered event ids, see [`crate::dedup`])
//! and one per partition (`p/{topic}/{incarnation}/{partition}`). The incarnation id
//! makes a re-created topic start on fresh column families.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options};
use tokio::sync::{mpsc, oneshot, watch};

use crate::batch::{EncodedBatch, key_offset, verify};
use crate::config::StoreConfig;
use crate::dedup::{DEDUP_CF, Dedup, IdWrites};
use crate::disk::{DiskGuard, DiskSpace};
use crate::error::{Result, StorageError};
use crate::partition::{AppendSignal, Bounds, PartitionLog, PartitionStats, STATE_PREFIX, cf_name, state_key};
use crate::topic::{TopicConfig, TopicConfigPatch, TopicMeta, validate_topic_name};
use crate::writer::{WriteHealth, Writer, WriterCmd};

pub(crate) use crate::db::Db;
pub(crate) const META_CF: &str = "meta";
const NEXT_ID_KEY: &[u8] = b"next_topic_id";
const TOPIC_PREFIX: &str = "topic/";

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    /// Topic name.
    pub name: String,
    pub(crate) id: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: i64,
    pub(crate) config: RwLock<Arc<TopicConfig>>,
    pub(crate) partitions: RwLock<Vec<Arc<PartitionLog>>>,
    /// Append signal shared by the partitions (see [`PartitionLog::watch_topic_appends`]).
    pub(crate) appends: Arc<AppendSignal>,
}

impl Topic {
    /// Current settings.
    pub fn config(&self) -> TopicConfig {
        TopicConfig::clone(&self.config.read().expect("topic config lock"))
    }
    /// Current settings, shared: the same `Arc` until the settings change (so callers
    /// can cache what they derive from them and compare with [`Arc::ptr_eq`]).
    pub fn config_shared(&self) -> Arc<TopicConfig> {
        self.config.read().expect("topic config lock").clone()
    }
    /// Current number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions.read().expect("partitions lock").len() as u32
    }
    /// One partition, or `PartitionNotFound`.
    pub fn partition(&self, index: u32) -> Result<Arc<PartitionLog>> {
        let parts = self.partitions.read().expect("partitions lock");
        parts.get(index as usize).cloned().ok_or_else(|| StorageError::PartitionNotFound {
            topic: self.name.clone(),
            partition: index,
            count: parts.len() as u32,
        })
    }
    /// All partitions, in index order.
    pub fn partitions(&self) -> Vec<Arc<PartitionLog>> {
        self.partitions.read().expect("partitions lock").clone()
    }
    /// A description with per-partition offsets and sizes.
    pub fn info(&self) -> TopicInfo {
        TopicInfo {
            name: self.name.clone(),
            created_ms: self.created_ms,
            config: self.config(),
            partitions: self.partitions().iter().map(|p| p.stats()).collect(),
        }
    }
}

/// A topic's description.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub name: String,
    pub created_ms: i64,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionStats>,
}

pub(crate) struct Inner {
    pub(crate) db: Arc<Db>,
    pub(crate) config: StoreConfig,
    pub(crate) topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serialises admin operations (create, delete, grow, alter).
    pub(crate) admin: Mutex<()>,
    /// Held for reading by offset commits and for writing by a topic's deletion (while
    /// it deletes the topic's committed offsets), so no commit lands after that: commits
    /// need not wait behind a long topic create holding `admin`.
    pub(crate) offsets_guard: RwLock<()>,
    writer: mpsc::Sender<WriterCmd>,
    /// Flipped on shutdown: wakes long-polls.
    pub(crate) closing: watch::Sender<bool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Block cache shared by every partition's column family.
    cache: Cache,
    /// Dropping them stops the background threads.
    stop_background: Mutex<Vec<std::sync::mpsc::Sender<()>>>,
    /// Remembered event ids (memory layer; the disk layer is the `dedup` CF).
    pub(crate) dedup: Arc<Dedup>,
    /// Whether the last write failed (shared with the writer thread).
    pub(crate) health: Arc<WriteHealth>,
    /// The free-space floor for appends (shared with the writer thread).
    disk: Arc<DiskGuard>,
}

/// Cheap, cloneable handle to the log. All methods are safe to call from any thread;
/// the async ones never block the async runtime (RocksDB work runs on blocking threads).
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("data_dir", &self.inner.config.data_dir).finish()
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Memtable size of one partition: a quarter of the total budget, within 4..64 MiB.
fn per_cf_buffer(config: &StoreConfig) -> usize {
    (config.write_buffer_bytes / 4).clamp(4 << 20, 64 << 20)
}

/// Options of the `dedup` column family: bloom filters on the SST files and on the
/// memtable (most lookups are of new ids, which a filter answers without a search) and
/// the expiry filter.
fn dedup_cf_options(cache: &Cache, config: &StoreConfig) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_write_buffer_size(per_cf_buffer(config));
    // A whole-key bloom filter over the memtable too (a tenth of its size): a lookup of a
    // new id skips the memtable's skip-list search, which cost more than the SST filters.
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_memtable_whole_key_filtering(true);
    // Ids arrive in random key order and are almost only looked up to miss: universal
    // (size-tiered) compaction rewrites each entry far fewer times than leveled, and the
    // bloom filters keep the extra sorted runs cheap to probe.
    opts.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
    let window_ms = i64::try_from(config.dedup_window.as_millis()).unwrap_or(i64::MAX);
    opts.set_compaction_filter("tidegate-dedup-expiry", Dedup::filter(window_ms));
    opts
}

fn cf_options(cache: &Cache, write_buffer: usize) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_block_size(32 << 10);
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_write_buffer_size(write_buffer);
    opts
}

impl Store {
    /// Opens (or creates) the store in `config.data_dir`, recovering every topic's
    /// offsets from disk, and starts the writer and background threads. Blocking.
    pub fn open(config: StoreConfig) -> Result<Store> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StorageError::DataDir { path: config.data_dir.clone(), source })?;
        let path = config.data_dir.join("rocksdb");
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_db_write_buffer_size(config.write_buffer_bytes);
        db_opts.set_max_total_wal_size((config.write_buffer_bytes as u64) * 2);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(3);
        db_opts.set_bytes_per_sync(1 << 20);
        let existing = if path.join("CURRENT").exists() { Db::list_cf(&db_opts, &path)? } else { Vec::new() };
        let mut names: Vec<String> = existing;
        for required in ["default", META_CF, crate::groups::GROUPS_CF, DEDUP_CF] {
            if !names.iter().any(|n| n == required) {
                names.push(required.to_string());
            }
        }
        let descriptors = names
            .iter()
            .map(|n| match n.as_str() {
                DEDUP_CF => ColumnFamilyDescriptor::new(n, dedup_cf_options(&cache, &config)),
                _ => ColumnFamilyDescriptor::new(n, cf_options(&cache, per_cf_buffer(&config))),
            })
            .collect::<Vec<_>>();
        let db = Arc::new(Db::open_cf_descriptors(&db_opts, &path, descriptors).map_err(|e| {
            // RocksDB's "IO error: While lock file: …/LOCK: Resource temporarily unavailable".
            if e.kind() == rocksdb::ErrorKind::IOError && e.as_ref().contains("lock file") {
                StorageError::DataDirInUse(config.data_dir.clone())
            } else {
                e.into()
            }
        })?);
        remove_options_leftovers(&path);
        let topics = recover(&db, &names)?;
        tracing::info!(path = %path.display(), topics = topics.len(), "store opened");

        let (tx, rx) = mpsc::channel(config.write_queue_depth.max(1));
        let dedup = Arc::new(Dedup::new(config.dedup_window, config.dedup_cache_bytes));
        let health = Arc::new(WriteHealth::default());
        let disk = Arc::new(DiskGuard::new(&config.data_dir, config.min_free_disk_bytes)?);
        let space = disk.space();
        if space.low {
            tracing::warn!(
                free = space.free_bytes,
                min_free_disk_bytes = space.min_free_bytes,
                "free disk space is below min_free_disk_bytes: appends will be refused until space is freed"
            );
        }
        let writer = Writer {
            db: db.clone(),
            fsync: config.fsync,
            max_group_commit_bytes: config.max_group_commit_bytes,
            health: health.clone(),
            disk: disk.clone(),
        };
        let mut threads = Vec::new();
        threads.push(
            std::thread::Builder::new()
                .name("tidegate-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(|e| StorageError::Internal(format!("spawn writer: {e}")))?,
        );
        let store = Store {
            inner: Arc::new(Inner {
                db,
                config: config.clone(),
                topics: RwLock::new(topics),
                admin: Mutex::new(()),
                offsets_guard: RwLock::new(()),
                writer: tx,
                closing: watch::Sender::new(false),
                threads: Mutex::new(Vec::new()),
                cache,
                stop_background: Mutex::new(Vec::new()),
                dedup,
                health,
                disk,
            }),
        };
        let background = crate::retention::spawn(store.downgrade(), &config)?;
        threads.extend(background.threads);
        *store.inner.stop_background.lock().expect("stop lock") = background.stops;
        *store.inner.threads.lock().expect("threads lock") = threads;
        Ok(store)
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// Free space on the data directory's file system now, the floor below which
    /// appends are refused (`min_free_disk_bytes`), and whether they are.
    pub fn disk_space(&self) -> DiskSpace {
        self.inner.disk.space()
    }

    /// While free space is below `min_free_disk_bytes`: flushes every column family
    /// whose memtable holds data, so WAL files kept only for unflushed entries (of
    /// metadata, remembered ids, other partitions) are deleted and what a topic delete
    /// or shorter retention freed becomes free space. Called every second by a
    /// background thread (only when the guard is on). Blocking.
    pub(crate) fn relieve_disk(&self) {
        if !self.inner.disk.space().low {
            return;
        }
        let db = &self.inner.db;
        let mut flushed = 0;
        for name in db.cf_names() {
            let Some(cf) = db.cf_handle(&name) else { continue };
            let entries = db.property_int_value_cf(&cf, "rocksdb.num-entries-active-mem-table").ok().flatten();
            if entries.unwrap_or(0) == 0 {
                continue;
            }
            match db.flush_cf(&cf) {
                Ok(()) => flushed += 1,
                Err(e) => tracing::warn!(cf = %name, error = %e, "flushing to free disk space failed"),
            }
        }
        if flushed > 0 {
            tracing::info!(flushed, "disk space low: flushed memtables so unneeded WAL files are deleted");
        }
    }

    /// The error of the last failed write (group commit, interval WAL sync, retention,
    /// topic or group metadata, column-family change) when no write has succeeded since; `None` while writes work. RocksDB refuses every write
    /// after some failures (a full disk, an I/O error) until the store is reopened.
    pub fn write_failure(&self) -> Option<String> {
        self.inner.health.failure()
    }

    /// A topic by name: [`StorageError::TopicNotFound`] when there is none, or
    /// [`StorageError::InvalidTopicName`] when no topic could have that name.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner.topics.read().expect("topics lock").get(name).cloned().ok_or_else(|| {
            match crate::topic::validate_topic_name(name) {
                // A name no topic can have is the caller's mistake, not a missing topic.
                Err(invalid) => invalid,
                Ok(()) => StorageError::TopicNotFound(name.to_string()),
            }
        })
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.inner.topics.read().expect("topics lock").values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Runs blocking store work on tokio's blocking pool.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StorageError::Internal(format!("blocking task failed: {e}")))?
    }

    /// Creates a topic with its partitions' column families. Durable when it returns.
    pub async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        let name = name.to_string();
        self.blocking(move |s| s.create_topic_sync(&name, config)).await
    }

    fn create_topic_sync(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        validate_topic_name(name)?;
        config.validate()?;
        let _admin = self.inner.admin.lock().expect("admin lock");
        if self.inner.topics.read().expect("topics lock").contains_key(name) {
            return Err(StorageError::TopicExists(name.to_string()));
        }
        let db = &self.inner.db;
        let meta = self.meta_cf()?;
        let id = match db.get_cf(&meta, NEXT_ID_KEY)? {
            Some(raw) => u64::from_be_bytes(raw.as_slice().try_into().unwrap_or([0; 8])),
            None => 1,
        };
        self.check_partition_budget(config.partitions)?;
        // The incarnation id is used up before any column family is made, so a retry
        // after a failure names its column families afresh.
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(&meta, NEXT_ID_KEY, (id + 1).to_be_bytes());
        self.write_meta(wb)?;
        // Column families first, metadata last: a crash in between leaves orphan
        // column families, which the next start-up drops.
        let names: Vec<String> = (0..config.partitions).map(|p| cf_name(name, id, p)).collect();
        self.create_cfs(&names)?;
        let topic_meta = TopicMeta { name: name.to_string(), id, created_ms: now_ms(), config: config.clone() };
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(&meta, topic_key(name), serde_json::to_vec(&topic_meta).expect("topic meta serialises"));
        if let Err(e) = self.write_meta(wb) {
            self.drop_cfs(&names);
            return Err(e);
        }
        let appends = AppendSignal::new();
        let parts = names
            .into_iter()
            .zip(0..)
            .map(|(cf, p)| Arc::new(PartitionLog::new(name, p, cf, Bounds::EMPTY, appends.clone())))
            .collect();
        let topic = Arc::new(Topic {
            name: name.to_string(),
            id,
            created_ms: topic_meta.created_ms,
            config: RwLock::new(Arc::new(config)),
            partitions: RwLock::new(parts),
            appends,
        });
        self.inner.topics.write().expect("topics lock").insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions = topic.partition_count(), "topic created");
        Ok(topic.info())
    }

    fn meta_cf(&self) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.inner.db.cf_handle(META_CF).ok_or_else(|| StorageError::Internal("meta column family missing".into()))
    }

    /// Refuses (`PartitionLimit`) when `more` partitions would take the node past
    /// `max_partitions`. Called under the admin lock.
    fn check_partition_budget(&self, more: u32) -> Result<()> {
        let current: u32 = self.inner.topics.read().expect("topics lock").values().map(|t| t.partition_count()).sum();
        let limit = self.inner.config.max_partitions;
        if current.saturating_add(more) > limit {
            return Err(StorageError::PartitionLimit { limit, current, requested: more });
        }
        Ok(())
    }

    /// Creates the column families `names`, all or none: on a failure the ones made so
    /// far are dropped again. (When RocksDB made one but failed to persist its OPTIONS
    /// file, that one is unknown to this handle and stays until the next start drops it
    /// as an orphan.)
    fn create_cfs(&self, names: &[String]) -> Result<()> {
        let opts = cf_options(&self.inner.cache, per_cf_buffer(&self.inner.config));
        for (made, cf) in names.iter().enumerate() {
            if self.is_closing() {
                // Each create takes longer the more column families exist: a long one
                // must not hold up shutdown. The next start drops these as orphans.
                tracing::warn!(made, of = names.len(), "shutdown: abandoning a partition create part-way");
                return Err(StorageError::ShuttingDown);
            }
            if let Err(e) = self.inner.health.observe("creating a column family", self.inner.db.create_cf(cf, &opts)) {
                self.drop_cfs(&names[..made]);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Drops column families of an admin operation that failed (newest first); failures
    /// are logged, and the next start drops what is left as orphans.
    fn drop_cfs(&self, names: &[String]) {
        for cf in names.iter().rev() {
            if let Err(e) = self.inner.db.drop_cf(cf) {
                tracing::warn!(cf = %cf, error = %e, "could not drop the column family of a failed admin operation");
            }
        }
    }

    /// Writes topic or group metadata, synced whatever the fsync policy; a failure marks
    /// the store failing (see [`Store::write_failure`]).
    pub(crate) fn write_meta(&self, wb: rocksdb::WriteBatch) -> Result<()> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.inner.health.observe("metadata write", self.inner.db.write_opt(wb, &opts))?;
        Ok(())
    }

    /// Deletes a topic: its metadata and every group's committed offsets for it (one
    /// synced write), then its remembered event ids, then its column families (appends
    /// and reads of other topics go on meanwhile). Appends still queued for it fail with
    /// `TopicDeleted`; nothing is half-written.
    ///
    /// Runs to the end on a task of its own once called: a caller that goes away (an
    /// HTTP client that disconnects) does not leave the deletion half done.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let store = self.clone();
        let name = name.to_string();
        tokio::spawn(async move { store.delete_topic_to_the_end(name).await })
            .await
            .map_err(|e| StorageError::Internal(format!("topic deletion task failed: {e}")))?
    }

    async fn delete_topic_to_the_end(&self, name: String) -> Result<()> {
        let (topic_id, parts) = self
            .blocking(move |s| {
                let _admin = s.inner.admin.lock().expect("admin lock");
                let _offsets = s.inner.offsets_guard.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                let topic = s.topic(&name)?;
                let meta = s.meta_cf()?;
                let mut wb = rocksdb::WriteBatch::default();
                wb.delete_cf(&meta, topic_key(&name));
                for p in topic.partitions() {
                    wb.delete_cf(&meta, state_key(&p.cf));
                }
                s.forget_topic_offsets(&mut wb, &name)?;
                s.write_meta(wb)?;
                s.inner.topics.write().expect("topics lock").remove(&name);
                tracing::info!(topic = %name, "topic deleted");
                Ok((topic.id, topic.partitions()))
            })
            .await?;
        // The deletion is durable from here: a shutdown that cuts the rest short leaves
        // it to the next start (which drops the column families and forgets the ids of
        // a topic that no longer exists), so the caller is told it is done, not to retry.
        let (reply, rx) = oneshot::channel();
        let forgotten = match self.send(WriterCmd::Forget { topic_id, parts: parts.clone(), reply }).await {
            Ok(()) => rx.await.unwrap_or(Err(StorageError::ShuttingDown)),
            Err(e) => Err(e),
        };
        match forgotten {
            Ok(()) => {}
            Err(StorageError::ShuttingDown) => return Ok(()),
            Err(e) => return Err(e),
        }
        // The column families go last and off the writer thread: RocksDB rewrites its
        // OPTIONS file for each drop (~100 ms with hundreds of partitions), and appends
        // to other topics go on meanwhile. Nothing writes to them any more (the writer
        // has marked them deleted); a crash before this leaves orphans the next start drops.
        self.blocking(move |s| {
            let mut result = Ok(());
            for (dropped, part) in parts.iter().enumerate() {
                if s.is_closing() {
                    // As a create does: a long drop must not hold up shutdown. The next
                    // start drops the rest as orphans.
                    tracing::warn!(
                        dropped,
                        of = parts.len(),
                        "shutdown: leaving a deleted topic's drops to the next start"
                    );
                    return Ok(());
                }
                if let Err(e) = s.inner.health.observe("dropping a column family", s.inner.db.drop_cf(&part.cf)) {
                    result = Err(e.into());
                }
            }
            result
        })
        .await
    }

    /// Grows a topic to `count` partitions. Existing partitions are untouched.
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<TopicInfo> {
        let name = name.to_string();
        self.blocking(move |s| {
            let _admin = s.inner.admin.lock().expect("admin lock");
            let topic = s.topic(&name)?;
            let current = topic.partition_count();
            let mut config = topic.config();
            if count <= current {
                return Err(StorageError::PartitionCountNotIncreased { topic: name, current, requested: count });
            }
            if count > crate::MAX_PARTITIONS {
                let max = crate::MAX_PARTITIONS;
                return Err(StorageError::PartitionCountTooLarge { topic: name, requested: count, max });
            }
            config.partitions = count;
            config.validate()?;
            s.check_partition_budget(count - current)?;
            let names: Vec<String> = (current..count).map(|p| cf_name(&name, topic.id, p)).collect();
            s.create_cfs(&names)?;
            if let Err(e) = s.persist_topic(&topic, &config) {
                s.drop_cfs(&names);
                return Err(e);
            }
            let added = names
                .into_iter()
                .zip(current..)
                .map(|(cf, p)| Arc::new(PartitionLog::new(&name, p, cf, Bounds::EMPTY, topic.appends.clone())))
                .collect::<Vec<_>>();
            topic.partitions.write().expect("partitions lock").extend(added);
            *topic.config.write().expect("topic config lock") = Arc::new(config);
            Ok(topic.info())
        })
        .await
    }

    /// Changes a topic's settings (retention, event id, schema, dead-letter topic).
    /// Retention applies the new limits on its next run.
    pub async fn alter_topic(&self, name: &str, patch: TopicConfigPatch) -> Result<TopicInfo> {
        let name = name.to_string();
        self.blocking(move |s| {
            let _admin = s.inner.admin.lock().expect("admin lock");
            let topic = s.topic(&name)?;
            let config = topic.config().patched(&patch);
            config.validate()?;
            s.persist_topic(&topic, &config)?;
            *topic.config.write().expect("topic config lock") = Arc::new(config);
            Ok(topic.info())
        })
        .await
    }

    fn persist_topic(&self, topic: &Topic, config: &TopicConfig) -> Result<()> {
        let meta = self.meta_cf()?;
        let topic_meta =
            TopicMeta { name: topic.name.clone(), id: topic.id, created_ms: topic.created_ms, config: config.clone() };
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(&meta, topic_key(&topic.name), serde_json::to_vec(&topic_meta).expect("topic meta serialises"));
        self.write_meta(wb)
    }

    pub(crate) async fn send(&self, cmd: WriterCmd) -> Result<()> {
        self.inner.writer.send(cmd).await.map_err(|_| StorageError::ShuttingDown)
    }

    pub(crate) fn send_blocking(&self, cmd: WriterCmd) -> Result<()> {
        self.inner.writer.blocking_send(cmd).map_err(|_| StorageError::ShuttingDown)
    }

    /// Appends batches, each to a partition of `topic`, as one atomic write. Returns
    /// each batch's base offset, in order, once the write met the fsync policy.
    /// Fails as a whole (nothing stored) on any error.
    pub async fn append(&self, topic: &str, batches: Vec<(u32, EncodedBatch)>) -> Result<Vec<u64>> {
        let batches = self.resolve(topic, batches)?;
        self.append_to(batches, None).await
    }

    /// Queues batches for appending and returns once they are queued (`acks=none`):
    /// the caller learns neither the offsets nor the outcome.
    pub async fn append_detached(&self, topic: &str, batches: Vec<(u32, EncodedBatch)>) -> Result<()> {
        let batches = self.resolve(topic, batches)?;
        self.append_to_detached(batches, None).await.map(drop)
    }

    /// Appends batches to partitions of any topics as one atomic write, together with
    /// the dedup entries of `ids` (written in the same RocksDB write, so they are
    /// remembered exactly when the events are stored). Returns each batch's base
    /// offset, in order, once the write met the fsync policy.
    pub async fn append_to(
        &self,
        batches: Vec<(Arc<PartitionLog>, EncodedBatch)>,
        ids: Option<IdWrites>,
    ) -> Result<Vec<u64>> {
        let (reply, rx) = oneshot::channel();
        self.send(WriterCmd::Append { batches, ids, reply }).await?;
        rx.await.map_err(|_| StorageError::ShuttingDown)?
    }

    /// [`Store::append_to`] without waiting for the write (`acks=none`): returns once the
    /// append is queued, with what resolves when the writer is done with it (the
    /// caller may drop it). The claims in `ids` end when the writer is done with the
    /// append, so retries still wait for it.
    pub async fn append_to_detached(
        &self,
        batches: Vec<(Arc<PartitionLog>, EncodedBatch)>,
        ids: Option<IdWrites>,
    ) -> Result<oneshot::Receiver<Result<Vec<u64>>>> {
        // Refused here while the disk is low: the writer's refusal would reach no one.
        let bytes: u64 = batches.iter().map(|(_, b)| b.bytes.len() as u64).sum();
        self.inner.disk.admit_detached(bytes)?;
        let (reply, rx) = oneshot::channel();
        self.send(WriterCmd::Append { batches, ids, reply }).await?;
        Ok(rx)
    }

    fn resolve(
        &self,
        topic: &str,
        batches: Vec<(u32, EncodedBatch)>,
    ) -> Result<Vec<(Arc<PartitionLog>, EncodedBatch)>> {
        let topic = self.topic(topic)?;
        batches.into_iter().map(|(p, b)| Ok((topic.partition(p)?, b))).collect()
    }

    /// Bytes RocksDB holds on disk and in memtables for all partitions.
    pub fn disk_bytes(&self) -> u64 {
        let db = &self.inner.db;
        let mut total = 0;
        for topic in self.topics() {
            for p in topic.partitions() {
                total += partition_disk_bytes(db, &p.cf);
            }
        }
        total
    }

    /// Bytes RocksDB holds for one partition (SST files plus memtables).
    pub fn partition_disk_bytes(&self, part: &PartitionLog) -> u64 {
        partition_disk_bytes(&self.inner.db, &part.cf)
    }

    /// Starts shutdown: long-polls return at once, and every topic's append signal
    /// fires so its waiters look at [`Store::closing_signal`]. Appends are still
    /// accepted until [`Store::close`].
    pub fn begin_shutdown(&self) {
        self.inner.closing.send_replace(true);
        for topic in self.topics() {
            topic.appends.fire();
        }
    }

    /// Finishes every queued append (each is acknowledged or failed), syncs the WAL,
    /// flushes memtables and stops the background threads. Later appends fail with
    /// `ShuttingDown`.
    pub async fn close(&self) -> Result<()> {
        self.begin_shutdown();
        let (reply, rx) = oneshot::channel();
        let result = match self.send(WriterCmd::Shutdown { reply }).await {
            Ok(()) => rx.await.map_err(|_| StorageError::ShuttingDown).and_then(|r| r),
            Err(_) => Ok(()), // already closed
        };
        drop(std::mem::take(&mut *self.inner.stop_background.lock().expect("stop lock")));
        let threads = std::mem::take(&mut *self.inner.threads.lock().expect("threads lock"));
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await
        .map_err(|e| StorageError::Internal(e.to_string()))?;
        result
    }

    /// Waits until this handle is the last one on the store (every clone dropped), so
    /// dropping it closes RocksDB and releases the data directory's lock. Returns
    /// false when other handles remain after `timeout`.
    pub async fn wait_released(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while Arc::strong_count(&self.inner) > 1 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

fn partition_disk_bytes(db: &Db, cf: &str) -> u64 {
    let Some(handle) = db.cf_handle(cf) else { return 0 };
    let prop = |name: &str| db.property_int_value_cf(&handle, name).ok().flatten().unwrap_or(0);
    prop("rocksdb.live-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables")
}

fn topic_key(name: &str) -> Vec<u8> {
    format!("{TOPIC_PREFIX}{name}").into_bytes()
}

/// Rebuilds topics from the meta column family and each partition's last batch;
/// drops column families that belong to no topic (left by a crash mid-admin).
fn recover(db: &Db, cf_names: &[String]) -> Result<HashMap<String, Arc<Topic>>> {
    let meta = db.cf_handle(META_CF).ok_or_else(|| StorageError::Internal("meta column family missing".into()))?;
    let mut topics = HashMap::new();
    let mut wanted = std::collections::HashSet::new();
    for item in db.prefix_iterator_cf(&meta, TOPIC_PREFIX.as_bytes()) {
        let (key, value) = item?;
        if !key.starts_with(TOPIC_PREFIX.as_bytes()) {
            break;
        }
        let tm: TopicMeta = serde_json::from_slice(&value).map_err(|e| StorageError::Corrupt {
            cf: META_CF.into(),
            offset: 0,
            reason: format!("topic record {}: {e}", String::from_utf8_lossy(&key)),
        })?;
        let mut parts = Vec::with_capacity(tm.config.partitions as usize);
        let appends = AppendSignal::new();
        for p in 0..tm.config.partitions {
            let cf = cf_name(&tm.name, tm.id, p);
            wanted.insert(cf.clone());
            let (start, bytes) = match db.get_cf(&meta, state_key(&cf))? {
                Some(raw) => PartitionLog::decode_state(&raw).unwrap_or((0, 0)),
                None => (0, 0),
            };
            let handle = db.cf_handle(&cf).ok_or_else(|| StorageError::Corrupt {
                cf: cf.clone(),
                offset: 0,
                reason: "column family of a known partition is missing".into(),
            })?;
            let mut it = db.raw_iterator_cf(&handle);
            it.seek_to_last();
            let (end, running_max_ts) = match (it.key(), it.value()) {
                (Some(k), Some(v)) => {
                    let base = key_offset(k, &cf)?;
                    let header =
                        verify(v).map_err(|reason| StorageError::Corrupt { cf: cf.clone(), offset: base, reason })?;
                    (base + u64::from(header.count), header.running_max_ts)
                }
                _ => {
                    it.status()?;
                    (start, i64::MIN)
                }
            };
            parts.push(Arc::new(PartitionLog::new(
                &tm.name,
                p,
                cf,
                Bounds { start: start.min(end), end, bytes, running_max_ts },
                appends.clone(),
            )));
        }
        let topic = Topic {
            name: tm.name.clone(),
            id: tm.id,
            created_ms: tm.created_ms,
            config: RwLock::new(Arc::new(tm.config)),
            partitions: RwLock::new(parts),
            appends,
        };
        topics.insert(tm.name, Arc::new(topic));
    }
    // Remembered ids of topics that no longer exist (a crash between a topic's
    // deletion and the writer's clean-up) are dropped here.
    let dedup = crate::dedup::dedup_cf(db)?;
    let live: std::collections::BTreeSet<u64> = topics.values().map(|t: &Arc<Topic>| t.id).collect();
    let mut it = db.raw_iterator_cf(&dedup);
    it.seek_to_first();
    let mut orphans = Vec::new();
    while let Some(k) = it.key() {
        let Some(id) = k.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) else { break };
        if !live.contains(&id) {
            orphans.push(id);
        }
        // Skip to the next topic's entries.
        it.seek(id.saturating_add(1).to_be_bytes());
        if id == u64::MAX {
            break;
        }
    }
    it.status()?;
    drop(it);
    for id in orphans {
        let (from, to) = crate::dedup::topic_range(id);
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(&dedup, from, to);
        db.write(wb)?;
    }
    drop(dedup);
    // Persisted state of partitions that belong to no topic (a crash between a topic's
    // deletion and the writer's clean-up, or a store written by an older version).
    let mut stale = rocksdb::WriteBatch::default();
    for item in db.prefix_iterator_cf(&meta, STATE_PREFIX.as_bytes()) {
        let (key, _) = item?;
        let Some(cf) = key.strip_prefix(STATE_PREFIX.as_bytes()) else { break };
        if !wanted.contains(String::from_utf8_lossy(cf).as_ref()) {
            stale.delete_cf(&meta, &key);
        }
    }
    if !stale.is_empty() {
        tracing::info!(keys = stale.len(), "removing the persisted state of partitions that no longer exist");
        db.write(stale)?;
    }
    for name in cf_names {
        if name.starts_with("p/") && !wanted.contains(name) {
            tracing::warn!(cf = %name, "dropping orphan column family");
            db.drop_cf(name)?;
        }
    }
    Ok(topics)
}

impl Store {
    /// The partition log of `topic`/`partition`.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<PartitionLog>> {
        self.topic(topic)?.partition(partition)
    }

    /// Whether shutdown has begun.
    pub fn is_closing(&self) -> bool {
        *self.inner.closing.borrow()
    }

    /// A receiver that turns `true` when shutdown begins (sessions close on it).
    pub fn closing_signal(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Moves a partition's start forward (retention); used by the retention thread.
    pub(crate) fn truncate_blocking(&self, part: Arc<PartitionLog>, new_start: u64, removed_bytes: u64) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send_blocking(WriterCmd::Truncate { part, new_start, removed_bytes, reply })?;
        rx.blocking_recv().map_err(|_| StorageError::ShuttingDown)?
    }
}

/// Removes the temporary OPTIONS files a crash during a column-family create or drop
/// leaves behind (RocksDB writes `OPTIONS-<n>.dbtmp`, then renames it; it never cleans
/// up one it did not finish). Called right after the database is opened: this process
/// holds RocksDB's lock and no create or drop runs yet.
fn remove_options_leftovers(path: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(path) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("OPTIONS-") && name.ends_with(".dbtmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %name, "removed a temporary OPTIONS file left by a crash"),
                Err(e) => tracing::warn!(file = %name, error = %e, "could not remove a temporary OPTIONS file"),
            }
        }
    }
}
