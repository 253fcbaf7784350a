//! The build log a customer reads: kiln's own lines (`[kiln] …`) between
//! the tools' output, capped so a flood cannot exhaust memory.
//!
//! The log is shared with a [`ship`] task that sends what is new to the
//! server every [`LIVE_FLUSH`], for the build's live readers; the compiler's
//! output reaches it while the compiler runs, through an [`OutputTap`] on
//! the sandboxed command ([`BuildLog::tap`]).

use crate::client::{Client, ClientError};
use kiln_domain::worker_api::Claim;
use kiln_sandbox::{OutputTap, RunReport};
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most bytes a build log keeps (the sandbox caps the compiler's part
/// separately).
pub const MAX_LOG_BYTES: usize = 2 * 1024 * 1024;
/// How often the live log is sent to the server.
pub const LIVE_FLUSH: Duration = Duration::from_millis(500);
/// Most bytes of log in one live chunk.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Text {
    text: String,
    truncated: bool,
}

impl Text {
    fn append(&mut self, text: &str) {
        if self.truncated {
            return;
        }
        let room = MAX_LOG_BYTES.saturating_sub(self.text.len());
        if text.len() <= room {
            self.text.push_str(text);
            return;
        }
        self.text.push_str(kiln_domain::text::cap(text, room));
        let _ = write!(
            self.text,
            "\n[kiln: log truncated at {MAX_LOG_BYTES} bytes]\n"
        );
        self.truncated = true;
    }
}

type Shared = Arc<Mutex<Text>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Text> {
    // Appends are single `push_str`s: a panic elsewhere cannot leave the
    // text half-written.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// One build's log, capped at [`MAX_LOG_BYTES`] with a truncation marker.
/// Shared with its [`LogTail`] readers and [`Tapped`] taps.
#[derive(Debug)]
pub struct BuildLog {
    shared: Shared,
    started: Instant,
}

impl Default for BuildLog {
    fn default() -> Self {
        Self {
            shared: Shared::default(),
            started: Instant::now(),
        }
    }
}

impl BuildLog {
    /// A line of kiln's own.
    pub fn kiln(&mut self, line: impl AsRef<str>) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let line = format!("[kiln {elapsed:7.2}s] {}\n", line.as_ref());
        lock(&self.shared).append(&line);
    }

    /// Output of a tool, as is.
    pub fn output(&mut self, text: &str) {
        let mut shared = lock(&self.shared);
        shared.append(text);
        if !text.is_empty() && !text.ends_with('\n') {
            shared.append("\n");
        }
    }

    /// The log so far.
    pub fn text(&self) -> String {
        lock(&self.shared).text.clone()
    }

    /// The whole log, taken out for the report: a [`LogTail`] reads an
    /// empty log afterwards.
    pub fn into_text(self) -> String {
        std::mem::take(&mut lock(&self.shared).text)
    }

    /// A reader of the log for [`ship`].
    pub fn tail(&self) -> LogTail {
        LogTail(self.shared.clone())
    }

    /// A tap that appends a command's output to the log as it arrives;
    /// [`Tapped::finish`] ends it with the command's report.
    pub fn tap(&self) -> Tapped {
        let carry: Arc<Mutex<[Vec<u8>; 2]>> = Arc::default();
        let (shared, pieces) = (self.shared.clone(), carry.clone());
        let tap = OutputTap(Arc::new(move |pipe, bytes| {
            let mut pieces = pieces.lock().unwrap_or_else(|p| p.into_inner());
            let Some(carry) = pieces.get_mut(pipe) else {
                return;
            };
            carry.extend_from_slice(bytes);
            let text = decode(carry);
            lock(&shared).append(&text);
        }));
        Tapped {
            tap,
            carry,
            shared: self.shared.clone(),
        }
    }
}

/// The output of one command, appended as it runs.
pub struct Tapped {
    /// Set as the command's `output_tap`.
    pub tap: OutputTap,
    /// Each pipe's bytes of a character not yet complete.
    carry: Arc<Mutex<[Vec<u8>; 2]>>,
    shared: Shared,
}

impl Tapped {
    /// Ends the command's output: what is left of a cut character, a
    /// newline, and the sandbox's truncation marker if it cut the output.
    pub fn finish(self, report: &RunReport) {
        let mut carry = self.carry.lock().unwrap_or_else(|p| p.into_inner());
        let mut shared = lock(&self.shared);
        for pipe in carry.iter_mut() {
            let rest = String::from_utf8_lossy(pipe).into_owned();
            shared.append(&rest);
            pipe.clear();
        }
        if !shared.text.is_empty() && !shared.text.ends_with('\n') {
            shared.append("\n");
        }
        if report.log_truncated
            && let Some(at) = report.log.rfind("[kiln: log truncated")
        {
            shared.append(&report.log[at..]);
        }
    }
}

