//! Trials in the build sandbox: the server hands each one to `kiln
//! trial-child` under bubblewrap, as the unprivileged sandbox user, so a
//! plugin that got past wasmtime's limits would still be held.

use super::Recent;
use kiln_sandbox::{
    GUEST_SCRATCH, Limits, Mount, MountKind, RunOutcome, Sandbox, SandboxCommand, Scratch,
    read_output_file,
};
use kiln_wasm::{TrialJob, TrialOutcome};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Where the kiln binary appears inside the sandbox.
const GUEST_PROGRAM: &str = "/kiln/kiln";
/// The longest a plugin's compilation may take.
const COMPILE_TIME: Duration = Duration::from_secs(60);
/// Loading the `.cwasm` and starting, besides the plugin's own time limit.
const START_TIME: Duration = Duration::from_secs(10);
/// wasmtime and the compiler, besides the plugin's linear memory.
const HOST_MEMORY: u64 = 512 << 20;
const MAX_CWASM_BYTES: u64 = 256 << 20;
/// Larger `.cwasm`s are compiled again at every trial rather than kept in
/// the server's memory.
const MAX_CACHED_CWASM_BYTES: usize = 32 << 20;
/// What of a failing child's own words goes into the server's log.
const MAX_LOGGED_BYTES: usize = 4 << 10;

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

    /// Runs `job` on `module` in a fresh sandbox: first, for a `.wasm`,
    /// a step that only compiles it (its `.cwasm` is kept for the next
    /// trials, and no code of the plugin has run yet to tamper with it),
    /// then the trial. `Err` is kiln's own failure; the plugin's are in the
    /// outcome.
    pub async fn run(
        &self,
        key: String,
        module: Module,
        job: &TrialJob,
    ) -> Result<TrialOutcome, String> {
        let limits = Limits {
            memory_bytes: job.limits.memory_bytes as u64 + HOST_MEMORY,
            // wasmtime compiles on a thread per core of the host.
            max_processes: kiln_sandbox::DEFAULT_MAX_PROCESSES,
            cpu_cores: 1.0,
            wall_time: COMPILE_TIME,
            // A trial prints little; its wall time alone bounds it.
            no_output: None,
            disk_bytes: 2 * MAX_CWASM_BYTES,
            max_log_bytes: 64 << 10,
        };
        let scratch = self
            .sandbox
            .create_scratch(&limits)
            .await
            .map_err(|e| format!("creating the trial's scratch directory: {e}"))?;
        let outcome = self.run_in(&scratch, key, module, job, limits).await;
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
        mut limits: Limits,
    ) -> Result<TrialOutcome, String> {
        match module {
            Module::Compiled(cwasm) => write(scratch, TrialJob::CWASM, &cwasm).await?,
            Module::Wasm(wasm) => {
                write(scratch, TrialJob::WASM, &wasm).await?;
                let outcome = self.step(scratch, true, &limits).await?;
                if let Some(stopped) = stopped(outcome, "compiling the plugin", &limits)? {
                    return Ok(stopped);
                }
                let cwasm = read_output_file(scratch, Path::new(TrialJob::CWASM), MAX_CWASM_BYTES)
                    .map_err(|e| format!("reading the compiled plugin: {e}"))?;
                if cwasm.len() <= MAX_CACHED_CWASM_BYTES {
                    self.compiled().put(key, Arc::new(cwasm));
                }
            }
        }
        let job_json = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        write(scratch, TrialJob::FILE, &job_json).await?;
        limits.wall_time = job.limits.wall + START_TIME;
        let outcome = self.step(scratch, false, &limits).await?;
        if let Some(stopped) = stopped(outcome, "the trial", &limits)? {
            return Ok(stopped);
        }
        let max_outcome = 8 * job.limits.host_bytes as u64 + (1 << 20);
        let outcome = read_output_file(scratch, Path::new(TrialJob::OUTCOME), max_outcome)
            .map_err(|e| format!("reading the trial's outcome: {e}"))?;
        serde_json::from_slice(&outcome)
            .map_err(|e| format!("the trial's outcome is not valid: {e}"))
    }

    /// One run of `kiln trial-child` in the scratch directory.
    async fn step(
        &self,
        scratch: &Scratch,
        compile: bool,
        limits: &Limits,
    ) -> Result<RunOutcome, String> {
        let mut args = vec!["trial-child".to_owned()];
        if compile {
            args.push("--compile".into());
        }
        args.push(GUEST_SCRATCH.into());
        let command = SandboxCommand {
            program: GUEST_PROGRAM.into(),
            args,
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
        if !matches!(report.outcome, RunOutcome::Exited(0)) {
            tracing::warn!(outcome = ?report.outcome, log = capped(&report.log), "a trial step failed");
        }
        Ok(report.outcome)
    }
}

async fn write(scratch: &Scratch, name: &str, bytes: &[u8]) -> Result<(), String> {
    tokio::fs::write(scratch.path().join(name), bytes)
        .await
        .map_err(|e| format!("writing the trial's {name}: {e}"))
}

/// How a step that did not run to its end came out: the plugin's fault at
/// the sandbox's time or memory limit, kiln's otherwise. `None` when it ran
/// to its end.
fn stopped(
    outcome: RunOutcome,
    step: &str,
    limits: &Limits,
) -> Result<Option<TrialOutcome>, String> {
    let failed = |message| Ok(Some(TrialOutcome::PluginFailed(message)));
    match outcome {
        RunOutcome::Exited(0) => Ok(None),
        RunOutcome::TimedOut => failed(format!(
            "{step} took longer than {:?} and was stopped",
            limits.wall_time
        )),
        RunOutcome::OutOfMemory => failed(format!(
            "{step} needed more than {} MiB of memory",
            limits.memory_bytes >> 20
        )),
        other => Err(format!("{step} ended {other:?}")),
    }
}

/// At most [`MAX_LOGGED_BYTES`] of `text`: what the sandboxed child says is
/// untrusted, and the server's log is not its to fill.
pub(super) fn capped(text: &str) -> &str {
    let mut end = text.len().min(MAX_LOGGED_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
