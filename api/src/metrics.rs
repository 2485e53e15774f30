//! Prometheus metrics: the process-wide recorder, the per-route HTTP middleware,
//! and gauges computed at scrape time (storage sizes and offsets, process memory).
//!
//! Counters and histograms go through the `metrics` facade, except the per-topic
//! counters, which are kept here so they can be dropped with their topic. Gauges that
//! describe current state are rendered from the store on each scrape, so a deleted
//! topic's series disappear with it.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tidegate_storage::Store;

use crate::request_memory::MemoryGrant;
use crate::state::SharedState;

/// Histogram buckets for latencies, in seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets for requests per group commit.
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle. The recorder is installed on first use; every
/// server in the process (tests run several) shares it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_requests".into()), COUNT_BUCKETS))
                .expect("bucket lists are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only scrape-time gauges");
            } else {
                describe_and_start_at_zero();
            }
            handle
        })
        .clone()
}

/// Gives every facade metric its help text, and makes each series whose labels are
/// known in advance exist from the start at 0: an alert on `increase()` or on a series
/// being above 0 then works from the first scrape, not only after the first event.
fn describe_and_start_at_zero() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("tidegate_http_requests_total", "HTTP requests answered, by route template, method and status.");
    describe_histogram!(
        "tidegate_http_request_duration_seconds",
        "Time to answer an HTTP request (to the response head), by route template, method and status."
    );
    describe_histogram!("tidegate_storage_write_seconds", "Time of one group commit: the RocksDB write and its fsync.");
    describe_histogram!("tidegate_storage_group_commit_requests", "Append requests gathered into one group commit.");
    describe_histogram!("tidegate_storage_fsync_seconds", "Time of one WAL sync of fsync=interval.");
    describe_gauge!("tidegate_subscriptions", "Open WebSocket and SSE subscriptions.");
    describe_gauge!("tidegate_rate_limit_tracked_ips", "Client addresses the per-IP rate limit currently tracks.");
    let counters = [
        ("tidegate_storage_records_written_total", "Records written to storage by group commits."),
        ("tidegate_storage_write_errors_total", "Group commits that failed (nothing of them was acknowledged)."),
        ("tidegate_retention_deleted_records_total", "Records deleted by retention."),
        ("tidegate_group_rebalances_total", "Consumer-group rebalances."),
        ("tidegate_events_deduplicated_total", "Events answered as duplicates of an id seen within the window."),
        (
            "tidegate_request_memory_refused_total",
            "Requests answered 503 overloaded: their body found no room in request_memory_bytes.",
        ),
        (
            "tidegate_segment_invalid_events_total",
            "Events of Segment batches set aside (written to segment_invalid_topic, or dropped) instead of failing their batch.",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, help);
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!("tidegate_subscriptions").increment(0.0);
    describe_counter!("tidegate_auth_refused_total", "Requests refused by authentication or permissions, by reason.");
    for reason in crate::auth::REFUSAL_REASONS {
        metrics::counter!("tidegate_auth_refused_total", "reason" => reason).increment(0);
    }
    describe_counter!(
        "tidegate_http_unparsed_requests_total",
        "Requests refused before routing because their head could not be parsed or was too large, by status."
    );
    for status in [StatusCode::BAD_REQUEST, StatusCode::URI_TOO_LONG, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE] {
        unparsed_request_counter(status).increment(0);
    }
    describe_counter!("tidegate_rate_limited_total", "Requests refused by a rate limit, by scope (ip or key).");
    for scope in [crate::auth::limits::LimitScope::Ip, crate::auth::limits::LimitScope::Key] {
        metrics::counter!("tidegate_rate_limited_total", "scope" => scope.as_str()).increment(0);
    }
}

/// The request counter and latency histogram of one (route, method, status).
type Series = (metrics::Counter, metrics::Histogram);

