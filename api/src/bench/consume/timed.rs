//! `tidegate bench consume latency` and `fanout`: subscribers from `latest` and an
//! open-loop producer whose events carry their send time.
//!
//! The producer's connections send at fixed, staggered times ([`super::producer::paced`]:
//! a send behind its schedule is stamped with its scheduled time). Each subscriber computes
//! `receive time − sent_us` per record; events stamped before the end of the warm-up
//! are delivered but not counted. `fanout` also samples the server's RSS from `/metrics`
//! before the subscribers open, once they are open and idle, and at the end.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use reqwest::{Client, Url};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::super::cpu::CpuCost;
use super::super::machine::MachineCpu;
use super::super::{
    LatencySummary, ProgressLines, check_http, create_topic, ctrl_c, endpoint, lock, merged, new_histogram,
    print_report, read_rss, setup_client, wall_us,
};
use super::producer::{Clock, Pacing, Posted, paced, producer_client};
use super::{
    CLOSE_TIMEOUT, FanoutArgs, Frame, LatencyArgs, ProducerArgs, Rate, Ws, connect_assigned, read_until,
    records_sent_times, subscribe_url,
};

/// Subscribers share this many latency histograms (one each would cost ~180 KiB apiece).
const HIST_SHARDS: usize = 16;
/// Idle time between opening the subscribers and sampling the server RSS.
const IDLE_WAIT: Duration = Duration::from_secs(2);

/// A latency or fan-out run.
pub(super) struct Plan {
    name: &'static str,
    base: Url,
    topic: String,
    partitions: u32,
    json: bool,
    group: Option<String>,
    subscribers: usize,
    connect_concurrency: usize,
    /// WebSocket read buffer per subscriber.
    read_buffer: usize,
    /// Sample server RSS and report memory per idle subscriber.
    memory: bool,
    rate: f64,
    producer: ProducerArgs,
}

impl Plan {
    /// One subscriber, ephemeral or the only member of `--group`.
    pub(super) fn latency(a: LatencyArgs) -> Self {
        Self {
            name: "latency",
            base: a.target.url,
            topic: a.topic,
            partitions: a.partitions,
            json: a.target.json,
            group: a.group,
            subscribers: 1,
            connect_concurrency: 1,
            read_buffer: 128 << 10,
            memory: false,
            rate: a.rate,
            producer: a.producer,
        }
    }

    /// `--subscribers` ephemeral subscribers with small read buffers.
    pub(super) fn fanout(a: FanoutArgs) -> Self {
        Self {
            name: "fanout",
            base: a.target.url,
            topic: a.topic,
            partitions: a.partitions,
            json: a.target.json,
            group: None,
            subscribers: a.subscribers as usize,
            connect_concurrency: a.connect_concurrency as usize,
            read_buffer: 8 << 10,
            memory: true,
            rate: a.rate,
            producer: a.producer,
        }
    }
}

/// Delivery counts and latencies of every subscriber.
struct Timed {
    /// Records stamped from here on are measured (`u64::MAX` until the producer starts).
    measure_from_us: AtomicU64,
    /// Records stamped from here on belong to this run.
    run_from_us: u64,
    /// Per subscriber: records of this run received.
    received: Vec<AtomicU64>,
    /// Per subscriber: measured records received.
    measured: Vec<AtomicU64>,
    hists: Vec<Arc<Mutex<Histogram<u64>>>>,
    /// Wall-clock µs of the latest delivery of a measured record.
    last_measured_us: AtomicU64,
    errors: AtomicU64,
    first_error: OnceLock<String>,
}

impl Timed {
    fn new(subscribers: usize, run_from_us: u64) -> Result<Self> {
        let counters = || (0..subscribers).map(|_| AtomicU64::new(0)).collect();
        let hists = (0..HIST_SHARDS.min(subscribers)).map(|_| Ok(Arc::new(Mutex::new(new_histogram()?))));
        Ok(Self {
            measure_from_us: AtomicU64::new(u64::MAX),
            run_from_us,
            received: counters(),
            measured: counters(),
            hists: hists.collect::<Result<_>>()?,
            last_measured_us: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: OnceLock::new(),
        })
    }

    fn error(&self, msg: String) {
        self.errors.fetch_add(1, Relaxed);
        let _ = self.first_error.set(msg);
    }

