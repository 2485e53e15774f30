//! Types of the security settings. Each parses from TOML (serde) and from a flag or
//! `TIDEGATE_*` variable (`FromStr`): lists as a JSON array or comma-separated, key
//! lists as JSON.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};

/// A list of strings; on the command line a JSON array or comma-separated values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StringList(pub Vec<String>);

impl FromStr for StringList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with('[') {
            return serde_json::from_str(s).map(StringList).map_err(|e| format!("not a JSON array of strings: {e}"));
        }
        Ok(StringList(s.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect()))
    }
}

impl fmt::Display for StringList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// How a key list failed, without the value: serde's own messages quote the offending
/// value (`invalid type: string "…"`, unknown variants, numbers), which may be a secret.
fn refusal(category: serde_json::error::Category) -> &'static str {
    match category {
        serde_json::error::Category::Data => "a value of the wrong type or an unknown field",
        serde_json::error::Category::Eof => "the text ends early",
        _ => "not valid JSON",
    }
}

/// Parses a key list given as a flag or environment variable (JSON); a refusal says
/// where and how it failed, never the value.
fn json_list<T: DeserializeOwned>(s: &str, what: &str) -> Result<Vec<T>, String> {
    serde_json::from_str(s).map_err(|e| {
        format!("not a JSON array of {what}: {} at line {} column {}", refusal(e.classify()), e.line(), e.column())
    })
}

/// Deserializes a key list from any format (the TOML file) through a JSON value, so a
/// refusal says how it failed, never the value (the format adds where).
/// Each entry is read on its own, so a refusal names the entry that failed by number
/// (TOML's position is that of the whole array of tables, its first `[[write_keys]]`).
fn secret_list<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D, what: &str) -> Result<Vec<T>, D::Error> {
    let serde_json::Value::Array(entries) = serde_json::Value::deserialize(d)? else {
        return Err(D::Error::custom(format!("not a list of {what}")));
    };
    let entry = |(i, entry): (usize, serde_json::Value)| {
        serde_json::from_value(entry)
            .map_err(|e| D::Error::custom(format!("entry {} of the {what}: {}", i + 1, refusal(e.classify()))))
    };
    entries.into_iter().enumerate().map(entry).collect()
}

/// JWT signature algorithms the gateway verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    /// The jsonwebtoken algorithm.
    pub fn to_jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            JwtAlgorithm::HS256 => A::HS256,
            JwtAlgorithm::HS384 => A::HS384,
            JwtAlgorithm::HS512 => A::HS512,
            JwtAlgorithm::RS256 => A::RS256,
            JwtAlgorithm::RS384 => A::RS384,
            JwtAlgorithm::RS512 => A::RS512,
            JwtAlgorithm::PS256 => A::PS256,
            JwtAlgorithm::ES256 => A::ES256,
            JwtAlgorithm::ES384 => A::ES384,
            JwtAlgorithm::EdDSA => A::EdDSA,
        }
    }

    /// True for the HMAC (shared secret) algorithms.
    pub fn is_hmac(self) -> bool {
        matches!(self, JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512)
    }
}

/// One JWT verification key. HMAC keys give `secret` (or `secret_base64`); the others
/// give a public key as PEM text (`public_key_pem`) or a PEM file (`public_key_file`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeySpec {
    /// Algorithm this key verifies; a token with another `alg` never uses it.
    pub alg: JwtAlgorithm,
    /// Key id: when set, only tokens whose header names this `kid` use the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// HMAC secret (UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// HMAC secret, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_base64: Option<String>,
    /// Public key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    /// File holding the public key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

impl fmt::Debug for JwtKeySpec {
    /// Secrets never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeySpec")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_base64", &self.secret_base64.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .finish()
    }
}

/// The `jwt_keys` setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct JwtKeys(pub Vec<JwtKeySpec>);

impl<'de> Deserialize<'de> for JwtKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        secret_list(d, "JWT keys").map(JwtKeys)
    }
}

impl FromStr for JwtKeys {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        json_list(s, "JWT keys").map(JwtKeys)
    }
}

/// Parses a setting whose value holds secrets (JWT keys, write keys) from a flag or an
/// environment variable: a refusal names the setting and the reason, never the value
/// (clap's own message quotes it, and start-up errors end up in logs).
#[derive(Debug)]
pub struct SecretParser<T>(std::marker::PhantomData<fn() -> T>);

impl<T> Clone for SecretParser<T> {
    fn clone(&self) -> Self {
        SecretParser(std::marker::PhantomData)
    }
}

impl<T: FromStr<Err = String> + Clone + Send + Sync + 'static> clap::builder::TypedValueParser for SecretParser<T> {
    type Value = T;
    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let name =
            arg.and_then(clap::Arg::get_long).map_or_else(|| "a secret setting".to_string(), |l| format!("--{l}"));
        let refuse = |reason: String| {
            let msg = format!("invalid value for '{name}' (not shown: it may hold secrets): {reason}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, msg).with_cmd(cmd)
        };
        value.to_str().ok_or_else(|| refuse("not UTF-8".into()))?.parse().map_err(refuse)
    }
}

impl clap::builder::ValueParserFactory for JwtKeys {
    type Parser = SecretParser<JwtKeys>;
    fn value_parser() -> Self::Parser {
        SecretParser(std::marker::PhantomData)
    }
}

