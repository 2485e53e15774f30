//! `tidegate consume <topic>`: prints records as NDJSON on stdout.
//!
//! Without `--group` the read is ephemeral: every partition (or `--partition`s) is
//! read over `GET …/partitions/{p}/records` from `--from`, nothing is committed.
//! With `--group` the client joins the group over the WebSocket protocol
//! ([`super::member`]) and commits exactly what it printed.
//!
//! Without `--follow` it stops at the end of the log as it was when it started (each
//! partition's high watermark then); with `--follow` it waits for new records until
//! Ctrl-C, and reads partitions added to the topic meanwhile from their start. `--max N` stops after N records either way. Records of one partition are
//! printed in offset order; partitions are interleaved.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::sync::Arc;

use clap::Args;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::Connection;
use super::error::{ClientError, Exit};
use super::http::Gateway;
use super::position::Position;

/// Long-poll wait of one read with `--follow` (the server's `max_wait_ms` allows 30 s).
const FOLLOW_WAIT_MS: u64 = 5_000;
/// With `--follow`, how often the topic is checked for added partitions.
const PARTITION_CHECK: std::time::Duration = std::time::Duration::from_secs(2);
/// Reads in flight at once when reading up to the end (with `--follow` every
/// partition keeps one long poll open).
const READS_IN_FLIGHT: usize = 8;

/// Options of `tidegate consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Topic to read.
    pub topic: String,
    /// Read as a member of this consumer group (over WebSocket): the group's partitions
    /// are shared with its other members, and what is printed is committed.
    #[arg(long)]
    pub group: Option<String>,
    /// Static member id within the group (reconnecting with it keeps the partitions).
    #[arg(long, requires = "group")]
    pub member: Option<String>,
    /// Where to start: earliest, latest, an offset (42 or offset:42), timestamp:<ms>,
    /// or a time ago (-15m, -2h, -7d). With --group, only for partitions the group
    /// has not committed.
    #[arg(long, default_value = "earliest", allow_hyphen_values = true)]
    pub from: Position,
    /// Only these partitions (repeat or comma-separate; not with --group).
    #[arg(long, value_delimiter = ',', conflicts_with = "group")]
    pub partition: Vec<u32>,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// After reaching the end, wait for new records (until Ctrl-C or --max) instead of
    /// stopping at the end of the log as it was at the start.
    #[arg(long, short)]
    pub follow: bool,
    /// Print each record as `{"topic","partition","offset","timestamp","key","headers","value"}`
    /// instead of its value alone.
    #[arg(long)]
    pub with_meta: bool,
    /// Records asked for per read (ephemeral reads; the server's limit is `max_fetch_records`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub fetch_records: u64,
}

/// A record as the API renders it; the value and headers stay raw JSON text.
#[derive(Debug, Deserialize)]
pub struct WireRecord {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<String>,
    #[serde(default)]
    pub key_encoding: Option<String>,
    #[serde(default)]
    pub headers: Option<Box<RawValue>>,
    pub value: Box<RawValue>,
    #[serde(default)]
    pub value_encoding: Option<String>,
}

/// The `--with-meta` line of one record.
#[derive(Serialize)]
struct MetaLine<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
    timestamp: i64,
    key: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_encoding: &'a Option<String>,
    headers: &'a Option<Box<RawValue>>,
    value: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_encoding: &'a Option<String>,
}

/// What became of a page handed to the [`Printer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Printed {
    /// This many records of the page were written (all, or fewer once `--max` is hit).
    Records(usize),
    /// Stdout is closed (a pipe reader went away): stop quietly.
    Closed,
}

/// Writes records to stdout, one line each, flushing after every page, and counts
/// them against `--max`.
pub struct Printer {
    out: tokio::io::Stdout,
    topic: String,
    with_meta: bool,
    max: Option<u64>,
    /// Records written so far.
    pub printed: u64,
    buf: Vec<u8>,
}

impl Printer {
    /// A printer for `topic`'s records.
    pub fn new(topic: &str, with_meta: bool, max: Option<u64>) -> Printer {
        Printer { out: tokio::io::stdout(), topic: topic.to_string(), with_meta, max, printed: 0, buf: Vec::new() }
    }

    /// Whether `--max` records were written.
    pub fn done(&self) -> bool {
        self.max.is_some_and(|m| self.printed >= m)
    }

