//! The wasmtime engine kiln runs plugins with, its settings, and the store
//! each instance gets.

use super::{HostError, HostState, InstanceLimits, Plugin, proxy, wasi};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, OptLevel, PoolingAllocationConfig,
    Store, StoreLimits, StoreLimitsBuilder,
};

/// How often the engine's epoch advances; deadlines are counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bytes of a freed table slot that are reset in place rather than given
/// back to the kernel (see [`config`]): 512 function references.
const KEEP_RESIDENT_TABLE: usize = 4 << 10;
/// Freed slots kept for reuse by the plugin that last ran in them.
const WARM_SLOTS: u32 = 8;

/// Engine settings that a precompiled module must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSettings {
    /// Cross-compilation target triple; `None` for this host.
    pub target: Option<String>,
    /// Fuel metering besides epoch deadlines: a plugin's work is counted
    /// per instruction, so a limit does not depend on the machine's speed.
    /// Its counting costs at every instruction, so only kiln's own runs of
    /// a plugin meter fuel, not the `.cwasm` kiln ships.
    pub fuel: bool,
}

impl EngineSettings {
    /// kiln's own runs of untrusted plugins (`try`, pre-initialization,
    /// smoke requests): fuel and epoch deadlines.
    pub fn trial() -> Self {
        Self {
            target: None,
            fuel: true,
        }
    }

    /// The `.cwasm` kiln ships to edge servers, for `target` (`None`: this
    /// host): epoch deadlines bound a plugin's time, without fuel's cost.
    pub fn edge(target: Option<String>) -> Self {
        Self {
            target,
            fuel: false,
        }
    }
}

/// A wasmtime engine with kiln's settings: fuel, epoch interruption, the
/// pooling allocator and copy-on-write memory images.
#[derive(Clone)]
pub struct HostEngine {
    engine: Engine,
    /// The triple of what it compiles, as `?target=` names it.
    target: String,
    fuel: bool,
    ticking: Arc<AtomicBool>,
    /// The host functions, linked once per engine: each plugin clones them
    /// (a cold start should not pay for defining sixty functions).
    base: Arc<OnceLock<Result<BaseLinker, String>>>,
}

pub(super) struct BaseLinker {
    pub(super) linker: Linker<HostState>,
    pub(super) defined: HashSet<(&'static str, &'static str)>,
}

impl Drop for HostEngine {
    fn drop(&mut self) {
        if Arc::strong_count(&self.ticking) == 1 {
            self.ticking.store(false, Ordering::Relaxed);
        }
    }
}

/// Instances the pooling allocator holds slots for at once (memories,
/// tables and instances alike): the most plugins one engine runs at a time.
const POOL_SLOTS: u32 = 256;
/// The largest linear memory a pooled slot can hold, in bytes; an
/// instance's own limit (`InstanceLimits::memory_bytes`) is lower.
const POOL_MAX_MEMORY_BYTES: usize = 256 << 20;

impl std::fmt::Debug for HostEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostEngine")
    }
}

fn config(settings: &EngineSettings, pooling: bool) -> Result<Config, HostError> {
    let mut config = Config::new();
    config
        .consume_fuel(settings.fuel)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            .total_core_instances(POOL_SLOTS)
            .max_memory_size(POOL_MAX_MEMORY_BYTES)
            // Slots whose plugin has gone are reused before fresh ones, so
            // the slots holding resident pages stay few and warm.
            .max_unused_warm_slots(WARM_SLOTS);
        // A freed slot's table is reset by rewriting its first page rather
        // than discarding it: the next plugin's first indirect calls do not
        // fault. (Linear memory is discarded with madvise: wasmtime 48's
        // PAGEMAP_SCAN reset in place skips dirty pages that are not
        // present, swapped out or migrating, and the next plugin in the
        // slot could read them.)
        pool.table_keep_resident(KEEP_RESIDENT_TABLE);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config.memory_init_cow(true);
    // Native unwind info only serves outside unwinders (wasmtime walks wasm
    // frames itself), and registering it is a cost at every load. Windows
    // requires it.
    let target = settings.target.as_deref().unwrap_or(std::env::consts::OS);
    config.native_unwind_info(target.contains("windows"));
    if let Some(target) = &settings.target {
        config
            .target(target)
            .map_err(|e| HostError::Setup(format!("target {target}: {e}")))?;
    }
    Ok(config)
}

