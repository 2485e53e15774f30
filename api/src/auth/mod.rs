//! Who is calling, and what they may do.
//!
//! Two middlewares run before every handler:
//! - [`authenticate`] (on every request) resolves the client address, applies the
//!   per-IP rate limit, and reads the credentials (a JWT bearer token, or a browser
//!   write key) into a [`Caller`] placed in the request's extensions;
//! - [`refusal`] (the gate of every matched route) refuses missing or bad credentials with 401
//!   before anything else (body parsing included) runs, except on the routes listed in
//!   [`PUBLIC_ROUTES`] and on the produce routes, where a write key may come in the body
//!   (a request with no credentials is decoded, within `max_body_bytes`, and refused
//!   401 after; a body that cannot be read gets its own 4xx first); it refuses write
//!   keys (403) outside [`PRODUCE_ROUTES`], and tokens sent in the URL (401) outside
//!   [`QUERY_TOKEN_ROUTES`].
//!   Routes are protected unless listed, so a new route cannot be left open by mistake.
//!
//! Each handler then asks the caller for the permission its operation needs
//! ([`Caller::require`]): a good token without the permission gets 403.
//!
//! Authentication is on when any credential source is configured (`jwt_keys`,
//! `jwks_file` or `write_keys`); with none, every caller may do everything, which the
//! server allows only on a loopback address unless started with `--insecure`.

pub mod client_ip;
pub mod cors;
pub mod grants;
pub mod jwt;
pub mod limits;
pub mod mint;
pub mod open;
pub mod origins;
pub mod settings;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

pub use grants::{Action, Grants};
use jwt::{Verified, Verifier};
use limits::{LimitScope, RateLimits};
use origins::OriginPattern;
use settings::{IpNets, WriteKeySpec};

use crate::config::Config;
use crate::error::ApiError;
use crate::state::SharedState;

/// Why a caller was refused. Messages never contain a token or secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// Authentication is on and the request carried no credentials.
    #[error("authentication required: send a bearer token (or a write key to produce)")]
    MissingCredentials,
    /// The token is malformed, its signature does not verify, or no key fits it.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The token's `exp` has passed.
    #[error("the token has expired")]
    TokenExpired,
    /// The token's `nbf` is in the future.
    #[error("the token is not valid yet (nbf)")]
    TokenNotYetValid,
    /// The token's `aud` is not one of `jwt_audience`.
    #[error("the token's audience is not accepted")]
    InvalidAudience,
    /// The token's `iss` is not one of `jwt_issuer`.
    #[error("the token's issuer is not accepted")]
    InvalidIssuer,
    /// The write key is not configured.
    #[error("unknown write key")]
    UnknownWriteKey,
    /// The credentials are valid but do not grant this.
    #[error("{0}")]
    Forbidden(String),
    /// The write key may not be used from this origin.
    #[error("write key not allowed from origin {0:?}")]
    OriginNotAllowed(String),
    /// Authentication is off and the request's `Host` does not name this machine (see
    /// [`open`]).
    #[error(
        "Host {0:?} does not name this machine: without authentication the gateway answers only requests \
         addressed to localhost or a loopback address (a guard against DNS rebinding); configure \
         authentication, or pass --insecure behind a proxy"
    )]
    HostNotAllowed(String),
    /// Authentication is off and the request comes from a web page of another origin
    /// (see [`open`]).
    #[error(
        "requests from pages of origin {0:?} are refused: without authentication only pages served from this \
         machine or from an origin in cors_origins may call the gateway"
    )]
    PageNotAllowed(String),
    /// Authentication is off and a browser marked the request `Sec-Fetch-Site:
    /// cross-site` without an `Origin` (an `<img>`, `<iframe>` or followed link of another
    /// site; see [`open`]).
    #[error(
        "a cross-site browser request without Origin (Sec-Fetch-Site: cross-site) is refused: without \
         authentication only pages served from this machine or from an origin in cors_origins may call the gateway"
    )]
    CrossSiteWithoutOrigin,
    /// Over a rate limit; retry after the given time.
    #[error("rate limit ({}) exceeded; retry in {}s", scope.as_str(), retry_after_secs(*retry_after))]
    RateLimited { scope: LimitScope, retry_after: Duration },
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