/// Series made so far, by route template, then (method, status). Bounded: templates are
/// the router's (plus `unmatched`), methods outside the standard ones share `other`,
/// and statuses are three digits.
type SeriesMap = HashMap<String, Vec<(&'static str, u16, Series)>>;

static SERIES: LazyLock<RwLock<SeriesMap>> = LazyLock::new(Default::default);

/// The method's label: its name for the standard methods, `other` for the rest (a
/// client inventing methods must not create series without bound).
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// The series of a request, made on first use and then shared: looking it up in the
/// recorder's registry with three owned labels on every request cost more than the
/// increments themselves.
fn series(route: &str, method: &'static str, status: StatusCode) -> Series {
    let code = status.as_u16();
    let made =
        SERIES.read().unwrap_or_else(PoisonError::into_inner).get(route).and_then(|list| {
            list.iter().find(|(m, c, _)| *m == method && *c == code).map(|(_, _, series)| series.clone())
        });
    if let Some(series) = made {
        return series;
    }
    let labels = [("route", route.to_string()), ("method", method.to_string()), ("status", code.to_string())];
    let series = (
        metrics::counter!("tidegate_http_requests_total", &labels),
        metrics::histogram!("tidegate_http_request_duration_seconds", &labels),
    );
    let mut map = SERIES.write().unwrap_or_else(PoisonError::into_inner);
    let list = map.entry(route.to_string()).or_default();
    if !list.iter().any(|(m, c, _)| *m == method && *c == code) {
        list.push((method, code, series.clone()));
    }
    series
}

/// The append counters of one topic: events and payload bytes.
pub(crate) type Appended = (metrics::Counter, metrics::Counter);

/// The per-topic counters of one topic. They live here rather than in the recorder,
/// which cannot forget a series: [`forget_topic`] drops them when the topic is deleted,
/// so a deleted topic's series leave `/metrics` and a topic created again under the same
/// name counts from 0 (a counter reset, which Prometheus' `rate()` handles).
#[derive(Default)]
struct TopicSeries {
    events_appended: Arc<AtomicU64>,
    bytes_appended: Arc<AtomicU64>,
    records_delivered: Arc<AtomicU64>,
}

/// Per-topic counters by topic name; bounded by the topics of the node (entries go
/// with their topic).
static TOPIC_SERIES: LazyLock<RwLock<HashMap<String, TopicSeries>>> = LazyLock::new(Default::default);

/// Runs `f` on `topic`'s counters, made on first use.
fn with_topic_series<T>(topic: &str, f: impl Fn(&TopicSeries) -> T) -> T {
    if let Some(series) = TOPIC_SERIES.read().unwrap_or_else(PoisonError::into_inner).get(topic) {
        return f(series);
    }
    let mut all = TOPIC_SERIES.write().unwrap_or_else(PoisonError::into_inner);
    f(all.entry(topic.to_string()).or_default())
}

/// `tidegate_events_appended_total` and `tidegate_bytes_appended_total` of `topic`
/// (a map lookup per request; the increments are plain atomics).
pub(crate) fn appended(topic: &str) -> Appended {
    with_topic_series(topic, |s| {
        (metrics::Counter::from_arc(s.events_appended.clone()), metrics::Counter::from_arc(s.bytes_appended.clone()))
    })
}

/// `tidegate_records_delivered_total` of `topic`.
pub(crate) fn delivered(topic: &str) -> metrics::Counter {
    with_topic_series(topic, |s| metrics::Counter::from_arc(s.records_delivered.clone()))
}

/// Drops the per-topic counters of a deleted topic. Handles taken before keep counting
/// into the dropped counters, which nobody renders.
pub(crate) fn forget_topic(topic: &str) {
    TOPIC_SERIES.write().unwrap_or_else(PoisonError::into_inner).remove(topic);
}

/// The per-topic counter families, for the topics `live` names.
fn render_topic_series(out: &mut String, live: &[String]) {
    type Family = (&'static str, &'static str, fn(&TopicSeries) -> &AtomicU64);
    let families: [Family; 3] = [
        ("tidegate_events_appended_total", "Events acknowledged as written, per topic.", |s| &s.events_appended),
        ("tidegate_bytes_appended_total", "Bytes of event values acknowledged as written, per topic.", |s| {
            &s.bytes_appended
        }),
        ("tidegate_records_delivered_total", "Records sent to subscribers, per topic.", |s| &s.records_delivered),
    ];
    let all = TOPIC_SERIES.read().unwrap_or_else(PoisonError::into_inner);
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for topic in live {
            if let Some(series) = all.get(topic) {
                let _ =
                    writeln!(out, "{name}{{topic=\"{}\"}} {}", escape(topic), value(series).load(Ordering::Relaxed));
            }
        }
    }
}

/// Middleware: counts requests and records latency by route template, method and
/// status. On the routes and on the fallback (an unknown path counts as route
/// `unmatched`); requests the outer layers answer before routing count themselves
/// through [`unrouted`]. (One layer on the routes: a second, outermost one cost 3–6% of
/// one-event ingest throughput.)
pub async fn track(req: Request, next: Next) -> Response {
    measured(req, |req| next.run(req)).await
}

