//! Reads for curl and scripts: long-poll fetch from one partition, and offset
//! lookup (earliest, latest, by timestamp) for every partition of a topic.

use std::time::Duration;

use crate::routes::names::NamePath;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tidegate_storage::ReadLimits;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Action, Caller};
use crate::error::{ApiError, Problem};
use crate::render::{self, RecordJson};
use crate::state::SharedState;

/// Records per read when `max_records` is not given.
pub const DEFAULT_FETCH_RECORDS: usize = 500;
/// Bytes per read when `max_bytes` is not given.
pub const DEFAULT_FETCH_BYTES: usize = 1 << 20;

/// Query parameters of a partition read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FetchParams {
    /// First offset to read: a number, `earliest` (default) or `latest`.
    pub offset: Option<String>,
    /// Most records to return (default 500, from 1 to the `max_fetch_records` setting).
    #[param(minimum = 1)]
    pub max_records: Option<usize>,
    /// Stop after about this many key and value bytes (default 1 MiB, from 1 to
    /// `max_fetch_bytes`); at least one record is returned if one is available.
    #[param(minimum = 1)]
    pub max_bytes: Option<usize>,
    /// Wait up to this long for records when none are available (long poll; default
    /// 0, at most `max_wait_ms`).
    pub wait_ms: Option<u64>,
}

/// Answer of a partition read.
#[derive(Debug, ToSchema)]
pub struct FetchResponse {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Records in offset order.
    #[schema(value_type = Vec<RecordJson>)]
    pub records: Vec<tidegate_storage::Record>,
    /// Offset to read next.
    pub next_offset: u64,
    /// The partition's high watermark (end of the readable log).
    pub high_watermark: u64,
    /// The partition's first stored offset.
    pub log_start_offset: u64,
}

impl FetchResponse {
    /// The JSON body, fields in declaration order (records through
    /// [`render::write_partition_records`], which inlines JSON values without parsing
    /// them again).
    pub fn into_json(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.topic.len() + 128);
        out.push(b'{');
        render::write_partition_records(&mut out, &self.topic, self.partition, &self.records);
        out.extend_from_slice(br#","next_offset":"#);
        render::write_int(&mut out, self.next_offset);
        out.extend_from_slice(br#","high_watermark":"#);
        render::write_int(&mut out, self.high_watermark);
        out.extend_from_slice(br#","log_start_offset":"#);
        render::write_int(&mut out, self.log_start_offset);
        out.push(b'}');
        out
    }
}

fn check_max(name: &'static str, value: usize, limit: u64, setting: &str) -> Result<usize, ApiError> {
    // A read of 0 records or bytes would answer nothing for ever: a client reading in a
    // loop would spin. (A wait of 0 is fine: no waiting.)
    if value == 0 && name != "wait_ms" {
        return Err(ApiError::invalid("invalid_parameter", format!("{name} must be at least 1")));
    }
    if value as u64 > limit {
        return Err(ApiError::invalid(
            "invalid_parameter",
            format!("{name} = {value} is over the limit of {limit} (setting {setting})"),
        ));
    }
    Ok(value)
}

/// Read records from one partition.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/records", tag = "records",
    params(
        ("topic" = String, Path, description = "Topic name"),
        ("partition" = u32, Path, description = "Partition index"),
        FetchParams,
    ),
    responses(
        (status = 200, description = "Records (possibly none when the wait ended)", body = FetchResponse),
        (status = 400, description = "Invalid parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic or partition", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "Offset below the log start (deleted by retention) or above the high watermark; `start_offset` and `end_offset` tell the valid range", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn fetch(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath((topic, partition)): NamePath<(String, u32)>,
    Query(params): Query<FetchParams>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Action::Consume, &topic)?;
    let cfg = &state.config;
    let max_records = check_max(
        "max_records",
        params.max_records.unwrap_or(DEFAULT_FETCH_RECORDS.min(cfg.max_fetch_records as usize)),
        cfg.max_fetch_records,
        "max_fetch_records",
    )?;
    let max_bytes = check_max(
        "max_bytes",
        params.max_bytes.unwrap_or(DEFAULT_FETCH_BYTES.min(cfg.max_fetch_bytes as usize)),
        cfg.max_fetch_bytes,
        "max_fetch_bytes",
    )?;
    let wait_ms = params.wait_ms.unwrap_or(0);
    check_max("wait_ms", wait_ms as usize, cfg.max_wait_ms, "max_wait_ms")?;
    let part = state.store.partition(&topic, partition)?;
    let offset = match params.offset.as_deref() {
        None | Some("earliest") => part.start_offset(),
        Some("latest") => part.high_watermark(),
        Some(n) => n.parse::<u64>().map_err(|_| {
            ApiError::invalid("invalid_parameter", format!("offset {n:?} is not a number, earliest or latest"))
        })?,
    };
    let limits = ReadLimits { max_records, max_bytes };
    let result = state.store.fetch(part, offset, limits, Duration::from_millis(wait_ms)).await?;
    let body = FetchResponse {
        topic,
        partition,
        records: result.records,
        next_offset: result.next_offset,
        high_watermark: result.high_watermark,
        log_start_offset: result.log_start_offset,
    }
    .into_json();
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body))
}

/// Query of an offset lookup.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OffsetsParams {
    /// `earliest`, `latest` (default), or a time in ms since the epoch: the first
    /// offset whose record timestamp is at or after it.
    pub timestamp: Option<String>,
}

