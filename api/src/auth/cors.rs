//! CORS: answers preflights and adds the CORS headers for allowed origins only. An
//! origin that is not allowed gets no `Access-Control-Allow-Origin` at all (it is
//! never echoed), so the browser refuses the response.
//!
//! Allowed origins are `cors_origins` plus every origin a write key lists (a page
//! that may send events must also be able to read the answer).

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::origins::{self, OriginPattern};
use crate::config::Config;

/// Request headers browsers may send cross-origin.
const ALLOWED_HEADERS: [&str; 9] = [
    "authorization",
    "content-type",
    "content-encoding",
    "x-write-key",
    "idempotency-key",
    "last-event-id",
    "sp-anonymous",
    "tidegate-anonymous",
    "x-requested-with",
];

/// Response headers scripts on other origins may read.
const EXPOSED_HEADERS: [&str; 3] = ["retry-after", "www-authenticate", "location"];

/// Every allowed origin pattern (`cors_origins` and the write keys' origins).
pub fn allowed_origins(config: &Config) -> Result<Vec<OriginPattern>, String> {
    let mut all = origins::parse_all(&config.cors_origins.0).map_err(|e| format!("cors_origins: {e}"))?;
    for k in &config.write_keys.0 {
        all.extend(origins::parse_all(&k.origins).map_err(|e| format!("write key origins: {e}"))?);
    }
    Ok(all)
}

/// Removes the `Access-Control-*` headers of an answer without
/// `Access-Control-Allow-Origin`: tower-http adds `Allow-Credentials`, `Allow-Methods`,
/// `Allow-Headers` and `Max-Age` whatever the origin, and a refused origin should learn
/// nothing of the policy (browsers ignore them there anyway).
pub async fn only_for_allowed(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        let cors: Vec<HeaderName> =
            headers.keys().filter(|name| name.as_str().starts_with("access-control-")).cloned().collect();
        for name in cors {
            headers.remove(name);
        }
    }
    response
}

/// The CORS layer, or `None` when no origin is allowed (no CORS headers at all).
pub fn layer(config: &Config) -> Result<Option<CorsLayer>, String> {
    let patterns = allowed_origins(config)?;
    if patterns.is_empty() {
        return Ok(None);
    }
    let allow_origin = AllowOrigin::predicate(move |origin: &HeaderValue, _| {
        origin.to_str().is_ok_and(|o| origins::any_matches(&patterns, o))
    });
    let headers: Vec<HeaderName> = ALLOWED_HEADERS.iter().map(|h| HeaderName::from_static(h)).collect();
    let exposed: Vec<HeaderName> = EXPOSED_HEADERS.iter().map(|h| HeaderName::from_static(h)).collect();
    let mut cors = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers(headers)
        .expose_headers(exposed)
        .max_age(Duration::from_secs(config.cors_max_age_s))
        .vary([header::ORIGIN, header::ACCESS_CONTROL_REQUEST_METHOD, header::ACCESS_CONTROL_REQUEST_HEADERS]);
    if config.cors_allow_credentials {
        cors = cors.allow_credentials(true);
    }
    Ok(Some(cors))
}
