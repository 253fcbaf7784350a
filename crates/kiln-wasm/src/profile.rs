//! Startup profile of a plugin: what an edge server pays at a cold start,
//! measured the naive way and kiln's way.

pub use crate::host::host_triple;
use crate::host::{HostEngine, HostError};
use crate::trial::{TrialLimits, TrialRequest, run_trial};
pub use kiln_domain::StartupProfile;
use std::io::Write;
use std::time::{Duration, Instant};

fn setup(e: std::io::Error) -> HostError {
    HostError::Setup(format!("writing the .cwasm to measure: {e}"))
}

/// The middle of `samples` (the upper one of an even count); zero for none.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Measures `wasm` over `runs` cold starts, JIT-compiled and precompiled
/// for `engine` (compiling is slow: at most 5 of those are JIT compiles).
/// It runs the module: kiln calls it only inside the sandbox.
pub fn startup_profile(
    engine: &HostEngine,
    wasm: &[u8],
    conf: &str,
    runs: u32,
) -> Result<StartupProfile, HostError> {
    let runs = runs.max(1);
    let mut jit = Vec::new();
    for _ in 0..runs.min(5) {
        let started = Instant::now();
        engine.compile(wasm)?;
        jit.push(started.elapsed());
    }
    let cwasm = engine.precompile(wasm)?;
    let mut file = tempfile::NamedTempFile::new().map_err(setup)?;
    file.write_all(&cwasm).map_err(setup)?;
    let (mut load, mut instantiate, mut first) = (Vec::new(), Vec::new(), Vec::new());
    let mut request = TrialRequest::get("/kiln-smoke");
    request.conf = conf.into();
    for _ in 0..runs {
        let started = Instant::now();
        // SAFETY: the file holds what `engine` just compiled, and this
        // function's temporary file is not changed while it is mapped.
        let plugin = unsafe { engine.load_trusted_file(file.path())? };
        load.push(started.elapsed());
        let result = run_trial(engine, &plugin, &request, &TrialLimits::default())?;
        instantiate.push(Duration::from_micros(result.instantiate_us));
        first.push(Duration::from_micros(result.exchange_us));
    }
    Ok(StartupProfile {
        jit_compile_us: micros(median(jit)),
        cwasm_load_us: micros(median(load)),
        instantiate_us: micros(median(instantiate)),
        first_response_us: micros(median(first)),
        runs,
    })
}
