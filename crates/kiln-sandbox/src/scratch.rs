//! A build's scratch directory: a tmpfs of fixed size on the host, so a
//! build can fill its disk but never the host's. Mounted, handed to the
//! sandbox user, unmounted and deleted by the sandbox.

use crate::SandboxError;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One build's scratch directory on the host, seen as [`GUEST_SCRATCH`]
/// inside the sandbox. Removed when dropped, if not removed before.
///
/// [`GUEST_SCRATCH`]: crate::GUEST_SCRATCH
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    /// Whether a tmpfs is mounted at `path` (the unsandboxed runner uses a
    /// plain directory).
    mounted: bool,
    removed: bool,
}

impl Scratch {
    /// The directory on the host. After a run, any part of the tree under
    /// it may be a symlink planted by the build: read what the build wrote
    /// with [`read_output_file`](crate::read_output_file), not by joining paths.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A plain directory (no tmpfs), for runs without a sandbox.
    pub(crate) fn plain(root: &Path) -> Result<Self, SandboxError> {
        let path = root.join(crate::sweep::owned_name(""));
        std::fs::create_dir_all(&path)
            .map_err(|e| SandboxError::io(format!("creating {}", path.display()), e))?;
        Ok(Self {
            path,
            mounted: false,
            removed: false,
        })
    }

    /// A tmpfs of `bytes` under `root`, owned by `uid:gid`, mode 0700.
    pub(crate) fn tmpfs(root: &Path, bytes: u64, uid: u32, gid: u32) -> Result<Self, SandboxError> {
        let path = root.join(crate::sweep::owned_name(""));
        std::fs::create_dir(&path)
            .map_err(|e| SandboxError::io(format!("creating {}", path.display()), e))?;
        let mut scratch = Self {
            path,
            mounted: false,
            removed: false,
        };
        let options = format!("size={bytes},mode=0700,uid={uid},gid={gid}");
        mount_tmpfs(&scratch.path, &options)?;
        scratch.mounted = true;
        Ok(scratch)
    }

    /// A directory another kiln made and left behind, mounted or not.
    pub(crate) fn left_behind(path: PathBuf) -> Self {
        let mounted = is_mount_point(&path);
        Self {
            path,
            mounted,
            removed: false,
        }
    }

    pub(crate) fn remove(mut self) -> Result<(), SandboxError> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<(), SandboxError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        if self.mounted {
            // Lazy: the tmpfs and its contents go as soon as nothing uses them.
            let target = c_path(&self.path);
            // SAFETY: umount2 on a path we mounted.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(SandboxError::io(
                    format!("unmounting {}", self.path.display()),
                    std::io::Error::last_os_error(),
                ));
            }
            std::fs::remove_dir(&self.path)
                .map_err(|e| SandboxError::io(format!("removing {}", self.path.display()), e))
        } else {
            std::fs::remove_dir_all(&self.path)
                .map_err(|e| SandboxError::io(format!("removing {}", self.path.display()), e))
        }
    }
}

/// Whether `path` is a mount point, from the kernel's own list.
fn is_mount_point(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let path = path.display().to_string();
    mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(path.as_str()))
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            tracing::error!(error = %e, "could not remove a scratch directory");
        }
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("scratch paths have no NUL")
}

fn mount_tmpfs(path: &Path, options: &str) -> Result<(), SandboxError> {
    let target = c_path(path);
    let data = CString::new(options).expect("options have no NUL");
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: mount(2) with valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(path);
        return Err(SandboxError::io(
            format!("mounting a tmpfs at {}", path.display()),
            e,
        ));
    }
    Ok(())
}

/// Gives everything under `dir` to `uid:gid`, never following a link.
pub(crate) fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), SandboxError> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .map_err(|e| SandboxError::io(format!("chown {}", dir.display()), e))?;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| SandboxError::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SandboxError::io(format!("reading {}", dir.display()), e))?;
        let kind = entry
            .file_type()
            .map_err(|e| SandboxError::io("file type", e))?;
        if kind.is_dir() {
            chown_tree(&entry.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))
                .map_err(|e| SandboxError::io(format!("chown {}", entry.path().display()), e))?;
        }
    }
    Ok(())
}
