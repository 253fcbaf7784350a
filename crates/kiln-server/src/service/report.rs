//! Recording what a worker reports of a build it holds under a lease. A
//! success is checked by the server itself (a worker runs customer code,
//! so its word is not enough), precompiled and signed here, and its blobs,
//! version and state land in one step: if the lease is lost meanwhile, the
//! blobs written are removed again.

use super::Stores;
use crate::artifacts::{Precompiler, cwasm_name};
use bytes::Bytes;
use kiln_domain::{BuildId, BuildProfile, Version, VersionBuild};
use kiln_store::{ClaimedBuild, NewVersion, StoreError, keys};
use kiln_wasm::HostError;
use kiln_wasm::check::CheckError;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The build a report is about, and the lease the worker holds it under.
#[derive(Clone, Copy)]
pub struct Leased<'a> {
    /// The claimed build the report is about.
    pub claimed: &'a ClaimedBuild,
    /// The lease id the worker sent; the store records the report only
    /// while the build still runs under it.
    pub lease: Uuid,
}

impl Leased<'_> {
    fn build_id(&self) -> BuildId {
        self.claimed.build.id
    }

    fn report_prefix(&self) -> String {
        let build = &self.claimed.build;
        keys::report_prefix(build.application_id, build.id)
    }
}

/// A successful build: its module, its log and its timings.
#[derive(Debug)]
pub struct Success {
    /// The reported `.wasm`, checked by [`succeeded`] before anything is
    /// stored.
    pub binary: Bytes,
    /// The build log, plain text; empty when none was sent.
    pub logs: Bytes,
    /// The stage timings and startup profile the worker reported, if any.
    pub profile: Option<BuildProfile>,
}

