//! Flags of the builders (`kiln serve` and `kiln worker`): the sandbox, its
//! limits, the archive limits and where toolchains and caches live.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxKind {
    /// bubblewrap as an unprivileged user, with cgroups and seccomp.
    Bubblewrap,
    /// No sandbox: runs builds directly on the host. Only for trusted
    /// local use; every build logs a warning.
    None,
}

#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// How builds are isolated.
    #[arg(long, env = "KILN_SANDBOX", value_enum, default_value = "bubblewrap")]
    pub sandbox: SandboxKind,
    /// The unprivileged user builds run as.
    #[arg(long, env = "KILN_SANDBOX_USER", default_value = "kiln-sandbox")]
    pub sandbox_user: String,
    /// Where per-build scratch directories (size-capped tmpfs) are mounted.
    #[arg(
        long,
        env = "KILN_SANDBOX_ROOT",
        default_value = "/var/lib/kiln/sandbox"
    )]
    pub sandbox_root: PathBuf,
    /// A Rust toolchain readable by the sandbox user (bin/cargo, bin/rustc, the wasm32-wasip1 target).
    #[arg(
        long,
        env = "KILN_TOOLCHAIN_DIR",
        default_value = "/opt/kiln/toolchain"
    )]
    pub toolchain_dir: PathBuf,
    /// Shared download cache of dependencies, mounted read-only into builds.
    #[arg(long, env = "KILN_CACHE_DIR", default_value = "/var/lib/kiln/cache")]
    pub cache_dir: PathBuf,
    /// An HTTP(S) proxy for downloading dependencies from crates.io.
    #[arg(long, env = "KILN_REGISTRY_PROXY")]
    pub registry_proxy: Option<String>,
    /// Wall-clock limit of one build, in seconds.
    #[arg(long, env = "KILN_BUILD_TIMEOUT", default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub build_timeout: u64,
    /// Seconds one build may print nothing before it is stopped (at least 1; at or above --build-timeout only the time limit applies).
    #[arg(
        long,
        env = "KILN_BUILD_IDLE_TIMEOUT",
        default_value_t = 120,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub build_idle_timeout: u64,
    /// Memory limit of one build, in MiB.
    #[arg(long, env = "KILN_BUILD_MEMORY_MIB", default_value_t = 2048)]
    pub build_memory_mib: u64,
    /// Processes and threads one build may have alive.
    #[arg(long, env = "KILN_BUILD_PROCESSES", default_value_t = 512)]
    pub build_processes: u32,
    /// CPU share of one build, in cores.
    #[arg(long, env = "KILN_BUILD_CPUS", default_value_t = 2.0)]
    pub build_cpus: f64,
    /// Size of one build's private tmpfs, in MiB.
    #[arg(long, env = "KILN_BUILD_DISK_MIB", default_value_t = 2048)]
    pub build_disk_mib: u64,
    /// Compiler output kept in the log, in KiB (the rest is cut with a marker).
    #[arg(long, env = "KILN_BUILD_LOG_KIB", default_value_t = 1024)]
    pub build_log_kib: u64,
    /// Largest compiled module, in MiB.
    #[arg(long, env = "KILN_MAX_OUTPUT_MIB", default_value_t = 50)]
    pub max_output_mib: u64,
    /// Largest total size of an unpacked archive, in MiB.
    #[arg(long, env = "KILN_MAX_UNPACKED_MIB", default_value_t = 200)]
    pub max_unpacked_mib: u64,
    /// Most entries in an archive.
    #[arg(long, env = "KILN_MAX_ENTRIES", default_value_t = 10_000)]
    pub max_entries: u64,
    /// Largest single file in an archive, in MiB.
    #[arg(long, env = "KILN_MAX_FILE_MIB", default_value_t = 50)]
    pub max_file_mib: u64,
    /// Largest ratio of unpacked to compressed size.
    #[arg(long, env = "KILN_MAX_RATIO", default_value_t = 200)]
    pub max_ratio: u64,
    /// Optimize successful builds with binaryen's wasm-opt (run in the sandbox); kept only when the result answers a smoke request like the original.
    #[arg(long, env = "KILN_OPTIMIZE", default_value_t = true, action = clap::ArgAction::Set)]
    pub optimize: bool,
    /// The wasm-opt binary (Debian's binaryen).
    #[arg(long, env = "KILN_WASM_OPT", default_value = "/usr/bin/wasm-opt")]
    pub wasm_opt: std::path::PathBuf,
    /// Seconds running builds get to finish after SIGTERM before they are reported crashed.
    #[arg(long, env = "KILN_GRACE_SECONDS", default_value_t = 30)]
    pub grace_seconds: u64,
}
