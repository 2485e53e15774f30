//! Storage micro-benchmarks: append throughput (group commit, per fsync policy) and
//! sequential read throughput. Run: `cargo bench -p tidegate-storage --profile dev`
//! (the dev profile optimises every dependency; see README "Benchmarks").

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tidegate_storage::{BatchBuilder, EncodedBatch, FsyncPolicy, ReadLimits, Store, StoreConfig, TopicConfig};

const EVENT: &[u8] = br#"{"type":"track","event":"Product Viewed","userId":"user-12345","messageId":"0f8a6b1c-2d3e-4f50-8a9b-0c1d2e3f4a5b","properties":{"sku":"SKU-0042","price":19.99,"currency":"EUR","pad":"xxxxxxxxxxxxxxxxxxxxxx"}}"#;

fn batch(n: usize) -> EncodedBatch {
    let mut b = BatchBuilder::new(&[("received-at", b"1700000000000"), ("client-ip", b"127.0.0.1")], n * EVENT.len());
    for _ in 0..n {
        b.push(1_700_000_000_000, None, &[], EVENT, true);
    }
    b.finish(0)
}

fn open(fsync: FsyncPolicy) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.fsync = fsync;
    (dir, Store::open(cfg).unwrap())
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("append");
    group.measurement_time(Duration::from_secs(5)).sample_size(10);
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        let (_dir, store) = open(fsync);
        rt.block_on(store.create_topic("b", TopicConfig::with_partitions(6))).unwrap();
        // 64 concurrent producers, each appending batches of 100 events: what the
        // HTTP ingest path asks of storage at its throughput target.
        let producers = 64;
        let per_iter = 10;
        group.throughput(Throughput::Elements((producers * per_iter * 100) as u64));
        group.bench_function(BenchmarkId::new("64x100-events", fsync.to_string()), |b| {
            b.to_async(&rt).iter(|| {
                let store = store.clone();
                async move {
                    let mut tasks = Vec::new();
                    for p in 0..producers {
                        let store = store.clone();
                        tasks.push(tokio::spawn(async move {
                            for _ in 0..per_iter {
                                store.append("b", vec![((p % 6) as u32, batch(100))]).await.unwrap();
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
            })
        });
        rt.block_on(store.close()).unwrap();
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (_dir, store) = open(FsyncPolicy::Never);
    rt.block_on(async {
        store.create_topic("r", TopicConfig::with_partitions(1)).await.unwrap();
        for _ in 0..1000 {
            store.append("r", vec![(0, batch(100))]).await.unwrap();
        }
    });
    let part = store.partition("r", 0).unwrap();
    let mut group = c.benchmark_group("read");
    group.measurement_time(Duration::from_secs(5)).sample_size(10);
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("sequential-100k-events", |b| {
        b.iter(|| {
            let mut offset = 0;
            while offset < 100_000 {
                let r = store
                    .read_blocking(&part, offset, ReadLimits { max_records: 10_000, max_bytes: 16 << 20 })
                    .unwrap();
                offset = r.next_offset;
            }
        })
    });
    group.finish();
    rt.block_on(store.close()).unwrap();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
