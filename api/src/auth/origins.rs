//! Origin patterns for CORS and write keys: exact origins (`https://shop.example`,
//! `http://localhost:3000`), wildcard subdomains (`https://*.example.com`, which
//! matches `https://a.example.com` and `https://a.b.example.com` but neither
//! `https://example.com` nor `https://evil-example.com`), or `*` for any origin.

/// A parsed origin pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// Any origin.
    Any,
    /// Exactly this origin (lower-cased, no trailing slash).
    Exact(String),
    /// `scheme://` + one or more labels + `.suffix` (suffix may carry a port).
    Subdomains { scheme: String, suffix: String },
}

impl OriginPattern {
    /// Parses a pattern; explains what is wrong with a bad one.
    pub fn parse(text: &str) -> Result<OriginPattern, String> {
        let t = text.trim().trim_end_matches('/').to_ascii_lowercase();
        if t == "*" {
            return Ok(OriginPattern::Any);
        }
        let Some((scheme, rest)) = t.split_once("://") else {
            return Err(format!("origin {text:?} needs a scheme (https://...)"));
        };
        if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
            return Err(format!("origin {text:?} must be scheme://host[:port] with no path"));
        }
        if let Some(suffix) = rest.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!("origin {text:?}: a wildcard must be followed by a domain"));
            }
            return Ok(OriginPattern::Subdomains { scheme: scheme.to_string(), suffix: format!(".{suffix}") });
        }
        if rest.contains('*') {
            return Err(format!("origin {text:?}: `*` is only allowed as the first label (https://*.example.com)"));
        }
        Ok(OriginPattern::Exact(t))
    }

    /// Whether `origin` (an `Origin` header value) matches.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginPattern::Subdomains { scheme, suffix } => {
                let origin = origin.to_ascii_lowercase();
                let Some(host) = origin.strip_prefix(scheme.as_str()).and_then(|r| r.strip_prefix("://")) else {
                    return false;
                };
                match host.strip_suffix(suffix.as_str()) {
                    Some(labels) => {
                        !labels.is_empty()
                            && labels
                                .split('.')
                                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
                    }
                    None => false,
                }
            }
        }
    }
}

/// Parses a list of patterns.
pub fn parse_all(items: &[String]) -> Result<Vec<OriginPattern>, String> {
    items.iter().map(|i| OriginPattern::parse(i)).collect()
}

/// Whether any pattern matches `origin`.
pub fn any_matches(patterns: &[OriginPattern], origin: &str) -> bool {
    patterns.iter().any(|p| p.matches(origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_origins() {
        let exact = OriginPattern::parse("https://Shop.example/").unwrap();
        assert!(exact.matches("https://shop.example"));
        assert!(!exact.matches("http://shop.example"));
        assert!(!exact.matches("https://shop.example:8443"));
        assert!(!exact.matches("https://shop.example.evil.com"));
        let wild = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(wild.matches("https://a.example.com"));
        assert!(wild.matches("https://a.b.example.com"));
        assert!(!wild.matches("https://example.com"));
        assert!(!wild.matches("https://evil-example.com"));
        assert!(!wild.matches("https://a.example.com.evil.net"));
        assert!(!wild.matches("http://a.example.com"));
        assert!(!wild.matches("https://a.example.com:444"));
        assert!(!wild.matches("https://a/b.example.com"));
        let port = OriginPattern::parse("http://*.local.test:8080").unwrap();
        assert!(port.matches("http://x.local.test:8080"));
        assert!(OriginPattern::parse("*").unwrap().matches("null"));
        for bad in ["shop.example", "https://", "https://a.com/path", "https://a.*.com", "https://*."] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
