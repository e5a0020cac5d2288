//! Where the throttle's time comes from: an injectable wall clock, so that tests can run a
//! week of schedule in milliseconds.
//!
//! The schedule is wall-clock time (hours of a time zone), so a clock gives
//! [`jiff::Timestamp`]s. Waiting is done with tokio's timer, so a clock used by
//! [`crate::route_limiter::RouteLimiter`] must move with tokio's time: [`SystemClock`] in
//! production, [`TokioClock`] under `#[tokio::test(start_paused = true)]`. [`ManualClock`]
//! is for driving the pure [`crate::throttle::Limiter`] by hand.

use jiff::{SignedDuration, Timestamp};
use std::sync::Mutex;
use std::time::Duration;

/// A source of wall-clock time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// Sets the time.
    pub fn set(&self, at: Timestamp) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// Moves the time forward by `by` (saturating at the largest timestamp).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = add(*now, by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A wall-clock base plus the time elapsed on tokio's clock since it was made. Under a
/// paused tokio runtime (`start_paused = true`, or `tokio::time::pause`) time advances only
/// when every task sleeps, and then at once to the next timer: a week of schedule takes
/// milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: Timestamp,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// Starts at the system's current time.
    pub fn new() -> TokioClock {
        TokioClock::starting_at(Timestamp::now())
    }

    /// Starts at `wall`, now.
    pub fn starting_at(wall: Timestamp) -> TokioClock {
        TokioClock {
            wall,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> TokioClock {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        add(
            self.wall,
            tokio::time::Instant::now().duration_since(self.base),
        )
    }
}

fn add(at: Timestamp, by: Duration) -> Timestamp {
    let by = SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX);
    at.checked_add(by).unwrap_or(Timestamp::MAX)
}
