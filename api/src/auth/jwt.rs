//! JWT verification: keys from settings and from a JWKS file that is re-read when it
//! changes; `exp`, `nbf`, `aud` and `iss` checked; the permissions claim read into
//! [`Grants`].
//!
//! A token is only ever checked with keys of the algorithm its header names, and only
//! algorithms that have a configured key are accepted: `alg: none` cannot be parsed,
//! and an HS256 token can never be checked against an RSA public key (the classic key
//! confusion), since that key is registered for RS256 only.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::AuthError;
use super::grants::Grants;
use super::settings::{JwtAlgorithm, JwtKeySpec};
use crate::config::Config;

/// A token's claims set. A claim name given twice is refused: RFC 7519 §4 lets a
/// parser refuse such a token or keep the last copy, and keeping the last would let
/// one token carry two `permissions` claims that different readers see differently
/// (jsonwebtoken already refuses a repeated `exp`, `nbf`, `aud` or `iss`).
struct ClaimSet(serde_json::Map<String, Value>);

impl<'de> serde::Deserialize<'de> for ClaimSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ClaimSet;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ClaimSet, A::Error> {
                let mut claims = serde_json::Map::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = map.next_value::<Value>()?;
                    if claims.contains_key(&name) {
                        return Err(serde::de::Error::custom(format_args!("the claim {name:?} is given twice")));
                    }
                    claims.insert(name, value);
                }
                Ok(ClaimSet(claims))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A verification key.
#[derive(Clone)]
struct VerifyKey {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Verified {
    /// What it allows.
    pub grants: Grants,
    /// Its `exp`, seconds since the Unix epoch (always present: `exp` is required).
    pub expires_at: u64,
    /// Its `sub`, for logs.
    pub subject: Option<String>,
}

/// State of the JWKS file: its keys and the stamp they were read at.
struct Jwks {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    keys: Vec<VerifyKey>,
}

/// Checks tokens. Cheap to share; the JWKS keys are swapped atomically on reload.
///
/// Verified tokens are remembered (at most `jwt_cache_entries`, keyed by the whole
/// token), so a client sending the same token on every request pays for the signature
/// once; a remembered token is still refused from its `exp` (plus leeway) on, and the
/// memory is dropped whenever the JWKS keys change.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    cache: std::sync::Mutex<std::collections::HashMap<String, Arc<Verified>>>,
    cache_entries: usize,
    jwks: Option<RwLock<Jwks>>,
    audience: Vec<String>,
    issuer: Vec<String>,
    leeway_s: u64,
    claim: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("keys", &self.keys.len()).field("claim", &self.claim).finish()
    }
}

/// A key setting that cannot be used.
fn key_error(index: usize, reason: impl std::fmt::Display) -> String {
    format!("jwt_keys[{index}]: {reason}")
}

fn load_spec(index: usize, spec: &JwtKeySpec) -> Result<VerifyKey, String> {
    let alg = spec.alg.to_jwt();
    let key = if spec.alg.is_hmac() {
        match (&spec.secret, &spec.secret_base64) {
            (Some(s), None) if s.len() >= 32 => DecodingKey::from_secret(s.as_bytes()),
            (Some(_), None) => return Err(key_error(index, "an HMAC secret needs at least 32 bytes")),
            (None, Some(b)) => {
                let key = DecodingKey::from_base64_secret(b).map_err(|e| key_error(index, e))?;
                if key.try_get_as_bytes().map_or(0, <[u8]>::len) < 32 {
                    return Err(key_error(index, "an HMAC secret needs at least 32 bytes"));
                }
                key
            }
            _ => return Err(key_error(index, "HMAC keys need exactly one of secret, secret_base64")),
        }
    } else {
        let pem = match (&spec.public_key_pem, &spec.public_key_file) {
            (Some(p), None) => p.clone().into_bytes(),
            (None, Some(f)) => {
                std::fs::read(f).map_err(|e| key_error(index, format!("cannot read {}: {e}", f.display())))?
            }
            _ => return Err(key_error(index, "public keys need exactly one of public_key_pem, public_key_file")),
        };
        if let Some(reason) = unusable_public_pem(spec.alg, &pem) {
            return Err(key_error(index, reason));
        }
        let parsed = match spec.alg {
            JwtAlgorithm::RS256 | JwtAlgorithm::RS384 | JwtAlgorithm::RS512 | JwtAlgorithm::PS256 => {
                DecodingKey::from_rsa_pem(&pem)
            }
            JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => DecodingKey::from_ec_pem(&pem),
            _ => DecodingKey::from_ed_pem(&pem),
        };
        parsed.map_err(|e| key_error(index, format!("not a {:?} public key in PEM: {e}", spec.alg)))?
    };
    Ok(VerifyKey { alg, kid: spec.kid.clone(), key })
}

