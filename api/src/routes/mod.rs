//! The HTTP surface: every route, its middleware, and the OpenAPI document built
//! from the same route list (so the document cannot miss an endpoint).

pub mod admin_json;
pub mod events;
pub mod groups;
pub mod names;
pub mod no_query;
pub mod ops;
pub mod records;
pub mod segment;
pub mod status;
pub mod stream;
pub mod subscribe;
pub mod topics;
pub mod tracker;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Problem;
use crate::state::SharedState;

/// Top-level OpenAPI metadata; paths and schemas come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tidegate",
        description = "HTTP/WebSocket event-streaming gateway: browser trackers post events, \
                       a Kafka-style partitioned log on RocksDB keeps them, consumers read them back. \
                       Every error is RFC 7807 `application/problem+json` with a stable `code`.\n\n\
                       The WebSocket subscription protocol (frames, parameters, close codes) is described at \
                       [/docs/websocket](/docs/websocket); the dashboard is at [/](/).",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "events", description = "Ingest"),
        (name = "records", description = "Reading the log"),
        (name = "topics", description = "Topic admin"),
        (name = "consume", description = "WebSocket subscriptions (protocol: [/docs/websocket](/docs/websocket))"),
        (name = "groups", description = "Consumer-group admin"),
        (name = "segment", description = "Segment-compatible tracking API (analytics.js, Segment's server libraries)"),
        (name = "tracker", description = "The first-party browser tracker"),
        (name = "ops", description = "Health, readiness, metrics, node status"),
    ),
    // The Segment calls are routed one path each (see `api_router`), documented once.
    paths(segment::segment_call),
    modifiers(&SecurityDoc)
)]
struct ApiDoc;

/// An OpenAPI response with a `Problem` body and `description` (headers may be added).
fn problem(description: &str) -> utoipa::openapi::ResponseBuilder {
    use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
    ResponseBuilder::new().description(description).content(
        crate::error::PROBLEM_JSON,
        ContentBuilder::new().schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem")))).build(),
    )
}

/// Adds the answers many operations share, where an operation does not document its
/// own: 413 and 415 to every operation that takes a body (the body limit and the media
/// type are checked before the handler) but Segment's calls, 400 to every operation on
/// a named topic (the name may be invalid), and 500 to every `/v1/` operation that reads
/// or writes storage.
struct CommonResponsesDoc;

impl utoipa::Modify for CommonResponsesDoc {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            let storage = path.starts_with("/v1/") && !crate::auth::PUBLIC_ROUTES.contains(&path.as_str());
            for op in
                [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten()
            {
                let r = &mut op.responses.responses;
                // Segment's calls answer every bad body with 400 (its trackers retry others).
                if op.request_body.is_some() && path != "/v1/{call}" {
                    r.entry("413".into())
                        .or_insert_with(|| problem("The body is larger than `max_body_bytes`").build().into());
                    r.entry("415".into()).or_insert_with(|| {
                        problem("The `Content-Type` (or `Content-Encoding`) is not one this operation takes")
                            .build()
                            .into()
                    });
                }
                if path.contains("{topic}") {
                    r.entry("400".into()).or_insert_with(|| {
                        problem("The topic name is not valid (`[A-Za-z0-9._-]{1,249}`), or a parameter is not")
                            .build()
                            .into()
                    });
                }
                if storage {
                    r.entry("500".into()).or_insert_with(|| {
                        problem("Storage failed; the request's effect is not acknowledged").build().into()
                    });
                }
            }
        }
    }
}

/// Completes what the annotations cannot say: the syntax of topic and group names in
/// paths, the binary body of ingest, 408 for operations that read a body, and the
/// `/openapi.json` operation (served beside the API, not routed through it).
struct DetailsDoc;

/// What a topic or group name may be (`validate_topic_name`): `.` and `..` excepted.
const NAME_PATTERN: &str = "^[A-Za-z0-9._-]{1,249}$";

impl utoipa::Modify for DetailsDoc {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
        use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, SchemaType, Type};
        use utoipa::openapi::{ContentBuilder, KnownFormat, RefOr, ResponseBuilder};
        let name = || -> RefOr<utoipa::openapi::schema::Schema> {
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .pattern(Some(NAME_PATTERN))
                .min_length(Some(1))
                .max_length(Some(249))
                .into()
        };
        for item in doc.paths.paths.values_mut() {
            for op in
                [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten()
            {
                for param in op.parameters.iter_mut().flatten() {
                    let RefOr::T(param) = param else { continue };
                    if matches!(param.name.as_str(), "topic" | "group")
                        && param.parameter_in == utoipa::openapi::path::ParameterIn::Path
                    {
                        param.schema = Some(name());
                    }
                }
                if let Some(body) = &mut op.request_body {
                    if let RefOr::T(body) = body
                        && let Some(RefOr::T(binary)) = body.content.get_mut("application/octet-stream")
                    {
                        binary.schema = Some(
                            ObjectBuilder::new()
                                .schema_type(SchemaType::Type(Type::String))
                                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                                .into(),
                        );
                    }
                    op.responses.responses.entry("408".into()).or_insert_with(|| {
                        problem(
                            "`request_timeout`: the body went `http_body_timeout_ms` without a byte, or took more \
                             than `http_body_total_timeout_ms` to arrive; nothing was written",
                        )
                        .build()
                        .into()
                    });
                    op.responses.responses.entry("503".into()).or_insert_with(|| {
                        problem(
                            "`overloaded`: request bodies in flight fill `request_memory_bytes`; nothing was written \
                             (retry after `Retry-After`)",
                        )
                        .build()
                        .into()
                    });
                }
            }
        }
        let spec = OperationBuilder::new()
            .tag("ops")
            .summary(Some("This OpenAPI document"))
            .operation_id(Some("openapi_json"))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("OpenAPI 3.1 document of the API (Swagger UI at `/docs`)")
                    .content("application/json", ContentBuilder::new().build()),
            )
            .build();
        doc.paths.paths.insert("/openapi.json".into(), PathItem::new(HttpMethod::Get, spec));
    }
}

