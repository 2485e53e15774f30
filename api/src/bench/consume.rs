//! `tidegate bench consume ...`: consumer benchmarks over the WebSocket subscription
//! protocol (docs/websocket.md), one tokio-tungstenite connection per subscriber.
//!
//! - `catchup` (module `catchup`): fills the topic to N records if it holds fewer, then
//!   a fresh consumer group reads the whole backlog from `earliest`; reports the read
//!   rate and checks that every record arrived exactly once (duplicates and misses are
//!   counted).
//! - `latency` and `fanout` (module `timed`): subscribers from `latest` and an open-loop
//!   producer at a fixed rate. Every event carries its send time (`sent_us`, µs since the
//!   epoch); latency is the receive time minus that, so it covers the whole path (HTTP
//!   ingest, durable append, delivery). `fanout` also samples the server's RSS to report
//!   its memory per idle subscriber.
//!
//! Module `producer` is the HTTP side (stamped events, the paced producer); this module
//! holds the options, the WebSocket client and the frame parser. Every phase is bounded:
//! producers stop at the end of the run, readers get a drain timeout, and connects and
//! closes have their own timeouts.

mod catchup;
mod producer;
mod timed;

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message, protocol::WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{endpoint, parse_rate};

/// Timeout of a WebSocket connect (TCP and upgrade), and again of the first `assignment` frame.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a subscriber waits for the server's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One subscriber's WebSocket.
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `tidegate bench consume ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConsumeCommand {
    /// Read a backlog of N records with a fresh consumer group; report events/s and
    /// check every record arrives exactly once.
    Catchup(CatchupArgs),
    /// End-to-end latency (POST to WebSocket delivery) of one subscriber at a fixed rate.
    Latency(LatencyArgs),
    /// Many subscribers of one topic: deliveries/s, latency and server memory per subscriber.
    Fanout(FanoutArgs),
}

/// Options every consume benchmark takes.
#[derive(Debug, Args)]
pub struct Target {
    /// Base URL of the gateway (plain http only; WebSockets use ws:// on the same address).
    #[arg(long, env = "TIDEGATE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: Url,
    /// Print the final report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `tidegate bench consume catchup`.
#[derive(Debug, Args)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub target: Target,
    /// Topic to read; created (with --partitions) and filled up to --events if needed.
    #[arg(long, default_value = "bench-catchup")]
    pub topic: String,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Records the topic must hold before the read starts (all of them are read).
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Size in bytes of each event posted to fill the topic.
    #[arg(long, default_value_t = 200)]
    pub event_bytes: usize,
    /// Members of the consumer group, one WebSocket each.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub members: u64,
    /// Events per request while filling the topic.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub fill_batch: u64,
    /// HTTP connections while filling the topic.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub fill_connections: u64,
    /// Pause in seconds between filling and reading, so the read does not compete with the
    /// server's background flush of what was just written.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub settle: u64,
    /// Give up reading after this many seconds (the report says what was missing).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

/// Producer options shared by `latency` and `fanout`.
#[derive(Debug, Args)]
pub struct ProducerArgs {
    /// Events per request.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// HTTP/1.1 keep-alive connections of the producer, with staggered schedules.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub connections: u64,
    /// Size in bytes of each event (`{"sent_us":…,"pad":"…"}`).
    #[arg(long, default_value_t = 200)]
    pub event_bytes: usize,
    /// Measured run time in seconds, after the warm-up.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,
    /// Warm-up in seconds: events are posted and delivered but not counted.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub warmup: u64,
    /// After the producer stops, wait at most this many seconds for deliveries.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub drain: u64,
}

/// Options of `tidegate bench consume latency`.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub target: Target,
    /// Topic to post to and subscribe to; created (with --partitions) if needed.
    #[arg(long, default_value = "bench-latency")]
    pub topic: String,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Subscribe as the only member of this consumer group instead of ephemerally.
    #[arg(long)]
    pub group: Option<String>,
    /// Events posted per second (open loop: fixed send times).
    #[arg(long, default_value_t = 10_000.0, value_parser = parse_positive_rate)]
    pub rate: f64,
    #[command(flatten)]
    pub producer: ProducerArgs,
}

/// Options of `tidegate bench consume fanout`.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: Target,
    /// Topic to post to and subscribe to; created (with --partitions) if needed.
    #[arg(long, default_value = "bench-fanout")]
    pub topic: String,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Ephemeral subscribers, one WebSocket each (this process needs a file descriptor
    /// per subscriber, and so does the server).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub subscribers: u64,
    /// Subscribers connecting at the same time while opening.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub connect_concurrency: u64,
    /// Events posted per second (open loop: fixed send times).
    #[arg(long, default_value_t = 1_000.0, value_parser = parse_positive_rate)]
    pub rate: f64,
    #[command(flatten)]
    pub producer: ProducerArgs,
}

/// Runs a `tidegate bench consume` subcommand to completion.
pub(super) async fn run(cmd: ConsumeCommand) -> Result<()> {
    match cmd {
        ConsumeCommand::Catchup(args) => catchup::run(args).await,
        ConsumeCommand::Latency(args) => timed::run(timed::Plan::latency(args)).await,
        ConsumeCommand::Fanout(args) => timed::run(timed::Plan::fanout(args)).await,
    }
}

fn parse_positive_rate(s: &str) -> Result<f64, String> {
    match parse_rate(s)? {
        r if r > 0.0 => Ok(r),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

/// `ws://…/v1/topics/{topic}/subscribe?…` on the gateway at `base` (an http:// URL).
fn subscribe_url(base: &Url, topic: &str, query: &[(&str, &str)]) -> Result<Url> {
    let mut url = endpoint(base, &["v1", "topics", topic, "subscribe"])?;
    if url.set_scheme("ws").is_err() {
        bail!("cannot derive a ws:// URL from {base}");
    }
    url.query_pairs_mut().extend_pairs(query);
    Ok(url)
}

