//! The HTTP surface: every route, its middleware, and the OpenAPI document built
//! from the same route list (so the document cannot miss an endpoint).

pub mod events;
pub mod groups;
pub mod ops;
pub mod records;
pub mod segment;
pub mod stream;
pub mod subscribe;
pub mod topics;
pub mod tracker;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Problem, problem_layer};
use crate::state::SharedState;

/// Top-level OpenAPI metadata; paths and schemas come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tidegate",
        description = "HTTP/WebSocket event-streaming gateway: browser trackers post events, \
                       a Kafka-style partitioned log on RocksDB keeps them, consumers read them back. \
                       Every error is RFC 7807 `application/problem+json` with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "events", description = "Ingest"),
        (name = "records", description = "Reading the log"),
        (name = "topics", description = "Topic admin"),
        (name = "consume", description = "WebSocket subscriptions (protocol: docs/websocket.md)"),
        (name = "groups", description = "Consumer-group admin"),
        (name = "segment", description = "Segment-compatible tracking API (analytics.js, Segment's server libraries)"),
        (name = "tracker", description = "The first-party browser tracker"),
        (name = "ops", description = "Health, readiness, metrics"),
    ),
    // The Segment calls are routed one path each (see `api_router`), documented once.
    paths(segment::segment_call)
)]
struct ApiDoc;

fn api_router() -> OpenApiRouter<SharedState> {
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi());
    for path in segment::CALL_PATHS {
        router = router.route(path, axum::routing::post(segment::segment_call));
    }
    router
        .routes(routes!(topics::create_topic, topics::list_topics))
        .routes(routes!(topics::describe_topic, topics::alter_topic, topics::delete_topic))
        .routes(routes!(topics::add_partitions))
        .routes(routes!(events::produce))
        .routes(routes!(records::fetch))
        .routes(routes!(records::offsets))
        .routes(routes!(subscribe::subscribe))
        .routes(routes!(stream::stream))
        .routes(routes!(groups::list_groups))
        .routes(routes!(groups::describe_group, groups::delete_group))
        .routes(routes!(groups::reset_group))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(segment::segment_settings))
        .routes(routes!(tracker::tracker_js))
}

/// The OpenAPI document, as served at `/openapi.json` and checked in at
/// `openapi/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

/// The OpenAPI document as pretty JSON with a trailing newline.
pub fn openapi_json() -> String {
    let mut text = openapi().to_pretty_json().expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

async fn not_found() -> impl IntoResponse {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The complete application.
pub fn router(state: SharedState) -> Router {
    let max_body = state.config.max_body_bytes as usize;
    let (api, doc) = api_router().split_for_parts();
    let mut doc_json = doc.to_pretty_json().expect("the OpenAPI document serialises");
    doc_json.push('\n');
    api.route("/openapi.json", get(move || async move { ([("content-type", "application/json")], doc_json) }))
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(problem_layer))
        .with_state(state)
}
