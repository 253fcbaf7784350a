//! What one instance of a plugin may use.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bounds on one instance of a plugin; the plugin is untrusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLimits {
    /// wasmtime fuel units (roughly one per instruction), on an engine that
    /// meters fuel ([`HostEngine::meters_fuel`](super::HostEngine::meters_fuel)).
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
