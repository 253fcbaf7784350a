//! Versions: the succeeded builds, their binaries and their edits.

use super::rows::VersionRow;
use super::{MetaStore, VERSION_COLS, VersionPatch, conflict_on_unique, duplicate_version};
use crate::{Result, StoreError};
use kiln_domain::{AppId, BuildId, OwnerId, Version};
use uuid::Uuid;

impl MetaStore {
    /// A version of `owner`; another owner's answers `NotFound`.
    pub async fn get_version(&self, owner: OwnerId, id: BuildId) -> Result<Version> {
        let sql = format!("SELECT {VERSION_COLS} FROM versions WHERE id = $1 AND owner_id = $2");
        let row: Option<VersionRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id.0).bind(owner.0).fetch_optional(pool).await
        })?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

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

    /// The owner's versions, newest first, optionally of one application.
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
