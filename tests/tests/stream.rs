//! Server-Sent Events: `GET /v1/topics/{topic}/stream` through a real HTTP client.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tidegate_tests::TestServer;

/// One parsed SSE event.
#[derive(Debug)]
struct SseEvent {
    event: String,
    data: Value,
    id: Option<String>,
}

/// Reads SSE events from a streaming response until `done` says stop (bounded by a deadline).
async fn read_events(resp: reqwest::Response, mut done: impl FnMut(&[SseEvent]) -> bool) -> Vec<SseEvent> {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done(&events) {
        let chunk = tokio::time::timeout_at(deadline, body.next()).await.expect("events before the deadline");
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("stream open").expect("chunk")));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut data, mut id) = (String::new(), String::new(), None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                }
            }
            if !event.is_empty() {
                events.push(SseEvent { event, data: serde_json::from_str(&data).expect("data is JSON"), id });
            }
        }
    }
    events
}

fn values(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.event == "records")
        .flat_map(|e| e.data["records"].as_array().cloned().unwrap_or_default())
        .map(|r| r["value"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_records_and_resumes_from_last_event_id() {
    let server = TestServer::with_defaults().await;
    server.create_topic("s", 1).await;
    server.produce("s", &json!([{"n": 1}, {"n": 2}])).await;
    let resp = server.get("/v1/topics/s/stream?from=earliest").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let first = read_events(resp, |ev| values(ev).len() >= 2).await;
    assert_eq!(first[0].event, "assignment");
    assert_eq!(first[0].data["type"], "assignment", "type comes first and is present");
    assert_eq!(values(&first), vec![json!({"n": 1}), json!({"n": 2})]);
    let last_id = first.iter().rev().find_map(|e| e.id.clone()).expect("records carry an id");
    assert!(last_id.starts_with("s:0:2:"), "topic:partition:offset:incarnation, got {last_id}");

    // Records posted while disconnected arrive after a resume, and nothing before them.
    server.produce("s", &json!([{"n": 3}])).await;
    let resp = server.get("/v1/topics/s/stream").header("last-event-id", &last_id).send().await.unwrap();
    let resumed = read_events(resp, |ev| !values(ev).is_empty()).await;
    assert_eq!(values(&resumed), vec![json!({"n": 3})]);

    // New records are pushed live.
    let resp = server.get("/v1/topics/s/stream?from=latest").send().await.unwrap();
    let producer = {
        let api = server.api().clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            api.produce("s", &json!([{"n": 4}])).await
        })
    };
    let live = read_events(resp, |ev| !values(ev).is_empty()).await;
    assert_eq!(values(&live), vec![json!({"n": 4})]);
    producer.await.unwrap();

    // A position past the end (the topic re-created, say) starts from `from` instead of
    // waiting for offsets the log has not reached.
    let resp =
        server.get("/v1/topics/s/stream?from=earliest").header("last-event-id", "s:0:1000").send().await.unwrap();
    let reset = read_events(resp, |ev| values(ev).len() >= 4).await;
    assert_eq!(reset[0].data["partitions"][0]["offset"], 0, "{:?}", reset[0]);
    assert_eq!(values(&reset), vec![json!({"n": 1}), json!({"n": 2}), json!({"n": 3}), json!({"n": 4})]);
    // An explicit position must name a partition the subscription reads.
    let resp = server.get("/v1/topics/s/stream?offsets=7:0").send().await.unwrap();
    tidegate_tests::assert_problem(resp, 404, "partition_not_found").await;
    let resp = server.get("/v1/topics/s/stream?offsets=other:0:0").send().await.unwrap();
    tidegate_tests::assert_problem(resp, 400, "invalid_parameter").await;
    // A Last-Event-ID saved before the topic was deleted and created again is no position
    // in the new topic, even where the new one has that offset: read from `from`.
    assert_eq!(server.http.delete(server.url("/v1/topics/s")).send().await.unwrap().status(), 204);
    server.create_topic("s", 1).await;
    server.produce("s", &json!([{"n": 5}, {"n": 6}, {"n": 7}])).await;
    let resp = server.get("/v1/topics/s/stream?from=earliest").header("last-event-id", &last_id).send().await.unwrap();
    let reborn = read_events(resp, |ev| values(ev).len() >= 3).await;
    assert_eq!(values(&reborn), vec![json!({"n": 5}), json!({"n": 6}), json!({"n": 7})], "nothing skipped");
    let new_id = reborn.iter().rev().find_map(|e| e.id.clone()).expect("an id");
    assert!(new_id.starts_with("s:0:3:") && new_id != last_id.replace(":2:", ":3:"), "{new_id} vs {last_id}");
    let resp = server.get("/v1/topics/s/stream").header("last-event-id", "s:0:1").send().await.unwrap();
    let resumed = read_events(resp, |ev| !values(ev).is_empty()).await;
    assert_eq!(values(&resumed)[0], json!({"n": 6}), "ids without an incarnation still resume");
    // A Last-Event-ID that no longer fits (a partition gone with a re-created topic,
    // another topic, garbage) is dropped, not refused: EventSource gives up after a 4xx.
    for stale in ["s:7:0", "other:0:0", "not an id"] {
        let resp = server.get("/v1/topics/s/stream?from=earliest").header("last-event-id", stale).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{stale}");
        let fresh = read_events(resp, |ev| values(ev).len() >= 3).await;
        assert_eq!(values(&fresh), vec![json!({"n": 5}), json!({"n": 6}), json!({"n": 7})], "{stale}: from `from`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_with_a_group_commits_what_it_delivered() {
    let server = TestServer::with_defaults().await;
    server.create_topic("g", 1).await;
    server.produce("g", &json!([1, 2, 3])).await;
    let resp = server.get("/v1/topics/g/stream?group=dash&from=earliest").send().await.unwrap();
    let got = read_events(resp, |ev| values(ev).len() >= 3).await;
    assert_eq!(values(&got), vec![json!(1), json!(2), json!(3)]);
    // Dropping the response disconnects; the session commits its delivered position.
    let committed = tidegate_tests::eventually("the group committed offset 3", Duration::from_secs(10), || async {
        let g = server.get_json("/v1/groups/dash").await;
        (g["partitions"][0]["committed"] == json!(3)).then_some(g)
    })
    .await;
    assert_eq!(committed["lag"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_refuses_unknown_topics_with_a_problem() {
    let server = TestServer::with_defaults().await;
    let resp = server.get("/v1/topics/nope/stream").send().await.unwrap();
    tidegate_tests::assert_problem(resp, 404, "topic_not_found").await;
}
