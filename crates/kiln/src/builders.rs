//! Starting builders, embedded in `kiln serve` or standalone in `kiln
//! worker`: the sandbox and toolchains are checked first, so a host that
//! cannot sandbox refuses to build instead of building unsandboxed.

use crate::build_args::{BuildArgs, SandboxKind};
use anyhow::Context;
use kiln_build::archive::ArchiveLimits;
use kiln_build::{RustConfig, RustToolchain, Toolchain};
use kiln_sandbox::{Bubblewrap, BubblewrapConfig, Limits, Sandbox, Unsandboxed};
use kiln_trial::{Runner, Trials};
use kiln_worker::{Client, Pipeline, PipelineConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;

/// One builder per two cores, at least one.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

pub fn archive_limits(args: &BuildArgs, max_upload_mib: u64) -> ArchiveLimits {
    ArchiveLimits {
        max_upload_bytes: max_upload_mib * MIB,
        max_unpacked_bytes: args.max_unpacked_mib * MIB,
        max_entries: args.max_entries,
        max_file_bytes: args.max_file_mib * MIB,
        max_ratio: args.max_ratio,
    }
}

fn limits(args: &BuildArgs) -> Limits {
    Limits {
        memory_bytes: args.build_memory_mib * MIB,
        max_processes: args.build_processes,
        cpu_cores: args.build_cpus,
        wall_time: Duration::from_secs(args.build_timeout),
        no_output: Some(Duration::from_secs(args.build_idle_timeout)),
        disk_bytes: args.build_disk_mib * MIB,
        max_log_bytes: (args.build_log_kib * 1024) as usize,
    }
}

fn sandbox(args: &BuildArgs) -> anyhow::Result<Arc<dyn Sandbox>> {
    match args.sandbox {
        SandboxKind::Bubblewrap => {
            let config = BubblewrapConfig {
                user: args.sandbox_user.clone(),
                root: args.sandbox_root.clone(),
                ..BubblewrapConfig::default()
            };
            let sandbox = Bubblewrap::new(config)
                .context("the build sandbox is not available, so this node will not build")?;
            Ok(Arc::new(sandbox))
        }
        SandboxKind::None => {
            tracing::warn!(
                "--sandbox none: builds run WITHOUT a sandbox; use this only for code you trust"
            );
            Ok(Arc::new(Unsandboxed::new(args.sandbox_root.clone())))
        }
    }
}

/// Where `POST /version/{id}/try` runs plugins: in the build sandbox
/// (with `--sandbox none`, in child processes without one), and nowhere on
/// a node that should sandbox them and cannot.
pub fn trial_host(args: &BuildArgs) -> Trials {
    let runner = sandbox(args).and_then(|sandbox| {
        let program = child_program(args)?;
        Ok(Runner::new(sandbox, program))
    });
    match runner {
        Ok(runner) => Trials::sandboxed(runner),
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::warn!(
                error = reason,
                "trials are refused: the sandbox is not available"
            );
            Trials::unavailable(reason)
        }
    }
}

/// The kiln binary that `kiln wasm-child` runs from: one the sandbox user
/// can reach, or this very file when there is no sandbox.
fn child_program(args: &BuildArgs) -> anyhow::Result<PathBuf> {
    match args.sandbox {
        SandboxKind::None => std::env::current_exe().context("finding the kiln binary"),
        SandboxKind::Bubblewrap => sandbox_program(&args.sandbox_root),
    }
}

