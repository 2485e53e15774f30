//! Health, readiness and metrics endpoints for orchestrators and Prometheus.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Action, Caller};
use crate::error::{ApiError, Problem};
use crate::state::SharedState;

/// Health or readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok`, or `unavailable` while starting or shutting down.
    pub status: &'static str,
}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive", body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: 200 when the node takes traffic; 503 `not_ready` while starting or
/// shutting down, `storage_failing` while the last write to storage failed (the error
/// itself is in the log and in `/v1/status`, not on this public route), and
/// `insufficient_storage` while free disk space is below `min_free_disk_bytes`.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready", body = Status),
    (status = 503, description = "Starting, shutting down, the last write to storage failed, or free disk space is below `min_free_disk_bytes`", body = Problem, content_type = "application/problem+json"),
))]
pub async fn readyz(State(state): State<SharedState>) -> axum::response::Response {
    match state.not_ready() {
        None => Json(Status { status: "ok" }).into_response(),
        Some((code, detail)) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).into_response(),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"),
))]
pub async fn metrics(State(state): State<SharedState>, caller: Caller) -> Result<impl IntoResponse, ApiError> {
    if !state.security.public_metrics() {
        caller.require_everywhere(Action::Admin)?;
    }
    let store = state.store.clone();
    let mut body = tokio::task::spawn_blocking(move || crate::metrics::render(&store)).await.unwrap_or_default();
    body.push_str(&request_memory(&state));
    body.push_str(&group_lag(&state).await);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body))
}

/// `tidegate_request_memory_bytes` and its limit.
fn request_memory(state: &SharedState) -> String {
    let memory = &state.request_memory;
    format!(
        "# HELP tidegate_request_memory_bytes Bytes of request bodies in flight (reserved in request_memory_bytes).\n\
         # TYPE tidegate_request_memory_bytes gauge\ntidegate_request_memory_bytes {}\n\
         # HELP tidegate_request_memory_limit_bytes The request_memory_bytes setting.\n\
         # TYPE tidegate_request_memory_limit_bytes gauge\ntidegate_request_memory_limit_bytes {}\n",
        memory.reserved_bytes(),
        memory.budget_bytes()
    )
}

/// `tidegate_group_lag` per group and partition, and the total per group.
async fn group_lag(state: &SharedState) -> String {
    use crate::metrics::escape as esc;
    use std::fmt::Write;
    let names = super::groups::group_names(state).await.unwrap_or_default();
    let mut out = String::from(
        "# HELP tidegate_group_lag Records between a group's committed offset and the high watermark.\n\
         # TYPE tidegate_group_lag gauge\n",
    );
    let mut totals = String::from(
        "# HELP tidegate_group_lag_total A group's lag summed over its partitions.\n# TYPE tidegate_group_lag_total gauge\n",
    );
    for g in names {
        let Ok(d) = super::groups::describe(state, &g).await else { continue };
        for p in &d.partitions {
            let _ = writeln!(
                out,
                "tidegate_group_lag{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {}",
                esc(&g),
                esc(&p.topic),
                p.partition,
                p.lag
            );
        }
        let _ = writeln!(totals, "tidegate_group_lag_total{{group=\"{}\"}} {}", esc(&g), d.lag);
    }
    out.push_str(&totals);
    out
}
