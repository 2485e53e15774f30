//! Consumer-group admin: list, describe (members, assignment, committed offsets,
//! lag), reset offsets, delete.

use std::collections::{BTreeMap, BTreeSet};

use crate::routes::names::NamePath;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Action, Caller};
use crate::error::{ApiError, Problem};
use crate::routes::admin_json::AdminJson;
use crate::routes::no_query::NoQuery;
use crate::state::SharedState;

/// One group in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupSummary {
    /// Group name.
    pub group: String,
    /// `stable`, `rebalancing`, or `empty` (committed offsets, no members).
    pub state: String,
    /// Number of members.
    pub members: usize,
}

/// `GET /v1/groups` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    /// Groups with members or committed offsets, sorted.
    pub groups: Vec<GroupSummary>,
}

/// A partition owned by a member.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssignedPartition {
    pub topic: String,
    pub partition: u32,
}

/// A group member.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberDescription {
    /// Member id.
    pub member: String,
    /// Client address (ip:port).
    pub client: String,
    /// False while a static member is disconnected (within its session timeout).
    pub connected: bool,
    /// Whether the member named itself (static membership).
    pub is_static: bool,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Partitions it owns now.
    pub partitions: Vec<AssignedPartition>,
}

/// Committed offset and lag of one partition.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: u32,
    /// Committed offset (next to read), `null` when nothing is committed.
    pub committed: Option<u64>,
    /// The partition's high watermark.
    pub end_offset: u64,
    /// Records the group has yet to read: `end_offset - max(committed, log start)` (from
    /// the log start when nothing is committed, or when retention deleted records the
    /// group had not read).
    pub lag: u64,
    /// Member owning the partition, if any.
    pub owner: Option<String>,
}

/// `GET /v1/groups/{group}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDescription {
    pub group: String,
    pub state: String,
    /// Generation of the latest rebalance (0 without members).
    pub generation: u64,
    pub members: Vec<MemberDescription>,
    /// Every partition of the group's topics (subscribed or committed).
    pub partitions: Vec<PartitionLag>,
    /// Sum of the partitions' lag.
    pub lag: u64,
}

fn state_name(info: Option<&crate::groups::coordinator::GroupInfo>) -> String {
    match info {
        None => "empty",
        Some(i) if i.pending > 0 => "rebalancing",
        Some(_) => "stable",
    }
    .to_string()
}

/// Groups with committed offsets or live members, sorted.
pub async fn group_names(state: &SharedState) -> Result<BTreeSet<String>, ApiError> {
    let mut names: BTreeSet<String> = state.store.group_names().await?.into_iter().collect();
    names.extend(state.coordinator.active_groups());
    Ok(names)
}

/// List consumer groups.
#[utoipa::path(get, path = "/v1/groups", tag = "groups", responses((status = 200, description = "Groups", body = GroupList),
    (status = 400, description = "A query parameter: this route takes none (`invalid_request`)", body = Problem, content_type = "application/problem+json")))]
pub async fn list_groups(
    State(state): State<SharedState>,
    caller: Caller,
    _: NoQuery,
) -> Result<Json<GroupList>, ApiError> {
    caller.require_authenticated()?;
    let mut groups = Vec::new();
    for g in group_names(&state).await? {
        if !caller.can_everywhere(Action::Admin) {
            // Only groups the caller could operate on: consume on every topic they read.
            match describe(&state, &g).await {
                Ok(desc) if group_topics(&desc).iter().all(|t| caller.can(Action::Consume, t)) => {
                    groups.push(GroupSummary { state: desc.state, members: desc.members.len(), group: g });
                }
                _ => {}
            }
            continue;
        }
        let info = state.coordinator.describe(&g);
        groups.push(GroupSummary {
            state: state_name(info.as_ref()),
            members: info.map_or(0, |i| i.members.len()),
            group: g,
        });
    }
    Ok(Json(GroupList { groups }))
}

/// Every topic a group reads or has committed offsets for.
fn group_topics(desc: &GroupDescription) -> BTreeSet<String> {
    let mut topics: BTreeSet<String> = desc.partitions.iter().map(|p| p.topic.clone()).collect();
    for m in &desc.members {
        topics.extend(m.topics.iter().cloned());
    }
    topics
}

/// Group operations need consume on every topic of the group. A caller without it is
/// told the group does not exist (404 `group_not_found`, as for a group that does not):
/// a 403 would tell anyone with a token which group names are in use.
fn require_group(caller: &Caller, desc: &GroupDescription) -> Result<(), ApiError> {
    caller.require_authenticated()?;
    for t in group_topics(desc) {
        if let Err(e) = caller.require(Action::Consume, &t) {
            return Err(match e {
                ApiError::Auth(crate::auth::AuthError::Forbidden(_)) => group_not_found(&desc.group),
                other => other,
            });
        }
    }
    Ok(())
}

