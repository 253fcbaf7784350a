//! Rows as the databases hold them, and their conversion to domain types.
//! Times are stored as microseconds since the epoch.

use crate::{Result, StoreError};
use chrono::{DateTime, Utc};
use kiln_domain::{
    AppId, Application, BuildId, BuildOptions, BuildState, Language, OwnerId, Phases, Version,
    VersionBuild, WorkerName,
};
use uuid::Uuid;

pub(crate) fn to_us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_us(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A stored profile. Rows from before profiles were typed may hold any
/// JSON a worker sent: such a profile reads as none (with a warning)
/// rather than making its build, and every list holding it, unreadable.
fn parse_profile(raw: Option<String>) -> Result<Option<kiln_domain::BuildProfile>> {
    let Some(raw) = raw else { return Ok(None) };
    match serde_json::from_str(&raw) {
        Ok(profile) => Ok(Some(profile)),
        Err(e) => {
            tracing::warn!(error = %e, "a stored build profile is not in the profile's shape; it is left out");
            Ok(None)
        }
    }
}

#[derive(sqlx::FromRow)]
pub struct AppRow {
    pub id: Uuid,
    pub owner_id: i64,
    pub name: String,
    pub notes: String,
    pub created_us: i64,
}

impl From<AppRow> for Application {
    fn from(r: AppRow) -> Self {
        Application {
            id: AppId(r.id),
            owner_id: OwnerId(r.owner_id),
            name: r.name,
            notes: r.notes,
            created: from_us(r.created_us),
        }
    }
}

#[derive(sqlx::FromRow)]
pub struct BuildRow {
    pub id: Uuid,
    pub application_id: Uuid,
    pub owner_id: i64,
    pub version: String,
    pub language: String,
    pub phases: String,
    pub conf: String,
    pub notes: String,
    pub created_us: i64,
    pub state: String,
    pub attempt: i32,
    pub started_us: Option<i64>,
    pub finished_us: Option<i64>,
    pub error: Option<String>,
    pub source_location: String,
    pub logs_location: Option<String>,
    pub profile: Option<String>,
    pub lease_id: Option<Uuid>,
    pub options: String,
    pub worker: Option<String>,
    /// When the lease ends, in microseconds; none unless running.
    pub lease_expires_us: Option<i64>,
}

impl TryFrom<BuildRow> for VersionBuild {
    type Error = StoreError;

    fn try_from(r: BuildRow) -> Result<Self> {
        Ok(VersionBuild {
            id: BuildId(r.id),
            application_id: AppId(r.application_id),
            owner_id: OwnerId(r.owner_id),
            version: semver::Version::parse(&r.version).map_err(|e| corrupt("version", e))?,
            language: Language::parse(&r.language).map_err(|e| corrupt("language", e))?,
            phases: Phases::parse_json(&r.phases).map_err(|e| corrupt("phases", e))?,
            conf: r.conf,
            notes: r.notes,
            options: BuildOptions::parse_json(&r.options).map_err(|e| corrupt("options", e))?,
            created: from_us(r.created_us),
            state: BuildState::parse(&r.state).map_err(|e| corrupt("state", e))?,
            attempt: r.attempt,
            worker: r.worker,
            started: r.started_us.map(from_us),
            finished: r.finished_us.map(from_us),
            error: r.error,
            logs_url: r
                .logs_location
                .as_ref()
                .map(|_| format!("/version_build/{}/logs", r.id)),
            logs_location: r.logs_location,
            profile: parse_profile(r.profile)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct WorkerRow {
    pub name: String,
    pub created_us: i64,
    pub revoked_us: Option<i64>,
}

impl TryFrom<WorkerRow> for crate::meta::WorkerToken {
    type Error = StoreError;

    fn try_from(r: WorkerRow) -> Result<Self> {
        Ok(Self {
            name: WorkerName::parse(&r.name).map_err(|e| corrupt("worker name", e))?,
            created: from_us(r.created_us),
            revoked: r.revoked_us.map(from_us),
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct VersionRow {
    pub id: Uuid,
    pub application_id: Uuid,
    pub owner_id: i64,
    pub version: String,
    pub language: String,
    pub phases: String,
    pub conf: String,
    pub notes: String,
    pub created_us: i64,
    pub source_location: String,
    pub binary_location: String,
    pub logs_location: String,
    pub binary_sha256: String,
    pub binary_size: i64,
    pub profile: Option<String>,
    pub options: String,
}

impl TryFrom<VersionRow> for Version {
    type Error = StoreError;

    fn try_from(r: VersionRow) -> Result<Self> {
        Ok(Version {
            id: BuildId(r.id),
            application_id: AppId(r.application_id),
            owner_id: OwnerId(r.owner_id),
            version: semver::Version::parse(&r.version).map_err(|e| corrupt("version", e))?,
            language: Language::parse(&r.language).map_err(|e| corrupt("language", e))?,
            phases: Phases::parse_json(&r.phases).map_err(|e| corrupt("phases", e))?,
            conf: r.conf,
            notes: r.notes,
            options: BuildOptions::parse_json(&r.options).map_err(|e| corrupt("options", e))?,
            created: from_us(r.created_us),
            binary_url: format!("/version/{}/binary", r.id),
            source_url: format!("/version/{}/source", r.id),
            logs_url: format!("/version/{}/logs", r.id),
            source_location: r.source_location,
            binary_location: r.binary_location,
            logs_location: r.logs_location,
            binary_sha256: r.binary_sha256,
            binary_size: r.binary_size,
            profile: parse_profile(r.profile)?,
        })
    }
}
