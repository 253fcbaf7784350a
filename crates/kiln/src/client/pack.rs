//! Packing a project directory as the `.tar.gz` kiln builds: the files git
//! would keep (`.gitignore`, `.ignore` and `.git/info/exclude` are
//! honoured, in a git repository or not), never `target/` or `.git/`.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The files of `dir` to pack, relative to it, sorted.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let walker = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .require_git(false)
        .parents(false)
        .follow_links(false)
        .filter_entry(|entry| {
            let name = entry.file_name();
            !(entry.depth() > 0
                && entry.file_type().is_some_and(|t| t.is_dir())
                && (name == "target" || name == ".git"))
        })
        .build();
    for entry in walker {
        let entry = entry.context("listing the project")?;
        if entry.file_type().is_some_and(|t| t.is_file()) {
            let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
            out.push(rel.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// `dir` as a `.tar.gz`, and how many files it holds.
pub fn tar_gz(dir: &Path) -> Result<(Vec<u8>, usize)> {
    let files = files(dir)?;
    if files.is_empty() {
        bail!("{} has no files to deploy", dir.display());
    }
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    builder.mode(tar::HeaderMode::Deterministic);
    for rel in &files {
        builder
            .append_path_with_name(dir.join(rel), rel)
            .with_context(|| format!("packing {}", rel.display()))?;
    }
    let bytes = builder.into_inner()?.finish()?;
    Ok((bytes, files.len()))
}

/// What changes when a packed file is saved: each file's path, size and
/// modification time.
pub fn fingerprint(dir: &Path) -> Result<Vec<(PathBuf, u64, Option<SystemTime>)>> {
    Ok(files(dir)?
        .into_iter()
        .map(|rel| {
            let meta = std::fs::metadata(dir.join(&rel)).ok();
            let size = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (rel, size, modified)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_and_target_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, text) in [
            ("Cargo.toml", "[package]"),
            ("src/lib.rs", "//"),
            (".gitignore", "/secret.txt\n*.log\n"),
            ("secret.txt", "no"),
            ("build.log", "no"),
            ("target/release/x.wasm", "no"),
            (
                "src/target/keep.rs",
                "nested dirs named target are skipped too",
            ),
            (".git/config", "no"),
        ] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let names: Vec<String> = files(root)
            .unwrap()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(names, [".gitignore", "Cargo.toml", "src/lib.rs"]);
        let (bytes, count) = tar_gz(root).unwrap();
        assert_eq!(count, 3);
        assert!(bytes.starts_with(&[0x1f, 0x8b]));
    }
}
