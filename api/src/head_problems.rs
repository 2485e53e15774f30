//! Problem documents for the requests hyper refuses before the router sees them.
//!
//! hyper answers a request head it cannot parse on its own: 400 for a malformed request
//! line or header, 414 for a request target over 65,534 bytes, 431 for a head over
//! `max_request_head_bytes` or with more than `max_request_headers` headers. Its answer
//! has an empty body and no content type. [`ProblemIo`] sits between hyper and the
//! socket and writes an `application/problem+json` answer with the same status in its
//! place, so that every refusal the gateway makes has the same shape.
//!
//! How it tells hyper's answers from the router's: every answer the router makes
//! follows a request hyper handed to the service, and the connection counts those
//! ([`HeadsOwed`]). A response head written while no answer is owed can only be one of
//! hyper's own (it writes them only between messages, never while a response is in
//! progress); [`ProblemIo`] swallows it and writes the problem document instead, with
//! `connection: close` (hyper closes the connection after such an answer). After a
//! `101 Switching Protocols` the connection carries WebSocket frames and is passed
//! through untouched.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{PROBLEM_JSON, Problem};

/// Longest request target hyper parses (its fixed limit); 414 above it.
pub const MAX_REQUEST_TARGET_BYTES: usize = 65_534;

/// The head limits named in a 431 answer (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// `max_request_head_bytes`.
    pub max_head_bytes: usize,
    /// `max_request_headers`.
    pub max_headers: usize,
}

/// Answers the service owes on one connection: one per request hyper handed to it,
/// settled when that answer's head is written. Shared by the connection's service
/// (which calls [`HeadsOwed::dispatched`]) and its [`ProblemIo`].
#[derive(Debug, Clone, Default)]
pub struct HeadsOwed(Arc<AtomicUsize>);

