//! The toolchain trait: what a language must provide to be built by kiln.
//! It describes; it never spawns the sandbox.

use kiln_domain::Language;
use kiln_sandbox::SandboxCommand;
use std::path::{Path, PathBuf};

/// Why a toolchain could not prepare or find a build. The message is a
/// sentence for the customer's build log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolchainError {
    /// The source breaks a rule (a git dependency, no manifest, ...).
    #[error("{0}")]
    Policy(String),
    /// Fetching dependencies failed (an unknown crate, a yanked version...).
    #[error("{0}")]
    Fetch(String),
    /// The package registry could not be reached: kiln's side, retried.
    #[error("{0}")]
    RegistryUnavailable(String),
    /// The build produced no output, or more than one.
    #[error("{0}")]
    Output(String),
    /// kiln's own failure (disk, a missing toolchain).
    #[error("{context}: {source}")]
    Io {
        /// What kiln was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl ToolchainError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the customer's source is at fault (the build fails) rather
    /// than kiln (the build is retried).
    pub fn is_customer_error(&self) -> bool {
        !matches!(
            self,
            ToolchainError::Io { .. } | ToolchainError::RegistryUnavailable(_)
        )
    }
}

/// What `prepare` found and made, for `build_command` and `find_output`.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The project directory, relative to the scratch root.
    pub project: PathBuf,
    /// Host directories mounted read-only into the sandbox, by guest path.
    pub mounts: Vec<(PathBuf, PathBuf)>,
    /// What preparing did, for the build log.
    pub log: String,
}

/// One language's build recipe. It describes the build; the caller runs
/// [`build_command`](Toolchain::build_command) in the sandbox.
#[async_trait::async_trait]
pub trait Toolchain: Send + Sync + std::fmt::Debug {
    /// The language whose sources this toolchain builds.
    fn language(&self) -> Language;

    /// Outside the sandbox, running no customer code: finds the project in
    /// `src` (inside the host `scratch` dir), enforces the dependency policy
    /// and fetches dependencies.
    async fn prepare(&self, scratch: &Path, src: &Path) -> Result<Prepared, ToolchainError>;

    /// The command that compiles the project inside the sandbox.
    fn build_command(&self, prepared: &Prepared) -> SandboxCommand;

    /// The single compiled module, relative to the scratch root.
    fn find_output(&self, scratch: &Path, prepared: &Prepared) -> Result<PathBuf, ToolchainError>;
}
