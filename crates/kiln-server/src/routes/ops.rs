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
