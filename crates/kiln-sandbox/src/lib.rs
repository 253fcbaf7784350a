//! kiln-sandbox runs one command of untrusted code: no network, the host's
//! files invisible except what is mounted, hard limits on memory, processes,
//! CPU, wall time, disk and log size, and nothing left behind afterwards.
//!
//! It knows nothing about Rust or builds: a toolchain describes a
//! [`SandboxCommand`], a [`Sandbox`] runs it.

use std::path::PathBuf;
use std::time::Duration;

/// Default memory limit of one build: 2 GiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Default number of processes (and threads) one build may have alive.
pub const DEFAULT_MAX_PROCESSES: u32 = 512;
/// Default CPU share of one build, in cores.
pub const DEFAULT_CPU_CORES: f64 = 2.0;
/// Default wall-clock limit of one build.
pub const DEFAULT_WALL_TIME: Duration = Duration::from_secs(300);
/// Default longest time one build may print nothing.
pub const DEFAULT_NO_OUTPUT: Duration = Duration::from_secs(120);
/// Default size of the build's private tmpfs: 2 GiB.
pub const DEFAULT_DISK_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Default cap on the captured log (stdout and stderr together): 1 MiB.
pub const DEFAULT_MAX_LOG_BYTES: usize = 1024 * 1024;

/// Hard limits of one sandboxed run. Networking is not a limit: it is never
/// available.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory of the whole process tree, in bytes (cgroup).
    pub memory_bytes: u64,
    /// Live processes and threads of the whole tree (cgroup pids).
    pub max_processes: u32,
    /// CPU bandwidth, in cores (cgroup cpu quota).
    pub cpu_cores: f64,
    /// Wall-clock time after which the whole tree is killed.
    pub wall_time: Duration,
    /// Time without a byte on stdout or stderr after which the whole tree
    /// is killed: a hung build stops long before its wall time. `None`: no
    /// such limit (the wall time still holds).
    pub no_output: Option<Duration>,
    /// Size of the writable tmpfs the build works in, in bytes.
    pub disk_bytes: u64,
    /// Bytes of combined stdout/stderr kept; the rest is dropped and a
    /// truncation marker is appended.
    pub max_log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            max_processes: DEFAULT_MAX_PROCESSES,
            cpu_cores: DEFAULT_CPU_CORES,
            wall_time: DEFAULT_WALL_TIME,
            no_output: Some(DEFAULT_NO_OUTPUT),
            disk_bytes: DEFAULT_DISK_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
        }
    }
}

/// Whether code in the sandbox may write to a [`Mount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// Visible but not writable: toolchains and dependency caches.
    ReadOnly,
    /// ## Security
    /// Code in the sandbox can change anything under a writable mount.
    /// Only the build's own scratch directory is ever mounted this way.
    ReadWrite,
}

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// Path on the host.
    pub host: PathBuf,
    /// Path where it appears inside the sandbox.
    pub guest: PathBuf,
    /// Whether the sandbox may write to it.
    pub kind: MountKind,
}

/// What to run. The environment is exactly `env`: nothing of the host's
/// environment leaks in.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxCommand {
    /// Program path as seen inside the sandbox.
    pub program: PathBuf,
    /// Arguments after the program, passed as they are (no shell).
    pub args: Vec<String>,
    /// The whole environment of the command, as name and value.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// Read-only mounts (toolchain, dependency cache) besides the scratch dir.
    pub mounts: Vec<Mount>,
    /// Sees the output as it is captured, for a live log (`None`: only the
    /// report has it).
    pub output_tap: Option<OutputTap>,
}

/// Called with each piece of output kept in the log, as it arrives: the
/// pipe (0 stdout, 1 stderr) and its bytes, which may end inside a UTF-8
/// character (the next piece of that pipe continues it). Bytes past
/// `Limits::max_log_bytes` never reach it. It runs on the task draining
/// the pipe: it must not block.
#[derive(Clone)]
pub struct OutputTap(pub std::sync::Arc<TapFn>);

/// What an [`OutputTap`] calls: the pipe and the bytes.
pub type TapFn = dyn Fn(usize, &[u8]) + Send + Sync;

