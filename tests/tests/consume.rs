//! Consumption over WebSocket (`/v1/topics/{topic}/subscribe`) and consumer groups:
//! partition sharing, rebalancing on leave and crash, static membership, commits
//! (explicit, automatic, across a restart), ephemeral resume and gaps, flow control,
//! the client frames (seek, pause, resume, commit) and the group admin API.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tidegate_tests::{
    Api, Config, ProcessServer, Subscriber, TestServer, WsEvent, WsStream, assert_problem, eventually,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// How long any one condition may take to become true.
const WAIT: Duration = Duration::from_secs(30);
/// Session timeout of the in-process servers (heartbeats every 300 ms, auto-commit every 100 ms).
const SESSION_TIMEOUT: Duration = Duration::from_millis(1500);

fn quick(c: &mut Config) {
    c.session_timeout_ms = SESSION_TIMEOUT.as_millis() as u64;
    c.heartbeat_interval_ms = 300;
    c.auto_commit_interval_ms = 100;
    c.revoke_commit_timeout_ms = 500;
}

async fn quick_server() -> TestServer {
    TestServer::start(quick).await
}

/// [`quick_server`] with more settings changed by `tweak`.
async fn quick_server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start(|c| {
        quick(c);
        tweak(c);
    })
    .await
}

/// Posts events `{"id": i}` for `ids`, event `i` to partition `i % partitions`.
async fn produce_ids(api: &Api, topic: &str, ids: Range<u64>, partitions: u32) -> Vec<(u32, u64)> {
    let records: Vec<Value> =
        ids.map(|i| json!({"partition": i % u64::from(partitions), "value": {"id": i}})).collect();
    api.produce(topic, &json!({ "records": records })).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
}

fn commit_frame(offsets: &[(u32, u64)]) -> Value {
    let offsets: Vec<Value> = offsets.iter().map(|(p, o)| json!({"partition": p, "offset": o})).collect();
    json!({"type": "commit", "offsets": offsets})
}

