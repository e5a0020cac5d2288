//! The async shell around [`Limiter`]: one [`RouteLimiter`] per route, cloned into every
//! stream and session of the route, which reads the clock and waits (on tokio's timer, that
//! is on the monotonic clock) where the limiter says to.
//!
//! It never carries a wait across a change that may end it: a wait for a reservation's start
//! is cut into pieces of at most [`SLICE_TIME`], after each of which the limiter re-times it
//! ([`Limiter::retime`]); a wait for a closed window to reopen (a wall-clock instant) is cut
//! the same way unless the clock announces its steps ([`Clock::steps`]). Both also end at
//! once on a throttle change or an announced step.

use crate::clock::{Clock, Reading};
use crate::schedule::{Priority, RouteThrottle};
use crate::throttle::{Admit, Limiter, LimiterStats, SLICE_TIME};
use jiff::Timestamp;
use std::fmt;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

struct Shared {
    limiter: Mutex<Limiter>,
    /// Woken on every throttle change, so that waiting admissions and reservations look
    /// again at once.
    changed: Notify,
    /// Never woken: what a clock that does not announce its steps is waited on.
    never: Notify,
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
                never: Notify::new(),
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

    /// The clock's step notifications, or one that never comes if it has none.
    fn steps(&self) -> &Notify {
        self.clock.steps().unwrap_or(&self.shared.never)
    }

    /// Waits until a chunk of `priority` may start: returns at once in an open window,
    /// else sleeps until the window reopens by the wall clock, looking again on every
    /// throttle change, on every announced step of the wall clock, and every [`SLICE_TIME`]
    /// if the clock does not announce its steps (so a step that opens the window admits
    /// within [`SLICE_TIME`]). Waits forever if the schedule never opens for `priority`;
    /// drop the future to give up.
    pub async fn admit(&self, priority: Priority) {
        let announced = self.clock.steps().is_some();
        loop {
            // Registered before looking, so a change or step between the look and the
            // sleep wakes us.
            let mut changed = pin!(self.shared.changed.notified());
            changed.as_mut().enable();
            let mut stepped = pin!(self.steps().notified());
            stepped.as_mut().enable();
            let now = self.clock.read();
            let reopens = match self.with(|l| l.admit(now, priority)) {
                Admit::Open => return,
                Admit::Closed { reopens } => reopens,
            };
            // A wall-clock instant is only as good as the wall clock: slept in one go only
            // when a step would wake us.
            let wait = reopens.map(|at| until(now.wall, at));
            let wait = match (announced, wait) {
                (true, wait) => wait,
                (false, Some(wait)) => Some(wait.min(SLICE_TIME)),
                (false, None) => Some(SLICE_TIME),
            };
            tokio::select! {
                _ = nap(wait) => {}
                _ = &mut changed => {}
                _ = &mut stepped => {}
            }
        }
    }

    /// Reserves `bytes` (at most [`crate::throttle::SLICE`] for smooth pacing) and sleeps
    /// until they may be sent: in pieces of at most [`SLICE_TIME`] (or until a throttle
    /// change or an announced step), after each of which the limiter re-times the
    /// reservation, so a new cell or throttle applies to it within [`SLICE_TIME`].
    pub async fn pace(&self, bytes: u64) {
        let now = self.clock.read();
        let mut reservation = self.with(|l| l.reserve(now, bytes));
        let mut wait = reservation.start.saturating_sub(now.mono);
        while !wait.is_zero() {
            // A change that lands between the reservation and here is seen at the next
            // re-time, at most SLICE_TIME later.
            let mut changed = pin!(self.shared.changed.notified());
            changed.as_mut().enable();
            let mut stepped = pin!(self.steps().notified());
            stepped.as_mut().enable();
            tokio::select! {
                _ = tokio::time::sleep(wait.min(SLICE_TIME)) => {}
                _ = &mut changed => {}
                _ = &mut stepped => {}
            }
            let now = self.clock.read();
            reservation = self.with(|l| l.retime(now, reservation));
            wait = reservation.start.saturating_sub(now.mono);
        }
    }
}

/// Time from `now` to `then`; zero if `then` is not later.
fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(now.duration_until(then)).unwrap_or(Duration::ZERO)
}

/// Sleeps `wait` on tokio's timer, or forever.
async fn nap(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}
