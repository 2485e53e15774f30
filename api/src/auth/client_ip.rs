//! The client's address: the TCP peer, or, when the peer is a trusted proxy, the
//! nearest address in `X-Forwarded-For` that is not a trusted proxy.

use std::net::IpAddr;

use axum::http::HeaderMap;

use super::settings::{IpNets, canonical_ip};

/// Whether `peer` is one of the `trusted_proxies`, whose forwarding headers
/// (`X-Forwarded-For`, `-Host`, `-Proto`) are believed.
pub fn is_trusted_proxy(peer: IpAddr, trusted: &IpNets) -> bool {
    !trusted.0.is_empty() && trusted.contains(canonical_ip(peer))
}

/// Resolves the client address of a request from `peer`.
///
/// `X-Forwarded-For` is read right to left (each proxy appends the address it saw),
/// skipping trusted proxies; the first untrusted address is the client. A header from
/// an untrusted peer is ignored entirely, so clients cannot spoof their address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &IpNets) -> IpAddr {
    let peer = canonical_ip(peer);
    if !is_trusted_proxy(peer, trusted) {
        return peer;
    }
    let mut nearest = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else { return nearest };
        for item in text.rsplit(',') {
            let Some(ip) = forwarded_address(item.trim()) else { return nearest };
            let ip = canonical_ip(ip);
            if !trusted.contains(ip) {
                return ip;
            }
            nearest = ip;
        }
    }
    nearest
}

/// The address of one `X-Forwarded-For` item: `addr`, `addr:port` (some proxies add the
/// port) or `[v6]:port`.
fn forwarded_address(item: &str) -> Option<IpAddr> {
    if let Ok(ip) = item.parse() {
        return Some(ip);
    }
    let port_ok = |port: &str| port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok());
    match item.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        Some(rest) => {
            let (v6, port) = rest.split_once(']')?;
            port_ok(port).then(|| v6.parse().ok().map(IpAddr::V6))?
        }
        // `v4:port`
        None => {
            let (v4, port) = item.rsplit_once(':')?;
            port.parse::<u16>().ok()?;
            v4.parse().ok().map(IpAddr::V4)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn forwarded_items_may_carry_a_port() {
        assert_eq!(forwarded_address("198.51.100.2:1234"), Some("198.51.100.2".parse().unwrap()));
        assert_eq!(forwarded_address("[2001:db8::1]:443"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(forwarded_address("[2001:db8::1]"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(forwarded_address("2001:db8::1"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(forwarded_address("198.51.100.2:http"), None);
        assert_eq!(forwarded_address("unknown"), None);
    }

    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: IpNets = "10.0.0.0/8".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let outsider: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(proxy, &headers(&["203.0.113.9"]), &trusted), client);
        assert_eq!(client_ip(outsider, &headers(&["203.0.113.9"]), &trusted), outsider, "untrusted peer");
        assert_eq!(
            client_ip(proxy, &headers(&["1.2.3.4, 203.0.113.9, 10.0.0.7"]), &trusted),
            client,
            "spoofed left part"
        );
        assert_eq!(client_ip(proxy, &headers(&["1.2.3.4", "203.0.113.9"]), &trusted), client, "several headers");
        assert_eq!(client_ip(proxy, &headers(&["garbage, 10.0.0.9"]), &trusted), "10.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(proxy, &headers(&[]), &trusted), proxy);
        assert_eq!(client_ip(proxy, &headers(&["203.0.113.9"]), &IpNets::default()), proxy, "no trusted proxies");
    }
}
