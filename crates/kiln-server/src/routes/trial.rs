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
    HostEngine, HostError, Plugin, TrialLimits, TrialRequest, TrialResult, UpstreamStub, run_trial,
};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Trials running at once on one server.
const CONCURRENT_TRIALS: usize = 2;
/// Compiled plugins kept for the next trial of the same version.
const CACHED_PLUGINS: usize = 16;

/// The engine, the admission limit of trials and the plugins compiled
/// lately, shared by all requests.
pub struct TrialHost {
    engine: OnceLock<Result<HostEngine, String>>,
    permits: Semaphore,
    pub limits: TrialLimits,
    /// A version's binary never changes, and compiling it takes the server
    /// ~100 ms of CPU: trying it again reuses the compiled plugin.
    plugins: Mutex<Recent<Plugin>>,
}

/// The `capacity` values used last, by key; the least recently used goes
/// first when a new one comes.
struct Recent<T> {
    entries: VecDeque<(String, T)>,
    capacity: usize,
}

impl<T: Clone> Recent<T> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    fn get(&mut self, key: &str) -> Option<T> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(at)?;
        let value = entry.1.clone();
        self.entries.push_front(entry);
        Some(value)
    }

    fn put(&mut self, key: String, value: T) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push_front((key, value));
        self.entries.truncate(self.capacity);
    }
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
                ..TrialLimits::default()
            },
            plugins: Mutex::new(Recent::new(CACHED_PLUGINS)),
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

    fn plugins(&self) -> std::sync::MutexGuard<'_, Recent<Plugin>> {
        self.plugins.lock().unwrap_or_else(PoisonError::into_inner)
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
        | HostError::HostMemory(_)
        | HostError::Trap(_)
        | HostError::MissingExport(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "plugin_error",
            e.to_string(),
        ),
        e => ApiError::internal("running a trial failed", e),
    }
}

/// What a trial starts from: a plugin compiled for an earlier trial, or
/// the version's binary.
enum Source<B> {
    Compiled(Plugin),
    Wasm(B),
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
    let host: Arc<TrialHost> = state.trials.clone();
    // The owner's access was checked above: the cache only saves the work.
    let key = version.binary_location.clone();
    let cached = host.plugins().get(&key);
    let source = match cached {
        Some(plugin) => Source::Compiled(plugin),
        None => Source::Wasm(fetch_blob(&state, &key).await?),
    };
    let _permit = host
        .permits
        .acquire()
        .await
        .map_err(|e| ApiError::internal("trial admission", e))?;
    let engine = host.engine()?;
    let limits = host.limits;
    let cache = host.clone();
    let result = tokio::task::spawn_blocking(move || {
        let plugin = match source {
            Source::Compiled(plugin) => plugin,
            Source::Wasm(wasm) => {
                let plugin = engine.compile(&wasm)?;
                cache.plugins().put(key, plugin.clone());
                plugin
            }
        };
        run_trial(&engine, &plugin, &request, &limits)
    })
    .await
    .map_err(|e| ApiError::internal("a trial panicked", e))?
    .map_err(plugin_error)?;
    Ok(Json(result))
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut recent = Recent::new(2);
        recent.put("a".into(), 1);
        recent.put("b".into(), 2);
        assert_eq!(recent.get("a"), Some(1));
        recent.put("c".into(), 3);
        assert_eq!(recent.get("b"), None, "b was used least lately");
        assert_eq!((recent.get("a"), recent.get("c")), (Some(1), Some(3)));
        recent.put("a".into(), 4);
        assert_eq!(recent.get("a"), Some(4), "a new value replaces the old");
        assert_eq!(recent.get("c"), Some(3));
    }
}
