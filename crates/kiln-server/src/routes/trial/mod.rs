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
use kiln_wasm::{
    HostEngine, HostError, Plugin, TrialJob, TrialLimits, TrialOutcome, TrialRequest, TrialResult,
    UpstreamStub, run_trial,
};
use sandboxed::Module;
use serde::Deserialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Trials running at once on one server.
const CONCURRENT_TRIALS: usize = 2;
/// Compiled plugins kept for the next trial of the same version.
const CACHED_PLUGINS: usize = 16;

mod sandboxed;

use sandboxed::SandboxedTrials;

/// Where trials run, the admission limit of trials and their limits,
/// shared by all requests.
pub struct TrialHost {
    isolation: Isolation,
    permits: Semaphore,
    pub limits: TrialLimits,
}

enum Isolation {
    /// In the server's process, under wasmtime's limits only: for nodes
    /// that run without a sandbox (`--sandbox none`).
    InProcess {
        engine: OnceLock<Result<HostEngine, String>>,
        /// A version's binary never changes, and compiling it takes the
        /// server ~100 ms of CPU: trying it again reuses the compiled plugin.
        plugins: Arc<Mutex<Recent<Plugin>>>,
    },
    /// In `kiln trial-child` in the build sandbox.
    Sandboxed(SandboxedTrials),
    /// Nowhere: the node should sandbox trials and cannot (the reason).
    Unavailable(String),
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
    /// Trials in the server's own process.
    fn default() -> Self {
        Self::with(Isolation::InProcess {
            engine: OnceLock::new(),
            plugins: Arc::new(Mutex::new(Recent::new(CACHED_PLUGINS))),
        })
    }
}

impl TrialHost {
    /// Trials in `sandbox`, each in a `kiln trial-child` started from
    /// `program` (a kiln binary the sandbox user can read).
    pub fn sandboxed(sandbox: Arc<dyn kiln_sandbox::Sandbox>, program: PathBuf) -> Self {
        Self::with(Isolation::Sandboxed(SandboxedTrials::new(
            sandbox,
            program,
            CACHED_PLUGINS,
        )))
    }

    /// No trials: the node has no sandbox to run them in, for `reason`.
    pub fn unavailable(reason: String) -> Self {
        Self::with(Isolation::Unavailable(reason))
    }

    fn with(isolation: Isolation) -> Self {
        Self {
            isolation,
            permits: Semaphore::new(CONCURRENT_TRIALS),
            limits: TrialLimits {
                fuel: 200_000_000,
                wall: Duration::from_secs(1),
                memory_bytes: 64 << 20,
                ..TrialLimits::default()
            },
        }
    }

    /// A short name for logs.
    pub fn isolation(&self) -> &'static str {
        match self.isolation {
            Isolation::InProcess { .. } => "in-process",
            Isolation::Sandboxed(_) => "sandboxed",
            Isolation::Unavailable(_) => "unavailable",
        }
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

/// The API's answer to a trial that did not answer.
fn failed(outcome: TrialOutcome) -> ApiResult<Json<TrialResult>> {
    match outcome {
        TrialOutcome::Answered(result) => Ok(Json(result)),
        TrialOutcome::PluginFailed(message) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "plugin_error",
            message,
        )),
        TrialOutcome::HostFailed(message) => Err(ApiError::internal(
            "running a trial failed",
            sandboxed::capped(&message),
        )),
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
    if let Isolation::Unavailable(reason) = &state.trials.isolation {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "trials_unavailable",
            format!(
                "this node runs trials only in the build sandbox, which it does not have ({reason})"
            ),
        ));
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
    let host: Arc<TrialHost> = state.trials.clone();
    let job = TrialJob {
        request,
        limits: host.limits,
    };
    // The owner's access was checked above: the caches only save the work.
    let key = version.binary_location.clone();
    let outcome = match &host.isolation {
        Isolation::InProcess { engine, plugins } => {
            let cached = lock(plugins).get(&key);
            let plugin = match cached {
                Some(plugin) => Ok(plugin),
                None => Err(fetch_blob(&state, &key).await?),
            };
            let _permit = admit(&host).await?;
            let engine = engine
                .get_or_init(|| HostEngine::new().map_err(|e| e.to_string()))
                .clone()
                .map_err(|e| ApiError::internal("starting the trial host failed", e))?;
            let plugins = plugins.clone();
            tokio::task::spawn_blocking(move || {
                TrialOutcome::from(in_process(&engine, &plugins, key, plugin, &job))
            })
            .await
            .map_err(|e| ApiError::internal("a trial panicked", e))?
        }
        Isolation::Unavailable(_) => unreachable!("refused above"),
        Isolation::Sandboxed(trials) => {
            let module = match trials.cached(&key) {
                Some(cwasm) => Module::Compiled(cwasm),
                None => Module::Wasm(fetch_blob(&state, &key).await?),
            };
            let _permit = admit(&host).await?;
            trials
                .run(key, module, &job)
                .await
                .map_err(|e| ApiError::internal("running a trial failed", e))?
        }
    };
    failed(outcome)
}

async fn admit(host: &TrialHost) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
    host.permits
        .acquire()
        .await
        .map_err(|e| ApiError::internal("trial admission", e))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `job` in this process, on the cached plugin or on the `.wasm`,
/// compiled and cached first.
fn in_process(
    engine: &HostEngine,
    plugins: &Mutex<Recent<Plugin>>,
    key: String,
    plugin: Result<Plugin, bytes::Bytes>,
    job: &TrialJob,
) -> Result<TrialResult, HostError> {
    let plugin = match plugin {
        Ok(plugin) => plugin,
        Err(wasm) => {
            let plugin = engine.compile(&wasm)?;
            lock(plugins).put(key, plugin.clone());
            plugin
        }
    };
    run_trial(engine, &plugin, &job.request, &job.limits)
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
