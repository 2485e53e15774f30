//! `tidegate bench consume catchup`: fills the topic to `--events` records if it holds
//! fewer, then a fresh consumer group (unique name, `--members` WebSockets, `from=earliest`,
//! auto-commit) reads everything the topic held when the read started.
//!
//! Every delivered offset is marked in a per-partition bitset shared by the members, so a
//! record delivered twice (to one member or to two) counts as a duplicate, and the run
//! ends at the instant the last missing record arrives. Records lost to retention (`gap`
//! frames) are counted apart and not waited for.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use reqwest::{Client, Url};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::super::cpu::CpuCost;
use super::super::machine::MachineCpu;
use super::super::{ProgressLines, check_http, create_topic, ctrl_c, endpoint, print_report, setup_client, wall_us};
use super::producer::{event_batch, post_events, producer_client};
use super::{CLOSE_TIMEOUT, CatchupArgs, Frame, Rate, Ws, connect, read_until};

/// A read that makes no progress for this long ends the run.
const STALL: Duration = Duration::from_secs(30);
/// WebSocket read buffer of a member (the backlog arrives in frames of up to 256 KiB).
const READ_BUFFER: usize = 256 << 10;

#[derive(Deserialize)]
struct TopicDesc {
    partitions: Vec<PartitionDesc>,
}

#[derive(Deserialize)]
struct PartitionDesc {
    partition: u32,
    start_offset: u64,
    high_watermark: u64,
}

/// Readable offsets `[start, high watermark)` of every partition, indexed by partition.
async fn readable(client: &Client, base: &Url, topic: &str) -> Result<Vec<(u64, u64)>> {
    let url = endpoint(base, &["v1", "topics", topic])?;
    let resp = client.get(url.clone()).send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}: {}", resp.text().await.unwrap_or_default());
    }
    let desc: TopicDesc = resp.json().await.with_context(|| format!("GET {url}: unexpected answer"))?;
    let count = desc.partitions.iter().map(|p| p.partition as usize + 1).max().unwrap_or(0);
    if count > 1 << 20 {
        bail!("GET {url}: implausible partition index {}", count - 1);
    }
    let mut ranges = vec![(0, 0); count];
    for p in desc.partitions {
        ranges[p.partition as usize] = (p.start_offset, p.high_watermark.max(p.start_offset));
    }
    Ok(ranges)
}

/// Posts `missing` events in batches of `--fill-batch` over `--fill-connections`
/// connections, each sending its next batch when the previous one is acknowledged.
async fn fill(args: &CatchupArgs, missing: u64) -> Result<Rate> {
    let url = Arc::new(endpoint(&args.target.url, &["v1", "topics", &args.topic, "events"])?);
    let (batch, event_bytes) = (args.fill_batch, args.event_bytes);
    let batches = missing.div_ceil(batch);
    let full = Bytes::from(event_batch(batch, wall_us(), event_bytes));
    let (next, posted, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    eprintln!("filling `{}` with {missing} events of {event_bytes} B ({batch} per request)", args.topic);
    let start = Instant::now();
    let progress = ProgressLines::start({
        let (posted, mut last) = (posted.clone(), 0);
        move |secs| {
            let n = posted.load(Relaxed);
            let line = format!("fill  events/s {:>9.0}  posted {n}/{missing}", (n - last) as f64 / secs);
            last = n;
            line
        }
    });
    let mut workers = Vec::new();
    for _ in 0..args.fill_connections.min(batches) {
        let client = producer_client()?;
        let (url, full, next, posted, bytes) = (url.clone(), full.clone(), next.clone(), posted.clone(), bytes.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= batches {
                    return Ok(());
                }
                let count = batch.min(missing - i * batch);
                let body =
                    if count == batch { full.clone() } else { event_batch(count, wall_us(), event_bytes).into() };
                // Event bytes: the body without its brackets and commas.
                let payload = body.len() as u64 - count - 1;
                if let Err(e) = post_events(&client, &url, body).await {
                    next.store(batches, Relaxed); // the other connections stop too
                    bail!("filling the topic: {e}");
                }
                posted.fetch_add(count, Relaxed);
                bytes.fetch_add(payload, Relaxed);
            }
        }));
    }
    for w in workers {
        w.await.context("fill worker panicked")??;
    }
    drop(progress);
    Ok(Rate::new(posted.load(Relaxed), bytes.load(Relaxed), start.elapsed().as_secs_f64()))
}