    /// Counts a frame's records received at `now_us` by subscriber `sub`.
    fn on_frame(&self, sub: usize, now_us: u64, text: &str) {
        let Some(sent) = records_sent_times(text) else {
            match serde_json::from_str::<Frame<'_>>(text) {
                Ok(f) if matches!(&*f.kind, "error" | "gap") => {
                    self.error(format!("subscriber {sub}: unexpected {text:.300}"))
                }
                Ok(_) => {}
                Err(e) => self.error(format!("subscriber {sub}: unparsable frame: {e}")),
            }
            return;
        };
        let measure_from = self.measure_from_us.load(Relaxed);
        let sent = sent.filter(|s| *s >= self.run_from_us);
        let (mut received, mut measured) = (0, 0);
        let mut hist = None;
        for sent in sent {
            received += 1;
            if sent >= measure_from {
                measured += 1;
                let h = hist.get_or_insert_with(|| lock(&self.hists[sub % self.hists.len()]));
                h.saturating_record(now_us.saturating_sub(sent).max(1));
            }
        }
        self.received[sub].fetch_add(received, Relaxed);
        if measured > 0 {
            self.measured[sub].fetch_add(measured, Relaxed);
            self.last_measured_us.fetch_max(now_us, Relaxed);
        }
    }

    fn total_received(&self) -> u64 {
        self.received.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// One subscriber: reads until `stop`, then closes.
async fn subscriber(ws: Ws, timed: Arc<Timed>, sub: usize, stop: watch::Receiver<bool>) {
    if let Err(e) = read_until(ws, stop, |text| timed.on_frame(sub, wall_us(), text)).await {
        timed.error(format!("subscriber {sub}: {e}"));
    }
}

/// Server RSS samples of a fan-out run, in bytes.
#[derive(Debug, Serialize)]
struct Memory {
    baseline_bytes: u64,
    idle_bytes: u64,
    end_bytes: Option<u64>,
    /// (idle − baseline) / subscribers.
    per_idle_subscriber_bytes: f64,
}

/// Median of three RSS samples 200 ms apart (damps a one-off allocation or release).
async fn rss_median(client: &Client, url: &Url) -> Option<u64> {
    let mut samples = Vec::new();
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        samples.extend(read_rss(client, url).await);
    }
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied()
}

/// (idle − baseline) / subscribers; negative when the server released memory meanwhile.
fn per_subscriber(baseline: u64, idle: u64, subscribers: usize) -> f64 {
    (idle as f64 - baseline as f64) / subscribers.max(1) as f64
}

/// Final result; latencies in ms; "expected" per subscriber is every acknowledged event.
#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    topic: String,
    subscribers: usize,
    group: Option<String>,
    target_events_per_s: f64,
    batch: u64,
    /// Events posted (acknowledged) in the measured window.
    posted: Rate,
    posted_total: u64,
    failed_requests: u64,
    post_latency: LatencySummary,
    /// Deliveries of measured events, over every subscriber.
    deliveries: u64,
    /// From the start of the measured window to the last of those deliveries (at least
    /// the window: when the server falls behind, delivery takes longer than posting).
    delivery_s: f64,
    deliveries_per_s: f64,
    expected_per_subscriber: u64,
    received_min: u64,
    received_mean: f64,
    received_max: u64,
    subscribers_complete: usize,
    latency: LatencySummary,
    server_memory: Option<Memory>,
    /// The whole machine's CPU during the measured part (load tool included).
    machine_cpu: Option<MachineCpu>,
    /// CPU of the server and of the load tool during the measured part, per delivery.
    cpu: Option<CpuCost>,
    errors: u64,
    first_error: Option<String>,
}

