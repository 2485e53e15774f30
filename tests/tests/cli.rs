//! The command-line client: the real `tidegate` binary run against real servers
//! (and, for what a gateway without authentication cannot show, against a small
//! scripted HTTP listener): every subcommand's output and exit code, the server's
//! problem details in its errors, and a 100,000-event produce → consume round trip.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tidegate::ingest::partitioner::partition_for_key;
use tidegate_tests::{ProcessServer, TestServer, TlsGateway, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Longest one CLI run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit code `code` and returns the run.
    fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, code, "exit code; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Stdout as one JSON document.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// Stdout as NDJSON.
    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}")))
            .collect()
    }

    /// Stderr as the one JSON object `--json` prints on failure.
    fn error_json(&self) -> Value {
        let last = self.stderr.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("stderr is not a JSON error ({e}):\n{}", self.stderr))
    }
}

/// Starts `tidegate <args>` with piped stdio and `env` added to an environment
/// without any `TIDEGATE_*` variable of the test's own.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(ProcessServer::binary());
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TIDEGATE_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.spawn().expect("start the tidegate binary")
}

/// Waits for a child started by [`spawn`] to exit.
async fn finish(child: tokio::process::Child, args: &[&str]) -> Run {
    let out = tokio::time::timeout(RUN_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("tidegate {args:?} did not finish within {RUN_DEADLINE:?}"))
        .expect("wait for tidegate");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Sends SIGINT (what Ctrl-C sends) to a child.
fn interrupt(child: &tokio::process::Child) {
    let pid = child.id().expect("the child runs");
    let status = std::process::Command::new("kill").arg("-INT").arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -INT {pid}: {status}");
}

/// Runs `tidegate <args>` with `stdin` as its input (see [`spawn`]).
async fn run_with(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Run {
    let mut child = spawn(args, env);
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = tokio::spawn(async move {
        // The client may stop reading early (a refusal): a broken pipe is fine.
        let _ = input.write_all(&data).await;
    });
    let run = finish(child, args).await;
    feeder.await.expect("stdin feeder");
    run
}

/// `tidegate <args> --url <server>`.
async fn tg(server: &TestServer, args: &[&str]) -> Run {
    tg_in(server, args, b"").await
}

/// `tidegate <args> --url <server>` reading `stdin`.
async fn tg_in(server: &TestServer, args: &[&str], stdin: &[u8]) -> Run {
    let url = format!("http://{}", server.addr);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--url", &url]);
    run_with(&all, stdin, &[]).await
}

/// The problem document the server answers to `GET path`.
async fn server_problem(server: &TestServer, path: &str) -> Value {
    let resp = server.get(path).send().await.expect("GET");
    assert!(!resp.status().is_success(), "GET {path} succeeded");
    resp.json().await.expect("problem JSON")
}

/// Asserts that stderr shows the server's own detail and code.
fn shows_problem(run: &Run, problem: &Value) {
    let (detail, code) = (problem["detail"].as_str().unwrap(), problem["code"].as_str().unwrap());
    assert!(run.stderr.contains(detail), "stderr lacks the server's detail {detail:?}:\n{}", run.stderr);
    assert!(run.stderr.contains(code), "stderr lacks the code {code:?}:\n{}", run.stderr);
}

/// The `n` fields of events, sorted, checking each appears once.
fn numbers(events: &[Value]) -> Vec<u64> {
    let set: BTreeSet<u64> = events.iter().map(|e| e["n"].as_u64().unwrap_or_else(|| panic!("no n in {e}"))).collect();
    assert_eq!(set.len(), events.len(), "an event twice");
    set.into_iter().collect()
}

fn ndjson(events: &[Value]) -> Vec<u8> {
    events.iter().map(|e| format!("{e}\n")).collect::<String>().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_commands_create_list_describe_alter_and_delete() {
    let server = TestServer::with_defaults().await;
    let created =
        tg(&server, &["topics", "create", "views", "--partitions", "3", "--retention-ms", "none"]).await.expect(0);
    assert!(created.stdout.starts_with("created topic views"), "{}", created.stdout);
    assert!(created.stdout.contains("PARTITION  START  END"), "a partition table: {}", created.stdout);
    let d = server.describe("views").await;
    assert_eq!((d["partition_count"].as_u64(), d["retention_ms"].is_null()), (Some(3), true), "{d}");

    let json =
        tg(&server, &["topics", "create", "clicks", "--retention-bytes", "1048576", "--json"]).await.expect(0).json();
    assert_eq!(json["name"], "clicks");
    assert_eq!(json["retention_bytes"], 1_048_576);

    let list = tg(&server, &["topics", "list"]).await.expect(0);
    let rows: Vec<&str> = list.stdout.lines().collect();
    assert!(rows[0].starts_with("TOPIC") && rows.len() == 3, "{}", list.stdout);
    assert!(rows[1].starts_with("clicks") && rows[2].starts_with("views"), "{}", list.stdout);
    let list = tg(&server, &["topics", "list", "--json"]).await.expect(0).json();
    assert_eq!(list, server.get_json("/v1/topics").await, "--json prints the API's answer");

    let d = tg(&server, &["topics", "describe", "views", "--json"]).await.expect(0).json();
    assert_eq!(tg(&server, &["topics", "--json", "describe", "views"]).await.expect(0).json(), d, "flags go anywhere");
    assert_eq!(d["partitions"].as_array().map(Vec::len), Some(3));
    let human = tg(&server, &["topics", "describe", "views"]).await.expect(0);
    assert!(human.stdout.contains("partitions           3"), "{}", human.stdout);

    let altered =
        tg(&server, &["topics", "alter", "views", "--retention-ms", "3600000", "--partitions", "5", "--json"])
            .await
            .expect(0);
    let d = altered.json();
    assert_eq!((d["retention_ms"].as_u64(), d["partition_count"].as_u64()), (Some(3_600_000), Some(5)), "{d}");
    assert_eq!(server.describe("views").await["partition_count"], 5);
    tg(&server, &["topics", "alter", "views"]).await.expect(2);
    // A count that cannot grow the topic changes nothing, retention included.
    let refused = tg(&server, &["topics", "alter", "views", "--retention-ms", "60000", "--partitions", "2"]).await;
    let refused = refused.expect(1);
    assert!(refused.stderr.contains("nothing was changed"), "{}", refused.stderr);
    assert_eq!(server.describe("views").await["retention_ms"], 3_600_000, "retention unchanged");

    tg(&server, &["topics", "delete", "clicks"]).await.expect(0);
    assert_eq!(server.get_json("/v1/topics").await["topics"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_errors_show_the_servers_problem_and_exit_1() {
    let server = TestServer::with_defaults().await;
    server.create_topic("t", 2).await;

    let missing = tg(&server, &["topics", "describe", "nope"]).await.expect(1);
    shows_problem(&missing, &server_problem(&server, "/v1/topics/nope").await);
    assert!(missing.stderr.starts_with("error: "), "{}", missing.stderr);
    let as_json = tg(&server, &["topics", "describe", "nope", "--json"]).await.expect(1);
    assert_eq!(as_json.error_json(), server_problem(&server, "/v1/topics/nope").await, "--json errors are the problem");
    assert!(as_json.stdout.is_empty(), "nothing on stdout: {}", as_json.stdout);

    let exists = tg(&server, &["topics", "create", "t"]).await.expect(1);
    assert!(exists.stderr.contains("409 topic_exists"), "{}", exists.stderr);
    let kept =
        tg(&server, &["topics", "create", "t", "--partitions", "9", "--if-not-exists", "--json"]).await.expect(0);
    assert_eq!(kept.json()["partition_count"], 2, "--if-not-exists changes nothing");

    tg(&server, &["topics", "create", "bad/name"]).await.expect(1);
    let shrink = tg(&server, &["topics", "alter", "t", "--partitions", "1"]).await.expect(1);
    assert!(shrink.stderr.contains("invalid_partition_count"), "{}", shrink.stderr);
    tg(&server, &["topics", "alter", "nope", "--retention-ms", "5"]).await.expect(1);

    tg(&server, &["topics", "delete", "nope"]).await.expect(1);
    let quiet = tg(&server, &["topics", "delete", "nope", "--if-exists", "--json"]).await.expect(0);
    assert_eq!(quiet.json(), json!({"topic": "nope", "deleted": false}));
    tg(&server, &["topics", "create", "x", "--partitions", "lots"]).await.expect(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_sends_lines_with_keys_partitions_and_key_fields() {
    let server = TestServer::with_defaults().await;
    server.create_topic("p", 4).await;
    let events: Vec<Value> = (0..50).map(|i| json!({"n": i, "user": format!("u{}", i % 5)})).collect();
    let mut input = ndjson(&events);
    input.extend_from_slice(b"\n   \n"); // blank lines are skipped

    let args = ["produce", "p", "--partition", "2", "--batch", "7", "--in-flight", "1", "--json"];
    let summary = tg_in(&server, &args, &input).await.expect(0);
    let s = summary.json();
    assert_eq!((s["events"].as_u64(), s["requests"].as_u64()), (Some(50), Some(8)), "{s}");
    assert_eq!(s["partitions"], json!({"2": 50}));
    let stored: Vec<Value> = server.read_all("p", 2).await.into_iter().map(|r| r["value"].clone()).collect();
    assert_eq!(stored, events, "one request in flight keeps the input order");

    let human = tg_in(&server, &["produce", "p", "--key", "k1"], &ndjson(&events[..10])).await.expect(0);
    let expected = partition_for_key(b"k1", 4);
    assert!(human.stdout.starts_with("produced 10 events"), "{}", human.stdout);
    assert!(human.stdout.contains(&format!("per partition {expected}: 10")), "{}", human.stdout);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, ndjson(&events)).unwrap();
    let keyed =
        tg(&server, &["produce", "p", "--file", file.to_str().unwrap(), "--key-field", "/user", "--json"]).await;
    let s = keyed.expect(0).json();
    assert_eq!(s["events"], 50);
    let mut by_key: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for p in 0..4 {
        for r in server.read_all("p", p).await {
            if let Some(k) = r["key"].as_str().filter(|k| k.starts_with('u')) {
                by_key.entry(k.to_string()).or_default().insert(u64::from(p));
                assert_eq!(r["value"]["user"], k, "the key is the event's user field: {r}");
                assert_eq!(u64::from(partition_for_key(k.as_bytes(), 4)), u64::from(p), "Kafka's partitioner");
            }
        }
    }
    assert_eq!(by_key.len(), 5, "{by_key:?}");
    assert_eq!(by_key.values().map(BTreeSet::len).max(), Some(1), "one partition per key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_names_refused_lines_with_the_servers_detail() {
    let server = TestServer::with_defaults().await;
    server.create_topic("p", 1).await;
    let input = b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\":\n{\"a\":5}\n{\"a\":6}\n".to_vec();

    let refused = tg_in(&server, &["produce", "p", "--batch", "2", "--in-flight", "1"], &input).await.expect(1);
    assert!(refused.stderr.contains("400 invalid_events"), "{}", refused.stderr);
    assert!(refused.stderr.contains("line 4: malformed JSON"), "the input line is named: {}", refused.stderr);
    assert!(refused.stderr.contains("lines 3-4 were not stored"), "{}", refused.stderr);
    assert!(refused.stdout.starts_with("produced 2 events"), "the lines before were stored: {}", refused.stdout);
    assert!(refused.stderr.contains("lines from 5 on were not sent (to resume: tail -n +5)"), "{}", refused.stderr);
    let stored: Vec<Value> = server.read_all("p", 0).await.into_iter().map(|r| r["value"].clone()).collect();
    assert_eq!(stored, [json!({"a": 1}), json!({"a": 2})], "nothing after the refusal was sent");

    let as_json = tg_in(&server, &["produce", "p", "--batch", "10", "--json"], &input).await.expect(1);
    let s = as_json.json();
    assert_eq!(s["events"], 0);
    assert_eq!(s["refused_lines"], json!([1, 2, 3, 4, 5, 6]));
    assert_eq!(s.get("unsent_from_line"), None, "every line was sent: {s}");
    assert_eq!(s["error"]["code"], "invalid_events");
    assert_eq!(s["error"]["errors"][0]["line"], 4);
    assert!(s["error"]["errors"][0]["detail"].as_str().unwrap().starts_with("malformed JSON"), "{s}");
    assert_eq!(as_json.error_json()["code"], "invalid_events");

    let unknown = tg_in(&server, &["produce", "nope"], b"{}\n").await.expect(1);
    shows_problem(&unknown, &server_problem(&server, "/v1/topics/nope").await);
    let not_json = tg_in(&server, &["produce", "p", "--key-field", "id"], b"{\"id\":1}\nnope\n").await.expect(1);
    assert!(not_json.stderr.contains("line 2: not JSON"), "{}", not_json.stderr);
    let keyed = tg_in(&server, &["produce", "p", "--key", "k", "--json"], b"{\"id\":1}\n\n[1,\n").await.expect(1);
    assert_eq!(keyed.error_json()["code"], "invalid_input", "{}", keyed.stderr);
    assert!(keyed.error_json()["detail"].as_str().unwrap().starts_with("line 3: not JSON"), "{}", keyed.stderr);
    let bad_partition = tg_in(&server, &["produce", "p", "--partition", "7"], b"{}\n").await.expect(1);
    assert!(
        bad_partition.stderr.contains("has no partition 7 (it has 1) (404 partition_not_found)"),
        "{}",
        bad_partition.stderr
    );
    tg(&server, &["produce", "p", "--file", "/nonexistent/events.ndjson"]).await.expect(2);
    tg(&server, &["produce"]).await.expect(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_with_requests_in_flight_accounts_for_every_line_after_refusals() {
    let server = TestServer::with_defaults().await;
    server.create_topic("q", 1).await;
    // 40 lines in requests of 2; lines 7 and 13 are malformed, so two requests of the
    // first few in flight may be refused. However the requests interleave, every line
    // is stored, refused or unsent: exactly one of them.
    let input: String = (1..=40)
        .map(|n| if n == 7 || n == 13 { "{\"n\":\n".to_string() } else { format!("{{\"n\":{n}}}\n") })
        .collect();
    let out = tg_in(&server, &["produce", "q", "--batch", "2", "--in-flight", "4", "--json"], input.as_bytes())
        .await
        .expect(1);
    let s = out.json();
    let refused: BTreeSet<u64> = s["refused_lines"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(refused.contains(&7) && refused.contains(&8), "the first malformed line's request: {s}");
    let unsent_from = s["unsent_from_line"].as_u64().expect("lines were left unsent");
    let stored: BTreeSet<u64> =
        server.read_all("q", 0).await.iter().map(|r| r["value"]["n"].as_u64().unwrap()).collect();
    assert_eq!(s["events"], stored.len() as u64, "{s}");
    for line in 1..=40u64 {
        let places = [stored.contains(&line), refused.contains(&line), line >= unsent_from];
        assert_eq!(places.iter().filter(|p| **p).count(), 1, "line {line}: stored/refused/unsent {places:?}; {s}");
    }
    let text = tg_in(&server, &["produce", "q", "--batch", "2", "--in-flight", "4"], input.as_bytes()).await.expect(1);
    assert!(text.stderr.contains("lines 7-8 were not stored"), "{}", text.stderr);
    assert!(text.stderr.contains("were not sent (to resume: tail -n +"), "{}", text.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_prints_values_or_records_and_stops_at_the_end() {
    let server = TestServer::with_defaults().await;
    server.create_topic("c", 3).await;
    let events: Vec<Value> = (0..30).map(|i| json!({"n": i})).collect();
    for chunk in events.chunks(5) {
        server.produce("c", &json!(chunk)).await;
    }
    let all = tg(&server, &["consume", "c"]).await.expect(0).lines();
    assert_eq!(numbers(&all), numbers(&events));
    assert_eq!(all.len(), 30, "each record once");

    let meta = tg(&server, &["consume", "c", "--with-meta", "--partition", "1"]).await.expect(0).lines();
    let stored = server.read_all("c", 1).await;
    assert_eq!(meta.len(), stored.len());
    for (line, record) in meta.iter().zip(&stored) {
        assert_eq!((&line["topic"], &line["partition"]), (&json!("c"), &json!(1)), "{line}");
        for field in ["offset", "timestamp", "key", "headers", "value"] {
            assert_eq!(line[field], record[field], "{field} of {line}");
        }
    }

    assert_eq!(tg(&server, &["consume", "c", "--max", "7"]).await.expect(0).lines().len(), 7);
    assert!(tg(&server, &["consume", "c", "--from", "latest"]).await.expect(0).stdout.is_empty());
    assert!(tg(&server, &["consume", "c", "--from", "-1h"]).await.expect(0).lines().len() == 30, "a time ago");
    let future = format!("timestamp:{}", 4_000_000_000_000u64);
    assert!(tg(&server, &["consume", "c", "--from", &future]).await.expect(0).stdout.is_empty());
    let tail = tg(&server, &["consume", "c", "--from", "offset:8", "--with-meta"]).await.expect(0).lines();
    assert!(tail.iter().all(|l| l["offset"].as_u64() >= Some(8)), "{tail:?}");

    let unknown = tg(&server, &["consume", "nope"]).await.expect(1);
    shows_problem(&unknown, &server_problem(&server, "/v1/topics/nope").await);
    tg(&server, &["consume", "c", "--partition", "9"]).await.expect(1);
    tg(&server, &["consume", "c", "--from", "soon"]).await.expect(2);
    tg(&server, &["consume", "c", "--group", "g", "--partition", "1"]).await.expect(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_follow_waits_for_new_records() {
    let server = TestServer::with_defaults().await;
    server.create_topic("f", 2).await;
    let url = format!("http://{}", server.addr);
    let follower =
        tokio::spawn(
            async move { run_with(&["consume", "f", "--follow", "--max", "5", "--url", &url], b"", &[]).await },
        );
    let events: Vec<Value> = (0..5).map(|i| json!({"late": i})).collect();
    server.produce("f", &json!(events)).await;
    let run = follower.await.unwrap().expect(0);
    assert_eq!(run.lines(), events, "records written after the start arrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_follow_reads_partitions_added_while_it_runs() {
    let server = TestServer::with_defaults().await;
    server.create_topic("grow", 1).await;
    let url = format!("http://{}", server.addr);
    let follower = tokio::spawn(async move {
        run_with(&["consume", "grow", "--follow", "--max", "2", "--with-meta", "--url", &url], b"", &[]).await
    });
    // Let it read the partition list (one partition) before the topic grows.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = server.post("/v1/topics/grow/partitions").json(&json!({"count": 2})).send().await.unwrap();
    assert_eq!(grown.status(), 200);
    server.produce("grow", &json!({"records": [{"partition": 1, "value": {"p": 1}}]})).await;
    server.produce("grow", &json!({"records": [{"partition": 0, "value": {"p": 0}}]})).await;
    let run = tokio::time::timeout(Duration::from_secs(30), follower).await.expect("both records within 30 s");
    let lines = run.unwrap().expect(0).lines();
    let partitions: BTreeSet<u64> = lines.iter().map(|l| l["partition"].as_u64().unwrap()).collect();
    assert_eq!(partitions, BTreeSet::from([0, 1]), "the added partition is read too: {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_group_commits_what_it_printed_and_groups_admin_works() {
    let server = TestServer::with_defaults().await;
    server.create_topic("g", 3).await;
    let events: Vec<Value> = (0..60).map(|i| json!({"n": i})).collect();
    for chunk in events.chunks(6) {
        server.produce("g", &json!(chunk)).await;
    }
    let first = tg(&server, &["consume", "g", "--group", "etl", "--max", "25"]).await.expect(0).lines();
    assert_eq!(first.len(), 25);
    let d = tg(&server, &["groups", "describe", "etl", "--json"]).await.expect(0).json();
    let committed: u64 = d["partitions"].as_array().unwrap().iter().map(|p| p["committed"].as_u64().unwrap_or(0)).sum();
    assert_eq!(committed, 25, "exactly what was printed is committed: {d}");
    assert_eq!(d["members"], json!([]), "the member left when it finished");

    let rest = tg(&server, &["consume", "g", "--group", "etl"]).await.expect(0).lines();
    let seen: Vec<Value> = first.iter().chain(&rest).cloned().collect();
    assert_eq!(seen.len(), 60, "the second run read the rest, nothing twice");
    assert_eq!(numbers(&seen), numbers(&events));
    assert!(tg(&server, &["consume", "g", "--group", "etl"]).await.expect(0).stdout.is_empty(), "nothing left");

    let list = tg(&server, &["groups", "list"]).await.expect(0);
    assert!(list.stdout.lines().nth(1).is_some_and(|l| l.starts_with("etl") && l.contains("empty")), "{}", list.stdout);
    let human = tg(&server, &["groups", "describe", "etl"]).await.expect(0);
    assert!(human.stdout.contains("TOPIC  PARTITION  COMMITTED"), "{}", human.stdout);

    let reset =
        tg(&server, &["groups", "reset", "etl", "--topic", "g", "--to", "earliest", "--partition", "0,2", "--json"])
            .await;
    let offsets = reset.expect(0).json()["offsets"].clone();
    assert_eq!(offsets.as_array().map(Vec::len), Some(2), "{offsets}");
    let again = tg(&server, &["consume", "g", "--group", "etl", "--with-meta"]).await.expect(0).lines();
    let parts: BTreeSet<u64> = again.iter().map(|l| l["partition"].as_u64().unwrap()).collect();
    assert_eq!(parts, BTreeSet::from([0, 2]), "only the reset partitions are read again");
    tg(&server, &["groups", "reset", "etl", "--topic", "g", "--to", "-1h"]).await.expect(0);
    tg(&server, &["groups", "reset", "etl", "--topic", "nope", "--to", "latest"]).await.expect(1);

    // A connected member blocks delete and reset unless forced.
    let member = server.subscribe("g", "group=etl&from=latest&auto_commit=false").await;
    let active = tg(&server, &["groups", "delete", "etl"]).await.expect(1);
    assert!(active.stderr.contains("409 group_active"), "{}", active.stderr);
    tg(&server, &["groups", "reset", "etl", "--topic", "g", "--to", "latest"]).await.expect(1);
    tg(&server, &["groups", "delete", "etl", "--force"]).await.expect(0);
    drop(member);
    eventually("the member to leave", Duration::from_secs(30), || async {
        server.get("/v1/groups/etl").send().await.ok().filter(|r| r.status() == 404)
    })
    .await;
    let missing = tg(&server, &["groups", "describe", "etl"]).await.expect(1);
    shows_problem(&missing, &server_problem(&server, "/v1/groups/etl").await);
    tg(&server, &["groups", "delete", "etl"]).await.expect(1);
    tg(&server, &["groups", "reset", "etl", "--topic", "g"]).await.expect(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_group_members_share_the_partitions_without_duplicates() {
    let server = TestServer::with_defaults().await;
    server.create_topic("s", 4).await;
    let events: Vec<Value> = (0..400).map(|i| json!({"n": i})).collect();
    for chunk in events.chunks(40) {
        server.produce("s", &json!(chunk)).await;
    }
    // A live member holds part of the group while the CLI joins: the CLI must wait
    // for its share, read it to the end, and leave.
    let mut other = server.subscribe("s", "group=pair&from=latest&auto_commit=false").await;
    let first = other.next_frame(Duration::from_secs(10)).await;
    assert_eq!(first["type"], "assignment", "{first}");
    let run = tg(&server, &["consume", "s", "--group", "pair", "--from", "earliest", "--with-meta"]).await.expect(0);
    let lines = run.lines();
    let parts: BTreeSet<u64> = lines.iter().map(|l| l["partition"].as_u64().unwrap()).collect();
    assert_eq!(parts.len(), 2, "the CLI read its half of the partitions: {parts:?}");
    let offsets: BTreeSet<(u64, u64)> =
        lines.iter().map(|l| (l["partition"].as_u64().unwrap(), l["offset"].as_u64().unwrap())).collect();
    assert_eq!(offsets.len(), lines.len(), "no record twice");
    let expected: usize = {
        let mut n = 0;
        for p in &parts {
            n += server.read_all("s", u32::try_from(*p).unwrap()).await.len();
        }
        n
    };
    assert_eq!(lines.len(), expected, "every record of its partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_produce_with_a_summary_and_a_group_member_after_committing() {
    let server = TestServer::with_defaults().await;
    server.create_topic("i", 2).await;
    let url = format!("http://{}", server.addr);

    // A stream that stays open: what arrived is posted at once, Ctrl-C ends the run.
    let args = ["produce", "i", "--url", &url];
    let mut producer = spawn(&args, &[]);
    let mut input = producer.stdin.take().expect("stdin");
    input.write_all(&ndjson(&(0..10).map(|n| json!({"n": n})).collect::<Vec<_>>())).await.unwrap();
    input.flush().await.unwrap();
    let total = |server: &TestServer| {
        let api = server.api().clone();
        async move { api.end_offsets("i").await.iter().sum::<u64>() }
    };
    eventually("the streamed events to be stored", Duration::from_secs(30), || async {
        (total(&server).await == 10).then_some(())
    })
    .await;
    interrupt(&producer);
    let run = finish(producer, &args).await.expect(130);
    assert!(run.stdout.starts_with("produced 10 events"), "{}", run.stdout);
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
    drop(input);

    let args = ["consume", "i", "--group", "tail", "--follow", "--url", &url];
    let member = spawn(&args, &[]);
    let committed = |server: &TestServer| {
        let api = server.api().clone();
        async move {
            let resp = api.get("/v1/groups/tail").send().await.ok()?;
            let d: Value = resp.json().await.ok()?;
            Some(d["partitions"].as_array()?.iter().filter_map(|p| p["committed"].as_u64()).sum::<u64>())
        }
    };
    eventually("the member to commit what it printed", Duration::from_secs(30), || async {
        (committed(&server).await == Some(10)).then_some(())
    })
    .await;
    interrupt(&member);
    let run = finish(member, &args).await.expect(0);
    assert_eq!(numbers(&run.lines()), (0..10).collect::<Vec<u64>>());
    let d = server.get_json("/v1/groups/tail").await;
    assert_eq!(d["members"], json!([]), "the member left with a normal close: {d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_topic_under_a_following_consumer_ends_it_with_exit_1() {
    let server = TestServer::with_defaults().await;
    server.create_topic("gone", 2).await;
    let url = format!("http://{}", server.addr);
    let member_args = ["consume", "gone", "--group", "watchers", "--follow", "--url", &url];
    let member = spawn(&member_args, &[]);
    let reader_args = ["consume", "gone", "--follow", "--url", &url];
    let reader = spawn(&reader_args, &[]);
    eventually("the member to join", Duration::from_secs(30), || async {
        let d: Value = server.get("/v1/groups/watchers").send().await.ok()?.json().await.ok()?;
        (d["members"].as_array()?.len() == 1).then_some(())
    })
    .await;
    server.produce("gone", &json!([{"n": 1}])).await;
    let resp = server.http.delete(server.url("/v1/topics/gone")).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let run = finish(member, &member_args).await.expect(1);
    assert!(run.stderr.contains("topic_deleted"), "{}", run.stderr);
    let run = finish(reader, &reader_args).await.expect(1);
    assert!(run.stderr.contains("404"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_readiness_and_counts() {
    let server = TestServer::with_defaults().await;
    server.create_topic("a", 2).await;
    server.produce("a", &json!([{"x": 1}, {"x": 2}])).await;
    let s = tg(&server, &["status", "--json"]).await.expect(0).json();
    assert_eq!((s["healthy"].as_bool(), s["ready"].as_bool()), (Some(true), Some(true)), "{s}");
    assert_eq!((s["topics"].as_u64(), s["partitions"].as_u64(), s["records"].as_u64()), (Some(1), Some(2), Some(2)));
    let human = tg(&server, &["status"]).await.expect(0);
    assert!(human.stdout.contains("ready       yes"), "{}", human.stdout);
    let env_url = format!("http://{}", server.addr);
    run_with(&["status"], b"", &[("TIDEGATE_URL", env_url.as_str())]).await.expect(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_exits_3_when_no_server_listens() {
    let port = {
        let probe = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        probe.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let commands: [&[&str]; 7] = [
        &["status"],
        &["topics", "list"],
        &["topics", "create", "t"],
        &["produce", "t"],
        &["consume", "t"],
        &["consume", "t", "--group", "g", "--follow"],
        &["groups", "list"],
    ];
    for args in commands {
        let mut all = args.to_vec();
        all.extend(["--url", &url]);
        let run = run_with(&all, b"{}\n", &[]).await.expect(3);
        assert!(run.stderr.contains("cannot connect to"), "{args:?}: {}", run.stderr);
        all.push("--json");
        let run = run_with(&all, b"{}\n", &[]).await.expect(3);
        assert_eq!(run.error_json()["code"], "cannot_connect", "{args:?}");
    }
    let https = format!("https://127.0.0.1:{port}");
    let run = run_with(&["status", "--url", &https], b"", &[]).await.expect(3);
    assert!(run.stderr.contains("cannot connect to"), "{}", run.stderr);
    run_with(&["status", "--url", "ftp://127.0.0.1:1"], b"", &[]).await.expect(2);
}

/// A scripted HTTP server: records each request head and answers from `answer`
/// (status, content type, body), closing the connection after each answer.
async fn scripted(answer: fn(&str) -> (u16, &'static str, String)) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let (status, content_type, body) = answer(&head);
                log.lock().unwrap().push(head);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, seen)
}

fn token_gate(head: &str) -> (u16, &'static str, String) {
    let authorized = head.lines().any(|l| l.eq_ignore_ascii_case("authorization: Bearer good"));
    if !authorized {
        let problem = json!({"type": "urn:tidegate:problem:unauthorized", "title": "Unauthorized", "status": 401,
            "code": "unauthorized", "detail": "the bearer token is invalid"});
        return (401, "application/problem+json", problem.to_string());
    }
    if head.starts_with("GET /v1/groups ") {
        let problem = json!({"status": 500, "code": "storage_error", "detail": "disk on fire"});
        return (500, "application/problem+json", problem.to_string());
    }
    if head.starts_with("GET /v1/topics/proxy ") {
        return (502, "text/html", "<html>bad gateway</html>".to_string());
    }
    (200, "application/json", json!({"topics": []}).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_and_refusals_and_server_faults_have_their_exit_codes() {
    // Authentication is not in this build: a scripted listener plays a gateway
    // that wants `Bearer good`.
    let (url, seen) = scripted(token_gate).await;
    let bad = run_with(&["topics", "list", "--url", &url, "--token", "bad"], b"", &[]).await.expect(5);
    assert!(bad.stderr.contains("the bearer token is invalid (401 unauthorized)"), "{}", bad.stderr);
    assert!(bad.stderr.contains("hint: check --token"), "{}", bad.stderr);
    let last = seen.lock().unwrap().last().unwrap().to_ascii_lowercase();
    assert!(last.contains("authorization: bearer bad"), "{last}");
    run_with(&["topics", "list", "--url", &url], b"", &[]).await.expect(5);

    let good = run_with(&["topics", "list", "--url", &url], b"", &[("TIDEGATE_TOKEN", "good")]).await.expect(0);
    assert!(good.stdout.starts_with("TOPIC"), "{}", good.stdout);

    let fault = run_with(&["groups", "list", "--url", &url, "--token", "good"], b"", &[]).await.expect(4);
    assert!(fault.stderr.contains("disk on fire (500 storage_error)"), "{}", fault.stderr);
    let proxy = run_with(&["topics", "describe", "proxy", "--url", &url, "--token", "good"], b"", &[]).await.expect(4);
    assert!(proxy.stderr.contains("<html>bad gateway</html> (502)"), "{}", proxy.stderr);

    let ws = run_with(&["consume", "t", "--group", "g", "--follow", "--url", &url, "--token", "bad"], b"", &[])
        .await
        .expect(5);
    assert!(ws.stderr.contains("401 unauthorized"), "{}", ws.stderr);
    let upgrade = seen.lock().unwrap().iter().find(|h| h.contains("/subscribe?")).cloned().expect("an upgrade request");
    assert!(upgrade.contains("access_token=bad"), "{upgrade}");
    assert!(upgrade.to_ascii_lowercase().contains("authorization: bearer bad"), "{upgrade}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_consume_round_trips_100000_events_exactly_once() {
    const EVENTS: usize = 100_000;
    let server = TestServer::with_defaults().await;
    server.create_topic("rt", 4).await;
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| json!({"id": i, "user": format!("user-{}", i % 997), "text": format!("event number {i} ünïcödé \"quoted\"")}))
        .collect();
    let input = ndjson(&events);

    let produced = tg_in(&server, &["produce", "rt", "--key-field", "user", "--json"], &input).await.expect(0).json();
    assert_eq!(produced["events"], EVENTS, "{produced}");
    let per_partition: u64 = produced["partitions"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(per_partition, EVENTS as u64);

    let check = |stdout: &str, how: &str| {
        let mut seen = vec![false; EVENTS];
        let mut lines = 0;
        for line in stdout.lines() {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{how}: {line:?}: {e}"));
            let id = usize::try_from(value["id"].as_u64().expect("id")).unwrap();
            assert!(!seen[id], "{how}: event {id} arrived twice");
            seen[id] = true;
            assert_eq!(value, events[id], "{how}: event {id} arrived changed");
            lines += 1;
        }
        assert_eq!(lines, EVENTS, "{how}: every event arrives");
    };
    let ephemeral = tg(&server, &["consume", "rt"]).await.expect(0);
    check(&ephemeral.stdout, "consume");
    let member = tg(&server, &["consume", "rt", "--group", "rt-group"]).await.expect(0);
    check(&member.stdout, "consume --group");
    let d = server.get_json("/v1/groups/rt-group").await;
    assert_eq!(d["lag"], 0, "the group committed everything it printed: {d}");
}

/// A token signed with `secret` granting `permissions` for an hour.
fn cli_token(secret: &str, permissions: Value) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &json!({"exp": exp, "permissions": permissions}), &key)
        .expect("sign a token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_against_a_node_with_authentication() {
    const SECRET: &str = "cli-test-secret-that-is-long-enough-for-hs256";
    let server = TestServer::start(|c| {
        c.jwt_keys = json!([{"alg": "HS256", "secret": SECRET}]).to_string().parse().expect("keys");
    })
    .await;
    let admin = cli_token(SECRET, json!(["admin"]));
    let reader = cli_token(SECRET, json!(["consume:auth.*"]));
    tg(&server, &["topics", "create", "auth.events", "--partitions", "2", "--token", &admin]).await.expect(0);
    let lines = ndjson(&(0..50).map(|n| json!({"n": n})).collect::<Vec<_>>());
    tg_in(&server, &["produce", "auth.events", "--token", &admin], &lines).await.expect(0);

    // No token, a bad token, a token without the permission: exit 5 with the server's problem.
    let none = tg(&server, &["topics", "list"]).await.expect(5);
    assert!(none.stderr.contains("unauthorized"), "{}", none.stderr);
    let bad = tg(&server, &["topics", "list", "--token", "not-a-jwt"]).await.expect(5);
    assert!(bad.stderr.contains("invalid_token"), "{}", bad.stderr);
    let denied = tg_in(&server, &["produce", "auth.events", "--token", &reader], &lines).await.expect(5);
    assert!(denied.stderr.contains("forbidden"), "{}", denied.stderr);

    // The reader consumes over HTTP and, with a group, over WebSocket (access_token).
    let plain = tg(&server, &["consume", "auth.events", "--token", &reader]).await.expect(0);
    assert_eq!(numbers(&plain.lines()), (0..50).collect::<Vec<u64>>());
    let group = tg(&server, &["consume", "auth.events", "--group", "readers", "--token", &reader]).await.expect(0);
    assert_eq!(numbers(&group.lines()), (0..50).collect::<Vec<u64>>());
    let described = tg(&server, &["groups", "describe", "readers", "--json", "--token", &reader]).await.expect(0);
    assert_eq!(described.json()["lag"], 0, "{}", described.stdout);

    // status: the node's totals for an admin; for a limited token only what it may
    // see, and it says so.
    tg(&server, &["topics", "create", "other.events", "--token", &admin]).await.expect(0);
    let all = tg(&server, &["status", "--json", "--token", &admin]).await.expect(0).json();
    assert_eq!((all["topics"].as_u64(), all["filtered"].as_bool()), (Some(2), Some(false)), "{all}");
    let some = tg(&server, &["status", "--json", "--token", &reader]).await.expect(0).json();
    assert_eq!((some["topics"].as_u64(), some["records"].as_u64()), (Some(1), Some(50)), "{some}");
    assert_eq!(some["filtered"].as_bool(), Some(true), "{some}");
    let human = tg(&server, &["status", "--token", &reader]).await.expect(0);
    assert!(human.stdout.contains("only what this token may see"), "{}", human.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_waits_out_rate_limits_and_stores_every_event_once() {
    let server = TestServer::start(|c| {
        c.rate_limit_ip_per_s = 2;
        c.rate_limit_ip_burst = 2;
    })
    .await;
    tg(&server, &["topics", "create", "limited", "--partitions", "1"]).await.expect(0);
    let lines = ndjson(&(0..60).map(|n| json!({"n": n})).collect::<Vec<_>>());
    // 6 requests of 10 against 2 requests/s: some are answered 429 and sent again.
    let run = tg_in(&server, &["produce", "limited", "--batch", "10", "--in-flight", "1"], &lines).await.expect(0);
    // The harness is rate limited too: read once the bucket lets it through.
    let get_ok = |path: &'static str| {
        let api = server.api().clone();
        async move {
            eventually(path, Duration::from_secs(20), || {
                let api = api.clone();
                async move {
                    let resp = api.get(path).send().await.ok()?;
                    if resp.status() == 200 { resp.text().await.ok() } else { None }
                }
            })
            .await
        }
    };
    let metrics = get_ok("/metrics").await;
    assert!(metrics.contains("tidegate_rate_limited_total{scope=\"ip\"}"), "no request was limited:\n{}", run.stderr);
    let read: Value =
        serde_json::from_str(&get_ok("/v1/topics/limited/partitions/0/records?offset=0&max_records=100").await)
            .unwrap();
    let values: Vec<Value> = read["records"].as_array().unwrap().iter().map(|r| r["value"].clone()).collect();
    assert_eq!(numbers(&values), (0..60).collect::<Vec<u64>>(), "every event once, in order");
    // Without retries the first 429 ends the run with exit 1 and the server's problem.
    let refused =
        tg_in(&server, &["produce", "limited", "--batch", "10", "--in-flight", "1", "--retries", "0"], &lines).await;
    let refused = refused.expect(1);
    assert!(refused.stderr.contains("rate_limited"), "{}", refused.stderr);
}

/// Against a gateway with TLS: admin, produce and a group member's WebSocket (wss://)
/// work with `--ca-cert` trusting its self-signed certificate; without it the
/// certificate is refused and the client exits as unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_https_and_wss_with_a_trusted_ca() {
    let gateway = TlsGateway::start().await;
    let url = format!("https://localhost:{}", gateway.addr.port());
    let cert_path = gateway.cert_path.clone();
    let ca = cert_path.to_str().unwrap();
    let with = |args: &[&'static str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--url".into(), url.clone(), "--ca-cert".into(), ca.to_string()]);
        all
    };
    let run_owned = |args: Vec<String>, stdin: &'static [u8]| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_with(&refs, stdin, &[]).await
    };
    eventually("the HTTPS gateway to answer the client", Duration::from_secs(30), || {
        let args = with(&["status", "--json"]);
        async move { (run_owned(args, b"").await.code == 0).then_some(()) }
    })
    .await;
    run_owned(with(&["topics", "create", "tls.cli", "--partitions", "2", "--json"]), b"").await.expect(0);
    let produced = run_owned(with(&["produce", "tls.cli", "--json"]), b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n").await;
    assert_eq!(produced.expect(0).json()["events"], 3);
    let consumed =
        run_owned(with(&["consume", "tls.cli", "--group", "g.tls", "--from", "earliest", "--max", "3"]), b"")
            .await
            .expect(0);
    let mut seen: Vec<i64> = consumed.lines().iter().map(|v| v["n"].as_i64().unwrap()).collect();
    seen.sort();
    assert_eq!(seen, vec![1, 2, 3], "the group member read every event over wss://");

    // Without the gateway's certificate the system roots do not trust it.
    let refused = run_with(&["status", "--url", &url], b"", &[]).await.expect(3);
    assert!(refused.stderr.to_lowercase().contains("certificate"), "{}", refused.stderr);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_layers_file_environment_and_flags_and_refuses_bad_settings_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tidegate.toml");
    std::fs::write(&file, "fsync = \"never\"\nmax_event_bytes = 2048\nmax_subscriptions = 77\n").unwrap();
    let file_arg = file.to_str().unwrap();
    let (data, data2) = (dir.path().join("data"), dir.path().join("data2"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&data2).unwrap();

    // File < environment < flag: fsync from the environment, the event limit from the
    // flag, max_subscriptions from the file.
    let server = ProcessServer::start_with_env(
        &data,
        &["--config", file_arg, "--max-event-bytes", "4096"],
        &[("TIDEGATE_FSYNC", "interval")],
    )
    .await;
    let status = server.get_json("/v1/status").await;
    assert_eq!((status["fsync"].as_str(), status["max_subscriptions"].as_u64()), (Some("interval"), Some(77)));
    server.create_topic("sized", 1).await;
    let event = |bytes: usize| json!({"pad": "x".repeat(bytes)});
    let resp = server.post("/v1/topics/sized/events").json(&event(3000)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "3000 bytes fit the flag's 4096: {}", resp.text().await.unwrap());
    let resp = server.post("/v1/topics/sized/events").json(&event(5000)).send().await.unwrap();
    assert_eq!(resp.status(), 413, "{}", resp.text().await.unwrap());
    drop(server);

    // TIDEGATE_CONFIG names the file too.
    let server = ProcessServer::start_with_env(&data2, &[], &[("TIDEGATE_CONFIG", file_arg)]).await;
    let status = server.get_json("/v1/status").await;
    assert_eq!((status["fsync"].as_str(), status["max_subscriptions"].as_u64()), (Some("never"), Some(77)));
    drop(server);

    // Refusals exit 2 before binding, with a message naming the setting.
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "fsink = \"never\"\n").unwrap();
    let missing = dir.path().join("missing.toml");
    let data_arg = data.to_str().unwrap();
    let any_origin_key = r#"[{"key":"pk_any","topics":["web.*"],"origins":["*"]}]"#;
    let cases: [(Vec<&str>, &str); 7] = [
        (vec!["--fsync", "sometimes"], "sometimes"),
        (vec!["--config", bad_file.to_str().unwrap()], "fsink"),
        (vec!["--config", missing.to_str().unwrap()], "missing.toml"),
        (vec!["--max-event-bytes", "0"], "max_event_bytes"),
        (vec!["--max-event-bytes", "many"], "many"),
        (vec!["--cors-allow-credentials", "--write-keys", any_origin_key], "cors_allow_credentials"),
        // A floor a flush of the memtables would write through.
        (vec!["--min-free-disk-bytes", "1048576"], "min_free_disk_bytes"),
    ];
    for (extra, named) in cases {
        let mut args = vec!["serve", "--addr", "127.0.0.1:0", "--data-dir", data_arg];
        args.extend(extra.iter().copied());
        let run = finish(spawn(&args, &[]), &args).await.expect(2);
        assert!(run.stderr.contains(named), "{extra:?}: stderr does not name {named:?}:\n{}", run.stderr);
    }

    // A bad value from the environment is named by its variable, not only by the flag.
    let args = ["serve", "--addr", "127.0.0.1:0", "--data-dir", data_arg];
    let run = finish(spawn(&args, &[("TIDEGATE_MAX_EVENT_BYTES", "lots")]), &args).await.expect(2);
    assert!(run.stderr.contains("TIDEGATE_MAX_EVENT_BYTES"), "the variable is not named:\n{}", run.stderr);
    let args = ["serve", "--addr", "127.0.0.1:0", "--data-dir", data_arg, "--max-event-bytes", "many"];
    let run = finish(spawn(&args, &[("TIDEGATE_MAX_EVENT_BYTES", "4096")]), &args).await.expect(2);
    assert!(
        !run.stderr.contains("TIDEGATE_MAX_EVENT_BYTES"),
        "the flag's value is not the variable's:\n{}",
        run.stderr
    );

    let help = finish(spawn(&["serve", "--help"], &[]), &["serve", "--help"]).await.expect(0);
    for flag in ["--config", "--fsync", "--max-event-bytes", "--write-keys"] {
        assert!(help.stdout.contains(flag), "serve --help lacks {flag}:\n{}", help.stdout);
    }
    // Values are required (only booleans may go without), and each setting shows its default.
    assert!(help.stdout.contains("--data-dir <DATA_DIR>"), "{}", help.stdout);
    assert!(help.stdout.contains("--auto-create-topics [<AUTO_CREATE_TOPICS>]"), "{}", help.stdout);
    assert!(help.stdout.contains("[default: \"./tidegate-data\"]"), "{}", help.stdout);
    assert!(help.stdout.contains("[default: 1000]"), "max_partitions' default: {}", help.stdout);
}

/// A second node on a data directory another one holds refuses to start, saying so on
/// stderr even with logging off; its log lines carry no colour codes when stderr is not
/// a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_data_directory_is_refused_clearly_also_with_logging_off() {
    let server = TestServer::with_defaults().await;
    let dir = server.data_dir().to_str().expect("UTF-8 path").to_string();
    let quiet = ["serve", "--data-dir", &dir, "--addr", "127.0.0.1:0", "--log", "off"];
    let run = run_with(&quiet, b"", &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("in use by another process"), "{run:?}");
    let logged = ["serve", "--data-dir", &dir, "--addr", "127.0.0.1:0"];
    let run = run_with(&logged, b"", &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("in use by another process"), "{run:?}");
    assert!(!run.stderr.contains('\u{1b}'), "no ANSI escapes in a piped log: {run:?}");
}
