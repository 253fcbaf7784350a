//! A proxy-wasm host on wasmtime, for trying plugins and measuring their
//! startup. It implements ABI 0.2.1 as the Rust SDK 0.2.x imports it, and
//! the few WASI preview1 calls such modules make. Any other import is linked
//! to a trap that names it. Every instance runs with an epoch deadline and a
//! memory limit, and on kiln's own engine with fuel too: the plugin is
//! untrusted code.

mod memory;
mod proxy;
mod wasi;

use crate::abi::{MapType, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module, OptLevel,
    PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, Trap,
};

/// How often the engine's epoch advances; deadlines are counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bytes of a freed table slot that are reset in place rather than given
/// back to the kernel (see [`config`]): 512 function references.
const KEEP_RESIDENT_TABLE: usize = 4 << 10;
/// Freed slots kept for reuse by the plugin that last ran in them.
const WARM_SLOTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the module does not compile: {0}")]
    Compile(String),
    #[error("the precompiled module does not fit this host: {0}")]
    Incompatible(String),
    #[error("the plugin ran out of fuel (its limit is {0} units): it loops or works too hard")]
    OutOfFuel(u64),
    #[error("the plugin exceeded its time limit of {0:?}")]
    Timeout(Duration),
    #[error(
        "the plugin handed the host more than its limit of {0} bytes to keep (logs, headers, bodies, properties, shared data, queues)"
    )]
    HostMemory(usize),
    #[error("the plugin trapped: {0}")]
    Trap(String),
    #[error("the plugin does not export {0}")]
    MissingExport(String),
    #[error("the host could not start: {0}")]
    Setup(String),
    #[error("the precompiled module was refused: {0}")]
    Unverified(#[source] crate::signing::SignatureError),
}

impl HostError {
    /// Whether the plugin caused it (a trap, a limit, a missing export)
    /// rather than the host.
    pub fn is_plugin_fault(&self) -> bool {
        matches!(
            self,
            Self::OutOfFuel(_)
                | Self::Timeout(_)
                | Self::HostMemory(_)
                | Self::Trap(_)
                | Self::MissingExport(_)
        )
    }

    /// What stopped an instance bounded by `limits`: a limit it hit, or a
    /// trap.
    pub(crate) fn from_instance(e: wasmtime::Error, limits: &InstanceLimits) -> Self {
        if e.downcast_ref::<KeptTooMuch>().is_some() {
            return Self::HostMemory(limits.host_bytes);
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Self::OutOfFuel(limits.fuel),
            Some(Trap::Interrupt) => Self::Timeout(limits.wall),
            _ => Self::Trap(format!("{e:#}")),
        }
    }
}

/// Bounds on one instance of a plugin; the plugin is untrusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLimits {
    /// wasmtime fuel units (roughly one per instruction), on an engine that
    /// meters fuel ([`HostEngine::meters_fuel`]).
    pub fuel: u64,
    pub wall: Duration,
    pub memory_bytes: usize,
    /// Bytes of the plugin's data the host keeps for it over the run (logs,
    /// headers, bodies, properties, shared data, queues), counted as they
    /// are handed over.
    #[serde(default = "default_host_bytes")]
    pub host_bytes: usize,
}

fn default_host_bytes() -> usize {
    16 << 20
}

impl Default for InstanceLimits {
    fn default() -> Self {
        Self {
            fuel: 500_000_000,
            wall: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            host_bytes: default_host_bytes(),
        }
    }
}

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

struct BaseLinker {
    linker: Linker<HostState>,
    defined: HashSet<(&'static str, &'static str)>,
}

impl Drop for HostEngine {
    fn drop(&mut self) {
        if Arc::strong_count(&self.ticking) == 1 {
            self.ticking.store(false, Ordering::Relaxed);
        }
    }
}

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
        pool.total_memories(256)
            .total_tables(256)
            .total_core_instances(256)
            .max_memory_size(256 << 20)
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
            target: settings
                .target
                .clone()
                .unwrap_or_else(host_triple),
            fuel: settings.fuel,
            ticking,
            base: Arc::new(OnceLock::new()),
        })
    }

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

/// The trap of a host function kiln does not implement: it names it.
fn not_implemented(module: &str, name: &str) -> wasmtime::Error {
    wasmtime::format_err!("host function {module}.{name} is not implemented by kiln's test host")
}

