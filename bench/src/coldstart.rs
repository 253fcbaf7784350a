//! Cold starts of the example filters: the naive path against kiln's.
//!
//! (a) naive: `Module::new` from the `.wasm` on an engine with the default
//!     on-demand allocator, instantiate, first request;
//! (b) kiln: deserialize the `.cwasm`, instantiate with the pooling
//!     allocator and copy-on-write memory images, first request.

use kiln_wasm::optimize::{LEVEL, wasm_opt_args};
use kiln_wasm::profile::median;
use kiln_wasm::{EngineSettings, HostEngine, TrialLimits, TrialRequest, TrialResult, run_trial};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FILTERS: [&str; 2] = ["add-header", "deny-path"];
const ROUND: usize = 50;

/// Where kiln's cold start spends its time.
#[derive(Default)]
struct Stages {
    load: Vec<Duration>,
    instantiate: Vec<Duration>,
    first_request: Vec<Duration>,
    teardown: Vec<Duration>,
}

impl Stages {
    fn record(&mut self, load: Duration, result: &TrialResult) {
        self.load.push(load);
        self.instantiate
            .push(Duration::from_micros(result.instantiate_us));
        self.first_request
            .push(Duration::from_micros(result.exchange_us));
        self.teardown
            .push(Duration::from_micros(result.teardown_us));
    }

