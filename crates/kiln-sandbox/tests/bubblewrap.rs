//! The bubblewrap sandbox against hostile commands, for real: bubblewrap,
//! cgroups and seccomp on this host (run as root, as kiln's workers are).

use kiln_sandbox::{
    Bubblewrap, BubblewrapConfig, Limits, Mount, MountKind, RunOutcome, RunReport, Sandbox,
    SandboxCommand, SandboxError, read_output_file,
};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn sandbox() -> Bubblewrap {
    let config = BubblewrapConfig {
        root: PathBuf::from("/var/lib/kiln/sandbox-tests"),
        ..Default::default()
    };
    Bubblewrap::new(config).expect("the sandbox is available (scripts/install-prereqs)")
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 256 << 20,
        max_processes: 64,
        cpu_cores: 1.0,
        wall_time: Duration::from_secs(30),
        no_output: Some(Duration::from_secs(30)),
        disk_bytes: 16 << 20,
        max_log_bytes: 64 << 10,
    }
}

fn sh(script: &str) -> SandboxCommand {
    SandboxCommand {
        program: "/bin/bash".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("KILN_VISIBLE".into(), "yes".into()),
        ],
        cwd: "/build".into(),
        mounts: Vec::new(),
        output_tap: None,
    }
}

/// Runs `cmd` in a fresh scratch dir and checks that nothing is left.
async fn run_with(
    cmd: SandboxCommand,
    limits: Limits,
    inspect: impl FnOnce(&kiln_sandbox::Scratch),
) -> RunReport {
    let sandbox = sandbox();
    let scratch = sandbox.create_scratch(&limits).await.unwrap();
    let path = scratch.path().to_owned();
    let report = sandbox.run(&cmd, &scratch, &limits).await.unwrap();
    inspect(&scratch);
    sandbox.remove_scratch(scratch).await.unwrap();
    assert!(!path.exists(), "scratch dir removed");
    assert!(
        !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(&path.display().to_string()),
        "tmpfs unmounted"
    );
    assert_no_sandbox_processes();
    report
}

async fn run(script: &str) -> RunReport {
    run_with(sh(script), limits(), |_| {}).await
}

fn sandbox_uid() -> u32 {
    let out = std::process::Command::new("id")
        .args(["-u", "kiln-sandbox"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// No process of the sandbox user outlives its run. (Other tests run in
/// parallel, so this only counts processes outside any live kiln cgroup.)
fn assert_no_sandbox_processes() {
    let uid = sandbox_uid();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let owned = status.lines().any(|l| {
            l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())
        });
        // A zombie has exited; it only waits for its parent to reap it.
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("Z (zombie)"));
        if !owned || zombie {
            continue;
        }
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        assert!(
            cgroup.contains("/kiln/run-"),
            "a sandbox process escaped its cgroup: {status}"
        );
    }
}

#[tokio::test]
async fn output_exit_code_and_a_clean_environment() {
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("KILN_HOST_SECRET_ENV", "host-only") };
    let report = run("id -u; echo out; echo err >&2; cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'; env; exit 7").await;
    assert_eq!(report.outcome, RunOutcome::Exited(7));
    assert!(report.log.contains("out") && report.log.contains("err"));
    assert!(report.log.contains("KILN_VISIBLE=yes"), "{}", report.log);
    assert!(
        !report.log.contains("host-only"),
        "host env leaked: {}",
        report.log
    );
    assert!(!report.log.contains("HOME=/root"), "{}", report.log);
    let uid = report.log.lines().next().unwrap();
    assert_ne!(uid, "0", "runs as an unprivileged user");
}

#[tokio::test]
async fn there_is_no_network() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let report = run(&format!(
        "(echo hello > /dev/tcp/127.0.0.1/{port}) 2>&1 && echo CONNECTED; (echo x > /dev/tcp/1.1.1.1/443) 2>&1 && echo OUT; getent hosts crates.io && echo DNS; true"
    ))
    .await;
    assert!(
        !report.log.contains("CONNECTED")
            && !report.log.contains("OUT")
            && !report.log.contains("DNS"),
        "{}",
        report.log
    );
    assert!(
        listener.accept().is_err(),
        "the host listener saw a connection"
    );
}

