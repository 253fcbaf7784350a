//! Fetching dependencies, outside the sandbox. cargo runs here only to
//! download (`generate-lockfile`, `vendor`): it runs no build script and no
//! proc-macro. Its environment is cleared, its working directory is kiln's
//! cache (so no configuration of the customer's is read; the policy has
//! also refused any), and the toolchain is kiln's copy, not rustup's proxy
//! (so no `rust-toolchain` file is obeyed).

use super::RustConfig;
use crate::toolchain::ToolchainError;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Most cargo output kept in the build log from one fetch command.
const MAX_FETCH_LOG: usize = 64 * 1024;

/// Creates the cache, readable by the sandbox user (it is mounted
/// read-only into builds).
pub(super) fn create_cache(dir: &Path) -> Result<(), ToolchainError> {
    for sub in ["cargo-home", "vendor", "home"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path)
            .map_err(|e| ToolchainError::io(format!("creating {}", path.display()), e))?;
    }
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| *d != Path::new("/")) {
        let mode = std::fs::metadata(d)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o005 != 0o005 && d.starts_with(dir) {
            let _ = std::fs::set_permissions(
                d,
                std::fs::Permissions::from_mode((mode & 0o7777) | 0o755),
            );
        } else if mode & 0o001 == 0 {
            let _ = std::fs::set_permissions(
                d,
                std::fs::Permissions::from_mode((mode & 0o7777) | 0o711),
            );
        }
        at = d.parent();
    }
    Ok(())
}

