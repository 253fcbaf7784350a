//! Where the metadata store reads the time: the system's clock, or one a
//! test sets and moves, so that lease expiry is tested without waiting.

use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The store's clock. Cheap to clone; clones of a manual clock move
/// together.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that stands at `at` until [`Clock::advance`] moves it.
    pub fn manual(at: DateTime<Utc>) -> Self {
        Self(Some(Arc::new(AtomicI64::new(at.timestamp_micros()))))
    }

    /// Moves a manual clock on by `by`; the system's clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Some(now) = &self.0 {
            now.fetch_add(by.as_micros() as i64, Ordering::SeqCst);
        }
    }

    /// Now, in microseconds since the epoch (the store's time unit).
    pub fn now_us(&self) -> i64 {
        match &self.0 {
            Some(now) => now.load(Ordering::SeqCst),
            None => Utc::now().timestamp_micros(),
        }
    }
}