/// Opens a subscription; a refused upgrade reports the server's status and problem body.
async fn connect(url: &Url, read_buffer: usize) -> Result<Ws> {
    let config = WebSocketConfig::default().read_buffer_size(read_buffer).write_buffer_size(0);
    let connecting = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => bail!("connecting {url}: no answer within {CONNECT_TIMEOUT:?}"),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            bail!("connecting {url}: HTTP {}: {body:.300}", resp.status())
        }
        Ok(Err(e)) => Err(e).with_context(|| format!("connecting {url}")),
    }
}

/// Connects and waits for the first `assignment` frame, so positions from `latest` are
/// fixed before anything is produced.
async fn connect_assigned(url: &Url, read_buffer: usize) -> Result<Ws> {
    let mut ws = connect(url, read_buffer).await?;
    let first = tokio::time::timeout(CONNECT_TIMEOUT, async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(text) = msg.context("reading the first frame")? {
                let frame: Frame<'_> = serde_json::from_str(&text).context("parsing the first frame")?;
                match &*frame.kind {
                    "assignment" => return Ok(()),
                    "error" => bail!("server error: {}", frame.error()),
                    _ => {}
                }
            }
        }
        bail!("the server closed the subscription before its assignment")
    })
    .await;
    match first {
        Ok(Ok(())) => Ok(ws),
        Ok(Err(e)) => Err(e.context(format!("subscribing at {url}"))),
        Err(_) => bail!("subscribing at {url}: no assignment within {CONNECT_TIMEOUT:?}"),
    }
}

/// Hands every text frame to `on_text` until `stop` changes, then closes the
/// connection; the reason when the server closes it or it fails first.
async fn read_until(
    mut ws: Ws,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut on_text: impl FnMut(&str),
) -> Result<(), String> {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => break,
            m = ws.next() => m,
        };
        match msg {
            Some(Ok(Message::Text(text))) => on_text(text.as_str()),
            Some(Ok(Message::Close(f))) => return Err(format!("closed by the server: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the connection ended".into()),
        }
    }
    close(ws).await;
    Ok(())
}

