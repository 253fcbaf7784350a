//! The seccomp filter every sandboxed process runs under: the syscalls a
//! compiler never needs and an attacker would love (kernel modules,
//! tracing other processes, new namespaces and mounts, eBPF, io_uring…)
//! fail with EPERM. bwrap installs it just before it execs the command.

use crate::SandboxError;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd};

const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_fanotify_init,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_settimeofday,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_vhangup,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

fn program() -> Result<BpfProgram, SandboxError> {
    let rules = DENIED
        .iter()
        .map(|&syscall| (syscall, Vec::new()))
        .collect::<BTreeMap<_, _>>();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
}

/// The compiled filter in an inheritable memory file, positioned at its
/// start, ready for `bwrap --seccomp FD`.
pub(crate) fn filter_fd() -> Result<OwnedFd, SandboxError> {
    let mut bytes = Vec::new();
    for insn in program()? {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    // No MFD_CLOEXEC: bwrap must inherit it.
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"kiln-seccomp".as_ptr(), 0) };
    if fd < 0 {
        return Err(SandboxError::io(
            "creating the seccomp memfd",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd was just created and is owned here.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(owned);
    file.write_all(&bytes)
        .map_err(|e| SandboxError::io("writing the seccomp filter", e))?;
    file.rewind()
        .map_err(|e| SandboxError::io("rewinding the seccomp filter", e))?;
    Ok(OwnedFd::from(file))
}
