//! `tidegate produce <topic>`: posts one JSON value per input line (NDJSON / JSON
//! lines) from stdin or a file.
//!
//! A reader thread cuts the input into requests of at most `--batch` events and
//! `--batch-bytes` bytes (blank lines are skipped, line numbers are kept); a partial
//! request is sent as soon as the input has nothing more buffered, so a slow stream
//! is posted as it comes. Up to `--in-flight` requests are sent at once. Each request is atomic on the server, so
//! after a refusal the summary tells exactly which lines were stored: every line of
//! an acknowledged request, none of a refused one. On the first refusal no new
//! request is started, the ones in flight finish, and the refused lines are named
//! with the server's detail.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Connection;
use super::error::{ClientError, Exit};
use super::http::Gateway;
use super::output::{bytes, count};

/// Extra bytes per event in the envelope body, beyond the key and the value.
const ENVELOPE_OVERHEAD: usize = 24;

/// Options of `tidegate produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Topic to post to.
    pub topic: String,
    /// Read events from this file instead of standard input.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// Key of every event (Kafka's partitioner maps a key to a partition); events
    /// whose --key-field is present use that instead. Keyed events are sent in the
    /// envelope form, so every line must be JSON (checked before sending).
    #[arg(long)]
    pub key: Option<String>,
    /// Take each event's key from this field: a JSON pointer (`/user/id`) or a
    /// top-level field name (`user`). Strings are used as is, other values as JSON text.
    #[arg(long)]
    pub key_field: Option<String>,
    /// Partition of every event (wins over keys).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Most events per request (the server's limit is `max_events_per_request`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch: u64,
    /// Most bytes per request body (the server's limit is `max_body_bytes`); a larger
    /// line is sent alone.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_bytes: u64,
    /// Requests in flight at once. Each request is stored in input order; with more
    /// than one in flight, requests may be stored in another order than they were
    /// read: use 1 to keep the input order across requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub in_flight: u64,
    /// Never draw a progress bar (it is drawn only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Times one request is sent again after 429 (rate limited) or 503 (busy, shutting
    /// down) answers, each after the server's `Retry-After` (at most 60 s). Such answers
    /// store nothing, so a resend cannot duplicate events.
    #[arg(long, default_value_t = 10)]
    pub retries: u32,
}

/// One request's worth of input.
struct Batch {
    body: Vec<u8>,
    /// Length of `body` (kept after the body was handed to the request).
    sent_bytes: usize,
    /// Input line number (1-based) of each event, in body order.
    lines: Vec<u64>,
    envelope: bool,
}

/// Options the reader needs.
struct Cutter {
    max_events: usize,
    max_bytes: usize,
    /// `--key`: the key of events without a `--key-field` value.
    key: Option<String>,
    /// `--key-field` as a JSON pointer.
    key_pointer: Option<String>,
}

impl Cutter {
    /// Keys travel in the envelope form (`{"records":[{"key","value"}]}`), so they
    /// do not depend on the name of the ingest query parameter.
    fn envelope(&self) -> bool {
        self.key.is_some() || self.key_pointer.is_some()
    }

    fn new_batch(&self) -> Batch {
        let envelope = self.envelope();
        let body = if envelope { b"{\"records\":[".to_vec() } else { Vec::new() };
        Batch { body, sent_bytes: 0, lines: Vec::new(), envelope }
    }

    fn full(&self, batch: &Batch, next_len: usize) -> bool {
        !batch.lines.is_empty()
            && (batch.lines.len() >= self.max_events || batch.body.len() + next_len + 2 > self.max_bytes)
    }

    /// The key of one event: its `--key-field` value (strings as is, other values as
    /// JSON text), else `--key`.
    fn key_of(&self, line: &[u8], number: u64) -> Result<Option<String>, ClientError> {
        let not_json = |e: serde_json::Error| {
            ClientError::Input(format!("line {number}: not JSON (with --key or --key-field every line must be): {e}"))
        };
        let Some(pointer) = &self.key_pointer else {
            serde_json::from_slice::<&RawValue>(line).map_err(not_json)?;
            return Ok(self.key.clone());
        };
        let value: Value = serde_json::from_slice(line).map_err(not_json)?;
        Ok(match value.pointer(pointer) {
            None | Some(Value::Null) => self.key.clone(),
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        })
    }

