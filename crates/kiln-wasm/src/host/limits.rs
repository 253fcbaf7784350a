//! What one instance of a plugin may use.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bounds on one instance of a plugin; the plugin is untrusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLimits {
    /// wasmtime fuel units (roughly one per instruction), on an engine that
    /// meters fuel ([`HostEngine::meters_fuel`](super::HostEngine::meters_fuel)).
    pub fuel: u64,
    /// Wall-clock time, enforced as an epoch deadline (in ticks of
    /// [`EPOCH_TICK`](super::EPOCH_TICK)).
    pub wall: Duration,
    /// The most linear memory the instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Bytes of the plugin's data the host keeps for it over the run (logs,
    /// headers, bodies, properties, shared data, queues), counted as they
    /// are handed over.
    #[serde(default = "default_host_bytes")]
    pub host_bytes: usize,
}

/// An instance's fuel where its caller sets none.
pub(crate) const DEFAULT_FUEL: u64 = 500_000_000;
/// An instance's wall-clock time where its caller sets none.
pub(crate) const DEFAULT_WALL: Duration = Duration::from_secs(2);
/// An instance's linear memory where its caller sets none, in bytes.
pub(crate) const DEFAULT_MEMORY_BYTES: usize = 64 << 20;
/// The plugin's data the host keeps where the caller sets none, in bytes.
pub(crate) const DEFAULT_HOST_BYTES: usize = 16 << 20;

fn default_host_bytes() -> usize {
    DEFAULT_HOST_BYTES
}

impl Default for InstanceLimits {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_FUEL,
            wall: DEFAULT_WALL,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            host_bytes: DEFAULT_HOST_BYTES,
        }
    }
}
