//! `kiln wasm-child DIR`: one [`Job`] run inside the sandbox, as the
//! sandbox user. A process of its own, because the module is untrusted
//! code: wasmtime's limits hold it, and the sandbox holds whatever would
//! get past them. It reads its inputs from DIR and writes its outcome
//! there; nothing else of the host is visible to it.

use crate::job::{
    CANDIDATE_WASM, JOB_FILE, Job, OUTCOME_FILE, Outcome, PLUGIN_CWASM, PLUGIN_WASM, SNAPSHOT_WASM,
};
use anyhow::Context;
use kiln_wasm::{
    EngineSettings, HostEngine, HostError, Scenario, ScenarioResult, TrialLimits, TrialRequest,
    TrialResult, run_scenario, run_trial, smoke_equivalent, startup_profile,
};
use serde::Serialize;
use std::path::Path;

/// Runs the job in `dir` and writes its outcome beside it. `Err` only when
/// the job cannot be read or the outcome cannot be written.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let job = std::fs::read(dir.join(JOB_FILE)).context("reading the job")?;
    let job: Job = serde_json::from_slice(&job).context("parsing the job")?;
    let outcome = match job {
        Job::Trial { request, limits } => json(trial(dir, &request, &limits)),
        Job::Scenario { scenario, limits } => json(scenario_run(dir, &scenario, &limits)),
        Job::Smoke { conf } => json(smoke(dir, &conf)),
        Job::Preinit { conf, limits } => json(preinit(dir, &conf, &limits)),
        Job::Profile { conf, runs } => json(profile(dir, &conf, runs)),
    }?;
    std::fs::write(dir.join(OUTCOME_FILE), outcome).context("writing the outcome")
}

fn json<T: Serialize>(result: Result<T, HostError>) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&Outcome::from(result))?)
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, HostError> {
    std::fs::read(dir.join(name)).map_err(|e| HostError::Setup(format!("reading {name}: {e}")))
}

/// kiln's engine for its own runs: fuel and epoch deadlines, and, for one
/// instance in a short-lived process, the on-demand allocator without the
/// pool's address-space reservation.
fn trial_engine() -> Result<HostEngine, HostError> {
    HostEngine::with_settings(&EngineSettings::trial(), false)
}

fn trial(
    dir: &Path,
    request: &TrialRequest,
    limits: &TrialLimits,
) -> Result<TrialResult, HostError> {
    let engine = trial_engine()?;
    let cwasm = read(dir, PLUGIN_CWASM)?;
    // SAFETY: the server compiled this `.cwasm` itself, with Cranelift and
    // without running any of the module, and wrote it here before this
    // process started; no code of the module has run in this sandbox yet.
    let plugin = unsafe { engine.load_trusted(&cwasm)? };
    run_trial(&engine, &plugin, request, limits)
}

fn scenario_run(
    dir: &Path,
    scenario: &Scenario,
    limits: &TrialLimits,
) -> Result<ScenarioResult, HostError> {
    let engine = trial_engine()?;
    let cwasm = read(dir, PLUGIN_CWASM)?;
    // SAFETY: as in `trial`: the server compiled this `.cwasm` itself and
    // wrote it here before this process started.
    let plugin = unsafe { engine.load_trusted(&cwasm)? };
    Ok(run_scenario(&engine, &plugin, scenario, limits)?.0)
}

fn smoke(dir: &Path, conf: &str) -> Result<bool, HostError> {
    let engine = trial_engine()?;
    let original = engine.compile(&read(dir, PLUGIN_WASM)?)?;
    let candidate = engine.compile(&read(dir, CANDIDATE_WASM)?)?;
    smoke_equivalent(&engine, &original, &candidate, conf)
}

fn preinit(dir: &Path, conf: &str, limits: &TrialLimits) -> Result<bool, HostError> {
    let engine = trial_engine()?;
    let wasm = read(dir, PLUGIN_WASM)?;
    let snapshot = kiln_wasm::preinit::preinitialize(&engine, &wasm, limits)?
        .ok_or_else(|| HostError::MissingExport("wizer.initialize".into()))?;
    std::fs::write(dir.join(SNAPSHOT_WASM), &snapshot)
        .map_err(|e| HostError::Setup(format!("writing the snapshot: {e}")))?;
    let (original, snapshot) = (engine.compile(&wasm)?, engine.compile(&snapshot)?);
    smoke_equivalent(&engine, &original, &snapshot, conf)
}

fn profile(dir: &Path, conf: &str, runs: u32) -> Result<kiln_wasm::StartupProfile, HostError> {
    // As edge servers run kiln's `.cwasm`: no fuel, the pooling allocator.
    let engine = HostEngine::edge()?;
    startup_profile(&engine, &read(dir, PLUGIN_WASM)?, conf, runs)
}
