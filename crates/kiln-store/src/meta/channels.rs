//! Channels (deployments) and edge tokens. A channel change is one
//! transaction: the channel row moves to the next revision only if it is
//! still at the revision read (a concurrent change loses with `Conflict`),
//! and the change is recorded in `channel_events` beside it.

use super::rows::{self, VersionRow};
use super::{MetaStore, VERSION_COLS, conflict_on_unique};
use crate::{Result, StoreError};
use kiln_domain::channel::artifact_path;
use kiln_domain::{
    AppId, BuildId, Channel, ChannelAction, ChannelChange, ChannelName, ChannelTarget, OwnerId,
    Version,
};
use uuid::Uuid;

/// Why a channel cannot change as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRefusal {
    /// The version is not a succeeded version of this application.
    NoSuchVersion,
    /// The channel does not exist (rollback of a channel never promoted).
    NoSuchChannel,
    /// The channel has no earlier version to return to.
    NothingToRollBackTo,
    /// The version the channel pointed at before was deleted since.
    PreviousVersionDeleted(BuildId),
}

/// What a channel change asks for.
struct Change<'a> {
    owner: OwnerId,
    app: AppId,
    name: &'a ChannelName,
    version: BuildId,
    action: ChannelAction,
    actor: &'a str,
    /// The revision the change was decided on (a rollback's): if the
    /// channel moved since, the change is refused rather than undoing a
    /// change nobody looked at.
    from_revision: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct ChannelRow {
    version_id: Uuid,
    revision: i64,
    updated_us: i64,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    revision: i64,
    version_id: Uuid,
    action: String,
    actor: String,
    created_us: i64,
}

fn target(version: &Version) -> ChannelTarget {
    ChannelTarget {
        id: version.id,
        version: version.version.clone(),
        binary_sha256: version.binary_sha256.clone(),
        binary_size: version.binary_size,
        conf: version.conf.clone(),
        phases: version.phases.clone(),
        artifact: artifact_path(&version.binary_sha256),
    }
}

impl MetaStore {
    // ---- edge tokens ---------------------------------------------------------

