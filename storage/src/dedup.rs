//! Idempotency memory: which event ids were written, and where, for a window.
//!
//! On disk: the `dedup` column family, key = topic incarnation id (big-endian `u64`)
//! followed by the event id's bytes, value = partition `u32`, offset `u64`, time
//! remembered (ms, `i64`) and a flag byte (bit 0: the event went to the topic's
//! dead-letter topic), all big-endian (21 bytes).
//!
//! Guarantees:
//! - Consistent with the log: the writer thread puts an id's entry in the same RocksDB
//!   `WriteBatch` as the event itself, so an acknowledged event's id survives any crash
//!   and no id is remembered for an event that was not written.
//! - One writer per id: an id is *claimed* before its event is encoded; a second
//!   request carrying an id still in flight waits until the first one's write is done
//!   (or failed), then answers from its result. Claims are taken in key order, so two
//!   requests waiting on each other's ids cannot deadlock.
//! - Bounded: entries older than the window are ignored on lookup and dropped by a
//!   compaction filter when the upkeep thread compacts the column family, so the disk
//!   holds at most about (window + compaction period) × id rate entries. Memory holds
//!   the in-flight claims plus a cache of recent entries bounded in bytes: two
//!   generations, each at most half the budget; when the young one is full it becomes
//!   the old one and the previous old one is emptied and becomes the young one (the
//!   oldest half is forgotten at once, which costs one hash-map insert per id instead
//!   of a FIFO's bookkeeping). Emptying keeps a map's allocation, so once both
//!   generations have filled the cache neither grows (rehashes) nor allocates again.
//! - In memory an id is its [`Fingerprint`]: 128 bits from two SipHash-1-3 hashes of
//!   its key, keyed at random per process. The maps hold fixed 40-byte slots instead
//!   of a copy of every key; two different ids share a fingerprint with probability
//!   about 2⁻¹²⁸ per pair, and the keys are secret, so one cannot be made to collide
//!   on purpose. The disk keeps the full key (exact lookups, the same across restarts).
//! - Deleting a topic drops its entries from disk (a range delete, ordered with
//!   appends). Its cached entries stay until their generation is dropped: they can
//!   never match again, as a re-created topic is a new incarnation with another id.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{Result, StorageError};
use crate::store::{Db, Store, Topic, now_ms};

pub(crate) const DEDUP_CF: &str = "dedup";
/// Most bytes of one event id.
pub const MAX_EVENT_ID: usize = 512;
const VALUE_LEN: usize = 21;
const FLAG_DEAD_LETTERED: u8 = 1;
/// Estimated memory of one cached entry: its hash-map slot (fingerprint 16 B, place
/// 24 B) and control byte, at the map's lowest load factor after it doubled (7/16).
pub const CACHE_ENTRY_BYTES: usize = 96;

/// An id's identity in memory: two independently keyed 64-bit SipHash-1-3 values of its
/// dedup key (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Fingerprint(u64, u64);

impl Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a uniformly distributed secret: no need to hash it again.
        state.write_u64(self.0);
    }
}

/// Passes a [`Fingerprint`]'s first half through as the map hash.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only fingerprints are hashed (through `write_u64`); fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdMap<V> = std::collections::HashMap<Fingerprint, V, BuildHasherDefault<PassThrough>>;

/// Makes fingerprints with this process's two secret keys.
struct Fingerprinter(RandomState, RandomState);

impl Fingerprinter {
    fn new() -> Self {
        Fingerprinter(RandomState::new(), RandomState::new())
    }

    fn of(&self, key: &[u8]) -> Fingerprint {
        Fingerprint(self.0.hash_one(key), self.1.hash_one(key))
    }
}

/// Where the first copy of an event was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// Partition of the first copy (of the dead-letter topic when `dead_lettered`).
    pub partition: u32,
    /// Offset of the first copy.
    pub offset: u64,
    /// The event failed the topic's schema and went to its dead-letter topic.
    pub dead_lettered: bool,
    /// When the id was remembered, ms since the Unix epoch.
    pub remembered_ms: i64,
}