/// Whether `bytes` are a precompiled wasmtime module rather than a `.wasm`.
pub fn is_precompiled(bytes: &[u8]) -> bool {
    Engine::detect_precompiled(bytes).is_some()
}

/// A compiled plugin, linked and ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    pre: InstancePre<HostState>,
}

impl Plugin {
    fn link(base: &BaseLinker, module: Module) -> Result<Self, HostError> {
        // A plugin of a known SDK imports nothing else: it links against the
        // shared linker as it is, without looking at its imports first.
        if let Ok(pre) = base.linker.instantiate_pre(&module) {
            return Ok(Self { pre });
        }
        let unknown: Vec<_> = module
            .imports()
            .filter(|import| !base.defined.contains(&(import.module(), import.name())))
            .filter_map(|import| match import.ty() {
                ExternType::Func(ty) => Some((import.module(), import.name(), ty)),
                _ => None,
            })
            .collect();
        let mut linker = base.linker.clone();
        for (module_name, name, ty) in unknown {
            let import = (module_name.to_owned(), name.to_owned());
            linker
                .func_new(module_name, name, ty, move |_, _, _| {
                    Err(not_implemented(&import.0, &import.1))
                })
                .map_err(|e| HostError::Setup(format!("{e:#}")))?;
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| HostError::Compile(format!("{e:#}")))?;
        Ok(Self { pre })
    }

    pub fn module(&self) -> &Module {
        self.pre.module()
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<HostState> {
        &self.pre
    }
}

/// A log line the plugin wrote, through `proxy_log` or WASI stdout/stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

/// A response the plugin sent itself (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// An outgoing HTTP call the plugin dispatched (`proxy_http_call`).
#[derive(Debug, Clone)]
pub(crate) struct PendingCall {
    pub token: u32,
    pub context: u32,
    pub call: CallOut,
}

/// An HTTP call out the plugin made, as the cluster received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallOut {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
}

/// The kind of a metric, with the ABI's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// A metric the plugin defined (`proxy_define_metric`), as its value
/// stands: a counter's or gauge's value, a histogram's recorded values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    #[serde(default)]
    pub value: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recorded: Vec<u64>,
}

/// Histogram values kept per metric; past it, values are counted only.
const MAX_RECORDED: usize = 1000;

/// What the properties of the stream being run come from, besides its
/// header maps: set by the scenario for each request.
#[derive(Debug, Default, Clone)]
pub(crate) struct StreamInfo {
    pub method: String,
    pub path: String,
    pub host: String,
    pub request_id: String,
    pub body_bytes: usize,
    pub connection_id: u64,
    pub start_ns: u64,
    /// The response's code details once one is chosen (`via_upstream`, …).
    pub code_details: String,
}

/// A property value as Envoy serializes it: strings as their bytes,
/// integers as 8 bytes little-endian, booleans as one byte, maps as a
/// header map.
enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
    Map(Vec<(String, String)>),
}

impl Value {
    fn bytes(self) -> Vec<u8> {
        match self {
            Self::Text(text) => text.into_bytes(),
            Self::Int(n) => n.to_le_bytes().to_vec(),
            Self::Bool(b) => vec![b as u8],
            Self::Map(pairs) => crate::abi::serialize_map(&pairs),
        }
    }
}

/// Where the stub connection comes from and goes to.
pub(crate) const SOURCE_ADDRESS: &str = "127.0.0.1";
pub(crate) const SOURCE_PORT: i64 = 50000;
pub(crate) const DESTINATION_ADDRESS: &str = "127.0.0.1";
pub(crate) const DESTINATION_PORT: i64 = 10000;

