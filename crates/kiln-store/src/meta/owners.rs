//! Owners and their tokens, and the workers' tokens: who may call the API
//! and who may claim builds. Revoking a worker's token ends its running
//! builds as the reaper does ([`MetaStore::revoke_worker`]).

use super::rows::WorkerRow;
use super::{Backend, MetaStore, Orphaned, Orphans, Revoked, WorkerToken, conflict_on_unique};
use crate::{Result, StoreError};
use kiln_domain::{OwnerId, WorkerName};

impl MetaStore {
    /// Creates an owner and returns its new id.
    pub async fn create_owner(&self, name: &str) -> Result<OwnerId> {
        let id: i64 = with_pool!(self, pool => {
            sqlx::query_scalar("INSERT INTO owners (name, created_us) VALUES ($1, $2) RETURNING id")
                .bind(name)
                .bind(self.now_us())
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
                .bind(id.0).bind(name).bind(self.now_us())
                .execute(pool).await.map(|r| r.rows_affected())
        })?;
        if let Backend::Postgres(pool) = &self.backend {
            sqlx::query("SELECT setval(pg_get_serial_sequence('owners', 'id'), (SELECT MAX(id) FROM owners))")
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// How many owners exist; none means a first start.
    pub async fn owner_count(&self) -> Result<i64> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM owners").fetch_one(pool).await
        })?)
    }

    /// Whether an owner with this id exists.
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
                .bind(self.now_us())
                .execute(pool)
                .await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// The owner of the API token that hashes to `token_hash`, if any.
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
                .bind(self.now_us())
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
}