/// Middleware of the API routes, in one layer (each layer costs a boxed future and a
/// clone of the inner service per request): [`track`] around the route gate
/// ([`crate::auth::refusal`]) and the check of a declared body size (see
/// [`crate::request_memory`]); the request's reservation in `request_memory_bytes`
/// (filled by the connection loop as its body arrives) is held until the answer.
pub async fn track_gated(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    measured(req, |req| async move {
        if let Some(refusal) = crate::auth::refusal(&req) {
            return refusal;
        }
        match state.request_memory.check_declared(req.method(), req.headers()) {
            Ok(()) => {}
            // Segment's trackers retry every status but 400: a body over the limit is
            // 400 there, as the route itself answers it.
            Err(e) if is_segment_call(&req) => return crate::routes::segment::as_segment_refusal(e).into_response(),
            Err(e) => return e.into_response(),
        }
        let grant = req.extensions().get::<MemoryGrant>().cloned();
        let mut resp = next.run(req).await;
        if let Some(grant) = grant
            && !grant.body_read()
        {
            // Answered before its body was read (refused, or no room for it): the rest
            // of the body is still coming, so the connection cannot carry another
            // request. Saying so keeps clients from reusing it (RFC 9112, 9.6).
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    })
    .await
}

fn is_segment_call(req: &Request) -> bool {
    req.extensions()
        .get::<MatchedPath>()
        .is_some_and(|route| crate::routes::segment::CALL_PATHS.contains(&route.as_str()))
}

/// Runs `answer` on `req`, counting it by route template, method and status.
async fn measured<F: Future<Output = Response>>(req: Request, answer: impl FnOnce(Request) -> F) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let began = Instant::now();
    let resp = answer(req).await;
    let (requests, latency) = series(route.as_ref().map_or("unmatched", MatchedPath::as_str), method, resp.status());
    requests.increment(1);
    latency.record(began.elapsed().as_secs_f64());
    resp
}

/// Counts a request answered before routing (route `unmatched`): a rate limit, a
/// missing `Host`.
pub(crate) fn unrouted(method: &axum::http::Method, status: StatusCode, began: Instant) {
    let (requests, latency) = series("unmatched", method_label(method), status);
    requests.increment(1);
    latency.record(began.elapsed().as_secs_f64());
}

/// Counts a request refused before routing (its head could not be parsed or was too
/// large; see `crate::head_problems`).
pub(crate) fn unparsed_request(status: StatusCode) {
    unparsed_request_counter(status).increment(1);
}

fn unparsed_request_counter(status: StatusCode) -> metrics::Counter {
    metrics::counter!("tidegate_http_unparsed_requests_total", "status" => status.as_u16().to_string())
}

/// Resident memory of this process (`None` where the platform does not tell).
pub fn resident_memory_bytes() -> Option<u64> {
    metrics_process::collector::collect().resident_memory_bytes
}

/// Appends the standard Prometheus process metrics of this process, read now:
/// `process_cpu_seconds_total` (a counter, in fractional seconds), resident and virtual
/// memory, open and maximum file descriptors, threads, start time. A metric the
/// platform does not provide is left out.
fn render_process(out: &mut String) {
    let m = metrics_process::collector::collect();
    let as_f64 = |v: Option<u64>| v.map(|v| v as f64);
    let rows: [(&str, &str, &str, Option<f64>); 7] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            m.cpu_seconds_total,
        ),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", as_f64(m.resident_memory_bytes)),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", as_f64(m.virtual_memory_bytes)),
        ("process_open_fds", "gauge", "Number of open file descriptors.", as_f64(m.open_fds)),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors (0: unlimited).", as_f64(m.max_fds)),
        ("process_threads", "gauge", "Number of OS threads in the process.", as_f64(m.threads)),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
            as_f64(m.start_time_seconds),
        ),
    ];
    for (name, kind, help, value) in rows {
        if let Some(v) = value {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    }
}

/// Escapes a Prometheus label value.
pub(crate) fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A per-partition gauge: name, help text, and the value it reads.
type PartitionGauge = (&'static str, &'static str, fn(&tidegate_storage::PartitionStats) -> u64);

