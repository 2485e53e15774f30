//! The body extractor of the admin routes (topics, groups): a JSON object.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::SharedState;

/// An admin request body, as axum's `Json`, but stricter where `Json` is lenient:
/// - the body must be a JSON object (serde also fills a struct from an array by
///   position, so `[null, null]` altered a topic's retention): 422 `invalid_body`;
/// - a `Content-Encoding` other than `identity` is refused with 415
///   `unsupported_media_type` (admin bodies are small; only ingest decodes them);
/// - a body over `max_body_bytes` is 413 with the limit, one that stalls 408, as ingest.
pub struct AdminJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<SharedState> for AdminJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, Response> {
        if let Some(coding) = req.headers().get(header::CONTENT_ENCODING)
            && !coding.as_bytes().eq_ignore_ascii_case(b"identity")
        {
            let detail = format!(
                "admin requests take no Content-Encoding (got {:?}); send the JSON as it is",
                String::from_utf8_lossy(coding.as_bytes())
            );
            return Err(ApiError::UnsupportedMediaType { detail }.into_response());
        }
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
            .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")));
        if !json {
            let detail = "send the body as Content-Type: application/json".to_string();
            return Err(ApiError::UnsupportedMediaType { detail }.into_response());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| crate::error::body_rejection(&rejection, state).into_response())?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            let problem = crate::error::Problem::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "the body must be a JSON object".to_string(),
            );
            return Err(problem.into_response());
        }
        Json::<T>::from_bytes(&bytes).map(|Json(t)| AdminJson(t)).map_err(IntoResponse::into_response)
    }
}
