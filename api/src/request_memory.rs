//! The memory budget of request bodies in flight (`request_memory_bytes`).
//!
//! Guarantees:
//! - The body of a `POST`, `PUT` or `PATCH` is counted as it arrives: each piece read
//!   from the client is reserved before it is handed on (see [`MeteredBody`]). A client
//!   that sends a head and then trickles its body holds only what it has sent, so slow
//!   or stalled clients cannot take the budget from the others without sending it.
//!   Other methods' bodies are never read: they reserve nothing.
//! - A `Content-Length` over `max_body_bytes` is answered 413 at once, without reading
//!   the body ([`RequestMemory::check_declared`]).
//! - A piece that does not fit waits, not handed on and with nothing more read (so TCP
//!   pushes back on the client), in arrival order, for at most `request_memory_wait_ms`
//!   all the pieces of one body together; then the request is answered 503 `overloaded`
//!   with `Retry-After` and nothing of it is written.
//! - A compressed body grows its reservation as it is decoded, a step of
//!   [`DECODE_STEP`] bytes ahead of the output, so what decoding holds stays within the
//!   budget; when the next step is not free at once the request is 503 `overloaded`
//!   (waiting while holding memory could stall every request that holds some).
//! - A reservation is held until the request's events are written (with `acks=none`,
//!   until the writer is done with them, after the answer), so bodies read, decoded,
//!   parsed and waiting for the writer together stay within the budget. The budget
//!   counts body bytes; the request's other copies (parsed events, encoded batches) are
//!   about as large again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, header};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// How far ahead of a decoder's output its reservation grows.
pub const DECODE_STEP: usize = 64 * 1024;

/// Reservations are counted in units of this many bytes (a semaphore counts `u32`
/// permits at a time).
const UNIT: u64 = 1024;

/// The budget shared by all requests (one per node).
#[derive(Debug)]
pub struct RequestMemory {
    units: Arc<Semaphore>,
    budget_units: u64,
    max_body: u64,
    wait: Duration,
}

/// Bytes reserved by one request; clones share the reservation, which is released when
/// the last clone is dropped.
#[derive(Debug, Clone)]
pub struct MemoryGrant(Arc<Grant>);

#[derive(Debug)]
struct Grant {
    units: Arc<Semaphore>,
    budget_units: u64,
    permit: Mutex<OwnedSemaphorePermit>,
    /// Set once the whole body has been read.
    read_all: AtomicBool,
}

fn units_of(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT)
}

impl RequestMemory {
    /// A budget of `budget_bytes` (at least `max_body_bytes`, as the settings check).
    pub fn new(budget_bytes: u64, max_body_bytes: u64, wait: Duration) -> RequestMemory {
        let budget_units = units_of(budget_bytes).min(Semaphore::MAX_PERMITS as u64);
        RequestMemory {
            units: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
            max_body: max_body_bytes,
            wait,
        }
    }

    /// Bytes reserved by requests now.
    pub fn reserved_bytes(&self) -> u64 {
        self.budget_units.saturating_sub(self.units.available_permits() as u64) * UNIT
    }

    /// The budget in bytes.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_units * UNIT
    }

    /// Refuses (413) a request whose `Content-Length` is over `max_body_bytes`, before
    /// anything of its body is read. Other methods than `POST`, `PUT` and `PATCH` pass:
    /// their bodies are never read.
    pub fn check_declared(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        if !reads_body(method) {
            return Ok(());
        }
        let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        match length {
            Some(n) if n > self.max_body => Err(crate::ingest::decode::body_too_large(self.max_body as usize)),
            _ => Ok(()),
        }
    }

    /// The reservation of a request's body, empty until its bytes arrive, and the meter
    /// that fills it as they do (for [`MeteredBody`]): `None` for a method whose body no
    /// route reads.
    pub fn meter(&self, method: &Method) -> Option<(MemoryGrant, BodyMeter)> {
        if !reads_body(method) {
            return None;
        }
        let permit = self.units.clone().try_acquire_many_owned(0).ok()?;
        let grant = MemoryGrant(Arc::new(Grant {
            units: self.units.clone(),
            budget_units: self.budget_units,
            permit: Mutex::new(permit),
            read_all: AtomicBool::new(false),
        }));
        let meter = BodyMeter { grant: grant.clone(), received: 0, wait_left: self.wait, waiting: None };
        Some((grant, meter))
    }
}

