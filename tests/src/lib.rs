//! End-to-end test harness: real Tidegate servers on 127.0.0.1 with a temporary data
//! directory, and an HTTP client with helpers for the API.
//!
//! - [`TestServer`]: `tidegate::serve` in-process on a tokio task; stop and restart on
//!   the same data directory.
//! - [`ProcessServer`]: the real `tidegate` binary as a child process; SIGKILL,
//!   SIGTERM and restart.
//! - [`Api`]: the client both dereference to (topics, ingest, reads, problem checks).
//! - [`Subscriber`]: a WebSocket subscription (`/v1/topics/{topic}/subscribe`).
//! - [`browser`]: headless Chromium over WebDriver, for browser tests.
//!
//! Waiting is done on conditions with deadlines ([`eventually`]), never fixed sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, Message};

pub use tidegate::Config;

/// A fresh self-signed certificate for `localhost`, written as PEM files.
pub struct SelfSigned {
    /// The certificate (what `--tls-cert-file` and `--ca-cert` take).
    pub cert_path: PathBuf,
    /// Its private key (what `--tls-key-file` takes).
    pub key_path: PathBuf,
    /// The certificate (DER), for a client's root store.
    pub cert_der: rustls_pki_types::CertificateDer<'static>,
}

impl SelfSigned {
    /// Makes one and writes `cert.pem` and `key.pem` into `dir`.
    pub fn write(dir: &Path) -> SelfSigned {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("self-signed certificate");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write the key");
        SelfSigned { cert_path, key_path, cert_der: cert.cert.der().clone() }
    }
}

/// An in-process gateway serving HTTPS/WSS only, with a fresh self-signed certificate
/// for `localhost` (written to `cert_path` as PEM) and a temporary data directory.
pub struct TlsGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate (DER), for a client's root store.
    pub cert_der: rustls_pki_types::CertificateDer<'static>,
    /// Its certificate as a PEM file (what `--ca-cert` takes).
    pub cert_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tidegate::ServeError>>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl TlsGateway {
    /// Starts it; it may take a moment to answer (poll it, e.g. with [`eventually`]).
    pub async fn start() -> TlsGateway {
        let files = tempfile::tempdir().expect("temp dir");
        let SelfSigned { cert_path, key_path, cert_der } = SelfSigned::write(files.path());
        let data = tempfile::tempdir().expect("temp dir");
        let config = Config {
            data_dir: data.path().into(),
            tls_cert_file: cert_path.clone(),
            tls_key_file: key_path,
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tidegate::serve(config, listener, async {
            let _ = stopped.await;
        }));
        TlsGateway { addr, cert_der, cert_path, stop: Some(stop), task: Some(task), _dirs: (files, data) }
    }

    /// Stops it and asserts a clean shutdown.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the TLS gateway did not panic").expect("clean shutdown");
        }
    }
}

pub mod browser;

/// How long a server gets to start, and to stop after it was asked to.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// Records asked for per read while reading a partition to its end.
const READ_PAGE: u64 = 1000;

/// Reads a raw connection until the server closes it (or `within` passes); returns
/// what it sent and whether it closed.
pub async fn read_until_closed(tcp: &mut tokio::net::TcpStream, within: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(within, tcp.read_to_end(&mut got)).await.is_ok();
    (String::from_utf8_lossy(&got).to_string(), closed)
}

/// `data` gzip-compressed (best compression: a bomb test relies on the ratio).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// Calls `check` until it returns `Some`, backing off from 10 ms to 200 ms between
/// tries; panics naming `what` once `deadline` has passed.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// `(partition, offset)` pairs of an ingest answer `{"offsets":[{"partition","offset"}]}`.
pub fn offsets_of(body: &Value) -> Vec<(u32, u64)> {
    body["offsets"]
        .as_array()
        .unwrap_or_else(|| panic!("no offsets array in {body}"))
        .iter()
        .map(|o| {
            let p = o["partition"].as_u64().unwrap_or_else(|| panic!("no partition in {o}"));
            let off = o["offset"].as_u64().unwrap_or_else(|| panic!("no offset in {o}"));
            (u32::try_from(p).expect("partition fits u32"), off)
        })
        .collect()
}

