//! `POST /version/{id}/try`: runs a version on one request in kiln's
//! proxy-wasm host. The plugin is untrusted code running on the server, so
//! each trial has fuel, time and memory limits and only a few run at once.

use super::versions::{fetch_blob, parse_build_id};
use crate::AppState;
use crate::auth::Owner;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_wasm::{
    HostEngine, HostError, TrialLimits, TrialRequest, TrialResult, UpstreamStub, run_trial,
};
use serde::Deserialize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Trials running at once on one server.
const CONCURRENT_TRIALS: usize = 2;

/// The engine and the admission limit of trials, shared by all requests.
pub struct TrialHost {
    engine: OnceLock<Result<HostEngine, String>>,
    permits: Semaphore,
    pub limits: TrialLimits,
}

impl Default for TrialHost {
    fn default() -> Self {
        Self {
            engine: OnceLock::new(),
            permits: Semaphore::new(CONCURRENT_TRIALS),
            limits: TrialLimits {
                fuel: 200_000_000,
                wall: Duration::from_secs(1),
                memory_bytes: 64 << 20,
            },
        }
    }
}

impl TrialHost {
    fn engine(&self) -> ApiResult<HostEngine> {
        self.engine
            .get_or_init(|| HostEngine::new().map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| ApiError::internal("starting the trial host failed", e))
    }
}

/// One request to run through the plugin.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TryBody {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "root")]
    pub path: String,
    /// Request headers as [name, value] pairs.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
    /// The stub upstream: {status, headers, body}.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub upstream: UpstreamStub,
    /// The plugin configuration; default: the version's `conf`.
    pub conf: Option<String>,
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

fn plugin_error(e: HostError) -> ApiError {
    match e {
        HostError::OutOfFuel(_)
        | HostError::Timeout(_)
        | HostError::Trap(_)
        | HostError::MissingExport(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "plugin_error",
            e.to_string(),
        ),
        e => ApiError::internal("running a trial failed", e),
    }
}

#[utoipa::path(post, path = "/version/{id}/try", tag = "versions",
    description = "Runs the version on one request in kiln's proxy-wasm host, with fuel, time and memory limits. Answers the request as forwarded (or the local response the plugin sent), the response after the filter, and the plugin's logs.",
    params(("id" = String, Path, description = "version id")),
    request_body = TryBody,
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn try_version(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TryBody>,
) -> ApiResult<Json<TrialResult>> {
    let build_id = parse_build_id(&id, "version")?;
    let version = state
        .meta
        .get_version(owner, build_id)
        .await
        .map_err(|e| ApiError::from_store(e, "version", &id))?;
    let wasm = fetch_blob(&state, &version.binary_location).await?;
    let request = TrialRequest {
        method: body.method,
        path: body.path,
        headers: body.headers,
        body: body.body,
        upstream: body.upstream,
        conf: body.conf.unwrap_or(version.conf),
        ticks: 0,
    };
    let host: Arc<TrialHost> = state.trials.clone();
    let _permit = host
        .permits
        .acquire()
        .await
        .map_err(|e| ApiError::internal("trial admission", e))?;
    let engine = host.engine()?;
    let limits = host.limits;
    let result = tokio::task::spawn_blocking(move || {
        let plugin = engine.compile(&wasm)?;
        run_trial(&engine, &plugin, &request, &limits)
    })
    .await
    .map_err(|e| ApiError::internal("a trial panicked", e))?
    .map_err(plugin_error)?;
    Ok(Json(result))
}
