//! The one error type of the HTTP layer. Every error answers
//! `{"error": "<code>", "message": "<sentence>"}`; internal errors say only
//! "internal error" and the request's id. Their cause travels with the
//! answer, out of the client's sight, to [`log_internal_errors`], which
//! logs it once with the request id and its whole chain of sources.

use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln_store::StoreError;
use serde::Serialize;
use std::error::Error as StdError;
use std::sync::Arc;

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
    /// What went wrong inside kiln, for the server's log only.
    pub cause: Option<InternalCause>,
}

/// The cause of an internal error (or of an outage's 503): what kiln was
/// doing and the error with its sources. It rides on the answer as an
/// extension, never in its body, until [`log_internal_errors`] logs it.
#[derive(Debug, Clone)]
pub struct InternalCause {
    /// What kiln was doing, such as "storing an uploaded source failed".
    pub context: String,
    /// The error and each of its sources, outermost first.
    pub chain: Arc<Vec<String>>,
    /// A store could not be reached: an outage, logged as a warning.
    pub outage: bool,
}

impl InternalCause {
    fn new(context: &str, error: &(dyn StdError + 'static), outage: bool) -> Self {
        let mut chain = Vec::new();
        let mut next = Some(error);
        while let Some(e) = next {
            chain.push(e.to_string());
            next = e.source();
        }
        Self {
            context: context.to_owned(),
            chain: Arc::new(chain),
            outage,
        }
    }
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
            cause: None,
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

    /// An internal failure: the client sees a sentence without details
    /// and the request id; [`log_internal_errors`] logs `error` with its
    /// sources. A store that cannot be reached is an outage, not a bug:
    /// that answers 503 with `Retry-After`.
    pub fn internal(context: &str, error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        let error: Box<dyn StdError + Send + Sync> = error.into();
        let store = error.downcast_ref::<StoreError>();
        if let Some(store) = store.filter(|e| e.is_unavailable()) {
            let what = match store {
                StoreError::Blob(_) => "the blob store",
                _ => "the database",
            };
            return Self {
                cause: Some(InternalCause::new(context, &*error, true)),
                ..Self::unavailable(what)
            };
        }
        Self {
            cause: Some(InternalCause::new(context, &*error, false)),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error; the server log has the details under this answer's x-request-id",
            )
        }
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
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

/// What a handler returns: its answer, or an [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

/// Logs the cause of every internal error (and outage) once, in the
/// request's span, with its request id; a 500's body names that id, so a
/// report of "internal error" can be found in the log. (The registry's
/// answers keep the distribution spec's shape, and the id in their
/// `x-request-id`.)
pub async fn log_internal_errors(request: Request, next: Next) -> Response {
    let registry = request.uri().path().starts_with("/v2/");
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut response = next.run(request).await;
    let Some(cause) = response.extensions_mut().remove::<InternalCause>() else {
        return response;
    };
    let chain = cause.chain.join(": ");
    if cause.outage {
        tracing::warn!(request_id = %id, error = %chain, "{}: a store is unavailable", cause.context);
        return response;
    }
    tracing::error!(request_id = %id, error = %chain, "{}", cause.context);
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR && !registry {
        let body = ErrorBody {
            error: "internal_error".into(),
            message: format!(
                "internal error; the server log has the details under request id {id}"
            ),
        };
        let (mut parts, _) = response.into_parts();
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        return Response::from_parts(
            parts,
            axum::body::Body::from(serde_json::to_vec(&body).expect("an error body serializes")),
        );
    }
    response
}