impl Remembered {
    fn encode(&self) -> [u8; VALUE_LEN] {
        let mut v = [0u8; VALUE_LEN];
        v[..4].copy_from_slice(&self.partition.to_be_bytes());
        v[4..12].copy_from_slice(&self.offset.to_be_bytes());
        v[12..20].copy_from_slice(&self.remembered_ms.to_be_bytes());
        v[20] = if self.dead_lettered { FLAG_DEAD_LETTERED } else { 0 };
        v
    }

    fn decode(v: &[u8]) -> Option<Remembered> {
        let v: &[u8; VALUE_LEN] = v.try_into().ok()?;
        Some(Remembered {
            partition: u32::from_be_bytes(v[..4].try_into().ok()?),
            offset: u64::from_be_bytes(v[4..12].try_into().ok()?),
            remembered_ms: i64::from_be_bytes(v[12..20].try_into().ok()?),
            dead_lettered: v[20] & FLAG_DEAD_LETTERED != 0,
        })
    }
}

/// What a claimed id turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdState {
    /// Written before, within the window: answer with the first copy's place.
    Seen(Remembered),
    /// New: this request owns the id until its append is done or the [`Claims`] dropped.
    Claimed,
}

/// Size of the idempotency memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DedupStats {
    /// Entries in the memory cache.
    pub cache_entries: u64,
    /// Estimated bytes of the memory cache ([`CACHE_ENTRY_BYTES`] per entry).
    pub cache_bytes: u64,
    /// Ids claimed by requests still in flight.
    pub in_flight: u64,
    /// Bytes of the `dedup` column family (SST files plus memtables).
    pub disk_bytes: u64,
    /// RocksDB's estimate of the entries on disk (expired ones included until compacted).
    pub disk_entries_estimate: u64,
    /// Ids looked up since the start that needed a table-file read (on a blocking
    /// thread) because neither the memtables nor the block cache could answer them.
    pub disk_lookups: u64,
}

/// The in-memory layer: recent entries (two generations) and in-flight claims.
#[derive(Default)]
struct Memory {
    /// Takes new entries, up to half the cache budget.
    young: IdMap<Remembered>,
    /// The previous young generation, dropped when the young one fills up again.
    old: IdMap<Remembered>,
    young_bytes: usize,
    old_bytes: usize,
    /// Claimed ids, with a notifier made only when another request waits for the id
    /// (woken when the claim ends: written or released).
    inflight: IdMap<Option<Arc<Notify>>>,
}

impl Memory {
    fn cached(&self, fp: &Fingerprint) -> Option<&Remembered> {
        self.young.get(fp).or_else(|| self.old.get(fp))
    }
}

/// The idempotency memory shared by the store, the writer and the claims.
pub(crate) struct Dedup {
    memory: Mutex<Memory>,
    /// See [`DedupStats::disk_lookups`].
    disk_lookups: AtomicU64,
    fingerprints: Fingerprinter,
    window_ms: i64,
    cache_budget: usize,
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup").field("window_ms", &self.window_ms).field("cache_budget", &self.cache_budget).finish()
    }
}

