//! The idempotency memory through the store's public API: ids are remembered with
//! their records (and survive a reopen), in-flight ids are serialised, failed appends
//! release their ids, deleting a topic forgets them, and expiry drops old ones.

use std::sync::Arc;
use std::time::Duration;

use tidegate_storage::{
    BatchBuilder, EncodedBatch, FsyncPolicy, IdState, IdWrite, IdWrites, Remembered, Store, StoreConfig, TopicConfig,
};

fn config(dir: &std::path::Path, window: Duration) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.fsync = FsyncPolicy::Never;
    cfg.retention_check_interval = Duration::from_secs(3600);
    cfg.dedup_window = window;
    cfg.dedup_cache_bytes = 1 << 20;
    cfg
}

fn batch(n: usize) -> EncodedBatch {
    let mut b = BatchBuilder::new(&[], 64);
    for i in 0..n {
        b.push(0, None, &[], format!("v{i}").as_bytes(), false);
    }
    b.finish(0)
}

/// Claims `ids` on `topic` and appends the new ones to partition 0, one record each;
/// returns each id's state before the append and where every id's record is.
async fn write_ids(store: &Store, topic: &str, ids: &[&str]) -> (Vec<IdState>, Vec<(u32, u64)>) {
    let t = store.topic(topic).unwrap();
    let wanted = ids.iter().map(|id| (t.clone(), id.as_bytes().to_vec())).collect();
    let (states, claims) = store.dedup_claim(wanted).await.unwrap();
    let new: Vec<usize> = (0..ids.len()).filter(|i| states[*i] == IdState::Claimed).collect();
    let mut places = vec![(0, 0); ids.len()];
    for (i, s) in states.iter().enumerate() {
        if let IdState::Seen(r) = s {
            places[i] = (r.partition, r.offset);
        }
    }
    if !new.is_empty() {
        let entries = new
            .iter()
            .enumerate()
            .map(|(pos, &claim)| IdWrite { claim, batch: 0, position: pos as u32, dead_lettered: false })
            .collect();
        let part = t.partition(0).unwrap();
        let bases = store.append_to(vec![(part, batch(new.len()))], Some(IdWrites { claims, entries })).await.unwrap();
        for (pos, &i) in new.iter().enumerate() {
            places[i] = (0, bases[0] + pos as u64);
        }
    }
    (states, places)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn remembered_ids_answer_the_first_place_also_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let store = Store::open(config(dir.path(), Duration::from_secs(3600))).unwrap();
        store.create_topic("t", TopicConfig::with_partitions(1)).await.unwrap();
        let (states, first) = write_ids(&store, "t", &["a", "b"]).await;
        assert_eq!(states, vec![IdState::Claimed; 2]);
        assert_eq!(first, vec![(0, 0), (0, 1)]);
        let (states, again) = write_ids(&store, "t", &["b", "c", "a"]).await;
        assert!(matches!(states[0], IdState::Seen(Remembered { offset: 1, .. })));
        assert_eq!(states[1], IdState::Claimed);
        assert_eq!(again, vec![(0, 1), (0, 2), (0, 0)]);
        assert_eq!(store.topic("t").unwrap().partition(0).unwrap().end_offset(), 3, "seen ids are not written");
        let stats = store.dedup_stats();
        assert_eq!(stats.cache_entries, 3);
        assert_eq!(stats.in_flight, 0);
        store.close().await.unwrap();
    });
    rt.block_on(async {
        let store = Store::open(config(dir.path(), Duration::from_secs(3600))).unwrap();
        assert_eq!(store.dedup_stats().cache_entries, 0, "a fresh process has an empty cache");
        let (states, places) = write_ids(&store, "t", &["c", "d"]).await;
        assert!(matches!(states[0], IdState::Seen(_)), "found on disk after the reopen");
        assert_eq!(places, vec![(0, 2), (0, 3)]);
        store.close().await.unwrap();
    });
}