/// Why a PEM given as `alg`'s public key could never verify a token: a private key
/// (whose public half the settings should name), or an EC key on another curve than
/// the algorithm's. jsonwebtoken takes both without complaint, and every token would
/// then be refused with a bare "invalid signature".
fn unusable_public_pem(alg: JwtAlgorithm, pem: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("PRIVATE KEY-----") {
        return Some("this is a private key: give the public key (openssl pkey -pubout)".into());
    }
    // The curve's object identifier (DER) in the key: P-256 1.2.840.10045.3.1.7,
    // P-384 1.3.132.0.34.
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let wanted = match alg {
        JwtAlgorithm::ES256 => P256,
        JwtAlgorithm::ES384 => P384,
        _ => return None,
    };
    use base64::Engine;
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).ok()?;
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    let other = if wanted == P256 { P384 } else { P256 };
    (has(other) && !has(wanted)).then(|| format!("the key's curve is not the one {alg:?} uses"))
}

/// Keys of a JWKS document. Keys the gateway cannot use are skipped with a warning.
fn parse_jwks(path: &Path, text: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("{} is not a JWKS: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match jwk.common.key_algorithm {
            Some(a) => Algorithm::try_from(a).ok(),
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Some(Algorithm::ES256),
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Some(Algorithm::ES384),
                AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
                AlgorithmParameters::OctetKey(_) => Some(Algorithm::HS256),
                _ => None,
            },
        };
        let kid = jwk.common.key_id.clone();
        if let Some(reason) = alg.and_then(|alg| unusable_jwk(jwk, alg)) {
            tracing::warn!(path = %path.display(), kid = ?kid, reason, "JWKS key skipped");
            continue;
        }
        match (alg, DecodingKey::from_jwk(jwk)) {
            (Some(alg), Ok(key)) => keys.push(VerifyKey { alg, kid, key }),
            (_, Err(e)) => tracing::warn!(path = %path.display(), kid = ?kid, error = %e, "JWKS key skipped"),
            (None, _) => {
                tracing::warn!(path = %path.display(), kid = ?kid, "JWKS key with no usable algorithm skipped")
            }
        }
    }
    Ok(keys)
}