async fn cargo(config: &RustConfig, args: &[&str], log: &mut String) -> Result<(), ToolchainError> {
    let bin = config.toolchain_dir.join("bin");
    let mut command = tokio::process::Command::new(bin.join("cargo"));
    command
        .args(args)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("HOME", config.cache_dir.join("home"))
        .env("CARGO_HOME", config.cache_dir.join("cargo-home"))
        .env("RUSTC", bin.join("rustc"))
        .env("RUSTC_WRAPPER", "")
        .env("CARGO_BUILD_RUSTC_WRAPPER", "")
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_NET_RETRY", "3")
        .current_dir(&config.cache_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(proxy) = &config.registry_proxy {
        command.env("CARGO_HTTP_PROXY", proxy);
    }
    let run = tokio::time::timeout(config.fetch_timeout, command.output());
    let output = run
        .await
        .map_err(|_| {
            ToolchainError::Fetch(format!(
                "fetching dependencies took longer than {} s",
                config.fetch_timeout.as_secs()
            ))
        })?
        .map_err(|e| ToolchainError::io("running cargo to fetch dependencies", e))?;
    let text = String::from_utf8_lossy(&output.stderr);
    // cargo repeats the customer's manifest: cut on a character boundary.
    let text = kiln_domain::text::cap(&text, MAX_FETCH_LOG);
    log.push_str(text);
    if !output.status.success() {
        if let Some(line) = text
            .lines()
            .find(|l| NETWORK_ERRORS.iter().any(|e| l.contains(e)))
        {
            return Err(ToolchainError::RegistryUnavailable(format!(
                "the package registry could not be reached: {}",
                line.trim()
            )));
        }
        let last = text
            .lines()
            .rfind(|l| l.contains("error"))
            .unwrap_or("cargo failed")
            .trim();
        return Err(ToolchainError::Fetch(format!(
            "fetching dependencies failed: {last}"
        )));
    }
    Ok(())
}

/// What cargo (through curl) says when the network, not the project, is at
/// fault; an unknown crate or version reads differently.
const NETWORK_ERRORS: [&str; 9] = [
    "Couldn't resolve host",
    "Could not resolve host",
    "Couldn't connect to server",
    "Could not connect to server",
    "Failed to connect",
    "Timeout was reached",
    "SSL connect error",
    "Connection reset",
    "spurious network error",
];

/// Resolves (if needed) and vendors the project's dependencies into the
/// shared cache, keyed by the lock file. `None` when there are none.
pub(super) async fn vendor(
    config: &RustConfig,
    project: &Path,
    log: &mut String,
) -> Result<Option<PathBuf>, ToolchainError> {
    let manifest = project.join("Cargo.toml");
    let manifest_arg = manifest.display().to_string();
    let lock_path = project.join("Cargo.lock");
    if !lock_path.exists() {
        log.push_str("[kiln] no Cargo.lock: resolving dependencies\n");
        cargo(
            config,
            &["generate-lockfile", "--manifest-path", &manifest_arg],
            log,
        )
        .await?;
    }
    let lock = tokio::fs::read(&lock_path)
        .await
        .map_err(|e| ToolchainError::io("reading Cargo.lock", e))?;
    if !String::from_utf8_lossy(&lock).contains("source = ") {
        log.push_str("[kiln] no dependencies to fetch\n");
        return Ok(None);
    }
    let key = hex::encode(Sha256::digest(&lock));
    let dir = config.cache_dir.join("vendor").join(&key);
    if dir.is_dir() {
        log.push_str(&format!(
            "[kiln] dependencies already vendored ({})\n",
            &key[..12]
        ));
        return Ok(Some(dir));
    }
    // Vendored into a temporary name, then renamed: a half-done tree is
    // never used.
    let staging = config
        .cache_dir
        .join("vendor")
        .join(format!(".tmp-{}", uuid_like()));
    let staging_arg = staging.display().to_string();
    let result = cargo(
        config,
        &[
            "vendor",
            "--locked",
            "--versioned-dirs",
            "--manifest-path",
            &manifest_arg,
            &staging_arg,
        ],
        log,
    )
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if std::fs::rename(&staging, &dir).is_err() {
        // Another builder vendored the same lock file first.
        let _ = std::fs::remove_dir_all(&staging);
    }
    log.push_str(&format!("[kiln] dependencies vendored ({})\n", &key[..12]));
    Ok(Some(dir))
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// The writable homes of the build inside the scratch dir (the vendored
/// source replacement is passed on cargo's command line).
pub(super) fn write_build_home(scratch: &Path) -> Result<(), ToolchainError> {
    for sub in ["home", "tmp", "cargo-home", "target"] {
        std::fs::create_dir_all(scratch.join(sub))
            .map_err(|e| ToolchainError::io("preparing the build directory", e))?;
    }
    let config = "[net]\noffline = true\n";
    std::fs::write(scratch.join("cargo-home/config.toml"), config)
        .map_err(|e| ToolchainError::io("writing the cargo configuration", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for cargo that prints `stderr` and exits with `status`.
    fn fake_cargo(dir: &Path, stderr: &str, status: i32) -> RustConfig {
        let bin = dir.join("toolchain/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(dir.join("stderr.txt"), stderr).unwrap();
        let script = format!(
            "#!/bin/sh\ncat '{}' >&2\nexit {status}\n",
            dir.join("stderr.txt").display()
        );
        std::fs::write(bin.join("cargo"), script).unwrap();
        std::fs::set_permissions(bin.join("cargo"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let cache = dir.join("cache");
        create_cache(&cache).unwrap();
        RustConfig {
            toolchain_dir: dir.join("toolchain"),
            cache_dir: cache,
            ..RustConfig::default()
        }
    }

    /// cargo's output repeats the customer's Cargo.toml: multibyte text
    /// past the cap, cut at every alignment, is kept whole up to a
    /// character boundary.
    #[tokio::test]
    async fn multibyte_output_past_the_cap_is_cut_on_a_character_boundary() {
        for shift in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let stderr = format!(
                "{}{}\nerror: no matching package named `日本`\n",
                "x".repeat(shift),
                "🦀é日".repeat(MAX_FETCH_LOG / 4)
            );
            let config = fake_cargo(dir.path(), &stderr, 101);
            let mut log = String::new();
            let result = cargo(&config, &["vendor"], &mut log).await;
            assert!(
                matches!(result, Err(ToolchainError::Fetch(_))),
                "{result:?}"
            );
            assert!(log.len() <= MAX_FETCH_LOG && log.len() > MAX_FETCH_LOG - 4);
            assert!(stderr.starts_with(&log));
        }
    }
}
