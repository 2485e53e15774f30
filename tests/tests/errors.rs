//! Every bad input gets its documented status, `application/problem+json`, a stable
//! `code`, and writes nothing.

use reqwest::RequestBuilder;
use serde_json::{Value, json};
use tidegate_tests::{TestServer, assert_any_problem, assert_problem, gzip};

const MAX_BODY: usize = 4096;
const MAX_EVENT: usize = 1024;
const MAX_EVENTS: usize = 50;

/// A server with small limits and a topic `t` (2 partitions) that already holds one
/// event in each partition.
async fn limited() -> TestServer {
    let server = TestServer::start(|c| {
        c.max_body_bytes = MAX_BODY as u64;
        c.max_event_bytes = MAX_EVENT as u64;
        c.max_events_per_request = MAX_EVENTS as u64;
    })
    .await;
    server.create_topic("t", 2).await;
    server
        .produce("t", &json!({"records": [{"value": "seed", "partition": 0}, {"value": "seed", "partition": 1}]}))
        .await;
    server
}

/// Sends `request`, asserts the problem, and asserts that topic `t` did not change.
async fn rejects(server: &TestServer, request: RequestBuilder, status: u16, code: &str) -> Value {
    let before = server.end_offsets("t").await;
    let problem = assert_problem(request.send().await.expect("request"), status, code).await;
    assert_eq!(server.end_offsets("t").await, before, "a rejected request wrote nothing ({code})");
    problem
}

fn ingest(server: &TestServer, content_type: &str, body: impl Into<reqwest::Body>) -> RequestBuilder {
    server.post("/v1/topics/t/events").header("content-type", content_type).body(body)
}

