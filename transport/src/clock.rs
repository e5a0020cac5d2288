//! Where the throttle's time comes from: an injectable clock with two readings, so that tests
//! can run a week of schedule in milliseconds and step the wall clock at will.
//!
//! A route needs two kinds of time, and they must not be confused:
//! - **Monotonic** ([`Reading::mono`]): only moves forward, at the pace of real time. Pacing
//!   (GCRA debt, burst credit, pulse pauses) and every sleep are measured on it, so a step of
//!   the wall clock can neither freeze a route nor let it burst.
//! - **Wall** ([`Reading::wall`]): the civil time that a schedule's hours of the week, time
//!   zones and DST refer to. It can be stepped (an NTP correction, an operator, a VM resumed
//!   from a snapshot), backward or forward, by any amount.
//!
//! A clock gives both in one [`Reading`]. Waiting is done with tokio's timer, so a clock used
//! by [`crate::route_limiter::RouteLimiter`] must have its monotonic reading move with tokio's
//! time: [`SystemClock`] in production, [`TokioClock`] under
//! `#[tokio::test(start_paused = true)]`. [`ManualClock`] is for driving the pure
//! [`crate::throttle::Limiter`] by hand.
//!
//! Wall steps are found by reading: tokio's timers run on the monotonic clock and say nothing
//! when the system's clock is set. So the route limiter never sleeps longer than [`crate::throttle::SLICE_TIME`] on a wait
//! derived from the wall clock, unless the clock announces its steps ([`Clock::steps`]), as
//! the test clocks do (a week of closed window would otherwise take millions of timer
//! wake-ups under a paused runtime). [`TokioClock::unannounced`] keeps its steps quiet, like
//! the system's, to test the re-reading.

use jiff::{SignedDuration, Timestamp};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// One reading of a clock: both times, taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Monotonic time: elapsed since the clock's own origin (meaningful only against other
    /// readings of the same clock).
    pub mono: Duration,
    /// Wall-clock time.
    pub wall: Timestamp,
}

impl Reading {
    /// A reading of `mono` and `wall`.
    pub fn new(mono: Duration, wall: Timestamp) -> Reading {
        Reading { mono, wall }
    }

    /// The reading `by` later, both clocks having run together (no step).
    pub fn after(self, by: Duration) -> Reading {
        Reading {
            mono: self.mono.saturating_add(by),
            wall: shift(self.wall, signed(by)),
        }
    }

    /// The reading at monotonic time `mono`, the wall clock having run with it (no step).
    /// Earlier `mono` moves both back.
    pub fn at_mono(self, mono: Duration) -> Reading {
        let by = signed(mono).saturating_sub(signed(self.mono));
        Reading {
            mono,
            wall: shift(self.wall, by),
        }
    }

    /// The same monotonic time, the wall clock stepped by `by`.
    pub fn stepped(self, by: SignedDuration) -> Reading {
        Reading {
            mono: self.mono,
            wall: shift(self.wall, by),
        }
    }
}

/// A source of monotonic and wall-clock time.
pub trait Clock: Send + Sync {
    /// Both times, now.
    fn read(&self) -> Reading;

    /// Notified at every step of the wall clock, if the clock knows of them (test clocks):
    /// then a wait for a wall-clock instant may sleep until it. `None` (the default, and the
    /// system clock): steps are found only by reading, so such a wait is cut into pieces of
    /// at most [`crate::throttle::SLICE_TIME`].
    fn steps(&self) -> Option<&Notify> {
        None
    }
}

/// The system's clocks: `std::time::Instant` (CLOCK_MONOTONIC, the clock tokio's timer uses)
/// and the real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn read(&self) -> Reading {
        // One origin for the process, so that readings of every SystemClock compare.
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        Reading {
            mono: Instant::now().duration_since(origin),
            wall: Timestamp::now(),
        }
    }
}

/// A clock that moves only when told to (tests). Its monotonic time starts at zero.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Reading>,
    steps: Notify,
}

impl ManualClock {
    /// A clock stopped at wall time `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            now: Mutex::new(Reading::new(Duration::ZERO, start)),
            steps: Notify::new(),
        }
    }

    // A panic while holding the lock cannot leave a reading half-written (it is Copy), so a
    // poisoned lock is simply taken over.
    fn with<T>(&self, f: impl FnOnce(&mut Reading) -> T) -> T {
        f(&mut self.now.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Steps the wall clock to `at`; monotonic time does not move.
    pub fn set(&self, at: Timestamp) {
        self.with(|now| now.wall = at);
        self.steps.notify_waiters();
    }

    /// Steps the wall clock by `by` (saturating at jiff's range); monotonic time does not
    /// move.
    pub fn step(&self, by: SignedDuration) {
        self.with(|now| *now = now.stepped(by));
        self.steps.notify_waiters();
    }

    /// Lets time pass: both clocks move forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.with(|now| *now = now.after(by));
    }
}

impl Clock for ManualClock {
    fn read(&self) -> Reading {
        self.with(|now| *now)
    }

    fn steps(&self) -> Option<&Notify> {
        Some(&self.steps)
    }
}

/// A clock on tokio's time: monotonic time is tokio's elapsed since the clock was made, wall
/// time a base plus that plus every step so far. Under a paused tokio runtime
/// (`start_paused = true`, or `tokio::time::pause`) time advances only when every task
/// sleeps, and then at once to the next timer: a week of schedule takes milliseconds.
#[derive(Debug)]
pub struct TokioClock {
    wall: Timestamp,
    base: tokio::time::Instant,
    /// Sum of the wall clock's steps so far.
    stepped: Mutex<SignedDuration>,
    steps: Notify,
    announce: bool,
}

impl TokioClock {
    /// Starts at the system's current time.
    pub fn new() -> TokioClock {
        TokioClock::starting_at(Timestamp::now())
    }

    /// Starts at wall time `wall`, now.
    pub fn starting_at(wall: Timestamp) -> TokioClock {
        TokioClock {
            wall,
            base: tokio::time::Instant::now(),
            stepped: Mutex::new(SignedDuration::ZERO),
            steps: Notify::new(),
            announce: true,
        }
    }

    /// The same clock, but its steps are not announced ([`Clock::steps`] is `None`): like
    /// the system clock's, they are found only by reading.
    pub fn unannounced(mut self) -> TokioClock {
        self.announce = false;
        self
    }

    /// Steps the wall clock by `by`; monotonic time does not move.
    pub fn step(&self, by: SignedDuration) {
        {
            let mut stepped = self.stepped.lock().unwrap_or_else(|e| e.into_inner());
            *stepped = stepped.saturating_add(by);
        }
        self.steps.notify_waiters();
    }
}

impl Default for TokioClock {
    fn default() -> TokioClock {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn read(&self) -> Reading {
        let mono = tokio::time::Instant::now().duration_since(self.base);
        let stepped = *self.stepped.lock().unwrap_or_else(|e| e.into_inner());
        Reading {
            mono,
            wall: shift(self.wall, signed(mono).saturating_add(stepped)),
        }
    }

    fn steps(&self) -> Option<&Notify> {
        self.announce.then_some(&self.steps)
    }
}

/// `by` as a signed duration (saturating: no clock runs for 292 billion years).
fn signed(by: Duration) -> SignedDuration {
    SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX)
}

/// `at` moved by `by`, saturating at jiff's range (years -9999 to 9999).
fn shift(at: Timestamp, by: SignedDuration) -> Timestamp {
    at.checked_add(by).unwrap_or(if by.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}
