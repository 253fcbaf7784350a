//! What happens to a claimed build: heartbeats extend its lease, a report
//! ends it (a success creates its version in the same transaction), and
//! builds whose worker went silent are queued again or end `crashed`.

use super::rows::{self, BuildRow};
use super::{
    BUILD_COLS, ClaimedBuild, MetaStore, NewVersion, Orphaned, Orphans, conflict_on_unique,
};
use crate::{Result, StoreError};
use chrono::{DateTime, Utc};
use kiln_domain::{BuildId, BuildProfile, BuildState, OwnerId, Version, VersionBuild, WorkerName};
use std::time::Duration;
use uuid::Uuid;

impl MetaStore {
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
        let expires = self.now_us() + lease.as_micros() as i64;
        let changed = with_pool!(self, pool => {
            sqlx::query("UPDATE builds SET lease_expires_us = $1 WHERE id = $2 AND lease_id = $3 AND worker = $4 AND state = $5")
                .bind(expires)
                .bind(id.0)
                .bind(lease_id)
                .bind(worker.as_str())
                .bind(BuildState::Running.as_str())
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
            || row.state != BuildState::Running.as_str()
            || row.worker.as_deref() != Some(worker.as_str())
        {
            return Err(StoreError::LeaseLost(id));
        }
        let source_location = row.source_location.clone();
        let lease_expires = rows::from_us(row.lease_expires_us.unwrap_or_else(|| self.now_us()));
        let build: VersionBuild = row.try_into()?;
        Ok(ClaimedBuild {
            lease_expires,
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
        let now = self.now_us();
        let profile = new.profile.as_ref().map(BuildProfile::to_json);
        let result: std::result::Result<Option<BuildRow>, sqlx::Error> = with_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                let updated = sqlx::query(
                    "UPDATE builds SET state = $1, finished_us = $2, logs_location = $3, profile = $4, \
                     lease_id = NULL, lease_expires_us = NULL WHERE id = $5 AND lease_id = $6 AND state = $7",
                )
                .bind(BuildState::Succeeded.as_str()).bind(now).bind(&new.logs_location).bind(&profile).bind(id.0).bind(lease_id)
                .bind(BuildState::Running.as_str())
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
        profile: Option<&BuildProfile>,
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
                    "UPDATE builds SET state = $1, error = $2, logs_location = COALESCE($3, logs_location), \
                     lease_id = NULL, lease_expires_us = NULL WHERE id = $4 AND lease_id = $5 AND state = $6",
                )
                .bind(BuildState::Queued.as_str()).bind(error).bind(logs_location).bind(id.0).bind(lease_id)
                .bind(BuildState::Running.as_str())
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
        profile: Option<&BuildProfile>,
    ) -> Result<VersionBuild> {
        let profile = profile.map(BuildProfile::to_json);
        let changed = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE builds SET state = $1, finished_us = $2, logs_location = COALESCE($3, logs_location), error = $4, \
                 profile = COALESCE($5, profile), lease_id = NULL, lease_expires_us = NULL \
                 WHERE id = $6 AND lease_id = $7 AND state = $8",
            )
            .bind(state.as_str()).bind(self.now_us()).bind(logs_location).bind(error).bind(&profile)
            .bind(id.0).bind(lease_id).bind(BuildState::Running.as_str())
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
        let orphans = Orphans::LeaseExpiredBefore(self.now_us());
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
    pub(super) async fn end_orphans(
        &self,
        orphans: &Orphans<'_>,
        max_attempts: i32,
    ) -> Result<Option<Orphaned>> {
        let now = self.now_us();
        let (expired_before, worker) = match orphans {
            Orphans::LeaseExpiredBefore(t) => (Some(*t), None),
            Orphans::ClaimedBy(name) => (None, Some(name.as_str())),
        };
        let crash_error = format!("{} and the build used all its attempts", orphans.reason());
        let requeue_error = format!("{}; queued again", orphans.reason());
        // The running builds selected: by lease expiry or by claimer.
        const SELECTED: &str = "state = $1 AND ($2 IS NULL OR lease_expires_us < $2) \
             AND ($3 IS NULL OR worker = $3)";
        let running = BuildState::Running.as_str();
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
                    "UPDATE builds SET state = $4, finished_us = $5, error = $6, \
                     lease_id = NULL, lease_expires_us = NULL WHERE {SELECTED} AND attempt >= $7"
                ))
                .bind(running).bind(expired_before).bind(worker)
                .bind(BuildState::Crashed.as_str()).bind(now).bind(&crash_error).bind(max_attempts)
                .execute(&mut *tx).await?.rows_affected();
                let requeued = sqlx::query(&format!(
                    "UPDATE builds SET state = $4, error = $5, \
                     lease_id = NULL, lease_expires_us = NULL WHERE {SELECTED}"
                ))
                .bind(running).bind(expired_before).bind(worker)
                .bind(BuildState::Queued.as_str()).bind(&requeue_error)
                .execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                Ok::<_, sqlx::Error>(Some(Orphaned { requeued, crashed }))
            }.await
        })?;
        Ok(ended)
    }
}
