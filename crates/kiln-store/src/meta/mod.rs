//! The metadata store. One set of SQL serves both backends (`$n`
//! placeholders, times as integer microseconds); the few statements that
//! differ say why. The builds table is also the build queue: a claim is an
//! atomic `queued -> running` with a lease, and every report checks that lease.
//!
//! A claim records the worker that made it, and a lease id is handed to that
//! one worker and never reused: a heartbeat, a source download or the
//! opening check of a report ([`MetaStore::leased_build`]) names the worker
//! and is refused for another worker's lease. Once that check passed, a report
//! completing under the same lease id cannot land on anyone else's claim.

mod rows;

use crate::{Result, StoreError};
use chrono::{DateTime, Utc};
use kiln_domain::{
    AppId, BuildId, BuildState, Language, OwnerId, Phases, VersionBuild, WorkerName,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// Runs `$body` with `$pool` bound to whichever pool backs the store; the
/// body is compiled once per backend.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::meta::Backend::Sqlite($pool) => $body,
            $crate::meta::Backend::Postgres($pool) => $body,
        }
    };
}

mod applications;
mod builds;
mod channels;
mod leases;
mod owners;
mod queue;
mod registry;
mod versions;

pub use channels::ChannelRefusal;
pub use registry::ImageDigests;

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The metadata store, cheap to clone.
#[derive(Debug, Clone)]
pub struct MetaStore {
    backend: Backend,
    clock: crate::Clock,
}

/// The longest a request waits for a database connection: when the
/// database is down, the API answers 503 well within its own timeout.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

const BUILD_COLS: &str = "id, application_id, owner_id, version, language, phases, conf, notes, \
     created_us, state, attempt, started_us, finished_us, error, source_location, logs_location, \
     profile, lease_id, options, worker, lease_expires_us";

const VERSION_COLS: &str = "id, application_id, owner_id, version, language, phases, conf, notes, \
     created_us, source_location, binary_location, logs_location, binary_sha256, binary_size, profile, options";

/// What the API knows of a build when it is queued.
#[derive(Debug, Clone)]
pub struct NewBuild {
    /// The build's id, picked by the caller: the source's key contains it.
    pub id: BuildId,
    /// The application the build belongs to.
    pub application_id: AppId,
    /// The application's owner, whose unfinished builds are counted.
    pub owner_id: OwnerId,
    /// The semantic version to publish; unique within the application.
    pub version: semver::Version,
    /// The source language.
    pub language: Language,
    /// The HTTP phases the plugin declares.
    pub phases: Phases,
    /// The plugin configuration passed to `proxy_on_configure`.
    pub conf: String,
    /// Free text for the owner.
    pub notes: String,
    /// Which post-build steps to run.
    pub options: kiln_domain::BuildOptions,
    /// Blob key of the uploaded source archive, stored before the row
    /// ([`crate::keys::source`]).
    pub source_location: String,
}

/// A build handed to a worker, with the lease its reports must carry.
#[derive(Debug, Clone)]
pub struct ClaimedBuild {
    /// The build, `running` under this lease.
    pub build: VersionBuild,
    /// The lease the worker's heartbeats and reports must name; handed to
    /// this one worker and never reused.
    pub lease_id: Uuid,
    /// When the lease ends unless a heartbeat extends it. Only a claim
    /// sets it; [`MetaStore::leased_build`] gives the time of the call.
    pub lease_expires: DateTime<Utc>,
    /// Blob key of the build's source archive, for the worker's download.
    pub source_location: String,
}

/// What a successful build adds to make a version.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// Blob key of the `.wasm`, stored before the row
    /// ([`crate::keys::report_binary`]).
    pub binary_location: String,
    /// Hex sha256 of the `.wasm`.
    pub binary_sha256: String,
    /// Size of the `.wasm`, in bytes.
    pub binary_size: i64,
    /// Blob key of the build log, stored before the row.
    pub logs_location: String,
    /// What the build measured, when the worker reported it.
    pub profile: Option<kiln_domain::BuildProfile>,
}

/// Changes to a version's metadata; a `None` keeps the field as it is.
#[derive(Debug, Clone, Default)]
pub struct VersionPatch {
    /// A new semantic version, which must stay unique within the
    /// application.
    pub version: Option<semver::Version>,
    /// New HTTP phases.
    pub phases: Option<Phases>,
    /// A new plugin configuration.
    pub conf: Option<String>,
    /// New notes.
    pub notes: Option<String>,
}

/// Which builds a listing returns; a `None` matches any.
#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    /// Only the builds of this application.
    pub application_id: Option<AppId>,
    /// Only the builds in this state.
    pub state: Option<BuildState>,
}