/// Takes the complete characters off the front of `carry` (invalid bytes
/// become U+FFFD), leaving the bytes of a character still incomplete.
fn decode(carry: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = carry;
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                out.push_str(text);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[bad..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    *carry = rest.to_vec();
    out
}

/// Reads what is new in a build log.
#[derive(Debug, Clone)]
pub struct LogTail(Shared);

impl LogTail {
    /// At most `max_bytes` of the log from byte `offset` (a character
    /// boundary), or `None` when `offset` is not one or nothing is new.
    pub fn since(&self, offset: usize, max_bytes: usize) -> Option<String> {
        let shared = lock(&self.0);
        let rest = shared.text.get(offset..)?;
        let part = kiln_domain::text::cap(rest, max_bytes);
        (!part.is_empty()).then(|| part.to_owned())
    }

    /// Whether `offset` is within the log, on a character boundary.
    pub fn is_boundary(&self, offset: usize) -> bool {
        lock(&self.0).text.is_char_boundary(offset)
    }
}

/// Sends what is new in the log to the server every `every`, until the
/// build's lease is lost or the task is dropped (with its build). A chunk
/// that fails is sent again at the next tick; the server answers where
/// the next chunk starts, so nothing is appended twice.
pub async fn ship(client: Client, claim: Claim, tail: LogTail, every: Duration) {
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(chunk) = tail.since(sent, MAX_CHUNK_BYTES) else {
            continue;
        };
        match client.log_chunk(&claim, sent as u64, chunk).await {
            Ok(received) => match usize::try_from(received) {
                Ok(received) if tail.is_boundary(received) => sent = received,
                // Past the log's end or inside a character: the server
                // keeps some other numbering; stop rather than guess.
                _ => {
                    tracing::warn!(build = %claim.build.id, received, "the server's live log does not match; no longer sending it");
                    return;
                }
            },
            Err(ClientError::LeaseLost(_) | ClientError::Unauthorized) => return,
            Err(e) => {
                tracing::debug!(build = %claim.build.id, error = %e, "sending the live log failed; retrying")
            }
        }
    }
}

/// Milliseconds of a duration, for the stage timings.
pub fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_truncated_with_a_marker() {
        let mut log = BuildLog::default();
        log.kiln("start");
        let chunk = "x".repeat(64 * 1024);
        for _ in 0..100 {
            log.output(&chunk);
        }
        assert!(log.text().len() < MAX_LOG_BYTES + 100);
        assert!(
            log.text()
                .ends_with(&format!("[kiln: log truncated at {MAX_LOG_BYTES} bytes]\n"))
        );
        log.kiln("after");
        assert!(!log.text().contains("after"));
    }

    #[test]
    fn a_tap_decodes_characters_cut_between_pieces_and_pipes() {
        let log = BuildLog::default();
        let tapped = log.tap();
        let crab = "🦀".as_bytes();
        (tapped.tap.0)(0, &crab[..2]);
        (tapped.tap.0)(1, b"err ");
        (tapped.tap.0)(0, &crab[2..]);
        (tapped.tap.0)(1, &[0xff, b'!']);
        (tapped.tap.0)(0, &crab[..1]);
        let report = RunReport {
            outcome: kiln_sandbox::RunOutcome::Exited(0),
            log: "ignored\n[kiln: log truncated after 9 bytes; 1 more bytes dropped]\n".into(),
            log_truncated: true,
            duration: Duration::ZERO,
            peak_memory_bytes: None,
        };
        tapped.finish(&report);
        assert_eq!(
            log.text(),
            "err 🦀\u{fffd}!\u{fffd}\n[kiln: log truncated after 9 bytes; 1 more bytes dropped]\n"
        );
        let tail = log.tail();
        assert_eq!(tail.since(4, 4).as_deref(), Some("🦀"));
        assert!(tail.since(5, 4).is_none());
        assert!(!tail.is_boundary(5) && tail.is_boundary(log.text().len()));
    }

    /// The compiler's output quotes the customer's code: multibyte text
    /// past the cap, at every alignment, is cut on a character boundary.
    #[test]
    fn multibyte_text_past_the_cap_is_cut_on_a_character_boundary() {
        for shift in 0..4 {
            let mut log = BuildLog::default();
            log.output(&"x".repeat(shift));
            let flood = "🦀é日".repeat(MAX_LOG_BYTES / 4);
            log.output(&flood);
            let text = log.text();
            let marker = format!("\n[kiln: log truncated at {MAX_LOG_BYTES} bytes]\n");
            let kept = text.strip_suffix(&marker).expect("the marker ends the log");
            assert!(kept.len() <= MAX_LOG_BYTES && kept.len() > MAX_LOG_BYTES - 4);
            let lead = if shift > 0 { shift + 1 } else { 0 };
            assert!(flood.starts_with(&kept[lead..]));
        }
    }
}
