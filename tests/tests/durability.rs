//! Durability: data and offsets survive a restart, a `kill -9` loses no acknowledged
//! event (`fsync` always or interval), and SIGTERM or SIGINT drains in-flight requests
//! and exits 0.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidegate_tests::{Api, ProcessServer, TestServer, offsets_of};

/// Events per request in the load tests.
const BATCH: u64 = 20;
/// Upper bound on requests per client, so a load loop always ends.
const MAX_REQUESTS_PER_CLIENT: u64 = 5_000;

/// Identity of one posted event: (client, request, index in request).
type EventId = (u64, u64, u64);

fn event_id(value: &Value) -> EventId {
    let field = |name: &str| value[name].as_u64().unwrap_or_else(|| panic!("no {name} in {value}"));
    (field("client"), field("req"), field("i"))
}

/// What one load client saw.
#[derive(Debug, Default)]
struct ClientLog {
    /// Every event of a 200 answer: the event and where it was acknowledged.
    acked: Vec<(Value, u32, u64)>,
    /// Statuses other than 200 that the client got (it stops at the first).
    refused: Vec<u16>,
}

/// Posts batches of `BATCH` events in a loop until a request fails (connection
/// error or non-200 answer) or `MAX_REQUESTS_PER_CLIENT` is reached.
async fn load_client(api: Api, topic: String, client: u64, acked_requests: Arc<AtomicUsize>) -> ClientLog {
    let mut log = ClientLog::default();
    for req in 0..MAX_REQUESTS_PER_CLIENT {
        let events: Vec<Value> =
            (0..BATCH).map(|i| json!({"client": client, "req": req, "i": i, "pad": "payload-payload"})).collect();
        let sent = api.post(&format!("/v1/topics/{topic}/events")).json(&events).send().await;
        let Ok(resp) = sent else { break };
        if resp.status() != 200 {
            log.refused.push(resp.status().as_u16());
            break;
        }
        // A connection cut while the answer is read means "not acknowledged".
        let Ok(body) = resp.json::<Value>().await else { break };
        let offsets = offsets_of(&body);
        assert_eq!(offsets.len(), events.len(), "one offset per event: {body}");
        log.acked.extend(events.into_iter().zip(offsets).map(|(e, (p, o))| (e, p, o)));
        acked_requests.fetch_add(1, Ordering::Relaxed);
    }
    log
}

/// Starts `clients` load clients against `topic`.
fn start_load(api: &Api, topic: &str, clients: u64) -> (Vec<tokio::task::JoinHandle<ClientLog>>, Arc<AtomicUsize>) {
    let acked = Arc::new(AtomicUsize::new(0));
    let tasks =
        (0..clients).map(|c| tokio::spawn(load_client(api.clone(), topic.to_string(), c, acked.clone()))).collect();
    (tasks, acked)
}