impl std::fmt::Debug for OutputTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputTap")
    }
}

impl PartialEq for OutputTap {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

mod bubblewrap;
mod cgroup;
mod log;
mod output;
mod scratch;
mod seccomp;
mod sweep;
mod unsandboxed;

pub use bubblewrap::{Bubblewrap, BubblewrapConfig};
pub use output::{read_output_file, read_output_file_under};
pub use scratch::Scratch;
pub use sweep::{Swept, sweep};
pub use unsandboxed::Unsandboxed;

/// Where the build's scratch directory appears inside the sandbox.
pub const GUEST_SCRATCH: &str = "/build";

/// What the sandboxed command did. None of these is an error of kiln's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Ended by itself with this exit code.
    Exited(i32),
    /// Ended by this signal, not by one of kiln's limits.
    Signaled(i32),
    /// Killed at the wall-clock limit.
    TimedOut,
    /// Killed after printing nothing for [`Limits::no_output`].
    IdleTimedOut,
    /// Killed by the out-of-memory killer at the memory limit.
    OutOfMemory,
}

impl RunOutcome {
    /// How a command that ran to its end ended.
    pub(crate) fn of(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match status.code() {
            Some(code) => RunOutcome::Exited(code),
            None => RunOutcome::Signaled(status.signal().unwrap_or(0)),
        }
    }
}

/// What one sandboxed run did and printed.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How the command ended.
    pub outcome: RunOutcome,
    /// stdout and stderr together, capped at `Limits::max_log_bytes`.
    pub log: String,
    /// Whether output past the cap was dropped (`log` then ends with a
    /// truncation marker).
    pub log_truncated: bool,
    /// Wall-clock time from the start of the run until every process of
    /// it was gone.
    pub duration: Duration,
    /// Highest memory use of the whole process tree, in bytes, from its
    /// cgroup. `None` without a cgroup (unsandboxed runs) or when the
    /// kernel does not report it.
    pub peak_memory_bytes: Option<u64>,
}

/// kiln's own failures to run a sandbox (never the customer's code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The host cannot sandbox builds (bubblewrap, the sandbox user, root
    /// or a cgroup controller is missing); the message says what to install.
    #[error("{0}")]
    Unavailable(String),
    /// Creating or writing a cgroup file failed.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory or file.
        path: PathBuf,
        /// The error from the kernel.
        source: std::io::Error,
    },
    /// Building or loading the seccomp filter failed.
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    /// Any other I/O on the host failed.
    #[error("{context}: {source}")]
    Io {
        /// What kiln was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file the build wrote is over the size kiln reads back.
    #[error("the output {path} is larger than {limit} bytes")]
    OutputTooLarge {
        /// The output, relative to the scratch directory.
        path: PathBuf,
        /// The largest size read, in bytes.
        limit: u64,
    },
    /// The output is missing, not a regular file, or its path goes through
    /// a symlink or `..`: refused, so a build cannot make kiln read a host
    /// file in its place.
    #[error("the output {path} is not a regular file inside the build directory")]
    OutputNotAFile {
        /// The output, relative to the scratch directory.
        path: PathBuf,
    },
}

impl SandboxError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Runs commands of untrusted code. Implementations: [`Bubblewrap`] (the
/// default) and [`Unsandboxed`] (trusted local use only).
#[async_trait::async_trait]
pub trait Sandbox: Send + Sync + std::fmt::Debug {
    /// Creates the private, size-capped scratch directory of one build. The
    /// caller (outside the sandbox) then writes the source into it.
    async fn create_scratch(&self, limits: &Limits) -> Result<Scratch, SandboxError>;

    /// Runs `cmd` with `scratch` at [`GUEST_SCRATCH`]. Returns once every
    /// process of the run is gone. Dropping the future kills the run.
    async fn run(
        &self,
        cmd: &SandboxCommand,
        scratch: &Scratch,
        limits: &Limits,
    ) -> Result<RunReport, SandboxError>;

    /// Removes the scratch directory and everything in it.
    async fn remove_scratch(&self, scratch: Scratch) -> Result<(), SandboxError>;

    /// A short name for logs.
    fn name(&self) -> &'static str;
}