/// Every `reason` label of `tidegate_auth_refused_total` ([`AuthError::reason`] of all
/// refusals but rate limits, which have their own counter).
pub const REFUSAL_REASONS: [&str; 10] = [
    "unauthorized",
    "invalid_token",
    "token_expired",
    "token_not_yet_valid",
    "invalid_audience",
    "invalid_issuer",
    "invalid_write_key",
    "forbidden",
    "origin_not_allowed",
    "host_not_allowed",
];

impl AuthError {
    /// Label for `tidegate_auth_refused_total{reason}` (one of [`REFUSAL_REASONS`]).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "unauthorized",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::TokenExpired => "token_expired",
            AuthError::TokenNotYetValid => "token_not_yet_valid",
            AuthError::InvalidAudience => "invalid_audience",
            AuthError::InvalidIssuer => "invalid_issuer",
            AuthError::UnknownWriteKey => "invalid_write_key",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::OriginNotAllowed(_) | AuthError::PageNotAllowed(_) | AuthError::CrossSiteWithoutOrigin => {
                "origin_not_allowed"
            }
            AuthError::HostNotAllowed(_) => "host_not_allowed",
            AuthError::RateLimited { .. } => "rate_limited",
        }
    }
}

/// A write key and its parsed origins.
#[derive(Debug)]
struct WriteKey {
    spec: WriteKeySpec,
    origins: Vec<OriginPattern>,
}

/// The security settings of a node, loaded and checked once at start-up.
#[derive(Debug)]
pub struct Security {
    verifier: Verifier,
    write_keys: HashMap<String, WriteKey>,
    limits: RateLimits,
    trusted_proxies: IpNets,
    enabled: bool,
    public_metrics: bool,
    /// Set while authentication is off (and `insecure` is not).
    open_guard: Option<open::OpenGuard>,
}

impl Security {
    /// Loads keys and limiters; a key that cannot be used is an error.
    pub fn from_config(config: &Config) -> Result<Security, String> {
        let verifier = Verifier::from_config(config)?;
        let mut write_keys = HashMap::new();
        for spec in &config.write_keys.0 {
            let origins = origins::parse_all(&spec.origins).map_err(|e| format!("write key: {e}"))?;
            write_keys.insert(spec.key.clone(), WriteKey { spec: spec.clone(), origins });
        }
        let enabled = verifier.has_keys() || !write_keys.is_empty();
        let open_guard =
            if enabled || config.insecure { None } else { Some(open::OpenGuard::new(cors::allowed_origins(config)?)) };
        Ok(Security {
            open_guard,
            limits: RateLimits::new(config, &config.write_keys),
            verifier,
            write_keys,
            trusted_proxies: config.trusted_proxies.clone(),
            enabled,
            public_metrics: config.public_metrics,
        })
    }

    /// Whether callers must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The JWT verifier (for JWKS reloads).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The rate limiters (for periodic clean-up).
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Whether `key` is a configured write key.
    pub fn is_write_key(&self, key: &str) -> bool {
        self.write_keys.contains_key(key)
    }

    /// Whether `/metrics` is open to everyone.
    pub fn public_metrics(&self) -> bool {
        self.public_metrics
    }

