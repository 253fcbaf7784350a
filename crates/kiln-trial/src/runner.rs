//! Runs one [`Job`] in the sandbox: a fresh scratch directory with the
//! job and its modules, `kiln wasm-child` in it as the sandbox user under
//! the job's limits, then the outcome read back as untrusted input.

use crate::job::{
    CANDIDATE_WASM, JOB_FILE, Job, OUTCOME_FILE, Outcome, PLUGIN_CWASM, PLUGIN_WASM, SNAPSHOT_WASM,
};
use kiln_sandbox::{
    GUEST_SCRATCH, Limits, Mount, MountKind, RunOutcome, Sandbox, SandboxCommand, SandboxError,
    Scratch, read_output_file,
};
use kiln_wasm::{Scenario, ScenarioResult, StartupProfile, TrialLimits, TrialRequest, TrialResult};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the kiln binary appears inside the sandbox.
const GUEST_PROGRAM: &str = "/kiln/kiln";
/// wasmtime and the compiler, besides the module's linear memory.
const HOST_MEMORY_BYTES: u64 = 512 << 20;
/// The longest compiling one module may take in a child.
const COMPILE_TIME: Duration = Duration::from_secs(60);
/// Starting the child and loading a module, besides the job's own time.
const START_TIME: Duration = Duration::from_secs(10);
/// Linear memory of the smoke requests' instances ([`TrialLimits`]'
/// default, which [`kiln_wasm::smoke_equivalent`] runs with).
const SMOKE_MEMORY_BYTES: u64 = 64 << 20;
/// An outcome's JSON besides what the module handed the host to keep.
const OUTCOME_BYTES: u64 = 1 << 20;
/// What of a failing child's own words goes into kiln's log.
const MAX_LOGGED_BYTES: usize = 4 << 10;
/// What a child may print; it prints little of its own.
const MAX_CHILD_LOG_BYTES: usize = 64 << 10;

