//! Topic admin: create, list, describe, alter settings (retention, event-id pointer,
//! JSON Schema, dead-letter topic), add partitions, delete.

use crate::routes::names::NamePath;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Deserializer, Serialize};
use tidegate_storage::{TopicConfig, TopicConfigPatch, TopicInfo};
use utoipa::ToSchema;

use crate::auth::{Action, Caller};
use crate::error::{ApiError, Problem};
use crate::routes::admin_json::AdminJson;
use crate::routes::no_query::NoQuery;
use crate::state::SharedState;

/// Body of `POST /v1/topics`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// Topic name: `[A-Za-z0-9._-]{1,249}`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,249}$")]
    pub name: String,
    /// Number of partitions (default: the `default_partitions` setting; all topics together
    /// at most `max_partitions`).
    #[schema(minimum = 1, maximum = 10000)]
    pub partitions: Option<u32>,
    /// Time retention in ms; `null` keeps records forever (default: `default_retention_ms`).
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>, nullable, minimum = 1)]
    pub retention_ms: Option<Option<u64>>,
    /// Size retention per partition in bytes; `null` is unbounded (default: `default_retention_bytes`).
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>, nullable, minimum = 1)]
    pub retention_bytes: Option<Option<u64>>,
    /// Copies of each partition. A single node holds one.
    #[schema(minimum = 1, maximum = 1)]
    pub replication_factor: Option<u16>,
    /// JSON pointer (RFC 6901) to each event's id, for deduplication (`/messageId`, `/eid`).
    pub event_id: Option<String>,
    /// JSON Schema every event must match (compiled when set; remote `$ref`s are not fetched).
    #[schema(value_type = Option<serde_json::Value>)]
    pub schema: Option<serde_json::Value>,
    /// Topic receiving the events that fail `schema` (created if missing); without it
    /// such events fail their request with 400.
    pub dead_letter_topic: Option<String>,
}

/// Body of `PATCH /v1/topics/{topic}`: fields left out are unchanged, `null` removes a limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlterTopic {
    /// New time retention in ms, or `null` for none.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>, nullable, minimum = 1)]
    pub retention_ms: Option<Option<u64>>,
    /// New size retention per partition in bytes, or `null` for none.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>, nullable, minimum = 1)]
    pub retention_bytes: Option<Option<u64>>,
    /// New event-id pointer, or `null` for none.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<String>, nullable)]
    pub event_id: Option<Option<String>>,
    /// New JSON Schema, or `null` for none.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<serde_json::Value>, nullable)]
    pub schema: Option<Option<serde_json::Value>>,
    /// New dead-letter topic (created if missing), or `null` for none.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<String>, nullable)]
    pub dead_letter_topic: Option<Option<String>>,
}

/// Body of `POST /v1/topics/{topic}/partitions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPartitions {
    /// The new total number of partitions (must be larger than the current one).
    #[schema(minimum = 2, maximum = 10000)]
    pub count: u32,
}

/// Distinguishes a field set to `null` from a field left out.
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// One partition of a topic description.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionDescription {
    /// Partition index.
    pub partition: u32,
    /// First offset still stored.
    pub start_offset: u64,
    /// Next offset to be written.
    pub end_offset: u64,
    /// Offsets below this are readable.
    pub high_watermark: u64,
    /// Bytes of stored batches (what retention measures).
    pub bytes: u64,
    /// Bytes RocksDB holds for the partition (SST files and memtables).
    pub disk_bytes: u64,
    /// Leader epoch of the partition.
    pub leader_epoch: u32,
}

/// A topic with its settings and per-partition offsets.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicDescription {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partition_count: u32,
    /// Copies of each partition.
    pub replication_factor: u16,
    /// Time retention in ms (`null`: none).
    pub retention_ms: Option<u64>,
    /// Size retention per partition (`null`: none).
    pub retention_bytes: Option<u64>,
    /// JSON pointer to each event's id (deduplication), if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The JSON Schema events must match, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub schema: Option<serde_json::Value>,
    /// Where events failing the schema go, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Records currently stored, over all partitions.
    pub records: u64,
    /// Bytes of stored batches, over all partitions.
    pub bytes: u64,
    /// Per-partition offsets and sizes.
    pub partitions: Vec<PartitionDescription>,
}

