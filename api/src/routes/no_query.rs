//! The extractor of admin routes that take no query parameters.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;

/// Query parameters the authentication layer reads on every route.
const AUTH_PARAMS: [&str; 2] = ["key", "access_token"];

/// Refuses any query string (400 `invalid_request`), as routes with parameters refuse
/// unknown ones: a mistyped or imagined option (`DELETE /v1/topics/t?dry_run=true`)
/// must fail rather than be ignored. Admin routes take it; probes, `/metrics`,
/// `/tracker.js` and the Segment routes do not (their callers add cache-busters).
/// `key` and `access_token` are the authentication layer's: it answers them (a write
/// key cannot administer, a token in the URL is refused) before this check.
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let names: Vec<&str> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split('=').next().unwrap_or(p))
            .filter(|name| !AUTH_PARAMS.contains(name))
            .collect();
        if names.is_empty() {
            return Ok(NoQuery);
        }
        let shown: String = names.join(", ").chars().take(200).collect();
        Err(ApiError::invalid("invalid_request", format!("this route takes no query parameters; got: {shown}")))
    }
}