/// Waits until `enough` requests are acknowledged, or `run_for` has passed with at
/// least one acknowledged; panics if not even one is acknowledged within a minute.
async fn let_load_run(acked: &AtomicUsize, enough: usize, run_for: Duration) -> usize {
    let began = Instant::now();
    loop {
        let n = acked.load(Ordering::Relaxed);
        if n >= enough || (n > 0 && began.elapsed() >= run_for) {
            return n;
        }
        assert!(began.elapsed() < Duration::from_secs(60), "no request was acknowledged within a minute");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn finish_load(tasks: Vec<tokio::task::JoinHandle<ClientLog>>) -> Vec<ClientLog> {
    let mut logs = Vec::new();
    for task in tasks {
        let log = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("a load client did not finish within 2 minutes")
            .expect("load client task");
        logs.push(log);
    }
    logs
}

/// Reads every partition of `topic` in full (offsets dense from 0, checked by
/// `read_all`) and checks that every acknowledged event is stored at exactly its
/// acknowledged partition and offset with the same content, that no event is
/// stored twice, and that every request was stored whole or not at all.
async fn assert_acknowledged_events_survived(api: &Api, topic: &str, logs: &[ClientLog]) {
    let ends = api.end_offsets(topic).await;
    let mut stored: HashMap<EventId, (u32, u64, Value)> = HashMap::new();
    for (p, &end) in ends.iter().enumerate() {
        let p = p as u32;
        let records = api.read_all(topic, p).await;
        assert_eq!(records.len() as u64, end, "{topic}/{p}: offsets 0..{end} are all readable");
        for r in records {
            let offset = r["offset"].as_u64().expect("offset");
            let value = r["value"].clone();
            let id = event_id(&value);
            if let Some((p0, o0, _)) = stored.insert(id, (p, offset, value)) {
                panic!("event {id:?} is stored twice: {p0}/{o0} and {p}/{offset}");
            }
        }
    }
    let mut acked = 0;
    for log in logs {
        for (event, p, o) in &log.acked {
            let id = event_id(event);
            let (sp, so, value) =
                stored.get(&id).unwrap_or_else(|| panic!("acknowledged event {id:?} at {p}/{o} is lost"));
            assert_eq!((*sp, *so), (*p, *o), "event {id:?} moved from its acknowledged offset");
            assert_eq!(value, event, "event {id:?} changed");
            acked += 1;
        }
    }
    let mut per_request: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for (client, req, _) in stored.keys() {
        *per_request.entry((*client, *req)).or_default() += 1;
    }
    let partial: Vec<_> = per_request.iter().filter(|(_, n)| **n != BATCH).collect();
    assert!(partial.is_empty(), "requests stored in part (request → events stored): {partial:?}");
    eprintln!("{topic}: {acked} acknowledged events verified, {} stored in total", stored.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_records_and_offsets_continue() {
    let mut server = TestServer::with_defaults().await;
    server.create_topic_with(json!({"name": "durable", "partitions": 3, "retention_bytes": 10_000_000})).await;
    for p in 0..3 {
        let events: Vec<Value> = (0..5).map(|i| json!({"p": p, "i": i})).collect();
        let offsets = server
            .produce_raw("durable", &format!("?partition={p}"), "application/json", Value::Array(events).to_string())
            .await;
        assert_eq!(offsets, (0..5).map(|o| (p, o)).collect::<Vec<_>>());
    }
    let mut before = Vec::new();
    for p in 0..3 {
        before.push(server.read_all("durable", p).await);
    }

    server.restart().await;

    let d = server.describe("durable").await;
    assert_eq!(d["partition_count"], 3, "{d}");
    assert_eq!(d["retention_bytes"], 10_000_000, "topic settings survive a restart: {d}");
    assert_eq!(server.end_offsets("durable").await, vec![5, 5, 5]);
    for p in 0..3 {
        assert_eq!(server.read_all("durable", p).await, before[p as usize], "partition {p} after restart");
    }
    for p in 0..3 {
        let offsets =
            server.produce_raw("durable", &format!("?partition={p}"), "application/json", "[\"a\",\"b\"]").await;
        assert_eq!(offsets, vec![(p, 5), (p, 6)], "offsets continue where they were");
        let records = server.read_all("durable", p).await;
        assert_eq!(records.len(), 7);
        assert_eq!(records[5]["value"], "a");
        assert_eq!(records[6]["value"], "b");
    }
    // Keyless writes after a restart work too.
    assert_eq!(server.produce("durable", &json!({"after": "restart"})).await.len(), 1);
    server.stop().await;
}

/// Runs load on a server with `--fsync <fsync>`, kills it with SIGKILL mid-load,
/// restarts it and checks every acknowledged event is there. A process crash loses
/// nothing acknowledged whatever the policy: every policy acknowledges only once the
/// batch is in the WAL (the kernel has it); the policies differ on power loss.
async fn kill_9_under_load(fsync: &str) {
    let dir = tempfile::Builder::new().prefix("tidegate-crash-").tempdir().expect("temporary directory");
    let mut server = ProcessServer::start(dir.path(), &["--fsync", fsync, "--fsync-interval-ms", "20"]).await;
    server.create_topic("crash", 4).await;

    let (tasks, acked) = start_load(server.api(), "crash", 8);
    let before_kill = let_load_run(&acked, 1000, Duration::from_secs(2)).await;
    let syncs = server.metric("tidegate_storage_fsync_seconds_count").await.unwrap_or(0.0);
    if fsync == "interval" {
        assert!(syncs >= 1.0, "the interval syncer ran no WAL sync");
    } else {
        assert_eq!(syncs, 0.0, "only the interval policy syncs on a timer");
    }
    let status = server.kill9().await;
    assert_eq!(status.signal(), Some(9), "the server died of SIGKILL: {status}");
    let logs = finish_load(tasks).await;
    let acked_requests: usize = logs.iter().map(|l| l.acked.len()).sum::<usize>() / BATCH as usize;
    assert!(acked_requests >= before_kill, "clients kept their acknowledgements");
    for log in &logs {
        assert!(log.refused.is_empty(), "a request was refused before the kill: {:?}", log.refused);
    }

    server.restart().await;
    assert_acknowledged_events_survived(server.api(), "crash", &logs).await;

    // The log takes appends again, densely after what survived.
    let ends = server.end_offsets("crash").await;
    let offsets = server.produce_raw("crash", "?partition=0", "application/json", "{\"after\":\"crash\"}").await;
    assert_eq!(offsets, vec![(0, ends[0])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    kill_9_under_load("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_interval_syncs_loses_no_acknowledged_event() {
    kill_9_under_load("interval").await;
}

/// Sends `signal` to a server under load: it drains, exits 0, and every acknowledged
/// event is there after a restart.
async fn graceful_stop_under_load(signal: &str) {
    let dir = tempfile::Builder::new().prefix("tidegate-term-").tempdir().expect("temporary directory");
    // Settings from the environment, this time.
    let mut server = ProcessServer::start_with_env(dir.path(), &[], &[("TIDEGATE_FSYNC", "always")]).await;
    server.create_topic("graceful", 2).await;

    let (tasks, acked) = start_load(server.api(), "graceful", 4);
    let_load_run(&acked, 100, Duration::from_secs(1)).await;
    server.signal(signal);
    let status = server.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{signal}: graceful shutdown exits 0 ({status}); log:\n{}", server.log());
    let logs = finish_load(tasks).await;
    for log in &logs {
        assert!(
            log.refused.iter().all(|s| *s == 503),
            "during shutdown requests are answered 200 or 503, got {:?}",
            log.refused
        );
    }

    server.restart().await;
    assert_acknowledged_events_survived(server.api(), "graceful", &logs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    graceful_stop_under_load("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_drains_in_flight_requests_and_exits_0() {
    graceful_stop_under_load("INT").await;
}

/// Storage that fails under load (here: a file size limit the WAL runs into, as a full
/// disk would stop it): failed appends answer 500 without internals, `/readyz` turns
/// 503 `storage_failing`, `/v1/status` names the error, the server does not crash, and
/// after a restart every acknowledged event is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_answers_500_turns_unready_and_loses_no_acknowledged_event() {
    let dir = tempfile::Builder::new().prefix("tidegate-efbig-").tempdir().expect("temporary directory");
    let mut server = ProcessServer::start_with_file_size_limit(dir.path(), &["--fsync", "always"], 1 << 20).await;
    server.create_topic("full", 2).await;
    let batch: Vec<Value> = (0..100).map(|n| json!({"n": n, "pad": "z".repeat(200)})).collect();
    let body = Value::Array(batch).to_string();
    let mut acked: Vec<(u32, u64)> = Vec::new();
    let mut failure = None;
    // 1 MiB of WAL holds ~45 such requests; stop at the first failure (bounded loop).
    for _ in 0..1000 {
        let resp = server.post_events("full", "", "application/json", body.clone()).await;
        if resp.status() == 200 {
            acked.extend(offsets_of(&resp.json::<Value>().await.unwrap()));
        } else {
            failure = Some(resp);
            break;
        }
    }
    let failure = failure.expect("the WAL ran into the file size limit");
    let problem = tidegate_tests::assert_problem(failure, 500, "storage_error").await;
    let detail = problem["detail"].as_str().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    assert!(!detail.contains(data_dir) && !detail.contains(".log"), "internals in the answer: {detail}");
    assert!(acked.len() >= 100, "some requests were acknowledged before the limit: {}", acked.len());

    let resp = server.get("/readyz").send().await.unwrap();
    tidegate_tests::assert_problem(resp, 503, "storage_failing").await;
    assert_eq!(server.get("/healthz").send().await.unwrap().status(), 200, "the process is alive");
    let status = server.get_json("/v1/status").await;
    assert_eq!(status["ready"], false, "{status}");
    assert!(status["storage_error"].as_str().is_some_and(|e| e.contains("File too large")), "{status}");
    assert!(server.metric("tidegate_storage_write_errors_total").await.is_some_and(|n| n >= 1.0));
    assert_eq!(server.metric("tidegate_storage_failing").await, Some(1.0));
    // `tidegate status` says why, and exits 4 (not ready).
    assert_eq!(cli_status(server.addr).await, (Some(4), Some("storage_failing".to_string())));
    // Reads of what was acknowledged still work.
    let (p, o) = acked[0];
    assert_eq!(server.record_at("full", p, o).await["value"]["n"], 0);

    server.kill9().await;
    server.lift_file_size_limit();
    server.restart().await;
    for (p, o) in &acked {
        let record = server.record_at("full", *p, *o).await;
        assert!(record["value"]["n"].is_u64(), "acknowledged event {p}/{o} is gone: {record}");
    }
    assert_eq!(server.get_json("/readyz").await["status"], "ok", "a fresh start is ready");
    assert_eq!(server.metric("tidegate_storage_failing").await, Some(0.0));
    let ends = server.end_offsets("full").await;
    let offsets = server.produce_raw("full", "?partition=0", "application/json", "{\"after\":\"restart\"}").await;
    assert_eq!(offsets, vec![(0, ends[0])], "appends continue densely after what survived");
}

/// A topic create or partition add that storage fails part-way leaves nothing behind
/// that blocks the next one: the column families it made are dropped again, and the
/// topic's next incarnation id is used up first, so a retry names its column families
/// afresh. `/readyz` reports the failure until a write succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_operations_that_storage_fails_part_way_leave_nothing_behind() {
    let dir = tempfile::Builder::new().prefix("tidegate-efbig-admin-").tempdir().expect("temporary directory");
    // RocksDB rewrites its OPTIONS file (~6 KB per column family) on every create: under
    // a 128 KiB file size limit a 40-partition topic fails part-way, a small one does not.
    let mut server = ProcessServer::start_with_file_size_limit(dir.path(), &[], 128 << 10).await;
    let resp = server.post("/v1/topics").json(&json!({"name": "big", "partitions": 40})).send().await.unwrap();
    tidegate_tests::assert_problem(resp, 500, "storage_error").await;
    tidegate_tests::assert_problem(server.get("/readyz").send().await.unwrap(), 503, "storage_failing").await;
    assert_eq!(server.metric("tidegate_storage_failing").await, Some(1.0));
    let resp = server.get("/v1/topics/big").send().await.unwrap();
    tidegate_tests::assert_problem(resp, 404, "topic_not_found").await;

    // The retry works at once (before: the half-made column families stayed, so every
    // later create failed until a restart).
    server.create_topic("big", 3).await;
    assert_eq!(server.get_json("/readyz").await["status"], "ok", "a successful write clears the failure");
    let first = server.produce_raw("big", "?partition=0", "application/json", "{\"n\":1}").await;
    assert_eq!(first, vec![(0, 0)]);

    let resp = server.post("/v1/topics/big/partitions").json(&json!({"count": 40})).send().await.unwrap();
    tidegate_tests::assert_problem(resp, 500, "storage_error").await;
    tidegate_tests::assert_problem(server.get("/readyz").send().await.unwrap(), 503, "storage_failing").await;
    assert_eq!(server.describe("big").await["partition_count"], 3, "a failed add changes nothing");
    let resp = server.post("/v1/topics/big/partitions").json(&json!({"count": 5})).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(server.get_json("/readyz").await["status"], "ok");

    server.kill9().await;
    server.lift_file_size_limit();
    server.restart().await;
    assert_eq!(server.describe("big").await["partition_count"], 5);
    assert_eq!(server.record_at("big", 0, 0).await["value"]["n"], 1);
    // The start-up drops as orphans only what no handle could drop in process: per failed
    // operation, at most the one column family whose OPTIONS file RocksDB failed to write
    // (before: every column family the failed operations had made, 40 here).
    let orphans = server.log().matches("dropping orphan column family").count();
    assert!(orphans <= 2, "{orphans} orphan column families at the restart:\n{}", server.log());
}

/// SIGTERM during a topic create with many partitions (each column family takes longer
/// the more exist) stops the create at once instead of holding the process for minutes:
/// exit 0, the topic does not exist after a restart, and what the create had made is
/// dropped at that start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_long_topic_create() {
    let dir = tempfile::Builder::new().prefix("tidegate-long-create-").tempdir().expect("temporary directory");
    let mut server = ProcessServer::start(dir.path(), &["--max-partitions", "5000"]).await;
    let create = server.post("/v1/topics").json(&json!({"name": "many", "partitions": 5000})).send();
    let create = tokio::spawn(create);
    // Let the create get under way (its first column families), then stop.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(!create.is_finished(), "5000 partitions take far longer than 3 s to create");
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(server.log().contains("abandoning a partition create"), "{}", server.log());
    if let Ok(Ok(resp)) = create.await {
        assert_eq!(resp.status(), 503, "the create is answered as cut short by the shutdown");
    }
    server.restart().await;
    let resp = server.get("/v1/topics/many").send().await.unwrap();
    tidegate_tests::assert_problem(resp, 404, "topic_not_found").await;
    assert!(server.log().contains("dropping orphan column family"), "{}", server.log());
    // Dropping the orphans took a while, and the probes were answered meanwhile: alive,
    // not ready.
    let answers = server.startup_answers();
    let starting = |path: &str, status: u16, text: &str| {
        answers.iter().any(|(p, s, body)| p == path && *s == status && body.contains(text))
    };
    assert!(starting("/readyz", 503, "not_ready"), "{answers:?}");
    assert!(starting("/healthz", 200, "starting"), "{answers:?}");
    server.create_topic("after", 2).await;
}

/// `tidegate status --json` against the node at `addr`: its exit code and the
/// `not_ready` reason it reports.
async fn cli_status(addr: std::net::SocketAddr) -> (Option<i32>, Option<String>) {
    let out = tokio::process::Command::new(ProcessServer::binary())
        .args(["status", "--json", "--url", &format!("http://{addr}")])
        .env_remove("TIDEGATE_TOKEN")
        .output()
        .await
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {out:?}"));
    (out.status.code(), report["not_ready"].as_str().map(str::to_string))
}

/// Bytes free for unprivileged use on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    let stat = rustix::fs::statvfs(path).expect("statvfs");
    stat.f_bavail * stat.f_frsize
}

/// Takes `len` bytes of the file system holding `dir` (fallocate; written out where
/// the file system cannot allocate without writing).
fn ballast(dir: &std::path::Path, len: u64) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut file = std::fs::File::create(&path).expect("ballast file");
    if rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len).is_err() {
        let chunk = vec![0u8; 8 << 20];
        for _ in 0..len.div_ceil(chunk.len() as u64) {
            file.write_all(&chunk).expect("ballast write");
        }
    }
    file.sync_all().expect("ballast sync");
    path
}

/// Free space below `min_free_disk_bytes`: appends (JSON, `acks=none`, Segment) are
/// refused with 507 and write nothing (not even the topic a Segment event would
/// create), `/readyz` is 503, `/metrics` and `/v1/status`
/// say why, while topic admin goes on; once space is free again appends resume by
/// themselves, with dense offsets. The floor is set 3 GiB under what is free at the
/// start and 8 GiB of ballast is taken, so other tests on the same disk move neither
/// side of it: each of their servers holds tens of MiB of preallocated WAL, all freed
/// when they end (a CI run saw the 1 GiB margin this test had before crossed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_stop_above_a_full_disk_and_resume_when_space_is_freed() {
    const GIB: u64 = 1 << 30;
    let scratch = tempfile::Builder::new().prefix("tidegate-ballast-").tempdir().expect("temporary directory");
    let free = free_bytes(scratch.path());
    assert!(free > 10 * GIB, "this test needs 10 GiB free in the temporary directory's file system, has {free}");
    let floor = free - 3 * GIB;
    let server = TestServer::start(move |c| c.min_free_disk_bytes = floor).await;
    server.create_topic("floor", 2).await;
    let first = server.produce("floor", &json!([{"n": 0}, {"n": 1}])).await;
    assert_eq!(server.get("/readyz").send().await.unwrap().status(), 200);
    assert_eq!(server.metric("tidegate_storage_disk_low").await, Some(0.0));

    let ballast = ballast(scratch.path(), 8 * GIB);
    let resp = server.post_events("floor", "", "application/json", r#"[{"n": 2}, {"n": 3}]"#).await;
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(retry_after.as_deref(), Some("30"), "a 507 says when to retry");
    let problem = tidegate_tests::assert_problem(resp, 507, "insufficient_storage").await;
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("min_free_disk_bytes")), "{problem}");
    let resp = server.post_events("floor", "?acks=none", "application/json", r#"{"n": 4}"#).await;
    tidegate_tests::assert_problem(resp, 507, "insufficient_storage").await;
    let track = json!({"userId": "u1", "event": "Item Purchased", "messageId": "m-1", "writeKey": "k"});
    let resp = server.post("/v1/track").json(&track).send().await.unwrap();
    tidegate_tests::assert_problem(resp, 507, "insufficient_storage").await;
    assert_eq!(server.end_offsets("floor").await.iter().sum::<u64>(), 2, "nothing refused was written");
    let resp = server.get("/v1/topics/segment.track").send().await.unwrap();
    tidegate_tests::assert_problem(resp, 404, "topic_not_found").await;

    tidegate_tests::assert_problem(server.get("/readyz").send().await.unwrap(), 503, "insufficient_storage").await;
    assert_eq!(server.metric("tidegate_storage_disk_low").await, Some(1.0));
    assert!(server.metric("tidegate_storage_free_bytes").await.is_some_and(|f| f < floor as f64));
    let status = server.get_json("/v1/status").await;
    assert_eq!((status["ready"].as_bool(), status["min_free_disk_bytes"].as_u64()), (Some(false), Some(floor)));
    assert!(status["disk_free_bytes"].as_u64().is_some_and(|f| f < floor), "{status}");
    // `tidegate status` says why, and exits 4 (not ready).
    assert_eq!(cli_status(server.addr).await, (Some(4), Some("insufficient_storage".to_string())));
    // Topic admin goes on: that is how space is freed from inside.
    server.create_topic("made-while-low", 1).await;
    let resp = server.http.patch(server.url("/v1/topics/floor")).json(&json!({"retention_ms": 3_600_000})).send();
    assert_eq!(resp.await.unwrap().status(), 200);
    let resp = server.http.delete(server.url("/v1/topics/made-while-low")).send().await.unwrap();
    assert_eq!(resp.status(), 204);

    std::fs::remove_file(&ballast).expect("remove ballast");
    let again = server.produce("floor", &json!([{"n": 2}, {"n": 3}])).await;
    assert_eq!(server.get("/readyz").send().await.unwrap().status(), 200);
    assert_eq!(server.metric("tidegate_storage_disk_low").await, Some(0.0));
    let mut offsets: Vec<(u32, u64)> = first.into_iter().chain(again).collect();
    offsets.sort_unstable();
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (p, o) in offsets {
        per_partition.entry(p).or_default().push(o);
    }
    for (p, list) in per_partition {
        assert_eq!(list, (0..list.len() as u64).collect::<Vec<_>>(), "partition {p}: offsets stay dense");
    }
    let resp = server.post("/v1/track").json(&track).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the tracker's retry is taken");
}