/// Adds the security schemes, and to every protected operation its security
/// requirement and the 401, 403 and 429 answers (one place, so none is forgotten).
struct SecurityDoc;

impl utoipa::Modify for SecurityDoc {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "JWT with a permissions claim (produce, consume, admin on topic patterns). \
                         WebSocket and SSE also take it as `?access_token=`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "write_key",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "key",
                "Browser write key (produce only; also `X-Write-Key`, the Basic user name, or a `writeKey` body field)",
            ))),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            if crate::auth::PUBLIC_ROUTES.contains(&path.as_str()) {
                continue;
            }
            let produce = crate::auth::PRODUCE_ROUTES.contains(&path.as_str());
            for op in
                [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten()
            {
                let mut security = vec![SecurityRequirement::new("bearer", Vec::<String>::new())];
                if produce {
                    security.push(SecurityRequirement::new("write_key", Vec::<String>::new()));
                }
                // `{}`: none, while authentication is off (allowed on loopback only).
                security.push(SecurityRequirement::default());
                op.security = Some(security);
                let r = &mut op.responses.responses;
                r.entry("401".into()).or_insert_with(|| {
                    problem("Authentication required, or the token or write key is invalid, expired or not yet valid")
                        .header(
                            "WWW-Authenticate",
                            HeaderBuilder::new()
                                .description(Some("`Bearer`, with `error=\"invalid_token\"` for a bad token"))
                                .build(),
                        )
                        .into()
                });
                r.entry("403".into())
                    .or_insert_with(|| problem("The credentials do not grant this action on this topic, or the write key is used from an origin it does not list").into());
                r.entry("429".into()).or_insert_with(|| {
                    problem("Over the per-IP or per-write-key rate limit")
                        .header("Retry-After", HeaderBuilder::new().description(Some("Seconds to wait")).build())
                        .into()
                });
            }
        }
    }
}

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
        .routes({
            // A WebSocket handshake is a GET; axum's `get` also routes HEAD, which the
            // upgrade refuses: every 405 of this path names GET alone.
            let (schemas, paths, method_router) = routes!(subscribe::subscribe);
            (schemas, paths, method_router.layer(axum::middleware::map_response(subscribe::allow_get_only)))
        })
        .routes(routes!(stream::stream))
        .routes(routes!(groups::list_groups))
        .routes(routes!(groups::describe_group, groups::delete_group))
        .routes(routes!(groups::reset_group))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(status::status))
        .routes(routes!(segment::segment_settings))
        .routes(routes!(tracker::tracker_js))
}

/// The OpenAPI document, as served at `/openapi.json` and checked in at
/// `openapi/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().split_for_parts().1;
    utoipa::Modify::modify(&SecurityDoc, &mut doc);
    utoipa::Modify::modify(&CommonResponsesDoc, &mut doc);
    utoipa::Modify::modify(&DetailsDoc, &mut doc);
    doc
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

/// The complete application. `cors` (from [`crate::auth::cors::layer`]) wraps
/// everything, so preflights are answered and refusals carry CORS headers too.
pub fn router(state: SharedState, cors: Option<tower_http::cors::CorsLayer>) -> Router {
    let max_body = state.config.max_body_bytes as usize;
    let (api, _) = api_router().split_for_parts();
    let doc_json = openapi_json();
    // The gate covers the API routes (and /openapi.json, listed public); the documents,
    // Swagger UI and the dashboard's files are merged after it and stay public.
    let public = crate::docs::router()
        .merge(crate::web::router())
        .route_layer(from_fn(crate::auth::no_query_token))
        .route_layer(from_fn(crate::metrics::track));
    let app = api
        .route("/openapi.json", get(move || async move { ([("content-type", "application/json")], doc_json) }))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::metrics::track_gated))
        .merge(public)
        .fallback_service(axum::routing::any(not_found).layer(from_fn(crate::metrics::track)))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::authenticate))
        .with_state(state);
    match cors {
        // Requests without Origin skip the layer; see `wrap`.
        Some(cors) => crate::auth::cors::wrap(app, cors),
        None => app,
    }
}
