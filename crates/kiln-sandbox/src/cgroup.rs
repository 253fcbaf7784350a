//! One cgroup per run: memory, processes and CPU limits for the whole
//! process tree, a reliable way to kill all of it, and the OOM verdict.
//! cgroup v2 where the host has it (`/sys/fs/cgroup/cgroup.controllers`),
//! v1 otherwise (one directory per controller).

use crate::{Limits, SandboxError};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
/// kiln's subtree under each hierarchy.
const PARENT: &str = "kiln";
const CPU_PERIOD_US: u64 = 100_000;
/// How long to keep killing before giving up on an emptied cgroup.
const KILL_DEADLINE: Duration = Duration::from_secs(10);
/// The cgroup v1 hierarchies a run gets a directory in (those present).
const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "freezer"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

#[derive(Debug)]
pub(crate) struct Cgroup {
    version: Version,
    /// v2: one directory; v1: memory, pids, cpu, freezer (those present).
    dirs: Vec<PathBuf>,
    removed: bool,
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    std::fs::write(path, value).map_err(|source| SandboxError::Cgroup {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The value of `key` in a flat-keyed file such as `memory.events`.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    read(path)?.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn detect() -> Version {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        Version::V2
    } else {
        Version::V1
    }
}

/// Whether this host can give each run a cgroup, with a reason if not.
pub(crate) fn check_available() -> Result<(), SandboxError> {
    let missing: Vec<&str> = match detect() {
        Version::V2 => {
            let controllers = read(&Path::new(ROOT).join("cgroup.controllers")).unwrap_or_default();
            ["memory", "pids", "cpu"]
                .into_iter()
                .filter(|c| !controllers.split_whitespace().any(|x| x == *c))
                .collect()
        }
        Version::V1 => ["memory", "pids"]
            .into_iter()
            .filter(|c| !Path::new(ROOT).join(c).join("cgroup.procs").exists())
            .collect(),
    };
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SandboxError::Unavailable(format!(
            "the cgroup controllers {} are not available under {ROOT}; kiln needs them to limit builds",
            missing.join(", ")
        )))
    }
}

