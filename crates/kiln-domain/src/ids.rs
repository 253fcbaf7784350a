//! Typed identifiers, so an application id is never passed where a build id
//! is expected.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new random (version 4) id.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// Parses an id from its UUID text, surrounding spaces trimmed.
            pub fn parse(raw: &str) -> Result<Self, crate::ValidationError> {
                Uuid::parse_str(raw.trim()).map(Self).map_err(|_| {
                    crate::ValidationError::new(format!("{raw:?} is not a valid id (a UUID)"))
                })
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies an application.
    AppId
);
uuid_id!(
    /// Identifies a build, and the version it produces once it succeeds.
    BuildId
);

/// Identifies the owner (tenant) of applications, versions and builds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct OwnerId(pub i64);

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The name of a worker: the identity its token stands for, recorded on
/// every build it claims. 1 to 64 ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit, so it reads safely in logs and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerName(String);

impl WorkerName {
    /// Longest worker name, in characters.
    pub const MAX_CHARS: usize = 64;
    /// The name of the server's shared worker token (`--worker-token`),
    /// which the embedded builders use. It is reserved: no token of the
    /// store may take it.
    pub const SHARED: &'static str = "default";

    /// Takes `raw` as a worker name if it keeps the rules above; it is not
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
                "worker name {raw:?} must be 1 to {} letters, digits, '.', '_' or '-', \
                 starting with a letter or digit",
                Self::MAX_CHARS
            )))
        }
    }

    /// The worker that holds the shared token.
    pub fn shared() -> Self {
        Self(Self::SHARED.to_owned())
    }

    /// Whether this is the shared token's worker ([`WorkerName::SHARED`]).
    pub fn is_shared(&self) -> bool {
        self.0 == Self::SHARED
    }

    /// The name, as builds record it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerName;

    #[test]
    fn worker_names_are_short_and_plain() {
        for ok in ["build-host-1", "a", "eu.west_2", &"x".repeat(64)] {
            assert_eq!(WorkerName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a b",
            "host/1",
            "ünï",
            &"x".repeat(65),
            "a\n",
        ] {
            assert!(WorkerName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(WorkerName::shared().is_shared());
        assert!(!WorkerName::parse("build-host-1").unwrap().is_shared());
    }
}