/// A window of a listing: at most `limit` rows, after skipping `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Most rows returned.
    pub limit: i64,
    /// Rows skipped first (counted from the `after` cursor, when set).
    pub offset: i64,
    /// Only what comes after this build in the listing's order (a keyset
    /// cursor: the page costs the same however deep it is).
    pub after: Option<BuildId>,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: 50,
            offset: 0,
            after: None,
        }
    }
}

/// A worker's credential as the store knows it (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerToken {
    /// The worker's name; never reused, even after a revocation.
    pub name: WorkerName,
    /// When the token was created.
    pub created: DateTime<Utc>,
    /// When the token was revoked; it is refused from then on.
    pub revoked: Option<DateTime<Utc>>,
}

/// What became of the running builds of a worker that lost its token (or
/// went silent): each is queued again, or ends `crashed` when it has used
/// its attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Orphaned {
    /// Builds queued again, with attempts left.
    pub requeued: u64,
    /// Builds ended `crashed`, having used their attempts.
    pub crashed: u64,
}

/// What `revoke_token` revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// An owner's token; the owner's other tokens still work.
    Owner(OwnerId),
    /// A worker's token, with what became of its running builds.
    Worker(WorkerName, Orphaned),
    /// An owner's read-only edge token.
    Edge(OwnerId),
}

/// Running builds that lost their worker. Both kinds end the same way: the
/// reaper's, in [`MetaStore::end_orphans`].
enum Orphans<'a> {
    /// Their lease expired before this time (µs): the worker went silent.
    LeaseExpiredBefore(i64),
    /// Their worker's token is being revoked.
    ClaimedBy(&'a WorkerName),
}

impl Orphans<'_> {
    /// Why, as the build record's error says it.
    fn reason(&self) -> &'static str {
        match self {
            Orphans::LeaseExpiredBefore(_) => "the worker stopped reporting",
            Orphans::ClaimedBy(_) => "its worker's token was revoked",
        }
    }
}

/// Builds per state, for metrics.
#[derive(Debug, Clone, Default)]
pub struct QueueCounts {
    /// Each state that has builds, with how many; states without any are
    /// left out.
    pub by_state: Vec<(BuildState, i64)>,
}

/// The number of one owner's builds that are queued or running (`$2`,
/// `$3`). Statements bind [`BuildState`]'s own names rather than spelling
/// states in SQL.
const UNFINISHED_BUILDS: &str =
    "SELECT COUNT(*) FROM builds WHERE owner_id = $1 AND state IN ($2, $3)";

/// One build by id, of one owner or (`$2` null) of any.
fn one_build_sql() -> String {
    format!("SELECT {BUILD_COLS} FROM builds WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)")
}

fn conflict_on_unique(e: sqlx::Error, message: impl Into<String>) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(message.into())
        }
        _ => StoreError::Database(e),
    }
}

fn duplicate_version(version: &semver::Version) -> String {
    format!("version {version} already exists for this application")
}

impl MetaStore {
    /// The store reading the time from `clock`, such as a test's
    /// [`crate::Clock::manual`].
    pub fn with_clock(mut self, clock: crate::Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now_us(&self) -> i64 {
        self.clock.now_us()
    }

    /// Connects by URL: `sqlite://PATH` (created if missing) or
    /// `postgres://…`, and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            Ok(Self {
                backend: Backend::Sqlite(pool),
                clock: crate::Clock::system(),
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Self::connect_postgres(PgConnectOptions::from_str(url)?).await
        } else {
            Err(StoreError::Config(format!(
                "database URL must start with sqlite:// or postgres:// (got {:?})",
                url.split(':').next().unwrap_or_default()
            )))
        }
    }

    /// Connects to PostgreSQL with every table in `schema`, which is created
    /// if missing. Tests use one schema each.
    pub async fn connect_postgres_schema(url: &str, schema: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&pool)
            .await?;
        pool.close().await;
        Self::connect_postgres(options.options([("search_path", schema)])).await
    }

    async fn connect_postgres(options: PgConnectOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            backend: Backend::Postgres(pool),
            clock: crate::Clock::system(),
        })
    }

    /// `sqlite` or `postgres`, for logs and the health check.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes the connection pool once the connections in use are returned;
    /// later operations fail with `PoolClosed`.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    /// The pool's connections, all and idle, for metrics.
    pub fn pool_usage(&self) -> (u32, usize) {
        with_pool!(self, pool => (pool.size(), pool.num_idle()))
    }

    /// Runs `SELECT 1`: whether the database answers, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}
