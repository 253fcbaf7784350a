//! Trials in the build sandbox: the server hands each one to `kiln
//! trial-child` under bubblewrap, as the unprivileged sandbox user, so a
//! plugin that got past wasmtime's limits would still be held.

use super::Recent;
use kiln_sandbox::{
    GUEST_SCRATCH, Limits, Mount, MountKind, RunOutcome, Sandbox, SandboxCommand, Scratch,
    read_output_file,
};
use kiln_wasm::{HostError, TrialJob, TrialOutcome};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Where the kiln binary appears inside the sandbox.
const GUEST_PROGRAM: &str = "/kiln/kiln";
/// Compiling a large module comes before the plugin's own time limit.
const COMPILE_TIME: Duration = Duration::from_secs(60);
/// wasmtime and the compiler, besides the plugin's linear memory.
const HOST_MEMORY: u64 = 512 << 20;
const MAX_CWASM_BYTES: u64 = 256 << 20;

/// A module to try: the version's `.wasm`, or the `.cwasm` an earlier
/// child compiled it into.
pub enum Module {
    Wasm(bytes::Bytes),
    Compiled(Arc<Vec<u8>>),
}

pub struct SandboxedTrials {
    sandbox: Arc<dyn Sandbox>,
    /// A kiln binary the sandbox user can read and run.
    program: PathBuf,
    /// `.cwasm`s by version binary: only ever loaded in the sandbox.
    compiled: Mutex<Recent<Arc<Vec<u8>>>>,
}

impl SandboxedTrials {
    pub fn new(sandbox: Arc<dyn Sandbox>, program: PathBuf, capacity: usize) -> Self {
        Self {
            sandbox,
            program,
            compiled: Mutex::new(Recent::new(capacity)),
        }
    }

    fn compiled(&self) -> std::sync::MutexGuard<'_, Recent<Arc<Vec<u8>>>> {
        self.compiled.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn cached(&self, key: &str) -> Option<Arc<Vec<u8>>> {
        self.compiled().get(key)
    }

    /// Runs `job` on `module` in a fresh sandbox. `Err` is kiln's own
    /// failure; the plugin's are in the outcome.
    pub async fn run(
        &self,
        key: String,
        module: Module,
        job: &TrialJob,
    ) -> Result<TrialOutcome, String> {
        let limits = Limits {
            memory_bytes: job.limits.memory_bytes as u64 + HOST_MEMORY,
            max_processes: 64,
            cpu_cores: 1.0,
            wall_time: job.limits.wall + COMPILE_TIME,
            disk_bytes: 2 * MAX_CWASM_BYTES,
            max_log_bytes: 64 << 10,
        };
        let scratch = self
            .sandbox
            .create_scratch(&limits)
            .await
            .map_err(|e| format!("creating the trial's scratch directory: {e}"))?;
        let outcome = self.run_in(&scratch, key, module, job, &limits).await;
        if let Err(e) = self.sandbox.remove_scratch(scratch).await {
            tracing::warn!(error = %e, "removing a trial's scratch directory failed");
        }
        outcome
    }

    async fn run_in(
        &self,
        scratch: &Scratch,
        key: String,
        module: Module,
        job: &TrialJob,
        limits: &Limits,
    ) -> Result<TrialOutcome, String> {
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(scratch.path().join(name), bytes)
                .map_err(|e| format!("writing the trial's {name}: {e}"))
        };
        let job_json = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        write(TrialJob::FILE, &job_json)?;
        let compiles = match &module {
            Module::Wasm(wasm) => write(TrialJob::WASM, wasm).map(|()| true)?,
            Module::Compiled(cwasm) => write(TrialJob::CWASM, cwasm).map(|()| false)?,
        };
        let command = SandboxCommand {
            program: GUEST_PROGRAM.into(),
            args: vec!["trial-child".into(), GUEST_SCRATCH.into()],
            env: Vec::new(),
            cwd: GUEST_SCRATCH.into(),
            mounts: vec![Mount {
                host: self.program.clone(),
                guest: GUEST_PROGRAM.into(),
                kind: MountKind::ReadOnly,
            }],
        };
        let report = self
            .sandbox
            .run(&command, scratch, limits)
            .await
            .map_err(|e| format!("running the trial sandbox: {e}"))?;
        match report.outcome {
            RunOutcome::Exited(0) => {}
            RunOutcome::TimedOut => {
                return Ok(TrialOutcome::PluginFailed(
                    HostError::Timeout(job.limits.wall).to_string(),
                ));
            }
            RunOutcome::OutOfMemory => {
                return Ok(TrialOutcome::PluginFailed(format!(
                    "the trial ran out of memory (its limit is {} MiB)",
                    limits.memory_bytes >> 20
                )));
            }
            other => {
                return Err(format!(
                    "the trial process ended {other:?}: {}",
                    report.log.trim()
                ));
            }
        }
        let max_outcome = 8 * job.limits.host_bytes as u64 + (1 << 20);
        let outcome = read_output_file(scratch, Path::new(TrialJob::OUTCOME), max_outcome)
            .map_err(|e| format!("reading the trial's outcome: {e}"))?;
        let outcome: TrialOutcome = serde_json::from_slice(&outcome)
            .map_err(|e| format!("the trial's outcome is not valid: {e}"))?;
        if compiles
            && let Ok(cwasm) =
                read_output_file(scratch, Path::new(TrialJob::CWASM), MAX_CWASM_BYTES)
        {
            self.compiled().put(key, Arc::new(cwasm));
        }
        Ok(outcome)
    }
}
