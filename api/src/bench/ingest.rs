//! `tidegate bench ingest` posts batches of tracker events to a running gateway
//! over a fixed number of HTTP/1.1 keep-alive connections, then reports throughput, request
//! latency (HdrHistogram, µs resolution) and the server's resident memory (from `/metrics`).
//!
//! Closed loop by default: each connection sends its next request as soon as the previous
//! one is answered. With `--rate` the test is open loop: sends are scheduled at fixed
//! intervals and a send that falls behind its schedule counts its latency from the scheduled
//! time, so a stalling server cannot hide behind coordinated omission. Throughput and latency
//! count the successful requests sent after the warm-up; errors are counted apart.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Client, StatusCode, Url};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};

use super::conn::Conn;
use super::{
    MAX_LATENCY_US, RSS_GAUGE, Rng, Rss, SECOND, check_http, create_topic, endpoint, lock, merged, mib, parse_rate,
    poll_rss,
};

/// Timeout of one request; the end of a run waits at most this long for in-flight requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Memory budget of the pre-built request bodies (at most 16 distinct bodies).
const MAX_BODY_MEMORY: usize = 64 << 20;

/// Acknowledgement mode requested from the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Wait until the events are durably written.
    All,
    /// Fire and forget (`?acks=none`, answered with 202).
    None,
}

/// Request body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// One JSON array of events (`application/json`).
    Array,
    /// One JSON event per line (`application/x-ndjson`).
    Ndjson,
}

/// Which ingest endpoint the load goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /v1/topics/{topic}/events`.
    Topic,
    /// Segment's batch call `POST /v1/batch` (`{"batch": [...]}`; deduplicated by
    /// `messageId`, so every request carries new ids; topics chosen by `segment_topics`).
    Segment,
}

/// Options of `tidegate bench ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Base URL of the gateway (plain http only).
    #[arg(long, env = "TIDEGATE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: Url,
    /// Topic to write to; created (with --partitions) if it does not exist.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Events per request.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Approximate size in bytes of each JSON event (padded up to it).
    #[arg(long, default_value_t = 200)]
    pub event_bytes: usize,
    /// Concurrent HTTP/1.1 keep-alive connections, each sending sequentially.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// Measured run time in seconds, after the warm-up.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: u64,
    /// Warm-up in seconds: load is sent but not counted.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Acknowledgement mode: `all` waits for durable writes, `none` appends `?acks=none`.
    #[arg(long, value_enum, default_value_t = Acks::All)]
    pub acks: Acks,
    /// Body format: a JSON array or newline-delimited JSON.
    #[arg(long, value_enum, default_value_t = BodyFormat::Array)]
    pub format: BodyFormat,
    /// Distinct keys: each request gets `?record_key=user-<random below N>`; 0 sends no key.
    #[arg(long, default_value_t = 0)]
    pub key_space: u64,
    /// Total requests/s cap, 0 = unlimited (closed loop). When set the test is open loop:
    /// sends are scheduled at fixed intervals and latency counts from the scheduled time.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Endpoint: the topic's events endpoint or Segment's batch call.
    #[arg(long, value_enum, default_value_t = Endpoint::Topic)]
    pub endpoint: Endpoint,
    /// Deduplication on: the topic is created with `event_id = "/messageId"` and every
    /// request carries new ids (so each event is looked up, claimed and remembered).
    #[arg(long)]
    pub dedup: bool,
    /// Print the final report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Bearer token sent with every request; creating the topic needs `admin` on it.
    #[arg(long, env = "TIDEGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Browser write key sent as `X-Write-Key` with every event request (the token, if
    /// any, is then used only to create the topic).
    #[arg(long)]
    pub write_key: Option<String>,
    /// `Origin` header of event requests (for write keys that list origins).
    #[arg(long)]
    pub origin: Option<String>,
}

