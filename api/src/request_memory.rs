//! The memory budget of request bodies in flight (`request_memory_bytes`).
//!
//! Guarantees:
//! - Before the body of a `POST`, `PUT` or `PATCH` is read, its size is reserved: its
//!   `Content-Length`, or `max_body_bytes` when it comes in chunks (its size is not
//!   known yet). A `Content-Length` over `max_body_bytes` is answered 413 at once,
//!   without reading the body. Other methods' bodies are never read: they reserve
//!   nothing.
//! - A request that does not fit waits, its body unread (so TCP pushes back on the
//!   client), in arrival order, for at most `request_memory_wait_ms`; then it is
//!   answered 503 `overloaded` with `Retry-After` and nothing of it is written.
//! - A compressed body grows its reservation as it is decoded, a step of
//!   [`DECODE_STEP`] bytes ahead of the output, so what decoding holds stays within the
//!   budget; when the next step is not free at once the request is 503 `overloaded`
//!   (waiting while holding memory could stall every request that holds some).
//! - A reservation is held until the request's events are written (with `acks=none`,
//!   until the writer is done with them, after the answer), so bodies read, decoded,
//!   parsed and waiting for the writer together stay within the budget. The budget
//!   counts body bytes; the request's other copies (parsed events, encoded batches) are
//!   about as large again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, Method, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    budget_bytes: u64,
    permit: Mutex<OwnedSemaphorePermit>,
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

    /// Bytes to reserve for a request before its body is read: none without a body, or
    /// for a method whose body no route reads. A `Content-Length` over
    /// `max_body_bytes` is refused (413) here, unread.
    fn needed(&self, method: &Method, headers: &HeaderMap) -> Result<u64, ApiError> {
        if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            return Ok(0);
        }
        let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        match length {
            Some(n) if n > self.max_body => Err(crate::ingest::decode::body_too_large(self.max_body as usize)),
            Some(n) => Ok(n),
            None if headers.contains_key(header::TRANSFER_ENCODING) => Ok(self.max_body),
            None => Ok(0),
        }
    }

    /// Reserves the body of a request, waiting up to `request_memory_wait_ms` for room.
    /// `None` when the request has no body to read.
    pub async fn reserve(&self, method: &Method, headers: &HeaderMap) -> Result<Option<MemoryGrant>, ApiError> {
        let bytes = self.needed(method, headers)?;
        if bytes == 0 {
            return Ok(None);
        }
        // At most the whole budget (the settings keep max_body_bytes within it).
        let units = units_of(bytes).min(self.budget_units) as u32;
        let acquired = match self.units.clone().try_acquire_many_owned(units) {
            Ok(permit) => Ok(permit),
            Err(_) => match tokio::time::timeout(self.wait, self.units.clone().acquire_many_owned(units)).await {
                Ok(Ok(permit)) => Ok(permit),
                Ok(Err(_)) | Err(_) => Err(overloaded(self.budget_bytes())),
            },
        };
        let permit = acquired?;
        Ok(Some(MemoryGrant(Arc::new(Grant {
            units: self.units.clone(),
            budget_bytes: self.budget_bytes(),
            permit: Mutex::new(permit),
        }))))
    }
}

/// The 503 for a body that found no room, counted in `tidegate_request_memory_refused_total`.
fn overloaded(budget: u64) -> ApiError {
    metrics::counter!("tidegate_request_memory_refused_total").increment(1);
    ApiError::Overloaded { budget }
}

impl MemoryGrant {
    /// Makes the reservation cover at least `bytes` (a decoded body larger than the body
    /// as sent): 503 `overloaded` when the difference is not free at once.
    pub fn cover(&self, bytes: usize) -> Result<(), ApiError> {
        let mut permit = self.0.permit.lock().unwrap_or_else(PoisonError::into_inner);
        let held = permit.num_permits() as u64;
        let wanted = units_of(bytes as u64);
        if wanted <= held {
            return Ok(());
        }
        let more = u32::try_from(wanted - held).unwrap_or(u32::MAX);
        match self.0.units.clone().try_acquire_many_owned(more) {
            Ok(extra) => {
                permit.merge(extra);
                Ok(())
            }
            Err(_) => Err(overloaded(self.0.budget_bytes)),
        }
    }

