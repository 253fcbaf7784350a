//! kiln-worker runs builders: each claims a build from the server, fetches
//! its source, unpacks it safely, resolves dependencies outside the
//! sandbox, compiles inside it, checks the output and reports the result,
//! heartbeating all along. It talks to the server only over HTTP; it never
//! links the stores.
//!
//! Layout:
//! - [`client`]: the private API, as a worker sees it.
//! - [`pipeline`]: one build, stage by stage.
//! - [`log`]: the build log a customer reads.
//! - this file: the builder loop and shutdown.

pub mod client;
pub mod log;
pub mod pipeline;

pub use client::Client;
pub use pipeline::{Pipeline, PipelineConfig};

use futures::FutureExt;
use kiln_domain::worker_api::Claim;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// How long a claim request waits on an empty queue.
pub const CLAIM_WAIT: Duration = Duration::from_secs(20);
/// Pause after the server could not be reached.
pub const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// Default time running builds get to finish after a stop is asked.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What one step of a builder did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A build was claimed and run to its end, reported or not.
    Built,
    /// No build was claimed: none was queued within [`CLAIM_WAIT`], or a
    /// stop was asked.
    Empty,
}

/// Claims and runs at most one build. Only the loop around it sleeps.
pub async fn try_build_next(
    pipeline: &Pipeline,
    client: &Client,
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> anyhow::Result<Outcome> {
    let claim = tokio::select! {
        claim = client.claim(CLAIM_WAIT) => claim?,
        _ = stop.cancelled() => return Ok(Outcome::Empty),
    };
    let Some(claim) = claim else {
        return Ok(Outcome::Empty);
    };
    run_claimed(pipeline, client, claim, abort).await;
    Ok(Outcome::Built)
}

async fn run_claimed(
    pipeline: &Pipeline,
    client: &Client,
    claim: Claim,
    abort: &CancellationToken,
) {
    let build = claim.build.id;
    tracing::info!(%build, attempt = claim.build.attempt, "building");
    let lost = CancellationToken::new();
    // Bound to this build: however `run` ends (even by a panic), the
    // heartbeat ends with it and the lease can expire.
    let every = heartbeat_period(pipeline.config.heartbeat, claim.lease_seconds);
    let _heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat(
        client.clone(),
        claim.clone(),
        every,
        lost.clone(),
    )));
    pipeline.run(client, &claim, &lost, abort).await;
}

/// How often to extend the lease: every third of what the server grants
/// (so two beats may be lost before it expires), at most `longest`.
fn heartbeat_period(longest: Duration, granted_seconds: u64) -> Duration {
    match granted_seconds {
        // A server that does not say: the configured period.
        0 => longest,
        granted => longest.min(Duration::from_secs(granted) / 3),
    }
}

/// Extends the lease until aborted; cancels `lost` when the server says the
/// build is no longer ours (cancelled or re-queued) or refuses the token
/// (revoked), which stops the build.
async fn heartbeat(client: Client, claim: Claim, every: Duration, lost: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match client.heartbeat(claim.build.id, claim.lease_id).await {
            Ok(_) => {}
            Err(client::ClientError::LeaseLost(build)) => {
                tracing::warn!(%build, "lease lost (cancelled or re-queued); stopping the build");
                lost.cancel();
                return;
            }
            // A revoked token: the server has queued the build again.
            Err(client::ClientError::Unauthorized) => {
                tracing::error!(build = %claim.build.id, "the server refused this worker's token (revoked?); stopping the build");
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(%e, "heartbeat failed; retrying"),
        }
    }
}

/// Runs `count` builders until `stop` is cancelled. Builds running at that
/// moment get `grace` to finish; then they are aborted and reported crashed,
/// so another worker retries them.
pub async fn run_builders(
    pipeline: Arc<Pipeline>,
    client: Client,
    count: usize,
    stop: CancellationToken,
    grace: Duration,
) {
    let abort = CancellationToken::new();
    let mut builders = tokio::task::JoinSet::new();
    for index in 0..count {
        let (pipeline, client, stop, abort) = (
            pipeline.clone(),
            client.clone(),
            stop.clone(),
            abort.clone(),
        );
        builders.spawn(async move { builder_loop(index, &pipeline, &client, &stop, &abort).await });
    }
    stop.cancelled().await;
    let drained = tokio::time::timeout(grace, async {
        while builders.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            "builds still running after the grace period; aborting them"
        );
        abort.cancel();
        while builders.join_next().await.is_some() {}
    }
}

async fn builder_loop(
    index: usize,
    pipeline: &Pipeline,
    client: &Client,
    stop: &CancellationToken,
    abort: &CancellationToken,
) {
    tracing::debug!(index, "builder started");
    while !stop.is_cancelled() {
        // `Pipeline::run` reports a panic of the build as a crash; this
        // catches one anywhere else, so the builder goes on claiming (the
        // build's lease then expires and it is retried).
        let step = AssertUnwindSafe(try_build_next(pipeline, client, stop, abort)).catch_unwind();
        match step.await {
            Ok(Ok(_)) => {}
            Err(panic) => {
                tracing::error!(
                    index,
                    panic = pipeline::panic_message(&*panic),
                    "a builder step panicked; going on"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(index, error = %e, "cannot reach the server; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }
    tracing::debug!(index, "builder stopped");
}

#[cfg(test)]
mod tests {
    use super::heartbeat_period;
    use std::time::Duration;

    #[test]
    fn a_worker_beats_three_times_per_lease_at_most_as_configured() {
        let ten = Duration::from_secs(10);
        assert_eq!(heartbeat_period(ten, 60), ten);
        assert_eq!(heartbeat_period(ten, 9), Duration::from_secs(3));
        assert_eq!(heartbeat_period(ten, 3), Duration::from_secs(1));
        assert_eq!(heartbeat_period(ten, 0), ten, "a server that does not say");
    }
}