#[tokio::test]
async fn host_files_are_invisible_and_unwritable() {
    let secret_dir = tempfile::tempdir_in("/root").unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "kiln-host-secret-4711").unwrap();
    let tmp_marker = format!("/tmp/kiln-escape-{}", uuid());
    let report = run(&format!(
        "cat {s}; cat /etc/shadow; ls /root /home /work /var /run /sys; echo x > /usr/kiln-escape; echo x > {tmp_marker}; echo done",
        s = secret.display()
    ))
    .await;
    assert!(report.log.contains("done"));
    assert!(
        !report.log.contains("kiln-host-secret-4711"),
        "{}",
        report.log
    );
    assert!(!Path::new("/usr/kiln-escape").exists());
    assert!(
        !Path::new(&tmp_marker).exists(),
        "the sandbox's /tmp is its own"
    );
}

#[tokio::test]
async fn dangerous_syscalls_are_refused() {
    let report =
        run("unshare -r true && echo UNSHARED; mount -t tmpfs x /build && echo MOUNTED; echo end")
            .await;
    assert!(report.log.contains("end"), "{}", report.log);
    assert!(
        !report.log.contains("UNSHARED") && !report.log.contains("MOUNTED"),
        "{}",
        report.log
    );
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    let started = Instant::now();
    let limits = Limits {
        wall_time: Duration::from_secs(5),
        ..limits()
    };
    let script =
        "(:(){ :|:& };:) 2>/dev/null; sleep 2; echo processes=$(ls /proc | grep -c '^[0-9]')";
    let report = run_with(sh(script), limits, |_| {}).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let count: u32 = report
        .log
        .lines()
        .find_map(|l| l.strip_prefix("processes="))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0);
    assert!(
        count <= 64,
        "the pids limit held: {count} processes\n{}",
        report.log
    );
}

#[tokio::test]
async fn memory_is_limited() {
    let report = run("tail /dev/zero").await;
    assert_eq!(report.outcome, RunOutcome::OutOfMemory, "{}", report.log);
    let peak = report.peak_memory_bytes.unwrap_or(0);
    assert!(peak <= (256 << 20) + (4 << 20), "peak {peak}");
}

