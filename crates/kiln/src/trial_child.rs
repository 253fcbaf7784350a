//! `kiln trial-child DIR`: runs one trial that `kiln serve` handed over
//! (see [`TrialJob`]), in the sandbox, and writes its outcome beside it.
//! A separate process, because the plugin is untrusted code and kiln's
//! server runs as root: wasmtime's limits hold the plugin, and the sandbox
//! holds whatever would get past them.

use anyhow::Context;
use kiln_wasm::{
    EngineSettings, HostEngine, HostError, TrialJob, TrialOutcome, TrialResult, run_trial,
};
use std::path::Path;

pub fn run(dir: &Path) -> anyhow::Result<()> {
    let job = std::fs::read(dir.join(TrialJob::FILE)).context("reading the trial job")?;
    let job: TrialJob = serde_json::from_slice(&job).context("parsing the trial job")?;
    let outcome = TrialOutcome::from(answer(dir, &job));
    std::fs::write(dir.join(TrialJob::OUTCOME), serde_json::to_vec(&outcome)?)
        .context("writing the trial outcome")
}

fn answer(dir: &Path, job: &TrialJob) -> Result<TrialResult, HostError> {
    // One instance in a short-lived process: wasmtime's on-demand
    // allocator, without the pool's address-space reservation.
    let engine = HostEngine::with_settings(&EngineSettings::trial(), false)?;
    let io = |what: &str, e: std::io::Error| HostError::Setup(format!("{what}: {e}"));
    let cwasm_path = dir.join(TrialJob::CWASM);
    let cwasm = match std::fs::read(&cwasm_path) {
        Ok(cwasm) => cwasm,
        Err(_) => {
            let wasm =
                std::fs::read(dir.join(TrialJob::WASM)).map_err(|e| io("reading the plugin", e))?;
            let cwasm = engine.precompile(&wasm)?;
            std::fs::write(&cwasm_path, &cwasm)
                .map_err(|e| io("writing the compiled plugin", e))?;
            cwasm
        }
    };
    let plugin = engine.load_precompiled(&cwasm)?;
    run_trial(&engine, &plugin, &job.request, &job.limits)
}