/// Why a report was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The reported binary is not a valid proxy-wasm plugin with the
    /// build's phases.
    #[error("the reported binary is not a valid proxy-wasm plugin: {0}")]
    InvalidModule(#[source] CheckError),
    /// Cranelift could not compile the module for a target.
    #[error("the module could not be precompiled: {0}")]
    Precompile(#[source] HostError),
    /// A configured precompile target is not a plain target triple: the
    /// server's misconfiguration, not the worker's.
    #[error("the precompile target {0:?} is not a target triple")]
    InvalidTarget(String),
    /// The build is no longer running under the lease, or a store failed.
    #[error("{context}")]
    Store {
        /// What was being done, for the log.
        context: &'static str,
        /// The build the report is about.
        build: BuildId,
        /// The store's error: `LeaseLost` when the lease is gone.
        #[source]
        source: StoreError,
    },
    /// The blocking task checking the module did not finish (it panicked).
    #[error("checking a reported module failed")]
    Check(#[source] tokio::task::JoinError),
}

fn store_error(context: &'static str, build: BuildId) -> impl FnOnce(StoreError) -> ReportError {
    move |source| ReportError::Store {
        context,
        build,
        source,
    }
}

/// Checks and precompiles a reported module, stores it with its log and
/// artifacts, and creates the version.
pub async fn succeeded(
    stores: Stores<'_>,
    artifacts: &Precompiler,
    leased: Leased<'_>,
    success: Success,
) -> Result<Version, ReportError> {
    let build = &leased.claimed.build;
    check_module(&success.binary, build).await?;
    let precompiled = if build.options.precompile {
        artifacts
            .precompile(build.id, success.binary.clone())
            .await
            .map_err(ReportError::Precompile)?
    } else {
        Vec::new()
    };
    let report = leased.report_prefix();
    let new = NewVersion {
        binary_location: keys::report_binary(&report),
        binary_sha256: hex::encode(Sha256::digest(&success.binary)),
        binary_size: success.binary.len() as i64,
        logs_location: keys::report_logs(&report),
        profile: success.profile,
    };
    let mut written = vec![
        (new.binary_location.clone(), success.binary),
        (new.logs_location.clone(), success.logs),
    ];
    for (target, signed) in precompiled {
        let name = cwasm_name(&target).ok_or(ReportError::InvalidTarget(target))?;
        written.push((keys::artifact(&new.binary_location, &name), signed.into()));
    }
    store_blobs(stores, build.id, &written).await?;
    let completed = stores
        .meta
        .complete_success(build.id, leased.lease, &new)
        .await;
    if completed.as_ref().is_err_and(refused) {
        // The lease was lost while the blobs were written: undo them.
        remove_blobs(stores, &written).await;
    }
    completed.map_err(store_error("recording a success failed", build.id))
}

/// Stores the log of a build the customer's code broke and ends it failed.
pub async fn failed(
    stores: Stores<'_>,
    leased: Leased<'_>,
    logs: Bytes,
    error: &str,
    profile: Option<&BuildProfile>,
) -> Result<VersionBuild, ReportError> {
    let key = keys::report_logs(&leased.report_prefix());
    let written = [(key.clone(), logs)];
    store_blobs(stores, leased.build_id(), &written).await?;
    let completed = stores
        .meta
        .complete_failure(leased.build_id(), leased.lease, &key, error, profile)
        .await;
    if completed.as_ref().is_err_and(refused) {
        remove_blobs(stores, &written).await;
    }
    completed.map_err(store_error("recording a failure failed", leased.build_id()))
}

/// Records kiln's own failure: the build is queued again until it has
/// used `max_attempts`, then ends crashed.
pub async fn crashed(
    stores: Stores<'_>,
    leased: Leased<'_>,
    logs: Option<Bytes>,
    error: &str,
    max_attempts: i32,
) -> Result<VersionBuild, ReportError> {
    let written: Vec<(String, Bytes)> = logs
        .map(|logs| (keys::report_logs(&leased.report_prefix()), logs))
        .into_iter()
        .collect();
    store_blobs(stores, leased.build_id(), &written).await?;
    let logs_key = written.first().map(|(key, _)| key.as_str());
    let completed = stores
        .meta
        .report_crash(
            leased.build_id(),
            leased.lease,
            logs_key,
            error,
            max_attempts,
        )
        .await;
    if completed.as_ref().is_err_and(refused) {
        remove_blobs(stores, &written).await;
    }
    completed.map_err(store_error("recording a crash failed", leased.build_id()))
}

/// Whether the store refused the report (the lease is gone), so nothing
/// of it was committed and its blobs can go. Any other error may follow a
/// commit the store could not confirm: the blobs stay, and the sweeper
/// removes them later if no row names them.
fn refused(e: &StoreError) -> bool {
    matches!(e, StoreError::LeaseLost(_) | StoreError::NotFound)
}

/// The server's own check of a reported module: a valid proxy-wasm plugin
/// with the build's phases, checked off the async threads.
async fn check_module(binary: &Bytes, build: &VersionBuild) -> Result<(), ReportError> {
    let (binary, phases) = (binary.clone(), build.phases.clone());
    tokio::task::spawn_blocking(move || {
        kiln_wasm::check::check_module(&binary, phases.as_slice()).map(drop)
    })
    .await
    .map_err(ReportError::Check)?
    .map_err(ReportError::InvalidModule)
}

/// Stores `blobs` in order; on a failure, removes those already stored.
async fn store_blobs(
    stores: Stores<'_>,
    build: BuildId,
    blobs: &[(String, Bytes)],
) -> Result<(), ReportError> {
    for (i, (key, bytes)) in blobs.iter().enumerate() {
        if let Err(e) = stores.blobs.put(key, bytes.clone()).await {
            remove_blobs(stores, &blobs[..i]).await;
            return Err(store_error("storing a build result failed", build)(e));
        }
    }
    Ok(())
}

async fn remove_blobs(stores: Stores<'_>, blobs: &[(String, Bytes)]) {
    for (key, _) in blobs {
        if let Err(e) = stores.blobs.delete(key).await {
            tracing::error!(%e, key, "could not remove a blob of a refused report");
        }
    }
}
