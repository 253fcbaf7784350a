//! kiln-store keeps kiln's state: metadata in SQL (SQLite embedded,
//! PostgreSQL at scale, picked by URL) and blobs in an object store (a local
//! directory embedded, S3-compatible at scale). Callers see [`MetaStore`] and
//! [`BlobStore`]; no SQL or S3 detail leaks out.
//!
//! Layout:
//! - [`meta`]: applications, builds (which are also the queue), versions,
//!   owners, their tokens, the workers' and edge servers' tokens, and the
//!   channels that deploy versions.
//! - [`blob`]: sources, binaries and logs, written atomically.
//! - [`keys`]: where each blob of a build lives.

pub mod blob;
pub mod clock;
pub mod fsck;
pub mod keys;
pub mod meta;

pub use blob::{BlobStore, S3Config};
pub use clock::Clock;
pub use meta::{
    BuildFilter, ChannelRefusal, ClaimedBuild, ImageDigests, MetaStore, NewBuild, NewVersion,
    Orphaned, Page, QueueCounts, Revoked, VersionPatch, WorkerToken,
};

/// A failure of a store operation. `NotFound`, `Conflict` and `LeaseLost`
/// are answers callers act on; the rest are internal errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such record or blob, or it is another owner's.
    #[error("not found")]
    NotFound,
    /// The operation clashes with what is stored (a duplicate version, a
    /// finished build, a taken name); the message says how, and is shown
    /// to the client.
    #[error("{0}")]
    Conflict(String),
    /// The owner already has `limit` or more builds queued or running.
    #[error("{unfinished} builds are queued or running, the most allowed is {limit}")]
    TooManyUnfinished {
        /// The owner's builds queued or running now.
        unfinished: i64,
        /// The most the owner may have.
        limit: i64,
    },
    /// The build is not running under this lease: it was re-queued,
    /// cancelled, finished, or the lease id is unknown.
    #[error("build {0} is not running under this lease")]
    LeaseLost(kiln_domain::BuildId),
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema migrations, run at connect, did not apply.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The blob store failed or could not be reached.
    #[error("blob store error: {0}")]
    Blob(#[from] object_store::Error),
    /// A store's settings are unusable: a bad URL, a blob directory that
    /// cannot be created.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// A stored value does not parse back into its domain type.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database or the blob store could not be reached (down,
    /// unreachable, its pool exhausted or closed), rather than refusing
    /// the operation: worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => matches!(
                e,
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            ),
            StoreError::Blob(e) => !matches!(
                e,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotModified { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
            ),
            _ => false,
        }
    }
}

/// The result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