/// A pre-built request body and the sum of the sizes of its events.
struct Body {
    data: Bytes,
    payload: u64,
    /// Byte positions of each event's 16 hex digits of `messageId` (rewritten per
    /// request when ids must be new).
    id_slots: Vec<usize>,
}

/// Width of the per-request part of a `messageId`, in hex digits.
const ID_DIGITS: usize = 16;

impl Body {
    /// The body with fresh ids `first..first+n` in its `messageId`s.
    fn with_ids(&self, first: u64) -> Bytes {
        let mut data = self.data.to_vec();
        for (k, &at) in self.id_slots.iter().enumerate() {
            let hex = format!("{:016x}", first + k as u64);
            data[at..at + ID_DIGITS].copy_from_slice(hex.as_bytes());
        }
        data.into()
    }
}

/// One tracker event padded to about `event_bytes` (never smaller than its fixed fields).
fn build_event(rng: &mut Rng, message_id: &str, event_bytes: usize) -> Result<Vec<u8>> {
    const NAMES: [&str; 5] = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed", "Page Viewed"];
    let name = NAMES[rng.below(NAMES.len() as u64) as usize];
    let (user, sku) = (format!("u{}", rng.below(1_000_000)), format!("SKU-{:05}", rng.below(99_999)));
    let price = rng.below(100_000) as f64 / 100.0;
    let event = |pad: &str| {
        serde_json::json!({
            "type": "track", "event": name, "userId": user, "messageId": message_id,
            "properties": {"sku": sku, "price": price, "currency": "EUR", "pad": pad},
        })
    };
    let unpadded = serde_json::to_vec(&event(""))?.len();
    Ok(serde_json::to_vec(&event(&"x".repeat(event_bytes.saturating_sub(unpadded))))?)
}

/// How many distinct bodies to pre-build: 16, fewer if they would not fit in [`MAX_BODY_MEMORY`].
fn body_count(batch: u64, event_bytes: usize) -> usize {
    let body_size = usize::try_from(batch).unwrap_or(usize::MAX).saturating_mul(event_bytes.max(150));
    (MAX_BODY_MEMORY / body_size.max(1)).clamp(1, 16)
}

/// [`body_count`] distinct bodies of `batch` events each, every event with a unique
/// `messageId` (`<run id>-<16 hex digits>`). `segment` wraps the events in Segment's
/// batch call (`{"batch": [...], "writeKey": "bench"}`).
fn build_bodies(format: BodyFormat, batch: u64, event_bytes: usize, segment: bool, rng: &mut Rng) -> Result<Vec<Body>> {
    let count = body_count(batch, event_bytes);
    let run_id = format!("{:016x}-", rng.next());
    let mut bodies = Vec::with_capacity(count);
    for b in 0..count as u64 {
        let (mut data, mut payload, mut id_slots) = (Vec::new(), 0, Vec::new());
        if segment {
            data.extend_from_slice(b"{\"writeKey\":\"bench\",\"batch\":");
        }
        for i in 0..batch {
            let id = format!("{run_id}{:016x}", b * batch + i);
            let event = build_event(rng, &id, event_bytes)?;
            payload += event.len() as u64;
            match format {
                BodyFormat::Array => data.push(if i == 0 { b'[' } else { b',' }),
                BodyFormat::Ndjson if i > 0 => data.push(b'\n'),
                BodyFormat::Ndjson => {}
            }
            let at = event.windows(run_id.len()).position(|w| w == run_id.as_bytes()).context("messageId in event")?;
            id_slots.push(data.len() + at + run_id.len());
            data.extend_from_slice(&event);
        }
        data.push(if format == BodyFormat::Array { b']' } else { b'\n' });
        if segment {
            data.push(b'}');
        }
        bodies.push(Body { data: data.into(), payload, id_slots });
    }
    Ok(bodies)
}

const REQUESTS: usize = 0;
const EVENTS: usize = 1;
const BYTES: usize = 2;
const HTTP_ERRORS: usize = 3;
const TRANSPORT_ERRORS: usize = 4;