#[test]
fn an_in_flight_id_waits_and_a_released_one_is_claimed_again() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(config(dir.path(), Duration::from_secs(3600))).unwrap();
        store.create_topic("t", TopicConfig::with_partitions(1)).await.unwrap();
        let t = store.topic("t").unwrap();
        let (states, held) = store.dedup_claim(vec![(t.clone(), b"x".to_vec())]).await.unwrap();
        assert_eq!(states, vec![IdState::Claimed]);
        assert_eq!(store.dedup_stats().in_flight, 1);
        // A second request with the same id waits while the first holds it...
        let waiter = {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move { store.dedup_claim(vec![(t, b"x".to_vec())]).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the second claim waits for the first");
        // ...and claims it itself when the first gives up without writing.
        drop(held);
        let (states, claims) = waiter.await.unwrap();
        assert_eq!(states, vec![IdState::Claimed]);
        // Now the waiter writes it; a third request sees the waiter's copy.
        let part = t.partition(0).unwrap();
        let entries = vec![IdWrite { claim: 0, batch: 0, position: 0, dead_lettered: true }];
        store.append_to(vec![(part, batch(1))], Some(IdWrites { claims, entries })).await.unwrap();
        let (states, _) = store.dedup_claim(vec![(t.clone(), b"x".to_vec())]).await.unwrap();
        assert!(matches!(states[0], IdState::Seen(Remembered { offset: 0, dead_lettered: true, .. })));
        store.close().await.unwrap();
    });
}

#[test]
fn concurrent_retries_of_one_id_are_written_once() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(config(dir.path(), Duration::from_secs(3600))).unwrap();
        store.create_topic("t", TopicConfig::with_partitions(1)).await.unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { write_ids(&store, "t", &["same", "other"]).await.1 })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "every retry answers the same places: {answers:?}");
        assert_eq!(store.topic("t").unwrap().partition(0).unwrap().end_offset(), 2);
        store.close().await.unwrap();
    });
}

#[test]
fn deleting_a_topic_forgets_its_ids_and_expiry_drops_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(config(dir.path(), Duration::from_millis(300))).unwrap();
        store.create_topic("t", TopicConfig::with_partitions(1)).await.unwrap();
        write_ids(&store, "t", &["a"]).await;
        store.delete_topic("t").await.unwrap();
        store.create_topic("t", TopicConfig::with_partitions(1)).await.unwrap();
        let (states, _) = write_ids(&store, "t", &["a"]).await;
        assert_eq!(states, vec![IdState::Claimed], "a re-created topic remembers nothing of the old one");

        let ids: Vec<String> = (0..500).map(|i| format!("id-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        write_ids(&store, "t", &refs).await;
        store.expire_dedup_now().await.unwrap();
        let before = store.dedup_stats();
        assert!(before.disk_entries_estimate >= 400, "{before:?}");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (states, _) = write_ids(&store, "t", &["id-1"]).await;
        assert_eq!(states, vec![IdState::Claimed], "an id older than the window is forgotten");
        store.expire_dedup_now().await.unwrap();
        let after = store.dedup_stats();
        assert!(after.disk_entries_estimate <= 2, "expired ids dropped from disk: {before:?} -> {after:?}");
        store.close().await.unwrap();
    });
}

#[test]
fn memory_and_disk_per_remembered_id() {
    // Not a timing assertion: reports the footprint of 20,000 ids (36-byte UUID-like
    // ids, like Segment's messageId) and checks it stays within the documented bounds.
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut cfg = config(dir.path(), Duration::from_secs(3600));
        cfg.dedup_cache_bytes = 64 << 20;
        let store = Arc::new(Store::open(cfg).unwrap());
        store.create_topic("t", TopicConfig::with_partitions(1)).await.unwrap();
        let n = 20_000;
        // Random-looking v4 UUIDs (splitmix64), so compression gets no help from patterns.
        let mix = |x: u64| {
            let z = x.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let ids: Vec<String> = (0..n as u64)
            .map(|i| {
                let (a, b) = (mix(2 * i), mix(2 * i + 1));
                format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    a >> 32,
                    a & 0xffff,
                    b >> 52,
                    (b >> 40) & 0xfff,
                    b & 0xffff_ffff_ffff
                )
            })
            .collect();
        for chunk in ids.chunks(500) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            write_ids(&store, "t", &refs).await;
        }
        store.expire_dedup_now().await.unwrap(); // flush and compact: SST bytes only
        let s = store.dedup_stats();
        let memory = s.cache_bytes as f64 / n as f64;
        let disk = s.disk_bytes as f64 / n as f64;
        println!("per remembered id: memory {memory:.1} B (cache estimate), disk {disk:.1} B (SST, LZ4)");
        assert_eq!(s.cache_entries, n as u64);
        assert!(memory <= tidegate_storage::dedup::CACHE_ENTRY_BYTES as f64);
        assert!(disk > 0.0 && disk < 100.0, "disk per id {disk}");
        store.close().await.unwrap();
        store.close().await.unwrap();
    });
}

