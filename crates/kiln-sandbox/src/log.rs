//! Capturing a run's output: stdout and stderr into one capped buffer.
//! Past the cap the pipes are still drained, so the child never blocks.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, Default)]
pub(crate) struct LogBuffer {
    bytes: Vec<u8>,
    dropped: u64,
}

pub(crate) type SharedLog = Arc<Mutex<LogBuffer>>;

/// Reads `pipe` to its end into `log`, keeping at most `cap` bytes in all.
pub(crate) async fn drain(mut pipe: impl AsyncRead + Unpin, log: SharedLog, cap: usize) {
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
pub(crate) fn finish(log: &SharedLog, cap: usize) -> (String, bool) {
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