    /// The credentials `headers` and `query` carry, and whether the token came from the
    /// query (`?access_token=`, which [`refusal`] takes only on [`QUERY_TOKEN_ROUTES`]).
    fn credential(&self, headers: &HeaderMap, query: Option<&str>) -> (Credential, bool) {
        if !self.enabled {
            return (Credential::Open, false);
        }
        let mut token = None;
        let mut key = None;
        // One value per credential header: with two, which one a proxy or a log saw is
        // anyone's guess, so neither is taken.
        let auth = match single(headers, header::AUTHORIZATION.as_str()) {
            Ok(auth) => auth,
            Err(e) => return (Credential::Refused(e), false),
        };
        let header_key = match single(headers, "x-write-key") {
            Ok(k) => k,
            Err(e) => return (Credential::Refused(e), false),
        };
        if let Some(auth) = auth {
            let (scheme, value) = auth.trim().split_once(' ').unwrap_or((auth, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                token = Some(value.trim().to_string());
            } else if scheme.eq_ignore_ascii_case("basic") {
                // Segment-style: the write key is the user name, the password is empty.
                let user = base64::engine::general_purpose::STANDARD
                    .decode(value.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .map(|s| s.split_once(':').map_or(s.clone(), |(u, _)| u.to_string()));
                match user {
                    Some(u) if !u.is_empty() => key = Some(u),
                    _ => {
                        let e = AuthError::InvalidToken("malformed Basic credentials".into());
                        return (Credential::Refused(e), false);
                    }
                }
            } else {
                let e = AuthError::InvalidToken(format!("unsupported scheme {scheme:?}"));
                return (Credential::Refused(e), false);
            }
        }
        if key.is_none() {
            key = header_key.map(str::to_owned);
        }
        // Any `access_token` in the URL is noted, also beside a header token: the gate
        // refuses it outside the subscription routes instead of ignoring it.
        let mut token_in_query = false;
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*name {
                "access_token" => {
                    token_in_query = true;
                    if token.is_none() {
                        token = Some(value.into_owned());
                    }
                }
                "key" if key.is_none() => key = Some(value.into_owned()),
                _ => {}
            }
        }
        if let Some(token) = token {
            let credential = match self.verifier.verify_cached(&token) {
                Ok(v) => Credential::Token(v),
                Err(e) => Credential::Refused(e),
            };
            return (credential, token_in_query);
        }
        let credential = match key {
            Some(k) => self.write_key_credential(&k),
            None => Credential::Missing,
        };
        (credential, false)
    }

    fn write_key_credential(&self, key: &str) -> Credential {
        if self.write_keys.contains_key(key) {
            Credential::WriteKey(key.to_string())
        } else {
            Credential::Refused(AuthError::UnknownWriteKey)
        }
    }
}

/// The value of a credential header sent at most once, as text; refused when it is
/// sent twice or is not visible ASCII.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, AuthError> {
    use crate::ingest::decode::{HeaderFault, one_value};
    one_value(headers, name).map_err(|fault| {
        AuthError::InvalidToken(match fault {
            HeaderFault::Repeated => format!("send one {name} header, not several"),
            HeaderFault::NotText => format!("the {name} header is not ASCII text"),
        })
    })
}

/// The credentials of a request.
#[derive(Debug, Clone)]
enum Credential {
    /// Authentication is off: everything is allowed.
    Open,
    /// Authentication is on and nothing was sent.
    Missing,
    /// A verified token.
    Token(Arc<Verified>),
    /// A configured write key.
    WriteKey(String),
    /// Credentials were sent and refused.
    Refused(AuthError),
}

/// Who is calling: client address, `Origin`, and credentials. Every handler that is
/// not public asks it for the permission it needs.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Client address (`X-Forwarded-For` resolved through `trusted_proxies`).
    pub ip: IpAddr,
    /// The request's `Origin` header.
    pub origin: Option<String>,
    credential: Credential,
    /// The token came as `?access_token=`.
    token_in_query: bool,
    security: Arc<Security>,
}

impl Caller {
    /// Allowed to do `action` on `topic`, or the error to answer. A write key also
    /// takes one request from its rate limit.
    pub fn require(&self, action: Action, topic: &str) -> Result<(), ApiError> {
        self.check(action, Some(topic)).map_err(|e| self.refuse(e))
    }

    /// Whether the credentials grant `action` on `topic`, without counting a request or
    /// a refusal (for choices such as whether ingest may create the topic).
    pub fn may(&self, action: Action, topic: &str) -> bool {
        self.check_access(action, Some(topic)).is_ok()
    }

    /// Allowed to do `action` on every topic of `topics` (one request writing to
    /// several, like a Segment batch). A write key takes one request from its rate
    /// limit, however many topics the request writes to.
    pub fn require_each(&self, action: Action, topics: &[String]) -> Result<(), ApiError> {
        if topics.is_empty() {
            // Nothing to write still needs credentials that are good.
            return self.require_authenticated();
        }
        for topic in topics {
            self.check_access(action, Some(topic)).map_err(|e| self.refuse(e))?;
        }
        self.take_request().map_err(|e| self.refuse(e))
    }

