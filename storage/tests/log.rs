//! Log invariants through the store's public API: dense offsets, exact read-back,
//! recovery on reopen, retention, topic lifecycle.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use tidegate_storage::{
    BatchBuilder, EncodedBatch, FsyncPolicy, ReadLimits, StorageError, Store, StoreConfig, TopicConfig,
    TopicConfigPatch,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn open(dir: &std::path::Path) -> Store {
    let mut cfg = StoreConfig::new(dir);
    cfg.fsync = FsyncPolicy::Never;
    cfg.retention_check_interval = Duration::from_secs(3600);
    Store::open(cfg).unwrap()
}

fn topic(partitions: u32) -> TopicConfig {
    TopicConfig::with_partitions(partitions)
}

fn batch(values: &[Vec<u8>], ts: i64) -> EncodedBatch {
    let mut b = BatchBuilder::new(&[("h", b"shared")], 64);
    for v in values {
        b.push(ts, Some(b"k"), &[], v, false);
    }
    b.finish(0)
}

const ALL: ReadLimits = ReadLimits { max_records: usize::MAX, max_bytes: usize::MAX };

/// Reads a whole partition as (offset, value) pairs.
fn read_all(store: &Store, t: &str, p: u32) -> Vec<(u64, Vec<u8>)> {
    let part = store.partition(t, p).unwrap();
    let r = store.read_blocking(&part, part.start_offset(), ALL).unwrap();
    r.records.into_iter().map(|r| (r.offset, r.value.to_vec())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Offsets are dense and increasing, a read returns exactly what was appended,
    /// and reopening the store returns the same log.
    #[test]
    fn appends_are_dense_exact_and_survive_reopen(
        requests in prop::collection::vec(
            prop::collection::vec((0u32..3, prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6)), 1..4),
            1..12,
        )
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let mut expected: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        {
            let store = open(dir.path());
            rt.block_on(store.create_topic("t", topic(3))).unwrap();
            for req in &requests {
                let batches: Vec<(u32, EncodedBatch)> = req.iter().map(|(p, vals)| (*p, batch(vals, 7))).collect();
                let bases = rt.block_on(store.append("t", batches)).unwrap();
                for ((p, vals), base) in req.iter().zip(bases) {
                    let log = expected.entry(*p).or_default();
                    prop_assert_eq!(base, log.len() as u64, "base offset is the old end");
                    log.extend(vals.iter().cloned());
                }
            }
            for p in 0..3 {
                let got = read_all(&store, "t", p);
                let want = expected.get(&p).cloned().unwrap_or_default();
                prop_assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (0..want.len() as u64).collect::<Vec<_>>());
                prop_assert_eq!(got.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), want);
            }
            rt.block_on(store.close()).unwrap();
        }
        let store = open(dir.path());
        for p in 0..3 {
            let want = expected.get(&p).cloned().unwrap_or_default();
            let part = store.partition("t", p).unwrap();
            prop_assert_eq!(part.end_offset(), want.len() as u64);
            prop_assert_eq!(read_all(&store, "t", p).into_iter().map(|(_, v)| v).collect::<Vec<_>>(), want);
        }
        rt.block_on(store.close()).unwrap();
    }

    /// Reading from any offset returns the suffix from that offset, within limits.
    #[test]
    fn reads_from_any_offset_return_the_suffix(sizes in prop::collection::vec(1usize..20, 1..10), pick in any::<prop::sample::Index>(), max in 1usize..50) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let store = open(dir.path());
        rt.block_on(store.create_topic("t", topic(1))).unwrap();
        let mut n = 0u64;
        for size in &sizes {
            let vals: Vec<Vec<u8>> = (0..*size).map(|i| (n + i as u64).to_be_bytes().to_vec()).collect();
            rt.block_on(store.append("t", vec![(0, batch(&vals, 1))])).unwrap();
            n += *size as u64;
        }
        let from = pick.index(n as usize) as u64;
        let part = store.partition("t", 0).unwrap();
        let r = store.read_blocking(&part, from, ReadLimits { max_records: max, max_bytes: usize::MAX }).unwrap();
        let expect: Vec<u64> = (from..n).take(max).collect();
        prop_assert_eq!(r.records.iter().map(|r| r.offset).collect::<Vec<_>>(), expect.clone());
        for r in &r.records {
            prop_assert_eq!(r.value.as_ref(), &r.offset.to_be_bytes()[..]);
        }
        prop_assert_eq!(r.next_offset, from + expect.len() as u64);
        rt.block_on(store.close()).unwrap();
    }
}

