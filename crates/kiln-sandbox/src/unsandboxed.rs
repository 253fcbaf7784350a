//! No sandbox at all, for trusted local use (`--sandbox none`): the command
//! runs on the host with the worker's rights. Guest paths are translated
//! to host paths. Every run logs a warning.

use crate::log::{self, LogBuffer};
use crate::scratch::Scratch;
use crate::{GUEST_SCRATCH, Limits, RunOutcome, RunReport, Sandbox, SandboxCommand, SandboxError};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
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
        let buffer = Arc::new(Mutex::new(LogBuffer::default()));
        let out = tokio::spawn(log::drain(
            child.stdout.take().expect("piped"),
            buffer.clone(),
            limits.max_log_bytes,
        ));
        let err = tokio::spawn(log::drain(
            child.stderr.take().expect("piped"),
            buffer.clone(),
            limits.max_log_bytes,
        ));
        let waited = tokio::time::timeout(limits.wall_time, child.wait()).await;
        if let Some(pgid) = pgid {
            // SAFETY: kill(2) on the process group this run created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = tokio::join!(out, err);
        let outcome = match waited {
            Err(_) => RunOutcome::TimedOut,
            Ok(status) => {
                let status = status.map_err(|e| SandboxError::io("waiting for the build", e))?;
                match (status.code(), status.signal()) {
                    (Some(code), _) => RunOutcome::Exited(code),
                    (_, signal) => RunOutcome::Signaled(signal.unwrap_or(0)),
                }
            }
        };
        let (log, log_truncated) = log::finish(&buffer, limits.max_log_bytes);
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