/// Whether the `/metrics` text `metrics` has a `tidegate_http_requests_total` series for
/// `route`, `method` and `status` (whatever the label order).
pub fn has_request_series(metrics: &str, route: &str, method: &str, status: u16) -> bool {
    metrics.lines().any(|l| {
        l.starts_with("tidegate_http_requests_total{")
            && l.contains(&format!("route=\"{route}\""))
            && l.contains(&format!("method=\"{method}\""))
            && l.contains(&format!("status=\"{status}\""))
    })
}

/// Checks that `resp` is an RFC 7807 problem with `status` and `code`, and returns it.
pub async fn assert_problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let problem = assert_any_problem(resp, status).await;
    assert_eq!(problem["code"], code, "problem code, in {problem}");
    assert_eq!(problem["type"], format!("urn:tidegate:problem:{code}"), "problem type, in {problem}");
    problem
}

/// Checks that `resp` is an RFC 7807 problem with `status` (any code), and returns it.
pub async fn assert_any_problem(resp: reqwest::Response, status: u16) -> Value {
    let url = resp.url().clone();
    let got = resp.status().as_u16();
    let content_type =
        resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let text = resp.text().await.expect("problem body");
    assert_eq!(got, status, "status of {url}; body: {text}");
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type of {url} is {content_type:?}, not application/problem+json; body: {text}"
    );
    let problem: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("problem is not JSON ({e}): {text}"));
    assert_eq!(problem["status"], status, "status field, in {problem}");
    let code = problem["code"].as_str().unwrap_or_else(|| panic!("no code in {problem}"));
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "code {code:?} is not snake_case, in {problem}"
    );
    assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()), "no title in {problem}");
    assert!(problem["detail"].as_str().is_some_and(|t| !t.is_empty()), "no detail in {problem}");
    problem
}

