//! What kiln hands a `kiln wasm-child` and what it hands back: the job in
//! [`JOB_FILE`], the modules beside it under the names below, and the
//! child's [`Outcome`] in [`OUTCOME_FILE`]. Everything the child writes is
//! untrusted: the module ran in that process.

use kiln_wasm::{HostError, Scenario, TrialLimits, TrialRequest};
use serde::{Deserialize, Serialize};

/// The job, as JSON.
pub const JOB_FILE: &str = "job.json";
/// Where the child writes its [`Outcome`], as JSON.
pub const OUTCOME_FILE: &str = "outcome.json";
/// The customer's module.
pub const PLUGIN_WASM: &str = "plugin.wasm";
/// A module to compare with the plugin: `wasm-opt`'s output.
pub const CANDIDATE_WASM: &str = "candidate.wasm";
/// The plugin, precompiled with the trial engine's settings by the server.
pub const PLUGIN_CWASM: &str = "plugin.cwasm";
/// Pre-initialization's snapshot, written by the child.
pub const SNAPSHOT_WASM: &str = "snapshot.wasm";

/// One run of customer code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// One exchange through [`PLUGIN_CWASM`]; the outcome holds a
    /// [`kiln_wasm::TrialResult`].
    Trial {
        /// The request, with its upstream stub and the plugin configuration.
        request: TrialRequest,
        /// Bounds on the plugin's instance.
        limits: TrialLimits,
    },
    /// A scenario's requests through one instance of [`PLUGIN_CWASM`],
    /// within `limits` for the whole scenario; the outcome holds a
    /// [`kiln_wasm::ScenarioResult`], whose `failure` says where the
    /// plugin trapped or hit a limit.
    Scenario {
        /// The requests to run and what answers them.
        scenario: Scenario,
        /// Bounds on the one instance, for all the requests together.
        limits: TrialLimits,
    },
    /// Whether [`PLUGIN_WASM`] and [`CANDIDATE_WASM`] answer a smoke
    /// request alike; the outcome holds a `bool`.
    Smoke {
        /// The plugin configuration both modules get.
        conf: String,
    },
    /// Runs [`PLUGIN_WASM`]'s Wizer init function within `limits` and
    /// writes the snapshot to [`SNAPSHOT_WASM`]; the outcome holds whether
    /// the snapshot answers a smoke request like the original.
    Preinit {
        /// The plugin configuration of the smoke requests.
        conf: String,
        /// Bounds on the init function's run.
        limits: TrialLimits,
    },
    /// Measures [`PLUGIN_WASM`]'s cold starts as an edge server pays them;
    /// the outcome holds a [`kiln_wasm::StartupProfile`].
    Profile {
        /// The plugin configuration of each cold start's request.
        conf: String,
        /// Cold starts to measure (at least 1; at most 5 of them JIT
        /// compiles).
        runs: u32,
    },
}

/// What a job came to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome<T> {
    /// The job ran to its end, with its result.
    Done(T),
    /// The module's fault: a trap, a limit, a missing export.
    PluginFailed(String),
    /// The host's own failure.
    HostFailed(String),
}

impl<T> From<Result<T, HostError>> for Outcome<T> {
    fn from(result: Result<T, HostError>) -> Self {
        match result {
            Ok(value) => Self::Done(value),
            Err(e) if e.is_plugin_fault() => Self::PluginFailed(e.to_string()),
            Err(e) => Self::HostFailed(e.to_string()),
        }
    }
}