fn header(map: Option<&Vec<(String, String)>>, name: &str) -> Option<String> {
    map?.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

impl HostState {
    /// The property at a dotted path, as Envoy names and serializes it:
    /// the request's, the response's, the connection's, the plugin's, and
    /// any the plugin set itself. Computed when asked: most plugins never
    /// ask, and a cold start should not build them.
    pub(crate) fn property(&self, key: &str) -> Option<Vec<u8>> {
        if let Some(value) = self.properties_set.get(key) {
            return Some(value.clone());
        }
        let info = &self.stream;
        let request = self.maps.get(&(MapType::HttpRequestHeaders as u32));
        let response = self.maps.get(&(MapType::HttpResponseHeaders as u32));
        let request_header = |name: &str| header(request, name).map(Value::Text);
        for (prefix, map) in [
            ("request.headers.", request),
            ("response.headers.", response),
        ] {
            if let Some(name) = key.strip_prefix(prefix) {
                return header(map, name).map(|v| v.into_bytes());
            }
        }
        let text = |s: &str| Some(Value::Text(s.to_owned()));
        let value = match key {
            "request.path" => text(&info.path),
            "request.url_path" => text(info.path.split('?').next().unwrap_or("/")),
            "request.query" => text(info.path.split_once('?').map_or("", |(_, q)| q)),
            "request.method" => text(&info.method),
            "request.host" => text(&info.host),
            "request.scheme" => text("http"),
            "request.protocol" => text("HTTP/1.1"),
            "request.id" => text(&info.request_id),
            "request.referer" => request_header("referer"),
            "request.useragent" => request_header("user-agent"),
            "request.headers" => request.cloned().map(Value::Map),
            "request.time" => Some(Value::Int(info.start_ns as i64)),
            "request.size" => Some(Value::Int(info.body_bytes as i64)),
            "response.headers" => response.cloned().map(Value::Map),
            "response.code" => header(response, ":status")
                .and_then(|s| s.parse().ok())
                .map(Value::Int),
            "response.code_details" if !info.code_details.is_empty() => text(&info.code_details),
            "response.flags" => response.map(|_| Value::Int(0)),
            "source.address" => text(&format!("{SOURCE_ADDRESS}:{SOURCE_PORT}")),
            "source.port" => Some(Value::Int(SOURCE_PORT)),
            "destination.address" => text(&format!("{DESTINATION_ADDRESS}:{DESTINATION_PORT}")),
            "destination.port" => Some(Value::Int(DESTINATION_PORT)),
            "connection.id" => Some(Value::Int(info.connection_id as i64)),
            "connection.mtls" => Some(Value::Bool(false)),
            "connection.requested_server_name" => text(""),
            "plugin_name" | "plugin_vm_id" => text("kiln"),
            "plugin_root_id" => text(""),
            _ => None,
        };
        value.map(Value::bytes)
    }

    /// Defines a metric, or answers the one already defined with that
    /// name and kind.
    pub(crate) fn define_metric(&mut self, kind: MetricKind, name: String) -> u32 {
        let index = match self
            .metrics
            .iter()
            .position(|m| m.name == name && m.kind == kind)
        {
            Some(index) => index,
            None => {
                self.metrics.push(Metric {
                    name,
                    kind,
                    value: 0,
                    recorded: Vec::new(),
                });
                self.metrics.len() - 1
            }
        };
        // As Envoy numbers them: the kind in the two low bits.
        ((index as u32 + 1) << 2) | kind as u32
    }

    fn metric_mut(&mut self, id: u32) -> Option<&mut Metric> {
        let metric = self.metrics.get_mut(((id >> 2) as usize).checked_sub(1)?)?;
        (metric.kind as u32 == id & 3).then_some(metric)
    }

    /// `proxy_increment_metric` as Envoy answers it: a counter only goes
    /// up, a histogram is not incremented.
    pub(crate) fn increment_metric(&mut self, id: u32, offset: i64) -> Status {
        if id & 3 == MetricKind::Histogram as u32 || id & 3 == 3 {
            return Status::BadArgument;
        }
        match self.metric_mut(id) {
            None => Status::NotFound,
            Some(m) if m.kind == MetricKind::Counter && offset <= 0 => Status::BadArgument,
            Some(m) => {
                m.value = m.value.saturating_add(offset);
                Status::Ok
            }
        }
    }

    /// `proxy_record_metric`: a counter adds, a gauge is set, a histogram
    /// records.
    pub(crate) fn record_metric(&mut self, id: u32, value: u64) -> Status {
        let Some(m) = self.metric_mut(id) else {
            return Status::NotFound;
        };
        match m.kind {
            MetricKind::Counter => m.value = m.value.saturating_add(value as i64),
            MetricKind::Gauge => m.value = value as i64,
            MetricKind::Histogram => {
                m.value = m.value.saturating_add(1);
                if m.recorded.len() < MAX_RECORDED {
                    m.recorded.push(value);
                }
            }
        }
        Status::Ok
    }

    /// `proxy_get_metric`: a histogram has no single value.
    pub(crate) fn get_metric(&mut self, id: u32) -> Result<u64, Status> {
        if id & 3 == MetricKind::Histogram as u32 || id & 3 == 3 {
            return Err(Status::BadArgument);
        }
        self.metric_mut(id)
            .map(|m| m.value as u64)
            .ok_or(Status::NotFound)
    }
}

/// Everything a plugin instance can see and change through the host.
pub struct HostState {
    pub(crate) limits: StoreLimits,
    pub(crate) plugin_conf: Vec<u8>,
    pub(crate) vm_conf: Vec<u8>,
    pub(crate) maps: BTreeMap<u32, Vec<(String, String)>>,
    pub(crate) buffers: BTreeMap<u32, Vec<u8>>,
    pub(crate) local_response: Option<LocalResponse>,
    pub(crate) logs: Vec<LogLine>,
    /// The stream being run, for its properties.
    pub(crate) stream: StreamInfo,
    /// Properties the plugin set itself (`proxy_set_property`).
    pub(crate) properties_set: BTreeMap<String, Vec<u8>>,
    pub(crate) shared_data: BTreeMap<String, (Vec<u8>, u32)>,
    pub(crate) queues: Vec<(String, VecDeque<Vec<u8>>)>,
    pub(crate) metrics: Vec<Metric>,
    pub(crate) tick_period_ms: u32,
    /// The scenario's clock, in nanoseconds since the epoch: it moves only
    /// when the scenario says time passes, so a trial is repeatable.
    pub(crate) now_ns: u64,
    /// When the root context's next tick is due, if its timer is set.
    pub(crate) next_tick_ns: Option<u64>,
    /// The clusters a call out may name; `None`: any.
    pub(crate) clusters: Option<std::collections::BTreeSet<String>>,
    pub(crate) pending_calls: VecDeque<PendingCall>,
    pub(crate) next_token: u32,
    pub(crate) current_context: u32,
    /// Whether the plugin resumed the stream (`proxy_continue_stream`)
    /// since the host last looked.
    pub(crate) continued: bool,
    pub(crate) max_log_lines: usize,
    /// Bytes of plugin data the host has kept so far, and the most it
    /// keeps: the plugin's linear memory is bounded, and what it hands the
    /// host must be too.
    kept: usize,
    pub(crate) max_kept: usize,
}

/// A host function's refusal to keep more of the plugin's data.
#[derive(Debug, thiserror::Error)]
#[error("the plugin handed the host more than its limit of {0} bytes to keep")]
pub(crate) struct KeptTooMuch(pub usize);

impl HostState {
    pub(crate) fn new(limits: StoreLimits, plugin_conf: Vec<u8>) -> Self {
        Self {
            limits,
            plugin_conf,
            vm_conf: Vec::new(),
            maps: BTreeMap::new(),
            buffers: BTreeMap::new(),
            local_response: None,
            logs: Vec::new(),
            stream: StreamInfo::default(),
            properties_set: BTreeMap::new(),
            shared_data: BTreeMap::new(),
            queues: Vec::new(),
            metrics: Vec::new(),
            tick_period_ms: 0,
            now_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            next_tick_ns: None,
            clusters: None,
            pending_calls: VecDeque::new(),
            next_token: 1,
            current_context: 0,
            continued: false,
            max_log_lines: 1000,
            kept: 0,
            max_kept: usize::MAX,
        }
    }

    /// Counts `bytes` more of the plugin's data that the host keeps (what
    /// it replaces stays counted: the budget also bounds the copying).
    pub(crate) fn keep(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.kept = self.kept.saturating_add(bytes);
        if self.kept > self.max_kept {
            return Err(KeptTooMuch(self.max_kept).into());
        }
        Ok(())
    }

    pub(crate) fn map_mut(&mut self, map: MapType) -> &mut Vec<(String, String)> {
        self.maps.entry(map as u32).or_default()
    }

    /// Keeps a log line; past `max_log_lines`, lines are dropped.
    pub(crate) fn log(&mut self, level: &str, message: String) -> wasmtime::Result<()> {
        if self.logs.len() < self.max_log_lines {
            self.keep(message.len())?;
            self.logs.push(LogLine {
                level: level.into(),
                message,
            });
        }
        Ok(())
    }
}