    /// Appends one event; in envelope mode the line must be JSON.
    fn push(&self, batch: &mut Batch, line: &[u8], number: u64) -> Result<(), ClientError> {
        if !batch.envelope {
            batch.body.extend_from_slice(line);
            batch.body.push(b'\n');
        } else {
            let key = self.key_of(line, number)?;
            if !batch.lines.is_empty() {
                batch.body.push(b',');
            }
            batch.body.push(b'{');
            if let Some(key) = key {
                batch.body.extend_from_slice(b"\"key\":");
                batch.body.extend_from_slice(Value::from(key).to_string().as_bytes());
                batch.body.push(b',');
            }
            batch.body.extend_from_slice(b"\"value\":");
            batch.body.extend_from_slice(line);
            batch.body.push(b'}');
        }
        batch.lines.push(number);
        Ok(())
    }

    fn finish(batch: &mut Batch) {
        if batch.envelope {
            batch.body.extend_from_slice(b"]}");
        }
    }
}

/// `user` → `/user`; a pointer is kept.
fn key_pointer(field: &str) -> String {
    if field.starts_with('/') { field.to_string() } else { format!("/{}", field.replace('~', "~0").replace('/', "~1")) }
}

/// Reads lines and sends batches until the input ends, the receiver is gone, or a
/// line is refused.
fn read_batches(
    input: Box<dyn Read + Send>,
    cutter: &Cutter,
    tx: &mpsc::Sender<Result<Batch, ClientError>>,
    progress: &ProgressBar,
    stop: &AtomicBool,
) {
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut line = Vec::with_capacity(4096);
    let mut number = 0u64;
    let mut batch = cutter.new_batch();
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // Nothing more is buffered, so the next read may wait for the input: send
        // what is gathered first, so a slow stream (`tail -f … |`) is not held back.
        if reader.buffer().is_empty() && !batch.lines.is_empty() {
            Cutter::finish(&mut batch);
            if tx.blocking_send(Ok(std::mem::replace(&mut batch, cutter.new_batch()))).is_err() {
                return;
            }
        }
        line.clear();
        let n = match reader.read_until(b'\n', &mut line) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Err(ClientError::Usage(format!("cannot read the input: {e}"))));
                return;
            }
        };
        if n == 0 {
            break;
        }
        progress.inc(n as u64);
        number += 1;
        let mut text = line.as_slice();
        text = text.strip_suffix(b"\n").unwrap_or(text);
        text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let extra = if batch.envelope { ENVELOPE_OVERHEAD } else { 0 };
        if cutter.full(&batch, text.len() + extra) {
            Cutter::finish(&mut batch);
            if tx.blocking_send(Ok(std::mem::replace(&mut batch, cutter.new_batch()))).is_err() {
                return;
            }
        }
        if let Err(e) = cutter.push(&mut batch, text, number) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    }
    if !batch.lines.is_empty() {
        Cutter::finish(&mut batch);
        let _ = tx.blocking_send(Ok(batch));
    }
}

#[derive(Debug, Deserialize)]
struct Stored {
    offsets: Vec<StoredAt>,
}

#[derive(Debug, Deserialize)]
struct StoredAt {
    partition: u32,
}

/// A refused request.
struct Refusal {
    lines: Vec<u64>,
    error: ClientError,
}

/// What `produce` did (`--json` prints it on stdout).
#[derive(Debug, Default, Serialize)]
struct Summary {
    topic: String,
    /// Events the gateway acknowledged.
    events: u64,
    /// Bytes of acknowledged request bodies.
    bytes: u64,
    /// Acknowledged requests.
    requests: u64,
    /// Acknowledged events per partition.
    partitions: BTreeMap<u32, u64>,
    seconds: f64,
    /// Events per second.
    rate: f64,
    /// Set when the run stopped early: the refusal (its problem document) or the failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
    /// Input lines that were not stored because their request was refused (every
    /// refused request's, in input order).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    refused_lines: Vec<u64>,
    /// When the run stopped early with input left: the first input line that was not
    /// sent. It and every line after it were not stored (`tail -n +N` resumes there).
    #[serde(skip_serializing_if = "Option::is_none")]
    unsent_from_line: Option<u64>,
    interrupted: bool,
}

