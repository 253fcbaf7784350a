//! The queue: claiming the next build, fairly between owners. Each step of
//! a claim reads one of the indexes of migration 0007, so its cost does not
//! grow with the number of queued builds; [`MetaStore::queue_plans`] shows
//! the plans the database chose for it and for the queue's other hot
//! statements.

use super::rows::{self, BuildRow};
use super::{BUILD_COLS, Backend, BuildFilter, ClaimedBuild, MetaStore};
use crate::Result;
use kiln_domain::{BuildState, OwnerId, WorkerName};
use std::time::Duration;
use uuid::Uuid;

/// The owner whose build goes next: of the owners with queued builds
/// (`$5`), the one with the fewest builds running (`$6`), then the one
/// whose oldest queued build has waited longest. The owners are found by skipping through the
/// queued builds' index, one probe per owner, instead of reading every
/// queued build.
const NEXT_OWNER: &str = "WITH RECURSIVE queued_owners(owner_id) AS ( \
       SELECT (SELECT owner_id FROM builds WHERE state = $5 ORDER BY owner_id LIMIT 1) \
       UNION ALL \
       SELECT (SELECT b.owner_id FROM builds b WHERE b.state = $5 AND b.owner_id > q.owner_id \
               ORDER BY b.owner_id LIMIT 1) \
       FROM queued_owners q WHERE q.owner_id IS NOT NULL), \
     next_owner(owner_id) AS ( \
       SELECT q.owner_id FROM queued_owners q WHERE q.owner_id IS NOT NULL \
       ORDER BY (SELECT COUNT(*) FROM builds r WHERE r.owner_id = q.owner_id AND r.state = $6), \
                (SELECT o.created_us FROM builds o WHERE o.owner_id = q.owner_id AND o.state = $5 \
                 ORDER BY o.created_us, o.id LIMIT 1), \
                q.owner_id \
       LIMIT 1) ";

/// Which queued build a claim takes.
#[derive(Clone, Copy)]
enum Pick {
    /// The oldest of the owner [`NEXT_OWNER`] picks.
    Fair,
    /// The oldest of all: taken when the fair pick was locked by a
    /// concurrent claim (PostgreSQL), so a claim never comes back empty
    /// while an unlocked build waits.
    Oldest,
}

impl MetaStore {
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
        match self.claim(Pick::Fair, lease, worker).await? {
            Some(claimed) => Ok(Some(claimed)),
            None => self.claim(Pick::Oldest, lease, worker).await,
        }
    }

    async fn claim(
        &self,
        pick: Pick,
        lease: Duration,
        worker: &WorkerName,
    ) -> Result<Option<ClaimedBuild>> {
        let lease_id = Uuid::new_v4();
        let now = self.now_us();
        let expires = now + lease.as_micros() as i64;
        let sql = self.claim_sql(pick);
        let row: Option<BuildRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(lease_id).bind(expires).bind(now).bind(worker.as_str())
                .bind(BuildState::Queued.as_str()).bind(BuildState::Running.as_str())
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

    fn claim_sql(&self, pick: Pick) -> String {
        // PostgreSQL: concurrent claimers skip each other's locked rows.
        // SQLite: the statement runs under the single writer lock.
        let lock = match self.backend {
            Backend::Postgres(_) => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite(_) => "",
        };
        let (with, owner) = match pick {
            Pick::Fair => (
                NEXT_OWNER,
                "AND b.owner_id = (SELECT owner_id FROM next_owner)",
            ),
            Pick::Oldest => ("", ""),
        };
        format!(
            "{with}UPDATE builds SET state = $6, attempt = attempt + 1, lease_id = $1, \
             lease_expires_us = $2, started_us = $3, error = NULL, worker = $4 \
             WHERE id = (SELECT b.id FROM builds b WHERE b.state = $5 {owner} \
               ORDER BY b.created_us, b.id LIMIT 1 {lock}) \
             AND state = $5 \
             AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.name = $4 AND w.revoked_us IS NOT NULL) \
             RETURNING {BUILD_COLS}"
        )
    }

    /// The plans the database chose for the queue's statements, by name:
    /// a claim, an upload's count of unfinished builds, one build's read,
    /// and the first and a later page of `owner`'s queued builds. Plans
    /// only; nothing is claimed.
    pub async fn queue_plans(&self, owner: OwnerId) -> Result<Vec<(&'static str, String)>> {
        let queued = BuildFilter {
            state: Some(BuildState::Queued),
            ..BuildFilter::default()
        };
        let statements = [
            ("claim", self.claim_sql(Pick::Fair)),
            (
                "count of an owner's unfinished builds",
                super::UNFINISHED_BUILDS.to_owned(),
            ),
            ("one build", super::one_build_sql()),
            (
                "first page of queued builds",
                super::builds::list_builds_sql(&queued, false),
            ),
            (
                "later page of queued builds",
                super::builds::list_builds_sql(&queued, true),
            ),
        ];
        let mut plans = Vec::new();
        for (name, sql) in statements {
            plans.push((name, self.explain(name, &sql, owner).await?));
        }
        Ok(plans)
    }

    /// `EXPLAIN` of one of [`Self::queue_plans`]' statements, with sample
    /// values bound in their places.
    async fn explain(&self, name: &str, sql: &str, owner: OwnerId) -> Result<String> {
        let sample = Uuid::nil();
        let (queued, running) = (BuildState::Queued.as_str(), BuildState::Running.as_str());
        macro_rules! bind_samples {
            ($query:expr) => {
                match name {
                    "claim" => $query
                        .bind(sample)
                        .bind(0i64)
                        .bind(0i64)
                        .bind("sample")
                        .bind(queued)
                        .bind(running),
                    "count of an owner's unfinished builds" => {
                        $query.bind(owner.0).bind(queued).bind(running)
                    }
                    "one build" => $query.bind(sample).bind(Some(owner.0)),
                    "first page of queued builds" => {
                        $query.bind(owner.0).bind(queued).bind(100i64).bind(0i64)
                    }
                    _ => $query
                        .bind(owner.0)
                        .bind(queued)
                        .bind(self.now_us())
                        .bind(sample)
                        .bind(100i64)
                        .bind(0i64),
                }
            };
        }
        let lines: Vec<String> = match &self.backend {
            Backend::Postgres(pool) => {
                let explain = format!("EXPLAIN {sql}");
                bind_samples!(sqlx::query_scalar(&explain))
                    .fetch_all(pool)
                    .await?
            }
            // SQLite's rows are (id, parent, unused, detail).
            Backend::Sqlite(pool) => {
                let explain = format!("EXPLAIN QUERY PLAN {sql}");
                bind_samples!(sqlx::query_as::<_, (i64, i64, i64, String)>(&explain))
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(|(_, _, _, detail)| detail)
                    .collect()
            }
        };
        Ok(lines.join("\n"))
    }
}
