//! `POST /version/{id}/try`: runs a version on one request in kiln's
//! proxy-wasm host. The plugin is untrusted code running on the server, so
//! each trial has fuel, time and memory limits, only a few run at once,
//! and on a node with a sandbox each runs in it, in a process of its own.

use super::versions::{fetch_blob, parse_build_id};
use crate::AppState;
use crate::auth::Owner;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_trial::trials::TrialError;
use kiln_trial::{Module, Outcome};
use kiln_wasm::{TrialRequest, TrialResult, UpstreamStub};
use serde::Deserialize;

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

/// The API's answer to a trial.
fn answer(outcome: Result<Outcome<TrialResult>, TrialError>) -> ApiResult<Json<TrialResult>> {
    match outcome {
        Ok(Outcome::Done(result)) => Ok(Json(result)),
        Ok(Outcome::PluginFailed(message)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "plugin_error",
            message,
        )),
        Ok(Outcome::HostFailed(message)) => Err(ApiError::internal(
            "running a trial failed",
            kiln_domain::text::cap(&message, MAX_LOGGED_BYTES).to_owned(),
        )),
        Err(e @ TrialError::Unavailable(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "trials_unavailable",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::internal("running a trial failed", e)),
    }
}

/// What of a child's own words goes into the server's log: they are
/// untrusted.
const MAX_LOGGED_BYTES: usize = 4 << 10;

#[utoipa::path(post, path = "/version/{id}/try", tag = "versions",
    description = "Runs the version on one request in kiln's proxy-wasm host, in the build sandbox, with fuel, time and memory limits. Answers the request as forwarded (or the local response the plugin sent), the response after the filter, and the plugin's logs.",
    params(("id" = String, Path, description = "version id")),
    request_body = TryBody,
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn try_version(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TryBody>,
) -> ApiResult<Json<TrialResult>> {
    if let Err(e) = state.trials.check_available() {
        return answer(Err(e));
    }
    let build_id = parse_build_id(&id, "version")?;
    let version = state
        .meta
        .get_version(owner, build_id)
        .await
        .map_err(|e| ApiError::from_store(e, "version", &id))?;
    let request = TrialRequest {
        method: body.method,
        path: body.path,
        headers: body.headers,
        body: body.body,
        upstream: body.upstream,
        conf: body.conf.unwrap_or(version.conf),
        ticks: 0,
    };
    request
        .check()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    // The owner's access was checked above: the cache only saves the work.
    let key = version.binary_location;
    let module = match state.trials.cached(&key) {
        Some(cwasm) => Module::Compiled(cwasm),
        None => Module::Wasm(fetch_blob(&state, &key).await?),
    };
    answer(state.trials.run(key, module, request).await)
}