fn indexes(problem: &Value) -> Vec<u64> {
    let errors = problem["errors"].as_array().unwrap_or_else(|| panic!("no errors list in {problem}"));
    errors.iter().map(|e| e["index"].as_u64().expect("index")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_in_an_array_names_the_event_and_byte() {
    let server = limited().await;
    let body = "[{\"a\":1},\n {\"b\":2},\n {\"c\":}]";
    let problem = rejects(&server, ingest(&server, "application/json", body), 400, "invalid_events").await;
    assert_eq!(indexes(&problem), vec![2], "{problem}");
    let position = problem["errors"][0]["position"].as_u64().expect("position") as usize;
    assert_eq!(body.as_bytes().get(position), Some(&b'}'), "position {position} points at the bad byte in {body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ndjson_lines_are_named_by_event_index() {
    let server = limited().await;
    let body = "{\"a\":1}\n{\"b\":2}\n\n{\"c\" 3}\n{\"d\":4}\n{oops}\n";
    let problem = rejects(&server, ingest(&server, "application/x-ndjson", body), 400, "invalid_events").await;
    assert_eq!(indexes(&problem), vec![2, 4], "blank lines are not events: {problem}");
    let position = problem["errors"][0]["position"].as_u64().expect("position") as usize;
    assert_eq!(body.as_bytes().get(position), Some(&b'3'), "position {position} in {body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_media_type_is_415() {
    let server = limited().await;
    rejects(&server, ingest(&server, "application/xml", "<event/>"), 415, "unsupported_media_type").await;
    rejects(&server, ingest(&server, "multipart/form-data; boundary=x", "--x--"), 415, "unsupported_media_type").await;
    // Text in another charset is refused, not misread as UTF-8.
    rejects(&server, ingest(&server, "text/plain; charset=utf-16", "{}"), 415, "unsupported_media_type").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_content_encoding_is_415() {
    let server = limited().await;
    let request = ingest(&server, "application/json", "[1,2]").header("content-encoding", "zstd");
    rejects(&server, request, 415, "unsupported_media_type").await;
    // Unreadable or repeated type and encoding headers are refused, not guessed at.
    let unreadable = reqwest::header::HeaderValue::from_bytes(b"gzip\xff").unwrap();
    let request = ingest(&server, "application/json", "[1,2]").header("content-encoding", unreadable);
    rejects(&server, request, 415, "unsupported_media_type").await;
    let request = ingest(&server, "application/json", "[1,2]")
        .header("content-encoding", "identity")
        .header("content-encoding", "gzip");
    rejects(&server, request, 415, "unsupported_media_type").await;
    let unreadable = reqwest::header::HeaderValue::from_bytes(b"application/xml\xff").unwrap();
    let request = server.post("/v1/topics/t/events").header("content-type", unreadable).body("[1,2]");
    rejects(&server, request, 415, "unsupported_media_type").await;
    let request = ingest(&server, "application/octet-stream", "[1,2]").header("content-type", "application/json");
    rejects(&server, request, 415, "unsupported_media_type").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_gzip_is_400_invalid_encoding() {
    let server = limited().await;
    let request = ingest(&server, "application/json", "this is not gzip").header("content-encoding", "gzip");
    rejects(&server, request, 400, "invalid_encoding").await;
    let whole = gzip(json!([{"a": 1}, {"b": 2}]).to_string().as_bytes());
    let truncated = whole[..whole.len() / 2].to_vec();
    let request = ingest(&server, "application/json", truncated).header("content-encoding", "gzip");
    rejects(&server, request, 400, "invalid_encoding").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_bytes_is_413() {
    let server = limited().await;
    let events: Vec<Value> = (0..200).map(|i| json!({"i": i, "pad": "xxxxxxxx"})).collect();
    let body = Value::Array(events).to_string();
    assert!(body.len() > MAX_BODY && body.len() < 2 * MAX_BODY);
    let problem = rejects(&server, ingest(&server, "application/json", body), 413, "body_too_large").await;
    assert_eq!(problem["limit"], MAX_BODY, "{problem}");
    assert_eq!(problem["setting"], "max_body_bytes", "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_expanding_past_the_limit_is_413() {
    let server = limited().await;
    let mut plain = b"[\"".to_vec();
    plain.extend(std::iter::repeat_n(b'a', 1 << 20));
    plain.extend(b"\"]");
    let bomb = gzip(&plain);
    assert!(bomb.len() < MAX_BODY, "the compressed bomb ({} bytes) fits the limit", bomb.len());
    let request = ingest(&server, "application/json", bomb).header("content-encoding", "gzip");
    rejects(&server, request, 413, "body_too_large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_over_max_event_bytes_is_413_with_its_index() {
    let server = limited().await;
    let body = json!([{"a": 1}, {"a": 2}, "x".repeat(MAX_EVENT + 10), {"a": 4}]).to_string();
    assert!(body.len() < MAX_BODY);
    let problem = rejects(&server, ingest(&server, "application/json", body), 413, "event_too_large").await;
    assert_eq!(indexes(&problem), vec![2], "{problem}");
    assert_eq!(problem["limit"], MAX_EVENT, "{problem}");
    assert_eq!(problem["setting"], "max_event_bytes", "{problem}");

    // The key and headers weigh too (as in Kafka's max.message.bytes): a small value
    // with a key or a header value over the limit is refused.
    let half = "k".repeat(MAX_EVENT / 2 + 10);
    for record in [
        json!({"value": 1, "key": format!("{half}{half}")}),
        json!({"value": half, "key": half}),
        json!({"value": 1, "headers": {"h": format!("{half}{half}")}}),
    ] {
        let body = json!({"records": [{"value": 0}, record]}).to_string();
        let problem = rejects(&server, ingest(&server, "application/json", body), 413, "event_too_large").await;
        assert_eq!(indexes(&problem), vec![1], "{problem}");
    }
    // At the limit exactly, the same record is stored.
    let key = "k".repeat(MAX_EVENT - 1);
    let body = json!({"records": [{"value": 1, "key": key}]}).to_string();
    assert_eq!(ingest(&server, "application/json", body).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_events_is_413() {
    let server = limited().await;
    let body = Value::Array((0..=MAX_EVENTS).map(|i| json!(i)).collect()).to_string();
    let problem = rejects(&server, ingest(&server, "application/json", body), 413, "too_many_events").await;
    assert_eq!(problem["limit"], MAX_EVENTS, "{problem}");
    // Exactly the limit is fine.
    let body = Value::Array((0..MAX_EVENTS).map(|i| json!(i)).collect()).to_string();
    assert_eq!(server.produce_raw("t", "", "application/json", body).await.len(), MAX_EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_names_are_refused_on_create() {
    let server = limited().await;
    let long = "x".repeat(250);
    for name in ["bad name", "a/b", "", "..", ".", "ümlaut", "semi;colon", long.as_str()] {
        let resp = server.post("/v1/topics").json(&json!({"name": name, "partitions": 1})).send().await.expect("post");
        assert_problem(resp, 400, "invalid_topic_name").await;
    }
    let list = server.get_json("/v1/topics").await;
    assert_eq!(list["topics"].as_array().expect("topics").len(), 1, "only the seed topic exists: {list}");
    // The longest valid name is fine.
    server.create_topic(&"y".repeat(249), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_404_on_ingest() {
    let server = limited().await;
    let resp = server.post_events("nope", "", "application/json", "{\"a\":1}").await;
    assert_problem(resp, 404, "topic_not_found").await;
    let resp = server.get("/v1/topics/nope").send().await.expect("get");
    assert_problem(resp, 404, "topic_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_created_on_ingest_when_auto_create_is_on() {
    let server = TestServer::start(|c| {
        c.auto_create_topics = true;
        c.default_partitions = 3;
    })
    .await;
    let offsets = server.produce("auto-made", &json!({"hello": "world"})).await;
    assert_eq!(offsets.len(), 1);
    let topic = server.describe("auto-made").await;
    assert_eq!(topic["partition_count"], 3, "{topic}");
    let (p, o) = offsets[0];
    assert_eq!(server.record_at("auto-made", p, o).await["value"], json!({"hello": "world"}));
    // Auto-creation still validates the name.
    let resp = server.post_events("bad%20name", "", "application/json", "{\"a\":1}").await;
    assert_problem(resp, 400, "invalid_topic_name").await;

    // A refused request creates no topic: topics are made only when the write goes ahead.
    let many = serde_json::to_string(&vec![json!(1); 10_001]).unwrap();
    let partition_3 = json!({"records": [{"value": 1, "partition": 3}]}).to_string();
    for (query, body, status, code) in [
        ("", "{oops".to_string(), 400, "invalid_events"),
        ("", String::new(), 400, "no_events"),
        ("", many, 413, "too_many_events"),
        ("", partition_3, 400, "invalid_events"),
        ("?partition=3", "{\"a\":1}".to_string(), 404, "partition_not_found"),
    ] {
        let resp = server.post_events("never-made", query, "application/json", body).await;
        assert_problem(resp, status, code).await;
        let resp = server.get("/v1/topics/never-made").send().await.expect("describe");
        assert_problem(resp, 404, "topic_not_found").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_nested_deeper_than_max_event_depth_are_400() {
    let server = limited().await;
    let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    let deep = format!("[{{\"ok\":1}},{}]", nested(129));
    let problem = rejects(&server, ingest(&server, "application/json", deep), 400, "invalid_events").await;
    assert_eq!(indexes(&problem), vec![1], "{problem}");
    assert!(problem.to_string().contains("max_event_depth"), "{problem}");
    // NDJSON and the envelope too; brackets inside strings do not count.
    let ndjson = format!("{{\"a\":1}}\n{{\"deep\":{}}}\n", nested(200));
    rejects(&server, ingest(&server, "application/x-ndjson", ndjson), 400, "invalid_events").await;
    let envelope = format!("{{\"records\":[{{\"value\":{}}}]}}", nested(129));
    rejects(&server, ingest(&server, "application/json", envelope), 400, "invalid_events").await;
    let in_a_string = json!({"text": "[".repeat(300), "v": serde_json::from_str::<Value>(&nested(127)).unwrap()});
    let resp = ingest(&server, "application/json", in_a_string.to_string()).send().await.expect("post");
    assert_eq!(resp.status(), 200, "128 levels and brackets in a string are fine: {}", resp.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaired_surrogate_escapes_are_400_and_pairs_round_trip() {
    let server = limited().await;
    let body = r#"[{"ok":"\u00e9"},{"name":"x\ud800"}]"#;
    let problem = rejects(&server, ingest(&server, "application/json", body), 400, "invalid_events").await;
    assert_eq!(indexes(&problem), vec![1], "{problem}");
    assert!(problem.to_string().contains("unpaired UTF-16 surrogate"), "{problem}");
    // NDJSON, the envelope and sendBeacon's text/plain; a low surrogate alone, in a key.
    rejects(&server, ingest(&server, "application/x-ndjson", "{\"a\":1}\n{\"\\udc00\":1}\n"), 400, "invalid_events")
        .await;
    let envelope = r#"{"records":[{"value":{"v":"\uDBFF"}}]}"#;
    rejects(&server, ingest(&server, "application/json", envelope), 400, "invalid_events").await;
    rejects(&server, ingest(&server, "text/plain", r#""\ud83d\u0041""#), 400, "invalid_events").await;
    // A pair is one character; an escaped backslash before "ud800" is just text.
    let fine = r#"[{"emoji":"\ud83d\ude00"},{"path":"C:\\ud800"}]"#;
    let resp = ingest(&server, "application/json", fine).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let offsets = tidegate_tests::offsets_of(&resp.json().await.unwrap());
    let first = server.record_at("t", offsets[0].0, offsets[0].1).await;
    assert_eq!(first["value"], json!({"emoji": "😀"}), "{first}");
    let second = server.record_at("t", offsets[1].0, offsets[1].1).await;
    assert_eq!(second["value"], json!({"path": "C:\\ud800"}), "{second}");
    // The Segment API too.
    let track = r#"{"userId":"u","event":"E","properties":{"q":"\ud800"}}"#;
    let resp = server.post("/v1/track").header("content-type", "text/plain").body(track).send().await.unwrap();
    let problem = assert_problem(resp, 400, "invalid_events").await;
    assert!(problem.to_string().contains("unpaired UTF-16 surrogate"), "{problem}");
}

/// JSON allows `1e400`, but serde_json refuses it and JavaScript reads Infinity: such
/// an event would break its consumers, so it is refused like an unpaired surrogate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_out_of_float_range_are_400() {
    let server = limited().await;
    let body = r#"[{"n":1e308,"tiny":1e-400,"s":"1e400"},{"n":-1E+400}]"#;
    let problem = rejects(&server, ingest(&server, "application/json", body), 400, "invalid_events").await;
    assert_eq!(indexes(&problem), vec![1], "{problem}");
    assert!(problem.to_string().contains("-1E+400 is too large for a 64-bit float"), "{problem}");
    let resp = ingest(&server, "application/json", r#"{"n":1e308,"s":"1e400"}"#).send().await.unwrap();
    assert_eq!(resp.status(), 200, "in range, or in a string");
    let track = r#"{"userId":"u","event":"E","properties":{"price":1e999}}"#;
    let resp = server.post("/v1/track").header("content-type", "text/plain").body(track).send().await.unwrap();
    assert_problem(resp, 400, "invalid_events").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_header_names_can_not_be_sent_by_producers() {
    let server = limited().await;
    for name in
        ["client-ip", "Received-At", "user-agent", "anonymous", "dlq-reason", "dlq-path", "dlq-source-topic", ""]
    {
        let body = json!({"records": [{"value": 1}, {"value": 2, "headers": {name: "forged"}}]});
        let problem =
            rejects(&server, ingest(&server, "application/json", body.to_string()), 400, "invalid_events").await;
        assert_eq!(indexes(&problem), vec![1], "{name:?}: {problem}");
    }
    // Header count and name length are bounded by settings the error names.
    let server = TestServer::start(|c| {
        c.max_record_headers = 2;
        c.max_header_name_bytes = 8;
    })
    .await;
    server.create_topic("t", 1).await;
    for headers in [json!({"a": "1", "b": "2", "c": "3"}), json!({"ninebytes": "1"})] {
        let body = json!({"records": [{"value": 1, "headers": headers}]});
        let problem =
            rejects(&server, ingest(&server, "application/json", body.to_string()), 400, "invalid_events").await;
        assert!(problem.to_string().contains("max_record_headers"), "{problem}");
    }
    // Other names are the producer's.
    let body = json!({"records": [{"value": 1, "headers": {"hint": "x", "trace": "t"}}]});
    let resp = ingest(&server, "application/json", body.to_string()).send().await.expect("post");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_partition_or_topic_on_read_is_404() {
    let server = limited().await;
    let resp = server.get("/v1/topics/t/partitions/2/records").send().await.expect("get");
    assert_problem(resp, 404, "partition_not_found").await;
    let resp = server.get("/v1/topics/nope/partitions/0/records").send().await.expect("get");
    assert_problem(resp, 404, "topic_not_found").await;
    let resp = server.get("/v1/topics/nope/offsets").send().await.expect("get");
    assert_problem(resp, 404, "topic_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_partition_out_of_range_is_refused() {
    let server = limited().await;
    // A record's own partition is a field of one event: 400 with its index.
    let body = json!({"records": [{"value": 1, "partition": 0}, {"value": 2, "partition": 9}, {"value": 3}]});
    let problem = rejects(&server, ingest(&server, "application/json", body.to_string()), 400, "invalid_events").await;
    assert_eq!(indexes(&problem), vec![1], "{problem}");
    // `?partition=` names a resource of the URL: 404, as reads of it answer.
    let request = server.post("/v1/topics/t/events?partition=2").json(&json!([1, 2]));
    let problem = rejects(&server, request, 404, "partition_not_found").await;
    assert!(problem["detail"].as_str().unwrap().contains("has no partition 2"), "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_envelope_records_are_named_by_index() {
    let server = limited().await;
    let body = json!({"records": [{"value": 1}, {"key": "no-value"}, {"value": 3, "bogus": true}, {"value": 4, "timestamp": -5}]});
    let problem = rejects(&server, ingest(&server, "application/json", body.to_string()), 400, "invalid_events").await;
    assert_eq!(indexes(&problem), vec![1, 2, 3], "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_out_of_range_is_416_with_the_valid_range() {
    let server = limited().await;
    server.produce("t", &json!({"records": [{"value": 1, "partition": 0}, {"value": 2, "partition": 0}]})).await;
    let resp = server.get("/v1/topics/t/partitions/0/records?offset=10").send().await.expect("get");
    let problem = assert_problem(resp, 416, "offset_out_of_range").await;
    assert_eq!(problem["start_offset"], 0, "{problem}");
    assert_eq!(problem["end_offset"], 3, "{problem}");
    // The end itself is a valid (empty) read.
    let page = server.fetch("t", 0, 3, 10).await;
    assert_eq!(page["records"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_not_found() {
    let server = limited().await;
    for path in ["/v1/nope", "/v1/topics/t/partitions/0/records/extra", "/favicon.ico.nope"] {
        let resp = server.get(path).send().await.expect("get");
        assert_problem(resp, 404, "not_found").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405_problem() {
    let server = limited().await;
    let resp = server.http.put(server.url("/v1/topics")).json(&json!({})).send().await.expect("put");
    assert_problem(resp, 405, "method_not_allowed").await;
    let resp = server.http.delete(server.url("/v1/topics/t/events")).send().await.expect("delete");
    let allow = resp.headers().get("allow").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert_problem(resp, 405, "method_not_allowed").await;
    assert!(allow.contains("POST"), "the Allow header names POST: {allow:?}");
    assert_eq!(server.end_offsets("t").await, vec![1, 1]);
    // The WebSocket path takes GET alone: HEAD (which cannot upgrade) and POST say so.
    for method in [reqwest::Method::HEAD, reqwest::Method::POST] {
        let resp = server.http.request(method.clone(), server.url("/v1/topics/t/subscribe")).send().await.unwrap();
        assert_eq!(resp.status(), 405, "{method}");
        assert_eq!(resp.headers().get("allow").map(|v| v.to_str().unwrap()), Some("GET"), "{method}");
    }
}

/// Admin routes take no query parameters: an imagined option (`?dry_run=true` on a
/// delete) fails instead of being ignored, as unknown parameters fail elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_query_parameters() {
    let server = limited().await;
    let http = &server.http;
    for (request, what) in [
        (http.delete(server.url("/v1/topics/t?dry_run=true")), "delete topic"),
        (http.get(server.url("/v1/topics?prefix=t")), "list topics"),
        (http.get(server.url("/v1/topics/t?verbose")), "describe topic"),
        (http.patch(server.url("/v1/topics/t?validate_only=1")).json(&json!({"retention_ms": 1000})), "alter topic"),
        (http.post(server.url("/v1/topics/t/partitions?x=1")).json(&json!({"count": 5})), "add partitions"),
        (http.post(server.url("/v1/topics?if_not_exists=true")).json(&json!({"name": "new"})), "create topic"),
        (http.get(server.url("/v1/groups?state=empty")), "list groups"),
        (http.get(server.url("/v1/status?x=1")), "status"),
    ] {
        let problem = assert_problem(request.send().await.unwrap(), 400, "invalid_request").await;
        assert!(problem["detail"].as_str().unwrap().contains("takes no query parameters"), "{what}: {problem}");
    }
    // Nothing was changed: the topic is there with its 2 partitions and default retention.
    let topic = server.describe("t").await;
    assert_eq!(topic["partition_count"], 2, "{topic}");
    assert_ne!(topic["retention_ms"], 1000, "{topic}");
    assert_eq!(server.get("/v1/topics/new").send().await.unwrap().status(), 404);
    // Probes and scrapes take cache-busters.
    assert_eq!(server.get("/healthz?_=1").send().await.unwrap().status(), 200);
    assert_eq!(server.get("/metrics?_=1").send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_create_topic_bodies_are_problems() {
    let server = limited().await;
    let syntax = server.post("/v1/topics").header("content-type", "application/json").body("{\"name\":");
    let problem = assert_any_problem(syntax.send().await.expect("post"), 400).await;
    assert_ne!(problem["code"], "invalid_topic_name");
    for body in [json!({"name": "x", "partitions": "many"}), json!({"name": "x", "bogus": 1}), json!([1, 2]), json!({})]
    {
        let resp = server.post("/v1/topics").json(&body).send().await.expect("post");
        assert_any_problem(resp, 422).await;
    }
    let not_json = server.post("/v1/topics").header("content-type", "text/plain").body("{\"name\":\"x\"}");
    assert_any_problem(not_json.send().await.expect("post"), 415).await;
    let resp = server.post("/v1/topics").json(&json!({"name": "x", "partitions": 0})).send().await.expect("post");
    assert_problem(resp, 400, "invalid_topic_config").await;
    let resp = server.post("/v1/topics").json(&json!({"name": "x", "retention_ms": 0})).send().await.expect("post");
    assert_problem(resp, 400, "invalid_topic_config").await;
    let resp =
        server.post("/v1/topics").json(&json!({"name": "x", "replication_factor": 3})).send().await.expect("post");
    assert_problem(resp, 400, "invalid_replication_factor").await;
    let list = server.get_json("/v1/topics").await;
    assert_eq!(list["topics"].as_array().expect("topics").len(), 1, "nothing was created: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_topic_is_409() {
    let server = limited().await;
    let resp = server.post("/v1/topics").json(&json!({"name": "t", "partitions": 5})).send().await.expect("post");
    assert_problem(resp, 409, "topic_exists").await;
    assert_eq!(server.describe("t").await["partition_count"], 2, "the existing topic is unchanged");
    assert_eq!(server.end_offsets("t").await, vec![1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_can_not_shrink_or_stay_or_pass_the_most_a_topic_may_have() {
    let server = limited().await;
    for count in [1, 2, 10_001, u32::MAX] {
        let resp = server.post("/v1/topics/t/partitions").json(&json!({"count": count})).send().await.expect("post");
        assert_problem(resp, 400, "invalid_partition_count").await;
    }
    assert_eq!(server.describe("t").await["partition_count"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_bodies_are_400_no_events() {
    let server = limited().await;
    for (content_type, body) in [
        ("application/json", ""),
        ("application/json", "   \n"),
        ("application/json", "[]"),
        ("text/plain", ""),
        ("application/x-ndjson", "\n\n"),
        ("application/octet-stream", ""),
    ] {
        rejects(&server, ingest(&server, content_type, body), 400, "no_events").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_query_parameters_are_400() {
    let server = limited().await;
    let before = server.end_offsets("t").await;
    let cases = [
        (server.post("/v1/topics/t/events?kye=user-1").json(&json!({"a": 1})), "kye"),
        (server.post("/v1/topics/t/events?acks=maybe").json(&json!({"a": 1})), "maybe"),
        (server.post("/v1/topics/t/events?partition=first").json(&json!({"a": 1})), "partition"),
        (server.get("/v1/topics/t/partitions/0/records?ofset=0"), "ofset"),
        (server.get("/v1/topics/t/offsets?ts=5"), "ts"),
    ];
    for (request, parameter) in cases {
        let problem = assert_any_problem(request.send().await.expect("request"), 400).await;
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(parameter), "the detail names {parameter:?}: {problem}");
    }
    assert_eq!(server.end_offsets("t").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_parameters_over_their_limits_are_400() {
    let server = limited().await;
    for query in
        ["max_records=10001", "wait_ms=30001", "offset=soon", "max_bytes=999999999999", "max_bytes=0", "max_records=0"]
    {
        let resp = server.get(&format!("/v1/topics/t/partitions/0/records?{query}")).send().await.expect("get");
        assert_problem(resp, 400, "invalid_parameter").await;
    }
    for timestamp in ["yesterday", "-1", "-2"] {
        let resp = server.get(&format!("/v1/topics/t/offsets?timestamp={timestamp}")).send().await.expect("get");
        assert_problem(resp, 400, "invalid_parameter").await;
    }
    // The partition in a read's path: a number from 0 to 4294967295.
    for partition in ["abc", "-1", "99999999999"] {
        let resp = server.get(&format!("/v1/topics/t/partitions/{partition}/records")).send().await.expect("get");
        let problem = assert_problem(resp, 400, "invalid_parameter").await;
        assert!(problem["detail"].as_str().unwrap().starts_with("the partition in the path"), "{problem}");
    }
}

/// Every operation that takes a body answers a wrong media type and an oversized body
/// with a problem whose status its OpenAPI operation documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_media_types_and_oversized_bodies_get_documented_problems() {
    let server = limited().await;
    server.create_topic("other", 1).await;
    let doc: Value = server.get_json("/openapi.json").await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("requestBody").is_none() {
                continue;
            }
            let concrete = path.replace("{topic}", "t").replace("{group}", "g").replace("{call}", "track");
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            let send = |content_type: &str, body: Vec<u8>| {
                server
                    .http
                    .request(method.clone(), server.url(&concrete))
                    .header("content-type", content_type)
                    .body(body)
            };
            let oversized = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_BODY * 2)).into_bytes();
            for (what, request) in [
                ("an XML body", send("application/xml", b"<event/>".to_vec())),
                ("an oversized body", send("application/json", oversized)),
            ] {
                let before = server.end_offsets("t").await;
                let resp = request.send().await.unwrap();
                let status = resp.status().as_u16();
                assert!(resp.status().is_client_error(), "{method} {path} answered {what} with {status}");
                assert!(
                    documented.iter().any(|s| **s == status.to_string()),
                    "{method} {path} answers {what} with {status}, which its OpenAPI operation does not list ({documented:?})"
                );
                assert_any_problem(resp, status).await;
                assert_eq!(server.end_offsets("t").await, before, "{method} {path}: {what} wrote nothing");
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "only {checked} cases");
}

/// A topic name no topic can have is a 400 on every route, auto-creation on or off;
/// a valid name that is not there is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_names_are_400_and_missing_topics_404() {
    for auto_create in [false, true] {
        let server = TestServer::start(|c| c.auto_create_topics = auto_create).await;
        // A space; bytes that are not UTF-8 once percent-decoded.
        for (bad, named) in [("page%20views", "page views"), ("%FF%FE", "not UTF-8")] {
            let requests = [
                server.post(&format!("/v1/topics/{bad}/events")).json(&json!({"a": 1})),
                server.get(&format!("/v1/topics/{bad}")),
                server.get(&format!("/v1/topics/{bad}/partitions/0/records")),
                server.get(&format!("/v1/topics/{bad}/offsets")),
                server.get(&format!("/v1/topics/{bad}/stream")),
                server.http.delete(server.url(&format!("/v1/topics/{bad}"))),
            ];
            for request in requests {
                let problem = assert_problem(request.send().await.unwrap(), 400, "invalid_topic_name").await;
                assert!(problem["detail"].as_str().unwrap().contains(named), "{problem}");
            }
            server.subscribe_refused(bad, "", 400, "invalid_topic_name").await;
        }
        let resp = server.get("/v1/topics/page_views").send().await.unwrap();
        assert_problem(resp, 404, "topic_not_found").await;
        assert_eq!(server.get_json("/v1/topics").await["topics"], json!([]), "nothing was created");
    }
}

/// Sends raw bytes on a new connection and reads until the server closes it.
async fn raw_exchange(server: &TestServer, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let (answer, closed) = tidegate_tests::read_until_closed(&mut tcp, std::time::Duration::from_secs(10)).await;
    assert!(closed, "the server closes the connection after refusing a request head: {answer}");
    answer
}

/// The problem document of the last answer in `raw` (a raw HTTP/1.1 exchange), after
/// checking that answer's status line and content type.
fn last_problem(raw: &str, status: u16, code: &str) -> Value {
    let start = raw.rfind("HTTP/1.1 ").expect("an answer");
    let (head, body) = raw[start..].split_once("\r\n\r\n").expect("a complete answer");
    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{raw}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{raw}");
    let problem: Value = serde_json::from_str(body).expect("a JSON problem document");
    assert_eq!(problem["status"], status, "{problem}");
    assert_eq!(problem["code"], code, "{problem}");
    assert_eq!(problem["type"], format!("urn:tidegate:problem:{code}"), "{problem}");
    problem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_hyper_refuses_are_problem_documents_too() {
    let server = TestServer::start(|c| {
        c.max_request_head_bytes = 2048;
        c.max_request_headers = 10;
    })
    .await;
    server.create_topic("t", 1).await;
    let refused = |status: &str| format!("tidegate_http_unparsed_requests_total{{status=\"{status}\"}}");
    let before_400 = server.metric(&refused("400")).await.unwrap_or(0.0);
    let before_431 = server.metric(&refused("431")).await.unwrap_or(0.0);

    // A malformed request line.
    let raw = raw_exchange(&server, b"NOT AN HTTP REQUEST\r\n\r\n").await;
    last_problem(&raw, 400, "malformed_request");

    // A head over max_request_head_bytes, through an ordinary client: the detail names the setting.
    let resp = server.get("/healthz").header("cookie", "c".repeat(4096)).send().await.unwrap();
    let problem = assert_problem(resp, 431, "request_head_too_large").await;
    assert!(problem["detail"].as_str().unwrap().contains("max_request_head_bytes (2048)"), "{problem}");

    // More headers than max_request_headers, after an answered request on the same
    // connection: the first is answered by the router, the second refused as a problem.
    let mut request =
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nPOST /v1/topics/t/events HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..20 {
        request.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}");
    let raw = raw_exchange(&server, &request).await;
    assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
    assert_eq!(raw.matches("HTTP/1.1 ").count(), 2, "{raw}");
    last_problem(&raw, 431, "request_head_too_large");
    assert_eq!(server.end_offsets("t").await, vec![0], "the refused request wrote nothing");

    assert_eq!(server.metric(&refused("400")).await, Some(before_400 + 1.0));
    assert_eq!(server.metric(&refused("431")).await, Some(before_431 + 2.0));

    // A request target over hyper's 65,534 bytes, with a head limit that lets it through.
    let roomy = TestServer::start(|c| c.max_request_head_bytes = 256 * 1024).await;
    let long = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let raw = raw_exchange(&roomy, long.as_bytes()).await;
    last_problem(&raw, 414, "uri_too_long");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host` is answered 400 (before, it was
/// served, and the open-mode guard, which judges the Host, did not run); HTTP/1.0 needs
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_1_request_without_host_is_refused() {
    let server = TestServer::with_defaults().await;
    let raw = raw_exchange(&server, b"GET /v1/topics HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    let problem = last_problem(&raw, 400, "missing_host");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("Host")), "{problem}");
    let raw = raw_exchange(&server, b"GET /v1/topics HTTP/1.0\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.0 200") || raw.starts_with("HTTP/1.1 200"), "{raw}");
}
