//! Server settings. Units are in the names; defaults are named constants.

use kiln_build::archive::ArchiveLimits;
use std::time::Duration;

/// How long a claim is valid without a heartbeat.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// How many times a build is started before a crash is final.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
/// How often expired leases are looked for.
pub const DEFAULT_REAP_INTERVAL: Duration = Duration::from_secs(5);
/// Largest binary a worker may report (the build output cap).
pub const DEFAULT_MAX_BINARY_BYTES: u64 = 50 * 1024 * 1024;
/// Largest build log a worker may report.
pub const DEFAULT_MAX_REPORT_LOG_BYTES: u64 = 4 * 1024 * 1024;
/// Builds one owner may have queued or running at once.
pub const DEFAULT_MAX_UNFINISHED_BUILDS: i64 = 20;
/// Longest a claim request waits for a build to be queued.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(30);

/// What an operator can set; [`ServerConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// sha256 of the server's shared worker token (see `auth::hash_token`),
    /// which authenticates as the worker `default`; other workers present
    /// their own tokens, kept in the metadata store.
    pub worker_token_hash: String,
    /// Limits on uploaded archives; `max_upload_bytes` is also the cap on
    /// the `source_code` field of `POST /version`.
    pub archive_limits: ArchiveLimits,
    /// How long a claim stays valid without a heartbeat; each heartbeat
    /// extends it by this much.
    pub lease: Duration,
    /// How many times a build is started before a crash or an expired lease
    /// is final.
    pub max_attempts: i32,
    /// How often expired leases are looked for.
    pub reap_interval: Duration,
    /// Largest `.wasm` a worker may report, in bytes.
    pub max_binary_bytes: u64,
    /// Largest build log a worker may report, in bytes; also the cap on one
    /// build's live log buffer and on one live log chunk.
    pub max_report_log_bytes: u64,
    /// Uploads beyond this many unfinished builds of one owner are refused.
    pub max_unfinished_builds: i64,
}

impl ServerConfig {
    /// The defaults, with `worker_token_hash` the sha256 of the shared worker
    /// token.
    pub fn new(worker_token_hash: String) -> Self {
        Self {
            worker_token_hash,
            archive_limits: ArchiveLimits::default(),
            lease: DEFAULT_LEASE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            reap_interval: DEFAULT_REAP_INTERVAL,
            max_binary_bytes: DEFAULT_MAX_BINARY_BYTES,
            max_report_log_bytes: DEFAULT_MAX_REPORT_LOG_BYTES,
            max_unfinished_builds: DEFAULT_MAX_UNFINISHED_BUILDS,
        }
    }
}
