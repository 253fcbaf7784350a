//! A proxy-wasm host on wasmtime, for trying plugins and measuring their
//! startup. It implements ABI 0.2.1 as the Rust SDK 0.2.x imports it, and
//! the few WASI preview1 calls such modules make. Any other import is linked
//! to a trap that names it. Every instance runs with an epoch deadline and a
//! memory limit, and on kiln's own engine with fuel too: the plugin is
//! untrusted code.
//!
//! Layout: `engine` (the wasmtime engine, its settings, each instance's
//! store), `limits` (what one instance may use), `plugin` (a compiled,
//! linked module), `state` (what an instance sees and hands the host),
//! `properties` and `metrics` (Envoy's answers to them), `errors`; the host
//! functions in `proxy` (the ABI) and `wasi`, over `memory` (guest memory
//! access).

mod engine;
mod errors;
mod limits;
mod memory;
mod metrics;
mod plugin;
mod properties;
mod proxy;
mod state;
mod wasi;

pub use engine::{EPOCH_TICK, EngineSettings, HostEngine, host_triple, is_precompiled};
pub use errors::HostError;
pub(crate) use errors::{KeptTooMuch, not_implemented};
pub use limits::InstanceLimits;
pub use metrics::{Metric, MetricKind};
pub use plugin::Plugin;
pub use state::{CallOut, HostState, LocalResponse, LogLine};
pub(crate) use state::{PendingCall, StreamInfo};