fn reads_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Counts a 503 `overloaded` in `tidegate_request_memory_refused_total`.
fn count_refusal() {
    metrics::counter!("tidegate_request_memory_refused_total").increment(1);
}

impl MemoryGrant {
    /// Makes the reservation cover at least `bytes` (a decoded body larger than the body
    /// as sent): 503 `overloaded` when the difference is not free at once.
    pub fn cover(&self, bytes: usize) -> Result<(), ApiError> {
        match self.try_cover(bytes as u64) {
            Cover::Held => Ok(()),
            Cover::Short(_) => {
                count_refusal();
                Err(ApiError::Overloaded { budget: self.0.budget_units * UNIT })
            }
        }
    }

    /// Grows the reservation to `bytes` if that is free now; otherwise says how many
    /// units are missing.
    fn try_cover(&self, bytes: u64) -> Cover {
        let mut permit = self.0.permit.lock().unwrap_or_else(PoisonError::into_inner);
        let held = permit.num_permits() as u64;
        let wanted = units_of(bytes);
        if wanted <= held {
            return Cover::Held;
        }
        let more = u32::try_from(wanted - held).unwrap_or(u32::MAX);
        match self.0.units.clone().try_acquire_many_owned(more) {
            Ok(extra) => {
                permit.merge(extra);
                Cover::Held
            }
            Err(_) => Cover::Short(more),
        }
    }

    fn add(&self, extra: OwnedSemaphorePermit) {
        self.0.permit.lock().unwrap_or_else(PoisonError::into_inner).merge(extra);
    }

    /// Whether the request's whole body has been read (an answer given before then
    /// must close the connection: the rest of the body is still coming).
    pub fn body_read(&self) -> bool {
        self.0.read_all.load(Ordering::Acquire)
    }

    fn mark_read(&self) {
        self.0.read_all.store(true, Ordering::Release);
    }

    /// Bytes this reservation holds.
    pub fn bytes(&self) -> u64 {
        self.0.permit.lock().unwrap_or_else(PoisonError::into_inner).num_permits() as u64 * UNIT
    }
}

enum Cover {
    Held,
    Short(u32),
}

/// [`MemoryGrant::cover`] for a request that may hold no reservation (it had no body
/// to read, so nothing decoded from it needs room).
pub fn cover(grant: Option<&MemoryGrant>, bytes: usize) -> Result<(), ApiError> {
    grant.map_or(Ok(()), |g| g.cover(bytes))
}

/// Reserves a request body's bytes in its [`MemoryGrant`] as they arrive (see
/// [`MeteredBody`]), waiting for room up to `request_memory_wait_ms` in all.
pub struct BodyMeter {
    grant: MemoryGrant,
    received: u64,
    wait_left: Duration,
    waiting: Option<Waiting>,
}

/// A piece of the body held back until its bytes find room.
struct Waiting {
    frame: Frame<Bytes>,
    room: Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>,
    timer: Pin<Box<tokio::time::Sleep>>,
    began: Instant,
}

/// What a request body read fails with when its bytes find no room in
/// `request_memory_bytes` within `request_memory_wait_ms`: the text is
/// [`crate::error::BODY_OVERLOADED_TEXT`] (extractors report it so).
#[derive(Debug)]
struct NoRoom;

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::error::BODY_OVERLOADED_TEXT)
    }
}

