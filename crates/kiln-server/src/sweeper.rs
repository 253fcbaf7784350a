//! Removes, now and then, the blobs no row owns: what a crash between
//! storing a blob and committing its row left (see `kiln_store::fsck`).

use crate::AppState;
use std::time::Duration;

/// How often the sweeper looks.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// Blobs younger than this may belong to an upload or report in flight.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// Sweeps every [`SWEEP_INTERVAL`], forever.
pub async fn sweep_forever(state: AppState) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match kiln_store::fsck::check(&state.meta, &state.blobs).await {
            Ok(findings) => {
                if !findings.missing.is_empty() {
                    tracing::error!(missing = ?findings.missing, "rows name blobs that are missing (kiln fsck)");
                }
                match kiln_store::fsck::remove_orphans(&state.blobs, &findings, ORPHAN_GRACE).await
                {
                    Ok(0) => {}
                    Ok(removed) => tracing::warn!(removed, "removed blobs no row owns"),
                    Err(e) => tracing::warn!(error = %e, "removing orphaned blobs failed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "checking the stores for orphaned blobs failed"),
        }
    }
}