/// kiln's failure to run a job; the module's failures are in its
/// [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The sandbox could not make the scratch directory, run the child, or
    /// hand back its outcome file (missing, too large, not a regular file).
    #[error("running the sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    /// Writing the job's files, or reading the outcome off the async
    /// threads, failed.
    #[error("{context}: {source}")]
    Io {
        /// What kiln was doing, e.g. `writing job.json for the trial`.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The child exited non-zero, was signaled or went idle: kiln's
    /// failure, unlike a stop at the time or memory limit, which is the
    /// module's.
    #[error("{step} ended {outcome:?}")]
    Ended {
        /// The job, as logs name it (`the trial`, `pre-initialization`, …).
        step: &'static str,
        /// How the sandbox says the child ended.
        outcome: RunOutcome,
    },
    /// The outcome file does not parse as the job's [`Outcome`]; the child
    /// is untrusted, so this is refused, not trusted in part.
    #[error("the outcome of {step} is not valid: {source}")]
    Outcome {
        /// The job, as logs name it.
        step: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// Runs jobs in one sandbox with one kiln binary.
#[derive(Debug, Clone)]
pub struct Runner {
    sandbox: Arc<dyn Sandbox>,
    /// A kiln binary the sandbox user can read and run.
    program: PathBuf,
}

/// The limits of one child: its own memory, time and disk, a CPU core,
/// and processes enough for wasmtime's compiler threads. It prints
/// little, so only its time limit bounds it.
fn limits(memory_bytes: u64, wall_time: Duration, disk_bytes: u64) -> Limits {
    Limits {
        memory_bytes,
        max_processes: kiln_sandbox::DEFAULT_MAX_PROCESSES,
        cpu_cores: 1.0,
        wall_time,
        disk_bytes,
        max_log_bytes: MAX_CHILD_LOG_BYTES,
        no_output: None,
    }
}

impl Runner {
    /// Jobs in `sandbox`, each as `program wasm-child`; `program` is a kiln
    /// binary the sandbox user can read and run, mounted read-only.
    pub fn new(sandbox: Arc<dyn Sandbox>, program: PathBuf) -> Self {
        Self { sandbox, program }
    }

    /// The sandbox's short name, for logs.
    pub fn sandbox_name(&self) -> &'static str {
        self.sandbox.name()
    }

    /// One exchange through `cwasm`, which the caller compiled itself with
    /// the trial engine's settings.
    pub async fn trial(
        &self,
        cwasm: &[u8],
        request: TrialRequest,
        trial: TrialLimits,
    ) -> Result<Outcome<TrialResult>, RunnerError> {
        let max_outcome = 8 * trial.host_bytes as u64 + OUTCOME_BYTES;
        let limits = limits(
            trial.memory_bytes as u64 + HOST_MEMORY_BYTES,
            trial.wall + START_TIME,
            cwasm.len() as u64 + max_outcome,
        );
        let job = Job::Trial {
            request,
            limits: trial,
        };
        let inputs = [(PLUGIN_CWASM, cwasm)];
        let ran = self.run("the trial", &job, &inputs, &limits, max_outcome, None);
        Ok(ran.await?.0)
    }

    /// A scenario through `cwasm` (compiled by the caller with the trial
    /// engine's settings), within `trial` for the whole scenario.
    pub async fn scenario(
        &self,
        cwasm: &[u8],
        scenario: Scenario,
        trial: TrialLimits,
    ) -> Result<Outcome<ScenarioResult>, RunnerError> {
        // Each exchange repeats what the plugin kept and what the scenario
        // gave (origin responses, call-out answers), which the API bounds.
        let given = serde_json::to_vec(&scenario).map_or(0, |j| j.len() as u64);
        let max_outcome = 8 * trial.host_bytes as u64 + 4 * given + OUTCOME_BYTES;
        let limits = limits(
            trial.memory_bytes as u64 + HOST_MEMORY_BYTES,
            trial.wall + START_TIME,
            cwasm.len() as u64 + max_outcome,
        );
        let job = Job::Scenario {
            scenario,
            limits: trial,
        };
        let inputs = [(PLUGIN_CWASM, cwasm)];
        let ran = self.run("the scenario", &job, &inputs, &limits, max_outcome, None);
        Ok(ran.await?.0)
    }

    /// Whether `candidate` answers a smoke request like `original`.
    pub async fn smoke(
        &self,
        original: &[u8],
        candidate: &[u8],
        conf: &str,
    ) -> Result<Outcome<bool>, RunnerError> {
        let limits = limits(
            2 * SMOKE_MEMORY_BYTES + HOST_MEMORY_BYTES,
            2 * COMPILE_TIME + START_TIME,
            (original.len() + candidate.len()) as u64 + OUTCOME_BYTES,
        );
        let job = Job::Smoke { conf: conf.into() };
        let inputs = [(PLUGIN_WASM, original), (CANDIDATE_WASM, candidate)];
        let ran = self.run(
            "the smoke request",
            &job,
            &inputs,
            &limits,
            OUTCOME_BYTES,
            None,
        );
        Ok(ran.await?.0)
    }

    /// Pre-initializes `wasm` within `init`: whether the snapshot answers
    /// a smoke request like the original, and the snapshot (at most
    /// `max_snapshot` bytes) when it was written.
    pub async fn preinit(
        &self,
        wasm: &[u8],
        conf: &str,
        init: TrialLimits,
        max_snapshot: u64,
    ) -> Result<(Outcome<bool>, Option<Vec<u8>>), RunnerError> {
        let limits = limits(
            init.memory_bytes as u64 + 2 * SMOKE_MEMORY_BYTES + HOST_MEMORY_BYTES,
            init.wall + 3 * COMPILE_TIME + START_TIME,
            wasm.len() as u64 + max_snapshot + OUTCOME_BYTES,
        );
        let job = Job::Preinit {
            conf: conf.into(),
            limits: init,
        };
        let inputs = [(PLUGIN_WASM, wasm)];
        let snapshot = Some((SNAPSHOT_WASM, max_snapshot));
        self.run(
            "pre-initialization",
            &job,
            &inputs,
            &limits,
            OUTCOME_BYTES,
            snapshot,
        )
        .await
    }

    /// The startup profile of `wasm` over `runs` cold starts.
    pub async fn profile(
        &self,
        wasm: &[u8],
        conf: &str,
        runs: u32,
    ) -> Result<Outcome<StartupProfile>, RunnerError> {
        let limits = limits(
            SMOKE_MEMORY_BYTES + HOST_MEMORY_BYTES,
            2 * COMPILE_TIME + START_TIME,
            wasm.len() as u64 + OUTCOME_BYTES,
        );
        let job = Job::Profile {
            conf: conf.into(),
            runs,
        };
        let inputs = [(PLUGIN_WASM, wasm)];
        let ran = self.run(
            "the startup profile",
            &job,
            &inputs,
            &limits,
            OUTCOME_BYTES,
            None,
        );
        Ok(ran.await?.0)
    }

    /// Runs `job` in a fresh scratch directory, removed afterwards.
    async fn run<T: DeserializeOwned + Send + 'static>(
        &self,
        step: &'static str,
        job: &Job,
        inputs: &[(&str, &[u8])],
        limits: &Limits,
        max_outcome: u64,
        output: Option<(&'static str, u64)>,
    ) -> Result<(Outcome<T>, Option<Vec<u8>>), RunnerError> {
        let scratch = self.sandbox.create_scratch(limits).await?;
        let ran = self
            .run_in(&scratch, step, job, inputs, limits)
            .await
            .map(|stopped| stopped.map(|s| (s, None)));
        let (scratch, read) = match ran {
            Ok(None) => read_outcome(scratch, step, max_outcome, output).await,
            Ok(Some(stopped)) => (Some(scratch), Ok(stopped)),
            Err(e) => (Some(scratch), Err(e)),
        };
        // A scratch directory lost in a failed read was removed as it dropped.
        if let Some(scratch) = scratch
            && let Err(e) = self.sandbox.remove_scratch(scratch).await
        {
            tracing::warn!(error = %e, "removing a child's scratch directory failed");
        }
        read
    }

    /// Writes the inputs and runs the child; `Some` when a limit stopped it.
    async fn run_in<T>(
        &self,
        scratch: &Scratch,
        step: &'static str,
        job: &Job,
        inputs: &[(&str, &[u8])],
        limits: &Limits,
    ) -> Result<Option<Outcome<T>>, RunnerError> {
        let job = serde_json::to_vec(job).expect("a job serializes");
        for (name, bytes) in inputs.iter().chain([&(JOB_FILE, job.as_slice())]) {
            tokio::fs::write(scratch.path().join(name), bytes)
                .await
                .map_err(|source| RunnerError::Io {
                    context: format!("writing {name} for {step}"),
                    source,
                })?;
        }
        let report = self.sandbox.run(&self.command(), scratch, limits).await?;
        if report.outcome != RunOutcome::Exited(0) {
            // What a child says is untrusted: kiln's log is not its to fill.
            let log = kiln_domain::text::cap(&report.log, MAX_LOGGED_BYTES);
            tracing::warn!(step, outcome = ?report.outcome, log, "a sandboxed child did not finish");
        }
        stopped(report.outcome, step, limits)
    }

    fn command(&self) -> SandboxCommand {
        SandboxCommand {
            program: GUEST_PROGRAM.into(),
            args: vec!["wasm-child".into(), GUEST_SCRATCH.into()],
            env: Vec::new(),
            cwd: GUEST_SCRATCH.into(),
            mounts: vec![Mount {
                host: self.program.clone(),
                guest: GUEST_PROGRAM.into(),
                kind: MountKind::ReadOnly,
            }],
            output_tap: None,
        }
    }
}

/// How a child that did not run to its end came out: the module's fault
/// at the sandbox's time or memory limit, kiln's otherwise. `None` when it
/// ran to its end.
fn stopped<T>(
    outcome: RunOutcome,
    step: &'static str,
    limits: &Limits,
) -> Result<Option<Outcome<T>>, RunnerError> {
    let failed = |message| Ok(Some(Outcome::PluginFailed(message)));
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
        outcome => Err(RunnerError::Ended { step, outcome }),
    }
}

