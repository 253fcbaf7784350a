//! The one error type of the HTTP layer. Every error answers
//! `{"error": "<code>", "message": "<sentence>"}`; internal errors say only
//! "internal error" and a request id, and are logged with their cause.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_store::StoreError;
use serde::Serialize;

/// An error answer: its status, its JSON body and, for a 503,
/// `Retry-After`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status answered.
    pub status: StatusCode,
    /// The body's `error`: a stable machine-readable code.
    pub code: &'static str,
    /// The body's `message`: a sentence for humans, never an internal
    /// error's cause.
    pub message: String,
    /// Seconds after which to try again (`Retry-After`), for a 503.
    pub retry_after: Option<u64>,
}

/// What a client waits before trying again while a store is down.
const RETRY_AFTER_SECONDS: u64 = 5;

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code, such as `not_found`.
    #[schema(example = "not_found")]
    pub error: String,
    /// A sentence for humans.
    pub message: String,
}

impl ApiError {
    /// An answer of `status` with `code` and `message`, without `Retry-After`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A dependency is down: 503 with `Retry-After`.
    pub fn unavailable(what: &str) -> Self {
        Self {
            retry_after: Some(RETRY_AFTER_SECONDS),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{what} is unavailable; try again shortly"),
            )
        }
    }

    /// 401 `unauthorized`: a token is missing, malformed, unknown or revoked.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 `not_found`: no `what` with `id` that the caller may see.
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with id {id}"),
        )
    }

    /// 400 with `code`: a request that cannot be read (a missing field, a
    /// malformed body, query or header).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422 `invalid_input`: a value that was read but is not valid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
    }

    /// 409 with `code`: the request clashes with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 413 `payload_too_large`: a body or a field over its limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// An internal failure: logged in full, shown to the client as a
    /// sentence without details. A store that cannot be reached is an
    /// outage, not a bug: that answers 503 with `Retry-After`.
    pub fn internal<E: std::fmt::Display + 'static>(context: &str, error: E) -> Self {
        let store = (&error as &dyn std::any::Any).downcast_ref::<StoreError>();
        if let Some(store) = store.filter(|e| e.is_unavailable()) {
            tracing::warn!(error = %store, "{context}: a store is unavailable");
            return Self::unavailable(match store {
                StoreError::Blob(_) => "the blob store",
                _ => "the database",
            });
        }
        tracing::error!(%error, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; the server log has the details under this answer's x-request-id",
        )
    }

    /// Maps a store error for a resource the caller named by id.
    pub fn from_store(error: StoreError, what: &str, id: impl std::fmt::Display) -> Self {
        match error {
            StoreError::NotFound => Self::not_found(what, id),
            StoreError::Conflict(message) => Self::conflict("conflict", message),
            StoreError::LeaseLost(build) => Self::conflict(
                kiln_domain::worker_api::LEASE_LOST_CODE,
                format!("build {build} is not running under this lease"),
            ),
            other => Self::internal("store operation failed", other),
        }
    }
}

impl From<kiln_domain::ValidationError> for ApiError {
    fn from(e: kiln_domain::ValidationError) -> Self {
        Self::invalid(e.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// What a handler returns: its answer, or an [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;