/// One partition's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionOffset {
    /// Partition index.
    pub partition: u32,
    /// The offset asked for.
    pub offset: u64,
    /// Timestamp of the record at `offset` (timestamp lookups only; `null` when no
    /// record is that recent, and `offset` is then the end).
    pub timestamp: Option<i64>,
    /// First stored offset.
    pub start_offset: u64,
    /// High watermark.
    pub end_offset: u64,
}

/// Answer of an offset lookup.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OffsetsResponse {
    /// Topic name.
    pub topic: String,
    /// One entry per partition.
    pub partitions: Vec<PartitionOffset>,
}

/// Look up offsets per partition: earliest, latest, or by timestamp.
#[utoipa::path(get, path = "/v1/topics/{topic}/offsets", tag = "records",
    params(("topic" = String, Path, description = "Topic name"), OffsetsParams),
    responses(
        (status = 200, description = "Offsets per partition", body = OffsetsResponse),
        (status = 400, description = "Invalid timestamp", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn offsets(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(topic): NamePath<String>,
    Query(params): Query<OffsetsParams>,
) -> Result<Json<OffsetsResponse>, ApiError> {
    caller.require(Action::Consume, &topic)?;
    enum At {
        Earliest,
        Latest,
        Time(i64),
    }
    let at = match params.timestamp.as_deref() {
        None | Some("latest") => At::Latest,
        Some("earliest") => At::Earliest,
        Some(t) => match t.parse::<i64>() {
            Ok(ms) if ms >= 0 => At::Time(ms),
            // Kafka's ListOffsets reads -1 and -2 as latest and earliest; taken as a time
            // they would quietly mean "from the start", so they are refused by name.
            Ok(_) => {
                return Err(ApiError::invalid(
                    "invalid_parameter",
                    format!(
                        "timestamp {t} is negative: give ms since the epoch, or earliest or latest (Kafka's -2 and -1)"
                    ),
                ));
            }
            Err(_) => {
                return Err(ApiError::invalid(
                    "invalid_parameter",
                    format!("timestamp {t:?} is not ms since the epoch, earliest or latest"),
                ));
            }
        },
    };
    let handle = state.store.topic(&topic)?;
    let mut partitions = Vec::new();
    for part in handle.partitions() {
        let (start, end) = (part.start_offset(), part.high_watermark());
        let (offset, timestamp) = match at {
            At::Earliest => (start, None),
            At::Latest => (end, None),
            At::Time(ts) => {
                let found = state.store.offset_for_timestamp(part.clone(), ts).await?;
                (found.offset, found.timestamp)
            }
        };
        partitions.push(PartitionOffset {
            partition: part.index,
            offset,
            timestamp,
            start_offset: start,
            end_offset: end,
        });
    }
    Ok(Json(OffsetsResponse { topic, partitions }))
}