/// `GET /v1/topics` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicList {
    /// Every topic, sorted by name.
    pub topics: Vec<TopicDescription>,
}

fn describe_blocking(state: &SharedState, info: TopicInfo) -> TopicDescription {
    let topic = state.store.topic(&info.name).ok();
    let partitions: Vec<PartitionDescription> = info
        .partitions
        .iter()
        .map(|p| PartitionDescription {
            partition: p.partition,
            start_offset: p.start_offset,
            end_offset: p.end_offset,
            high_watermark: p.high_watermark,
            bytes: p.bytes,
            disk_bytes: topic
                .as_ref()
                .and_then(|t| t.partition(p.partition).ok())
                .map_or(0, |part| state.store.partition_disk_bytes(&part)),
            leader_epoch: p.leader_epoch,
        })
        .collect();
    TopicDescription {
        name: info.name,
        partition_count: info.config.partitions,
        replication_factor: 1,
        retention_ms: info.config.retention_ms,
        retention_bytes: info.config.retention_bytes,
        event_id: info.config.event_id.clone(),
        schema: info.config.schema.clone(),
        dead_letter_topic: info.config.dead_letter_topic.clone(),
        created_ms: info.created_ms,
        records: partitions.iter().map(|p| p.end_offset - p.start_offset).sum(),
        bytes: partitions.iter().map(|p| p.bytes).sum(),
        partitions,
    }
}

/// Describes topics on a blocking thread: the on-disk sizes are RocksDB property
/// reads, which stay off the async workers.
async fn describe(state: &SharedState, infos: Vec<TopicInfo>) -> Result<Vec<TopicDescription>, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || infos.into_iter().map(|i| describe_blocking(&state, i)).collect())
        .await
        .map_err(|e| ApiError::Storage(tidegate_storage::StorageError::Internal(e.to_string())))
}

async fn describe_one(state: &SharedState, info: TopicInfo) -> Result<TopicDescription, ApiError> {
    let mut all = describe(state, vec![info]).await?;
    all.pop().ok_or_else(|| ApiError::Storage(tidegate_storage::StorageError::Internal("no description".into())))
}

/// Checks the ingest rules of new settings (the schema compiles, the dead-letter topic
/// is another topic) and creates a missing dead-letter topic with the defaults.
async fn check_rules(state: &SharedState, caller: &Caller, topic: &str, config: &TopicConfig) -> Result<(), ApiError> {
    config.validate()?;
    if let Some(schema) = &config.schema {
        crate::ingest::rules::compile_schema(schema).map_err(|e| ApiError::invalid("invalid_schema", e))?;
    }
    if let Some(dlq) = &config.dead_letter_topic {
        if dlq == topic {
            return Err(ApiError::invalid("invalid_topic_config", "dead_letter_topic must be another topic"));
        }
        // Naming (and maybe creating) the dead-letter topic is admin work on it too.
        caller.require(Action::Admin, dlq)?;
        state.topic_for_ingest(dlq, crate::ingest::pipeline::Create::Always).await?;
    }
    Ok(())
}

/// Create a topic.
#[utoipa::path(post, path = "/v1/topics", tag = "topics", request_body = CreateTopic,
    responses(
        (status = 201, description = "Created", body = TopicDescription),
        (status = 400, description = "Invalid name or settings (`invalid_schema`: the JSON Schema does not compile)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A topic by that name exists (`topic_exists`), or the node would hold more than `max_partitions` partitions (`partition_limit`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON (`Content-Type: application/json`), or has a `Content-Encoding`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body is not a JSON object, or has unknown or mistyped fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_topic(
    State(state): State<SharedState>,
    caller: Caller,
    _: NoQuery,
    AdminJson(body): AdminJson<CreateTopic>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Action::Admin, &body.name)?;
    if let Some(rf) = body.replication_factor.filter(|rf| *rf != 1) {
        return Err(ApiError::invalid(
            "invalid_replication_factor",
            format!("replication_factor {rf} needs a cluster of {rf} nodes; this node runs alone, so it must be 1"),
        ));
    }
    let (default_ms, default_bytes) = state.config.default_retention();
    let config = TopicConfig {
        partitions: body.partitions.unwrap_or(state.config.default_partitions),
        retention_ms: body.retention_ms.unwrap_or(default_ms),
        retention_bytes: body.retention_bytes.unwrap_or(default_bytes),
        event_id: body.event_id,
        schema: body.schema,
        dead_letter_topic: body.dead_letter_topic,
    };
    // Refuse a bad name or an existing topic before creating a dead-letter topic for it.
    tidegate_storage::validate_topic_name(&body.name)?;
    if state.store.topic(&body.name).is_ok() {
        return Err(tidegate_storage::StorageError::TopicExists(body.name).into());
    }
    check_rules(&state, &caller, &body.name, &config).await?;
    let info = state.store.create_topic(&body.name, config).await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/topics/{}", info.name)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers, Json(describe_one(&state, info).await?)))
}

