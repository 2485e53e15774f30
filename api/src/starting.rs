//! Answers on the listening socket while the node opens its store (a WAL replay may take
//! a while): `/healthz` 200 (the process is alive, so a liveness probe does not restart
//! it), `/readyz` and everything else 503 `not_ready` with `Retry-After`. Each
//! connection is closed after its answer, so none stays with this responder once the
//! node serves for real.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::error::Problem;
use crate::tls::GatewayListener;

/// Runs `work` while answering connections on `listener` as a starting node; returns
/// its output and the listener, untouched but for the connections it answered.
pub async fn answer_while<T>(
    mut listener: GatewayListener,
    work: impl Future<Output = T>,
    header_timeout: Duration,
) -> (T, GatewayListener) {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return (out, listener),
            (io, _peer) = axum::serve::Listener::accept(&mut listener) => {
                tokio::spawn(async move {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(false);
                    let service = hyper::service::service_fn(answer);
                    // A client that goes away early is no error of ours.
                    let _ = builder.serve_connection(TokioIo::new(io), service).await;
                });
            }
        }
    }
}

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = if req.uri().path() == "/healthz" {
        let ok = (StatusCode::OK, [("content-type", "application/json")], r#"{"status":"starting"}"#);
        ok.into_response().into_parts()
    } else {
        let problem =
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the node is starting (opening its data)");
        let mut resp = problem.into_response();
        resp.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        resp.into_parts()
    };
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    Ok(Response::from_parts(parts, Full::new(bytes)))
}
