//! Extractors whose rejections answer in kiln's JSON error shape.

use crate::error::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A JSON object body as `T`, with JSON errors: 415 without a JSON
/// content type, 400 for malformed JSON, 422 for a body of the wrong
/// shape. Every body is an object (serde would also take a struct's
/// fields as an array), and a number is an integer when its value is one,
/// as JSON Schema counts it (`5.0` is the integer 5).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(json_rejection(JsonRejection::MissingJsonContentType(
                Default::default(),
            )));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large("the request body is too large")
            } else {
                ApiError::bad_request("bad_request", e.body_text())
            }
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request("malformed_json", format!("the body is not JSON: {e}"))
        })?;
        if !value.is_object() {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        // From the bytes first, so that a key given twice is refused.
        let refused = match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(body)) => return Ok(Self(body)),
            Err(rejection) => json_rejection(rejection),
        };
        let rewritten = integers_as_integers(value.clone());
        if rewritten == value {
            return Err(refused);
        }
        serde_path_to_error::deserialize(rewritten)
            .map(Self)
            .map_err(|e| {
                ApiError::invalid(format!(
                    "Failed to deserialize the JSON body into the target type: {e}"
                ))
            })
    }
}

/// Whether the request says its body is JSON (`application/json`, or a
/// `+json` type), as `axum::Json` asks.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `value` with every number whose value is an integer written as one.
fn integers_as_integers(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => {
            let float = n.as_f64().unwrap_or(f64::NAN);
            // Within ±2^53 every integer is exact, so nothing is rounded.
            const EXACT: f64 = 9_007_199_254_740_992.0;
            if float.fract() == 0.0 && float.abs() <= EXACT {
                Value::from(float as i64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(integers_as_integers).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, integers_as_integers(v)))
                .collect(),
        ),
        other => other,
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("malformed_json", e.body_text()),
        JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large("the request body is too large")
        }
        other => ApiError::bad_request("bad_request", other.body_text()),
    }
}

/// `Query<T>` with JSON errors (400).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::bad_request("invalid_query", e.body_text()))
            }
            Err(other) => Err(ApiError::bad_request("invalid_query", other.body_text())),
        }
    }
}

/// A long poll's `wait_seconds`: none is 0, more than `max` is refused
/// (422) rather than cut short unseen.
pub fn wait_within(
    seconds: Option<u64>,
    max: std::time::Duration,
) -> Result<std::time::Duration, ApiError> {
    let seconds = seconds.unwrap_or(0);
    if seconds > max.as_secs() {
        return Err(ApiError::invalid(format!(
            "wait_seconds must be 0 to {}",
            max.as_secs()
        )));
    }
    Ok(std::time::Duration::from_secs(seconds))
}