impl Report {
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = vec![
            ("topic".into(), self.topic.clone()),
            ("subscribers".into(), self.subscribers.to_string()),
            ("producer".into(), format!("{} events/s in batches of {}", self.target_events_per_s, self.batch)),
            ("measured".into(), format!("{:.2} s", self.posted.duration_s)),
            ("posted events".into(), format!("{} ({} with the warm-up)", self.posted.events, self.posted_total)),
            ("posted events/s".into(), format!("{:.0}", self.posted.events_per_s)),
            ("failed requests".into(), self.failed_requests.to_string()),
        ];
        rows.extend(self.post_latency.rows("POST latency"));
        rows.push(("deliveries".into(), self.deliveries.to_string()));
        rows.push(("delivery time".into(), format!("{:.2} s", self.delivery_s)));
        rows.push(("deliveries/s".into(), format!("{:.0}", self.deliveries_per_s)));
        rows.push((
            "received/expected".into(),
            format!(
                "min {} mean {:.1} max {} of {} per subscriber; {} of {} complete",
                self.received_min,
                self.received_mean,
                self.received_max,
                self.expected_per_subscriber,
                self.subscribers_complete,
                self.subscribers
            ),
        ));
        rows.extend(self.latency.rows("end-to-end latency"));
        if let Some(m) = &self.server_memory {
            let mib = super::super::mib;
            rows.push(("server RSS baseline".into(), mib(m.baseline_bytes)));
            rows.push(("server RSS idle".into(), mib(m.idle_bytes)));
            rows.push(("server RSS end".into(), m.end_bytes.map_or("n/a".into(), mib)));
            rows.push((
                "server memory per idle subscriber".into(),
                format!("{:.1} KiB", m.per_idle_subscriber_bytes / 1024.0),
            ));
        }
        rows.push(MachineCpu::row(self.machine_cpu));
        rows.extend(CpuCost::rows(self.cpu.as_ref()).map(|(k, v)| (k.to_string(), v)));
        rows.push(("errors".into(), self.errors.to_string()));
        rows.extend(self.first_error.clone().map(|e| ("first error".into(), e)));
        rows
    }
}

/// Opens every subscriber (at most `connect_concurrency` connecting at once). On a
/// failure the opened ones are closed and the error says how many succeeded.
async fn open_subscribers(
    plan: &Plan,
    url: &Url,
    timed: &Arc<Timed>,
    stop_tx: &watch::Sender<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let n = plan.subscribers;
    let permits = Arc::new(Semaphore::new(plan.connect_concurrency));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<()>>();
    let opened = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    for sub in 0..n {
        let (url, timed, stop, read_buffer) = (url.clone(), timed.clone(), stop_tx.subscribe(), plan.read_buffer);
        let (permits, ready, opened) = (permits.clone(), ready_tx.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else { return };
            let ws = connect_assigned(&url, read_buffer).await;
            drop(permit);
            match ws {
                Ok(ws) => {
                    opened.fetch_add(1, Relaxed);
                    let _ = ready.send(Ok(()));
                    subscriber(ws, timed, sub, stop).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(e.context(format!("subscriber {sub}"))));
                }
            }
        }));
    }
    drop(ready_tx);
    let progress = ProgressLines::start({
        let opened = opened.clone();
        move |_| format!("open  subscribers {}/{n}", opened.load(Relaxed))
    });
    let mut failure = None;
    for _ in 0..n {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                failure = Some(e);
                break;
            }
            None => break,
        }
    }
    drop(progress);
    let ok = opened.load(Relaxed);
    if failure.is_none() && ok == n as u64 {
        return Ok(tasks);
    }
    permits.close();
    stop_tx.send_replace(true);
    finish(tasks).await;
    let cause = failure.map_or("a subscriber task ended early".to_string(), |e| format!("{e:#}"));
    bail!(
        "opened {ok} of {n} subscribers, then: {cause}. Each subscriber needs a file descriptor here and one in \
         the server (see `ulimit -n` for both) and a slot of the server's max_subscriptions; retry with fewer \
         --subscribers"
    )
}

/// Waits for tasks to end after their stop signal, aborting stragglers.
async fn finish(tasks: Vec<tokio::task::JoinHandle<()>>) {
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let all = futures_util::future::join_all(tasks);
    if tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(3), all).await.is_err() {
        aborts.iter().for_each(|a| a.abort());
    }
}

