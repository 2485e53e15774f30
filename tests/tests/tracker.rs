//! Tracker ingestion end to end: the Segment-compatible API (payloads from Segment's
//! public documentation, long and short paths), idempotent ingest (also across a
//! restart), JSON Schema rejection and dead letters, client-IP privacy, /tracker.js.

use base64::Engine;
use serde_json::{Value, json};
use tidegate::config::ClientIpMode;
use tidegate_tests::{Api, TestServer, assert_problem, gzip};

/// Every record of every partition of `topic`.
async fn all_records(api: &Api, topic: &str) -> Vec<Value> {
    let partitions = api.describe(topic).await["partition_count"].as_u64().expect("partition_count");
    let mut out = Vec::new();
    for p in 0..partitions {
        for mut r in api.read_all(topic, p as u32).await {
            r["partition"] = json!(p);
            out.push(r);
        }
    }
    out
}

async fn post_segment(api: &Api, path: &str, content_type: &str, body: &Value) -> reqwest::Response {
    api.post(path).header("content-type", content_type).body(body.to_string()).send().await.expect("segment call")
}

/// Posts two events to topic `plain` with `Idempotency-Key: key`; returns the answer.
async fn post_with_key(api: Api, key: &'static str) -> Value {
    let resp = api
        .post("/v1/topics/plain/events")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(r#"[{"a":1},{"a":2}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()
}

async fn accepted(resp: reqwest::Response) {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).expect("JSON"), json!({"success": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_doc_payloads_land_in_their_topics_with_their_keys() {
    let server = TestServer::with_defaults().await;
    // Examples of Segment's HTTP API documentation, long paths, write key in Basic auth
    // ('abc123' -> 'YWJjMTIzOg==', as the documentation shows) or in the body.
    let identify = json!({"userId": "019mr8mf4r", "traits": {"email": "pgibbons@example.com",
        "name": "Peter Gibbons", "industry": "Technology"}, "context": {"ip": "24.5.68.47"},
        "timestamp": "2012-12-02T00:30:08.276Z", "writeKey": "YOUR_WRITE_KEY"});
    let track = json!({"userId": "019mr8mf4r", "event": "Item Purchased",
        "properties": {"name": "Leap to Conclusions Mat", "revenue": 14.99}, "context": {"ip": "24.5.68.47"},
        "timestamp": "2012-12-02T00:30:12.984Z", "writeKey": "YOUR_WRITE_KEY"});
    let page = json!({"userId": "019mr8mf4r", "name": "Tracking HTTP API",
        "timestamp": "2012-12-02T00:31:29.738Z", "writeKey": "YOUR_WRITE_KEY"});
    let group = json!({"userId": "019mr8mf4r", "groupId": "8e9df332ac", "traits": {"name": "Initech",
        "industry": "Technology", "employees": 420}, "timestamp": "2012-12-02T00:31:38.208Z", "writeKey": "YOUR_WRITE_KEY"});
    let alias = json!({"previousId": "39239-239239-239239-23923", "userId": "019mr8mf4r",
        "timestamp": "2012-12-02T00:31:29.738Z", "writeKey": "YOUR_WRITE_KEY"});
    let resp = server
        .post("/v1/identify")
        .header("authorization", "Basic YWJjMTIzOg==")
        .json(&identify)
        .send()
        .await
        .expect("identify");
    accepted(resp).await;
    for (path, body) in [("/v1/track", &track), ("/v1/page", &page), ("/v1/group", &group), ("/v1/alias", &alias)] {
        accepted(post_segment(&server, path, "application/json", body).await).await;
    }
    // The short paths analytics.js posts to, with text/plain bodies (no preflight).
    let screen = json!({"anonymousId": "507f191e810c19729de860ea", "name": "Tracking HTTP API",
        "messageId": "ajs-next-1", "timestamp": "2012-12-02T00:31:29.738Z",
        "sentAt": "2012-12-02T00:31:30.000Z", "writeKey": "YOUR_WRITE_KEY"});
    accepted(post_segment(&server, "/v1/s", "text/plain", &screen).await).await;
    let short_track = json!({"anonymousId": "507f191e810c19729de860ea", "event": "Item Purchased",
        "messageId": "ajs-next-2", "properties": {"revenue": 1}});
    accepted(post_segment(&server, "/v1/t", "text/plain", &short_track).await).await;
    // The batch example of the documentation (including its malformed "2015-2-02" dates).
    let batch = json!({"batch": [
        {"type": "identify", "userId": "019mr8mf4r", "traits": {"email": "jake@yahoo.com", "name": "Jake Peterson", "age": 26}, "timestamp": "2012-12-02T00:30:08.276Z"},
        {"type": "track", "userId": "019mr8mf4r", "event": "Song Played", "properties": {"name": "Fallin for You", "artist": "Dierks Bentley"}, "timestamp": "2012-12-02T00:30:12.984Z"},
        {"type": "identify", "userId": "971mj8mk7p", "traits": {"email": "cindy@example.com", "name": "Cindy Gonzalez", "age": 23}, "timestamp": "2015-2-02T00:30:08.276Z"},
        {"type": "track", "userId": "971mj8mk7p", "event": "Song Played", "properties": {"name": "Get Right", "artist": "Jennifer Lopez"}, "timestamp": "2015-2-02T00:30:12.984Z"}
    ], "writeKey": "YOUR_WRITE_KEY", "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}}});
    accepted(post_segment(&server, "/v1/batch", "application/json", &batch).await).await;
    let short_batch = json!({"batch": [{"type": "page", "anonymousId": "anon-b", "messageId": "ajs-next-3"}],
        "sentAt": "2024-01-01T00:00:00.000Z"});
    accepted(post_segment(&server, "/v1/b", "text/plain", &short_batch).await).await;
    // Segment's mobile libraries (analytics-android, analytics-ios) post their batches
    // to /v1/import.
    // An alias without previousId is set aside like any invalid batch item.
    let mobile_batch = json!({"batch": [{"type": "screen", "anonymousId": "mobile-1", "name": "Home",
        "messageId": "android-1"}, {"type": "alias", "userId": "u", "previousId": {"id": 1}}],
        "writeKey": "YOUR_WRITE_KEY"});
    let resp = post_segment(&server, "/v1/import", "application/json", &mobile_batch).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!((answer["invalid_count"].as_u64(), answer["invalid"][0]["index"].as_u64()), (Some(1), Some(1)));
    assert!(answer["invalid"][0]["detail"].as_str().unwrap().contains("previousId"), "{answer}");

    let tracks = all_records(&server, "segment.track").await;
    assert_eq!(tracks.len(), 4, "{tracks:?}");
    let purchase = tracks.iter().find(|r| r["value"]["properties"]["name"] == "Leap to Conclusions Mat").unwrap();
    assert_eq!(purchase["key"], "019mr8mf4r", "key = userId");
    assert_eq!(purchase["value"]["type"], "track");
    assert!(purchase["value"].get("writeKey").is_none(), "the write key is not stored");
    assert!(purchase["value"]["messageId"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(purchase["value"]["receivedAt"].is_string());
    let anonymous = tracks.iter().find(|r| r["value"]["messageId"] == "ajs-next-2").unwrap();
    assert_eq!(anonymous["key"], "507f191e810c19729de860ea", "key = anonymousId without userId");
    let song = tracks.iter().find(|r| r["value"]["properties"]["artist"] == "Jennifer Lopez").unwrap();
    assert_eq!(song["key"], "971mj8mk7p");
    assert_eq!(song["value"]["context"]["device"]["name"], "Apple iPhone 6", "batch context merged");

    let identifies = all_records(&server, "segment.identify").await;
    assert_eq!(identifies.len(), 3);
    assert!(identifies.iter().all(|r| r["value"]["type"] == "identify"));
    let pages = all_records(&server, "segment.page").await;
    assert_eq!(pages.len(), 2);
    assert!(pages.iter().any(|r| r["key"] == "anon-b" && r["value"]["sentAt"] == "2024-01-01T00:00:00.000Z"));
    let screens = all_records(&server, "segment.screen").await;
    assert_eq!(screens.len(), 2);
    let skewed = screens.iter().find(|r| r["value"]["messageId"] == "ajs-next-1").unwrap();
    assert_eq!(skewed["value"]["originalTimestamp"], "2012-12-02T00:31:29.738Z", "clock skew corrected");
    let mobile = screens.iter().find(|r| r["value"]["messageId"] == "android-1").unwrap();
    assert_eq!((&mobile["key"], &mobile["value"]["type"]), (&json!("mobile-1"), &json!("screen")));
    assert_eq!(all_records(&server, "segment.group").await[0]["value"]["groupId"], "8e9df332ac");
    assert_eq!(all_records(&server, "segment.alias").await[0]["value"]["previousId"], "39239-239239-239239-23923");
    // Records carry the gateway's headers like any ingested event.
    assert!(purchase["headers"]["received-at"].is_string());
    assert_eq!(purchase["headers"]["client-ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_path_long_and_short_stores_its_call_type() {
    let server = TestServer::with_defaults().await;
    // Each call's path sets its type, whatever the body says; the short paths take
    // text/plain bodies as analytics.js sends them.
    let calls = [
        ("/v1/screen", "screen", "application/json"),
        ("/v1/s", "screen", "text/plain"),
        ("/v1/identify", "identify", "application/json"),
        ("/v1/i", "identify", "text/plain"),
        ("/v1/group", "group", "application/json"),
        ("/v1/g", "group", "text/plain"),
        ("/v1/alias", "alias", "application/json"),
        ("/v1/a", "alias", "text/plain"),
        ("/v1/page", "page", "application/json"),
        ("/v1/p", "page", "text/plain"),
        ("/v1/track", "track", "application/json"),
        ("/v1/t", "track", "text/plain"),
    ];
    for (path, _, content_type) in calls {
        let body =
            json!({"userId": format!("user{path}"), "event": "E", "groupId": "g", "previousId": "p", "type": "bogus"});
        accepted(post_segment(&server, path, content_type, &body).await).await;
    }
    for kind in ["screen", "identify", "group", "alias", "page", "track"] {
        let records = all_records(&server, &format!("segment.{kind}")).await;
        let mut keys: Vec<&str> = records.iter().map(|r| r["key"].as_str().unwrap()).collect();
        keys.sort_unstable();
        let mut expected: Vec<String> = calls.iter().filter(|c| c.1 == kind).map(|c| format!("user{}", c.0)).collect();
        expected.sort_unstable();
        assert_eq!(keys, expected, "segment.{kind}");
        assert!(records.iter().all(|r| r["value"]["type"] == kind), "{records:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_topics_follow_the_mapping_setting() {
    let server = TestServer::start(|c| {
        c.segment_topics = r#"{"track:Order Completed":"orders","*":"web"}"#.parse().unwrap();
    })
    .await;
    let batch = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"total": 5}},
        {"type": "track", "userId": "u1", "event": "Product Viewed"},
        {"type": "page", "anonymousId": "a1"}
    ]});
    accepted(post_segment(&server, "/v1/batch", "application/json", &batch).await).await;
    assert_eq!(all_records(&server, "orders").await.len(), 1);
    assert_eq!(all_records(&server, "web").await.len(), 2);
}

/// Events without a `messageId` get one the gateway makes: random, or with an
/// `Idempotency-Key` derived from the key and the body, so a retried request is
/// deduplicated and another body under the key is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_calls_with_an_idempotency_key_are_deduplicated() {
    let server = TestServer::with_defaults().await;
    let call = |path: &'static str, key: Option<&'static str>, body: Value| {
        let mut request = server.post(path).header("content-type", "text/plain").body(body.to_string());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    let track = json!({"userId": "u1", "event": "Bought"});
    let batch = json!({"batch": [{"type": "track", "userId": "u1", "event": "Bought"},
                                 {"type": "track", "userId": "u2", "event": "Bought"}]});
    for _ in 0..2 {
        accepted(call("/v1/track", Some("order-1"), track.clone()).await.unwrap()).await;
        accepted(call("/v1/b", Some("batch-1"), batch.clone()).await.unwrap()).await;
    }
    let stored = all_records(&server, "segment.track").await;
    assert_eq!(stored.len(), 3, "one track and a batch of two, each once: {stored:?}");
    let ids: Vec<&str> = stored.iter().map(|r| r["value"]["messageId"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| id.starts_with("idem-")), "{ids:?}");
    // The same body under the same key to another call is another event.
    let page = json!({"userId": "u1", "name": "Bought"});
    accepted(call("/v1/page", Some("order-1"), page.clone()).await.unwrap()).await;
    accepted(call("/v1/screen", Some("order-1"), page).await.unwrap()).await;
    assert_eq!(all_records(&server, "segment.page").await.len(), 1);
    assert_eq!(all_records(&server, "segment.screen").await.len(), 1);
    // Another body under a used key, and calls without a key, are new events.
    accepted(call("/v1/track", Some("order-1"), json!({"userId": "u1", "event": "Refunded"})).await.unwrap()).await;
    for _ in 0..2 {
        accepted(call("/v1/track", None, track.clone()).await.unwrap()).await;
    }
    assert_eq!(all_records(&server, "segment.track").await.len(), 6);
    // A malformed key is a malformed request.
    let resp = server.post("/v1/track").header("idempotency-key", "").body(track.to_string()).send().await.unwrap();
    assert_problem(resp, 400, "invalid_idempotency_key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_segment_calls_are_400_and_nothing_is_stored() {
    let server = TestServer::with_defaults().await;
    let cases = [
        ("/v1/track", "{\"userId\":", "invalid_events"),
        ("/v1/track", r#"{"userId":"u"}"#, "invalid_events"), // no event name
        ("/v1/page", r#"{"name":"Home"}"#, "invalid_events"), // no userId or anonymousId
        ("/v1/group", r#"{"userId":"u","traits":{"name":"Initech"}}"#, "invalid_events"), // no groupId
        ("/v1/g", r#"{"userId":"u","groupId":""}"#, "invalid_events"),
        ("/v1/alias", r#"{"userId":"u"}"#, "invalid_events"), // no previousId
        ("/v1/batch", "{\"batch\":[", "invalid_events"),
        ("/v1/batch", r#"{"events":[]}"#, "invalid_segment_payload"),
        ("/v1/b", "[1,2]", "invalid_segment_payload"),
        (
            "/v1/track",
            &format!(r#"{{"userId":"u","event":"E","properties":{{"p":{}1{}}}}}"#, "[".repeat(200), "]".repeat(200)),
            "invalid_events",
        ),
        // Refused after the events were read and their topics chosen: still no topic.
        ("/v1/track", &format!(r#"{{"userId":"u","event":"E","messageId":"{}"}}"#, "m".repeat(600)), "invalid_events"),
    ];
    for (path, body, code) in cases {
        let resp = server.post(path).header("content-type", "text/plain").body(body.to_string()).send().await.unwrap();
        assert_problem(resp, 400, code).await;
    }
    let big = json!({"userId": "u", "event": "Big", "properties": {"blob": "x".repeat(33 * 1024)}});
    assert_problem(post_segment(&server, "/v1/track", "application/json", &big).await, 400, "payload_too_large").await;
    let events: Vec<Value> = (0..60)
        .map(|i| json!({"type": "track", "userId": "u", "event": "E", "properties": {"p": "y".repeat(9000), "i": i}}))
        .collect();
    let resp = post_segment(&server, "/v1/batch", "application/json", &json!({"batch": events})).await;
    assert_problem(resp, 400, "payload_too_large").await;
    // An encoding the gateway does not read, or two of them: 400 as well (the events
    // route answers 415), so that trackers do not retry them for ever.
    let track = r#"{"userId":"u","event":"E"}"#;
    let resp = server.post("/v1/track").header("content-encoding", "zstd").body(track).send().await.unwrap();
    let problem = assert_problem(resp, 400, "unsupported_encoding").await;
    assert!(problem["detail"].as_str().unwrap().contains("zstd"), "{problem}");
    let twice = server
        .post("/v1/t")
        .header("content-encoding", "gzip")
        .header("content-encoding", "gzip")
        .body(gzip(&gzip(track.as_bytes())));
    assert_problem(twice.send().await.unwrap(), 400, "unsupported_encoding").await;
    let resp = server.post("/v1/nope").body("{}").send().await.unwrap();
    assert_problem(resp, 404, "not_found").await;
    let topics = server.get_json("/v1/topics").await;
    assert_eq!(topics["topics"], json!([]), "a refused request creates and stores nothing");
}

/// One bad event must not cost its batch (trackers drop a batch answered 400): the
/// batch's other events are stored and the bad ones go to `segment_invalid_topic`.
/// Items that are not objects are set aside exactly as sent, whatever numbers they hold:
/// a number past a float's range used to fail the whole batch (its valid events too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_keeps_its_events_whatever_numbers_its_other_items_hold() {
    let server = TestServer::with_defaults().await;
    let body = r#"{"batch": [{"type": "track", "userId": "u1", "event": "Kept", "messageId": "k1"}, 1e400,
        123456789012345678901234567890, [1e400, {"a": 1}], "t\u00e9xt"], "writeKey": "k"}"#;
    let resp = server.post("/v1/batch").header("content-type", "text/plain").body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let invalid: Vec<u64> =
        answer["invalid"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert_eq!(invalid, vec![1, 2, 3, 4], "{answer}");
    let tracks = all_records(&server, "segment.track").await;
    assert_eq!(tracks.iter().map(|r| r["value"]["event"].clone()).collect::<Vec<_>>(), vec![json!("Kept")]);
    // As sent (arrays and objects compacted): JSON we would not store as JSON (1e400)
    // comes back as base64 of its text; the long integer keeps every digit.
    let mut pages = String::new();
    for p in 0..server.describe("segment.invalid").await["partition_count"].as_u64().unwrap() {
        let url = format!("/v1/topics/segment.invalid/partitions/{p}/records?offset=0");
        pages.push_str(&server.get(&url).send().await.unwrap().text().await.unwrap());
    }
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    for expected in [
        format!(r#""value":"{}","value_encoding":"base64""#, b64("1e400")),
        r#""value":123456789012345678901234567890"#.to_string(),
        format!(r#""value":"{}","value_encoding":"base64""#, b64(r#"[1e400,{"a":1}]"#)),
        r#""value":"t\u00e9xt""#.to_string(),
    ] {
        assert!(pages.contains(&expected), "{expected} in {pages}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sets_its_invalid_events_aside_and_stores_the_rest() {
    let server = TestServer::with_defaults().await;
    server.create_topic_with(json!({"name": "segment.page", "partitions": 1, "schema": {"required": ["name"]}})).await;
    let batch = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Good", "messageId": "g1"},
        {"type": "track", "userId": "u1"},
        5,
        {"type": "group", "userId": "u1", "groupId": "g", "messageId": "m".repeat(600)},
        {"type": "page", "userId": "u1", "messageId": "p1"},
        {"type": "track", "userId": "u1", "event": "Big", "properties": {"blob": "x".repeat(33 * 1024)}},
        {"type": "identify", "anonymousId": "a1", "messageId": "i1"}
    ], "writeKey": "k"});
    for path in ["/v1/batch", "/v1/b"] {
        let resp = server.post(path).header("content-type", "text/plain").body(batch.to_string()).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["success"], true);
        assert_eq!(answer["invalid_topic"], "segment.invalid");
        let invalid = answer["invalid"].as_array().unwrap();
        assert_eq!(invalid.iter().map(|e| e["index"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(answer["invalid_count"], 5);
        assert_eq!(invalid[3]["path"], "", "the schema failure names its path: {answer}");
    }
    // The good events once each (the second post is deduplicated by messageId).
    let tracks = all_records(&server, "segment.track").await;
    assert_eq!(tracks.iter().map(|r| r["value"]["event"].clone()).collect::<Vec<_>>(), vec![json!("Good")]);
    assert_eq!(all_records(&server, "segment.identify").await.len(), 1);
    assert!(all_records(&server, "segment.page").await.is_empty());
    // The bad ones twice (not deduplicated: their ids are not remembered), in batch order.
    // (Keyless: each request's go to one partition, in order.)
    let aside = all_records(&server, "segment.invalid").await;
    assert_eq!(aside.len(), 10);
    let reasons: Vec<&str> = aside[..5].iter().map(|r| r["headers"]["dlq-reason"].as_str().unwrap()).collect();
    assert!(reasons[0].contains("\"event\" name"), "{reasons:?}");
    assert!(reasons[1].contains("JSON object"), "{reasons:?}");
    assert!(reasons[2].contains("messageId"), "{reasons:?}");
    assert!(reasons[3].contains("schema"), "{reasons:?}");
    assert!(reasons[4].contains("Segment's limit is 32768"), "{reasons:?}");
    assert_eq!(aside[0]["value"], json!({"type": "track", "userId": "u1"}), "as sent, without the write key");
    assert_eq!(aside[1]["value"], json!(5), "an item that is not an object is kept as read");
    assert_eq!(aside[3]["headers"]["dlq-source-topic"], "segment.page");
    assert_eq!(server.metric("tidegate_segment_invalid_events_total").await, Some(10.0));

    // With segment_invalid_topic empty they are dropped, and still listed (the page event
    // is fine there: no schema on that server).
    let dropping = TestServer::start(|c| c.segment_invalid_topic = String::new()).await;
    let resp = dropping.post("/v1/b").body(batch.to_string()).send().await.unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!((answer["invalid"].as_array().map(Vec::len), answer.get("invalid_topic")), (Some(4), None));
    let topics = dropping.get_json("/v1/topics").await;
    let names: Vec<&str> = topics["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"segment.invalid"), "{names:?}");
    // The answer lists the first 100 and counts them all: dropped ones too.
    let mut items: Vec<Value> =
        (0..150).map(|i| json!({"type": "track", "messageId": format!("no-user-{i}")})).collect();
    items.push(json!({"type": "track", "userId": "u", "event": "E"}));
    let resp = dropping.post("/v1/batch").json(&json!({"batch": items})).send().await.unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!((answer["invalid"].as_array().map(Vec::len), answer["invalid_count"].as_u64()), (Some(100), Some(150)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_js_settings_point_back_at_the_gateway() {
    let server = TestServer::with_defaults().await;
    let settings = server.get_json("/v1/projects/WRITE_KEY/settings").await;
    let io = &settings["integrations"]["Segment.io"];
    assert_eq!(io["apiKey"], "WRITE_KEY");
    assert_eq!(io["apiHost"], format!("{}/v1", server.addr));
    assert_eq!(io["protocol"], "http");
    let forwarded = |server: &TestServer| {
        server
            .get("/v1/projects/k/settings")
            .header("x-forwarded-host", "events.example.com")
            .header("x-forwarded-proto", "https")
            .send()
    };
    // From a client that is not a trusted proxy the forwarded headers are ignored: the
    // answer is cacheable, and must not send other visitors' events elsewhere.
    let spoofed = forwarded(&server).await.unwrap();
    let vary = spoofed.headers()["vary"].to_str().unwrap().to_ascii_lowercase();
    assert!(vary.contains("x-forwarded-host") && vary.contains("x-forwarded-proto"), "{vary}");
    let body: Value = spoofed.json().await.unwrap();
    assert_eq!(body["integrations"]["Segment.io"]["apiHost"], format!("{}/v1", server.addr));
    assert_eq!(body["integrations"]["Segment.io"]["protocol"], "http");

    let behind_proxy = TestServer::start(|c| c.trusted_proxies = "127.0.0.1/32".parse().unwrap()).await;
    let body: Value = forwarded(&behind_proxy).await.unwrap().json().await.unwrap();
    assert_eq!(body["integrations"]["Segment.io"]["apiHost"], "events.example.com/v1");
    assert_eq!(body["integrations"]["Segment.io"]["protocol"], "https");
    // A chain of proxies: the first value is what the browser used.
    let chained = behind_proxy
        .get("/v1/projects/k/settings")
        .header("x-forwarded-host", "events.example.com, inner.local")
        .header("x-forwarded-proto", "https,http")
        .send()
        .await
        .unwrap();
    let body: Value = chained.json().await.unwrap();
    assert_eq!(body["integrations"]["Segment.io"]["protocol"], "https", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_segment_events_are_stored_once_also_across_a_restart() {
    let mut server = TestServer::with_defaults().await;
    let batch = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m-1"},
        {"type": "track", "userId": "u2", "event": "Signed Up", "messageId": "m-2"},
        {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m-1"}
    ]});
    accepted(post_segment(&server, "/v1/batch", "application/json", &batch).await).await;
    assert_eq!(all_records(&server, "segment.track").await.len(), 2, "the same messageId twice in a batch");
    accepted(post_segment(&server, "/v1/b", "text/plain", &batch).await).await;
    assert_eq!(all_records(&server, "segment.track").await.len(), 2, "a retried batch is not written again");
    server.restart().await;
    let mixed = json!({"batch": [
        {"type": "track", "userId": "u2", "event": "Signed Up", "messageId": "m-2"},
        {"type": "track", "userId": "u3", "event": "Signed Up", "messageId": "m-3"}
    ]});
    accepted(post_segment(&server, "/v1/batch", "application/json", &mixed).await).await;
    let stored = all_records(&server, "segment.track").await;
    let mut ids: Vec<&str> = stored.iter().map(|r| r["value"]["messageId"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec!["m-1", "m-2", "m-3"], "after a restart only the new event is written");
    assert!(server.metric("tidegate_dedup_disk_lookups_total").await.is_some(), "the table-read counter is exported");
}

/// The key names the request whatever ids its events have: a second body is refused
/// also when its events carry their own ids, sit at other positions, or when the first
/// request's key-derived events were dead-lettered. Two values of the header are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_names_its_request_whatever_ids_its_events_have() {
    let server = TestServer::with_defaults().await;
    server.create_topic_with(json!({"name": "owned", "partitions": 1, "event_id": "/eid"})).await;
    let schema = json!({"type": "object", "required": ["p"], "properties": {"p": {"type": "string"}}});
    let dead = json!({"name": "checked", "partitions": 1, "schema": schema, "dead_letter_topic": "checked.dlq"});
    server.create_topic_with(dead).await;
    let post = |topic: &str, key: &str, body: &str| {
        server
            .post(&format!("/v1/topics/{topic}/events"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
    };
    let total = |ends: Vec<u64>| ends.iter().sum::<u64>();
    // Own ids and key-derived ids at other positions.
    assert_eq!(post("owned", "a", r#"[{"eid":"m1"},{"x":1}]"#).await.unwrap().status(), 200);
    assert_problem(post("owned", "a", r#"[{"x":2},{"eid":"m1"}]"#).await.unwrap(), 422, "idempotency_key_reused").await;
    assert_problem(post("owned", "a", r#"[{"eid":"m2"}]"#).await.unwrap(), 422, "idempotency_key_reused").await;
    assert_eq!(total(server.end_offsets("owned").await), 2, "nothing of the refused bodies was written");
    let again: Value = post("owned", "a", r#"[{"eid":"m1"},{"x":1}]"#).await.unwrap().json().await.unwrap();
    assert!(again["offsets"].as_array().unwrap().iter().all(|o| o["duplicate"] == true), "{again}");
    // A first body of own ids only names its key too.
    assert_eq!(post("owned", "b", r#"[{"eid":"m3"}]"#).await.unwrap().status(), 200);
    assert_problem(post("owned", "b", r#"[{"x":3}]"#).await.unwrap(), 422, "idempotency_key_reused").await;
    // The first request's key-derived event was dead-lettered, its other event written.
    let first: Value = post("checked", "c", r#"[{"p":5},{"p":"ok"}]"#).await.unwrap().json().await.unwrap();
    assert!(first["offsets"][0]["dead_letter"].is_object(), "{first}");
    assert_problem(post("checked", "c", r#"[{"p":"new"}]"#).await.unwrap(), 422, "idempotency_key_reused").await;
    assert_eq!(total(server.end_offsets("checked").await), 1);
    // One key per request.
    let resp = server
        .post("/v1/topics/owned/events")
        .header("content-type", "application/json")
        .header("idempotency-key", "d")
        .header("idempotency-key", "e")
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400, "invalid_idempotency_key").await;
}

/// An `Idempotency-Key` names one request: reusing it with another body is refused
/// with 422 `idempotency_key_reused` and writes nothing (IETF
/// draft-ietf-httpapi-idempotency-key-header), also after a restart and when the two
/// requests race; the same body stays a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_with_another_body_is_refused() {
    let mut server = TestServer::with_defaults().await;
    server.create_topic("orders", 2).await;
    let post = |api: Api, key: &'static str, body: &'static str| async move {
        api.post("/v1/topics/orders/events")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
            .await
            .expect("post")
    };
    let total = |ends: Vec<u64>| ends.iter().sum::<u64>();
    assert_eq!(post(server.api().clone(), "order-1", r#"[{"sku":1},{"sku":2}]"#).await.status(), 200);
    // Another body under the same key: refused whole, even its third, unseen event.
    let resp = post(server.api().clone(), "order-1", r#"[{"sku":1},{"sku":9},{"sku":3}]"#).await;
    let problem = assert_problem(resp, 422, "idempotency_key_reused").await;
    assert!(problem["detail"].as_str().unwrap().contains("different body"), "{problem}");
    assert_eq!(total(server.end_offsets("orders").await), 2, "the refused request wrote nothing");
    // The same body is still answered as duplicates, after a restart too.
    server.restart().await;
    let again: Value = post(server.api().clone(), "order-1", r#"[{"sku":1},{"sku":2}]"#).await.json().await.unwrap();
    assert!(again["offsets"].as_array().unwrap().iter().all(|o| o["duplicate"] == true), "{again}");
    let resp = post(server.api().clone(), "order-1", r#"[{"sku":2},{"sku":1}]"#).await;
    assert_problem(resp, 422, "idempotency_key_reused").await;
    // A refused body did not take the key: its own later retry is refused again.
    let resp = post(server.api().clone(), "order-1", r#"[{"sku":1},{"sku":9},{"sku":3}]"#).await;
    assert_problem(resp, 422, "idempotency_key_reused").await;
    // Two bodies racing for a fresh key: one is written, the other refused.
    let a = tokio::spawn(post(server.api().clone(), "order-2", r#"[{"sku":"a"}]"#));
    let b = tokio::spawn(post(server.api().clone(), "order-2", r#"[{"sku":"b"}]"#));
    let mut statuses = vec![a.await.unwrap().status().as_u16(), b.await.unwrap().status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 422]);
    assert_eq!(total(server.end_offsets("orders").await), 3);
    // Without the key, bodies are not compared.
    let plain = server.post_events("orders", "", "application/json", r#"[{"sku":1}]"#.to_string()).await;
    assert_eq!(plain.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_id_pointer_and_idempotency_key_deduplicate_with_original_offsets() {
    let mut server = TestServer::with_defaults().await;
    server.create_topic_with(json!({"name": "snow", "partitions": 3, "event_id": "/eid"})).await;
    assert_eq!(server.describe("snow").await["event_id"], "/eid");
    let first = json!([{"eid": "e1", "n": 1}, {"eid": "e2", "n": 2}, {"n": 3}]);
    let resp = server.post_events("snow", "", "application/json", first.to_string()).await;
    let a: Value = resp.json().await.unwrap();
    assert!(a["offsets"].as_array().unwrap().iter().all(|o| o.get("duplicate").is_none()), "{a}");
    // A retry mixing seen and new ids: seen ones answer their first offsets.
    let retry = json!([{"eid": "e2", "n": 2}, {"eid": "e4", "n": 4}, {"eid": "e1", "n": 1}]);
    let b: Value = server.post_events("snow", "", "text/plain", retry.to_string()).await.json().await.unwrap();
    assert_eq!(
        b["offsets"][0],
        json!({"partition": a["offsets"][1]["partition"], "offset": a["offsets"][1]["offset"], "duplicate": true})
    );
    assert_eq!(b["offsets"][2]["offset"], a["offsets"][0]["offset"]);
    assert_eq!(b["offsets"][2]["duplicate"], true);
    assert!(b["offsets"][1].get("duplicate").is_none());
    let total = |ends: Vec<u64>| ends.iter().sum::<u64>();
    assert_eq!(total(server.end_offsets("snow").await), 4, "e1, e2, the id-less event and e4");

    // Idempotency-Key: the whole request is named; a retry answers the same offsets.
    server.create_topic("plain", 2).await;
    let one = post_with_key(server.api().clone(), "req-1").await;
    server.restart().await;
    let again = post_with_key(server.api().clone(), "req-1").await;
    for i in 0..2 {
        assert_eq!(again["offsets"][i]["offset"], one["offsets"][i]["offset"]);
        assert_eq!(again["offsets"][i]["partition"], one["offsets"][i]["partition"]);
        assert_eq!(again["offsets"][i]["duplicate"], true);
    }
    assert_eq!(total(server.end_offsets("plain").await), 2, "the retry after a restart wrote nothing");
    // Concurrent retries of the same request: all answer the same offsets, one copy stored.
    let racers: Vec<_> = (0..8).map(|_| tokio::spawn(post_with_key(server.api().clone(), "req-2"))).collect();
    let mut answers = Vec::new();
    for r in racers {
        let v = r.await.unwrap();
        answers.push(
            v["offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| (o["partition"].clone(), o["offset"].clone()))
                .collect::<Vec<_>>(),
        );
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(total(server.end_offsets("plain").await), 4);

    // An empty event id is no id: the Idempotency-Key names that event instead.
    let with_empty = |key: &str| {
        server
            .post("/v1/topics/snow/events")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(r#"[{"eid":""},{"eid":"e9"}]"#)
            .send()
    };
    let first: Value = with_empty("req-3").await.unwrap().json().await.unwrap();
    assert!(first["offsets"].as_array().unwrap().iter().all(|o| o.get("duplicate").is_none()), "{first}");
    let retry: Value = with_empty("req-3").await.unwrap().json().await.unwrap();
    assert!(retry["offsets"].as_array().unwrap().iter().all(|o| o["duplicate"] == true), "{retry}");
    // Ids and keys: 1 to 496 bytes; an empty or longer key is refused for the request.
    for key in ["", &"k".repeat(497)] {
        let resp = with_empty(key).await.unwrap();
        assert_problem(resp, 400, "invalid_idempotency_key").await;
    }
    let long_id = |n: usize| json!({"eid": "i".repeat(n)}).to_string();
    assert_eq!(server.post_events("snow", "", "application/json", long_id(496)).await.status(), 200);
    let problem =
        assert_problem(server.post_events("snow", "", "application/json", long_id(497)).await, 400, "invalid_events")
            .await;
    assert!(problem.to_string().contains("at most 496"), "{problem}");
}

/// A schema added after an event was accepted does not turn its retry into a 400 (a
/// tracker would drop it as malformed): the retry is answered as the duplicate it is.
/// A new event failing the schema is still refused, and its request writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_an_event_accepted_before_a_schema_is_a_duplicate() {
    let server = TestServer::with_defaults().await;
    server.create_topic_with(json!({"name": "late", "partitions": 1, "event_id": "/eid"})).await;
    let post = |body: Value, key: Option<&'static str>| {
        let mut request = server.post("/v1/topics/late/events").json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    assert_eq!(post(json!({"eid": "e1"}), None).await.unwrap().status(), 200);
    assert_eq!(post(json!([{"n": 1}]), Some("k1")).await.unwrap().status(), 200);
    assert_eq!(post(json!([{"eid": "e5", "page": 1}, {"eid": "e5"}]), None).await.unwrap().status(), 200);
    let patch = json!({"schema": {"required": ["page"]}});
    assert_eq!(server.http.patch(server.url("/v1/topics/late")).json(&patch).send().await.unwrap().status(), 200);

    for (body, key) in [
        (json!({"eid": "e1"}), None),
        (json!([{"n": 1}]), Some("k1")),
        (json!([{"eid": "e5", "page": 1}, {"eid": "e5"}]), None),
    ] {
        let resp = post(body, key).await.unwrap();
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["offsets"][0]["duplicate"], true, "{answer}");
    }
    // New events failing the schema: refused, beside a retry too; nothing is written.
    for body in [json!({"eid": "e2"}), json!({"n": 2}), json!([{"eid": "e1"}, {"eid": "e3", "page": 1}, {"eid": "e4"}])]
    {
        let problem = assert_problem(post(body.clone(), None).await.unwrap(), 400, "invalid_events").await;
        let indexes: Vec<u64> =
            problem["errors"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
        let expected = if body.is_array() { vec![2] } else { vec![0] };
        assert_eq!(indexes, expected, "{body}: {problem}");
    }
    assert_eq!(server.end_offsets("late").await, vec![3]);

    // A Segment single call too (a batch sets a failing event aside instead).
    let track = |id: &str| json!({"userId": "u", "event": "E", "messageId": id});
    accepted(post_segment(server.api(), "/v1/track", "application/json", &track("m1")).await).await;
    let patch = json!({"schema": {"required": ["properties"]}});
    let resp = server.http.patch(server.url("/v1/topics/segment.track")).json(&patch).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    accepted(post_segment(server.api(), "/v1/track", "application/json", &track("m1")).await).await;
    let resp = post_segment(server.api(), "/v1/track", "application/json", &track("m2")).await;
    assert_problem(resp, 400, "invalid_events").await;
    assert_eq!(server.end_offsets("segment.track").await.iter().sum::<u64>(), 1);
    // In a batch: the retry is not set aside again; a new failing event is.
    let batch = json!({"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": "m1"},
                                 {"type": "track", "userId": "u", "event": "E", "messageId": "m3"}]});
    let resp = post_segment(server.api(), "/v1/batch", "application/json", &batch).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let listed: Vec<u64> = answer["invalid"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert_eq!(listed, vec![1], "{answer}");
    let aside = all_records(&server, "segment.invalid").await;
    let ids: Vec<&str> = aside.iter().map(|r| r["value"]["messageId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m3"]);
    assert_eq!(server.end_offsets("segment.track").await.iter().sum::<u64>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_rejects_with_the_path_or_dead_letters_with_the_reason() {
    let mut server = TestServer::with_defaults().await;
    let schema = json!({"type": "object", "required": ["event"],
        "properties": {"event": {"type": "string"}, "properties": {"type": "object", "properties": {"revenue": {"type": "number"}}}}});
    server.create_topic_with(json!({"name": "strict", "partitions": 1, "schema": schema})).await;
    let resp = server
        .post_events(
            "strict",
            "",
            "application/json",
            json!([{"event": "ok"}, {"event": "x", "properties": {"revenue": "14.99"}}]).to_string(),
        )
        .await;
    let problem = assert_problem(resp, 400, "invalid_events").await;
    assert_eq!(problem["errors"][0]["index"], 1);
    assert_eq!(problem["errors"][0]["path"], "/properties/revenue");
    assert_eq!(server.end_offsets("strict").await, vec![0], "the request is atomic");

    let bad_schema =
        server.http.patch(server.url("/v1/topics/strict")).json(&json!({"schema": {"type": 12}})).send().await.unwrap();
    assert_problem(bad_schema, 400, "invalid_schema").await;
    let resp = server
        .http
        .patch(server.url("/v1/topics/strict"))
        .json(&json!({"dead_letter_topic": "strict.dlq"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(server.describe("strict.dlq").await["name"], "strict.dlq", "the dead-letter topic is created");
    let body = json!([{"event": "ok"}, {"properties": {}}, {"event": "also ok"}]);
    let answer: Value =
        server.post_events("strict", "", "application/json", body.to_string()).await.json().await.unwrap();
    let offsets = answer["offsets"].as_array().unwrap();
    assert!(offsets[0].get("dead_letter").is_none());
    assert_eq!(offsets[1]["dead_letter"]["topic"], "strict.dlq");
    assert_eq!(offsets[1]["dead_letter"]["path"], "");
    assert!(offsets[1]["dead_letter"]["reason"].as_str().unwrap().contains("event"));
    assert_eq!(server.end_offsets("strict").await, vec![2]);
    let dlq = all_records(&server, "strict.dlq").await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["value"], json!({"properties": {}}));
    assert_eq!(dlq[0]["headers"]["dlq-source-topic"], "strict");
    assert_eq!(dlq[0]["headers"]["dlq-path"], "");
    assert!(dlq[0]["headers"]["dlq-reason"].as_str().unwrap().contains("event"));
    // Settings persist across a restart (the schema is recompiled from the metadata).
    server.restart().await;
    let d = server.describe("strict").await;
    assert_eq!((d["schema"].clone(), d["dead_letter_topic"].clone()), (schema, json!("strict.dlq")));
    let resp = server.post_events("strict", "", "application/json", r#"{"event": 5}"#).await;
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["offsets"][0]["dead_letter"]["path"], "/event");
    // Segment events are screened by their topic's schema too.
    server
        .create_topic_with(json!({"name": "segment.track", "partitions": 1, "schema": {"required": ["properties"]}}))
        .await;
    let resp = post_segment(&server, "/v1/track", "application/json", &json!({"userId": "u", "event": "E"})).await;
    let problem = assert_problem(resp, 400, "invalid_events").await;
    assert_eq!(problem["errors"][0]["path"], "");
}

/// An id stands for an accepted event: a dead-lettered event's id is not remembered,
/// so a corrected copy sent again with the same id is accepted (once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrected_retry_of_a_dead_lettered_event_is_accepted() {
    let server = TestServer::with_defaults().await;
    let schema = json!({"required": ["revenue"], "properties": {"revenue": {"type": "number"}}});
    server
        .create_topic_with(json!({"name": "orders", "partitions": 1, "event_id": "/eid", "schema": schema,
            "dead_letter_topic": "orders.dlq"}))
        .await;
    let post = |body: Value| {
        let request = server.post_events("orders", "", "application/json", body.to_string());
        async move {
            let resp = request.await;
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()["offsets"][0].clone()
        }
    };
    let first = post(json!({"eid": "o1", "revenue": "5"})).await;
    assert_eq!(first["dead_letter"]["topic"], "orders.dlq", "{first}");
    let again = post(json!({"eid": "o1", "revenue": "5"})).await;
    assert_eq!((again["dead_letter"]["topic"].clone(), again.get("duplicate")), (json!("orders.dlq"), None), "{again}");
    let fixed = post(json!({"eid": "o1", "revenue": 5})).await;
    assert_eq!((fixed["partition"].clone(), fixed["offset"].clone()), (json!(0), json!(0)), "{fixed}");
    assert!(fixed.get("dead_letter").is_none() && fixed.get("duplicate").is_none(), "{fixed}");
    let retried = post(json!({"eid": "o1", "revenue": 5})).await;
    assert_eq!(retried, json!({"partition": 0, "offset": 0, "duplicate": true}));
    assert_eq!(server.end_offsets("orders").await, vec![1]);
    assert_eq!(all_records(&server, "orders.dlq").await.len(), 2, "both uncorrected copies are dead letters");

    // In one request too: the corrected copy after a dead-lettered one is accepted, and
    // copies after the accepted one are its duplicates.
    let resp = server
        .post_events(
            "orders",
            "",
            "application/json",
            json!([{"eid": "o2", "revenue": "x"}, {"eid": "o2", "revenue": 2}, {"eid": "o2", "revenue": "y"}])
                .to_string(),
        )
        .await;
    let offsets = resp.json::<Value>().await.unwrap()["offsets"].clone();
    assert_eq!(offsets[0]["dead_letter"]["topic"], "orders.dlq", "{offsets}");
    assert_eq!(offsets[1], json!({"partition": 0, "offset": 1}), "{offsets}");
    assert_eq!(offsets[2], json!({"partition": 0, "offset": 1, "duplicate": true}), "{offsets}");
    assert_eq!(server.end_offsets("orders").await, vec![2]);
    assert_eq!(all_records(&server, "orders.dlq").await.len(), 3);
}

/// A retry of a request sent with an `Idempotency-Key` writes nothing again, its dead
/// letters included (they are remembered under the key; an event's own id is not, so a
/// corrected copy under a new key is accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_retry_does_not_write_its_dead_letters_again() {
    let mut server = TestServer::with_defaults().await;
    let schema = json!({"required": ["p"]});
    server
        .create_topic_with(json!({"name": "k", "partitions": 1, "event_id": "/eid", "schema": schema,
            "dead_letter_topic": "k.dlq"}))
        .await;
    let post = |api: Api, key: &'static str, body: &'static str| async move {
        let resp = api
            .post("/v1/topics/k/events")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["offsets"].clone()
    };
    // A key-derived id and an own id dead-lettered, one event accepted.
    let body = r#"[{"a":1},{"eid":"e1"},{"p":1}]"#;
    let first = post(server.api().clone(), "K1", body).await;
    assert!(first[0]["dead_letter"].is_object() && first[1]["dead_letter"].is_object(), "{first}");
    for restart in [false, true] {
        if restart {
            server.restart().await;
        }
        let again = post(server.api().clone(), "K1", body).await;
        for i in 0..3 {
            assert_eq!(again[i]["duplicate"], true, "{again}");
            assert_eq!((&again[i]["partition"], &again[i]["offset"]), (&first[i]["partition"], &first[i]["offset"]));
        }
        assert_eq!(again[0]["dead_letter"]["topic"], "k.dlq", "{again}");
        assert_eq!(all_records(&server, "k.dlq").await.len(), 2, "the dead letters once (restart: {restart})");
        assert_eq!(server.end_offsets("k").await, vec![1]);
    }
    // The corrected copy of e1 under a new key is accepted.
    let fixed = post(server.api().clone(), "K2", r#"[{"eid":"e1","p":2}]"#).await;
    assert!(fixed[0].get("duplicate").is_none() && fixed[0].get("dead_letter").is_none(), "{fixed}");
    assert_eq!(server.end_offsets("k").await, vec![2]);
    // A dead letter and its corrected copy in one keyed request: a retry answers each
    // with its own first place.
    let both = r#"[{"eid":"e9"},{"eid":"e9","p":1}]"#;
    let first = post(server.api().clone(), "K3", both).await;
    let again = post(server.api().clone(), "K3", both).await;
    assert_eq!(again[0]["dead_letter"]["topic"], "k.dlq", "{again}");
    for i in 0..2 {
        assert_eq!((&again[i]["partition"], &again[i]["offset"]), (&first[i]["partition"], &first[i]["offset"]));
    }
    assert!(again[1].get("dead_letter").is_none(), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_is_stored_full_truncated_or_not_and_never_for_anonymous_requests() {
    for (mode, expected) in [
        (ClientIpMode::Full, Some("127.0.0.1")),
        (ClientIpMode::Truncated, Some("127.0.0.0")),
        (ClientIpMode::None, None),
    ] {
        let server = TestServer::start(|c| c.client_ip = mode).await;
        server.create_topic("ip", 1).await;
        server.produce("ip", &json!({"a": 1})).await;
        let resp = server
            .post("/v1/topics/ip/events")
            .header("content-type", "application/json")
            .header("sp-anonymous", "*")
            .header("user-agent", "Tracker/1.0")
            .body(r#"{"a":2}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let records = server.read_all("ip", 0).await;
        assert_eq!(records[0]["headers"].get("client-ip").and_then(Value::as_str), expected, "{mode}");
        assert!(records[1]["headers"].get("client-ip").is_none(), "anonymous: {}", records[1]);
        assert_eq!(records[1]["headers"]["anonymous"], "1");
        assert_eq!(records[1]["headers"]["user-agent"], "Tracker/1.0", "the user agent is kept");
    }
    // The Segment API follows the same rules, for the address it sees and for the one a
    // library reports in `context.ip` (a batch's or an event's own).
    for (mode, header_ip, batch_ip, own_ip) in [
        (ClientIpMode::Full, Some("127.0.0.1"), Some("203.0.113.77"), Some("2001:db8:1:2::7")),
        (ClientIpMode::Truncated, Some("127.0.0.0"), Some("203.0.113.0"), Some("2001:db8:1::")),
        (ClientIpMode::None, None, None, None),
    ] {
        let server = TestServer::start(|c| c.client_ip = mode).await;
        let batch = json!({"context": {"ip": "203.0.113.77", "locale": "en-GB"}, "batch": [
            {"type": "track", "anonymousId": "a", "event": "Batch IP", "messageId": "m1"},
            {"type": "track", "anonymousId": "a", "event": "Own IP", "messageId": "m2",
             "context": {"ip": "2001:db8:1:2::7", "app": {"name": "shop"}}},
        ]});
        accepted(post_segment(&server, "/v1/batch", "application/json", &batch).await).await;
        let anonymous =
            server.post("/v1/t").header("content-type", "text/plain").header("tidegate-anonymous", "1").body(
                json!({"anonymousId": "a", "event": "Anonymous", "messageId": "m3", "context": {"ip": "198.51.100.1"}})
                    .to_string(),
            );
        accepted(anonymous.send().await.unwrap()).await;
        let records = all_records(&server, "segment.track").await;
        let by_id = |id: &str| records.iter().find(|r| r["value"]["messageId"] == id).unwrap().clone();
        let (m1, m2, m3) = (by_id("m1"), by_id("m2"), by_id("m3"));
        assert_eq!(m1["headers"].get("client-ip").and_then(Value::as_str), header_ip, "{mode}");
        assert_eq!(m1["value"]["context"].get("ip").and_then(Value::as_str), batch_ip, "{mode}: {m1}");
        assert_eq!(m1["value"]["context"]["locale"], "en-GB", "the rest of the context stays");
        assert_eq!(m2["value"]["context"].get("ip").and_then(Value::as_str), own_ip, "{mode}: {m2}");
        assert_eq!(m2["value"]["context"]["app"]["name"], "shop");
        assert!(m3["headers"].get("client-ip").is_none(), "{mode}: {m3}");
        assert!(m3["value"]["context"].get("ip").is_none(), "anonymous requests keep no address: {m3}");
        assert_eq!(m3["headers"]["anonymous"], "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_js_is_served_as_cacheable_javascript() {
    let server = TestServer::with_defaults().await;
    let resp = server.get("/tracker.js").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let header =
        |r: &reqwest::Response, n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert_eq!(header(&resp, "content-type"), "application/javascript; charset=utf-8");
    assert!(header(&resp, "cache-control").contains("max-age="));
    let etag = header(&resp, "etag");
    let text = resp.text().await.unwrap();
    assert_eq!(text, tidegate::routes::tracker::TRACKER_JS);
    for needle in
        ["sendBeacon", "keepalive: bytes(text) <= 65536", "randomUUID", "localStorage", "/v1/b", "visibilitychange"]
    {
        assert!(text.contains(needle), "the tracker uses {needle}");
    }
    let resp = server.get("/tracker.js").header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(resp.status(), 304);
    // Weak comparison: a compressing proxy hands the browser the ETag marked weak.
    let weak = format!("\"other\", W/{etag}");
    let resp = server.get("/tracker.js").header("if-none-match", &weak).send().await.unwrap();
    assert_eq!(resp.status(), 304);
    let resp = server.get("/tracker.js").header("if-none-match", "W/\"other\"").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // A Basic header with a write key and the body form both work for the Segment API.
    let key = base64::engine::general_purpose::STANDARD.encode("wk:");
    let resp = server
        .post("/v1/p")
        .header("authorization", format!("Basic {key}"))
        .body(r#"{"anonymousId":"a"}"#)
        .send()
        .await
        .unwrap();
    accepted(resp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_ids_survive_kill_9() {
    use tidegate_tests::ProcessServer;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ProcessServer::start(dir.path(), &[]).await;
    // 20 acknowledged batches of 10 events, each event with its own messageId.
    let batch = |b: usize| {
        let events: Vec<Value> = (0..10)
            .map(|i| json!({"type": "track", "userId": format!("u{i}"), "event": "Clicked", "messageId": format!("m-{b}-{i}")}))
            .collect();
        json!({"batch": events})
    };
    for b in 0..20 {
        accepted(post_segment(server.api(), "/v1/batch", "application/json", &batch(b)).await).await;
    }
    server.kill9().await;
    server.restart().await;
    // Every retry after the crash is recognised: nothing is written twice.
    for b in 0..20 {
        accepted(post_segment(server.api(), "/v1/b", "text/plain", &batch(b)).await).await;
    }
    let stored = all_records(server.api(), "segment.track").await;
    assert_eq!(stored.len(), 200);
    let mut ids: Vec<&str> = stored.iter().map(|r| r["value"]["messageId"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "each messageId stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_is_remembered_for_the_dedup_window_only() {
    const WINDOW_MS: u64 = 1000;
    let server = TestServer::start(|c| {
        c.dedup_window_ms = WINDOW_MS;
        c.dedup_expiry_interval_ms = 200;
    })
    .await;
    server.create_topic_with(json!({"name": "windowed", "partitions": 1, "event_id": "/eid"})).await;
    let post = || async {
        let resp = server.post_events("windowed", "", "application/json", r#"{"eid":"e1"}"#.to_string()).await;
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["offsets"][0].clone()
    };
    assert_eq!(post().await, json!({"partition": 0, "offset": 0}));
    assert_eq!(post().await, json!({"partition": 0, "offset": 0, "duplicate": true}), "a retry within the window");
    assert_eq!(server.metric("tidegate_events_deduplicated_total").await, Some(1.0));
    assert_eq!(server.metric("tidegate_dedup_cache_entries").await, Some(1.0));
    tokio::time::sleep(std::time::Duration::from_millis(WINDOW_MS + 300)).await;
    assert_eq!(post().await, json!({"partition": 0, "offset": 1}), "after the window the id is new again");
    assert_eq!(server.end_offsets("windowed").await, vec![2]);
    assert_eq!(server.metric("tidegate_events_deduplicated_total").await, Some(1.0));
}
