//! A sandbox whose runs end as a test scripts them: the worker's handling
//! of a build killed for memory or time, or of a post-build step that
//! fails, is tested without bubblewrap. Runs nobody scripted run for real,
//! unsandboxed (never for untrusted code: tests run their own commands).

use kiln_sandbox::{
    Limits, RunOutcome, RunReport, Sandbox, SandboxCommand, SandboxError, Scratch, Unsandboxed,
};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// What the next run of a [`ScriptedSandbox`] does.
#[derive(Debug, Clone)]
pub enum Run {
    /// Runs the command, unsandboxed.
    Real,
    /// Ends at once as `outcome`, with `log` as its output; the command is
    /// not run.
    Ends {
        /// How the run ends, such as [`RunOutcome::OutOfMemory`].
        outcome: RunOutcome,
        /// Its output.
        log: String,
    },
}

impl Run {
    /// A run that ends `outcome` without output.
    pub fn ends(outcome: RunOutcome) -> Self {
        Self::Ends {
            outcome,
            log: String::new(),
        }
    }
}

/// Runs commands as scripted, one [`Run`] per run in order, then for real.
#[derive(Debug)]
pub struct ScriptedSandbox {
    real: Unsandboxed,
    script: Mutex<VecDeque<Run>>,
}

impl ScriptedSandbox {
    /// Scratch directories go under `root`; runs follow `script`.
    pub fn new(root: PathBuf, script: impl IntoIterator<Item = Run>) -> Self {
        Self {
            real: Unsandboxed::new(root),
            script: Mutex::new(script.into_iter().collect()),
        }
    }
}

#[async_trait::async_trait]
impl Sandbox for ScriptedSandbox {
    async fn create_scratch(&self, limits: &Limits) -> Result<Scratch, SandboxError> {
        self.real.create_scratch(limits).await
    }

    async fn run(
        &self,
        cmd: &SandboxCommand,
        scratch: &Scratch,
        limits: &Limits,
    ) -> Result<RunReport, SandboxError> {
        let next = self.script.lock().unwrap().pop_front().unwrap_or(Run::Real);
        match next {
            Run::Real => self.real.run(cmd, scratch, limits).await,
            Run::Ends { outcome, log } => Ok(RunReport {
                outcome,
                log,
                log_truncated: false,
                duration: Duration::ZERO,
                peak_memory_bytes: None,
            }),
        }
    }

    async fn remove_scratch(&self, scratch: Scratch) -> Result<(), SandboxError> {
        self.real.remove_scratch(scratch).await
    }

    fn name(&self) -> &'static str {
        "scripted"
    }
}