/// Sends a normal close and waits briefly for the server's answer.
async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
    let _ = ws.flush().await;
}

/// The `sent_us` of every record of a `records` frame, found by a byte search for the
/// key instead of a JSON parse; `None` when `text` is not a `records` frame (the caller
/// then parses it). The fan-out client receives ~100,000 frames/s on the two cores the
/// server also needs, and parsing every record whole (headers, padding) was 45% of its
/// CPU. Inside a JSON string a quote is always escaped, so the pattern matches only a
/// real `sent_us` key; a non-numeric value is skipped.
fn records_sent_times(text: &str) -> Option<impl Iterator<Item = u64> + '_> {
    const KEY: &[u8] = b"\"sent_us\":";
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    if !text.starts_with(r#"{"type":"records","#) {
        return None;
    }
    let bytes = text.as_bytes();
    Some(FINDER.find_iter(bytes).filter_map(move |at| {
        let rest = bytes[at + KEY.len()..].trim_ascii_start();
        let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&rest[..n]).ok()?.parse().ok()
    }))
}

/// A server frame, with only the fields the benchmarks use.
#[derive(Debug, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    partition: u32,
    #[serde(default)]
    records: Vec<Rec>,
    /// `gap`: first missing offset.
    #[serde(default)]
    from: u64,
    /// `gap`: first offset after the gap.
    #[serde(default)]
    to: u64,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

impl Frame<'_> {
    fn error(&self) -> String {
        format!("{}: {}", self.code.as_deref().unwrap_or("?"), self.detail.as_deref().unwrap_or(""))
    }
}

/// A delivered record's offset.
#[derive(Debug, Deserialize)]
struct Rec {
    offset: u64,
}

/// Counts and rate of the fill phase, or of a producer run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Rate {
    events: u64,
    duration_s: f64,
    events_per_s: f64,
    /// 10^6 event bytes per second.
    mb_per_s: f64,
}

impl Rate {
    fn new(events: u64, bytes: u64, secs: f64) -> Self {
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Self { events, duration_s: secs, events_per_s: per_s(events), mb_per_s: per_s(bytes) / 1e6 }
    }
}

#[cfg(test)]
mod tests {
    use super::super::BenchCommand;
    use super::*;