fn group_not_found(group: &str) -> ApiError {
    ApiError::NotFound {
        code: "group_not_found",
        detail: format!("group {group:?} has no members and no committed offsets"),
    }
}

/// Joining, resetting or deleting a group needs consume on every topic the group already
/// holds (its members' subscriptions and committed offsets), as describing it does:
/// otherwise a client of one team could join another team's group and take its static
/// member ids, add a topic to it by a reset and lock its members out, or delete its
/// offsets. A group that does not exist yet is open to anyone with consume on the
/// topics involved (checked by the caller).
pub async fn require_group_access(state: &SharedState, caller: &Caller, group: &str) -> Result<(), ApiError> {
    if !state.security.enabled() {
        return Ok(());
    }
    match describe(state, group).await {
        Ok(desc) => require_group(caller, &desc),
        Err(ApiError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Builds a group's description (shared with metrics).
pub async fn describe(state: &SharedState, group: &str) -> Result<GroupDescription, ApiError> {
    let info = state.coordinator.describe(group);
    let committed = state.store.committed_offsets(group).await?;
    if info.is_none() && committed.is_empty() {
        return Err(group_not_found(group));
    }
    let mut owners: BTreeMap<(String, u32), String> = BTreeMap::new();
    let mut topics: BTreeSet<String> = committed.iter().map(|c| c.topic.clone()).collect();
    if let Some(i) = &info {
        for m in &i.members {
            topics.extend(m.topics.iter().cloned());
            for tp in &m.partitions {
                owners.insert(tp.clone(), m.member.clone());
            }
        }
    }
    let committed: BTreeMap<(String, u32), u64> =
        committed.into_iter().map(|c| ((c.topic, c.partition), c.offset)).collect();
    let mut partitions = Vec::new();
    for t in topics {
        let Ok(topic) = state.store.topic(&t) else { continue };
        for log in topic.partitions() {
            let key = (t.clone(), log.index);
            let end = log.high_watermark();
            let c = committed.get(&key).copied();
            let lag = end.saturating_sub(c.unwrap_or(log.start_offset()).max(log.start_offset()));
            partitions.push(PartitionLag {
                topic: t.clone(),
                partition: log.index,
                committed: c,
                end_offset: end,
                lag,
                owner: owners.get(&key).cloned(),
            });
        }
    }
    let members = info
        .as_ref()
        .map(|i| {
            i.members
                .iter()
                .map(|m| MemberDescription {
                    member: m.member.clone(),
                    client: m.client.clone(),
                    connected: m.connected,
                    is_static: m.is_static,
                    topics: m.topics.clone(),
                    partitions: m
                        .partitions
                        .iter()
                        .map(|(t, p)| AssignedPartition { topic: t.clone(), partition: *p })
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(GroupDescription {
        group: group.to_string(),
        state: state_name(info.as_ref()),
        generation: info.as_ref().map_or(0, |i| i.generation),
        lag: partitions.iter().map(|p| p.lag).sum(),
        members,
        partitions,
    })
}

/// Describe a group: members, assignment, committed offsets and lag.
#[utoipa::path(get, path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group name")),
    responses(
        (status = 200, description = "The group", body = GroupDescription),
        (status = 400, description = "A name no group can have (`invalid_group_name`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (`group_not_found`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn describe_group(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(group): NamePath<String>,
    _: NoQuery,
) -> Result<Json<GroupDescription>, ApiError> {
    caller.require_authenticated()?;
    tidegate_storage::validate_group_name(&group)?;
    let desc = describe(&state, &group).await?;
    require_group(&caller, &desc)?;
    Ok(Json(desc))
}

/// `force` flag of destructive group operations.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForceParams {
    /// Delete even while the group has members: they keep reading from their positions,
    /// and their next commits store offsets for the group again.
    pub force: Option<bool>,
}

/// Delete a group's committed offsets.
#[utoipa::path(delete, path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group name"), ForceParams),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A name no group can have (`invalid_group_name`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (`group_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The group has members (use force=true)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_group(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(group): NamePath<String>,
    Query(q): Query<ForceParams>,
) -> Result<StatusCode, ApiError> {
    caller.require_authenticated()?;
    tidegate_storage::validate_group_name(&group)?;
    require_group_access(&state, &caller, &group).await?;
    if !q.force.unwrap_or(false) {
        state.coordinator.ensure_empty(&group)?;
    }
    if state.store.committed_offsets(&group).await?.is_empty() && state.coordinator.describe(&group).is_none() {
        return Err(ApiError::NotFound { code: "group_not_found", detail: format!("group {group:?} does not exist") });
    }
    state.store.delete_group_offsets(&group).await?;
    // Members still attached (a forced delete) store their positions again at their
    // next auto-commit, also those that did not move since their last one.
    state.coordinator.forget_commits(&group);
    Ok(StatusCode::NO_CONTENT)
}

/// Body of an offset reset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetOffsets {
    /// Topic whose partitions are reset.
    pub topic: String,
    /// `earliest` or `latest`.
    pub to: Option<String>,
    /// First offset at or after this time (ms since the epoch).
    pub timestamp: Option<i64>,
    /// This exact offset (clamped to the partition's range).
    pub offset: Option<u64>,
    /// Only these partitions (default: all).
    pub partitions: Option<Vec<u32>>,
    /// Reset even while the group has members: those reading the reset partitions read
    /// on from the new offsets (an `assignment` frame tells them).
    #[serde(default)]
    pub force: bool,
}

/// The committed offsets after a reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetResult {
    pub group: String,
    pub offsets: Vec<PartitionLag>,
}

/// Reset a group's committed offsets for a topic.
#[utoipa::path(post, path = "/v1/groups/{group}/reset", tag = "groups", request_body = ResetOffsets,
    params(("group" = String, Path, description = "Group name")),
    responses(
        (status = 200, description = "New committed offsets", body = ResetResult),
        (status = 400, description = "Give exactly one of to, timestamp, offset", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic or partition", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The group has members (set force)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON (`Content-Type: application/json`), or has a `Content-Encoding`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body is not a JSON object, or has unknown or mistyped fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reset_group(
    State(state): State<SharedState>,
    caller: Caller,
    NamePath(group): NamePath<String>,
    _: NoQuery,
    AdminJson(body): AdminJson<ResetOffsets>,
) -> Result<Json<ResetResult>, ApiError> {
    tidegate_storage::validate_group_name(&group)?;
    require_group_access(&state, &caller, &group).await?;
    if let Err(e) = caller.require(Action::Consume, &body.topic) {
        // A group the caller may not see answers as missing whether it exists or not
        // (an existing one already did, above), so a reset cannot probe group names.
        let forbidden = matches!(e, ApiError::Auth(crate::auth::AuthError::Forbidden(_)));
        if forbidden && matches!(describe(&state, &group).await, Err(ApiError::NotFound { .. })) {
            return Err(group_not_found(&group));
        }
        return Err(e);
    }
    if !body.force {
        state.coordinator.ensure_empty(&group)?;
    }
    let topic = state.store.topic(&body.topic)?;
    let owners: BTreeMap<(String, u32), String> = state
        .coordinator
        .describe(&group)
        .map(|info| {
            info.members.iter().flat_map(|m| m.partitions.iter().map(|tp| (tp.clone(), m.member.clone()))).collect()
        })
        .unwrap_or_default();
    let given = [body.to.is_some(), body.timestamp.is_some(), body.offset.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::invalid("invalid_reset", "give exactly one of to (earliest|latest), timestamp, offset"));
    }
    if let Some(to) = body.to.as_deref().filter(|to| !matches!(*to, "earliest" | "latest")) {
        return Err(ApiError::invalid("invalid_reset", format!("to must be earliest or latest, not {to:?}")));
    }
    if body.partitions.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::invalid(
            "invalid_reset",
            "partitions is empty: list the partitions to reset, or leave it out for all of them",
        ));
    }
    let targets: Vec<u32> = body.partitions.clone().unwrap_or_else(|| (0..topic.partition_count()).collect());
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for p in targets {
        let log = topic.partition(p)?;
        let (start, end) = (log.start_offset(), log.high_watermark());
        let offset = match (body.to.as_deref(), body.timestamp, body.offset) {
            (Some("earliest"), None, None) => start,
            (Some("latest"), None, None) => end,
            (None, Some(ts), None) => state.store.offset_for_timestamp(log.clone(), ts).await?.offset,
            (None, None, Some(o)) => o.clamp(start, end),
            _ => {
                return Err(ApiError::invalid(
                    "invalid_reset",
                    "give exactly one of to (earliest|latest), timestamp, offset",
                ));
            }
        };
        rows.push((log.clone(), offset));
        out.push(PartitionLag {
            topic: body.topic.clone(),
            partition: p,
            committed: Some(offset),
            end_offset: end,
            lag: end - offset,
            owner: owners.get(&(body.topic.clone(), p)).cloned(),
        });
    }
    state.store.commit_offsets(&group, rows.clone()).await?;
    // With force, members reading these partitions move too (their next commit would
    // otherwise write their old positions back over the reset).
    let moved: Vec<((String, u32), u64)> =
        rows.into_iter().map(|(log, o)| ((log.topic.clone(), log.index), o)).collect();
    state.coordinator.reset(&group, &moved);
    Ok(Json(ResetResult { group, offsets: out }))
}