impl Cgroup {
    /// The names of the cgroups under kiln's parent, in every hierarchy.
    pub(crate) fn names() -> Vec<String> {
        let parents: Vec<PathBuf> = match detect() {
            Version::V2 => vec![Path::new(ROOT).join(PARENT)],
            Version::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| Path::new(ROOT).join(c).join(PARENT))
                .collect(),
        };
        let mut names: Vec<String> = parents
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The cgroup `name` as it exists now, to kill and remove it.
    pub(crate) fn existing(name: &str) -> Self {
        let version = detect();
        let dirs = match version {
            Version::V2 => vec![Path::new(ROOT).join(PARENT).join(name)],
            Version::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| Path::new(ROOT).join(c).join(PARENT).join(name))
                .collect(),
        };
        Cgroup {
            version,
            dirs: dirs.into_iter().filter(|d| d.is_dir()).collect(),
            removed: false,
        }
    }

    /// Creates the cgroup `name` with `limits`.
    pub(crate) fn create(name: &str, limits: &Limits) -> Result<Self, SandboxError> {
        let version = detect();
        let mut cgroup = Cgroup {
            version,
            dirs: Vec::new(),
            removed: false,
        };
        match version {
            Version::V2 => cgroup.create_v2(name, limits)?,
            Version::V1 => cgroup.create_v1(name, limits)?,
        }
        Ok(cgroup)
    }

    fn make_dir(&mut self, dir: PathBuf) -> Result<PathBuf, SandboxError> {
        std::fs::create_dir(&dir).map_err(|source| SandboxError::Cgroup {
            path: dir.clone(),
            source,
        })?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    fn create_v2(&mut self, name: &str, limits: &Limits) -> Result<(), SandboxError> {
        let root = Path::new(ROOT);
        let parent = root.join(PARENT);
        let _ = std::fs::create_dir(&parent);
        for dir in [root, parent.as_path()] {
            write(&dir.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
        }
        let dir = self.make_dir(parent.join(name))?;
        write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
        let _ = write(&dir.join("memory.swap.max"), "0");
        write(&dir.join("pids.max"), &limits.max_processes.to_string())?;
        write(
            &dir.join("cpu.max"),
            &format!("{} {CPU_PERIOD_US}", cpu_quota(limits)),
        )?;
        Ok(())
    }

    fn create_v1(&mut self, name: &str, limits: &Limits) -> Result<(), SandboxError> {
        for controller in V1_CONTROLLERS {
            let hierarchy = Path::new(ROOT).join(controller);
            if !hierarchy.join("cgroup.procs").exists() {
                continue;
            }
            let parent = hierarchy.join(PARENT);
            let _ = std::fs::create_dir(&parent);
            let dir = self.make_dir(parent.join(name))?;
            match controller {
                "memory" => {
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                    // With swap accounting, memory+swap gets the same limit: no swapping past it.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &limits.memory_bytes.to_string())?;
                    }
                }
                "pids" => write(&dir.join("pids.max"), &limits.max_processes.to_string())?,
                "cpu" => {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(
                        &dir.join("cpu.cfs_quota_us"),
                        &cpu_quota(limits).to_string(),
                    )?;
                }
                _ => {}
            }
        }
        if !self
            .dirs
            .iter()
            .any(|d| d.starts_with(Path::new(ROOT).join("memory")))
        {
            return Err(SandboxError::Unavailable(
                "the memory cgroup controller is not mounted".into(),
            ));
        }
        Ok(())
    }

    /// The `cgroup.procs` files a child writes itself into before it execs,
    /// prepared before the fork (the child may only make raw syscalls).
    pub(crate) fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes())
                    .expect("cgroup paths have no NUL")
            })
            .collect()
    }

    fn dir_of(&self, controller: &str) -> Option<&Path> {
        match self.version {
            Version::V2 => self.dirs.first().map(PathBuf::as_path),
            Version::V1 => self
                .dirs
                .iter()
                .find(|d| d.starts_with(Path::new(ROOT).join(controller)))
                .map(PathBuf::as_path),
        }
    }

    fn pids(&self) -> Vec<i32> {
        let Some(dir) = self.dir_of("memory") else {
            return Vec::new();
        };
        read(&dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// Kills every process in the cgroup, until none is left. Freezing first
    /// (where possible) keeps a fork bomb from outrunning the kills.
    pub(crate) fn kill_all(&self) {
        if self.version == Version::V2
            && let Some(dir) = self.dir_of("memory")
        {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        let freezer = self
            .dir_of("freezer")
            .filter(|_| self.version == Version::V1)
            .map(Path::to_owned);
        let deadline = Instant::now() + KILL_DEADLINE;
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            if let Some(f) = &freezer {
                let _ = std::fs::write(f.join("freezer.state"), "FROZEN");
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid read from our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Some(f) = &freezer {
                let _ = std::fs::write(f.join("freezer.state"), "THAWED");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !self.is_empty() {
            tracing::error!(dirs = ?self.dirs, "processes survived SIGKILL in a build cgroup");
        }
    }

    /// Whether the kernel's OOM killer acted in this cgroup.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(dir) = self.dir_of("memory") else {
            return false;
        };
        let count = match self.version {
            Version::V2 => keyed(&dir.join("memory.events"), "oom_kill"),
            Version::V1 => keyed(&dir.join("memory.oom_control"), "oom_kill"),
        };
        count.unwrap_or(0) > 0
    }

    pub(crate) fn peak_memory(&self) -> Option<u64> {
        let dir = self.dir_of("memory")?;
        let file = match self.version {
            Version::V2 => "memory.peak",
            Version::V1 => "memory.max_usage_in_bytes",
        };
        read(&dir.join(file))?.trim().parse().ok()
    }

    /// Kills what is left and removes the cgroup directories.
    pub(crate) fn remove(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        self.kill_all();
        for dir in self.dirs.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            // rmdir fails with EBUSY until the last task is reaped.
            while let Err(e) = std::fs::remove_dir(dir) {
                if e.kind() == std::io::ErrorKind::NotFound || Instant::now() > deadline {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::error!(dir = %dir.display(), error = %e, "could not remove a build cgroup");
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn cpu_quota(limits: &Limits) -> u64 {
    ((limits.cpu_cores.max(0.01)) * CPU_PERIOD_US as f64) as u64
}