    /// Writes the records of one page (up to `--max`) and flushes them.
    pub async fn print(&mut self, partition: u32, records: &[WireRecord]) -> Result<Printed, ClientError> {
        let room =
            self.max.map_or(usize::MAX, |m| usize::try_from(m.saturating_sub(self.printed)).unwrap_or(usize::MAX));
        let take = records.len().min(room);
        self.buf.clear();
        for r in &records[..take] {
            if self.with_meta {
                let line = MetaLine {
                    topic: &self.topic,
                    partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: &r.key,
                    key_encoding: &r.key_encoding,
                    headers: &r.headers,
                    value: &r.value,
                    value_encoding: &r.value_encoding,
                };
                serde_json::to_writer(&mut self.buf, &line)
                    .map_err(|e| ClientError::Protocol(format!("cannot encode a record: {e}")))?;
            } else {
                self.buf.extend_from_slice(r.value.get().as_bytes());
            }
            self.buf.push(b'\n');
        }
        let written = async {
            self.out.write_all(&self.buf).await?;
            self.out.flush().await
        };
        match written.await {
            Ok(()) => {
                self.printed += take as u64;
                Ok(Printed::Records(take))
            }
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Printed::Closed),
            Err(e) => Err(ClientError::Usage(format!("cannot write to standard output: {e}"))),
        }
    }

    /// On a terminal, says on stderr how many records were printed.
    pub fn report(&self) {
        if std::io::stderr().is_terminal() {
            eprintln!("{} records", super::output::count(self.printed));
        }
    }
}

/// Resolves on Ctrl-C; never when the signal cannot be watched.
pub async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs `consume`.
pub async fn run(args: ConsumeArgs) -> Result<Exit, ClientError> {
    let gw = args.conn.gateway()?;
    if args.max == Some(0) {
        return Ok(Exit::Ok);
    }
    match &args.group {
        Some(group) => super::member::run(&gw, &args, group).await,
        None => ephemeral(&gw, &args).await,
    }
}

#[derive(Debug, Deserialize)]
struct PartitionInfo {
    partition: u32,
    start_offset: u64,
    end_offset: u64,
}

#[derive(Debug, Deserialize)]
struct TopicInfo {
    partitions: Vec<PartitionInfo>,
}

#[derive(Debug, Deserialize)]
struct OffsetAt {
    partition: u32,
    offset: u64,
}

#[derive(Debug, Deserialize)]
struct Offsets {
    partitions: Vec<OffsetAt>,
}

/// One read's answer.
#[derive(Debug, Deserialize)]
struct Page {
    records: Vec<WireRecord>,
    next_offset: u64,
}

/// Each partition's start position and, without `--follow`, where it stops.
async fn plan(gw: &Gateway, args: &ConsumeArgs) -> Result<Vec<(u32, u64, Option<u64>)>, ClientError> {
    let topic: TopicInfo = gw.get(&["v1", "topics", &args.topic]).await?;
    let count = topic.partitions.len();
    if let Some(p) = args.partition.iter().find(|p| !topic.partitions.iter().any(|i| i.partition == **p)) {
        return Err(ClientError::Input(format!("partition {p} does not exist (topic {} has {count})", args.topic)));
    }
    let by_time: BTreeMap<u32, u64> = match args.from {
        Position::Timestamp(ms) => {
            let rb = gw.request(Method::GET, &["v1", "topics", &args.topic, "offsets"]).query(&[("timestamp", ms)]);
            let found: Offsets = gw.json(rb).await?;
            found.partitions.into_iter().map(|o| (o.partition, o.offset)).collect()
        }
        _ => BTreeMap::new(),
    };
    Ok(topic
        .partitions
        .into_iter()
        .filter(|p| args.partition.is_empty() || args.partition.contains(&p.partition))
        .map(|p| {
            let (start, end) = (p.start_offset, p.end_offset);
            let from = match args.from {
                Position::Earliest => start,
                Position::Latest => end,
                Position::Offset(o) => {
                    if o < start {
                        eprintln!(
                            "warning: {}/{}: offsets {o}..{start} were deleted by retention; starting at {start}",
                            args.topic, p.partition
                        );
                    } else if o > end {
                        eprintln!(
                            "warning: {}/{}: offset {o} is past the end ({end}); starting at the end",
                            args.topic, p.partition
                        );
                    }
                    o.clamp(start, end)
                }
                Position::Timestamp(_) => by_time.get(&p.partition).copied().unwrap_or(end),
            };
            (p.partition, from, (!args.follow).then_some(end))
        })
        .collect())
}