/// Reads the outcome, and the named output when the job succeeded, off
/// the async threads; gives the scratch directory back for removal.
async fn read_outcome<T: DeserializeOwned + Send + 'static>(
    scratch: Scratch,
    step: &'static str,
    max_outcome: u64,
    output: Option<(&'static str, u64)>,
) -> (
    Option<Scratch>,
    Result<(Outcome<T>, Option<Vec<u8>>), RunnerError>,
) {
    let read = tokio::task::spawn_blocking(move || {
        let read = read_files::<T>(&scratch, step, max_outcome, output);
        (scratch, read)
    })
    .await;
    match read {
        Ok((scratch, read)) => (Some(scratch), read),
        Err(e) => (
            None,
            Err(RunnerError::Io {
                context: format!("reading the outcome of {step}"),
                source: std::io::Error::other(e),
            }),
        ),
    }
}

fn read_files<T: DeserializeOwned>(
    scratch: &Scratch,
    step: &'static str,
    max_outcome: u64,
    output: Option<(&'static str, u64)>,
) -> Result<(Outcome<T>, Option<Vec<u8>>), RunnerError> {
    let outcome = read_output_file(scratch, Path::new(OUTCOME_FILE), max_outcome)?;
    let outcome: Outcome<T> =
        serde_json::from_slice(&outcome).map_err(|source| RunnerError::Outcome { step, source })?;
    let file = match (&outcome, output) {
        (Outcome::Done(_), Some((name, max_bytes))) => {
            Some(read_output_file(scratch, Path::new(name), max_bytes)?)
        }
        _ => None,
    };
    Ok((outcome, file))
}
