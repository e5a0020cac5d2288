//! The async shell around [`Limiter`]: one [`RouteLimiter`] per route, cloned into every
//! stream and session of the route, which reads the clock and waits (on tokio's timer, that
//! is on the monotonic clock) where the limiter says to.

use crate::clock::{Clock, Reading};
use crate::schedule::{Priority, RouteThrottle};
use crate::throttle::{Admit, Limiter, LimiterStats};
use jiff::Timestamp;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// Longest sleep of [`RouteLimiter::admit`] before it looks at the clock again, so that a
/// wall-clock step (NTP, a resumed VM) delays a window by at most this much.
pub const ADMIT_RECHECK: Duration = Duration::from_secs(60);

struct Shared {
    limiter: Mutex<Limiter>,
    /// Woken on every throttle change, so that waiting admissions look again at once.
    changed: Notify,
}

/// A route's limiter shared by all its streams: cheap to clone (two `Arc`s).
#[derive(Clone)]
pub struct RouteLimiter {
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RouteLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteLimiter")
            .field("throttle", &self.throttle().to_text())
            .field("stats", &self.stats())
            .finish()
    }
}

impl RouteLimiter {
    /// A route limiter reading time from `clock`, which must move with tokio's time
    /// ([`crate::clock::SystemClock`], or [`crate::clock::TokioClock`] in tests).
    pub fn new(throttle: RouteThrottle, clock: Arc<dyn Clock>) -> RouteLimiter {
        RouteLimiter {
            shared: Arc::new(Shared {
                limiter: Mutex::new(Limiter::new(throttle)),
                changed: Notify::new(),
            }),
            clock,
        }
    }

    // The lock is never held across an await, and a panic while holding it cannot leave
    // the limiter's numbers unusable, so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, Limiter> {
        self.shared
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the limiter, then logs a wall-clock step it saw (outside the lock).
    fn with<T>(&self, f: impl FnOnce(&mut Limiter) -> T) -> T {
        let (out, step) = {
            let mut limiter = self.lock();
            let out = f(&mut limiter);
            (out, limiter.take_step())
        };
        if let Some(step) = step {
            // Once per step and route: it explains a window that opened or closed out of
            // turn, and says that pacing did not follow it.
            tracing::info!(
                "the wall clock was stepped by {step:#}: the route's schedule follows it, its pacing does not"
            );
        }
        out
    }

    /// The clock's current readings.
    pub fn read(&self) -> Reading {
        self.clock.read()
    }

    /// The route's throttle.
    pub fn throttle(&self) -> RouteThrottle {
        self.lock().throttle().clone()
    }

    /// Replaces the throttle: applies to the next reservation, and wakes waiting admissions.
    pub fn set_throttle(&self, throttle: RouteThrottle) {
        self.lock().set_throttle(throttle);
        self.shared.changed.notify_waiters();
    }

    /// Counters.
    pub fn stats(&self) -> LimiterStats {
        self.lock().stats()
    }

    /// Waits until a chunk of `priority` may start: returns at once in an open window,
    /// else sleeps until the window reopens (looking again on every throttle change and
    /// every [`ADMIT_RECHECK`]). Waits forever if the schedule never opens for `priority`;
    /// drop the future to give up.
    pub async fn admit(&self, priority: Priority) {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a change between the look and the sleep wakes us.
            changed.as_mut().enable();
            let now = self.clock.read();
            let verdict = self.with(|l| l.admit(now, priority));
            let wait = match verdict {
                Admit::Open => return,
                Admit::Closed {
                    reopens: Some(reopens),
                } => until(now.wall, reopens).min(ADMIT_RECHECK),
                Admit::Closed { reopens: None } => ADMIT_RECHECK,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut changed => {}
            }
        }
    }

    /// Reserves `bytes` (at most [`crate::throttle::SLICE`] for smooth pacing) and sleeps
    /// until they may be sent.
    pub async fn pace(&self, bytes: u64) {
        let now = self.clock.read();
        let start = self.with(|l| l.reserve(now, bytes)).start;
        let wait = start.saturating_sub(now.mono);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Time from `now` to `then`; zero if `then` is not later.
fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(now.duration_until(then)).unwrap_or(Duration::ZERO)
}
