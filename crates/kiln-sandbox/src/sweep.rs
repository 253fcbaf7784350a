//! What a killed kiln left behind. Each run's cgroup (`run-<pid>-<id>`)
//! and scratch directory (`<pid>-<id>` under the sandbox root) carry the
//! pid of the kiln process that made them; a kiln that starts removes
//! those whose process is gone: a `kill -9` mid-build must not leave
//! processes, cgroups or tmpfs mounts (memory) on the host for good.

use crate::cgroup::Cgroup;
use std::path::Path;

/// A name for something this process owns: `<prefix><pid>-<random id>`.
pub(crate) fn owned_name(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The pid in a name [`owned_name`] made with `prefix`.
fn owner(name: &str, prefix: &str) -> Option<u32> {
    let (pid, id) = name.strip_prefix(prefix)?.split_once('-')?;
    let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| pid.parse().ok()).flatten()
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// What [`sweep`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Run cgroups removed, each after killing what ran in it.
    pub cgroups: usize,
    /// Scratch directories unmounted and deleted.
    pub scratch_dirs: usize,
}

/// Removes the cgroups and the scratch directories under `root` whose
/// kiln process is gone, killing whatever still runs in them.
pub fn sweep(root: &Path) -> Swept {
    let mut swept = Swept::default();
    for name in Cgroup::names() {
        if owner(&name, "run-").is_some_and(|pid| !alive(pid)) {
            Cgroup::existing(&name).remove();
            swept.cgroups += 1;
        }
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return swept;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner(&name, "").is_some_and(|pid| !alive(pid)) {
            match crate::scratch::Scratch::left_behind(entry.path()).remove() {
                Ok(()) => swept.scratch_dirs += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove a scratch directory left behind")
                }
            }
        }
    }
    if swept != Swept::default() {
        tracing::warn!(?swept, "removed what a kiln that is gone left behind");
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_owner() {
        let name = owned_name("run-");
        assert_eq!(owner(&name, "run-"), Some(std::process::id()));
        assert_eq!(owner(&name[4..], ""), Some(std::process::id()));
        for foreign in ["run-12", "run-x-0123", "bin", "12-notanid", "run-1-", ""] {
            assert_eq!(owner(foreign, "run-"), None, "{foreign}");
        }
        assert!(alive(std::process::id()));
    }
}