/// One browser write key: public, may only produce, to the listed topics, from the
/// listed origins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteKeySpec {
    /// The key itself (public: it ships in web pages).
    pub key: String,
    /// Topic patterns it may produce to (`*` matches any run of characters).
    pub topics: Vec<String>,
    /// Origins it may be used from (exact, or `https://*.example.com`). Empty: any origin,
    /// and requests without an `Origin` header (server-side trackers).
    #[serde(default)]
    pub origins: Vec<String>,
    /// Requests per second for this key; 0 uses `rate_limit_key_per_s`.
    #[serde(default)]
    pub rate_limit_per_s: u64,
    /// Burst for this key; 0 uses `rate_limit_key_burst`.
    #[serde(default)]
    pub rate_limit_burst: u64,
}

/// The `write_keys` setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WriteKeys(pub Vec<WriteKeySpec>);

impl<'de> Deserialize<'de> for WriteKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        secret_list(d, "write keys").map(WriteKeys)
    }
}

impl FromStr for WriteKeys {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        json_list(s, "write keys").map(WriteKeys)
    }
}

impl clap::builder::ValueParserFactory for WriteKeys {
    type Parser = SecretParser<WriteKeys>;
    fn value_parser() -> Self::Parser {
        SecretParser(std::marker::PhantomData)
    }
}

/// Networks (CIDR, or single addresses) whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct IpNets(pub Vec<ipnet::IpNet>);

impl TryFrom<Vec<String>> for IpNets {
    type Error = String;
    fn try_from(items: Vec<String>) -> Result<Self, Self::Error> {
        items.iter().map(|i| parse_net(i)).collect::<Result<Vec<_>, _>>().map(IpNets)
    }
}

impl From<IpNets> for Vec<String> {
    fn from(nets: IpNets) -> Vec<String> {
        nets.0.iter().map(ToString::to_string).collect()
    }
}

impl FromStr for IpNets {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items = StringList::from_str(s)?;
        items.0.iter().map(|i| parse_net(i)).collect::<Result<Vec<_>, _>>().map(IpNets)
    }
}

/// A CIDR, or a single address as a /32 or /128.
pub fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from).map_err(|_| format!("{text:?} is not an IP network"))
}

impl IpNets {
    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as IPv4.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_from_json_or_commas() {
        assert_eq!("a, b,,c".parse::<StringList>().unwrap().0, vec!["a", "b", "c"]);
        assert_eq!(r#"["a,b","c"]"#.parse::<StringList>().unwrap().0, vec!["a,b", "c"]);
        let nets: IpNets = "10.0.0.0/8, 192.168.1.7, ::1".parse().unwrap();
        assert!(nets.contains("10.1.2.3".parse().unwrap()));
        assert!(nets.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(nets.contains("192.168.1.7".parse().unwrap()));
        assert!(!nets.contains("192.168.1.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNets>().is_err());
    }

    #[test]
    fn key_lists_parse_from_json_and_hide_secrets() {
        let keys: JwtKeys = r#"[{"alg":"HS256","secret":"s3cret"}]"#.parse().unwrap();
        assert_eq!(keys.0[0].alg, JwtAlgorithm::HS256);
        assert!(!format!("{keys:?}").contains("s3cret"));
        assert!(r#"[{"alg":"none","secret":"x"}]"#.parse::<JwtKeys>().is_err());
        let wk: WriteKeys =
            r#"[{"key":"pk_1","topics":["web.*"],"origins":["https://shop.example"]}]"#.parse().unwrap();
        assert_eq!(wk.0[0].topics, vec!["web.*"]);
        assert!(r#"[{"key":"pk_1"}]"#.parse::<WriteKeys>().is_err(), "topics are required");
        // Refusals never quote a value: serde's messages would.
        for bad in [r#""MY-SECRET""#, r#"[{"alg":"MY-SECRET","secret":"x"}]"#, r#"[{"alg":"HS256","secret":12345}]"#] {
            let e = bad.parse::<JwtKeys>().unwrap_err();
            assert!(!e.contains("MY-SECRET") && !e.contains("12345"), "{e}");
            assert!(e.contains("line 1 column"), "{e}");
        }
        let e = r#"["pk_live_secret"]"#.parse::<WriteKeys>().unwrap_err();
        assert!(!e.contains("pk_live_secret"), "{e}");
        // The same in the TOML file.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct File {
            jwt_keys: Option<JwtKeys>,
            write_keys: Option<WriteKeys>,
        }
        for bad in [
            r#"jwt_keys = "MY-SECRET""#,
            r#"jwt_keys = [{alg = "HS256", secret = 12345}]"#,
            r#"write_keys = ["MY-SECRET"]"#,
        ] {
            // What the config loader reports (with its own line and column).
            let e = toml::from_str::<File>(bad).unwrap_err().message().to_string();
            assert!(!e.contains("MY-SECRET") && !e.contains("12345"), "{e}");
        }
        let file: File = toml::from_str(r#"jwt_keys = [{alg = "HS256", secret = "s3cret"}]"#).unwrap();
        assert_eq!(file.jwt_keys.unwrap().0[0].alg, JwtAlgorithm::HS256);
    }
}
