//! The live tail of running builds: workers send their log in chunks while
//! they build (`POST /internal/builds/{id}/log`), readers follow it as
//! Server-Sent Events (`GET /version_build/{id}/logs?follow=true`).
//!
//! Each build has one buffer, shared by every reader: a reader holds an
//! `Arc` of it and its own byte offset, so a hundred readers of one build
//! cost one copy of the log. A buffer is bounded by the report log cap and
//! lives only while its build runs: once the build ends, the stored log is
//! the source and the buffer is dropped with its last reader.
//!
//! The buffers are in this process's memory. With several API servers
//! behind a load balancer, a reader may reach a server that does not hold
//! the build's buffer (the worker's chunks went to another one): that
//! reader sees no live lines, notices the end by polling the metadata
//! store, and then gets the whole stored log.

use kiln_domain::{BuildId, BuildState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// A buffer no worker or reader touched for this long is dropped (its
/// build ended without a report reaching this server: a lease that expired
/// for good, another server's report).
pub const IDLE_BUFFER: Duration = Duration::from_secs(15 * 60);

/// The line added once when a buffer reaches its cap.
pub const TRUNCATED_MARKER: &str = "\n[kiln: live log truncated; the stored log has the rest]\n";

/// Every live buffer of this server.
#[derive(Debug)]
pub struct LiveLogs {
    builds: Mutex<HashMap<BuildId, Arc<LiveLog>>>,
    /// Most bytes one buffer keeps.
    max_bytes: usize,
    /// Set once when the server shuts down, so following readers end and
    /// graceful shutdown does not wait on their connections.
    closing: watch::Sender<bool>,
}

/// One build's live log.
#[derive(Debug)]
pub struct LiveLog {
    inner: Mutex<Inner>,
    /// The buffer's length in bytes, bumped on every append and on finish.
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct Inner {
    text: String,
    /// The lease whose chunks are being appended. A new lease (the build's
    /// next attempt) starts over at offset 0 in its own numbering and is
    /// appended after what the earlier attempts wrote.
    lease: Option<Uuid>,
    /// How many bytes of this lease's log were received (the worker's
    /// numbering, which ignores the cap).
    received: u64,
    truncated: bool,
    finished: Option<BuildState>,
    touched: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the text invalid
    // (appends are single `push_str`s): go on with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LiveLogs {
    /// No buffers yet; each will keep at most `max_bytes` bytes of its log.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            builds: Mutex::new(HashMap::new()),
            max_bytes,
            closing: watch::channel(false).0,
        }
    }

    /// The buffer of `build`, created empty if there is none.
    pub fn get_or_create(&self, build: BuildId) -> Arc<LiveLog> {
        lock(&self.builds)
            .entry(build)
            .or_insert_with(|| Arc::new(LiveLog::new()))
            .clone()
    }

    /// The buffer of `build`, if this server holds one.
    pub fn get(&self, build: BuildId) -> Option<Arc<LiveLog>> {
        lock(&self.builds).get(&build).cloned()
    }

    /// Appends a worker's chunk that starts at byte `offset` of the log
    /// under `lease`. A chunk sent again (a retry) is not appended twice;
    /// a chunk past what was received is not appended at all. Returns how
    /// many bytes of the lease's log are now received: the worker sends
    /// from there next.
    pub fn append(&self, build: BuildId, lease: Uuid, offset: u64, chunk: &str) -> u64 {
        self.get_or_create(build)
            .append(lease, offset, chunk, self.max_bytes)
    }

    /// Marks `build` ended in `state`: its readers switch to the stored log.
    pub fn finish(&self, build: BuildId, state: BuildState) {
        let log = lock(&self.builds).remove(&build);
        if let Some(log) = log {
            lock(&log.inner).finished = Some(state);
            log.changed.send_modify(|_| {});
        }
    }

    /// Drops buffers untouched for `idle` that no reader holds.
    pub fn prune(&self, idle: Duration) {
        lock(&self.builds).retain(|_, log| {
            Arc::strong_count(log) > 1 || lock(&log.inner).touched.elapsed() < idle
        });
    }

    /// How many buffers are held, and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let builds = lock(&self.builds);
        let bytes = builds.values().map(|l| lock(&l.inner).text.len()).sum();
        (builds.len(), bytes)
    }

    /// Ends every follower (at shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once the server shuts down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}