    /// Allowed to do `action` on every topic (pattern `*`), e.g. admin for `/metrics`.
    pub fn require_everywhere(&self, action: Action) -> Result<(), ApiError> {
        self.check(action, None).map_err(|e| self.refuse(e))
    }

    /// Allowed to see `topic` (any permission on it), e.g. to describe it.
    pub fn require_visible(&self, topic: &str) -> Result<(), ApiError> {
        self.require_authenticated()?;
        if self.can_see(topic) {
            Ok(())
        } else {
            Err(self.refuse(AuthError::Forbidden(format!("no permission on topic {topic:?}"))))
        }
    }

    /// Authenticated at all (any valid credential), for listings that are then filtered.
    pub fn require_authenticated(&self) -> Result<(), ApiError> {
        match &self.credential {
            Credential::Missing => Err(self.refuse(AuthError::MissingCredentials)),
            Credential::Refused(e) => Err(self.refuse(e.clone())),
            _ => Ok(()),
        }
    }

    /// Whether `action` on `topic` would be allowed (for filtering lists; counts nothing).
    pub fn can(&self, action: Action, topic: &str) -> bool {
        self.check_grant(action, Some(topic))
    }

    /// The grant check of [`Caller::can`] (`None`: every topic), without origin or rate checks.
    fn check_grant(&self, action: Action, topic: Option<&str>) -> bool {
        match (&self.credential, topic) {
            (Credential::Open, _) => true,
            (Credential::Token(v), Some(t)) => v.grants.allows(action, t),
            (Credential::Token(v), None) => v.grants.allows_everywhere(action),
            (Credential::WriteKey(k), Some(t)) => action == Action::Produce && self.key_allows_topic(k, t),
            (Credential::WriteKey(_) | Credential::Missing | Credential::Refused(_), _) => false,
        }
    }

    /// Whether `action` would be allowed on every topic (pattern `*`).
    pub fn can_everywhere(&self, action: Action) -> bool {
        self.check_grant(action, None)
    }

    /// Whether the caller may see `topic` at all (any permission on it).
    pub fn can_see(&self, topic: &str) -> bool {
        match &self.credential {
            Credential::Open => true,
            Credential::Token(v) => v.grants.allows_any(topic),
            Credential::WriteKey(_) | Credential::Missing | Credential::Refused(_) => false,
        }
    }

    /// From when the caller's token is refused: its `exp` plus `jwt_leeway_s`, as HTTP
    /// requests are checked (`None`: no token, authentication off, or an `exp` beyond
    /// what the clock can hold).
    pub fn expires_at(&self) -> Option<SystemTime> {
        match &self.credential {
            Credential::Token(v) => {
                let leeway = self.security.verifier.leeway_s();
                UNIX_EPOCH.checked_add(Duration::from_secs(v.expires_at.saturating_add(leeway)))
            }
            _ => None,
        }
    }

    /// A caller that sent no credentials in headers or query, taking the write key a
    /// body carried (`writeKey`). Other callers are returned unchanged.
    pub fn with_body_write_key(mut self, key: Option<&str>) -> Caller {
        if let (Credential::Missing, Some(k)) = (&self.credential, key) {
            self.credential = self.security.write_key_credential(k);
        }
        self
    }

    /// Whether the request is authorised by a write key (not a token, not open).
    pub fn uses_write_key(&self) -> bool {
        matches!(self.credential, Credential::WriteKey(_))
    }

    /// Whether the request still lacks credentials (a body write key may supply them).
    pub fn needs_credentials(&self) -> bool {
        matches!(self.credential, Credential::Missing)
    }

    fn key_allows_topic(&self, key: &str, topic: &str) -> bool {
        self.security
            .write_keys
            .get(key)
            .is_some_and(|k| k.spec.topics.iter().any(|p| grants::pattern_matches(p, topic)))
    }

    /// [`Caller::check_access`], then [`Caller::take_request`].
    fn check(&self, action: Action, topic: Option<&str>) -> Result<(), AuthError> {
        self.check_access(action, topic)?;
        self.take_request()
    }

