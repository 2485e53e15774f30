//! Configuration: one typed struct, filled from defaults, a TOML file, `TIDEGATE_*`
//! environment variables and command-line flags (later ones win), validated at boot.
//!
//! Every setting is declared once in the `settings!` list below; the macro generates
//! the resolved [`Config`], the all-optional [`ConfigLayer`] that a file or the
//! command line fills, and the reference table printed by `tidegate config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidegate_storage::{FsyncPolicy, StoreConfig};

use crate::auth::settings::{IpNets, JwtKeys, StringList, WriteKeys};
pub use crate::ingest::privacy::ClientIpMode;
pub use crate::ingest::segment::SegmentTopics;

/// Upper bound of `delivery_threads`.
const MAX_DELIVERY_THREADS: u32 = 1024;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// What `min_free_disk_bytes` must exceed `write_buffer_bytes` by (see `validate`).
const FLOOR_HEADROOM: u64 = 128 * MIB;
/// Bounds of `max_request_head_bytes`: below 1 KiB ordinary browser requests fail; above
/// 256 KiB hyper's read buffer (~408 KiB) could refuse first, with a different reason.
const MIN_REQUEST_HEAD_BYTES: u64 = KIB;
const MAX_REQUEST_HEAD_BYTES: u64 = 256 * KIB;

/// One row of the configuration reference.
#[derive(Debug, Clone, Serialize)]
pub struct SettingDoc {
    /// Name in the TOML file (the flag is `--name-with-dashes`, the variable `TIDEGATE_NAME`).
    pub name: &'static str,
    /// What it does.
    pub doc: String,
    /// Default value, as TOML would spell it.
    pub default: String,
}

/// How many values a setting's flag takes: booleans zero or one (`--insecure`,
/// `--insecure false`), everything else exactly one.
fn flag_arity<T: 'static>() -> clap::builder::ValueRange {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<bool>() { (0..=1).into() } else { 1.into() }
}

/// Largest `max_partitions`.
pub const MAX_NODE_PARTITIONS: u64 = 100_000;
/// Longest duration setting: 10 years, in ms.
pub const MAX_DURATION_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
/// Largest size setting: 1 PiB.
pub const MAX_SIZE_BYTES: u64 = 1 << 50;
/// Largest count or rate setting (connections, queue depths, cache entries…).
pub const MAX_COUNT: u64 = 1 << 32;

macro_rules! settings {
    ($( $(#[doc = $doc:literal])+ $name:ident : $ty:ty = $default:expr; )+) => {
        /// Resolved configuration of a gateway node.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $name: $ty, )+
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $( $name: $default, )+ }
            }
        }

        /// One source of settings (a TOML file, or flags and environment): every field
        /// optional, unknown keys refused.
        #[derive(Debug, Clone, Default, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct ConfigLayer {
            // A boolean flag given without a value means `true`, so boolean settings read
            // as switches (`--insecure`); every other setting needs its value (a flag
            // without one is refused, never read as the string "true").
            $( $(#[doc = $doc])+
               #[arg(long, num_args = flag_arity::<$ty>(), default_missing_value = "true", allow_negative_numbers = true)]
               pub $name: Option<$ty>, )+
        }

        impl Config {
            /// Overrides the settings that `layer` sets.
            pub fn apply(&mut self, layer: ConfigLayer) {
                $( if let Some(v) = layer.$name { self.$name = v; } )+
            }

            /// The reference table of every setting, with its default.
            pub fn reference() -> Vec<SettingDoc> {
                let d = Config::default();
                let defaults = toml::Value::try_from(&d).ok();
                vec![ $( SettingDoc {
                    name: stringify!($name),
                    doc: [$($doc),+].iter().map(|l| l.trim()).collect::<Vec<_>>().join(" "),
                    default: defaults.as_ref().and_then(|t| t.get(stringify!($name))).map(|v| v.to_string()).unwrap_or_default(),
                }, )+ ]
            }
        }
    };
}