#[test]
fn concurrent_appends_share_group_commits_and_stay_dense() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.fsync = FsyncPolicy::Always;
    let store = Store::open(cfg).unwrap();
    rt.block_on(async {
        store.create_topic("t", topic(2)).await.unwrap();
        let mut tasks = Vec::new();
        for c in 0..16u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..20u8 {
                    let base = store.append("t", vec![(u32::from(c % 2), batch(&[vec![c, i]], 1))]).await.unwrap();
                    got.push((c % 2, base[0], vec![c, i]));
                }
                got
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        for p in 0..2u32 {
            let log = read_all(&store, "t", p);
            assert_eq!(log.len(), 160);
            assert!(log.iter().enumerate().all(|(i, (o, _))| *o == i as u64), "dense");
            for (_, off, v) in acked.iter().filter(|(pp, _, _)| u32::from(*pp) == p) {
                assert_eq!(&log[*off as usize].1, v, "acknowledged value at its offset");
            }
        }
        store.close().await.unwrap();
    });
}

#[test]
fn an_append_is_atomic_across_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path());
    rt.block_on(async {
        store.create_topic("t", topic(2)).await.unwrap();
        let err = store.append("t", vec![(0, batch(&[vec![1]], 1)), (5, batch(&[vec![2]], 1))]).await.unwrap_err();
        assert!(matches!(err, StorageError::PartitionNotFound { partition: 5, .. }), "{err}");
        assert_eq!(store.partition("t", 0).unwrap().end_offset(), 0, "nothing of a failed request is stored");
        store.close().await.unwrap();
    });
}

#[test]
fn temporary_options_files_left_by_a_crash_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    rt().block_on(store.close()).unwrap();
    drop(store);
    let leftover = dir.path().join("rocksdb").join("OPTIONS-000099.dbtmp");
    std::fs::write(&leftover, vec![0u8; 4096]).unwrap();
    let store = open(dir.path());
    assert!(!leftover.exists(), "the leftover is removed once the store is open");
    rt().block_on(store.close()).unwrap();
}

/// The RocksDB of the closed store in `dir` with all its column families, opened
/// directly (read-only or not).
fn raw_db(dir: &std::path::Path, read_only: bool) -> rocksdb::DB {
    let (opts, path) = (rocksdb::Options::default(), dir.join("rocksdb"));
    let families = rocksdb::DB::list_cf(&opts, &path).unwrap();
    match read_only {
        true => rocksdb::DB::open_cf_for_read_only(&opts, &path, &families, false).unwrap(),
        false => rocksdb::DB::open_cf(&opts, &path, &families).unwrap(),
    }
}

/// The partition-state keys (`pstate/<column family>`) in the meta column family of the
/// closed store in `dir`, read straight from RocksDB.
fn state_keys_on_disk(dir: &std::path::Path) -> Vec<String> {
    let db = raw_db(dir, true);
    let meta = db.cf_handle("meta").unwrap();
    db.iterator_cf(&meta, rocksdb::IteratorMode::Start)
        .map(|item| String::from_utf8(item.unwrap().0.into_vec()).unwrap())
        .filter(|k| k.starts_with("pstate/"))
        .collect()
}

#[test]
fn deleting_a_topic_under_appends_leaves_no_partition_state() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path());
    rt.block_on(async {
        store.create_topic("keep", topic(1)).await.unwrap();
        store.append("keep", vec![(0, batch(&[vec![1]], 1))]).await.unwrap();
        for round in 0..5 {
            store.create_topic("t", topic(2)).await.unwrap();
            // Appends still queued at the writer when the topic's metadata is deleted
            // write their partitions' state again; the drop must remove it.
            for i in 0..400u32 {
                store.append_detached("t", vec![(i % 2, batch(&[vec![round]], 1))]).await.unwrap();
            }
            store.delete_topic("t").await.unwrap();
        }
        store.close().await.unwrap();
    });
    drop(store);
    assert_eq!(state_keys_on_disk(dir.path()), ["pstate/p/keep/1/0"]);
}

#[test]
fn partition_state_of_no_topic_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    rt().block_on(async {
        store.create_topic("keep", topic(1)).await.unwrap();
        store.append("keep", vec![(0, batch(&[vec![1]], 1))]).await.unwrap();
        store.close().await.unwrap();
    });
    drop(store);
    {
        let db = raw_db(dir.path(), false);
        db.put_cf(&db.cf_handle("meta").unwrap(), b"pstate/p/gone/7/0", [0u8; 16]).unwrap();
    }
    assert_eq!(state_keys_on_disk(dir.path()), ["pstate/p/gone/7/0", "pstate/p/keep/1/0"]);
    let store = open(dir.path());
    assert_eq!(store.partition("keep", 0).unwrap().end_offset(), 1);
    rt().block_on(store.close()).unwrap();
    drop(store);
    assert_eq!(state_keys_on_disk(dir.path()), ["pstate/p/keep/1/0"]);
}