/// What every partition reader shares.
#[derive(Clone)]
struct Shared {
    gw: Gateway,
    topic: String,
    per_read: u64,
    /// Bounds the reads in flight.
    slots: Arc<Semaphore>,
    /// Pages for the printer.
    tx: mpsc::Sender<Result<(u32, Vec<WireRecord>), ClientError>>,
}

/// Reads one partition from `offset` (to `until`, or forever) and hands pages over.
async fn read_partition(shared: Shared, partition: u32, mut offset: u64, until: Option<u64>) {
    let Shared { gw, topic, per_read, slots, tx } = shared;
    let p = partition.to_string();
    loop {
        if until.is_some_and(|end| offset >= end) {
            return;
        }
        let wait = if until.is_none() { FOLLOW_WAIT_MS } else { 0 };
        let rb = gw.request(Method::GET, &["v1", "topics", &topic, "partitions", &p, "records"]).query(&[
            ("offset", offset),
            ("max_records", per_read),
            ("wait_ms", wait),
        ]);
        let read = {
            let Ok(_slot) = slots.acquire().await else { return };
            gw.json::<Page>(rb).await
        };
        match read {
            Ok(page) => {
                let moved = page.next_offset > offset;
                offset = page.next_offset;
                if !page.records.is_empty() && tx.send(Ok((partition, page.records))).await.is_err() {
                    return;
                }
                if !moved && until.is_some() {
                    // Nothing readable below the end any more (deleted meanwhile).
                    return;
                }
            }
            Err(ClientError::Problem { problem, .. })
                if problem["code"] == "offset_out_of_range"
                    && problem["start_offset"].as_u64().is_some_and(|start| start > offset) =>
            {
                let start = problem["start_offset"].as_u64().unwrap_or(offset);
                eprintln!(
                    "warning: {topic}/{partition}: offsets {offset}..{start} were deleted by retention before they \
                     were read; continuing at {start}"
                );
                offset = start;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// With `--follow` over the whole topic: looks for partitions added to it every
/// [`PARTITION_CHECK`] and reads each new one from its start (every record in it was
/// written after the client started). Its readers stop with it.
async fn read_added_partitions(shared: Shared, mut known: BTreeSet<u32>) {
    let mut added = JoinSet::new();
    loop {
        tokio::time::sleep(PARTITION_CHECK).await;
        // A failed look (the gateway restarting) is tried again; a deleted topic is
        // reported by the readers of its partitions.
        let Ok(topic) = shared.gw.get::<TopicInfo>(&["v1", "topics", &shared.topic]).await else { continue };
        for p in topic.partitions {
            if known.insert(p.partition) {
                // Each follower keeps one long poll open: one more slot for it.
                shared.slots.add_permits(1);
                added.spawn(read_partition(shared.clone(), p.partition, p.start_offset, None));
            }
        }
    }
}

async fn ephemeral(gw: &Gateway, args: &ConsumeArgs) -> Result<Exit, ClientError> {
    let plan = plan(gw, args).await?;
    let (tx, mut rx) = mpsc::channel(plan.len() + 1);
    let slots = Arc::new(Semaphore::new(if args.follow { plan.len().max(1) } else { READS_IN_FLIGHT }));
    let shared = Shared { gw: gw.clone(), topic: args.topic.clone(), per_read: args.fetch_records, slots, tx };
    let mut readers = JoinSet::new();
    let known: BTreeSet<u32> = plan.iter().map(|(p, ..)| *p).collect();
    for (partition, from, until) in plan {
        readers.spawn(read_partition(shared.clone(), partition, from, until));
    }
    if args.follow && args.partition.is_empty() {
        readers.spawn(read_added_partitions(shared.clone(), known));
    }
    drop(shared);
    let mut printer = Printer::new(&args.topic, args.with_meta, args.max);
    let interrupted = ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let page = tokio::select! {
            page = rx.recv() => page,
            () = &mut interrupted => break,
        };
        let Some(page) = page else { break };
        let (partition, records) = page?;
        if printer.print(partition, &records).await? == Printed::Closed || printer.done() {
            break;
        }
    }
    readers.abort_all();
    printer.report();
    Ok(Exit::Ok)
}