/// Why a JWKS key may not verify `alg` signatures: one meant for encryption, one of
/// another family than its algorithm (an RSA key labelled HS256 would be used as an
/// HMAC secret, its public bytes as the secret), or an HMAC secret under 32 bytes
/// (`jwt_keys` refuses those too: an empty one lets anyone sign tokens).
fn unusable_jwk(jwk: &jsonwebtoken::jwk::Jwk, alg: Algorithm) -> Option<&'static str> {
    use jsonwebtoken::jwk::PublicKeyUse;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Some("the key is for encryption (\"use\": \"enc\")");
    }
    let fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::OctetKey(_), Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => true,
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA) => true,
        _ => false,
    };
    if !fits {
        return Some("the key's type does not fit its algorithm");
    }
    if let AlgorithmParameters::OctetKey(_) = &jwk.algorithm {
        let long_enough = DecodingKey::from_jwk(jwk).ok().and_then(|k| Some(k.try_get_as_bytes().ok()?.len() >= 32));
        if long_enough != Some(true) {
            return Some("an HMAC secret needs at least 32 bytes");
        }
    }
    None
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Verifier {
    /// Loads every configured key (and the JWKS file). Any unusable key setting is an
    /// error: a node never starts with fewer keys than its settings name.
    pub fn from_config(config: &Config) -> Result<Verifier, String> {
        let keys =
            config.jwt_keys.0.iter().enumerate().map(|(i, spec)| load_spec(i, spec)).collect::<Result<Vec<_>, _>>()?;
        let jwks = if config.jwks_file.as_os_str().is_empty() {
            None
        } else {
            let path = config.jwks_file.clone();
            let text = std::fs::read(&path).map_err(|e| format!("cannot read jwks_file {}: {e}", path.display()))?;
            let keys = parse_jwks(&path, &text)?;
            if keys.is_empty() {
                return Err(format!("jwks_file {} has no usable key", path.display()));
            }
            Some(RwLock::new(Jwks { stamp: file_stamp(&path), path, keys }))
        };
        Ok(Verifier {
            keys,
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
            cache_entries: config.jwt_cache_entries as usize,
            jwks,
            audience: config.jwt_audience.0.clone(),
            issuer: config.jwt_issuer.0.clone(),
            leeway_s: config.jwt_leeway_s,
            claim: config.jwt_permissions_claim.clone(),
        })
    }

    /// Whether any key is configured (tokens can be checked at all).
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty() || self.jwks.is_some()
    }

    /// Re-reads the JWKS file when its modification time or size changed. A file that
    /// became unreadable or invalid keeps the previous keys (and logs why). Blocking:
    /// call from a blocking thread. Returns whether new keys were loaded.
    pub fn reload_if_changed(&self) -> bool {
        let Some(jwks) = &self.jwks else { return false };
        let path = jwks.read().unwrap_or_else(|p| p.into_inner()).path.clone();
        let stamp = file_stamp(&path);
        if stamp.is_none() {
            // Gone (or unreadable): the previous keys stay; said once, not every interval.
            let mut w = jwks.write().unwrap_or_else(|p| p.into_inner());
            if w.stamp.take().is_some() {
                tracing::warn!(path = %path.display(), "JWKS file is gone or unreadable; keeping the previous keys");
            }
            return false;
        }
        if stamp == jwks.read().unwrap_or_else(|p| p.into_inner()).stamp {
            return false;
        }
        match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|t| parse_jwks(&path, &t)) {
            Ok(keys) => {
                let mut w = jwks.write().unwrap_or_else(|p| p.into_inner());
                tracing::info!(path = %path.display(), keys = keys.len(), "JWKS reloaded");
                w.keys = keys;
                w.stamp = stamp;
                self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
                true
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "JWKS reload failed; keeping the previous keys");
                false
            }
        }
    }

    /// Keys that may check a token with this header: its algorithm, and its `kid` when
    /// a key carries that id (else every key of the algorithm without an id).
    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<VerifyKey> {
        let mut all: Vec<VerifyKey> = self.keys.iter().filter(|k| k.alg == alg).cloned().collect();
        if let Some(jwks) = &self.jwks {
            all.extend(jwks.read().unwrap_or_else(|p| p.into_inner()).keys.iter().filter(|k| k.alg == alg).cloned());
        }
        if let Some(kid) = kid
            && all.iter().any(|k| k.kid.as_deref() == Some(kid))
        {
            all.retain(|k| k.kid.as_deref() == Some(kid));
        } else if kid.is_some() {
            all.retain(|k| k.kid.is_none());
        }
        all
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_s;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            required.push("aud");
        }
        if !self.issuer.is_empty() {
            v.set_issuer(&self.issuer);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// The clock skew allowed past `exp` and before `nbf` (`jwt_leeway_s`).
    pub fn leeway_s(&self) -> u64 {
        self.leeway_s
    }

    /// Whether a token with `exp = expires_at` (seconds) is expired at `now_ms`: from
    /// `exp` plus the leeway on, to the millisecond.
    fn expired(&self, expires_at: u64, now_ms: u64) -> bool {
        now_ms >= expires_at.saturating_add(self.leeway_s).saturating_mul(1000)
    }

    /// Verifies `token` (or finds it verified before) and reads its grants.
    pub fn verify_cached(&self, token: &str) -> Result<Arc<Verified>, AuthError> {
        if self.cache_entries == 0 {
            return self.verify(token).map(Arc::new);
        }
        let now = now_ms();
        if let Some(v) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(token).cloned() {
            if !self.expired(v.expires_at, now) {
                return Ok(v);
            }
            return Err(AuthError::TokenExpired);
        }
        let verified = Arc::new(self.verify(token)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.cache_entries {
            // Full: forget expired tokens, and everything if that is not enough.
            cache.retain(|_, v| !self.expired(v.expires_at, now));
            if cache.len() >= self.cache_entries {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), verified.clone());
        Ok(verified)
    }

    /// Verifies `token` and reads its grants.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::InvalidToken(format!("not a well-formed JWT: {e}")))?;
        let candidates = self.candidates(header.alg, header.kid.as_deref());
        if candidates.is_empty() {
            return Err(AuthError::InvalidToken(match header.kid {
                Some(kid) => format!("no {:?} key with kid {kid:?} is configured", header.alg),
                None => format!("no {:?} key is configured", header.alg),
            }));
        }
        let validation = self.validation(header.alg);
        let mut last = AuthError::InvalidToken("signature does not verify".into());
        for key in &candidates {
            match jsonwebtoken::decode::<ClaimSet>(token, &key.key, &validation) {
                Ok(data) => {
                    let claims = data.claims.0;
                    // RFC 7519 makes `iss` one string; jsonwebtoken also takes an array
                    // with one listed issuer in it, which would let a token name several.
                    if !self.issuer.is_empty() && !claims.get("iss").is_some_and(Value::is_string) {
                        return Err(AuthError::InvalidIssuer);
                    }
                    // `exp` is a NumericDate: a fraction of a second is allowed (and ignored).
                    let expires_at = claims
                        .get("exp")
                        .and_then(|v| v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)))
                        .unwrap_or(0);
                    // jsonwebtoken compares whole seconds, so it accepts a token for up
                    // to a second after `exp`; RFC 7519 wants the time before `exp`.
                    if self.expired(expires_at, now_ms()) {
                        return Err(AuthError::TokenExpired);
                    }
                    return Ok(Verified {
                        grants: Grants::from_claim(claims.get(&self.claim)),
                        expires_at,
                        subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
                    });
                }
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature => {}
                    ErrorKind::ExpiredSignature => return Err(AuthError::TokenExpired),
                    ErrorKind::ImmatureSignature => return Err(AuthError::TokenNotYetValid),
                    ErrorKind::InvalidAudience => return Err(AuthError::InvalidAudience),
                    ErrorKind::InvalidIssuer => return Err(AuthError::InvalidIssuer),
                    ErrorKind::MissingRequiredClaim(c) => {
                        return Err(AuthError::InvalidToken(format!("the {c} claim is required")));
                    }
                    // The signature held (jsonwebtoken checks it before the claims).
                    ErrorKind::Json(e) => return Err(AuthError::InvalidToken(format!("claims set: {e}"))),
                    other => last = AuthError::InvalidToken(format!("{other:?}")),
                },
            }
        }
        Err(last)
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Shared verifier.
pub type SharedVerifier = Arc<Verifier>;

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "unit-test-secret-that-is-long-enough-32";

    fn verifier(cache_entries: u64) -> Verifier {
        let config = Config {
            jwt_keys: format!(r#"[{{"alg":"HS256","secret":"{SECRET}"}}]"#).parse().unwrap(),
            jwt_cache_entries: cache_entries,
            jwt_leeway_s: 0,
            ..Config::default()
        };
        Verifier::from_config(&config).unwrap()
    }

    fn token(exp: u64) -> String {
        let claims = serde_json::json!({"exp": exp, "permissions": ["admin"]});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn verified_tokens_are_remembered_until_they_expire() {
        let v = verifier(2);
        let now = jsonwebtoken::get_current_timestamp();
        let t = token(now + 600);
        let first = v.verify_cached(&t).unwrap();
        assert!(Arc::ptr_eq(&first, &v.verify_cached(&t).unwrap()), "the second check is served from memory");
        // A remembered token past its exp is refused without a new signature check.
        let stale = token(now + 601);
        let mut old = (*v.verify_cached(&stale).unwrap()).clone();
        old.expires_at = now - 10;
        v.cache.lock().unwrap().insert(stale.clone(), Arc::new(old));
        assert!(matches!(v.verify_cached(&stale), Err(AuthError::TokenExpired)));
        // The memory stays within its bound.
        for i in 0..5 {
            v.verify_cached(&token(now + 700 + i)).unwrap();
            assert!(v.cache.lock().unwrap().len() <= 2);
        }
        assert!(v.verify_cached("garbage").is_err());
        let uncached = verifier(0);
        uncached.verify_cached(&t).unwrap();
        assert!(uncached.cache.lock().unwrap().is_empty());
    }

    #[test]
    fn jwks_keys_that_would_let_anyone_sign_are_skipped() {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let good = b64(SECRET.as_bytes());
        let keys = |jwks: serde_json::Value| parse_jwks(Path::new("jwks.json"), jwks.to_string().as_bytes()).unwrap();
        let rsa = serde_json::json!({"kty": "RSA", "n": b64(&[0xc3; 256]), "e": "AQAB"});
        for (what, key) in [
            ("an empty secret", serde_json::json!({"kty": "oct", "k": ""})),
            ("a 1-byte secret", serde_json::json!({"kty": "oct", "k": "eA", "alg": "HS256"})),
            (
                "an RSA key labelled HS256",
                serde_json::json!({"alg": "HS256", "kty": "RSA", "n": rsa["n"], "e": "AQAB"}),
            ),
            ("an encryption key", serde_json::json!({"kty": "oct", "k": good, "use": "enc"})),
            (
                "a P-256 key labelled ES384",
                serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES384",
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}),
            ),
        ] {
            assert!(keys(serde_json::json!({"keys": [key]})).is_empty(), "{what} was loaded");
        }
        let loaded = keys(serde_json::json!({"keys": [{"kty": "oct", "k": good, "use": "sig"}, rsa]}));
        assert_eq!(loaded.iter().map(|k| k.alg).collect::<Vec<_>>(), [Algorithm::HS256, Algorithm::RS256]);
    }

    #[test]
    fn public_keys_that_could_never_verify_are_refused_at_startup() {
        let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/keys");
        let spec = |alg: &str, file: &str| -> JwtKeySpec {
            serde_json::from_value(serde_json::json!({"alg": alg, "public_key_file": keys.join(file)})).unwrap()
        };
        let refused = |alg, file| load_spec(0, &spec(alg, file)).err().unwrap_or_default();
        assert!(refused("RS256", "rsa_private.pem").contains("private key"), "{}", refused("RS256", "rsa_private.pem"));
        assert!(refused("ES384", "ec_public.pem").contains("curve"), "{}", refused("ES384", "ec_public.pem"));
        assert!(load_spec(0, &spec("ES256", "ec_public.pem")).is_ok());
        assert!(load_spec(0, &spec("RS256", "rsa_public.pem")).is_ok());
    }

    #[test]
    fn the_issuer_must_be_one_listed_string() {
        let v = Verifier { issuer: vec!["https://idp.example".into()], ..verifier(0) };
        let signed = |iss: serde_json::Value| {
            let exp = jsonwebtoken::get_current_timestamp() + 600;
            let claims = serde_json::json!({"exp": exp, "iss": iss, "permissions": ["admin"]});
            let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
        };
        assert!(v.verify(&signed(serde_json::json!("https://idp.example"))).is_ok());
        for iss in [serde_json::json!(["https://idp.example"]), serde_json::json!("https://other.example")] {
            assert!(matches!(v.verify(&signed(iss.clone())), Err(AuthError::InvalidIssuer)), "{iss}");
        }
    }

    #[test]
    fn a_claim_given_twice_is_refused() {
        use base64::Engine as _;
        let v = verifier(0);
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        // serde_json cannot build an object with a repeated name: sign the text directly.
        let signed = |payload: &str| {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let head = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
            let message = format!("{head}.{}", b64.encode(payload));
            let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
            let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
            format!("{message}.{signature}")
        };
        let once = format!(r#"{{"exp":{exp},"permissions":["consume:t"]}}"#);
        assert!(v.verify(&signed(&once)).is_ok());
        let twice = format!(r#"{{"exp":{exp},"permissions":["consume:t"],"permissions":["admin"]}}"#);
        match v.verify(&signed(&twice)) {
            Err(AuthError::InvalidToken(why)) => assert!(why.contains("\"permissions\" is given twice"), "{why}"),
            other => panic!("a repeated permissions claim was not refused: {other:?}"),
        }
    }

    #[test]
    fn a_token_is_expired_from_its_exp_to_the_millisecond() {
        let v = verifier(0);
        let now = now_ms();
        let this_second = now / 1000;
        // jsonwebtoken alone accepts `exp` equal to the current second.
        assert!(matches!(v.verify(&token(this_second)), Err(AuthError::TokenExpired)));
        assert!(v.expired(this_second, this_second * 1000));
        assert!(!v.expired(this_second, this_second * 1000 - 1));
        let lenient = Verifier { leeway_s: 2, ..verifier(0) };
        assert!(!lenient.expired(this_second, this_second * 1000 + 1999));
        assert!(lenient.expired(this_second, this_second * 1000 + 2000));
        assert!(v.verify(&token(this_second + 120)).is_ok());
    }
}
