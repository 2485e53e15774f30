//! Ingest end to end: every body form of `POST /v1/topics/{t}/events` round-trips
//! through the records read endpoint, partitioning matches Kafka, long-polls wake on
//! appends, and offsets can be looked up by time.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};
use tidegate_tests::{TestServer, eventually, gzip, offsets_of};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

fn values(records: &[Value]) -> Vec<Value> {
    records.iter().map(|r| r["value"].clone()).collect()
}

/// A body compressor.
type Encoder = fn(&[u8]) -> Vec<u8>;

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("deflate");
    e.finish().expect("deflate")
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
    w.write_all(data).expect("brotli");
    drop(w);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_json_object_round_trips_as_inline_json() {
    let server = TestServer::with_defaults().await;
    server.create_topic("single", 1).await;
    let event = json!({"event": "signup", "user": {"id": 7, "tags": ["a", "b"]}, "ok": true, "n": 1.5});
    let offsets = server.produce("single", &event).await;
    assert_eq!(offsets, vec![(0, 0)]);
    let records = server.read_all("single", 0).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["value"], event, "the value comes back as JSON, not an escaped string");
    assert!(records[0].get("value_encoding").is_none(), "JSON values carry no encoding: {}", records[0]);
    assert!(records[0]["key"].is_null(), "no key was given: {}", records[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_array_is_one_event_per_element_in_request_order() {
    let server = TestServer::with_defaults().await;
    server.create_topic("array", 3).await;
    let events = vec![json!({"a": 1}), json!(2), json!("three"), json!([4, {"four": 4}]), json!(null), json!(false)];
    let offsets = server.produce("array", &Value::Array(events.clone())).await;
    assert_eq!(offsets.len(), events.len());
    server.assert_stored_at("array", &offsets, &events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_offsets_follow_request_order_across_partitions() {
    let server = TestServer::with_defaults().await;
    server.create_topic("order", 3).await;
    let partitions = [2, 0, 2, 1, 0];
    let events: Vec<Value> = (0..partitions.len()).map(|i| json!({"i": i})).collect();
    let records: Vec<Value> =
        partitions.iter().zip(&events).map(|(p, v)| json!({"value": v, "partition": p})).collect();
    let offsets = server.produce("order", &json!({ "records": records })).await;
    assert_eq!(offsets, vec![(2, 0), (0, 0), (2, 1), (1, 0), (0, 1)]);
    server.assert_stored_at("order", &offsets, &events).await;
    assert_eq!(values(&server.read_all("order", 2).await), vec![json!({"i": 0}), json!({"i": 2})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_body_is_one_event_per_line() {
    let server = TestServer::with_defaults().await;
    server.create_topic("ndjson", 1).await;
    let body = "{\"n\":1}\n\n{\"n\":2}\r\n[3]\n\"four\"\n";
    let offsets = server.produce_raw("ndjson", "", "application/x-ndjson", body).await;
    assert_eq!(offsets, vec![(0, 0), (0, 1), (0, 2), (0, 3)]);
    let got = values(&server.read_all("ndjson", 0).await);
    assert_eq!(got, vec![json!({"n": 1}), json!({"n": 2}), json!([3]), json!("four")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_sent_as_text_plain_is_recognised() {
    let server = TestServer::with_defaults().await;
    server.create_topic("ndjson-text", 1).await;
    let body = "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n";
    let offsets = server.produce_raw("ndjson-text", "", "text/plain", body).await;
    assert_eq!(offsets.len(), 3);
    let got = values(&server.read_all("ndjson-text", 0).await);
    assert_eq!(got, vec![json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_plain_from_send_beacon_is_parsed_as_json() {
    let server = TestServer::with_defaults().await;
    server.create_topic("beacon", 1).await;
    let events = json!([{"event": "page_view", "path": "/pricing"}, {"event": "click", "target": "buy"}]);
    let offsets = server.produce_raw("beacon", "", "text/plain;charset=UTF-8", events.to_string()).await;
    assert_eq!(offsets.len(), 2);
    let got = values(&server.read_all("beacon", 0).await);
    assert_eq!(Value::Array(got), events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_deflate_and_brotli_bodies_are_decoded() {
    let server = TestServer::with_defaults().await;
    server.create_topic("compressed", 1).await;
    let mut expected = Vec::new();
    let encoders: [(&str, Encoder); 3] = [("gzip", gzip), ("deflate", zlib), ("br", brotli)];
    for (encoding, encode) in encoders {
        let events: Vec<Value> =
            (0..50).map(|i| json!({"encoding": encoding, "i": i, "pad": "lorem ipsum ".repeat(10)})).collect();
        let plain = serde_json::to_vec(&events).expect("serialise");
        let body = encode(&plain);
        assert!(body.len() < plain.len() / 2, "{encoding} compresses the body");
        let resp = server
            .post("/v1/topics/compressed/events")
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body)
            .send()
            .await
            .expect("post");
        let status = resp.status();
        let answer: Value = resp.json().await.expect("JSON answer");
        assert_eq!(status, 200, "{encoding}: {answer}");
        assert_eq!(offsets_of(&answer).len(), 50, "{encoding}: {answer}");
        expected.extend(events);
    }
    assert_eq!(values(&server.read_all("compressed", 0).await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_carries_key_partition_headers_and_timestamp() {
    let server = TestServer::with_defaults().await;
    server.create_topic("envelope", 4).await;
    let body = json!({"records": [
        {"value": {"kind": "a"}, "key": "user-7", "partition": 3, "headers": {"trace": "t-1", "source": "test"}, "timestamp": 1234},
        {"value": [1, 2, 3], "key": "user-7"},
        {"value": "just text"},
    ]});
    let before = now_ms();
    let offsets = server.produce("envelope", &body).await;
    let after = now_ms();
    assert_eq!(offsets.len(), 3);
    assert_eq!(offsets[0], (3, 0), "the explicit partition wins");

    let first = server.record_at("envelope", 3, 0).await;
    assert_eq!(first["value"], json!({"kind": "a"}));
    assert_eq!(first["key"], "user-7");
    assert_eq!(first["timestamp"], 1234, "the producer's timestamp is kept");
    assert_eq!(first["headers"]["trace"], "t-1");
    assert_eq!(first["headers"]["source"], "test");
    assert!(first["headers"]["received-at"].is_string(), "gateway headers are kept too: {first}");

    let (p, o) = offsets[1];
    let second = server.record_at("envelope", p, o).await;
    assert_eq!(second["value"], json!([1, 2, 3]));
    assert_eq!(second["key"], "user-7");
    assert!(second["headers"].get("trace").is_none(), "headers are per record: {second}");
    let ts = second["timestamp"].as_i64().expect("timestamp");
    assert!(
        (before..=after).contains(&ts),
        "without a timestamp the receive time is used: {ts} not in {before}..={after}"
    );

    let (p, o) = offsets[2];
    let third = server.record_at("envelope", p, o).await;
    assert_eq!(third["value"], "just text");
    assert!(third["key"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn octet_stream_body_is_one_binary_event_returned_as_base64() {
    let server = TestServer::with_defaults().await;
    server.create_topic("binary", 1).await;
    let payload: Vec<u8> = vec![0, 159, 146, 150, 255, 254, b'{', 1, 2, 3, b'\n', 0];
    let offsets =
        server.produce_raw("binary", "?record_key=device-1", "application/octet-stream", payload.clone()).await;
    assert_eq!(offsets, vec![(0, 0)]);
    let record = server.record_at("binary", 0, 0).await;
    assert_eq!(record["value_encoding"], "base64", "{record}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(record["value"].as_str().expect("base64 text"))
        .expect("valid base64");
    assert_eq!(decoded, payload);
    assert_eq!(record["key"], "device-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_adds_received_at_client_ip_and_user_agent_headers() {
    let server = TestServer::with_defaults().await;
    server.create_topic("gateway-headers", 1).await;
    let before = now_ms();
    let resp = server
        .post("/v1/topics/gateway-headers/events")
        .header("user-agent", "tidegate-tests/1.0 (e2e)")
        .json(&json!({"e": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let after = now_ms();
    let record = server.record_at("gateway-headers", 0, 0).await;
    let headers = &record["headers"];
    let received: i64 = headers["received-at"].as_str().expect("received-at header").parse().expect("ms number");
    assert!((before..=after).contains(&received), "received-at {received} not in {before}..={after}");
    assert_eq!(record["timestamp"], received, "the record's timestamp is the receive time");
    assert_eq!(headers["client-ip"], "127.0.0.1");
    assert_eq!(headers["user-agent"], "tidegate-tests/1.0 (e2e)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_within_a_partition_is_preserved() {
    let server = TestServer::with_defaults().await;
    server.create_topic("ordered", 1).await;
    let mut acknowledged = Vec::new();
    for request in 0..10 {
        let events: Vec<Value> = (0..100).map(|i| json!({"seq": request * 100 + i})).collect();
        acknowledged.extend(server.produce("ordered", &Value::Array(events)).await);
    }
    let expected_offsets: Vec<(u32, u64)> = (0..1000).map(|o| (0, o)).collect();
    assert_eq!(acknowledged, expected_offsets, "offsets are dense and follow the posting order");
    let records = server.read_all("ordered", 0).await;
    let seqs: Vec<u64> = records.iter().map(|r| r["value"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (0..1000).collect::<Vec<u64>>());
}

/// `toPositive(murmur2(key))` from Kafka's `UtilsTest.testMurmur2`.
const FOOBAR_HASH: u32 = 1_357_151_166;
const ABC_HASH: u32 = 479_470_107;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_lands_on_kafkas_partition() {
    let server = TestServer::with_defaults().await;
    for partitions in [6u32, 7] {
        let topic = format!("keyed-{partitions}");
        server.create_topic(&topic, partitions).await;
        let foobar = FOOBAR_HASH % partitions;
        let abc = ABC_HASH % partitions;
        // Query keys, over several requests so a round-robin choice would have moved.
        for n in 0..4 {
            let offsets = server
                .produce_raw(&topic, "?record_key=foobar", "application/json", json!([{"n": n}, {"n": n}]).to_string())
                .await;
            assert!(offsets.iter().all(|&(p, _)| p == foobar), "key foobar on {partitions}: {offsets:?}");
            let offsets =
                server.produce_raw(&topic, "?record_key=abc", "application/json", json!({"n": n}).to_string()).await;
            assert!(offsets.iter().all(|&(p, _)| p == abc), "key abc on {partitions}: {offsets:?}");
        }
        // Envelope keys, mixed in one request.
        let body = json!({"records": [
            {"value": 1, "key": "abc"}, {"value": 2, "key": "foobar"}, {"value": 3, "key": "abc"},
        ]});
        let offsets = server.produce(&topic, &body).await;
        let parts: Vec<u32> = offsets.iter().map(|&(p, _)| p).collect();
        assert_eq!(parts, vec![abc, foobar, abc], "envelope keys on {partitions} partitions");
        let record = server.record_at(&topic, foobar, offsets[1].1).await;
        assert_eq!(record["key"], "foobar");
        assert_eq!(record["value"], 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_requests_spread_over_all_partitions() {
    let server = TestServer::with_defaults().await;
    server.create_topic("spread", 4).await;
    let mut used = BTreeSet::new();
    for i in 0..16 {
        for (p, _) in server.produce("spread", &json!({"i": i})).await {
            used.insert(p);
        }
    }
    assert_eq!(used, (0..4).collect::<BTreeSet<u32>>(), "16 keyless requests used every partition");
    let total: u64 = server.end_offsets("spread").await.iter().sum();
    assert_eq!(total, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_none_answers_202_and_the_events_become_readable() {
    let server = TestServer::with_defaults().await;
    server.create_topic("fire", 2).await;
    let events: Vec<Value> = (0..5).map(|i| json!({"fire": i})).collect();
    let resp =
        server.post_events("fire", "?acks=none", "application/json", Value::Array(events.clone()).to_string()).await;
    assert_eq!(resp.status(), 202);
    let answer: Value = resp.json().await.expect("JSON answer");
    assert_eq!(answer["accepted"], 5, "{answer}");
    let api = server.api().clone();
    eventually("the acks=none events to be readable", Duration::from_secs(10), || {
        let api = api.clone();
        async move { (api.end_offsets("fire").await.iter().sum::<u64>() == 5).then_some(()) }
    })
    .await;
    let mut got = values(&server.read_all("fire", 0).await);
    got.extend(values(&server.read_all("fire", 1).await));
    got.sort_by_key(|v| v["fire"].as_u64());
    assert_eq!(got, events);

    // A retry whose every event is a duplicate writes nothing and still answers 202.
    let retry = || {
        server
            .post("/v1/topics/fire/events?acks=none")
            .header("idempotency-key", "retry-1")
            .json(&json!([{"again": 1}, {"again": 2}]))
            .send()
    };
    for _ in 0..2 {
        let resp = retry().await.unwrap();
        assert_eq!(resp.status(), 202);
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({"accepted": 2}));
    }
    eventually("the first copy to be readable", Duration::from_secs(10), || {
        let api = api.clone();
        async move { (api.end_offsets("fire").await.iter().sum::<u64>() == 7).then_some(()) }
    })
    .await;
    let resp = retry().await.unwrap();
    assert_eq!(resp.status(), 202, "a retry after the first copy is stored");
    assert_eq!(server.end_offsets("fire").await.iter().sum::<u64>(), 7, "the retries wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_as_soon_as_a_record_is_appended() {
    let server = TestServer::with_defaults().await;
    server.create_topic("long-poll", 1).await;
    server.produce("long-poll", &json!({"first": true})).await;
    let api = server.api().clone();
    let began = Instant::now();
    let reader =
        tokio::spawn(
            async move { api.get_json("/v1/topics/long-poll/partitions/0/records?offset=1&wait_ms=5000").await },
        );
    // Let the read park at the end of the log first; the assertions hold either way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let offsets = server.produce("long-poll", &json!({"second": true})).await;
    assert_eq!(offsets, vec![(0, 1)]);
    let page = reader.await.expect("reader task");
    let elapsed = began.elapsed();
    assert_eq!(page["records"][0]["offset"], 1, "{page}");
    assert_eq!(page["records"][0]["value"], json!({"second": true}), "{page}");
    assert_eq!(page["next_offset"], 2);
    assert!(elapsed < Duration::from_millis(5000), "the read returned only when its wait ended ({elapsed:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_with_nothing_new_returns_empty_after_the_wait() {
    let server = TestServer::with_defaults().await;
    server.create_topic("idle", 1).await;
    server.produce("idle", &json!({"only": 1})).await;
    let began = Instant::now();
    let page = server.get_json("/v1/topics/idle/partitions/0/records?offset=1&wait_ms=300").await;
    assert!(began.elapsed() >= Duration::from_millis(300), "returned before the wait ended");
    assert_eq!(page["records"], json!([]));
    assert_eq!(page["next_offset"], 1);
    assert_eq!(page["high_watermark"], 1);
}

async fn offset_at(server: &TestServer, at: &str) -> Value {
    let answer = server.get_json(&format!("/v1/topics/times/offsets?timestamp={at}")).await;
    let parts = answer["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 1, "{answer}");
    assert_eq!(parts[0]["start_offset"], 0, "{answer}");
    assert_eq!(parts[0]["end_offset"], 4, "{answer}");
    parts[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_can_be_looked_up_by_earliest_latest_and_timestamp() {
    let server = TestServer::with_defaults().await;
    server.create_topic("times", 1).await;
    // Three requests, so the lookup has to pick the right batch as well as the record.
    let requests = [vec![1000], vec![2000, 2500], vec![3000]];
    let mut offsets = Vec::new();
    for stamps in requests {
        let records: Vec<Value> = stamps.iter().map(|t| json!({"value": {"t": t}, "timestamp": t})).collect();
        offsets.extend(server.produce("times", &json!({ "records": records })).await);
    }
    assert_eq!(offsets, vec![(0, 0), (0, 1), (0, 2), (0, 3)]);

    assert_eq!(offset_at(&server, "earliest").await["offset"], 0);
    assert_eq!(offset_at(&server, "latest").await["offset"], 4);
    let cases: [(i64, u64, Value); 6] = [
        (0, 0, json!(1000)),
        (1000, 0, json!(1000)),
        (1500, 1, json!(2000)),
        (2200, 2, json!(2500)),
        (2600, 3, json!(3000)),
        (3500, 4, Value::Null),
    ];
    for (at, offset, timestamp) in cases {
        let found = offset_at(&server, &at.to_string()).await;
        assert_eq!(found["offset"], offset, "lookup of {at}: {found}");
        assert_eq!(found["timestamp"], timestamp, "lookup of {at}: {found}");
    }
    let record = server.record_at("times", 0, 1).await;
    assert_eq!(record["timestamp"], 2000);
    assert_eq!(record["value"], json!({"t": 2000}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stop_at_max_bytes_and_latest_starts_at_the_end() {
    let server = TestServer::with_defaults().await;
    server.create_topic("sized", 1).await;
    let events: Vec<Value> = (0..20).map(|n| json!({"n": n, "pad": "x".repeat(100)})).collect();
    server.produce("sized", &Value::Array(events.clone())).await;
    let page = |query: String| {
        let api = server.api().clone();
        async move { api.get_json(&format!("/v1/topics/sized/partitions/0/records?{query}")).await }
    };
    let value_bytes = |r: &Value| r["value"].to_string().len();

    // A byte budget of 300 holds two ~117-byte values, never all twenty.
    let first = page("offset=0&max_bytes=300".into()).await;
    let records = first["records"].as_array().unwrap();
    assert!((1..20).contains(&records.len()), "{} records under max_bytes=300", records.len());
    let used: usize = records.iter().map(value_bytes).sum();
    assert!(used <= 300, "{used} value bytes returned under max_bytes=300");
    assert_eq!(first["next_offset"], records.len(), "next_offset follows the last record returned");
    // At least one record, however small the budget, so a reader always moves on.
    let tiny = page("offset=3&max_bytes=1".into()).await;
    assert_eq!(tiny["records"].as_array().unwrap().len(), 1, "{tiny}");
    assert_eq!((tiny["records"][0]["offset"].as_u64(), tiny["next_offset"].as_u64()), (Some(3), Some(4)));
    // Paging by next_offset under the budget reads every record once, in order.
    let (mut next, mut read) = (0u64, Vec::new());
    while next < 20 {
        let p = page(format!("offset={next}&max_bytes=300")).await;
        let got = p["records"].as_array().unwrap();
        assert!(!got.is_empty(), "an empty page below the high watermark at {next}");
        read.extend(got.iter().map(|r| r["value"].clone()));
        next = p["next_offset"].as_u64().unwrap();
    }
    assert_eq!(read, events);

    // `latest` starts at the high watermark: nothing now, the next append after it.
    let at_end = page("offset=latest".into()).await;
    assert_eq!((at_end["records"].clone(), at_end["next_offset"].as_u64()), (json!([]), Some(20)));
    server.produce("sized", &json!({"n": "new"})).await;
    let after = page(format!("offset={}", at_end["next_offset"])).await;
    assert_eq!(after["records"][0]["value"], json!({"n": "new"}), "{after}");
}

/// Memory-budget tests: bodies of 60,000 bytes under `max_body_bytes` = 64 KiB, two of
/// which fill `request_memory_bytes` = 128 KiB.
mod request_memory {
    use super::*;
    use tidegate_tests::assert_problem;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    const BODY: usize = 60_000;

    async fn server(wait_ms: u64) -> TestServer {
        let server = TestServer::start(|c| {
            c.max_body_bytes = 64 * 1024;
            c.max_event_bytes = 64 * 1024;
            c.request_memory_bytes = 128 * 1024;
            c.request_memory_wait_ms = wait_ms;
        })
        .await;
        server.create_topic("t", 1).await;
        server
    }

    /// NDJSON of exactly [`BODY`] bytes, every line an event tagged `tag`.
    fn body(tag: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(BODY);
        let mut i = 0;
        while out.len() < BODY - 200 {
            out.extend_from_slice(json!({"tag": tag, "i": i, "pad": "x".repeat(80)}).to_string().as_bytes());
            out.push(b'\n');
            i += 1;
        }
        let last = json!({"tag": tag, "i": i, "pad": ""}).to_string().len();
        let pad = BODY - out.len() - last - 1;
        out.extend_from_slice(json!({"tag": tag, "i": i, "pad": "x".repeat(pad)}).to_string().as_bytes());
        out.push(b'\n');
        assert_eq!(out.len(), BODY);
        out
    }

    /// Bytes of a body [`held`] keeps back.
    const KEPT_BACK: usize = 100;

    /// A request whose head and body are sent but for its last [`KEPT_BACK`] bytes:
    /// what was sent is reserved and stays so until [`finish`] sends the rest.
    async fn held(server: &TestServer, body: &[u8]) -> TcpStream {
        let tcp = started(server, body.len()).await;
        send(tcp, &body[..body.len() - KEPT_BACK]).await
    }

    async fn send(mut tcp: TcpStream, bytes: &[u8]) -> TcpStream {
        tcp.write_all(bytes).await.unwrap();
        tcp
    }

    /// A connection that has sent the head of a request announcing `length` bytes.
    async fn started(server: &TestServer, length: usize) -> TcpStream {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /v1/topics/t/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n\
             Content-Length: {}\r\n\r\n",
            length
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp
    }

    async fn finish(mut tcp: TcpStream, body: &[u8]) -> String {
        tcp.write_all(&body[body.len() - KEPT_BACK..]).await.unwrap();
        let mut answer = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !String::from_utf8_lossy(&answer).contains("\"offsets\"") && Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            use tokio::io::AsyncReadExt;
            match tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn reserved(server: &TestServer) -> f64 {
        server.metric("tidegate_request_memory_bytes").await.expect("request memory gauge")
    }

    /// A server (see [`server`]) with the bodies `a` and `b` held open: together they
    /// fill `request_memory_bytes`.
    async fn two_held(wait_ms: u64) -> (TestServer, [(TcpStream, Vec<u8>); 2]) {
        let server = server(wait_ms).await;
        let (a, b) = (body("a"), body("b"));
        let (held_a, held_b) = (held(&server, &a).await, held(&server, &b).await);
        eventually("two bodies reserved", Duration::from_secs(10), || async {
            (reserved(&server).await >= (2 * (BODY - KEPT_BACK)) as f64).then_some(())
        })
        .await;
        (server, [(held_a, a), (held_b, b)])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_that_finds_no_room_is_503_overloaded_and_writes_nothing() {
        let (server, [(held_a, a), (held_b, b)]) = two_held(0).await;

        // A third body does not fit: refused at once (request_memory_wait_ms = 0).
        let resp = server.post("/v1/topics/t/events").header("content-type", "application/x-ndjson").body(body("c"));
        let resp = resp.send().await.unwrap();
        let header =
            |resp: &reqwest::Response, name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header(&resp, "retry-after"), Some("1".into()));
        assert_eq!(header(&resp, "connection"), Some("close".into()), "answered before its body was read");
        let problem = assert_problem(resp, 503, "overloaded").await;
        assert_eq!(problem["setting"], "request_memory_bytes", "{problem}");
        assert_eq!(problem["limit"], 128 * 1024, "{problem}");
        // A small gzip body fits as sent but not once decoded (60,000 bytes).
        let packed = gzip(&body("d"));
        assert!(packed.len() < 4096, "{}", packed.len());
        let resp = server
            .post("/v1/topics/t/events")
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .body(packed.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "connection"), None, "its body was read: the connection stays open");
        assert_problem(resp, 503, "overloaded").await;
        assert_eq!(server.end_offsets("t").await, vec![0], "refused requests wrote nothing");
        assert_eq!(server.metric("tidegate_request_memory_refused_total").await, Some(2.0));

        // The held requests complete; their memory is free again and the gzip body goes in.
        let (answer_a, answer_b) = tokio::join!(finish(held_a, &a), finish(held_b, &b));
        assert!(answer_a.starts_with("HTTP/1.1 200"), "{answer_a}");
        assert!(answer_b.starts_with("HTTP/1.1 200"), "{answer_b}");
        let resp = server
            .post("/v1/topics/t/events")
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .body(packed)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let tags: BTreeSet<String> =
            server.read_all("t", 0).await.iter().map(|r| r["value"]["tag"].as_str().unwrap().to_owned()).collect();
        assert_eq!(tags, ["a", "b", "d"].map(String::from).into(), "c was refused, the others are stored");
        assert_eq!(reserved(&server).await, 0.0, "every reservation was released");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_announce_bodies_and_trickle_them_hold_only_what_they_sent() {
        let server = server(0).await;
        // Eight clients announce 60,000-byte bodies (four times the budget together),
        // send ten bytes and stop: when a body's announced size was reserved up front,
        // two of them took the whole budget and every other request got 503.
        let mut trickling = Vec::new();
        for _ in 0..8 {
            trickling.push(send(started(&server, BODY).await, &body("slow")[..10]).await);
        }
        eventually("eight ten-byte pieces reserved", Duration::from_secs(10), || async {
            (reserved(&server).await >= 8.0 * 1024.0).then_some(())
        })
        .await;
        assert!(reserved(&server).await <= 8.0 * 1024.0, "one unit each, not their announced size");
        let resp = server.post("/v1/topics/t/events").header("content-type", "application/x-ndjson").body(body("a"));
        let resp = resp.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        assert_eq!(server.end_offsets("t").await, vec![body("a").iter().filter(|b| **b == b'\n').count() as u64]);
        assert_eq!(server.metric("tidegate_request_memory_refused_total").await.unwrap_or(0.0), 0.0, "none refused");
        drop(trickling);
        eventually("the trickling bodies' reservations released", Duration::from_secs(10), || async {
            (reserved(&server).await == 0.0).then_some(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_declared_body_over_max_body_bytes_is_refused_unread() {
        use tokio::io::AsyncReadExt;
        let server = server(30_000).await;
        for (path, status, code) in
            [("/v1/topics/t/events", 413, "body_too_large"), ("/v1/batch", 400, "payload_too_large")]
        {
            // The head alone, announcing more than max_body_bytes (and asking whether to
            // send it): the answer comes at once, without a 100 Continue.
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                 Expect: 100-continue\r\nContent-Length: 70000\r\n\r\n"
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n =
                tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.expect("an answer").unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{path}: {answer}");
            assert!(answer.contains(code), "{path}: {answer}");
        }
        assert_eq!(reserved(&server).await, 0.0);
        assert_eq!(server.end_offsets("t").await, vec![0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_waits_for_room_then_goes_in() {
        let (server, [(held_a, a), (held_b, b)]) = two_held(30_000).await;
        let waiting = tokio::spawn({
            let request = server
                .post("/v1/topics/t/events?acks=none")
                .header("content-type", "application/x-ndjson")
                .body(body("c"));
            async move { request.send().await.map(|r| r.status().as_u16()) }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "no room: the third request waits");
        assert_eq!(server.end_offsets("t").await, vec![0]);

        let answer_a = finish(held_a, &a).await;
        assert!(answer_a.starts_with("HTTP/1.1 200"), "{answer_a}");
        assert_eq!(waiting.await.unwrap().unwrap(), 202, "in once a's memory was released");
        let answer_b = finish(held_b, &b).await;
        assert!(answer_b.starts_with("HTTP/1.1 200"), "{answer_b}");
        eventually("c written (acks=none) and its memory released", Duration::from_secs(10), || async {
            let tags: BTreeSet<String> =
                server.read_all("t", 0).await.iter().map(|r| r["value"]["tag"].as_str().unwrap().to_owned()).collect();
            (tags.len() == 3 && reserved(&server).await == 0.0).then_some(())
        })
        .await;
    }
}
