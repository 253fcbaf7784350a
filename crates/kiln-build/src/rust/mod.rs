//! Rust: `cargo build --release --target wasm32-wasip1` of a `cdylib`,
//! with dependencies from crates.io only, vendored outside the sandbox and
//! mounted read-only into it.

mod fetch;
mod policy;

use crate::toolchain::{Prepared, Toolchain, ToolchainError};
use kiln_domain::Language;
use kiln_sandbox::{GUEST_SCRATCH, Mount, MountKind, SandboxCommand};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use policy::{check_policy, locate_project};

/// The target triple every Rust build compiles for.
pub const TARGET: &str = "wasm32-wasip1";
/// Where the toolchain appears inside the sandbox.
const GUEST_TOOLCHAIN: &str = "/toolchain";
/// Where the vendored dependencies appear inside the sandbox.
const GUEST_DEPS: &str = "/deps";

/// Where the Rust toolchain and the dependency cache live on the host, and
/// how dependencies are fetched and compiled.
#[derive(Debug, Clone)]
pub struct RustConfig {
    /// A toolchain the sandbox user can read: bin/cargo, bin/rustc and the
    /// wasm32-wasip1 standard library.
    pub toolchain_dir: PathBuf,
    /// The shared dependency cache (downloads and vendored trees).
    pub cache_dir: PathBuf,
    /// Longest a dependency fetch may take.
    pub fetch_timeout: Duration,
    /// Parallel compile jobs inside the sandbox.
    pub jobs: u32,
    /// An HTTP(S) proxy through which dependencies are downloaded.
    pub registry_proxy: Option<String>,
}

impl Default for RustConfig {
    fn default() -> Self {
        Self {
            toolchain_dir: PathBuf::from("/opt/kiln/toolchain"),
            cache_dir: PathBuf::from("/var/lib/kiln/cache"),
            fetch_timeout: Duration::from_secs(300),
            jobs: 2,
            registry_proxy: None,
        }
    }
}

/// The [`Toolchain`] for Rust: a `cdylib` built with `cargo build --offline
/// --locked` for [`TARGET`], from crates.io dependencies vendored beforehand.
#[derive(Debug)]
pub struct RustToolchain {
    config: RustConfig,
}

impl RustToolchain {
    /// Checks that the toolchain is usable, so a worker refuses to start
    /// rather than fail every build.
    pub fn new(config: RustConfig) -> Result<Self, ToolchainError> {
        let cargo = config.toolchain_dir.join("bin/cargo");
        let std = config.toolchain_dir.join("lib/rustlib").join(TARGET);
        if !cargo.exists() || !std.exists() {
            return Err(ToolchainError::io(
                format!(
                    "no Rust toolchain with the {TARGET} target at {}; run scripts/install-prereqs",
                    config.toolchain_dir.display()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        fetch::create_cache(&config.cache_dir)?;
        Ok(Self { config })
    }
}

fn guest(rel: &Path) -> PathBuf {
    Path::new(GUEST_SCRATCH).join(rel)
}

/// How many of the modules a build produced too many of are named in its
/// error.
const NAMED_OUTPUTS: usize = 5;

/// Runs `work` (walks and reads of the customer's tree, as large as the
/// archive limits allow) on the blocking pool, so the API and the other
/// builders sharing the runtime go on meanwhile.
async fn off_the_async_threads<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ToolchainError> + Send + 'static,
) -> Result<T, ToolchainError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ToolchainError::io("checking the source", std::io::Error::other(e)))?
}

#[async_trait::async_trait]
impl Toolchain for RustToolchain {
    fn language(&self) -> Language {
        Language::Rust
    }

