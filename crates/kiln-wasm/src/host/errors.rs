//! What stops a plugin or the host: [`HostError`], and the traps host
//! functions raise.

use super::InstanceLimits;
use std::time::Duration;
use wasmtime::Trap;

/// Why a plugin stopped or could not start: a limit it hit or a trap (the
/// plugin's fault, see [`HostError::is_plugin_fault`]), or the host's own
/// failure.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The `.wasm` does not compile or link, with wasmtime's message.
    #[error("the module does not compile: {0}")]
    Compile(String),
    /// A `.cwasm` or signed artifact made for another wasmtime, engine
    /// settings, target or version.
    #[error("the precompiled module does not fit this host: {0}")]
    Incompatible(String),
    /// The plugin used up its fuel; the limit, in fuel units.
    #[error("the plugin ran out of fuel (its limit is {0} units): it loops or works too hard")]
    OutOfFuel(u64),
    /// The plugin ran past its epoch deadline; the wall-clock limit.
    #[error("the plugin exceeded its time limit of {0:?}")]
    Timeout(Duration),
    /// The plugin handed the host more data to keep than it may; the limit
    /// ([`InstanceLimits::host_bytes`]), in bytes.
    #[error(
        "the plugin handed the host more than its limit of {0} bytes to keep (logs, headers, bodies, properties, shared data, queues)"
    )]
    HostMemory(usize),
    /// The plugin trapped or refused its configuration, with the message.
    #[error("the plugin trapped: {0}")]
    Trap(String),
    /// An export the host requires, by name (e.g. `proxy_on_context_create`).
    #[error("the plugin does not export {0}")]
    MissingExport(String),
    /// The host's own failure: the engine, its host functions, a file.
    #[error("the host could not start: {0}")]
    Setup(String),
    /// A signed artifact that did not verify: never handed to wasmtime.
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

/// A host function's refusal to keep more of the plugin's data.
#[derive(Debug, thiserror::Error)]
#[error("the plugin handed the host more than its limit of {0} bytes to keep")]
pub(crate) struct KeptTooMuch(pub usize);

/// The trap of a host function kiln does not implement: it names it.
pub(crate) fn not_implemented(module: &str, name: &str) -> wasmtime::Error {
    wasmtime::format_err!("host function {module}.{name} is not implemented by kiln's test host")
}