/// An HTTP client bound to one server's base URL, with helpers for the API.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    /// The underlying client (no proxy, generous timeout).
    pub http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    /// A client for the server at `addr`.
    pub fn new(addr: SocketAddr) -> Api {
        let http = tidegate::tls::client_builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("the HTTP client builds");
        Api { base: format!("http://{addr}"), http, token: None }
    }

    /// The same server, with every request carrying `Authorization: Bearer <token>`
    /// (WebSocket helpers add `access_token=<token>` to the query instead).
    pub fn with_token(&self, token: &str) -> Api {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("a token is a valid header value"),
        );
        let http = tidegate::tls::client_builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .default_headers(headers)
            .build()
            .expect("the HTTP client builds");
        Api { base: self.base.clone(), http, token: Some(token.to_string()) }
    }

    /// Absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }

    /// `POST path`.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path))
    }

    /// The value of the `/metrics` series whose line starts with `series` (name and
    /// labels as printed), if it is there.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let resp = self.get("/metrics").send().await.expect("metrics");
        assert_eq!(resp.status(), 200, "GET /metrics");
        let text = resp.text().await.expect("metrics text");
        let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))?;
        line.rsplit(' ').next()?.parse().ok()
    }

    /// Creates a topic with `partitions` partitions; asserts 201 and returns the description.
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Value {
        self.create_topic_with(json!({"name": name, "partitions": partitions})).await
    }

    /// Creates a topic from a full `POST /v1/topics` body; asserts 201.
    pub async fn create_topic_with(&self, body: Value) -> Value {
        let resp = self.post("/v1/topics").json(&body).send().await.expect("create topic");
        let status = resp.status();
        let text = resp.text().await.expect("create topic body");
        assert_eq!(status, StatusCode::CREATED, "creating {body}: {text}");
        serde_json::from_str(&text).expect("topic description is JSON")
    }

    /// `GET /v1/topics/{topic}`; asserts 200.
    pub async fn describe(&self, topic: &str) -> Value {
        self.get_json(&format!("/v1/topics/{topic}")).await
    }

    /// `GET path`; asserts 200 and returns the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {text}"))
    }

    /// The JSON body of a 200 answer to `GET path`, or `None` for any other status (for
    /// polling state that appears asynchronously, such as a group a member is joining).
    pub async fn try_get_json(&self, path: &str) -> Option<Value> {
        let resp = self.get(path).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        if resp.status() != StatusCode::OK {
            return None;
        }
        Some(resp.json().await.unwrap_or_else(|e| panic!("GET {path} is not JSON: {e}")))
    }

    /// Each partition's end offset (high watermark), from the topic description.
    pub async fn end_offsets(&self, topic: &str) -> Vec<u64> {
        let d = self.describe(topic).await;
        let parts = d["partitions"].as_array().unwrap_or_else(|| panic!("no partitions in {d}"));
        parts.iter().map(|p| p["end_offset"].as_u64().expect("end_offset")).collect()
    }

    /// `POST /v1/topics/{topic}/events{query}` with a raw body (`query` is `""` or
    /// starts with `?`). Returns the response unchecked.
    pub async fn post_events(
        &self,
        topic: &str,
        query: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.post(&format!("/v1/topics/{topic}/events{query}"))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("post events")
    }

    /// Posts `events` as `application/json`; asserts 200 and returns `(partition, offset)` per event.
    pub async fn produce(&self, topic: &str, events: &Value) -> Vec<(u32, u64)> {
        self.produce_raw(topic, "", "application/json", events.to_string()).await
    }

    /// Posts a raw body; asserts 200 and returns `(partition, offset)` per event.
    pub async fn produce_raw(
        &self,
        topic: &str,
        query: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Vec<(u32, u64)> {
        let resp = self.post_events(topic, query, content_type, body).await;
        let status = resp.status();
        let text = resp.text().await.expect("ingest body");
        assert_eq!(status, StatusCode::OK, "ingest into {topic}{query}: {text}");
        offsets_of(&serde_json::from_str(&text).expect("ingest answer is JSON"))
    }

    /// One read of `topic`/`partition` from `offset`; asserts 200.
    pub async fn fetch(&self, topic: &str, partition: u32, offset: u64, max_records: u64) -> Value {
        self.get_json(&format!(
            "/v1/topics/{topic}/partitions/{partition}/records?offset={offset}&max_records={max_records}"
        ))
        .await
    }

    /// Every record of a partition from offset 0 to the high watermark.
    pub async fn read_all(&self, topic: &str, partition: u32) -> Vec<Value> {
        self.read_from(topic, partition, 0).await
    }

    /// Every record of a partition from `offset` to the high watermark, checking that
    /// offsets are consecutive.
    pub async fn read_from(&self, topic: &str, partition: u32, mut offset: u64) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        loop {
            let page = self.fetch(topic, partition, offset, READ_PAGE).await;
            let records = page["records"].as_array().unwrap_or_else(|| panic!("no records in {page}"));
            let next = page["next_offset"].as_u64().expect("next_offset");
            let hw = page["high_watermark"].as_u64().expect("high_watermark");
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r["offset"], offset + i as u64, "{topic}/{partition}: offsets are not dense");
            }
            out.extend(records.iter().cloned());
            if next >= hw {
                assert_eq!(next, hw, "{topic}/{partition}: next_offset passed the high watermark");
                return out;
            }
            assert!(!records.is_empty(), "{topic}/{partition}: read at {offset} returned nothing below {hw}");
            assert_eq!(next, offset + records.len() as u64, "{topic}/{partition}: next_offset after a page");
            offset = next;
        }
    }

    /// The record at `topic`/`partition`/`offset`.
    pub async fn record_at(&self, topic: &str, partition: u32, offset: u64) -> Value {
        let page = self.fetch(topic, partition, offset, 1).await;
        let record = page["records"][0].clone();
        assert_eq!(record["offset"], offset, "no record at {topic}/{partition}/{offset}: {page}");
        record
    }

    /// Opens a WebSocket on `path` (which starts with `/`) and completes the handshake;
    /// nothing reads the socket until the caller does.
    pub async fn ws_connect(&self, path: &str) -> Result<WsStream, tungstenite::Error> {
        let mut url = format!("ws://{}{path}", self.base.trim_start_matches("http://"));
        if let Some(token) = &self.token {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("access_token={token}"));
        }
        tokio_tungstenite::connect_async(url).await.map(|(ws, _)| ws)
    }

    /// Subscribes to `topic` (`query` is `""` or `group=g&from=earliest`…); panics
    /// unless the upgrade succeeds.
    pub async fn subscribe(&self, topic: &str, query: &str) -> Subscriber {
        let path = format!("/v1/topics/{topic}/subscribe?{query}");
        let ws = self.ws_connect(&path).await.unwrap_or_else(|e| panic!("subscribing with {path}: {e}"));
        Subscriber::new(ws)
    }

    /// Tries to subscribe and expects the upgrade to be refused with an RFC 7807
    /// problem of `status` and `code`; returns the problem.
    pub async fn subscribe_refused(&self, topic: &str, query: &str, status: u16, code: &str) -> Value {
        let path = format!("/v1/topics/{topic}/subscribe?{query}");
        let resp = match self.ws_connect(&path).await {
            Ok(_) => panic!("subscribing with {path} was accepted; expected {status} {code}"),
            Err(tungstenite::Error::Http(resp)) => resp,
            Err(e) => panic!("subscribing with {path} failed without an HTTP answer: {e}"),
        };
        let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
        assert_eq!(resp.status().as_u16(), status, "status of {path}; body: {body}");
        let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(content_type.starts_with("application/problem+json"), "content-type {content_type:?} of {path}");
        let problem: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("problem is not JSON ({e}): {body}"));
        assert_eq!(problem["code"], code, "problem code, in {problem}");
        assert_eq!(problem["status"], status, "status field, in {problem}");
        problem
    }

    /// Asserts that event `i` of `events` is stored at `offsets[i]`, with its value intact.
    pub async fn assert_stored_at(&self, topic: &str, offsets: &[(u32, u64)], events: &[Value]) {
        assert_eq!(offsets.len(), events.len(), "one offset per event");
        for (&(p, o), event) in offsets.iter().zip(events) {
            let record = self.record_at(topic, p, o).await;
            assert_eq!(&record["value"], event, "value at {topic}/{p}/{o}");
        }
    }
}

