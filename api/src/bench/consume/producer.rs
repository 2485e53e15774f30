//! The HTTP side of the consume benchmarks: events stamped with their send time
//! (`{"sent_us":…,"pad":"…"}`), one-connection clients, and the open-loop paced
//! producer used by `latency` and `fanout` (the catch-up fill posts closed loop).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use hdrhistogram::Histogram;
use reqwest::{Client, StatusCode, Url};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::super::{lock, wall_us};

/// Timeout of one producer request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Appends one `{"sent_us":N,"pad":"x…"}` event of `event_bytes` bytes (never shorter
/// than its fixed fields).
fn push_event(out: &mut Vec<u8>, sent_us: u64, event_bytes: usize) {
    let head = format!("{{\"sent_us\":{sent_us},\"pad\":\"");
    let pad = event_bytes.saturating_sub(head.len() + 2);
    out.extend_from_slice(head.as_bytes());
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// A JSON array of `count` events stamped `sent_us`.
pub(super) fn event_batch(count: u64, sent_us: u64, event_bytes: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(usize::try_from(count).unwrap_or(0).saturating_mul(event_bytes + 1) + 2);
    for i in 0..count {
        body.push(if i == 0 { b'[' } else { b',' });
        push_event(&mut body, sent_us, event_bytes);
    }
    body.push(b']');
    body
}

/// HTTP client holding exactly one keep-alive connection (one per producer connection).
pub(super) fn producer_client() -> Result<Client> {
    crate::bench::one_connection_client(REQUEST_TIMEOUT)
}

/// Posts one JSON array of events and reads the whole answer; errors are descriptions.
pub(super) async fn post_events(client: &Client, url: &Url, body: Bytes) -> Result<(), String> {
    let resp = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {:#}", anyhow::Error::from(e)))?;
    let status = resp.status();
    let text = resp.bytes().await.map_err(|e| format!("POST {url}: reading the answer: {e}"))?;
    match status {
        StatusCode::OK | StatusCode::CREATED => Ok(()),
        _ => Err(format!("POST {url}: HTTP {status}: {:.300}", String::from_utf8_lossy(&text))),
    }
}

/// Maps [`Instant`]s to wall-clock µs (to stamp late sends with their scheduled time).
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    at: Instant,
    wall_us: u64,
}

impl Clock {
    pub(super) fn now() -> Self {
        Self { at: Instant::now(), wall_us: wall_us() }
    }

    pub(super) fn wall_of(&self, t: Instant) -> u64 {
        let since = u64::try_from(t.saturating_duration_since(self.at).as_micros()).unwrap_or(u64::MAX);
        self.wall_us.saturating_add(since)
    }
}

/// What the producer posted.
#[derive(Debug, Default)]
pub(super) struct Posted {
    /// Acknowledged events.
    pub events: AtomicU64,
    /// Acknowledged events stamped in the measured window.
    pub measured: AtomicU64,
    /// Event bytes of those.
    pub measured_bytes: AtomicU64,
    pub failed_requests: AtomicU64,
    pub first_error: OnceLock<String>,
}

/// The schedule every producer connection shares.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pacing {
    pub batch: u64,
    pub event_bytes: usize,
    /// Between two sends of one connection.
    pub interval: Duration,
    /// No send starts from here on.
    pub end: Instant,
    pub clock: Clock,
    /// Events stamped from here on are counted as measured.
    pub measure_from_us: u64,
}

/// One producer connection: a batch every `interval` from `next` until `end` or `halt`
/// (a send still waiting for its answer at `end` ends within the request timeout). A
/// send behind its schedule is stamped, and its latency counted, from its scheduled
/// time, so a stalling server cannot hide behind coordinated omission.
pub(super) async fn paced(
    client: Client,
    url: Arc<Url>,
    pacing: Pacing,
    mut next: Instant,
    (posted, hist): (Arc<Posted>, Arc<Mutex<Histogram<u64>>>),
    mut halt: watch::Receiver<bool>,
) {
    let Pacing { batch, event_bytes, interval, end, clock, measure_from_us } = pacing;
    while next < end && !*halt.borrow() {
        let at = next;
        next += interval;
        let now = Instant::now();
        if now >= end {
            break; // behind schedule at the end: the missed sends show as a lower posted rate
        }
        let late = at <= now;
        if !late {
            tokio::select! {
                () = sleep_until(at) => {}
                _ = halt.changed() => break,
            }
        }
        let (sent_us, from) = if late { (clock.wall_of(at), at) } else { (wall_us(), Instant::now()) };
        let body = event_batch(batch, sent_us, event_bytes);
        let payload = body.len() as u64 - batch - 1; // without brackets and commas
        match post_events(&client, &url, body.into()).await {
            Ok(()) => {
                posted.events.fetch_add(batch, Relaxed);
                if sent_us >= measure_from_us {
                    posted.measured.fetch_add(batch, Relaxed);
                    posted.measured_bytes.fetch_add(payload, Relaxed);
                    let us = u64::try_from(from.elapsed().as_micros()).unwrap_or(u64::MAX);
                    lock(&hist).saturating_record(us.max(1));
                }
            }
            Err(e) => {
                posted.failed_requests.fetch_add(1, Relaxed);
                let _ = posted.first_error.set(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn events_are_sized_and_stamped() {
        let body = event_batch(3, 1_700_000_000_123_456, 200);
        let events: Vec<Value> = serde_json::from_slice(&body).expect("a JSON array");
        assert_eq!(events.len(), 3);
        for e in &events {
            assert_eq!(e.to_string().len(), 200);
            assert_eq!(e["sent_us"], 1_700_000_000_123_456_u64);
        }
        let tiny: Vec<Value> = serde_json::from_slice(&event_batch(1, 7, 5)).expect("valid JSON");
        assert_eq!(tiny[0]["pad"], "");
    }

    #[test]
    fn clock_maps_instants_to_wall_time() {
        let clock = Clock { at: Instant::now(), wall_us: 1_000_000 };
        assert_eq!(clock.wall_of(clock.at + Duration::from_millis(3)), 1_003_000);
        assert_eq!(clock.wall_of(clock.at - Duration::from_millis(3)), 1_000_000);
    }
}