/// After a restart (empty id cache, no room in the block cache), retried ids whose
/// entries are in a compacted table file are read on a blocking thread (counted) and
/// answered with their first place, in the order asked, mixed with new ids that the
/// memory-only pass answers.
#[test]
fn ids_in_table_files_are_found_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000u64;
    let ids: Vec<String> = (0..n).map(|i| format!("{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect();
    rt().block_on(async {
        let store = Store::open(config(dir.path(), Duration::from_secs(3600))).unwrap();
        store.create_topic("t", TopicConfig::with_partitions(1)).await.unwrap();
        for chunk in ids.chunks(1000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            write_ids(&store, "t", &refs).await;
        }
        store.expire_dedup_now().await.unwrap(); // into one compacted table file
        store.close().await.unwrap();
    });
    rt().block_on(async {
        // No room in the block cache: what the filters cannot rule out needs a file read.
        let mut cold = config(dir.path(), Duration::from_secs(3600));
        cold.block_cache_bytes = 0;
        let store = Store::open(cold).unwrap();
        let mut wanted: Vec<&str> = vec!["new-1"];
        wanted.extend(ids.iter().step_by(997).map(String::as_str));
        wanted.push("new-2");
        let (states, places) = write_ids(&store, "t", &wanted).await;
        assert_eq!((states[0], states[wanted.len() - 1]), (IdState::Claimed, IdState::Claimed));
        for (i, id) in wanted.iter().enumerate().skip(1).take(wanted.len() - 2) {
            let first = (i as u64 - 1) * 997;
            assert_eq!(ids[first as usize], *id);
            assert!(matches!(states[i], IdState::Seen(_)), "{id}");
            assert_eq!(places[i], (0, first), "{id}");
        }
        let lookups = store.dedup_stats().disk_lookups;
        assert!(lookups >= 1 && lookups <= wanted.len() as u64, "table reads: {lookups}");
        store.close().await.unwrap();
    });
}

/// A data directory written before the `dedup` column family used universal compaction
/// (leveled: its entries compacted out of L0 into the last level) opens, its expired
/// entries are dropped by the expiry filter, and ids are remembered as before.
#[test]
fn a_leveled_dedup_column_family_from_an_earlier_version_opens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path().join("rocksdb"), ["default", "meta", "groups", "dedup"])
            .expect("open as leveled");
        let cf = db.cf_handle("dedup").unwrap();
        for round in 0..3 {
            for i in 0..5_000u32 {
                let mut key = 99u64.to_be_bytes().to_vec();
                key.extend_from_slice(format!("e:old-{round}-{i}").as_bytes());
                // Remembered at the epoch: long expired.
                db.put_cf(&cf, key, [0u8; 21]).unwrap();
            }
            db.flush_cf(&cf).unwrap();
        }
        db.compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
        let files = |level: u32| {
            db.property_int_value_cf(&cf, &format!("rocksdb.num-files-at-level{level}")).unwrap().unwrap_or(0)
        };
        assert_eq!(files(0), 0, "compacted out of L0");
        assert!((1..7).map(files).sum::<u64>() > 0, "the entries sit in a lower level");
    }
    rt().block_on(async {
        let store = Store::open(config(dir.path(), Duration::from_secs(3600))).unwrap();
        assert!(store.dedup_stats().disk_entries_estimate >= 10_000, "{:?}", store.dedup_stats());
        store.create_topic("t", TopicConfig::with_partitions(1)).await.unwrap();
        let (states, _) = write_ids(&store, "t", &["a", "b"]).await;
        assert_eq!(states, vec![IdState::Claimed; 2]);
        store.expire_dedup_now().await.unwrap();
        let stats = store.dedup_stats();
        assert!(stats.disk_entries_estimate < 100, "the expired old entries are gone: {stats:?}");
        let (states, places) = write_ids(&store, "t", &["b", "c"]).await;
        assert!(matches!(states[0], IdState::Seen(Remembered { offset: 1, .. })), "{states:?}");
        assert_eq!(places, vec![(0, 1), (0, 2)]);
        store.close().await.unwrap();
    });
}