/// What the members have received, shared by them.
struct Backlog {
    /// Expected offsets `[start, end)` per partition.
    ranges: Vec<(u64, u64)>,
    /// One bit per expected offset: delivered at least once.
    seen: Vec<Vec<AtomicU64>>,
    expected: u64,
    unique: AtomicU64,
    duplicates: AtomicU64,
    /// Records outside the expected ranges (appended after the read started).
    outside: AtomicU64,
    /// Expected records that retention deleted before delivery (`gap` frames).
    lost: AtomicU64,
    frame_bytes: AtomicU64,
    per_member: Vec<AtomicU64>,
    /// When the last expected record arrived.
    finished: OnceLock<Instant>,
    done: Notify,
    errors: AtomicU64,
    first_error: OnceLock<String>,
}

/// What marking one delivered offset found.
#[derive(Debug, PartialEq, Eq)]
enum Mark {
    New,
    Duplicate,
    Outside,
}

impl Backlog {
    fn new(ranges: Vec<(u64, u64)>, members: usize) -> Self {
        let seen = ranges.iter().map(|(s, e)| (0..(e - s).div_ceil(64)).map(|_| AtomicU64::new(0)).collect()).collect();
        Self {
            expected: ranges.iter().map(|(s, e)| e - s).sum(),
            ranges,
            seen,
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            outside: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            frame_bytes: AtomicU64::new(0),
            per_member: (0..members).map(|_| AtomicU64::new(0)).collect(),
            finished: OnceLock::new(),
            done: Notify::new(),
            errors: AtomicU64::new(0),
            first_error: OnceLock::new(),
        }
    }

    fn mark(&self, partition: u32, offset: u64) -> Mark {
        let p = partition as usize;
        let (Some(&(start, end)), Some(bits)) = (self.ranges.get(p), self.seen.get(p)) else { return Mark::Outside };
        if offset < start || offset >= end {
            return Mark::Outside;
        }
        let i = offset - start;
        let bit = 1u64 << (i % 64);
        if bits[(i / 64) as usize].fetch_or(bit, Relaxed) & bit == 0 { Mark::New } else { Mark::Duplicate }
    }

    fn is_complete(&self) -> bool {
        self.unique.load(Relaxed) + self.lost.load(Relaxed) >= self.expected
    }

    fn check_complete(&self) {
        if self.is_complete() {
            self.finished.get_or_init(Instant::now);
            self.done.notify_one();
        }
    }

    fn error(&self, msg: String) {
        self.errors.fetch_add(1, Relaxed);
        let _ = self.first_error.set(msg);
    }

    fn on_frame(&self, member: usize, text: &str) {
        self.frame_bytes.fetch_add(text.len() as u64, Relaxed);
        let frame: Frame<'_> = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => return self.error(format!("member {member}: unparsable frame: {e}")),
        };
        match &*frame.kind {
            "records" => {
                let (mut new, mut dup, mut out) = (0, 0, 0);
                for r in &frame.records {
                    match self.mark(frame.partition, r.offset) {
                        Mark::New => new += 1,
                        Mark::Duplicate => dup += 1,
                        Mark::Outside => out += 1,
                    }
                }
                self.per_member[member].fetch_add(frame.records.len() as u64, Relaxed);
                self.duplicates.fetch_add(dup, Relaxed);
                self.outside.fetch_add(out, Relaxed);
                if new > 0 {
                    self.unique.fetch_add(new, Relaxed);
                    self.check_complete();
                }
            }
            "gap" => {
                let (start, end) = self.ranges.get(frame.partition as usize).copied().unwrap_or_default();
                let gap = frame.from.max(start)..frame.to.min(end); // only what is expected
                let lost = gap.filter(|o| self.mark(frame.partition, *o) == Mark::New).count();
                self.lost.fetch_add(lost as u64, Relaxed);
                self.check_complete();
            }
            "error" => self.error(format!("member {member}: {}", frame.error())),
            _ => {}
        }
    }
}

/// One group member: reads until `stop`, then closes (the server commits and the member leaves).
async fn member(ws: Ws, log: Arc<Backlog>, idx: usize, stop: watch::Receiver<bool>) {
    if let Err(e) = read_until(ws, stop, |text| log.on_frame(idx, text)).await {
        log.error(format!("member {idx}: {e}"));
    }
}

/// Final result; MB = 10^6 bytes of JSON frames received.
#[derive(Debug, Serialize)]
struct Report {
    outcome: &'static str,
    topic: String,
    partitions: usize,
    group: String,
    members: u64,
    fill: Option<Rate>,
    expected: u64,
    received: u64,
    unique: u64,
    duplicates: u64,
    missing: u64,
    outside_range: u64,
    lost_to_retention: u64,
    duration_s: f64,
    events_per_s: f64,
    mb_per_s: f64,
    per_member: Vec<u64>,
    /// The whole machine's CPU while reading (load tool included).
    machine_cpu: Option<MachineCpu>,
    /// CPU of the server and of the load tool while reading, per event received.
    cpu: Option<CpuCost>,
    errors: u64,
    first_error: Option<String>,
}