impl HeadsOwed {
    /// Records that hyper handed a request to the service: its answer is owed.
    pub fn dispatched(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether an answer is owed.
    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// Settles one owed answer (its head was written).
    fn settle(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the connection carries now.
#[derive(Debug)]
enum State {
    /// HTTP/1.1 messages: response heads are checked.
    Http,
    /// An upgraded connection (WebSocket): passed through.
    Upgraded,
    /// hyper wrote an answer of its own: the problem answer is written instead (up to
    /// `written`) and everything hyper writes from now on is dropped.
    Replacing { answer: Vec<u8>, written: usize },
}

/// A connection's socket as hyper sees it; rewrites hyper's own answers to heads it
/// could not parse into problem documents (see the module documentation). Reads pass
/// through untouched.
#[derive(Debug)]
pub struct ProblemIo<I> {
    inner: I,
    owed: HeadsOwed,
    limits: HeadLimits,
    state: State,
}

/// What a write that starts at `first` means for the owed answers.
enum Head {
    /// Not the start of a response head, or an interim `100 Continue`.
    Other,
    /// The head of an answer of the service's (settles one owed answer).
    Service { upgrade: bool },
    /// hyper's own answer with this status.
    Hypers(u16),
}

impl<I> ProblemIo<I> {
    /// Wraps a connection's socket; `owed` is shared with the connection's service.
    pub fn new(inner: I, owed: HeadsOwed, limits: HeadLimits) -> ProblemIo<I> {
        ProblemIo { inner, owed, limits, state: State::Http }
    }

    fn classify(&self, first: &[u8]) -> Head {
        if !matches!(self.state, State::Http) {
            return Head::Other;
        }
        // hyper may queue an interim 100 Continue and the final head in one write.
        const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        let head = first.strip_prefix(CONTINUE).unwrap_or(first);
        match head_status(head) {
            None | Some(100) => Head::Other,
            Some(status) if self.owed.any() => Head::Service { upgrade: status == 101 },
            Some(status @ (400 | 414 | 431)) => Head::Hypers(status),
            Some(_) => Head::Other,
        }
    }
}

/// The status of a response head that starts `bytes`, if it starts one.
fn head_status(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"HTTP/1.1 ").or_else(|| bytes.strip_prefix(b"HTTP/1.0 "))?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || rest.get(3) != Some(&b' ') {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The problem answer that replaces hyper's answer with `status`.
fn problem_answer(status: u16, limits: HeadLimits) -> Vec<u8> {
    let (status, code, detail) = match status {
        414 => (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than {MAX_REQUEST_TARGET_BYTES} bytes"),
        ),
        431 => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_head_too_large",
            format!(
                "the request head (request line and headers) is larger than max_request_head_bytes ({}) or has \
                 more than max_request_headers ({}) headers",
                limits.max_head_bytes, limits.max_headers
            ),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "the request line or a header is not valid HTTP/1.1".to_string(),
        ),
    };
    let body = serde_json::to_vec(&Problem::new(status, code, detail)).unwrap_or_default();
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {PROBLEM_JSON}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

impl<I: AsyncWrite + Unpin> ProblemIo<I> {
    /// Writes what is left of the replacing answer, if any.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let State::Replacing { answer, written } = &mut self.state {
            while *written < answer.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// One write of hyper's: `first` is its first non-empty slice, `len` its total length,
    /// `write` the write to the socket.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        len: usize,
        write: impl FnOnce(Pin<&mut I>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let head = self.classify(first);
        if let Head::Hypers(status) = head {
            let answer = problem_answer(status, self.limits);
            if let Ok(status) = StatusCode::from_u16(status) {
                crate::metrics::unparsed_request(status);
            }
            self.state = State::Replacing { answer, written: 0 };
        }
        if let State::Replacing { .. } = self.state {
            ready!(self.poll_answer(cx))?;
            return Poll::Ready(Ok(len));
        }
        let n = ready!(write(Pin::new(&mut self.inner), cx))?;
        // Settled only once the head's first bytes are out: a write that returned
        // Pending is repeated with the same head.
        if let Head::Service { upgrade } = head
            && n > 0
        {
            self.owed.settle();
            if upgrade {
                self.state = State::Upgraded;
            }
        }
        Poll::Ready(Ok(n))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ProblemIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ProblemIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, buf, buf.len(), |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        let len = bufs.iter().map(|b| b.len()).sum();
        self.get_mut().poll_write_with(cx, first, len, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 65_536, max_headers: 100 };

    async fn written(owed: &HeadsOwed, writes: &[&[u8]]) -> String {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut io = ProblemIo::new(server, owed.clone(), LIMITS);
        for w in writes {
            io.write_all(w).await.unwrap();
        }
        io.shutdown().await.unwrap();
        drop(io);
        let mut out = String::new();
        let mut client = client;
        client.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn head_status_reads_only_status_lines() {
        assert_eq!(head_status(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), Some(431));
        assert_eq!(head_status(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(head_status(b"HTTP/1.1 20"), None);
        assert_eq!(head_status(b"{\"HTTP/1.1 400 \"}"), None);
        assert_eq!(head_status(b"HTTP/1.1 4x0 Bad"), None);
    }

    #[tokio::test]
    async fn hypers_own_answer_becomes_a_problem_document() {
        let owed = HeadsOwed::default();
        let out = written(&owed, &[b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"]).await;
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains("content-type: application/problem+json"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 431);
        assert_eq!(problem["code"], "request_head_too_large");
        assert!(problem["detail"].as_str().unwrap().contains("max_request_head_bytes (65536)"));
    }

    #[tokio::test]
    async fn service_answers_pass_through_and_settle() {
        let owed = HeadsOwed::default();
        owed.dispatched();
        let answer: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        let out = written(&owed, &[answer]).await;
        assert_eq!(out.as_bytes(), answer);
        assert!(!owed.any(), "the answer's head settles what was owed");
    }

    #[tokio::test]
    async fn interim_continue_does_not_settle() {
        let owed = HeadsOwed::default();
        owed.dispatched();
        let out = written(&owed, &[b"HTTP/1.1 100 Continue\r\n\r\n"]).await;
        assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
        assert!(owed.any());
        // The final head queued behind the interim one settles it.
        let out = written(&owed, &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"]).await;
        assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
        assert!(!owed.any());
    }

    #[tokio::test]
    async fn upgraded_connections_pass_through() {
        let owed = HeadsOwed::default();
        owed.dispatched();
        let frame: &[u8] = b"HTTP/1.1 400 looks like a head but is WebSocket payload";
        let out = written(&owed, &[b"HTTP/1.1 101 Switching Protocols\r\n\r\n", frame]).await;
        assert!(out.ends_with(std::str::from_utf8(frame).unwrap()), "{out}");
    }
}
