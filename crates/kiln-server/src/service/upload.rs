//! Queueing an upload: the application must be the owner's, the owner
//! under its limit of unfinished builds, the archive readable and within
//! the archive limits; then the source is stored and the build queued, and
//! a refused build takes its stored source with it.

use super::Stores;
use bytes::Bytes;
use kiln_build::archive::{self, ArchiveError, ArchiveLimits};
use kiln_domain::{AppId, BuildId, BuildOptions, Language, OwnerId, Phases, VersionBuild};
use kiln_store::{NewBuild, StoreError, keys};

/// An upload, its form already read and its fields valid.
#[derive(Debug)]
pub struct Upload {
    /// The authenticated owner; the application must be theirs.
    pub owner: OwnerId,
    /// The application the version is for.
    pub application: AppId,
    /// The version to build, unique within the application.
    pub version: semver::Version,
    /// The language of the source.
    pub language: Language,
    /// The proxy-wasm phases the plugin handles; the built module is checked
    /// against them.
    pub phases: Phases,
    /// The plugin configuration, at most 1 MiB.
    pub conf: String,
    /// Free-text notes, at most 10 000 bytes.
    pub notes: String,
    /// Switches of the post-build steps: optimize, precompile, preinit.
    pub options: BuildOptions,
    /// The uploaded archive, not yet inspected.
    pub source: Bytes,
}

/// What an upload may not exceed.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    /// What the archive may weigh and unpack to.
    pub archive: ArchiveLimits,
    /// Builds one owner may have queued or running.
    pub max_unfinished_builds: i64,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The owner has no application with this id.
    #[error("no application with id {0}")]
    NoApplication(AppId),
    /// The owner already has `limit` builds or more queued or running.
    #[error(
        "{unfinished} of your builds are queued or running, the most allowed is {limit}: \
         upload again when one has finished, or cancel one"
    )]
    TooManyBuilds {
        /// The owner's builds queued or running now.
        unfinished: i64,
        /// The most allowed ([`UploadLimits::max_unfinished_builds`]).
        limit: i64,
    },
    /// The source is neither a `.tar.gz` nor a `.zip`.
    #[error("source_code must be a .tar.gz or .zip archive")]
    NotAnArchive,
    /// The archive is corrupt or cannot be read.
    #[error("source_code is not a readable .tar.gz or .zip archive: {0}")]
    Unreadable(#[source] ArchiveError),
    /// The archive breaks an archive limit or holds an entry that may not
    /// be unpacked.
    #[error("source_code was refused: {0}")]
    Refused(#[source] ArchiveError),
    /// The application already has this version; the store's sentence.
    #[error("{0}")]
    DuplicateVersion(String),
    /// A store failed.
    #[error("{context}")]
    Store {
        /// What was being done, for the log.
        context: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The blocking task inspecting the archive did not finish (it
    /// panicked).
    #[error("inspecting an archive failed")]
    Inspection(#[source] tokio::task::JoinError),
}

impl UploadError {
    fn store(context: &'static str) -> impl FnOnce(StoreError) -> Self {
        move |source| Self::Store { context, source }
    }
}

/// Checks `upload`, stores its source and queues its build.
pub async fn queue(
    stores: Stores<'_>,
    limits: &UploadLimits,
    upload: Upload,
) -> Result<VersionBuild, UploadError> {
    let (owner, application) = (upload.owner, upload.application);
    stores
        .meta
        .get_application(owner, application)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => UploadError::NoApplication(application),
            e => UploadError::store("reading the application failed")(e),
        })?;
    check_unfinished_builds(stores, owner, limits.max_unfinished_builds).await?;
    let kind = check_archive(&upload.source, &limits.archive).await?;

    let id = BuildId::new();
    let new = NewBuild {
        id,
        application_id: application,
        owner_id: owner,
        version: upload.version,
        language: upload.language,
        phases: upload.phases,
        conf: upload.conf,
        notes: upload.notes,
        options: upload.options,
        source_location: keys::source(application, id, kind.as_str()),
    };
    stores
        .blobs
        .put(&new.source_location, upload.source)
        .await
        .map_err(UploadError::store("storing an uploaded source failed"))?;
    match stores
        .meta
        .create_build_within(&new, limits.max_unfinished_builds)
        .await
    {
        Ok(build) => Ok(build),
        Err(e) => {
            // A refused build has no row, so no blob either. Any other
            // error may follow a commit the store could not confirm: the
            // source stays, and the sweeper removes it later if no row
            // names it.
            let refused = matches!(
                e,
                StoreError::Conflict(_)
                    | StoreError::TooManyUnfinished { .. }
                    | StoreError::NotFound
            );
            if refused && let Err(cleanup) = stores.blobs.delete(&new.source_location).await {
                tracing::error!(%cleanup, key = new.source_location, "could not remove an orphaned source");
            }
            Err(match e {
                StoreError::Conflict(message) => UploadError::DuplicateVersion(message),
                StoreError::TooManyUnfinished { unfinished, limit } => {
                    UploadError::TooManyBuilds { unfinished, limit }
                }
                StoreError::NotFound => UploadError::NoApplication(application),
                e => UploadError::store("queueing a build failed")(e),
            })
        }
    }
}

/// One owner's burst of uploads must not fill the queue: past the limit,
/// an upload waits for a build to finish (or be cancelled). Checked here
/// before the source is stored, and again, exactly, when the build is
/// queued.
async fn check_unfinished_builds(
    stores: Stores<'_>,
    owner: OwnerId,
    limit: i64,
) -> Result<(), UploadError> {
    let unfinished = stores
        .meta
        .unfinished_builds(owner)
        .await
        .map_err(UploadError::store("counting unfinished builds failed"))?;
    if unfinished >= limit {
        return Err(UploadError::TooManyBuilds { unfinished, limit });
    }
    Ok(())
}

/// Refuses an archive that is not a `.tar.gz` or `.zip`, or that breaks the
/// archive limits, before anything is stored. Inspecting decompresses up
/// to the unpacked limit (200 MiB by default): it runs off the async
/// threads, so the API keeps answering meanwhile.
async fn check_archive(
    bytes: &Bytes,
    limits: &ArchiveLimits,
) -> Result<archive::ArchiveKind, UploadError> {
    let kind = archive::detect(bytes).ok_or(UploadError::NotAnArchive)?;
    let (bytes, limits) = (bytes.clone(), limits.clone());
    tokio::task::spawn_blocking(move || archive::inspect(&bytes, &limits))
        .await
        .map_err(UploadError::Inspection)?
        .map_err(|e| match e {
            ArchiveError::NotAnArchive | ArchiveError::Corrupt(_) => UploadError::Unreadable(e),
            e => UploadError::Refused(e),
        })?;
    Ok(kind)
}
