//! The queue's housekeeping, run beside the server: builds whose worker
//! went silent are queued again, and blobs no row owns (what a crash
//! between storing a blob and committing its row left, see
//! `kiln_store::fsck`) are removed after a grace period.

use crate::AppState;
use std::time::Duration;

/// How often the sweeper looks.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// Blobs younger than this may belong to an upload or report in flight.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// Re-queues the builds whose lease expired (or ends those out of
/// attempts) and wakes waiting claims; answers how many builds it ended
/// or re-queued.
pub async fn reap_expired_leases(state: &AppState) -> Result<u64, kiln_store::StoreError> {
    state.live.prune(crate::live::IDLE_BUFFER);
    let reaped = state.meta.reap_expired(state.config.max_attempts).await?;
    if reaped > 0 {
        state.queue_signal.notify_waiters();
    }
    Ok(reaped)
}

/// [`reap_expired_leases`] every reap interval, forever.
pub async fn reap_forever(state: AppState) {
    let mut tick = tokio::time::interval(state.config.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = reap_expired_leases(&state).await {
            tracing::error!(%e, "reaping expired leases failed");
        }
    }
}

/// Removes the blobs no row owns that are older than [`ORPHAN_GRACE`];
/// answers how many it removed.
pub async fn sweep_orphans(state: &AppState) -> Result<usize, kiln_store::StoreError> {
    let findings = kiln_store::fsck::check(&state.meta, &state.blobs).await?;
    if !findings.missing.is_empty() {
        tracing::error!(missing = ?findings.missing, "rows name blobs that are missing (kiln fsck)");
    }
    kiln_store::fsck::remove_orphans(&state.blobs, &findings, ORPHAN_GRACE).await
}

/// [`sweep_orphans`] every [`SWEEP_INTERVAL`], forever.
pub async fn sweep_forever(state: AppState) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep_orphans(&state).await {
            Ok(0) => {}
            Ok(removed) => tracing::warn!(removed, "removed blobs no row owns"),
            Err(e) => tracing::warn!(error = %e, "sweeping orphaned blobs failed"),
        }
    }
}