/// How long a run that stopped early waits to learn whether input was left unsent (a
/// reader still waiting for its input after this means there is more to come).
const UNSENT_PROBE: Duration = Duration::from_millis(200);

/// Longest wait between resends of a refused batch, whatever `Retry-After` says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// Posts one batch, resending it after 429 and 503 answers (up to `retries` times);
/// gives the batch back (for its line numbers) with the answer.
async fn post(
    gw: Gateway,
    topic: String,
    partition: Option<u32>,
    retries: u32,
    mut batch: Batch,
) -> (Batch, Result<Stored, ClientError>) {
    let content_type = if batch.envelope { "application/json" } else { "application/x-ndjson" };
    batch.sent_bytes = batch.body.len();
    let body = bytes::Bytes::from(std::mem::take(&mut batch.body));
    let mut attempt = 0;
    let result = loop {
        let mut rb = gw.request(Method::POST, &["v1", "topics", &topic, "events"]);
        if let Some(p) = partition {
            rb = rb.query(&[("partition", p)]);
        }
        let rb = rb.header(CONTENT_TYPE, content_type).body(body.clone());
        match gw.json_or_retry_after::<Stored>(rb).await {
            Err((Some(wait), _)) if attempt < retries => {
                attempt += 1;
                tokio::time::sleep(wait.min(MAX_RETRY_WAIT)).await;
            }
            Err((_, e)) => break Err(e),
            Ok(stored) => break Ok(stored),
        }
    };
    (batch, result)
}

