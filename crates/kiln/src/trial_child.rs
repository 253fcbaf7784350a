//! `kiln trial-child [--compile] DIR`: one step of a trial that `kiln
//! serve` handed over (see [`TrialJob`]), run in the sandbox. A separate
//! process, because the plugin is untrusted code and kiln's server runs as
//! root: wasmtime's limits hold the plugin, and the sandbox holds whatever
//! would get past them.
//!
//! `--compile` turns the `.wasm` into the `.cwasm` and runs nothing of the
//! plugin, so the server can keep that `.cwasm` for later trials; without
//! it, the child runs the job on the `.cwasm` and writes the outcome.

use anyhow::Context;
use kiln_wasm::{
    EngineSettings, HostEngine, HostError, TrialJob, TrialOutcome, TrialResult, run_trial,
};
use std::path::Path;

pub fn run(dir: &Path, compile: bool) -> anyhow::Result<()> {
    // One instance in a short-lived process: wasmtime's on-demand
    // allocator, without the pool's address-space reservation.
    let engine = HostEngine::with_settings(&EngineSettings::trial(), false)?;
    if compile {
        let wasm = std::fs::read(dir.join(TrialJob::WASM)).context("reading the plugin")?;
        let cwasm = engine.precompile(&wasm)?;
        return std::fs::write(dir.join(TrialJob::CWASM), cwasm)
            .context("writing the compiled plugin");
    }
    let job = std::fs::read(dir.join(TrialJob::FILE)).context("reading the trial job")?;
    let job: TrialJob = serde_json::from_slice(&job).context("parsing the trial job")?;
    let outcome = TrialOutcome::from(answer(&engine, dir, &job));
    std::fs::write(dir.join(TrialJob::OUTCOME), serde_json::to_vec(&outcome)?)
        .context("writing the trial outcome")
}

fn answer(engine: &HostEngine, dir: &Path, job: &TrialJob) -> Result<TrialResult, HostError> {
    let cwasm = std::fs::read(dir.join(TrialJob::CWASM))
        .map_err(|e| HostError::Setup(format!("reading the compiled plugin: {e}")))?;
    let plugin = engine.load_precompiled(&cwasm)?;
    run_trial(engine, &plugin, &job.request, &job.limits)
}
