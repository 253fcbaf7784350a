//! What a plugin instance can see and change through the host, and what
//! it hands the host to keep.

use super::{KeptTooMuch, Metric};
use crate::abi::MapType;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use wasmtime::StoreLimits;

/// A log line the plugin wrote, through `proxy_log` or WASI stdout/stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// `trace` to `critical` (or `unknown`) for `proxy_log`; `stdout` or
    /// `stderr` for WASI output.
    pub level: String,
    /// The text written, invalid UTF-8 replaced.
    pub message: String,
}

/// A response the plugin sent itself (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalResponse {
    /// The HTTP status the plugin gave, unchecked.
    pub status: u32,
    /// The headers the plugin gave, before the host adds any.
    pub headers: Vec<(String, String)>,
    /// The body the plugin gave.
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
    /// The upstream cluster the call names.
    pub cluster: String,
    /// The call's headers, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// The call's body.
    #[serde(default)]
    pub body: String,
}

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