    /// Bytes this reservation holds.
    pub fn bytes(&self) -> u64 {
        self.0.permit.lock().unwrap_or_else(PoisonError::into_inner).num_permits() as u64 * UNIT
    }
}

/// [`MemoryGrant::cover`] for a request that may hold no reservation (it had no body
/// to read, so nothing decoded from it needs room).
pub fn cover(grant: Option<&MemoryGrant>, bytes: usize) -> Result<(), ApiError> {
    grant.map_or(Ok(()), |g| g.cover(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_body_reserves_its_length_or_the_largest_body_when_chunked() {
        let m = RequestMemory::new(64 * UNIT, 16 * UNIT, Duration::ZERO);
        let post = |pairs: &[(&'static str, &str)]| m.needed(&Method::POST, &headers(pairs));
        assert_eq!(post(&[]).unwrap(), 0, "no body");
        assert_eq!(post(&[("content-length", "0")]).unwrap(), 0);
        assert_eq!(post(&[("content-length", "5000")]).unwrap(), 5000);
        assert!(
            matches!(post(&[("content-length", "16385")]), Err(ApiError::TooLarge { code: "body_too_large", .. })),
            "over max_body_bytes: refused unread"
        );
        assert_eq!(post(&[("transfer-encoding", "chunked")]).unwrap(), 16 * UNIT);
        assert_eq!(m.needed(&Method::PATCH, &headers(&[("content-length", "5000")])).unwrap(), 5000);
        for method in [Method::GET, Method::DELETE, Method::HEAD] {
            assert_eq!(m.needed(&method, &headers(&[("content-length", "5000")])).unwrap(), 0, "{method}: never read");
        }
    }

    #[tokio::test]
    async fn reservations_are_bounded_and_released_with_their_last_clone() {
        let m = RequestMemory::new(4 * UNIT, 4 * UNIT, Duration::from_millis(20));
        let h = headers(&[("content-length", "3000")]);
        let a = m.reserve(&Method::POST, &h).await.unwrap().unwrap();
        assert_eq!((a.bytes(), m.reserved_bytes()), (3 * UNIT, 3 * UNIT));
        let refused = m.reserve(&Method::POST, &h).await.unwrap_err();
        assert!(matches!(refused, ApiError::Overloaded { budget } if budget == 4 * UNIT));
        assert!(a.cover(3500).is_ok(), "within what it holds");
        assert!(a.cover(4000).is_ok(), "the last free unit");
        assert_eq!(m.reserved_bytes(), 4 * UNIT);
        assert!(matches!(a.cover(5000), Err(ApiError::Overloaded { .. })), "beyond the budget");
        let clone = a.clone();
        drop(a);
        assert_eq!(m.reserved_bytes(), 4 * UNIT, "a clone keeps the reservation");
        drop(clone);
        assert_eq!(m.reserved_bytes(), 0);
        assert!(m.reserve(&Method::POST, &h).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_waiting_request_goes_on_when_memory_is_released() {
        let m = Arc::new(RequestMemory::new(4 * UNIT, 4 * UNIT, Duration::from_secs(30)));
        let first = m.reserve(&Method::POST, &headers(&[("content-length", "4096")])).await.unwrap().unwrap();
        let waiting = tokio::spawn({
            let m = m.clone();
            async move {
                m.reserve(&Method::POST, &headers(&[("content-length", "2048")])).await.map(|g| g.map(|g| g.bytes()))
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no room yet");
        drop(first);
        assert_eq!(waiting.await.unwrap().unwrap(), Some(2 * UNIT));
    }
}
