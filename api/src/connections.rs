//! The HTTP/1.1 connection loop: accepts connections from the node's listener and
//! serves each with hyper, bounded in time and number, and drains them on shutdown.
//!
//! Guarantees:
//! - A client gets `http_header_timeout_ms` to send a request's head; after it the
//!   connection is closed (a slow-header client cannot hold a connection open).
//! - A request body that goes `http_body_timeout_ms` without a byte, or keeps the
//!   server waiting for its bytes for `http_body_total_timeout_ms` in all, fails the
//!   request with 408 `request_timeout` (see [`StallTimeout`]).
//! - The body of a `POST`, `PUT` or `PATCH` is reserved in `request_memory_bytes` as it
//!   arrives (see [`crate::request_memory::MeteredBody`]); the reservation is in the
//!   request's extensions ([`crate::request_memory::MemoryGrant`]).
//! - A request head over `max_request_head_bytes` or with more than
//!   `max_request_headers` headers is answered 431, and hyper's other answers to heads
//!   it cannot parse (400, 414) are problem documents too (see [`crate::head_problems`]).
//! - At most `max_connections` connections are served at once; further clients wait in
//!   the listen backlog. An upgraded connection (WebSocket) leaves the count when it is
//!   handed to its session (`max_subscriptions` bounds those).
//! - On shutdown no connection is accepted any more; connections finish the request in
//!   flight and close (idle kept-alive ones at once); [`serve_connections`] returns when
//!   all are closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::head_problems::{HeadLimits, HeadsOwed, ProblemIo};
use crate::request_memory::{MeteredBody, RequestMemory};
use crate::tls::GatewayListener;

/// Limits of the connection loop (from the configuration).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// `http_header_timeout_ms`.
    pub header_timeout: Duration,
    /// `http_body_timeout_ms`.
    pub body_timeout: Duration,
    /// `http_body_total_timeout_ms`.
    pub body_total_timeout: Duration,
    /// `max_connections`.
    pub max_connections: usize,
    /// `max_request_head_bytes` and `max_request_headers`.
    pub head: HeadLimits,
    /// `request_memory_bytes`, shared by every connection.
    pub memory: Arc<RequestMemory>,
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the open
/// connections to finish (the caller bounds that wait).
pub async fn serve_connections(
    mut listener: GatewayListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    // Set on shutdown: every connection then finishes its request in flight and closes.
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.head.max_head_bytes)
        .max_headers(limits.head.max_headers);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (io, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        // The router, with the peer's address as axum's `ConnectInfo` and every request
        // body bounded by the body timeout between bytes and counted in the memory
        // budget as it arrives.
        let (app, memory) = (app.clone(), limits.memory.clone());
        let (timeout, total) = (limits.body_timeout, limits.body_total_timeout);
        let owed = HeadsOwed::default();
        let io = ProblemIo::new(io, owed.clone(), limits.head);
        let service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
            owed.dispatched();
            req.extensions_mut().insert(ConnectInfo(peer));
            let meter = memory.meter(req.method()).map(|(grant, meter)| {
                req.extensions_mut().insert(grant);
                meter
            });
            let req = req.map(|body| Body::new(MeteredBody::new(StallTimeout::new(body, timeout, total), meter)));
            app.clone().oneshot(req)
        });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = async { drop(stop.wait_for(|stop| *stop).await) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::trace!(client = %peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it is closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// A request body that fails when no frame arrives for `timeout`, or when it has kept
/// the server waiting for `total` in all (only the time spent waiting for the client
/// counts). The timer is armed only while the body is waiting for the client: a body
/// already read with its request head (nearly every small request) costs no timer at
/// all.
struct StallTimeout {
    body: Incoming,
    timeout: Duration,
    total: Duration,
    /// Time spent waiting for the client before the current wait.
    waited: Duration,
    /// The current wait: when it began, and the timer that ends it.
    wait: Option<(Instant, Pin<Box<tokio::time::Sleep>>)>,
}

impl StallTimeout {
    fn new(body: Incoming, timeout: Duration, total: Duration) -> StallTimeout {
        StallTimeout { body, timeout, total, waited: Duration::ZERO, wait: None }
    }
}

/// The error of a stalled body; its text is [`crate::error::BODY_TIMEOUT_TEXT`], or
/// [`crate::error::BODY_TOO_SLOW_TEXT`] when it took too long in all.
#[derive(Debug)]
struct BodyStalled {
    in_all: bool,
}

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.in_all { crate::error::BODY_TOO_SLOW_TEXT } else { crate::error::BODY_TIMEOUT_TEXT })
    }
}

impl std::error::Error for BodyStalled {}

impl hyper::body::Body for StallTimeout {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some((began, _)) = this.wait.take() {
                    this.waited += began.elapsed();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let left = this.total.saturating_sub(this.waited);
                let (_, timer) = this
                    .wait
                    .get_or_insert_with(|| (Instant::now(), Box::pin(tokio::time::sleep(this.timeout.min(left)))));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled { in_all: left <= this.timeout })))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
