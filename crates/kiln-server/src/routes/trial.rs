//! `POST /version/{id}/try`: runs a version on one request, or on a
//! scenario of requests, in kiln's proxy-wasm host. The plugin is untrusted code running on the server, so
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
use kiln_wasm::{
    Scenario, ScenarioRequest, ScenarioResult, TrialRequest, TrialResult, UpstreamStub,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One request to run through the plugin, or (with `requests`) a scenario:
/// requests in a row through one running plugin, as `kiln try --scenario`
/// reads it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TryBody {
    /// The request's method; default `GET`.
    #[serde(default = "get")]
    pub method: String,
    /// The request's `:path`; default `/`.
    #[serde(default = "root")]
    pub path: String,
    /// Request headers as [name, value] pairs.
    #[serde(default)]
    #[schema(schema_with = kiln_wasm::request::header_pairs)]
    pub headers: Vec<(String, String)>,
    /// The request body, as text; default empty.
    #[serde(default)]
    pub body: String,
    /// The stub upstream.
    #[serde(default)]
    pub upstream: UpstreamStub,
    /// The plugin configuration; default: the version's `conf`.
    pub conf: Option<String>,
    /// A scenario's requests, each {method, path, headers, body, origin,
    /// clusters, after_ms}; the single request's fields must then be unset.
    pub requests: Option<Vec<ScenarioRequest>>,
    /// A scenario's call-out answers by cluster name (`*`: any other).
    #[serde(default)]
    pub clusters: BTreeMap<String, UpstreamStub>,
    /// A scenario's stream idle timeout in milliseconds (Envoy's default, 300000).
    pub stream_idle_timeout_ms: Option<u64>,
    /// A scenario's body chunk size in bytes (0: each body in one chunk).
    #[serde(default)]
    pub body_chunk_bytes: u32,
    /// Timer ticks delivered to the root context after it starts.
    #[serde(default)]
    pub ticks: u32,
}

/// A single request's result, or a scenario's.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum TryAnswer {
    /// The answer to a single request.
    One(TrialResult),
    /// The answer to a scenario: one exchange per request.
    Scenario(ScenarioResult),
}

impl TryBody {
    /// The scenario the body describes, if it is one.
    fn scenario(&mut self, version_conf: &str) -> ApiResult<Option<Scenario>> {
        let Some(requests) = self.requests.take() else {
            if !self.clusters.is_empty()
                || self.stream_idle_timeout_ms.is_some()
                || self.body_chunk_bytes != 0
            {
                return Err(ApiError::invalid(
                    "clusters, stream_idle_timeout_ms and body_chunk_bytes describe a scenario: give its requests too",
                ));
            }
            return Ok(None);
        };
        let single = self.method != get()
            || self.path != root()
            || !self.headers.is_empty()
            || !self.body.is_empty()
            || self.upstream != UpstreamStub::default();
        if single {
            return Err(ApiError::invalid(
                "give either one request (method, path, headers, body, upstream) or a scenario's requests, not both",
            ));
        }
        Ok(Some(Scenario {
            conf: self.conf.take().unwrap_or_else(|| version_conf.to_owned()),
            requests,
            clusters: std::mem::take(&mut self.clusters),
            ticks: self.ticks,
            stream_idle_timeout_ms: self
                .stream_idle_timeout_ms
                .unwrap_or(kiln_wasm::scenario::DEFAULT_STREAM_IDLE_TIMEOUT_MS),
            body_chunk_bytes: self.body_chunk_bytes as usize,
        }))
    }
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

/// The API's answer to a trial.
fn answer<T>(
    outcome: Result<Outcome<T>, TrialError>,
    wrap: impl FnOnce(T) -> TryAnswer,
) -> ApiResult<Json<TryAnswer>> {
    match outcome {
        Ok(Outcome::Done(result)) => Ok(Json(wrap(result))),
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

/// Runs a version on a request, or on a scenario of requests.
#[utoipa::path(post, path = "/version/{id}/try", tag = "versions",
    description = "Runs the version on one request in kiln's proxy-wasm host, in the build sandbox, with fuel, time and memory limits. Answers the request as forwarded (or the local response the plugin sent), the response after the filter, and the plugin's logs. With `requests`, runs a scenario through one instance (limits for the whole scenario) and answers one exchange per request, the metrics, shared data and, if the plugin trapped, where (200 with `failure`, and the logs up to it).",
    params(("id" = String, Path, description = "version id")),
    request_body = TryBody,
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn try_version(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    ApiJson(mut body): ApiJson<TryBody>,
) -> ApiResult<Json<TryAnswer>> {
    if let Err(e) = state.trials.check_available() {
        return answer(Err::<Outcome<TrialResult>, _>(e), TryAnswer::One);
    }
    let build_id = parse_build_id(&id, "version")?;
    let version = state
        .meta
        .get_version(owner, build_id)
        .await
        .map_err(|e| ApiError::from_store(e, "version", &id))?;
    let module = |state: &AppState, key: &str| {
        // The owner's access was checked above: the cache only saves the work.
        state.trials.cached(key).map(Module::Compiled)
    };
    if let Some(scenario) = body.scenario(&version.conf)? {
        scenario
            .check()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let key = version.binary_location;
        let module = match module(&state, &key) {
            Some(cached) => cached,
            None => Module::Wasm(fetch_blob(&state, &key).await?),
        };
        let ran = state.trials.run_scenario(key, module, scenario).await;
        return answer(ran, TryAnswer::Scenario);
    }
    let request = TrialRequest {
        method: body.method,
        path: body.path,
        headers: body.headers,
        body: body.body,
        upstream: body.upstream,
        conf: body.conf.unwrap_or(version.conf),
        ticks: body.ticks,
    };
    request
        .check()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let key = version.binary_location;
    let module = match module(&state, &key) {
        Some(cached) => cached,
        None => Module::Wasm(fetch_blob(&state, &key).await?),
    };
    answer(state.trials.run(key, module, request).await, TryAnswer::One)
}
