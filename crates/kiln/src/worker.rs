//! `kiln worker`: builders on a host of their own. They reach the server
//! over HTTP with the worker token and hold no store credentials.

use crate::cli::WorkerArgs;
use crate::{builders, serve::shutdown_signal};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let count = args.workers.unwrap_or_else(builders::default_count);
    let pipeline = builders::pipeline(&args.build, args.max_upload_mib)?;
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    let grace = Duration::from_secs(args.build.grace_seconds);
    builders::run(
        pipeline,
        &args.server,
        &args.worker_token,
        count,
        stop,
        grace,
    )
    .await
}
