//! The connection to a gateway: base URL, bearer token, HTTP requests whose errors
//! become [`ClientError`]s (with the server's problem document), and WebSocket
//! subscriptions.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, Url};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::error::{ClientError, chain, root_cause};

/// Time to establish a TCP connection or a WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request may take; long polls ask the server to answer well before it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Most bytes of a non-problem error body quoted in a message.
const MAX_QUOTED_BODY: usize = 300;

/// A WebSocket connection to the gateway.
pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A gateway at one base URL, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct Gateway {
    base: Url,
    auth: Option<HeaderValue>,
    token: Option<String>,
    http: reqwest::Client,
    /// TLS settings of WebSocket connections (for an https:// base).
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The client's TLS settings: the system's root certificates plus those of `ca_cert`
/// (PEM), rustls with the ring provider, HTTP/1.1 by ALPN.
fn tls_config(ca_cert: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped; --ca-cert may still make it work.
    let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut extra = 0;
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::Usage(format!("cannot read --ca-cert {}: {e}", path.display())))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ClientError::Usage(format!("--ca-cert {} is not PEM: {e}", path.display())))?;
            roots.add(cert).map_err(|e| {
                ClientError::Usage(format!("--ca-cert {} holds a bad certificate: {e}", path.display()))
            })?;
            extra += 1;
        }
        if extra == 0 {
            return Err(ClientError::Usage(format!("--ca-cert {} holds no certificate", path.display())));
        }
    }
    if added + extra == 0 {
        return Err(ClientError::Usage(
            "no trusted CA certificates: the system has none readable; give the gateway's with --ca-cert".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Usage(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Gateway {
    /// A client for `base` (`http://`, or `https://` trusting the system's roots and
    /// `ca_cert`), sending `Authorization: Bearer <token>` when a token is given.
    pub fn new(base: &Url, token: Option<&str>, ca_cert: Option<&Path>) -> Result<Gateway, ClientError> {
        let tls = match base.scheme() {
            "http" => None,
            "https" => Some(Arc::new(tls_config(ca_cert)?)),
            other => {
                return Err(ClientError::Usage(format!("--url must be an http:// or https:// URL, got {other}://")));
            }
        };
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(ClientError::Usage(format!("--url {base} has no host")));
        }
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let auth = match token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| ClientError::Usage("--token holds characters a header cannot carry".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let mut builder = crate::tls::client_builder();
        if let Some(tls) = &tls {
            builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(tls)).https_only(true);
        }
        let http = builder
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("tidegate-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot build the HTTP client: {}", chain(&e))))?;
        Ok(Gateway { base: base.clone(), auth, token: token.map(str::to_owned), http, tls })
    }

    /// The base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `base` with `segments` appended to its path, each percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A request to `segments`, with the token.
    pub fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let rb = self.http.request(method, self.url(segments));
        match &self.auth {
            Some(v) => rb.header(AUTHORIZATION, v.clone()),
            None => rb,
        }
    }

    /// Sends a request; any status but 2xx becomes [`ClientError::Problem`].
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response, ClientError> {
        let resp = rb.send().await.map_err(|e| self.transport(&e))?;
        self.check(resp).await
    }

    /// A 2xx answer as it is; any other becomes [`ClientError::Problem`].
    async fn check(&self, resp: Response) -> Result<Response, ClientError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Err(ClientError::Problem { status, problem: problem_of(status, &text) })
    }

    /// Like [`Gateway::json`], and for a 429 or 503 answer also the wait its
    /// `Retry-After` asks for (1 s when it has none), so the caller may resend.
    pub async fn json_or_retry_after<T: DeserializeOwned>(
        &self,
        rb: RequestBuilder,
    ) -> Result<T, (Option<std::time::Duration>, ClientError)> {
        let resp = rb.send().await.map_err(|e| (None, self.transport(&e)))?;
        let status = resp.status().as_u16();
        if status == 429 || status == 503 {
            let secs = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1);
            let text = resp.text().await.unwrap_or_default();
            let wait = std::time::Duration::from_secs(secs.max(1));
            return Err((Some(wait), ClientError::Problem { status, problem: problem_of(status, &text) }));
        }
        let resp = self.check(resp).await.map_err(|e| (None, e))?;
        self.decode(resp).await.map_err(|e| (None, e))
    }

    /// Sends a request and decodes its JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T, ClientError> {
        let resp = self.send(rb).await?;
        self.decode(resp).await
    }

    /// Decodes a JSON answer.
    async fn decode<T: DeserializeOwned>(&self, resp: Response) -> Result<T, ClientError> {
        let url = resp.url().clone();
        let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Protocol(format!("the answer of {} is not what the API describes: {e}", url.path()))
        })
    }

    /// `GET segments` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, ClientError> {
        self.json(self.request(Method::GET, segments)).await
    }

    /// Maps a transport failure: no connection is [`ClientError::Connect`], anything
    /// later (a cut connection, a body that cannot be read) is a protocol failure.
    pub fn transport(&self, e: &reqwest::Error) -> ClientError {
        if e.is_connect() {
            return ClientError::Connect { url: self.base.to_string(), detail: root_cause(e) };
        }
        ClientError::Protocol(format!("the exchange with {} failed: {}", self.base, chain(e)))
    }

    /// Opens a WebSocket on `segments` with `query`; the token goes in the
    /// `Authorization` header and as `access_token` (what browsers must use).
    pub async fn websocket(&self, segments: &[&str], query: &[(&str, String)]) -> Result<WsStream, ClientError> {
        let mut url = self.url(segments);
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        url.set_scheme(scheme).map_err(|()| ClientError::Usage(format!("{} cannot carry a WebSocket", self.base)))?;
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
            if let Some(t) = &self.token {
                pairs.append_pair("access_token", t);
            }
        }
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Usage(format!("invalid WebSocket URL {url}: {e}")))?;
        if let Some(v) = &self.auth {
            request.headers_mut().insert(AUTHORIZATION, v.clone());
        }
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let connecting = tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => Err(ClientError::Connect {
                url: self.base.to_string(),
                detail: format!("no WebSocket handshake within {CONNECT_TIMEOUT:?}"),
            }),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let text = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
                Err(ClientError::Problem { status, problem: problem_of(status, &text) })
            }
            Ok(Err(tungstenite::Error::Io(e))) => {
                Err(ClientError::Connect { url: self.base.to_string(), detail: root_cause(&e) })
            }
            Ok(Err(e)) => {
                Err(ClientError::Protocol(format!("WebSocket handshake with {} failed: {}", self.base, chain(&e))))
            }
        }
    }
}