/// The full exposition: facade metrics plus scrape-time gauges.
pub fn render(store: &Store) -> String {
    let mut out = handle().render();
    let topics = store.topics();
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    render_topic_series(&mut out, &names);
    let per_partition: [PartitionGauge; 2] = [
        ("tidegate_partition_end_offset", "Next offset to be written, per partition.", |s| s.end_offset),
        ("tidegate_partition_start_offset", "First stored offset, per partition.", |s| s.start_offset),
    ];
    for (name, help, value) in per_partition {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for t in &topics {
            for p in t.partitions() {
                let s = p.stats();
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",partition=\"{}\"}} {}",
                    escape(&t.name),
                    s.partition,
                    value(&s)
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP tidegate_topic_bytes Bytes of stored batches, per topic.");
    let _ = writeln!(out, "# TYPE tidegate_topic_bytes gauge");
    for t in &topics {
        let bytes: u64 = t.partitions().iter().map(|p| p.stats().bytes).sum();
        let _ = writeln!(out, "tidegate_topic_bytes{{topic=\"{}\"}} {bytes}", escape(&t.name));
    }
    let _ = writeln!(
        out,
        "# HELP tidegate_storage_disk_bytes Bytes RocksDB holds for all partitions (SST files and memtables)."
    );
    let _ = writeln!(out, "# TYPE tidegate_storage_disk_bytes gauge");
    let _ = writeln!(out, "tidegate_storage_disk_bytes {}", store.disk_bytes());
    let _ = writeln!(
        out,
        "# HELP tidegate_storage_failing 1 while the last write to storage failed (/readyz answers 503 storage_failing)."
    );
    let _ = writeln!(out, "# TYPE tidegate_storage_failing gauge");
    let _ = writeln!(out, "tidegate_storage_failing {}", u8::from(store.write_failure().is_some()));
    let space = store.disk_space();
    if let Some(free) = space.free_bytes {
        let _ = writeln!(out, "# HELP tidegate_storage_free_bytes Bytes free on the data directory's file system.");
        let _ = writeln!(out, "# TYPE tidegate_storage_free_bytes gauge");
        let _ = writeln!(out, "tidegate_storage_free_bytes {free}");
    }
    let _ = writeln!(
        out,
        "# HELP tidegate_storage_disk_low 1 while free disk space is below min_free_disk_bytes (appends refused with 507, /readyz 503)."
    );
    let _ = writeln!(out, "# TYPE tidegate_storage_disk_low gauge");
    let _ = writeln!(out, "tidegate_storage_disk_low {}", u8::from(space.low));
    let _ = writeln!(out, "# HELP tidegate_topics Number of topics.");
    let _ = writeln!(out, "# TYPE tidegate_topics gauge");
    let _ = writeln!(out, "tidegate_topics {}", topics.len());
    let dedup = store.dedup_stats();
    for (name, help, value) in [
        ("tidegate_dedup_cache_entries", "Remembered event ids in the memory cache.", dedup.cache_entries),
        ("tidegate_dedup_cache_bytes", "Estimated bytes of the remembered-id memory cache.", dedup.cache_bytes),
        ("tidegate_dedup_in_flight", "Event ids claimed by requests still being written.", dedup.in_flight),
        (
            "tidegate_dedup_disk_bytes",
            "Bytes of remembered event ids on disk (SST files and memtables).",
            dedup.disk_bytes,
        ),
        (
            "tidegate_dedup_disk_entries",
            "RocksDB's estimate of remembered event ids on disk.",
            dedup.disk_entries_estimate,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP tidegate_dedup_disk_lookups_total Event ids whose lookup needed a table-file read.\n\
         # TYPE tidegate_dedup_disk_lookups_total counter\ntidegate_dedup_disk_lookups_total {}",
        dedup.disk_lookups
    );
    render_process(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        assert_eq!(method_label(&Method::from_bytes(b"PURGE").unwrap()), "other");
    }

    #[test]
    fn a_series_is_made_once_per_route_method_and_status() {
        let route = "/test/series/{id}";
        for (method, status) in [
            ("GET", StatusCode::OK),
            ("GET", StatusCode::OK),
            ("GET", StatusCode::NOT_FOUND),
            ("other", StatusCode::OK),
        ] {
            let (requests, _) = series(route, method, status);
            requests.increment(1);
        }
        let map = SERIES.read().unwrap();
        let made: Vec<(&str, u16)> = map[route].iter().map(|(m, c, _)| (*m, *c)).collect();
        assert_eq!(made, [("GET", 200), ("GET", 404), ("other", 200)]);
    }
}
