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
    AppId, Application, BuildId, BuildState, Language, OwnerId, Phases, Version, VersionBuild,
    WorkerName,
};
use rows::{AppRow, BuildRow, VersionRow, WorkerRow, to_us};
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
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

mod channels;
mod registry;

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
}

/// The longest a request waits for a database connection: when the
/// database is down, the API answers 503 well within its own timeout.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

const BUILD_COLS: &str = "id, application_id, owner_id, version, language, phases, conf, notes, \
     created_us, state, attempt, started_us, finished_us, error, source_location, logs_location, \
     profile, lease_id, options, worker";

const VERSION_COLS: &str = "id, application_id, owner_id, version, language, phases, conf, notes, \
     created_us, source_location, binary_location, logs_location, binary_sha256, binary_size, profile, options";

/// What the API knows of a build when it is queued.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub id: BuildId,
    pub application_id: AppId,
    pub owner_id: OwnerId,
    pub version: semver::Version,
    pub language: Language,
    pub phases: Phases,
    pub conf: String,
    pub notes: String,
    pub options: kiln_domain::BuildOptions,
    pub source_location: String,
}

/// A build handed to a worker, with the lease its reports must carry.
#[derive(Debug, Clone)]
pub struct ClaimedBuild {
    pub build: VersionBuild,
    pub lease_id: Uuid,
    pub lease_expires: DateTime<Utc>,
    pub source_location: String,
}

/// What a successful build adds to make a version.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub binary_location: String,
    pub binary_sha256: String,
    pub binary_size: i64,
    pub logs_location: String,
    pub profile: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct VersionPatch {
    pub version: Option<semver::Version>,
    pub phases: Option<Phases>,
    pub conf: Option<String>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    pub application_id: Option<AppId>,
    pub state: Option<BuildState>,
}

#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
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
    pub name: WorkerName,
    pub created: DateTime<Utc>,
    /// When the token was revoked; it is refused from then on.
    pub revoked: Option<DateTime<Utc>>,
}

/// What became of the running builds of a worker that lost its token (or
/// went silent): each is queued again, or ends `crashed` when it has used
/// its attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Orphaned {
    pub requeued: u64,
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
    pub by_state: Vec<(BuildState, i64)>,
}

/// The number of one owner's builds that are queued or running.
const UNFINISHED_BUILDS: &str =
    "SELECT COUNT(*) FROM builds WHERE owner_id = $1 AND state IN ('queued', 'running')";

fn conflict_on_unique(e: sqlx::Error, message: impl Into<String>) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(message.into())
        }
        _ => StoreError::Database(e),
    }
}

fn now_us() -> i64 {
    to_us(Utc::now())
}

fn duplicate_version(version: &semver::Version) -> String {
    format!("version {version} already exists for this application")
}