impl Report {
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = vec![
            ("outcome".into(), self.outcome.into()),
            ("topic".into(), format!("{} ({} partitions)", self.topic, self.partitions)),
            ("group".into(), format!("{} ({} members)", self.group, self.members)),
        ];
        if let Some(f) = &self.fill {
            rows.push(("fill events".into(), f.events.to_string()));
            rows.push(("fill time".into(), format!("{:.2} s", f.duration_s)));
            rows.push(("fill events/s".into(), format!("{:.0}", f.events_per_s)));
            rows.push(("fill MB/s (events)".into(), format!("{:.2}", f.mb_per_s)));
        }
        let counts = [
            ("expected", self.expected),
            ("received", self.received),
            ("unique", self.unique),
            ("duplicates", self.duplicates),
            ("missing", self.missing),
            ("outside range", self.outside_range),
            ("lost to retention", self.lost_to_retention),
        ];
        rows.extend(counts.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        rows.push(("read time".into(), format!("{:.3} s", self.duration_s)));
        rows.push(("events/s".into(), format!("{:.0}", self.events_per_s)));
        rows.push(("MB/s (frames)".into(), format!("{:.2}", self.mb_per_s)));
        for (i, n) in self.per_member.iter().enumerate() {
            rows.push((format!("member m{i} received"), n.to_string()));
        }
        rows.push(MachineCpu::row(self.machine_cpu));
        rows.extend(CpuCost::rows(self.cpu.as_ref()).map(|(k, v)| (k.to_string(), v)));
        rows.push(("errors".into(), self.errors.to_string()));
        rows.extend(self.first_error.clone().map(|e| ("first error".into(), e)));
        rows
    }
}