settings! {
    /// Address the HTTP server listens on.
    addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080));
    /// Directory for all data (RocksDB lives in `<data_dir>/rocksdb`).
    data_dir: PathBuf = PathBuf::from("./tidegate-data");
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    log: String = "info".to_string();
    /// Durability of appends: `always` (WAL synced before the acknowledgement), `interval`
    /// (acknowledged once in the WAL, synced every `fsync_interval_ms`) or `never`.
    fsync: FsyncPolicy = FsyncPolicy::Always;
    /// WAL sync period when `fsync = "interval"`.
    fsync_interval_ms: u64 = 100;
    /// Appends that may wait for the writer; producers wait when it is full.
    write_queue_depth: u64 = 4096;
    /// Most bytes gathered into one group commit (one RocksDB write and sync).
    max_group_commit_bytes: u64 = 16 * MIB;
    /// RocksDB block cache shared by all partitions.
    block_cache_bytes: u64 = 128 * MIB;
    /// RocksDB memtable budget across all partitions.
    write_buffer_bytes: u64 = 256 * MIB;
    /// How often retention runs.
    retention_check_interval_ms: u64 = 30_000;
    /// Create an unknown topic on its first event instead of answering 404 (with
    /// authentication on, only for a token that also grants `admin` on the topic).
    auto_create_topics: bool = false;
    /// Partitions of a topic created without a count (and of auto-created topics).
    default_partitions: u32 = 6;
    /// Most partitions of all topics on this node together (409 `partition_limit` for a
    /// create or add beyond it). Each partition is a RocksDB column family, and creating
    /// or dropping one takes longer the more exist (see README "Storage").
    max_partitions: u64 = 1000;
    /// Appends are refused (507 `insufficient_storage`, `/readyz` 503) while the data
    /// directory's file system has fewer bytes free, so the disk never fills: topic
    /// deletes, retention and offset commits go on, and appends resume once space is
    /// free again. 0 turns the check off; otherwise at least `write_buffer_bytes` + 128
    /// MiB (memtable flushes write into the margin; see README "Storage").
    min_free_disk_bytes: u64 = 1024 * MIB;
    /// Time retention of new topics that do not set one, in ms; 0 keeps records forever.
    default_retention_ms: u64 = 7 * 24 * 3600 * 1000;
    /// Size retention per partition of new topics that do not set one; 0 is unbounded.
    default_retention_bytes: u64 = 0;
    /// Largest request body, after decompression (413 above it).
    max_body_bytes: u64 = 8 * MIB;
    /// Largest single event: its value, key and headers (names and values) together, as
    /// Kafka's `max.message.bytes` counts a record (413 above it).
    max_event_bytes: u64 = MIB;
    /// Most events in one request (413 above it).
    max_events_per_request: u64 = 10_000;
    /// Most headers one record may carry (the envelope's `headers`; 400 above it).
    max_record_headers: u64 = 256;
    /// Longest record header name, in bytes (400 above it; at most 65535).
    max_header_name_bytes: u64 = 256;
    /// Largest frame a WebSocket subscriber may send (commits, seeks: small control
    /// messages); a larger one closes the session with 1009.
    max_client_frame_bytes: u64 = 64 * KIB;
    /// Deepest nesting of arrays and objects in a JSON event (400 `invalid_events` above
    /// it): consumers' JSON parsers often refuse or overflow past a few hundred levels.
    max_event_depth: u64 = 128;
    /// Longest a client may take to send a request's head (request line and headers),
    /// counted from its first byte or, on a kept-alive connection, from the end of the
    /// previous answer; the connection is closed after it (slow-header attacks).
    http_header_timeout_ms: u64 = 10_000;
    /// Largest request head (request line and headers) in bytes; a larger one is answered
    /// 431 `request_head_too_large` and its connection closed.
    max_request_head_bytes: u64 = 64 * KIB;
    /// Most headers one request may carry (431 `request_head_too_large` above it).
    max_request_headers: u64 = 100;
    /// Longest a request body may go without a byte arriving (408 `request_timeout`).
    http_body_timeout_ms: u64 = 30_000;
    /// Longest the server waits for one request body's bytes, all the gaps together
    /// (408 `request_timeout`): a client that sends a large body and then trickles the
    /// rest holds what it sent (in `request_memory_bytes`) for at most this long.
    /// Time the server itself spends (waiting for memory, writing) does not count.
    http_body_total_timeout_ms: u64 = 120_000;
    /// Most HTTP connections served at once (WebSocket and SSE subscriptions count until
    /// upgraded, then `max_subscriptions` bounds them); further clients wait to be
    /// accepted.
    max_connections: u64 = 10_000;
    /// Memory for request bodies in flight, all requests together: a body's bytes are
    /// reserved as they arrive (a client holds only what it has sent; its decoded size
    /// when larger) and held until its events are written. A piece that does not fit
    /// waits, with nothing more read (TCP pushes back on the client), for up to
    /// `request_memory_wait_ms`, then the request gets 503 `overloaded`. At least
    /// `max_body_bytes`.
    request_memory_bytes: u64 = 512 * MIB;
    /// Longest a request's body waits for room in `request_memory_bytes`, all its
    /// pieces together, before 503 `overloaded` (with `Retry-After`); 0 refuses at once.
    request_memory_wait_ms: u64 = 10_000;
    /// The client IP in the `client-ip` header of ingested records: `full`, `truncated`
    /// (IPv4 to its /24, IPv6 to its /48: the last bytes zeroed) or `none`. A request with
    /// an `SP-Anonymous` or `Tidegate-Anonymous` header stores no IP whatever this says.
    /// A Segment event's own `context.ip` follows the same rule.
    client_ip: ClientIpMode = ClientIpMode::Full;
    /// Add the `User-Agent` as the `user-agent` header of ingested records (anonymous
    /// requests included).
    record_user_agent: bool = true;
    /// How long an event id (the topic's `event_id` pointer, Segment's `messageId`, or
    /// the `Idempotency-Key` header) is remembered: a retry within it is answered with the
    /// first copy's partition and offset and not written again.
    dedup_window_ms: u64 = 24 * 3600 * 1000;
    /// Memory for recently remembered event ids (older ones are looked up on disk).
    dedup_cache_bytes: u64 = 64 * MIB;
    /// How often ids older than `dedup_window_ms` are dropped from disk.
    dedup_expiry_interval_ms: u64 = 3600 * 1000;
    /// Topic of each Segment event, as a JSON object: keys `"<type>:<event name>"`,
    /// `"<type>"` or `"*"` (most specific wins); without a match an event of type T goes
    /// to `segment.T` (`segment.track`, `segment.page`...). Those topics are created on
    /// first use.
    segment_topics: SegmentTopics = SegmentTopics::default();
    /// Largest Segment event, and body of a single-event Segment call (Segment's 32 KB).
    segment_max_event_bytes: u64 = 32 * KIB;
    /// Largest body of a Segment `batch` call (Segment's 500 KB; `max_body_bytes` applies first).
    segment_max_batch_bytes: u64 = 500 * KIB;
    /// Topic receiving the events of a Segment batch that cannot be accepted (no `userId`
    /// or `anonymousId`, an unknown `type`, over 32 KB, failing their topic's schema with
    /// no dead-letter topic…), with the reason in `dlq-reason`; the batch's other events
    /// are stored and the call answered 200 (trackers drop a whole batch answered 400).
    /// Empty: such events are dropped, counted and listed in the answer.
    segment_invalid_topic: String = "segment.invalid".to_string();
    /// Largest `max_records` a read may ask for.
    max_fetch_records: u64 = 10_000;
    /// Largest `max_bytes` a read may ask for.
    max_fetch_bytes: u64 = 16 * MIB;
    /// Longest `wait_ms` a long-poll read may ask for.
    max_wait_ms: u64 = 30_000;
    /// A consumer-group member that sends nothing (not even a pong) for this long is
    /// removed; a static member may reconnect within it and keep its partitions.
    session_timeout_ms: u64 = 10_000;
    /// How often the server pings WebSocket subscribers.
    heartbeat_interval_ms: u64 = 3_000;
    /// With `auto_commit`, how often delivered positions are committed (over WebSocket,
    /// those the client confirmed by answering a ping; see docs/websocket.md).
    auto_commit_interval_ms: u64 = 1_000;
    /// With `auto_commit=false`, how long a WebSocket member told `revoked` may still
    /// commit those partitions (up to what it was sent) before they go to their new
    /// owner; they go as soon as its commits cover what it was sent. 0 hands them over
    /// at once (what the member did not commit is then read again by the next owner).
    revoke_commit_timeout_ms: u64 = 5_000;
    /// Most bytes of records in one subscription frame, and of the frames one delivery
    /// round queues before writing them: the per-subscriber memory bound.
    subscription_frame_bytes: u64 = 256 * KIB;
    /// Bytes of recently sent records frames shared by all subscriptions (subscribers
    /// tailing the same partition reuse one read and one encoding); 0 disables it.
    subscription_cache_bytes: u64 = 32 * MIB;
    /// Most concurrent WebSocket and SSE subscriptions (503 above it).
    max_subscriptions: u64 = 10_000;
    /// Worker threads of the delivery runtime, where WebSocket and SSE subscriptions
    /// run apart from HTTP requests (so a request never queues behind a thousand
    /// subscriber wake-ups, and producers are not slowed by consumers); 0 means half the
    /// CPU cores, at least one (the other half serves HTTP, the writer and RocksDB);
    /// at most 1024.
    delivery_threads: u32 = 0;
    /// On shutdown, how long in-flight requests get to finish before they are cut (and
    /// then again how long open subscriptions get to commit and close).
    shutdown_timeout_ms: u64 = 30_000;
    /// Browser origins allowed by CORS: exact (`https://shop.example`), wildcard
    /// subdomains (`https://*.example.com`) or `*` (any origin; not with credentials).
    /// The origins of write keys are added. None at all: no CORS headers.
    cors_origins: StringList = StringList::default();
    /// Answer allowed origins with `Access-Control-Allow-Credentials: true`. Refused
    /// with `*` in `cors_origins` or in a write key's origins.
    cors_allow_credentials: bool = false;
    /// How long browsers may cache a preflight answer (`Access-Control-Max-Age`), in seconds.
    cors_max_age_s: u64 = 600;
    /// JWT verification keys: a TOML array of tables (a JSON array as flag or variable)
    /// `{alg, kid?, secret | secret_base64 | public_key_pem | public_key_file}`; `alg` is
    /// HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA. HMAC secrets
    /// need at least 32 bytes. Any key (or `jwks_file`, or `write_keys`) turns
    /// authentication on.
    jwt_keys: JwtKeys = JwtKeys::default();
    /// JWKS file (RFC 7517) with more verification keys, re-read when it changes; empty: none.
    jwks_file: PathBuf = PathBuf::new();
    /// How often the JWKS file is checked for changes.
    jwks_reload_interval_ms: u64 = 5_000;
    /// Accepted token audiences; when set, `aud` is required and must be one of them.
    /// Needs a JWT key (`jwt_keys` or `jwks_file`).
    jwt_audience: StringList = StringList::default();
    /// Accepted token issuers; when set, `iss` is required and must be one of them (a single string).
    /// Needs a JWT key (`jwt_keys` or `jwks_file`).
    jwt_issuer: StringList = StringList::default();
    /// Clock skew tolerated when checking `exp` and `nbf`, in seconds.
    jwt_leeway_s: u64 = 30;
    /// Verified tokens remembered so repeated requests skip the signature check (each
    /// is still refused from its `exp` on); 0 checks every request afresh.
    jwt_cache_entries: u64 = 4096;
    /// Token claim that holds the permissions: `["produce:web.*", "consume:*", "admin"]`
    /// or `{"produce": ["web.*"], "consume": ["*"]}`.
    jwt_permissions_claim: String = "permissions".to_string();
    /// Browser write keys: a TOML array of tables (a JSON array as flag or variable)
    /// `{key, topics, origins?, rate_limit_per_s?, rate_limit_burst?}`. A write key may
    /// only produce, to topics matching `topics` (`*` wildcards), from `origins` (empty: any).
    /// A pattern no topic name can match (a space, `/`) refuses the start; an error names
    /// the entry by number (`entry 2 of the write keys`).
    write_keys: WriteKeys = WriteKeys::default();
    /// Requests per second per client IP (an IPv6 client per /64), on every route but
    /// `/healthz` and `/readyz` (429 with `Retry-After` above it); 0: unlimited.
    rate_limit_ip_per_s: u64 = 0;
    /// Requests a client IP may send at once above its rate; 0: equal to the rate.
    rate_limit_ip_burst: u64 = 0;
    /// Requests per second per write key (a key's own `rate_limit_per_s` wins); 0: unlimited.
    rate_limit_key_per_s: u64 = 0;
    /// Burst per write key above its rate; 0: equal to the rate.
    rate_limit_key_burst: u64 = 0;
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` names the client; the header
    /// is ignored from anyone else.
    trusted_proxies: IpNets = IpNets::default();
    /// Serve `/metrics` without a token even when authentication is on.
    public_metrics: bool = false;
    /// Allow serving on a non-loopback address with authentication off, and turn off the
    /// checks of `Host` and `Origin` an unauthenticated gateway makes otherwise.
    insecure: bool = false;
    /// TLS certificate chain (PEM). With `tls_key_file` the server speaks only HTTPS/WSS.
    tls_cert_file: PathBuf = PathBuf::new();
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    tls_key_file: PathBuf = PathBuf::new();
    /// Longest a client may take to complete the TLS handshake.
    tls_handshake_timeout_ms: u64 = 10_000;
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML or names unknown settings. Says where, not what the
    /// line holds (it may hold a secret).
    #[error("invalid config file {path}: {at}{message}")]
    Parse { path: PathBuf, at: String, message: String },
    /// A setting is out of range.
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl Config {
    /// Defaults, then the TOML file (if any), then `overrides` (flags and environment).
    pub fn load(file: Option<&std::path::Path>, overrides: ConfigLayer) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
            let layer: ConfigLayer = toml::from_str(&text).map_err(|e| {
                let at = e.span().map_or_else(String::new, |span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {column}: ")
                });
                ConfigError::Parse { path: path.into(), at, message: e.message().trim_end().to_string() }
            })?;
            config.apply(layer);
        }
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 19] = [
            ("dedup_window_ms", self.dedup_window_ms),
            ("dedup_expiry_interval_ms", self.dedup_expiry_interval_ms),
            ("segment_max_event_bytes", self.segment_max_event_bytes),
            ("segment_max_batch_bytes", self.segment_max_batch_bytes),
            ("session_timeout_ms", self.session_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("auto_commit_interval_ms", self.auto_commit_interval_ms),
            ("subscription_frame_bytes", self.subscription_frame_bytes),
            ("fsync_interval_ms", self.fsync_interval_ms),
            ("write_queue_depth", self.write_queue_depth),
            ("max_group_commit_bytes", self.max_group_commit_bytes),
            ("retention_check_interval_ms", self.retention_check_interval_ms),
            ("default_partitions", u64::from(self.default_partitions)),
            ("max_body_bytes", self.max_body_bytes),
            ("max_event_bytes", self.max_event_bytes),
            ("max_events_per_request", self.max_events_per_request),
            ("max_fetch_records", self.max_fetch_records),
            ("max_fetch_bytes", self.max_fetch_bytes),
            ("write_buffer_bytes", self.write_buffer_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid { name, reason: "must be greater than 0".into() });
            }
        }
        self.validate_upper_bounds()?;
        if !(1..=MAX_NODE_PARTITIONS).contains(&self.max_partitions) {
            return Err(ConfigError::Invalid {
                name: "max_partitions",
                reason: format!("between 1 and {MAX_NODE_PARTITIONS}"),
            });
        }
        // Below the floor, memtable flushes still write: every memtable (up to
        // `write_buffer_bytes`) and the next WAL file (RocksDB preallocates ~70 MiB)
        // must fit above a full disk, or the floor cannot keep the disk from filling.
        let floor_minimum = self.write_buffer_bytes.saturating_add(FLOOR_HEADROOM);
        if self.min_free_disk_bytes != 0 && self.min_free_disk_bytes < floor_minimum {
            return Err(ConfigError::Invalid {
                name: "min_free_disk_bytes",
                reason: format!(
                    "0 (off) or at least write_buffer_bytes + 128 MiB ({floor_minimum}): memtable flushes and the next WAL file write into the margin"
                ),
            });
        }
        if u64::from(self.default_partitions) > self.max_partitions {
            return Err(ConfigError::Invalid {
                name: "default_partitions",
                reason: "larger than max_partitions".into(),
            });
        }
        if self.default_partitions > tidegate_storage::MAX_PARTITIONS {
            return Err(ConfigError::Invalid {
                name: "default_partitions",
                reason: format!("at most {}", tidegate_storage::MAX_PARTITIONS),
            });
        }
        if self.max_event_bytes > self.max_body_bytes {
            return Err(ConfigError::Invalid {
                name: "max_event_bytes",
                reason: format!("{} is larger than max_body_bytes ({})", self.max_event_bytes, self.max_body_bytes),
            });
        }
        if self.delivery_threads > MAX_DELIVERY_THREADS {
            return Err(ConfigError::Invalid {
                name: "delivery_threads",
                reason: format!("at most {MAX_DELIVERY_THREADS} (0: half the CPU cores)"),
            });
        }
        if self.heartbeat_interval_ms >= self.session_timeout_ms {
            return Err(ConfigError::Invalid {
                name: "heartbeat_interval_ms",
                reason: "must be shorter than session_timeout_ms".into(),
            });
        }
        if !self.segment_invalid_topic.is_empty()
            && let Err(e) = tidegate_storage::validate_topic_name(&self.segment_invalid_topic)
        {
            return Err(ConfigError::Invalid { name: "segment_invalid_topic", reason: e.to_string() });
        }
        if let Err(reason) = self.segment_topics.validate() {
            return Err(ConfigError::Invalid { name: "segment_topics", reason });
        }
        if self.max_body_bytes > 1024 * MIB {
            return Err(ConfigError::Invalid { name: "max_body_bytes", reason: "at most 1 GiB".into() });
        }
        if self.request_memory_bytes < self.max_body_bytes {
            return Err(ConfigError::Invalid {
                name: "request_memory_bytes",
                reason: format!("at least max_body_bytes ({}): every request must fit", self.max_body_bytes),
            });
        }
        if self.block_cache_bytes < 64 * KIB {
            return Err(ConfigError::Invalid { name: "block_cache_bytes", reason: "at least 64 KiB".into() });
        }
        self.validate_security()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return Err(ConfigError::Invalid { name: "log", reason: format!("{:?} is not a log filter", self.log) });
        }
        Ok(())
    }

    /// Upper bounds of every numeric setting, by kind (its name's suffix): durations
    /// (`_ms`, `_s`) at most [`MAX_DURATION_MS`], sizes (`_bytes`) at most
    /// [`MAX_SIZE_BYTES`], counts and rates at most [`MAX_COUNT`]. Larger values would
    /// overflow clocks, semaphores or queues at run time; none is useful.
    fn validate_upper_bounds(&self) -> Result<(), ConfigError> {
        let serde_json::Value::Object(fields) = serde_json::to_value(self).unwrap_or_default() else { return Ok(()) };
        for doc in Config::reference() {
            let Some(value) = fields.get(doc.name).and_then(serde_json::Value::as_u64) else { continue };
            let (limit, unit) = if doc.name.ends_with("_ms") {
                (MAX_DURATION_MS, "ms (10 years)")
            } else if doc.name.ends_with("_per_s") {
                (MAX_COUNT, "")
            } else if doc.name.ends_with("_s") {
                (MAX_DURATION_MS / 1000, "s (10 years)")
            } else if doc.name.ends_with("_bytes") {
                (MAX_SIZE_BYTES, "bytes (1 PiB)")
            } else {
                (MAX_COUNT, "")
            };
            if value > limit {
                return Err(ConfigError::Invalid {
                    name: doc.name,
                    reason: format!("at most {limit} {unit}").trim_end().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Security settings: shapes and relations (keys themselves are loaded at start-up).
    fn validate_security(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: String| Err(ConfigError::Invalid { name, reason });
        if let Err(e) = crate::auth::origins::parse_all(&self.cors_origins.0) {
            return invalid("cors_origins", e);
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.write_keys.0 {
            if k.key.trim().is_empty() || k.key.len() > 256 {
                return invalid("write_keys", "every key needs 1 to 256 characters".into());
            }
            if !seen.insert(k.key.as_str()) {
                return invalid("write_keys", "a key is listed twice".into());
            }
            if k.topics.is_empty() {
                return invalid("write_keys", format!("key {:?}… lists no topics", &k.key[..k.key.len().min(4)]));
            }
            if let Err(e) = crate::auth::origins::parse_all(&k.origins) {
                return invalid("write_keys", e);
            }
            if let Some(why) = k.topics.iter().find_map(|t| crate::auth::grants::unmatchable(t)) {
                return invalid("write_keys", format!("key {:?}…: {why}", &k.key[..k.key.len().min(4)]));
            }
        }
        // CORS allows `cors_origins` and every write key's origins: "*" among them would
        // answer every site with credentials allowed.
        if self.cors_allow_credentials
            && crate::auth::cors::allowed_origins(self)
                .is_ok_and(|all| all.contains(&crate::auth::origins::OriginPattern::Any))
        {
            return invalid(
                "cors_allow_credentials",
                "cannot be used with \"*\" among the allowed origins (cors_origins or a write key's origins)".into(),
            );
        }
        if self.tls_cert_file.as_os_str().is_empty() != self.tls_key_file.as_os_str().is_empty() {
            return invalid("tls_cert_file", "tls_cert_file and tls_key_file go together".into());
        }
        if self.jwks_reload_interval_ms == 0 || self.tls_handshake_timeout_ms == 0 {
            return invalid("jwks_reload_interval_ms", "intervals must be greater than 0".into());
        }
        if self.max_header_name_bytes > tidegate_storage::MAX_HEADER_NAME as u64 {
            return invalid("max_header_name_bytes", format!("at most {}", tidegate_storage::MAX_HEADER_NAME));
        }
        for (name, value) in [
            ("http_header_timeout_ms", self.http_header_timeout_ms),
            ("http_body_timeout_ms", self.http_body_timeout_ms),
            ("http_body_total_timeout_ms", self.http_body_total_timeout_ms),
            ("max_connections", self.max_connections),
            ("max_request_headers", self.max_request_headers),
            ("max_event_depth", self.max_event_depth),
            ("max_record_headers", self.max_record_headers),
            ("max_header_name_bytes", self.max_header_name_bytes),
            ("max_client_frame_bytes", self.max_client_frame_bytes),
        ] {
            if value == 0 {
                return invalid(name, "must be greater than 0".into());
            }
        }
        if !(MIN_REQUEST_HEAD_BYTES..=MAX_REQUEST_HEAD_BYTES).contains(&self.max_request_head_bytes) {
            return invalid(
                "max_request_head_bytes",
                format!("must be from {MIN_REQUEST_HEAD_BYTES} to {MAX_REQUEST_HEAD_BYTES}"),
            );
        }
        if self.jwt_permissions_claim.is_empty() {
            return invalid("jwt_permissions_claim", "must not be empty".into());
        }
        // Without a JWT key no token is checked at all: an audience or issuer set there
        // would look like protection while nothing is enforced.
        let jwt_keys = !self.jwt_keys.0.is_empty() || !self.jwks_file.as_os_str().is_empty();
        for (name, list) in [("jwt_audience", &self.jwt_audience), ("jwt_issuer", &self.jwt_issuer)] {
            if !list.0.is_empty() && !jwt_keys {
                return invalid(
                    name,
                    "is set, but no JWT key is configured (jwt_keys or jwks_file), so no token would be checked".into(),
                );
            }
        }
        Ok(())
    }

    /// Whether the settings name any credential source (authentication is on).
    pub fn auth_configured(&self) -> bool {
        !self.jwt_keys.0.is_empty() || !self.jwks_file.as_os_str().is_empty() || !self.write_keys.0.is_empty()
    }

    /// Whether the server speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        !self.tls_cert_file.as_os_str().is_empty()
    }

    /// The storage layer's part of the settings.
    pub fn store_config(&self) -> StoreConfig {
        let mut sc = StoreConfig::new(&self.data_dir);
        sc.fsync = self.fsync;
        sc.fsync_interval = Duration::from_millis(self.fsync_interval_ms);
        sc.write_queue_depth = self.write_queue_depth as usize;
        sc.max_group_commit_bytes = self.max_group_commit_bytes as usize;
        sc.retention_check_interval = Duration::from_millis(self.retention_check_interval_ms);
        sc.block_cache_bytes = self.block_cache_bytes as usize;
        sc.write_buffer_bytes = self.write_buffer_bytes as usize;
        sc.dedup_window = Duration::from_millis(self.dedup_window_ms);
        sc.dedup_cache_bytes = usize::try_from(self.dedup_cache_bytes).unwrap_or(usize::MAX);
        sc.dedup_expiry_interval = Duration::from_millis(self.dedup_expiry_interval_ms);
        sc.max_partitions = u32::try_from(self.max_partitions).unwrap_or(u32::MAX);
        sc.min_free_disk_bytes = self.min_free_disk_bytes;
        sc
    }

    /// Retention of a new topic that sets none: `None` means unbounded.
    pub fn default_retention(&self) -> (Option<u64>, Option<u64>) {
        let nz = |v: u64| (v > 0).then_some(v);
        (nz(self.default_retention_ms), nz(self.default_retention_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_win_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "fsync = \"never\"\nmax_event_bytes = 2048\n").unwrap();
        let flags = ConfigLayer { max_event_bytes: Some(4096), ..Default::default() };
        let c = Config::load(Some(&path), flags).unwrap();
        assert_eq!(c.fsync, FsyncPolicy::Never);
        assert_eq!(c.max_event_bytes, 4096);
        std::fs::write(&path, "fsink = \"never\"\n").unwrap();
        let err = Config::load(Some(&path), ConfigLayer::default()).unwrap_err();
        assert!(err.to_string().contains("fsink"), "{err}");
    }

    #[test]
    fn a_bad_key_table_is_named_by_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let text = "[[write_keys]]\nkey = \"pk_one\"\ntopics = [\"web.*\"]\n\n\
                    [[write_keys]]\nkey = \"pk_two_secret\"\ntopics = \"web.*\"\n";
        std::fs::write(&path, text).unwrap();
        let err = Config::load(Some(&path), ConfigLayer::default()).unwrap_err().to_string();
        // TOML gives the span of the whole array of tables: the entry is named by number.
        assert!(err.contains("entry 2 of the write keys"), "{err}");
        assert!(!err.contains("pk_two_secret"), "the key is not echoed: {err}");
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let c = Config { max_event_bytes: 10 * MIB, max_body_bytes: MIB, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { name: "max_event_bytes", .. })));
        let c = Config { write_queue_depth: 0, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { name: "write_queue_depth", .. })));
        let c = Config { max_body_bytes: 1024 * MIB, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { name: "request_memory_bytes", .. })));
        Config { max_body_bytes: 1024 * MIB, request_memory_bytes: 1024 * MIB, ..Config::default() }
            .validate()
            .unwrap();
        let c = Config { delivery_threads: 1025, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { name: "delivery_threads", .. })));
        Config { delivery_threads: 1024, ..Config::default() }.validate().unwrap();
        for head in [KIB - 1, 256 * KIB + 1] {
            let c = Config { max_request_head_bytes: head, ..Config::default() };
            assert!(matches!(c.validate(), Err(ConfigError::Invalid { name: "max_request_head_bytes", .. })));
        }
        Config { max_request_head_bytes: 256 * KIB, ..Config::default() }.validate().unwrap();
        let c = Config { max_request_headers: 0, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { name: "max_request_headers", .. })));
        for topics in [r#"["web events"]"#, r#"["web.*","a/b"]"#] {
            let keys: WriteKeys = format!(r#"[{{"key":"pk_k","topics":{topics}}}]"#).parse().unwrap();
            let err = Config { write_keys: keys, ..Config::default() }.validate().unwrap_err();
            assert!(err.to_string().contains("matches no topic"), "{err}");
        }
        let c = Config { jwt_audience: "tidegate".parse().unwrap(), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { name: "jwt_audience", .. })));
        let c = Config { jwt_issuer: "https://idp.example".parse().unwrap(), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { name: "jwt_issuer", .. })));
        let hs256 = r#"[{"alg":"HS256","secret":"unit-test-secret-that-is-long-enough-32"}]"#;
        Config { jwt_keys: hs256.parse().unwrap(), jwt_audience: "tidegate".parse().unwrap(), ..Config::default() }
            .validate()
            .unwrap();
        let keys = |origins: &str| -> WriteKeys {
            format!(r#"[{{"key":"pk_k","topics":["web.*"],"origins":{origins}}}]"#).parse().unwrap()
        };
        let c = Config { cors_allow_credentials: true, write_keys: keys(r#"["*"]"#), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { name: "cors_allow_credentials", .. })));
        Config { write_keys: keys(r#"["*"]"#), ..Config::default() }.validate().unwrap();
        let listed = keys(r#"["https://shop.example"]"#);
        Config { cors_allow_credentials: true, write_keys: listed, ..Config::default() }.validate().unwrap();
        Config::default().validate().unwrap();
    }

    #[test]
    fn refusals_never_quote_secrets() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            layer: ConfigLayer,
        }
        let bad = r#"[{"alg":"HS256","secret":"LEAKME-0123456789abcdef0123456789",}]"#;
        let err = Cli::try_parse_from(["t", "--jwt-keys", bad]).err().expect("refused").to_string();
        assert!(err.contains("--jwt-keys") && !err.contains("LEAKME"), "{err}");
        let err = Cli::try_parse_from(["t", "--write-keys", r#"[{"key":"pk_LEAKME"}"#]).err().expect("refused");
        assert!(!err.to_string().contains("LEAKME"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "fsync = \"never\"\njwt_keys = [{alg = \"HS256\", secret = \"TOMLLEAK-0123\" ,, }]\n")
            .unwrap();
        let err = Config::load(Some(&path), ConfigLayer::default()).unwrap_err().to_string();
        assert!(err.contains("line 2") && !err.contains("TOMLLEAK"), "{err}");
    }

    #[test]
    fn huge_values_are_refused_by_kind() {
        let d = Config::default;
        let cases = [
            (Config { max_connections: u64::MAX, ..d() }, "max_connections"),
            (Config { write_queue_depth: 1 << 40, ..d() }, "write_queue_depth"),
            (Config { max_subscriptions: MAX_COUNT + 1, ..d() }, "max_subscriptions"),
            (Config { session_timeout_ms: u64::MAX, ..d() }, "session_timeout_ms"),
            (Config { jwt_leeway_s: u64::MAX, ..d() }, "jwt_leeway_s"),
            (Config { dedup_cache_bytes: u64::MAX, ..d() }, "dedup_cache_bytes"),
        ];
        for (c, setting) in cases {
            assert!(matches!(c.validate(), Err(ConfigError::Invalid { name, .. }) if name == setting), "{setting}");
        }
        Config { max_connections: MAX_COUNT, dedup_window_ms: MAX_DURATION_MS, ..d() }.validate().unwrap();
    }

    #[test]
    fn only_boolean_flags_may_go_without_a_value() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            layer: ConfigLayer,
        }
        let cli = Cli::try_parse_from(["t", "--auto-create-topics", "--fsync", "never"]).unwrap();
        assert_eq!((cli.layer.auto_create_topics, cli.layer.fsync), (Some(true), Some(FsyncPolicy::Never)));
        let cli = Cli::try_parse_from(["t", "--auto-create-topics", "false"]).unwrap();
        assert_eq!(cli.layer.auto_create_topics, Some(false));
        // Before, a value-less flag was the string "true": a data directory named `true`.
        assert!(Cli::try_parse_from(["t", "--data-dir", "--fsync", "never"]).is_err());
        assert!(Cli::try_parse_from(["t", "--log"]).is_err());
        let err = Cli::try_parse_from(["t", "--max-body-bytes", "-1"]).err().expect("refused").to_string();
        assert!(err.contains("invalid value '-1'"), "{err}");
    }

    #[test]
    fn structured_settings_parse_from_toml_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "client_ip = \"truncated\"\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n[segment_topics]\n\"track:Order Completed\" = \"orders\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), ConfigLayer::default()).unwrap();
        assert_eq!(c.client_ip, ClientIpMode::Truncated);
        assert_eq!(c.trusted_proxies, "127.0.0.1/32,10.0.0.0/8".parse().unwrap(), "bare addresses, as the flag takes");
        assert_eq!(c.segment_topics.topic_for("track", Some("Order Completed")), "orders");
        let flags: SegmentTopics = r#"{"*":"events"}"#.parse().unwrap();
        assert_eq!(flags.topic_for("page", None), "events");
        assert!("{\"track\":\"bad name\"}".parse::<SegmentTopics>().unwrap().validate().is_err());
        assert!("record_client_ip = true".parse::<toml::Table>().is_ok());
        std::fs::write(&path, "record_client_ip = false\n").unwrap();
        let err = Config::load(Some(&path), ConfigLayer::default()).unwrap_err();
        assert!(err.to_string().contains("record_client_ip"), "a removed setting refuses to boot: {err}");
    }

    #[test]
    fn reference_lists_every_setting_with_its_default() {
        let r = Config::reference();
        let fsync = r.iter().find(|s| s.name == "fsync").unwrap();
        assert_eq!(fsync.default, "\"always\"");
        assert!(r.iter().all(|s| !s.doc.is_empty()));
        assert!(r.iter().any(|s| s.name == "addr" && s.default == "\"127.0.0.1:8080\""));
    }
}
