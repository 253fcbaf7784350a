//! The dependency policy, checked on the unpacked source before cargo sees
//! it: crates.io only (no git, no other registry, no path outside the
//! archive), and no file that could redirect cargo outside the sandbox
//! (`.cargo/config*`, `rust-toolchain*`).

use crate::toolchain::ToolchainError;
use std::path::{Component, Path, PathBuf};
use toml::{Table, Value};

/// Files cargo or rustup would obey: a config can set a rustc wrapper or a
/// source replacement, a toolchain file can make rustup fetch a toolchain.
const FORBIDDEN_NAMES: &[&str] = &["rust-toolchain", "rust-toolchain.toml"];
const CRATES_IO_SOURCES: &[&str] = &[
    "registry+https://github.com/rust-lang/crates.io-index",
    "sparse+https://index.crates.io/",
];
/// Directories never looked into (build output, VCS metadata).
const SKIPPED_DIRS: &[&str] = &["target", ".git"];

fn refuse(message: String) -> ToolchainError {
    ToolchainError::Policy(message)
}

/// The directory holding the root `Cargo.toml`: the archive root, or its one
/// top-level folder.
pub fn locate_project(src: &Path) -> Result<PathBuf, ToolchainError> {
    if src.join("Cargo.toml").is_file() {
        return Ok(src.to_owned());
    }
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir(src)
        .map_err(|e| ToolchainError::io("reading the source", e))?
        .flatten()
    {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && entry.path().join("Cargo.toml").is_file() {
            candidates.push(entry.path());
        }
    }
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => Err(refuse(
            "no Cargo.toml at the root of the archive or in a top-level folder".into(),
        )),
        _ => Err(refuse(format!(
            "Cargo.toml found in {} top-level folders; put it at the root or in exactly one folder",
            candidates.len()
        ))),
    }
}

/// Checks every manifest, lock file and configuration file under `src`.
pub fn check_policy(src: &Path) -> Result<(), ToolchainError> {
    walk(src, src)
}

fn walk(root: &Path, dir: &Path) -> Result<(), ToolchainError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| ToolchainError::io("reading the source", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if name == ".cargo" {
            return Err(refuse(format!(
                "{shown}: cargo configuration in the archive is not accepted (it could change how dependencies are fetched)"
            )));
        }
        if FORBIDDEN_NAMES.contains(&name.as_str()) {
            return Err(refuse(format!(
                "{shown}: toolchain files are not accepted; kiln builds with its own toolchain"
            )));
        }
        if kind.is_dir() && !SKIPPED_DIRS.contains(&name.as_str()) {
            walk(root, &path)?;
        } else if kind.is_file() && name == "Cargo.toml" {
            check_manifest(root, &path, &shown)?;
        } else if kind.is_file() && name == "Cargo.lock" {
            check_lock(&path, &shown)?;
        }
    }
    Ok(())
}

fn read_toml(path: &Path, shown: &str) -> Result<Table, ToolchainError> {
    let text = std::fs::read_to_string(path)
        .map_err(|_| refuse(format!("{shown} is not readable UTF-8 text")))?;
    text.parse::<Table>()
        .map_err(|e| refuse(format!("{shown} is not valid TOML: {}", e.message())))
}

fn check_manifest(root: &Path, path: &Path, shown: &str) -> Result<(), ToolchainError> {
    let manifest = read_toml(path, shown)?;
    let dir = path.parent().unwrap_or(root);
    for (section, deps) in dependency_tables(&manifest) {
        for (name, spec) in deps {
            check_dependency(root, dir, shown, &section, name, spec)?;
        }
    }
    if manifest.contains_key("replace") {
        return Err(refuse(format!(
            "{shown}: [replace] is not accepted; use crates.io versions"
        )));
    }
    Ok(())
}

/// Every table of dependencies in a manifest, with a name for messages.
fn dependency_tables(manifest: &Table) -> Vec<(String, &Table)> {
    let mut tables = Vec::new();
    add_kinds(&mut tables, String::new(), manifest);
    if let Some(Value::Table(targets)) = manifest.get("target") {
        for (cfg, target) in targets {
            if let Value::Table(target) = target {
                add_kinds(&mut tables, format!("target.{cfg}."), target);
            }
        }
    }
    if let Some(Value::Table(workspace)) = manifest.get("workspace")
        && let Some(Value::Table(deps)) = workspace.get("dependencies")
    {
        tables.push(("workspace.dependencies".into(), deps));
    }
    if let Some(Value::Table(patches)) = manifest.get("patch") {
        for (registry, deps) in patches {
            if let Value::Table(deps) = deps {
                tables.push((format!("patch.{registry}"), deps));
            }
        }
    }
    tables
}

fn add_kinds<'a>(tables: &mut Vec<(String, &'a Table)>, prefix: String, table: &'a Table) {
    const KINDS: [&str; 5] = [
        "dependencies",
        "dev-dependencies",
        "build-dependencies",
        "dev_dependencies",
        "build_dependencies",
    ];
    for kind in KINDS {
        if let Some(Value::Table(deps)) = table.get(kind) {
            tables.push((format!("{prefix}{kind}"), deps));
        }
    }
}

