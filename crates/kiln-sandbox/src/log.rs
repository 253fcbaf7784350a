//! Capturing a run's output: stdout and stderr into one capped buffer.
//! Past the cap the pipes are still drained, so the child never blocks.
//! When the last byte arrived is kept too, for the no-output limit.

use crate::{Limits, OutputTap, RunOutcome};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How waiting for a run ended.
pub(crate) enum Waited {
    /// The command ended by itself.
    Exited(std::io::Result<ExitStatus>),
    /// A limit stopped it: [`RunOutcome::TimedOut`] or
    /// [`RunOutcome::IdleTimedOut`]. The caller kills what is left.
    Stopped(RunOutcome),
}

/// A child's stdout and stderr, drained into one log capped at `cap` bytes.
pub(crate) struct Capture {
    log: SharedLog,
    cap: usize,
    pipes: [JoinHandle<()>; 2],
}

impl Capture {
    /// Starts draining `child`'s piped stdout and stderr.
    /// `tap`, if any, sees every kept piece as it arrives.
    pub(crate) fn start(child: &mut Child, cap: usize, tap: Option<OutputTap>) -> Self {
        let log = SharedLog::new(Mutex::new(LogBuffer::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let pipes = [
            tokio::spawn(drain(stdout, log.clone(), cap, tap.clone().map(|t| (0, t)))),
            tokio::spawn(drain(stderr, log.clone(), cap, tap.map(|t| (1, t)))),
        ];
        Self { log, cap, pipes }
    }

    /// Waits for `child` to end, or for the wall time or the no-output
    /// limit of `limits` to pass, whichever comes first.
    pub(crate) async fn wait(&self, child: &mut Child, limits: &Limits) -> Waited {
        let silence = async {
            match limits.no_output {
                Some(limit) => self.silence(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => Waited::Exited(status),
            _ = tokio::time::sleep(limits.wall_time) => Waited::Stopped(RunOutcome::TimedOut),
            _ = silence => Waited::Stopped(RunOutcome::IdleTimedOut),
        }
    }

    /// Returns once nothing was printed for `limit`.
    async fn silence(&self, limit: Duration) {
        loop {
            let last = self
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_output;
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Waits for both pipes to close (every writer has exited) and returns
    /// the text, and whether bytes were dropped.
    pub(crate) async fn finish(self) -> (String, bool) {
        let [out, err] = self.pipes;
        let _ = tokio::join!(out, err);
        finish(&self.log, self.cap)
    }
}

#[derive(Debug)]
struct LogBuffer {
    bytes: Vec<u8>,
    dropped: u64,
    /// When the last byte arrived (kept or dropped), or the run started.
    last_output: Instant,
}

impl LogBuffer {
    fn new() -> Self {
        Self {
            bytes: Vec::new(),
            dropped: 0,
            last_output: Instant::now(),
        }
    }
}

type SharedLog = Arc<Mutex<LogBuffer>>;

/// Reads `pipe` to its end into `log`, keeping at most `cap` bytes in all.
async fn drain(
    mut pipe: impl AsyncRead + Unpin,
    log: SharedLog,
    cap: usize,
    tap: Option<(usize, OutputTap)>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.last_output = Instant::now();
        let room = cap.saturating_sub(log.bytes.len());
        let kept = n.min(room);
        log.bytes.extend_from_slice(&buf[..kept]);
        log.dropped += (n - kept) as u64;
        drop(log);
        if let Some((pipe, tap)) = &tap
            && kept > 0
        {
            (tap.0)(*pipe, &buf[..kept]);
        }
    }
}

/// The captured text, with a marker when bytes were dropped.
fn finish(log: &SharedLog, cap: usize) -> (String, bool) {
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    // The cap may have cut a character: leave out its first bytes.
    let lossy = String::from_utf8_lossy(without_partial_char(&log.bytes));
    // Invalid bytes turn into U+FFFD, which is longer than one byte: cut
    // again, on a character boundary.
    let mut text = kiln_domain::text::cap(&lossy, cap).to_owned();
    let dropped = log.dropped + (lossy.len() - text.len()) as u64;
    let truncated = dropped > 0;
    if truncated {
        text.push_str(&format!(
            "\n[kiln: log truncated after {cap} bytes; {dropped} more bytes dropped]\n"
        ));
    }
    (text, truncated)
}

/// `bytes` without the first bytes of a character it ends with, if the
/// rest of that character is missing.
fn without_partial_char(bytes: &[u8]) -> &[u8] {
    for back in 1..=3.min(bytes.len()) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 != 0x80 {
            // A leading byte (or ASCII): the length its character needs.
            let needs = match byte {
                0xF0.. => 4,
                0xE0.. => 3,
                0xC0.. => 2,
                _ => 1,
            };
            return if needs > back {
                &bytes[..bytes.len() - back]
            } else {
                bytes
            };
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compiler's output quotes the customer's code: multibyte text
    /// past the cap, at every alignment, is cut on a character boundary
    /// and stays within the cap.
    #[tokio::test]
    async fn multibyte_output_past_the_cap_is_cut_on_a_character_boundary() {
        let cap = 1000;
        for shift in 0..9 {
            let output = format!("{}{}", "x".repeat(shift), "🦀é日".repeat(cap));
            let log = SharedLog::new(Mutex::new(LogBuffer::new()));
            drain(output.as_bytes(), log.clone(), cap, None).await;
            let (text, truncated) = finish(&log, cap);
            assert!(truncated);
            let (kept, marker) = text.split_once("\n[kiln: log truncated").unwrap();
            assert!(kept.len() <= cap && kept.len() > cap - 4, "{}", kept.len());
            assert!(output.starts_with(kept), "no replacement character kept");
            assert!(marker.starts_with(&format!(" after {cap} bytes;")));
        }
    }

    #[test]
    fn output_within_the_cap_is_kept_whole() {
        let log = SharedLog::new(Mutex::new(LogBuffer::new()));
        log.lock().unwrap().bytes = "🦀 ok\n".as_bytes().to_vec();
        assert_eq!(finish(&log, 100), ("🦀 ok\n".to_owned(), false));
    }
}