/// Counters indexed by [`REQUESTS`], [`EVENTS`], [`BYTES`] (payload), [`HTTP_ERRORS`] and
/// [`TRANSPORT_ERRORS`]; only successful requests count as requests/events/bytes.
#[derive(Default)]
struct Tally([AtomicU64; 5]);

impl Tally {
    fn add(&self, i: usize, n: u64) {
        self.0[i].fetch_add(n, Relaxed);
    }
    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Relaxed)
    }
}

/// State shared by the connection workers and the reporter.
struct Shared {
    /// Path and query of the event requests.
    target: String,
    /// `Host` header of the event requests.
    host: String,
    /// Credentials and origin headers of event requests.
    auth: Vec<(&'static str, String)>,
    content_type: &'static str,
    acks_none: bool,
    /// Every request gets new `messageId`s (dedup on, or the Segment endpoint).
    fresh_ids: bool,
    /// Next id for [`Body::with_ids`].
    next_id: AtomicU64,
    key_space: u64,
    batch: u64,
    bodies: Vec<Body>,
    measure_start: Instant,
    /// Everything, warm-up included (progress lines).
    total: Tally,
    /// Requests sent after the warm-up (final report).
    measured: Tally,
    first_error: OnceLock<String>,
}

/// Sends one request and reads the whole response (so the connection is reused).
/// Errors are `(HTTP_ERRORS | TRANSPORT_ERRORS, description)`.
async fn send(conn: &mut Conn, req: Request<Full<Bytes>>, acks_none: bool) -> Result<(), (usize, String)> {
    let (status, body) = conn.send(req).await.map_err(|e| (TRANSPORT_ERRORS, e.to_string()))?;
    match status {
        StatusCode::OK | StatusCode::CREATED => Ok(()),
        StatusCode::ACCEPTED if acks_none => Ok(()),
        _ => Err((HTTP_ERRORS, format!("HTTP {status}: {:.500}", String::from_utf8_lossy(&body)))),
    }
}

/// One connection sending sequentially until `stop`. `schedule` is the next send time and
/// the interval between sends when the test is open loop.
async fn worker(
    mut conn: Conn,
    shared: Arc<Shared>,
    hist: Arc<Mutex<Histogram<u64>>>,
    mut schedule: Option<(Instant, Duration)>,
    mut stop: watch::Receiver<bool>,
    mut rng: Rng,
) {
    while !*stop.borrow() {
        // Latency counts from `scheduled`. Open loop: a send delayed by a slow previous response
        // counts from its scheduled time (no coordinated omission); one that waited for its time
        // counts from the wake-up, so the timer's ~1 ms granularity is not charged to the server.
        let scheduled = match &mut schedule {
            Some((next, interval)) => {
                let at = *next;
                *next += *interval;
                if at <= Instant::now() {
                    at
                } else {
                    tokio::select! {
                        () = sleep_until(at) => Instant::now(),
                        _ = stop.changed() => break,
                    }
                }
            }
            None => Instant::now(),
        };
        let body = &shared.bodies[rng.below(shared.bodies.len() as u64) as usize];
        let data = if shared.fresh_ids {
            body.with_ids(shared.next_id.fetch_add(shared.batch, Relaxed))
        } else {
            body.data.clone()
        };
        let target = if shared.key_space > 0 {
            let sep = if shared.target.contains('?') { '&' } else { '?' };
            format!("{}{sep}record_key=user-{}", shared.target, rng.below(shared.key_space))
        } else {
            shared.target.clone()
        };
        let mut req = Request::post(target).header(HOST, &shared.host).header(CONTENT_TYPE, shared.content_type);
        for (name, value) in &shared.auth {
            req = req.header(*name, value);
        }
        let req = match req.body(Full::new(data)) {
            Ok(req) => req,
            Err(e) => {
                let _ = shared.first_error.set(format!("building the request: {e}"));
                shared.total.add(TRANSPORT_ERRORS, 1);
                break;
            }
        };
        // Counted by send time: an overloaded open-loop run lags its schedule by seconds.
        let measured = Instant::now() >= shared.measure_start;
        let result = send(&mut conn, req, shared.acks_none).await;
        let tallies = [Some(&shared.total), measured.then_some(&shared.measured)];
        match result {
            Ok(()) => {
                for t in tallies.into_iter().flatten() {
                    t.add(REQUESTS, 1);
                    t.add(EVENTS, shared.batch);
                    t.add(BYTES, body.payload);
                }
                if measured {
                    let micros = u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX);
                    lock(&hist).saturating_record(micros.max(1));
                }
            }
            Err((kind, msg)) => {
                tallies.into_iter().flatten().for_each(|t| t.add(kind, 1));
                let _ = shared.first_error.set(msg);
                if kind == TRANSPORT_ERRORS && schedule.is_none() {
                    tokio::time::sleep(Duration::from_millis(10)).await; // no busy loop on a dead server
                }
            }
        }
    }
}

