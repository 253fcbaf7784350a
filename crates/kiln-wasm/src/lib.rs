//! kiln-wasm holds everything that reads or runs WebAssembly: the check that
//! a built module is a proxy-wasm plugin, a proxy-wasm host on wasmtime to
//! try plugins and measure their startup, and ahead-of-time
//! precompilation. It is the only crate that links wasmtime.
//!
//! Layout:
//! - [`check`]: validation and the proxy-wasm ABI exports (wasmparser only).
//! - [`abi`]: the ABI's enums and wire formats.
//! - [`host`]: the engine, plugins and host functions.
//! - [`request`]: what a proxy would hand a filter, and the stub answers.
//! - [`scenario`]: requests in a row through one running plugin, as Envoy runs them.
//! - [`trial`]: one HTTP exchange through a plugin (a scenario of one).
//! - [`signing`]: signed `.cwasm` artifacts, the only native code kiln serves.

pub mod abi;
pub mod check;
pub mod host;
pub mod optimize;
pub mod preinit;
pub mod profile;
pub mod request;
pub mod scenario;
pub mod signing;
pub mod trial;

pub use host::{
    CallOut, EngineSettings, HostEngine, HostError, InstanceLimits, LocalResponse, LogLine, Metric,
    MetricKind, Plugin,
};
pub use profile::{StartupProfile, host_triple, startup_profile};
pub use request::{InvalidRequest, UpstreamStub};
pub use scenario::{
    Exchange, Failure, Held, Scenario, ScenarioRequest, ScenarioResult, run_scenario,
};
pub use trial::{TrialLimits, TrialRequest, TrialResult, run_trial, smoke_equivalent};