    fn row(self, name: &str) -> String {
        let m = |samples| micros(median(samples));
        format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            m(self.load),
            m(self.instantiate),
            m(self.first_request),
            m(self.teardown)
        )
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build(name: &str) -> anyhow::Result<Vec<u8>> {
    let target = repo().join("target/filters");
    let status = std::process::Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(repo().join("examples").join(name).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()?;
    anyhow::ensure!(status.success(), "building {name} failed");
    Ok(std::fs::read(
        target
            .join("wasm32-wasip1/release")
            .join(format!("{}.wasm", name.replace('-', "_"))),
    )?)
}

/// The module after binaryen's `wasm-opt` at `level`, if it is installed.
fn optimized(wasm: &[u8], level: &str) -> Option<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let (input, output) = (dir.join("in.wasm"), dir.join("out.wasm"));
    std::fs::write(&input, wasm).ok()?;
    let status = std::process::Command::new("wasm-opt")
        .args(wasm_opt_args(
            level,
            &input.display().to_string(),
            &output.display().to_string(),
        ))
        .status()
        .ok()?;
    let bytes = status
        .success()
        .then(|| std::fs::read(&output).ok())
        .flatten();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

/// The `p`th percentile of `samples` (nearest rank).
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    let rank = (samples.len() * p).div_ceil(100).max(1);
    samples.get(rank - 1).copied().unwrap_or_default()
}

/// The time from `started` to the end of the first request: dropping the
/// instance afterwards is not part of the cold start (it is recorded apart).
fn until_answered(started: Instant, result: &TrialResult) -> Duration {
    started
        .elapsed()
        .saturating_sub(Duration::from_micros(result.teardown_us))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Both engines run plugins as an edge server does: epoch deadlines, no
/// fuel; the naive one with wasmtime's default on-demand allocator.
struct Engines {
    naive: HostEngine,
    kiln: HostEngine,
}

/// One filter's cold starts along both paths.
struct Measured {
    naive: Vec<Duration>,
    kiln: Vec<Duration>,
    stages: Stages,
    /// The median of kiln's path in each round.
    round_medians: Vec<Duration>,
}

/// The rows each filter adds to the report's tables.
#[derive(Default)]
struct Tables {
    rows: String,
    sizes: String,
    breakdown: String,
    verdicts: String,
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(runs > 0, "the number of cold starts must be at least 1");
    let engines = Engines {
        naive: HostEngine::with_settings(&EngineSettings::edge(None), false)?,
        kiln: HostEngine::edge()?,
    };
    let mut tables = Tables::default();
    for name in FILTERS {
        let wasm = build(name)?;
        // kiln's pipeline precompiles the module wasm-opt -O3 produced.
        let shipped = optimized(&wasm, LEVEL).unwrap_or_else(|| wasm.clone());
        let cwasm = engines.kiln.precompile(&shipped)?;
        let measured = measure(&engines, name, &wasm, &cwasm, runs)?;
        tables.add(name, runs, &wasm, cwasm.len(), measured);
    }
    let report = report(runs, tables);
    let path = repo().join("bench/results/coldstart.md");
    std::fs::write(&path, &report)?;
    println!("{report}");
    Ok(())
}

/// `runs` cold starts of `name` along each path, side by side, in
/// alternating rounds: a 100 ms JIT compile between two of kiln's cold
/// starts would only measure its wake in the caches.
fn measure(
    engines: &Engines,
    name: &str,
    wasm: &[u8],
    cwasm: &[u8],
    runs: usize,
) -> anyhow::Result<Measured> {
    let request = TrialRequest::get("/bench");
    let limits = TrialLimits::default();
    let cwasm_path =
        std::env::temp_dir().join(format!("kiln-bench-{name}-{}.cwasm", std::process::id()));
    std::fs::write(&cwasm_path, cwasm)?;
    let mut measured = Measured {
        naive: Vec::with_capacity(runs),
        kiln: Vec::with_capacity(runs),
        stages: Stages::default(),
        round_medians: Vec::new(),
    };
    for round in (0..runs).step_by(ROUND) {
        let this_round = round..(round + ROUND).min(runs);
        for _ in this_round.clone() {
            let started = Instant::now();
            let plugin = engines.naive.compile(wasm)?;
            let result = run_trial(&engines.naive, &plugin, &request, &limits)?;
            measured.naive.push(until_answered(started, &result));
        }
        for _ in this_round {
            let started = Instant::now();
            // SAFETY: the file holds what `engines.kiln` compiled, as an
            // edge server's cache holds a verified artifact's `.cwasm`;
            // nothing writes it while it is mapped.
            let plugin = unsafe { engines.kiln.load_trusted_file(&cwasm_path)? };
            let loaded = started.elapsed();
            let result = run_trial(&engines.kiln, &plugin, &request, &limits)?;
            measured.kiln.push(until_answered(started, &result));
            measured.stages.record(loaded, &result);
        }
        measured
            .round_medians
            .push(median(measured.kiln[round..].to_vec()));
    }
    let _ = std::fs::remove_file(&cwasm_path);
    Ok(measured)
}

impl Tables {
    /// Adds `name`'s rows: its medians and spread, its stages, whether it
    /// meets the goals, and its artifact sizes.
    fn add(&mut self, name: &str, runs: usize, wasm: &[u8], cwasm_len: usize, m: Measured) {
        let Measured {
            naive,
            mut kiln,
            stages,
            mut round_medians,
        } = m;
        let b99 = percentile(&mut kiln, 99);
        round_medians.sort();
        let (fastest, slowest) = (round_medians[0], round_medians[round_medians.len() - 1]);
        let (a, b) = (median(naive), median(kiln));
        let ratio = a.as_secs_f64() / b.as_secs_f64();
        eprintln!(
            "{name}: naive {:.0} µs, kiln {:.1} µs, {ratio:.0}×",
            micros(a),
            micros(b)
        );
        self.rows.push_str(&format!(
            "| {name} | {runs} | {:.0} | {:.1} | {ratio:.0}× | {:.0} | {:.0} to {:.0} |\n",
            micros(a),
            micros(b),
            micros(b99),
            micros(fastest),
            micros(slowest)
        ));
        self.breakdown.push_str(&stages.row(name));
        self.verdicts.push_str(&format!(
            "- {name}: (b) under 100 µs: {}; a/b at least 100×: {}.\n",
            if micros(b) < 100.0 { "met" } else { "not met" },
            if ratio >= 100.0 { "met" } else { "not met" },
        ));
        let size = |level| {
            optimized(wasm, level)
                .map_or("wasm-opt not installed".to_owned(), |m| m.len().to_string())
        };
        self.sizes.push_str(&format!(
            "| {name} | {} | {} | {} | {} |\n",
            wasm.len(),
            size(LEVEL),
            size("-Oz"),
            cwasm_len
        ));
    }
}

/// The report in Markdown, as `bench/results/coldstart.md` holds it.
fn report(runs: usize, tables: Tables) -> String {
    let Tables {
        rows,
        sizes,
        breakdown,
        verdicts,
    } = tables;
    format!(
        "# Cold start\n\n\
         What an edge server pays to start a plugin and answer its first request, for each example\n\
         filter, medians over {runs} cold starts each, run side by side on the same machine\n\
         (alternating rounds of {ROUND} of each):\n\n\
         - (a) naive: `Module::new` from the `.wasm`, wasmtime's default on-demand allocator, instantiate, first request;\n\
         - (b) kiln: deserialize the `.cwasm` kiln ships (of the `wasm-opt -O3` module, mapped from its file), instantiate with the pooling allocator (freed slots reused warm) and copy-on-write images, first request.\n\n\
         Both run with the engine settings of the `.cwasm` kiln ships (epoch deadlines, no fuel metering) and\n\
         include linking kiln's proxy-wasm host functions, creating the store and the plugin's start\n\
         (`proxy_on_vm_start`, `proxy_on_configure`), and end when the first request is done: dropping the\n\
         instance afterwards is recorded apart below. Regenerate with `scripts/bench coldstart {runs}`.\n\n\
         Machine: {} cores, {}; wasmtime 48.0.8, built with kiln's release profile (thin LTO, one codegen unit per crate).\n\n\
         | filter | cold starts | (a) naive, µs | (b) kiln, µs | a/b | (b) 99th percentile, µs | (b) medians of its rounds, µs |\n| --- | --- | --- | --- | --- | --- | --- |\n{rows}\n\
         The medians of (b)'s rounds show how much the machine's own speed moves during the run (a shared\n\
         virtual machine can run at half its speed for seconds at a time); the ratio a/b holds across it, as\n\
         both paths run in every stretch.\n\n\
         Goals on this machine:\n\n{verdicts}\n\
         kiln's path by stage (medians, µs; the rest of (b) is creating the store), and the instance's drop after it:\n\n\
         | filter | map and deserialize the `.cwasm`, link the host | instantiate | start and first request | drop the instance |\n| --- | --- | --- | --- | --- |\n{breakdown}\n\
         Artifact sizes in bytes:\n\n\
         | filter | .wasm | after `wasm-opt -O3` (kiln's default) | after `wasm-opt -Oz` | .cwasm (of the -O3 module) |\n| --- | --- | --- | --- | --- |\n{sizes}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        crate::sandbox::cpu_model(),
    )
}