/// Final result; latencies are of successful requests, in ms; MB = 10^6 payload bytes.
#[derive(Debug, Serialize)]
struct Report {
    duration_s: f64,
    requests: u64,
    events: u64,
    requests_per_s: f64,
    events_per_s: f64,
    mb_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    http_errors: u64,
    transport_errors: u64,
    first_error: Option<String>,
    server_rss_bytes: Option<Rss>,
    /// With fresh ids: the server's idempotency memory after the run.
    dedup: Option<DedupFigures>,
    /// The whole machine's CPU during the measured part (load tool included).
    machine_cpu: Option<super::machine::MachineCpu>,
    /// CPU of the server and of the load tool during the measured part.
    cpu: Option<super::cpu::CpuCost>,
}

/// The server's idempotency memory after a run (from `/metrics`).
#[derive(Debug, Clone, Copy, Serialize)]
struct DedupFigures {
    /// Events sent (warm-up included): each one an id remembered.
    ids_sent: u64,
    cache_entries: u64,
    cache_bytes: u64,
    disk_bytes: u64,
    disk_entries: u64,
    disk_bytes_per_id: f64,
    cache_bytes_per_entry: f64,
}

/// Reads the dedup gauges of `/metrics`.
async fn dedup_figures(client: &Client, url: &Url, ids_sent: u64) -> Option<DedupFigures> {
    let text = client.get(url.clone()).send().await.ok()?.text().await.ok()?;
    let gauge = |name: &str| super::parse_gauge(&text, name).map(|v| v as u64);
    let (cache_entries, cache_bytes) = (gauge("tidegate_dedup_cache_entries")?, gauge("tidegate_dedup_cache_bytes")?);
    let (disk_bytes, disk_entries) = (gauge("tidegate_dedup_disk_bytes")?, gauge("tidegate_dedup_disk_entries")?);
    Some(DedupFigures {
        ids_sent,
        cache_entries,
        cache_bytes,
        disk_bytes,
        disk_entries,
        disk_bytes_per_id: disk_bytes as f64 / disk_entries.max(1) as f64,
        cache_bytes_per_entry: cache_bytes as f64 / cache_entries.max(1) as f64,
    })
}