impl std::error::Error for NoRoom {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl BodyMeter {
    /// Hands `frame` on once its bytes are reserved.
    fn admit(&mut self, frame: Frame<Bytes>, cx: &mut Context<'_>) -> Poll<Result<Frame<Bytes>, BoxError>> {
        let Some(data) = frame.data_ref() else { return Poll::Ready(Ok(frame)) };
        self.received += data.len() as u64;
        // At most the whole budget: a body past it is past `max_body_bytes` too (the
        // settings keep that within the budget), and the body limit refuses it with 413.
        match self.grant.try_cover(self.received.min(self.grant.0.budget_units * UNIT)) {
            Cover::Held => Poll::Ready(Ok(frame)),
            Cover::Short(_) if self.wait_left.is_zero() => {
                count_refusal();
                Poll::Ready(Err(Box::new(NoRoom)))
            }
            Cover::Short(more) => {
                let room = Box::pin(self.grant.0.units.clone().acquire_many_owned(more));
                let timer = Box::pin(tokio::time::sleep(self.wait_left));
                self.waiting = Some(Waiting { frame, room, timer, began: Instant::now() });
                self.poll_waiting(cx)
            }
        }
    }

    /// Waits for room for the piece held back.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame<Bytes>, BoxError>> {
        let Some(waiting) = self.waiting.as_mut() else {
            return Poll::Ready(Err(Box::new(NoRoom)));
        };
        let got = match waiting.room.as_mut().poll(cx) {
            Poll::Ready(got) => got.ok(),
            Poll::Pending => {
                ready!(waiting.timer.as_mut().poll(cx));
                None
            }
        };
        let waiting = self.waiting.take().expect("a piece is waiting");
        self.wait_left = self.wait_left.saturating_sub(waiting.began.elapsed());
        match got {
            Some(extra) => {
                self.grant.add(extra);
                Poll::Ready(Ok(waiting.frame))
            }
            None => {
                count_refusal();
                Poll::Ready(Err(Box::new(NoRoom)))
            }
        }
    }
}

/// A request body whose bytes are reserved in `request_memory_bytes` as they arrive:
/// a piece is handed on only once its bytes are reserved, and nothing more is read from
/// `body` while it waits. Without a meter it is `body` as it is.
pub struct MeteredBody<B> {
    body: B,
    meter: Option<BodyMeter>,
}

