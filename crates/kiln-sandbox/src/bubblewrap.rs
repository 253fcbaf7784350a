//! The default sandbox: bubblewrap, started as a dedicated unprivileged
//! user under an empty environment, inside a cgroup with hard limits, with
//! every namespace unshared (no network), no capabilities, a seccomp
//! filter, and only /usr (read-only), the command's mounts and the
//! build's scratch directory visible.

use crate::cgroup::{self, Cgroup};
use crate::log::{self, Waited};
use crate::scratch::{Scratch, chown_tree};
use crate::{
    GUEST_SCRATCH, Limits, MountKind, RunOutcome, RunReport, Sandbox, SandboxCommand, SandboxError,
    seccomp,
};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

/// Host files a compiler needs besides /usr: the dynamic linker's cache
/// and `/etc/alternatives`, where Debian's `cc` points.
const ETC_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
];
/// Top-level directories that are symlinks into /usr on merged-usr hosts.
const USR_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];
/// Size of the sandbox's own /tmp (builds use their scratch dir).
const TMP_BYTES: u64 = 64 * 1024 * 1024;

/// Where [`Bubblewrap`] finds bwrap, which user builds run as, and where
/// their scratch directories go.
#[derive(Debug, Clone)]
pub struct BubblewrapConfig {
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
    /// The unprivileged user builds run as.
    pub user: String,
    /// Where scratch directories are mounted; traversable by that user.
    pub root: PathBuf,
}

impl Default for BubblewrapConfig {
    fn default() -> Self {
        Self {
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            user: "kiln-sandbox".into(),
            root: PathBuf::from("/var/lib/kiln/sandbox"),
        }
    }
}

/// The default [`Sandbox`]: each run under bwrap as the unprivileged
/// sandbox user, in its own cgroup, with no network and a seccomp filter.
/// Needs root on the host to set that up.
#[derive(Debug)]
pub struct Bubblewrap {
    config: BubblewrapConfig,
    uid: u32,
    gid: u32,
}

const INSTALL_HINT: &str =
    "run scripts/install-prereqs (or: apt-get install bubblewrap; useradd --system kiln-sandbox)";

fn lookup_user(name: &str) -> Result<(u32, u32), SandboxError> {
    let c = CString::new(name)
        .map_err(|_| SandboxError::Unavailable(format!("invalid user name {name:?}")))?;
    // SAFETY: getpwnam with a valid C string; the fields are copied out at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(SandboxError::Unavailable(format!(
            "the sandbox user {name:?} does not exist; {INSTALL_HINT}"
        )));
    }
    // SAFETY: pw is non-null and points to libc's static passwd entry.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    if uid == 0 {
        return Err(SandboxError::Unavailable(format!(
            "the sandbox user {name:?} must not be root"
        )));
    }
    Ok((uid, gid))
}

impl Bubblewrap {
    /// Checks everything the sandbox needs, so a worker refuses to start
    /// rather than build unsandboxed.
    pub fn new(config: BubblewrapConfig) -> Result<Self, SandboxError> {
        if !config.bwrap.exists() {
            return Err(SandboxError::Unavailable(format!(
                "bubblewrap is not installed at {}; {INSTALL_HINT}",
                config.bwrap.display()
            )));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(SandboxError::Unavailable(
                "the bubblewrap sandbox needs root to set up cgroups and switch to the sandbox user".into(),
            ));
        }
        let (uid, gid) = lookup_user(&config.user)?;
        cgroup::check_available()?;
        create_traversable(&config.root)?;
        crate::sweep::sweep(&config.root);
        Ok(Self { config, uid, gid })
    }

    fn arguments(
        &self,
        cmd: &SandboxCommand,
        scratch: &Scratch,
        limits: &Limits,
        seccomp_fd: i32,
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
            "--hostname",
            "kiln-build",
            "--ro-bind",
            "/usr",
            "/usr",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]
        .map(String::from)
        .to_vec();
        for link in USR_LINKS {
            if let Ok(target) = std::fs::read_link(link) {
                args.extend([
                    "--symlink".into(),
                    target.display().to_string(),
                    link.to_string(),
                ]);
            } else if Path::new(link).is_dir() {
                args.extend(["--ro-bind".into(), link.to_string(), link.to_string()]);
            }
        }
        for file in ETC_FILES.iter().filter(|f| Path::new(f).exists()) {
            args.extend(["--ro-bind".into(), file.to_string(), file.to_string()]);
        }
        args.extend([
            "--size".into(),
            TMP_BYTES.min(limits.disk_bytes).to_string(),
            "--tmpfs".into(),
            "/tmp".into(),
        ]);
        args.extend([
            "--bind".into(),
            scratch.path().display().to_string(),
            GUEST_SCRATCH.into(),
        ]);
        for mount in &cmd.mounts {
            let flag = match mount.kind {
                MountKind::ReadOnly => "--ro-bind",
                MountKind::ReadWrite => "--bind",
            };
            args.extend([
                flag.into(),
                mount.host.display().to_string(),
                mount.guest.display().to_string(),
            ]);
        }
        for (key, value) in &cmd.env {
            args.extend(["--setenv".into(), key.clone(), value.clone()]);
        }
        args.extend(["--chdir".into(), cmd.cwd.display().to_string()]);
        args.extend([
            "--seccomp".into(),
            seccomp_fd.to_string(),
            "--".into(),
            cmd.program.display().to_string(),
        ]);
        args.extend(cmd.args.iter().cloned());
        args
    }
}