/// A running `serve` task and the way to stop it.
struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tidegate::ServeError>>,
}

/// A gateway running in this process on 127.0.0.1 (port chosen by the OS), with its
/// own temporary data directory. Dereferences to its [`Api`] client.
pub struct TestServer {
    /// Where it listens (changes on restart).
    pub addr: SocketAddr,
    api: Api,
    config: Config,
    dir: tempfile::TempDir,
    running: Option<Running>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer").field("addr", &self.addr).field("dir", &self.dir.path()).finish()
    }
}

impl Deref for TestServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestServer {
    /// Starts a server with the default settings changed by `tweak` (the data
    /// directory is a fresh temporary one), and waits until it is ready.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        // Drop waits for the store to close, which needs a multi-threaded runtime; on a
        // current-thread one the process could exit with RocksDB open and abort.
        assert_eq!(
            tokio::runtime::Handle::current().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread,
            "TestServer needs #[tokio::test(flavor = \"multi_thread\")]"
        );
        let dir = tempfile::Builder::new().prefix("tidegate-test-").tempdir().expect("temporary data directory");
        let mut config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        config.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        tweak(&mut config);
        config.validate().expect("the test's configuration is valid");
        let (addr, running) = launch(&config).await;
        let mut server = TestServer { addr, api: Api::new(addr), config, dir, running: Some(running) };
        server.wait_ready().await;
        server
    }

    /// Starts a server with default settings.
    pub async fn with_defaults() -> TestServer {
        Self::start(|_| {}).await
    }

    /// The data directory (kept across restarts, deleted on drop).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The settings the server runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The client for this server.
    pub fn api(&self) -> &Api {
        &self.api
    }

    async fn wait_ready(&mut self) {
        let api = self.api.clone();
        let until = Instant::now() + STARTUP_DEADLINE;
        loop {
            let running = self.running.as_mut().expect("server is running");
            if running.task.is_finished() {
                let outcome = (&mut running.task).await;
                panic!("the server stopped during start-up: {outcome:?}");
            }
            // Started: ready, or unready for a reason other than starting (a disk below
            // the floor some tests set).
            if let Ok(resp) = api.get("/readyz").timeout(Duration::from_secs(5)).send().await {
                let status = resp.status();
                let code = resp.json::<Value>().await.ok().and_then(|p| p["code"].as_str().map(str::to_string));
                if status == StatusCode::OK || code.as_deref() == Some("insufficient_storage") {
                    return;
                }
            }
            assert!(Instant::now() < until, "the server was not ready within {STARTUP_DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Triggers the shutdown future and waits for `serve` to return; asserts it returned `Ok`.
    pub async fn stop(&mut self) {
        let running = self.running.take().expect("server is running");
        let _ = running.shutdown.send(());
        let joined = tokio::time::timeout(STARTUP_DEADLINE, running.task)
            .await
            .unwrap_or_else(|_| panic!("serve did not return within {STARTUP_DEADLINE:?} of shutdown"));
        let served = joined.expect("the serve task did not panic");
        if let Err(e) = served {
            panic!("serve returned an error on shutdown: {e}");
        }
    }

    /// Stops the server (if running) and starts it again on the same data directory
    /// and settings; it listens on a new port.
    pub async fn restart(&mut self) {
        if self.running.is_some() {
            self.stop().await;
        }
        let (addr, running) = launch(&self.config).await;
        self.addr = addr;
        self.api = Api::new(addr);
        self.running = Some(running);
        self.wait_ready().await;
    }
}

impl Drop for TestServer {
    /// Stops the server and waits for its store to close, so RocksDB's threads are
    /// gone before the data directory is deleted and before the test process exits
    /// (RocksDB aborts the process, "pthread lock: Invalid argument", when it exits
    /// with a database still open). Needs the multi-threaded runtime; on any other
    /// the server is only told to stop.
    fn drop(&mut self) {
        let Some(running) = self.running.take() else { return };
        let _ = running.shutdown.send(());
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let outcome =
            tokio::task::block_in_place(|| handle.block_on(tokio::time::timeout(STARTUP_DEADLINE, running.task)));
        let failure = match outcome {
            Ok(Ok(Ok(()))) => return,
            Ok(Ok(Err(e))) => format!("serve returned an error on shutdown: {e}"),
            Ok(Err(e)) => format!("the serve task failed: {e}"),
            Err(_) => format!("serve did not return within {STARTUP_DEADLINE:?} of shutdown"),
        };
        if std::thread::panicking() {
            eprintln!("{failure}");
        } else {
            panic!("{failure}");
        }
    }
}

async fn launch(config: &Config) -> (SocketAddr, Running) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener address");
    let (shutdown, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(tidegate::serve(config.clone(), listener, async move {
        let _ = rx.await;
    }));
    (addr, Running { shutdown, task })
}

/// The real `tidegate` binary running as a child process on 127.0.0.1. Dereferences
/// to its [`Api`] client. The child is killed when this is dropped.
pub struct ProcessServer {
    /// Where it listens (changes on restart).
    pub addr: SocketAddr,
    api: Api,
    data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<tokio::process::Child>,
    log_path: PathBuf,
    launches: u32,
    /// Largest file the process may write (`ulimit -f`), to make storage fail.
    file_size_limit: Option<u64>,
    /// See [`ProcessServer::startup_answers`].
    startup_answers: Vec<(String, u16, String)>,
}

impl std::fmt::Debug for ProcessServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessServer").field("addr", &self.addr).field("data_dir", &self.data_dir).finish()
    }
}