fn progress_bar(args: &ProduceArgs, total: Option<u64>) -> ProgressBar {
    if args.no_progress || args.conn.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(len) => ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {bytes} read, {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Runs `produce`.
pub async fn run(args: ProduceArgs) -> Result<Exit, ClientError> {
    let gw = args.conn.gateway()?;
    let (input, total): (Box<dyn Read + Send>, Option<u64>) = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            let file = std::fs::File::open(path)
                .map_err(|e| ClientError::Usage(format!("cannot open {}: {e}", path.display())))?;
            let len = file.metadata().ok().map(|m| m.len());
            (Box::new(file), len)
        }
        _ => (Box::new(std::io::stdin()), None),
    };
    let progress = progress_bar(&args, total);
    let cutter = Cutter {
        max_events: usize::try_from(args.batch).unwrap_or(usize::MAX),
        max_bytes: usize::try_from(args.batch_bytes).unwrap_or(usize::MAX),
        key: args.key.clone(),
        key_pointer: args.key_field.as_deref().map(key_pointer),
    };
    let in_flight = usize::try_from(args.in_flight).unwrap_or(1);
    let (tx, mut rx) = mpsc::channel(in_flight * 2);
    let stop = Arc::new(AtomicBool::new(false));
    // A thread of its own, not tokio's blocking pool: a read of stdin cannot be
    // cancelled, and the runtime would wait for it at exit after a refusal or Ctrl-C.
    let reader = {
        let (progress, stop) = (progress.clone(), stop.clone());
        std::thread::Builder::new()
            .name("produce-reader".into())
            .spawn(move || read_batches(input, &cutter, &tx, &progress, &stop))
            .map_err(|e| ClientError::Usage(format!("cannot start the input reader: {e}")))?
    };

    let started = Instant::now();
    let mut summary = Summary { topic: args.topic.clone(), ..Summary::default() };
    let mut refusals: Vec<Refusal> = Vec::new();
    let mut local: Option<ClientError> = None;
    let mut tasks = JoinSet::new();
    // The line after the last one posted (batches are posted in input order).
    let mut next_unsent = 1u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            biased;
            _ = &mut ctrl_c, if !summary.interrupted => {
                summary.interrupted = true;
                break;
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                tally(&mut summary, &mut refusals, &progress, done);
                if !refusals.is_empty() {
                    break;
                }
            }
            item = rx.recv(), if tasks.len() < in_flight => match item {
                None => break,
                Some(Ok(batch)) => {
                    next_unsent = batch.lines.last().map_or(next_unsent, |last| last + 1);
                    tasks.spawn(post(gw.clone(), args.topic.clone(), args.partition, args.retries, batch));
                }
                Some(Err(e)) => {
                    local = Some(e);
                    break;
                }
            },
        }
    }
    // Stopped early: was input left unsent? A batch read but not posted, a line the
    // reader refused, or input still coming says so; the reader ending says not.
    let stopped_early = !refusals.is_empty() || local.is_some() || summary.interrupted;
    if stopped_early {
        let input_left = local.is_some()
            || match tokio::time::timeout(UNSENT_PROBE, rx.recv()).await {
                Ok(Some(_)) | Err(_) => true,
                Ok(None) => false,
            };
        if input_left {
            summary.unsent_from_line = Some(next_unsent);
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    while let Some(done) = tasks.join_next().await {
        tally(&mut summary, &mut refusals, &progress, done);
    }
    if refusals.is_empty() && local.is_none() && !summary.interrupted {
        // The input ended: the reader has finished.
        let _ = reader.join();
    }
    progress.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.rate = summary.events as f64 / summary.seconds.max(1e-9);

    refusals.sort_by_key(|r| r.lines.first().copied().unwrap_or(0));
    summary.refused_lines = refusals.iter().flat_map(|r| r.lines.iter().copied()).collect();
    let mut refusals = refusals.into_iter();
    let failure = refusals.next();
    let others: Vec<Refusal> = refusals.collect();
    let error = failure.map(|r| (r.error, r.lines)).or_else(|| local.map(|e| (e, Vec::new())));
    if let Some((e, lines)) = &error {
        summary.error = Some(with_lines(e.to_json(), lines));
    }
    print_summary(&args, &summary, error.as_ref(), &others);
    Ok(match error {
        Some((e, _)) => e.exit(),
        None if summary.interrupted => Exit::Interrupted,
        None => Exit::Ok,
    })
}

/// Counts a finished request: acknowledged events into the summary, or a refusal.
fn tally(
    summary: &mut Summary,
    refusals: &mut Vec<Refusal>,
    progress: &ProgressBar,
    done: Result<(Batch, Result<Stored, ClientError>), tokio::task::JoinError>,
) {
    match done {
        Ok((batch, Ok(stored))) => {
            summary.events += batch.lines.len() as u64;
            summary.bytes += batch.sent_bytes as u64;
            summary.requests += 1;
            for at in stored.offsets {
                *summary.partitions.entry(at.partition).or_default() += 1;
            }
            progress.set_message(format!("{} events stored", count(summary.events)));
        }
        Ok((batch, Err(error))) => refusals.push(Refusal { lines: batch.lines, error }),
        Err(e) => refusals
            .push(Refusal { lines: Vec::new(), error: ClientError::Protocol(format!("a request task failed: {e}")) }),
    }
}

/// Adds the input `line` of each per-event error of a problem document.
fn with_lines(mut problem: Value, lines: &[u64]) -> Value {
    if let Some(errors) = problem.get_mut("errors").and_then(Value::as_array_mut) {
        for item in errors {
            let line = item["index"].as_u64().and_then(|i| lines.get(usize::try_from(i).ok()?));
            if let (Some(line), Some(obj)) = (line, item.as_object_mut()) {
                obj.insert("line".into(), Value::from(*line));
            }
        }
    }
    problem
}

fn print_summary(args: &ProduceArgs, summary: &Summary, error: Option<&(ClientError, Vec<u64>)>, others: &[Refusal]) {
    if args.conn.json {
        super::output::print_json(summary);
        if let Some((e, _)) = error {
            eprintln!("{}", summary.error.clone().unwrap_or_else(|| e.to_json()));
        }
        return;
    }
    if let Some((e, lines)) = error {
        eprintln!("error: {e}");
        if let ClientError::Problem { problem, .. } = e
            && let Some(items) = with_lines(problem.clone(), lines)["errors"].as_array()
        {
            for item in items {
                let at =
                    item["line"].as_u64().map_or_else(|| format!("event {}", item["index"]), |l| format!("line {l}"));
                eprintln!("  {at}: {}", item["detail"].as_str().unwrap_or("invalid"));
            }
        }
        if let (Some(first), Some(last)) = (lines.first(), lines.last()) {
            eprintln!("lines {first}-{last} were not stored (one request: all of its events or none)");
        }
        for other in others {
            if let (Some(first), Some(last)) = (other.lines.first(), other.lines.last()) {
                eprintln!("lines {first}-{last} were not stored either: {}", other.error);
            }
        }
    }
    if let Some(line) = summary.unsent_from_line {
        eprintln!("lines from {line} on were not sent (to resume: tail -n +{line})");
    }
    if summary.interrupted {
        eprintln!("interrupted");
    }
    let partitions: Vec<String> = summary.partitions.iter().map(|(p, n)| format!("{p}: {}", count(*n))).collect();
    println!(
        "produced {} events ({}) to {} in {:.2} s, {} events/s{}",
        count(summary.events),
        bytes(summary.bytes),
        summary.topic,
        summary.seconds,
        count(summary.rate as u64),
        if partitions.is_empty() { String::new() } else { format!("; per partition {}", partitions.join(", ")) }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(input: &str, cutter: &Cutter) -> Vec<Result<Batch, ClientError>> {
        let (tx, mut rx) = mpsc::channel(1000);
        let stop = AtomicBool::new(false);
        read_batches(
            Box::new(std::io::Cursor::new(input.as_bytes().to_vec())),
            cutter,
            &tx,
            &ProgressBar::hidden(),
            &stop,
        );
        drop(tx);
        let mut out = Vec::new();
        while let Ok(b) = rx.try_recv() {
            out.push(b);
        }
        out
    }

    #[test]
    fn lines_are_cut_into_batches_keeping_line_numbers() {
        let cutter = Cutter { max_events: 2, max_bytes: 1 << 20, key: None, key_pointer: None };
        let batches = cut("{\"a\":1}\n\n  \n{\"a\":2}\r\n{\"a\":3}", &cutter);
        let batches: Vec<Batch> = batches.into_iter().map(Result::unwrap).collect();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].body, b"{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(batches[0].lines, [1, 4]);
        assert_eq!(batches[1].lines, [5]);
        let by_bytes = Cutter { max_events: 100, max_bytes: 10, key: None, key_pointer: None };
        assert_eq!(cut("{\"a\":1}\n{\"a\":2}\n", &by_bytes).len(), 2, "a batch never passes the byte limit");
    }

    #[test]
    fn key_fields_build_envelopes() {
        let cutter = Cutter {
            max_events: 10,
            max_bytes: 1 << 20,
            key: Some("k".into()),
            key_pointer: Some(key_pointer("user")),
        };
        let batches = cut("{\"user\":\"u1\",\"n\":1}\n{\"n\":2}\n{\"user\":7}\n", &cutter);
        let batch = batches.into_iter().next().unwrap().unwrap();
        let body: Value = serde_json::from_slice(&batch.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"records":[
                {"key":"u1","value":{"user":"u1","n":1}},
                {"key":"k","value":{"n":2}},
                {"key":"7","value":{"user":7}},
            ]})
        );
        let bad = cut("{\"user\":1}\nnot json\n", &cutter);
        assert!(matches!(&bad[0], Err(ClientError::Input(m)) if m.starts_with("line 2:")), "refused with its line");
        let plain = Cutter { max_events: 10, max_bytes: 1 << 20, key: Some("k".into()), key_pointer: None };
        let batch = cut("[1]\n\"s\"\n", &plain).into_iter().next().unwrap().unwrap();
        assert_eq!(batch.body, br#"{"records":[{"key":"k","value":[1]},{"key":"k","value":"s"}]}"#);
        assert!(matches!(&cut("{\n", &plain)[0], Err(ClientError::Input(m)) if m.starts_with("line 1:")));
        assert_eq!(key_pointer("/a/b"), "/a/b");
        assert_eq!(key_pointer("a/b"), "/a~1b");
    }

    #[test]
    fn per_event_errors_get_their_line() {
        let problem = serde_json::json!({"errors":[{"index":1,"detail":"malformed JSON"}]});
        assert_eq!(with_lines(problem, &[3, 8])["errors"][0]["line"], 8);
    }
}