/// A subscriber to one topic and everything it has been told.
struct Consumer {
    name: String,
    topic: String,
    sub: Subscriber,
    /// Partitions it reads now (latest assignment minus later revocations).
    owned: BTreeSet<u32>,
    /// Generation of the latest assignment.
    generation: Option<u64>,
    /// Where each partition started when this consumer last acquired it.
    acquired_at: BTreeMap<u32, u64>,
    /// Every assignment frame, in order.
    assignments: Vec<Value>,
    /// Records received, per partition, in arrival order.
    records: BTreeMap<u32, Vec<Value>>,
    /// Offsets acknowledged by `committed` frames.
    committed: BTreeMap<u32, u64>,
    gaps: Vec<Value>,
    errors: Vec<Value>,
    /// The `type` of every frame, in arrival order.
    kinds: Vec<String>,
    closed: Option<(Option<u16>, String)>,
    /// Commit each records frame once "processed" (explicit commits).
    commit_each: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts: BTreeMap<u32, usize> = self.records.iter().map(|(p, r)| (*p, r.len())).collect();
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("owned", &self.owned)
            .field("generation", &self.generation)
            .field("acquired_at", &self.acquired_at)
            .field("records_per_partition", &counts)
            .field("committed", &self.committed)
            .field("errors", &self.errors)
            .field("gaps", &self.gaps)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Consumer {
    /// Subscribes to `topic` with `query`.
    async fn join(api: &Api, name: &str, topic: &str, query: &str) -> Consumer {
        let sub = api.subscribe(topic, query).await;
        Consumer {
            name: name.to_string(),
            topic: topic.to_string(),
            sub,
            owned: BTreeSet::new(),
            generation: None,
            acquired_at: BTreeMap::new(),
            assignments: Vec::new(),
            records: BTreeMap::new(),
            committed: BTreeMap::new(),
            gaps: Vec::new(),
            errors: Vec::new(),
            kinds: Vec::new(),
            closed: None,
            commit_each: false,
        }
    }

    /// Handles every queued event.
    async fn drain(&mut self) {
        while let Some(event) = self.sub.try_recv() {
            match event {
                WsEvent::Frame(frame) => self.on_frame(frame).await,
                WsEvent::Closed(code, reason) => self.closed = Some((code, reason)),
            }
        }
    }

    async fn on_frame(&mut self, f: Value) {
        let name = &self.name;
        let kind = f["type"].as_str().unwrap_or_else(|| panic!("{name}: frame without a type: {f}")).to_string();
        self.kinds.push(kind.clone());
        let partition = |v: &Value| -> u32 {
            u32::try_from(v["partition"].as_u64().unwrap_or_else(|| panic!("no partition in {v}"))).expect("u32")
        };
        match kind.as_str() {
            "assignment" => {
                self.generation = Some(f["generation"].as_u64().unwrap_or_else(|| panic!("no generation in {f}")));
                let mut now = BTreeSet::new();
                for p in f["partitions"].as_array().unwrap_or_else(|| panic!("no partitions in {f}")) {
                    assert_eq!(p["topic"], self.topic.as_str(), "{name}: assignment of another topic: {f}");
                    let part = partition(p);
                    let offset = p["offset"].as_u64().unwrap_or_else(|| panic!("no offset in {p}"));
                    if !self.owned.contains(&part) {
                        self.acquired_at.insert(part, offset);
                    }
                    now.insert(part);
                }
                self.owned = now;
                self.assignments.push(f);
            }
            "revoked" => {
                for p in f["partitions"].as_array().unwrap_or_else(|| panic!("no partitions in {f}")) {
                    self.owned.remove(&partition(p));
                }
            }
            "records" => {
                assert_eq!(f["topic"], self.topic.as_str(), "{name}: records of another topic: {f}");
                let p = partition(&f);
                assert!(self.owned.contains(&p), "{name} got records of partition {p}, which it does not own: {f}");
                let records = f["records"].as_array().unwrap_or_else(|| panic!("no records in {f}"));
                assert!(!records.is_empty(), "{name}: empty records frame");
                let next = records.last().and_then(|r| r["offset"].as_u64()).expect("offset") + 1;
                self.records.entry(p).or_default().extend(records.iter().cloned());
                if self.commit_each {
                    self.sub.send(&commit_frame(&[(p, next)])).await;
                }
            }
            "committed" => {
                for o in f["offsets"].as_array().unwrap_or_else(|| panic!("no offsets in {f}")) {
                    assert_eq!(o["topic"], self.topic.as_str(), "{name}: commit of another topic: {f}");
                    self.committed.insert(partition(o), o["offset"].as_u64().expect("offset"));
                }
            }
            "gap" => self.gaps.push(f),
            "error" => self.errors.push(f),
            _ => panic!("{name}: unexpected frame {f}"),
        }
    }

    /// Offsets received for `partition`, in arrival order.
    fn offsets(&self, partition: u32) -> Vec<u64> {
        self.records
            .get(&partition)
            .map_or_else(Vec::new, |r| r.iter().map(|r| r["offset"].as_u64().unwrap()).collect())
    }

    /// The `id` of every record received.
    fn ids(&self) -> Vec<u64> {
        self.records
            .values()
            .flatten()
            .map(|r| r["value"]["id"].as_u64().unwrap_or_else(|| panic!("no id in {r}")))
            .collect()
    }

    fn received(&self) -> usize {
        self.records.values().map(Vec::len).sum()
    }

    /// Error frames with `code`.
    fn errors_with(&self, code: &str) -> usize {
        self.errors.iter().filter(|e| e["code"] == code).count()
    }

    /// Closes normally and returns the server's close code (frames before it are handled).
    async fn close(&mut self) -> Option<u16> {
        let frame = CloseFrame { code: 1000.into(), reason: "bye".into() };
        self.sub.send_message(Message::Close(Some(frame))).await;
        self.wait_closed().await
    }

    /// Handles frames until the connection closes; returns the close code.
    async fn wait_closed(&mut self) -> Option<u16> {
        self.drain().await;
        if self.closed.is_none() {
            let (code, reason, frames) = self.sub.closed(WAIT).await;
            for f in frames {
                self.on_frame(f).await;
            }
            self.closed = Some((code, reason));
        }
        self.closed.as_ref().and_then(|c| c.0)
    }

    /// Sends a frame and waits until the consumer holds `done`.
    async fn request(&mut self, what: &str, frame: &Value, done: impl Fn(&Consumer) -> bool) {
        self.sub.send(frame).await;
        until(what, &mut [&mut *self], |c| done(c[0])).await;
    }

    /// A round trip: an unknown frame is answered, in order, by an `invalid_frame`
    /// error without closing, so every frame the server sent before is in.
    async fn round_trip(&mut self) {
        let before = self.errors_with("invalid_frame");
        let frame = json!({"type": "round-trip"});
        self.request("a round trip", &frame, |c| c.errors_with("invalid_frame") > before).await;
        let answer = self.errors.iter().rposition(|e| e["detail"].as_str().is_some_and(|d| d.contains("round-trip")));
        self.errors.remove(answer.expect("the round trip's answer"));
    }
}

/// Drains the consumers until `done` holds; panics with their state after [`WAIT`].
async fn until(what: &str, consumers: &mut [&mut Consumer], done: impl Fn(&[&mut Consumer]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        for c in consumers.iter_mut() {
            c.drain().await;
        }
        if done(consumers) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}; consumers: {consumers:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Together the consumers own `0..total` without overlap, in shares of the sizes
/// `shares` (sorted).
fn split_evenly(consumers: &[&mut Consumer], total: u32, shares: &[usize]) -> bool {
    let union: BTreeSet<u32> = consumers.iter().flat_map(|c| c.owned.iter().copied()).collect();
    let sum: usize = consumers.iter().map(|c| c.owned.len()).sum();
    let mut counts: Vec<usize> = consumers.iter().map(|c| c.owned.len()).collect();
    counts.sort_unstable();
    union == (0..total).collect() && sum == total as usize && counts == shares
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_members_share_the_partitions_each_exactly_once() {
    let server = quick_server().await;
    server.create_topic("shared", 6).await;
    let q = "group=workers&from=earliest";
    let mut a = Consumer::join(&server, "a", "shared", q).await;
    let mut b = Consumer::join(&server, "b", "shared", q).await;
    let mut c = Consumer::join(&server, "c", "shared", q).await;
    until("three members to own two partitions each", &mut [&mut a, &mut b, &mut c], |m| {
        split_evenly(m, 6, &[2, 2, 2])
    })
    .await;

    let events: Vec<Value> = (0..300).map(|i| json!({"key": format!("user-{i}"), "value": {"id": i}})).collect();
    let placed = server.produce("shared", &json!({ "records": events })).await;
    let used: BTreeSet<u32> = placed.iter().map(|(p, _)| *p).collect();
    assert_eq!(used, (0..6).collect(), "the keys spread over every partition");
    let mut ends = [0u64; 6];
    for (p, o) in &placed {
        ends[*p as usize] = ends[*p as usize].max(o + 1);
    }
    until("every event to arrive", &mut [&mut a, &mut b, &mut c], |m| {
        m.iter().map(|c| c.received()).sum::<usize>() >= 300
    })
    .await;
    // A round trip on each, so anything delivered twice would be in as well.
    for m in [&mut a, &mut b, &mut c] {
        m.round_trip().await;
    }
    let mut ids: Vec<u64> = [&a, &b, &c].iter().flat_map(|m| m.ids()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..300).collect::<Vec<u64>>(), "every event exactly once across the members");
    for m in [&a, &b, &c] {
        assert!(m.records.keys().all(|p| m.owned.contains(p)), "{m:?} read a partition it does not own");
        for p in &m.owned {
            assert_eq!(m.offsets(*p), (0..ends[*p as usize]).collect::<Vec<_>>(), "{} reads {p} in order", m.name);
        }
        assert!(m.errors.is_empty(), "{m:?}");
    }

    // The admin view agrees, and auto-commit brings the lag to zero.
    let d = eventually("auto-commit to catch up", WAIT, || async {
        let d = server.get_json("/v1/groups/workers").await;
        (d["lag"] == 0).then_some(d)
    })
    .await;
    assert_eq!(d["state"], "stable", "{d}");
    let members = d["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{d}");
    let mut owned: Vec<BTreeSet<u64>> = members
        .iter()
        .map(|m| {
            m["partitions"].as_array().expect("partitions").iter().map(|p| p["partition"].as_u64().unwrap()).collect()
        })
        .collect();
    owned.sort();
    let mut seen: Vec<BTreeSet<u64>> =
        [&a, &b, &c].iter().map(|m| m.owned.iter().map(|p| u64::from(*p)).collect()).collect();
    seen.sort();
    assert_eq!(owned, seen, "the group description shows the assignment the members were given: {d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_leaves_and_its_partitions_move_without_skipping() {
    let server = quick_server().await;
    server.create_topic("moving", 4).await;
    let q = "group=movers&from=earliest&auto_commit=false";
    let mut a = Consumer::join(&server, "a", "moving", q).await;
    let mut b = Consumer::join(&server, "b", "moving", q).await;
    a.commit_each = true;
    b.commit_each = true;
    until("a and b to own two partitions each", &mut [&mut a, &mut b], |m| split_evenly(m, 4, &[2, 2])).await;
    let a_parts = a.owned.clone();

    // Batch 1: processed and committed by both.
    produce_ids(&server, "moving", 0..40, 4).await;
    until("batch 1 to be received and committed", &mut [&mut a, &mut b], |m| {
        m.iter().all(|c| c.owned.iter().all(|p| c.committed.get(p) == Some(&10)))
    })
    .await;
    // Batch 2: received, but `a` stops committing (its tail stays uncommitted).
    a.commit_each = false;
    let a_commits = a.committed.clone();
    produce_ids(&server, "moving", 40..80, 4).await;
    until("batch 2 to be received", &mut [&mut a, &mut b], |m| m.iter().map(|c| c.received()).sum::<usize>() == 80)
        .await;
    assert_eq!(a.close().await, Some(1000), "a normal close is answered with 1000");

    until("b to own every partition", &mut [&mut b], |m| m[0].owned.len() == 4).await;
    for p in &a_parts {
        assert_eq!(b.acquired_at.get(p), a_commits.get(p), "b starts {p} at a's last commit: {b:?}");
    }
    produce_ids(&server, "moving", 80..120, 4).await;
    until("b to read every partition to its end", &mut [&mut b], |m| {
        (0..4).all(|p| m[0].offsets(p).last() == Some(&29))
    })
    .await;
    for p in 0..4 {
        let from_b = b.offsets(p);
        if a_parts.contains(&p) {
            let from_a = a.offsets(p);
            assert_eq!(from_a, (0..20).collect::<Vec<u64>>(), "a read batches 1 and 2 of {p}");
            // a committed 10: b re-reads 10..20 (at-least-once) and nothing before the commit.
            assert_eq!(from_b, (10..30).collect::<Vec<u64>>(), "b resumes {p} at a's commit, skipping nothing");
        } else {
            assert_eq!(from_b, (0..30).collect::<Vec<u64>>(), "b reads its own {p} once, in order");
        }
    }
    let mut ids: BTreeSet<u64> = a.ids().into_iter().collect();
    ids.extend(b.ids());
    assert_eq!(ids, (0..120).collect(), "no event skipped");
    assert!(a.errors.is_empty() && b.errors.is_empty(), "{a:?} {b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_member_resumes_from_last_commit() {
    let server = quick_server().await;
    server.create_topic("crashy", 2).await;
    // `k` is a static member: after its crash the group holds its partition for the session timeout.
    let mut k = Consumer::join(&server, "k", "crashy", "group=crash&member=k&from=earliest&auto_commit=false").await;
    until("k to own both partitions", &mut [&mut k], |m| m[0].owned.len() == 2).await;
    let mut s = Consumer::join(&server, "s", "crashy", "group=crash&from=earliest").await;
    until("k and s to own one partition each", &mut [&mut k, &mut s], |m| split_evenly(m, 2, &[1, 1])).await;
    let kp = *k.owned.first().expect("k owns a partition");

    produce_ids(&server, "crashy", 0..60, 2).await;
    until("k to read its partition", &mut [&mut k, &mut s], |m| m[0].offsets(kp).len() == 30).await;
    k.request("k's commit to be acknowledged", &commit_frame(&[(kp, 12)]), |c| c.committed.get(&kp) == Some(&12)).await;
    let killed = Instant::now();
    k.sub.kill().await;

    until("s to own both partitions", &mut [&mut s], |m| m[0].owned.len() == 2).await;
    let took = killed.elapsed();
    assert!(took >= SESSION_TIMEOUT, "a crashed static member keeps its partitions for the session timeout ({took:?})");
    assert_eq!(s.acquired_at.get(&kp), Some(&12), "s starts at k's last commit: {s:?}");
    produce_ids(&server, "crashy", 60..80, 2).await;
    until("s to read both partitions to their end", &mut [&mut s], |m| {
        (0..2).all(|p| m[0].offsets(p).last() == Some(&39))
    })
    .await;
    assert_eq!(s.offsets(kp), (12..40).collect::<Vec<u64>>(), "from the commit on, nothing skipped, nothing earlier");
    let sp = 1 - kp;
    assert_eq!(s.offsets(sp), (0..40).collect::<Vec<u64>>(), "s's own partition is read once");
    let d = server.get_json("/v1/groups/crash").await;
    let members: Vec<&str> =
        d["members"].as_array().expect("members").iter().map(|m| m["member"].as_str().unwrap()).collect();
    assert!(!members.contains(&"k"), "the crashed member expired: {d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_reconnects_and_keeps_its_partitions() {
    // A longer session timeout: the reconnect below must fit in it on a slow machine.
    let server = quick_server_with(|c| {
        c.session_timeout_ms = 10_000;
    })
    .await;
    server.create_topic("sticky", 4).await;
    let mut m1 = Consumer::join(&server, "m1", "sticky", "group=statics&member=m1&from=earliest").await;
    let mut m2 = Consumer::join(&server, "m2", "sticky", "group=statics&member=m2&from=earliest").await;
    until("m1 and m2 to own two partitions each", &mut [&mut m1, &mut m2], |m| split_evenly(m, 4, &[2, 2])).await;
    let (p1, p2) = (m1.owned.clone(), m2.owned.clone());
    let d = server.get_json("/v1/groups/statics").await;
    let generation = d["generation"].as_u64().expect("generation");
    for m in d["members"].as_array().expect("members") {
        assert_eq!(m["is_static"], true, "{d}");
    }

    // The id is taken while m1 is connected.
    let mut dup = Consumer::join(&server, "m1-again", "sticky", "group=statics&member=m1").await;
    assert_eq!(dup.wait_closed().await, Some(4002), "a second session with a live member id: {dup:?}");
    assert_eq!(dup.errors_with("member_in_use"), 1, "{dup:?}");
    assert!(dup.assignments.is_empty(), "{dup:?}");

    produce_ids(&server, "sticky", 0..40, 4).await;
    until("every event to arrive", &mut [&mut m1, &mut m2], |m| m.iter().map(|c| c.received()).sum::<usize>() == 40)
        .await;
    // Auto-commit commits what the client confirmed (by answering a ping): once the
    // group shows m1's partitions committed at 10, m1 dies without closing.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Reading answers the server's pings.
        m1.drain().await;
        let d = server.get_json("/v1/groups/statics").await;
        let mine = |p: &&Value| p["partition"].as_u64().is_some_and(|n| p1.contains(&(n as u32)));
        let committed: Vec<Value> = d["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .filter(mine)
            .map(|p| p["committed"].clone())
            .collect();
        if committed == [json!(10), json!(10)] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "m1 never committed what it received: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m2_frames = m2.kinds.len();
    m1.sub.kill().await;
    eventually("the group to show m1 disconnected", WAIT, || async {
        let d = server.get_json("/v1/groups/statics").await;
        let m1 = d["members"].as_array()?.iter().find(|m| m["member"] == "m1")?.clone();
        (m1["connected"] == false).then_some(())
    })
    .await;
    let d = server.get_json("/v1/groups/statics").await;
    let held: BTreeSet<u32> =
        d["members"].as_array().expect("members").iter().find(|m| m["member"] == "m1").expect("m1")["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .map(|p| p["partition"].as_u64().unwrap() as u32)
            .collect();
    assert_eq!(held, p1, "a disconnected static member keeps its partitions: {d}");

    let mut back = Consumer::join(&server, "m1-back", "sticky", "group=statics&member=m1&from=earliest").await;
    until("m1 to get its partitions back", &mut [&mut back], |m| !m[0].owned.is_empty()).await;
    assert_eq!(back.owned, p1, "the same partitions: {back:?}");
    assert_eq!(back.generation, Some(generation), "no rebalance: {back:?}");
    for p in &p1 {
        // It resumes after what it confirmed.
        assert_eq!(back.acquired_at.get(p), Some(&10), "m1 resumes {p} at its committed position: {back:?}");
    }
    m2.round_trip().await;
    let m2_new: Vec<&String> = m2.kinds[m2_frames..].iter().filter(|k| *k != "error").collect();
    assert!(m2_new.is_empty(), "m2 saw no assignment change: {m2_new:?}");
    assert_eq!(m2.owned, p2);
    let d = server.get_json("/v1/groups/statics").await;
    assert_eq!(d["generation"], generation, "{d}");
    assert_eq!(d["state"], "stable", "{d}");
    assert!(d["members"].as_array().expect("members").iter().all(|m| m["connected"] == true), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_receive_every_record() {
    let server = quick_server().await;
    server.create_topic("fanout", 3).await;
    let mut a1 = Consumer::join(&server, "a1", "fanout", "group=alpha&from=earliest").await;
    let mut a2 = Consumer::join(&server, "a2", "fanout", "group=alpha&from=earliest").await;
    let mut b1 = Consumer::join(&server, "b1", "fanout", "group=beta&from=earliest").await;
    until("alpha to split the partitions and beta to own them all", &mut [&mut a1, &mut a2, &mut b1], |m| {
        split_evenly(&m[..2], 3, &[1, 2]) && m[2].owned.len() == 3
    })
    .await;
    produce_ids(&server, "fanout", 0..90, 3).await;
    until("both groups to receive every event", &mut [&mut a1, &mut a2, &mut b1], |m| {
        m[0].received() + m[1].received() == 90 && m[2].received() == 90
    })
    .await;
    for m in [&mut a1, &mut a2, &mut b1] {
        m.round_trip().await;
    }
    let mut alpha: Vec<u64> = a1.ids().into_iter().chain(a2.ids()).collect();
    alpha.sort_unstable();
    let mut beta = b1.ids();
    beta.sort_unstable();
    assert_eq!(alpha, (0..90).collect::<Vec<u64>>(), "alpha reads every event once");
    assert_eq!(beta, (0..90).collect::<Vec<u64>>(), "beta reads every event once");
    let list = server.get_json("/v1/groups").await;
    let groups: Vec<(String, u64)> = list["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (g["group"].as_str().unwrap().to_string(), g["members"].as_u64().unwrap()))
        .collect();
    assert_eq!(groups, vec![("alpha".to_string(), 2), ("beta".to_string(), 1)], "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_subscription_resumes_without_gaps() {
    let server = quick_server().await;
    server.create_topic("tail", 3).await;
    produce_ids(&server, "tail", 0..30, 3).await;
    let mut first = Consumer::join(&server, "first", "tail", "from=earliest").await;
    until("the backlog to arrive", &mut [&mut first], |m| m[0].received() == 30).await;
    assert_eq!(first.acquired_at, (0..3).map(|p| (p, 0)).collect(), "{first:?}");
    let next: BTreeMap<u32, u64> =
        first.records.iter().map(|(p, r)| (*p, r.last().unwrap()["offset"].as_u64().unwrap() + 1)).collect();
    assert_eq!(first.close().await, Some(1000));

    produce_ids(&server, "tail", 30..60, 3).await;
    let resume: Vec<String> = next.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    let mut second = Consumer::join(&server, "second", "tail", &format!("offsets={}", resume.join(","))).await;
    until("the records after the resume point", &mut [&mut second], |m| m[0].received() == 30).await;
    second.round_trip().await;
    assert_eq!(second.acquired_at, next, "it starts where it was told: {second:?}");
    let mut ids = second.ids();
    ids.sort_unstable();
    assert_eq!(ids, (30..60).collect::<Vec<u64>>(), "exactly the records that followed");
    for p in 0..3 {
        assert_eq!(second.offsets(p), (10..20).collect::<Vec<u64>>(), "partition {p} in order");
    }
    assert!(second.gaps.is_empty(), "{second:?}");

    // Without a resume position an ephemeral subscription starts at the end.
    let mut latest = Consumer::join(&server, "latest", "tail", "").await;
    until("the assignment", &mut [&mut latest], |m| m[0].owned.len() == 3).await;
    assert_eq!(latest.acquired_at, (0..3).map(|p| (p, 20)).collect(), "{latest:?}");
    produce_ids(&server, "tail", 60..63, 3).await;
    until("the new records", &mut [&mut latest], |m| m[0].received() == 3).await;
    let mut ids = latest.ids();
    ids.sort_unstable();
    assert_eq!(ids, vec![60, 61, 62]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_resume_below_the_log_start_gets_a_gap_frame_first() {
    let server = quick_server_with(|c| {
        c.retention_check_interval_ms = 100;
    })
    .await;
    server.create_topic_with(json!({"name": "short", "partitions": 1, "retention_bytes": 2000})).await;
    for batch in 0..10 {
        produce_ids(&server, "short", batch * 10..batch * 10 + 10, 1).await;
    }
    let start = eventually("retention to move the log start", WAIT, || async {
        let d = server.describe("short").await;
        let start = d["partitions"][0]["start_offset"].as_u64().expect("start_offset");
        (start > 0).then_some(start)
    })
    .await;
    let mut c = Consumer::join(&server, "late", "short", "offsets=0:0").await;
    until("the records after the gap", &mut [&mut c], |m| m[0].offsets(0).last() == Some(&99)).await;
    assert_eq!(c.acquired_at.get(&0), Some(&0), "{c:?}");
    assert_eq!(c.kinds[..3], ["assignment", "gap", "records"], "the gap comes before any record: {c:?}");
    assert_eq!(c.gaps.len(), 1, "{c:?}");
    let gap = &c.gaps[0];
    assert_eq!(
        (gap["topic"].as_str(), gap["partition"].as_u64(), gap["from"].as_u64()),
        (Some("short"), Some(0), Some(0))
    );
    let to = gap["to"].as_u64().expect("to");
    assert!(to >= start, "the gap reaches the log start ({start}): {gap}");
    assert_eq!(c.offsets(0), (to..100).collect::<Vec<u64>>(), "from the end of the gap on, nothing is skipped");
}

/// Reads a Prometheus sample (`name` followed by a space, no labels).
fn metric(text: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} sample in:\n{text}"))
}

async fn resident_bytes(api: &Api) -> f64 {
    let text = api.get("/metrics").send().await.expect("metrics").text().await.expect("metrics text");
    metric(&text, "process_resident_memory_bytes")
}

/// Posts `REQUESTS` requests of `EVENTS_PER_REQUEST` 1 kB events (ids from `first`)
/// and waits until `fast` has received them all; returns how long that took.
async fn firehose(api: &Api, fast: &mut Consumer, first: u64) -> Duration {
    let pad = "x".repeat(1000);
    let started = Instant::now();
    let total = first + REQUESTS * EVENTS_PER_REQUEST;
    let forget_values = |c: &mut Consumer| {
        c.records.values_mut().flatten().for_each(|r| r["value"]["pad"] = Value::Null);
    };
    for r in 0..REQUESTS {
        let events: Vec<Value> =
            (0..EVENTS_PER_REQUEST).map(|i| json!({"id": first + r * EVENTS_PER_REQUEST + i, "pad": pad})).collect();
        api.produce("firehose", &Value::Array(events)).await;
        fast.drain().await;
        forget_values(fast);
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        fast.drain().await;
        forget_values(fast);
        if fast.received() as u64 == total {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "the fast subscriber got {} of {total} events in time", fast.received());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const EVENTS_PER_REQUEST: u64 = 400;
const REQUESTS: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_slow_a_fast_one() {
    // A real process, so /metrics reports the server's memory alone. Small RocksDB
    // buffers keep the storage side of the memory growth small.
    let dir = tempfile::tempdir().expect("data directory");
    let mb8 = (8u64 << 20).to_string();
    let server = ProcessServer::start(
        dir.path(),
        &[
            "--fsync",
            "never",
            "--write-buffer-bytes",
            &mb8,
            "--block-cache-bytes",
            &mb8,
            // The stalled subscribers must stay subscribed for the whole test.
            "--session-timeout-ms",
            "600000",
        ],
    )
    .await;
    server.create_topic("firehose", 4).await;
    // Four subscribers that never read their socket, and one that does.
    let mut stalled: Vec<WsStream> = Vec::new();
    for _ in 0..4 {
        stalled.push(server.ws_connect("/v1/topics/firehose/subscribe?from=earliest").await.expect("connect"));
    }
    let mut fast = Consumer::join(&server, "fast", "firehose", "from=earliest").await;
    until("the fast subscriber's assignment", &mut [&mut fast], |m| m[0].owned.len() == 4).await;
    // The first 20 MB also pay one-time costs (memtables, block cache, reader
    // threads); the second 20 MB show whether memory grows with the backlog that
    // the stalled subscribers have not read (it would, by 20 MB each, if the
    // server queued their records).
    let rss_start = resident_bytes(&server).await;
    let took1 = firehose(&server, &mut fast, 0).await;
    let rss_mid = resident_bytes(&server).await;
    let took2 = firehose(&server, &mut fast, REQUESTS * EVENTS_PER_REQUEST).await;
    let rss_end = resident_bytes(&server).await;
    let total = 2 * REQUESTS * EVENTS_PER_REQUEST;
    let mut ids = fast.ids();
    ids.sort_unstable();
    assert_eq!(ids, (0..total).collect::<Vec<u64>>(), "every event once, while subscribers stall");
    for p in 0..4 {
        let offsets = fast.offsets(p);
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<u64>>(), "partition {p} in order");
    }
    let mb = |b: f64| b / (1024.0 * 1024.0);
    eprintln!(
        "4 stalled subscribers: 2 x {} MB in {took1:?} and {took2:?}; resident memory {:.1} MB, +{:.1} MB, +{:.1} MB",
        (REQUESTS * EVENTS_PER_REQUEST * 1000) >> 20,
        mb(rss_start),
        mb(rss_mid - rss_start),
        mb(rss_end - rss_mid)
    );
    let growth = rss_end - rss_mid;
    assert!(growth < 64.0 * 1024.0 * 1024.0, "resident memory grew {:.1} MB during the second 20 MB", mb(growth));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_survive_a_restart() {
    let mut server = quick_server().await;
    server.create_topic("durable", 2).await;
    produce_ids(&server, "durable", 0..20, 2).await;
    let mut c = Consumer::join(&server, "c", "durable", "group=keep&from=earliest&auto_commit=false").await;
    until("the backlog", &mut [&mut c], |m| m[0].received() == 20).await;
    c.request("the commit", &commit_frame(&[(0, 6), (1, 10)]), |c| c.committed.len() == 2).await;
    assert_eq!(c.committed, BTreeMap::from([(0, 6), (1, 10)]));

    server.stop().await;
    assert_eq!(c.wait_closed().await, Some(1001), "shutdown closes subscriptions with 1001: {c:?}");
    server.restart().await;

    let d = server.get_json("/v1/groups/keep").await;
    assert_eq!(
        (d["group"].as_str(), d["state"].as_str(), d["generation"].as_u64()),
        (Some("keep"), Some("empty"), Some(0))
    );
    assert_eq!(d["members"], json!([]), "{d}");
    let parts: Vec<(u64, u64, u64)> = d["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| (p["committed"].as_u64().unwrap(), p["end_offset"].as_u64().unwrap(), p["lag"].as_u64().unwrap()))
        .collect();
    assert_eq!(parts, vec![(6, 10, 4), (10, 10, 0)], "committed, end_offset and lag per partition: {d}");
    assert_eq!(d["lag"], 4, "{d}");

    // The commit wins over `from`.
    let mut again = Consumer::join(&server, "again", "durable", "group=keep&from=latest").await;
    until("the records after the commit", &mut [&mut again], |m| m[0].received() == 4).await;
    assert_eq!(again.acquired_at, BTreeMap::from([(0, 6), (1, 10)]), "{again:?}");
    assert_eq!(again.offsets(0), vec![6, 7, 8, 9]);
    assert!(again.offsets(1).is_empty());
}

fn member_partitions(d: &Value, member: &Value) -> BTreeSet<u32> {
    member["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions in {d}"))
        .iter()
        .map(|p| p["partition"].as_u64().unwrap() as u32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_admin_lists_describes_resets_and_deletes() {
    let server = quick_server().await;
    server.create_topic("ledger", 4).await;
    let q = "group=ops&from=earliest&auto_commit=false";
    let mut a = Consumer::join(&server, "a", "ledger", q).await;
    let mut b = Consumer::join(&server, "b", "ledger", q).await;
    until("a and b to split the partitions", &mut [&mut a, &mut b], |m| split_evenly(m, 4, &[2, 2])).await;
    // Partition p holds 5 + p events.
    for p in 0..4u32 {
        let events: Vec<Value> = (0..5 + p).map(|i| json!({"id": p * 100 + i})).collect();
        server
            .produce_raw("ledger", &format!("?partition={p}"), "application/json", Value::Array(events).to_string())
            .await;
    }
    let end = |p: u32| u64::from(5 + p);
    until("a and b to read them", &mut [&mut a, &mut b], |m| m.iter().map(|c| c.received()).sum::<usize>() == 26).await;
    // a commits one before the end of its partitions; b commits nothing.
    let commits: Vec<(u32, u64)> = a.owned.iter().map(|p| (*p, end(*p) - 1)).collect();
    let n = commits.len();
    a.request("a's commits", &commit_frame(&commits), |c| c.committed.len() == n).await;

    let list = server.get_json("/v1/groups").await;
    assert_eq!(list["groups"], json!([{"group": "ops", "state": "stable", "members": 2}]), "{list}");
    let d = server.get_json("/v1/groups/ops").await;
    assert_eq!((d["group"].as_str(), d["state"].as_str()), (Some("ops"), Some("stable")), "{d}");
    assert!(d["generation"].as_u64().is_some_and(|g| g >= 1), "{d}");
    let members = d["members"].as_array().expect("members");
    assert_eq!(members.len(), 2, "{d}");
    let mut owner_of = BTreeMap::new();
    for m in members {
        assert_eq!((m["connected"].as_bool(), m["is_static"].as_bool()), (Some(true), Some(false)), "{d}");
        assert_eq!(m["topics"], json!(["ledger"]), "{d}");
        assert!(m["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{d}");
        let parts = member_partitions(&d, m);
        assert!(parts == a.owned || parts == b.owned, "members' partitions match their assignments: {d}");
        for p in parts {
            owner_of.insert(p, m["member"].as_str().unwrap().to_string());
        }
    }
    let mut total = 0;
    let parts = d["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 4, "{d}");
    for (i, row) in parts.iter().enumerate() {
        let p = i as u32;
        let committed = a.owned.contains(&p).then(|| end(p) - 1);
        let lag = end(p) - committed.unwrap_or(0);
        total += lag;
        assert_eq!(
            row,
            &json!({"topic": "ledger", "partition": p, "committed": committed, "end_offset": end(p), "lag": lag, "owner": owner_of[&p]}),
            "{d}"
        );
    }
    assert_eq!(d["lag"], total, "{d}");

    // Resets and deletes are refused while members are connected, unless forced.
    let reset = |body: Value| server.post("/v1/groups/ops/reset").json(&body).send();
    assert_problem(reset(json!({"topic": "ledger", "to": "earliest"})).await.expect("reset"), 409, "group_active")
        .await;
    let delete = |path: &str| server.http.delete(server.url(path)).send();
    assert_problem(delete("/v1/groups/ops").await.expect("delete"), 409, "group_active").await;
    let resp = reset(json!({"topic": "ledger", "to": "earliest", "force": true})).await.expect("reset");
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.expect("JSON");
    assert_eq!(answer["group"], "ops");
    let reset_to: Vec<(u64, u64, u64)> = answer["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| (o["partition"].as_u64().unwrap(), o["committed"].as_u64().unwrap(), o["lag"].as_u64().unwrap()))
        .collect();
    assert_eq!(reset_to, (0..4).map(|p| (u64::from(p), 0, end(p))).collect::<Vec<_>>(), "{answer}");
    for o in answer["offsets"].as_array().expect("offsets") {
        let p = o["partition"].as_u64().unwrap() as u32;
        assert_eq!(o["owner"], owner_of[&p].as_str(), "the answer names each partition's reader: {answer}");
    }
    let d = server.get_json("/v1/groups/ops").await;
    assert!(d["partitions"].as_array().unwrap().iter().all(|p| p["committed"] == 0), "{d}");
    assert_eq!(d["lag"], 26, "{d}");
    // The members move with a forced reset (else their next commit would undo it): each
    // gets an assignment at the new offsets and reads its partitions again.
    until("a and b to read everything again", &mut [&mut a, &mut b], |m| {
        m.iter().map(|c| c.received()).sum::<usize>() == 52
    })
    .await;
    for c in [&a, &b] {
        let last = c.assignments.last().expect("assignments");
        assert!(last["partitions"].as_array().unwrap().iter().all(|p| p["offset"] == 0), "{c:?}: {last}");
    }

    // After the members leave, resets need no force.
    assert_eq!(a.close().await, Some(1000));
    assert_eq!(b.close().await, Some(1000));
    eventually("the group to have no members", WAIT, || async {
        let d = server.get_json("/v1/groups/ops").await;
        (d["state"] == "empty" && d["members"] == json!([])).then_some(())
    })
    .await;
    let resp = reset(json!({"topic": "ledger", "offset": 3, "partitions": [1]})).await.expect("reset");
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.expect("JSON");
    assert_eq!(answer["offsets"][0]["partition"], 1, "{answer}");
    assert_eq!((answer["offsets"][0]["committed"].as_u64(), answer["offsets"][0]["lag"].as_u64()), (Some(3), Some(3)));
    assert_eq!(answer["offsets"].as_array().map(Vec::len), Some(1), "{answer}");
    let resp = reset(json!({"topic": "ledger", "offset": 1000})).await.expect("reset");
    assert_eq!(resp.status(), 200, "an offset past the end is clamped");
    let answer: Value = resp.json().await.expect("JSON");
    assert!(answer["offsets"].as_array().unwrap().iter().all(|o| o["committed"] == o["end_offset"] && o["lag"] == 0));
    assert_problem(
        reset(json!({"topic": "ledger", "to": "latest", "offset": 1})).await.expect("reset"),
        400,
        "invalid_reset",
    )
    .await;
    assert_problem(reset(json!({"topic": "ledger"})).await.expect("reset"), 400, "invalid_reset").await;
    let middle =
        assert_problem(reset(json!({"topic": "ledger", "to": "middle"})).await.expect("reset"), 400, "invalid_reset")
            .await;
    assert!(middle["detail"].as_str().unwrap().contains("\"middle\""), "names the bad value: {middle}");
    let none = json!({"topic": "ledger", "to": "earliest", "partitions": []});
    let none = assert_problem(reset(none).await.expect("reset"), 400, "invalid_reset").await;
    assert!(none["detail"].as_str().unwrap().contains("partitions is empty"), "{none}");
    assert_problem(reset(json!({"topic": "nope", "to": "latest"})).await.expect("reset"), 404, "topic_not_found").await;
    reset(json!({"topic": "ledger", "to": "earliest", "partitions": [2]})).await.expect("reset");
    let d = server.get_json("/v1/groups/ops").await;
    let committed: Vec<u64> =
        d["partitions"].as_array().unwrap().iter().map(|p| p["committed"].as_u64().unwrap()).collect();
    assert_eq!(committed, vec![5, 6, 0, 8], "{d}");
    assert_eq!(d["lag"], 7, "{d}");
    let list = server.get_json("/v1/groups").await;
    assert_eq!(list["groups"], json!([{"group": "ops", "state": "empty", "members": 0}]), "{list}");

    let resp = delete("/v1/groups/ops").await.expect("delete");
    assert_eq!(resp.status(), 204);
    assert_problem(server.get("/v1/groups/ops").send().await.expect("get"), 404, "group_not_found").await;
    assert_problem(delete("/v1/groups/ops").await.expect("delete"), 404, "group_not_found").await;
    for bad in ["bad%20name", "%C3%A9t%C3%A9", "%FF"] {
        let path = format!("/v1/groups/{bad}");
        assert_problem(server.get(&path).send().await.expect("get"), 400, "invalid_group_name").await;
        assert_problem(delete(&path).await.expect("delete"), 400, "invalid_group_name").await;
    }
    assert_eq!(server.get_json("/v1/groups").await["groups"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_nothing_committed_starts_at_from_a_timestamp_or_an_offset() {
    let server = quick_server().await;
    server.create_topic("starts", 2).await;
    let base = now_ms() - 60_000;
    let records: Vec<Value> = (0..10).map(|i| json!({"value": {"id": i}, "timestamp": base + 10 * i})).collect();
    server.produce_raw("starts", "?partition=0", "application/json", json!({ "records": records }).to_string()).await;
    let by_time = format!("group=from-time&from=timestamp:{}", base + 55);
    let mut t = Consumer::join(&server, "t", "starts", &by_time).await;
    let mut o = Consumer::join(&server, "o", "starts", "group=from-offset&from=3").await;
    let mut x = Consumer::join(&server, "x", "starts", "group=from-offset-form&from=offset:8").await;
    until("each group's start", &mut [&mut t, &mut o, &mut x], |m| {
        m[0].received() == 4 && m[1].received() == 7 && m[2].received() == 2
    })
    .await;
    assert_eq!(t.offsets(0), (6..10).collect::<Vec<u64>>(), "the first record at or after the time");
    assert_eq!(o.offsets(0), (3..10).collect::<Vec<u64>>());
    assert_eq!(x.offsets(0), vec![8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_moves_the_read_position() {
    let server = quick_server().await;
    server.create_topic("seeker", 2).await;
    let base = now_ms() - 60_000;
    let records: Vec<Value> = (0..10).map(|i| json!({"value": {"id": i}, "timestamp": base + 10 * i})).collect();
    server.produce_raw("seeker", "?partition=0", "application/json", json!({ "records": records }).to_string()).await;
    let mut c = Consumer::join(&server, "c", "seeker", "from=earliest").await;
    until("the backlog", &mut [&mut c], |m| m[0].received() == 10).await;
    let seek = |body: Value| {
        let mut frame = json!({"type": "seek", "partition": 0});
        frame.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        frame
    };
    let assignment_at = |c: &Consumer| {
        let last = c.assignments.last().unwrap();
        last["partitions"].as_array().unwrap().iter().find(|p| p["partition"] == 0).unwrap()["offset"].as_u64()
    };

    c.request("a seek to offset 3", &seek(json!({"offset": 3})), |c| c.received() == 17).await;
    assert_eq!(assignment_at(&c), Some(3), "a seek is answered with the new positions");
    assert_eq!(c.offsets(0)[10..], (3..10).collect::<Vec<u64>>());
    c.request("a seek by time", &seek(json!({"timestamp": base + 55})), |c| c.received() == 21).await;
    assert_eq!(assignment_at(&c), Some(6), "the first record at or after the time");
    assert_eq!(c.offsets(0)[17..], (6..10).collect::<Vec<u64>>());
    c.request("a seek to the start", &seek(json!({"to": "earliest"})), |c| c.received() == 31).await;
    assert_eq!(c.offsets(0)[21..], (0..10).collect::<Vec<u64>>());
    let n = c.assignments.len();
    c.request("a seek to the end", &seek(json!({"to": "latest"})), |c| c.assignments.len() > n).await;
    assert_eq!(assignment_at(&c), Some(10));
    c.round_trip().await;
    assert_eq!(c.received(), 31, "nothing re-read after a seek to the end");
    server.produce_raw("seeker", "?partition=0", "application/json", json!({"id": 10}).to_string()).await;
    until("the next record", &mut [&mut c], |m| m[0].received() == 32).await;
    assert_eq!(c.offsets(0).last(), Some(&10));

    let errors = c.errors.len();
    c.request("a seek of an unknown partition", &json!({"type": "seek", "partition": 7, "offset": 0}), |c| {
        c.errors.len() > errors
    })
    .await;
    assert_eq!(c.errors.last().unwrap()["code"], "not_assigned", "{c:?}");
    c.request("a seek with two targets", &seek(json!({"offset": 1, "to": "latest"})), |c| c.errors.len() > errors + 1)
        .await;
    assert_eq!(c.errors.last().unwrap()["code"], "invalid_frame", "{c:?}");
    assert!(c.closed.is_none(), "{c:?}");
}

/// A session with every partition paused waits on no topic; shutdown must still reach
/// it at once (heartbeats are a minute apart here, so only the closing signal can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_fully_paused_subscription() {
    let mut server = TestServer::start(|c| {
        c.session_timeout_ms = 120_000;
        c.heartbeat_interval_ms = 60_000;
    })
    .await;
    server.create_topic("still", 2).await;
    let mut c = Consumer::join(&server, "c", "still", "").await;
    until("the assignment", &mut [&mut c], |m| m[0].owned.len() == 2).await;
    c.sub.send(&json!({"type": "pause"})).await;
    c.round_trip().await;
    server.stop().await;
    assert_eq!(c.wait_closed().await, Some(1001), "shutdown closes a paused subscription with 1001: {c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_delivery_until_resume() {
    let server = quick_server().await;
    server.create_topic("valve", 2).await;
    let mut c = Consumer::join(&server, "c", "valve", "").await;
    until("the assignment", &mut [&mut c], |m| m[0].owned.len() == 2).await;

    // Partition 9 does not exist: named in a not_assigned error, partition 0 is paused.
    let pause = json!({"type": "pause", "partitions": [{"partition": 0}, {"partition": 9}]});
    c.request("the not_assigned error", &pause, |c| c.errors_with("not_assigned") == 1).await;
    let e = c.errors.iter().find(|e| e["code"] == "not_assigned").unwrap();
    assert!(e["detail"].as_str().unwrap().contains("valve/9"), "{e}");
    c.errors.clear();
    produce_ids(&server, "valve", 0..10, 2).await;
    until("the unpaused partition's records", &mut [&mut c], |m| m[0].offsets(1).len() == 5).await;
    // Two round trips: the session has looked for records at least once in between.
    c.round_trip().await;
    c.round_trip().await;
    assert!(c.offsets(0).is_empty(), "a paused partition delivers nothing: {c:?}");
    c.sub.send(&json!({"type": "resume", "partitions": [{"partition": 0}]})).await;
    until("the resumed partition's records", &mut [&mut c], |m| m[0].offsets(0).len() == 5).await;
    assert_eq!(c.offsets(0), (0..5).collect::<Vec<u64>>(), "from where it stopped");

    // Without a list, pause and resume apply to every partition.
    c.sub.send(&json!({"type": "pause"})).await;
    c.round_trip().await;
    produce_ids(&server, "valve", 10..20, 2).await;
    c.round_trip().await;
    c.round_trip().await;
    assert_eq!(c.received(), 10, "nothing while everything is paused: {c:?}");
    c.sub.send(&json!({"type": "resume"})).await;
    until("everything after resume", &mut [&mut c], |m| m[0].received() == 20).await;
    for p in 0..2 {
        assert_eq!(c.offsets(p), (0..10).collect::<Vec<u64>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_frames_get_an_error_frame_and_the_session_goes_on() {
    let server = quick_server().await;
    server.create_topic("strict", 1).await;
    let mut c = Consumer::join(&server, "c", "strict", "").await;
    until("the assignment", &mut [&mut c], |m| m[0].owned.len() == 1).await;
    let invalid: Vec<Message> = vec![
        Message::text("not json"),
        Message::text(r#"{"type":"dance"}"#),
        Message::text(r#"{"type":"commit","offsets":[],"extra":1}"#),
        Message::text(r#"{"type":"seek"}"#),
        Message::text(r#"{"partition":0,"offset":1}"#),
        Message::binary(vec![1u8, 2, 3]),
    ];
    for (i, msg) in invalid.into_iter().enumerate() {
        c.sub.send_message(msg).await;
        until("the error frame", &mut [&mut c], |m| m[0].errors.len() > i).await;
        let e = &c.errors[i];
        assert_eq!(e["code"], "invalid_frame", "frame {i}: {e}");
        assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "frame {i}: {e}");
    }
    // A commit needs a group.
    c.request("the refusal", &commit_frame(&[(0, 0)]), |c| c.errors.len() == 7).await;
    assert_eq!(c.errors[6]["code"], "no_group", "{c:?}");
    produce_ids(&server, "strict", 0..3, 1).await;
    until("records after the errors", &mut [&mut c], |m| m[0].received() == 3).await;
    assert!(c.closed.is_none(), "{c:?}");
    // A frame over max_client_frame_bytes (64 KiB) ends the session with 1009, saying why.
    c.sub.send_message(Message::text("x".repeat(70 * 1024))).await;
    assert_eq!(c.wait_closed().await, Some(1009), "{c:?}");
    assert!(c.closed.as_ref().unwrap().1.contains("max_client_frame_bytes"), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_of_a_partition_not_owned_is_refused() {
    let server = quick_server().await;
    server.create_topic("owned", 2).await;
    let q = "group=owners&from=earliest&auto_commit=false";
    let mut a = Consumer::join(&server, "a", "owned", q).await;
    let mut b = Consumer::join(&server, "b", "owned", q).await;
    until("a and b to own one partition each", &mut [&mut a, &mut b], |m| split_evenly(m, 2, &[1, 1])).await;
    produce_ids(&server, "owned", 0..10, 2).await;
    until("the records", &mut [&mut a, &mut b], |m| m.iter().all(|c| c.received() == 5)).await;
    let (mine, theirs) = (*a.owned.first().unwrap(), *b.owned.first().unwrap());
    let generation = server.get_json("/v1/groups/owners").await["generation"].as_u64().expect("generation");

    a.request("the refusal", &commit_frame(&[(theirs, 5)]), |c| !c.errors.is_empty()).await;
    assert_eq!(a.errors[0]["code"], "commit_refused", "{a:?}");
    a.request("the refusal", &commit_frame(&[(mine, 5), (theirs, 5)]), |c| c.errors.len() == 2).await;
    assert_eq!(a.errors[1]["code"], "commit_refused", "all or nothing: {a:?}");
    let stale = json!({"type": "commit", "offsets": [{"partition": mine, "offset": 5}], "generation": generation + 7});
    a.request("the refusal", &stale, |c| c.errors.len() == 3).await;
    assert_eq!(a.errors[2]["code"], "commit_refused", "a stale generation: {a:?}");
    // Past the high watermark (5 records in each partition): the group would skip records.
    for (n, offset) in [(4, 6), (5, u64::MAX)] {
        a.request("the refusal", &commit_frame(&[(mine, offset)]), |c| c.errors.len() == n).await;
        assert_eq!(a.errors[n - 1]["code"], "commit_refused", "{a:?}");
        assert!(a.errors[n - 1]["detail"].as_str().unwrap().contains("past the end"), "{a:?}");
    }
    assert!(a.committed.is_empty(), "{a:?}");
    let current = json!({"type": "commit", "offsets": [{"topic": "owned", "partition": mine, "offset": 5}], "generation": generation});
    a.request("the commit", &current, |c| c.committed.get(&mine) == Some(&5)).await;
    let d = server.get_json("/v1/groups/owners").await;
    let committed: Vec<Value> = d["partitions"].as_array().unwrap().iter().map(|p| p["committed"].clone()).collect();
    let mut expected = vec![Value::Null, Value::Null];
    expected[mine as usize] = json!(5);
    assert_eq!(committed, expected, "only the owner's commit was stored: {d}");
    assert!(a.closed.is_none(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_counts_for_a_generation_in_which_the_member_held_the_partition() {
    let server = quick_server().await;
    server.create_topic("gens", 2).await;
    produce_ids(&server, "gens", 0..10, 2).await;
    let q = "group=gens&from=earliest&auto_commit=false";
    let mut a = Consumer::join(&server, "a", "gens", q).await;
    until("a's records", &mut [&mut a], |m| m[0].owned.len() == 2 && m[0].received() == 10).await;
    let first = a.generation.expect("a generation");
    // b joins: a rebalance moves one partition to b, a keeps the other.
    let mut b = Consumer::join(&server, "b", "gens", q).await;
    until("one partition each", &mut [&mut a, &mut b], |m| split_evenly(m, 2, &[1, 1])).await;
    let (kept, moved) = (*a.owned.first().unwrap(), *b.owned.first().unwrap());
    let now = b.generation.expect("b's generation");
    assert!(now > first, "the rebalance made a new generation ({first} -> {now})");
    let commit = |partition: u32, offset: u64, generation: u64| json!({"type": "commit", "offsets": [{"partition": partition, "offset": offset}], "generation": generation});
    // a has held `kept` since the first generation: its commit sent with that generation
    // (say, just before b joined) still counts.
    a.request("a's commit", &commit(kept, 5, first), |c| c.committed.get(&kept) == Some(&5)).await;
    // b got `moved` in the new generation: a commit naming the first one predates its
    // ownership (a may have read and committed in between) and is stale.
    b.request("the refusal", &commit(moved, 5, first), |c| !c.errors.is_empty()).await;
    assert_eq!(b.errors[0]["code"], "commit_refused", "{b:?}");
    assert!(b.errors[0]["detail"].as_str().unwrap().contains("stale"), "{b:?}");
    // a no longer owns `moved`, whatever generation it names.
    a.request("the refusal", &commit(moved, 5, first), |c| !c.errors.is_empty()).await;
    assert_eq!(a.errors[0]["code"], "commit_refused", "{a:?}");
    b.request("b's commit", &commit(moved, 5, now), |c| c.committed.get(&moved) == Some(&5)).await;
    let d = server.get_json("/v1/groups/gens").await;
    let committed: Vec<Value> = d["partitions"].as_array().unwrap().iter().map(|p| p["committed"].clone()).collect();
    assert_eq!(committed, vec![json!(5), json!(5)], "{d}");
}

/// A member committing by itself (`auto_commit=false`) reads all 10 records of both
/// partitions of `grace`, commits less, and a second member joins.
async fn revocation_setup(timeout_ms: u64) -> (TestServer, Consumer, Consumer, u32) {
    let server = quick_server_with(|c| {
        c.revoke_commit_timeout_ms = timeout_ms;
    })
    .await;
    server.create_topic("grace", 2).await;
    produce_ids(&server, "grace", 0..20, 2).await;
    let q = "group=grace&from=earliest&auto_commit=false";
    let mut a = Consumer::join(&server, "a", "grace", q).await;
    until("a reads everything", &mut [&mut a], |m| m[0].received() == 20).await;
    let partial = json!({"type": "commit", "generation": a.generation,
        "offsets": [{"partition": 0, "offset": 4}, {"partition": 1, "offset": 3}]});
    a.request("a's commits", &partial, |c| c.committed.len() == 2).await;
    let mut b = Consumer::join(&server, "b", "grace", q).await;
    until("a gives a partition up", &mut [&mut a, &mut b], |m| m[0].owned.len() == 1).await;
    let moved = (0..2).find(|p| !a.owned.contains(p)).expect("a revoked partition");
    (server, a, b, moved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partition_moves_once_its_member_committed_what_it_was_sent() {
    let (server, mut a, mut b, moved) = revocation_setup(30_000).await;
    // a may still commit what it was sent: the partition stays with it meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    until("b's frames so far", &mut [&mut b], |_| true).await;
    assert!(b.owned.is_empty(), "not handed over before a's commit: {b:?}");
    let last = json!({"type": "commit", "generation": a.generation, "offsets": [{"partition": moved, "offset": 10}]});
    a.request("a's last commit", &last, |c| c.committed.get(&moved) == Some(&10)).await;
    until("b gets the partition", &mut [&mut a, &mut b], |m| m[1].owned.contains(&moved)).await;
    produce_ids(&server, "grace", 20..22, 2).await;
    until("b reads what came next", &mut [&mut a, &mut b], |m| m[1].received() == 1).await;
    assert_eq!(b.offsets(moved), vec![10], "b starts where a committed: nothing read twice");
    assert!(a.errors.is_empty(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_reset_hands_a_revoked_partition_over_at_once() {
    let (server, mut a, mut b, moved) = revocation_setup(60_000).await;
    let started = Instant::now();
    let body = json!({"topic": "grace", "to": "earliest", "partitions": [moved], "force": true});
    let resp = server.post("/v1/groups/grace/reset").json(&body).send().await.expect("reset");
    assert_eq!(resp.status(), 200);
    until("b reads the partition from the reset offset", &mut [&mut a, &mut b], |m| m[1].received() == 10).await;
    assert_eq!(b.offsets(moved), (0..10).collect::<Vec<u64>>(), "{b:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "not after the grace ({:?})", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partition_given_back_before_its_handover_is_read_on_at_once() {
    let (server, mut a, mut b, moved) = revocation_setup(60_000).await;
    let started = Instant::now();
    // b leaves while a still may commit `moved`: the rebalance gives it back to a.
    assert_eq!(b.close().await, Some(1000));
    until("a owns both again", &mut [&mut a], |m| m[0].owned.len() == 2).await;
    produce_ids(&server, "grace", 20..22, 2).await;
    until("a reads on", &mut [&mut a], |m| m[0].received() == 22).await;
    assert_eq!(a.offsets(moved), (0..11).collect::<Vec<u64>>(), "from where delivery stopped, nothing twice: {a:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "not after the grace ({:?})", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partition_with_nothing_sent_moves_at_once() {
    let server = quick_server_with(|c| {
        c.revoke_commit_timeout_ms = 60_000;
    })
    .await;
    server.create_topic("idle", 2).await;
    let q = "group=idle&from=earliest&auto_commit=false";
    let mut a = Consumer::join(&server, "a", "idle", q).await;
    until("a owns both", &mut [&mut a], |m| m[0].owned.len() == 2).await;
    let joined = Instant::now();
    let mut b = Consumer::join(&server, "b", "idle", q).await;
    until("one partition each", &mut [&mut a, &mut b], |m| split_evenly(m, 2, &[1, 1])).await;
    assert!(joined.elapsed() < Duration::from_secs(10), "a had nothing to commit: no wait ({:?})", joined.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partition_moves_after_revoke_commit_timeout_without_a_commit() {
    let (_server, mut a, mut b, moved) = revocation_setup(300).await;
    until("b gets the partition", &mut [&mut a, &mut b], |m| m[1].owned.contains(&moved)).await;
    let committed = if moved == 0 { 4 } else { 3 };
    until("b reads it", &mut [&mut a, &mut b], |m| m[1].received() == 10 - committed).await;
    assert_eq!(b.offsets(moved), (committed as u64..10).collect::<Vec<u64>>(), "from a's last commit (at least once)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_subscriptions_are_refused_before_the_upgrade() {
    let server = quick_server().await;
    server.create_topic("present", 1).await;
    let p = server.subscribe_refused("absent", "", 404, "topic_not_found").await;
    assert!(p["detail"].as_str().unwrap().contains("absent"), "{p}");
    server.subscribe_refused("absent", "group=g", 404, "topic_not_found").await;
    server.subscribe_refused("present", "topics=absent", 404, "topic_not_found").await;
    server.subscribe_refused("present", "from=soon", 400, "invalid_parameter").await;
    server.subscribe_refused("present", "member=m1", 400, "invalid_parameter").await;
    server.subscribe_refused("present", "offsets=zero", 400, "invalid_parameter").await;
    server.subscribe_refused("present", "offsets=7:0", 404, "partition_not_found").await;
    server.subscribe_refused("present", "offsets=elsewhere:0:0", 400, "invalid_parameter").await;
    server.subscribe_refused("present", "group=g&member=bad%20id", 400, "invalid_parameter").await;
    server.subscribe_refused("present", &format!("group=g&member={}", "m".repeat(250)), 400, "invalid_parameter").await;
    server.subscribe_refused("present", "group=bad%20name", 400, "invalid_group_name").await;
    server.subscribe_refused("present", "colour=blue", 400, "invalid_request").await;
    // The same path without the WebSocket handshake is a client error too.
    let resp = server.get("/v1/topics/present/subscribe").send().await.expect("get");
    assert!(resp.status().is_client_error(), "{}", resp.status());
    assert_eq!(server.get_json("/v1/groups").await["groups"], json!([]), "refused subscriptions join no group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_subscribed_topic_closes_the_socket_with_4001() {
    let server = quick_server().await;
    server.create_topic("doomed", 2).await;
    produce_ids(&server, "doomed", 0..4, 2).await;
    let mut eph = Consumer::join(&server, "ephemeral", "doomed", "from=earliest").await;
    // A static member: it leaves the group with the topic, not after its session timeout.
    let mut member = Consumer::join(&server, "member", "doomed", "group=mourners&member=m1&from=earliest").await;
    until("both to read the backlog", &mut [&mut eph, &mut member], |m| m.iter().all(|c| c.received() == 4)).await;
    // Two more members: with two partitions, one of the three holds none.
    let mut second = Consumer::join(&server, "second", "doomed", "group=mourners&from=earliest").await;
    let mut third = Consumer::join(&server, "third", "doomed", "group=mourners&from=earliest").await;
    until("the partitions to be shared out", &mut [&mut member, &mut second, &mut third], |m| {
        split_evenly(m, 2, &[0, 1, 1])
    })
    .await;
    let resp = server.http.delete(server.url("/v1/topics/doomed")).send().await.expect("delete");
    assert_eq!(resp.status(), 204);
    for c in [&mut eph, &mut member, &mut second, &mut third] {
        assert_eq!(c.wait_closed().await, Some(4001), "{c:?}");
        let reason = &c.closed.as_ref().unwrap().1;
        assert!(reason.contains("doomed"), "the close reason names the topic: {reason:?}");
    }
    let left = Instant::now();
    loop {
        let groups = server.get_json("/v1/groups").await;
        let members = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == "mourners")
            .map(|g| g["members"].clone());
        if members.is_none_or(|m| m == 0) {
            break;
        }
        assert!(left.elapsed() < SESSION_TIMEOUT / 2, "every member, the static one too, left at once: {groups}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The group's committed offsets went with the topic: a topic re-created under the
    // same name is read from its start, not from where the old one was.
    server.create_topic("doomed", 2).await;
    produce_ids(&server, "doomed", 10..16, 2).await;
    let mut again = Consumer::join(&server, "again", "doomed", "group=mourners&from=earliest").await;
    until("the new topic's records", &mut [&mut again], |m| m[0].received() == 6).await;
    assert_eq!(again.ids().into_iter().collect::<BTreeSet<u64>>(), (10..16).collect(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_subscription_reads_partitions_added_while_it_runs() {
    let server = quick_server().await;
    server.create_topic("growing", 1).await;
    produce_ids(&server, "growing", 0..2, 1).await;
    let mut eph = Consumer::join(&server, "ephemeral", "growing", "from=earliest").await;
    until("the backlog", &mut [&mut eph], |m| m[0].received() == 2).await;
    let resp = server.post("/v1/topics/growing/partitions").json(&json!({"count": 3})).send().await.expect("grow");
    assert_eq!(resp.status(), 200);
    // Events in the new partitions, posted before the session noticed them, arrive too.
    produce_ids(&server, "growing", 2..8, 3).await;
    until("every event", &mut [&mut eph], |m| m[0].received() == 8).await;
    assert_eq!(eph.ids().into_iter().collect::<BTreeSet<u64>>(), (0..8).collect(), "{eph:?}");
    assert!(eph.records.contains_key(&2), "partition 2 was read: {eph:?}");
}

/// Completes a WebSocket handshake on a plain TCP connection and hands the
/// connection back: a client that then neither reads nor answers pings.
async fn raw_upgrade(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("send the handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("read the handshake answer"));
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "the upgrade was refused: {head}");
    tcp
}

/// Reads a raw connection to its end and splits what the server sent into
/// `(opcode, payload)` frames (server frames are not masked).
async fn raw_frames(tcp: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut data = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut data)).await.expect("the server to hang up").expect("read");
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 2 <= data.len() {
        let (opcode, short) = (data[i] & 0x0f, usize::from(data[i + 1] & 0x7f));
        i += 2;
        let len = match short {
            126 => {
                i += 2;
                usize::from(u16::from_be_bytes([data[i - 2], data[i - 1]]))
            }
            127 => {
                i += 8;
                usize::try_from(u64::from_be_bytes(data[i - 8..i].try_into().unwrap())).unwrap()
            }
            n => n,
        };
        frames.push((opcode, data[i..i + len].to_vec()));
        i += len;
    }
    assert_eq!(i, data.len(), "the stream ends on a frame boundary");
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_member_is_closed_with_4000_and_its_partitions_move() {
    let server = quick_server().await;
    server.create_topic("quiet", 2).await;
    let connected = Instant::now();
    let mut silent = raw_upgrade(server.addr, "/v1/topics/quiet/subscribe?group=hush&from=earliest").await;
    let mut live = Consumer::join(&server, "live", "quiet", "group=hush&from=earliest").await;
    until("the live member to own both partitions", &mut [&mut live], |m| m[0].owned.len() == 2).await;
    assert!(
        connected.elapsed() >= SESSION_TIMEOUT,
        "removed only after the session timeout: {:?}",
        connected.elapsed()
    );
    let frames = raw_frames(&mut silent).await;
    assert!(frames.iter().any(|(op, _)| *op == 0x9), "the server pinged the silent member");
    let (op, payload) = frames.last().expect("frames");
    assert_eq!(*op, 0x8, "the last frame is a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4000, "{}", String::from_utf8_lossy(&payload[2..]));
    produce_ids(&server, "quiet", 0..10, 2).await;
    until("the live member to read everything", &mut [&mut live], |m| m[0].received() == 10).await;
    let d = server.get_json("/v1/groups/hush").await;
    assert_eq!(d["members"].as_array().map(Vec::len), Some(1), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_dead_client_never_confirmed_are_not_committed() {
    let server = quick_server().await;
    server.create_topic("fragile", 1).await;
    produce_ids(&server, "fragile", 0..100, 1).await;
    // A member whose client takes the records into its socket buffer but never reads
    // them (nor answers a ping), then vanishes without a close frame.
    let silent = raw_upgrade(server.addr, "/v1/topics/fragile/subscribe?group=careful&from=earliest").await;
    eventually("the server to write the records", WAIT, || async {
        let text = server.get("/metrics").send().await.ok()?.text().await.ok()?;
        let line = text.lines().find(|l| l.starts_with("tidegate_records_delivered_total{topic=\"fragile\"}"))?;
        (line.rsplit(' ').next()? == "100").then_some(())
    })
    .await;
    drop(silent);
    eventually("the member to leave", WAIT, || async {
        let d = server.get_json("/v1/groups/careful").await;
        d["members"].as_array()?.is_empty().then_some(())
    })
    .await;
    let d = server.get_json("/v1/groups/careful").await;
    assert!(d["partitions"][0]["committed"].as_u64().unwrap_or(0) == 0, "nothing it confirmed: {d}");
    // The next member gets every record.
    let mut next = Consumer::join(&server, "next", "fragile", "group=careful&from=latest").await;
    until("every record again", &mut [&mut next], |m| m[0].received() == 100).await;
    assert_eq!(next.ids(), (0..100).collect::<Vec<u64>>(), "{next:?}");
}

/// Reads a connection (answering pings) until told to stop, then hands it back
/// unread: a client that was healthy and then stopped reading.
fn read_until_stopped(mut ws: WsStream) -> (oneshot::Sender<()>, tokio::task::JoinHandle<WsStream>) {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return ws,
                msg = ws.next() => if msg.is_none() { return ws },
            }
        }
    });
    (stop, task)
}

/// Posts 32 MB to one partition: far more than the socket buffers of a client
/// that does not read can hold, so its session blocks sending.
async fn clog(api: &Api, topic: &str, partition: u32) {
    let pad = "y".repeat(2000);
    for r in 0..16 {
        let events: Vec<Value> = (0..1000).map(|i| json!({"id": r * 1000 + i, "pad": pad})).collect();
        let body = Value::Array(events).to_string();
        api.produce_raw(topic, &format!("?partition={partition}"), "application/json", body).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_listed_as_soon_as_its_handshake_is_done() {
    let server = quick_server().await;
    server.create_topic("listed", 2).await;
    let ws = server.ws_connect("/v1/topics/listed/subscribe?group=g-listed&member=m1").await.expect("connect");
    // One read, no polling: the member joined before the server answered 101.
    let d = server.get_json("/v1/groups/g-listed").await;
    let members = d["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{d}");
    assert_eq!(members[0]["member"], "m1", "{d}");
    drop(ws);
    // A normal close leaves at once; a dropped connection of a static member is held
    // for the session timeout. Either way the member is gone eventually.
    eventually("m1 to leave", WAIT, || async {
        let d = server.try_get_json("/v1/groups/g-listed").await;
        d.is_none_or(|d| d["members"].as_array().is_some_and(|m| m.is_empty())).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_that_stops_reading_mid_stream_is_removed_after_the_session_timeout() {
    let server = quick_server().await;
    server.create_topic("clogged", 2).await;
    let ws = server.ws_connect("/v1/topics/clogged/subscribe?group=clog&from=earliest").await.expect("connect");
    let (stop, reader) = read_until_stopped(ws);
    // The member joined before the 101; poll until it owns both partitions.
    eventually("the first member to own both partitions", WAIT, || async {
        let d = server.try_get_json("/v1/groups/clog").await?;
        let m = d["members"].as_array()?.first()?.clone();
        (member_partitions(&d, &m).len() == 2).then_some(())
    })
    .await;
    let mut live = Consumer::join(&server, "live", "clogged", "group=clog&from=earliest").await;
    until("the live member to get its share", &mut [&mut live], |m| m[0].owned.len() == 1).await;
    let live_part = *live.owned.first().unwrap();
    let clogged_part = 1 - live_part;

    // The first member stops reading, and its partition gets far more than socket buffers hold.
    let _ = stop.send(());
    let unread = reader.await.expect("reader task");
    clog(&server, "clogged", clogged_part).await;
    until("the live member to take over the silent member's partition", &mut [&mut live], |m| m[0].owned.len() == 2)
        .await;
    drop(unread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_learns_the_current_generation_after_a_rebalance() {
    let server = quick_server().await;
    server.create_topic("generations", 4).await;
    let q = "group=gens&from=earliest&auto_commit=false";
    let mut a = Consumer::join(&server, "a", "generations", q).await;
    until("a to own every partition", &mut [&mut a], |m| m[0].owned.len() == 4).await;
    let mut b = Consumer::join(&server, "b", "generations", q).await;
    until("a and b to own two partitions each", &mut [&mut a, &mut b], |m| split_evenly(m, 4, &[2, 2])).await;
    let current = server.get_json("/v1/groups/gens").await["generation"].as_u64().expect("generation");
    // `a` lost two partitions: it must be told its new (full) assignment and generation.
    until("both members to know the current generation", &mut [&mut a, &mut b], |m| {
        m.iter().all(|c| c.generation == Some(current))
    })
    .await;
    let last = a.assignments.last().expect("an assignment");
    let listed: BTreeSet<u64> =
        last["partitions"].as_array().unwrap().iter().map(|p| p["partition"].as_u64().unwrap()).collect();
    assert_eq!(listed, a.owned.iter().map(|p| u64::from(*p)).collect(), "the full current set: {last}");
    // And a commit naming the generation it was told is accepted.
    let p = *a.owned.first().unwrap();
    let frame = json!({"type": "commit", "offsets": [{"partition": p, "offset": 0}], "generation": a.generation});
    a.request("the commit or its refusal", &frame, |c| !c.committed.is_empty() || !c.errors.is_empty()).await;
    assert!(a.errors.is_empty(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_that_drops_during_a_rebalance_gives_up_the_revoked_partition() {
    let server = quick_server_with(|c| {
        c.session_timeout_ms = 10_000;
    })
    .await;
    server.create_topic("handover", 2).await;
    let path = "/v1/topics/handover/subscribe?group=relay&member=m1&from=earliest";
    let (stop, reader) = read_until_stopped(server.ws_connect(path).await.expect("connect"));
    // The member joined before the 101; poll until it owns both partitions.
    eventually("m1 to own both partitions", WAIT, || async {
        let d = server.try_get_json("/v1/groups/relay").await?;
        let m = d["members"].as_array()?.first()?.clone();
        (member_partitions(&d, &m).len() == 2).then_some(())
    })
    .await;
    // m1's session is busy sending (its client stopped reading) when m2 joins, so the
    // revocation waits in its queue; then m1's connection drops.
    let _ = stop.send(());
    let unread = reader.await.expect("reader task");
    clog(&server, "handover", 0).await;
    let mut m2 = Consumer::join(&server, "m2", "handover", "group=relay&member=m2&from=earliest").await;
    eventually("the rebalance to start", WAIT, || async {
        let d = server.get_json("/v1/groups/relay").await;
        (d["members"].as_array()?.len() == 2).then_some(())
    })
    .await;
    drop(unread);
    eventually("m1 to be shown disconnected", WAIT, || async {
        let d = server.get_json("/v1/groups/relay").await;
        let m1 = d["members"].as_array()?.iter().find(|m| m["member"] == "m1")?.clone();
        (m1["connected"] == false).then_some(())
    })
    .await;
    // m1 comes back within the session timeout.
    let mut m1 = Consumer::join(&server, "m1", "handover", "group=relay&member=m1&from=earliest").await;
    until("the two members to own one partition each", &mut [&mut m1, &mut m2], |m| split_evenly(m, 2, &[1, 1])).await;
    let d = server.get_json("/v1/groups/relay").await;
    assert_eq!(d["state"], "stable", "{d}");
}

/// A session of a deleted topic that ends only after the topic was created again under
/// the same name (here a stalled SSE member, ended by its session timeout) must not
/// store its old positions as the new topic's committed offsets: the group would skip
/// the new topic's first records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_in_a_deleted_topic_are_not_committed_to_its_successor() {
    let server = quick_server_with(|c| {
        c.session_timeout_ms = 6000;
        c.heartbeat_interval_ms = 1000;
    })
    .await;
    server.create_topic("reborn", 1).await;
    // A group member over SSE that reads the response head, then nothing more.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let request = "GET /v1/topics/reborn/stream?group=phoenix&from=earliest HTTP/1.1\r\n\
                   host: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut head = [0u8; 512];
    let n = tcp.read(&mut head).await.expect("response head");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    clog(&server, "reborn", 0).await;
    let resp = server.http.delete(server.url("/v1/topics/reborn")).send().await.expect("delete");
    assert_eq!(resp.status(), 204);
    server.create_topic("reborn", 1).await;
    produce_ids(&server, "reborn", 0..10, 1).await;
    eventually("the stalled member to end", WAIT, || async {
        let d = server.try_get_json("/v1/groups/phoenix").await;
        d.is_none_or(|d| d["members"].as_array().is_some_and(Vec::is_empty)).then_some(())
    })
    .await;
    let d = server.try_get_json("/v1/groups/phoenix").await;
    let committed: Vec<&Value> = d
        .as_ref()
        .and_then(|d| d["partitions"].as_array())
        .into_iter()
        .flatten()
        .filter(|r| !r["committed"].is_null())
        .collect();
    assert!(committed.is_empty(), "the old topic's position was committed to the new one: {d:?}");
    drop(tcp);
    let mut again = Consumer::join(&server, "again", "reborn", "group=phoenix&from=earliest").await;
    until("the new topic's records", &mut [&mut again], |m| m[0].received() == 10).await;
    assert_eq!(again.offsets(0), (0..10).collect::<Vec<u64>>(), "{again:?}");
}

/// Partitions added while a group reads its topic are read from their start, also by
/// members with the default `from=latest`: events posted to them right after the grow
/// (before any member was assigned them) are not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reads_partitions_added_while_it_runs_from_their_start() {
    let server = quick_server().await;
    server.create_topic("widening", 2).await;
    let mut a = Consumer::join(&server, "a", "widening", "group=wide").await;
    let mut b = Consumer::join(&server, "b", "widening", "group=wide").await;
    until("a and b to split the partitions", &mut [&mut a, &mut b], |m| split_evenly(m, 2, &[1, 1])).await;
    let resp = server.post("/v1/topics/widening/partitions").json(&json!({"count": 4})).send().await.expect("grow");
    assert_eq!(resp.status(), 200);
    produce_ids(&server, "widening", 0..40, 4).await;
    until("every event", &mut [&mut a, &mut b], |m| m.iter().map(|c| c.received()).sum::<usize>() == 40).await;
    let mut ids: Vec<u64> = a.ids().into_iter().chain(b.ids()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..40).collect::<Vec<u64>>(), "{a:?} {b:?}");
    assert!(split_evenly(&[&mut a, &mut b], 4, &[2, 2]), "{a:?} {b:?}");
}

/// Frames cached for fast fan-out are not served below the log start: records that
/// retention deleted are reported as a gap, also when an earlier reader cached them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_by_retention_are_a_gap_even_when_cached() {
    let server = quick_server_with(|c| {
        c.retention_check_interval_ms = 100;
    })
    .await;
    server.create_topic("fading", 1).await;
    for batch in 0..10 {
        produce_ids(&server, "fading", batch * 10..batch * 10 + 10, 1).await;
    }
    let mut first = Consumer::join(&server, "first", "fading", "offsets=0:0").await;
    until("the first reader to read everything", &mut [&mut first], |m| m[0].received() == 100).await;
    let resp = server
        .http
        .patch(server.url("/v1/topics/fading"))
        .json(&json!({"retention_bytes": 2000}))
        .send()
        .await
        .expect("alter");
    assert_eq!(resp.status(), 200);
    let start = eventually("retention to move the log start", WAIT, || async {
        let start = server.describe("fading").await["partitions"][0]["start_offset"].as_u64().expect("start");
        (start > 0).then_some(start)
    })
    .await;
    let mut late = Consumer::join(&server, "late", "fading", "offsets=0:0").await;
    until("the records after the gap", &mut [&mut late], |m| m[0].offsets(0).last() == Some(&99)).await;
    assert_eq!(late.kinds[..3], ["assignment", "gap", "records"], "a gap before any record: {late:?}");
    let to = late.gaps[0]["to"].as_u64().expect("to");
    assert!(to >= start, "{late:?}");
    assert_eq!(late.offsets(0), (to..100).collect::<Vec<u64>>(), "{late:?}");
}

/// A forced delete of a group whose member is idle (caught up, nothing new to commit):
/// the member's next auto-commit stores its position again, so the group does not
/// vanish and a later member does not start over from `from`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_deleted_group_gets_its_idle_members_positions_back() {
    let server = quick_server().await;
    server.create_topic("kept", 2).await;
    produce_ids(&server, "kept", 0..10, 2).await;
    let mut idle = Consumer::join(&server, "idle", "kept", "group=keepers&from=earliest").await;
    until("the backlog", &mut [&mut idle], |m| m[0].received() == 10).await;
    let committed = || async {
        let d = server.try_get_json("/v1/groups/keepers").await?;
        let rows = d["partitions"].as_array()?.clone();
        let offsets: Vec<u64> = rows.iter().filter_map(|r| r["committed"].as_u64()).collect();
        (offsets == [5, 5]).then_some(())
    };
    eventually("the auto-commit of the backlog", WAIT, committed).await;
    let resp = server.http.delete(server.url("/v1/groups/keepers?force=true")).send().await.expect("delete");
    assert_eq!(resp.status(), 204);
    eventually("the idle member's positions to be stored again", WAIT, committed).await;
    assert_eq!(idle.close().await, Some(1000));
    produce_ids(&server, "kept", 10..16, 2).await;
    let mut next = Consumer::join(&server, "next", "kept", "group=keepers").await;
    until("the new events", &mut [&mut next], |m| m[0].received() == 6).await;
    let mut ids = next.ids();
    ids.sort_unstable();
    assert_eq!(ids, (10..16).collect::<Vec<u64>>(), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_version_other_than_13_is_answered_426_naming_13() {
    let server = quick_server().await;
    server.create_topic("versions", 1).await;
    let handshake = |version: &str| {
        let mut req = server
            .get("/v1/topics/versions/subscribe")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if !version.is_empty() {
            req = req.header("sec-websocket-version", version);
        }
        req.send()
    };
    let resp = handshake("8").await.expect("handshake");
    assert_eq!(resp.status(), 426);
    assert_eq!(resp.headers()["sec-websocket-version"], "13");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let p: Value = resp.json().await.expect("problem");
    assert_eq!(p["code"], "unsupported_websocket_version", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("\"8\""), "{p}");
    // Without the header the handshake is malformed: 400.
    let resp = handshake("").await.expect("handshake");
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(resp.headers().get("sec-websocket-version").is_none());
}

/// The assignment and revocation frames a member gets, in order, until (and with) the
/// assignment of `generation`: (type, generation, partition count).
async fn membership_frames(sub: &mut Subscriber, generation: u64) -> Vec<(String, u64, usize)> {
    let mut seen = Vec::new();
    loop {
        let f = sub.next_frame(Duration::from_secs(10)).await;
        let kind = f["type"].as_str().unwrap_or_default().to_string();
        if kind != "assignment" && kind != "revoked" {
            continue;
        }
        let g = f["generation"].as_u64().unwrap_or_else(|| panic!("no generation in {f}"));
        let count = f["partitions"].as_array().map_or(0, Vec::len);
        let done = kind == "assignment" && g == generation;
        seen.push((kind, g, count));
        if done {
            return seen;
        }
    }
}

/// Each rebalance reaches a member as one assignment of its generation: the first
/// member of a group gets its partitions in its first frame (it used to get an empty
/// assignment of generation 1 and then another with the partitions), and a member that
/// gives partitions up gets `revoked` and one assignment (it used to get that
/// assignment twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rebalance_reaches_a_member_as_one_assignment() {
    let server = TestServer::with_defaults().await;
    server.create_topic("announce", 4).await;
    let mut first = server.subscribe("announce", "group=announcers").await;
    assert_eq!(membership_frames(&mut first, 1).await, vec![("assignment".to_string(), 1, 4)]);

    let mut second = server.subscribe("announce", "group=announcers").await;
    // The newcomer waits for the partitions the first member still reads (incremental
    // rebalancing): an empty assignment of generation 2, then its two partitions.
    let joined = membership_frames(&mut second, 2).await;
    assert_eq!(joined, vec![("assignment".to_string(), 2, 0)]);
    let frame = second.next_frame(Duration::from_secs(10)).await;
    assert_eq!((frame["type"].as_str(), frame["generation"].as_u64()), (Some("assignment"), Some(2)), "{frame}");
    assert_eq!(frame["partitions"].as_array().map(Vec::len), Some(2), "{frame}");

    drop(second);
    assert_eq!(
        membership_frames(&mut first, 3).await,
        vec![("revoked".to_string(), 2, 2), ("assignment".to_string(), 2, 2), ("assignment".to_string(), 3, 4)]
    );
}