impl Deref for ProcessServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Port-race retries when the picked port is taken before the child binds it.
const BIND_ATTEMPTS: u32 = 5;

impl ProcessServer {
    /// Path of the `tidegate` binary: `$TIDEGATE_BIN`, else next to the test
    /// executable (`<target>/<profile>/deps/<test>` → `<target>/<profile>/tidegate`).
    pub fn binary() -> PathBuf {
        if let Some(path) = std::env::var_os("TIDEGATE_BIN") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("path of the test executable");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("test executable {} is not in <target>/<profile>/deps", exe.display()));
        let bin = profile_dir.join(format!("tidegate{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.is_file(),
            "the tidegate binary is missing at {}: run `cargo build -p tidegate` first \
             (`cargo test --workspace` builds it too)",
            bin.display()
        );
        bin
    }

    /// Starts `tidegate serve --addr 127.0.0.1:<free port> --data-dir <data_dir> <args>`
    /// and waits until `/readyz` answers 200. `TIDEGATE_*` variables of the test's
    /// environment are not passed on.
    pub async fn start(data_dir: &Path, args: &[&str]) -> ProcessServer {
        Self::start_with_env(data_dir, args, &[]).await
    }

    /// Like [`ProcessServer::start`], with extra environment variables (e.g.
    /// `TIDEGATE_FSYNC`) for the child.
    pub async fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ProcessServer {
        Self::start_inner(data_dir, args, env, None).await
    }

    /// Like [`ProcessServer::start`], under a limit on the size of any file it writes
    /// (`ulimit -f`, with `SIGXFSZ` ignored): a write past it fails with `EFBIG`, as a
    /// full disk or a failing device would fail it. Lift it with
    /// [`ProcessServer::lift_file_size_limit`] before a restart.
    pub async fn start_with_file_size_limit(data_dir: &Path, args: &[&str], limit_bytes: u64) -> ProcessServer {
        Self::start_inner(data_dir, args, &[], Some(limit_bytes)).await
    }