/// Creates `dir` and its parents so the sandbox user can pass through
/// (0711: no listing of other builds' directories).
fn create_traversable(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;
    let mut at = Some(dir);
    while let Some(d) = at {
        if d == Path::new("/") {
            break;
        }
        let mode = std::fs::metadata(d)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o001 == 0 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode((mode & 0o7777) | 0o711))
                .map_err(|e| {
                SandboxError::io(format!("opening {} to the sandbox user", d.display()), e)
            })?;
        }
        at = d.parent();
    }
    Ok(())
}

/// Async-signal-safe steps between fork and exec: join the cgroup while
/// still root, then drop to the sandbox user for good.
fn enter_cgroup_and_drop_privileges(procs: &[CString], uid: u32, gid: u32) -> std::io::Result<()> {
    for file in procs {
        // SAFETY: raw syscalls only; the C strings were built before the fork.
        unsafe {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
        }
    }
    // SAFETY: plain credential syscalls; order matters (groups and gid first).
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getuid() != uid {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        // The bwrap process dies with the worker (reset by setuid, so set it after).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    Ok(())
}

#[async_trait::async_trait]
impl Sandbox for Bubblewrap {
    async fn create_scratch(&self, limits: &Limits) -> Result<Scratch, SandboxError> {
        Scratch::tmpfs(&self.config.root, limits.disk_bytes, self.uid, self.gid)
    }

    async fn run(
        &self,
        cmd: &SandboxCommand,
        scratch: &Scratch,
        limits: &Limits,
    ) -> Result<RunReport, SandboxError> {
        // The build user must own the tree it writes to; the walk covers
        // whatever an earlier run left (a whole target/), so it runs on
        // the blocking pool.
        let (tree, uid, gid) = (scratch.path().to_owned(), self.uid, self.gid);
        tokio::task::spawn_blocking(move || chown_tree(&tree, uid, gid))
            .await
            .map_err(|e| SandboxError::io("chown of the scratch", std::io::Error::other(e)))??;
        let name = crate::sweep::owned_name("run-");
        let cgroup = Cgroup::create(&name, limits)?;
        let seccomp = seccomp::filter_fd()?;
        let args = self.arguments(cmd, scratch, limits, seccomp.as_raw_fd());
        let procs = cgroup.procs_files();
        let (uid, gid) = (self.uid, self.gid);

        let mut command = tokio::process::Command::new(&self.config.bwrap);
        command
            .args(&args)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: the closure only makes async-signal-safe syscalls.
        unsafe { command.pre_exec(move || enter_cgroup_and_drop_privileges(&procs, uid, gid)) };
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| SandboxError::io("starting bubblewrap", e))?;
        drop(seccomp);

        let capture = log::Capture::start(&mut child, limits.max_log_bytes, cmd.output_tap.clone());

        let waited = capture.wait(&mut child, limits).await;
        // Whatever happened, nothing of the run outlives it.
        let kill = tokio::task::spawn_blocking(move || {
            cgroup.kill_all();
            cgroup
        });
        let cgroup = kill
            .await
            .map_err(|e| SandboxError::io("killing the run", std::io::Error::other(e)))?;
        let ended = match waited {
            Waited::Exited(status) => {
                Ok(status.map_err(|e| SandboxError::io("waiting for bubblewrap", e))?)
            }
            Waited::Stopped(outcome) => {
                let _ = child.kill().await;
                Err(outcome)
            }
        };
        let (log, log_truncated) = capture.finish().await;
        let outcome = match ended {
            Err(stopped) => stopped,
            Ok(_) if cgroup.oom_killed() => RunOutcome::OutOfMemory,
            Ok(status) => RunOutcome::of(status),
        };
        let peak_memory_bytes = cgroup.peak_memory();
        tokio::task::spawn_blocking(move || cgroup.remove())
            .await
            .map_err(|e| SandboxError::io("removing the cgroup", std::io::Error::other(e)))?;
        Ok(RunReport {
            outcome,
            log,
            log_truncated,
            duration: started.elapsed(),
            peak_memory_bytes,
        })
    }

    async fn remove_scratch(&self, scratch: Scratch) -> Result<(), SandboxError> {
        tokio::task::spawn_blocking(move || scratch.remove())
            .await
            .map_err(|e| {
                SandboxError::io("removing the scratch directory", std::io::Error::other(e))
            })?
    }

    fn name(&self) -> &'static str {
        "bubblewrap"
    }
}
