//! Health, metrics and the API description.

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::openapi::ApiDoc;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::OpenApi;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub database: &'static str,
    pub blobs: String,
}

#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, body = Health), (status = 500, body = ErrorBody)))]
pub async fn healthz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    state
        .meta
        .ping()
        .await
        .map_err(|e| ApiError::internal("health check: database unreachable", e))?;
    Ok(Json(Health {
        status: "ok",
        database: state.meta.backend_name(),
        blobs: state
            .blobs
            .describe()
            .split("://")
            .next()
            .unwrap_or_default()
            .to_owned(),
    }))
}

/// The public half of the key every `.cwasm` this server serves is signed
/// with.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SigningKey {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The 32-byte public key, in hex.
    pub public_key: String,
}

#[utoipa::path(get, path = "/signing-key", tag = "ops",
    description = "The Ed25519 public key that signs every `.cwasm` this server serves (`GET /version/{id}/binary?format=cwasm`). Edge servers and `kiln try --verify-key FILE` check artifacts against it before loading them.",
    responses((status = 200, body = SigningKey)))]
pub async fn signing_key(State(state): State<AppState>) -> Json<SigningKey> {
    let key = state.artifacts.public_key();
    Json(SigningKey {
        algorithm: key.algorithm,
        public_key: key.public_key,
    })
}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    description = "Prometheus text format: builds by state, queue depth, request counts and latencies.",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let counts = state
        .meta
        .queue_counts()
        .await
        .map_err(|e| ApiError::internal("metrics: counting builds failed", e))?;
    state.metrics.set_builds(&counts.by_state);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    ))
}

#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
