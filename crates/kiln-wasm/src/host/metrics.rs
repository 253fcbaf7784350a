//! The metrics a plugin defines and records, as Envoy answers them.

use super::HostState;
use crate::abi::Status;
use serde::{Deserialize, Serialize};

/// The kind of a metric, with the ABI's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Only goes up.
    Counter = 0,
    /// Goes up and down, or is set.
    Gauge = 1,
    /// Records values; it has no single value to read.
    Histogram = 2,
}

/// A metric the plugin defined (`proxy_define_metric`), as its value
/// stands: a counter's or gauge's value, a histogram's recorded values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    /// The name the plugin defined it with.
    pub name: String,
    /// Its kind; a name may be defined once per kind.
    pub kind: MetricKind,
    /// A counter's or gauge's value; for a histogram, how many values it
    /// recorded.
    #[serde(default)]
    pub value: i64,
    /// A histogram's values in the order recorded, the first 1000 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recorded: Vec<u64>,
}

/// Histogram values kept per metric; past it, values are counted only.
const MAX_RECORDED: usize = 1000;

impl HostState {
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