impl Dedup {
    pub(crate) fn new(window: Duration, cache_budget: usize) -> Dedup {
        Dedup {
            memory: Mutex::new(Memory::default()),
            disk_lookups: AtomicU64::new(0),
            fingerprints: Fingerprinter::new(),
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            cache_budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fresh(&self, place: &Remembered, now: i64) -> bool {
        now.saturating_sub(place.remembered_ms) < self.window_ms
    }

    /// Remembers `place` for `key` in the cache. When the young generation is full it
    /// becomes the old one, and the previous old one, emptied, the young one: clearing
    /// a map of plain values only resets its control bytes, and its allocation (sized
    /// for a full generation) is kept, so inserts stop rehashing and faulting in fresh
    /// pages once the cache has filled twice.
    fn cache(&self, m: &mut Memory, fp: Fingerprint, place: Remembered) {
        let cost = CACHE_ENTRY_BYTES;
        let half = self.cache_budget / 2;
        if cost > half {
            return;
        }
        if m.young_bytes + cost > half {
            let mut recycled = std::mem::take(&mut m.old);
            recycled.clear();
            m.old = std::mem::replace(&mut m.young, recycled);
            m.old_bytes = std::mem::take(&mut m.young_bytes);
        }
        if m.young.insert(fp, place).is_none() {
            m.young_bytes += cost;
        }
    }

    /// Ends a claim: remembers `place` (when written) and wakes waiters.
    fn resolve(&self, m: &mut Memory, fp: Fingerprint, place: Option<Remembered>) {
        if let Some(place) = place {
            self.cache(m, fp, place);
        }
        if let Some(Some(waiters)) = m.inflight.remove(&fp) {
            waiters.notify_waiters();
        }
    }

    fn stats(&self) -> (u64, u64, u64) {
        let m = self.lock();
        ((m.young.len() + m.old.len()) as u64, (m.young_bytes + m.old_bytes) as u64, m.inflight.len() as u64)
    }

    /// The compaction filter's verdict: drop entries older than the window (and
    /// anything undecodable).
    pub(crate) fn filter(window_ms: i64) -> impl FnMut(u32, &[u8], &[u8]) -> rocksdb::compaction_filter::Decision {
        move |_level, _key, value| match Remembered::decode(value) {
            Some(r) if now_ms().saturating_sub(r.remembered_ms) < window_ms => {
                rocksdb::compaction_filter::Decision::Keep
            }
            _ => rocksdb::compaction_filter::Decision::Remove,
        }
    }
}

/// The dedup column-family key of an id.
fn dedup_key(topic_id: u64, id: &[u8]) -> Box<[u8]> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&topic_id.to_be_bytes());
    k.extend_from_slice(id);
    k.into()
}

/// Ids claimed by one request. Dropping it releases the claims not completed by a
/// successful write, so requests waiting on them go on (and claim them themselves).
pub struct Claims {
    dedup: Arc<Dedup>,
    /// Per id of the request: its dedup key (written to disk with the event).
    keys: Arc<[Box<[u8]>]>,
    /// Per id of the request: its fingerprint while this request holds the claim.
    held: Vec<Option<Fingerprint>>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims").field("held", &self.held.iter().filter(|h| h.is_some()).count()).finish()
    }
}

impl Claims {
    /// The dedup key of claimed id `index`, if this request holds it.
    pub(crate) fn key(&self, index: usize) -> Option<&[u8]> {
        self.held.get(index)?.as_ref()?;
        self.keys.get(index).map(|k| &k[..])
    }

    /// Whether this request holds no claim (nothing to write to the dedup memory).
    pub fn is_empty(&self) -> bool {
        self.held.iter().all(Option::is_none)
    }

    /// Records where the claimed ids' events were written and ends those claims.
    pub(crate) fn complete(&mut self, places: &[(usize, Remembered)]) {
        let dedup = self.dedup.clone();
        let mut m = dedup.lock();
        for &(index, place) in places {
            if let Some(fp) = self.held.get_mut(index).and_then(Option::take) {
                dedup.resolve(&mut m, fp, Some(place));
            }
        }
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        if self.is_empty() {
            return;
        }
        let dedup = self.dedup.clone();
        let mut m = dedup.lock();
        for fp in self.held.iter_mut().filter_map(Option::take) {
            dedup.resolve(&mut m, fp, None);
        }
    }
}

