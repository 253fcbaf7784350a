//! Reading what sandboxed code wrote, from the host. The tree is hostile:
//! any component may be a symlink to a host file, so each one is opened
//! with `O_NOFOLLOW` relative to the one before.

use crate::{SandboxError, Scratch};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

fn open_at(dir: Option<&OwnedFd>, name: &[u8], flags: i32) -> std::io::Result<OwnedFd> {
    let name =
        CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let base = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: openat with a valid directory fd (or AT_FDCWD) and a C string.
    let fd = unsafe {
        libc::openat(
            base,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is freshly opened and owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads `relative` (to the scratch root) if it is a regular file reached
/// without any symlink and at most `max_bytes` long.
pub fn read_output_file(
    scratch: &Scratch,
    relative: &Path,
    max_bytes: u64,
) -> Result<Vec<u8>, SandboxError> {
    read_output_file_under(scratch.path(), relative, max_bytes)
}

/// [`read_output_file`] for a scratch known by its path, for a caller
/// that reads on the blocking pool (a `Scratch` stays with its owner).
pub fn read_output_file_under(
    root: &Path,
    relative: &Path,
    max_bytes: u64,
) -> Result<Vec<u8>, SandboxError> {
    let not_a_file = || SandboxError::OutputNotAFile {
        path: relative.to_owned(),
    };
    let root = root.as_os_str().as_bytes();
    let mut dir =
        open_at(None, root, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|_| not_a_file())?;
    let parts: Vec<_> = relative.components().collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err(not_a_file());
    };
    for part in parents {
        let Component::Normal(name) = part else {
            return Err(not_a_file());
        };
        dir = open_at(
            Some(&dir),
            name.as_bytes(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
        .map_err(|_| not_a_file())?;
    }
    let Component::Normal(name) = last else {
        return Err(not_a_file());
    };
    // O_NONBLOCK: a fifo planted at the output path must not hang the host.
    let fd = open_at(
        Some(&dir),
        name.as_bytes(),
        libc::O_RDONLY | libc::O_NONBLOCK,
    )
    .map_err(|_| not_a_file())?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|_| not_a_file())?;
    if !meta.file_type().is_file() {
        return Err(not_a_file());
    }
    if meta.len() > max_bytes {
        return Err(SandboxError::OutputTooLarge {
            path: relative.to_owned(),
            limit: max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SandboxError::io("reading the output", e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(SandboxError::OutputTooLarge {
            path: relative.to_owned(),
            limit: max_bytes,
        });
    }
    Ok(bytes)
}
