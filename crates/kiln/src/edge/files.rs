//! Files in the agent's directory. Each is written beside its final name,
//! flushed to disk, then renamed over it: a reader (Envoy) sees the old
//! file or the new one, never half of one.

use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The modules, by sha256.
pub const MODULES: &str = "modules";
/// The extension config Envoy watches.
pub const FILTER_CONFIG: &str = "filter.json";
/// What the agent deployed last, to start again without a new swap.
pub const STATE: &str = "deployed.json";

pub fn module_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(MODULES).join(format!("{sha256}.wasm"))
}

/// Writes `bytes` to `path` atomically (a temporary file in the same
/// directory, fsync, rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let parent = path.parent().context("a file in a directory")?;
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let temp = parent.join(format!(".{name}.{}.{nonce}.tmp", std::process::id()));
    let written = (|| {
        // A new file, never one already there (O_EXCL): a link planted
        // under the temporary name is not followed.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // The rename itself survives a crash once the directory is synced.
        std::fs::File::open(parent)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

/// Removes every module but `keep` (Envoy read the file when it loaded it).
pub fn remove_other_modules(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir.join(MODULES)) else {
        return;
    };
    let keep = format!("{keep}.wasm");
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy() != keep
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(path = %entry.path().display(), %e, "could not remove an old module");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["f.json"]);
    }
}