/// List topics.
#[utoipa::path(get, path = "/v1/topics", tag = "topics",
    responses((status = 200, description = "Every topic", body = TopicList),
    (status = 400, description = "A query parameter: this route takes none (`invalid_request`)", body = Problem, content_type = "application/problem+json")))]
pub async fn list_topics(
    State(state): State<SharedState>,
    caller: Caller,
    _: NoQuery,
) -> Result<Json<TopicList>, ApiError> {
    caller.require_authenticated()?;
    let infos = state.store.topics().into_iter().map(|t| t.info()).filter(|i| caller.can_see(&i.name)).collect();
    Ok(Json(TopicList { topics: describe(&state, infos).await? }))
}

/// Describe a topic: settings and per-partition offsets and sizes.
#[utoipa::path(get, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = TopicDescription),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn describe_topic(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(topic): NamePath<String>,
    _: NoQuery,
) -> Result<Json<TopicDescription>, ApiError> {
    caller.require_visible(&topic)?;
    let info = state.store.topic(&topic)?.info();
    Ok(Json(describe_one(&state, info).await?))
}

/// Change a topic's settings: retention, event-id pointer, JSON Schema, dead-letter topic.
#[utoipa::path(patch, path = "/v1/topics/{topic}", tag = "topics", request_body = AlterTopic,
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The updated topic", body = TopicDescription),
        (status = 400, description = "Invalid settings (`invalid_topic_config`, `invalid_schema`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON (`Content-Type: application/json`), or has a `Content-Encoding`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body is not a JSON object, or has unknown or mistyped fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn alter_topic(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(topic): NamePath<String>,
    _: NoQuery,
    AdminJson(body): AdminJson<AlterTopic>,
) -> Result<Json<TopicDescription>, ApiError> {
    caller.require(Action::Admin, &topic)?;
    let patch = TopicConfigPatch {
        retention_ms: body.retention_ms,
        retention_bytes: body.retention_bytes,
        event_id: body.event_id,
        schema: body.schema,
        dead_letter_topic: body.dead_letter_topic,
    };
    let next = state.store.topic(&topic)?.config().patched(&patch);
    check_rules(&state, &caller, &topic, &next).await?;
    let info = state.store.alter_topic(&topic, patch).await?;
    Ok(Json(describe_one(&state, info).await?))
}

/// Grow a topic to `count` partitions. Keys may map to other partitions afterwards, as in Kafka.
#[utoipa::path(post, path = "/v1/topics/{topic}/partitions", tag = "topics", request_body = AddPartitions,
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The grown topic", body = TopicDescription),
        (status = 400, description = "Count not larger than the current one, or too large", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The node would hold more than `max_partitions` partitions (`partition_limit`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON (`Content-Type: application/json`), or has a `Content-Encoding`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body is not a JSON object, or has unknown or mistyped fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_partitions(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(topic): NamePath<String>,
    _: NoQuery,
    AdminJson(body): AdminJson<AddPartitions>,
) -> Result<Json<TopicDescription>, ApiError> {
    caller.require(Action::Admin, &topic)?;
    let info = state.store.add_partitions(&topic, body.count).await?;
    // Groups reading the topic rebalance now rather than at their next periodic check.
    state.coordinator.expire();
    Ok(Json(describe_one(&state, info).await?))
}

/// Delete a topic and all its records.
#[utoipa::path(delete, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_topic(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(topic): NamePath<String>,
    _: NoQuery,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Admin, &topic)?;
    state.store.delete_topic(&topic).await?;
    state.rules.forget(&topic);
    crate::metrics::forget_topic(&topic);
    Ok(StatusCode::NO_CONTENT)
}