/// Sets `event_id = "/messageId"` on the topic (deduplication on).
async fn set_event_id(client: &Client, base: &Url, topic: &str) -> Result<()> {
    let url = endpoint(base, &["v1", "topics", topic])?;
    let resp = client.patch(url).json(&serde_json::json!({"event_id": "/messageId"})).send().await?;
    if !resp.status().is_success() {
        anyhow::bail!(
            "setting event_id on `{topic}`: HTTP {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    eprintln!("topic `{topic}` deduplicates by /messageId");
    Ok(())
}

impl Report {
    fn new(m: &Tally, hist: &Histogram<u64>, secs: f64, first_error: Option<String>, rss: Option<Rss>) -> Self {
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let q = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Self {
            duration_s: secs,
            requests: m.get(REQUESTS),
            events: m.get(EVENTS),
            requests_per_s: rate(m.get(REQUESTS)),
            events_per_s: rate(m.get(EVENTS)),
            mb_per_s: rate(m.get(BYTES)) / 1e6,
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: hist.max() as f64 / 1000.0,
            http_errors: m.get(HTTP_ERRORS),
            transport_errors: m.get(TRANSPORT_ERRORS),
            first_error,
            server_rss_bytes: rss,
            dedup: None,
            machine_cpu: None,
            cpu: None,
        }
    }

    fn table(&self) -> String {
        let ms = |v: f64| format!("{v:.3} ms");
        let mut rows = vec![
            ("duration", format!("{:.2} s", self.duration_s)),
            ("requests", self.requests.to_string()),
            ("events", self.events.to_string()),
            ("requests/s", format!("{:.0}", self.requests_per_s)),
            ("events/s", format!("{:.0}", self.events_per_s)),
            ("MB/s (payload)", format!("{:.2}", self.mb_per_s)),
            ("latency p50", ms(self.p50_ms)),
            ("latency p90", ms(self.p90_ms)),
            ("latency p99", ms(self.p99_ms)),
            ("latency p99.9", ms(self.p999_ms)),
            ("latency max", ms(self.max_ms)),
            ("errors (HTTP)", self.http_errors.to_string()),
            ("errors (transport)", self.transport_errors.to_string()),
        ];
        rows.extend(self.first_error.clone().map(|e| ("first error", e)));
        rows.push(("machine CPU", super::machine::MachineCpu::describe(self.machine_cpu)));
        rows.extend(super::cpu::CpuCost::rows(self.cpu.as_ref()));
        match self.server_rss_bytes {
            Some(r) => rows.extend([
                ("server RSS first", mib(r.first)),
                ("server RSS min", mib(r.min)),
                ("server RSS max", mib(r.max)),
                ("server RSS last", mib(r.last)),
            ]),
            None => rows.push(("server RSS", format!("n/a (no {RSS_GAUGE} in /metrics)"))),
        }
        if let Some(d) = self.dedup {
            rows.extend([
                ("ids sent", d.ids_sent.to_string()),
                (
                    "dedup cache",
                    format!(
                        "{} entries, {} ({:.0} B/entry)",
                        d.cache_entries,
                        mib(d.cache_bytes),
                        d.cache_bytes_per_entry
                    ),
                ),
                (
                    "dedup disk",
                    format!("~{} entries, {} ({:.1} B/id)", d.disk_entries, mib(d.disk_bytes), d.disk_bytes_per_id),
                ),
            ]);
        }
        rows.iter().map(|(k, v)| format!("{k:<20}{v}\n")).collect()
    }
}

/// Prints one progress line per second to stderr (plus a progress bar on a terminal) until
/// `end` or Ctrl-C, and returns the instant it stopped.
async fn progress(
    secs: u64,
    start: Instant,
    end: Instant,
    shared: &Shared,
    hists: &[Arc<Mutex<Histogram<u64>>>],
    rss: &Mutex<Option<Rss>>,
) -> Result<Instant> {
    let pb = ProgressBar::new(secs);
    pb.set_style(ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} s {msg}")?);
    pb.enable_steady_tick(Duration::from_millis(100));
    let say = |line: String| if pb.is_hidden() { eprintln!("{line}") } else { pb.println(line) };
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(ctrl_c);
    let mut tick = interval_at(start + SECOND, SECOND);
    let (mut last_at, mut last_events, mut last_bytes) = (start, 0, 0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut ctrl_c => {
                say("interrupted: stopping".into());
                break;
            }
        }
        let (now, t) = (Instant::now(), &shared.total);
        let (events, bytes) = (t.get(EVENTS), t.get(BYTES));
        let per_s = now.duration_since(last_at).as_secs_f64().max(1e-3);
        let hist = merged(hists)?;
        let p99 = if hist.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2} ms", hist.value_at_quantile(0.99) as f64 / 1e3)
        };
        let rss = lock(rss).map_or("-".to_string(), |r| mib(r.last));
        let phase = if last_at < shared.measure_start { "warmup" } else { "run" };
        let elapsed = now.duration_since(start).as_secs();
        say(format!(
            "[{elapsed:>4}s] {phase:<6} events/s {:>9.0}  MB/s {:>7.2}  p99 {p99:>9}  errors {}  rss {rss}",
            (events - last_events) as f64 / per_s,
            (bytes - last_bytes) as f64 / per_s / 1e6,
            t.get(HTTP_ERRORS) + t.get(TRANSPORT_ERRORS),
        ));
        pb.set_position(elapsed);
        pb.set_message(phase);
        (last_at, last_events, last_bytes) = (now, events, bytes);
        if now >= end {
            break;
        }
    }
    pb.finish_and_clear();
    Ok(Instant::now())
}

