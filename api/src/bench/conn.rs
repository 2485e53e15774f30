//! One HTTP/1.1 keep-alive connection for the load tool, on hyper's connection-level
//! client: no pool, no per-request URL parsing or default headers, so the generator,
//! which shares the machine with the server it measures, spends little CPU per request.
//!
//! A connection that fails is dropped and opened again on the next send.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a send failed before an HTTP status arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(hyper::Error),
    #[error("request: {0}")]
    Request(hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A lazily (re)connected HTTP/1.1 connection to one server; requests go one at a time.
pub(crate) struct Conn {
    addr: SocketAddr,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// A connection to `addr`, opened on the first send; each send waits at most `timeout`
    /// (connecting included) for the whole answer.
    pub(crate) fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self { addr, timeout, sender: None }
    }

    /// Sends `req` and reads the whole answer. On any failure the connection is closed.
    pub(crate) async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), ConnError> {
        let result = match tokio::time::timeout(self.timeout, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::Timeout(self.timeout)),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), ConnError> {
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            _ => self.sender.insert(self.connect().await?),
        };
        sender.ready().await.map_err(ConnError::Request)?;
        let resp = sender.send_request(req).await.map_err(ConnError::Request)?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(ConnError::Request)?.to_bytes();
        Ok((status, body))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ConnError> {
        let stream =
            TcpStream::connect(self.addr).await.map_err(|source| ConnError::Connect { addr: self.addr, source })?;
        stream.set_nodelay(true).map_err(|source| ConnError::Connect { addr: self.addr, source })?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(ConnError::Handshake)?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes; errors surface on the sender.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut conn = Conn::new(addr, Duration::from_secs(5));
        let req = Request::post("/").body(Full::new(Bytes::new())).unwrap();
        assert!(matches!(conn.send(req).await, Err(ConnError::Connect { .. })));
    }

    #[tokio::test]
    async fn sends_requests_over_one_kept_alive_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // Exactly one accepted connection answers both requests.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            let mut answered = 0;
            while answered < 2 {
                let n = s.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
                while let Some(end) = seen.windows(6).position(|w| w == b"\r\n\r\nhi") {
                    seen.drain(..end + 6);
                    s.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                    answered += 1;
                }
            }
        });
        let mut conn = Conn::new(addr, Duration::from_secs(5));
        for _ in 0..2 {
            let req = Request::post("/x").header("content-length", "2").body(Full::new(Bytes::from("hi"))).unwrap();
            let (status, body) = conn.send(req).await.unwrap();
            assert_eq!(status, StatusCode::CREATED);
            assert_eq!(&body[..], b"ok");
        }
        server.await.unwrap();
    }
}
