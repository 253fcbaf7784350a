//! Sandbox overhead: the same cold build with and without bubblewrap.

use kiln_build::{RustConfig, RustToolchain, Toolchain};
use kiln_sandbox::{Bubblewrap, BubblewrapConfig, Limits, RunOutcome, Sandbox, Unsandboxed};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == "target" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// One cold build: a fresh scratch dir, the example copied in, compiled.
async fn build_once(
    sandbox: &dyn Sandbox,
    toolchain: &RustToolchain,
    limits: &Limits,
) -> anyhow::Result<Duration> {
    let scratch = sandbox.create_scratch(limits).await?;
    let src = scratch.path().join("src");
    copy_dir(&repo().join("examples/add-header"), &src)?;
    let prepared = toolchain.prepare(scratch.path(), &src).await?;
    let command = toolchain.build_command(&prepared);
    let started = Instant::now();
    let report = sandbox.run(&command, &scratch, limits).await?;
    let elapsed = started.elapsed();
    sandbox.remove_scratch(scratch).await?;
    anyhow::ensure!(
        report.outcome == RunOutcome::Exited(0),
        "the build failed under {}:\n{}",
        sandbox.name(),
        report.log
    );
    Ok(elapsed)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

pub async fn run(runs: usize) -> anyhow::Result<()> {
    let limits = Limits::default();
    let bwrap = Bubblewrap::new(BubblewrapConfig::default())?;
    let none = Unsandboxed::new(PathBuf::from("/var/lib/kiln/bench-unsandboxed"));
    let toolchain = RustToolchain::new(RustConfig::default())?;
    // One warm-up each: vendors the dependencies into the cache.
    build_once(&bwrap, &toolchain, &limits).await?;
    build_once(&none, &toolchain, &limits).await?;
    let (mut sandboxed, mut plain) = (Vec::new(), Vec::new());
    let mut rows = String::new();
    for run in 1..=runs {
        let a = build_once(&bwrap, &toolchain, &limits).await?;
        let b = build_once(&none, &toolchain, &limits).await?;
        rows.push_str(&format!(
            "| {run} | {:.2} | {:.2} |\n",
            a.as_secs_f64(),
            b.as_secs_f64()
        ));
        eprintln!("run {run}: bubblewrap {a:.2?}, none {b:.2?}");
        sandboxed.push(a);
        plain.push(b);
    }
    let (a, b) = (median(sandboxed), median(plain));
    let ratio = a.as_secs_f64() / b.as_secs_f64();
    let report = format!(
        "# Sandbox overhead\n\n\
         A cold `cargo build --release --target wasm32-wasip1` of `examples/add-header` (fresh target\n\
         directory, dependencies already vendored), in the bubblewrap sandbox (cgroup, seccomp, tmpfs)\n\
         and with no sandbox, alternating, on the same machine. Regenerate with\n\
         `scripts/bench sandbox {runs}` (as root).\n\n\
         Machine: {} cores, {}.\n\n\
         | run | bubblewrap (s) | no sandbox (s) |\n| --- | --- | --- |\n{rows}\n\
         **Median: bubblewrap {:.2} s, no sandbox {:.2} s, ratio {ratio:.3}×** (goal: at most 1.15×).\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model(),
        a.as_secs_f64(),
        b.as_secs_f64(),
    );
    let path = repo().join("bench/results/sandbox.md");
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(&path, &report)?;
    println!("{report}");
    Ok(())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
