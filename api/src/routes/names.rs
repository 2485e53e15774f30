//! The path extractor of routes whose path names a topic or a group.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tidegate_storage::StorageError;

use crate::error::ApiError;

/// Path parameters, as axum's `Path`, except that a `{topic}` or `{group}` segment that
/// is not UTF-8 once percent-decoded (`%FF`) is refused as the name no topic or group can
/// have that it is (400 `invalid_topic_name`, `invalid_group_name`) rather than as a
/// generic `invalid_request`.
pub struct NamePath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for NamePath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state).await.map(|Path(t)| NamePath(t)).map_err(refusal)
    }
}

fn refusal(rejection: PathRejection) -> ApiError {
    if let PathRejection::FailedToDeserializePathParams(e) = &rejection
        && let ErrorKind::InvalidUtf8InPathParam { key } = e.kind()
    {
        let name = "(not UTF-8)".to_string();
        match key.as_str() {
            "topic" => {
                let reason = "it is not UTF-8 once percent-decoded";
                return ApiError::Storage(StorageError::InvalidTopicName { name, reason });
            }
            "group" => return ApiError::Storage(StorageError::InvalidGroupName(name)),
            _ => {}
        }
    }
    // The one number in a path: `/partitions/{partition}` (`abc`, `-1`, `99999999999`).
    if let PathRejection::FailedToDeserializePathParams(e) = &rejection
        && let ErrorKind::ParseErrorAtKey { value, expected_type, .. }
        | ErrorKind::ParseErrorAtIndex { value, expected_type, .. } = e.kind()
        && *expected_type == "u32"
    {
        let shown: String = value.chars().take(40).collect();
        return ApiError::invalid(
            "invalid_parameter",
            format!("the partition in the path must be a number from 0 to {}, not {shown:?}", u32::MAX),
        );
    }
    ApiError::invalid("invalid_request", rejection.body_text())
}