/// The problem document of an error answer, or one built from the status and body
/// when the body is not a problem (a proxy's page, an empty body).
pub fn problem_of(status: u16, text: &str) -> Value {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(text)
        && v["detail"].is_string()
    {
        return v;
    }
    let reason = reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("error");
    let mut quoted: String = text.trim().chars().take(MAX_QUOTED_BODY).collect();
    if quoted.is_empty() {
        quoted = reason.to_string();
    }
    json!({"status": status, "title": reason, "detail": quoted})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_segments_and_keep_the_base_path() {
        let g = Gateway::new(&Url::parse("http://h:1/gw/").unwrap(), None, None).unwrap();
        assert_eq!(g.url(&["v1", "topics", "a b"]).as_str(), "http://h:1/gw/v1/topics/a%20b");
        let g = Gateway::new(&Url::parse("http://h:1").unwrap(), Some("  "), None).unwrap();
        assert_eq!(g.url(&["healthz"]).as_str(), "http://h:1/healthz");
        assert!(g.auth.is_none(), "a blank token sends nothing");
        assert!(matches!(Gateway::new(&Url::parse("ftp://h").unwrap(), None, None), Err(ClientError::Usage(_))));
        assert!(matches!(
            Gateway::new(&Url::parse("http://h").unwrap(), Some("a\nb"), None),
            Err(ClientError::Usage(_))
        ));
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(matches!(
            Gateway::new(&Url::parse("https://h").unwrap(), None, Some(missing)),
            Err(ClientError::Usage(_))
        ));
    }

    #[test]
    fn problems_are_kept_and_other_bodies_quoted() {
        let p = problem_of(404, r#"{"status":404,"code":"topic_not_found","detail":"no topic"}"#);
        assert_eq!(p["code"], "topic_not_found");
        let p = problem_of(502, "<html>bad gateway</html>");
        assert_eq!(p["detail"], "<html>bad gateway</html>");
        assert!(p["code"].is_null());
        assert_eq!(problem_of(500, "")["detail"], "Internal Server Error");
    }
}
