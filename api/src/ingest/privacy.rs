//! What the gateway adds to every ingested record, and the privacy rules for it.
//!
//! Headers: `received-at` always; `client-ip` per the `client_ip` setting (`full`,
//! `truncated` like analytics tools do: IPv4 to its /24, IPv6 to its /48, or `none`);
//! `user-agent` per `record_user_agent`. A request marked anonymous (`SP-Anonymous`, as
//! Snowplow's trackers send it, or `Tidegate-Anonymous`, any value) stores no IP at all
//! and is marked with an `anonymous: 1` header. The user agent is kept for anonymous
//! requests: it identifies a browser build, not a person, and bot filtering needs it;
//! `record_user_agent = false` drops it everywhere.

use std::net::IpAddr;

use axum::http::{HeaderMap, header};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Header names the gateway adds to ingested records.
pub mod headers {
    /// Receive time at the gateway, ms since the Unix epoch (decimal).
    pub const RECEIVED_AT: &str = "received-at";
    /// The client's IP address (setting `client_ip`).
    pub const CLIENT_IP: &str = "client-ip";
    /// The request's `User-Agent` (setting `record_user_agent`).
    pub const USER_AGENT: &str = "user-agent";
    /// `1` on records of requests marked anonymous.
    pub const ANONYMOUS: &str = "anonymous";
}

/// Request headers that mark a request anonymous (any value).
pub const ANONYMOUS_REQUEST_HEADERS: [&str; 2] = ["sp-anonymous", "tidegate-anonymous"];

/// How much of the client IP is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientIpMode {
    /// The address as seen.
    #[default]
    Full,
    /// IPv4 with its last byte zeroed (/24), IPv6 with its last 80 bits zeroed (/48).
    Truncated,
    /// No address.
    None,
}

impl std::str::FromStr for ClientIpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(ClientIpMode::Full),
            "truncated" => Ok(ClientIpMode::Truncated),
            "none" => Ok(ClientIpMode::None),
            other => Err(format!("unknown client_ip mode {other:?}: expected full, truncated or none")),
        }
    }
}

impl std::fmt::Display for ClientIpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientIpMode::Full => "full",
            ClientIpMode::Truncated => "truncated",
            ClientIpMode::None => "none",
        })
    }
}

impl ClientIpMode {
    /// The mode a request is under: the `client_ip` setting, or `None` for a request
    /// marked anonymous.
    pub fn for_request(config: &Config, anonymous: bool) -> ClientIpMode {
        if anonymous { ClientIpMode::None } else { config.client_ip }
    }

    /// What is stored of `ip` under this mode: the client address the gateway sees, or
    /// the one a Segment library reports in `context.ip`.
    pub fn apply(self, ip: IpAddr) -> Option<IpAddr> {
        match self {
            ClientIpMode::Full => Some(ip),
            ClientIpMode::Truncated => Some(truncate_ip(ip)),
            ClientIpMode::None => None,
        }
    }
}

/// The address with its host part zeroed: IPv4 to /24, IPv6 to /48 (an IPv4-mapped
/// IPv6 address is truncated as IPv4).
pub fn truncate_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => truncate_ip(IpAddr::V4(v4)),
            None => {
                let mut o = v6.octets();
                o[6..].fill(0);
                IpAddr::from(o)
            }
        },
    }
}

/// Whether the request asks not to be identified.
pub fn is_anonymous(request: &HeaderMap) -> bool {
    ANONYMOUS_REQUEST_HEADERS.iter().any(|h| request.contains_key(*h))
}

/// The headers every record of this request carries.
pub fn gateway_headers(
    config: &Config,
    peer: IpAddr,
    request: &HeaderMap,
    received_ms: i64,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut shared = vec![(headers::RECEIVED_AT, received_ms.to_string().into_bytes())];
    let anonymous = is_anonymous(request);
    if let Some(ip) = ClientIpMode::for_request(config, anonymous).apply(peer) {
        shared.push((headers::CLIENT_IP, ip.to_string().into_bytes()));
    }
    if config.record_user_agent
        && let Some(ua) = request.get(header::USER_AGENT)
    {
        shared.push((headers::USER_AGENT, ua.as_bytes().to_vec()));
    }
    if anonymous {
        shared.push((headers::ANONYMOUS, b"1".to_vec()));
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn truncation_keeps_the_network_part() {
        assert_eq!(truncate_ip(ip("203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(truncate_ip(ip("2001:db8:85a3:8d3:1319:8a2e:370:7348")), ip("2001:db8:85a3::"));
        assert_eq!(truncate_ip(ip("::ffff:198.51.100.9")), ip("198.51.100.0"));
        assert_eq!(truncate_ip(ip("::1")), ip("::"));
    }

    #[test]
    fn headers_follow_the_mode_and_anonymity() {
        let mut request = HeaderMap::new();
        request.insert(header::USER_AGENT, "UA/1".parse().unwrap());
        let peer = ip("192.0.2.44");
        let names = |c: &Config, r: &HeaderMap| -> Vec<(String, String)> {
            gateway_headers(c, peer, r, 5)
                .into_iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8(v).unwrap()))
                .collect()
        };
        let full = Config::default();
        assert_eq!(names(&full, &request)[1], ("client-ip".into(), "192.0.2.44".into()));
        let truncated = Config { client_ip: ClientIpMode::Truncated, ..Config::default() };
        assert_eq!(names(&truncated, &request)[1], ("client-ip".into(), "192.0.2.0".into()));
        let none = Config { client_ip: ClientIpMode::None, ..Config::default() };
        assert!(names(&none, &request).iter().all(|(n, _)| n != "client-ip"));
        request.insert("sp-anonymous", "*".parse().unwrap());
        let anon = names(&full, &request);
        assert!(anon.iter().all(|(n, _)| n != "client-ip"), "{anon:?}");
        assert!(anon.contains(&("user-agent".into(), "UA/1".into())));
        assert!(anon.contains(&("anonymous".into(), "1".into())));
        assert_eq!("TRUNCATED".parse::<ClientIpMode>(), Ok(ClientIpMode::Truncated));
        assert!("some".parse::<ClientIpMode>().is_err());
    }
}