impl LiveLog {
    fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                text: String::new(),
                lease: None,
                received: 0,
                truncated: false,
                finished: None,
                touched: Instant::now(),
            }),
            changed: watch::channel(0).0,
        }
    }

    fn append(&self, lease: Uuid, offset: u64, chunk: &str, max_bytes: usize) -> u64 {
        let mut inner = lock(&self.inner);
        inner.touched = Instant::now();
        if inner.lease != Some(lease) {
            inner.lease = Some(lease);
            inner.received = 0;
        }
        let received = inner.received;
        if offset > received {
            return received;
        }
        let skip = (received - offset) as usize;
        if skip >= chunk.len() || !chunk.is_char_boundary(skip) {
            return received;
        }
        let new = &chunk[skip..];
        inner.received += new.len() as u64;
        if !inner.truncated {
            let room = max_bytes.saturating_sub(inner.text.len());
            let kept = kiln_domain::text::cap(new, room);
            inner.text.push_str(kept);
            if kept.len() < new.len() {
                inner.text.push_str(TRUNCATED_MARKER);
                inner.truncated = true;
            }
        }
        let len = inner.text.len() as u64;
        let received = inner.received;
        drop(inner);
        self.changed.send_replace(len);
        received
    }

    /// At most `max_bytes` of the log from byte `from` (moved forward to a
    /// character boundary), and the offset after them. Empty when nothing
    /// new is there.
    pub fn read(&self, from: u64, max_bytes: usize) -> (String, u64) {
        let inner = lock(&self.inner);
        read_from(&inner.text, from, max_bytes)
    }

    /// The state the build ended in, once a report reached this server.
    pub fn finished(&self) -> Option<BuildState> {
        lock(&self.inner).finished
    }

    /// Changes whenever the log grows or the build ends.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The whole log so far.
    pub fn text(&self) -> String {
        lock(&self.inner).text.clone()
    }
}

/// At most `max_bytes` of `text` from byte `from`, moved forward to a
/// character boundary (an offset a client sent may fall anywhere), and the
/// offset after them.
pub fn read_from(text: &str, from: u64, max_bytes: usize) -> (String, u64) {
    let mut start = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let part = kiln_domain::text::cap(&text[start..], max_bytes);
    (part.to_owned(), (start + part.len()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_chunk_is_appended_once_and_a_gap_is_refused() {
        let logs = LiveLogs::new(1024);
        let (build, lease) = (BuildId::new(), Uuid::new_v4());
        assert_eq!(logs.append(build, lease, 0, "hello "), 6);
        assert_eq!(logs.append(build, lease, 0, "hello "), 6);
        // Overlapping: only the new part is kept.
        assert_eq!(logs.append(build, lease, 3, "lo world"), 11);
        // A gap: nothing appended, the worker is told where to resume.
        assert_eq!(logs.append(build, lease, 20, "lost"), 11);
        let log = logs.get_or_create(build);
        assert_eq!(log.text(), "hello world");
        // The next attempt's lease starts at 0 and is appended after.
        assert_eq!(logs.append(build, Uuid::new_v4(), 0, "\nagain"), 6);
        assert_eq!(log.text(), "hello world\nagain");
    }

    #[test]
    fn the_cap_holds_on_multibyte_text_with_one_marker() {
        for shift in 0..4 {
            let logs = LiveLogs::new(100);
            let (build, lease) = (BuildId::new(), Uuid::new_v4());
            let text = format!("{}{}", "x".repeat(shift), "🦀é日".repeat(40));
            let received = logs.append(build, lease, 0, &text);
            assert_eq!(received, text.len() as u64);
            logs.append(build, lease, received, "more");
            let kept = logs.get_or_create(build).text();
            let body = kept.strip_suffix(TRUNCATED_MARKER).expect("one marker");
            assert!(body.len() <= 100 && body.len() > 96);
            assert!(text.starts_with(body));
        }
    }

    #[test]
    fn a_read_from_inside_a_character_starts_at_the_next_one() {
        let text = "a🦀b";
        assert_eq!(read_from(text, 2, 100), ("b".to_owned(), 6));
        assert_eq!(read_from(text, 0, 3), ("a".to_owned(), 1));
        assert_eq!(read_from(text, 99, 100), (String::new(), 6));
    }

    #[test]
    fn finish_wakes_readers_and_drops_the_buffer() {
        let logs = LiveLogs::new(100);
        let build = BuildId::new();
        let log = logs.get_or_create(build);
        let mut rx = log.subscribe();
        rx.mark_unchanged();
        logs.finish(build, BuildState::Succeeded);
        assert!(rx.has_changed().unwrap());
        assert_eq!(log.finished(), Some(BuildState::Succeeded));
        assert_eq!(logs.usage().0, 0);
        // An idle buffer nobody holds is pruned; a held one is kept.
        let held = logs.get_or_create(BuildId::new());
        logs.get_or_create(BuildId::new());
        logs.prune(Duration::ZERO);
        assert_eq!(logs.usage().0, 1);
        drop(held);
    }
}