/// Runs `tidegate bench ingest`.
pub(super) async fn ingest(args: IngestArgs) -> Result<()> {
    let base = &args.url;
    check_http(base)?;
    let segment = args.endpoint == Endpoint::Segment;
    if segment && (args.format == BodyFormat::Ndjson || args.acks == Acks::None || args.key_space > 0) {
        anyhow::bail!(
            "--endpoint segment posts JSON batches with acks: drop --format ndjson, --acks none, --key-space"
        );
    }
    let mut events_url = if segment {
        endpoint(base, &["v1", "batch"])?
    } else {
        endpoint(base, &["v1", "topics", &args.topic, "events"])?
    };
    if args.acks == Acks::None {
        events_url.query_pairs_mut().append_pair("acks", "none");
    }
    let metrics_url = endpoint(base, &["metrics"])?;
    let rate = (args.rate > 0.0).then_some(args.rate);
    let interval = rate.map(|r| Duration::try_from_secs_f64(args.connections as f64 / r));
    let interval = interval.transpose().context("--rate is out of range")?;
    let mut setup_headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &args.token {
        setup_headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().context("--token")?);
    }
    let setup = crate::tls::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .default_headers(setup_headers)
        .build()
        .context("building HTTP client")?;
    if segment {
        // Segment events go to the topics `segment_topics` picks: create segment.track.
        create_topic(&setup, base, "segment.track", args.partitions).await?;
    } else {
        create_topic(&setup, base, &args.topic, args.partitions).await?;
        if args.dedup {
            set_event_id(&setup, base, &args.topic).await?;
        }
    }

    let bodies = build_bodies(args.format, args.batch, args.event_bytes, segment, &mut Rng::new(u64::MAX))?;
    eprintln!(
        "{} ({}dedup): {} connections, {} events of ~{} B per request ({}, acks {}), {}; warm-up {} s, run {} s",
        format!("{:?}", args.endpoint).to_lowercase(),
        if segment || args.dedup { "" } else { "no " },
        args.connections,
        args.batch,
        args.event_bytes,
        format!("{:?}", args.format).to_lowercase(),
        format!("{:?}", args.acks).to_lowercase(),
        rate.map_or("closed loop".to_string(), |r| format!("open loop at {r} req/s")),
        args.warmup,
        args.duration,
    );

    let rss = Arc::new(Mutex::new(None));
    poll_rss(&setup, &metrics_url, &rss).await;
    let poller = tokio::spawn({
        let (client, url, rss) = (setup.clone(), metrics_url.clone(), rss.clone());
        async move {
            let mut tick = interval_at(Instant::now() + SECOND, SECOND);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                poll_rss(&client, &url, &rss).await;
            }
        }
    });

    let start = Instant::now();
    let measure_start = start.checked_add(Duration::from_secs(args.warmup)).context("--warmup too large")?;
    let end = measure_start.checked_add(Duration::from_secs(args.duration)).context("--duration too large")?;
    let cpu_window = super::cpu::Window::from(measure_start, setup.clone(), metrics_url.clone());
    let mut auth = Vec::new();
    match (&args.write_key, &args.token) {
        (Some(key), _) => auth.push(("x-write-key", key.clone())),
        (None, Some(token)) => auth.push(("authorization", format!("Bearer {token}"))),
        (None, None) => {}
    }
    if let Some(origin) = &args.origin {
        auth.push(("origin", origin.clone()));
    }
    let addr = *events_url
        .socket_addrs(|| None)
        .context("resolving --url")?
        .first()
        .context("--url resolves to no address")?;
    let host = match events_url.port() {
        Some(port) => format!("{}:{port}", events_url.host_str().unwrap_or_default()),
        None => events_url.host_str().unwrap_or_default().to_string(),
    };
    let target = match events_url.query() {
        Some(query) => format!("{}?{query}", events_url.path()),
        None => events_url.path().to_string(),
    };
    let shared = Arc::new(Shared {
        target,
        host,
        auth,
        content_type: match args.format {
            BodyFormat::Array => "application/json",
            BodyFormat::Ndjson => "application/x-ndjson",
        },
        acks_none: args.acks == Acks::None,
        fresh_ids: segment || args.dedup,
        next_id: AtomicU64::new(1 << 40),
        key_space: args.key_space,
        batch: args.batch,
        bodies,
        measure_start,
        total: Tally::default(),
        measured: Tally::default(),
        first_error: OnceLock::new(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (mut hists, mut workers) = (Vec::new(), Vec::new());
    for i in 0..args.connections {
        let conn = Conn::new(addr, REQUEST_TIMEOUT);
        let hist = Arc::new(Mutex::new(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?));
        // Open loop: the connections' schedules are staggered evenly over one interval.
        let schedule = interval.map(|iv| (start + iv.mul_f64(i as f64 / args.connections as f64), iv));
        let task = worker(conn, shared.clone(), hist.clone(), schedule, stop_rx.clone(), Rng::new(i));
        workers.push(tokio::spawn(task));
        hists.push(hist);
    }

    let stopped_at = progress(args.warmup + args.duration, start, end, &shared, &hists, &rss).await?;
    let (requests, events) = (shared.measured.get(REQUESTS), shared.measured.get(EVENTS));
    let cpu = cpu_window.finish(&[("request", requests), ("event", events)]).await;
    stop_tx.send_replace(true);
    let aborts: Vec<_> = workers.iter().map(|w| w.abort_handle()).collect();
    let drained = tokio::select! {
        r = tokio::time::timeout(REQUEST_TIMEOUT + SECOND, futures_util::future::join_all(workers)) => r.ok(),
        _ = tokio::signal::ctrl_c() => None,
    };
    aborts.iter().for_each(|a| a.abort());
    poller.abort();
    match drained {
        Some(results) => results.into_iter().try_for_each(|r| r.context("bench worker panicked"))?,
        None => eprintln!("gave up waiting for in-flight requests"),
    }
    poll_rss(&setup, &metrics_url, &rss).await;

    let secs = stopped_at.saturating_duration_since(measure_start).as_secs_f64();
    let first_error = shared.first_error.get().cloned();
    let mut report = Report::new(&shared.measured, &merged(&hists)?, secs, first_error, *lock(&rss));
    (report.machine_cpu, report.cpu) = (cpu.machine, cpu.cost);
    if segment || args.dedup {
        report.dedup = dedup_figures(&setup, &metrics_url, shared.total.get(EVENTS)).await;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::BenchCommand;
    use super::*;
    use serde_json::Value;

    fn parse(args: &[&str]) -> Result<IngestArgs, clap::Error> {
        let argv: Vec<&str> = ["ingest"].iter().chain(args).copied().collect();
        match super::super::cli_test::parse(&argv)? {
            BenchCommand::Ingest(a) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn cli_defaults_and_validation() {
        super::super::cli_test::debug_assert();
        let a = parse(&[]).expect("defaults parse");
        assert_eq!((a.topic.as_str(), a.partitions, a.batch, a.event_bytes), ("bench", 6, 100, 200));
        assert_eq!((a.connections, a.duration, a.warmup, a.key_space), (64, 30, 2, 0));
        assert_eq!((a.acks, a.format, a.rate, a.json), (Acks::All, BodyFormat::Array, 0.0, false));
        let a = parse(&["--acks", "none", "--format", "ndjson", "--rate", "50.5", "--json"]).expect("parse");
        assert_eq!((a.acks, a.format, a.rate, a.json), (Acks::None, BodyFormat::Ndjson, 50.5, true));
        for bad in [["--rate", "-1"], ["--rate", "inf"], ["--batch", "0"], ["--connections", "0"]] {
            assert!(parse(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn array_bodies_hold_sized_unique_events() {
        let bodies = build_bodies(BodyFormat::Array, 10, 200, false, &mut Rng::new(7)).expect("bodies");
        assert_eq!(bodies.len(), 16);
        let mut ids = std::collections::HashSet::new();
        for body in &bodies {
            let events: Vec<Value> = serde_json::from_slice(&body.data).expect("a JSON array");
            assert_eq!(events.len(), 10);
            let sizes: Vec<usize> = events.iter().map(|e| e.to_string().len()).collect();
            assert_eq!(sizes, [200; 10], "events padded to --event-bytes");
            assert_eq!(body.payload, 2000);
            for e in &events {
                assert_eq!(e["type"], "track");
                assert!(ids.insert(e["messageId"].as_str().expect("messageId").to_string()));
            }
        }
    }

    #[test]
    fn ndjson_bodies_hold_one_event_per_line() {
        let bodies = build_bodies(BodyFormat::Ndjson, 5, 1000, false, &mut Rng::new(1)).expect("bodies");
        for body in &bodies {
            let text = std::str::from_utf8(&body.data).expect("utf-8");
            assert!(text.ends_with('\n'));
            assert_eq!(text.lines().count(), 5);
            for line in text.lines() {
                assert_eq!(line.len(), 1000);
                let v: Value = serde_json::from_str(line).expect("a JSON line");
                assert!(v["properties"]["sku"].is_string());
            }
        }
        // Smaller than the fixed fields: no padding, still valid JSON.
        let tiny = build_bodies(BodyFormat::Ndjson, 1, 10, false, &mut Rng::new(2)).expect("bodies");
        let v: Value = serde_json::from_slice(&tiny[0].data).expect("valid JSON");
        assert_eq!(v["properties"]["pad"], "");
    }

    #[test]
    fn segment_bodies_get_fresh_ids_per_request() {
        let bodies = build_bodies(BodyFormat::Array, 3, 200, true, &mut Rng::new(3)).expect("bodies");
        let call: Value = serde_json::from_slice(&bodies[0].data).expect("a JSON object");
        assert_eq!(call["writeKey"], "bench");
        assert_eq!(call["batch"].as_array().map(Vec::len), Some(3));
        let fresh: Value = serde_json::from_slice(&bodies[0].with_ids(0xabc)).expect("still JSON");
        let ids: Vec<&str> =
            fresh["batch"].as_array().unwrap().iter().map(|e| e["messageId"].as_str().unwrap()).collect();
        assert!(ids[0].ends_with("0000000000000abc") && ids[2].ends_with("0000000000000abe"), "{ids:?}");
        assert_eq!(ids[0][..17], ids[1][..17], "same run prefix");
    }

    #[test]
    fn body_count_fits_the_memory_budget() {
        assert_eq!(body_count(100, 200), 16);
        assert_eq!(body_count(10_000, 1_000), 6);
        assert_eq!(body_count(100_000, 1_000), 1);
        assert_eq!(body_count(u64::MAX, usize::MAX), 1);
    }
}