impl HostEngine {
    /// The engine kiln runs untrusted plugins with: fuel, epoch deadlines,
    /// the pooling allocator.
    pub fn new() -> Result<Self, HostError> {
        Self::with_settings(&EngineSettings::trial(), true)
    }

    /// The engine of the `.cwasm` kiln ships, as an edge server runs it:
    /// epoch deadlines without fuel, the pooling allocator.
    pub fn edge() -> Result<Self, HostError> {
        Self::with_settings(&EngineSettings::edge(None), true)
    }

    /// `pooling: false` gives wasmtime's default on-demand allocator (the
    /// naive baseline of the cold-start benchmark).
    pub fn with_settings(settings: &EngineSettings, pooling: bool) -> Result<Self, HostError> {
        let engine = Engine::new(&config(settings, pooling)?)
            .map_err(|e| HostError::Setup(e.to_string()))?;
        let ticking = Arc::new(AtomicBool::new(true));
        if settings.target.is_none() {
            let (engine, ticking) = (engine.clone(), ticking.clone());
            std::thread::Builder::new()
                .name("kiln-wasm-epoch".into())
                .spawn(move || {
                    while ticking.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| HostError::Setup(e.to_string()))?;
        }
        Ok(Self {
            engine,
            target: settings.target.clone().unwrap_or_else(host_triple),
            fuel: settings.fuel,
            ticking,
            base: Arc::new(OnceLock::new()),
        })
    }

    /// The wasmtime engine underneath.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether this engine meters fuel (and so applies [`InstanceLimits::fuel`]).
    pub fn meters_fuel(&self) -> bool {
        self.fuel
    }

    /// A store for one instance, bounded by `limits`: memory, the epoch
    /// deadline and, if this engine meters it, fuel.
    pub(crate) fn store(
        &self,
        state: impl FnOnce(StoreLimits) -> HostState,
        limits: &InstanceLimits,
    ) -> Result<Store<HostState>, HostError> {
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .instances(4)
            .build();
        let mut state = state(store_limits);
        state.max_kept = limits.host_bytes;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        if self.fuel {
            store
                .set_fuel(limits.fuel)
                .map_err(|e| HostError::Setup(format!("{e:#}")))?;
        }
        let ticks = (limits.wall.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        Ok(store)
    }

    /// Compiles a `.wasm` (just-in-time).
    pub fn compile(&self, wasm: &[u8]) -> Result<Plugin, HostError> {
        let module =
            Module::new(&self.engine, wasm).map_err(|e| HostError::Compile(format!("{e:#}")))?;
        self.link(module)
    }

    /// Compiles ahead of time into a `.cwasm`; the artifact records the
    /// wasmtime version and engine settings it was made for.
    pub fn precompile(&self, wasm: &[u8]) -> Result<Vec<u8>, HostError> {
        self.engine
            .precompile_module(wasm)
            .map_err(|e| HostError::Compile(format!("{e:#}")))
    }

    /// Verifies a signed artifact (see [`crate::signing`]) against `key`,
    /// checks that it was made for this engine's target (and, given one,
    /// for `expected_version`, so one version's artifact cannot stand in
    /// for another's), and loads its `.cwasm`. This is how an edge server
    /// loads what kiln serves: an unsigned, altered or foreign artifact
    /// never reaches wasmtime.
    pub fn load_signed(
        &self,
        artifact: &[u8],
        key: &ed25519_dalek::VerifyingKey,
        expected_version: Option<&str>,
    ) -> Result<(Plugin, crate::signing::ArtifactHeader), HostError> {
        let verified = crate::signing::verify(artifact, key).map_err(HostError::Unverified)?;
        if let Some(expected) = expected_version
            && verified.header.version_id != expected
        {
            return Err(HostError::Incompatible(format!(
                "the artifact was signed for version {}, not {expected}",
                verified.header.version_id
            )));
        }
        if verified.header.target != self.target {
            return Err(HostError::Incompatible(format!(
                "the artifact was compiled for {}, and this host is {}",
                verified.header.target, self.target
            )));
        }
        // SAFETY: the bytes are exactly what kiln's trusted precompilation
        // step produced and signed: the signature covers their sha256.
        let plugin = unsafe { self.load_trusted(verified.cwasm)? };
        Ok((plugin, verified.header))
    }

    /// Loads a `.cwasm` made by [`HostEngine::precompile`] with the same
    /// wasmtime and settings, and refuses any other.
    ///
    /// # Safety
    ///
    /// A `.cwasm` is machine code that runs as it is: `cwasm` must come
    /// from a step the caller trusts, this process's own
    /// [`HostEngine::precompile`] or the payload of an artifact that
    /// [`HostEngine::load_signed`] (or [`crate::signing::verify`]) accepted.
    /// Never pass bytes a worker, a customer or an unverified download
    /// produced.
    pub unsafe fn load_trusted(&self, cwasm: &[u8]) -> Result<Plugin, HostError> {
        if Engine::detect_precompiled(cwasm).is_none() {
            return Err(HostError::Incompatible(
                "the file is not a precompiled wasmtime module".into(),
            ));
        }
        // SAFETY: the caller vouches for the bytes (see above); wasmtime
        // itself checks the version and settings recorded in the artifact
        // and refuses a mismatch.
        let module = unsafe { Module::deserialize(&self.engine, cwasm) }
            .map_err(|e| HostError::Incompatible(format!("{e:#}")))?;
        self.link(module)
    }

    /// Loads a `.cwasm` file by mapping it into memory, which is faster
    /// than [`HostEngine::load_trusted`] on bytes: nothing is copied. An
    /// edge server verifies an artifact once, when it arrives, keeps its
    /// `.cwasm` in a file of its own, and loads that at each cold start.
    ///
    /// # Safety
    ///
    /// As for [`HostEngine::load_trusted`]; the file must also not change
    /// while it is mapped.
    pub unsafe fn load_trusted_file(&self, path: &std::path::Path) -> Result<Plugin, HostError> {
        // SAFETY: the caller vouches for the file. wasmtime refuses a file
        // that is not one of its artifacts (a cold start should not read
        // the header twice to say so first).
        let module = unsafe { Module::deserialize_file(&self.engine, path) }
            .map_err(|e| HostError::Incompatible(format!("{e:#}")))?;
        self.link(module)
    }

    /// The target triple this engine compiles for and loads.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn link(&self, module: Module) -> Result<Plugin, HostError> {
        let base = self.base.get_or_init(|| {
            let mut linker = Linker::new(&self.engine);
            let mut defined = HashSet::new();
            proxy::add_to_linker(&mut linker, &mut defined).map_err(|e| format!("{e:#}"))?;
            wasi::add_to_linker(&mut linker, &mut defined).map_err(|e| format!("{e:#}"))?;
            Ok(BaseLinker { linker, defined })
        });
        let base = base.as_ref().map_err(|e| HostError::Setup(e.clone()))?;
        Plugin::link(base, module)
    }
}

/// The target triple of this host, as `?target=` names it.
pub fn host_triple() -> String {
    let os = match std::env::consts::OS {
        "linux" => "unknown-linux-gnu",
        "macos" => "apple-darwin",
        other => other,
    };
    format!("{}-{os}", std::env::consts::ARCH)
}

/// Whether `bytes` are a precompiled wasmtime module rather than a `.wasm`.
pub fn is_precompiled(bytes: &[u8]) -> bool {
    Engine::detect_precompiled(bytes).is_some()
}