#[test]
fn size_retention_keeps_the_newest_batch_however_large() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path());
    rt.block_on(async {
        store
            .create_topic("t", TopicConfig { retention_bytes: Some(1000), ..TopicConfig::with_partitions(1) })
            .await
            .unwrap();
        let big: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 200]).collect();
        store.append("t", vec![(0, batch(&big, 1))]).await.unwrap();
        assert_eq!(store.apply_retention_now().await.unwrap(), 0, "the only batch is the newest: kept");
        assert_eq!(read_all(&store, "t", 0).len(), 20);
        store.append("t", vec![(0, batch(&[vec![7; 10]], 1))]).await.unwrap();
        assert_eq!(store.apply_retention_now().await.unwrap(), 20, "an older batch goes once a newer one exists");
        assert_eq!(read_all(&store, "t", 0).len(), 1);
        store.close().await.unwrap();
    });
}

#[test]
fn retention_by_size_and_time_keeps_offsets_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path());
    rt.block_on(async {
        store
            .create_topic("t", TopicConfig { retention_bytes: Some(2000), ..TopicConfig::with_partitions(1) })
            .await
            .unwrap();
        for i in 0..10u8 {
            store.append("t", vec![(0, batch(&[vec![i; 500]], 1))]).await.unwrap();
        }
        let deleted = store.apply_retention_now().await.unwrap();
        let part = store.partition("t", 0).unwrap();
        assert!(deleted >= 6, "deleted {deleted}");
        assert_eq!(part.start_offset(), deleted);
        assert!(part.stats().bytes <= 2000, "{:?}", part.stats());
        assert_eq!(part.end_offset(), 10);
        let err = store.read_blocking(&part, 0, ALL).unwrap_err();
        assert!(matches!(err, StorageError::OffsetOutOfRange { start, .. } if start == deleted));
        // Time retention: every batch has timestamp 1 (1970), so all go.
        store
            .alter_topic("t", TopicConfigPatch { retention_ms: Some(Some(1000)), ..Default::default() })
            .await
            .unwrap();
        store.apply_retention_now().await.unwrap();
        assert_eq!(part.start_offset(), 10);
        assert!(read_all(&store, "t", 0).is_empty());
        store.close().await.unwrap();
    });
    drop(store);
    let store = open(dir.path());
    let part = store.partition("t", 0).unwrap();
    assert_eq!((part.start_offset(), part.end_offset()), (10, 10), "an emptied log keeps its offsets");
    let base = rt.block_on(store.append("t", vec![(0, batch(&[vec![9]], 5))])).unwrap();
    assert_eq!(base, vec![10], "offsets are never reused");
    rt.block_on(store.close()).unwrap();
}

#[test]
fn delete_recreate_and_grow_topics() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path());
    rt.block_on(async {
        store.create_topic("t", topic(1)).await.unwrap();
        store.append("t", vec![(0, batch(&[vec![1], vec![2]], 1))]).await.unwrap();
        assert!(matches!(store.create_topic("t", topic(1)).await, Err(StorageError::TopicExists(_))));
        let grown = store.add_partitions("t", 3).await.unwrap();
        assert_eq!(grown.partitions.len(), 3);
        assert!(matches!(store.add_partitions("t", 2).await, Err(StorageError::PartitionCountNotIncreased { .. })));
        store.append("t", vec![(2, batch(&[vec![3]], 1))]).await.unwrap();
        store.create_topic("other", topic(1)).await.unwrap();
        let (t0, t2) = (store.partition("t", 0).unwrap(), store.partition("t", 2).unwrap());
        store
            .commit_offsets("g", vec![(t0.clone(), 2), (t2, 1), (store.partition("other", 0).unwrap(), 0)])
            .await
            .unwrap();
        store.delete_topic("t").await.unwrap();
        assert!(matches!(store.topic("t"), Err(StorageError::TopicNotFound(_))));
        let left: Vec<String> = store.committed_offsets("g").await.unwrap().into_iter().map(|c| c.topic).collect();
        assert_eq!(left, ["other"], "the deleted topic's committed offsets went with it");
        let late = store.commit_offsets("g", vec![(t0.clone(), 2)]).await;
        assert!(matches!(late, Err(StorageError::TopicNotFound(_))), "{late:?}");
        store.create_topic("t", topic(1)).await.unwrap();
        // A position read from the deleted topic is no position in the new one.
        let stale = store.commit_offsets("g", vec![(t0, 2)]).await;
        assert!(matches!(stale, Err(StorageError::TopicDeleted(_))), "{stale:?}");
        assert!(store.committed_offsets("g").await.unwrap().iter().all(|c| c.topic != "t"));
        assert_eq!(store.partition("t", 0).unwrap().end_offset(), 0, "a re-created topic starts empty");
        store.delete_topic("other").await.unwrap();
        store.close().await.unwrap();
    });
    drop(store);
    // The deleted topic's three partitions left no column family behind: only the new
    // topic's one remains next to the store's own.
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path().join("rocksdb")).unwrap();
    let partitions: Vec<&String> = families.iter().filter(|n| n.starts_with("p/")).collect();
    assert_eq!(partitions.len(), 1, "{families:?}");
    let store = open(dir.path());
    assert_eq!(store.topics().len(), 1);
    assert_eq!(store.topic("t").unwrap().partition_count(), 1);
    rt.block_on(store.close()).unwrap();
}