/// This kiln binary, linked (or copied) under the sandbox root where the
/// sandbox user can reach it, named after the file it comes from so that a
/// new kiln gets a new name.
fn sandbox_program(root: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let exe = std::env::current_exe().context("finding the kiln binary")?;
    let meta = std::fs::metadata(&exe).with_context(|| format!("reading {}", exe.display()))?;
    let dir = root.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    let name = format!(
        "kiln-{:x}-{:x}-{:x}-{}.{}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let program = dir.join(&name);
    remove_stale_programs(&dir, &name);
    if program.exists() {
        return Ok(program);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let partial = dir.join(format!(".kiln-{}-{nanos}", std::process::id()));
    // A link shares the file's mode: only one everybody may run will do.
    let runnable = meta.mode() & 0o005 == 0o005;
    if !runnable || std::fs::hard_link(&exe, &partial).is_err() {
        std::fs::copy(&exe, &partial)
            .with_context(|| format!("copying {} to {}", exe.display(), partial.display()))?;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    }
    // Renamed into place whole: servers starting at once never run half a copy.
    std::fs::rename(&partial, &program)?;
    Ok(program)
}

/// Removes the kiln binaries under `dir` that no running process was
/// started from (each is named after its file's device and inode): those
/// of kilns upgraded or gone. Half-written copies of dead processes go too.
/// `keep` is this process's.
fn remove_stale_programs(dir: &Path, keep: &str) {
    use std::os::unix::fs::MetadataExt;
    let running: std::collections::HashSet<(u64, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path().join("exe")).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = match program_origin(&name) {
            Some(origin) => name != keep && !running.contains(&origin),
            None => partial_of_dead_process(&name),
        };
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(program = %entry.path().display(), "removed a kiln binary no process runs");
        }
    }
}

/// The device and inode a `kiln-<dev>-<ino>-…` binary was made from.
fn program_origin(name: &str) -> Option<(u64, u64)> {
    let mut parts = name.strip_prefix("kiln-")?.split('-');
    let dev = u64::from_str_radix(parts.next()?, 16).ok()?;
    let ino = u64::from_str_radix(parts.next()?, 16).ok()?;
    Some((dev, ino))
}

/// Whether `name` is a `.kiln-<pid>-<nanos>` copy whose process is gone.
fn partial_of_dead_process(name: &str) -> bool {
    let pid = name
        .strip_prefix(".kiln-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    pid.is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
}

pub fn pipeline(args: &BuildArgs, max_upload_mib: u64) -> anyhow::Result<Pipeline> {
    let sandbox = sandbox(args)?;
    let rust = RustToolchain::new(RustConfig {
        toolchain_dir: args.toolchain_dir.clone(),
        cache_dir: args.cache_dir.clone(),
        registry_proxy: args.registry_proxy.clone(),
        ..RustConfig::default()
    })
    .context("the Rust toolchain is not usable")?;
    let toolchains: Vec<Arc<dyn Toolchain>> = vec![Arc::new(rust)];
    let config = PipelineConfig {
        limits: limits(args),
        archive_limits: archive_limits(args, max_upload_mib),
        max_output_bytes: args.max_output_mib * MIB,
        wasm_opt: optimizer(args),
        ..PipelineConfig::default()
    };
    Ok(Pipeline::new(
        config,
        sandbox,
        toolchains,
        child_program(args)?,
    ))
}

fn optimizer(args: &BuildArgs) -> Option<std::path::PathBuf> {
    if !args.optimize {
        return None;
    }
    if !args.wasm_opt.exists() {
        tracing::warn!(path = %args.wasm_opt.display(), "wasm-opt is not installed; builds are not optimized (apt-get install binaryen)");
        return None;
    }
    Some(args.wasm_opt.clone())
}

/// Runs `count` builders against `server` until `stop`, then drains them.
pub async fn run(
    pipeline: Pipeline,
    server: &str,
    token: &str,
    count: usize,
    stop: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let client = Client::new(server, token)?;
    tracing::info!(count, server, "builders started");
    kiln_worker::run_builders(Arc::new(pipeline), client, count, stop, grace).await;
    tracing::info!("builders stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_no_process_runs_are_removed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = std::fs::metadata(std::env::current_exe().unwrap()).unwrap();
        let running = format!("kiln-{:x}-{:x}-1-2.3", exe.dev(), exe.ino());
        let ours = "kiln-1-2-3-4.5";
        let upgraded = "kiln-ffff-eeee-3-4.5";
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let half = format!(".kiln-{}-123", gone.id());
        for name in [running.as_str(), ours, upgraded, half.as_str(), "other"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        remove_stale_programs(dir.path(), ours);
        let left: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let expected: std::collections::BTreeSet<String> =
            [running.as_str(), ours, "other"].map(String::from).into();
        assert_eq!(left, expected);
    }
}