fn check_dependency(
    root: &Path,
    dir: &Path,
    shown: &str,
    section: &str,
    name: &str,
    spec: &Value,
) -> Result<(), ToolchainError> {
    let Value::Table(spec) = spec else {
        return Ok(());
    };
    let at = format!("{shown}: [{section}] {name}");
    if spec.contains_key("git") {
        return Err(refuse(format!(
            "{at} is a git dependency; kiln builds only with crates from crates.io"
        )));
    }
    for key in ["registry", "registry-index"] {
        if spec.contains_key(key) {
            return Err(refuse(format!(
                "{at} uses another registry ({key}); kiln builds only with crates from crates.io"
            )));
        }
    }
    if let Some(Value::String(rel)) = spec.get("path")
        && !stays_inside(root, dir, Path::new(rel))
    {
        return Err(refuse(format!(
            "{at} has path {rel:?}, which leaves the archive"
        )));
    }
    Ok(())
}

/// Whether `dir/rel` stays under `root`, judged lexically (the unpacker
/// already refused links that leave the tree).
fn stays_inside(root: &Path, dir: &Path, rel: &Path) -> bool {
    if rel.is_absolute() {
        return false;
    }
    let Ok(start) = dir.strip_prefix(root) else {
        return false;
    };
    let mut depth = start.components().count() as i64;
    for component in rel.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

fn check_lock(path: &Path, shown: &str) -> Result<(), ToolchainError> {
    let lock = read_toml(path, shown)?;
    let Some(Value::Array(packages)) = lock.get("package") else {
        return Ok(());
    };
    for package in packages {
        let name = package.get("name").and_then(Value::as_str).unwrap_or("?");
        if let Some(source) = package.get("source").and_then(Value::as_str)
            && !CRATES_IO_SOURCES.contains(&source)
        {
            return Err(refuse(format!(
                "{shown}: package {name} comes from {source}; kiln builds only with crates from crates.io"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, text).unwrap();
        }
        dir
    }

    const PKG: &str =
        "[package]\nname = \"f\"\nversion = \"0.1.0\"\n[lib]\ncrate-type = [\"cdylib\"]\n";

    fn refused(files: &[(&str, &str)], expected: &str) {
        let dir = tree(files);
        let err = check_policy(dir.path()).unwrap_err().to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }

    #[test]
    fn crates_io_and_inner_paths_are_accepted() {
        let manifest = format!(
            "{PKG}[dependencies]\nproxy-wasm = \"0.2\"\nlog = {{ version = \"0.4\" }}\nhelper = {{ path = \"helper\" }}\n"
        );
        let lock = "[[package]]\nname = \"log\"\nversion = \"0.4.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
        let dir = tree(&[
            ("Cargo.toml", &manifest),
            ("Cargo.lock", lock),
            ("helper/Cargo.toml", PKG),
        ]);
        check_policy(dir.path()).unwrap();
    }

    #[test]
    fn foreign_sources_are_refused() {
        refused(
            &[(
                "Cargo.toml",
                &format!("{PKG}[dependencies]\nx = {{ git = \"https://e.com/x\" }}\n"),
            )],
            "git dependency",
        );
        refused(
            &[(
                "Cargo.toml",
                &format!("{PKG}[patch.crates-io]\nx = {{ git = \"https://e.com/x\" }}\n"),
            )],
            "git dependency",
        );
        refused(
            &[(
                "Cargo.toml",
                &format!(
                    "{PKG}[build-dependencies]\nx = {{ version = \"1\", registry = \"corp\" }}\n"
                ),
            )],
            "another registry",
        );
        refused(
            &[(
                "Cargo.toml",
                &format!(
                    "{PKG}[target.'cfg(unix)'.dependencies]\nx = {{ path = \"../outside\" }}\n"
                ),
            )],
            "leaves the archive",
        );
        refused(
            &[(
                "Cargo.toml",
                &format!("{PKG}[dependencies]\nx = {{ path = \"/etc\" }}\n"),
            )],
            "leaves the archive",
        );
        refused(
            &[(
                "a/Cargo.toml",
                &format!("{PKG}[dependencies]\nx = {{ path = \"../../x\" }}\n"),
            )],
            "leaves the archive",
        );
        let lock = "[[package]]\nname = \"x\"\nversion = \"1.0.0\"\nsource = \"git+https://e.com/x#abc\"\n";
        refused(
            &[("Cargo.toml", PKG), ("Cargo.lock", lock)],
            "comes from git+",
        );
    }

    #[test]
    fn redirecting_files_are_refused() {
        refused(
            &[
                ("Cargo.toml", PKG),
                (".cargo/config.toml", "[build]\nrustc-wrapper = \"./x\"\n"),
            ],
            "cargo configuration",
        );
        refused(
            &[("Cargo.toml", PKG), ("sub/.cargo/config", "")],
            "cargo configuration",
        );
        refused(
            &[
                ("Cargo.toml", PKG),
                ("rust-toolchain.toml", "[toolchain]\n"),
            ],
            "toolchain files",
        );
        refused(&[("Cargo.toml", "[package\n")], "not valid TOML");
    }

    #[test]
    fn the_project_is_at_the_root_or_in_one_folder() {
        let dir = tree(&[("Cargo.toml", PKG)]);
        assert_eq!(locate_project(dir.path()).unwrap(), dir.path());
        let dir = tree(&[("filter/Cargo.toml", PKG), ("README", "")]);
        assert_eq!(
            locate_project(dir.path()).unwrap(),
            dir.path().join("filter")
        );
        let dir = tree(&[("a/Cargo.toml", PKG), ("b/Cargo.toml", PKG)]);
        assert!(
            locate_project(dir.path())
                .unwrap_err()
                .to_string()
                .contains("2 top-level folders")
        );
        let dir = tree(&[("a/b/Cargo.toml", PKG)]);
        assert!(
            locate_project(dir.path())
                .unwrap_err()
                .to_string()
                .contains("no Cargo.toml")
        );
    }
}