/// Runs `tidegate bench consume catchup`.
pub(super) async fn run(args: CatchupArgs) -> Result<()> {
    let base = &args.target.url;
    check_http(base)?;
    let client = setup_client()?;
    create_topic(&client, base, &args.topic, args.partitions).await?;
    let held: u64 = readable(&client, base, &args.topic).await?.iter().map(|(s, e)| e - s).sum();
    let fill_rate = if held < args.events {
        let rate = fill(&args, args.events - held).await?;
        if args.settle > 0 {
            eprintln!("filled; settling for {} s (--settle)", args.settle);
            tokio::time::sleep(Duration::from_secs(args.settle)).await;
        }
        Some(rate)
    } else {
        eprintln!("topic `{}` already holds {held} records (>= {})", args.topic, args.events);
        None
    };
    let ranges = readable(&client, base, &args.topic).await?;
    let partitions = ranges.len();
    let backlog = Arc::new(Backlog::new(ranges, args.members as usize));
    let expected = backlog.expected;
    let group = format!("bench-catchup-{}", wall_us());
    let mut urls = Vec::new();
    for i in 0..args.members {
        let m = format!("m{i}");
        let query = [("group", group.as_str()), ("member", &m), ("from", "earliest"), ("auto_commit", "true")];
        urls.push(super::subscribe_url(base, &args.topic, &query)?);
    }
    eprintln!("reading {expected} records with group `{group}`: {} members from earliest", args.members);

    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let cpu_window = super::super::cpu::Window::from(start, client.clone(), endpoint(base, &["metrics"])?);
    let sockets = futures_util::future::try_join_all(urls.iter().map(|u| connect(u, READ_BUFFER))).await?;
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(member(ws, backlog.clone(), i, stop_rx.clone())))
        .collect();
    let progress = ProgressLines::start({
        let (log, mut last) = (backlog.clone(), 0);
        move |secs| {
            let n = log.unique.load(Relaxed);
            let per: Vec<String> = log.per_member.iter().map(|c| c.load(Relaxed).to_string()).collect();
            let line = format!(
                "read  events/s {:>9.0}  unique {n}/{expected}  duplicates {}  members [{}]",
                (n - last) as f64 / secs,
                log.duplicates.load(Relaxed),
                per.join(" ")
            );
            last = n;
            line
        }
    });

    let deadline = start + Duration::from_secs(args.timeout);
    let (mut last_unique, mut last_change) = (0, Instant::now());
    let interrupt = ctrl_c();
    tokio::pin!(interrupt);
    let outcome = loop {
        tokio::select! {
            () = backlog.done.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = &mut interrupt => break "interrupted",
        }
        let now = Instant::now();
        let unique = backlog.unique.load(Relaxed);
        if backlog.is_complete() {
            break "complete";
        } else if unique != last_unique {
            (last_unique, last_change) = (unique, now);
        } else if now.duration_since(last_change) >= STALL {
            break "stalled (no new record for 30 s)";
        }
        if now >= deadline {
            break "timed out (--timeout)";
        }
        if tasks.iter().all(|t| t.is_finished()) {
            break "every member disconnected";
        }
    };
    let end = backlog.finished.get().copied().unwrap_or_else(Instant::now);
    let cpu = cpu_window.finish(&[("event", backlog.unique.load(Relaxed))]).await;
    drop(progress);
    stop_tx.send_replace(true);
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let joined = tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(1), futures_util::future::join_all(tasks));
    if joined.await.is_err() {
        aborts.iter().for_each(|a| a.abort());
    }

    let secs = end.duration_since(start).as_secs_f64();
    let (unique, frame_bytes) = (backlog.unique.load(Relaxed), backlog.frame_bytes.load(Relaxed));
    let per_member: Vec<u64> = backlog.per_member.iter().map(|c| c.load(Relaxed)).collect();
    let lost = backlog.lost.load(Relaxed);
    let report = Report {
        outcome,
        topic: args.topic.clone(),
        partitions,
        group,
        members: args.members,
        fill: fill_rate,
        expected,
        received: per_member.iter().sum(),
        unique,
        duplicates: backlog.duplicates.load(Relaxed),
        missing: expected.saturating_sub(unique + lost),
        outside_range: backlog.outside.load(Relaxed),
        lost_to_retention: lost,
        duration_s: secs,
        events_per_s: if secs > 0.0 { unique as f64 / secs } else { 0.0 },
        mb_per_s: if secs > 0.0 { frame_bytes as f64 / secs / 1e6 } else { 0.0 },
        per_member,
        machine_cpu: cpu.machine,
        cpu: cpu.cost,
        errors: backlog.errors.load(Relaxed),
        first_error: backlog.first_error.get().cloned(),
    };
    print_report(args.target.json, &report, &report.rows())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_each_offset_once_and_completes() {
        let b = Backlog::new(vec![(10, 75), (0, 0), (0, 3)], 1);
        assert_eq!((b.expected, b.seen[0].len(), b.seen[1].len()), (68, 2, 0));
        assert_eq!(b.mark(0, 10), Mark::New);
        assert_eq!(b.mark(0, 10), Mark::Duplicate);
        assert_eq!(b.mark(0, 74), Mark::New);
        assert_eq!(b.mark(0, 75), Mark::Outside);
        assert_eq!(b.mark(0, 9), Mark::Outside);
        assert_eq!(b.mark(1, 0), Mark::Outside);
        assert_eq!(b.mark(7, 0), Mark::Outside);

        let log = Backlog::new(vec![(10, 75), (0, 0), (0, 3)], 2);
        let frame = |p: u32, offsets: &[u64]| {
            let recs: Vec<String> = offsets.iter().map(|o| format!(r#"{{"offset":{o},"value":{{}}}}"#)).collect();
            format!(r#"{{"type":"records","topic":"t","partition":{p},"records":[{}]}}"#, recs.join(","))
        };
        log.on_frame(0, &frame(2, &[0, 1, 2]));
        log.on_frame(1, &frame(2, &[2, 3]));
        log.on_frame(1, &frame(0, &[10]));
        assert_eq!(log.unique.load(Relaxed), 4);
        assert_eq!((log.duplicates.load(Relaxed), log.outside.load(Relaxed)), (1, 1));
        assert_eq!((log.per_member[0].load(Relaxed), log.per_member[1].load(Relaxed)), (3, 3));
        assert!(!log.is_complete() && log.finished.get().is_none());
        // Retention took 5..75 of partition 0: 11..75 were still expected.
        log.on_frame(1, r#"{"type":"gap","topic":"t","partition":0,"from":5,"to":75}"#);
        assert_eq!(log.lost.load(Relaxed), 64);
        assert!(log.is_complete() && log.finished.get().is_some());
        log.on_frame(0, r#"{"type":"error","code":"closing","detail":"bye"}"#);
        log.on_frame(0, "not json");
        assert_eq!(log.errors.load(Relaxed), 2);
        assert_eq!(log.first_error.get().map(String::as_str), Some("member 0: closing: bye"));
    }
}