#[test]
fn timestamp_lookup_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path());
    rt.block_on(async {
        store.create_topic("t", topic(1)).await.unwrap();
        for ts in [100, 200, 300, 400, 500] {
            store.append("t", vec![(0, batch(&[vec![1], vec![2]], ts))]).await.unwrap();
        }
        let part = store.partition("t", 0).unwrap();
        let at = |ts| store.offset_for_timestamp(part.clone(), ts);
        assert_eq!(at(0).await.unwrap().offset, 0);
        assert_eq!(at(250).await.unwrap().offset, 4);
        assert_eq!(at(300).await.unwrap().timestamp, Some(300));
        let past = at(501).await.unwrap();
        assert_eq!((past.offset, past.timestamp), (10, None));
        store.close().await.unwrap();
    });
}

#[test]
fn long_poll_wakes_on_append_and_returns_on_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path());
    rt.block_on(async {
        store.create_topic("t", topic(1)).await.unwrap();
        let part = store.partition("t", 0).unwrap();
        let empty = store.fetch(part.clone(), 0, ALL, Duration::from_millis(50)).await.unwrap();
        assert!(empty.records.is_empty());
        let waiter = tokio::spawn({
            let store = store.clone();
            let part = part.clone();
            async move { store.fetch(part, 0, ALL, Duration::from_secs(30)).await }
        });
        store.append("t", vec![(0, batch(&[vec![42]], 1))]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken, not timed out")
            .unwrap()
            .unwrap();
        assert_eq!(got.records[0].value.as_ref(), &[42]);
        store.close().await.unwrap();
    });
}

/// One topic-wide signal per commit: a request spread over three partitions fires it
/// once, after every high watermark moved; partitions added later share it, other
/// topics and re-created topics do not; deletion and shutdown fire it too.
#[test]
fn the_topic_append_signal_fires_once_per_commit() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path());
    rt.block_on(async {
        store.create_topic("t", topic(3)).await.unwrap();
        store.create_topic("other", topic(1)).await.unwrap();
        let p0 = store.partition("t", 0).unwrap();
        let mut signal = p0.watch_topic_appends();
        let start = *signal.borrow_and_update();
        store
            .append("t", vec![(0, batch(&[vec![1]], 1)), (1, batch(&[vec![2]], 1)), (2, batch(&[vec![3]], 1))])
            .await
            .unwrap();
        assert!(signal.has_changed().unwrap(), "the commit fired the signal");
        assert_eq!(*signal.borrow_and_update(), start.wrapping_add(1), "once for the whole commit");
        for p in 0..3 {
            assert_eq!(store.partition("t", p).unwrap().high_watermark(), 1, "every high watermark moved before");
        }
        store.append("other", vec![(0, batch(&[vec![4]], 1))]).await.unwrap();
        assert!(!signal.has_changed().unwrap(), "another topic's append is not this topic's");
        let other = store.partition("other", 0).unwrap();
        assert!(!p0.same_topic(&other));
        store.add_partitions("t", 4).await.unwrap();
        let p3 = store.partition("t", 3).unwrap();
        assert!(p0.same_topic(&p3), "an added partition shares the topic's signal");
        store.append("t", vec![(3, batch(&[vec![5]], 1))]).await.unwrap();
        assert!(signal.has_changed().unwrap(), "an append to the added partition fires it");
        signal.mark_unchanged();
        store.delete_topic("t").await.unwrap();
        assert!(signal.has_changed().unwrap(), "deleting the topic fires it");
        store.create_topic("t", topic(1)).await.unwrap();
        assert!(!p0.same_topic(&store.partition("t", 0).unwrap()), "a re-created topic has its own signal");
        let mut other_signal = other.watch_topic_appends();
        other_signal.mark_unchanged();
        store.begin_shutdown();
        assert!(other_signal.has_changed().unwrap(), "shutting down fires every topic's signal");
        store.close().await.unwrap();
    });
}