    /// Starts without a file size limit from the next restart on.
    pub fn lift_file_size_limit(&mut self) {
        self.file_size_limit = None;
    }

    async fn start_inner(data_dir: &Path, args: &[&str], env: &[(&str, &str)], limit: Option<u64>) -> ProcessServer {
        let placeholder = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = ProcessServer {
            addr: placeholder,
            api: Api::new(placeholder),
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
            log_path: PathBuf::new(),
            launches: 0,
            file_size_limit: limit,
            startup_answers: Vec::new(),
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        assert!(self.child.is_none(), "the previous process has not exited");
        self.startup_answers.clear();
        let bin = Self::binary();
        for attempt in 1..=BIND_ATTEMPTS {
            let port = {
                let probe = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a probe port");
                probe.local_addr().expect("probe address").port()
            };
            self.launches += 1;
            self.log_path = self.data_dir.join(format!("tidegate-{}.log", self.launches));
            let log = std::fs::File::create(&self.log_path).expect("create the server log file");
            let mut cmd = match self.file_size_limit {
                None => tokio::process::Command::new(&bin),
                Some(bytes) => {
                    // An ignored signal stays ignored across exec; bash counts in KiB.
                    let mut cmd = tokio::process::Command::new("bash");
                    cmd.args(["-c", "trap '' XFSZ; ulimit -f \"$1\" && shift && exec \"$@\"", "limited"])
                        .arg(bytes.div_ceil(1024).to_string())
                        .arg(&bin);
                    cmd
                }
            };
            cmd.arg("serve")
                .arg("--addr")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(&self.data_dir)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .kill_on_drop(true);
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("TIDEGATE_") {
                    cmd.env_remove(name);
                }
            }
            cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
            let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            self.addr = SocketAddr::from(([127, 0, 0, 1], port));
            self.api = Api::new(self.addr);
            self.child = Some(child);
            match self.wait_ready().await {
                Ok(()) => return,
                Err(status) => {
                    let log = self.log();
                    self.child = None;
                    let port_taken = log.contains("cannot listen") || log.contains("in use");
                    assert!(
                        port_taken && attempt < BIND_ATTEMPTS,
                        "tidegate exited during start-up with {status}; its log:\n{log}"
                    );
                }
            }
        }
    }

    /// Polls `/readyz` until 200; `Err` with the exit status if the child exits first.
    async fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let until = Instant::now() + STARTUP_DEADLINE;
        loop {
            let child = self.child.as_mut().expect("child is running");
            if let Some(status) = child.try_wait().expect("poll the child") {
                return Err(status);
            }
            if let Ok(resp) = self.api.get("/readyz").timeout(Duration::from_secs(5)).send().await {
                if resp.status() == StatusCode::OK {
                    return Ok(());
                }
                // Not ready yet but answering: note what the probes say meanwhile.
                let status = resp.status().as_u16();
                self.startup_answers.push(("/readyz".into(), status, resp.text().await.unwrap_or_default()));
                if let Ok(resp) = self.api.get("/healthz").timeout(Duration::from_secs(5)).send().await {
                    let status = resp.status().as_u16();
                    self.startup_answers.push(("/healthz".into(), status, resp.text().await.unwrap_or_default()));
                }
            }
            if Instant::now() >= until {
                panic!("tidegate was not ready within {STARTUP_DEADLINE:?}; its log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The client for this server.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The process id of the running child.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(tokio::process::Child::id).expect("child is running")
    }

    /// What `/readyz` (and `/healthz` right after it) answered while the latest start
    /// was not ready yet: (path, status, body), in order.
    pub fn startup_answers(&self) -> &[(String, u16, String)] {
        &self.startup_answers
    }

    /// What the current (or last) process wrote to stdout and stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no chance to flush anything) and reaps it.
    pub async fn kill9(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("child is running");
        child.start_kill().expect("send SIGKILL");
        self.wait_exit(STARTUP_DEADLINE).await
    }

    /// Sends the signal named `name` (`TERM`, `INT`, …); use
    /// [`ProcessServer::wait_exit`] to reap.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run `kill`");
        assert!(status.success(), "kill -{name} {} failed: {status}", self.pid());
    }

    /// Waits up to `deadline` for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("child is running");
        let status = match tokio::time::timeout(deadline, child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => panic!("tidegate did not exit within {deadline:?}; its log:\n{}", self.log()),
        };
        self.child = None;
        status
    }