/// One id's dedup entry for the writer: claimed id `claim`, written as record `position`
/// of the request's batch `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdWrite {
    /// Index of the id in the [`Store::dedup_claim`] call.
    pub claim: usize,
    /// Index of the batch in the append.
    pub batch: usize,
    /// Position of the event within that batch.
    pub position: u32,
    /// The event went to the dead-letter topic.
    pub dead_lettered: bool,
}

/// The ids an append must remember, with the claims that own them.
#[derive(Debug)]
pub struct IdWrites {
    /// The claims of [`Store::dedup_claim`].
    pub claims: Claims,
    /// One entry per event to remember.
    pub entries: Vec<IdWrite>,
}

pub(crate) fn dedup_cf(db: &Db) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>> {
    db.cf_handle(DEDUP_CF).ok_or_else(|| StorageError::Internal("dedup column family missing".into()))
}

/// Puts the entries of a written append into `wb`; returns what to record in memory.
pub(crate) fn put_entries(
    wb: &mut rocksdb::WriteBatch,
    cf: &Arc<rocksdb::BoundColumnFamily<'_>>,
    ids: &IdWrites,
    places: &[(u32, u64)],
    now: i64,
) -> Vec<(usize, Remembered)> {
    let mut out = Vec::with_capacity(ids.entries.len());
    for e in &ids.entries {
        let (Some(key), Some(&(partition, base))) = (ids.claims.key(e.claim), places.get(e.batch)) else { continue };
        let place = Remembered {
            partition,
            offset: base + u64::from(e.position),
            dead_lettered: e.dead_lettered,
            remembered_ms: now,
        };
        wb.put_cf(cf, key, place.encode());
        out.push((e.claim, place));
    }
    out
}

impl Store {
    /// Looks up and claims event ids, each scoped by its topic: the answer has one
    /// [`IdState`] per id, in order, and the [`Claims`] to pass to the append (with
    /// [`IdWrites`]) for the ids that are new. Ids still in flight in another request
    /// are waited for. `ids` must be distinct (per topic) and at most
    /// [`MAX_EVENT_ID`] bytes each.
    pub async fn dedup_claim(&self, ids: Vec<(Arc<Topic>, Vec<u8>)>) -> Result<(Vec<IdState>, Claims)> {
        let dedup = self.inner.dedup.clone();
        let keys: Arc<[Box<[u8]>]> = ids.iter().map(|(t, id)| dedup_key(t.id, id)).collect();
        let fps: Vec<Fingerprint> = keys.iter().map(|k| dedup.fingerprints.of(k)).collect();
        let mut states = vec![IdState::Claimed; keys.len()];
        let mut claims = Claims { dedup: dedup.clone(), keys: keys.clone(), held: vec![None; keys.len()] };
        // Claims are taken in fingerprint order, the same in every request.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by_key(|&i| fps[i]);
        debug_assert!(order.windows(2).all(|w| keys[w[0]] != keys[w[1]]), "ids must be distinct");
        let mut lookup = Vec::new();
        let mut next = 0;
        while next < order.len() {
            // One pass under one lock, up to the first id another request is writing.
            let wait = {
                let now = now_ms();
                let mut m = dedup.lock();
                let mut wait = None;
                while next < order.len() {
                    let i = order[next];
                    match m.cached(&fps[i]) {
                        Some(place) if dedup.fresh(place, now) => states[i] = IdState::Seen(*place),
                        _ => match m.inflight.get_mut(&fps[i]) {
                            Some(slot) => {
                                wait = Some(slot.get_or_insert_with(|| Arc::new(Notify::new())).clone());
                                break;
                            }
                            None => {
                                m.inflight.insert(fps[i], None);
                                claims.held[i] = Some(fps[i]);
                                lookup.push(i);
                            }
                        },
                    }
                    next += 1;
                }
                wait
            };
            // Another request is writing this id: wait for it, then look again. The
            // waiter registers before checking that the claim is still on, and a claim
            // ends (entry removed, then waiters notified) under the lock, so no wake-up
            // is missed.
            if let Some(waiters) = wait {
                let fp = fps[order[next]];
                let notified = waiters.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let still_claimed = dedup
                    .lock()
                    .inflight
                    .get(&fp)
                    .is_some_and(|slot| slot.as_ref().is_some_and(|n| Arc::ptr_eq(n, &waiters)));
                if still_claimed {
                    notified.await;
                }
            }
        }
        if !lookup.is_empty() {
            let (lookup, found) = self.dedup_read(&keys, lookup).await?;
            let now = now_ms();
            let mut m = dedup.lock();
            for (&i, place) in lookup.iter().zip(found) {
                if let Some(place) = place.filter(|p| dedup.fresh(p, now))
                    && let Some(fp) = claims.held[i].take()
                {
                    states[i] = IdState::Seen(place);
                    dedup.resolve(&mut m, fp, Some(place));
                }
            }
        }
        Ok((states, claims))
    }

