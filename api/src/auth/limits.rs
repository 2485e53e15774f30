//! Rate limits: a token bucket per client IP and one per write key (GCRA, from the
//! `governor` crate). Memory is bounded: the per-IP table forgets addresses whose
//! bucket is full again ([`RateLimits::forget_idle`], run periodically); the per-key
//! table has one entry per configured key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::settings::WriteKeys;
use crate::config::Config;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// `rate_limit_ip_per_s`.
    Ip,
    /// `rate_limit_key_per_s` or the key's own limit.
    Key,
}

impl LimitScope {
    /// Label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Ip => "ip",
            LimitScope::Key => "key",
        }
    }
}

/// The limiters of one node.
pub struct RateLimits {
    clock: DefaultClock,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_key: HashMap<String, DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").field("per_ip", &self.per_ip.is_some()).field("keys", &self.per_key.len()).finish()
    }
}

/// A quota of `per_s` requests per second with bursts of `burst` (0: `per_s`); `None`
/// when `per_s` is 0 (no limit).
fn quota(per_s: u64, burst: u64) -> Option<Quota> {
    let per_s = NonZeroU32::new(u32::try_from(per_s).unwrap_or(u32::MAX))?;
    let burst = NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX)).unwrap_or(per_s);
    Some(Quota::per_second(per_s).allow_burst(burst))
}

impl RateLimits {
    /// Limiters for the configured rates.
    pub fn new(config: &Config, keys: &WriteKeys) -> RateLimits {
        let per_ip = quota(config.rate_limit_ip_per_s, config.rate_limit_ip_burst).map(RateLimiter::keyed);
        let mut per_key = HashMap::new();
        for k in &keys.0 {
            let rate = if k.rate_limit_per_s > 0 { k.rate_limit_per_s } else { config.rate_limit_key_per_s };
            let burst = if k.rate_limit_burst > 0 { k.rate_limit_burst } else { config.rate_limit_key_burst };
            if let Some(q) = quota(rate, burst) {
                per_key.insert(k.key.clone(), RateLimiter::direct(q));
            }
        }
        RateLimits { clock: DefaultClock::default(), per_ip, per_key }
    }

    fn retry_after(&self, not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Duration {
        not_until.wait_time_from(self.clock.now())
    }

    /// Takes one request from `ip`'s bucket; the wait before a retry when it is empty.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.per_ip {
            Some(l) => l.check_key(&limited_network(ip)).map_err(|n| self.retry_after(&n)),
            None => Ok(()),
        }
    }

    /// Takes one request from a write key's bucket.
    pub fn check_key(&self, key: &str) -> Result<(), Duration> {
        match self.per_key.get(key) {
            Some(l) => l.check().map_err(|n| self.retry_after(&n)),
            None => Ok(()),
        }
    }

    /// Drops per-IP state that no longer limits anyone; returns how many addresses
    /// are still tracked.
    pub fn forget_idle(&self) -> usize {
        match &self.per_ip {
            Some(l) => {
                l.retain_recent();
                l.shrink_to_fit();
                l.len()
            }
            None => 0,
        }
    }
}

/// The unit the per-IP limit counts: an IPv4 address, or an IPv6 address's /64 (one
/// host usually gets a whole /64, so counting single IPv6 addresses would give it
/// unlimited buckets).
pub fn limited_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limited_network(a), limited_network(b));
        assert_ne!(limited_network(a), limited_network(other));
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(limited_network(v4), v4);
        let config = Config { rate_limit_ip_per_s: 1, rate_limit_ip_burst: 1, ..Config::default() };
        let limits = RateLimits::new(&config, &config.write_keys);
        assert!(limits.check_ip(a).is_ok());
        assert!(limits.check_ip(b).is_err(), "the same /64 shares one bucket");
        assert!(limits.check_ip(other).is_ok());
    }

    #[test]
    fn a_burst_is_refused_with_a_wait_and_keys_are_independent() {
        let config = Config { rate_limit_ip_per_s: 2, rate_limit_ip_burst: 3, ..Config::default() };
        let keys: WriteKeys =
            r#"[{"key":"a","topics":["*"],"rate_limit_per_s":1},{"key":"b","topics":["*"]}]"#.parse().unwrap();
        let limits = RateLimits::new(&config, &keys);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            limits.check_ip(ip).unwrap();
        }
        let wait = limits.check_ip(ip).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "{wait:?}");
        limits.check_ip("192.0.2.2".parse().unwrap()).unwrap();
        limits.check_key("a").unwrap();
        assert!(limits.check_key("a").is_err());
        for _ in 0..100 {
            limits.check_key("b").unwrap();
        }
    }
}