    async fn prepare(&self, scratch: &Path, src: &Path) -> Result<Prepared, ToolchainError> {
        let tree = src.to_owned();
        let project = off_the_async_threads(move || {
            let project = locate_project(&tree)?;
            check_policy(&tree)?;
            Ok(project)
        })
        .await?;
        let mut log = format!("[kiln] project: {}\n", relative(src, &project).display());
        let vendor = fetch::vendor(&self.config, &project, &mut log).await?;
        // Resolving may have written a Cargo.lock: the tree is checked again.
        let (tree, home) = (src.to_owned(), scratch.to_owned());
        off_the_async_threads(move || {
            check_policy(&tree)?;
            fetch::write_build_home(&home)
        })
        .await?;
        let mut mounts = Vec::new();
        if let Some(vendor) = vendor {
            mounts.push((vendor, PathBuf::from(GUEST_DEPS)));
        }
        Ok(Prepared {
            project: relative(scratch, &project),
            mounts,
            log,
        })
    }

    fn build_command(&self, prepared: &Prepared) -> SandboxCommand {
        let toolchain = Path::new(GUEST_TOOLCHAIN);
        let scratch = Path::new(GUEST_SCRATCH);
        let env = [
            (
                "PATH",
                format!("{}:/usr/bin:/bin", toolchain.join("bin").display()),
            ),
            ("HOME", scratch.join("home").display().to_string()),
            (
                "CARGO_HOME",
                scratch.join("cargo-home").display().to_string(),
            ),
            (
                "CARGO_TARGET_DIR",
                scratch.join("target").display().to_string(),
            ),
            ("RUSTC", toolchain.join("bin/rustc").display().to_string()),
            ("TMPDIR", scratch.join("tmp").display().to_string()),
            ("CARGO_TERM_COLOR", "never".into()),
            ("CARGO_INCREMENTAL", "0".into()),
            ("CARGO_BUILD_JOBS", self.config.jobs.to_string()),
        ];
        let mut mounts = vec![Mount {
            host: self.config.toolchain_dir.clone(),
            guest: toolchain.to_owned(),
            kind: MountKind::ReadOnly,
        }];
        mounts.extend(prepared.mounts.iter().map(|(host, guest)| Mount {
            host: host.clone(),
            guest: guest.clone(),
            kind: MountKind::ReadOnly,
        }));
        let mut args: Vec<String> = [
            "build",
            "--release",
            "--target",
            TARGET,
            "--offline",
            "--locked",
        ]
        .map(String::from)
        .to_vec();
        if !prepared.mounts.is_empty() {
            // Crates come from the read-only vendored tree. Given as
            // arguments (not a file) so every sandbox can map the path.
            args.extend([
                "--config".into(),
                "source.crates-io.replace-with=\"kiln-vendored\"".into(),
                "--config".into(),
                format!("source.kiln-vendored.directory=\"{GUEST_DEPS}\""),
            ]);
        }
        SandboxCommand {
            program: toolchain.join("bin/cargo"),
            args,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            cwd: guest(&prepared.project),
            mounts,
            output_tap: None,
        }
    }

    fn find_output(&self, scratch: &Path, _prepared: &Prepared) -> Result<PathBuf, ToolchainError> {
        let dir = Path::new("target").join(TARGET).join("release");
        let entries = std::fs::read_dir(scratch.join(&dir)).map_err(|_| {
            ToolchainError::Output("the build produced no WebAssembly module".into())
        })?;
        let mut found: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.ends_with(".wasm"))
            .collect();
        found.sort();
        match found.as_slice() {
            [one] => Ok(dir.join(one)),
            [] => Err(ToolchainError::Output(
                "the build produced no .wasm module; the package needs [lib] crate-type = [\"cdylib\"]".into(),
            )),
            many => {
                // The build chose these names: a few of them say enough.
                let named: Vec<&str> = many
                    .iter()
                    .take(NAMED_OUTPUTS)
                    .map(|name| kiln_domain::text::cap(name, 100))
                    .collect();
                let more = if many.len() > NAMED_OUTPUTS { ", …" } else { "" };
                Err(ToolchainError::Output(format!(
                    "the build produced {} .wasm modules ({}{more}); kiln needs exactly one cdylib",
                    many.len(),
                    named.join(", ")
                )))
            }
        }
    }
}

fn relative(base: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(base)
        .map(Path::to_owned)
        .unwrap_or_else(|_| path.to_owned())
}
