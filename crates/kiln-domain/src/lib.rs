//! kiln's vocabulary: applications, versions, builds and their states, and
//! the validation of everything a client sends. No I/O lives here; the stores,
//! the server and the worker all speak these types.
//!
//! Layout:
//! - [`ids`]: typed identifiers and worker names.
//! - [`phase`], [`language`]: what a plugin declares about itself.
//! - [`profile`]: what a build measured.
//! - [`source`]: the formats of an uploaded source archive.
//! - [`state`]: the build state machine.
//! - [`entities`]: the records the API returns.
//! - [`channel`]: deployments, the channels that point at versions.
//! - [`text`]: cutting text to a size on a character boundary.
//! - [`patterns`]: the validations as JSON Schema patterns, for the API's document.

pub mod channel;
pub mod entities;
pub mod ids;
pub mod language;
pub mod patterns;
pub mod phase;
pub mod profile;
pub mod source;
pub mod state;
pub mod text;
pub mod worker_api;

pub use channel::{Channel, ChannelAction, ChannelChange, ChannelName, ChannelTarget};
pub use entities::{Application, BuildOptions, Version, VersionBuild};
pub use ids::{AppId, BuildId, OwnerId, WorkerName};
pub use language::Language;
pub use phase::{Phase, Phases};
pub use profile::{BuildProfile, StartupProfile};
pub use source::SourceKind;
pub use state::BuildState;

/// Why a client-supplied value was refused. The message is shown to the
/// client as is, so it names the field and never echoes internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

impl ValidationError {
    /// A refusal that shows `message` to the client.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Parses a plugin version: strict semver (`1.2.3`, `1.0.0-beta.1`).
pub fn parse_version(raw: &str) -> Result<semver::Version, ValidationError> {
    semver::Version::parse(raw.trim()).map_err(|e| {
        ValidationError::new(format!(
            "version {raw:?} is not a semantic version such as 1.2.3: {e}"
        ))
    })
}

/// Maximum length of an application name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Maximum length of free-text notes, in bytes.
pub const MAX_NOTES_BYTES: usize = 10_000;
/// Maximum length of a plugin configuration, in bytes.
pub const MAX_CONF_BYTES: usize = 1024 * 1024;

/// Validates an application name: 1 to 100 characters, no control characters.
pub fn validate_name(name: &str) -> Result<String, ValidationError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ValidationError::new("name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ValidationError::new(format!(
            "name must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "name must not contain control characters",
        ));
    }
    Ok(name.to_owned())
}

/// Validates free-text notes (at most 10 000 bytes).
pub fn validate_notes(notes: &str) -> Result<String, ValidationError> {
    if notes.len() > MAX_NOTES_BYTES {
        return Err(ValidationError::new(format!(
            "notes must be at most {MAX_NOTES_BYTES} bytes"
        )));
    }
    Ok(notes.to_owned())
}

/// Validates a plugin configuration string (at most 1 MiB).
pub fn validate_conf(conf: &str) -> Result<String, ValidationError> {
    if conf.len() > MAX_CONF_BYTES {
        return Err(ValidationError::new(format!(
            "conf must be at most {MAX_CONF_BYTES} bytes"
        )));
    }
    Ok(conf.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_must_be_semver() {
        assert_eq!(parse_version("1.2.3").unwrap().to_string(), "1.2.3");
        assert_eq!(
            parse_version("1.0.0-beta.1").unwrap().to_string(),
            "1.0.0-beta.1"
        );
        for bad in ["", "1", "1.2", "v1.2.3", "1.2.3.4", "latest"] {
            assert!(parse_version(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("  edge-auth ").unwrap(), "edge-auth");
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"x".repeat(101)).is_err());
        assert!(validate_name("a\nb").is_err());
    }
}
