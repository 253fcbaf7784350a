//! No sandbox at all, for trusted local use (`--sandbox none`): the command
//! runs on the host with the worker's rights. Guest paths are translated
//! to host paths. Every run logs a warning.

use crate::log::{self, Waited};
use crate::scratch::Scratch;
use crate::{GUEST_SCRATCH, Limits, RunOutcome, RunReport, Sandbox, SandboxCommand, SandboxError};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

/// A [`Sandbox`] that isolates nothing: runs the command on the host with
/// the worker's rights.
///
/// ## Security
/// Never for untrusted code: only for trusted local use.
#[derive(Debug)]
pub struct Unsandboxed {
    root: PathBuf,
}

impl Unsandboxed {
    /// Scratch directories go under `root`, as plain directories.
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
        let capture = log::Capture::start(&mut child, limits.max_log_bytes, cmd.output_tap.clone());
        let waited = capture.wait(&mut child, limits).await;
        if let Some(pgid) = pgid {
            // SAFETY: kill(2) on the process group this run created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let (log, log_truncated) = capture.finish().await;
        let outcome = match waited {
            Waited::Stopped(outcome) => outcome,
            Waited::Exited(status) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sh(script: &str) -> SandboxCommand {
        SandboxCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: GUEST_SCRATCH.into(),
            mounts: Vec::new(),
            output_tap: None,
        }
    }

    async fn run(script: &str, limits: &Limits) -> RunReport {
        let root = tempfile::tempdir().unwrap();
        let sandbox = Unsandboxed::new(root.path().to_owned());
        let scratch = sandbox.create_scratch(limits).await.unwrap();
        let report = sandbox.run(&sh(script), &scratch, limits).await.unwrap();
        sandbox.remove_scratch(scratch).await.unwrap();
        report
    }

    fn limits(no_output: Duration) -> Limits {
        Limits {
            wall_time: Duration::from_secs(30),
            no_output: Some(no_output),
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn silence_past_the_no_output_limit_stops_the_run() {
        let started = Instant::now();
        let report = run(
            "echo started; sleep 60",
            &limits(Duration::from_millis(500)),
        )
        .await;
        assert_eq!(report.outcome, RunOutcome::IdleTimedOut, "{}", report.log);
        assert!(report.log.contains("started"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn output_keeps_a_run_going_past_the_no_output_limit() {
        let script = "for i in 1 2 3 4 5 6; do echo $i; sleep 0.2; done";
        let report = run(script, &limits(Duration::from_millis(600))).await;
        assert_eq!(report.outcome, RunOutcome::Exited(0), "{}", report.log);
        assert!(report.duration > Duration::from_millis(1000));
    }

    #[tokio::test]
    async fn the_wall_time_still_holds_without_a_no_output_limit() {
        let limits = Limits {
            wall_time: Duration::from_millis(500),
            no_output: None,
            ..Limits::default()
        };
        let report = run("sleep 60", &limits).await;
        assert_eq!(report.outcome, RunOutcome::TimedOut);
    }
}
