//! Archive paths: relative, normalised, inside the tree.

use super::ArchiveError;
use std::path::{Component, Path, PathBuf};

/// Turns an archive entry name into a relative path with only normal
/// components (`./` dropped), or refuses it. The archive root itself (`.`,
/// `./`, as `tar -C dir .` writes it) is the empty path.
pub fn safe_relative_path(raw: &str) -> Result<PathBuf, ArchiveError> {
    let invalid = || ArchiveError::InvalidPath {
        path: raw.to_owned(),
    };
    if raw.is_empty() || raw.contains('\0') || raw.contains('\\') {
        return Err(invalid());
    }
    if raw.starts_with('/') {
        return Err(ArchiveError::AbsolutePath {
            path: raw.to_owned(),
        });
    }
    let mut out = PathBuf::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(part) => {
                // A drive prefix such as `C:` means an absolute Windows path.
                if part
                    .to_str()
                    .is_some_and(|p| p.len() == 2 && p.ends_with(':'))
                {
                    return Err(ArchiveError::AbsolutePath {
                        path: raw.to_owned(),
                    });
                }
                out.push(part)
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ArchiveError::ParentTraversal {
                    path: raw.to_owned(),
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::AbsolutePath {
                    path: raw.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// Checks that a symlink at `link` (relative to the root) pointing to
/// `target` resolves inside the tree, judged lexically.
pub(crate) fn check_link_target(
    link: &Path,
    display: &str,
    target: &str,
) -> Result<PathBuf, ArchiveError> {
    let escapes = || ArchiveError::LinkEscapes {
        path: display.to_owned(),
        target: target.to_owned(),
    };
    if target.is_empty()
        || target.starts_with('/')
        || target.contains('\0')
        || target.contains('\\')
    {
        return Err(escapes());
    }
    let mut depth = link.components().count() as i64 - 1;
    for component in Path::new(target).components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err(escapes());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    Ok(PathBuf::from(target))
}