impl MetaStore {
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
        })
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    /// The pool's connections, all and idle, for metrics.
    pub fn pool_usage(&self) -> (u32, usize) {
        with_pool!(self, pool => (pool.size(), pool.num_idle()))
    }

    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    // ---- owners and tokens -------------------------------------------------

    pub async fn create_owner(&self, name: &str) -> Result<OwnerId> {
        let id: i64 = with_pool!(self, pool => {
            sqlx::query_scalar("INSERT INTO owners (name, created_us) VALUES ($1, $2) RETURNING id")
                .bind(name)
                .bind(now_us())
                .fetch_one(pool)
                .await
        })?;
        Ok(OwnerId(id))
    }

    /// Creates owner `id` if it does not exist yet (for `kiln token create
    /// --owner N`), keeping PostgreSQL's id sequence ahead of it.
    pub async fn ensure_owner(&self, id: OwnerId, name: &str) -> Result<()> {
        if self.owner_exists(id).await? {
            return Ok(());
        }
        with_pool!(self, pool => {
            sqlx::query("INSERT INTO owners (id, name, created_us) VALUES ($1, $2, $3)")
                .bind(id.0).bind(name).bind(now_us())
                .execute(pool).await.map(|r| r.rows_affected())
        })?;
        if let Backend::Postgres(pool) = &self.backend {
            sqlx::query("SELECT setval(pg_get_serial_sequence('owners', 'id'), (SELECT MAX(id) FROM owners))")
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    pub async fn owner_count(&self) -> Result<i64> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM owners").fetch_one(pool).await
        })?)
    }

    pub async fn owner_exists(&self, owner: OwnerId) -> Result<bool> {
        let n: i64 = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM owners WHERE id = $1")
                .bind(owner.0)
                .fetch_one(pool)
                .await
        })?;
        Ok(n > 0)
    }

    /// Records a token by its hash (see `kiln_server::auth`).
    pub async fn add_token(&self, owner: OwnerId, token_hash: &str) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("INSERT INTO tokens (hash, owner_id, created_us) VALUES ($1, $2, $3)")
                .bind(token_hash)
                .bind(owner.0)
                .bind(now_us())
                .execute(pool)
                .await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    pub async fn owner_by_token(&self, token_hash: &str) -> Result<Option<OwnerId>> {
        let id: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT owner_id FROM tokens WHERE hash = $1")
                .bind(token_hash)
                .fetch_optional(pool)
                .await
        })?;
        Ok(id.map(OwnerId))
    }

    /// How many tokens each owner holds, by owner id.
    pub async fn owner_token_counts(&self) -> Result<Vec<(OwnerId, i64)>> {
        let rows: Vec<(i64, i64)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT owner_id, COUNT(*) FROM tokens GROUP BY owner_id ORDER BY owner_id")
                .fetch_all(pool)
                .await
        })?;
        Ok(rows.into_iter().map(|(o, n)| (OwnerId(o), n)).collect())
    }

    /// Records the token of a new worker by its hash. `Conflict` when the
    /// name is taken, even by a revoked token (names are never reused, so a
    /// build's worker is one credential), or is the shared token's.
    pub async fn create_worker(&self, name: &WorkerName, token_hash: &str) -> Result<()> {
        if name.is_shared() {
            return Err(StoreError::Conflict(format!(
                "the worker name {name:?} is reserved for the server's shared --worker-token; choose another"
            )));
        }
        with_pool!(self, pool => {
            sqlx::query("INSERT INTO workers (name, token_hash, created_us) VALUES ($1, $2, $3)")
                .bind(name.as_str())
                .bind(token_hash)
                .bind(now_us())
                .execute(pool)
                .await.map(|r| r.rows_affected())
        })
        .map_err(|e| {
            conflict_on_unique(
                e,
                format!(
                    "a worker named {name:?} already exists; worker names are never reused, \
                     even after a revocation, so choose another"
                ),
            )
        })?;
        Ok(())
    }

    /// The worker a token stands for, unless it is unknown or revoked.
    /// Read on every request: a revocation holds from the next one.
    pub async fn worker_by_token(&self, token_hash: &str) -> Result<Option<WorkerName>> {
        let name: Option<String> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT name FROM workers WHERE token_hash = $1 AND revoked_us IS NULL")
                .bind(token_hash)
                .fetch_optional(pool)
                .await
        })?;
        name.map(|n| {
            WorkerName::parse(&n).map_err(|e| StoreError::Corrupt(format!("worker name: {e}")))
        })
        .transpose()
    }

    /// Every worker token, revoked ones too, by name.
    pub async fn list_workers(&self) -> Result<Vec<WorkerToken>> {
        let rows: Vec<WorkerRow> = with_pool!(self, pool => {
            sqlx::query_as("SELECT name, created_us, revoked_us FROM workers ORDER BY name")
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Revokes a worker's token and, in the same transaction, ends its
    /// running builds as an expired lease would: queued again, or `crashed`
    /// once they have used `max_attempts`. `NotFound` for an unknown name,
    /// `Conflict` when the token was revoked already.
    pub async fn revoke_worker(&self, name: &WorkerName, max_attempts: i32) -> Result<Orphaned> {
        let revoked = self
            .end_orphans(&Orphans::ClaimedBy(name), max_attempts)
            .await?;
        match revoked {
            Some(orphaned) => Ok(orphaned),
            None => {
                let known = self
                    .list_workers()
                    .await?
                    .into_iter()
                    .any(|w| &w.name == name);
                if known {
                    Err(StoreError::Conflict(format!(
                        "the token of worker {name} was revoked already"
                    )))
                } else {
                    Err(StoreError::NotFound)
                }
            }
        }
    }

    /// Revokes whichever token hashes to `token_hash`: an owner's token is
    /// deleted, a worker's is revoked as by [`Self::revoke_worker`].
    /// `NotFound` when no live token has this hash.
    pub async fn revoke_token(&self, token_hash: &str, max_attempts: i32) -> Result<Revoked> {
        let owner: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("DELETE FROM tokens WHERE hash = $1 RETURNING owner_id")
                .bind(token_hash)
                .fetch_optional(pool)
                .await
        })?;
        if let Some(owner) = owner {
            return Ok(Revoked::Owner(OwnerId(owner)));
        }
        if let Some(owner) = self.delete_edge_token(token_hash).await? {
            return Ok(Revoked::Edge(owner));
        }
        let Some(name) = self.worker_by_token(token_hash).await? else {
            return Err(StoreError::NotFound);
        };
        let orphaned = self.revoke_worker(&name, max_attempts).await?;
        Ok(Revoked::Worker(name, orphaned))
    }

    // ---- applications ------------------------------------------------------

    pub async fn create_application(
        &self,
        owner: OwnerId,
        name: &str,
        notes: &str,
    ) -> Result<Application> {
        let app = Application {
            id: AppId::new(),
            owner_id: owner,
            name: name.to_owned(),
            notes: notes.to_owned(),
            created: rows::from_us(now_us()),
        };
        with_pool!(self, pool => {
            sqlx::query("INSERT INTO applications (id, owner_id, name, notes, created_us) VALUES ($1, $2, $3, $4, $5)")
                .bind(app.id.0)
                .bind(owner.0)
                .bind(&app.name)
                .bind(&app.notes)
                .bind(to_us(app.created))
                .execute(pool)
                .await.map(|r| r.rows_affected())
        })?;
        Ok(app)
    }

    pub async fn list_applications(&self, owner: OwnerId) -> Result<Vec<Application>> {
        let rows: Vec<AppRow> = with_pool!(self, pool => {
            sqlx::query_as("SELECT id, owner_id, name, notes, created_us FROM applications WHERE owner_id = $1 ORDER BY created_us DESC, id")
                .bind(owner.0)
                .fetch_all(pool)
                .await
        })?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// An application of `owner`; another owner's answers `NotFound`.
    pub async fn get_application(&self, owner: OwnerId, id: AppId) -> Result<Application> {
        let row: Option<AppRow> = with_pool!(self, pool => {
            sqlx::query_as("SELECT id, owner_id, name, notes, created_us FROM applications WHERE id = $1 AND owner_id = $2")
                .bind(id.0)
                .bind(owner.0)
                .fetch_optional(pool)
                .await
        })?;
        row.map(Into::into).ok_or(StoreError::NotFound)
    }

    pub async fn update_application(
        &self,
        owner: OwnerId,
        id: AppId,
        name: Option<&str>,
        notes: Option<&str>,
    ) -> Result<Application> {
        let changed = with_pool!(self, pool => {
            sqlx::query("UPDATE applications SET name = COALESCE($1, name), notes = COALESCE($2, notes) WHERE id = $3 AND owner_id = $4")
                .bind(name)
                .bind(notes)
                .bind(id.0)
                .bind(owner.0)
                .execute(pool)
                .await.map(|r| r.rows_affected())
        })?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_application(owner, id).await
    }

    /// Deletes an application with its builds and versions (the blobs are
    /// the caller's to delete, under `keys::app_prefix`).
    pub async fn delete_application(&self, owner: OwnerId, id: AppId) -> Result<()> {
        let deleted = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // Channels point at versions, and hold them.
            sqlx::query("DELETE FROM channels WHERE application_id = $1 AND owner_id = $2")
                .bind(id.0).bind(owner.0).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM versions WHERE application_id = $1 AND owner_id = $2")
                .bind(id.0).bind(owner.0).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM builds WHERE application_id = $1 AND owner_id = $2")
                .bind(id.0).bind(owner.0).execute(&mut *tx).await?;
            let n = sqlx::query("DELETE FROM applications WHERE id = $1 AND owner_id = $2")
                .bind(id.0).bind(owner.0).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok::<u64, sqlx::Error>(n)
        })?;
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    // ---- builds --------------------------------------------------------------

    /// Queues a build. `Conflict` when the application already has this
    /// version queued, running or built.
    pub async fn create_build(&self, new: &NewBuild) -> Result<VersionBuild> {
        self.create_build_within(new, i64::MAX).await
    }

    /// Queues a build unless its owner already has `max_unfinished` builds
    /// queued or running (`TooManyUnfinished`). The owner's row is written
    /// first, so concurrent uploads of one owner take turns (a row lock in
    /// PostgreSQL, the single writer in SQLite) and each counts exactly.
    pub async fn create_build_within(
        &self,
        new: &NewBuild,
        max_unfinished: i64,
    ) -> Result<VersionBuild> {
        let existing_version = self
            .find_version_id(new.application_id, &new.version.to_string())
            .await?;
        if existing_version.is_some() {
            return Err(StoreError::Conflict(duplicate_version(&new.version)));
        }
        let sql = format!(
            "INSERT INTO builds (id, application_id, owner_id, version, language, phases, conf, notes, created_us, state, attempt, source_location, options) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', 0, $10, $11) RETURNING {BUILD_COLS}"
        );
        // Ok(Err(n)): the owner already has n unfinished builds.
        let created: std::result::Result<std::result::Result<BuildRow, i64>, sqlx::Error> = with_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                sqlx::query("UPDATE owners SET name = name WHERE id = $1")
                    .bind(new.owner_id.0)
                    .execute(&mut *tx)
                    .await?;
                let unfinished: i64 = sqlx::query_scalar(UNFINISHED_BUILDS)
                    .bind(new.owner_id.0)
                    .fetch_one(&mut *tx)
                    .await?;
                if unfinished >= max_unfinished {
                    return Ok(Err(unfinished));
                }
                let row: BuildRow = sqlx::query_as(&sql)
                    .bind(new.id.0)
                    .bind(new.application_id.0)
                    .bind(new.owner_id.0)
                    .bind(new.version.to_string())
                    .bind(new.language.as_str())
                    .bind(new.phases.to_json())
                    .bind(&new.conf)
                    .bind(&new.notes)
                    .bind(now_us())
                    .bind(&new.source_location)
                    .bind(serde_json::to_string(&new.options).expect("options serialize"))
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Ok(row))
            }
            .await
        });
        match created.map_err(|e| conflict_on_unique(e, duplicate_version(&new.version)))? {
            Ok(row) => row.try_into(),
            Err(unfinished) => Err(StoreError::TooManyUnfinished {
                unfinished,
                limit: max_unfinished,
            }),
        }
    }

    async fn find_version_id(&self, app: AppId, version: &str) -> Result<Option<Uuid>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT id FROM versions WHERE application_id = $1 AND version = $2")
                .bind(app.0)
                .bind(version)
                .fetch_optional(pool)
                .await
        })?)
    }

    pub async fn get_build(&self, owner: OwnerId, id: BuildId) -> Result<VersionBuild> {
        self.build_row(Some(owner), id).await?.try_into()
    }

    /// The source blob of a build, for the owner's download.
    pub async fn build_source_location(&self, owner: OwnerId, id: BuildId) -> Result<String> {
        Ok(self.build_row(Some(owner), id).await?.source_location)
    }

    async fn build_row(&self, owner: Option<OwnerId>, id: BuildId) -> Result<BuildRow> {
        let sql = format!(
            "SELECT {BUILD_COLS} FROM builds WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        );
        let row: Option<BuildRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(id.0)
                .bind(owner.map(|o| o.0))
                .fetch_optional(pool)
                .await
        })?;
        row.ok_or(StoreError::NotFound)
    }

    /// The owner's builds, newest first.
    pub async fn list_builds(
        &self,
        owner: OwnerId,
        filter: &BuildFilter,
        page: Page,
    ) -> Result<Vec<VersionBuild>> {
        let sql = format!(
            "SELECT {BUILD_COLS} FROM builds WHERE owner_id = $1 \
             AND ($2 IS NULL OR application_id = $2) AND ($3 IS NULL OR state = $3) \
             AND ($6 IS NULL OR (created_us, id) < \
                  (SELECT created_us, id FROM builds WHERE id = $6 AND owner_id = $1)) \
             ORDER BY created_us DESC, id DESC LIMIT $4 OFFSET $5"
        );
        let rows: Vec<BuildRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(owner.0)
                .bind(filter.application_id.map(|a| a.0))
                .bind(filter.state.map(|s| s.as_str()))
                .bind(page.limit)
                .bind(page.offset)
                .bind(page.after.map(|b| b.0))
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Cancels a queued or running build. `Conflict` when it has finished.
    pub async fn cancel_build(&self, owner: OwnerId, id: BuildId) -> Result<VersionBuild> {
        let changed = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE builds SET state = 'cancelled', finished_us = $1, error = 'cancelled by its owner', \
                 lease_id = NULL, lease_expires_us = NULL \
                 WHERE id = $2 AND owner_id = $3 AND state IN ('queued', 'running')",
            )
            .bind(now_us())
            .bind(id.0)
            .bind(owner.0)
            .execute(pool)
            .await.map(|r| r.rows_affected())
        })?;
        let build = self.get_build(owner, id).await?;
        if changed == 0 {
            return Err(StoreError::Conflict(format!(
                "build {id} is {} and can no longer be cancelled",
                build.state
            )));
        }
        Ok(build)
    }

    /// Builds of `owner` that are queued or running.
    pub async fn unfinished_builds(&self, owner: OwnerId) -> Result<i64> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(UNFINISHED_BUILDS)
            .bind(owner.0)
            .fetch_one(pool)
            .await
        })?)
    }

    /// Number of builds in each state.
    pub async fn queue_counts(&self) -> Result<QueueCounts> {
        let rows: Vec<(String, i64)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT state, COUNT(*) FROM builds GROUP BY state").fetch_all(pool).await
        })?;
        let by_state = rows
            .into_iter()
            .filter_map(|(s, n)| BuildState::parse(&s).ok().map(|s| (s, n)))
            .collect();
        Ok(QueueCounts { by_state })
    }

    // ---- the queue -----------------------------------------------------------

    /// Claims a queued build: `queued -> running` with a fresh lease,
    /// atomically. `None` when the queue is empty. The oldest build of the
    /// owners with the fewest builds running goes first: one owner's burst
    /// of uploads does not hold everyone else's builds back. The build
    /// records `worker` as its claimer; a worker whose token is revoked
    /// claims nothing, even in a claim that was waiting when it was revoked.
    pub async fn claim_next(
        &self,
        lease: Duration,
        worker: &WorkerName,
    ) -> Result<Option<ClaimedBuild>> {
        let lease_id = Uuid::new_v4();
        let now = now_us();
        let expires = now + lease.as_micros() as i64;
        // PostgreSQL: concurrent claimers skip each other's locked rows.
        // SQLite: the statement runs under the single writer lock.
        let lock = match self.backend {
            Backend::Postgres(_) => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite(_) => "",
        };
        let sql = format!(
            "UPDATE builds SET state = 'running', attempt = attempt + 1, lease_id = $1, lease_expires_us = $2, \
             started_us = $3, error = NULL, worker = $4 \
             WHERE id = (SELECT id FROM builds b WHERE state = 'queued' \
               ORDER BY (SELECT COUNT(*) FROM builds r WHERE r.owner_id = b.owner_id AND r.state = 'running'), \
               created_us, id LIMIT 1 {lock}) \
             AND state = 'queued' \
             AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.name = $4 AND w.revoked_us IS NOT NULL) \
             RETURNING {BUILD_COLS}"
        );
        let row: Option<BuildRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(lease_id).bind(expires).bind(now).bind(worker.as_str())
                .fetch_optional(pool).await
        })?;
        let Some(row) = row else { return Ok(None) };
        let source_location = row.source_location.clone();
        Ok(Some(ClaimedBuild {
            build: row.try_into()?,
            lease_id,
            lease_expires: rows::from_us(expires),
            source_location,
        }))
    }

    /// Extends a lease. `LeaseLost` when the build is no longer running
    /// under it (cancelled, re-queued, finished) or the lease is another
    /// worker's.
    pub async fn heartbeat(
        &self,
        id: BuildId,
        lease_id: Uuid,
        worker: &WorkerName,
        lease: Duration,
    ) -> Result<DateTime<Utc>> {
        let expires = now_us() + lease.as_micros() as i64;
        let changed = with_pool!(self, pool => {
            sqlx::query("UPDATE builds SET lease_expires_us = $1 WHERE id = $2 AND lease_id = $3 AND worker = $4 AND state = 'running'")
                .bind(expires)
                .bind(id.0)
                .bind(lease_id)
                .bind(worker.as_str())
                .execute(pool)
                .await.map(|r| r.rows_affected())
        })?;
        if changed == 0 {
            return Err(StoreError::LeaseLost(id));
        }
        Ok(rows::from_us(expires))
    }

    /// The build `worker` holds under `lease_id`, with its source location.
    /// `LeaseLost` for a stale lease and for another worker's alike.
    pub async fn leased_build(
        &self,
        id: BuildId,
        lease_id: Uuid,
        worker: &WorkerName,
    ) -> Result<ClaimedBuild> {
        let row = self.build_row(None, id).await.map_err(|e| match e {
            StoreError::NotFound => StoreError::LeaseLost(id),
            e => e,
        })?;
        if row.lease_id != Some(lease_id)
            || row.state != "running"
            || row.worker.as_deref() != Some(worker.as_str())
        {
            return Err(StoreError::LeaseLost(id));
        }
        let source_location = row.source_location.clone();
        let build: VersionBuild = row.try_into()?;
        Ok(ClaimedBuild {
            lease_expires: Utc::now(),
            build,
            lease_id,
            source_location,
        })
    }

    /// Marks a build succeeded and creates its version, in one transaction.
    pub async fn complete_success(
        &self,
        id: BuildId,
        lease_id: Uuid,
        new: &NewVersion,
    ) -> Result<Version> {
        let now = now_us();
        let profile = new.profile.as_ref().map(|p| p.to_string());
        let result: std::result::Result<Option<BuildRow>, sqlx::Error> = with_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                let updated = sqlx::query(
                    "UPDATE builds SET state = 'succeeded', finished_us = $1, logs_location = $2, profile = $3, \
                     lease_id = NULL, lease_expires_us = NULL WHERE id = $4 AND lease_id = $5 AND state = 'running'",
                )
                .bind(now).bind(&new.logs_location).bind(&profile).bind(id.0).bind(lease_id)
                .execute(&mut *tx).await?.rows_affected();
                if updated == 0 {
                    return Ok(None);
                }
                let row: BuildRow = sqlx::query_as(&format!("SELECT {BUILD_COLS} FROM builds WHERE id = $1"))
                    .bind(id.0).fetch_one(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO versions (id, application_id, owner_id, version, language, phases, conf, notes, created_us, \
                     source_location, binary_location, logs_location, binary_sha256, binary_size, profile, options) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                )
                .bind(row.id).bind(row.application_id).bind(row.owner_id).bind(&row.version).bind(&row.language)
                .bind(&row.phases).bind(&row.conf).bind(&row.notes).bind(now).bind(&row.source_location)
                .bind(&new.binary_location).bind(&new.logs_location).bind(&new.binary_sha256).bind(new.binary_size)
                .bind(&profile).bind(&row.options)
                .execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(Some(row))
            }.await
        });
        match result
            .map_err(|e| conflict_on_unique(e, "this version already exists for the application"))?
        {
            None => Err(StoreError::LeaseLost(id)),
            Some(row) => self.get_version(OwnerId(row.owner_id), id).await,
        }
    }

    /// Marks a build failed: the customer's code did not build.
    pub async fn complete_failure(
        &self,
        id: BuildId,
        lease_id: Uuid,
        logs_location: &str,
        error: &str,
        profile: Option<&serde_json::Value>,
    ) -> Result<VersionBuild> {
        self.finish(
            id,
            lease_id,
            BuildState::Failed,
            Some(logs_location),
            error,
            profile,
        )
        .await
    }

    /// Reports a crash (kiln's own fault). The build is queued again unless
    /// it has used `max_attempts`, then it ends `crashed`.
    pub async fn report_crash(
        &self,
        id: BuildId,
        lease_id: Uuid,
        logs_location: Option<&str>,
        error: &str,
        max_attempts: i32,
    ) -> Result<VersionBuild> {
        let row = self.build_row(None, id).await.map_err(|e| match e {
            StoreError::NotFound => StoreError::LeaseLost(id),
            // A database that cannot answer is not a lost lease: the
            // worker must not take it for one and drop the build.
            e => e,
        })?;
        if row.attempt < max_attempts {
            let changed = with_pool!(self, pool => {
                sqlx::query(
                    "UPDATE builds SET state = 'queued', error = $1, logs_location = COALESCE($2, logs_location), \
                     lease_id = NULL, lease_expires_us = NULL WHERE id = $3 AND lease_id = $4 AND state = 'running'",
                )
                .bind(error).bind(logs_location).bind(id.0).bind(lease_id)
                .execute(pool).await.map(|r| r.rows_affected())
            })?;
            if changed == 0 {
                return Err(StoreError::LeaseLost(id));
            }
            return self.build_row(None, id).await?.try_into();
        }
        self.finish(
            id,
            lease_id,
            BuildState::Crashed,
            logs_location,
            error,
            None,
        )
        .await
    }

    async fn finish(
        &self,
        id: BuildId,
        lease_id: Uuid,
        state: BuildState,
        logs_location: Option<&str>,
        error: &str,
        profile: Option<&serde_json::Value>,
    ) -> Result<VersionBuild> {
        let profile = profile.map(|p| p.to_string());
        let changed = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE builds SET state = $1, finished_us = $2, logs_location = COALESCE($3, logs_location), error = $4, \
                 profile = COALESCE($5, profile), lease_id = NULL, lease_expires_us = NULL \
                 WHERE id = $6 AND lease_id = $7 AND state = 'running'",
            )
            .bind(state.as_str()).bind(now_us()).bind(logs_location).bind(error).bind(&profile)
            .bind(id.0).bind(lease_id)
            .execute(pool).await.map(|r| r.rows_affected())
        })?;
        if changed == 0 {
            return Err(StoreError::LeaseLost(id));
        }
        self.build_row(None, id).await?.try_into()
    }

    /// Puts running builds whose lease expired back in the queue, or ends
    /// them `crashed` once they have used `max_attempts`. Returns how many
    /// builds it touched.
    pub async fn reap_expired(&self, max_attempts: i32) -> Result<u64> {
        let orphans = Orphans::LeaseExpiredBefore(now_us());
        let Orphaned { requeued, crashed } = self
            .end_orphans(&orphans, max_attempts)
            .await?
            .unwrap_or_default();
        if crashed + requeued > 0 {
            tracing::warn!(crashed, requeued, "reaped builds with expired leases");
        }
        Ok(crashed + requeued)
    }

    /// Ends the running builds `orphans` selects, in one transaction: those
    /// that used `max_attempts` are `crashed`, the others queued again (the
    /// next claim counts attempt + 1). For a revocation the worker's token
    /// is marked revoked first, in the same transaction; `None` when it has
    /// no live token, and then nothing changes.
    async fn end_orphans(
        &self,
        orphans: &Orphans<'_>,
        max_attempts: i32,
    ) -> Result<Option<Orphaned>> {
        let now = now_us();
        let (expired_before, worker) = match orphans {
            Orphans::LeaseExpiredBefore(t) => (Some(*t), None),
            Orphans::ClaimedBy(name) => (None, Some(name.as_str())),
        };
        let crash_error = format!("{} and the build used all its attempts", orphans.reason());
        let requeue_error = format!("{}; queued again", orphans.reason());
        // The running builds selected: by lease expiry or by claimer.
        const SELECTED: &str = "state = 'running' AND ($1 IS NULL OR lease_expires_us < $1) \
             AND ($2 IS NULL OR worker = $2)";
        let ended = with_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                if let Some(worker) = worker {
                    let revoked = sqlx::query(
                        "UPDATE workers SET revoked_us = $1 WHERE name = $2 AND revoked_us IS NULL",
                    )
                    .bind(now).bind(worker).execute(&mut *tx).await?.rows_affected();
                    if revoked == 0 {
                        return Ok(None);
                    }
                }
                let crashed = sqlx::query(&format!(
                    "UPDATE builds SET state = 'crashed', finished_us = $3, error = $4, \
                     lease_id = NULL, lease_expires_us = NULL WHERE {SELECTED} AND attempt >= $5"
                ))
                .bind(expired_before).bind(worker).bind(now).bind(&crash_error).bind(max_attempts)
                .execute(&mut *tx).await?.rows_affected();
                let requeued = sqlx::query(&format!(
                    "UPDATE builds SET state = 'queued', error = $3, \
                     lease_id = NULL, lease_expires_us = NULL WHERE {SELECTED}"
                ))
                .bind(expired_before).bind(worker).bind(&requeue_error)
                .execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                Ok::<_, sqlx::Error>(Some(Orphaned { requeued, crashed }))
            }.await
        })?;
        Ok(ended)
    }

    // ---- versions --------------------------------------------------------------

    pub async fn get_version(&self, owner: OwnerId, id: BuildId) -> Result<Version> {
        let sql = format!("SELECT {VERSION_COLS} FROM versions WHERE id = $1 AND owner_id = $2");
        let row: Option<VersionRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id.0).bind(owner.0).fetch_optional(pool).await
        })?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// The owner's versions, newest first, optionally of one application.
    /// Every blob the rows name, for [`crate::fsck`].
    pub async fn blob_references(&self) -> Result<crate::fsck::References> {
        let sql = "SELECT b.application_id, b.id, b.source_location, b.logs_location, \
                   v.binary_location, v.logs_location \
                   FROM builds b LEFT JOIN versions v ON v.id = b.id";
        type Row = (
            Uuid,
            Uuid,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(sql).fetch_all(pool).await
        })?;
        let mut references = crate::fsck::References::default();
        for (_app, _build, source, logs, binary, version_logs) in rows {
            references.keys.insert(source);
            references
                .keys
                .extend([logs, version_logs].into_iter().flatten());
            if let Some(binary) = binary {
                references
                    .version_prefixes
                    .insert(crate::keys::artifacts_prefix(&binary));
                references.keys.insert(binary);
            }
        }
        Ok(references)
    }

    pub async fn list_versions(&self, owner: OwnerId, app: Option<AppId>) -> Result<Vec<Version>> {
        let sql = format!(
            "SELECT {VERSION_COLS} FROM versions WHERE owner_id = $1 AND ($2 IS NULL OR application_id = $2) \
             ORDER BY created_us DESC, id DESC"
        );
        let rows: Vec<VersionRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(owner.0).bind(app.map(|a| a.0)).fetch_all(pool).await
        })?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Changes a version's metadata; its build row follows, so the version
    /// number stays unique across both.
    pub async fn update_version(
        &self,
        owner: OwnerId,
        id: BuildId,
        patch: &VersionPatch,
    ) -> Result<Version> {
        let current = self.get_version(owner, id).await?;
        let version = patch.version.clone().unwrap_or(current.version.clone());
        let phases = patch
            .phases
            .clone()
            .unwrap_or(current.phases.clone())
            .to_json();
        let conf = patch.conf.clone().unwrap_or(current.conf.clone());
        let notes = patch.notes.clone().unwrap_or(current.notes.clone());
        let version_text = version.to_string();
        with_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                for table in ["versions", "builds"] {
                    sqlx::query(&format!(
                        "UPDATE {table} SET version = $1, phases = $2, conf = $3, notes = $4 WHERE id = $5 AND owner_id = $6"
                    ))
                    .bind(&version_text).bind(&phases).bind(&conf).bind(&notes).bind(id.0).bind(owner.0)
                    .execute(&mut *tx).await?;
                }
                tx.commit().await
            }.await
        })
        .map_err(|e| conflict_on_unique(e, duplicate_version(&version)))?;
        self.get_version(owner, id).await
    }

    /// Deletes a version and its build (the blobs are the caller's, under
    /// `keys::build_prefix`). `Conflict`, naming the channel, while a
    /// channel points at it.
    pub async fn delete_version(&self, owner: OwnerId, id: BuildId) -> Result<Version> {
        let version = self.get_version(owner, id).await?;
        let deployed = |channels: &[String]| {
            let names = channels.join(", ");
            let noun = if channels.len() == 1 {
                "channel"
            } else {
                "channels"
            };
            StoreError::Conflict(format!(
                "version {} is deployed: {noun} {names} points at it; promote another version \
                 to {names} first",
                version.version
            ))
        };
        let channels = self.channels_of_version(id).await?;
        if !channels.is_empty() {
            return Err(deployed(&channels));
        }
        let deleted = with_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                sqlx::query("DELETE FROM versions WHERE id = $1 AND owner_id = $2")
                    .bind(id.0).bind(owner.0).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM builds WHERE id = $1 AND owner_id = $2")
                    .bind(id.0).bind(owner.0).execute(&mut *tx).await?;
                tx.commit().await
            }.await
        });
        match deleted {
            Ok(()) => Ok(version),
            // Promoted between the check and the delete: the key holds it.
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                Err(deployed(&self.channels_of_version(id).await?))
            }
            Err(e) => Err(e.into()),
        }
    }
}