#[tokio::test]
async fn wall_time_is_limited() {
    let started = Instant::now();
    let limits = Limits {
        wall_time: Duration::from_secs(2),
        ..limits()
    };
    let report = run_with(sh("sleep 3600 & sleep 3600"), limits, |_| {}).await;
    assert_eq!(report.outcome, RunOutcome::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn a_silent_build_is_stopped_at_the_no_output_limit() {
    let started = Instant::now();
    let limits = Limits {
        no_output: Some(Duration::from_secs(2)),
        ..limits()
    };
    // A child keeps the pipes open: the whole cgroup must go.
    let report = run_with(sh("echo started; sleep 3600 & sleep 3600"), limits, |_| {}).await;
    assert_eq!(report.outcome, RunOutcome::IdleTimedOut, "{}", report.log);
    assert!(report.log.contains("started"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_build_that_keeps_printing_is_not_stopped_for_silence() {
    let started = Instant::now();
    let limits = Limits {
        no_output: Some(Duration::from_secs(2)),
        ..limits()
    };
    let report = run_with(
        sh("for i in 1 2 3 4 5 6 7 8; do echo tick $i >&2; sleep 0.5; done; echo done"),
        limits,
        |_| {},
    )
    .await;
    assert_eq!(report.outcome, RunOutcome::Exited(0), "{}", report.log);
    assert!(report.log.contains("done"));
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "ran longer than the limit"
    );
}

/// The compiler's output quotes the customer's code: multibyte text past
/// the cap is cut on a character boundary.
#[tokio::test]
async fn multibyte_output_past_the_cap_is_cut_on_a_character_boundary() {
    let report = run("yes 'x🦀é日' | head -c 300000").await;
    assert!(report.log_truncated);
    let (kept, _) = report
        .log
        .split_once("\n[kiln: log truncated after 65536 bytes")
        .expect("a truncation marker");
    assert!(kept.len() <= 64 << 10 && kept.len() > (64 << 10) - 4);
    assert!(!kept.contains('\u{FFFD}'), "a cut character was kept");
    assert!("x🦀é日\n".repeat(10_000).starts_with(kept));
}

#[tokio::test]
async fn the_log_is_capped() {
    let report = run("head -c 100M /dev/zero | tr '\\0' x; echo").await;
    assert!(report.log_truncated);
    assert!(report.log.len() < (64 << 10) + 200);
    assert!(
        report
            .log
            .contains("[kiln: log truncated after 65536 bytes")
    );
}

#[tokio::test]
async fn the_disk_is_limited() {
    let report = run("head -c 64M /dev/zero > /build/big || echo NOSPACE; ls -la /build/big").await;
    assert!(
        report.log.contains("NOSPACE") || report.log.contains("No space"),
        "{}",
        report.log
    );
}

#[tokio::test]
async fn outputs_are_read_without_following_links() {
    let cmd = sh(
        "echo wasm > /build/out.wasm; ln -s /etc/passwd /build/evil.wasm; mkdir -p /build/d; ln -s /etc /build/link; head -c 2048 /dev/zero > /build/big.wasm; mkfifo /build/fifo.wasm",
    );
    run_with(cmd, limits(), |scratch| {
        assert_eq!(
            read_output_file(scratch, Path::new("out.wasm"), 1024).unwrap(),
            b"wasm\n"
        );
        for path in ["evil.wasm", "link/passwd", "fifo.wasm", "d", "../x"] {
            assert!(
                matches!(
                    read_output_file(scratch, Path::new(path), 1024),
                    Err(SandboxError::OutputNotAFile { .. })
                ),
                "{path}"
            );
        }
        assert!(matches!(
            read_output_file(scratch, Path::new("big.wasm"), 1024),
            Err(SandboxError::OutputTooLarge { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn read_only_mounts_are_read_only() {
    let dir = tempfile::tempdir_in("/var/lib/kiln").unwrap();
    std::fs::write(dir.path().join("dep.txt"), "dependency").unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = sh("cat /deps/dep.txt; echo x > /deps/dep.txt || echo READONLY");
    cmd.mounts.push(Mount {
        host: dir.path().to_owned(),
        guest: "/deps".into(),
        kind: MountKind::ReadOnly,
    });
    let report = run_with(cmd, limits(), |_| {}).await;
    assert!(
        report.log.contains("dependency") && report.log.contains("READONLY"),
        "{}",
        report.log
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("dep.txt")).unwrap(),
        "dependency"
    );
}

#[tokio::test]
async fn dropping_a_run_kills_it() {
    let sandbox = sandbox();
    let limits = limits();
    let scratch = sandbox.create_scratch(&limits).await.unwrap();
    let cmd = sh("sleep 3600");
    let run = sandbox.run(&cmd, &scratch, &limits);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .is_err()
    );
    sandbox.remove_scratch(scratch).await.unwrap();
    assert_no_sandbox_processes();
}

fn uuid() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    )
}

/// A kiln killed mid-build leaves its run's cgroup, with processes in it,
/// and its scratch tmpfs. The next sandbox to start on the host removes
/// them, and leaves alone what a live kiln owns.
#[test]
fn a_starting_sandbox_removes_what_a_killed_kiln_left() {
    let root = PathBuf::from("/var/lib/kiln/sandbox-tests-sweep");
    std::fs::create_dir_all(&root).unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = gone.id();
    let id = |n: u8| {
        format!(
            "{:032x}",
            u128::from(n) << 64 | u128::from(std::process::id())
        )
    };
    let (orphan, live) = (
        format!("run-{dead}-{}", id(1)),
        format!("run-{}-{}", std::process::id(), id(2)),
    );
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let dirs = |name: &str| -> Vec<PathBuf> {
        let hierarchies: &[&str] = if v2 { &[""] } else { &["memory", "pids"] };
        hierarchies
            .iter()
            .map(|h| Path::new("/sys/fs/cgroup").join(h).join("kiln").join(name))
            .collect()
    };
    // The sandbox makes kiln's parent cgroup as it starts.
    drop(sandbox());
    let mut sleeper = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    for dir in dirs(&orphan).iter().chain(&dirs(&live)) {
        std::fs::create_dir_all(dir).unwrap();
    }
    for dir in dirs(&orphan) {
        std::fs::write(dir.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    }
    let left = root.join(format!("{dead}-{}", id(3)));
    let kept = root.join(format!("{}-{}", std::process::id(), id(4)));
    for dir in [&left, &kept] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&left)
        .status()
        .unwrap();
    assert!(mounted.success());
    std::fs::write(left.join("half-built"), "x").unwrap();

    Bubblewrap::new(BubblewrapConfig {
        root: root.clone(),
        ..Default::default()
    })
    .unwrap();
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the orphan's process was killed");
    assert!(
        dirs(&orphan).iter().all(|d| !d.exists()),
        "orphan cgroup removed"
    );
    assert!(!left.exists(), "the orphan's scratch tmpfs is gone");
    assert!(
        !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(&left.display().to_string()),
        "and unmounted"
    );
    assert!(
        dirs(&live).iter().all(|d| d.exists()),
        "a live kiln's cgroup stays"
    );
    assert!(kept.exists(), "a live kiln's scratch stays");
    for dir in dirs(&live) {
        std::fs::remove_dir(dir).unwrap();
    }
    std::fs::remove_dir(&kept).unwrap();
}
