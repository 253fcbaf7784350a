//! Capturing a run's output: stdout and stderr into one capped buffer.
//! Past the cap the pipes are still drained, so the child never blocks.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::task::JoinHandle;

/// A child's stdout and stderr, drained into one log capped at `cap` bytes.
pub(crate) struct Capture {
    log: SharedLog,
    cap: usize,
    pipes: [JoinHandle<()>; 2],
}

impl Capture {
    /// Starts draining `child`'s piped stdout and stderr.
    pub(crate) fn start(child: &mut Child, cap: usize) -> Self {
        let log = SharedLog::default();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let pipes = [
            tokio::spawn(drain(stdout, log.clone(), cap)),
            tokio::spawn(drain(stderr, log.clone(), cap)),
        ];
        Self { log, cap, pipes }
    }

    /// Waits for both pipes to close (every writer has exited) and returns
    /// the text, and whether bytes were dropped.
    pub(crate) async fn finish(self) -> (String, bool) {
        let [out, err] = self.pipes;
        let _ = tokio::join!(out, err);
        finish(&self.log, self.cap)
    }
}

#[derive(Debug, Default)]
struct LogBuffer {
    bytes: Vec<u8>,
    dropped: u64,
}

type SharedLog = Arc<Mutex<LogBuffer>>;

/// Reads `pipe` to its end into `log`, keeping at most `cap` bytes in all.
async fn drain(mut pipe: impl AsyncRead + Unpin, log: SharedLog, cap: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        let room = cap.saturating_sub(log.bytes.len());
        let kept = n.min(room);
        log.bytes.extend_from_slice(&buf[..kept]);
        log.dropped += (n - kept) as u64;
    }
}

/// The captured text, with a marker when bytes were dropped.
fn finish(log: &SharedLog, cap: usize) -> (String, bool) {
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    let mut text = String::from_utf8_lossy(&log.bytes).into_owned();
    let truncated = log.dropped > 0;
    if truncated {
        text.push_str(&format!(
            "\n[kiln: log truncated after {cap} bytes; {} more bytes dropped]\n",
            log.dropped
        ));
    }
    (text, truncated)
}
