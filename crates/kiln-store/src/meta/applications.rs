//! Applications: an owner's named plugins, each with its builds and versions.

use super::MetaStore;
use super::rows::{self, AppRow, to_us};
use crate::{Result, StoreError};
use kiln_domain::{AppId, Application, OwnerId};

impl MetaStore {
    /// Creates an application of `owner`, with `name` and `notes` as given
    /// (the caller validates them).
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
            created: rows::from_us(self.now_us()),
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

    /// The owner's applications, newest first.
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

    /// Changes an application's name or notes (a `None` keeps it);
    /// `NotFound` for another owner's.
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
}
