//! Deployments: an application's named channels (`production`, `staging`,
//! any name a user picks), each pointing at one succeeded version, with
//! the history of every change. Versions stay immutable; channels move.

use crate::{AppId, BuildId, Phases};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The name of a channel: 1 to 64 ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit, so it reads safely in URLs, logs and
/// file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

impl ChannelName {
    /// Longest channel name, in characters.
    pub const MAX_CHARS: usize = 64;

    /// Takes `raw` as a channel name if it keeps the rules above; it is not
    /// trimmed.
    pub fn parse(raw: &str) -> Result<Self, crate::ValidationError> {
        let valid = !raw.is_empty()
            && raw.len() <= Self::MAX_CHARS
            && raw.starts_with(|c: char| c.is_ascii_alphanumeric())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(crate::ValidationError::new(format!(
                "channel name {raw:?} must be 1 to {} letters, digits, '.', '_' or '-', \
                 starting with a letter or digit",
                Self::MAX_CHARS
            )))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a channel came to point at its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelAction {
    /// `PUT /application/{id}/channels/{name}`.
    Promote,
    /// `POST /application/{id}/channels/{name}/rollback`.
    Rollback,
}

impl ChannelAction {
    /// Its name on the wire and in the store (`promote`, `rollback`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelAction::Promote => "promote",
            ChannelAction::Rollback => "rollback",
        }
    }

    /// Parses the name [`ChannelAction::as_str`] gives.
    pub fn parse(raw: &str) -> Result<Self, crate::ValidationError> {
        match raw {
            "promote" => Ok(ChannelAction::Promote),
            "rollback" => Ok(ChannelAction::Rollback),
            other => Err(crate::ValidationError::new(format!(
                "unknown channel action {other:?}"
            ))),
        }
    }
}

/// What an edge server needs of the version a channel points at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelTarget {
    /// The version's id (the id of the build that made it).
    pub id: BuildId,
    /// The version's semantic version.
    #[schema(value_type = String, example = "1.0.0")]
    pub version: semver::Version,
    /// Hex sha256 of the `.wasm`; the artifact's address.
    pub binary_sha256: String,
    /// Size of the `.wasm`, in bytes.
    pub binary_size: i64,
    /// The plugin configuration, handed to the plugin at start.
    pub conf: String,
    /// The HTTP phases the plugin handles.
    pub phases: Phases,
    /// Where the module is served by content address, relative to the server.
    #[schema(
        example = "/artifact/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.wasm"
    )]
    pub artifact: String,
}

/// One change of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelChange {
    /// The channel's revision after this change (1 for the first).
    pub revision: i64,
    /// The version the channel pointed at after this change.
    pub version_id: BuildId,
    /// Whether the change was a promotion or a rollback.
    pub action: ChannelAction,
    /// When the change was made.
    pub at: DateTime<Utc>,
    /// The owner and the fingerprint of the token that made the change,
    /// e.g. `owner 1, token 3f2a9c01b7e4` (the first 12 hex digits of the
    /// token's sha256).
    pub by: String,
}

/// A channel: the version it points at now, and how it got there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Channel {
    /// The application the channel belongs to.
    pub application_id: AppId,
    /// The channel's name: 1 to 64 ASCII letters, digits, `.`, `_` or `-`,
    /// starting with a letter or digit.
    #[schema(value_type = String, example = "production")]
    pub name: String,
    /// Grows by one at each change; `?after=` of a long poll takes it.
    pub revision: i64,
    /// When the channel last changed.
    pub updated: DateTime<Utc>,
    /// The version the channel points at now.
    pub version: ChannelTarget,
    /// The latest changes, newest first (at most
    /// [`Channel::HISTORY_LIMIT`]).
    pub history: Vec<ChannelChange>,
}

impl Channel {
    /// Changes listed with a channel.
    pub const HISTORY_LIMIT: i64 = 100;
}

/// The address under which a module is served by content.
pub fn artifact_path(sha256: &str) -> String {
    format!("/artifact/{sha256}.wasm")
}

/// Whether `raw` is a hex sha256 as kiln writes them (64 lowercase hex digits).
pub fn is_sha256_hex(raw: &str) -> bool {
    raw.len() == 64 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_short_and_plain() {
        for ok in ["production", "staging", "eu-west.2", "canary_1"] {
            assert_eq!(ChannelName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "-x", "a b", "a/b", "..", &"x".repeat(65), "ünï"] {
            assert!(ChannelName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn actions_round_trip() {
        for action in [ChannelAction::Promote, ChannelAction::Rollback] {
            assert_eq!(ChannelAction::parse(action.as_str()).unwrap(), action);
        }
        assert!(ChannelAction::parse("deploy").is_err());
    }

    #[test]
    fn sha256_addresses_are_strict() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex(&"a".repeat(63)));
        assert!(!is_sha256_hex("../etc/passwd"));
    }
}
