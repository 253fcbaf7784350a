//! The build state machine:
//!
//! ```text
//! queued ──claim──▶ running ──success──▶ succeeded
//!    ▲                 │──fail────────▶ failed
//!    └──lease expired──┤──crash───────▶ crashed (after the last attempt)
//!                      └──cancel──────▶ cancelled
//! ```

use crate::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a build is in its life: `queued` or `running` while it is live,
/// then one terminal state it never leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    /// Waiting for a worker: new, or queued again after kiln's own failure
    /// while attempts remain.
    Queued,
    /// A worker claimed it and holds its lease.
    Running,
    /// Built: the version exists, under the build's id.
    Succeeded,
    /// The source did not build; `error` and the build log say why.
    Failed,
    /// kiln's own failure on the last allowed attempt: the worker crashed,
    /// stopped reporting, or lost its token.
    Crashed,
    /// Cancelled by its owner before it ended.
    Cancelled,
}

impl BuildState {
    /// Every state.
    pub const ALL: [BuildState; 6] = [
        BuildState::Queued,
        BuildState::Running,
        BuildState::Succeeded,
        BuildState::Failed,
        BuildState::Crashed,
        BuildState::Cancelled,
    ];

    /// Its name on the wire and in the store (`queued`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Crashed => "crashed",
            BuildState::Cancelled => "cancelled",
        }
    }

    /// Parses the name [`BuildState::as_str`] gives; case matters.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        BuildState::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                ValidationError::new(format!(
                    "unknown state {raw:?}; expected queued, running, succeeded, failed, crashed or cancelled"
                ))
            })
    }

    /// A terminal build never changes state again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, BuildState::Queued | BuildState::Running)
    }

    /// Whether a client may cancel a build in this state.
    pub fn can_cancel(self) -> bool {
        !self.is_terminal()
    }
}

impl fmt::Display for BuildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips() {
        for s in BuildState::ALL {
            assert_eq!(BuildState::parse(s.as_str()).unwrap(), s);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert!(BuildState::parse("Queued").is_err());
    }

    #[test]
    fn only_live_builds_cancel() {
        assert!(BuildState::Queued.can_cancel());
        assert!(BuildState::Running.can_cancel());
        assert!(!BuildState::Succeeded.can_cancel());
        assert!(!BuildState::Cancelled.can_cancel());
    }
}
