//! No sandbox at all, for trusted local use (`--sandbox none`): the command
//! runs on the host with the worker's rights. Guest paths are translated
//! to host paths. Every run logs a warning.

use crate::log;
use crate::scratch::Scratch;
use crate::{GUEST_SCRATCH, Limits, RunOutcome, RunReport, Sandbox, SandboxCommand, SandboxError};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

#[derive(Debug)]
pub struct Unsandboxed {
    root: PathBuf,
}

impl Unsandboxed {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
}

/// Maps a guest path (or a string containing one) to the host.
fn translate(text: &str, cmd: &SandboxCommand, scratch: &Path) -> String {
    let mut out = text.replace(GUEST_SCRATCH, &scratch.display().to_string());
    for mount in &cmd.mounts {
        out = out.replace(
            &mount.guest.display().to_string(),
            &mount.host.display().to_string(),
        );
    }
    out
}

#[async_trait::async_trait]
impl Sandbox for Unsandboxed {
    async fn create_scratch(&self, _limits: &Limits) -> Result<Scratch, SandboxError> {
        Scratch::plain(&self.root)
    }

    async fn run(
        &self,
        cmd: &SandboxCommand,
        scratch: &Scratch,
        limits: &Limits,
    ) -> Result<RunReport, SandboxError> {
        tracing::warn!(
            "building WITHOUT a sandbox (--sandbox none): the build runs with this worker's rights"
        );
        let dir = scratch.path();
        let program = translate(&cmd.program.display().to_string(), cmd, dir);
        let mut command = tokio::process::Command::new(program);
        command
            .args(cmd.args.iter().map(|a| translate(a, cmd, dir)))
            .env_clear()
            .envs(cmd.env.iter().map(|(k, v)| (k, translate(v, cmd, dir))))
            .current_dir(translate(&cmd.cwd.display().to_string(), cmd, dir))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| SandboxError::io("starting the build", e))?;
        let pgid = child.id().map(|p| p as i32);
        let capture = log::Capture::start(&mut child, limits.max_log_bytes);
        let waited = tokio::time::timeout(limits.wall_time, child.wait()).await;
        if let Some(pgid) = pgid {
            // SAFETY: kill(2) on the process group this run created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let (log, log_truncated) = capture.finish().await;
        let outcome = match waited {
            Err(_) => RunOutcome::TimedOut,
            Ok(status) => {
                RunOutcome::of(status.map_err(|e| SandboxError::io("waiting for the build", e))?)
            }
        };
        Ok(RunReport {
            outcome,
            log,
            log_truncated,
            duration: started.elapsed(),
            peak_memory_bytes: None,
        })
    }

    async fn remove_scratch(&self, scratch: Scratch) -> Result<(), SandboxError> {
        scratch.remove()
    }

    fn name(&self) -> &'static str {
        "none"
    }
}