    fn parse(args: &[&str]) -> Result<ConsumeCommand, clap::Error> {
        let argv: Vec<&str> = ["consume"].iter().chain(args).copied().collect();
        match super::super::cli_test::parse(&argv)? {
            BenchCommand::Consume(c) => Ok(c),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn cli_defaults_and_validation() {
        super::super::cli_test::debug_assert();
        let Ok(ConsumeCommand::Catchup(a)) = parse(&["catchup"]) else { panic!("catchup") };
        assert_eq!((a.topic.as_str(), a.partitions, a.events, a.event_bytes), ("bench-catchup", 8, 2_000_000, 200));
        assert_eq!((a.members, a.fill_batch, a.fill_connections, a.settle, a.target.json), (4, 1000, 8, 5, false));
        let Ok(ConsumeCommand::Latency(a)) = parse(&["latency", "--json"]) else { panic!("latency") };
        let p = &a.producer;
        assert_eq!((a.rate, p.batch, p.connections, p.duration, p.warmup), (10_000.0, 10, 4, 30, 2));
        assert!(a.target.json && a.group.is_none());
        let Ok(ConsumeCommand::Fanout(a)) = parse(&["fanout", "--subscribers", "5"]) else { panic!("fanout") };
        assert_eq!((a.subscribers, a.connect_concurrency, a.rate), (5, 64, 1000.0));
        for bad in [&["latency", "--rate", "0"][..], &["fanout", "--subscribers", "0"], &["catchup", "--members", "0"]]
        {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn records_frames_yield_offsets() {
        let text = r#"{"type":"records","topic":"t","partition":3,"records":[
            {"offset":7,"timestamp":1,"key":null,"headers":{"received-at":"5"},"value":{"pad":"x","sent_us":42}},
            {"offset":8,"timestamp":1,"key":"k","headers":{},"value":[1,{"sent_us":1}]},
            {"offset":9,"timestamp":1,"key":null,"headers":{},"value":"AAE=","value_encoding":"base64"},
            {"offset":10,"timestamp":1,"key":null,"headers":{},"value":{"sent_us":"soon","a\"b":{"c":[null,true]}}}]}"#;
        let f: Frame<'_> = serde_json::from_str(text).expect("frame");
        assert_eq!((&*f.kind, f.partition), ("records", 3));
        let got: Vec<u64> = f.records.iter().map(|r| r.offset).collect();
        assert_eq!(got, [7, 8, 9, 10]);
        let gap: Frame<'_> =
            serde_json::from_str(r#"{"type":"gap","topic":"t","partition":0,"from":5,"to":9}"#).expect("gap");
        assert_eq!((&*gap.kind, gap.from, gap.to), ("gap", 5, 9));
        let err: Frame<'_> =
            serde_json::from_str(r#"{"type":"error","code":"closing","detail":"bye"}"#).expect("error");
        assert_eq!(err.error(), "closing: bye");
        let assignment =
            r#"{"type":"assignment","generation":1,"partitions":[{"topic":"t","partition":0,"offset":1}]}"#;
        assert!(serde_json::from_str::<Frame<'_>>(assignment).expect("assignment").records.is_empty());
    }

    #[test]
    fn send_times_are_found_without_a_parse() {
        let frame = r#"{"type":"records","topic":"t","partition":0,"records":[
            {"offset":1,"headers":{"sent_us":"7","ua":"a\"sent_us\":9"},"value":{"sent_us":42,"pad":"xx"}},
            {"offset":2,"headers":{},"value":{"pad":"\"sent_us\":5","sent_us": 43}},
            {"offset":3,"headers":{},"value":{"sent_us":"soon"}},
            {"offset":4,"headers":{},"value":{"sent_us":18446744073709551616}}]}"#;
        let found: Vec<u64> = records_sent_times(frame).expect("a records frame").collect();
        assert_eq!(found, [42, 43]);
        assert!(records_sent_times(r#"{"type":"gap","topic":"t","partition":0,"from":5,"to":9}"#).is_none());
        // The same numbers as the full parse on what the gateway actually sends.
        let records: Vec<tidegate_storage::Record> = (0..3u64)
            .map(|i| tidegate_storage::Record {
                offset: i,
                timestamp: 1,
                key: None,
                headers: vec![("ua".into(), bytes::Bytes::from_static(b"curl"))].into(),
                value: bytes::Bytes::from(
                    super::producer::event_batch(1, 1_000 + i, 200)[1..].strip_suffix(b"]").unwrap().to_vec(),
                ),
                value_is_json: true,
            })
            .collect();
        let text = crate::consume::protocol::records("t", 0, &records);
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("frame");
        let full: Vec<u64> = parsed["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter_map(|r| r["value"]["sent_us"].as_u64())
            .collect();
        assert_eq!(records_sent_times(&text).expect("records").collect::<Vec<_>>(), full);
        assert_eq!(full, [1_000, 1_001, 1_002]);
    }

    #[test]
    fn subscribe_urls_use_ws_and_encode_the_query() {
        let base = Url::parse("http://127.0.0.1:8080/gw").expect("url");
        let url = subscribe_url(&base, "a b", &[("group", "g-1"), ("from", "earliest")]).expect("url");
        assert_eq!(url.as_str(), "ws://127.0.0.1:8080/gw/v1/topics/a%20b/subscribe?group=g-1&from=earliest");
    }

    #[test]
    fn rates_divide_by_the_duration() {
        let r = Rate::new(1_000, 2_000_000, 2.0);
        assert_eq!((r.events, r.events_per_s, r.mb_per_s), (1_000, 500.0, 1.0));
        assert_eq!(Rate::new(5, 5, 0.0).events_per_s, 0.0);
    }
}
