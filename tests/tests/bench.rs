//! The load tools (`tidegate bench …`), run as the real binary against a real server:
//! their JSON reports agree with what the server stored or delivered, and carry the
//! machine's CPU use during the run.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tidegate_tests::{ProcessServer, TestServer};

/// Longest one bench run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `tidegate bench <args> --url <server> --json`; asserts exit 0 and returns the
/// report.
async fn bench(server: &TestServer, args: &[&str]) -> Value {
    let url = format!("http://{}", server.addr);
    let mut cmd = tokio::process::Command::new(ProcessServer::binary());
    cmd.arg("bench").args(args).args(["--url", &url, "--json"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let out = tokio::time::timeout(RUN_DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("bench {args:?} did not finish within {RUN_DEADLINE:?}"))
        .expect("run the tidegate binary");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bench {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{stdout}"))
}

/// The report's `machine_cpu` is made of shares where `/proc/stat` exists. A run of
/// a second or more must have it (and busy cores); a shorter one may end within one
/// clock tick, and then has no figure.
fn assert_machine_cpu(report: &Value, long_run: bool) {
    if !std::path::Path::new("/proc/stat").exists() {
        return;
    }
    let cpu = &report["machine_cpu"];
    if cpu.is_null() && !long_run {
        return;
    }
    for share in ["busy_percent", "steal_percent"] {
        let v = cpu[share].as_f64().unwrap_or_else(|| panic!("machine_cpu.{share} in {report}"));
        assert!((0.0..=100.0).contains(&v), "machine_cpu.{share} = {v}");
    }
    if long_run {
        assert!(cpu["busy_percent"].as_f64().unwrap() > 0.0, "a load run keeps the cores busy: {cpu}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_reports_events_the_server_stored() {
    let server = TestServer::start(|_| {}).await;
    let args = ["ingest", "--topic", "b", "--batch", "10", "--connections", "2", "--duration", "1", "--warmup", "0"];
    let report = bench(&server, &args).await;
    let events = report["events"].as_u64().expect("events");
    assert!(events > 0, "{report}");
    assert_eq!(report["requests"].as_u64(), Some(events / 10), "{report}");
    assert_eq!((report["http_errors"].as_u64(), report["transport_errors"].as_u64()), (Some(0), Some(0)));
    assert!(report["p99_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert_machine_cpu(&report, true);
    // CPU cost from the server's process_cpu_seconds_total and the load tool's own.
    let cpu = &report["cpu"];
    for field in ["server_cores", "server_us_per_request", "server_us_per_event", "load_tool_cores"] {
        let v = cpu[field].as_f64().unwrap_or_else(|| panic!("cpu.{field} in {report}"));
        assert!(v > 0.0, "a second of load costs CPU: cpu.{field} = {v}");
    }
    let (per_request, per_event) = (cpu["server_us_per_request"].as_f64(), cpu["server_us_per_event"].as_f64());
    assert_eq!(per_request.zip(per_event).map(|(r, e)| (r / e).round()), Some(10.0), "10 events a request: {cpu}");
    // Every acknowledged event is in the log (the report counts acknowledged ones; a
    // request cut off at the end may also have been written).
    let stored: u64 = server.end_offsets("b").await.iter().sum();
    assert!(stored >= events, "stored {stored} < acknowledged {events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_catchup_reads_every_stored_record_exactly_once() {
    let server = TestServer::start(|_| {}).await;
    let args = ["consume", "catchup", "--topic", "c", "--partitions", "3", "--events", "3000", "--settle", "0"];
    let report = bench(&server, &args).await;
    assert_eq!(report["outcome"], "complete", "{report}");
    assert_eq!(report["expected"].as_u64(), Some(3000), "{report}");
    assert_eq!(report["unique"].as_u64(), Some(3000), "{report}");
    assert_eq!((report["duplicates"].as_u64(), report["missing"].as_u64()), (Some(0), Some(0)), "{report}");
    assert_eq!(report["per_member"].as_array().map(Vec::len), Some(4), "{report}");
    assert_machine_cpu(&report, false);
    // A read of 3,000 events may take less than a clock tick of CPU: the figures are
    // there, perhaps zero.
    for field in ["server_cores", "load_tool_cores"] {
        let v = report["cpu"][field].as_f64().unwrap_or_else(|| panic!("cpu.{field} in {report}"));
        assert!(v >= 0.0, "cpu.{field} = {v}");
    }
    let stored: u64 = server.end_offsets("c").await.iter().sum();
    assert_eq!(stored, 3000, "the fill posts exactly what is missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_with_dedup_and_segment_reports_the_idempotency_memory() {
    let server = TestServer::start(|_| {}).await;
    let run = ["--batch", "10", "--connections", "2", "--duration", "1", "--warmup", "0"];
    // The cache is the server's: it holds the ids of both runs.
    let mut stored_so_far = 0;
    for (endpoint, topic) in [("topic", "d"), ("segment", "segment.track")] {
        let mut args = vec!["ingest", "--topic", "d", "--endpoint", endpoint];
        if endpoint == "topic" {
            args.push("--dedup");
        }
        args.extend(run);
        let report = bench(&server, &args).await;
        let events = report["events"].as_u64().expect("events");
        assert!(events > 0, "{report}");
        assert_eq!((report["http_errors"].as_u64(), report["transport_errors"].as_u64()), (Some(0), Some(0)));
        let stored: u64 = server.end_offsets(topic).await.iter().sum();
        assert!(stored >= events, "{endpoint}: stored {stored} < acknowledged {events}");
        stored_so_far += stored;
        // Every id was new, so each stored event has its id remembered, in memory
        // (the cache holds them all at this size) and on disk.
        let dedup = &report["dedup"];
        assert!(dedup["ids_sent"].as_u64().unwrap() >= events, "{report}");
        let cached = dedup["cache_entries"].as_u64().unwrap();
        assert_eq!(cached, stored_so_far, "{endpoint}: cached ids against stored events: {dedup}");
        assert!(dedup["cache_bytes"].as_u64().unwrap() > 0 && dedup["disk_bytes"].as_u64().unwrap() > 0, "{dedup}");
        let per_entry = dedup["cache_bytes_per_entry"].as_f64().unwrap();
        assert!((16.0..=200.0).contains(&per_entry), "{per_entry} B per cached id: {dedup}");
    }
}
