//! Guards of a gateway that serves without authentication (allowed only on loopback,
//! unless `insecure`).
//!
//! Without authentication a loopback gateway trusts whoever can reach it: the
//! processes of this machine. But a web page open in a browser on this machine can
//! reach it too: WebSocket upgrades are not subject to CORS, a `text/plain` POST needs
//! no preflight, and DNS rebinding lets a foreign site's page read answers as if it
//! were same-origin. So, in that mode, every route but the public ones checks:
//!
//! - `Host` names this machine (`localhost`, a `*.localhost` name, a loopback address,
//!   any port); a rebinding page sends its own host name: 403 `host_not_allowed`.
//! - `Origin`, when a browser sends one, is a page of this machine (the same names, any
//!   port: local development servers) or an origin `cors_origins` allows: 403
//!   `origin_not_allowed` otherwise.
//! - With no `Origin`, `Sec-Fetch-Site` is not `cross-site`: browsers send no `Origin`
//!   on a cross-site `GET` from an `<img>`, `<iframe>`, `<script>` or a followed link,
//!   and such a `GET` of `/stream` would read a group's records and commit its offsets.
//!   `same-site` (another port of this machine) and `none` (typed by the user) pass.
//!
//! Clients that are not browsers (curl, libraries) send a loopback `Host` and no
//! `Origin`, and are not affected. `insecure` turns the guard off (for a loopback
//! gateway behind a proxy that forwards a public host name).

use std::net::IpAddr;

use axum::http::{HeaderMap, header};

use super::AuthError;
use super::origins::OriginPattern;

/// The fetch-metadata header browsers send with every request (not in `http`'s list).
const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// The checks of an unauthenticated loopback gateway (see the module documentation).
#[derive(Debug, Clone)]
pub struct OpenGuard {
    /// Origins `cors_origins` allows besides this machine's pages.
    allowed: Vec<OriginPattern>,
}

impl OpenGuard {
    /// A guard that also admits pages from `allowed` origins.
    pub fn new(allowed: Vec<OriginPattern>) -> OpenGuard {
        OpenGuard { allowed }
    }

    /// Refuses a request addressed to another host name or sent by a foreign page.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        for host in headers.get_all(header::HOST) {
            let host = host.to_str().unwrap_or_default();
            if !is_local_authority(host) {
                return Err(AuthError::HostNotAllowed(host.chars().take(256).collect()));
            }
        }
        for origin in headers.get_all(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let local = origin.split_once("://").is_some_and(|(_, authority)| is_local_authority(authority));
            if !local && !self.allowed.iter().any(|p| p.matches(origin)) {
                return Err(AuthError::PageNotAllowed(origin.chars().take(256).collect()));
            }
        }
        let cross_site =
            headers.get_all(SEC_FETCH_SITE).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        if cross_site && !headers.contains_key(header::ORIGIN) {
            return Err(AuthError::CrossSiteWithoutOrigin);
        }
        Ok(())
    }
}

/// Whether `authority` (`host[:port]`) names this machine.
fn is_local_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        },
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn only_this_machine_and_allowed_pages_pass() {
        let guard = OpenGuard::new(super::super::origins::parse_all(&["https://shop.example".into()]).unwrap());
        for host in ["localhost:8080", "127.0.0.1:8080", "127.8.9.1", "[::1]:8080", "LOCALHOST", "app.localhost:3000"] {
            assert!(guard.check(&headers(host, None)).is_ok(), "{host}");
        }
        for host in
            ["attacker.example", "attacker.example:8080", "localhost.attacker.example", "10.0.0.1:8080", "[::2]", ""]
        {
            assert!(matches!(guard.check(&headers(host, None)), Err(AuthError::HostNotAllowed(_))), "{host}");
        }
        for origin in ["http://localhost:3000", "http://127.0.0.1:8080", "https://shop.example", "http://[::1]:5173"] {
            assert!(guard.check(&headers("localhost:8080", Some(origin))).is_ok(), "{origin}");
        }
        for origin in ["https://evil.example", "null", "http://localhost.evil.example", "https://shop.example.evil.com"]
        {
            let refused = guard.check(&headers("localhost:8080", Some(origin)));
            assert!(matches!(refused, Err(AuthError::PageNotAllowed(_))), "{origin}");
        }
    }

    #[test]
    fn cross_site_requests_without_origin_are_refused() {
        let guard = OpenGuard::new(Vec::new());
        let with_site = |site: &str, origin: Option<&str>| {
            let mut h = headers("localhost:8080", origin);
            h.insert(SEC_FETCH_SITE, HeaderValue::from_str(site).unwrap());
            guard.check(&h)
        };
        assert!(matches!(with_site("cross-site", None), Err(AuthError::CrossSiteWithoutOrigin)));
        assert!(matches!(with_site("Cross-Site", None), Err(AuthError::CrossSiteWithoutOrigin)));
        for site in ["same-origin", "same-site", "none"] {
            assert!(with_site(site, None).is_ok(), "{site}");
        }
        // With an Origin, the origin decides (an allowed page's fetch is cross-site).
        assert!(with_site("cross-site", Some("http://localhost:3000")).is_ok());
        assert!(matches!(with_site("cross-site", Some("https://evil.example")), Err(AuthError::PageNotAllowed(_))));
    }
}
