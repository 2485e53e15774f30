//! Load tools: `tidegate bench ...` measures a running gateway from the outside.
//!
//! - [`ingest`]: `bench ingest` posts batches of events over HTTP/1.1 keep-alive
//!   connections and reports throughput and request latency.
//! - [`consume`]: `bench consume catchup|latency|fanout` reads over the WebSocket
//!   subscription protocol and reports read throughput, end-to-end latency, and the
//!   server's memory per subscriber.
//!
//! This module holds what the tools share: the command enum, Prometheus gauge parsing
//! (server RSS from `/metrics`), latency histogram summaries, topic creation, progress
//! lines, report printing, and the CPU a run used: the machine's shares ([`machine`]) and
//! the server's and load tool's cost ([`cpu`]), sampled by one window per run.

mod conn;
pub mod consume;
mod cpu;
pub mod ingest;
mod machine;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use hdrhistogram::Histogram;
use reqwest::{Client, StatusCode, Url};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

pub use consume::{CatchupArgs, ConsumeCommand, FanoutArgs, LatencyArgs};
pub use ingest::{Acks, BodyFormat, Endpoint, IngestArgs};

/// Prometheus gauge read from `GET {url}/metrics`.
const RSS_GAUGE: &str = "process_resident_memory_bytes";
/// Highest latency the histograms track, in µs (larger values are clamped).
const MAX_LATENCY_US: u64 = 3_600_000_000;
const SECOND: Duration = Duration::from_secs(1);

/// Arguments of `tidegate bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Post events to a running gateway and report throughput and latency.
    Ingest(IngestArgs),
    /// Consume from a running gateway over WebSocket: catch-up rate, latency, fan-out.
    #[command(subcommand)]
    Consume(ConsumeCommand),
}

/// Test support: `tidegate bench <args>` parsed as the command line would.
#[cfg(test)]
pub(crate) mod cli_test {
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: super::BenchCommand,
    }

    /// Parses `tidegate bench <args>`.
    pub(crate) fn parse(args: &[&str]) -> Result<super::BenchCommand, clap::Error> {
        Ok(Cli::try_parse_from(["tidegate"].iter().chain(args))?.cmd)
    }

    /// clap's own consistency checks of the `bench` command line.
    pub(crate) fn debug_assert() {
        Cli::command().debug_assert();
    }
}

/// Runs a `tidegate bench` subcommand to completion.
pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Ingest(args) => ingest::ingest(args).await,
        BenchCommand::Consume(cmd) => consume::run(cmd).await,
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("`{s}` is not a non-negative number")),
    }
}

/// Microseconds since the Unix epoch (wall clock; the latency tools compare two
/// readings taken in this process).
fn wall_us() -> u64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    u64::try_from(now.unwrap_or_default().as_micros()).unwrap_or(u64::MAX)
}

/// xorshift64*: enough randomness for picking bodies, keys and field values.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
        Self((now.unwrap_or_default().as_nanos() as u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Value of the first sample of `name` (labels allowed) in Prometheus text format.
fn parse_gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(name)?;
        let rest = match rest.strip_prefix('{') {
            Some(labelled) => labelled.split_once('}')?.1,
            None => rest,
        };
        rest.starts_with([' ', '\t']).then(|| rest.split_whitespace().next()?.parse().ok())?
    })
}

/// `base` with `segments` appended (percent-encoded) to its path.
fn endpoint(base: &Url, segments: &[&str]) -> Result<Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| anyhow!("{base} cannot be used as a base URL"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Refuses anything but a plain `http://` base URL (the load tools do not measure TLS).
fn check_http(base: &Url) -> Result<()> {
    if base.scheme() != "http" {
        bail!("--url must be an http:// URL (the load tools speak plain HTTP only), got {base}");
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// First, lowest, highest and last server RSS sample, in bytes.
#[derive(Debug, Clone, Copy, Serialize)]
struct Rss {
    first: u64,
    min: u64,
    max: u64,
    last: u64,
}

fn update_rss(slot: &Mutex<Option<Rss>>, v: u64) {
    let mut slot = lock(slot);
    let r = slot.get_or_insert(Rss { first: v, min: v, max: v, last: v });
    (r.min, r.max, r.last) = (r.min.min(v), r.max.max(v), v);
}

/// One sample of the server RSS gauge; `None` when unavailable.
async fn read_rss(client: &Client, url: &Url) -> Option<u64> {
    let resp = client.get(url.clone()).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let text = resp.text().await.unwrap_or_default();
    parse_gauge(&text, RSS_GAUGE).filter(|v| v.is_finite() && *v >= 0.0).map(|v| v as u64)
}

/// Samples the server RSS gauge into `slot`; silently skipped when unavailable.
async fn poll_rss(client: &Client, url: &Url, slot: &Mutex<Option<Rss>>) {
    if let Some(v) = read_rss(client, url).await {
        update_rss(slot, v);
    }
}

/// HTTP client for setup calls (topic creation, descriptions, `/metrics`).
fn setup_client() -> Result<Client> {
    crate::tls::client_builder().no_proxy().timeout(Duration::from_secs(10)).build().context("building HTTP client")
}

async fn create_topic(client: &Client, base: &Url, topic: &str, partitions: u32) -> Result<()> {
    let url = endpoint(base, &["v1", "topics"])?;
    let resp = client
        .post(url.clone())
        .json(&serde_json::json!({"name": topic, "partitions": partitions}))
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway: POST {url}"))?;
    match resp.status() {
        StatusCode::CREATED => eprintln!("created topic `{topic}` with {partitions} partitions"),
        StatusCode::CONFLICT => eprintln!("topic `{topic}` already exists"),
        status => bail!("creating topic `{topic}`: HTTP {status}: {}", resp.text().await.unwrap_or_default()),
    }
    Ok(())
}

/// An empty latency histogram (µs, 1 µs to an hour, 3 significant digits).
fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("creating a latency histogram")
}

fn merged(hists: &[Arc<Mutex<Histogram<u64>>>]) -> Result<Histogram<u64>> {
    let mut all = new_histogram()?;
    for h in hists {
        all.add(&*lock(h)).context("merging latency histograms")?;
    }
    Ok(all)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Summary of a latency histogram recorded in µs, reported in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
struct LatencySummary {
    samples: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

impl LatencySummary {
    fn of(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        let q = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Self {
            samples: hist.len(),
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: hist.max() as f64 / 1000.0,
            mean_ms: hist.mean() / 1000.0,
        }
    }

    /// Report rows named `{what} p50` and so on.
    fn rows(&self, what: &str) -> Vec<(String, String)> {
        if self.samples == 0 {
            return vec![(what.to_string(), "n/a (no samples)".into())];
        }
        let ms = |v: f64| format!("{v:.3} ms");
        vec![
            (format!("{what} p50"), ms(self.p50_ms)),
            (format!("{what} p90"), ms(self.p90_ms)),
            (format!("{what} p99"), ms(self.p99_ms)),
            (format!("{what} p99.9"), ms(self.p999_ms)),
            (format!("{what} max"), ms(self.max_ms)),
            (format!("{what} samples"), self.samples.to_string()),
        ]
    }
}

/// Prints `report` as one JSON line, or `rows` as an aligned two-column table.
fn print_report<T: Serialize>(json: bool, report: &T, rows: &[(String, String)]) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report).context("encoding the report")?);
    } else {
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
        rows.iter().for_each(|(k, v)| println!("{k:<width$}{v}"));
    }
    Ok(())
}

