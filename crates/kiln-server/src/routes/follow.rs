//! `GET /version_build/{id}/logs?follow=true`: a build's log as
//! Server-Sent Events while it runs, then one `end` event.
//!
//! Events: `log` with `{"text": "…"}` (the next bytes of the log; JSON, so
//! any text the compiler repeats travels intact) and the byte offset after
//! them as its id; then `end` with `{"state", "error", "build"}`. A reader
//! that reconnects with `Last-Event-ID: <offset>` gets only what follows.
//! Once the build has ended, the stored log is the source: a reader gets
//! whatever of it it has not seen, then `end`.

use super::versions::fetch_blob;
use crate::AppState;
use crate::live::{LiveLog, read_from};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use kiln_domain::{BuildId, OwnerId, VersionBuild};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Most bytes of log in one event.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// How often a follower looks at the build's state in the metadata store
/// (the end of a build whose report reached another server, or none).
pub const STATE_POLL: Duration = Duration::from_secs(2);

/// The SSE response following `build` from byte `offset`.
pub fn follow(
    state: AppState,
    owner: OwnerId,
    build: VersionBuild,
    offset: u64,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // A running build's buffer is shared with the worker and every other
    // reader; an ended build needs none.
    let live = (!build.state.is_terminal()).then(|| state.live.get_or_create(build.id));
    let changed = live.as_ref().map(|l| l.subscribe());
    let closing = state.live.closing();
    let follower = Follower {
        state,
        owner,
        id: build.id,
        live,
        changed,
        closing,
        offset,
        pending: VecDeque::new(),
        done: false,
        saw_finish: false,
        next_poll: Instant::now() + STATE_POLL,
    };
    let stream = futures::stream::unfold(follower, |f| f.next());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

struct Follower {
    state: AppState,
    owner: OwnerId,
    id: BuildId,
    live: Option<Arc<LiveLog>>,
    changed: Option<watch::Receiver<u64>>,
    closing: watch::Receiver<bool>,
    /// The reader's byte offset: what it has seen.
    offset: u64,
    pending: VecDeque<Event>,
    done: bool,
    /// Whether the buffer's end-of-build mark was acted on.
    saw_finish: bool,
    next_poll: Instant,
}

fn log_event(text: &str, end: u64) -> Event {
    Event::default()
        .event("log")
        .id(end.to_string())
        .json_data(serde_json::json!({ "text": text }))
        .unwrap_or_default()
}

impl Follower {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            if let Some(live) = &self.live {
                let (text, end) = live.read(self.offset, MAX_EVENT_BYTES);
                if !text.is_empty() {
                    self.offset = end;
                    return Some((Ok(log_event(&text, end)), self));
                }
            }
            let finished =
                !self.saw_finish && self.live.as_ref().is_some_and(|l| l.finished().is_some());
            if finished || self.live.is_none() || Instant::now() >= self.next_poll {
                self.saw_finish |= finished;
                self.next_poll = Instant::now() + STATE_POLL;
                match self.state.meta.get_build(self.owner, self.id).await {
                    Ok(build) if build.state.is_terminal() => {
                        self.end(build).await;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(build = %self.id, error = %e, "a log follower lost its build");
                        self.done = true;
                        continue;
                    }
                }
                if self.live.is_none() {
                    // Ended when the reader came, but not by now: impossible
                    // for a terminal state; follow it live all the same.
                    let live = self.state.live.get_or_create(self.id);
                    self.changed = Some(live.subscribe());
                    self.live = Some(live);
                }
            }
            let changed = &mut self.changed;
            let closing = tokio::select! {
                _ = async {
                    let alive = match changed {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => false,
                    };
                    if !alive {
                        std::future::pending::<()>().await
                    }
                } => false,
                _ = tokio::time::sleep_until(self.next_poll) => false,
                _ = self.closing.wait_for(|closing| *closing) => true,
            };
            self.done |= closing;
        }
    }

    /// Queues what the reader has not seen of the stored log, then `end`.
    async fn end(&mut self, build: VersionBuild) {
        if let Some(location) = &build.logs_location
            && let Ok(bytes) = fetch_blob(&self.state, location).await
        {
            let text = String::from_utf8_lossy(&bytes);
            loop {
                let (part, end) = read_from(&text, self.offset, MAX_EVENT_BYTES);
                if part.is_empty() {
                    break;
                }
                self.offset = end;
                self.pending.push_back(log_event(&part, end));
            }
        }
        let end = Event::default()
            .event("end")
            .id(self.offset.to_string())
            .json_data(serde_json::json!({
                "state": build.state,
                "error": build.error,
                "build": build,
            }))
            .unwrap_or_default();
        self.pending.push_back(end);
        self.done = true;
    }
}
