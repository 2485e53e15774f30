//! Topic admin, retention, and the ops endpoints (health, readiness, metrics, OpenAPI).

use std::time::Duration;

use serde_json::{Value, json};
use tidegate_tests::{TestServer, assert_problem, eventually, has_request_series};

fn names(list: &Value) -> Vec<String> {
    let topics = list["topics"].as_array().unwrap_or_else(|| panic!("no topics in {list}"));
    topics.iter().map(|t| t["name"].as_str().expect("name").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topic_answers_201_with_location_and_description() {
    let server = TestServer::with_defaults().await;
    let resp = server.post("/v1/topics").json(&json!({"name": "orders", "partitions": 3})).send().await.expect("post");
    assert_eq!(resp.status(), 201);
    let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(location.as_deref(), Some("/v1/topics/orders"));
    let created: Value = resp.json().await.expect("JSON");
    assert_eq!(created["name"], "orders");
    assert_eq!(created["partition_count"], 3);
    assert_eq!(created["replication_factor"], 1);
    assert_eq!(created["retention_ms"], 7 * 24 * 3600 * 1000_u64, "the default time retention applies");
    assert!(created["retention_bytes"].is_null(), "{created}");
    let parts = created["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 3);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["partition"], i);
        assert_eq!((p["start_offset"].as_u64(), p["end_offset"].as_u64()), (Some(0), Some(0)), "{p}");
    }
    let described = server.get_json("/v1/topics/orders").await;
    assert_eq!(described["name"], "orders");
    assert_eq!(described["partition_count"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_topics_shows_every_topic_sorted_by_name() {
    let server = TestServer::with_defaults().await;
    assert_eq!(names(&server.get_json("/v1/topics").await), Vec::<String>::new());
    server.create_topic("b-topic", 1).await;
    server.create_topic("a-topic", 2).await;
    server.create_topic("c.topic_3", 1).await;
    let list = server.get_json("/v1/topics").await;
    assert_eq!(names(&list), vec!["a-topic", "b-topic", "c.topic_3"]);
    assert_eq!(list["topics"][0]["partitions"].as_array().expect("partitions").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_per_partition_offsets_and_bytes() {
    let server = TestServer::with_defaults().await;
    server.create_topic("described", 3).await;
    let events: Vec<Value> = (0..5).map(|i| json!({"i": i, "text": "some payload"})).collect();
    let offsets =
        server.produce_raw("described", "?partition=1", "application/json", Value::Array(events).to_string()).await;
    assert_eq!(offsets, (0..5).map(|o| (1, o)).collect::<Vec<_>>());
    let d = server.describe("described").await;
    assert_eq!(d["records"], 5, "{d}");
    assert!(d["bytes"].as_u64().expect("bytes") > 0, "{d}");
    let p1 = &d["partitions"][1];
    assert_eq!(p1["start_offset"], 0, "{d}");
    assert_eq!(p1["end_offset"], 5, "{d}");
    assert_eq!(p1["high_watermark"], 5, "{d}");
    assert!(p1["bytes"].as_u64().expect("bytes") > 5 * 20, "five events of 30+ bytes: {d}");
    // RocksDB's own size of the partition (memtable or SST files) covers what it holds.
    let disk = p1["disk_bytes"].as_u64().expect("disk_bytes");
    assert!(disk >= p1["bytes"].as_u64().unwrap(), "disk_bytes {disk} below the stored bytes: {d}");
    for untouched in [0, 2] {
        let p = &d["partitions"][untouched];
        assert_eq!((p["end_offset"].as_u64(), p["bytes"].as_u64()), (Some(0), Some(0)), "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_changes_retention_and_null_removes_it() {
    let server = TestServer::with_defaults().await;
    server.create_topic_with(json!({"name": "kept", "partitions": 1, "retention_ms": 60_000})).await;
    let patch = |body: Value| server.http.patch(server.url("/v1/topics/kept")).json(&body).send();

    let resp = patch(json!({"retention_bytes": 1_000_000})).await.expect("patch");
    assert_eq!(resp.status(), 200);
    let t: Value = resp.json().await.expect("JSON");
    assert_eq!((t["retention_ms"].clone(), t["retention_bytes"].clone()), (json!(60_000), json!(1_000_000)), "{t}");

    let t: Value = patch(json!({"retention_ms": null})).await.expect("patch").json().await.expect("JSON");
    assert!(t["retention_ms"].is_null(), "null removes the time limit: {t}");
    assert_eq!(t["retention_bytes"], 1_000_000, "fields left out are unchanged: {t}");

    let t: Value = patch(json!({})).await.expect("patch").json().await.expect("JSON");
    assert_eq!((t["retention_ms"].clone(), t["retention_bytes"].clone()), (Value::Null, json!(1_000_000)));

    assert_problem(patch(json!({"retention_bytes": 0})).await.expect("patch"), 400, "invalid_topic_config").await;
    let d = server.describe("kept").await;
    assert_eq!((d["retention_ms"].clone(), d["retention_bytes"].clone()), (Value::Null, json!(1_000_000)));
    let resp = server.http.patch(server.url("/v1/topics/nope")).json(&json!({})).send().await.expect("patch");
    assert_problem(resp, 404, "topic_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_partitions_take_writes_and_old_ones_keep_their_data() {
    let server = TestServer::with_defaults().await;
    server.create_topic("growing", 2).await;
    server.produce_raw("growing", "?partition=1", "application/json", "[1,2]").await;
    let resp = server.post("/v1/topics/growing/partitions").json(&json!({"count": 5})).send().await.expect("post");
    assert_eq!(resp.status(), 200);
    let grown: Value = resp.json().await.expect("JSON");
    assert_eq!(grown["partition_count"], 5, "{grown}");
    assert_eq!(grown["partitions"].as_array().expect("partitions").len(), 5);
    assert_eq!(server.end_offsets("growing").await, vec![0, 2, 0, 0, 0]);
    let offsets = server.produce_raw("growing", "?partition=4", "application/json", "{\"new\":true}").await;
    assert_eq!(offsets, vec![(4, 0)]);
    assert_eq!(server.read_all("growing", 4).await[0]["value"], json!({"new": true}));
    let old: Vec<Value> = server.read_all("growing", 1).await.iter().map(|r| r["value"].clone()).collect();
    assert_eq!(old, vec![json!(1), json!(2)]);

    let resp = server.post("/v1/topics/growing/partitions").json(&json!({"count": 20_000})).send().await.expect("post");
    assert_problem(resp, 400, "invalid_partition_count").await;
    let resp = server.post("/v1/topics/nope/partitions").json(&json!({"count": 3})).send().await.expect("post");
    assert_problem(resp, 404, "topic_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_topic_is_gone_and_a_recreated_one_starts_empty() {
    let server = TestServer::with_defaults().await;
    server.create_topic("gone", 2).await;
    server
        .produce("gone", &json!({"records": [{"value": "old", "partition": 1}, {"value": "old", "partition": 1}]}))
        .await;

    let resp = server.http.delete(server.url("/v1/topics/gone")).send().await.expect("delete");
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.expect("body").is_empty());
    let resp = server.http.delete(server.url("/v1/topics/gone")).send().await.expect("delete");
    assert_problem(resp, 404, "topic_not_found").await;
    assert_problem(server.get("/v1/topics/gone").send().await.expect("get"), 404, "topic_not_found").await;
    let resp = server.get("/v1/topics/gone/partitions/1/records").send().await.expect("get");
    assert_problem(resp, 404, "topic_not_found").await;
    let resp = server.post_events("gone", "", "application/json", "{\"a\":1}").await;
    assert_problem(resp, 404, "topic_not_found").await;
    assert!(!names(&server.get_json("/v1/topics").await).contains(&"gone".to_string()));

    server.create_topic("gone", 2).await;
    assert_eq!(server.end_offsets("gone").await, vec![0, 0]);
    let offsets = server.produce_raw("gone", "?partition=1", "application/json", "\"new\"").await;
    assert_eq!(offsets, vec![(1, 0)], "offsets of a re-created topic start at 0");
    let records = server.read_all("gone", 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["value"], "new");
}

async fn start_offset_after_retention(server: &TestServer, topic: &str) -> u64 {
    let api = server.api().clone();
    let topic = topic.to_string();
    eventually("retention to move the log start", Duration::from_secs(30), move || {
        let (api, topic) = (api.clone(), topic.clone());
        async move {
            let start = api.describe(&topic).await["partitions"][0]["start_offset"].as_u64().expect("start_offset");
            (start > 0).then_some(start)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_retention_deletes_the_oldest_batches() {
    let server = TestServer::start(|c| c.retention_check_interval_ms = 100).await;
    server.create_topic_with(json!({"name": "small", "partitions": 1, "retention_bytes": 2000})).await;
    for request in 0..10 {
        let events: Vec<Value> =
            (0..10).map(|i| json!({"seq": request * 10 + i, "pad": "0123456789".repeat(8)})).collect();
        server.produce("small", &Value::Array(events)).await;
    }
    let start = start_offset_after_retention(&server, "small").await;
    assert_eq!(start % 10, 0, "retention deletes whole batches (one per request): start {start}");
    let d = server.describe("small").await;
    let p = &d["partitions"][0];
    assert_eq!(p["end_offset"], 100, "retention never moves the end: {d}");
    assert!(p["bytes"].as_u64().expect("bytes") <= 2000, "the partition is trimmed to its limit: {d}");

    let resp = server.get("/v1/topics/small/partitions/0/records?offset=0").send().await.expect("get");
    let problem = assert_problem(resp, 416, "offset_out_of_range").await;
    assert_eq!((problem["start_offset"].as_u64(), problem["end_offset"].as_u64()), (Some(start), Some(100)));

    let records = server.read_from("small", 0, start).await;
    let seqs: Vec<u64> = records.iter().map(|r| r["value"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (start..100).collect::<Vec<u64>>());
    let earliest = server.get_json("/v1/topics/small/offsets?timestamp=earliest").await;
    assert_eq!(earliest["partitions"][0]["offset"], start);
    let page = server.get_json("/v1/topics/small/partitions/0/records").await;
    assert_eq!(page["records"][0]["offset"], start, "a read without offset starts at the log start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_retention_deletes_expired_batches_only() {
    let server = TestServer::start(|c| c.retention_check_interval_ms = 100).await;
    server.create_topic_with(json!({"name": "aging", "partitions": 1, "retention_ms": 3_600_000})).await;
    let old: Vec<Value> = (0..3).map(|i| json!({"value": {"old": i}, "timestamp": 1000 + i})).collect();
    server.produce("aging", &json!({ "records": old })).await;
    server.produce("aging", &json!({"fresh": true})).await;
    let start = start_offset_after_retention(&server, "aging").await;
    assert_eq!(start, 3, "the expired batch went, the fresh one stayed");
    let records = server.read_from("aging", 0, start).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["value"], json!({"fresh": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_200() {
    let server = TestServer::with_defaults().await;
    assert_eq!(server.get_json("/healthz").await["status"], "ok");
    assert_eq!(server.get_json("/readyz").await["status"], "ok");
}

fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_http_storage_and_process_series() {
    let server = TestServer::with_defaults().await;
    server.create_topic("metered", 1).await;
    server.produce("metered", &json!([1, 2, 3])).await;
    // Concurrent one-event requests share WAL syncs (group commit).
    server.create_topic("shared", 4).await;
    const CONCURRENT: usize = 128;
    let posts = (0..CONCURRENT).map(|n| {
        let api = server.api().clone();
        async move { api.produce("shared", &json!({"n": n, "pad": "y".repeat(200)})).await }
    });
    assert_eq!(futures_util::future::join_all(posts).await.len(), CONCURRENT);
    let resp = server.get("/metrics").send().await.expect("metrics");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.expect("metrics text");

    let ingest_counted = has_request_series(&text, "/v1/topics/{topic}/events", "POST", 200);
    assert!(ingest_counted, "no request counter for the ingest route:\n{text}");
    // Unknown paths and errors rewritten into problem+json are counted too.
    assert_eq!(server.get("/no/such/path").send().await.unwrap().status(), 404);
    let resp = server.post("/v1/topics").json(&json!({"name": "x", "bogus": 1})).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let text = server.get("/metrics").send().await.unwrap().text().await.unwrap();
    assert!(has_request_series(&text, "unmatched", "GET", 404), "an unknown path is counted:\n{text}");
    let rewritten = has_request_series(&text, "/v1/topics", "POST", 422);
    assert!(rewritten, "a rewritten rejection keeps its route:\n{text}");
    assert_eq!(sample(&text, "tidegate_events_appended_total{topic=\"metered\"}"), Some(3.0), "\n{text}");
    let bytes = |topic: &str| sample(&text, &format!("tidegate_bytes_appended_total{{topic=\"{topic}\"}}"));
    let (metered, shared) = (bytes("metered").expect("metered bytes"), bytes("shared").expect("shared bytes"));
    assert!(
        shared > CONCURRENT as f64 * 200.0 && metered < shared / 100.0,
        "bytes: metered {metered}, shared {shared}"
    );
    let ingest_requests = text
        .lines()
        .find(|l| {
            l.starts_with("tidegate_http_request_duration_seconds_count{")
                && l.contains("route=\"/v1/topics/{topic}/events\"")
                && l.contains("status=\"200\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(ingest_requests, Some(CONCURRENT as f64 + 1.0), "latency histogram of the ingest route:\n{text}");
    let commits = sample(&text, "tidegate_storage_group_commit_requests_count").expect("group commit histogram");
    let committed = sample(&text, "tidegate_storage_group_commit_requests_sum").expect("group commit sum");
    assert!(committed >= CONCURRENT as f64 + 1.0, "{committed} requests went through the writer");
    assert!(commits < committed, "{CONCURRENT} concurrent requests never shared a commit ({commits} commits)");
    let writes = sample(&text, "tidegate_storage_write_seconds_count");
    assert!(writes.is_some_and(|n| n >= 1.0), "no storage write histogram:\n{text}");
    assert!(sample(&text, "tidegate_storage_disk_bytes ").is_some(), "no disk gauge:\n{text}");
    assert_eq!(sample(&text, "tidegate_storage_failing "), Some(0.0), "writes work:\n{text}");
    // Series with labels known in advance exist from the start, at 0, with help text.
    for series in [
        "tidegate_storage_write_errors_total ",
        "tidegate_retention_deleted_records_total ",
        "tidegate_group_rebalances_total ",
        "tidegate_events_deduplicated_total ",
        "tidegate_subscriptions ",
        "tidegate_auth_refused_total{reason=\"token_expired\"} ",
        "tidegate_rate_limited_total{scope=\"ip\"} ",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series}\n{text}");
    }
    assert!(text.contains("# TYPE tidegate_events_deduplicated_total counter\n"), "\n{text}");
    assert!(text.contains("# HELP tidegate_storage_write_errors_total Group commits that failed"), "\n{text}");
    assert!(sample(&text, "tidegate_storage_records_written_total ").is_some_and(|n| n >= CONCURRENT as f64 + 3.0));
    let rss = sample(&text, "process_resident_memory_bytes ");
    assert!(rss.is_some_and(|b| b > 1_000_000.0), "no resident memory gauge:\n{text}");
    // The standard process series, as Prometheus client libraries name them.
    assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"), "\n{text}");
    let cpu = sample(&text, "process_cpu_seconds_total ");
    assert!(cpu.is_some_and(|s| s > 0.0), "no CPU time (starting RocksDB alone takes some):\n{text}");
    assert!(sample(&text, "process_open_fds ").is_some_and(|n| n >= 3.0), "\n{text}");
    assert!(sample(&text, "process_threads ").is_some_and(|n| n >= 2.0), "\n{text}");
    let started = sample(&text, "process_start_time_seconds ").expect("start time");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    assert!((now - 600.0..=now + 1.0).contains(&started), "start time {started} not within the last 10 minutes");
    assert_eq!(sample(&text, "tidegate_partition_end_offset{topic=\"metered\",partition=\"0\"}"), Some(3.0));
}

/// A deleted topic's per-topic counters leave `/metrics`; a topic created again under
/// the same name counts from 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topics_series_leave_metrics_and_its_successor_counts_afresh() {
    let server = TestServer::with_defaults().await;
    server.create_topic("churn", 1).await;
    server.create_topic("stays", 1).await;
    server.produce("churn", &json!([1, 2, 3, 4])).await;
    server.produce("stays", &json!([1])).await;
    let events =
        |text: &str, topic: &str| sample(text, &format!("tidegate_events_appended_total{{topic=\"{topic}\"}}"));
    let text = server.get("/metrics").send().await.unwrap().text().await.unwrap();
    assert_eq!(events(&text, "churn"), Some(4.0), "\n{text}");
    assert!(text.contains("# TYPE tidegate_events_appended_total counter\n"), "\n{text}");
    assert_eq!(server.http.delete(server.url("/v1/topics/churn")).send().await.unwrap().status(), 204);
    let text = server.get("/metrics").send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("topic=\"churn\""), "a deleted topic's series remain:\n{text}");
    assert_eq!(events(&text, "stays"), Some(1.0), "\n{text}");
    server.create_topic("churn", 1).await;
    server.produce("churn", &json!([5])).await;
    let text = server.get("/metrics").send().await.unwrap().text().await.unwrap();
    assert_eq!(events(&text, "churn"), Some(1.0), "the new topic counts afresh:\n{text}");
    let bytes = sample(&text, "tidegate_bytes_appended_total{topic=\"churn\"}");
    assert_eq!(bytes, Some(1.0), "one byte of value (`5`):\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_the_ingest_path() {
    let server = TestServer::with_defaults().await;
    let resp = server.get("/openapi.json").send().await.expect("openapi");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let doc: Value = resp.json().await.expect("the document is JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let paths = &doc["paths"];
    assert!(paths["/v1/topics/{topic}/events"]["post"].is_object(), "no POST events path in {paths}");
    for path in ["/v1/topics", "/v1/topics/{topic}", "/v1/topics/{topic}/partitions/{partition}/records"] {
        assert!(paths[path].is_object(), "{path} is missing from the document");
    }
}

/// `max_partitions` bounds the partitions of all topics together: a create or add past
/// it is refused with 409 `partition_limit` naming the setting, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_and_adds_past_max_partitions_are_refused() {
    let server = TestServer::start(|c| c.max_partitions = 10).await;
    server.create_topic("eight", 8).await;
    let resp = server.post("/v1/topics").json(&json!({"name": "three", "partitions": 3})).send().await.unwrap();
    let problem = assert_problem(resp, 409, "partition_limit").await;
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("max_partitions")), "{problem}");
    assert_problem(server.get("/v1/topics/three").send().await.unwrap(), 404, "topic_not_found").await;
    let resp = server.post("/v1/topics/eight/partitions").json(&json!({"count": 11})).send().await.unwrap();
    assert_problem(resp, 409, "partition_limit").await;
    assert_eq!(server.describe("eight").await["partition_count"], 8);
    server.create_topic("two", 2).await;
    let resp = server.post("/v1/topics").json(&json!({"name": "one", "partitions": 1})).send().await.unwrap();
    assert_problem(resp, 409, "partition_limit").await;
    let resp = server.http.delete(server.url("/v1/topics/two")).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let resp = server.post("/v1/topics/eight/partitions").json(&json!({"count": 10})).send().await.unwrap();
    assert_eq!(resp.status(), 200, "a deleted topic's partitions count no more");
}

/// Admin bodies are JSON objects without a content coding: serde would fill a struct
/// from an array by position (`[null, null]` cleared a topic's retention), and a gzip
/// body was read as JSON (400) while an unknown coding on plain JSON was obeyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bodies_must_be_plain_json_objects() {
    let server = TestServer::with_defaults().await;
    server.create_topic_with(json!({"name": "strict", "partitions": 1, "retention_ms": 60_000})).await;
    let patch = |body: &'static str| {
        server.http.patch(server.url("/v1/topics/strict")).header("content-type", "application/json").body(body).send()
    };
    assert_problem(patch("[null,null]").await.unwrap(), 422, "invalid_body").await;
    assert_problem(patch(" [5000, 7777]").await.unwrap(), 422, "invalid_body").await;
    assert_eq!(server.describe("strict").await["retention_ms"], 60_000, "nothing changed");
    let grow = server.post("/v1/topics/strict/partitions").header("content-type", "application/json").body("[4]");
    assert_problem(grow.send().await.unwrap(), 422, "invalid_body").await;
    let reset = server.post("/v1/groups/g/reset").header("content-type", "application/json");
    assert_problem(reset.body(r#"["strict","earliest"]"#).send().await.unwrap(), 422, "invalid_body").await;
    for coding in ["gzip", "zstd"] {
        let body = if coding == "gzip" {
            tidegate_tests::gzip(br#"{"name":"zipped"}"#)
        } else {
            br#"{"name":"zipped"}"#.to_vec()
        };
        let resp = server
            .post("/v1/topics")
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_problem(resp, 415, "unsupported_media_type").await;
    }
    assert_problem(server.get("/v1/topics/zipped").send().await.unwrap(), 404, "topic_not_found").await;
    let resp =
        server.post("/v1/topics").header("content-type", "text/plain").body(r#"{"name":"x"}"#).send().await.unwrap();
    assert_problem(resp, 415, "unsupported_media_type").await;
    let resp = server.post("/v1/topics").json(&json!({"name": "fine", "partitions": 1})).send().await.unwrap();
    assert_eq!(resp.status(), 201);
}

/// Creating or deleting a topic creates or drops one RocksDB column family per
/// partition, and RocksDB rewrites its OPTIONS file (every column family's options) for
/// each: tens of milliseconds apiece with ~100 partitions. Appends to and reads of other
/// topics must go on meanwhile. Before, every column-family lookup waited behind the
/// create or drop in progress, and the topic's drops ran on the writer thread, so a
/// 40-partition delete held every producer for seconds (none of its rounds completed
/// while the delete ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_reads_of_other_topics_go_on_while_a_topic_is_created_or_deleted() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    let server = TestServer::with_defaults().await;
    for i in 0..10 {
        server.create_topic(&format!("filler-{i}"), 6).await;
    }
    server.create_topic("busy", 1).await;
    server.create_topic("big", 40).await;

    // A producer on "busy": each round appends one event and reads it back; the rounds'
    // start and end times are kept.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let producer = {
        let (api, stop, rounds) = (server.api().clone(), stop.clone(), rounds.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let began = Instant::now();
                let offsets = api.produce_raw("busy", "", "application/json", format!("{{\"n\":{n}}}")).await;
                assert_eq!(offsets, vec![(0, n)], "offsets stay dense");
                let read = api.fetch("busy", 0, n, 1).await;
                assert_eq!(read["records"][0]["value"]["n"], n, "{read}");
                rounds.lock().expect("rounds").push((began, Instant::now()));
                n += 1;
            }
        })
    };
    // Let the producer get going.
    eventually("the producer's first rounds", Duration::from_secs(10), || {
        let started = rounds.lock().expect("rounds").len() >= 5;
        async move { started.then_some(()) }
    })
    .await;

    let during = |began: Instant, ended: Instant| {
        rounds.lock().expect("rounds").iter().filter(|&&(s, e)| s >= began && e <= ended).count()
    };
    let began = Instant::now();
    let resp = server.http.delete(server.url("/v1/topics/big")).send().await.expect("delete");
    let ended = Instant::now();
    assert_eq!(resp.status(), 204);
    let while_deleting = during(began, ended);

    let began = Instant::now();
    server.create_topic("big-again", 40).await;
    let ended = Instant::now();
    let while_creating = during(began, ended);

    stop.store(true, Ordering::Release);
    producer.await.expect("the producer's rounds all succeeded");
    assert!(
        while_deleting >= 20 && while_creating >= 20,
        "rounds completed while the 40-partition delete ran: {while_deleting}, while the create ran: {while_creating}"
    );
}
