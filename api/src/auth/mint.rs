//! `tidegate token`: signs a JWT for ops and tests, with the claims the gateway
//! checks (`exp`, optional `sub`, `aud`, `iss`, and the permissions claim).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::settings::JwtAlgorithm;

/// Arguments of `tidegate token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Permission, repeatable: `produce:<topic pattern>`, `consume:<pattern>`, `admin`
    /// or `admin:<pattern>`.
    #[arg(long = "permission", short = 'p', required = true)]
    pub permissions: Vec<String>,
    /// Signature algorithm.
    #[arg(long, default_value = "HS256", value_parser = parse_alg)]
    pub alg: JwtAlgorithm,
    /// HMAC secret (HS256/384/512).
    #[arg(long, env = "TIDEGATE_TOKEN_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Private key PEM file (RS*, PS256, ES*, EdDSA).
    #[arg(long)]
    pub private_key_file: Option<PathBuf>,
    /// Key id put in the header (`kid`).
    #[arg(long)]
    pub kid: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_s: u64,
    /// Subject (`sub`).
    #[arg(long)]
    pub sub: Option<String>,
    /// Audience (`aud`).
    #[arg(long)]
    pub aud: Option<String>,
    /// Issuer (`iss`).
    #[arg(long)]
    pub iss: Option<String>,
    /// Name of the permissions claim (the server's `jwt_permissions_claim`).
    #[arg(long, default_value = "permissions")]
    pub claim: String,
}

fn parse_alg(s: &str) -> Result<JwtAlgorithm, String> {
    serde_json::from_value(Value::String(s.to_string())).map_err(|_| format!("unknown algorithm {s:?}"))
}

/// Refuses a permission the gateway would read as granting nothing (it skips unknown
/// actions, and an empty pattern matches no topic), so a typo is not a silent 403 later.
fn check_permission(permission: &str) -> Result<(), String> {
    let (action, pattern) = super::grants::parse_permission(permission);
    if let Err(action) = action {
        return Err(format!(
            "permission {permission:?}: unknown action {action:?} (produce, consume or admin, then :<topic pattern>)"
        ));
    }
    if pattern.is_empty() {
        return Err(format!("permission {permission:?}: the topic pattern is empty (use * for every topic)"));
    }
    match super::grants::unmatchable(pattern) {
        Some(why) => Err(format!("permission {permission:?}: {why}")),
        None => Ok(()),
    }
}

/// Signs the token described by `args`.
pub fn mint(args: &TokenArgs) -> Result<String, String> {
    for permission in &args.permissions {
        check_permission(permission)?;
    }
    let alg = args.alg;
    let key = if alg.is_hmac() {
        let secret = args.secret.as_deref().ok_or("HMAC tokens need --secret (or TIDEGATE_TOKEN_SECRET)")?;
        if secret.len() < 32 {
            // The gateway refuses such secrets: a token signed with one would never verify.
            return Err(format!("the secret has {} bytes; HMAC secrets need at least 32", secret.len()));
        }
        EncodingKey::from_secret(secret.as_bytes())
    } else {
        let path = args.private_key_file.as_ref().ok_or("this algorithm needs --private-key-file")?;
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let parsed = match alg {
            JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => EncodingKey::from_ec_pem(&pem),
            JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        };
        parsed.map_err(|e| {
            let hint = if String::from_utf8_lossy(&pem).contains("BEGIN EC PRIVATE KEY") {
                " (an SEC1 key, as `openssl ecparam -genkey` writes; convert it with `openssl pkcs8 -topk8 -nocrypt`)"
            } else {
                ""
            };
            format!("{} is not a {alg:?} private key: {e}{hint}", path.display())
        })?
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut claims = json!({"iat": now, "exp": now + args.ttl_s});
    let map = claims.as_object_mut().expect("an object");
    map.insert(args.claim.clone(), json!(args.permissions));
    for (name, value) in [("sub", &args.sub), ("aud", &args.aud), ("iss", &args.iss)] {
        if let Some(v) = value {
            map.insert(name.to_string(), json!(v));
        }
    }
    let mut header = Header::new(alg.to_jwt());
    header.kid = args.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing failed: {e}"))
}