/// Runs `tidegate bench consume latency` or `fanout`.
pub(super) async fn run(plan: Plan) -> Result<()> {
    let base = &plan.base;
    check_http(base)?;
    let p = &plan.producer;
    let setup = setup_client()?;
    create_topic(&setup, base, &plan.topic, plan.partitions).await?;
    let (events_url, metrics_url) =
        (endpoint(base, &["v1", "topics", &plan.topic, "events"])?, endpoint(base, &["metrics"])?);
    let mut query = vec![("from", "latest")];
    if let Some(g) = &plan.group {
        query.extend([("group", g.as_str()), ("auto_commit", "true")]);
    }
    let url = subscribe_url(base, &plan.topic, &query)?;
    let baseline = if plan.memory { rss_median(&setup, &metrics_url).await } else { None };
    let timed = Arc::new(Timed::new(plan.subscribers, wall_us())?);
    let (stop_tx, _) = watch::channel(false);
    eprintln!("{}: opening {} subscriber(s) at {url}", plan.name, plan.subscribers);
    let tasks = open_subscribers(&plan, &url, &timed, &stop_tx).await?;
    let idle = if plan.memory {
        tokio::time::sleep(IDLE_WAIT).await;
        rss_median(&setup, &metrics_url).await
    } else {
        None
    };

    eprintln!(
        "producing {} events/s in batches of {} over {} connections; warm-up {} s, run {} s",
        plan.rate, p.batch, p.connections, p.warmup, p.duration
    );
    let interval = Duration::try_from_secs_f64(p.connections as f64 * p.batch as f64 / plan.rate)
        .context("--rate is out of range")?;
    let (clock, start) = (Clock::now(), Instant::now());
    let measure_from = start + Duration::from_secs(p.warmup);
    let end = measure_from + Duration::from_secs(p.duration);
    let measure_from_us = clock.wall_of(measure_from);
    let cpu_window = super::super::cpu::Window::from(measure_from, setup.clone(), metrics_url.clone());
    timed.measure_from_us.store(measure_from_us, Relaxed);
    let pacing = Pacing { batch: p.batch, event_bytes: p.event_bytes, interval, end, clock, measure_from_us };
    let (posted, post_hist) = (Arc::new(Posted::default()), Arc::new(Mutex::new(new_histogram()?)));
    let (halt_tx, _) = watch::channel(false);
    let url = Arc::new(events_url);
    let mut producers = Vec::new();
    for i in 0..p.connections {
        let first = start + interval.mul_f64(i as f64 / p.connections as f64);
        let (client, sinks) = (producer_client()?, (posted.clone(), post_hist.clone()));
        producers.push(tokio::spawn(paced(client, url.clone(), pacing, first, sinks, halt_tx.subscribe())));
    }
    let progress = ProgressLines::start({
        let (timed, posted, (mut last_posted, mut last_received)) = (timed.clone(), posted.clone(), (0, 0));
        move |secs| {
            let (sent, received) = (posted.events.load(Relaxed), timed.total_received());
            let p99 = merged(&timed.hists).map(|h| LatencySummary::of(&h).p99_ms).unwrap_or_default();
            let line = format!(
                "run   posted/s {:>8.0}  delivered/s {:>9.0}  p99 {p99:>8.2} ms  errors {}",
                (sent - last_posted) as f64 / secs,
                (received - last_received) as f64 / secs,
                timed.errors.load(Relaxed) + posted.failed_requests.load(Relaxed),
            );
            (last_posted, last_received) = (sent, received);
            line
        }
    });
    let interrupt = ctrl_c();
    tokio::pin!(interrupt);
    let joined = futures_util::future::join_all(producers);
    tokio::select! {
        _ = joined => {}
        () = &mut interrupt => {
            eprintln!("interrupted: stopping");
            halt_tx.send_replace(true);
        }
    }
    let stopped = Instant::now().min(end);
    let delivered: u64 = timed.measured.iter().map(|c| c.load(Relaxed)).sum();
    let cpu = cpu_window.finish(&[("delivery", delivered)]).await;
    // Drain: until every subscriber has every acknowledged event, or the drain timeout.
    let drain_until = Instant::now() + Duration::from_secs(p.drain);
    let expected = posted.events.load(Relaxed);
    while Instant::now() < drain_until && !*halt_tx.borrow() {
        if timed.received.iter().all(|c| c.load(Relaxed) >= expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(progress);
    let end_rss = if plan.memory { read_rss(&setup, &metrics_url).await } else { None };
    stop_tx.send_replace(true);
    finish(tasks).await;

    let secs = stopped.saturating_duration_since(measure_from).as_secs_f64();
    let last_us = timed.last_measured_us.load(Relaxed);
    let delivery_s = secs.max(last_us.saturating_sub(measure_from_us) as f64 / 1e6);
    let received: Vec<u64> = timed.received.iter().map(|c| c.load(Relaxed)).collect();
    let deliveries: u64 = timed.measured.iter().map(|c| c.load(Relaxed)).sum();
    let server_memory = match (baseline, idle) {
        (Some(b), Some(i)) => Some(Memory {
            baseline_bytes: b,
            idle_bytes: i,
            end_bytes: end_rss,
            per_idle_subscriber_bytes: per_subscriber(b, i, plan.subscribers),
        }),
        _ => None,
    };
    if plan.memory && server_memory.is_none() {
        eprintln!("server RSS unavailable: no process_resident_memory_bytes in {metrics_url}");
    }
    let first_error = timed.first_error.get().or(posted.first_error.get()).cloned();
    let report = Report {
        benchmark: plan.name,
        topic: plan.topic.clone(),
        subscribers: plan.subscribers,
        group: plan.group.clone(),
        target_events_per_s: plan.rate,
        batch: p.batch,
        posted: Rate::new(posted.measured.load(Relaxed), posted.measured_bytes.load(Relaxed), secs),
        posted_total: expected,
        failed_requests: posted.failed_requests.load(Relaxed),
        post_latency: LatencySummary::of(&lock(&post_hist)),
        deliveries,
        delivery_s,
        deliveries_per_s: if delivery_s > 0.0 { deliveries as f64 / delivery_s } else { 0.0 },
        expected_per_subscriber: expected,
        received_min: received.iter().copied().min().unwrap_or(0),
        received_mean: received.iter().sum::<u64>() as f64 / received.len().max(1) as f64,
        received_max: received.iter().copied().max().unwrap_or(0),
        subscribers_complete: received.iter().filter(|r| **r >= expected).count(),
        latency: LatencySummary::of(&merged(&timed.hists)?),
        server_memory,
        machine_cpu: cpu.machine,
        cpu: cpu.cost,
        errors: timed.errors.load(Relaxed),
        first_error,
    };
    print_report(plan.json, &report, &report.rows())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_subscriber_is_signed() {
        assert_eq!(per_subscriber(100 << 20, (100 << 20) + 64_000, 1000), 64.0);
        assert_eq!(per_subscriber(2000, 1000, 10), -100.0);
        assert_eq!(per_subscriber(0, 10, 0), 10.0);
    }

    #[test]
    fn frames_count_run_and_measured_records() {
        let timed = Timed::new(2, 1_000).expect("timed");
        let frame = |sent: &[u64]| {
            let recs: Vec<String> = sent
                .iter()
                .enumerate()
                .map(|(i, s)| format!(r#"{{"offset":{i},"value":{{"sent_us":{s},"pad":"x"}}}}"#))
                .collect();
            format!(r#"{{"type":"records","topic":"t","partition":0,"records":[{}]}}"#, recs.join(","))
        };
        // Before the producer starts nothing is measured; older records are not this run's.
        timed.on_frame(0, 5_000, &frame(&[10, 2_000]));
        assert_eq!((timed.received[0].load(Relaxed), timed.measured[0].load(Relaxed)), (1, 0));
        timed.measure_from_us.store(3_000, Relaxed);
        timed.on_frame(1, 10_000, &frame(&[2_500, 4_000, 6_000]));
        assert_eq!((timed.received[1].load(Relaxed), timed.measured[1].load(Relaxed)), (3, 2));
        assert_eq!((timed.total_received(), timed.last_measured_us.load(Relaxed)), (4, 10_000));
        let h = merged(&timed.hists).expect("merged");
        assert_eq!(h.len(), 2);
        assert!(h.equivalent(h.min(), 4_000) && h.equivalent(h.max(), 6_000), "{} {}", h.min(), h.max());
        timed.on_frame(1, 0, r#"{"type":"gap","topic":"t","partition":0,"from":1,"to":2}"#);
        timed.on_frame(0, 0, r#"{"type":"assignment","generation":0,"partitions":[]}"#);
        assert_eq!(timed.errors.load(Relaxed), 1);
    }
}