    /// Takes one request from a write key's rate limit (nothing for other callers).
    fn take_request(&self) -> Result<(), AuthError> {
        match &self.credential {
            Credential::WriteKey(k) => self
                .security
                .limits
                .check_key(k)
                .map_err(|retry_after| AuthError::RateLimited { scope: LimitScope::Key, retry_after }),
            _ => Ok(()),
        }
    }

    /// Whether the credentials allow `action` on `topic` (`None`: every topic).
    fn check_access(&self, action: Action, topic: Option<&str>) -> Result<(), AuthError> {
        let what = || match topic {
            Some(t) => format!("{} on topic {t:?}", action.as_str()),
            None => format!("{} on every topic", action.as_str()),
        };
        match &self.credential {
            Credential::Open => Ok(()),
            Credential::Missing => Err(AuthError::MissingCredentials),
            Credential::Refused(e) => Err(e.clone()),
            Credential::Token(_) if self.check_grant(action, topic) => Ok(()),
            Credential::Token(_) => Err(AuthError::Forbidden(format!("the token does not grant {}", what()))),
            Credential::WriteKey(k) => {
                let Some(spec) = self.security.write_keys.get(k) else { return Err(AuthError::UnknownWriteKey) };
                if action != Action::Produce {
                    return Err(AuthError::Forbidden(format!("a write key may only produce, not {}", what())));
                }
                match topic {
                    Some(t) if self.key_allows_topic(k, t) => {}
                    _ => return Err(AuthError::Forbidden(format!("the write key does not grant {}", what()))),
                }
                if !spec.origins.is_empty() {
                    let origin = self.origin.as_deref().unwrap_or("");
                    if !origins::any_matches(&spec.origins, origin) {
                        return Err(AuthError::OriginNotAllowed(origin.to_string()));
                    }
                }
                Ok(())
            }
        }
    }

    /// Counts and logs a refusal (without secrets) and turns it into the API error.
    fn refuse(&self, e: AuthError) -> ApiError {
        record_refusal(&e, self.ip);
        ApiError::Auth(e)
    }
}

/// Counts a refusal in `/metrics` and logs it with the client address.
fn record_refusal(e: &AuthError, ip: IpAddr) {
    match e {
        AuthError::RateLimited { scope, .. } => {
            metrics::counter!("tidegate_rate_limited_total", "scope" => scope.as_str()).increment(1);
            tracing::debug!(client = %ip, scope = scope.as_str(), "rate limited");
        }
        other => {
            metrics::counter!("tidegate_auth_refused_total", "reason" => other.reason()).increment(1);
            tracing::info!(client = %ip, reason = other.reason(), detail = %other, "request refused");
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::Storage(tidegate_storage::StorageError::Internal("authentication middleware missing".into()))
        })
    }
}

/// Paths never rate-limited (load-balancer probes).
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// The Prometheus route: public too when `public_metrics` is set.
pub const METRICS_ROUTE: &str = "/metrics";

/// Route templates anyone may call, credentials or not.
pub const PUBLIC_ROUTES: &[&str] =
    &["/healthz", "/readyz", "/openapi.json", "/tracker.js", "/v1/projects/{write_key}/settings"];

/// Route templates that take write keys, which may also come in the body: a request
/// without credentials reaches the handler, which reads the body's `writeKey`.
pub const PRODUCE_ROUTES: &[&str] = &[
    "/v1/topics/{topic}/events",
    // How the OpenAPI document names the Segment calls (routed one path each, see
    // `crate::routes::segment::CALL_PATHS`, which the gate also accepts).
    "/v1/{call}",
];

/// Route templates that take a token as `?access_token=`: WebSocket and EventSource,
/// which cannot set headers. Elsewhere a token in the URL is refused, so it is not
/// left in access logs.
pub const QUERY_TOKEN_ROUTES: &[&str] = &["/v1/topics/{topic}/subscribe", "/v1/topics/{topic}/stream"];

