//! Health, metrics and the API description.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::openapi::ApiDoc;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::OpenApi;

/// The answer of `/healthz`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
    /// The metadata store's backend: `sqlite` or `postgres`.
    pub database: &'static str,
    /// The blob store's scheme: `file`, `s3` or `memory`.
    pub blobs: String,
}

/// Whether the process answers (liveness).
#[utoipa::path(get, path = "/healthz", tag = "ops",
    description = "Liveness: the process answers. It does not look at the database or the blob store (see `/readyz`).",
    responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        database: state.meta.backend_name(),
        blobs: blob_scheme(&state),
    })
}

fn blob_scheme(state: &AppState) -> String {
    let described = state.blobs.describe();
    described.split("://").next().unwrap_or_default().to_owned()
}

/// Whether each dependency answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ok` when every dependency answers, else `unavailable`.
    pub status: &'static str,
    /// `ok`, or why the database did not answer.
    pub database: String,
    /// `ok`, or why the blob store did not answer.
    pub blobs: String,
}

/// Whether the database and the blob store answer (readiness).
#[utoipa::path(get, path = "/readyz", tag = "ops",
    description = "Readiness: whether the database and the blob store answer. 503 with `Retry-After` names the one that is down.",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> axum::response::Response {
    let timeout = std::time::Duration::from_secs(3);
    let said = |result: Result<Result<(), kiln_store::StoreError>, _>| match result {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: a dependency did not answer");
            "unavailable".to_owned()
        }
        Err(_) => "unavailable: no answer within 3 s".to_owned(),
    };
    let database = tokio::time::timeout(timeout, state.meta.ping());
    let blobs = tokio::time::timeout(timeout, async {
        state.blobs.exists("readyz").await.map(drop)
    });
    let (database, blobs) = tokio::join!(database, blobs);
    let (database, blobs) = (said(database), said(blobs));
    let ready = database == "ok" && blobs == "ok";
    let body = Json(Readiness {
        status: if ready { "ok" } else { "unavailable" },
        database,
        blobs,
    });
    if ready {
        body.into_response()
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            body,
        )
            .into_response()
    }
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

/// The public key every served `.cwasm` is signed with.
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

/// The server's metrics, for Prometheus.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    description = "Prometheus text format: builds by state, queue depth, request counts and latencies.",
    responses((status = 200, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let counts = state
        .meta
        .queue_counts()
        .await
        .map_err(|e| ApiError::internal("metrics: counting builds failed", e))?;
    state.metrics.set_builds(&counts.by_state);
    let (connections, idle) = state.meta.pool_usage();
    state.metrics.set_pool(connections, idle);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    ))
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
