//! The messages of the private worker API, shared by the server that
//! answers them and the worker that sends them.

use crate::{BuildId, SourceKind, VersionBuild};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The header every worker report carries: the lease id of its claim.
pub const LEASE_HEADER: &str = "x-kiln-lease";

/// The `error` code of the 409 that tells a worker the build is no longer
/// its own (cancelled, re-queued, finished, or an unknown lease). Other
/// 409s are other conflicts.
pub const LEASE_LOST_CODE: &str = "lease_lost";

/// A build handed to a worker by `POST /internal/builds/claim`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Claim {
    /// The build to run, as the claim left it: `running`, its attempt
    /// counted.
    pub build: VersionBuild,
    /// Sent back in [`LEASE_HEADER`] with every heartbeat and report.
    #[schema(value_type = String, format = Uuid)]
    pub lease_id: Uuid,
    /// The lease ends then unless a heartbeat extends it.
    pub lease_expires: DateTime<Utc>,
    /// How long each heartbeat extends the lease, in seconds: a worker
    /// beats every third of it, whatever its own clock says.
    #[serde(default)]
    pub lease_seconds: u64,
    /// Where to download the source archive (a path on the server).
    pub source_path: String,
    /// `tar.gz` or `zip`.
    pub source_kind: SourceKind,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Heartbeat {
    /// The build whose lease was extended.
    pub build_id: BuildId,
    /// When the lease now ends unless another heartbeat extends it.
    pub lease_expires: DateTime<Utc>,
}

/// The answer to a chunk of a live log (`POST /internal/builds/{id}/log`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogReceived {
    /// How many bytes of this lease's log the server has: the next chunk
    /// starts there (a retried chunk is not appended twice, a gap is not
    /// appended at all).
    pub received: u64,
}

/// Form fields of the reports (`/build_success`, `/build_fail`, `/build_crash`).
pub mod fields {
    /// The `.wasm` binary (success).
    pub const BINARY: &str = "binary";
    /// The build log, plain text.
    pub const LOGS: &str = "logs";
    /// A one-sentence reason (fail, crash).
    pub const ERROR: &str = "error";
    /// JSON: the time each stage took, the startup profile.
    pub const PROFILE: &str = "profile";
    /// Prefix of precompiled artifacts (`cwasm.<target triple>`), which a
    /// report must not carry: native code comes only from the server's own
    /// precompilation, never from a worker.
    pub const CWASM_PREFIX: &str = "cwasm.";
}
