//! Builds: queued by an upload, read and listed by their owner, cancelled.
//! The listing pages by keyset and reads one index per filter.

use super::rows::BuildRow;
use super::{
    BUILD_COLS, BuildFilter, MetaStore, NewBuild, Page, QueueCounts, UNFINISHED_BUILDS,
    conflict_on_unique, duplicate_version, one_build_sql,
};
use crate::{Result, StoreError};
use kiln_domain::{AppId, BuildId, BuildState, OwnerId, VersionBuild};
use uuid::Uuid;

impl MetaStore {
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $12, 0, $10, $11) RETURNING {BUILD_COLS}"
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
                    .bind(BuildState::Queued.as_str())
                    .bind(BuildState::Running.as_str())
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
                    .bind(self.now_us())
                    .bind(&new.source_location)
                    .bind(serde_json::to_string(&new.options).expect("options serialize"))
                    .bind(BuildState::Queued.as_str())
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

    /// A build of `owner`; another owner's answers `NotFound`.
    pub async fn get_build(&self, owner: OwnerId, id: BuildId) -> Result<VersionBuild> {
        self.build_row(Some(owner), id).await?.try_into()
    }

    /// The source blob of a build, for the owner's download.
    pub async fn build_source_location(&self, owner: OwnerId, id: BuildId) -> Result<String> {
        Ok(self.build_row(Some(owner), id).await?.source_location)
    }

    pub(super) async fn build_row(&self, owner: Option<OwnerId>, id: BuildId) -> Result<BuildRow> {
        let sql = one_build_sql();
        let row: Option<BuildRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(id.0)
                .bind(owner.map(|o| o.0))
                .fetch_optional(pool)
                .await
        })?;
        row.ok_or(StoreError::NotFound)
    }

    /// Cancels a queued or running build. `Conflict` when it has finished.
    pub async fn cancel_build(&self, owner: OwnerId, id: BuildId) -> Result<VersionBuild> {
        let changed = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE builds SET state = $1, finished_us = $2, error = 'cancelled by its owner', \
                 lease_id = NULL, lease_expires_us = NULL \
                 WHERE id = $3 AND owner_id = $4 AND state IN ($5, $6)",
            )
            .bind(BuildState::Cancelled.as_str())
            .bind(self.now_us())
            .bind(id.0)
            .bind(owner.0)
            .bind(BuildState::Queued.as_str())
            .bind(BuildState::Running.as_str())
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
            .bind(BuildState::Queued.as_str())
            .bind(BuildState::Running.as_str())
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

    /// The owner's builds, newest first. A page after a build starts below
    /// that build's place in the order (none when it is not the owner's).
    pub async fn list_builds(
        &self,
        owner: OwnerId,
        filter: &BuildFilter,
        page: Page,
    ) -> Result<Vec<VersionBuild>> {
        let cursor = match page.after {
            None => None,
            Some(after) => match self.list_cursor(owner, after).await? {
                Some(cursor) => Some(cursor),
                None => return Ok(Vec::new()),
            },
        };
        let sql = list_builds_sql(filter, cursor.is_some());
        let rows: Vec<BuildRow> = with_pool!(self, pool => {
            let mut query = sqlx::query_as(&sql).bind(owner.0);
            if let Some(app) = filter.application_id {
                query = query.bind(app.0);
            }
            if let Some(state) = filter.state {
                query = query.bind(state.as_str());
            }
            if let Some((created_us, id)) = cursor {
                query = query.bind(created_us).bind(id);
            }
            query.bind(page.limit).bind(page.offset).fetch_all(pool).await
        })?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Where `after` stands in the listing order, if it is the owner's.
    async fn list_cursor(&self, owner: OwnerId, after: BuildId) -> Result<Option<(i64, Uuid)>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT created_us, id FROM builds WHERE id = $1 AND owner_id = $2")
                .bind(after.0)
                .bind(owner.0)
                .fetch_optional(pool)
                .await
        })?)
    }
}

/// The listing's statement with only the filters that are set, so that
/// each combination gets a plan of its own that reads the index it needs
/// (a generic `$n IS NULL OR …` condition would read the owner's every
/// build). Placeholders: owner, then application, state and the cursor
/// `(created_us, id)` when set, then limit and offset.
pub(super) fn list_builds_sql(filter: &BuildFilter, keyset: bool) -> String {
    let mut sql = format!("SELECT {BUILD_COLS} FROM builds WHERE owner_id = $1");
    let mut n = 1;
    if filter.application_id.is_some() {
        n += 1;
        sql += &format!(" AND application_id = ${n}");
    }
    if filter.state.is_some() {
        n += 1;
        sql += &format!(" AND state = ${n}");
    }
    if keyset {
        sql += &format!(" AND (created_us, id) < (${}, ${})", n + 1, n + 2);
        n += 2;
    }
    sql += &format!(
        " ORDER BY created_us DESC, id DESC LIMIT ${} OFFSET ${}",
        n + 1,
        n + 2
    );
    sql
}
