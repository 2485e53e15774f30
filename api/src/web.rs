//! The dashboard: the static files of `web/` embedded into the binary at compile time
//! and served at `/` (`index.html`) and `/ui/{path}`.
//!
//! Every answer carries its content type, a strong `ETag` (a hash of the bytes, so a
//! changed file gets a new one and `If-None-Match` gets 304), `Cache-Control:
//! no-cache` (browsers revalidate, so an upgraded binary is picked up at once), and
//! is sent gzip-compressed when the client accepts gzip (compressed once, on first
//! use). Nothing is fetched from anywhere else at run time: the one library the
//! dashboard uses is vendored in `web/vendor/`.
//!
//! These routes are public: the page asks for a token itself when the API answers 401.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use crate::error::Problem;

/// One embedded file: its path below `web/` and its bytes.
struct Embedded {
    path: &'static str,
    bytes: &'static [u8],
}

/// Embeds files of `web/` by path. A unit test checks that this list names exactly the
/// files in `web/`, so a new asset cannot be forgotten.
macro_rules! embed {
    ($($path:literal),+ $(,)?) => {
        &[$(Embedded { path: $path, bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../web/", $path)) }),+]
    };
}

static EMBEDDED: &[Embedded] = embed![
    "index.html",
    "favicon.svg",
    "style.css",
    "js/api.js",
    "js/app.js",
    "js/chart.js",
    "js/format.js",
    "js/sampler.js",
    "js/pages/group.js",
    "js/pages/groups.js",
    "js/pages/node.js",
    "js/pages/tail.js",
    "js/pages/topic.js",
    "js/pages/topics.js",
    "vendor/README.md",
    "vendor/uPlot.LICENSE",
    "vendor/uPlot.iife.min.js",
    "vendor/uPlot.min.css",
];

/// Content security policy of the dashboard: its own scripts and styles only (uPlot
/// sets element styles), fetches and WebSockets to this origin only.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A file ready to serve: content type, ETag, and the gzip form when it is smaller.
#[derive(Debug)]
pub struct StaticFile {
    content_type: &'static str,
    bytes: Bytes,
    etag: HeaderValue,
    gzip: Option<Bytes>,
    csp: bool,
}

impl StaticFile {
    /// Prepares `bytes` for serving as `content_type`: hashes them for the ETag and
    /// compresses text with gzip when that makes it smaller.
    pub fn new(content_type: &'static str, bytes: impl Into<Bytes>) -> StaticFile {
        let bytes: Bytes = bytes.into();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        let etag = HeaderValue::from_str(&format!("\"{:016x}-{:x}\"", hasher.finish(), bytes.len()))
            .expect("a hex ETag is a valid header value");
        let compressible = content_type.starts_with("text/")
            || content_type.starts_with("application/json")
            || content_type.starts_with("image/svg");
        let gzip = compressible.then(|| gzip(&bytes)).flatten().filter(|z| z.len() < bytes.len()).map(Bytes::from);
        StaticFile { content_type, bytes, etag, gzip, csp: false }
    }

    /// Sends the dashboard's `Content-Security-Policy` with this file (HTML pages).
    pub fn with_csp(mut self) -> StaticFile {
        self.csp = true;
        self
    }

    /// The answer to a GET with `request` headers: 304 when `If-None-Match` names the
    /// current ETag, else 200 with the (possibly gzip) body.
    pub fn respond(&self, request: &HeaderMap) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if self.csp {
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        }
        if etag_matches(request, &self.etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        match &self.gzip {
            Some(z) if accepts_gzip(request) => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                (headers, z.clone()).into_response()
            }
            _ => (headers, self.bytes.clone()).into_response(),
        }
    }
}

fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(bytes).ok()?;
    z.finish().ok()
}

/// Whether `If-None-Match` lists `etag`, weak (`W/`) or not, or is `*`.
pub(crate) fn etag_matches(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(etag) = etag.to_str().ok() else { return false };
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').map(|t| t.trim().trim_start_matches("W/")).any(|t| t == etag || t == "*"))
}

/// Whether `Accept-Encoding` allows gzip (named without `q=0`).
fn accepts_gzip(request: &HeaderMap) -> bool {
    request.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| p.strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()) == Some(0.0));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        },
    )
}

/// Content type by file extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "md" => "text/markdown; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    }
}

/// The embedded files by path, prepared on first use.
fn files() -> &'static HashMap<&'static str, StaticFile> {
    static FILES: OnceLock<HashMap<&'static str, StaticFile>> = OnceLock::new();
    FILES.get_or_init(|| {
        EMBEDDED
            .iter()
            .map(|e| {
                let file = StaticFile::new(content_type(e.path), Bytes::from_static(e.bytes));
                (e.path, if e.path.ends_with(".html") { file.with_csp() } else { file })
            })
            .collect()
    })
}

async fn index(request: HeaderMap) -> Response {
    files()["index.html"].respond(&request)
}

async fn asset(Path(path): Path<String>, request: HeaderMap) -> Response {
    match files().get(path.as_str()) {
        Some(file) => file.respond(&request),
        None => {
            Problem::new(StatusCode::NOT_FOUND, "not_found", format!("no dashboard file /ui/{path}")).into_response()
        }
    }
}

/// The dashboard's routes: `/` and `/ui/{path}`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/ui/{*path}", get(asset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read web/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).expect("below web/").to_string_lossy().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn every_file_of_web_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = EMBEDDED.iter().map(|e| e.path.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "the embed! list in api/src/web.rs must name every file of web/");
    }

    #[test]
    fn etag_and_gzip_negotiation() {
        let file = StaticFile::new("text/css; charset=utf-8", "body { color: red }\n".repeat(50).into_bytes());
        assert!(file.gzip.is_some(), "repetitive text compresses");
        let mut req = HeaderMap::new();
        req.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br, gzip;q=0.8"));
        assert!(accepts_gzip(&req));
        req.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0, br"));
        assert!(!accepts_gzip(&req));
        req.insert(header::IF_NONE_MATCH, file.etag.clone());
        assert_eq!(file.respond(&req).status(), StatusCode::NOT_MODIFIED);
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(file.respond(&req).status(), StatusCode::OK);
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("js/app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
        assert_eq!(content_type("vendor/uPlot.LICENSE"), "text/plain; charset=utf-8");
    }
}