impl<B: Body> MeteredBody<B> {
    /// `body`, metered by `meter` when there is one.
    pub fn new(body: B, meter: Option<BodyMeter>) -> MeteredBody<B> {
        if let Some(meter) = &meter
            && body.is_end_stream()
        {
            meter.grant.mark_read();
        }
        MeteredBody { body, meter }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(meter) = this.meter.as_mut() else { return Pin::new(&mut this.body).poll_frame(cx) };
        if meter.waiting.is_some() {
            return meter.poll_waiting(cx).map(Some);
        }
        match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if this.body.is_end_stream() {
                    meter.grant.mark_read();
                }
                meter.admit(frame, cx).map(Some)
            }
            None => {
                meter.grant.mark_read();
                Poll::Ready(None)
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.meter.as_ref().is_none_or(|m| m.waiting.is_none()) && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.meter.as_ref().and_then(|m| m.waiting.as_ref()?.frame.data_ref().map(Bytes::len));
        let mut hint = self.body.size_hint();
        if let Some(held) = held {
            let held = held as u64;
            let upper = hint.upper().map(|u| u.saturating_add(held));
            hint.set_lower(hint.lower().saturating_add(held));
            if let Some(upper) = upper {
                hint.set_upper(upper);
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::BodyExt;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    /// A body whose pieces are all there at once.
    struct Pieces(VecDeque<Bytes>);

    impl Body for Pieces {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn metered(m: &RequestMemory, sizes: &[usize]) -> (MemoryGrant, MeteredBody<Pieces>) {
        let (grant, meter) = m.meter(&Method::POST).expect("POST bodies are metered");
        let pieces = sizes.iter().map(|n| Bytes::from(vec![b'x'; *n])).collect();
        (grant, MeteredBody::new(Pieces(pieces), Some(meter)))
    }

    #[test]
    fn a_declared_length_over_the_largest_body_is_refused_unread() {
        let m = RequestMemory::new(64 * UNIT, 16 * UNIT, Duration::ZERO);
        let post = |pairs: &[(&'static str, &str)]| m.check_declared(&Method::POST, &headers(pairs));
        assert!(post(&[]).is_ok(), "no body");
        assert!(post(&[("content-length", "16384")]).is_ok());
        assert!(post(&[("transfer-encoding", "chunked")]).is_ok(), "counted as it arrives");
        assert!(
            matches!(post(&[("content-length", "16385")]), Err(ApiError::TooLarge { code: "body_too_large", .. })),
            "over max_body_bytes: refused unread"
        );
        for method in [Method::GET, Method::DELETE, Method::HEAD] {
            assert!(m.check_declared(&method, &headers(&[("content-length", "99999")])).is_ok(), "{method}");
            assert!(m.meter(&method).is_none(), "{method}: its body is never read");
        }
        assert!(m.meter(&Method::PUT).is_some() && m.meter(&Method::PATCH).is_some());
        assert_eq!(m.reserved_bytes(), 0, "nothing is reserved before bytes arrive");
    }

    #[tokio::test]
    async fn bytes_are_reserved_as_they_arrive_and_released_with_the_last_clone() {
        let m = RequestMemory::new(4 * UNIT, 4 * UNIT, Duration::ZERO);
        let (a, mut body) = metered(&m, &[1000, 1000, 1000]);
        assert_eq!(a.bytes(), 0, "nothing arrived yet");
        body.frame().await.unwrap().unwrap();
        assert_eq!((a.bytes(), m.reserved_bytes()), (UNIT, UNIT));
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest.len(), 2000);
        assert_eq!((a.bytes(), m.reserved_bytes()), (3 * UNIT, 3 * UNIT));
        // The budget's last unit, then no more.
        let (b, body) = metered(&m, &[2000]);
        let refused = body.collect().await.map(|_| ()).unwrap_err();
        assert_eq!(refused.to_string(), crate::error::BODY_OVERLOADED_TEXT);
        assert_eq!(b.bytes(), 0, "the refused piece holds nothing");
        assert!(a.cover(3500).is_ok(), "within what it holds");
        assert!(a.cover(4000).is_ok(), "the last free unit");
        assert!(matches!(a.cover(5000), Err(ApiError::Overloaded { budget }) if budget == 4 * UNIT));
        let clone = a.clone();
        drop(a);
        assert_eq!(m.reserved_bytes(), 4 * UNIT, "a clone keeps the reservation");
        drop(clone);
        assert_eq!(m.reserved_bytes(), 0);
    }

    #[tokio::test]
    async fn a_piece_waits_for_room_then_goes_on() {
        let m = Arc::new(RequestMemory::new(4 * UNIT, 4 * UNIT, Duration::from_secs(30)));
        let (first, body) = metered(&m, &[4096]);
        let _ = body.collect().await.unwrap();
        let waiting = tokio::spawn({
            let m = m.clone();
            async move {
                let (grant, body) = metered(&m, &[1024, 1024]);
                let got = body.collect().await.map(|c| c.to_bytes().len());
                (got.ok(), grant.bytes())
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no room yet");
        drop(first);
        assert_eq!(waiting.await.unwrap(), (Some(2048), 2 * UNIT));
    }

    #[tokio::test]
    async fn a_piece_that_finds_no_room_in_time_fails_the_body() {
        let m = RequestMemory::new(4 * UNIT, 4 * UNIT, Duration::from_millis(50));
        let (_first, body) = metered(&m, &[3072]);
        let _ = body.collect().await.unwrap();
        // The first piece fits; the second waits out the whole wait and fails.
        let (second, mut body) = metered(&m, &[1024, 1024]);
        body.frame().await.unwrap().unwrap();
        let began = Instant::now();
        let refused = body.frame().await.unwrap().unwrap_err();
        assert_eq!(refused.to_string(), crate::error::BODY_OVERLOADED_TEXT);
        assert!(began.elapsed() >= Duration::from_millis(50));
        assert_eq!(second.bytes(), UNIT, "what arrived before stays reserved until the request ends");
    }
}