/// A task printing one progress line per second to stderr; stops when dropped.
struct ProgressLines(JoinHandle<()>);

impl ProgressLines {
    /// `line(seconds since the last line)` builds each line (after the elapsed time).
    fn start(mut line: impl FnMut(f64) -> String + Send + 'static) -> Self {
        let start = Instant::now();
        Self(tokio::spawn(async move {
            let mut tick = interval_at(start + SECOND, SECOND);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut last = start;
            loop {
                tick.tick().await;
                let now = Instant::now();
                let text = line(now.duration_since(last).as_secs_f64().max(1e-3));
                eprintln!("[{:>4}s] {text}", now.duration_since(start).as_secs());
                last = now;
            }
        }))
    }
}

impl Drop for ProgressLines {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves on Ctrl-C; never when the signal cannot be watched.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// An HTTP client that keeps exactly one HTTP/1.1 keep-alive connection (one per
/// simulated producer), with no proxy and the given request timeout.
pub(crate) fn one_connection_client(timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    crate::tls::client_builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .context("building HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_gauge() {
        let text = "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes_total 1\n\
                    process_resident_memory_bytes 123456789\n";
        assert_eq!(parse_gauge(text, RSS_GAUGE), Some(123_456_789.0));
        assert_eq!(parse_gauge("process_resident_memory_bytes 1.5e8 1700000000", RSS_GAUGE), Some(1.5e8));
        assert_eq!(parse_gauge("process_resident_memory_bytes{pid=\"1\"} 42", RSS_GAUGE), Some(42.0));
        assert_eq!(parse_gauge("other_metric 5\n", RSS_GAUGE), None);
        assert_eq!(parse_gauge("process_resident_memory_bytes abc", RSS_GAUGE), None);
        assert_eq!(parse_gauge("", RSS_GAUGE), None);
    }

    #[test]
    fn rss_tracks_first_min_max_last() {
        let slot = Mutex::new(None);
        [300, 100, 500, 200].into_iter().for_each(|v| update_rss(&slot, v));
        let r = slot.into_inner().expect("lock").expect("samples");
        assert_eq!((r.first, r.min, r.max, r.last), (300, 100, 500, 200));
    }

    #[test]
    fn endpoints_extend_the_base_path() {
        let url = |s: &str| Url::parse(s).expect("url");
        let e = endpoint(&url("http://h:1"), &["v1", "topics", "a b", "events"]).expect("endpoint");
        assert_eq!(e.as_str(), "http://h:1/v1/topics/a%20b/events");
        let e = endpoint(&url("http://h:1/gw/"), &["metrics"]).expect("endpoint");
        assert_eq!(e.as_str(), "http://h:1/gw/metrics");
        assert!(check_http(&url("https://h")).is_err());
        assert!(check_http(&url("http://h")).is_ok());
    }

    #[test]
    fn latency_summary_in_ms() {
        let mut h = new_histogram().expect("histogram");
        assert_eq!(LatencySummary::of(&h), LatencySummary::default());
        assert_eq!(LatencySummary::default().rows("latency").len(), 1);
        for us in 1..=1000 {
            h.record(us).expect("record");
        }
        let s = LatencySummary::of(&h);
        assert_eq!((s.samples, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms), (1000, 0.5, 0.9, 0.99, 0.999, 1.0));
        assert!((s.mean_ms - 0.5005).abs() < 1e-9, "{s:?}");
        let rows = s.rows("e2e");
        assert_eq!(rows[2], ("e2e p99".to_string(), "0.990 ms".to_string()));
    }

    #[test]
    fn wall_clock_is_in_microseconds() {
        let us = wall_us();
        assert!(us > 1_600_000_000_000_000 && us < 4_000_000_000_000_000, "{us}");
    }
}
