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
    /// The application's id, as API paths take it.
    pub id: AppId,
    /// The owner (tenant) the application belongs to.
    pub owner_id: OwnerId,
    /// A display name: 1 to 100 characters, trimmed, without control
    /// characters.
    pub name: String,
    /// Free text for the owner, at most 10 000 bytes.
    pub notes: String,
    /// When the application was created.
    pub created: DateTime<Utc>,
}

/// One attempt at turning an uploaded source archive into a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionBuild {
    /// The build's id; also the id of the version it makes if it succeeds.
    pub id: BuildId,
    /// The application the build belongs to.
    pub application_id: AppId,
    /// The owner of the application.
    pub owner_id: OwnerId,
    /// The semantic version the build will publish.
    #[schema(value_type = String, example = "1.0.0")]
    pub version: semver::Version,
    /// The source language, which picks the toolchain.
    pub language: Language,
    /// The HTTP phases the plugin declares it handles.
    pub phases: Phases,
    /// The plugin configuration passed to `proxy_on_configure`.
    pub conf: String,
    /// Free text for the owner, at most 10 000 bytes.
    pub notes: String,
    /// Which post-build steps run.
    pub options: BuildOptions,
    /// When the build was queued (its upload).
    pub created: DateTime<Utc>,
    /// Where the build is in its life.
    pub state: BuildState,
    /// How many times a worker has started this build (1 for the first run).
    pub attempt: i32,
    /// The worker that claimed the latest attempt (`default` for the
    /// server's shared worker token); null until a worker claims the build.
    /// It stays once the build ends, so the record says who built it.
    #[schema(example = "build-host-1")]
    pub worker: Option<String>,
    /// When a worker last claimed the build; null until the first claim.
    pub started: Option<DateTime<Utc>>,
    /// When the build reached its terminal state; null while it is queued
    /// or running.
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
    /// The version's id: the id of the build that made it.
    pub id: BuildId,
    /// The application the version belongs to.
    pub application_id: AppId,
    /// The owner of the application.
    pub owner_id: OwnerId,
    /// The semantic version, unique within the application.
    #[schema(value_type = String, example = "1.0.0")]
    pub version: semver::Version,
    /// The source language.
    pub language: Language,
    /// The HTTP phases the plugin handles.
    pub phases: Phases,
    /// The plugin configuration passed to `proxy_on_configure`.
    pub conf: String,
    /// Free text for the owner, at most 10 000 bytes.
    pub notes: String,
    /// The post-build steps the build was asked to run.
    pub options: BuildOptions,
    /// When the build succeeded and made the version.
    pub created: DateTime<Utc>,
    /// Blob-store key of the source archive: kiln's own, never shown
    /// (`source_url` is).
    #[serde(skip)]
    pub source_location: String,
    /// Blob-store key of the `.wasm`: never shown (`binary_url` is).
    #[serde(skip)]
    pub binary_location: String,
    /// Blob-store key of the build log: never shown (`logs_url` is).
    #[serde(skip)]
    pub logs_location: String,
    /// API path of the `.wasm` binary.
    pub binary_url: String,
    /// API path of the uploaded source archive.
    pub source_url: String,
    /// API path of the build log.
    pub logs_url: String,
    /// Hex sha256 of the `.wasm` binary; also its `ETag`.
    pub binary_sha256: String,
    /// Size of the `.wasm`, in bytes.
    pub binary_size: i64,
    /// What the build that made the version measured.
    pub profile: Option<crate::BuildProfile>,
}