    /// Reads the disk entries of `keys[i]` for each `i` in `lookup`. First from memory
    /// only (memtables, block cache and its filters), on the calling thread: a new id is
    /// usually answered by a bloom filter there, without a thread switch. Ids that would
    /// need a file read are then read on a blocking thread, so a slow disk never stalls
    /// the async workers.
    async fn dedup_read(
        &self,
        keys: &Arc<[Box<[u8]>]>,
        lookup: Vec<usize>,
    ) -> Result<(Vec<usize>, Vec<Option<Remembered>>)> {
        let mut found = vec![None; lookup.len()];
        let mut from_disk = Vec::new();
        {
            let db = &self.inner.db;
            let cf = dedup_cf(db)?;
            let mut memory_only = rocksdb::ReadOptions::default();
            memory_only.set_read_tier(rocksdb::ReadTier::BlockCache);
            let read = db.batched_multi_get_cf_opt(&cf, lookup.iter().map(|&i| &keys[i][..]), false, &memory_only);
            for (j, r) in read.into_iter().enumerate() {
                match r {
                    Ok(v) => found[j] = v.and_then(|v| Remembered::decode(&v)),
                    Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => from_disk.push(j),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if from_disk.is_empty() {
            return Ok((lookup, found));
        }
        self.inner.dedup.disk_lookups.fetch_add(from_disk.len() as u64, Ordering::Relaxed);
        let keys = keys.clone();
        self.blocking(move |s| {
            let db = &s.inner.db;
            let cf = dedup_cf(db)?;
            let read = db.batched_multi_get_cf(&cf, from_disk.iter().map(|&j| &keys[lookup[j]][..]), false);
            for (&j, r) in from_disk.iter().zip(read) {
                found[j] = r?.and_then(|v| Remembered::decode(&v));
            }
            Ok((lookup, found))
        })
        .await
    }

    /// The idempotency memory's size.
    pub fn dedup_stats(&self) -> DedupStats {
        let (cache_entries, cache_bytes, in_flight) = self.inner.dedup.stats();
        let db = &self.inner.db;
        let (disk_bytes, disk_entries_estimate) = match db.cf_handle(DEDUP_CF) {
            Some(cf) => {
                let prop = |name: &str| db.property_int_value_cf(&cf, name).ok().flatten().unwrap_or(0);
                (
                    prop("rocksdb.live-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables"),
                    prop("rocksdb.estimate-num-keys"),
                )
            }
            None => (0, 0),
        };
        let disk_lookups = self.inner.dedup.disk_lookups.load(Ordering::Relaxed);
        DedupStats { cache_entries, cache_bytes, in_flight, disk_bytes, disk_entries_estimate, disk_lookups }
    }

    /// Drops expired ids from disk now (a full compaction of the `dedup` column family
    /// through its expiry filter). The upkeep thread does this on its own period.
    /// Blocking.
    pub fn expire_dedup_blocking(&self) -> Result<()> {
        let db = &self.inner.db;
        let cf = dedup_cf(db)?;
        db.flush_cf(&cf)?;
        db.compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Async form of [`Store::expire_dedup_blocking`].
    pub async fn expire_dedup_now(&self) -> Result<()> {
        self.blocking(|s| s.expire_dedup_blocking()).await
    }
}

/// The range of dedup keys of one topic incarnation.
pub(crate) fn topic_range(topic_id: u64) -> ([u8; 8], [u8; 8]) {
    (topic_id.to_be_bytes(), topic_id.saturating_add(1).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(offset: u64, at: i64) -> Remembered {
        Remembered { partition: 1, offset, dead_lettered: offset.is_multiple_of(2), remembered_ms: at }
    }

    #[test]
    fn values_round_trip() {
        let p = place(42, 1_700_000_000_000);
        assert_eq!(Remembered::decode(&p.encode()), Some(p));
        assert_eq!(Remembered::decode(&[0; 20]), None);
    }

    #[test]
    fn cache_is_bounded_in_bytes_and_forgets_oldest_first() {
        let d = Dedup::new(Duration::from_secs(60), 10 * CACHE_ENTRY_BYTES);
        let fp = |i: u64| d.fingerprints.of(&dedup_key(1, format!("id-{i:02}").as_bytes()));
        let mut m = d.lock();
        let mut capacities = Vec::new();
        for i in 0..25u64 {
            d.cache(&mut m, fp(i), place(i, now_ms()));
            capacities.push(m.young.capacity());
        }
        // Two generations of five entries each: ids 15..=24 are remembered.
        assert_eq!((m.young.len(), m.old.len()), (5, 5));
        assert!(m.young_bytes + m.old_bytes <= d.cache_budget);
        // From the third generation on, the young one reuses an emptied map's allocation.
        assert!(capacities[10..].iter().all(|&c| c == capacities[9]), "{capacities:?}");
        for i in 0..25u64 {
            assert_eq!(m.cached(&fp(i)).map(|p| p.offset), (i >= 15).then_some(i), "id-{i:02}");
        }
        drop(m);
        assert_eq!(d.stats(), (10, 10 * CACHE_ENTRY_BYTES as u64, 0));
    }

    #[test]
    fn fingerprints_depend_on_topic_id_and_process_keys() {
        let f = Fingerprinter::new();
        assert_eq!(f.of(&dedup_key(1, b"e:a")), f.of(&dedup_key(1, b"e:a")));
        assert_ne!(f.of(&dedup_key(1, b"e:a")), f.of(&dedup_key(2, b"e:a")), "scoped by topic incarnation");
        assert_ne!(f.of(&dedup_key(1, b"e:a")), f.of(&dedup_key(1, b"e:b")));
        let (a, b) = (f.of(b"k"), f.of(b"k"));
        assert_ne!(a.0, a.1, "the two halves use different keys");
        assert_eq!(a, b);
        assert_ne!(Fingerprinter::new().of(b"k"), a, "keys are drawn anew for each process");
    }

    #[test]
    fn pass_through_hasher_uses_the_first_half() {
        let build = BuildHasherDefault::<PassThrough>::default();
        assert_eq!(build.hash_one(Fingerprint(42, 7)), 42);
    }

    #[test]
    fn expired_entries_are_not_fresh() {
        let d = Dedup::new(Duration::from_millis(1000), 1 << 20);
        let now = now_ms();
        assert!(d.fresh(&place(1, now - 999), now));
        assert!(!d.fresh(&place(1, now - 1000), now));
        let mut keep = Dedup::filter(1000);
        use rocksdb::compaction_filter::Decision;
        assert!(matches!(keep(0, b"k", &place(1, now).encode()), Decision::Keep));
        assert!(matches!(keep(0, b"k", &place(1, now - 5000).encode()), Decision::Remove));
    }
}