/// The route gate (see the module documentation): the refusal to answer, or `None`
/// when the request may go on to its handler.
pub fn refusal(req: &Request) -> Option<Response> {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str());
    let route = route.unwrap_or("");
    let Some(caller) = req.extensions().get::<Caller>() else {
        return Some(
            ApiError::Storage(tidegate_storage::StorageError::Internal("authentication middleware missing".into()))
                .into_response(),
        );
    };
    // Public routes included: a token in a URL ends up in logs and Referer headers.
    if caller.token_in_query && !QUERY_TOKEN_ROUTES.contains(&route) {
        return Some(query_token_refusal(caller));
    }
    if PUBLIC_ROUTES.contains(&route) || (route == METRICS_ROUTE && caller.security.public_metrics()) {
        return None;
    }
    let produce = PRODUCE_ROUTES.contains(&route) || crate::routes::segment::CALL_PATHS.contains(&route);
    let refusal = match &caller.credential {
        Credential::Open => caller.security.open_guard.as_ref().and_then(|guard| guard.check(req.headers()).err()),
        Credential::Token(_) => None,
        Credential::Missing if produce => None,
        Credential::Missing => Some(AuthError::MissingCredentials),
        Credential::Refused(e) => Some(e.clone()),
        Credential::WriteKey(_) if produce => None,
        Credential::WriteKey(_) => Some(AuthError::Forbidden("a write key may only produce events".into())),
    };
    refusal.map(|e| caller.refuse(e).into_response())
}

/// The 401 for a token in the URL of a route that does not take one: refused rather
/// than ignored, so the caller learns to send the header.
fn query_token_refusal(caller: &Caller) -> Response {
    let e = AuthError::InvalidToken(
        "access_token in the URL is taken only on /subscribe and /stream; send Authorization: Bearer <token>".into(),
    );
    caller.refuse(e).into_response()
}

/// Middleware of the public pages (dashboard, API docs): they take no credentials, and
/// a token in their URL is refused as everywhere else (see [`refusal`]).
pub async fn no_query_token(req: Request, next: axum::middleware::Next) -> Response {
    match req.extensions().get::<Caller>() {
        Some(caller) if caller.token_in_query => query_token_refusal(caller),
        _ => next.run(req).await,
    }
}

/// Middleware: resolves the [`Caller`] and applies the per-IP rate limit; turns the
/// error answers of the layers within into problem documents
/// ([`crate::error::problem_layer`]).
pub async fn authenticate(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400 (and the open-mode
    // guard, which judges the Host, must not be skipped by leaving it out).
    if req.version() == axum::http::Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        let began = std::time::Instant::now();
        let resp =
            ApiError::invalid("missing_host", "a Host header is required (RFC 9112, section 3.2)").into_response();
        crate::metrics::unrouted(req.method(), resp.status(), began);
        return resp;
    }
    let security = state.security.clone();
    let ip = client_ip::client_ip(peer.ip(), req.headers(), &security.trusted_proxies);
    if !PROBES.contains(&req.uri().path())
        && let Err(retry_after) = security.limits.check_ip(ip)
    {
        let began = std::time::Instant::now();
        let e = AuthError::RateLimited { scope: LimitScope::Ip, retry_after };
        record_refusal(&e, ip);
        let resp = ApiError::Auth(e).into_response();
        crate::metrics::unrouted(req.method(), resp.status(), began);
        return resp;
    }
    let (credential, token_in_query) = security.credential(req.headers(), req.uri().query());
    let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    req.extensions_mut().insert(Caller { ip, origin, credential, token_in_query, security });
    // Error answers that are not problem documents yet (axum's rejections, the body
    // limit) are rewritten here, in the same layer.
    crate::error::problem_layer(next.run(req).await).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn every_refusal_reason_is_listed_for_the_metrics() {
        let refusals = [
            AuthError::MissingCredentials,
            AuthError::InvalidToken(String::new()),
            AuthError::TokenExpired,
            AuthError::TokenNotYetValid,
            AuthError::InvalidAudience,
            AuthError::InvalidIssuer,
            AuthError::UnknownWriteKey,
            AuthError::Forbidden(String::new()),
            AuthError::OriginNotAllowed(String::new()),
            AuthError::HostNotAllowed(String::new()),
        ];
        let reasons: Vec<&str> = refusals.iter().map(AuthError::reason).collect();
        assert_eq!(reasons, REFUSAL_REASONS);
        assert_eq!(AuthError::PageNotAllowed(String::new()).reason(), "origin_not_allowed");
    }
}