    /// Records a read-only edge token by its hash: it reads the channels
    /// and artifacts of `owner`, of one application when `app` is set.
    pub async fn add_edge_token(
        &self,
        owner: OwnerId,
        app: Option<AppId>,
        token_hash: &str,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("INSERT INTO edge_tokens (hash, owner_id, application_id, created_us) VALUES ($1, $2, $3, $4)")
                .bind(token_hash).bind(owner.0).bind(app.map(|a| a.0)).bind(self.now_us())
                .execute(pool).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// The owner (and application, if it is limited to one) of an edge token.
    pub async fn edge_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<(OwnerId, Option<AppId>)>> {
        let row: Option<(i64, Option<Uuid>)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT owner_id, application_id FROM edge_tokens WHERE hash = $1")
                .bind(token_hash).fetch_optional(pool).await
        })?;
        Ok(row.map(|(owner, app)| (OwnerId(owner), app.map(AppId))))
    }

    /// Deletes an edge token; its owner, or `None` when no token has this hash.
    pub(super) async fn delete_edge_token(&self, token_hash: &str) -> Result<Option<OwnerId>> {
        let owner: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("DELETE FROM edge_tokens WHERE hash = $1 RETURNING owner_id")
                .bind(token_hash).fetch_optional(pool).await
        })?;
        Ok(owner.map(OwnerId))
    }

    /// How many edge tokens each owner holds, by owner id.
    pub async fn edge_token_counts(&self) -> Result<Vec<(OwnerId, i64)>> {
        let rows: Vec<(i64, i64)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT owner_id, COUNT(*) FROM edge_tokens GROUP BY owner_id ORDER BY owner_id")
                .fetch_all(pool).await
        })?;
        Ok(rows.into_iter().map(|(o, n)| (OwnerId(o), n)).collect())
    }

    // ---- versions by content -----------------------------------------------

    /// The oldest succeeded version whose `.wasm` has this sha256, of any owner.
    pub async fn version_by_sha256(&self, sha256: &str) -> Result<Option<Version>> {
        let sql = format!(
            "SELECT {VERSION_COLS} FROM versions WHERE binary_sha256 = $1 ORDER BY created_us, id LIMIT 1"
        );
        let row: Option<VersionRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(sha256).fetch_optional(pool).await
        })?;
        row.map(TryInto::try_into).transpose()
    }

    /// The channels that point at a version, by name.
    pub async fn channels_of_version(&self, version: BuildId) -> Result<Vec<String>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT name FROM channels WHERE version_id = $1 ORDER BY name")
                .bind(version.0).fetch_all(pool).await
        })?)
    }

    // ---- channels ------------------------------------------------------------

    /// One channel of the owner's application, with its recent history.
    /// `NotFound` when the application has no such channel.
    pub async fn get_channel(
        &self,
        owner: OwnerId,
        app: AppId,
        name: &ChannelName,
    ) -> Result<Channel> {
        let row: Option<ChannelRow> = with_pool!(self, pool => {
            sqlx::query_as("SELECT version_id, revision, updated_us FROM channels \
                            WHERE application_id = $1 AND name = $2 AND owner_id = $3")
                .bind(app.0).bind(name.as_str()).bind(owner.0).fetch_optional(pool).await
        })?;
        let row = row.ok_or(StoreError::NotFound)?;
        self.channel_from(owner, app, name.as_str(), row).await
    }

    /// The revision a channel is at, cheaply, for long polls; `None` when
    /// it does not exist.
    pub async fn channel_revision(&self, app: AppId, name: &ChannelName) -> Result<Option<i64>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT revision FROM channels WHERE application_id = $1 AND name = $2")
                .bind(app.0).bind(name.as_str()).fetch_optional(pool).await
        })?)
    }

    /// Every channel of the owner's application, by name.
    pub async fn list_channels(&self, owner: OwnerId, app: AppId) -> Result<Vec<Channel>> {
        let rows: Vec<(String, Uuid, i64, i64)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT name, version_id, revision, updated_us FROM channels \
                            WHERE application_id = $1 AND owner_id = $2 ORDER BY name")
                .bind(app.0).bind(owner.0).fetch_all(pool).await
        })?;
        let mut channels = Vec::with_capacity(rows.len());
        for (name, version_id, revision, updated_us) in rows {
            let row = ChannelRow {
                version_id,
                revision,
                updated_us,
            };
            channels.push(self.channel_from(owner, app, &name, row).await?);
        }
        Ok(channels)
    }

    async fn channel_from(
        &self,
        owner: OwnerId,
        app: AppId,
        name: &str,
        row: ChannelRow,
    ) -> Result<Channel> {
        let version = self.get_version(owner, BuildId(row.version_id)).await?;
        let events: Vec<EventRow> = with_pool!(self, pool => {
            sqlx::query_as("SELECT revision, version_id, action, actor, created_us FROM channel_events \
                            WHERE application_id = $1 AND name = $2 ORDER BY revision DESC LIMIT $3")
                .bind(app.0).bind(name).bind(Channel::HISTORY_LIMIT).fetch_all(pool).await
        })?;
        let history = events
            .into_iter()
            .map(|e| {
                Ok(ChannelChange {
                    revision: e.revision,
                    version_id: BuildId(e.version_id),
                    action: ChannelAction::parse(&e.action)
                        .map_err(|err| StoreError::Corrupt(format!("channel action: {err}")))?,
                    at: rows::from_us(e.created_us),
                    by: e.actor,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Channel {
            application_id: app,
            name: name.to_owned(),
            revision: row.revision,
            updated: rows::from_us(row.updated_us),
            version: target(&version),
            history,
        })
    }

    /// Points a channel of the owner's application at `version` (creating
    /// the channel). Promoting the version a channel already points at
    /// changes nothing. `Ok(Err(_))` says why it was refused; `Conflict`
    /// when a concurrent change came first.
    pub async fn promote(
        &self,
        owner: OwnerId,
        app: AppId,
        name: &ChannelName,
        version: BuildId,
        actor: &str,
    ) -> Result<std::result::Result<Channel, ChannelRefusal>> {
        let change = Change {
            owner,
            app,
            name,
            version,
            action: ChannelAction::Promote,
            actor,
            from_revision: None,
        };
        self.change_channel(&change).await
    }

    /// Returns a channel to the version it pointed at before its latest
    /// change (so a second rollback undoes the first).
    pub async fn rollback(
        &self,
        owner: OwnerId,
        app: AppId,
        name: &ChannelName,
        actor: &str,
    ) -> Result<std::result::Result<Channel, ChannelRefusal>> {
        let Some(revision) = self.channel_revision_of(owner, app, name).await? else {
            return Ok(Err(ChannelRefusal::NoSuchChannel));
        };
        let previous: Option<Uuid> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT version_id FROM channel_events \
                                WHERE application_id = $1 AND name = $2 AND revision = $3")
                .bind(app.0).bind(name.as_str()).bind(revision - 1).fetch_optional(pool).await
        })?;
        let Some(previous) = previous.map(BuildId) else {
            return Ok(Err(ChannelRefusal::NothingToRollBackTo));
        };
        let change = Change {
            owner,
            app,
            name,
            version: previous,
            action: ChannelAction::Rollback,
            actor,
            from_revision: Some(revision),
        };
        Ok(match self.change_channel(&change).await? {
            Err(ChannelRefusal::NoSuchVersion) => {
                Err(ChannelRefusal::PreviousVersionDeleted(previous))
            }
            other => other,
        })
    }

    async fn channel_revision_of(
        &self,
        owner: OwnerId,
        app: AppId,
        name: &ChannelName,
    ) -> Result<Option<i64>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT revision FROM channels WHERE application_id = $1 AND name = $2 AND owner_id = $3")
                .bind(app.0).bind(name.as_str()).bind(owner.0).fetch_optional(pool).await
        })?)
    }

    async fn change_channel(
        &self,
        c: &Change<'_>,
    ) -> Result<std::result::Result<Channel, ChannelRefusal>> {
        let now = self.now_us();
        // Ok(false): refused for want of the version; Ok(true): done (or nothing to do).
        let changed: std::result::Result<bool, sqlx::Error> = with_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                let exists: Option<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM versions WHERE id = $1 AND application_id = $2 AND owner_id = $3",
                )
                .bind(c.version.0).bind(c.app.0).bind(c.owner.0)
                .fetch_optional(&mut *tx).await?;
                if exists.is_none() {
                    return Ok(false);
                }
                let current: Option<(Uuid, i64)> = sqlx::query_as(
                    "SELECT version_id, revision FROM channels WHERE application_id = $1 AND name = $2",
                )
                .bind(c.app.0).bind(c.name.as_str())
                .fetch_optional(&mut *tx).await?;
                if let (Some(expected), Some((_, revision))) = (c.from_revision, current)
                    && revision != expected
                {
                    return Err(sqlx::Error::RowNotFound);
                }
                let revision = match current {
                    Some((version, _)) if version == c.version.0 => return Ok(true),
                    Some((_, revision)) => {
                        let moved = sqlx::query(
                            "UPDATE channels SET version_id = $1, revision = $2, updated_us = $3 \
                             WHERE application_id = $4 AND name = $5 AND revision = $6",
                        )
                        .bind(c.version.0).bind(revision + 1).bind(now).bind(c.app.0)
                        .bind(c.name.as_str()).bind(revision)
                        .execute(&mut *tx).await?.rows_affected();
                        if moved == 0 {
                            return Err(sqlx::Error::RowNotFound);
                        }
                        revision + 1
                    }
                    None => {
                        sqlx::query(
                            "INSERT INTO channels (application_id, name, owner_id, version_id, revision, updated_us) \
                             VALUES ($1, $2, $3, $4, 1, $5)",
                        )
                        .bind(c.app.0).bind(c.name.as_str()).bind(c.owner.0).bind(c.version.0).bind(now)
                        .execute(&mut *tx).await?;
                        1
                    }
                };
                sqlx::query(
                    "INSERT INTO channel_events (application_id, name, revision, version_id, action, actor, created_us) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(c.app.0).bind(c.name.as_str()).bind(revision).bind(c.version.0)
                .bind(c.action.as_str()).bind(c.actor).bind(now)
                .execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(true)
            }.await
        });
        if let Some(refusal) = settled(changed, c.name)? {
            return Ok(Err(refusal));
        }
        self.get_channel(c.owner, c.app, c.name).await.map(Ok)
    }
}

/// What a channel change's transaction ended in: done (`None`), refused
/// for want of the version, or lost to a concurrent change of the channel
/// (a moved revision, or the same channel created at the same time).
fn settled(
    changed: std::result::Result<bool, sqlx::Error>,
    name: &ChannelName,
) -> Result<Option<ChannelRefusal>> {
    let concurrent = || {
        StoreError::Conflict(format!(
            "channel {name} changed while this change was made; try again"
        ))
    };
    match changed {
        Ok(true) => Ok(None),
        Ok(false) => Ok(Some(ChannelRefusal::NoSuchVersion)),
        Err(sqlx::Error::RowNotFound) => Err(concurrent()),
        Err(e) => Err(match conflict_on_unique(e, "") {
            StoreError::Conflict(_) => concurrent(),
            other => other,
        }),
    }
}
