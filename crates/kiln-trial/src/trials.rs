//! The server's trials (`POST /version/{id}/try`): only a few at once,
//! each in a sandboxed child, on a `.cwasm` the server compiled itself and
//! keeps for the next trial of the same version.

use crate::job::Outcome;
use crate::runner::{Runner, RunnerError};
use bytes::Bytes;
use kiln_wasm::{
    EngineSettings, HostEngine, HostError, Scenario, ScenarioResult, TrialLimits, TrialRequest,
    TrialResult,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Trials running (or compiling) at once on one server.
const CONCURRENT_TRIALS: usize = 2;
/// Compiled plugins kept for the next trial of the same version.
const CACHED_PLUGINS: usize = 16;
/// Larger `.cwasm`s are compiled again at every trial rather than kept in
/// the server's memory.
const MAX_CACHED_CWASM_BYTES: usize = 32 << 20;
/// What one trial may use: the plugin is untrusted code.
pub const TRIAL_LIMITS: TrialLimits = TrialLimits {
    fuel: 200_000_000,
    wall: Duration::from_secs(1),
    memory_bytes: 64 << 20,
    host_bytes: 16 << 20,
};

/// A module to try: the version's `.wasm`, or the `.cwasm` compiled from
/// it for an earlier trial.
pub enum Module {
    /// The version's `.wasm`; the server compiles it before the trial.
    Wasm(Bytes),
    /// A `.cwasm` from [`Trials::cached`]: the server's own compilation,
    /// never bytes a worker or customer produced.
    Compiled(Arc<Vec<u8>>),
}

/// Why a trial did not run; the plugin's own failures are in its
/// [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// The node should sandbox trials and cannot.
    #[error("this node runs trials only in the build sandbox, which it does not have ({0})")]
    Unavailable(String),
    /// The server could not compile the module into a `.cwasm`: it does
    /// not compile, or the compiler could not start.
    #[error("compiling the plugin for a trial: {0}")]
    Compile(#[source] HostError),
    /// Running the sandboxed child failed.
    #[error(transparent)]
    Runner(#[from] RunnerError),
}

enum Place {
    Sandboxed(Runner),
    /// Nowhere: the reason the node has no sandbox for them.
    Unavailable(String),
}

/// Where trials run, how many at once, and the compiled plugins kept.
pub struct Trials {
    place: Place,
    /// Compiles with the trial engine's settings, running nothing.
    compiler: OnceLock<Result<HostEngine, String>>,
    compiled: Mutex<Recent<Arc<Vec<u8>>>>,
    permits: Semaphore,
    /// Compilations running at once, held until each compile ends.
    compiles: Arc<Semaphore>,
    /// Bounds on each trial's instance ([`TRIAL_LIMITS`] by default); for
    /// a scenario, they bound all its requests together.
    pub limits: TrialLimits,
}

impl Trials {
    /// Trials in `runner`'s sandbox.
    pub fn sandboxed(runner: Runner) -> Self {
        Self::with(Place::Sandboxed(runner))
    }

    /// No trials: the node has no sandbox to run them in, for `reason`.
    pub fn unavailable(reason: String) -> Self {
        Self::with(Place::Unavailable(reason))
    }

    fn with(place: Place) -> Self {
        Self {
            place,
            compiler: OnceLock::new(),
            compiled: Mutex::new(Recent::new(CACHED_PLUGINS)),
            permits: Semaphore::new(CONCURRENT_TRIALS),
            compiles: Arc::new(Semaphore::new(CONCURRENT_TRIALS)),
            limits: TRIAL_LIMITS,
        }
    }

    /// A short name for logs.
    pub fn isolation(&self) -> &'static str {
        match &self.place {
            Place::Sandboxed(runner) => runner.sandbox_name(),
            Place::Unavailable(_) => "unavailable",
        }
    }

    /// Refuses at once on a node that cannot run trials.
    pub fn check_available(&self) -> Result<(), TrialError> {
        match &self.place {
            Place::Sandboxed(_) => Ok(()),
            Place::Unavailable(reason) => Err(TrialError::Unavailable(reason.clone())),
        }
    }

    /// The `.cwasm` compiled for an earlier trial of `key`'s module.
    pub fn cached(&self, key: &str) -> Option<Arc<Vec<u8>>> {
        lock(&self.compiled).get(key)
    }

    /// Runs `request` through `module` (the module stored at `key`).
    pub async fn run(
        &self,
        key: String,
        module: Module,
        request: TrialRequest,
    ) -> Result<Outcome<TrialResult>, TrialError> {
        let runner = self.runner()?;
        // The semaphore is never closed, so acquiring cannot fail.
        let _permit = self.permits.acquire().await.expect("never closed");
        let cwasm = self.cwasm(key, module).await?;
        Ok(runner.trial(&cwasm, request, self.limits).await?)
    }

    /// Runs `scenario` through `module` (the module stored at `key`), the
    /// limits holding for the whole scenario.
    pub async fn run_scenario(
        &self,
        key: String,
        module: Module,
        scenario: Scenario,
    ) -> Result<Outcome<ScenarioResult>, TrialError> {
        let runner = self.runner()?;
        // The semaphore is never closed, so acquiring cannot fail.
        let _permit = self.permits.acquire().await.expect("never closed");
        let cwasm = self.cwasm(key, module).await?;
        Ok(runner.scenario(&cwasm, scenario, self.limits).await?)
    }

    fn runner(&self) -> Result<&Runner, TrialError> {
        match &self.place {
            Place::Sandboxed(runner) => Ok(runner),
            Place::Unavailable(reason) => Err(TrialError::Unavailable(reason.clone())),
        }
    }

    /// The module's `.cwasm`, compiled now if it was not kept.
    async fn cwasm(&self, key: String, module: Module) -> Result<Arc<Vec<u8>>, TrialError> {
        Ok(match module {
            Module::Compiled(cwasm) => cwasm,
            Module::Wasm(wasm) => {
                let cwasm = Arc::new(self.compile(wasm).await?);
                if cwasm.len() <= MAX_CACHED_CWASM_BYTES {
                    lock(&self.compiled).put(key, cwasm.clone());
                }
                cwasm
            }
        })
    }

    /// Compiles `wasm` off the async threads. Cranelift runs none of the
    /// module's code, so what it produces is kiln's own.
    async fn compile(&self, wasm: Bytes) -> Result<Vec<u8>, TrialError> {
        let engine = self
            .compiler
            .get_or_init(|| {
                HostEngine::with_settings(&EngineSettings::trial(), false)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| TrialError::Compile(HostError::Setup(e)))?;
        // Admission holds for the compile itself, even if the request that
        // asked for it gives up.
        let permit = self
            .compiles
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            engine.precompile(&wasm)
        })
        .await
        .map_err(|e| TrialError::Compile(HostError::Setup(e.to_string())))?
        .map_err(TrialError::Compile)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `capacity` values used last, by key; the least recently used goes
/// first when a new one comes.
struct Recent<T> {
    entries: VecDeque<(String, T)>,
    capacity: usize,
}

impl<T: Clone> Recent<T> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    fn get(&mut self, key: &str) -> Option<T> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(at)?;
        let value = entry.1.clone();
        self.entries.push_front(entry);
        Some(value)
    }

    fn put(&mut self, key: String, value: T) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push_front((key, value));
        self.entries.truncate(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut recent = Recent::new(2);
        recent.put("a".into(), 1);
        recent.put("b".into(), 2);
        assert_eq!(recent.get("a"), Some(1));
        recent.put("c".into(), 3);
        assert_eq!(recent.get("b"), None, "b was used least lately");
        assert_eq!((recent.get("a"), recent.get("c")), (Some(1), Some(3)));
        recent.put("a".into(), 4);
        assert_eq!(recent.get("a"), Some(4), "a new value replaces the old");
        assert_eq!(recent.get("c"), Some(3));
    }
}
