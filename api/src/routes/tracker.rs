//! `GET /tracker.js`: the first-party tracker, embedded in the binary
//! (`api/assets/tracker.js`, hand-written ES2017, no build step).
//!
//! Served as `application/javascript` with a strong `ETag` (a hash of the file) and
//! `Cache-Control: public, max-age=3600`; a matching `If-None-Match` answers 304.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The tracker's source.
pub const TRACKER_JS: &str = include_str!("../../assets/tracker.js");

/// The tracker's entity tag: FNV-1a of its bytes (stable across builds of the same file).
static ETAG: LazyLock<String> = LazyLock::new(|| {
    let hash =
        TRACKER_JS.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("\"{hash:016x}\"")
});

/// The first-party tracker (JavaScript).
#[utoipa::path(get, path = "/tracker.js", tag = "tracker",
    responses(
        (status = 200, description = "The tracker", body = String, content_type = "application/javascript"),
        (status = 304, description = "Not modified (`If-None-Match` matched the `ETag`)"),
    ))]
pub async fn tracker_js(request: HeaderMap) -> Response {
    let etag = HeaderValue::from_str(&ETAG).expect("the ETag is ASCII");
    let cache = HeaderValue::from_static("public, max-age=3600");
    // Weak comparison (RFC 9110, 13.1.2): a proxy that compresses marks the ETag weak.
    if crate::web::etag_matches(&request, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag), (header::CACHE_CONTROL, cache)]).into_response();
    }
    let content_type = HeaderValue::from_static("application/javascript; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type), (header::ETAG, etag), (header::CACHE_CONTROL, cache)], TRACKER_JS)
        .into_response()
}