    /// Starts the binary again on the same data directory and flags (after it exited).
    pub async fn restart(&mut self) {
        self.launch().await;
    }
}

impl Drop for ProcessServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// The client side of a WebSocket connection to a gateway.
pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a [`Subscriber`] received.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// A text frame, parsed as JSON.
    Frame(Value),
    /// The connection ended: the close code (`None` without a close frame) and reason.
    Closed(Option<u16>, String),
}

/// A WebSocket subscription. A background task reads the socket all the time (so
/// the server's pings are answered) and queues what arrives; the test takes it
/// from the queue with [`Subscriber::recv`] and friends.
pub struct Subscriber {
    sink: SplitSink<WsStream, Message>,
    events: mpsc::UnboundedReceiver<WsEvent>,
    reader: JoinHandle<()>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Starts reading an open connection.
    pub fn new(ws: WsStream) -> Subscriber {
        let (sink, mut stream) = ws.split();
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut closed = false;
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(Message::Text(text)) => WsEvent::Frame(
                        serde_json::from_str(&text)
                            .unwrap_or_else(|e| json!({"type": "not-json", "error": e.to_string()})),
                    ),
                    Ok(Message::Binary(b)) => WsEvent::Frame(json!({"type": "binary", "len": b.len()})),
                    Ok(Message::Close(frame)) => {
                        let (code, reason) =
                            frame.map_or((None, String::new()), |f| (Some(f.code.into()), f.reason.to_string()));
                        WsEvent::Closed(code, reason)
                    }
                    Ok(_) => continue,
                    Err(e) => WsEvent::Closed(None, e.to_string()),
                };
                // After a close frame keep reading, so the reply is flushed, until the server hangs up.
                if !closed {
                    closed = matches!(event, WsEvent::Closed(..));
                    let _ = tx.send(event);
                }
            }
            if !closed {
                let _ = tx.send(WsEvent::Closed(None, "the connection ended without a close frame".into()));
            }
        });
        Subscriber { sink, events, reader }
    }

    /// The next event, or `None` if nothing arrives within `deadline`.
    pub async fn recv(&mut self, deadline: Duration) -> Option<WsEvent> {
        tokio::time::timeout(deadline, self.events.recv()).await.ok().flatten()
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<WsEvent> {
        self.events.try_recv().ok()
    }

    /// The next frame; panics if the connection closes or nothing arrives within `deadline`.
    pub async fn next_frame(&mut self, deadline: Duration) -> Value {
        match self.recv(deadline).await {
            Some(WsEvent::Frame(v)) => v,
            Some(WsEvent::Closed(code, reason)) => {
                panic!("the connection closed ({code:?}, {reason:?}) awaiting a frame")
            }
            None => panic!("no frame within {deadline:?}"),
        }
    }

    /// Skips frames until the connection closes; returns the close code and reason,
    /// and the frames skipped. Panics after `deadline`.
    pub async fn closed(&mut self, deadline: Duration) -> (Option<u16>, String, Vec<Value>) {
        let until = Instant::now() + deadline;
        let mut frames = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Some(WsEvent::Frame(v)) => frames.push(v),
                Some(WsEvent::Closed(code, reason)) => return (code, reason, frames),
                None => panic!("the connection did not close within {deadline:?}; frames: {frames:?}"),
            }
        }
    }

    /// Sends a JSON text frame.
    pub async fn send(&mut self, frame: &Value) {
        self.send_message(Message::text(frame.to_string())).await;
    }

    /// Sends any message.
    pub async fn send_message(&mut self, message: Message) {
        self.sink.send(message).await.expect("send a WebSocket frame");
    }

    /// Closes normally (code 1000) and waits for the server's close frame; returns its code.
    pub async fn close(mut self) -> Option<u16> {
        let frame = tungstenite::protocol::CloseFrame { code: 1000.into(), reason: "done".into() };
        self.send_message(Message::Close(Some(frame))).await;
        self.closed(STARTUP_DEADLINE).await.0
    }

    /// Drops the TCP connection without a close frame (a crashed client).
    pub async fn kill(mut self) {
        self.reader.abort();
        let _ = (&mut self.reader).await;
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
