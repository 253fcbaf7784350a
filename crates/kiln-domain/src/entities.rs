//! The records kiln keeps and returns over the API.

use crate::{AppId, BuildId, BuildState, Language, OwnerId, Phases};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which post-build steps run for a version. Each is on by default and can
/// be turned off per version (and per server, by the worker's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildOptions {
    /// Run binaryen's wasm-opt and keep its output if it behaves the same.
    #[serde(default = "yes")]
    pub optimize: bool,
    /// Precompile a `.cwasm` and measure the startup profile.
    #[serde(default = "yes")]
    pub precompile: bool,
    /// Run the module's `wizer.initialize` at build time and keep the
    /// snapshot, when it exports one.
    #[serde(default = "yes")]
    pub preinit: bool,
}

fn yes() -> bool {
    true
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            optimize: true,
            precompile: true,
            preinit: true,
        }
    }
}

impl BuildOptions {
    /// The switches' names, as the JSON form spells them.
    pub const NAMES: [&'static str; 3] = ["optimize", "precompile", "preinit"];

    /// Parses the API and stored form, a JSON object (missing keys are on).
    pub fn parse_json(raw: &str) -> Result<Self, crate::ValidationError> {
        let refused = |e: &dyn std::fmt::Display| {
            crate::ValidationError::new(format!(
                "options must be a JSON object such as {{\"optimize\": false}}: {e}"
            ))
        };
        // An object only: serde would also read the fields from an array.
        if !raw.trim_start().starts_with('{') {
            return Err(refused(&"it is not an object"));
        }
        serde_json::from_str(raw).map_err(|e| refused(&e))
    }
}

/// A customer's edge plugin; versions are built under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Application {
    pub id: AppId,
    pub owner_id: OwnerId,
    pub name: String,
    pub notes: String,
    pub created: DateTime<Utc>,
}

/// One attempt at turning an uploaded source archive into a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionBuild {
    pub id: BuildId,
    pub application_id: AppId,
    pub owner_id: OwnerId,
    /// The semantic version the build will publish.
    #[schema(value_type = String, example = "1.0.0")]
    pub version: semver::Version,
    pub language: Language,
    pub phases: Phases,
    /// The plugin configuration passed to `proxy_on_configure`.
    pub conf: String,
    pub notes: String,
    pub options: BuildOptions,
    pub created: DateTime<Utc>,
    pub state: BuildState,
    /// How many times a worker has started this build (1 for the first run).
    pub attempt: i32,
    /// The worker that claimed the latest attempt (`default` for the
    /// server's shared worker token); null until a worker claims the build.
    /// It stays once the build ends, so the record says who built it.
    #[schema(example = "build-host-1")]
    pub worker: Option<String>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    /// Why the build failed, crashed or was cancelled, in one sentence.
    pub error: Option<String>,
    /// Where the build's logs are in the blob store, once it has finished:
    /// kiln's own, never shown (`logs_url` is).
    #[serde(skip)]
    pub logs_location: Option<String>,
    /// The API path of the build's log, once it has one.
    #[schema(example = "/version_build/0190c0de-0000-7000-8000-000000000000/logs")]
    pub logs_url: Option<String>,
    /// The time each stage of the build took and the startup profile.
    pub profile: Option<crate::BuildProfile>,
}

/// A successfully built plugin. Its id is the id of the build that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Version {
    pub id: BuildId,
    pub application_id: AppId,
    pub owner_id: OwnerId,
    #[schema(value_type = String, example = "1.0.0")]
    pub version: semver::Version,
    pub language: Language,
    pub phases: Phases,
    pub conf: String,
    pub notes: String,
    pub options: BuildOptions,
    pub created: DateTime<Utc>,
    /// Blob-store keys: kiln's own, never shown (the `*_url` fields are).
    #[serde(skip)]
    pub source_location: String,
    #[serde(skip)]
    pub binary_location: String,
    #[serde(skip)]
    pub logs_location: String,
    /// API paths of the version's `.wasm`, its source archive and its
    /// build log.
    pub binary_url: String,
    pub source_url: String,
    pub logs_url: String,
    /// Hex sha256 of the `.wasm` binary; also its `ETag`.
    pub binary_sha256: String,
    pub binary_size: i64,
    /// What the build that made the version measured.
    pub profile: Option<crate::BuildProfile>,
}
