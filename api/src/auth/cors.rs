//! CORS: answers preflights and adds the CORS headers for allowed origins only. An
//! origin that is not allowed gets no `Access-Control-Allow-Origin` at all (it is
//! never echoed), so the browser refuses the response.
//!
//! Allowed origins are `cors_origins` plus every origin a write key lists (a page
//! that may send events must also be able to read the answer).

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use futures_util::future::{Either, FutureExt};
use tower::{Layer, ServiceExt};
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

/// `Vary` of every answer while CORS is on: the request headers a CORS answer depends
/// on. Added as one constant value (tower-http would join its list into a new header
/// value on every request).
const VARY: HeaderValue =
    HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers");

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

/// `app` behind the CORS layer `cors`. A request without `Origin` that is not a
/// preflight (`OPTIONS`) skips the layer: tower-http would add nothing to its answer
/// but `Vary` (which is added here) once [`only_for_allowed`] has removed what an answer
/// without `Access-Control-Allow-Origin` must not carry. So servers, curl and SDKs,
/// which send no `Origin`, do not pay for CORS on every request.
pub fn wrap(app: Router, cors: CorsLayer) -> Router {
    let with_cors = cors.vary([] as [HeaderName; 0]).layer(app.clone());
    let serve = tower::service_fn(move |req: Request| {
        if req.method() == Method::OPTIONS || req.headers().contains_key(header::ORIGIN) {
            Either::Left(with_cors.clone().oneshot(req).map(|r| r.map(only_for_allowed)))
        } else {
            Either::Right(app.clone().oneshot(req).map(|r| {
                r.map(|mut response| {
                    response.headers_mut().append(header::VARY, VARY);
                    response
                })
            }))
        }
    });
    Router::new().fallback_service(serve)
}

/// Removes the `Access-Control-*` headers of an answer without
/// `Access-Control-Allow-Origin`: tower-http adds `Allow-Credentials`, `Allow-Methods`,
/// `Allow-Headers` and `Max-Age` whatever the origin, and a refused origin should learn
/// nothing of the policy (browsers ignore them there anyway). Adds [`VARY`].
fn only_for_allowed(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.append(header::VARY, VARY);
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
        .max_age(Duration::from_secs(config.cors_max_age_s));
    if config.cors_allow_credentials {
        cors = cors.allow_credentials(true);
    }
    Ok(Some(cors))
}
